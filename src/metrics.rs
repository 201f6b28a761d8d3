//! Exact counters for `GET /v1/metrics`.
//!
//! Plain relaxed atomics: every request bumps a handful of them once (per
//! request or per batch, never per event), so there is no lock on the ingest
//! path. Sliding windows and rates come with the live-metrics work.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde_json::json;

#[derive(Default)]
pub struct Metrics {
    requests_total: AtomicU64,
    requests_2xx: AtomicU64,
    requests_4xx: AtomicU64,
    requests_5xx: AtomicU64,
    records_processed: AtomicU64,
    batches: AtomicU64,
    threat_matches: AtomicU64,
    events_with_threats: AtomicU64,
    batches_rejected: AtomicU64,
}

impl Metrics {
    /// Counts one finished HTTP request by status class.
    pub fn record_request(&self, status: u16) {
        self.requests_total.fetch_add(1, Relaxed);
        match status {
            200..=399 => &self.requests_2xx,
            400..=499 => &self.requests_4xx,
            _ => &self.requests_5xx,
        }
        .fetch_add(1, Relaxed);
    }

    /// Counts one enriched batch.
    pub fn record_batch(&self, events: u64, threat_matches: u64, events_with_threats: u64) {
        self.batches.fetch_add(1, Relaxed);
        self.records_processed.fetch_add(events, Relaxed);
        self.threat_matches.fetch_add(threat_matches, Relaxed);
        self.events_with_threats.fetch_add(events_with_threats, Relaxed);
    }

    /// Counts a refused ingest request (nothing of it was processed).
    pub fn record_rejected_batch(&self) {
        self.batches_rejected.fetch_add(1, Relaxed);
    }

    /// The `/v1/metrics` document. `requests_failed` counts answers with a
    /// 4xx or 5xx status.
    pub fn snapshot(&self) -> serde_json::Value {
        let failed = self.requests_4xx.load(Relaxed) + self.requests_5xx.load(Relaxed);
        let events = self.records_processed.load(Relaxed);
        json!({
            "requests_total": self.requests_total.load(Relaxed),
            "requests_failed": failed,
            "records_processed": events,
            "requests_by_class": {
                "2xx": self.requests_2xx.load(Relaxed),
                "4xx": self.requests_4xx.load(Relaxed),
                "5xx": self.requests_5xx.load(Relaxed),
            },
            "totals": {
                "events": events,
                "batches": self.batches.load(Relaxed),
                "threat_matches": self.threat_matches.load(Relaxed),
                "events_with_threats": self.events_with_threats.load(Relaxed),
                "batches_rejected": self.batches_rejected.load(Relaxed),
            },
        })
    }
}
