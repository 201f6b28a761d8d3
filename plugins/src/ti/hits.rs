//! Hit statistics: per feed and per indicator, hits, first and last hit
//! and distinct source addresses.
//!
//! Decisions, and why:
//!
//! - **Kept across reloads.** The statistics belong to the stage, not to
//!   one generation of its index: the engine hands every generation the
//!   same [`HitStats`] (`BuildContext::carried`). Indicators are keyed by
//!   feed name and indicator, not by index position, so a reload that
//!   keeps an indicator keeps its history.
//! - **No global lock on the hot path.** Per feed everything is atomic
//!   (counter, `fetch_min`/`fetch_max` times, a HyperLogLog whose registers
//!   are `AtomicU8`s updated with `fetch_max`). Per indicator, entries live
//!   in 64 shards chosen by the indicator's hash, each behind its own
//!   mutex: two threads wait for each other only when they record hits on
//!   indicators of the same shard at the same moment. Only matching events
//!   get here (most match nothing).
//! - **Bounded memory.** Distinct sources are HyperLogLog estimates: 1,024
//!   registers per feed (about ±3 %), 64 per indicator (about ±13 %; exact
//!   enough to tell one host from a dozen: small counts use linear
//!   counting). At most [`MAX_TRACKED`] indicators are tracked; hits on
//!   others still count for their feed and are counted as `untracked`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::meta::format_time;
use super::{Indicator, Kind};

/// Most indicators with their own statistics (about 8 MB at most).
pub const MAX_TRACKED: usize = 50_000;
const SHARDS: usize = 64;
const FEED_P: u32 = 10;
const INDICATOR_P: u32 = 6;

/// splitmix64's finalizer: spreads any input over all 64 bits.
#[inline]
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A hash of an event's source address, for the distinct-source sketches.
#[inline]
pub fn source_hash(ip: IpAddr) -> u64 {
    let v = match ip.to_canonical() {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a) ^ (1 << 127),
    };
    mix(mix(v as u64) ^ (v >> 64) as u64)
}

/// A stable hash of a feed name.
pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The register and rank of `hash` in a sketch of 2^p registers.
#[inline]
fn hll_slot(hash: u64, p: u32) -> (usize, u8) {
    let index = (hash >> (64 - p)) as usize;
    let rank = ((hash << p) | (1 << (p - 1))).leading_zeros() as u8 + 1;
    (index, rank)
}

fn hll_estimate(registers: impl Iterator<Item = u8>, m: usize) -> u64 {
    let (mut sum, mut zeros) = (0f64, 0usize);
    for r in registers {
        sum += (-f64::from(r)).exp2();
        zeros += usize::from(r == 0);
    }
    let m_f = m as f64;
    let alpha = match m {
        16 => 0.673,
        32 => 0.697,
        64 => 0.709,
        _ => 0.7213 / (1.0 + 1.079 / m_f),
    };
    let raw = alpha * m_f * m_f / sum;
    if raw <= 2.5 * m_f && zeros > 0 {
        (m_f * (m_f / zeros as f64).ln()).round() as u64
    } else {
        raw.round() as u64
    }
}

/// One feed's counters (all atomic).
pub struct FeedHits {
    pub name: String,
    hits: AtomicU64,
    /// Unix seconds; `i64::MAX` / 0 before the first hit.
    first: AtomicI64,
    last: AtomicI64,
    sources: Box<[AtomicU8]>,
}

impl FeedHits {
    fn new(name: &str) -> Self {
        FeedHits {
            name: name.to_string(),
            hits: AtomicU64::new(0),
            first: AtomicI64::new(i64::MAX),
            last: AtomicI64::new(0),
            sources: (0..1 << FEED_P).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    #[inline]
    pub fn record(&self, now: i64, source: Option<u64>) {
        self.hits.fetch_add(1, Relaxed);
        // Loads first: the common case (same second) writes nothing.
        if self.last.load(Relaxed) < now {
            self.last.fetch_max(now, Relaxed);
        }
        if self.first.load(Relaxed) > now {
            self.first.fetch_min(now, Relaxed);
        }
        if let Some(h) = source {
            let (i, rank) = hll_slot(h, FEED_P);
            if self.sources[i].load(Relaxed) < rank {
                self.sources[i].fetch_max(rank, Relaxed);
            }
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Relaxed)
    }

    pub fn last_hit(&self) -> Option<i64> {
        Some(self.last.load(Relaxed)).filter(|&t| t > 0)
    }

    pub fn report(&self) -> FeedHitsReport {
        let first = self.first.load(Relaxed);
        FeedHitsReport {
            feed: self.name.clone(),
            hits: self.hits(),
            first_hit: (first != i64::MAX).then(|| format_time(first)),
            last_hit: self.last_hit().map(format_time),
            distinct_sources: hll_estimate(self.sources.iter().map(|r| r.load(Relaxed)), 1 << FEED_P),
        }
    }
}

/// A feed's hit statistics as reported.
#[derive(Clone, Debug, Serialize)]
pub struct FeedHitsReport {
    pub feed: String,
    pub hits: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_hit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_hit: Option<String>,
    /// Distinct source addresses that hit the feed (HyperLogLog estimate).
    pub distinct_sources: u64,
}

struct IndicatorHits {
    indicator: Box<str>,
    kind: Kind,
    feed: Arc<str>,
    hits: u64,
    first: i64,
    last: i64,
    sources: [u8; 1 << INDICATOR_P],
}

/// One indicator's statistics as reported.
#[derive(Clone, Debug, Serialize)]
pub struct IndicatorHitsReport {
    pub indicator: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub feed: String,
    pub hits: u64,
    pub first_hit: String,
    pub last_hit: String,
    /// Distinct source addresses (HyperLogLog estimate, ±13 %).
    pub distinct_sources: u64,
}

/// A stage's statistics, shared by all its generations.
pub struct HitStats {
    feeds: Mutex<Vec<Arc<FeedHits>>>,
    shards: Box<[Mutex<FxHashMap<u64, IndicatorHits>>]>,
    tracked: AtomicUsize,
    untracked: AtomicU64,
}

impl Default for HitStats {
    fn default() -> Self {
        HitStats {
            feeds: Mutex::new(Vec::new()),
            shards: (0..SHARDS).map(|_| Mutex::new(FxHashMap::default())).collect(),
            tracked: AtomicUsize::new(0),
            untracked: AtomicU64::new(0),
        }
    }
}

impl HitStats {
    /// The counters of feed `name` (created on first use; build time only).
    pub fn feed(&self, name: &str) -> Arc<FeedHits> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = feeds.iter().find(|f| f.name == name) {
            return f.clone();
        }
        let f = Arc::new(FeedHits::new(name));
        feeds.push(f.clone());
        f
    }

    /// Every feed seen, in order of first use.
    pub fn feeds(&self) -> Vec<Arc<FeedHits>> {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a hit on one indicator of `feed` (whose name hash is
    /// `feed_hash`). Allocates only on an indicator's first hit.
    pub fn record_indicator(
        &self,
        feed: &FeedHits,
        feed_hash: u64,
        kind: Kind,
        indicator: &Indicator<'_>,
        now: i64,
        source: Option<u64>,
    ) {
        let key = match indicator {
            Indicator::Net { ip, len, .. } => {
                let v = match ip {
                    IpAddr::V4(a) => u128::from(u32::from(*a)),
                    IpAddr::V6(a) => u128::from(*a) ^ (1 << 127),
                };
                mix(feed_hash ^ mix(v as u64 ^ u64::from(*len) << 56) ^ mix((v >> 64) as u64))
            }
            Indicator::Domain(name) => mix(feed_hash ^ super::hits::name_hash(name).rotate_left(17)),
        };
        let mut shard = self.shards[(key as usize) % SHARDS].lock().unwrap_or_else(|e| e.into_inner());
        let entry = match shard.get_mut(&key) {
            Some(e) => e,
            None => {
                // Reserve a slot first: the bound holds across shards.
                if self.tracked.fetch_add(1, Relaxed) >= MAX_TRACKED {
                    self.tracked.fetch_sub(1, Relaxed);
                    self.untracked.fetch_add(1, Relaxed);
                    return;
                }
                shard.entry(key).or_insert_with(|| IndicatorHits {
                    indicator: indicator.to_string().into(),
                    kind,
                    feed: feed.name.as_str().into(),
                    hits: 0,
                    first: now,
                    last: now,
                    sources: [0; 1 << INDICATOR_P],
                })
            }
        };
        entry.hits += 1;
        entry.first = entry.first.min(now);
        entry.last = entry.last.max(now);
        if let Some(h) = source {
            let (i, rank) = hll_slot(h, INDICATOR_P);
            entry.sources[i] = entry.sources[i].max(rank);
        }
    }

    /// Hits on indicators beyond [`MAX_TRACKED`].
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Relaxed)
    }

    /// The `top` most hit indicators (of `feed`, when given), most hits
    /// first, then latest hit.
    pub fn top(&self, feed: Option<&str>, top: usize) -> Vec<IndicatorHitsReport> {
        let mut all: Vec<(u64, i64, IndicatorHitsReport)> = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for e in shard.values().filter(|e| feed.is_none_or(|f| *e.feed == *f)) {
                all.push((
                    e.hits,
                    e.last,
                    IndicatorHitsReport {
                        indicator: e.indicator.to_string(),
                        kind: e.kind.name(),
                        feed: e.feed.to_string(),
                        hits: e.hits,
                        first_hit: format_time(e.first),
                        last_hit: format_time(e.last),
                        distinct_sources: hll_estimate(e.sources.iter().copied(), 1 << INDICATOR_P),
                    },
                ));
            }
        }
        all.sort_by(|a, b| (b.0, b.1).cmp(&(a.0, a.1)).then_with(|| a.2.indicator.cmp(&b.2.indicator)));
        all.into_iter().take(top).map(|(.., r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sketches_count_distinct_sources_within_their_error() {
        let feed = FeedHits::new("f");
        for i in 0..10_000u32 {
            feed.record(100, Some(source_hash(IpAddr::from(i.to_be_bytes()))));
            feed.record(100, Some(source_hash(IpAddr::from(i.to_be_bytes()))));
        }
        let r = feed.report();
        assert_eq!(r.hits, 20_000);
        assert!((9_000..=11_000).contains(&r.distinct_sources), "{}", r.distinct_sources);
        let stats = HitStats::default();
        let ind = Indicator::Domain("evil.example");
        for i in 0..3u32 {
            for t in [50, 40, 60] {
                stats.record_indicator(
                    &feed,
                    1,
                    Kind::Domain,
                    &ind,
                    t,
                    Some(source_hash(IpAddr::from(i.to_be_bytes()))),
                );
            }
        }
        let top = stats.top(None, 10);
        assert_eq!(top.len(), 1);
        assert_eq!((top[0].hits, top[0].distinct_sources), (9, 3), "small counts are exact");
        assert_eq!(
            (top[0].first_hit.as_str(), top[0].last_hit.as_str()),
            ("1970-01-01T00:00:40Z", "1970-01-01T00:01:00Z")
        );
        assert!(stats.top(Some("other"), 10).is_empty());
    }
}
