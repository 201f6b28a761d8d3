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
//! address, destination country, AS number, values of facts declared with
//! `top_values`). What to count is found through the chain's declared
//! facts (see `enrichd_engine::fact`), by kind and side, never by output
//! key or plugin name: destination countries are `CountryCode` facts
//! (destination side preferred), AS numbers `AsNumber` facts, threats
//! `IndicatorMatches`, risk `Score`, reasons `ReasonList`. The roles are
//! worked out once per fact table (a chain swap), so per event a fact is
//! classified by indexing a small table.
//!
//! Output fragments are read only for events that need them: the output
//! of an `IndicatorMatches` fact is read for the indicator names (by the
//! reader its plugin declared) when it has matches; high-risk events keep
//! their matches and reasons fragments (shared `Arc`s, no copy) to be read
//! when shown; an `AsNumber` fact's output is kept once per new AS number
//! per tick, for its label (read by the plugin's reader).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use std::sync::Arc;

use enrichd_engine::{Event, FactId, FactInfo, FactKind, FactMask, JsonFragment, KeyId, Side, ValuesReader};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::latency::{self, Buckets};
use super::topn::{CodeCounter, Counter};
use super::window::Tally;

/// Events scoring at least this are listed in `recent_high_risk`.
pub(crate) const HIGH_RISK_SCORE: u8 = 70;
/// Length of the `recent_high_risk` list.
pub(crate) const HIGH_RISK_KEEP: usize = 50;
/// AS labels collected per shard and tick (new AS numbers are rare).
const LABELS_PER_TICK: usize = 64;

/// Upper bounds of the risk-score histogram buckets (the engine's, shared
/// with shadow-rule comparisons).
pub(crate) const RISK_BOUNDS: [u8; 10] = enrichd_engine::fact::SCORE_BOUNDS;

/// What metrics make of each declared fact, by fact index.
#[derive(Clone, Copy, Debug, Default)]
struct Role {
    /// Rank as the destination country (1 best; 0: not a country).
    country: u8,
    /// Rank as the AS number (1 best; 0: not an AS number).
    asn: u8,
    matches: bool,
    score: bool,
    reasons: bool,
    /// Counted in its own top list.
    top: bool,
}

/// The metrics' reading of one fact table (worked out per chain swap).
#[derive(Clone, Default)]
pub(crate) struct FactRoles {
    table: Option<Arc<[FactInfo]>>,
    /// The ids each reading looks at, as masks (per rank, best first): per
    /// event a few bit tests instead of classifying every fact it carries.
    countries: Vec<FactMask>,
    asns: Vec<FactMask>,
    matches: FactMask,
    scores: FactMask,
    reasons: FactMask,
    tops: FactMask,
}

impl FactRoles {
    /// Classifies every fact of `table` by kind and side.
    pub(crate) fn of(table: &Arc<[FactInfo]>) -> Self {
        let roles = table
            .iter()
            .map(|f| {
                let rank = |side: Option<Side>, src: u8| match side {
                    Some(Side::Destination) => 1,
                    None => 2,
                    Some(Side::Source) => src,
                };
                Role {
                    country: if f.decl.kind == FactKind::CountryCode { rank(f.decl.side, 0) } else { 0 },
                    asn: if f.decl.kind == FactKind::AsNumber { rank(f.decl.side, 3) } else { 0 },
                    matches: f.decl.kind == FactKind::IndicatorMatches,
                    score: f.decl.kind == FactKind::Score,
                    reasons: f.decl.kind == FactKind::ReasonList,
                    top: f.decl.top_values,
                }
            })
            .collect::<Vec<Role>>();
        let with_rank = |rank: &dyn Fn(&Role) -> u8, wanted: u8| {
            FactMask::of(table.iter().zip(&roles).filter(|(_, r)| rank(r) == wanted).map(|(f, _)| f.id))
        };
        let ranked = |rank: &dyn Fn(&Role) -> u8| {
            (1..=3).map(|n| with_rank(rank, n)).filter(|m| !m.is_empty()).collect::<Vec<_>>()
        };
        FactRoles {
            table: Some(table.clone()),
            countries: ranked(&|r| r.country),
            asns: ranked(&|r| r.asn),
            matches: with_rank(&|r| u8::from(r.matches), 1),
            scores: with_rank(&|r| u8::from(r.score), 1),
            reasons: with_rank(&|r| u8::from(r.reasons), 1),
            tops: with_rank(&|r| u8::from(r.top), 1),
        }
    }

    fn info(&self, id: FactId) -> Option<&FactInfo> {
        self.table.as_ref()?.get(id.index())
    }

    /// True when these roles were worked out from `table`.
    pub(crate) fn is_for(&self, table: &Arc<[FactInfo]>) -> bool {
        self.table.as_ref().is_some_and(|t| Arc::ptr_eq(t, table))
    }
}

/// What one event says, by declared facts.
#[derive(Default)]
struct Reading {
    country: Option<(u8, u32)>,
    asn: Option<(u8, u32, FactId)>,
    matches: u32,
    score: Option<u8>,
    reasons: Option<FactId>,
}

impl Reading {
    fn of(roles: &FactRoles, event: &Event, mut top: impl FnMut(FactId, u32)) -> Reading {
        let best = |ranks: &[FactMask]| ranks.iter().find_map(|mask| event.first_fact(mask));
        for (id, value) in event.facts_in(&roles.tops) {
            top(id, value);
        }
        Reading {
            country: best(&roles.countries).map(|(_, code)| (0, code)),
            asn: best(&roles.asns).map(|(id, asn)| (0, asn, id)),
            matches: event.facts_in(&roles.matches).fold(0u32, |sum, (_, n)| sum.saturating_add(n)),
            score: event.first_fact(&roles.scores).map(|(_, s)| s.min(100) as u8),
            reasons: event.first_fact(&roles.reasons).map(|(id, _)| id),
        }
    }
}

/// The output fragment a fact was written under, with the fact's reader.
fn fact_output<'e>(
    roles: &FactRoles,
    event: &'e Event,
    id: FactId,
) -> Option<(&'e JsonFragment, Option<ValuesReader>)> {
    let info = roles.info(id)?;
    let key: KeyId = info.decl.output?;
    event.output(key).map(|f| (f, info.decl.values))
}

/// Every name the plugin's reader finds in a fact's output.
fn read_values(fragment: &str, reader: Option<ValuesReader>, mut each: impl FnMut(&str)) {
    if let Some(read) = reader {
        read(fragment, &mut each);
    }
}

/// One high-risk event as listed by `/v1/metrics`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HighRisk {
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
    /// The AS organisation, when known (filled when the list is read).
    pub asn_label: Option<String>,
    /// The event's indicator-match outputs (with their readers) and
    /// reasons output, read when shown.
    pub matches: Vec<(JsonFragment, Option<ValuesReader>)>,
    pub reasons: Option<JsonFragment>,
}

impl HighRisk {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "ts_ms": self.ts_ms, "event_ts": self.event_ts, "risk_score": self.risk_score,
            "src_ip": self.src_ip, "dst_ip": self.dst_ip, "src_port": self.src_port, "dst_port": self.dst_port,
            "dst_country": self.dst_country.map(country), "asn": self.asn, "asn_label": self.asn_label,
            "indicators": self.indicators(),
            "reasons": self.reasons.as_deref().and_then(|r| serde_json::from_str::<Value>(r).ok()).unwrap_or(json!([])),
        })
    }
}

impl HighRisk {
    fn indicators(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (fragment, reader) in &self.matches {
            read_values(fragment, *reader, |name| out.push(name.to_owned()));
        }
        out
    }
}

pub(crate) fn country(code: [u8; 2]) -> String {
    String::from_utf8_lossy(&code).into_owned()
}

/// What the ingest threads collected since the ticker last looked.
#[derive(Default)]
pub(crate) struct Shard {
    /// Per completion second (usually one or two entries).
    pub seconds: Vec<(u64, Tally)>,
    pub lag: Option<Histogram<u32>>,
    pub processing: Option<Histogram<u32>>,
    pub processing_buckets: Buckets,
    pub lag_buckets: Buckets,
    /// Risk-score counts per [`RISK_BOUNDS`] bucket, +Inf last.
    pub risk_buckets: [u64; RISK_BOUNDS.len() + 1],
    pub events_with_threats: u64,
    /// IPv4 sources as `u32` (8-byte map entries), IPv6 apart.
    pub sources_v4: Counter<u32>,
    pub sources_v6: Counter<u128>,
    pub countries: CodeCounter,
    pub asns: Counter<u32>,
    pub indicators: Counter<String>,
    /// Output fragments (and their fact's reader) of AS numbers first seen
    /// this tick, for their labels.
    pub asn_labels: Vec<(u32, JsonFragment, ValuesReader)>,
    /// Values of facts declared with `top_values`, per fact table they
    /// were counted under (usually one; two around a chain swap).
    pub fact_values: Vec<FactCounts>,
    /// The fact table of the latest batch and what metrics make of it.
    pub roles: FactRoles,
    /// Newest last, at most [`HIGH_RISK_KEEP`].
    pub high_risk: VecDeque<HighRisk>,
}

/// Values of facts declared with `top_values`, counted under one fact table
/// (that of one chain generation). Kept apart per table because a reload
/// may declare a fact again with other labels under the same id: a value
/// means a label only in the table it was counted with, and which table is
/// newer is known only by its generation (a swap re-declaring a fact in
/// place leaves the table as long as before).
pub(crate) struct FactCounts {
    pub generation: u64,
    pub table: Arc<[FactInfo]>,
    /// By fact index.
    pub counters: Vec<(u16, Counter<u32>)>,
}

/// Totals of one batch, for the exact counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct BatchTotals {
    pub tally: Tally,
    pub events_with_threats: u64,
}

impl Shard {
    /// Folds one enriched batch in. `lag`: request arrival to enrichment
    /// done; `processing`: parse + enrichment.
    pub(crate) fn observe(
        &mut self,
        (facts, generation): (&Arc<[FactInfo]>, u64),
        events: &[Event],
        now_ms: u64,
        lag: Duration,
        processing: Duration,
    ) -> BatchTotals {
        if !self.roles.is_for(facts) {
            self.roles = FactRoles::of(facts);
        }
        let counts = if self.roles.tops.is_empty() {
            None
        } else {
            let at = self.fact_values.iter().position(|c| c.generation == generation && Arc::ptr_eq(&c.table, facts));
            let at = at.unwrap_or_else(|| {
                self.fact_values.push(FactCounts { generation, table: facts.clone(), counters: Vec::new() });
                self.fact_values.len() - 1
            });
            Some(at)
        };
        let mut totals = BatchTotals {
            tally: Tally { events: events.len() as u64, batches: 1, ..Tally::default() },
            ..Default::default()
        };
        for event in events {
            match event.src_ip {
                Some(IpAddr::V4(ip)) => {
                    self.sources_v4.add_copy(u32::from(ip), 1);
                }
                Some(IpAddr::V6(ip)) => {
                    self.sources_v6.add_copy(u128::from(ip), 1);
                }
                None => {}
            }
            let fact_values = &mut self.fact_values;
            let r = Reading::of(&self.roles, event, |id, value| {
                let Some(at) = counts else { return };
                let fact_values = &mut fact_values[at].counters;
                let index = id.index() as u16;
                let counter = match fact_values.iter().position(|(i, _)| *i == index) {
                    Some(at) => &mut fact_values[at].1,
                    None => {
                        fact_values.push((index, Counter::default()));
                        &mut fact_values.last_mut().expect("pushed").1
                    }
                };
                counter.add_copy(value, 1);
            });
            if let Some((_, code)) = r.country {
                self.countries.add(enrichd_engine::fact::country_bytes(code));
            }
            if let Some((_, asn, id)) = r.asn {
                if self.asns.add_copy(asn, 1) && self.asn_labels.len() < LABELS_PER_TICK {
                    if let Some((fragment, Some(reader))) = fact_output(&self.roles, event, id) {
                        self.asn_labels.push((asn, fragment.clone(), reader));
                    }
                }
            }
            if let Some(score) = r.score {
                totals.tally.risk_sum += u64::from(score);
                totals.tally.risk_count += 1;
                self.risk_buckets[RISK_BOUNDS.partition_point(|b| *b < score)] += 1;
            }
            if r.matches > 0 {
                totals.tally.threats += u64::from(r.matches);
                totals.events_with_threats += 1;
                for (id, _) in event.facts_in(&self.roles.matches).filter(|&(_, n)| n > 0) {
                    if let Some((fragment, reader)) = fact_output(&self.roles, event, id) {
                        let indicators = &mut self.indicators;
                        read_values(fragment, reader, |name| {
                            indicators.add(name, 1);
                        });
                    }
                }
            }
            if let Some(score) = r.score.filter(|s| *s >= HIGH_RISK_SCORE) {
                self.push_high_risk(&r, score, event, now_ms);
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
        self.lag_buckets.observe(lag);
        totals
    }

    /// The outputs of the event's indicator-match facts that have matches.
    fn match_outputs(&self, event: &Event) -> Vec<(JsonFragment, Option<ValuesReader>)> {
        event
            .facts_in(&self.roles.matches)
            .filter(|&(_, n)| n > 0)
            .filter_map(|(id, _)| fact_output(&self.roles, event, id))
            .map(|(fragment, reader)| (fragment.clone(), reader))
            .collect()
    }

    fn push_high_risk(&mut self, r: &Reading, score: u8, event: &Event, now_ms: u64) {
        if self.high_risk.len() == HIGH_RISK_KEEP {
            self.high_risk.pop_front();
        }
        let matches = if r.matches > 0 { self.match_outputs(event) } else { Vec::new() };
        let reasons = r.reasons.and_then(|id| fact_output(&self.roles, event, id)).map(|(f, _)| f.clone());
        self.high_risk.push_back(HighRisk {
            ts_ms: now_ms,
            event_ts: event.ts,
            risk_score: score,
            src_ip: event.src_ip,
            dst_ip: event.dst_ip,
            src_port: event.src_port,
            dst_port: event.dst_port,
            dst_country: r.country.map(|(_, c)| enrichd_engine::fact::country_bytes(c)),
            asn: r.asn.map(|(_, a, _)| a),
            asn_label: None,
            matches,
            reasons,
        });
    }
}

/// The label of an AS number: the first name the `AsNumber` fact's reader
/// finds in its output (the AS organisation).
pub(crate) fn asn_label(fragment: &str, reader: ValuesReader) -> Option<String> {
    let mut label = None;
    reader(fragment, &mut |name| {
        if label.is_none() {
            label = Some(name.to_owned());
        }
    });
    label
}

/// A fixed set of shards; each thread uses the one it was dealt.
pub(crate) struct Shards {
    shards: Box<[Mutex<Shard>]>,
}

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Relaxed);
}

impl Shards {
    pub(crate) fn new(count: usize) -> Self {
        Shards { shards: (0..count.max(1)).map(|_| Mutex::default()).collect() }
    }

    /// This thread's shard.
    pub(crate) fn local(&self) -> MutexGuard<'_, Shard> {
        let i = SLOT.with(|s| *s) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Swaps each shard with `spare` (holding the lock only for the swap)
    /// and hands the full one to `drain`, which must leave it empty.
    pub(crate) fn drain(&self, spare: &mut Shard, mut drain: impl FnMut(&mut Shard)) {
        for shard in self.shards.iter() {
            std::mem::swap(&mut *shard.lock().unwrap_or_else(PoisonError::into_inner), spare);
            drain(spare);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enrichd_engine::{Chain, ChainEntryConfig, FactDecl, Registry};

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

    /// The TI chain's facts (the chain declares them in this order, so ids
    /// line up) plus a country, an AS number and a score
    /// fact, as other stages would declare them.
    fn table(chain: &Chain) -> Arc<[FactInfo]> {
        let ti = chain.facts().iter().map(|f| ("ti", f.decl.clone()));
        let others = [
            ("geo", FactDecl::new("dst_country_code", FactKind::CountryCode).side(Side::Destination)),
            ("asn", FactDecl::new("dst_as_number", FactKind::AsNumber).side(Side::Destination)),
            ("rule", FactDecl::new("score", FactKind::Score)),
        ];
        enrichd_engine::fact::table(ti.chain(others)).into()
    }

    #[test]
    fn a_batch_is_folded_into_counts_tops_and_high_risk() {
        let chain = ti_chain();
        let facts = table(&chain);
        let n = facts.len();
        let (country, asn, score) = (facts[n - 3].id, facts[n - 2].id, facts[n - 1].id);
        let mut events: Vec<Event> = (0..10u8)
            .map(|i| {
                let mut e = Event::synthetic();
                e.src_ip = Some(IpAddr::from([45, 149, 3, i % 2]));
                e.dst_ip = Some(IpAddr::from([8, 8, 8, 8]));
                e
            })
            .collect();
        let mut other = Event::synthetic();
        other.src_ip = Some(IpAddr::from([10, 0, 0, 1]));
        events.push(other);
        let mut batch = enrichd_engine::Batch::synthetic(enrichd_engine::Format::FlowsV1, events);
        chain.run(&mut batch);
        let mut events = batch.events().to_vec();
        for (i, e) in events.iter_mut().take(10).enumerate() {
            e.set_fact(country, enrichd_engine::fact::pack_country("US").unwrap());
            e.set_fact(asn, 15169);
            e.set_fact(score, if i == 0 { 90 } else { 10 });
        }
        let mut shard = Shard::default();
        let totals =
            shard.observe((&facts, 1), &events, 5_000_500, Duration::from_micros(300), Duration::from_micros(90));
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
    fn facts_with_top_values_get_counted_and_labels_read() {
        let facts: Arc<[FactInfo]> = enrichd_engine::fact::table([
            ("c", FactDecl::new("class", FactKind::Label).labels(["a", "b"]).top_values()),
            ("s", FactDecl::new("src_as", FactKind::AsNumber).side(Side::Source)),
            ("d", FactDecl::new("dst_as", FactKind::AsNumber).side(Side::Destination)),
        ])
        .into();
        let mut events = vec![Event::synthetic(); 3];
        for (i, e) in events.iter_mut().enumerate() {
            e.set_fact(facts[0].id, (i % 2) as u32);
            e.set_fact(facts[1].id, 1);
            e.set_fact(facts[2].id, 2);
        }
        let mut shard = Shard::default();
        shard.observe((&facts, 1), &events, 1, Duration::ZERO, Duration::ZERO);
        assert_eq!((shard.fact_values.len(), shard.fact_values[0].counters.len()), (1, 1));
        let mut top = super::super::topn::Summary::new(10);
        shard.fact_values[0].counters[0].1.drain_into(&mut top, |_| {});
        let top: Vec<(u32, u64)> = top.into_sorted_vec().into_iter().map(|(k, c)| (k, c.estimated_count())).collect();
        assert_eq!(top, [(0, 2), (1, 1)]);
        let mut asns = super::super::topn::Summary::new(10);
        shard.asns.drain_into(&mut asns, |_| {});
        assert_eq!(asns.into_sorted_vec()[0].0, 2, "the destination's AS is preferred");
        let org = |f: &str, each: &mut dyn FnMut(&str)| each(f);
        assert_eq!(asn_label("GOOGLE", org).as_deref(), Some("GOOGLE"));
    }

    #[test]
    fn high_risk_list_is_bounded_newest_last() {
        let facts: Arc<[FactInfo]> =
            enrichd_engine::fact::table([("rule", FactDecl::new("score", FactKind::Score))]).into();
        let mut shard = Shard::default();
        let events: Vec<Event> = (0..80u16)
            .map(|p| {
                let mut e = Event::synthetic();
                e.set_fact(facts[0].id, 95);
                e.dst_port = Some(p);
                e
            })
            .collect();
        shard.observe((&facts, 1), &events, 1, Duration::ZERO, Duration::ZERO);
        assert_eq!(shard.high_risk.len(), HIGH_RISK_KEEP);
        assert_eq!(shard.high_risk.back().unwrap().dst_port, Some(79));
    }

    #[test]
    fn threads_get_shards_and_drain_empties_them() {
        let shards = Shards::new(4);
        let facts: Arc<[FactInfo]> = Arc::new([]);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let events = vec![Event::synthetic(); 3];
                    shards.local().observe((&facts, 1), &events, 1000, Duration::ZERO, Duration::ZERO);
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
