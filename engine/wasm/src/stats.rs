//! Per-module counters, a latency histogram and the circuit breaker.
//!
//! Counters are relaxed atomics bumped once per batch; the breaker's lock is
//! only taken when a call fails, never on the success path.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Why a batch got the fallback instead of the module's results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Ran past its deadline (interrupted, or returned late).
    Timeout,
    /// Hit the memory cap.
    Memory,
    /// Hit the table element cap.
    Table,
    /// Overflowed the guest stack.
    StackOverflow,
    /// Any other trap (unreachable, out-of-bounds access, ...).
    Trap,
    /// Returned a non-zero status.
    GuestError,
    /// Wrote a result buffer the host refused.
    MalformedResult,
    /// Could not be instantiated.
    Instantiation,
    /// The circuit breaker is open: the module is not called.
    CircuitOpen,
    /// No usable module is loaded.
    Unavailable,
}

impl FailureKind {
    pub const ALL: [FailureKind; 10] = [
        FailureKind::Timeout,
        FailureKind::Memory,
        FailureKind::Table,
        FailureKind::StackOverflow,
        FailureKind::Trap,
        FailureKind::GuestError,
        FailureKind::MalformedResult,
        FailureKind::Instantiation,
        FailureKind::CircuitOpen,
        FailureKind::Unavailable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Memory => "memory",
            FailureKind::Table => "table",
            FailureKind::StackOverflow => "stack_overflow",
            FailureKind::Trap => "trap",
            FailureKind::GuestError => "guest_error",
            FailureKind::MalformedResult => "malformed_result",
            FailureKind::Instantiation => "instantiation",
            FailureKind::CircuitOpen => "circuit_open",
            FailureKind::Unavailable => "unavailable",
        }
    }

    fn index(self) -> usize {
        FailureKind::ALL.iter().position(|k| *k == self).expect("listed")
    }

    /// Failures that count towards opening the breaker (the module's fault).
    fn counts_for_breaker(self) -> bool {
        !matches!(self, FailureKind::CircuitOpen | FailureKind::Unavailable)
    }
}

/// Latency buckets: powers of two from 1 us to ~1 s.
const BUCKETS: usize = 21;

#[derive(Default)]
pub(crate) struct ModuleStats {
    calls: AtomicU64,
    events: AtomicU64,
    errors: [AtomicU64; FailureKind::ALL.len()],
    latency: [AtomicU64; BUCKETS],
}

impl ModuleStats {
    pub(crate) fn record_call(&self, events: usize, elapsed: Duration) {
        self.calls.fetch_add(1, Relaxed);
        self.events.fetch_add(events as u64, Relaxed);
        let us = elapsed.as_micros().max(1) as u64;
        let bucket = (63 - us.leading_zeros() as usize).min(BUCKETS - 1);
        self.latency[bucket].fetch_add(1, Relaxed);
    }

    pub(crate) fn record_error(&self, kind: FailureKind) {
        self.errors[kind.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn errors(&self, kind: FailureKind) -> u64 {
        self.errors[kind.index()].load(Relaxed)
    }

    /// Upper bound (microseconds) of the bucket holding quantile `q`.
    fn quantile_us(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self.latency.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(1u64 << (i + 1));
            }
        }
        None
    }

    pub(crate) fn to_json(&self) -> Value {
        let errors: serde_json::Map<String, Value> =
            FailureKind::ALL.iter().map(|k| (k.name().to_string(), self.errors(*k).into())).collect();
        json!({
            "calls": self.calls.load(Relaxed),
            "events": self.events.load(Relaxed),
            "errors": errors,
            "timeouts": self.errors(FailureKind::Timeout),
            "latency_us": {
                "p50_le": self.quantile_us(0.50),
                "p95_le": self.quantile_us(0.95),
                "p99_le": self.quantile_us(0.99),
            },
        })
    }
}

/// Stops calling a module after `threshold` failures within `window`, until
/// the module is replaced (a new enricher is built).
pub(crate) struct CircuitBreaker {
    threshold: usize,
    window: Duration,
    open: AtomicBool,
    failures: Mutex<VecDeque<Instant>>,
}

impl CircuitBreaker {
    pub(crate) fn new(threshold: usize, window: Duration) -> Self {
        CircuitBreaker {
            threshold: threshold.max(1),
            window,
            open: AtomicBool::new(false),
            failures: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Relaxed)
    }

    /// Records a failure; returns true when this one opened the circuit.
    pub(crate) fn record(&self, kind: FailureKind) -> bool {
        if !kind.counts_for_breaker() || self.is_open() {
            return false;
        }
        let now = Instant::now();
        let mut failures = self.failures.lock().expect("breaker lock");
        failures.push_back(now);
        while failures.front().is_some_and(|t| now.duration_since(*t) > self.window) {
            failures.pop_front();
        }
        if failures.len() >= self.threshold {
            self.open.store(true, Relaxed);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_threshold_within_window() {
        let b = CircuitBreaker::new(3, Duration::from_secs(60));
        assert!(!b.record(FailureKind::Trap));
        assert!(!b.record(FailureKind::CircuitOpen), "not the module's fault");
        assert!(!b.record(FailureKind::Timeout));
        assert!(!b.is_open());
        assert!(b.record(FailureKind::Memory));
        assert!(b.is_open());
    }

    #[test]
    fn old_failures_fall_out_of_the_window() {
        let b = CircuitBreaker::new(2, Duration::from_millis(1));
        b.record(FailureKind::Trap);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!b.record(FailureKind::Trap));
        assert!(!b.is_open());
    }

    #[test]
    fn latency_quantiles() {
        let s = ModuleStats::default();
        for _ in 0..99 {
            s.record_call(1, Duration::from_micros(3));
        }
        s.record_call(1, Duration::from_millis(5));
        assert_eq!(s.quantile_us(0.5), Some(4));
        assert_eq!(s.quantile_us(0.999), Some(8192));
    }
}
