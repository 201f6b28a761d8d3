//! Per-module counters, a latency histogram and the circuit breaker.
//!
//! Counters are relaxed atomics bumped once per batch; the breaker's lock is
//! only taken when a call fails, never on the success path.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
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

/// A live module's counters and circuit breaker. Shared by every
/// generation of a stage that runs the same module under the same limits
/// and breaker settings ([`HealthKey`]): a reload that rebuilds the stage
/// from unchanged content (`POST /v1/reload`, SIGHUP, a watched-path event)
/// must neither close an open breaker nor reset its counters, or an
/// explicit reload would re-enable a rule that `breaker_cooldown_s = 0`
/// keeps off "until the module is replaced".
pub(crate) struct ModuleHealth {
    pub(crate) stats: ModuleStats,
    pub(crate) breaker: CircuitBreaker,
}

/// What must be unchanged for a rebuilt stage to keep the live module's
/// [`ModuleHealth`]: the module (SHA-256), the limits its calls fail
/// against, and the breaker's settings. A change of any of them is a
/// different module as far as its failures go, and starts afresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HealthKey {
    pub(crate) sha256: [u8; 32],
    pub(crate) memory_bytes: usize,
    pub(crate) table_elements: usize,
    pub(crate) deadline: Duration,
    pub(crate) breaker: (usize, Duration, Duration),
    /// Everything else the stage was configured with (what the guest
    /// reads, the fields it writes): a rule failing on a bad `config`
    /// value must get a closed breaker once the value is fixed.
    pub(crate) options: u64,
}

impl ModuleHealth {
    /// Fresh counters and a closed breaker with these settings.
    pub(crate) fn new(threshold: usize, window: Duration, cooldown: Duration) -> Self {
        ModuleHealth { stats: ModuleStats::default(), breaker: CircuitBreaker::new(threshold, window, cooldown) }
    }
}

/// The [`ModuleHealth`] of a stage's generations, by [`HealthKey`]; kept in
/// the stage's carried state. Entries are weak: one lives as long as a
/// generation using it does (a rejected rebuild of other content does not
/// displace the live one's), and a module no generation runs any more is
/// forgotten (coming back to it later starts afresh).
#[derive(Default)]
pub(crate) struct HealthCell {
    entries: Mutex<Vec<(HealthKey, std::sync::Weak<ModuleHealth>)>>,
}

impl HealthCell {
    /// The health of `key`'s module: the one a live generation shares, or
    /// a new one from `fresh`.
    pub(crate) fn get_or(&self, key: HealthKey, fresh: impl FnOnce() -> ModuleHealth) -> std::sync::Arc<ModuleHealth> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(found) = entries.iter().find(|(k, _)| *k == key).and_then(|(_, weak)| weak.upgrade()) {
            return found;
        }
        let health = std::sync::Arc::new(fresh());
        entries.push((key, std::sync::Arc::downgrade(&health)));
        health
    }
}

/// Stops calling a module after `threshold` failures within `window`;
/// after a cool-down lets one call through as a trial (half-open): a
/// trial that succeeds closes the breaker, one that fails opens it again
/// for twice as long (up to [`MAX_COOLDOWN`]). With no cool-down it stays
/// open until the module is replaced (a new enricher is built).
///
/// Why trials: the deadline is CPU time, so a busy host no longer opens
/// the breaker, but a burst of input a rule cannot handle, or a transient
/// host fault, still can; scoring should come back on its own when the
/// cause is gone, and stay off (with backoff) while it is not. The closed
/// state costs one relaxed load per call.
pub(crate) struct CircuitBreaker {
    threshold: usize,
    window: Duration,
    /// The first cool-down; zero: no trials.
    cooldown: Duration,
    /// [`CLOSED`], [`NEVER`] (open until replaced), [`IN_TRIAL`], or open
    /// with the next trial due at this many ms from `epoch`. One atomic,
    /// so a thread can never pair "open" with a stale due time, nor claim
    /// a trial from a state that has since changed: a claim is a
    /// compare-exchange from the very due time it read, and every later
    /// state differs from it (a new due time is later; the others are
    /// sentinels).
    state: AtomicU64,
    epoch: Instant,
    /// Times the breaker opened (again), for status.
    opened: AtomicU64,
    inner: Mutex<BreakerInner>,
}

/// [`CircuitBreaker::state`]: closed.
const CLOSED: u64 = u64::MAX;
/// Open with no trials (no cool-down): until the module is replaced.
const NEVER: u64 = u64::MAX - 1;
/// Open, and the one trial call is under way.
const IN_TRIAL: u64 = u64::MAX - 2;

struct BreakerInner {
    failures: VecDeque<Instant>,
    /// The cool-down the next opening waits.
    next_cooldown: Duration,
}

/// The longest cool-down between trials.
pub(crate) const MAX_COOLDOWN: Duration = Duration::from_secs(600);

/// A change of the breaker's state, for the caller to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    /// Enough failures in the window: opened.
    Opened,
    /// A trial failed: open again, for the returned cool-down.
    Reopened(Duration),
    /// A trial succeeded: closed.
    Closed,
}

/// Leave to call a module once ([`CircuitBreaker::admit`]). A trial
/// ticket dropped unsettled (the call unwound: a host bug) counts as a
/// failed trial, so the breaker does not wait for a verdict forever.
#[must_use = "settle the ticket with the call's outcome"]
pub(crate) struct Ticket<'b> {
    breaker: &'b CircuitBreaker,
    trial: bool,
}

impl Ticket<'_> {
    /// This call decides whether the open breaker closes.
    #[cfg(test)]
    pub(crate) fn is_trial(&self) -> bool {
        self.trial
    }

    /// Records how the call ended.
    pub(crate) fn settle(self, outcome: Result<(), FailureKind>) -> Transition {
        let transition = self.breaker.settle(self.trial, outcome);
        std::mem::forget(self);
        transition
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.trial {
            self.breaker.settle(true, Err(FailureKind::Trap));
        }
    }
}

impl CircuitBreaker {
    /// `cooldown` above [`MAX_COOLDOWN`] is taken as that.
    pub(crate) fn new(threshold: usize, window: Duration, cooldown: Duration) -> Self {
        let cooldown = cooldown.min(MAX_COOLDOWN);
        CircuitBreaker {
            threshold: threshold.max(1),
            window,
            cooldown,
            state: AtomicU64::new(CLOSED),
            epoch: Instant::now(),
            opened: AtomicU64::new(0),
            inner: Mutex::new(BreakerInner { failures: VecDeque::new(), next_cooldown: cooldown }),
        }
    }

    /// Open (a trial may be under way): status reports this.
    pub(crate) fn is_open(&self) -> bool {
        self.state.load(Relaxed) != CLOSED
    }

    /// Times it opened, first and again.
    pub(crate) fn opened(&self) -> u64 {
        self.opened.load(Relaxed)
    }

    /// Whether to call the module now: `None` while open, else a ticket
    /// to settle with the call's outcome ([`Ticket::settle`]). The one call
    /// let through after a cool-down holds the trial ticket.
    pub(crate) fn admit(&self) -> Option<Ticket<'_>> {
        let state = self.state.load(Relaxed);
        if state == CLOSED {
            return Some(Ticket { breaker: self, trial: false });
        }
        let due = state != NEVER && state != IN_TRIAL && self.now_ms() >= state;
        (due && self.state.compare_exchange(state, IN_TRIAL, Acquire, Relaxed).is_ok())
            .then(|| Ticket { breaker: self, trial: true }) // lazily: a dropped trial ticket settles
    }

    /// Records how an admitted call ended.
    fn settle(&self, trial: bool, outcome: Result<(), FailureKind>) -> Transition {
        match (trial, outcome) {
            (false, Ok(())) => Transition::None,
            (false, Err(kind)) => self.record(kind),
            (true, Ok(())) => {
                let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                inner.failures.clear();
                inner.next_cooldown = self.cooldown;
                self.state.store(CLOSED, Release);
                Transition::Closed
            }
            (true, Err(_)) => {
                let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                inner.next_cooldown = inner.next_cooldown.saturating_mul(2).min(MAX_COOLDOWN);
                let wait = inner.next_cooldown;
                self.open_for(wait);
                Transition::Reopened(wait)
            }
        }
    }

    /// Records a failure of a normal call (one admitted while closed: its
    /// failure no longer counts once the breaker has opened).
    fn record(&self, kind: FailureKind) -> Transition {
        if !kind.counts_for_breaker() || self.is_open() {
            return Transition::None;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.failures.push_back(now);
        while inner.failures.front().is_some_and(|t| now.duration_since(*t) > self.window) {
            inner.failures.pop_front();
        }
        if inner.failures.len() < self.threshold || self.is_open() {
            return Transition::None;
        }
        let wait = inner.next_cooldown;
        self.open_for(wait);
        Transition::Opened
    }

    /// Opens (or opens again after a trial); the next trial after `wait`
    /// (never, when zero). Called with `inner` locked.
    fn open_for(&self, wait: Duration) {
        // Cool-downs are at most MAX_COOLDOWN: far below the sentinels.
        let at = if wait.is_zero() {
            NEVER
        } else {
            self.now_ms().saturating_add(wait.as_millis() as u64).min(IN_TRIAL - 1)
        };
        self.state.store(at, Release);
        self.opened.fetch_add(1, Relaxed);
    }

    /// Seconds until the next trial may start (0: now or under way);
    /// `None` while closed or when it stays open until replaced.
    pub(crate) fn next_trial_in_s(&self) -> Option<u64> {
        match self.state.load(Relaxed) {
            CLOSED | NEVER => None,
            IN_TRIAL => Some(0),
            at => Some(at.saturating_sub(self.now_ms()).div_ceil(1000)),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(b: &CircuitBreaker, kind: FailureKind) -> Transition {
        b.admit().expect("admitted").settle(Err(kind))
    }

    fn admits(b: &CircuitBreaker) -> Option<bool> {
        b.admit().map(|t| {
            let trial = t.is_trial();
            let _ = t.settle(Ok(()));
            trial
        })
    }

    #[test]
    fn breaker_opens_after_threshold_within_window() {
        let b = CircuitBreaker::new(3, Duration::from_secs(60), Duration::ZERO);
        assert_eq!(fail(&b, FailureKind::Trap), Transition::None);
        assert_eq!(fail(&b, FailureKind::CircuitOpen), Transition::None, "not the module's fault");
        assert_eq!(b.admit().unwrap().settle(Ok(())), Transition::None, "a success does not reset the window");
        assert_eq!(fail(&b, FailureKind::Timeout), Transition::None);
        assert!(!b.is_open());
        assert_eq!(fail(&b, FailureKind::Memory), Transition::Opened);
        assert!(b.is_open());
        assert!(b.admit().is_none(), "no cool-down: open until replaced");
        assert_eq!(b.next_trial_in_s(), None);
        assert_eq!(b.opened(), 1);
    }

    #[test]
    fn old_failures_fall_out_of_the_window() {
        let b = CircuitBreaker::new(2, Duration::from_millis(1), Duration::ZERO);
        fail(&b, FailureKind::Trap);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(fail(&b, FailureKind::Trap), Transition::None);
        assert!(!b.is_open());
    }

    #[test]
    fn one_trial_after_the_cool_down_closes_or_doubles_it() {
        // Margins of 100 ms and more either side of each due time: a busy
        // CI machine oversleeps.
        let b = CircuitBreaker::new(1, Duration::from_secs(60), Duration::from_millis(150));
        assert_eq!(fail(&b, FailureKind::Trap), Transition::Opened);
        assert!(b.admit().is_none(), "cooling down");
        assert_eq!(b.next_trial_in_s(), Some(1));
        std::thread::sleep(Duration::from_millis(250));
        let trial = b.admit().expect("the trial");
        assert!(trial.is_trial());
        assert!(b.admit().is_none(), "one trial at a time");
        assert_eq!(b.next_trial_in_s(), Some(0), "under way");
        assert_eq!(trial.settle(Err(FailureKind::Trap)), Transition::Reopened(Duration::from_millis(300)));
        assert!(b.is_open());
        std::thread::sleep(Duration::from_millis(50));
        assert!(b.admit().is_none(), "twice as long now");
        std::thread::sleep(Duration::from_millis(400));
        let trial = b.admit().expect("the second trial");
        assert_eq!(trial.settle(Ok(())), Transition::Closed);
        assert!(!b.is_open());
        assert_eq!(admits(&b), Some(false));
        assert_eq!(b.opened(), 2);
        // Closed again with a clean window and the first cool-down.
        assert_eq!(fail(&b, FailureKind::Trap), Transition::Opened);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(admits(&b), Some(true), "back to the first cool-down");
    }

    /// Many threads asking at once while a trial is due: exactly one call
    /// is let through per cool-down, and a normal call admitted before the
    /// opening never settles as a trial.
    #[test]
    fn one_trial_among_many_threads() {
        let b = CircuitBreaker::new(1, Duration::from_secs(60), Duration::from_millis(1));
        let before = b.admit().expect("closed: a normal call");
        assert_eq!(fail(&b, FailureKind::Trap), Transition::Opened);
        std::thread::sleep(Duration::from_millis(5));
        let trials = AtomicU64::new(0);
        let go = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    go.wait();
                    for _ in 0..10_000 {
                        if let Some(ticket) = b.admit() {
                            assert!(ticket.is_trial(), "open: only trials are let through");
                            trials.fetch_add(1, Relaxed);
                            // Hold it: nobody else may get one meanwhile.
                            std::thread::sleep(Duration::from_millis(2));
                            let _ = ticket.settle(Err(FailureKind::Trap));
                        }
                    }
                });
            }
        });
        let trials = trials.load(Relaxed);
        assert!(trials >= 1, "a trial was due");
        // Each failed trial doubles the wait (1, 2, 4, ... ms): 10,000 quick
        // asks per thread cannot fit more than a handful.
        assert!(trials <= 20, "{trials} trials");
        assert_eq!(b.opened(), 1 + trials);
        assert_eq!(before.settle(Err(FailureKind::Trap)), Transition::None, "counted only while closed");
        assert!(b.is_open());
    }

    #[test]
    fn a_cool_down_above_the_cap_is_the_cap() {
        let b = CircuitBreaker::new(1, Duration::from_secs(60), Duration::from_secs(u64::MAX / 2));
        assert_eq!(fail(&b, FailureKind::Trap), Transition::Opened);
        assert_eq!(b.next_trial_in_s(), Some(MAX_COOLDOWN.as_secs()));
        b.state.store(0, Relaxed); // as if the cool-down had passed
        let trial = b.admit().expect("trial");
        assert_eq!(trial.settle(Err(FailureKind::Trap)), Transition::Reopened(MAX_COOLDOWN));
    }

    #[test]
    fn a_trial_that_unwinds_counts_as_failed() {
        let b = CircuitBreaker::new(1, Duration::from_secs(60), Duration::from_millis(1));
        fail(&b, FailureKind::Trap);
        std::thread::sleep(Duration::from_millis(5));
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ticket = b.admit().expect("the trial");
            panic!("a host bug during the call");
        }));
        assert!(unwound.is_err());
        assert_eq!((b.is_open(), b.opened()), (true, 2), "failed: open again, and trials go on");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(admits(&b), Some(true));
    }

    #[test]
    fn cool_downs_stop_growing_at_the_cap() {
        let b = CircuitBreaker::new(1, Duration::from_secs(60), MAX_COOLDOWN / 2 + Duration::from_secs(1));
        fail(&b, FailureKind::Trap);
        b.state.store(0, Relaxed); // as if the cool-down had passed
        let trial = b.admit().expect("trial");
        assert_eq!(trial.settle(Err(FailureKind::Trap)), Transition::Reopened(MAX_COOLDOWN));
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
