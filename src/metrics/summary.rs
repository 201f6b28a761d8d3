//! A Space-Saving summary (Metwally et al. 2005) that takes counts in
//! bulk: the heavy hitters of a stream in bounded memory.
//!
//! Why not the `topk` crate's Filtered Space-Saving, used before: it keeps
//! exactly `k` keys, so each new key of a full summary evicts the least one
//! through a binary heap indexed by a map, ~45 ns a key. Under traffic from
//! many addresses (a scan, spoofed sources) every event brings a new key,
//! and that insert was the largest cost of folding a batch into the live
//! metrics. Here new keys are only added, to a small map of up to
//! [`SLACK`] times `k` keys, and every so often the map is cut back to its
//! `k` heaviest in one linear pass (`select_nth_unstable`): per key, one
//! probe of a map that stays in cache.
//!
//! What it guarantees, for any mix of [`Summary::insert`] and
//! [`Summary::merge`] over a stream of `N` counts (each shown where it is
//! kept in the code):
//! 1. a reported count is never below the key's true count;
//! 2. `count - error` is never above it;
//! 3. a key whose true count exceeds `N / k` is reported.
//!
//! `floor` bounds the true count of every key not kept (1 and 2 for the
//! keys that enter later). It only rises when keys are cut, to the largest
//! count cut; as the kept counts never sum above `N` once cut back (a cut
//! removes at least the floor a new key was given), `k` kept keys at or
//! above the floor make `floor <= N / k`, which is 3.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::Hash;

type Fast = foldhash::fast::RandomState;

/// Keys held between cuts, as a multiple of `k`: more slack cuts less
/// often and raises the floor less (a cut of only new single keys raises
/// it by one), at a larger map.
const SLACK: usize = 8;

/// A kept key's estimate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counted {
    count: u64,
    error: u64,
}

impl Counted {
    /// Never below the true count.
    pub(crate) fn estimated_count(&self) -> u64 {
        self.count
    }

    /// The true count is in `estimated_count - error ..= estimated_count`.
    pub(crate) fn associated_error(&self) -> u64 {
        self.error
    }
}

/// The heavy hitters of a stream: at most `k` keys once cut back.
#[derive(Clone)]
pub(crate) struct Summary<K> {
    k: usize,
    keys: HashMap<K, Counted, Fast>,
    /// Upper bound of the true count of every key not in `keys`.
    floor: u64,
    /// `N`: every count added, merged summaries' included.
    total: u64,
}

impl<K: Eq + Hash> Summary<K> {
    pub(crate) fn new(k: usize) -> Self {
        let k = k.max(1);
        Summary { k, keys: HashMap::with_capacity_and_hasher(k * SLACK + 1, Fast::default()), floor: 0, total: 0 }
    }

    /// Counts `key` `n` more times.
    pub(crate) fn insert(&mut self, key: K, n: u64) {
        self.total += n;
        match self.keys.entry(key) {
            Entry::Occupied(mut kept) => kept.get_mut().count += n,
            // Its true count so far is at most the floor (1); at least `n`
            // of the new count is exact (2).
            Entry::Vacant(new) => {
                new.insert(Counted { count: self.floor + n, error: self.floor });
            }
        }
        if self.keys.len() > self.k * SLACK {
            self.cut();
        }
    }

    /// Every count that went in (`N`).
    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    /// Adds `other` as if its stream had been inserted here.
    pub(crate) fn merge(&mut self, other: &Summary<K>)
    where
        K: Clone,
    {
        self.total += other.total;
        for (key, mine) in self.keys.iter_mut() {
            // Not kept there: at most its floor there (1), maybe none (2).
            let theirs = other.keys.get(key).copied().unwrap_or(Counted { count: other.floor, error: other.floor });
            mine.count += theirs.count;
            mine.error += theirs.error;
        }
        for (key, theirs) in &other.keys {
            if let Entry::Vacant(new) = self.keys.entry(key.clone()) {
                new.insert(Counted { count: theirs.count + self.floor, error: theirs.error + self.floor });
            }
        }
        // A key kept on neither side: at most both floors.
        self.floor += other.floor;
        self.cut();
    }

    /// Keeps the `k` heaviest keys; the floor rises to the heaviest cut.
    fn cut(&mut self) {
        if self.keys.len() <= self.k {
            return;
        }
        let mut all: Vec<(K, Counted)> = self.keys.drain().collect();
        all.select_nth_unstable_by(self.k, |a, b| b.1.count.cmp(&a.1.count));
        for (_, cut) in all.drain(self.k..) {
            self.floor = self.floor.max(cut.count);
        }
        self.keys.extend(all);
    }

    /// The kept keys, heaviest first (cut back to `k` first).
    pub(crate) fn into_sorted_vec(mut self) -> Vec<(K, Counted)> {
        self.cut();
        let mut all: Vec<(K, Counted)> = self.keys.into_iter().collect();
        all.sort_unstable_by_key(|(_, c)| std::cmp::Reverse(c.count));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic skewed stream: a few heavy keys among many light ones.
    fn stream(len: usize, seed: u64) -> Vec<u64> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                match x >> 60 {
                    0..=2 => (x >> 40) % 8,         // 3/16 of the stream on 8 keys
                    _ => 1000 + (x >> 20) % 50_000, // the rest spread out
                }
            })
            .collect()
    }

    fn check(mut summary: Summary<u64>, truth: &HashMap<u64, u64>, k: usize) {
        summary.cut();
        let n: u64 = truth.values().sum();
        assert_eq!(summary.count(), n);
        let floor = summary.floor;
        assert!(floor <= n / k as u64, "floor {floor} over N/k");
        let list = summary.into_sorted_vec();
        assert!(list.len() <= k);
        for (key, c) in &list {
            let t = truth.get(key).copied().unwrap_or(0);
            assert!(c.count >= t && c.count - c.error <= t, "{key}: {c:?}, true {t}");
        }
        for (key, t) in truth {
            if *t > n / k as u64 {
                assert!(list.iter().any(|(k, _)| k == key), "heavy {key} ({t}) missing");
            } else if !list.iter().any(|(k, _)| k == key) {
                assert!(*t <= floor, "{key} ({t}) above the floor {floor} but not kept");
            }
        }
    }

    #[test]
    fn bounds_hold_for_inserts() {
        let s = stream(300_000, 3);
        let mut truth: HashMap<u64, u64> = HashMap::new();
        let mut summary = Summary::new(20);
        for key in &s {
            *truth.entry(*key).or_default() += 1;
            summary.insert(*key, 1);
        }
        check(summary, &truth, 20);
    }

    #[test]
    fn bounds_hold_for_merges_of_full_and_partial_summaries() {
        let mut truth: HashMap<u64, u64> = HashMap::new();
        let mut merged = Summary::new(20);
        for (part, len) in [(1u64, 100_000), (2, 50), (3, 80_000), (4, 7)] {
            let mut summary = Summary::new(20);
            for key in stream(len, part) {
                *truth.entry(key).or_default() += 1;
                summary.insert(key, 1);
            }
            // Merging in either direction gives the same bounds.
            if part % 2 == 0 {
                summary.merge(&merged);
                merged = summary;
            } else {
                merged.merge(&summary);
            }
        }
        check(merged, &truth, 20);
    }

    #[test]
    fn weighted_inserts_and_exact_small_streams() {
        let mut summary = Summary::new(3);
        for (key, n) in [("a", 5), ("b", 2), ("a", 1), ("c", 9)] {
            summary.insert(key, n);
        }
        let list: Vec<(&str, u64, u64)> = summary
            .into_sorted_vec()
            .into_iter()
            .map(|(k, c)| (k, c.estimated_count(), c.associated_error()))
            .collect();
        assert_eq!(list, [("c", 9, 0), ("a", 6, 0), ("b", 2, 0)], "under k keys every count is exact");
    }

    #[test]
    fn a_flood_of_single_keys_keeps_a_low_floor_and_a_heavy_key() {
        let mut summary = Summary::new(100);
        let mut n = 0;
        for i in 0..1_000_000u64 {
            summary.insert(i + 10, 1);
            if i % 50 == 0 {
                summary.insert(1, 1);
                n += 1;
            }
        }
        summary.cut();
        let floor = summary.floor;
        let list = summary.into_sorted_vec();
        assert_eq!(list[0].0, 1, "the key in 2 % of the stream leads");
        assert!(list[0].1.count >= n && list[0].1.count - list[0].1.error <= n);
        assert!(floor <= 1_020_000 / 100, "floor {floor}");
    }
}
