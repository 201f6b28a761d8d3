//! The second-level record cache: answers decoded once per database, for
//! every thread.
//!
//! Why: each thread's record table (see [`super::cache`]) is small enough
//! to stay near the CPU, so traffic from many networks (a scan, a flood of
//! spoofed sources, a sensor on an Internet edge) keeps missing it. On
//! GeoLite2-City, uniformly random IPv4 addresses miss a 32,768-slot table
//! about one lookup in five, and a miss decodes a cold record: ~1 µs, half
//! of the geoip stage's time. The database has a bounded number of records
//! (429,000 in GeoLite2-City 2018), so their answers can be kept: a thread
//! that misses its own table finds the answer here, already encoded, and
//! takes a copy of its own (the copy keeps reference counts on the thread
//! that uses them, as in the first level).
//!
//! Bounded by bytes (`record_cache_mb`): once full, new answers are no
//! longer kept (no eviction; the first answers a database is asked for are
//! the ones traffic keeps asking for). It lives and dies with the database,
//! so a reload starts it empty. Sharded locks, each taken only on a
//! first-level miss, and for a read; a write only for a record decoded for
//! the first time.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::RwLock;

use enrichd_engine::JsonFragment;

use super::Fact;

/// Shards (power of two): two threads rarely want the same lock.
const SHARDS: usize = 64;

/// Bytes an entry costs besides its text: the map's slot (offset, boxed
/// text, fact) and the allocator's header, rounded up.
const ENTRY_OVERHEAD: usize = 64;

type Map = HashMap<usize, (Box<str>, Fact), rustc_hash::FxBuildHasher>;

/// One lock on a cache line of its own (no false sharing between shards).
#[repr(align(64))]
#[derive(Default)]
struct Shard(RwLock<Map>);

/// Answers by record offset, shared by every thread of one database.
pub(crate) struct SharedRecords {
    shards: Box<[Shard]>,
    /// Bytes held (texts plus [`ENTRY_OVERHEAD`] each).
    bytes: AtomicUsize,
    entries: AtomicUsize,
    max_bytes: usize,
}

/// What [`SharedRecords`] holds, for the plugin's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SharedStats {
    pub entries: usize,
    pub bytes: usize,
    pub max_bytes: usize,
}

impl SharedRecords {
    /// A cache of at most `max_bytes`; 0 keeps nothing.
    pub(crate) fn new(max_bytes: usize) -> Self {
        let shards = if max_bytes == 0 { 0 } else { SHARDS };
        SharedRecords {
            shards: (0..shards).map(|_| Shard::default()).collect(),
            bytes: AtomicUsize::new(0),
            entries: AtomicUsize::new(0),
            max_bytes,
        }
    }

    fn shard(&self, offset: usize) -> Option<&RwLock<Map>> {
        let n = self.shards.len();
        // Offsets of neighbouring records differ in their low bits.
        (n > 0).then(|| &self.shards[(offset ^ offset >> 7) & (n - 1)].0)
    }

    /// A copy of the answer for the record at `offset`, if kept; `null` is
    /// the caller's own (`null` passed in), not a copy.
    pub(crate) fn get(&self, offset: usize, null: &JsonFragment) -> Option<(JsonFragment, Fact)> {
        let map = self.shard(offset)?.read().unwrap_or_else(|e| e.into_inner());
        let (text, fact) = map.get(&offset)?;
        let fragment = if &**text == "null" { null.clone() } else { JsonFragment::from(&**text) };
        Some((fragment, *fact))
    }

    /// Keeps `text` as the answer for `offset`, unless the cache is full.
    pub(crate) fn insert(&self, offset: usize, text: &str, fact: Fact) {
        let Some(shard) = self.shard(offset) else { return };
        let cost = text.len() + ENTRY_OVERHEAD;
        // Reserve first, so concurrent inserts cannot overshoot the bound.
        if self.bytes.fetch_add(cost, Relaxed) + cost > self.max_bytes {
            self.bytes.fetch_sub(cost, Relaxed);
            return;
        }
        let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
        match map.entry(offset) {
            // Another thread decoded it at the same time.
            Entry::Occupied(_) => {
                self.bytes.fetch_sub(cost, Relaxed);
            }
            Entry::Vacant(slot) => {
                slot.insert((text.into(), fact));
                self.entries.fetch_add(1, Relaxed);
            }
        }
    }

    pub(crate) fn stats(&self) -> SharedStats {
        SharedStats { entries: self.entries.load(Relaxed), bytes: self.bytes.load(Relaxed), max_bytes: self.max_bytes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_answers_within_its_bound_and_hands_out_copies() {
        let null = enrichd_engine::constant_fragment("null");
        // Room for the first two answers and 9 bytes of text more.
        let cache = SharedRecords::new(2 * ENTRY_OVERHEAD + 14 + ENTRY_OVERHEAD + 9);
        cache.insert(100, "0123456789", 7);
        cache.insert(100, "0123456789", 7); // a second decode of the same record
        cache.insert(200, "null", 0);
        assert_eq!(cache.stats().entries, 2);
        assert_eq!(cache.stats().bytes, 2 * ENTRY_OVERHEAD + 14);
        let (fragment, fact) = cache.get(100, &null).expect("kept");
        assert_eq!((&*fragment, fact), ("0123456789", 7));
        assert!(std::ptr::eq(cache.get(200, &null).unwrap().0.as_ptr(), null.as_ptr()), "null is the caller's");
        // Full: the next answer is not kept, and the bound holds.
        cache.insert(300, "0123456789", 1);
        assert_eq!(cache.get(300, &null), None);
        assert!(cache.stats().bytes <= cache.stats().max_bytes);
        assert_eq!(cache.get(400, &null), None);
    }

    #[test]
    fn zero_bytes_keeps_nothing() {
        let null = enrichd_engine::constant_fragment("null");
        let cache = SharedRecords::new(0);
        cache.insert(1, "{}", 0);
        assert_eq!(cache.get(1, &null), None);
        assert_eq!(cache.stats(), SharedStats { entries: 0, bytes: 0, max_bytes: 0 });
    }

    #[test]
    fn threads_share_one_bound() {
        let cache = SharedRecords::new(1000 * (ENTRY_OVERHEAD + 4));
        std::thread::scope(|s| {
            for t in 0..4usize {
                let cache = &cache;
                s.spawn(move || {
                    for i in 0..2000usize {
                        cache.insert(i * 3 + t % 2, "abcd", i as u32);
                    }
                });
            }
        });
        let stats = cache.stats();
        assert!(stats.bytes <= stats.max_bytes, "{stats:?}");
        assert_eq!(stats.bytes, stats.entries * (ENTRY_OVERHEAD + 4), "every reservation is an entry or undone");
        // A duplicate's reservation may turn a new answer away near the
        // bound for a moment: never more than fit, and most of them.
        assert!(stats.entries <= 1000 && stats.entries > 900, "{stats:?}");
    }
}
