//! `GET /v1/openapi.json`: the API's OpenAPI 3.1 document.
//!
//! Built here from one table of operations (method, path, the scope it
//! needs, its body and answers) plus the schemas the code already
//! generates with `schemars` (the ingest envelopes of each input format,
//! the enriched batch of the live chain, output settings), and the admin
//! resources the registered plugins declare. tests/openapi.rs holds the
//! table to the router (every route there is documented here) and runs
//! Schemathesis against a live server with this document.
//!
//! Every operation lists the refusals the shared layers can answer with
//! (bad or oversized bodies, keys, scopes, rate limits, the connection
//! cap), in the one JSON error shape.

use serde_json::{json, Map, Value};

use crate::service::{AppState, Scope};

/// What an operation's successful answer is.
enum Answer {
    /// JSON: a schema, or any object.
    Json(Value),
    /// Another media type (text exposition, event streams, NDJSON).
    Media(&'static str),
}

struct Operation {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    scope: Option<Scope>,
    body: Option<Value>,
    success: (u16, Answer),
    /// Refusals beyond the shared ones (404 for unknown names, ...).
    more: &'static [u16],
}

fn any_object() -> Value {
    json!({ "type": "object" })
}

/// Refusals any operation can answer with (body limits, gzip, keys, rate
/// limits, timeouts, the connection cap).
const SHARED: [u16; 7] = [400, 408, 413, 415, 429, 431, 503];

fn operations(input: &[(&str, Value)], enriched: Value) -> Vec<Operation> {
    let envelope = json!({ "oneOf": input.iter().map(|(name, _)| json!({ "$ref": format!("#/components/schemas/{name}") })).collect::<Vec<_>>() });
    let name_body = json!({ "type": "object", "additionalProperties": true });
    use Answer::{Json, Media};
    use Scope::{Admin, Ingest, Read};
    vec![
        Operation {
            method: "get",
            path: "/v1",
            summary: "Service name, version and API paths",
            scope: None,
            body: None,
            success: (200, Json(any_object())),
            more: &[],
        },
        Operation {
            method: "get",
            path: "/v1/health",
            summary: "Liveness",
            scope: None,
            body: None,
            success: (
                200,
                Json(
                    json!({ "type": "object", "properties": { "status": { "const": "ok" } }, "required": ["status"] }),
                ),
            ),
            more: &[],
        },
        Operation {
            method: "get",
            path: "/v1/health/details",
            summary: "Readiness with every stage's state",
            scope: Some(Read),
            body: None,
            success: (200, Json(any_object())),
            more: &[],
        },
        Operation {
            method: "get",
            path: "/v1/enrichers",
            summary: "The chain: stages, states, versions, sources, counters",
            scope: Some(Read),
            body: None,
            success: (200, Json(any_object())),
            more: &[],
        },
        Operation {
            method: "get",
            path: "/v1/version",
            summary: "Version, git tag and commit",
            scope: None,
            body: None,
            success: (200, Json(any_object())),
            more: &[],
        },
        Operation {
            method: "get",
            path: "/v1/schema",
            summary: "Names of the JSON Schemas",
            scope: None,
            body: None,
            success: (200, Json(any_object())),
            more: &[],
        },
        Operation {
            method: "get",
            path: "/v1/schema/{name}",
            summary: "One JSON Schema (input formats, the enriched batch)",
            scope: None,
            body: None,
            success: (200, Json(any_object())),
            more: &[404],
        },
        Operation {
            method: "get",
            path: "/v1/openapi.json",
            summary: "This document",
            scope: None,
            body: None,
            success: (200, Json(any_object())),
            more: &[],
        },
        Operation {
            method: "get",
            path: "/v1/metrics",
            summary: "Live metrics (public unless server.metrics_require_key)",
            scope: None,
            body: None,
            success: (200, Json(any_object())),
            more: &[],
        },
        Operation {
            method: "get",
            path: "/v1/stream",
            summary: "Live metrics as server-sent events (never ends)",
            scope: None,
            body: None,
            success: (200, Media("text/event-stream")),
            more: &[],
        },
        Operation {
            method: "get",
            path: "/v1/tap",
            summary: "A sampled live stream of enriched events",
            scope: Some(Read),
            body: None,
            success: (200, Media("application/x-ndjson")),
            more: &[],
        },
        Operation {
            method: "get",
            path: "/metrics",
            summary: "Prometheus text exposition",
            scope: None,
            body: None,
            success: (200, Media("text/plain")),
            more: &[],
        },
        Operation {
            method: "post",
            path: "/v1/lookup",
            summary: "Everything the chain knows of one address or domain",
            scope: Some(Read),
            body: Some(json!({ "type": "object", "properties": { "ip": { "type": "string" } }, "required": ["ip"] })),
            success: (200, Json(any_object())),
            more: &[],
        },
        Operation {
            method: "post",
            path: "/v1/ingest",
            summary: "Enrich a batch and deliver it to every enabled output",
            scope: Some(Ingest),
            body: Some(envelope),
            success: (200, Json(enriched)),
            more: &[],
        },
        Operation {
            method: "get",
            path: "/v1/outputs",
            summary: "Every output with its state and counters",
            scope: Some(Read),
            body: None,
            success: (200, Json(any_object())),
            more: &[],
        },
        Operation {
            method: "post",
            path: "/v1/outputs/test",
            summary: "Send one probe event to an output",
            scope: Some(Admin),
            body: Some(
                json!({ "type": "object", "properties": { "target": { "type": "string" } }, "required": ["target"] }),
            ),
            success: (200, Json(any_object())),
            more: &[404, 422],
        },
        Operation {
            method: "get",
            path: "/v1/outputs/{name}",
            summary: "One output",
            scope: Some(Read),
            body: None,
            success: (200, Json(any_object())),
            more: &[404],
        },
        Operation {
            method: "put",
            path: "/v1/outputs/{name}",
            summary: "Set an output's settings (201 new, 200 changed)",
            scope: Some(Admin),
            body: Some(name_body.clone()),
            success: (200, Json(any_object())),
            more: &[201, 404, 422],
        },
        Operation {
            method: "post",
            path: "/v1/outputs/{name}",
            summary: "Same as PUT",
            scope: Some(Admin),
            body: Some(name_body),
            success: (200, Json(any_object())),
            more: &[201, 404, 422],
        },
        Operation {
            method: "delete",
            path: "/v1/outputs/{name}",
            summary: "Drop the API's settings of an output",
            scope: Some(Admin),
            body: None,
            success: (200, Json(any_object())),
            more: &[404, 409],
        },
        Operation {
            method: "get",
            path: "/v1/outputs/{name}/deadletter",
            summary: "An output's dead-lettered events",
            scope: Some(Read),
            body: None,
            success: (200, Json(any_object())),
            more: &[404],
        },
        Operation {
            method: "post",
            path: "/v1/outputs/{name}/deadletter/replay",
            summary: "Move dead-lettered events back into the backlog",
            scope: Some(Admin),
            body: None,
            success: (200, Json(any_object())),
            more: &[404, 409],
        },
        Operation {
            method: "get",
            path: "/v1/sources",
            summary: "Every source with its state and counters",
            scope: Some(Read),
            body: None,
            success: (200, Json(any_object())),
            more: &[],
        },
        Operation {
            method: "get",
            path: "/v1/sources/{name}/deadletter",
            summary: "A source's dead-lettered messages",
            scope: Some(Read),
            body: None,
            success: (200, Json(any_object())),
            more: &[404],
        },
        Operation {
            method: "get",
            path: "/v1/updates",
            summary: "Every [[update]] entry (data-file updaters) with its state",
            scope: Some(Read),
            body: None,
            success: (200, Json(any_object())),
            more: &[],
        },
        Operation {
            method: "post",
            path: "/v1/updates/{name}/run",
            summary: "Run one updater now; answers once its file is live (or why not)",
            scope: Some(Admin),
            body: None,
            success: (200, Json(any_object())),
            more: &[404],
        },
        Operation {
            method: "post",
            path: "/v1/reload",
            summary: "Re-read the configuration and every stage's data",
            scope: Some(Admin),
            body: None,
            success: (200, Json(any_object())),
            more: &[],
        },
        Operation {
            method: "get",
            path: "/v1/audit",
            summary: "The audit log, newest first",
            scope: Some(Admin),
            body: None,
            success: (200, Json(any_object())),
            more: &[],
        },
    ]
}

/// The document for the running server (the enriched schema follows the
/// live chain; admin resources follow the registered plugins).
pub(crate) fn document(state: &AppState) -> Value {
    let chain = state.engine.chain();
    let mut components = Map::new();
    let error = json!({
        "type": "object",
        "properties": { "error": { "type": "string" }, "detail": { "type": "string" } },
        "required": ["error", "detail"],
    });
    components.insert("Error".into(), error);
    let mut input = Vec::new();
    for (format, schema_name) in [("zeek.conn.v1", "IngestZeekConn"), ("flows.v1", "IngestFlows")] {
        if let Some(schema) = crate::schema::document(format, &chain) {
            input.push((schema_name, hoist(schema_name, schema, &mut components)));
        }
    }
    for (name, schema) in &input {
        components.insert(name.to_string(), schema.clone());
    }
    let enriched = crate::schema::document("enriched.v1", &chain)
        .map(|s| hoist("EnrichedBatch", s, &mut components))
        .unwrap_or_else(any_object);
    let mut ops = operations(&input, enriched);
    let admin: Vec<(String, String)> = super::admin::resource_paths(state)
        .into_iter()
        .flat_map(|p| [(p.clone(), "list".to_string()), (format!("{p}/{{id}}"), "delete".to_string())])
        .collect();
    let mut paths = Map::new();
    for op in ops.drain(..) {
        let entry = paths.entry(op.path.to_string()).or_insert_with(|| json!({}));
        entry[op.method] = operation(op.path, op.summary, op.scope, op.body, op.success, op.more);
    }
    for (path, kind) in admin {
        let entry = paths.entry(path.clone()).or_insert_with(|| json!({}));
        if kind == "list" {
            entry["get"] = operation(
                &path,
                "List a plugin's admin resource",
                Some(Scope::Admin),
                None,
                (200, Answer::Json(any_object())),
                &[],
            );
            entry["put"] = operation(
                &path,
                "Add or update entries of a plugin's admin resource",
                Some(Scope::Admin),
                Some(json!({})),
                (200, Answer::Json(any_object())),
                &[],
            );
        } else {
            entry["delete"] = operation(
                &path,
                "Remove one entry of a plugin's admin resource",
                Some(Scope::Admin),
                None,
                (200, Answer::Json(any_object())),
                &[404],
            );
        }
    }
    for path in super::views::paths(state) {
        let entry = paths.entry(path.clone()).or_insert_with(|| json!({}));
        entry["get"] = operation(
            &path,
            "A plugin's read-only view (e.g. indicator hit statistics), per stage",
            Some(Scope::Read),
            None,
            (200, Answer::Json(any_object())),
            &[400],
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "enrichd",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Enrichment of network telemetry: the standard /v1 API. Errors are {\"error\", \"detail\", ...}; keys have scopes (ingest, read, admin).",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "apiKey": { "type": "apiKey", "in": "header", "name": "X-API-Key" },
            },
        },
    })
}

fn operation(
    path: &str,
    summary: &str,
    scope: Option<Scope>,
    body: Option<Value>,
    success: (u16, Answer),
    more: &[u16],
) -> Value {
    let error = json!({ "description": "refused", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    let mut responses = Map::new();
    let (status, answer) = success;
    let content = match answer {
        Answer::Json(schema) => json!({ "application/json": { "schema": schema } }),
        Answer::Media(media) => json!({ media: {} }),
    };
    responses.insert(status.to_string(), json!({ "description": "done", "content": content }));
    let mut refusals: Vec<u16> = SHARED.iter().chain(more).copied().collect();
    if scope.is_some() {
        refusals.extend([401, 403]);
    }
    for code in refusals {
        if code == 201 {
            responses.insert(
                "201".into(),
                json!({ "description": "created", "content": { "application/json": { "schema": any_object() } } }),
            );
        } else if code == 431 {
            // hyper's own answer to an oversized head: no body.
            responses.insert("431".into(), json!({ "description": "request head too large" }));
        } else {
            responses.insert(code.to_string(), error.clone());
        }
    }
    let mut op = json!({ "summary": summary, "responses": responses });
    if let Some(scope) = scope {
        op["security"] = json!([{ "bearer": [] }, { "apiKey": [] }]);
        op["x-enrichd-scope"] = scope.label().into();
    }
    let params: Vec<Value> = path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect();
    if !params.is_empty() {
        op["parameters"] = params.into();
    }
    if let Some(schema) = body {
        op["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": schema } } });
    }
    op
}

/// Moves a schemars document's `$defs` (at any depth: fact schemas put
/// into the enriched one bring their own) into `components`, prefixed by
/// `name`, and points its references there; returns the root schema.
fn hoist(name: &str, mut schema: Value, components: &mut Map<String, Value>) -> Value {
    if let Some(o) = schema.as_object_mut() {
        o.remove("$schema");
    }
    let mut defs = Map::new();
    take_defs(&mut schema, &mut defs);
    for (def, mut body) in defs {
        retarget(&mut body, name);
        components.insert(format!("{name}_{def}"), body);
    }
    retarget(&mut schema, name);
    schema
}

fn take_defs(v: &mut Value, into: &mut Map<String, Value>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::Object(defs)) = o.remove("$defs") {
                for (def, mut body) in defs {
                    take_defs(&mut body, into);
                    into.insert(def, body);
                }
            }
            o.values_mut().for_each(|v| take_defs(v, into));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| take_defs(v, into)),
        _ => {}
    }
}

fn retarget(v: &mut Value, name: &str) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get_mut("$ref") {
                if let Some(def) = r.strip_prefix("#/$defs/") {
                    *r = format!("#/components/schemas/{name}_{def}");
                }
            }
            o.values_mut().for_each(|v| retarget(v, name));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| retarget(v, name)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_move_to_components_with_their_references() {
        let mut components = Map::new();
        let schema = json!({ "$schema": "x", "properties": { "r": { "$ref": "#/$defs/Rec" } },
            "$defs": { "Rec": { "properties": { "p": { "$ref": "#/$defs/Proto" } } }, "Proto": { "type": "string" } } });
        let root = hoist("In", schema, &mut components);
        assert_eq!(root["properties"]["r"]["$ref"], "#/components/schemas/In_Rec");
        assert_eq!(components["In_Rec"]["properties"]["p"]["$ref"], "#/components/schemas/In_Proto");
        assert!(root.get("$schema").is_none() && root.get("$defs").is_none());
    }
}
