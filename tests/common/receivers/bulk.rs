//! A strict Elasticsearch `_bulk` receiver (the 8.x wire contract).
//!
//! Accepted: `POST`/`PUT` `/_bulk` and `/{index}/_bulk`, `Content-Type` `application/x-ndjson` or `application/json`
//! (or the 8.x `vnd.elasticsearch+` forms), `Content-Encoding: gzip`.
//! The body is NDJSON pairs: an action line that is exactly one of `index`
//! or `create` with `_index` (required unless the path names one), optional
//! `_id`, and only parameters Elasticsearch 8 knows (no `_type`), then a
//! source line that is one JSON object; every line ends with `\n`
//! (optionally `\r\n`), including the last. Anything else fails the whole
//! request with 400 `illegal_argument_exception`, as Elasticsearch does for
//! framing errors; a wrong content type gets Elasticsearch's 406. Stricter
//! than the real server, on purpose: a blank line, an unknown action and a
//! source line that is not a JSON object fail the request, where
//! Elasticsearch may skip the line or fail only the item.
//!
//! Per item (inside a 200 with `"errors": true`): invalid index name → 400
//! `invalid_index_name_exception`; `Faults::reject_field` → 400
//! `mapper_parsing_exception`; `Faults::item_429_per_mille` → 429
//! `es_rejected_execution_exception`; `create` of an existing `_id` → 409
//! `version_conflict_engine_exception`. Documents are kept by
//! `(index, _id)`; an `index` of an existing id replaces it (`updated`) and
//! counts in `times_written`, which is how tests spot duplicate deliveries.
//!
//! Query parameters: `filter_path` (response filtering, as Elasticsearch
//! applies it to any response) in the forms `key` and `items.*.key`,
//! comma-separated (other path forms fail the request: not implemented
//! here). The other `_bulk` parameters of the 8.x reference are accepted
//! and ignored; an unknown one fails the request with 400, as
//! Elasticsearch does. The stats count filtered answers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::http::Method;
use serde_json::{json, Map, Value};

use super::{base64, Faults, Reply, Request, Rng, Server, Stats};

/// Credentials the receiver requires (none when `BulkConfig::auth` is None).
#[derive(Clone, Debug)]
pub(crate) enum Auth {
    /// `Authorization: Basic base64(user:pass)`.
    Basic { user: String, pass: String },
    /// `Authorization: ApiKey <value>`; the value is base64 of `id:api_key`,
    /// as Elasticsearch's create-API-key call returns it in `encoded`.
    ApiKey(String),
}

impl Auth {
    /// The `Authorization` header value a correct client sends.
    pub(crate) fn header(&self) -> String {
        match self {
            Auth::Basic { user, pass } => format!("Basic {}", base64(format!("{user}:{pass}").as_bytes())),
            Auth::ApiKey(encoded) => format!("ApiKey {encoded}"),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct BulkConfig {
    pub(crate) auth: Option<Auth>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StoredDoc {
    pub(crate) index: String,
    pub(crate) id: String,
    pub(crate) source: Value,
    /// Successful writes of this `(index, id)`: above 1 means a duplicate.
    pub(crate) times_written: u32,
}

struct State {
    config: BulkConfig,
    faults: Faults,
    rng: Rng,
    stats: Stats,
    docs: BTreeMap<(String, String), StoredDoc>,
    seq_no: u64,
    next_auto_id: u64,
}

pub(crate) struct BulkReceiver {
    state: Arc<Mutex<State>>,
    server: Server,
}

impl BulkReceiver {
    pub(crate) fn start(config: BulkConfig) -> BulkReceiver {
        let state = Arc::new(Mutex::new(State {
            config,
            faults: Faults::default(),
            rng: Rng::new(0),
            stats: Stats::default(),
            docs: BTreeMap::new(),
            seq_no: 0,
            next_auto_id: 0,
        }));
        let shared = state.clone();
        let server = Server::start("bulk", Arc::new(move |req| handle(&mut shared.lock().expect("bulk state"), req)));
        BulkReceiver { state, server }
    }

    /// `http://127.0.0.1:port` (no trailing slash).
    pub(crate) fn url(&self) -> String {
        self.server.url()
    }

    pub(crate) fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Replaces the faults and reseeds the generator with `faults.seed`.
    pub(crate) fn set_faults(&self, faults: Faults) {
        let mut state = self.lock();
        state.rng = Rng::new(faults.seed);
        state.faults = faults;
    }

    /// See [`Server::outage`].
    pub(crate) fn outage(&self, on: bool) {
        self.server.outage(on);
    }

    /// Stored documents, ordered by `(index, id)`.
    pub(crate) fn docs(&self) -> Vec<StoredDoc> {
        self.lock().docs.values().cloned().collect()
    }

    pub(crate) fn doc_count(&self) -> usize {
        self.lock().docs.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("bulk state")
    }
}

fn es_error(status: u16, kind: &str, reason: &str) -> Value {
    let cause = json!({"type": kind, "reason": reason});
    json!({"error": {"root_cause": [cause.clone()], "type": kind, "reason": reason}, "status": status})
}

fn with_product(mut reply: Reply) -> Reply {
    // Elasticsearch 8 clients refuse a server that does not say this.
    reply.headers.push(("x-elastic-product", "Elasticsearch".to_string()));
    reply
}

fn handle(state: &mut State, req: Request) -> Reply {
    state.stats.requests += 1;
    let delay = Duration::from_millis(state.faults.delay_ms);
    let mut reply = with_product(route(state, &req));
    reply.delay = delay;
    reply
}

fn route(state: &mut State, req: &Request) -> Reply {
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let default_index = match (&req.method, segments.as_slice()) {
        (&Method::GET | &Method::HEAD, [""]) => return authorized(state, req).unwrap_or_else(cluster_info),
        (&Method::POST | &Method::PUT, ["_bulk"]) => None,
        (&Method::POST | &Method::PUT, [index, "_bulk"]) if !index.is_empty() => Some(index.to_string()),
        (_, ["_bulk"] | [_, "_bulk"]) => {
            let reason = format!("Incorrect HTTP method for uri [{}] and method [{}]", req.path, req.method);
            return Reply::json(405, json!({"error": reason, "status": 405}));
        }
        _ => {
            let reason = format!("no handler found for uri [{}] and method [{}]", req.path, req.method);
            return Reply::json(400, es_error(400, "illegal_argument_exception", &reason));
        }
    };
    if let Some(denied) = authorized(state, req) {
        return denied;
    }
    if let Some(refused) = content_type(state, req) {
        return refused;
    }
    let faults = state.faults.clone();
    if state.rng.hit(faults.request_5xx_per_mille) {
        state.stats.requests_5xx += 1;
        let reason = "injected: no shard available";
        return Reply::json(503, es_error(503, "unavailable_shards_exception", reason));
    }
    if state.rng.hit(faults.request_429_per_mille) {
        state.stats.requests_429 += 1;
        let reason = "injected: rejected execution of coordinating operation";
        return Reply::json(429, es_error(429, "es_rejected_execution_exception", reason));
    }
    let ops = match req.decoded_body().and_then(|body| parse(&body, default_index.as_deref())) {
        Ok(ops) => ops,
        Err(reason) => {
            state.stats.malformed_rejected.push(reason.clone());
            return Reply::json(400, es_error(400, "illegal_argument_exception", &reason));
        }
    };
    let filter = match filter_path(req.query.as_deref()) {
        Ok(filter) => filter,
        Err(reason) => return Reply::json(400, es_error(400, "illegal_argument_exception", &reason)),
    };
    let started = Instant::now();
    let items: Vec<Value> = ops.into_iter().map(|op| apply(state, op)).collect();
    let errors = items
        .iter()
        .any(|item| item.as_object().and_then(|o| o.values().next()).is_some_and(|r| r.get("error").is_some()));
    let reply = json!({"took": started.elapsed().as_millis() as u64, "errors": errors, "items": items});
    match filter {
        Some(filter) => {
            state.stats.filtered_replies += 1;
            Reply::json(200, filter.apply(reply))
        }
        None => Reply::json(200, reply),
    }
}

/// A `filter_path`: top-level keys kept, and keys kept inside each item's
/// result (`items.*.key`).
struct FilterPath {
    top: Vec<String>,
    item: Vec<String>,
}

fn filter_path(query: Option<&str>) -> Result<Option<FilterPath>, String> {
    let mut filter = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = value.replace("%2C", ",").replace("%2c", ",");
        match key {
            "pipeline"
            | "refresh"
            | "routing"
            | "timeout"
            | "wait_for_active_shards"
            | "require_alias"
            | "require_data_stream"
            | "list_executed_pipelines"
            | "include_source_on_error"
            | "_source"
            | "_source_includes"
            | "_source_excludes"
            | "error_trace"
            | "human"
            | "pretty" => {}
            "filter_path" => {
                let mut f = FilterPath { top: Vec::new(), item: Vec::new() };
                for path in value.split(',') {
                    match path.split('.').collect::<Vec<_>>().as_slice() {
                        [key] if !key.is_empty() && !key.contains('*') => f.top.push(key.to_string()),
                        ["items", "*", key] if !key.is_empty() && !key.contains('*') => f.item.push(key.to_string()),
                        _ => return Err(format!("filter_path form this receiver does not implement: [{path}]")),
                    }
                }
                filter = Some(f);
            }
            other => return Err(format!("request [/_bulk] contains unrecognized parameter: [{other}]")),
        }
    }
    Ok(filter)
}

impl FilterPath {
    /// What Elasticsearch answers: only the kept paths (an item result with
    /// none of its keys kept disappears, and `items` with it when empty).
    fn apply(&self, reply: Value) -> Value {
        let Value::Object(reply) = reply else { return reply };
        let mut out = Map::new();
        for (key, value) in reply {
            if self.top.contains(&key) {
                out.insert(key, value);
            } else if key == "items" && !self.item.is_empty() {
                let items: Vec<Value> = value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|item| {
                        let (op, result) = item.as_object()?.iter().next()?;
                        let kept: Map<String, Value> = result
                            .as_object()?
                            .iter()
                            .filter(|(k, _)| self.item.contains(k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        (!kept.is_empty()).then(|| json!({ op: kept }))
                    })
                    .collect();
                if !items.is_empty() {
                    out.insert(key, Value::Array(items));
                }
            }
        }
        Value::Object(out)
    }
}

/// `None` when the request carries the configured credentials.
fn authorized(state: &mut State, req: &Request) -> Option<Reply> {
    let auth = state.config.auth.as_ref()?;
    let sent = req.header("authorization");
    if sent == Some(auth.header().as_str()) {
        return None;
    }
    state.stats.unauthorized += 1;
    let reason = match sent {
        None => format!("missing authentication credentials for REST request [{}]", req.path),
        Some(_) => format!("unable to authenticate with provided credentials for REST request [{}]", req.path),
    };
    let mut reply = Reply::json(401, es_error(401, "security_exception", &reason));
    reply.headers.push(("www-authenticate", "Basic realm=\"security\", charset=\"UTF-8\"".to_string()));
    reply.headers.push(("www-authenticate", "ApiKey".to_string()));
    Some(reply)
}

fn content_type(state: &mut State, req: &Request) -> Option<Reply> {
    let sent = req.header("content-type").unwrap_or("");
    let mime = sent.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let ok = ["application/x-ndjson", "application/json"]
        .iter()
        .any(|t| mime == *t || mime == t.replace("application/", "application/vnd.elasticsearch+"));
    if ok {
        return None;
    }
    let reason = format!("Content-Type header [{sent}] is not supported");
    state.stats.malformed_rejected.push(reason.clone());
    Some(Reply::json(406, json!({"error": reason, "status": 406})))
}

fn cluster_info() -> Reply {
    Reply::json(
        200,
        json!({
            "name": "enrichd-recv",
            "cluster_name": "enrichd-test",
            "cluster_uuid": "recv-0000000000000000000",
            "version": {
                "number": "8.15.0",
                "build_flavor": "default",
                "build_type": "docker",
                "lucene_version": "9.11.1",
                "minimum_wire_compatibility_version": "7.17.0",
                "minimum_index_compatibility_version": "7.0.0"
            },
            "tagline": "You Know, for Search"
        }),
    )
}

#[derive(Debug)]
struct Op {
    create: bool,
    index: String,
    id: Option<String>,
    source: Map<String, Value>,
}

/// Parameters Elasticsearch 8 accepts on an `index`/`create` action line.
const KNOWN_PARAMS: [&str; 11] = [
    "_index",
    "_id",
    "routing",
    "pipeline",
    "require_alias",
    "require_data_stream",
    "dynamic_templates",
    "version",
    "version_type",
    "if_seq_no",
    "if_primary_term",
];

fn parse(body: &[u8], default_index: Option<&str>) -> Result<Vec<Op>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("the body is not UTF-8: {e}"))?;
    if text.is_empty() {
        return Err("request body is required".into());
    }
    let Some(text) = text.strip_suffix('\n') else {
        return Err("The bulk request must be terminated by a newline [\\n]".into());
    };
    let lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    let mut ops = Vec::new();
    let mut at = 0;
    while at < lines.len() {
        let n = at + 1; // 1-based line numbers, as Elasticsearch reports them
        let action: Value = json_line(lines[at], n)?;
        let Value::Object(action) = action else {
            return Err(format!("Malformed action/metadata line [{n}], expected START_OBJECT"));
        };
        let mut entries = action.into_iter();
        let (Some((verb, meta)), None) = (entries.next(), entries.next()) else {
            return Err(format!("Malformed action/metadata line [{n}], expected exactly one action"));
        };
        if verb != "index" && verb != "create" {
            return Err(format!(
                "Malformed action/metadata line [{n}], expected one of [create, index] but found [{verb}]"
            ));
        }
        let Value::Object(meta) = meta else {
            return Err(format!("Malformed action/metadata line [{n}], expected START_OBJECT after [{verb}]"));
        };
        if let Some(unknown) = meta.keys().find(|k| !KNOWN_PARAMS.contains(&k.as_str())) {
            return Err(format!("Action/metadata line [{n}] contains an unknown parameter [{unknown}]"));
        }
        let string = |key: &str| match meta.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("Action/metadata line [{n}]: [{key}] must be a string, found {other}")),
        };
        let index = match (string("_index")?, default_index) {
            (Some(index), _) => index,
            (None, Some(index)) => index.to_string(),
            (None, None) => return Err(format!("Validation Failed: 1: index is missing (action line [{n}]);")),
        };
        let id = string("_id")?;
        if let Some(id) = &id {
            if id.is_empty() || id.len() > 512 {
                return Err(format!("Action/metadata line [{n}]: _id must be 1 to 512 bytes, got {}", id.len()));
            }
        }
        let Some(source_line) = lines.get(at + 1) else {
            return Err(format!("action line [{n}] has no source line after it"));
        };
        let Value::Object(source) = json_line(source_line, n + 1)? else {
            return Err(format!("source line [{}] is not a JSON object", n + 1));
        };
        ops.push(Op { create: verb == "create", index, id, source });
        at += 2;
    }
    Ok(ops)
}

fn json_line(line: &str, n: usize) -> Result<Value, String> {
    if line.trim().is_empty() {
        return Err(format!("line [{n}] is blank"));
    }
    serde_json::from_str(line).map_err(|e| format!("line [{n}] is not one JSON value: {e}"))
}

/// Elasticsearch's index name rules (the subset a client can get wrong).
fn index_name_problem(index: &str) -> Option<&'static str> {
    if index.is_empty() {
        Some("must not be empty")
    } else if index != index.to_lowercase() {
        Some("must be lowercase")
    } else if index.starts_with(['_', '-', '+']) {
        Some("must not start with '_', '-', or '+'")
    } else if index.contains(['\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',', '#', ':']) {
        Some("must not contain the following characters [ , \", *, \\, <, |, ,, >, /, ?, #, :]")
    } else if index == "." || index == ".." || index.len() > 255 {
        Some("must not be '.', '..' or longer than 255 bytes")
    } else {
        None
    }
}

fn apply(state: &mut State, op: Op) -> Value {
    let verb = if op.create { "create" } else { "index" };
    let id = op.id.clone().unwrap_or_else(|| auto_id(state));
    let fail = |state: &mut State, status: u16, kind: &str, reason: String| {
        match status {
            429 => state.stats.items_failed_429 += 1,
            409 => state.stats.items_failed_409 += 1,
            _ => state.stats.items_failed_400 += 1,
        }
        json!({verb: {"_index": op.index, "_id": id, "status": status, "error": {"type": kind, "reason": reason}}})
    };
    if let Some(problem) = index_name_problem(&op.index) {
        let reason = format!("Invalid index name [{}], {problem}", op.index);
        return fail(state, 400, "invalid_index_name_exception", reason);
    }
    if state.rng.hit(state.faults.item_429_per_mille) {
        let reason = "injected: rejected execution of primary operation".to_string();
        return fail(state, 429, "es_rejected_execution_exception", reason);
    }
    if let Some(field) = state.faults.reject_field.clone().filter(|f| op.source.contains_key(f)) {
        let reason = format!("failed to parse field [{field}] in document with id '{id}'");
        return fail(state, 400, "mapper_parsing_exception", reason);
    }
    let key = (op.index.clone(), id.clone());
    let existing = state.docs.get(&key).map(|d| d.times_written);
    if op.create && existing.is_some() {
        let reason = format!("[{id}]: version conflict, document already exists (current version [1])");
        return fail(state, 409, "version_conflict_engine_exception", reason);
    }
    let times_written = existing.unwrap_or(0) + 1;
    state.docs.insert(
        key,
        StoredDoc { index: op.index.clone(), id: id.clone(), source: Value::Object(op.source), times_written },
    );
    state.stats.items_ok += 1;
    state.seq_no += 1;
    let (result, status) = if existing.is_some() { ("updated", 200) } else { ("created", 201) };
    json!({verb: {
        "_index": op.index, "_id": id, "_version": times_written, "result": result,
        "_shards": {"total": 2, "successful": 1, "failed": 0},
        "_seq_no": state.seq_no - 1, "_primary_term": 1, "status": status
    }})
}

/// A 20-character id like Elasticsearch's (URL-safe base64 alphabet),
/// from a counter (multiplied by an odd constant: a bijection, so ids never
/// repeat) so fault draws do not depend on how many ids were made.
fn auto_id(state: &mut State) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    state.next_auto_id += 1;
    let n = state.next_auto_id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut id = String::from("rcvAAAAAA");
    for i in 0..11 {
        id.push(ALPHABET[((n >> (6 * i)) & 63) as usize] as char);
    }
    id
}
