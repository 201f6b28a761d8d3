//! `elastic`: Elasticsearch / OpenSearch through the `_bulk` API.
//!
//! One `POST {url}/_bulk` per batch: an action line and the event per
//! event (NDJSON, gzipped). The bulk response says per item what happened,
//! so a partially failed batch resends only what failed:
//!
//! | response                          | outcome                            |
//! |-----------------------------------|------------------------------------|
//! | item 2xx                          | `Delivered`                        |
//! | item 409 on `create` (`id_mode = "hash"`) | `Duplicate` (already indexed by an earlier attempt: sent, and counted as a duplicate) |
//! | item 429 or 5xx                   | `Retry` (error type and reason)    |
//! | item other 4xx (mapping, parse)   | `Reject` (error type and reason)   |
//! | request 429, 5xx, 3xx, 401/403/404/408, network, timeout, unreadable 200 | all `Retry` |
//! | request 413                       | all `Reject`: lower `batch_max`    |
//! | request 400 and other 4xx         | all `Reject`                       |
//!
//! 401/403/404 are retried, not rejected: they mean the credentials or the
//! URL need fixing, and the events should wait for that rather than go to
//! the dead-letter. With several `urls`, batches go round-robin; a node
//! that cannot be connected to (nothing was sent) is skipped within the
//! same attempt, but a timeout is not (the node may have indexed the batch:
//! the runtime retries, and `id_mode = "hash"` makes that harmless).

mod options;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use enrichd_engine::component::Component;
use enrichd_engine::output::{
    redact_url, BoxFuture, FieldError, Outcome, OutputContext, OutputFamily, SendReport, Sink, SinkBatch,
};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use self::options::{ElasticOptions, IdMode};
use super::http::{execute, secret_header, snippet, HttpOptions};

/// The parts of a `_bulk` answer the outcomes are read from.
const BULK_FILTER_PATH: &str = "errors,items.*.error,items.*.status";

/// Factory of the `elastic` output.
pub struct ElasticOutput;

impl Component for ElasticOutput {
    type Family = OutputFamily;
    type Options = ElasticOptions;

    fn kind(&self) -> &'static str {
        "elastic"
    }

    fn description(&self) -> &'static str {
        "Elasticsearch / OpenSearch _bulk API: daily indices or a data stream"
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        &["password", "api_key"]
    }

    fn path_fields(&self) -> &'static [&'static str] {
        super::http::PATH_FIELDS
    }

    fn validate(&self, options: &ElasticOptions) -> Vec<FieldError> {
        options.validate()
    }

    fn build(&self, options: ElasticOptions, ctx: &OutputContext) -> anyhow::Result<Arc<dyn Sink>> {
        let client = options.http.client(&ctx.base_dir)?;
        let mut endpoints = Vec::new();
        for base in options.endpoints() {
            let mut url = reqwest::Url::parse(base).with_context(|| format!("url {}", redact_url(base)))?;
            let path = format!("{}/_bulk", url.path().trim_end_matches('/'));
            url.set_path(&path);
            url.set_fragment(None);
            if let Some(pipeline) = &options.pipeline {
                url.query_pairs_mut().append_pair("pipeline", pipeline);
            }
            // Only what the outcomes are read from (as Beats and Logstash
            // ask): a full item repeats `_index`, `_id`, `_version`,
            // `_shards`..., some 150 bytes per event to send and to read.
            url.query_pairs_mut().append_pair("filter_path", BULK_FILTER_PATH);
            endpoints.push(url);
        }
        anyhow::ensure!(!endpoints.is_empty(), "url is required");
        let auth = match (&options.username, &options.password, &options.api_key) {
            (Some(user), Some(password), _) => Some(basic_auth(user, password)?),
            (_, _, Some(key)) => Some(secret_header(&format!("ApiKey {key}"))?),
            _ => None,
        };
        Ok(Arc::new(ElasticSink {
            client,
            endpoints,
            next: AtomicUsize::new(0),
            auth,
            index_prefix: options.index_prefix,
            data_stream: options.data_stream,
            id_mode: options.id_mode,
            http: options.http,
        }))
    }
}

/// `Basic base64(user:password)`, built once and marked sensitive.
fn basic_auth(user: &str, password: &str) -> anyhow::Result<HeaderValue> {
    secret_header(&format!("Basic {}", base64(format!("{user}:{password}").as_bytes())))
}

/// Standard base64 with padding (RFC 7617 Basic credentials).
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

struct ElasticSink {
    client: reqwest::Client,
    /// `{url}/_bulk[?pipeline=...]` per node.
    endpoints: Vec<reqwest::Url>,
    /// Round-robin position.
    next: AtomicUsize,
    auth: Option<HeaderValue>,
    index_prefix: String,
    data_stream: Option<String>,
    id_mode: IdMode,
    http: HttpOptions,
}

impl Sink for ElasticSink {
    fn send<'a>(&'a self, batch: SinkBatch<'a>) -> BoxFuture<'a, SendReport> {
        Box::pin(self.send_batch(batch))
    }
}

impl ElasticSink {
    async fn send_batch(&self, batch: SinkBatch<'_>) -> SendReport {
        let n = batch.events.len();
        if n == 0 {
            return SendReport::all(0, Outcome::Delivered, None);
        }
        let body = self.bulk_body(&batch);
        let (body, mut headers) = self.http.encode(body, "application/x-ndjson");
        // Shared, not copied, when the batch goes to a second node.
        let body = bytes::Bytes::from(body);
        if let Some(auth) = &self.auth {
            // Replaces (through `headers` below) any basic auth reqwest took
            // from a `user:password@` in the URL: one Authorization header.
            headers.insert(AUTHORIZATION, auth.clone());
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut failures = Vec::new();
        for k in 0..self.endpoints.len() {
            let url = &self.endpoints[(start + k) % self.endpoints.len()];
            let request = self.client.post(url.clone()).headers(headers.clone()).body(body.clone());
            match execute(request, url.as_str()).await {
                Ok(reply) => return self.report(n, reply.status, &reply.body),
                Err(failed) => {
                    failures.push(failed.message);
                    if !failed.before_sending {
                        break;
                    }
                }
            }
        }
        SendReport::all(n, Outcome::Retry(failures.join("; ")), None)
    }

    /// The NDJSON body: per event an action line and the event.
    fn bulk_body(&self, batch: &SinkBatch<'_>) -> Vec<u8> {
        let size: usize = batch.events.iter().map(|e| e.json.len() + 120).sum();
        let mut body = Vec::with_capacity(size);
        let (op, index) = match &self.data_stream {
            Some(stream) => ("create", stream.clone()),
            None => {
                let op = if self.id_mode == IdMode::Hash { "create" } else { "index" };
                (op, format!("{}-{}", self.index_prefix, utc_date(batch.accepted_unix_ms)))
            }
        };
        // Names were checked (no quote or backslash): no JSON escaping needed.
        // The action line is the same for every event but the `_id`: its
        // two parts are written once per batch, not formatted per event.
        let head = format!("{{\"{op}\":{{\"_index\":\"{index}\"");
        let hash_ids = self.id_mode == IdMode::Hash;
        for event in batch.events {
            body.extend_from_slice(head.as_bytes());
            if hash_ids {
                body.extend_from_slice(b",\"_id\":\"");
                write_event_id(event.json, &mut body);
                body.push(b'"');
            }
            body.extend_from_slice(b"}}\n");
            // One line by the interface's promise (`OutEvent::json`).
            debug_assert!(!event.json.iter().any(|&b| b == b'\n' || b == b'\r'));
            body.extend_from_slice(event.json);
            body.push(b'\n');
        }
        body
    }

    /// Outcomes from a reply to the bulk request.
    fn report(&self, n: usize, status: u16, body: &[u8]) -> SendReport {
        let status_code = Some(status);
        let all = |outcome| SendReport::all(n, outcome, status_code);
        match status {
            // Every item succeeded (`errors: false`, one item per event):
            // nothing to read per item. Anything else (a failed item, a
            // 409 included, sets `errors`; another shape) is read once, in
            // full, below.
            200..=299 if says_all_delivered(body, n) => all(Outcome::Delivered),
            200..=299 => match serde_json::from_slice::<BulkResponse>(body) {
                Ok(bulk) if bulk.items.len() == n => SendReport {
                    outcomes: bulk.items.iter().map(|item| self.item_outcome(item)).collect(),
                    http_status: status_code,
                },
                Ok(bulk) => all(Outcome::Retry(format!("bulk response has {} items for {n} events", bulk.items.len()))),
                Err(e) => all(Outcome::Retry(format!("unreadable bulk response (HTTP {status}): {e}"))),
            },
            401 | 403 => all(Outcome::Retry(format!(
                "HTTP {status}: authentication or authorisation failed ({}); check username/password/api_key \
                 and the user's index privileges",
                error_text(body)
            ))),
            413 => all(Outcome::Reject("HTTP 413: batch too large for the cluster, lower batch_max".into())),
            404 | 408 | 429 | 300..=399 | 500.. | 0..=199 => {
                all(Outcome::Retry(format!("HTTP {status}: {}", error_text(body))))
            }
            _ => all(Outcome::Reject(format!("HTTP {status}: {}", error_text(body)))),
        }
    }

    fn item_outcome(&self, item: &BulkItem) -> Outcome {
        let result = &item.result;
        match result.status {
            200..=299 => Outcome::Delivered,
            409 if item.op == BulkOp::Create && self.id_mode == IdMode::Hash => Outcome::Duplicate,
            429 | 500.. => Outcome::Retry(result.describe()),
            400..=499 => Outcome::Reject(result.describe()),
            _ => Outcome::Retry(result.describe()),
        }
    }
}

/// The `_id` of an event with `id_mode = "hash"`: the first 128 bits of its
/// SHA-256, in hex, appended to `out` (no allocation per event).
pub(crate) fn write_event_id(json: &[u8], out: &mut Vec<u8>) {
    enrichd_engine::write_hex(&Sha256::digest(json)[..16], out);
}

/// `YYYY.MM.DD` of a Unix time in milliseconds, UTC.
pub(crate) fn utc_date(unix_ms: u64) -> String {
    let (year, month, day) = crate::civil::civil_from_days((unix_ms / 86_400_000) as i64);
    format!("{year:04}.{month:02}.{day:02}")
}

/// The reason in an Elasticsearch error body (`error.type: error.reason`),
/// else a short snippet of the body.
fn error_text(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: ErrorDetail,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.error.describe(),
        Err(_) if body.is_empty() => "no body".into(),
        Err(_) => snippet(&String::from_utf8_lossy(body), 200),
    }
}

#[derive(Deserialize)]
struct BulkResponse {
    items: Vec<BulkItem>,
}

/// Whether a 2xx `_bulk` answer says that all of `n` items succeeded, read
/// without a JSON parser when it has Elasticsearch's own shape:
/// `{"took":..,"errors":false,"items":[...]}`, compact, one `"status":` key
/// per item (filtered by [`BULK_FILTER_PATH`] or not). Reading a thousand
/// items with a parser was ~2 % of enrichd's CPU with an output enabled.
/// `false` means "read it properly" (the parser decides), never "failed":
/// any other shape, `errors: true`, or a count that differs.
///
/// Why a count of `"status":` is exact here: inside a JSON string a quote
/// is escaped, so those bytes can only be a key; an item result holds one
/// `status` key and an `error` only when `errors` is true.
fn says_all_delivered(body: &[u8], n: usize) -> bool {
    #[derive(Deserialize)]
    struct Head {
        errors: Option<bool>,
    }
    let Some(items_at) = memchr::memmem::find(body, b"\"items\":") else { return false };
    // The head is an object once its trailing comma becomes its end.
    let head = body[..items_at].trim_ascii();
    let Some(head) = head.strip_suffix(b",") else { return false };
    let mut closed = Vec::with_capacity(head.len() + 1);
    closed.extend_from_slice(head);
    closed.push(b'}');
    if !matches!(serde_json::from_slice::<Head>(&closed), Ok(Head { errors: Some(false) })) {
        return false;
    }
    let rest = &body[items_at + b"\"items\":".len()..];
    rest.trim_ascii().starts_with(b"[")
        && rest.trim_ascii().ends_with(b"]}")
        && memchr::memmem::find_iter(rest, b"\"status\":").count() == n
}

/// `{"index": {...}}` or `{"create": {...}}`: read without allocating
/// (one item per event: a map per item was a visible cost).
struct BulkItem {
    op: BulkOp,
    result: ItemResult,
}

#[derive(Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum BulkOp {
    Create,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for BulkItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Item;
        impl<'de> serde::de::Visitor<'de> for Item {
            type Value = BulkItem;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a bulk item: an object with one operation key")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<BulkItem, A::Error> {
                use serde::de::{Error, IgnoredAny};
                let op = map.next_key::<BulkOp>()?.ok_or_else(|| A::Error::custom("empty item"))?;
                let result = map.next_value()?;
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(BulkItem { op, result })
            }
        }
        d.deserialize_map(Item)
    }
}

#[derive(Deserialize)]
struct ItemResult {
    status: u16,
    error: Option<ErrorDetail>,
}

impl ItemResult {
    fn describe(&self) -> String {
        match &self.error {
            Some(e) => e.describe(),
            None => format!("status {}", self.status),
        }
    }
}

/// `error` is an object with `type` and `reason`, or (some proxies and old
/// versions) a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorDetail {
    Object {
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        reason: String,
    },
    Text(String),
}

impl ErrorDetail {
    fn describe(&self) -> String {
        match self {
            ErrorDetail::Object { kind, reason } => snippet(&format!("{kind}: {reason}"), 500),
            ErrorDetail::Text(text) => snippet(text, 500),
        }
    }
}
