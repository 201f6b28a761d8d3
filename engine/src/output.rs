//! The output interface: how enriched events leave enrichd for a SIEM or a
//! file, without the core knowing any destination.
//!
//! An output is a component of the [`OutputFamily`] registered under a kind name
//! (`elastic`, `splunk`, `file`, ...). For each enabled `[[output]]` entry
//! the service builds a [`Sink`] from the entry's options and hands it
//! batches of enriched events. The split of work is deliberate:
//!
//! - a **sink** speaks one protocol and makes **one attempt** per call: it
//!   sends the batch and says, per event, whether it was delivered, should
//!   be retried, or was refused for good ([`Outcome`]);
//! - the **delivery runtime** (in the service) owns everything that must
//!   be the same for every destination: queueing or spooling, batching,
//!   retries with backoff, the dead-letter, backpressure, shutdown and the
//!   counters. A new output therefore cannot get "nothing lost" wrong.
//!
//! Options are JSON objects (the API's `PUT /v1/outputs/{name}` body, or a
//! `[[output]]` table of `config.toml` converted to JSON): one model for
//! both. The runtime takes its own keys (`enabled`, `batch_max`,
//! `durability`, ...) out first; the rest is the output's typed
//! options (`Component::Options`, see [`crate::component`]).

use std::future::Future;
use std::pin::Pin;

pub use crate::component::{check_keys, check_options, FieldError};
use crate::component::{Factory, Family};
use serde_json::Value;

/// A boxed future, so [`Sink`] stays object-safe without an async runtime
/// in the core.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One enriched event handed to a sink.
#[derive(Clone, Copy, Debug)]
pub struct OutEvent<'a> {
    /// The event as one JSON object (no trailing newline), in the output's
    /// profile, on one line: the runtime hands sinks the lines the pipeline
    /// wrote (`batch::one_line` turned any raw CR or LF, whitespace between
    /// tokens, into a space), so a sink framing events by line breaks need
    /// not look for them again.
    pub json: &'a [u8],
    /// Unique per event within [`SinkBatch::id_scope`] and stable across
    /// retries (derived from the backlog position): sinks may use it as a
    /// delivery id.
    pub id: u64,
    /// Where the event came from when its input had an idempotency key
    /// ([`crate::source::Payload::origin`]): stable across redeliveries of
    /// the input, through any process.
    pub origin: Option<EventOrigin<'a>>,
}

/// An event's place in its input: the input's idempotency key and the
/// event's index among the input's events (0-based, in order). The same
/// input decodes to the same events in the same order, so `(key, index)`
/// names one event wherever and however often the input is processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventOrigin<'a> {
    pub key: &'a str,
    pub index: u32,
}

/// A batch of events for one attempt.
#[derive(Clone, Copy, Debug)]
pub struct SinkBatch<'a> {
    pub events: &'a [OutEvent<'a>],
    /// When enrichd accepted the events (Unix milliseconds, UTC): sinks that
    /// route by date (daily indices) use it.
    pub accepted_unix_ms: u64,
    /// Where event ids are unique: a random number of the output's backlog,
    /// kept with a spool (whose positions survive restarts) and drawn anew
    /// whenever a memory queue opens (it numbers from 0 again). A sink that
    /// derives a destination-side id (`Nats-Msg-Id`, a document id) from
    /// event ids includes it: retries of the same entry, before or after a
    /// restart, repeat the id, while another process (another instance
    /// publishing to the same stream) or a fresh memory queue never reuses
    /// one. Ids that also survive a redelivered input come from
    /// [`OutEvent::origin`].
    pub id_scope: u64,
}

/// What became of one event in one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The destination accepted it (and, where the protocol can say so,
    /// stored it).
    Delivered,
    /// Delivered, and the destination says it already had it (an id it
    /// deduplicated): counted as sent and as a duplicate.
    Duplicate,
    /// Not delivered this time; worth another attempt (throttling, server
    /// errors, network failures, timeouts). The text says why.
    Retry(String),
    /// Refused for good (a mapping error, a malformed event): retrying
    /// would fail again, so it goes to the dead-letter with this reason.
    Reject(String),
}

/// The result of one [`Sink::send`].
#[derive(Clone, Debug)]
pub struct SendReport {
    /// One outcome per event of the batch, in order.
    pub outcomes: Vec<Outcome>,
    /// The HTTP status of the (last) request, for protocols that have one.
    pub http_status: Option<u16>,
}

impl SendReport {
    /// Every event of a batch of `n` with the same outcome.
    pub fn all(n: usize, outcome: Outcome, http_status: Option<u16>) -> Self {
        SendReport { outcomes: vec![outcome; n], http_status }
    }
}

/// A destination for enriched events: one protocol, one attempt per call.
///
/// Implementations must not retry on their own (the runtime does, with the
/// configured backoff, and counts each attempt), must bound every call in
/// time (a request timeout), and must keep secrets out of every outcome
/// text (the runtime also masks the configured secret values).
pub trait Sink: Send + Sync {
    /// Sends `batch` once and reports per event.
    fn send<'a>(&'a self, batch: SinkBatch<'a>) -> BoxFuture<'a, SendReport>;

    /// Flushes and releases what the sink holds (files) at shutdown.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// What a sink is built with besides its options.
#[derive(Clone, Debug)]
pub struct OutputContext {
    /// The output's name (`name` of the entry, default its kind).
    pub name: String,
    /// The directory relative paths in options are resolved against.
    pub base_dir: std::path::PathBuf,
    /// A writable directory of this output's own (created by the runtime).
    pub state_dir: std::path::PathBuf,
    /// The runtime's `batch_max`: the most events one [`Sink::send`] gets.
    pub batch_max: usize,
    /// Where the sink reports errors no [`Outcome`] carries.
    pub errors: ErrorReport,
}

/// Where a sink reports trouble that no [`Outcome`] carries: a client
/// library's errors from its own threads (a broker down, credentials
/// refused), met between sends or while none is under way. Only logged,
/// an operator looking at the output saw nothing wrong until events
/// backed up; the runtime keeps the last one as the output's `last_error`
/// (masked with its secret values, like every text it keeps). The default
/// only logs (a sink built for a one-off probe).
#[derive(Clone)]
pub struct ErrorReport(std::sync::Arc<dyn Fn(String) + Send + Sync>);

impl ErrorReport {
    pub fn new(report: impl Fn(String) + Send + Sync + 'static) -> Self {
        ErrorReport(std::sync::Arc::new(report))
    }

    pub fn report(&self, error: impl Into<String>) {
        (self.0)(error.into())
    }
}

impl Default for ErrorReport {
    fn default() -> Self {
        ErrorReport::new(|error| tracing::warn!(%error, "output"))
    }
}

impl std::fmt::Debug for ErrorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ErrorReport")
    }
}

/// Outputs: built from an [`OutputContext`], they build a [`Sink`]. An
/// output implements [`Component`](crate::component::Component) with
/// `type Family = OutputFamily`.
pub struct OutputFamily;

impl Family for OutputFamily {
    type Context = OutputContext;
    type Built = dyn Sink;
}

/// What the registry holds for an output kind.
pub type OutputFactory = dyn Factory<OutputFamily>;

/// A settings value as views show it: every string that looks like a URL
/// (in arrays and objects too) passed through [`redact_url`].
pub fn redact_value(value: &Value) -> Value {
    match value {
        Value::String(s) if s.contains("://") => Value::String(redact_url(s)),
        Value::Array(items) => Value::Array(items.iter().map(redact_value).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), redact_value(v))).collect()),
        other => other.clone(),
    }
}

/// A URL with the parts that may carry secrets masked: `user:password@`,
/// the query string and the fragment. Scheme, host, port and path stay, so
/// the setting can still be recognised.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    if !scheme.is_empty() {
        out.push_str(scheme);
        out.push_str("://");
    }
    match authority.rfind('@') {
        Some(at) => {
            out.push_str("***@");
            out.push_str(&authority[at + 1..]);
        }
        None => out.push_str(authority),
    }
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    out.push_str(&tail[..path_end]);
    if tail[path_end..].starts_with('?') {
        out.push_str("?***");
    }
    if tail[path_end..].contains('#') {
        out.push_str("#***");
    }
    out
}

/// Checks that `url` is an absolute http(s) URL with a host.
pub fn check_http_url(field: &str, url: &str) -> Result<(), FieldError> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with(['/', '?', '#']) => Ok(()),
        _ => Err(FieldError::new(field, "must be an http:// or https:// URL with a host")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::Component;
    use serde_json::{Map, Value};
    use std::sync::Arc;

    #[test]
    fn credentials_in_urls_are_masked() {
        assert_eq!(redact_url("https://elastic:s3cret@es.example:9200/x"), "https://***@es.example:9200/x");
        assert_eq!(redact_url("https://es.example:9200/a@b"), "https://es.example:9200/a@b");
        assert_eq!(redact_url("http://h"), "http://h");
        assert_eq!(redact_url("https://h:8088/services/collector?token=abc"), "https://h:8088/services/collector?***");
        assert_eq!(redact_url("https://h?api_key=k#frag"), "https://h?***#***");
        assert_eq!(redact_url("https://u:p@h/x#a?b"), "https://***@h/x#***");
        assert_eq!(redact_url("https://h/p?q=a@b"), "https://h/p?***");
        assert_eq!(redact_url("https://u:p@h#x@y"), "https://***@h#***");
    }

    #[test]
    fn urls_need_a_scheme_and_host() {
        assert!(check_http_url("url", "https://es:9200").is_ok());
        assert!(check_http_url("url", "http://h").is_ok());
        for bad in ["ftp://h", "es:9200", "https://", "http:///x", ""] {
            assert!(check_http_url("url", bad).is_err(), "{bad}");
        }
    }

    #[derive(serde::Deserialize, schemars::JsonSchema, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Opts {
        url: Option<String>,
        batch: u32,
    }

    struct Dummy;
    impl Component for Dummy {
        type Family = OutputFamily;
        type Options = Opts;
        fn kind(&self) -> &'static str {
            "dummy"
        }
        fn description(&self) -> &'static str {
            "test"
        }
        fn validate(&self, o: &Opts) -> Vec<FieldError> {
            match &o.url {
                None => vec![FieldError::new("url", "is required")],
                Some(u) => check_http_url("url", u).err().into_iter().collect(),
            }
        }
        fn build(&self, _: Opts, _: &OutputContext) -> anyhow::Result<Arc<dyn Sink>> {
            anyhow::bail!("not built in tests")
        }
    }

    #[test]
    fn check_lists_every_field_error() {
        let options: Map<String, Value> = serde_json::from_str(r#"{"batch": "many", "bogus": 1, "url": 7}"#).unwrap();
        let errors = Dummy.check(&options);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["batch", "bogus", "url"], "{errors:?}");
        // A value only `validate` refuses is listed beside a type error.
        let options: Map<String, Value> = serde_json::from_str(r#"{"batch": "many", "url": "ftp://x"}"#).unwrap();
        let fields: Vec<String> = Dummy.check(&options).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["batch", "url"]);
        assert!(errors[1].message.contains("unknown field"), "{errors:?}");
        let options: Map<String, Value> = serde_json::from_str(r#"{"batch": 3}"#).unwrap();
        assert_eq!(Dummy.check(&options), [FieldError::new("url", "is required")]);
    }
}
