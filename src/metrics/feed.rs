//! The ingest side: what one enriched batch contributes, folded into the
//! calling thread's own shard.
//!
//! Ingest runs on tokio's blocking pool. Each thread is bound to one of a
//! fixed set of shards (round-robin on first use), so a shard's mutex is
//! taken once per batch and is contended only when the ticker swaps the
//! shard out (once a second) or when more threads than shards are busy.
//! No lock is shared by all ingest threads and none is taken per event.
//!
//! Per event the fold is a few integer adds and hash-map increments (source
//! address, destination country, AS number). Output fragments are read only
//! for events that need them: the `ti` output of events with threat matches
//! is scanned (not parsed) for the indicator names; high-risk events keep
//! their `ti` and `reasons` fragments (shared `Arc`s, no copy) to be parsed
//! when shown; the `asn` output is kept once per new AS number per tick,
//! for its label.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use enrichd_engine::{Event, JsonFragment};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::{json, Value};

use super::latency::{self, Buckets};
use super::topn::{CodeCounter, Counter};
use super::window::Tally;

/// Events scoring at least this are listed in `recent_high_risk`.
pub const HIGH_RISK_SCORE: u8 = 70;
/// Length of the `recent_high_risk` list.
pub const HIGH_RISK_KEEP: usize = 50;
/// AS labels collected per shard and tick (new AS numbers are rare).
const LABELS_PER_TICK: usize = 64;

/// Upper bounds of the risk-score histogram buckets.
pub const RISK_BOUNDS: [u8; 10] = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100];

/// Where in the chain's output table the fragments metrics read live.
#[derive(Clone, Copy, Debug, Default)]
pub struct OutputKeys {
    ti: Option<usize>,
    reasons: Option<usize>,
    asn: Option<usize>,
}

impl OutputKeys {
    /// Finds the default chain's output names (`ti`, `reasons`, `asn`).
    pub fn resolve(keys: &[Box<str>]) -> Self {
        let find = |name: &str| keys.iter().position(|k| &**k == name);
        OutputKeys { ti: find("ti"), reasons: find("reasons"), asn: find("asn") }
    }
}

fn output(event: &Event, index: Option<usize>) -> Option<&JsonFragment> {
    let index = index?;
    event.outputs().find(|(k, _)| k.index() == index).map(|(_, v)| v)
}

/// One high-risk event as listed by `/v1/metrics`.
#[derive(Clone, Debug, PartialEq)]
pub struct HighRisk {
    /// When it was enriched (server time).
    pub ts_ms: u64,
    /// The record's own `ts`, when it had one.
    pub event_ts: Option<f64>,
    pub risk_score: u8,
    pub src_ip: Option<IpAddr>,
    pub dst_ip: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub dst_country: Option<[u8; 2]>,
    pub asn: Option<u32>,
    /// The event's `ti` and `reasons` outputs, read when shown.
    pub ti: Option<JsonFragment>,
    pub reasons: Option<JsonFragment>,
}

impl HighRisk {
    pub fn to_json(&self) -> Value {
        json!({
            "ts_ms": self.ts_ms, "event_ts": self.event_ts, "risk_score": self.risk_score,
            "src_ip": self.src_ip, "dst_ip": self.dst_ip, "src_port": self.src_port, "dst_port": self.dst_port,
            "dst_country": self.dst_country.map(country), "asn": self.asn,
            "indicators": self.ti.as_deref().map_or_else(Vec::new, |ti| indicators(ti).collect()),
            "reasons": self.reasons.as_deref().and_then(|r| serde_json::from_str::<Value>(r).ok()).unwrap_or(json!([])),
        })
    }
}

pub fn country(code: [u8; 2]) -> String {
    String::from_utf8_lossy(&code).into_owned()
}

/// What the ingest threads collected since the ticker last looked.
#[derive(Default)]
pub struct Shard {
    /// Per completion second (usually one or two entries).
    pub seconds: Vec<(u64, Tally)>,
    pub lag: Option<Histogram<u32>>,
    pub processing: Option<Histogram<u32>>,
    pub processing_buckets: Buckets,
    /// Risk-score counts per [`RISK_BOUNDS`] bucket, +Inf last.
    pub risk_buckets: [u64; RISK_BOUNDS.len() + 1],
    pub events_with_threats: u64,
    /// IPv4 sources as `u32` (8-byte map entries), IPv6 apart.
    pub sources_v4: Counter<u32>,
    pub sources_v6: Counter<u128>,
    pub countries: CodeCounter,
    pub asns: Counter<u32>,
    pub indicators: Counter<String>,
    /// `asn` output fragments of AS numbers first seen this tick.
    pub asn_labels: Vec<(u32, JsonFragment)>,
    /// Newest last, at most [`HIGH_RISK_KEEP`].
    pub high_risk: VecDeque<HighRisk>,
}

/// Totals of one batch, for the exact counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BatchTotals {
    pub tally: Tally,
    pub events_with_threats: u64,
}

impl Shard {
    /// Folds one enriched batch in. `lag`: request arrival to enrichment
    /// done; `processing`: parse + enrichment.
    pub fn observe(
        &mut self,
        keys: OutputKeys,
        events: &[Event],
        now_ms: u64,
        lag: Duration,
        processing: Duration,
    ) -> BatchTotals {
        let mut totals = BatchTotals {
            tally: Tally { events: events.len() as u64, batches: 1, ..Tally::default() },
            ..Default::default()
        };
        for event in events {
            match event.src_ip {
                Some(IpAddr::V4(ip)) => {
                    self.sources_v4.add(&u32::from(ip), 1);
                }
                Some(IpAddr::V6(ip)) => {
                    self.sources_v6.add(&u128::from(ip), 1);
                }
                None => {}
            }
            if let Some(code) = event.dst_country {
                self.countries.add(code);
            }
            if let Some(asn) = event.dst_asn.or(event.src_asn) {
                if self.asns.add(&asn, 1) && self.asn_labels.len() < LABELS_PER_TICK {
                    if let Some(fragment) = output(event, keys.asn) {
                        self.asn_labels.push((asn, fragment.clone()));
                    }
                }
            }
            if let Some(score) = event.risk_score {
                totals.tally.risk_sum += u64::from(score);
                totals.tally.risk_count += 1;
                self.risk_buckets[RISK_BOUNDS.partition_point(|b| *b < score)] += 1;
            }
            if event.threat_matches > 0 {
                totals.tally.threats += u64::from(event.threat_matches);
                totals.events_with_threats += 1;
                if let Some(ti) = output(event, keys.ti) {
                    for indicator in indicators(ti) {
                        self.indicators.add(&*indicator, 1);
                    }
                }
            }
            if event.risk_score.is_some_and(|s| s >= HIGH_RISK_SCORE) {
                self.push_high_risk(keys, event, now_ms);
            }
        }
        self.events_with_threats += totals.events_with_threats;
        let second = now_ms / 1000;
        match self.seconds.iter_mut().find(|(s, _)| *s == second) {
            Some((_, t)) => t.add(&totals.tally),
            None => self.seconds.push((second, totals.tally)),
        }
        latency::record(self.lag.get_or_insert_with(latency::histogram), lag);
        latency::record(self.processing.get_or_insert_with(latency::histogram), processing);
        self.processing_buckets.observe(processing);
        totals
    }

    fn push_high_risk(&mut self, keys: OutputKeys, event: &Event, now_ms: u64) {
        if self.high_risk.len() == HIGH_RISK_KEEP {
            self.high_risk.pop_front();
        }
        self.high_risk.push_back(HighRisk {
            ts_ms: now_ms,
            event_ts: event.ts,
            risk_score: event.risk_score.unwrap_or(0),
            src_ip: event.src_ip,
            dst_ip: event.dst_ip,
            src_port: event.src_port,
            dst_port: event.dst_port,
            dst_country: event.dst_country,
            asn: event.dst_asn.or(event.src_asn),
            ti: output(event, keys.ti).cloned(),
            reasons: output(event, keys.reasons).cloned(),
        });
    }
}

/// The indicator names in a `ti` output (`{"matches": [{"indicator": ...}]}`).
///
/// A scan, not a parse: `"indicator":"` can only be a key (a quote inside a
/// JSON string is escaped, which breaks the pattern), and the value runs to
/// the next unescaped quote. Values with escapes (never written by the TI
/// plugin) are decoded properly.
fn indicators(fragment: &str) -> impl Iterator<Item = Cow<'_, str>> {
    const KEY: &str = "\"indicator\":\"";
    fragment.match_indices(KEY).filter_map(move |(at, _)| {
        let rest = &fragment[at + KEY.len()..];
        let bytes = rest.as_bytes();
        let mut end = 0;
        let mut escaped = false;
        while end < bytes.len() && (escaped || bytes[end] != b'"') {
            escaped = !escaped && bytes[end] == b'\\';
            end += 1;
        }
        if end == bytes.len() {
            return None; // unterminated: not a valid fragment
        }
        let raw = &rest[..end];
        if raw.contains('\\') {
            serde_json::from_str::<String>(&fragment[at + KEY.len() - 1..at + KEY.len() + end + 1]).ok().map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(raw))
        }
    })
}

/// The AS organisation named in an `asn` output (`{"asn": N, "org": "..."}`),
/// when it is about `asn`.
pub fn asn_label(asn: u32, fragment: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct AsnOutput {
        asn: Option<u32>,
        org: Option<String>,
    }
    let parsed: AsnOutput = serde_json::from_str(fragment).ok()?;
    (parsed.asn == Some(asn)).then_some(parsed.org).flatten()
}

/// A fixed set of shards; each thread uses the one it was dealt.
pub struct Shards {
    shards: Box<[Mutex<Shard>]>,
}

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Relaxed);
}

impl Shards {
    pub fn new(count: usize) -> Self {
        Shards { shards: (0..count.max(1)).map(|_| Mutex::default()).collect() }
    }

    /// This thread's shard.
    pub fn local(&self) -> MutexGuard<'_, Shard> {
        let i = SLOT.with(|s| *s) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Swaps each shard with `spare` (holding the lock only for the swap)
    /// and hands the full one to `drain`, which must leave it empty.
    pub fn drain(&self, spare: &mut Shard, mut drain: impl FnMut(&mut Shard)) {
        for shard in self.shards.iter() {
            std::mem::swap(&mut *shard.lock().unwrap_or_else(PoisonError::into_inner), spare);
            drain(spare);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enrichd_engine::{Chain, ChainEntryConfig, Registry};

    #[test]
    fn indicators_and_labels_are_read_from_fragments() {
        let ti = r#"{"matches":[{"indicator":"45.149.3.0/24","type":"cidr","field":"src_ip","value":"45.149.3.7"},{"indicator":"evil\u002eexample","type":"domain"}]}"#;
        let got: Vec<String> = indicators(ti).map(Cow::into_owned).collect();
        assert_eq!(got, ["45.149.3.0/24", "evil.example"]);
        assert_eq!(indicators("not json").count(), 0);
        assert_eq!(indicators(r#"{"matches":[{"indicator":"unterminated"#).count(), 0);
        // A value that merely contains the key text is not a key.
        let tricky = r#"{"matches":[{"value":"x\"indicator\":\"no","indicator":"a\\b"}]}"#;
        let got: Vec<String> = indicators(tricky).map(Cow::into_owned).collect();
        assert_eq!(got, ["a\\b"]);
        // Same answers as a full parse on the plugin's real output.
        let parsed: Value = serde_json::from_str(ti).unwrap();
        let by_parse: Vec<&str> =
            parsed["matches"].as_array().unwrap().iter().map(|m| m["indicator"].as_str().unwrap()).collect();
        assert_eq!(by_parse, ["45.149.3.0/24", "evil.example"]);
        assert_eq!(asn_label(15169, r#"{"asn":15169,"org":"GOOGLE"}"#).as_deref(), Some("GOOGLE"));
        assert_eq!(asn_label(1, r#"{"asn":15169,"org":"GOOGLE"}"#), None);
    }

    /// A real chain with the TI plugin over the repository's indicators.
    fn ti_chain() -> Chain {
        let mut registry = Registry::new();
        enrichd_plugins::register_all(&mut registry);
        let options = format!("paths = [\"{}/ti/indicators.txt\"]", env!("CARGO_MANIFEST_DIR"));
        let entry = ChainEntryConfig {
            plugin: "ti".into(),
            name: None,
            enabled: true,
            options: toml::from_str(&options).expect("options"),
            location: Default::default(),
        };
        Chain::build(&[entry], &registry, std::path::Path::new(".")).expect("chain")
    }

    #[test]
    fn a_batch_is_folded_into_counts_tops_and_high_risk() {
        let chain = ti_chain();
        let mut events: Vec<Event> = (0..10u8)
            .map(|i| {
                let mut e = Event::synthetic();
                e.src_ip = Some(IpAddr::from([45, 149, 3, i % 2]));
                e.dst_ip = Some(IpAddr::from([8, 8, 8, 8]));
                e.dst_country = Some(*b"US");
                e.dst_asn = Some(15169);
                e.risk_score = Some(if i == 0 { 90 } else { 10 });
                e
            })
            .collect();
        let mut other = Event::synthetic();
        other.src_ip = Some(IpAddr::from([10, 0, 0, 1]));
        events.push(other);
        let mut batch = enrichd_engine::Batch::synthetic(enrichd_engine::Format::FlowsV1, events);
        chain.run(&mut batch);
        let mut shard = Shard::default();
        let keys = OutputKeys::resolve(chain.keys());
        let totals =
            shard.observe(keys, batch.events(), 5_000_500, Duration::from_micros(300), Duration::from_micros(90));
        assert_eq!(totals.tally.events, 11);
        assert_eq!(totals.tally.batches, 1);
        assert_eq!(totals.tally.threats, 10, "every 45.149.3.x source matches 45.149.3.0/24");
        assert_eq!(totals.events_with_threats, 10);
        assert_eq!(totals.tally.risk_sum, 90 + 9 * 10);
        assert_eq!(totals.tally.risk_count, 10);
        assert_eq!(shard.seconds, vec![(5_000, totals.tally)]);
        assert_eq!(shard.events_with_threats, 10);
        assert_eq!(shard.risk_buckets[0], 9, "score 10 is in the le=10 bucket");
        assert_eq!(shard.risk_buckets[8], 1, "score 90 is in the le=90 bucket");
        assert_eq!(shard.high_risk.len(), 1);
        let hr = &shard.high_risk[0];
        assert_eq!((hr.risk_score, hr.ts_ms, hr.asn), (90, 5_000_500, Some(15169)));
        let shown = hr.to_json();
        assert_eq!(shown["indicators"], json!(["45.149.3.0/24"]));
        assert_eq!(shown["reasons"], json!([]), "no rule stage in this chain");
        assert_eq!(shown["dst_country"], "US");
        let mut top = super::super::topn::Summary::new(10);
        shard.indicators.drain_into(&mut top, |_| {});
        let top = top.into_sorted_vec();
        assert_eq!((top[0].0.as_str(), top[0].1.estimated_count()), ("45.149.3.0/24", 10));
        assert_eq!(shard.processing_buckets.count, 1);
        assert_eq!(shard.lag.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn high_risk_list_is_bounded_newest_last() {
        let mut shard = Shard::default();
        let events: Vec<Event> = (0..80u16)
            .map(|p| {
                let mut e = Event::synthetic();
                e.risk_score = Some(95);
                e.dst_port = Some(p);
                e
            })
            .collect();
        shard.observe(OutputKeys::default(), &events, 1, Duration::ZERO, Duration::ZERO);
        assert_eq!(shard.high_risk.len(), HIGH_RISK_KEEP);
        assert_eq!(shard.high_risk.back().unwrap().dst_port, Some(79));
    }

    #[test]
    fn threads_get_shards_and_drain_empties_them() {
        let shards = Shards::new(4);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let events = vec![Event::synthetic(); 3];
                    shards.local().observe(OutputKeys::default(), &events, 1000, Duration::ZERO, Duration::ZERO);
                });
            }
        });
        let mut spare = Shard::default();
        let mut events = 0;
        shards.drain(&mut spare, |s| {
            events += s.seconds.drain(..).map(|(_, t)| t.events).sum::<u64>();
        });
        assert_eq!(events, 24);
        let mut again = 0;
        shards.drain(&mut spare, |s| again += s.seconds.len());
        assert_eq!(again, 0);
    }
}
