//! Domain names: one open-addressing table over a string arena, hashed
//! right to left so that every parent domain's hash falls out of one pass
//! (see the parent module's docs).

use std::sync::OnceLock;

use super::{bit, Listing, Lists, MAX_NAME};

/// Names are hashed as a polynomial over their bytes weighted by distance
/// from the *end*, `sum(b[j] * P^(len-1-j))`: a suffix then hashes the same
/// inside a longer name as on its own, so one right-to-left pass yields the
/// hash of every parent domain. The multiplications do not depend on each
/// other (powers come from a table), so the pass runs at about a cycle per
/// byte, unlike FNV's serial multiply chain.
///
/// The names come from indicator feeds, which may be hostile: with a fixed
/// `P` and final mix, anyone can compute offline which names share a slot
/// (or a filter bit) and list thousands of them, turning the linear-probing
/// build and every lookup that reaches that cluster quadratic. So `P` (odd)
/// and the key of the final mix are drawn once per process, from the
/// standard library's `RandomState` (the keyed hasher the parser's key sets
/// use). A per-suffix keyed hasher would cost a pass per parent domain on
/// the hot path; a polynomial with a secret evaluation point keeps the one
/// pass. What a feed can still force without the key is equality of the
/// low ~34 bits of two names' sums (Thue-Morse-like names; longer ones are
/// beyond [`MAX_NAME`]); the final mix folds all 64 bits into the slot and
/// the tag, so that buys nothing.
struct Keys {
    pow: [u64; MAX_NAME],
    /// Added before the final mix.
    key: u64,
}

impl Keys {
    fn new(seed: [u64; 2]) -> Keys {
        // P ≡ 3 (mod 8), not merely odd: for odd P the Thue-Morse
        // difference of two 128-byte names, the product of (1 - P^(2^i))
        // for i < 7, vanishes mod 2^64 whenever P ≡ ±1 (mod 128) (about 3 %
        // of odd keys: a feed could then list names with equal sums, one
        // cluster whatever the final mix). With P ≡ 3 (mod 8) that product
        // has exactly 34 factors of two, the bound stated above.
        let p = (seed[0] & !7) | 3;
        let mut pow = [1u64; MAX_NAME];
        for i in 1..MAX_NAME {
            pow[i] = pow[i - 1].wrapping_mul(p);
        }
        Keys { pow, key: seed[1] }
    }

    /// This process's keys.
    fn process() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(|| {
            use std::hash::BuildHasher;
            let random = std::hash::RandomState::new();
            Keys::new([random.hash_one(0u8), random.hash_one(1u8)])
        })
    }

    #[inline]
    fn term(&self, b: u8, distance_from_end: usize) -> u64 {
        (b.to_ascii_lowercase() as u64).wrapping_mul(self.pow[distance_from_end])
    }

    /// Final mix (keyed; murmur3's finalizer), so table index and tag use
    /// well-spread bits that each depend on all of the sum's.
    #[inline]
    fn mix(&self, h: u64) -> u64 {
        let mut h = h ^ self.key;
        h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    /// Hash of a name, lowercased.
    fn name_hash(&self, name: &[u8]) -> u64 {
        name.iter().rev().enumerate().fold(0u64, |h, (d, &b)| h.wrapping_add(self.term(b, d)))
    }
}

#[derive(Clone, Copy, Debug)]
struct DomainEntry {
    offset: u32,
    len: u8,
    /// The entry's listings (set when the table is frozen).
    first: u32,
    count: u32,
}

/// Domain indicators: an open-addressing table over one string arena.
pub(super) struct DomainTable {
    /// The process's hash keys, held so lookups need no lazy static.
    keys: &'static Keys,
    arena: String,
    entries: Vec<DomainEntry>,
    listings: Vec<Listing>,
    /// `tag << 32 | (entry + 1)`, 0 = empty. Power-of-two length.
    slots: Vec<u64>,
    /// Bloom-style pre-filter (one hash): bit per `(tag & size - 1)`.
    filter: Vec<u64>,
    /// Build time only.
    lists: Lists,
}

impl Default for DomainTable {
    fn default() -> Self {
        DomainTable::with_keys(Keys::process())
    }
}

impl DomainTable {
    fn with_keys(keys: &'static Keys) -> Self {
        DomainTable {
            keys,
            arena: String::new(),
            entries: Vec::new(),
            listings: Vec::new(),
            slots: Vec::new(),
            filter: Vec::new(),
            lists: Lists::default(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every listing, in entry order.
    pub(super) fn listings(&self) -> &[Listing] {
        &self.listings
    }

    /// Approximate heap memory held.
    pub(super) fn heap_bytes(&self) -> usize {
        self.arena.capacity()
            + self.entries.capacity() * size_of::<DomainEntry>()
            + self.listings.capacity() * size_of::<Listing>()
            + (self.slots.capacity() + self.filter.capacity()) * 8
    }

    /// Calls `f` with the listed name and each listing of every entry equal
    /// to `name` or one of its parent domains, most specific first.
    /// Case-insensitive; a trailing dot is ignored. Allocates and copies
    /// nothing: bytes are lowercased as they are hashed.
    pub(super) fn for_each_match<'a>(&'a self, name: &str, mut f: impl FnMut(&'a str, &'a Listing)) {
        if self.is_empty() {
            return;
        }
        let name = name.as_bytes();
        let name = name.strip_suffix(b".").unwrap_or(name);
        if name.is_empty() || name.len() > MAX_NAME {
            return;
        }
        // Right to left: at a dot, `h` is the hash of the suffix after it;
        // probe it. Bit n of `hits`: the suffix made of the last n + 1
        // labels is listed (a valid name has at most 127 labels).
        let (mut hits, mut label, mut h) = (0u128, 0u32, 0u64);
        let last = name.len() - 1;
        for (i, &b) in name.iter().enumerate().rev() {
            if b == b'.' {
                if label == 127 {
                    return; // only possible with empty labels (`a....b`)
                }
                if self.find(h, &name[i + 1..]).is_some() {
                    hits |= 1 << label;
                }
                label += 1;
            }
            h = h.wrapping_add(self.keys.term(b, last - i));
        }
        if self.find(h, name).is_some() {
            hits |= 1 << label;
        }
        label += 1;
        if hits == 0 {
            return;
        }
        // Rare path: report the listed suffixes, longest first.
        let starts_label = |i: usize| i == 0 || name[i - 1] == b'.';
        for i in (0..name.len()).filter(|&i| starts_label(i)) {
            label -= 1;
            if hits & (1 << label) == 0 {
                continue;
            }
            let id = self.find(self.keys.name_hash(&name[i..]), &name[i..]).expect("found above");
            let e = &self.entries[id as usize];
            let listed = self.name(e);
            for l in &self.listings[e.first as usize..(e.first + e.count) as usize] {
                f(listed, l);
            }
        }
    }

    fn name(&self, e: &DomainEntry) -> &str {
        &self.arena[e.offset as usize..e.offset as usize + e.len as usize]
    }

    #[inline]
    fn find(&self, hash: u64, name: &[u8]) -> Option<u32> {
        let m = self.keys.mix(hash);
        // Most probed names are not listed: one bit in an L2-sized filter
        // answers that without touching the (much larger) slot table.
        if self.slots.is_empty()
            || (!self.filter.is_empty() && !bit(&self.filter, (m >> 32) as usize & (self.filter.len() * 64 - 1)))
        {
            return None;
        }
        let tag = m >> 32;
        let mask = self.slots.len() - 1;
        let mut i = m as usize & mask;
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if s >> 32 == tag {
                let id = (s as u32) - 1;
                // Listed names are lowercase; `name` may not be.
                if self.name(&self.entries[id as usize]).as_bytes().eq_ignore_ascii_case(name) {
                    return Some(id);
                }
            }
            i = (i + 1) & mask;
        }
    }

    fn insert_slot(keys: &Keys, slots: &mut [u64], hash: u64, id: u32) {
        let m = keys.mix(hash);
        let mask = slots.len() - 1;
        let mut i = m as usize & mask;
        while slots[i] != 0 {
            i = (i + 1) & mask;
        }
        slots[i] = (m >> 32) << 32 | (id as u64 + 1);
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(64);
        let mut slots = vec![0u64; size];
        for (id, e) in self.entries.iter().enumerate() {
            Self::insert_slot(self.keys, &mut slots, self.keys.name_hash(self.name(e).as_bytes()), id as u32);
        }
        self.slots = slots;
    }

    /// Build time: adds a listing for `name` (lowercase, validated);
    /// `false` for an exact duplicate.
    pub(super) fn add(&mut self, name: &str, listing: Listing) -> bool {
        let hash = self.keys.name_hash(name.as_bytes());
        let id = match self.find(hash, name.as_bytes()) {
            Some(id) => id,
            None => {
                if (self.entries.len() + 1) * 2 > self.slots.len() {
                    self.grow();
                }
                let id = self.entries.len() as u32;
                let (offset, len) = (self.arena.len() as u32, name.len() as u8);
                self.entries.push(DomainEntry { offset, len, first: 0, count: 0 });
                self.arena.push_str(name);
                Self::insert_slot(self.keys, &mut self.slots, hash, id);
                id
            }
        };
        self.lists.add(id as usize, listing)
    }

    pub(super) fn finish(&mut self) {
        let lists = std::mem::take(&mut self.lists);
        for (i, e) in self.entries.iter_mut().enumerate() {
            (e.first, e.count) = lists.flatten(i, &mut self.listings);
        }
        self.arena.shrink_to_fit();
        self.entries.shrink_to_fit();
        self.listings.shrink_to_fit();
        // ~16 bits per name, at most 2^21 bits (256 KiB).
        let bits = (self.entries.len() * 16).next_power_of_two().clamp(64, 1 << 21);
        let mut filter = vec![0u64; bits / 64];
        for e in &self.entries {
            let b = (self.keys.mix(self.keys.name_hash(self.name(e).as_bytes())) >> 32) as usize & (bits - 1);
            filter[b / 64] |= 1 << (b % 64);
        }
        self.filter = filter;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ti::Kind;

    impl DomainTable {
        /// The longest distance from an entry's home slot to its slot: how
        /// far a lookup of it (or of a name hashing next to it) probes.
        fn longest_probe(&self) -> usize {
            let mask = self.slots.len() - 1;
            (0..self.slots.len())
                .filter(|&i| self.slots[i] != 0)
                .map(|i| {
                    let e = &self.entries[(self.slots[i] as u32 - 1) as usize];
                    let home = self.keys.mix(self.keys.name_hash(self.name(e).as_bytes())) as usize & mask;
                    i.wrapping_sub(home) & mask
                })
                .max()
                .unwrap_or(0)
        }
    }

    /// The slot hash the table used before it was keyed (fixed multiplier
    /// and mix): what a hostile feed could compute offline.
    fn unkeyed(name: &[u8]) -> u64 {
        let h = name.iter().rev().fold((0u64, 1u64), |(h, pow), &b| {
            (h.wrapping_add(u64::from(b).wrapping_mul(pow)), pow.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        });
        let h = (h.0 ^ (h.0 >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
        h ^ (h >> 32)
    }

    /// 400 names that all had home slot 0 in the unkeyed table (found by
    /// brute force, as an attacker would): they would form one cluster, so
    /// building the table and looking them up probed hundreds of slots
    /// each. With the process's keys they spread like any names, and every
    /// one is still found.
    /// Two 128-byte names written as a Thue-Morse sequence and its
    /// complement: their sums differ by the product of (1 - P^(2^i)),
    /// which for P ≡ ±1 (mod 128) is 0 mod 2^64 (equal sums under ~3 % of
    /// odd keys). The keys' P never allows that: the sums differ, and
    /// agree in exactly their low 34 bits, whatever the seed.
    #[test]
    fn thue_morse_names_never_share_a_sum() {
        let tm = |d: usize| d.count_ones() % 2 == 1;
        let a: String = (0..128).map(|d| if tm(d) { 'b' } else { 'a' }).collect();
        let b: String = (0..128).map(|d| if tm(d) { 'a' } else { 'b' }).collect();
        // Seeds whose plain odd P would be ±1 (mod 128), then arbitrary ones.
        let seeds = [1u64, 127, 129, 255, 1 << 40 | 1, u64::MAX]
            .into_iter()
            .chain((1..200u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        for seed in seeds {
            let keys = Keys::new([seed, 0]);
            let difference = keys.name_hash(a.as_bytes()).wrapping_sub(keys.name_hash(b.as_bytes()));
            assert_eq!(difference.trailing_zeros(), 34, "seed {seed:#x}");
        }
    }

    #[test]
    fn names_crafted_to_collide_without_the_key_spread_out() {
        use std::fmt::Write;
        let mut crafted = Vec::new();
        let mut name = String::new();
        for n in 0u64.. {
            name.clear();
            write!(name, "{n:x}.evil.test").unwrap();
            if unkeyed(name.as_bytes()) & 0x7ff == 0 {
                crafted.push(name.clone());
                if crafted.len() == 400 {
                    break;
                }
            }
        }
        let mut table = DomainTable::default();
        for name in &crafted {
            assert!(table.add(name, Listing { kind: Kind::Domain, tail: 0 }));
        }
        table.finish();
        assert!(table.longest_probe() < 64, "longest probe {}", table.longest_probe());
        for name in &crafted {
            let mut found = Vec::new();
            table.for_each_match(&format!("www.{}", name.to_uppercase()), |listed, _| found.push(listed.to_string()));
            assert_eq!(found, std::slice::from_ref(name));
        }
        // Keys someone knows bring the cluster back: the test crafts what
        // it claims to.
        let known: &'static Keys = Box::leak(Box::new(Keys::new([7, 0])));
        let mut clustered = DomainTable::with_keys(known);
        let mut n = 0u64;
        while clustered.entries.len() < 400 {
            name.clear();
            write!(name, "{n:x}.evil.test").unwrap();
            if known.mix(known.name_hash(name.as_bytes())) & 0x7ff == 0 {
                clustered.add(&name, Listing { kind: Kind::Domain, tail: 0 });
            }
            n += 1;
        }
        assert!(clustered.longest_probe() >= 399, "{}", clustered.longest_probe());
    }

    /// One process, one set of keys: every table hashes alike.
    #[test]
    fn tables_share_the_process_keys() {
        assert!(std::ptr::eq(DomainTable::default().keys, DomainTable::default().keys));
        let keys = Keys::process();
        assert_eq!(keys.pow[1] & 1, 1, "an odd multiplier");
        assert_eq!(keys.name_hash(b"a.Example.COM"), keys.name_hash(b"a.example.com"));
    }
}
