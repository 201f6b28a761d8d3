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

use std::borrow::Cow;

use serde_json::{json, Map, Value};

use super::page::Page;
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
    path: Cow<'static, str>,
    summary: &'static str,
    scope: Option<Scope>,
    body: Option<Value>,
    success: (u16, Answer),
    /// Refusals beyond the shared ones (404 for unknown names, ...).
    more: &'static [u16],
    /// Path parameters' schemas by name (default: any string) and query
    /// parameters.
    params: Vec<(&'static str, Value)>,
    query: Vec<Value>,
}

/// The names that exist on the running server: path parameters list them,
/// so a client (and Schemathesis) reaches real resources rather than 404s.
struct Live {
    outputs: Vec<String>,
    sources: Vec<String>,
    updates: Vec<String>,
    schemas: Vec<&'static str>,
}

/// A name a client may create (an output set by `PUT`): what
/// `valid_name` accepts.
fn new_name(known: &[String]) -> Value {
    json!({ "type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$", "examples": known })
}

/// One of the resources that exist now (anything else is a 404); with
/// none, any valid name (an empty `enum` would admit no request at all).
fn existing(known: &[String]) -> Value {
    if known.is_empty() {
        return new_name(known);
    }
    json!({ "type": "string", "enum": known })
}

fn any_object() -> Value {
    json!({ "type": "object" })
}

/// An operation anyone may call, answering 200 with a JSON object unless
/// told otherwise.
fn public(method: &'static str, path: impl Into<Cow<'static, str>>, summary: &'static str) -> Operation {
    Operation {
        method,
        path: path.into(),
        summary,
        scope: None,
        body: None,
        success: (200, Answer::Json(any_object())),
        more: &[],
        params: Vec::new(),
        query: Vec::new(),
    }
}

fn scoped(scope: Scope, method: &'static str, path: impl Into<Cow<'static, str>>, summary: &'static str) -> Operation {
    Operation { scope: Some(scope), ..public(method, path, summary) }
}

fn read(method: &'static str, path: impl Into<Cow<'static, str>>, summary: &'static str) -> Operation {
    scoped(Scope::Read, method, path, summary)
}

fn admin(method: &'static str, path: impl Into<Cow<'static, str>>, summary: &'static str) -> Operation {
    scoped(Scope::Admin, method, path, summary)
}

fn ingest(method: &'static str, path: impl Into<Cow<'static, str>>, summary: &'static str) -> Operation {
    scoped(Scope::Ingest, method, path, summary)
}

impl Operation {
    /// The JSON request body's schema.
    fn body(self, schema: Value) -> Self {
        Operation { body: Some(schema), ..self }
    }

    /// The successful answer, when not 200 with a JSON object.
    fn answers(self, status: u16, answer: Answer) -> Self {
        Operation { success: (status, answer), ..self }
    }

    /// Refusals beyond the shared ones.
    fn or(self, more: &'static [u16]) -> Self {
        Operation { more, ..self }
    }

    /// The schema of path parameter `{name}`.
    fn param(mut self, name: &'static str, schema: Value) -> Self {
        self.params.push((name, schema));
        self
    }

    /// Query parameters.
    fn query(self, query: Vec<Value>) -> Self {
        Operation { query, ..self }
    }
}

/// Refusals any operation can answer with (body limits, gzip, keys, rate
/// limits, timeouts, the connection cap).
const SHARED: [u16; 7] = [400, 408, 413, 415, 429, 431, 503];

fn operations(input: &[(&str, Value)], enriched: Value, live: &Live) -> Vec<Operation> {
    let envelope = json!({ "oneOf": input.iter().map(|(name, _)| json!({ "$ref": format!("#/components/schemas/{name}") })).collect::<Vec<_>>() });
    let name_body = json!({ "type": "object", "additionalProperties": true });
    use Answer::{Json, Media};
    vec![
        public("get", "/v1", "Service name, version and API paths"),
        public("get", "/v1/health", "Liveness").answers(
            200,
            Json(json!({ "type": "object", "properties": { "status": { "const": "ok" } }, "required": ["status"] })),
        ),
        read("get", "/v1/health/details", "Readiness with every stage's state"),
        read("get", "/v1/enrichers", "The chain: stages, states, versions, sources, counters"),
        public("get", "/v1/version", "Version, git tag and commit"),
        public("get", "/v1/schema", "Names of the JSON Schemas"),
        public("get", "/v1/schema/{name}", "One JSON Schema (input formats, the enriched batch)")
            .param("name", json!({ "type": "string", "enum": live.schemas }))
            .or(&[404]),
        public("get", "/v1/openapi.json", "This document"),
        public("get", "/v1/metrics", "Live metrics (public unless server.metrics_require_key)"),
        public("get", "/v1/stream", "Live metrics as server-sent events (never ends)")
            .answers(200, Media("text/event-stream")),
        read("get", "/v1/tap", "A sampled live stream of enriched events").answers(200, Media("application/x-ndjson")),
        public("get", "/metrics", "Prometheus text exposition").answers(200, Media("text/plain")),
        read("post", "/v1/lookup", "Everything the chain knows of one address or domain")
            .body(json!({ "type": "object", "required": ["ip"],
                "properties": { "ip": { "type": "string", "anyOf": [{ "format": "ipv4" }, { "format": "ipv6" }] } } })),
        ingest("post", "/v1/ingest", "Enrich a batch and deliver it to every enabled output")
            .body(envelope)
            .answers(200, Json(enriched)),
        read("get", "/v1/outputs", "Every output with its state and counters"),
        admin("post", "/v1/outputs/test", "Send one probe event to an output")
            .body(json!({ "type": "object", "required": ["target"], "additionalProperties": false,
                "properties": { "target": existing(&live.outputs) } }))
            .or(&[404, 422]),
        read("get", "/v1/outputs/{name}", "One output").param("name", existing(&live.outputs)).or(&[404]),
        admin("put", "/v1/outputs/{name}", "Set an output's settings (201 new, 200 changed)")
            .param("name", new_name(&live.outputs))
            .body(name_body.clone())
            .or(&[201, 404, 422]),
        admin("post", "/v1/outputs/{name}", "Same as PUT")
            .param("name", new_name(&live.outputs))
            .body(name_body)
            .or(&[201, 404, 422]),
        admin("delete", "/v1/outputs/{name}", "Drop the API's settings of an output")
            .param("name", existing(&live.outputs))
            .or(&[404, 409]),
        read("get", "/v1/outputs/{name}/deadletter", "An output's dead-lettered events")
            .param("name", existing(&live.outputs))
            .query(Page::parameters())
            .or(&[404]),
        admin("post", "/v1/outputs/{name}/deadletter/replay", "Move dead-lettered events back into the backlog")
            .param("name", existing(&live.outputs))
            .or(&[404, 409]),
        read("get", "/v1/sources", "Every source with its state and counters"),
        read("get", "/v1/sources/{name}/deadletter", "A source's dead-lettered messages")
            .param("name", existing(&live.sources))
            .query(Page::parameters())
            .or(&[404]),
        read("get", "/v1/updates", "Every [[update]] entry (data-file updaters) with its state"),
        admin("post", "/v1/updates/{name}/run", "Run one updater now; answers once its file is live (or why not)")
            .param("name", existing(&live.updates))
            .or(&[404]),
        admin("post", "/v1/reload", "Re-read the configuration and every stage's data"),
        admin("get", "/v1/audit", "The audit log, newest first"),
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
    let live = Live {
        outputs: state.delivery.snapshot().iter().map(|s| s.spec.runtime.name.clone()).collect(),
        sources: state.sources.names(),
        updates: state.updates.names(),
        schemas: crate::schema::names(),
    };
    let mut ops = operations(&input, enriched, &live);
    for (path, kind) in super::admin::resource_paths(state)
        .into_iter()
        .flat_map(|p| [(p.clone(), "list"), (format!("{p}/{{id}}"), "delete")])
    {
        if kind == "list" {
            ops.push(admin("get", path.clone(), "List a plugin's admin resource"));
            ops.push(admin("put", path, "Add or update entries of a plugin's admin resource").body(json!({})));
        } else {
            ops.push(admin("delete", path, "Remove one entry of a plugin's admin resource").or(&[404]));
        }
    }
    for path in super::views::paths(state) {
        ops.push(read("get", path, "A plugin's read-only view (e.g. indicator hit statistics), per stage").or(&[400]));
    }
    let reports = chain.reports();
    for (collection, kind) in super::stages::collections(state) {
        let path = format!("/v1/{collection}/{{stage}}/{{action}}");
        let stages: Vec<String> =
            reports.iter().filter(|r| r.plugin == kind && r.enabled).map(|r| r.name.clone()).collect();
        let stage = existing(&stages);
        let action = json!({ "type": "string", "pattern": "^[a-z_]{1,32}$" });
        ops.push(
            read("get", path.clone(), "A stage action's state (e.g. a rule's shadow summary or version history)")
                .or(&[404, 405])
                .param("stage", stage.clone())
                .param("action", action.clone()),
        );
        ops.push(
            admin(
                "post",
                path.clone(),
                "A stage action (e.g. deploy a shadow rule: body = the module's bytes; promote; rollback)",
            )
            .or(&[404, 405, 409, 422])
            .param("stage", stage.clone())
            .param("action", action.clone()),
        );
        ops.push(
            admin("delete", path, "Undo a stage action (e.g. remove a rule's shadow)")
                .or(&[404, 405])
                .param("stage", stage)
                .param("action", action),
        );
    }
    let mut paths = Map::new();
    for op in ops {
        let entry = paths.entry(op.path.to_string()).or_insert_with(|| json!({}));
        entry[op.method] = operation(&op);
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

fn operation(op: &Operation) -> Value {
    let error = json!({ "description": "refused", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    let mut responses = Map::new();
    let (status, answer) = &op.success;
    let content = match answer {
        Answer::Json(schema) => json!({ "application/json": { "schema": schema } }),
        Answer::Media(media) => json!({ *media: {} }),
    };
    responses.insert(status.to_string(), json!({ "description": "done", "content": content }));
    let mut refusals: Vec<u16> = SHARED.iter().chain(op.more).copied().collect();
    if op.scope.is_some() {
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
    let mut doc = json!({ "summary": op.summary, "responses": responses });
    if let Some(scope) = op.scope {
        doc["security"] = json!([{ "bearer": [] }, { "apiKey": [] }]);
        doc["x-enrichd-scope"] = scope.label().into();
    }
    let mut params: Vec<Value> = op
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            let schema =
                op.params.iter().find(|(n, _)| *n == name).map_or(json!({ "type": "string" }), |(_, s)| s.clone());
            json!({ "name": name, "in": "path", "required": true, "schema": schema })
        })
        .collect();
    params.extend(op.query.iter().cloned());
    if !params.is_empty() {
        doc["parameters"] = params.into();
    }
    if let Some(schema) = &op.body {
        doc["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": schema } } });
    }
    doc
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
