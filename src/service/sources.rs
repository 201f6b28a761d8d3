//! The running `[[source]]` entries: each one a task of the source's kind
//! (from the registry; the core names none) fed the service's one ingest
//! step through an [`Ingest`] handle.
//!
//! Why it looks like this:
//! - **One pipeline.** [`Handle::submit`] calls [`super::ingest::ingest`],
//!   the function `POST /v1/ingest` calls: same limits, same 4xx checks,
//!   same metrics, same all-or-nothing admission. A source only maps the
//!   answer onto its broker (ack, term, nak): see the contract in
//!   `enrichd_engine::source`.
//! - **Reconciled like outputs.** The file's entries are checked whole
//!   (every problem listed, with its line) and every new runner is built
//!   before anything stops, so a bad entry on reload leaves the running
//!   sources as they were (keep-last-good). An unchanged entry keeps its
//!   task; a changed one is stopped and started again.
//! - **State outlives a task.** Counters and the dead-letter belong to the
//!   source's name (a [`SourceLane`]), kept across reconfigurations, so
//!   `GET /v1/sources` and the `telemetry_source_*` metrics never go back.
//! - **Poison messages go to a dead-letter**, the delivery runtime's
//!   bounded on-disk one (`state_dir/source-deadletter/<name>.ndjson`), with where
//!   the message came from and why it was refused, the body whole (see
//!   [`deadletter`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use enrichd_engine::output::check_keys;
use enrichd_engine::output::BoxFuture;
use enrichd_engine::source::{
    Accepted, DeadMessage, Ingest, Payload, PayloadShape, Refusal, SourceContext, SourceStats,
};
use enrichd_engine::{Format, Input, Registry};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::ingest::{ingest, AckWait, IngestError};
use super::AppState;
use crate::delivery::deadletter::DeadLetter;

mod deadletter;

/// Keys of a `[[source]]` entry the runtime takes; the rest are the kind's
/// own options.
pub(crate) const RUNTIME_KEYS: [&str; 4] = ["type", "name", "enabled", "deadletter_max_bytes"];

/// How long a stopping source gets before its task is aborted.
const STOP_TIMEOUT: Duration = enrichd_engine::source::STOP_BUDGET;

/// A `[[source]]` table of the file, as JSON, with its line.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SourceEntry {
    pub options: Map<String, Value>,
    pub line: Option<usize>,
}

/// A checked entry.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SourceSpec {
    pub kind: String,
    pub name: String,
    pub enabled: bool,
    pub deadletter_max_bytes: u64,
    /// The kind's own options (runtime keys removed).
    pub options: Map<String, Value>,
}

/// The runtime's keys of a `[[source]]` entry (the rest are the type's
/// own options).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SourceRuntime {
    /// The source type (`nats`). Required.
    #[serde(rename = "type")]
    pub kind: String,
    /// The source's name in the API, the metrics and its dead-letter
    /// (1-64 letters, digits, `_`, `-`; default: its type).
    pub name: Option<String>,
    /// Run the source (default true). A disabled source keeps its
    /// counters and dead-letter.
    pub enabled: bool,
    /// Bytes the source's dead-letter of refused messages keeps on disk,
    /// under `state_dir/source-deadletter/<name>.ndjson` (default 16777216, at
    /// least 4096); each message is kept whole, the oldest records go first
    /// (counted as lost `deadletter_evicted`), and a message larger than the
    /// whole bound is counted as lost `deadletter_too_large`.
    pub deadletter_max_bytes: u64,
}

impl Default for SourceRuntime {
    fn default() -> Self {
        SourceRuntime { kind: String::new(), name: None, enabled: true, deadletter_max_bytes: 16 << 20 }
    }
}

impl SourceSpec {
    /// Checks one entry: its runtime keys, then the kind's options; every
    /// problem listed.
    fn check(registry: &Registry, entry: &Map<String, Value>) -> Result<SourceSpec, String> {
        let (runtime, options): (Map<String, Value>, Map<String, Value>) =
            entry.iter().map(|(k, v)| (k.clone(), v.clone())).partition(|(k, _)| RUNTIME_KEYS.contains(&k.as_str()));
        let (errors, parsed) = check_keys::<SourceRuntime>(&runtime);
        let mut problems: Vec<String> = errors.into_iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
        let runtime = parsed.unwrap_or_default();
        let factory = registry.source(&runtime.kind);
        if factory.is_none() {
            let known: Vec<&str> = registry.sources().map(|f| f.kind()).collect();
            problems.push(format!("type: {:?} is not a source type (known: {})", runtime.kind, known.join(", ")));
        }
        let name = runtime.name.unwrap_or_else(|| runtime.kind.clone());
        if !valid_name(&name) {
            problems.push("name: 1-64 letters, digits, `_` and `-`".into());
        }
        if runtime.deadletter_max_bytes < 4096 {
            problems.push("deadletter_max_bytes: must be at least 4096".into());
        }
        if let Some(factory) = factory {
            problems.extend(factory.check(&options).into_iter().map(|e| format!("{}: {}", e.field, e.message)));
        }
        if problems.is_empty() {
            Ok(SourceSpec {
                kind: runtime.kind,
                name,
                enabled: runtime.enabled,
                deadletter_max_bytes: runtime.deadletter_max_bytes,
                options,
            })
        } else {
            Err(problems.join("; "))
        }
    }

    /// The settings with secret values replaced by `<key>_set: true` and
    /// credentials in URLs masked.
    fn view(&self, registry: &Registry) -> Value {
        let secrets = registry.source(&self.kind).map_or(&[][..], |f| f.secret_fields());
        let mut out = Map::new();
        for (k, v) in &self.options {
            if secrets.contains(&k.as_str()) {
                out.insert(format!("{k}_set"), Value::Bool(true));
            } else {
                // `nats://user:password@host` is as secret as `password`.
                out.insert(k.clone(), enrichd_engine::output::redact_value(v));
            }
        }
        Value::Object(out)
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks every entry; `Err` lists every problem with its line.
pub(crate) fn desired(registry: &Registry, entries: &[SourceEntry]) -> Result<Vec<SourceSpec>, String> {
    let mut out: Vec<SourceSpec> = Vec::new();
    let mut problems = Vec::new();
    for entry in entries {
        let at = entry.line.map_or(String::new(), |l| format!(" (line {l})"));
        match SourceSpec::check(registry, &entry.options) {
            Ok(spec) if out.iter().any(|s| s.name == spec.name) => {
                problems.push(format!("[[source]]{at}: a second source named {:?}", spec.name))
            }
            Ok(spec) => out.push(spec),
            Err(e) => problems.push(format!("[[source]]{at}: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems.join("; "))
    }
}

/// A source's lasting parts: counters and dead-letter, by name.
pub(crate) struct SourceLane {
    pub name: String,
    pub stats: SourceStats,
    pub deadletter: DeadLetter,
    /// The bound `deadletter` was opened with.
    pub deadletter_max_bytes: u64,
    pub dead_lettered: AtomicU64,
    /// Messages settled as bad input whose dead-letter record is gone:
    /// the write failed (a full disk), the bounded dead-letter evicted
    /// it, or it was larger than the whole bound. Counted, never silent.
    pub lost_deadletter_failed: AtomicU64,
    pub lost_deadletter_evicted: AtomicU64,
    pub lost_deadletter_too_large: AtomicU64,
}

struct Running {
    spec: SourceSpec,
    lane: Arc<SourceLane>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The running sources.
pub(crate) struct Sources {
    state_dir: PathBuf,
    base_dir: PathBuf,
    /// The file's `[[source]]` entries as last loaded.
    entries: Mutex<Vec<SourceEntry>>,
    running: tokio::sync::Mutex<Vec<Running>>,
    /// What is running, for readers that must not wait.
    summary: Mutex<Vec<(SourceSpec, Arc<SourceLane>)>>,
    lanes: Mutex<BTreeMap<String, Arc<SourceLane>>>,
    /// The service the handles feed (set once serving).
    service: OnceLock<Weak<AppState>>,
}

impl Sources {
    pub(crate) fn new(state_dir: PathBuf, base_dir: PathBuf) -> Self {
        Sources {
            state_dir,
            base_dir,
            entries: Mutex::default(),
            running: tokio::sync::Mutex::default(),
            summary: Mutex::default(),
            lanes: Mutex::default(),
            service: OnceLock::new(),
        }
    }

    /// Records the service the sources feed (called once at start).
    pub(crate) fn attach(&self, state: Weak<AppState>) {
        let _ = self.service.set(state);
    }

    pub(crate) fn set_entries(&self, entries: Vec<SourceEntry>) {
        *self.entries.lock().unwrap_or_else(|e| e.into_inner()) = entries;
    }

    pub(crate) fn entries(&self) -> Vec<SourceEntry> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn lane(&self, spec: &SourceSpec) -> anyhow::Result<Arc<SourceLane>> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lane) = lanes.get(&spec.name) {
            return Ok(lane.clone());
        }
        // Apart from the outputs' dead-letters: names may coincide.
        let dir = self.state_dir.join("source-deadletter").join(&spec.name);
        let deadletter = DeadLetter::open(&dir, &spec.name, spec.deadletter_max_bytes)
            .with_context(|| format!("opening the dead-letter of source {:?}", spec.name))?;
        let lane = Arc::new(SourceLane {
            name: spec.name.clone(),
            stats: SourceStats::default(),
            deadletter,
            deadletter_max_bytes: spec.deadletter_max_bytes,
            dead_lettered: AtomicU64::new(0),
            lost_deadletter_failed: AtomicU64::new(0),
            lost_deadletter_evicted: AtomicU64::new(0),
            lost_deadletter_too_large: AtomicU64::new(0),
        });
        lanes.insert(spec.name.clone(), lane.clone());
        Ok(lane)
    }

    /// Makes `desired` the running set (see the module docs).
    async fn apply(&self, registry: &Registry, desired: Vec<SourceSpec>) -> anyhow::Result<()> {
        let service = self.service.get().cloned().context("sources are not attached to the service yet")?;
        let mut running = self.running.lock().await;
        let mut fresh = Vec::new();
        for spec in desired {
            if running.iter().any(|r| r.spec == spec) {
                fresh.push((spec, None));
                continue;
            }
            let runner = if spec.enabled {
                let factory = registry.source(&spec.kind).context("unknown source type")?;
                let ctx = SourceContext { name: spec.name.clone(), base_dir: self.base_dir.clone() };
                Some(factory.build(&spec.options, &ctx).map_err(|e| anyhow::anyhow!("source {:?}: {e:#}", spec.name))?)
            } else {
                None
            };
            let lane = self.lane(&spec)?;
            fresh.push((spec, Some((runner, lane))));
        }
        let old = std::mem::take(&mut *running);
        let mut kept = Vec::new();
        for r in old {
            if fresh.iter().any(|(spec, _)| *spec == r.spec) {
                kept.push(r);
            } else {
                stop(r).await;
            }
        }
        for (spec, new) in fresh {
            let r = match new {
                None => {
                    let i = kept.iter().position(|r| r.spec == spec).expect("kept above");
                    kept.swap_remove(i)
                }
                Some((runner, lane)) => {
                    let (stop, mut rx) = watch::channel(false);
                    let task = runner.map(|runner| {
                        let handle: Arc<dyn Ingest> = Arc::new(Handle { service: service.clone(), lane: lane.clone() });
                        let signal = Box::pin(async move {
                            let _ = rx.wait_for(|s| *s).await;
                        });
                        let lane = lane.clone();
                        tokio::spawn(async move {
                            lane.stats.set_running(true);
                            runner.run(handle, signal).await;
                            lane.stats.set_running(false);
                        })
                    });
                    Running { spec, lane, stop, task }
                }
            };
            running.push(r);
        }
        *self.summary.lock().unwrap_or_else(|e| e.into_inner()) =
            running.iter().map(|r| (r.spec.clone(), r.lane.clone())).collect();
        Ok(())
    }

    /// Stops every source (before the outputs are flushed at shutdown):
    /// what they had not acknowledged is redelivered by their broker.
    pub(crate) async fn shutdown(&self) {
        let running = std::mem::take(&mut *self.running.lock().await);
        futures_util::future::join_all(running.into_iter().map(stop)).await;
        self.summary.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// `GET /v1/sources`: each configured source's state and counters.
    pub(crate) fn views(&self, registry: &Registry) -> Vec<Value> {
        let summary = self.summary.lock().unwrap_or_else(|e| e.into_inner()).clone();
        summary
            .iter()
            .map(|(spec, lane)| {
                let s = &lane.stats;
                let dead = lane.deadletter.stats();
                let state = match (spec.enabled, s.running()) {
                    (false, _) => "disabled",
                    (true, true) => "running",
                    (true, false) => "stopped",
                };
                json!({
                    "name": spec.name,
                    "type": spec.kind,
                    "enabled": spec.enabled,
                    "state": state,
                    // Whether the broker answers now; `last_error` may be
                    // an old one (`last_error_at` says when).
                    "connected": state == "running" && s.connected(),
                    // Messages waiting in the broker for this source, as
                    // the broker last said (`null`: not known).
                    "backlog": s.backlog().filter(|_| state == "running"),
                    "last_error": s.last_error(),
                    "last_error_at": (s.last_error_at() > 0)
                        .then(|| enrichd_engine::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(s.last_error_at()))),
                    "settings": spec.view(registry),
                    "counters": counters(lane),
                    "deadletter": { "events": dead.events, "bytes": dead.bytes },
                })
            })
            .collect()
    }

    /// Every source's numbers, for the metrics.
    pub(crate) fn readings(&self) -> Vec<crate::metrics::prometheus::SourceReading> {
        let summary = self.summary.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let lanes: Vec<Arc<SourceLane>> =
            self.lanes.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        lanes
            .iter()
            .map(|lane| {
                let s = &lane.stats;
                crate::metrics::prometheus::SourceReading {
                    name: lane.name.clone(),
                    enabled: summary.iter().any(|(spec, l)| spec.enabled && Arc::ptr_eq(l, lane)),
                    running: s.running(),
                    connected: s.running() && s.connected(),
                    backlog: s.backlog().filter(|_| s.running()),
                    messages: s.messages.load(Relaxed),
                    events: s.events.load(Relaxed),
                    acked: s.acked.load(Relaxed),
                    termed: s.termed.load(Relaxed),
                    nacked: s.nacked.load(Relaxed),
                    redelivered: s.redelivered.load(Relaxed),
                    dead_lettered: lane.dead_lettered.load(Relaxed),
                    lost: vec![
                        ("deadletter_write_failed", lane.lost_deadletter_failed.load(Relaxed)),
                        ("deadletter_evicted", lane.lost_deadletter_evicted.load(Relaxed)),
                        ("deadletter_too_large", lane.lost_deadletter_too_large.load(Relaxed)),
                    ],
                }
            })
            .collect()
    }

    /// The names of the running entries (sorted).
    pub(crate) fn names(&self) -> Vec<String> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// The dead-letter of source `name`.
    pub(crate) fn lane_named(&self, name: &str) -> Option<Arc<SourceLane>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }
}

fn counters(lane: &SourceLane) -> Value {
    let s = &lane.stats;
    json!({
        "messages": s.messages.load(Relaxed),
        "events": s.events.load(Relaxed),
        "acked": s.acked.load(Relaxed),
        "termed": s.termed.load(Relaxed),
        "nacked": s.nacked.load(Relaxed),
        "redelivered": s.redelivered.load(Relaxed),
        "dead_lettered": lane.dead_lettered.load(Relaxed),
        "lost": {
            "deadletter_write_failed": lane.lost_deadletter_failed.load(Relaxed),
            "deadletter_evicted": lane.lost_deadletter_evicted.load(Relaxed),
            "deadletter_too_large": lane.lost_deadletter_too_large.load(Relaxed),
        },
    })
}

async fn stop(r: Running) {
    r.stop.send_replace(true);
    if let Some(mut task) = r.task {
        if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
            tracing::warn!(source = %r.spec.name, "source did not stop in time; aborted");
            task.abort();
        }
    }
    r.lane.stats.set_running(false);
}

/// Applies the file's `[[source]]` entries (as last loaded) to the running
/// sources. `Err` names what is wrong; the running sources are unchanged.
pub(crate) async fn reconcile(state: &AppState) -> Result<(), String> {
    let registry = state.engine.registry();
    let desired = desired(registry, &state.sources.entries())?;
    state.sources.apply(registry, desired).await.map_err(|e| format!("{e:#}"))
}

/// What a running source holds: the service (weakly: the service owns the
/// sources) and its lane.
struct Handle {
    service: Weak<AppState>,
    lane: Arc<SourceLane>,
}

impl Ingest for Handle {
    fn submit(&self, payload: Payload) -> BoxFuture<'_, Result<Accepted, Refusal>> {
        Box::pin(async move {
            let arrived = Instant::now();
            let Some(state) = self.service.upgrade() else {
                return Err(Refusal::Unavailable {
                    message: "shutting down".into(),
                    retry_after: Duration::from_secs(1),
                });
            };
            // With no output, accepting would enrich the events into
            // nothing and acknowledge them away: leave them in the broker.
            if state.delivery.active().is_empty() {
                return Err(Refusal::Unavailable {
                    message: "no output is enabled: messages stay in the broker until one is".into(),
                    retry_after: Duration::from_secs(1),
                });
            }
            let max = state.config.server.max_body_bytes;
            let origin = payload.origin.clone();
            let input = decode(payload, max).inspect_err(|_| state.metrics.record_rejected_batch())?;
            match ingest(&state, input, arrived, None, origin.as_deref(), AckWait::UntilDelivered).await {
                Ok(done) => {
                    SourceStats::count(&self.lane.stats.events, done.events as u64);
                    Ok(Accepted { events: done.events })
                }
                Err(IngestError::BadInput(e)) => {
                    state.metrics.record_rejected_batch();
                    Err(Refusal::BadInput { code: e.code().to_string(), message: e.to_string() })
                }
                Err(IngestError::Backpressure(r)) => Err(Refusal::Backpressure {
                    message: r.message,
                    retry_after: Duration::from_secs(r.retry_after_secs.max(1)),
                }),
                // Waited for without a time limit (`AckWait::UntilDelivered`):
                // only a shutdown ends the wait. The message goes back to the
                // broker; the queued events are delivered or dead-lettered
                // at shutdown, so a redelivery may bring them twice (at
                // least once), never zero times.
                Err(IngestError::AckTimeout { output, .. }) => Err(Refusal::Unavailable {
                    message: format!("shutting down before output {output:?} confirmed delivery"),
                    retry_after: Duration::from_secs(1),
                }),
                Err(IngestError::Internal) => Err(Refusal::Unavailable {
                    message: "enrichment failed; the message was not processed".into(),
                    retry_after: Duration::from_secs(1),
                }),
            }
        })
    }

    fn dead_letter(&self, message: DeadMessage<'_>) {
        deadletter::record(&self.lane, message);
    }

    fn stats(&self) -> &SourceStats {
        &self.lane.stats
    }
}

/// The payload as pipeline input: inflated within `max` bytes, its shape
/// checked. Refusals carry the same codes as `/v1/ingest`.
fn decode(payload: Payload, max: usize) -> Result<Input, Refusal> {
    let bad = |code: &str, message: String| Refusal::BadInput { code: code.to_string(), message };
    let too_large = || bad("body_too_large", format!("body is larger than {max} bytes (server.max_body_bytes)"));
    let body = if payload.gzip {
        match enrichd_engine::limits::gunzip_capped(&payload.body, max) {
            Ok(out) => out,
            Err(Some(e)) => return Err(bad("decompress_failed", format!("gzip body could not be decompressed: {e}"))),
            Err(None) => return Err(too_large()),
        }
    } else {
        payload.body
    };
    if body.len() > max {
        return Err(too_large());
    }
    match payload.shape {
        PayloadShape::Envelope => Ok(Input::Envelope(body)),
        PayloadShape::Ndjson { format } => {
            let format = Format::from_name(&format).ok_or_else(|| {
                bad("unknown_format", format!("unsupported format {format:?}: expected zeek.conn.v1 or flows.v1"))
            })?;
            let text = String::from_utf8(body).map_err(|e| {
                bad("invalid_utf8", format!("body is not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()))
            })?;
            Ok(Input::Ndjson { text, format, first_index: 1 })
        }
    }
}

#[cfg(test)]
mod tests;
