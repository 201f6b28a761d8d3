//! An output's settings: the runtime's keys, shared by every kind, and the
//! kind's own options, in one JSON object (the API body or an `[[output]]`
//! table).
//!
//! The runtime's keys are taken out first and checked here; what remains
//! goes to the kind's [`Factory::check`](enrichd_engine::component::Factory::check). Both lists of problems are
//! returned together, so a `PUT` with five mistakes gets five field errors
//! in one 422, not one per attempt.

use enrichd_engine::output::FieldError;
use enrichd_engine::Registry;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where accepted events wait for their output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Durability {
    /// Appended to a checksummed on-disk spool and fsync'd before
    /// `/v1/ingest` answers; a restart resumes delivery.
    Spool,
    /// A bounded in-memory queue: faster, but what is queued is lost if
    /// the process dies (counted as lost on a clean shutdown that cannot
    /// deliver it).
    Memory,
    /// `/v1/ingest` answers only once this output has delivered (or
    /// dead-lettered) the batch.
    Ack,
}

/// The runtime's keys of an output entry.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RuntimeOptions {
    /// The output kind: `elastic`, `splunk`, `file`. Implied by the name in
    /// `POST`/`PUT /v1/outputs/{kind}`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The output's name (letters, digits, `_`, `-`); default: its kind.
    /// Names the spool, the dead-letter and the metrics label.
    pub name: String,
    /// Off: events are not queued for this output (its backlog stays).
    /// `EXPORT_<NAME>_ENABLED` overrides it.
    pub enabled: bool,
    /// Most events in one request to the destination (1..=50000).
    pub batch_max: usize,
    /// Longest an event waits for a batch to fill, in milliseconds.
    pub flush_interval_ms: u64,
    /// Batches sent at once (1..=64): more hides a slow destination's
    /// latency (Splunk indexer acks); 1 sends strictly one after another.
    pub max_in_flight: usize,
    /// `spool` (default), `memory` or `ack`; see README "Delivery".
    pub durability: Durability,
    /// Attempts after the first for an event the destination refused
    /// temporarily while accepting others (429 items, say); then it is
    /// dead-lettered. While the destination refuses *every* event (down,
    /// throttling everything, credentials rejected) attempts are not
    /// counted: the backlog waits, bounded by the spool or queue.
    pub max_retries: u32,
    /// First wait before a retry, in milliseconds; doubled per failed
    /// attempt with full jitter.
    pub backoff_initial_ms: u64,
    /// Longest wait between retries, in milliseconds.
    pub backoff_max_ms: u64,
    /// Bound of the spool on disk, in bytes: at it, `/v1/ingest` answers
    /// 503 with `Retry-After`.
    pub spool_max_bytes: u64,
    /// Bound of the in-memory queue (`memory`, `ack`), in events.
    pub queue_max_events: u64,
    /// Bound of the in-memory queue (`memory`, `ack`), in bytes of memory
    /// its events take (their NDJSON and 8 bytes per event of line ends).
    pub queue_max_bytes: u64,
    /// Bound of the dead-letter, in bytes; the oldest records are evicted
    /// past it (and counted as lost).
    pub deadletter_max_bytes: u64,
    /// The output profile events are written in (`v1`, `stage3`, `ecs`, a
    /// profile file's name); default: `[profiles] default`.
    pub profile: Option<String>,
    /// `ack` mode: how long `/v1/ingest` waits for delivery before
    /// answering 504 (the events stay queued and are still delivered).
    pub ack_mode_timeout_ms: u64,
}

pub(crate) const BATCH_MAX_LIMIT: usize = 50_000;

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            kind: String::new(),
            name: String::new(),
            enabled: true,
            batch_max: 1000,
            flush_interval_ms: 1000,
            max_in_flight: 4,
            durability: Durability::Spool,
            max_retries: 8,
            backoff_initial_ms: 200,
            backoff_max_ms: 30_000,
            spool_max_bytes: 1 << 30,
            queue_max_events: 100_000,
            queue_max_bytes: 256 << 20,
            deadletter_max_bytes: 256 << 20,
            profile: None,
            ack_mode_timeout_ms: 30_000,
        }
    }
}

/// The runtime's key names (the fields of [`RuntimeOptions`]).
pub(crate) const RUNTIME_KEYS: [&str; 17] = [
    "type",
    "name",
    "enabled",
    "batch_max",
    "flush_interval_ms",
    "max_in_flight",
    "durability",
    "max_retries",
    "backoff_initial_ms",
    "backoff_max_ms",
    "spool_max_bytes",
    "queue_max_events",
    "queue_max_bytes",
    "deadletter_max_bytes",
    "profile",
    "ack_mode_timeout_ms",
    // Accepted and ignored: the reference project's request carries it.
    "description",
];

/// One `[[output]]` entry: its options as JSON (the API's model) and the
/// line of its header, for messages.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutputEntry {
    pub options: serde_json::Map<String, serde_json::Value>,
    pub line: Option<usize>,
}

/// A checked output entry.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OutputSpec {
    pub runtime: RuntimeOptions,
    /// The kind's own options (secrets included: never show this).
    pub options: Map<String, Value>,
}

impl OutputSpec {
    /// Splits and checks `entry`. `implied` is the name from the URL of
    /// `PUT /v1/outputs/{name}` (and the kind, when it names one).
    pub(crate) fn check(
        registry: &Registry,
        entry: &Map<String, Value>,
        implied: Option<&str>,
    ) -> Result<OutputSpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut runtime_map = Map::new();
        let mut options = Map::new();
        for (key, value) in entry {
            if key == "description" {
                continue;
            }
            if RUNTIME_KEYS.contains(&key.as_str()) {
                runtime_map.insert(key.clone(), value.clone());
            } else {
                options.insert(key.clone(), value.clone());
            }
        }
        if let Some(name) = implied {
            match runtime_map.get("name").and_then(Value::as_str) {
                Some(given) if given != name => {
                    errors.push(FieldError::new("name", format!("differs from the name in the path ({name:?})")))
                }
                _ => {
                    runtime_map.insert("name".into(), name.into());
                }
            }
            if !runtime_map.contains_key("type") && registry.output(name).is_some() {
                runtime_map.insert("type".into(), name.into());
            }
        }
        let (key_errors, parsed) = enrichd_engine::output::check_keys::<RuntimeOptions>(&runtime_map);
        errors.extend(key_errors);
        let mut runtime = parsed.unwrap_or_default();
        if runtime.name.is_empty() {
            runtime.name = runtime.kind.clone();
        }
        errors.extend(runtime_errors(&runtime));
        match registry.output(&runtime.kind) {
            None if runtime.kind.is_empty() => errors.push(FieldError::new("type", "is required")),
            None => errors.push(FieldError::new(
                "type",
                format!(
                    "unknown output type {:?}; known: {}",
                    runtime.kind,
                    registry.outputs().map(|f| f.kind()).collect::<Vec<_>>().join(", ")
                ),
            )),
            Some(factory) => {
                errors.extend(factory.check(&options));
                if implied.is_some() {
                    errors.extend(confined_paths(factory.path_fields(), &options));
                }
            }
        }
        if errors.is_empty() {
            Ok(OutputSpec { runtime, options })
        } else {
            Err(errors)
        }
    }

    /// The secret values of this entry (to mask them in any text).
    pub(crate) fn secrets(&self, registry: &Registry) -> Vec<String> {
        let Some(factory) = registry.output(&self.runtime.kind) else { return Vec::new() };
        factory
            .secret_fields()
            .iter()
            .filter_map(|f| self.options.get(*f).and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The entry as shown by the API: every key but secrets, which appear
    /// as `<name>_set: true`; URLs with credentials masked.
    pub(crate) fn view(&self, registry: &Registry) -> Value {
        let mut out = match serde_json::to_value(&self.runtime) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let secret_fields = registry.output(&self.runtime.kind).map(|f| f.secret_fields()).unwrap_or(&[]);
        for (key, value) in &self.options {
            if secret_fields.contains(&key.as_str()) {
                out.insert(format!("{key}_set"), Value::Bool(!value.is_null()));
            } else {
                out.insert(key.clone(), enrichd_engine::output::redact_value(value));
            }
        }
        Value::Object(out)
    }
}

/// The directory, under the state directory, that files named by
/// API-set outputs live in ([`confined_paths`]).
pub(crate) const API_FILES_DIR: &str = "output-files";

/// Settings that come through the API may name files only inside
/// `<state_dir>/output-files/`: a relative path of plain components. A key
/// that may change outputs must not be a way to append events to any file
/// the service can write (a shell profile, a cron file) or to probe files
/// it can read. `config.toml` entries are the operator's and stay free.
fn confined_paths(fields: &[&str], options: &Map<String, Value>) -> Vec<FieldError> {
    use std::path::{Component, Path};
    fields
        .iter()
        .filter_map(|field| Some((*field, options.get(*field)?.as_str()?)))
        .filter(|(_, path)| !Path::new(path).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)))
        .map(|(field, _)| {
            FieldError::new(
                field,
                format!("set through the API, a path must be relative to the state directory's {API_FILES_DIR}/ and stay inside it (no absolute path, no `..`)"),
            )
        })
        .collect()
}

fn runtime_errors(r: &RuntimeOptions) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if !(1..=BATCH_MAX_LIMIT).contains(&r.batch_max) {
        errors.push(FieldError::new("batch_max", format!("must be in 1..={BATCH_MAX_LIMIT}")));
    }
    if !(1..=3_600_000).contains(&r.flush_interval_ms) {
        errors.push(FieldError::new("flush_interval_ms", "must be in 1..=3600000"));
    }
    if !(1..=64).contains(&r.max_in_flight) {
        errors.push(FieldError::new("max_in_flight", "must be in 1..=64"));
    }
    if r.max_retries > 1000 {
        errors.push(FieldError::new("max_retries", "must be at most 1000"));
    }
    if r.backoff_initial_ms == 0 || r.backoff_initial_ms > r.backoff_max_ms {
        errors.push(FieldError::new("backoff_initial_ms", "must be at least 1 and at most backoff_max_ms"));
    }
    if r.spool_max_bytes < 1 << 20 {
        errors.push(FieldError::new("spool_max_bytes", "must be at least 1048576 (1 MiB)"));
    }
    if r.queue_max_events == 0 {
        errors.push(FieldError::new("queue_max_events", "must be at least 1"));
    }
    if r.queue_max_bytes < 1 << 16 {
        errors.push(FieldError::new("queue_max_bytes", "must be at least 65536"));
    }
    if r.deadletter_max_bytes < 1 << 16 {
        errors.push(FieldError::new("deadletter_max_bytes", "must be at least 65536"));
    }
    if r.ack_mode_timeout_ms == 0 {
        errors.push(FieldError::new("ack_mode_timeout_ms", "must be at least 1"));
    }
    if !valid_name(&r.name) && !r.name.is_empty() {
        errors.push(FieldError::new("name", "use 1-64 letters, digits, `_` and `-`"));
    }
    errors
}

/// Output names become file names and metric labels.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `EXPORT_<NAME>_ENABLED` (name upper-cased, `-` as `_`), the switch
/// teams already use for `EXPORT_ELASTIC_ENABLED` / `EXPORT_SPLUNK_ENABLED`.
pub(crate) fn enabled_override(name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<bool>, String> {
    let var = format!("EXPORT_{}_ENABLED", name.to_ascii_uppercase().replace('-', "_"));
    let Some(value) = env(&var) else { return Ok(None) };
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(Some(true)),
        "0" | "false" | "no" | "off" | "" => Ok(Some(false)),
        _ => Err(format!("{var}={value:?} is not a boolean (true/false, 1/0, yes/no, on/off)")),
    }
}
