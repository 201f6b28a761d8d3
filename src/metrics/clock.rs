//! Wall-clock time for the metrics, injectable so tests can step it.
//!
//! Windows are aligned to wall-clock seconds (a chart's bucket starts at a
//! round time, the same on every scrape), so the clock is Unix milliseconds
//! rather than an `Instant`. But it never steps: [`SystemClock`] is the
//! wall time at start plus the monotonic time since. A wall clock stepped
//! back (NTP correcting a clock that ran ahead) would otherwise put every
//! new sample behind the windows' newest second, where the rings drop it,
//! and blank every rate and top list until the clock caught up, for as
//! long as the step; stepped forward, it would skip the windows ahead.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub(crate) trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// Unix milliseconds that only move forward, at the monotonic clock's rate.
pub(crate) struct SystemClock {
    wall_at_start_ms: u64,
    start: Instant,
}

impl SystemClock {
    pub(crate) fn new() -> Self {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        SystemClock { wall_at_start_ms: wall, start: Instant::now() }
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        self.wall_at_start_ms + self.start.elapsed().as_millis() as u64
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Follows the wall clock from start, at the monotonic clock's pace.
    #[test]
    fn the_system_clock_starts_at_wall_time_and_never_steps_back() {
        let clock = SystemClock::new();
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let first = clock.now_ms();
        assert!(first.abs_diff(wall) < 1_000, "{first} vs {wall}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = clock.now_ms();
        assert!(second >= first + 20 && second < first + 1_000, "{first} -> {second}");
    }
}
