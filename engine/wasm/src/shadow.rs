//! Shadow rules: a candidate module run next to the live one on the same
//! batches, its verdicts compared with the live verdicts and summarised,
//! never applied.
//!
//! Why it is shaped like this (DEVELOPERS.md "Shadow rules" has the rest):
//!
//! - The shadow runs in the live stage, right after the live module, on the
//!   same chunk and the same event records (built once): it sees exactly
//!   the input the live rule saw, and needs no second pass of the chain.
//! - Its results go through the same validation as the live results
//!   ([`crate::results::ResultWriter::check`]) into a scratch buffer of its
//!   own and are reduced to [`Verdict`]s (score, hash of the reasons), so a
//!   comparison allocates nothing per event. Only the first differing event
//!   of a chunk is quoted in full (a bounded ring of samples).
//! - A failing shadow (trap, timeout, garbage) fails only itself: the live
//!   verdicts are already written, its failures are counted and reported,
//!   and its own circuit breaker stops calling it.
//! - The shadow lives in the stage's carried state ([`ShadowCell`]), so it
//!   survives reloads of the live module; it is in memory only (a restart
//!   forgets an API shadow; a `shadow_module` in the config is loaded again).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use enrichd_engine::Event;
use serde_json::{json, Value};
use thread_local::ThreadLocal;

use crate::results::Verdict;
use crate::runtime::{LoadedModule, Worker};
use crate::stats::{CircuitBreaker, FailureKind, ModuleStats};
use enrichd_engine::fact::SCORE_BOUNDS;

/// Differing events quoted in full, newest last.
pub(crate) const MAX_SAMPLES: usize = 20;

/// A stage's shadow, shared by all generations of the stage; also the
/// stage's carried state for what else must survive a rebuild (a stage
/// carries one type).
#[derive(Default)]
pub(crate) struct ShadowCell {
    pub(crate) current: ArcSwapOption<Shadow>,
    /// The live module's counters and breaker, kept across rebuilds of
    /// the same content (see [`crate::stats::ModuleHealth`]).
    pub(crate) health: crate::stats::HealthCell,
}

/// A change of the shadow a build decided on (the configured
/// `shadow_module` added, replaced or removed), applied when the built stage
/// goes live: a build that is refused must leave the live shadow alone.
pub(crate) struct ShadowChange {
    /// The shadow the build saw: the change applies only over it, so a
    /// shadow deployed through the API between the build and the swap wins.
    pub(crate) expected: Option<Arc<Shadow>>,
    pub(crate) next: Option<Arc<Shadow>>,
}

impl ShadowChange {
    pub(crate) fn apply(self, cell: &ShadowCell) {
        let previous = cell.current.compare_and_swap(&self.expected, self.next);
        let applied = match (&*previous, &self.expected) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !applied {
            tracing::info!("the configured shadow changed meanwhile (through the API); that one stays");
        }
    }
}

/// Where a shadow came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// `POST /v1/rules/{stage}/shadow`.
    Api,
    /// The stage's `shadow_module` option.
    Config,
}

/// One shadow module and what it has found so far.
pub(crate) struct Shadow {
    pub(crate) module: Arc<LoadedModule>,
    /// The module's file (in the state directory for an API shadow): what a
    /// promotion makes live.
    pub(crate) path: PathBuf,
    pub(crate) sha256: String,
    pub(crate) size_bytes: usize,
    pub(crate) origin: Origin,
    pub(crate) added_at: String,
    pub(crate) added_by: Option<String>,
    pub(crate) signed_by: Option<String>,
    pub(crate) name: Arc<str>,
    pub(crate) stats: ModuleStats,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) summary: Summary,
    /// Its instance on each thread that ran it. Owned by the shadow, not by
    /// the stage's per-thread slots, so that removing or replacing the
    /// shadow (`DELETE`, a promotion, a new one) frees every instance and
    /// the module with it; held by the stage, they stayed until the stage
    /// was rebuilt, on every thread that had run a batch.
    pub(crate) instances: ThreadLocal<RefCell<Option<Worker>>>,
}

/// Counters of a shadow's comparisons: relaxed atomics added once per
/// chunk; the samples' lock is taken at most once per chunk with a
/// difference.
#[derive(Default)]
pub(crate) struct Summary {
    chunks: AtomicU64,
    compared: AtomicU64,
    differing: AtomicU64,
    score_differs: AtomicU64,
    reasons_differs: AtomicU64,
    /// Events not compared because the live module failed on them (they
    /// carry the fallback) or the shadow did.
    live_failed: AtomicU64,
    shadow_failed: AtomicU64,
    /// Time in the shadow (call, check, comparison), for its cost per event.
    shadow_ns: AtomicU64,
    live_hist: Histogram,
    shadow_hist: Histogram,
    samples: Mutex<VecDeque<Value>>,
}

/// Events by score bucket (`SCORE_BOUNDS`, then +Inf), and without a score.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; SCORE_BOUNDS.len() + 1],
    unscored: AtomicU64,
}

impl Histogram {
    fn add(&self, local: &LocalHistogram) {
        for (b, n) in self.buckets.iter().zip(local.buckets) {
            if n > 0 {
                b.fetch_add(n, Relaxed);
            }
        }
        if local.unscored > 0 {
            self.unscored.fetch_add(local.unscored, Relaxed);
        }
    }

    fn to_json(&self) -> Value {
        let buckets: Vec<Value> = SCORE_BOUNDS
            .iter()
            .map(|b| json!(b))
            .chain([json!("+Inf")])
            .zip(&self.buckets)
            .map(|(le, n)| json!({"le": le, "count": n.load(Relaxed)}))
            .collect();
        json!({"buckets": buckets, "unscored": self.unscored.load(Relaxed)})
    }
}

#[derive(Default)]
struct LocalHistogram {
    buckets: [u64; SCORE_BOUNDS.len() + 1],
    unscored: u64,
}

impl LocalHistogram {
    fn add(&mut self, score: Option<u8>) {
        match score {
            Some(s) => self.buckets[SCORE_BOUNDS.partition_point(|b| *b < s)] += 1,
            None => self.unscored += 1,
        }
    }
}

/// What a chunk's comparison found that the summary quotes: the first
/// differing event.
pub(crate) struct Difference {
    pub(crate) index: usize,
}

impl Summary {
    /// Compares one chunk's verdicts (`live` against `shadow`, same
    /// length) and counts them; returns the first differing event.
    pub(crate) fn compare(&self, live: &[Verdict], shadow: &[Verdict]) -> Option<Difference> {
        let (mut lh, mut sh) = (LocalHistogram::default(), LocalHistogram::default());
        let (mut differing, mut scores, mut reasons) = (0u64, 0u64, 0u64);
        let mut first = None;
        for (i, (l, s)) in live.iter().zip(shadow).enumerate() {
            lh.add(l.score);
            sh.add(s.score);
            if l != s {
                differing += 1;
                scores += u64::from(l.score != s.score);
                reasons += u64::from(l.reasons != s.reasons);
                first.get_or_insert(Difference { index: i });
            }
        }
        self.chunks.fetch_add(1, Relaxed);
        self.compared.fetch_add(live.len() as u64, Relaxed);
        if differing > 0 {
            self.differing.fetch_add(differing, Relaxed);
            self.score_differs.fetch_add(scores, Relaxed);
            self.reasons_differs.fetch_add(reasons, Relaxed);
        }
        self.live_hist.add(&lh);
        self.shadow_hist.add(&sh);
        first
    }

    pub(crate) fn not_compared(&self, events: usize, live_failed: bool) {
        self.chunks.fetch_add(1, Relaxed);
        let counter = if live_failed { &self.live_failed } else { &self.shadow_failed };
        counter.fetch_add(events as u64, Relaxed);
    }

    pub(crate) fn add_time(&self, elapsed: Duration) {
        self.shadow_ns.fetch_add(elapsed.as_nanos() as u64, Relaxed);
    }

    /// Keeps one differing event: its addresses and ports and both
    /// verdicts.
    pub(crate) fn sample(&self, event: &Event, live: (Option<u8>, Vec<String>), shadow: (Option<u8>, Vec<String>)) {
        let ip = |ip: Option<IpAddr>| ip.map(|ip| ip.to_string());
        let sample = json!({
            "src_ip": ip(event.src_ip), "dst_ip": ip(event.dst_ip),
            "src_port": event.src_port, "dst_port": event.dst_port,
            "live": {"score": live.0, "reasons": live.1},
            "shadow": {"score": shadow.0, "reasons": shadow.1},
        });
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == MAX_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub(crate) fn compared(&self) -> u64 {
        self.compared.load(Relaxed)
    }

    pub(crate) fn differing(&self) -> u64 {
        self.differing.load(Relaxed)
    }

    pub(crate) fn shadow_failed(&self) -> u64 {
        self.shadow_failed.load(Relaxed)
    }

    pub(crate) fn to_json(&self) -> Value {
        let compared = self.compared.load(Relaxed);
        let shadow_ns = self.shadow_ns.load(Relaxed);
        let ran = compared + self.shadow_failed.load(Relaxed) + self.live_failed.load(Relaxed);
        json!({
            "events_compared": compared,
            "events_differing": self.differing.load(Relaxed),
            "score_differs": self.score_differs.load(Relaxed),
            "reasons_differ": self.reasons_differs.load(Relaxed),
            "events_not_compared": {
                "live_failed": self.live_failed.load(Relaxed),
                "shadow_failed": self.shadow_failed.load(Relaxed),
            },
            "chunks": self.chunks.load(Relaxed),
            "shadow_ns_per_event": if ran == 0 { 0.0 } else { shadow_ns as f64 / ran as f64 },
            "histograms": {"live": self.live_hist.to_json(), "shadow": self.shadow_hist.to_json()},
            "samples": self.samples.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect::<Vec<_>>(),
        })
    }
}

impl Shadow {
    /// The summary as `GET /v1/rules/{stage}/shadow` and `rule diff` show it.
    pub(crate) fn to_json(&self) -> Value {
        let mut stats = self.stats.to_json();
        stats["circuit_open"] = self.breaker.is_open().into();
        stats["circuit_opened"] = self.breaker.opened().into();
        stats["circuit_next_trial_s"] = self.breaker.next_trial_in_s().into();
        json!({
            "module": {
                "sha256": self.sha256, "size_bytes": self.size_bytes, "path": self.path,
                "origin": match self.origin { Origin::Api => "api", Origin::Config => "config" },
                "added_at": self.added_at, "added_by": self.added_by, "signed_by": self.signed_by,
            },
            "summary": self.summary.to_json(),
            "shadow_calls": stats,
        })
    }

    /// Records a failed shadow call (the breaker is told by the caller).
    pub(crate) fn failed(&self, kind: FailureKind, events: usize) {
        self.stats.record_error(kind);
        self.summary.not_compared(events, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(score: Option<u8>, reasons: u64) -> Verdict {
        Verdict { score, reasons }
    }

    #[test]
    fn compare_counts_differences_and_fills_both_histograms() {
        let s = Summary::default();
        let live = [v(Some(10), 0), v(Some(95), 3), v(None, 0), v(Some(50), 7)];
        let shadow = [v(Some(10), 0), v(Some(80), 3), v(None, 1), v(Some(50), 7)];
        let first = s.compare(&live, &shadow).unwrap();
        assert_eq!(first.index, 1);
        let j = s.to_json();
        assert_eq!((j["events_compared"].as_u64(), j["events_differing"].as_u64()), (Some(4), Some(2)));
        assert_eq!((j["score_differs"].as_u64(), j["reasons_differ"].as_u64()), (Some(1), Some(1)));
        let count = |side: &str, i: usize| j["histograms"][side]["buckets"][i]["count"].as_u64().unwrap();
        assert_eq!((count("live", 0), count("live", 4), count("live", 9)), (1, 1, 1));
        assert_eq!((count("shadow", 7), count("shadow", 9)), (1, 0));
        assert_eq!(j["histograms"]["live"]["unscored"], 1);
        assert!(s.compare(&live, &live).is_none());
    }

    #[test]
    fn samples_are_a_bounded_ring() {
        let s = Summary::default();
        let ev = Event::synthetic();
        for i in 0..(MAX_SAMPLES + 5) {
            s.sample(&ev, (Some(i as u8), vec![]), (None, vec!["x".into()]));
        }
        let samples = s.to_json()["samples"].as_array().unwrap().clone();
        assert_eq!(samples.len(), MAX_SAMPLES);
        assert_eq!(samples[0]["live"]["score"], 5, "the oldest went first");
    }

    /// Before, the shadow's instance lived in the stage's per-thread slot:
    /// a removed shadow's instance (its memory, and the module through it)
    /// stayed on every thread that had run it until the stage was rebuilt.
    #[test]
    fn removing_the_shadow_frees_its_instances_at_once() {
        use enrichd_engine::{AdminResponse, StageMethod, StageRequest};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let rule = |tag: &str| {
            format!(
                r#"(module (memory (export "memory") 3)
                  (func (export "enrichd_abi_version") (result i32) (i32.const 65536))
                  (func (export "enrichd_io") (result i32) (i32.const 0))
                  (func (export "enrichd_process") (param $n i32) (result i32)
                    (i32.store (i32.const 28672) (i32.const 0)) (i32.const 0)))
                ;; {tag}"#
            )
        };
        std::fs::write(d.join("rule.wat"), rule("live")).unwrap();
        std::fs::write(d.join("shadow.wat"), rule("shadow")).unwrap();
        let toml =
            "[[chain]]\nplugin = \"wasm\"\nname = \"rule\"\nmodule = \"rule.wat\"\nshadow_module = \"shadow.wat\"\n";
        let config = enrichd_engine::Config::parse(toml, &d.join("c.toml")).unwrap();
        let mut registry = enrichd_engine::Registry::new();
        registry.register(Box::new(crate::WasmFactory));
        let chain = enrichd_engine::Chain::build(&config.chain, &registry, d).unwrap();
        let before = crate::runtime::instances_alive();
        let line = r#"{"src_ip":"45.149.3.7","dst_port":80}"#;
        let mut batch =
            enrichd_engine::parse_ndjson(line.into(), enrichd_engine::Format::FlowsV1, chain.parse_spec(), 0).unwrap();
        chain.run(&mut batch);
        assert_eq!(crate::runtime::instances_alive() - before, 2, "the live module's instance and the shadow's");

        let request =
            |method| StageRequest { method, action: "shadow", query: "", body: &[], state_dir: d, actor: None };
        let removed: AdminResponse = chain.stage_action("wasm", "rule", request(StageMethod::Delete)).unwrap();
        assert_eq!(removed.status, 200);
        assert_eq!(crate::runtime::instances_alive() - before, 1, "the shadow's instance went with it");
    }
}
