//! Per-output counters: what `/v1/outputs`, `/v1/metrics` and `/metrics`
//! show, and what the "nothing lost" tests add up.
//!
//! The books balance: every event queued for an output is eventually
//! `sent`, `dead_lettered` or `lost` (each loss with its reason), or still
//! in the backlog. `failed` and `retried` count attempts, not events, so
//! they may exceed the others.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use serde_json::{json, Value};

/// Why events were lost (accepted, then neither delivered nor kept in the
/// dead-letter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LostReason {
    /// The dead-letter reached its bound and evicted its oldest records.
    DeadLetterEvicted,
    /// A spool entry failed its checksum when read back (disk damage, a
    /// torn write): its events cannot be recovered.
    SpoolCorrupt,
    /// `memory` mode: queued at shutdown, not delivered within the flush
    /// deadline, and the dead-letter could not take them.
    Shutdown,
}

impl LostReason {
    pub(crate) const ALL: [LostReason; 3] =
        [LostReason::DeadLetterEvicted, LostReason::SpoolCorrupt, LostReason::Shutdown];

    pub(crate) fn label(self) -> &'static str {
        match self {
            LostReason::DeadLetterEvicted => "deadletter_evicted",
            LostReason::SpoolCorrupt => "spool_corrupt",
            LostReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Default)]
pub(crate) struct OutputStats {
    /// Events accepted for this output (appended to its backlog).
    pub queued: AtomicU64,
    /// Events the destination accepted.
    pub sent: AtomicU64,
    /// Of `sent`, events the destination said it already had (an id it
    /// deduplicated: a redelivered input, a retry after a lost answer).
    pub duplicates: AtomicU64,
    /// Event attempts that did not deliver (retryable or not).
    pub failed: AtomicU64,
    /// Events sent again after a failed attempt.
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    lost: [AtomicU64; 3],
    /// Requests made to the destination, and their total time.
    pub batches: AtomicU64,
    pub batch_micros: AtomicU64,
    /// Latency buckets of requests (upper bounds in seconds below).
    batch_buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Events moved back from the dead-letter into the backlog.
    pub replayed: AtomicU64,
    /// Events refused at admission (503) because this output was full.
    pub refused: AtomicU64,
    last_error: Mutex<Option<(String, u64)>>,
}

/// Upper bounds (seconds) of the batch latency histogram.
pub(crate) const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

impl OutputStats {
    pub(crate) fn lose(&self, reason: LostReason, events: u64) {
        if events > 0 {
            self.lost[reason as usize].fetch_add(events, Relaxed);
            self.set_error(format!("{events} events lost: {}", reason.label()));
        }
    }

    pub(crate) fn lost(&self, reason: LostReason) -> u64 {
        self.lost[reason as usize].load(Relaxed)
    }

    pub(crate) fn lost_total(&self) -> u64 {
        LostReason::ALL.iter().map(|r| self.lost(*r)).sum()
    }

    pub(crate) fn record_batch(&self, elapsed: std::time::Duration) {
        self.batches.fetch_add(1, Relaxed);
        self.batch_micros.fetch_add(elapsed.as_micros() as u64, Relaxed);
        let secs = elapsed.as_secs_f64();
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.batch_buckets[i].fetch_add(1, Relaxed);
    }

    /// Per-bucket counts (the last is +Inf), as the Prometheus encoder
    /// takes them.
    pub(crate) fn buckets(&self) -> Vec<(f64, u64)> {
        BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.batch_buckets)
            .map(|(b, c)| (b, c.load(Relaxed)))
            .collect()
    }

    /// Records the latest error; the text was masked by the caller.
    pub(crate) fn set_error(&self, message: String) {
        let now = super::unix_ms();
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some((message, now));
    }

    pub(crate) fn last_error(&self) -> Option<(String, u64)> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The counters as JSON (`/v1/outputs`, `/v1/metrics`).
    pub(crate) fn view(&self) -> Value {
        let lost: serde_json::Map<String, Value> =
            LostReason::ALL.iter().map(|r| (r.label().to_string(), json!(self.lost(*r)))).collect();
        let batches = self.batches.load(Relaxed);
        json!({
            "queued": self.queued.load(Relaxed),
            "sent": self.sent.load(Relaxed),
            "duplicates": self.duplicates.load(Relaxed),
            "failed": self.failed.load(Relaxed),
            "retried": self.retried.load(Relaxed),
            "dead_lettered": self.dead_lettered.load(Relaxed),
            "lost": self.lost_total(),
            "lost_by_reason": lost,
            "refused": self.refused.load(Relaxed),
            "replayed": self.replayed.load(Relaxed),
            "batches": batches,
            "batch_latency_ms_mean": if batches == 0 { 0.0 } else {
                self.batch_micros.load(Relaxed) as f64 / batches as f64 / 1000.0
            },
            "last_error": self.last_error().map(|(message, at)| json!({"message": message, "unix_ms": at})),
        })
    }
}

/// Replaces every secret value in `text` with `***`: sinks are written
/// not to echo secrets, and this makes sure of it for every text the
/// runtime keeps (last error, dead-letter reasons, logs).
pub(crate) fn mask(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_losses_add_up() {
        assert_eq!(mask("401 for token abc123 at x", &["abc123".into()]), "401 for token *** at x");
        let s = OutputStats::default();
        s.lose(LostReason::SpoolCorrupt, 3);
        s.lose(LostReason::DeadLetterEvicted, 2);
        assert_eq!(s.lost_total(), 5);
        assert_eq!(s.view()["lost_by_reason"]["spool_corrupt"], 3);
        s.record_batch(std::time::Duration::from_millis(20));
        s.record_batch(std::time::Duration::from_secs(60));
        assert_eq!(s.buckets()[2], (0.025, 1));
        assert_eq!(s.buckets()[1], (0.01, 0));
        assert_eq!(s.buckets().last(), Some(&(f64::INFINITY, 1)));
    }
}
