//! The source interface: how events arrive from somewhere other than
//! `POST /v1/ingest` (a broker's stream, later others), without the core
//! knowing any of them.
//!
//! A source is a component of the [`SourceFamily`] registered under a kind name. For each
//! enabled `[[source]]` entry the service builds a [`SourceRunner`] from the
//! entry's options and runs it with an [`Ingest`] handle: the **same**
//! decode → chain → encode → admission path the HTTP handler calls, so a
//! source inherits every limit, every 4xx check, the metrics and the
//! all-or-nothing admission to every enabled output. The split of work
//! mirrors the outputs' ([`crate::output`]):
//!
//! - a **source** speaks one protocol: it fetches messages, hands each
//!   body to [`Ingest::submit`] and settles the message with its broker
//!   from the answer;
//! - the **core** owns what must be the same for every source: the
//!   pipeline, admission and its backpressure, the dead-letter, counters,
//!   the API view and the metrics.
//!
//! The contract a source must keep (at least once, end to end):
//!
//! - acknowledge a message only after [`Ingest::submit`] answered
//!   [`Accepted`]: then every enabled output holds its events as durably as
//!   its `durability` says (spool fsync'd, memory queued, `ack` delivered);
//! - [`Refusal::BadInput`] will fail again however often it is retried:
//!   settle the message for good (never redeliver it) and record it with
//!   [`Ingest::dead_letter`];
//! - [`Refusal::Backpressure`] and [`Refusal::Unavailable`] are not the
//!   message's fault: give it back for a later attempt and stop taking new
//!   messages for a while (never buffer without bound).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::component::{Factory, Family};
use crate::output::BoxFuture;

/// What a message body is, as the source decided from its headers or
/// options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PayloadShape {
    /// A `/v1/ingest` envelope (`collector_id`, `format`, `records`).
    Envelope,
    /// Newline-delimited records of one format (a format name such as
    /// `zeek.conn.v1`; checked by the core).
    Ndjson { format: String },
}

/// One message body for the pipeline.
#[derive(Clone, Debug)]
pub struct Payload {
    pub body: Vec<u8>,
    /// The body is gzip-compressed (inflated by the core, within the same
    /// bound as an HTTP body).
    pub gzip: bool,
    pub shape: PayloadShape,
    /// The input's idempotency key: the same for every delivery of the same
    /// message (a broker's stream name and sequence), different for every
    /// other message. It travels with the batch through every output's
    /// backlog (also across restarts), and outputs that can deduplicate
    /// derive destination ids from it and each event's index in the
    /// payload ([`crate::output::EventOrigin`]), so a redelivered message
    /// does not land twice. `None`: no such identity (ids then come from
    /// the backlog position, which dedupes retries of the same entry only).
    pub origin: Option<String>,
}

/// The events are as safe as every enabled output's durability says: the
/// message may be acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub events: usize,
}

/// Why a payload was not accepted. Nothing of it was queued anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The payload itself is wrong (what and where in `message`): it will
    /// fail again. `code` is the same short code `/v1/ingest` answers.
    BadInput { code: String, message: String },
    /// An output's backlog is full: try again after `retry_after`, and take
    /// no new work meanwhile.
    Backpressure { message: String, retry_after: Duration },
    /// Not the payload's fault and not a full backlog (an `ack` output did
    /// not confirm in time, an internal failure): try again later.
    Unavailable { message: String, retry_after: Duration },
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::BadInput { message, .. }
            | Refusal::Backpressure { message, .. }
            | Refusal::Unavailable { message, .. } => message,
        }
    }
}

/// A message settled for good without being accepted, for the source's
/// dead-letter.
#[derive(Clone, Copy, Debug)]
pub struct DeadMessage<'a> {
    /// Where it came from, in the source's terms (e.g. the subject and the
    /// stream sequence), as a JSON object.
    pub origin: &'a Value,
    pub reason: &'a str,
    /// The body as received (the core keeps it whole, within the
    /// dead-letter's bound).
    pub body: &'a [u8],
}

/// A source's counters and state, read by the API view and the metrics.
/// The source updates them; the core creates them and keeps them across
/// reconfigurations.
#[derive(Debug)]
pub struct SourceStats {
    /// Messages taken from the broker (redeliveries included).
    pub messages: AtomicU64,
    /// Events in accepted messages.
    pub events: AtomicU64,
    /// Messages acknowledged after their events were accepted.
    pub acked: AtomicU64,
    /// Messages settled for good as bad input (dead-lettered).
    pub termed: AtomicU64,
    /// Messages given back for a later attempt (backpressure, outages).
    pub nacked: AtomicU64,
    /// Messages the broker delivered more than once.
    pub redelivered: AtomicU64,
    running: AtomicBool,
    /// Whether the broker answers now, as the source last saw it.
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Unix seconds of the last error (0: none), so a view can tell an
    /// old error from a current one.
    last_error_at: AtomicU64,
    /// Messages waiting in the broker for this consumer, as last reported
    /// ([`UNKNOWN_BACKLOG`]: not reported yet).
    backlog: AtomicU64,
}

/// `SourceStats::backlog` before a source has reported one.
const UNKNOWN_BACKLOG: u64 = u64::MAX;

impl Default for SourceStats {
    fn default() -> Self {
        SourceStats {
            messages: AtomicU64::new(0),
            events: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            termed: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            running: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            last_error: Mutex::new(None),
            last_error_at: AtomicU64::new(0),
            backlog: AtomicU64::new(UNKNOWN_BACKLOG),
        }
    }
}

impl SourceStats {
    pub fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn set_running(&self, running: bool) {
        self.running.store(running, Relaxed);
    }

    pub fn running(&self) -> bool {
        self.running.load(Relaxed)
    }

    /// Records (and logs) a problem; it stays until the next one, with
    /// when it happened.
    pub fn set_error(&self, source: &str, error: impl Into<String>) {
        let error = crate::limits::cap_message(error.into());
        tracing::warn!(source, %error, "source");
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.last_error_at.store(now, Relaxed);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Unix seconds of the last error (0: none).
    pub fn last_error_at(&self) -> u64 {
        self.last_error_at.load(Relaxed)
    }

    /// Whether the broker answers, as the source sees it now (connected,
    /// a fetch or a poll that worked; not: a connection lost, refused).
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Relaxed);
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    /// How many messages wait in the broker for this consumer (not yet
    /// delivered to it: a stream's pending count, a partition's lag), as
    /// the broker last said. What tells an operator that instances fall
    /// behind, before anything is lost. `None`: not known (yet, or the
    /// broker stopped saying).
    pub fn set_backlog(&self, messages: Option<u64>) {
        self.backlog.store(messages.unwrap_or(UNKNOWN_BACKLOG), Relaxed);
    }

    pub fn backlog(&self) -> Option<u64> {
        Some(self.backlog.load(Relaxed)).filter(|&n| n != UNKNOWN_BACKLOG)
    }
}

/// The core's side, handed to a running source.
pub trait Ingest: Send + Sync {
    /// Runs `payload` through the pipeline and admits it to every enabled
    /// output; resolves once the events are durably accepted (or not).
    fn submit(&self, payload: Payload) -> BoxFuture<'_, Result<Accepted, Refusal>>;
    /// Records a message settled for good (bad input) in the source's
    /// dead-letter (bounded, on disk) and counts it.
    fn dead_letter(&self, message: DeadMessage<'_>);
    /// This source's counters.
    fn stats(&self) -> &SourceStats;
}

/// Resolves when the source must stop (configuration changed, shutdown).
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How long a source's [`SourceRunner::run`] has to return once its
/// [`StopSignal`] resolved; the runtime aborts it after that. Final work
/// (a last offset commit) must fit within it.
pub const STOP_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// A running source: one protocol's consumer.
pub trait SourceRunner: Send + Sync {
    /// Consumes until `stop` resolves, then returns within [`STOP_BUDGET`]: messages not
    /// yet acknowledged are left to the broker's redelivery. Connection
    /// problems are retried inside (reported with
    /// [`SourceStats::set_error`]), never a reason to return early.
    fn run(self: Arc<Self>, ingest: Arc<dyn Ingest>, stop: StopSignal) -> BoxFuture<'static, ()>;
}

/// What a source is built with besides its options.
#[derive(Clone, Debug)]
pub struct SourceContext {
    /// The source's name (`name` of the entry, default its kind).
    pub name: String,
    /// The directory relative paths in options are resolved against.
    pub base_dir: std::path::PathBuf,
}

/// Sources: built from a [`SourceContext`], they build a [`SourceRunner`].
/// A source implements [`Component`](crate::component::Component) with
/// `type Family = SourceFamily`.
pub struct SourceFamily;

impl Family for SourceFamily {
    type Context = SourceContext;
    type Built = dyn SourceRunner;
}

/// What the registry holds for a source kind.
pub type SourceFactory = dyn Factory<SourceFamily>;
