//! Top-N with bounded memory: heavy hitters per minute, merged per window.
//!
//! Two layers. Per ingest thread and per tick (one second), a [`Counter`]
//! counts keys exactly in a small hash map: one map increment per event.
//! Past [`EXACT_CAP`] distinct keys in one tick it spills into a
//! space-saving summary, so a flood of distinct addresses costs bounded
//! memory. The ticker pours counters into one summary per wall-clock
//! minute; the 5- and 15-minute lists merge the last 5 / 15 minutes.
//!
//! Summaries are Space-Saving summaries ([`super::summary`]) of
//! [`CAPACITY`] keys. Guarantees, per summary of a stream of N counts,
//! merged ones included: a reported count is never below the true count,
//! and `count - error` never above it (the error is reported with each
//! entry); a key whose true count exceeds N / CAPACITY is reported.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use super::distinct::{sketch, Sketch};

/// Keys monitored per summary (memory: a few kB per summary).
pub(crate) const CAPACITY: usize = 100;
/// Distinct keys counted exactly per thread and tick before spilling.
pub(crate) const EXACT_CAP: usize = 16_384;
/// Minutes of history kept.
pub(crate) const MINUTES: u64 = 15;

pub(crate) use super::summary::Summary;

type Fast = foldhash::fast::RandomState;

/// Exact counts for one tick, spilling into a summary when too many keys.
/// Spilled keys also go into a cardinality sketch, so distinct counts stay
/// right when the exact map cannot hold them all.
pub(crate) struct Counter<K: Eq + Hash> {
    /// u32 counts: one tick cannot reach 4 billion events, and small
    /// entries keep the map in cache (it is probed once per event).
    exact: HashMap<K, u32, Fast>,
    spill: Option<(Summary<K>, Box<Sketch>)>,
}

impl<K: Eq + Hash> Default for Counter<K> {
    fn default() -> Self {
        Counter { exact: HashMap::default(), spill: None }
    }
}

impl<K: Eq + Hash + Copy> Counter<K> {
    /// [`Counter::add`] for keys that are copied (addresses, numbers): one
    /// probe of the map per event, not two (it is most of the metrics
    /// fold's time when every event brings a new source).
    pub(crate) fn add_copy(&mut self, key: K, n: u32) -> bool {
        if self.exact.len() >= EXACT_CAP && !self.exact.contains_key(&key) {
            self.spill();
        }
        match self.exact.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut kept) => {
                *kept.get_mut() = kept.get().saturating_add(n);
                false
            }
            std::collections::hash_map::Entry::Vacant(new) => {
                new.insert(n);
                true
            }
        }
    }
}

impl<K: Eq + Hash + Clone> Counter<K> {
    /// Counts `key` `n` times; true when the key is new in this tick.
    pub(crate) fn add<Q>(&mut self, key: &Q, n: u32) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(count) = self.exact.get_mut(key) {
            *count = count.saturating_add(n);
            return false;
        }
        if self.exact.len() >= EXACT_CAP {
            self.spill();
        }
        self.exact.insert(key.to_owned(), n);
        true
    }

    /// Empties the exact map into the spill summary.
    fn spill(&mut self) {
        let (summary, seen) = self.spill.get_or_insert_with(|| (Summary::new(CAPACITY), Box::new(sketch())));
        for (k, c) in self.exact.drain() {
            seen.insert(&k);
            summary.insert(k, u64::from(c));
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.spill.is_none()
    }

    /// Moves everything counted into `into`, leaving this empty (its map
    /// keeps its capacity for the next tick). `distinct` learns every key.
    pub(crate) fn drain_into(&mut self, into: &mut Summary<K>, mut distinct: impl FnMut(Seen<'_, K>)) {
        for (k, c) in self.exact.drain() {
            distinct(Seen::Key(&k));
            into.insert(k, u64::from(c));
        }
        if let Some((summary, seen)) = self.spill.take() {
            distinct(Seen::Sketch(&seen));
            into.merge(&summary);
        }
    }
}

/// Counts of two-letter codes (countries) in a flat table: an index, no
/// hashing. Codes outside `A`-`Z` go to an ordinary [`Counter`].
pub(crate) struct CodeCounter {
    counts: Box<[u32; 26 * 26]>,
    used: bool,
    other: Counter<[u8; 2]>,
}

impl Default for CodeCounter {
    fn default() -> Self {
        CodeCounter { counts: Box::new([0; 26 * 26]), used: false, other: Counter::default() }
    }
}

impl CodeCounter {
    pub(crate) fn add(&mut self, code: [u8; 2]) {
        match code {
            [a @ b'A'..=b'Z', b @ b'A'..=b'Z'] => {
                let i = usize::from(a - b'A') * 26 + usize::from(b - b'A');
                self.counts[i] = self.counts[i].saturating_add(1);
                self.used = true;
            }
            _ => {
                self.other.add(&code, 1);
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        !self.used && self.other.is_empty()
    }

    pub(crate) fn drain_into(&mut self, into: &mut Summary<[u8; 2]>) {
        if std::mem::take(&mut self.used) {
            for (i, n) in self.counts.iter_mut().enumerate() {
                if *n > 0 {
                    into.insert([b'A' + (i / 26) as u8, b'A' + (i % 26) as u8], u64::from(std::mem::take(n)));
                }
            }
        }
        self.other.drain_into(into, |_| {});
    }
}

/// Keys handed to a cardinality sketch when a counter is drained.
pub(crate) enum Seen<'a, K> {
    Key(&'a K),
    Sketch(&'a Sketch),
}

/// One summary per minute over the last [`MINUTES`] minutes.
pub(crate) struct WindowedTop<K: Eq + Hash> {
    minutes: VecDeque<(u64, Summary<K>)>,
}

impl<K: Eq + Hash> Default for WindowedTop<K> {
    fn default() -> Self {
        WindowedTop { minutes: VecDeque::new() }
    }
}

/// One line of a top list.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry<K> {
    pub key: K,
    pub count: u64,
    /// Upper bound of the over-count: the true count is in `count - error ..= count`.
    pub error: u64,
}

impl<K: Eq + Hash + Clone> WindowedTop<K> {
    /// The summary of `minute`, created (and old minutes dropped) as needed.
    pub(crate) fn minute(&mut self, minute: u64) -> &mut Summary<K> {
        while self.minutes.front().is_some_and(|(m, _)| m + MINUTES <= minute) {
            self.minutes.pop_front();
        }
        match self.minutes.iter().position(|(m, _)| *m == minute) {
            Some(i) => &mut self.minutes[i].1,
            None => {
                // Minutes arrive in order; a late one (clock stepped back)
                // joins the newest rather than reordering the window.
                if self.minutes.back().is_none_or(|(m, _)| *m < minute) {
                    self.minutes.push_back((minute, Summary::new(CAPACITY)));
                }
                &mut self.minutes.back_mut().expect("just pushed").1
            }
        }
    }

    /// The `n` heaviest keys of the last `minutes` minutes as of `now_minute`
    /// (the current, partial minute included), heaviest first.
    pub(crate) fn top(&self, now_minute: u64, minutes: u64, n: usize) -> Vec<Entry<K>> {
        let mut merged = Summary::new(CAPACITY);
        for (m, summary) in &self.minutes {
            if *m <= now_minute && now_minute - m < minutes {
                merged.merge(summary);
            }
        }
        merged
            .into_sorted_vec()
            .into_iter()
            .take(n)
            .map(|(key, c)| Entry { key, count: c.estimated_count(), error: c.associated_error() })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic skewed stream: key i appears with weight ~ 1/(i+1).
    fn zipf_stream(len: usize, keys: u64, seed: u64) -> Vec<u64> {
        let mut x = seed;
        let harmonic: f64 = (1..=keys).map(|i| 1.0 / i as f64).sum();
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let mut u = (x >> 11) as f64 / (1u64 << 53) as f64 * harmonic;
                let mut k = 0;
                while k + 1 < keys {
                    u -= 1.0 / (k + 1) as f64;
                    if u <= 0.0 {
                        break;
                    }
                    k += 1;
                }
                k
            })
            .collect()
    }

    #[test]
    fn space_saving_bounds_hold_and_heavy_keys_are_kept() {
        let stream = zipf_stream(200_000, 20_000, 7);
        let mut truth: HashMap<u64, u64> = HashMap::new();
        let mut counter: Counter<u64> = Counter::default();
        for k in &stream {
            *truth.entry(*k).or_default() += 1;
            counter.add(k, 1);
        }
        assert!(counter.spill.is_some(), "the stream has more distinct keys than EXACT_CAP");
        let mut top: WindowedTop<u64> = WindowedTop::default();
        let mut distinct = crate::metrics::distinct::Distinct::default();
        counter.drain_into(top.minute(100), |seen| match seen {
            Seen::Key(k) => distinct.insert(100, k),
            Seen::Sketch(s) => distinct.union(100, s),
        });
        assert!(counter.is_empty());
        let d = distinct.total() as f64 / truth.len() as f64;
        assert!((d - 1.0).abs() < 0.03, "spilled keys still count as distinct: {d}");
        let list = top.top(100, 5, CAPACITY);
        let n = stream.len() as u64;
        for e in &list {
            let t = truth[&e.key];
            assert!(e.count >= t && e.count - e.error <= t, "{e:?} true {t}");
        }
        let reported: Vec<u64> = list.iter().map(|e| e.key).collect();
        for (k, t) in &truth {
            if *t > n / CAPACITY as u64 {
                assert!(reported.contains(k), "heavy key {k} ({t} > N/k) missing");
            }
        }
        // The heaviest is the heaviest.
        assert_eq!(list[0].key, 0);
    }

    #[test]
    fn windows_merge_minutes_and_forget_old_ones() {
        let mut top: WindowedTop<&str> = WindowedTop::default();
        top.minute(10).insert("old", 50);
        top.minute(14).insert("a", 5);
        top.minute(15).insert("a", 5);
        top.minute(15).insert("b", 7);
        let five = top.top(15, 5, 10);
        assert_eq!(five[0], Entry { key: "a", count: 10, error: 0 });
        assert_eq!(five[1].key, "b");
        assert!(five.iter().all(|e| e.key != "old"), "minute 10 is outside 11..=15");
        assert_eq!(top.top(15, 15, 1)[0].key, "old");
        // 15 minutes on, minute 10 is dropped from memory altogether.
        top.minute(25);
        assert!(top.top(25, 15, 10).iter().all(|e| e.key != "old"));
        assert!(top.top(40, 15, 10).is_empty(), "a window with no traffic is empty");
    }

    #[test]
    fn code_counter_counts_letters_in_a_table_and_the_rest_aside() {
        let mut c = CodeCounter::default();
        assert!(c.is_empty());
        for code in [*b"US", *b"US", *b"ZZ", *b"AA", *b"1x"] {
            c.add(code);
        }
        let mut s = Summary::new(CAPACITY);
        c.drain_into(&mut s);
        assert!(c.is_empty());
        let mut got: Vec<([u8; 2], u64)> =
            s.into_sorted_vec().into_iter().map(|(k, e)| (k, e.estimated_count())).collect();
        got.sort();
        assert_eq!(got, [(*b"1x", 1), (*b"AA", 1), (*b"US", 2), (*b"ZZ", 1)]);
        let mut again = Summary::new(CAPACITY);
        c.drain_into(&mut again);
        assert_eq!(again.count(), 0, "drained means empty");
    }

    #[test]
    fn counter_borrows_for_lookups() {
        let mut c: Counter<String> = Counter::default();
        assert!(c.add("45.149.3.0/24", 1));
        assert!(!c.add("45.149.3.0/24", 2));
        let mut s = Summary::new(CAPACITY);
        c.drain_into(&mut s, |_| {});
        let v = s.into_sorted_vec();
        assert_eq!(v[0].0, "45.149.3.0/24");
        assert_eq!(v[0].1.estimated_count(), 3);
    }
}
