//! Wall-clock time for the metrics, injectable so tests can step it.
//!
//! Windows are aligned to wall-clock seconds (a chart's bucket starts at a
//! round time, the same on every scrape), so the clock is Unix milliseconds
//! rather than an `Instant`. A clock that steps backwards is tolerated:
//! buckets never rewind, late samples land in the newest bucket.

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock that moves only when told to (tests).
#[cfg(test)]
pub(crate) struct ManualClock(std::sync::atomic::AtomicU64);

#[cfg(test)]
impl ManualClock {
    pub(crate) fn new(ms: u64) -> Self {
        ManualClock(std::sync::atomic::AtomicU64::new(ms))
    }
    pub(crate) fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
impl Clock for std::sync::Arc<ManualClock> {
    fn now_ms(&self) -> u64 {
        self.as_ref().now_ms()
    }
}
