//! The ticker's side: shards poured into windows, and a [`Reading`] of it all.
//!
//! Only the ticker (every second) and readers (`/v1/metrics`, `/metrics`,
//! the stream) take the aggregate's lock; ingest threads never do. A read
//! drains the shards first, so what it reports includes every batch that
//! finished before it.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use enrichd_engine::FactInfo;

use super::distinct::Distinct;
use super::feed::{asn_label, FactCounts, HighRisk, Shard, HIGH_RISK_KEEP, RISK_BOUNDS};
use super::latency::{Buckets, LatencyWindow, Quantiles};
use super::topn::{Counter, Entry, Seen, WindowedTop};
use super::window::{SecondRing, Span, Tally, View};

/// Entries per top list.
pub(crate) const TOP_N: usize = 10;
/// AS labels remembered (cleared when full; refilled as AS numbers recur).
const LABELS_KEEP: usize = 10_000;
/// Points of the 5-minute series, and their width: the lag slots are the
/// same 5-second, wall-clock-aligned buckets.
const SERIES_POINTS: u64 = 60;
const SOURCES_BUCKET_S: u64 = 5;
const _: () = assert!(SOURCES_BUCKET_S == super::latency::SLOT_S);

pub(crate) struct Aggregate {
    started_ms: u64,
    /// Since start.
    totals: Tally,
    events_with_threats: u64,
    risk_buckets: [u64; RISK_BOUNDS.len() + 1],
    processing_buckets: Buckets,
    lag_buckets: Buckets,
    ring: SecondRing,
    lag: LatencyWindow,
    processing: LatencyWindow,
    sources_v4: WindowedTop<u32>,
    sources_v6: WindowedTop<u128>,
    countries: WindowedTop<[u8; 2]>,
    asns: WindowedTop<u32>,
    indicators: WindowedTop<String>,
    asn_labels: HashMap<u32, String>,
    /// Values of facts declared with `top_values`, by fact index.
    fact_values: HashMap<u16, WindowedTop<u32>>,
    /// The newest fact table counts arrived under, and its chain
    /// generation: the top lists are named and rendered with it alone, and
    /// it only ever moves to a newer generation (never back to an older
    /// table some shard still carries).
    facts: Option<Arc<[FactInfo]>>,
    facts_generation: u64,
    /// The shards' `top_values` counts drained this tick, settled once all
    /// are in ([`Aggregate::settle_facts`]): which table is newest is known
    /// only then.
    pending_facts: Vec<FactCounts>,
    distinct: Distinct,
    /// The distinct-source estimate at the end of each 5-second bucket in
    /// which it changed, as (bucket number = second / 5, estimate), oldest
    /// first; the first entry may be older than 5 minutes (it is the value
    /// carried into the window).
    sources_history: VecDeque<(u64, u64)>,
    /// Sources were counted since the estimate was last taken.
    sources_changed: bool,
    /// The request counter's value at the last advance.
    requests_seen: u64,
    /// Newest last.
    high_risk: VecDeque<HighRisk>,
    /// Swapped with each shard in turn (see [`super::feed::Shards::drain`]).
    pub spare: Shard,
}

/// Everything the endpoints report, computed at one instant.
pub(crate) struct Reading {
    pub now_ms: u64,
    pub uptime_s: f64,
    pub totals: Tally,
    pub events_with_threats: u64,
    pub risk_buckets: Vec<(f64, u64)>,
    pub processing_buckets: Buckets,
    pub lag_buckets: Buckets,
    pub eps_10s: f64,
    pub eps_1m: f64,
    pub bpm_1m: f64,
    pub lag: Quantiles,
    pub processing: Quantiles,
    /// 5-second buckets over 5 minutes, 15-second buckets over 15 minutes.
    pub series_5s: Vec<Span>,
    pub series_15s: Vec<Span>,
    /// Per bucket of `series_5s`: the distinct-source estimate at its end
    /// (`None` before start) and the queue lag p95 of its batches in ms
    /// (`None` without batches).
    pub sources_5s: Vec<Option<u64>>,
    pub lag_p95_5s: Vec<Option<f64>>,
    pub top_5m: Tops,
    pub top_15m: Tops,
    pub unique_sources: u64,
    pub sources_active: u64,
    /// Newest first.
    pub high_risk: Vec<HighRisk>,
}

#[derive(Default)]
pub(crate) struct Tops {
    pub sources: Vec<Entry<IpAddr>>,
    pub countries: Vec<Entry<[u8; 2]>>,
    pub asns: Vec<(Entry<u32>, Option<String>)>,
    pub indicators: Vec<Entry<String>>,
    /// Top values of facts declared with `top_values`: by fact name, each
    /// value rendered as text.
    pub facts: Vec<(String, Vec<Entry<String>>)>,
}

fn drain_counter<K: Eq + std::hash::Hash + Clone>(
    counter: &mut Counter<K>,
    top: &mut WindowedTop<K>,
    minute: u64,
    distinct: Option<&mut Distinct>,
) {
    match distinct {
        Some(d) => counter.drain_into(top.minute(minute), |seen| match seen {
            Seen::Key(k) => d.insert(minute, k),
            Seen::Sketch(s) => d.union(minute, s),
        }),
        None => counter.drain_into(top.minute(minute), |_| {}),
    }
}

impl Aggregate {
    pub(crate) fn new(started_ms: u64) -> Self {
        Aggregate {
            started_ms,
            totals: Tally::default(),
            events_with_threats: 0,
            risk_buckets: Default::default(),
            processing_buckets: Buckets::default(),
            lag_buckets: Buckets::default(),
            ring: SecondRing::new(started_ms / 1000),
            lag: LatencyWindow::default(),
            processing: LatencyWindow::default(),
            sources_v4: WindowedTop::default(),
            sources_v6: WindowedTop::default(),
            countries: WindowedTop::default(),
            asns: WindowedTop::default(),
            indicators: WindowedTop::default(),
            asn_labels: HashMap::new(),
            fact_values: HashMap::new(),
            facts: None,
            facts_generation: 0,
            pending_facts: Vec::new(),
            distinct: Distinct::default(),
            sources_history: VecDeque::new(),
            sources_changed: false,
            requests_seen: 0,
            high_risk: VecDeque::new(),
            spare: Shard::default(),
        }
    }

    /// Takes everything out of `shard` (drained at `now_ms`), leaving it empty.
    pub(crate) fn absorb(&mut self, shard: &mut Shard, now_ms: u64) {
        let now_s = now_ms / 1000;
        let minute = now_s / 60;
        for (second, tally) in shard.seconds.drain(..) {
            self.ring.add(second, &tally);
            self.totals.add(&tally);
        }
        self.events_with_threats += std::mem::take(&mut shard.events_with_threats);
        for (total, n) in self.risk_buckets.iter_mut().zip(std::mem::take(&mut shard.risk_buckets)) {
            *total += n;
        }
        self.processing_buckets.add(&std::mem::take(&mut shard.processing_buckets));
        self.lag_buckets.add(&std::mem::take(&mut shard.lag_buckets));
        if let Some(h) = shard.lag.as_mut().filter(|h| !h.is_empty()) {
            self.lag.add(now_s, h);
            h.reset();
        }
        if let Some(h) = shard.processing.as_mut().filter(|h| !h.is_empty()) {
            self.processing.add(now_s, h);
            h.reset();
        }
        if !shard.sources_v4.is_empty() {
            drain_counter(&mut shard.sources_v4, &mut self.sources_v4, minute, Some(&mut self.distinct));
            self.sources_changed = true;
        }
        if !shard.sources_v6.is_empty() {
            drain_counter(&mut shard.sources_v6, &mut self.sources_v6, minute, Some(&mut self.distinct));
            self.sources_changed = true;
        }
        if !shard.countries.is_empty() {
            shard.countries.drain_into(self.countries.minute(minute));
        }
        if !shard.asns.is_empty() {
            drain_counter(&mut shard.asns, &mut self.asns, minute, None);
        }
        if !shard.indicators.is_empty() {
            drain_counter(&mut shard.indicators, &mut self.indicators, minute, None);
        }
        self.pending_facts.append(&mut shard.fact_values);
        for (asn, fragment, reader) in shard.asn_labels.drain(..) {
            if !self.asn_labels.contains_key(&asn) {
                if let Some(label) = asn_label(&fragment, reader) {
                    if self.asn_labels.len() >= LABELS_KEEP {
                        self.asn_labels.clear();
                    }
                    self.asn_labels.insert(asn, label);
                }
            }
        }
        if !shard.high_risk.is_empty() {
            self.high_risk.extend(shard.high_risk.drain(..));
            // Shards interleave in time: keep the list ordered, newest last.
            self.high_risk.make_contiguous().sort_by_key(|h| h.ts_ms);
            while self.high_risk.len() > HIGH_RISK_KEEP {
                self.high_risk.pop_front();
            }
        }
    }

    /// Pours the `top_values` counts drained from every shard into the top
    /// lists, after moving to the newest fact table among them. Counts made
    /// under another table are kept only for facts that table declares the
    /// same way (same labels); the others, and the lists of a fact whose
    /// declaration changed, are dropped: a value counted under old labels
    /// read with new ones would be a wrong label. Before, the table was the
    /// last one drained: shards carry the table of their last batch (an
    /// idle one keeps the old table), so the lists flickered between old
    /// and new labels from one tick to the next, and old and new counts
    /// were added under one label.
    pub(crate) fn settle_facts(&mut self, now_ms: u64) {
        let minute = now_ms / 1000 / 60;
        let mut pending = std::mem::take(&mut self.pending_facts);
        if let Some(newest) = pending.iter().max_by_key(|c| c.generation) {
            if self.facts.is_none() || newest.generation > self.facts_generation {
                let table = newest.table.clone();
                match &self.facts {
                    Some(old) => self.fact_values.retain(|index, _| same_rendering(old, &table, *index)),
                    None => self.fact_values.clear(),
                }
                self.facts = Some(table);
                self.facts_generation = newest.generation;
            }
        }
        let Some(current) = self.facts.clone() else { return };
        for counts in &mut pending {
            let same_table = counts.generation == self.facts_generation && Arc::ptr_eq(&counts.table, &current);
            for (index, counter) in counts.counters.iter_mut().filter(|(_, c)| !c.is_empty()) {
                if same_table || same_rendering(&counts.table, &current, *index) {
                    drain_counter(counter, self.fact_values.entry(*index).or_default(), minute, None);
                }
            }
        }
    }

    /// Rolls the windows to `now_ms` (whether or not anything arrived),
    /// files the requests answered since the last call (`requests_total`:
    /// the request counter) under the current second and notes the
    /// distinct-source estimate if sources were counted.
    pub(crate) fn advance(&mut self, now_ms: u64, requests_total: u64) {
        let now_s = now_ms / 1000;
        self.ring.advance(now_s);
        let requests = requests_total.saturating_sub(self.requests_seen);
        if requests > 0 {
            self.requests_seen = requests_total;
            let tally = Tally { requests, ..Tally::default() };
            self.ring.add(now_s, &tally);
            self.totals.add(&tally);
        }
        if std::mem::take(&mut self.sources_changed) {
            let (bucket, estimate) = (now_s / SOURCES_BUCKET_S, self.distinct.total());
            match self.sources_history.back_mut() {
                Some(last) if last.0 == bucket => last.1 = estimate,
                _ => self.sources_history.push_back((bucket, estimate)),
            }
            // Keep the newest entry at or before the window's first bucket:
            // its value carries into the window.
            let first = (bucket + 1).saturating_sub(SERIES_POINTS);
            while self.sources_history.get(1).is_some_and(|(b, _)| *b <= first) {
                self.sources_history.pop_front();
            }
        }
    }

    /// The distinct-source estimate at the end of each of `series`' 5-second
    /// buckets: the last one noted at or before it, 0 before any.
    fn sources_series(&self, series: &[Span]) -> Vec<Option<u64>> {
        series
            .iter()
            .map(|span| {
                let bucket = span.start_ms / 1000 / SOURCES_BUCKET_S;
                (span.covered_s > 0.0).then(|| {
                    self.sources_history.iter().take_while(|(b, _)| *b <= bucket).last().map_or(0, |(_, n)| *n)
                })
            })
            .collect()
    }

    fn tops(&self, now_minute: u64, minutes: u64) -> Tops {
        let v4 = self.sources_v4.top(now_minute, minutes, TOP_N).into_iter().map(|e| Entry {
            key: IpAddr::from(Ipv4Addr::from(e.key)),
            count: e.count,
            error: e.error,
        });
        let v6 = self.sources_v6.top(now_minute, minutes, TOP_N).into_iter().map(|e| Entry {
            key: IpAddr::from(Ipv6Addr::from(e.key)),
            count: e.count,
            error: e.error,
        });
        let mut sources: Vec<Entry<IpAddr>> = v4.chain(v6).collect();
        sources.sort_by_key(|e| std::cmp::Reverse(e.count));
        sources.truncate(TOP_N);
        Tops {
            sources,
            countries: self.countries.top(now_minute, minutes, TOP_N),
            asns: self
                .asns
                .top(now_minute, minutes, TOP_N)
                .into_iter()
                .map(|e| {
                    let label = self.asn_labels.get(&e.key).cloned();
                    (e, label)
                })
                .collect(),
            indicators: self.indicators.top(now_minute, minutes, TOP_N),
            facts: self.fact_tops(now_minute, minutes),
        }
    }

    /// One list per fact declared with `top_values` that has counts, named
    /// by the fact (qualified by its stage when two stages share a name).
    fn fact_tops(&self, now_minute: u64, minutes: u64) -> Vec<(String, Vec<Entry<String>>)> {
        let Some(table) = &self.facts else { return Vec::new() };
        let mut out: Vec<(String, Vec<Entry<String>>)> = Vec::new();
        for info in table.iter().filter(|f| f.decl.top_values) {
            let Some(top) = self.fact_values.get(&(info.id.index() as u16)) else { continue };
            let list: Vec<Entry<String>> = top
                .top(now_minute, minutes, TOP_N)
                .into_iter()
                .map(|e| Entry { key: info.render_key(e.key), count: e.count, error: e.error })
                .collect();
            if list.is_empty() {
                continue;
            }
            let mut name = info.decl.name.clone();
            if out.iter().any(|(n, _)| *n == name) {
                name = format!("{}.{}", info.stage, name);
            }
            out.push((name, list));
        }
        out
    }

    pub(crate) fn read(&self, now_ms: u64) -> Reading {
        let view = View { ring: &self.ring, now_ms, started_ms: self.started_ms };
        let now_s = now_ms / 1000;
        let minute = view.last(60);
        let ten = view.last(10);
        let series_5s = view.series(SOURCES_BUCKET_S, SERIES_POINTS);
        let sources_5s = self.sources_series(&series_5s);
        let risk_buckets =
            RISK_BOUNDS.iter().map(|b| f64::from(*b)).chain([f64::INFINITY]).zip(self.risk_buckets).collect();
        Reading {
            now_ms,
            uptime_s: now_ms.saturating_sub(self.started_ms) as f64 / 1000.0,
            totals: self.totals,
            events_with_threats: self.events_with_threats,
            risk_buckets,
            processing_buckets: self.processing_buckets.clone(),
            lag_buckets: self.lag_buckets.clone(),
            eps_10s: ten.per_second(ten.tally.events),
            eps_1m: minute.per_second(minute.tally.events),
            bpm_1m: minute.per_second(minute.tally.batches) * 60.0,
            lag: self.lag.quantiles(now_s),
            processing: self.processing.quantiles(now_s),
            series_5s,
            series_15s: view.series(15, SERIES_POINTS),
            sources_5s,
            lag_p95_5s: self.lag.p95_per_slot(now_s, SERIES_POINTS),
            top_5m: self.tops(now_s / 60, 5),
            top_15m: self.tops(now_s / 60, 15),
            unique_sources: self.distinct.total(),
            sources_active: self.distinct.active(now_s / 60),
            // AS labels may arrive after the event: looked up when read.
            high_risk: self
                .high_risk
                .iter()
                .rev()
                .map(|h| HighRisk { asn_label: h.asn.and_then(|a| self.asn_labels.get(&a).cloned()), ..h.clone() })
                .collect(),
        }
    }
}

/// Whether fact `index` is the same fact, with values that read the same,
/// in both tables (a value counted under `a` may be shown with `b`).
fn same_rendering(a: &[FactInfo], b: &[FactInfo], index: u16) -> bool {
    match (a.get(usize::from(index)), b.get(usize::from(index))) {
        (Some(a), Some(b)) => {
            a.stage == b.stage
                && a.decl.name == b.decl.name
                && a.decl.kind == b.decl.kind
                && a.decl.labels == b.decl.labels
                && b.decl.top_values
        }
        _ => false,
    }
}
