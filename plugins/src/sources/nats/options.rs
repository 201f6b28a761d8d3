//! Options of a `nats` source, and the checks serde cannot express.

use enrichd_engine::output::FieldError;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::nats::NatsConnection;

/// Largest fetch batch accepted.
const MAX_BATCH: usize = 10_000;

/// `[[source]] type = "nats"`: a durable pull consumer on a JetStream
/// stream. Each message body is a `/v1/ingest` envelope or NDJSON records
/// (optionally gzip); the message is acknowledged only once its enriched
/// events are accepted by every enabled output.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSourceOptions {
    #[serde(flatten)]
    pub connection: NatsConnection,
    /// The stream to consume. Required.
    pub stream: Option<String>,
    /// Subjects the stream is created with when it is missing and `create`
    /// is on (default: `filter_subject`).
    pub subjects: Vec<String>,
    /// The consumer's subject filter (default: every subject of the stream).
    pub filter_subject: Option<String>,
    /// The durable consumer's name (default `enrichd`): instances with the
    /// same name share the work, each message going to one of them.
    pub durable: String,
    /// Create the stream (file storage, `subjects`) and the durable
    /// consumer when they are missing (default true). An existing consumer
    /// is used as it is: its settings are not changed.
    pub create: bool,
    /// Messages delivered and not yet acknowledged, across every instance
    /// sharing the consumer, before the server stops delivering (default
    /// 1000).
    pub max_ack_pending: i64,
    /// Milliseconds the server waits for an acknowledgement before it
    /// delivers a message again (default 30000). While a message is being
    /// processed, enrichd tells the server it is in progress.
    pub ack_wait_ms: u64,
    /// Deliveries of one message before the server gives up on it (default
    /// -1: never). Bad messages are settled for good at once (dead-lettered,
    /// not redelivered), so redeliveries come only from outages and
    /// backpressure; a limit makes the server skip a message that met too
    /// many of them, which loses its events.
    pub max_deliver: i64,
    /// Messages asked for per fetch (default 64, at most 10000).
    pub batch: usize,
    /// Messages of a fetch processed at once (default 4).
    pub concurrency: usize,
    /// Milliseconds one fetch waits for messages (default 1000).
    pub fetch_wait_ms: u64,
    /// The record format of bodies that say nothing about themselves
    /// (`zeek.conn.v1`, `flows.v1`): they are then NDJSON records of it.
    /// Default: such bodies are `/v1/ingest` envelopes. A message's
    /// `Enrichd-Format` header (`envelope` or a record format) or its
    /// `Content-Type` (`application/json`: envelope,
    /// `application/x-ndjson`: records) wins over this.
    pub format: Option<String>,
}

impl Default for NatsSourceOptions {
    fn default() -> Self {
        NatsSourceOptions {
            connection: NatsConnection::default(),
            stream: None,
            subjects: Vec::new(),
            filter_subject: None,
            durable: "enrichd".into(),
            create: true,
            max_ack_pending: 1000,
            ack_wait_ms: 30_000,
            max_deliver: -1,
            batch: 64,
            concurrency: 4,
            fetch_wait_ms: 1000,
            format: None,
        }
    }
}

/// A stream, consumer or subject name: no spaces, and no `.`, `*`, `>` in
/// names (NATS refuses them there).
fn bad_name(name: &str) -> bool {
    name.is_empty() || name.contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
}

impl NatsSourceOptions {
    pub(crate) fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        self.connection.validate(&mut errors);
        match &self.stream {
            None => errors.push(FieldError::new("stream", "is required")),
            Some(s) if bad_name(s) => errors.push(FieldError::new("stream", "a name without spaces, `.`, `*`, `>`")),
            Some(_) => {}
        }
        if bad_name(&self.durable) {
            errors.push(FieldError::new("durable", "a name without spaces, `.`, `*`, `>`"));
        }
        if self.filter_subject.as_deref().is_some_and(|s| s.trim().is_empty() || s.contains(' ')) {
            errors.push(FieldError::new("filter_subject", "a subject without spaces"));
        }
        if self.subjects.iter().any(|s| s.trim().is_empty() || s.contains(' ')) {
            errors.push(FieldError::new("subjects", "subjects without spaces"));
        }
        if self.create && self.subjects.is_empty() && self.filter_subject.is_none() {
            errors.push(FieldError::new("subjects", "is required to create the stream (or set `filter_subject`)"));
        }
        if self.max_ack_pending < 1 {
            errors.push(FieldError::new("max_ack_pending", "must be at least 1"));
        }
        if !(1..=3_600_000).contains(&self.ack_wait_ms) {
            errors.push(FieldError::new("ack_wait_ms", "must be between 1 and 3600000"));
        }
        if self.max_deliver == 0 || self.max_deliver < -1 {
            errors.push(FieldError::new("max_deliver", "must be -1 (never give up) or at least 1"));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            errors.push(FieldError::new("batch", format!("must be between 1 and {MAX_BATCH}")));
        }
        if !(1..=256).contains(&self.concurrency) {
            errors.push(FieldError::new("concurrency", "must be between 1 and 256"));
        }
        if !(1..=60_000).contains(&self.fetch_wait_ms) {
            errors.push(FieldError::new("fetch_wait_ms", "must be between 1 and 60000"));
        }
        if let Some(f) = &self.format {
            if enrichd_engine::Format::from_name(f).is_none() {
                errors
                    .push(FieldError::new("format", format!("{f:?} is not a record format (zeek.conn.v1, flows.v1)")));
            }
        }
        errors
    }
}
