//! Domain names: one open-addressing table over a string arena, hashed
//! right to left so that every parent domain's hash falls out of one pass
//! (see the parent module's docs).

use super::{bit, Listing, Lists, MAX_NAME};

/// Names are hashed as a polynomial over their bytes weighted by distance
/// from the *end*, `sum(b[j] * P^(len-1-j))`: a suffix then hashes the same
/// inside a longer name as on its own, so one right-to-left pass yields the
/// hash of every parent domain. The multiplications do not depend on each
/// other (powers come from a table), so the pass runs at about a cycle per
/// byte, unlike FNV's serial multiply chain.
const P: u64 = 0x9e37_79b9_7f4a_7c15;
static POW: [u64; MAX_NAME] = {
    let mut t = [1u64; MAX_NAME];
    let mut i = 1;
    while i < MAX_NAME {
        t[i] = t[i - 1].wrapping_mul(P);
        i += 1;
    }
    t
};

#[inline]
fn term(b: u8, distance_from_end: usize) -> u64 {
    (b.to_ascii_lowercase() as u64).wrapping_mul(POW[distance_from_end])
}

/// Final mix, so table index and tag use well-spread bits.
#[inline]
fn mix(h: u64) -> u64 {
    let h = (h ^ (h >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    h ^ (h >> 32)
}

/// Hash of a name, lowercased.
fn name_hash(name: &[u8]) -> u64 {
    name.iter().rev().enumerate().fold(0u64, |h, (d, &b)| h.wrapping_add(term(b, d)))
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
#[derive(Default)]
pub(super) struct DomainTable {
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

impl DomainTable {
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
            h = h.wrapping_add(term(b, last - i));
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
            let id = self.find(name_hash(&name[i..]), &name[i..]).expect("found above");
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
        let m = mix(hash);
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

    fn insert_slot(slots: &mut [u64], hash: u64, id: u32) {
        let m = mix(hash);
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
            Self::insert_slot(&mut slots, name_hash(self.name(e).as_bytes()), id as u32);
        }
        self.slots = slots;
    }

    /// Build time: adds a listing for `name` (lowercase, validated);
    /// `false` for an exact duplicate.
    pub(super) fn add(&mut self, name: &str, listing: Listing) -> bool {
        let hash = name_hash(name.as_bytes());
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
                Self::insert_slot(&mut self.slots, hash, id);
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
            let b = (mix(name_hash(self.name(e).as_bytes())) >> 32) as usize & (bits - 1);
            filter[b / 64] |= 1 << (b % 64);
        }
        self.filter = filter;
    }
}
