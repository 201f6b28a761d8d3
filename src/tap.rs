//! A live look at the enriched stream (`GET /v1/tap`, `enrichd tap`): the
//! answer to "what is the chain doing to my events right now?" when a rule
//! or a feed misbehaves, without a SIEM round trip.
//!
//! The tap is an [`Observer`] of the one pipeline, so it sees every batch
//! whatever brought it (HTTP ingest, a broker source). Its cost when nobody
//! watches is one atomic load per batch. A watcher gets events that pass its
//! [`TapFilter`], at most `rate` per second (a token bucket), in the default
//! v1 layout; when its connection cannot keep up, events are dropped and
//! counted, never queued without bound, and never slow ingest down.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use enrichd_engine::{Batch, Chain, Event, FactKind, Observer, Timing};
use serde_json::Value;
use tokio::sync::mpsc;

/// Most watchers at once: each costs an encode per matching event.
pub(crate) const MAX_WATCHERS: usize = 16;
/// Events a watcher's connection may lag behind before the tap drops.
const QUEUE: usize = 256;
/// Highest `rate` a watcher may ask for, events per second.
pub(crate) const MAX_RATE: u32 = 1000;
/// Events of one batch a watcher with JSON conditions (`has=`, `where=`)
/// may encode and parse to test them: a filter that never matches must not
/// cost an encode and a parse of every event, per watcher, on the ingest
/// path. The tap is a sample; the rest of the batch is not looked at.
const JSON_TESTS_PER_BATCH: usize = 256;
/// Largest event a watcher is sent (bytes, encoded): with [`QUEUE`] and
/// [`MAX_WATCHERS`] it bounds what slow watchers hold (64 MiB at most).
/// Larger events are counted as dropped.
const MAX_EVENT_BYTES: usize = 16 << 10;

/// Which events a watcher wants. Every condition given must hold.
#[derive(Clone, Debug, Default)]
pub(crate) struct TapFilter {
    /// Dotted paths that must be present and not null (`geo.country`).
    pub has: Vec<String>,
    /// `path = value`: the value at the dotted path, rendered as text
    /// (strings without quotes), equals `value`.
    pub equals: Vec<(String, String)>,
    /// Some score fact (a rule's risk score) at least this.
    pub min_score: Option<u32>,
    /// At least one indicator matched.
    pub matched: bool,
}

impl TapFilter {
    fn needs_json(&self) -> bool {
        !self.has.is_empty() || !self.equals.is_empty()
    }

    /// The conditions read from facts: cheap, checked before encoding.
    fn facts_pass(&self, chain: &Chain, event: &Event) -> bool {
        let of_kind =
            |kind: FactKind| chain.facts().iter().filter(move |f| f.decl.kind == kind).filter_map(|f| event.fact(f.id));
        if self.matched && !of_kind(FactKind::IndicatorMatches).any(|n| n > 0) {
            return false;
        }
        if let Some(min) = self.min_score {
            if !of_kind(FactKind::Score).any(|s| s >= min) {
                return false;
            }
        }
        true
    }

    fn json_passes(&self, record: &Value) -> bool {
        // `ti.matches.0.type`: a number indexes an array.
        let at = |path: &str| {
            path.split('.').try_fold(record, |v, key| match (v, key.parse::<usize>()) {
                (Value::Array(items), Ok(i)) => items.get(i),
                _ => v.get(key),
            })
        };
        self.has.iter().all(|p| at(p).is_some_and(|v| !v.is_null()))
            && self.equals.iter().all(|(p, want)| {
                at(p).is_some_and(|v| match v {
                    Value::String(s) => s == want,
                    Value::Number(n) => want.parse::<f64>().ok() == n.as_f64(),
                    Value::Bool(b) => want == if *b { "true" } else { "false" },
                    Value::Null => want == "null",
                    // Objects and arrays: the same JSON written out.
                    other => serde_json::from_str::<Value>(want).is_ok_and(|w| w == *other),
                })
            })
    }
}

struct Watcher {
    filter: TapFilter,
    rate: u32,
    /// Token bucket: tokens left and when they were last refilled.
    bucket: Mutex<(f64, Instant)>,
    tx: mpsc::Sender<Vec<u8>>,
}

impl Watcher {
    fn take_token(&self) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, at) = &mut *bucket;
        let now = Instant::now();
        let rate = f64::from(self.rate);
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The watchers of the live stream.
#[derive(Default)]
pub(crate) struct Tap {
    watchers: Mutex<Vec<Arc<Watcher>>>,
    active: AtomicUsize,
    /// Events dropped for lagging watchers, all watchers, since start.
    dropped: AtomicU64,
}

/// One watcher's stream; dropping it unsubscribes.
pub(crate) struct Subscription {
    pub events: mpsc::Receiver<Vec<u8>>,
    watcher: Arc<Watcher>,
    tap: Arc<Tap>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut watchers = self.tap.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        watchers.retain(|w| !Arc::ptr_eq(w, &self.watcher));
        self.tap.active.store(watchers.len(), Relaxed);
    }
}

impl Tap {
    /// A new watcher, or `None` at [`MAX_WATCHERS`].
    pub(crate) fn subscribe(self: &Arc<Self>, filter: TapFilter, rate: u32) -> Option<Subscription> {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        if watchers.len() >= MAX_WATCHERS {
            return None;
        }
        let (tx, events) = mpsc::channel(QUEUE);
        let rate = rate.clamp(1, MAX_RATE);
        // A full bucket at the start: the first events show at once.
        let bucket = Mutex::new((f64::from(rate), Instant::now()));
        let watcher = Arc::new(Watcher { filter, rate, bucket, tx });
        watchers.push(watcher.clone());
        self.active.store(watchers.len(), Relaxed);
        Some(Subscription { events, watcher, tap: self.clone() })
    }

    /// `{watchers, dropped}` for `/v1/metrics`.
    pub(crate) fn state(&self) -> Value {
        serde_json::json!({ "watchers": self.active.load(Relaxed), "dropped": self.dropped.load(Relaxed) })
    }
}

impl Observer for Tap {
    fn observe(&self, chain: &Chain, batch: &Batch, _timing: Timing) {
        if self.active.load(Relaxed) == 0 {
            return;
        }
        let watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut encoded = Vec::new();
        for watcher in &watchers {
            let mut json_tests = 0;
            for event in batch.events() {
                if !watcher.filter.facts_pass(chain, event) {
                    continue;
                }
                if watcher.filter.needs_json() {
                    if json_tests == JSON_TESTS_PER_BATCH {
                        break;
                    }
                    json_tests += 1;
                }
                encoded.clear();
                batch.write_event(event, chain.keys(), &mut encoded);
                if watcher.filter.needs_json() {
                    let passes =
                        serde_json::from_slice::<Value>(&encoded).is_ok_and(|v| watcher.filter.json_passes(&v));
                    if !passes {
                        continue;
                    }
                }
                if encoded.len() > MAX_EVENT_BYTES {
                    self.dropped.fetch_add(1, Relaxed);
                    continue;
                }
                if !watcher.take_token() {
                    // Over the rate: the rest of this batch is not shown.
                    break;
                }
                enrichd_engine::batch::one_line(&mut encoded);
                if watcher.tx.try_send(encoded.clone()).is_err() {
                    self.dropped.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_conditions_follow_dotted_paths() {
        let record = json!({"geo": {"country": "SE", "city": null}, "dst_port": 443, "proto": "tcp"});
        let filter = |has: &[&str], equals: &[(&str, &str)]| TapFilter {
            has: has.iter().map(|s| s.to_string()).collect(),
            equals: equals.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            ..TapFilter::default()
        };
        assert!(filter(&["geo.country"], &[]).json_passes(&record));
        assert!(!filter(&["geo.city"], &[]).json_passes(&record), "null counts as absent");
        assert!(!filter(&["asn"], &[]).json_passes(&record));
        assert!(filter(&[], &[("dst_port", "443"), ("proto", "tcp"), ("geo.country", "SE")]).json_passes(&record));
        assert!(!filter(&[], &[("proto", "udp")]).json_passes(&record));
        let matched = json!({"ti": {"matches": [{"type": "subnet"}]}});
        assert!(filter(&["ti.matches.0"], &[("ti.matches.0.type", "subnet")]).json_passes(&matched));
        assert!(!filter(&["ti.matches.1"], &[]).json_passes(&matched));
    }

    #[test]
    fn the_bucket_holds_the_rate() {
        let (tx, _rx) = mpsc::channel(1);
        let w = Watcher { filter: TapFilter::default(), rate: 5, bucket: Mutex::new((5.0, Instant::now())), tx };
        let taken = (0..100).filter(|_| w.take_token()).count();
        assert!((5..=6).contains(&taken), "{taken}");
    }
}
