//! Live metrics: exact counters, rolling windows, latency quantiles,
//! distinct sources and top-N lists, for `GET /v1/metrics`, the
//! `/v1/stream` event stream and Prometheus' `GET /metrics`.
//!
//! Shape of the machinery, and why:
//! - Ingest threads fold each enriched batch into their own shard
//!   ([`feed`]): no lock shared by the ingest path, none per event.
//! - A ticker (every second) and every reader pour the shards into the
//!   [`aggregate`]: per-second tallies ([`window`]), latency histograms
//!   ([`latency`]), heavy-hitter summaries ([`topn`]) and HyperLogLogs
//!   ([`distinct`]). Windows are wall-clock aligned and roll on their own.
//! - Both outputs are rendered from one [`Reading`] ([`report`] for JSON,
//!   [`prometheus`] for the text exposition), so they cannot disagree.
//! - Per-request counters (status classes, refused batches, work in
//!   flight) are plain relaxed atomics bumped once per request.

pub(crate) mod aggregate;
pub(crate) mod clock;
pub(crate) mod distinct;
pub(crate) mod feed;
pub(crate) mod latency;
mod monotonic;
pub(crate) mod process;
pub(crate) mod prometheus;
pub(crate) mod report;
pub(crate) mod summary;
pub(crate) mod topn;
pub(crate) mod window;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use std::sync::Arc;

use enrichd_engine::{Batch, Chain, Event, FactInfo, Observer, Timing};

use aggregate::Aggregate;
pub(crate) use aggregate::Reading;
use clock::{Clock, SystemClock};
use feed::Shards;

/// What a request was for, as the request counters label it: few, fixed
/// values (a label per path would let any client grow the exposition),
/// enough to leave scrapes and the dashboard out of an error ratio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteGroup {
    Ingest,
    Metrics,
    Health,
    Outputs,
    Api,
    Dashboard,
    Other,
}

impl RouteGroup {
    pub(crate) const ALL: [RouteGroup; 7] = [
        RouteGroup::Ingest,
        RouteGroup::Metrics,
        RouteGroup::Health,
        RouteGroup::Outputs,
        RouteGroup::Api,
        RouteGroup::Dashboard,
        RouteGroup::Other,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            RouteGroup::Ingest => "ingest",
            RouteGroup::Metrics => "metrics",
            RouteGroup::Health => "health",
            RouteGroup::Outputs => "outputs",
            RouteGroup::Api => "api",
            RouteGroup::Dashboard => "dashboard",
            RouteGroup::Other => "other",
        }
    }
}

/// Status classes the request counters label: 2xx (and 3xx), 4xx, 5xx.
pub(crate) const STATUS_CLASSES: [&str; 3] = ["2xx", "4xx", "5xx"];

/// Request counters by route group and status class.
#[derive(Default)]
pub(crate) struct Requests {
    pub total: AtomicU64,
    /// `[group][class]`, in the order of [`RouteGroup::ALL`] and
    /// [`STATUS_CLASSES`].
    counts: [[AtomicU64; 3]; 7],
}

impl Requests {
    pub(crate) fn count(&self, group: RouteGroup, class: usize) -> u64 {
        self.counts[group as usize][class].load(Relaxed)
    }

    /// Requests of one status class, all groups.
    pub(crate) fn class_total(&self, class: usize) -> u64 {
        self.counts.iter().map(|g| g[class].load(Relaxed)).sum()
    }
}

pub(crate) struct Metrics {
    clock: Box<dyn Clock>,
    pub requests: Requests,
    batches_rejected: AtomicU64,
    /// Batches handed to the blocking pool and not yet enriched (waiting
    /// for a thread or running), and the records of those that are parsed.
    batches_in_flight: AtomicU64,
    records_in_flight: AtomicU64,
    shards: Shards,
    aggregate: Mutex<Aggregate>,
    /// Plugin-reported totals exposed as counters that never go back.
    pub(crate) monotonic: monotonic::Monotonic,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::with_clock(Box::new(SystemClock::new()))
    }
}

/// Decrements an in-flight gauge when dropped (also on panic).
pub(crate) struct InFlight<'a> {
    gauge: &'a AtomicU64,
    n: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(self.n, Relaxed);
    }
}

impl Metrics {
    pub(crate) fn with_clock(clock: Box<dyn Clock>) -> Self {
        let started_ms = clock.now_ms();
        // Twice the cores: blocking-pool threads rarely share a shard.
        let shards = std::thread::available_parallelism().map_or(4, |n| n.get() * 2).clamp(4, 64);
        Metrics {
            clock,
            requests: Requests::default(),
            batches_rejected: AtomicU64::new(0),
            batches_in_flight: AtomicU64::new(0),
            records_in_flight: AtomicU64::new(0),
            shards: Shards::new(shards),
            aggregate: Mutex::new(Aggregate::new(started_ms)),
            monotonic: Default::default(),
        }
    }

    /// Counts one finished HTTP request by route group and status class.
    pub(crate) fn record_request(&self, group: RouteGroup, status: u16) {
        self.requests.total.fetch_add(1, Relaxed);
        let class = match status {
            200..=399 => 0,
            400..=499 => 1,
            _ => 2,
        };
        self.requests.counts[group as usize][class].fetch_add(1, Relaxed);
    }

    /// Counts a refused ingest request (nothing of it was processed).
    pub(crate) fn record_rejected_batch(&self) {
        self.batches_rejected.fetch_add(1, Relaxed);
    }

    /// One batch queued for enrichment until the guard drops.
    pub(crate) fn batch_in_flight(&self) -> InFlight<'_> {
        self.batches_in_flight.fetch_add(1, Relaxed);
        InFlight { gauge: &self.batches_in_flight, n: 1 }
    }

    /// Folds one enriched batch into this thread's shard. `facts` is the
    /// fact table of the chain that enriched it (what to count is found
    /// there by kind) and `generation` that chain's generation (which of
    /// two tables is newer); `lag` runs from request arrival to enrichment
    /// done, `processing` covers parsing and enrichment.
    pub(crate) fn observe_batch(
        &self,
        (facts, generation): (&Arc<[FactInfo]>, u64),
        events: &[Event],
        lag: Duration,
        processing: Duration,
    ) {
        let now_ms = self.clock.now_ms();
        self.shards.local().observe((facts, generation), events, now_ms, lag, processing);
    }

    /// Pours the shards into the windows and rolls them to now: the ticker
    /// calls this every second, readers before reading.
    pub(crate) fn tick(&self) {
        let now_ms = self.clock.now_ms();
        self.fold(&mut self.aggregate.lock().unwrap_or_else(PoisonError::into_inner), now_ms);
    }

    /// Everything, as of now.
    pub(crate) fn read(&self) -> Reading {
        let now_ms = self.clock.now_ms();
        let mut aggregate = self.aggregate.lock().unwrap_or_else(PoisonError::into_inner);
        self.fold(&mut aggregate, now_ms);
        aggregate.read(now_ms)
    }

    fn fold(&self, aggregate: &mut Aggregate, now_ms: u64) {
        let mut spare = std::mem::take(&mut aggregate.spare);
        self.shards.drain(&mut spare, |shard| aggregate.absorb(shard, now_ms));
        aggregate.spare = spare;
        aggregate.settle_facts(now_ms);
        aggregate.advance(now_ms, self.requests.total.load(Relaxed));
    }

    pub(crate) fn batches_rejected(&self) -> u64 {
        self.batches_rejected.load(Relaxed)
    }

    pub(crate) fn in_flight(&self) -> (u64, u64) {
        (self.batches_in_flight.load(Relaxed), self.records_in_flight.load(Relaxed))
    }
}

/// Live metrics watch every batch the pipeline enriches, whatever brought it.
impl Observer for Metrics {
    fn entering(&self, events: usize) {
        self.records_in_flight.fetch_add(events as u64, Relaxed);
    }

    fn left(&self, events: usize) {
        self.records_in_flight.fetch_sub(events as u64, Relaxed);
    }

    fn observe(&self, chain: &Chain, batch: &Batch, timing: Timing) {
        self.observe_batch((chain.facts(), chain.generation()), batch.events(), timing.lag, timing.processing);
    }
}

#[cfg(test)]
mod tests;
