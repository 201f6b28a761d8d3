//! The in-memory indicator index: IP prefixes and domain names.
//!
//! Why these structures rather than a generic trie:
//!
//! - **IP prefixes** form a laminar family (two CIDR networks are either
//!   nested or disjoint), so the address space splits into intervals, each
//!   covered by exactly one innermost prefix (or none). The index keeps the
//!   sorted interval starts with that innermost prefix; every prefix knows
//!   its enclosing parent. A lookup is one binary search, narrowed by a
//!   table on the top 16 bits, and yields *every* covering indicator, most
//!   specific first, by walking the parent chain: Zeek's semantics, where
//!   an address inside nested subnets matches all of them. A 128 KiB bitmap
//!   of the /20 blocks any network touches answers most non-matching
//!   addresses from L2 cache. Nothing is allocated per lookup; measured
//!   against `prefix_trie`'s `cover` in the benchmark test.
//! - **Domains** live in one open-addressing table over a string arena. A
//!   name is hashed once, right to left, so the hash of every parent domain
//!   (`b.evil.com`, `evil.com`, `com`) falls out of the same pass; a small
//!   one-bit-per-hash filter rejects most suffixes before the table.
//!
//! Several listings may share one key (the same network in two files, or
//! one file listing it with different metadata); each is its own match.
//! Exact duplicates (same key, type and pre-serialized metadata tail) are
//! dropped at build time.

use rustc_hash::FxHashMap as HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::meta::{Feed, Meta};
use super::{Hit, Indicator, Kind};

const NONE: u32 = u32::MAX;
/// Longest DNS name (without the trailing dot), RFC 1035.
pub const MAX_NAME: usize = 253;

/// One listing of an indicator: its type and the id of its pre-serialized
/// JSON tail (source file and metadata, see [`IndexBuilder::tail`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Listing {
    kind: Kind,
    tail: u32,
}

/// A normalized network (host bits cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Net {
    V4(u32, u8),
    V6(u128, u8),
}

impl Net {
    /// A network from an address and prefix length, host bits cleared
    /// (the flag says whether there were any); `None` if `len` is too long.
    pub fn new(ip: IpAddr, len: u8) -> Option<(Net, bool)> {
        fn clear<K: IpKey>(k: K, len: u8) -> Option<(K, bool)> {
            let n = K::narrow(k.widen() & !K::host_mask(len).widen());
            (len as u32 <= K::BITS).then_some((n, n != k))
        }
        match ip {
            IpAddr::V4(a) => clear(u32::from(a), len).map(|(k, c)| (Net::V4(k, len), c)),
            IpAddr::V6(a) => clear(u128::from(a), len).map(|(k, c)| (Net::V6(k, len), c)),
        }
    }

    pub fn host(ip: IpAddr) -> Net {
        match ip {
            IpAddr::V4(a) => Net::V4(a.into(), 32),
            IpAddr::V6(a) => Net::V6(a.into(), 128),
        }
    }
}

/// An address as an integer: `u32` for IPv4, `u128` for IPv6. The
/// arithmetic is written once on `u128`; the compiler narrows it again.
pub trait IpKey: Copy + Ord + Hash {
    const BITS: u32;
    fn widen(self) -> u128;
    fn narrow(v: u128) -> Self;

    /// The bits *not* in a `/len` network.
    #[inline]
    fn host_mask(len: u8) -> Self {
        Self::narrow(if len as u32 >= Self::BITS { 0 } else { (u128::MAX >> (128 - Self::BITS)) >> len })
    }

    /// The last address of the `/len` network starting at `self`.
    fn last(self, len: u8) -> Self {
        Self::narrow(self.widen() | Self::host_mask(len).widen())
    }

    fn checked_inc(self) -> Option<Self> {
        let v = self.widen();
        (v != u128::MAX >> (128 - Self::BITS)).then(|| Self::narrow(v + 1))
    }

    /// The top `n` bits, for the bucket table and the coverage bitmap.
    #[inline]
    fn top(self, n: u32) -> usize {
        (self.widen() >> (Self::BITS - n)) as usize
    }

    fn to_ip(self) -> IpAddr {
        match Self::BITS {
            32 => IpAddr::V4(Ipv4Addr::from(self.widen() as u32)),
            _ => IpAddr::V6(Ipv6Addr::from(self.widen())),
        }
    }
}

impl IpKey for u32 {
    const BITS: u32 = 32;
    #[inline]
    fn widen(self) -> u128 {
        self as u128
    }
    #[inline]
    fn narrow(v: u128) -> Self {
        v as u32
    }
}

impl IpKey for u128 {
    const BITS: u32 = 128;
    #[inline]
    fn widen(self) -> u128 {
        self
    }
    #[inline]
    fn narrow(v: u128) -> Self {
        v
    }
}

/// Build-time listings per key as linked lists in one vector (no allocation
/// per key); flattened into one contiguous slice per key when frozen.
#[derive(Default)]
struct Lists {
    links: Vec<(Listing, u32)>,
    /// Per key: first and last link.
    ends: Vec<(u32, u32)>,
}

impl Lists {
    /// Adds `l` to `key` (a new key when `key == number of keys`); `false`
    /// if the key already has an identical listing.
    fn add(&mut self, key: usize, l: Listing) -> bool {
        let link = self.links.len() as u32;
        if key == self.ends.len() {
            self.ends.push((link, link));
        } else {
            let (mut i, last) = self.ends[key];
            while i != NONE {
                if self.links[i as usize].0 == l {
                    return false;
                }
                i = self.links[i as usize].1;
            }
            self.links[last as usize].1 = link;
            self.ends[key].1 = link;
        }
        self.links.push((l, NONE));
        true
    }

    /// Appends the listings of `key` to `out`: (first index, count).
    fn flatten(&self, key: usize, out: &mut Vec<Listing>) -> (u32, u32) {
        let begin = out.len() as u32;
        let mut i = self.ends[key].0;
        while i != NONE {
            out.push(self.links[i as usize].0);
            i = self.links[i as usize].1;
        }
        (begin, out.len() as u32 - begin)
    }
}

/// A network in the table, with its enclosing network and its listings.
#[derive(Clone, Copy, Debug)]
struct Node<K> {
    start: K,
    len: u8,
    parent: u32,
    first: u32,
    count: u32,
}

/// All networks of one address family, flattened into intervals.
pub struct NetTable<K> {
    nodes: Vec<Node<K>>,
    listings: Vec<Listing>,
    /// Interval start (sorted; the first is zero) and the innermost node
    /// covering the interval, or `NONE`. Side by side: one cache miss.
    intervals: Vec<(K, u32)>,
    /// Bit per top-20-bit block: does any network touch it? Most addresses
    /// of real traffic are in no listed block and stop here. With `top`.
    covered: Vec<u64>,
    /// `top[h]` = number of intervals starting below bucket `h`; empty for
    /// small tables, where a plain binary search is as fast.
    top: Vec<u32>,
}

/// Tables with fewer intervals than this skip the bucket table.
const TOP_TABLE_MIN: usize = 256;
/// Granularity of the coverage bitmap: /20 blocks, 2^20 bits = 128 KiB,
/// small enough to stay in L2 where the interval array would not.
const COVER_BITS: u32 = 20;

#[inline]
fn bit(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

impl<K: IpKey> NetTable<K> {
    /// The innermost network covering `k`, as a node index or `NONE`.
    #[inline]
    fn innermost(&self, k: K) -> u32 {
        let (lo, hi) = if self.top.is_empty() {
            (0, self.intervals.len())
        } else {
            if !bit(&self.covered, k.top(COVER_BITS)) {
                return NONE;
            }
            let h = k.top(16);
            (self.top[h] as usize, self.top[h + 1] as usize)
        };
        // The first start is 0 <= k, and every start before `lo` is below
        // k's bucket, so the last start <= k is at lo + c - 1 >= 0.
        let c = self.intervals[lo..hi].partition_point(|&(b, _)| b <= k);
        self.intervals[lo + c - 1].1
    }

    /// Calls `f` for every listing of every network covering `k`, most
    /// specific network first.
    #[inline]
    fn for_each(&self, k: K, mut f: impl FnMut(&Node<K>, Listing)) {
        let mut n = self.innermost(k);
        while n != NONE {
            let node = &self.nodes[n as usize];
            for l in &self.listings[node.first as usize..(node.first + node.count) as usize] {
                f(node, *l);
            }
            n = node.parent;
        }
    }
}

/// Networks of one family as added: `(start, prefix length, listing)`.
/// No lookup per add (a hash map over a million random keys was 40 % of a
/// load, all cache misses): duplicates are dropped when sorting in
/// `finish`, and the loader counts each file's own repeats before adding.
#[derive(Default)]
struct NetBuilder<K> {
    entries: Vec<(K, u8, Listing)>,
}

impl<K: IpKey> NetBuilder<K> {
    fn add(&mut self, start: K, len: u8, listing: Listing) {
        self.entries.push((start, len, listing));
    }

    fn finish(self) -> NetTable<K> {
        let mut entries = self.entries;
        // Enclosing networks sort before the networks inside them; a
        // network's listings in the order their tails were first seen
        // (file order). Exact repeats end up adjacent and are dropped.
        entries.sort_unstable_by_key(|&(k, len, l)| (k, len, l.tail, l.kind as u8));
        entries.dedup();
        let mut table = NetTable {
            nodes: Vec::with_capacity(entries.len()),
            listings: Vec::with_capacity(entries.len()),
            intervals: vec![(K::narrow(0), NONE)],
            covered: Vec::new(),
            top: Vec::new(),
        };
        let mut rest = &entries[..];
        while let Some(&(start, len, _)) = rest.first() {
            let n = rest.iter().take_while(|&&(k, l, _)| k == start && l == len).count();
            let first = table.listings.len() as u32;
            table.listings.extend(rest[..n].iter().map(|&(.., listing)| listing));
            table.nodes.push(Node { start, len, parent: NONE, first, count: n as u32 });
            rest = &rest[n..];
        }
        drop(entries);

        // Sweep in address order with the stack of open (enclosing) networks.
        let end = |n: &Node<K>| n.start.last(n.len);
        let mut stack: Vec<u32> = Vec::new();
        for i in 0..table.nodes.len() {
            let start = table.nodes[i].start;
            while let Some(&top) = stack.last() {
                let top_end = end(&table.nodes[top as usize]);
                if top_end >= start {
                    break;
                }
                stack.pop();
                if let Some(after) = top_end.checked_inc() {
                    push_bound(&mut table.intervals, after, stack.last().copied().unwrap_or(NONE));
                }
            }
            table.nodes[i].parent = stack.last().copied().unwrap_or(NONE);
            push_bound(&mut table.intervals, start, i as u32);
            stack.push(i as u32);
        }
        while let Some(top) = stack.pop() {
            if let Some(after) = end(&table.nodes[top as usize]).checked_inc() {
                push_bound(&mut table.intervals, after, stack.last().copied().unwrap_or(NONE));
            }
        }
        if table.intervals.len() >= TOP_TABLE_MIN {
            let iv = &table.intervals;
            table.top = (0..1u128 << 16)
                .map(|h| iv.partition_point(|(b, _)| b.widen() < h << (K::BITS - 16)) as u32)
                .chain([iv.len() as u32])
                .collect();
            table.covered = vec![0u64; (1 << COVER_BITS) / 64];
            for (i, &(start, _)) in iv.iter().enumerate().filter(|&(_, &(_, owner))| owner != NONE) {
                let next = iv.get(i + 1).map(|&(next, _)| K::narrow(next.widen() - 1).top(COVER_BITS));
                for b in start.top(COVER_BITS)..=next.unwrap_or((1 << COVER_BITS) - 1) {
                    table.covered[b / 64] |= 1 << (b % 64);
                }
            }
        }
        table.intervals.shrink_to_fit();
        table
    }
}

/// Appends an interval start; a start equal to the previous one replaces its
/// owner (the later, more specific network wins), and an interval with the
/// same owner as the previous one is merged into it.
fn push_bound<K: IpKey>(intervals: &mut Vec<(K, u32)>, at: K, owner: u32) {
    let last = intervals.len() - 1;
    if intervals[last].0 == at {
        intervals[last].1 = owner;
        if last > 0 && intervals[last - 1].1 == owner {
            intervals.pop();
        }
    } else if intervals[last].1 != owner {
        intervals.push((at, owner));
    }
}

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
pub struct DomainTable {
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
    fn add(&mut self, name: &str, listing: Listing) -> bool {
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

    fn finish(&mut self) {
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

/// The immutable index the enricher queries.
pub struct Index {
    v4: NetTable<u32>,
    v6: NetTable<u128>,
    domains: DomainTable,
    tails: Vec<Box<str>>,
    /// Per tail: the metadata the hot path reads (same id).
    metas: Vec<Meta>,
    /// Per tail: how many listings use it (live/expired counts per feed
    /// without walking the tables).
    uses: Vec<u32>,
    feeds: Vec<Feed>,
}

impl Index {
    /// Calls `f` for every indicator covering `ip` (IPv4-mapped IPv6
    /// addresses are looked up as IPv4), most specific first.
    #[inline]
    pub fn for_each_ip_match(&self, ip: IpAddr, mut f: impl FnMut(Hit<'_>)) {
        match ip.to_canonical() {
            IpAddr::V4(a) => self.v4.for_each(a.into(), |n, l| f(self.net_hit(n, l))),
            IpAddr::V6(a) => self.v6.for_each(a.into(), |n, l| f(self.net_hit(n, l))),
        }
    }

    fn net_hit<K: IpKey>(&self, node: &Node<K>, l: Listing) -> Hit<'_> {
        let host = l.kind == Kind::Addr && node.len as u32 == K::BITS;
        Hit {
            kind: l.kind,
            indicator: Indicator::Net { ip: node.start.to_ip(), len: node.len, host },
            tail: &self.tails[l.tail as usize],
            meta: &self.metas[l.tail as usize],
        }
    }

    pub fn has_domains(&self) -> bool {
        !self.domains.entries.is_empty()
    }

    /// Calls `f` for every domain indicator equal to `name` or one of its
    /// parent domains, most specific first. Case-insensitive; a trailing dot
    /// is ignored. Allocates and copies nothing: bytes are lowercased as
    /// they are hashed.
    pub fn for_each_domain_match(&self, name: &str, mut f: impl FnMut(Hit<'_>)) {
        if !self.has_domains() {
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
                if self.domains.find(h, &name[i + 1..]).is_some() {
                    hits |= 1 << label;
                }
                label += 1;
            }
            h = h.wrapping_add(term(b, last - i));
        }
        if self.domains.find(h, name).is_some() {
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
            let id = self.domains.find(name_hash(&name[i..]), &name[i..]).expect("found above");
            let e = &self.domains.entries[id as usize];
            let listed = self.domains.name(e);
            for l in &self.domains.listings[e.first as usize..(e.first + e.count) as usize] {
                let t = l.tail as usize;
                f(Hit {
                    kind: l.kind,
                    indicator: Indicator::Domain(listed),
                    tail: &self.tails[t],
                    meta: &self.metas[t],
                });
            }
        }
    }

    /// Distinct listings by type: `[addr, subnet, domain]`.
    pub fn counts(&self) -> [usize; 3] {
        let mut counts = [0; 3];
        for l in self.v4.listings.iter().chain(&self.v6.listings).chain(&self.domains.listings) {
            counts[l.kind as usize] += 1;
        }
        counts
    }

    /// The feeds, by [`Meta::feed`].
    pub fn feeds(&self) -> &[Feed] {
        &self.feeds
    }

    /// Every distinct metadata with the number of listings carrying it.
    pub fn metas(&self) -> impl Iterator<Item = (&Meta, u32)> {
        self.metas.iter().zip(self.uses.iter().copied())
    }

    /// Approximate heap memory held by the index.
    pub fn heap_bytes(&self) -> usize {
        fn table<K>(t: &NetTable<K>) -> usize {
            t.nodes.capacity() * size_of::<Node<K>>()
                + t.listings.capacity() * size_of::<Listing>()
                + t.intervals.capacity() * size_of::<(K, u32)>()
                + t.top.capacity() * 4
                + t.covered.capacity() * 8
        }
        let d = &self.domains;
        table(&self.v4)
            + table(&self.v6)
            + d.arena.capacity()
            + d.entries.capacity() * size_of::<DomainEntry>()
            + d.listings.capacity() * size_of::<Listing>()
            + (d.slots.capacity() + d.filter.capacity()) * 8
            + self.tails.iter().map(|t| t.len() + 16).sum::<usize>()
            + self.metas.capacity() * size_of::<Meta>()
            + self.uses.capacity() * 4
    }
}

/// Collects indicators, dropping exact duplicates, then freezes the index.
#[derive(Default)]
pub struct IndexBuilder {
    v4: NetBuilder<u32>,
    v6: NetBuilder<u128>,
    domains: DomainTable,
    tails: Vec<Box<str>>,
    metas: Vec<Meta>,
    tail_ids: HashMap<Box<str>, u32>,
    feeds: Vec<Feed>,
}

impl IndexBuilder {
    /// Interns a pre-serialized match tail (`,"source":...}`) with its
    /// metadata: listings with the same source and metadata share one.
    pub fn tail(&mut self, text: &str, meta: Meta) -> u32 {
        // The text names the feed (`source`) and writes every field of
        // `meta`, so it alone identifies the pair.
        if let Some(&id) = self.tail_ids.get(text) {
            debug_assert_eq!(self.metas[id as usize], meta);
            return id;
        }
        let id = self.tails.len() as u32;
        self.tails.push(text.into());
        self.metas.push(meta);
        self.tail_ids.insert(text.into(), id);
        id
    }

    /// The id of feed `feed` (by name), added if new; a feed added again
    /// keeps its first decay settings.
    pub fn feed(&mut self, feed: Feed) -> u16 {
        if let Some(i) = self.feeds.iter().position(|f| f.name == feed.name) {
            return i as u16;
        }
        // More feeds than files is impossible; u16 is plenty.
        self.feeds.push(feed);
        (self.feeds.len() - 1) as u16
    }

    /// Makes room for about `n` more networks (e.g. a file's line count).
    pub fn reserve_nets(&mut self, n: usize) {
        self.v4.entries.reserve(n);
    }

    /// Adds a network listing. An exact repeat (same network, type and
    /// tail) is dropped when the index is built; callers that report
    /// repeats count them themselves (see the loader).
    pub fn add_net(&mut self, net: Net, kind: Kind, tail: u32) {
        let listing = Listing { kind, tail };
        match net {
            Net::V4(k, len) => self.v4.add(k, len, listing),
            Net::V6(k, len) => self.v6.add(k, len, listing),
        }
    }

    /// Adds a domain listing (`name` lowercase, no trailing dot, at most
    /// [`MAX_NAME`] bytes); `false` if it is an exact duplicate.
    pub fn add_domain(&mut self, name: &str, tail: u32) -> bool {
        debug_assert!(name.len() <= MAX_NAME && !name.bytes().any(|b| b.is_ascii_uppercase()));
        self.domains.add(name, Listing { kind: Kind::Domain, tail })
    }

    pub fn finish(self) -> Index {
        let IndexBuilder { v4, v6, mut domains, mut tails, mut metas, tail_ids, feeds } = self;
        drop(tail_ids);
        domains.finish();
        tails.shrink_to_fit();
        metas.shrink_to_fit();
        let (v4, v6) = (v4.finish(), v6.finish());
        let mut uses = vec![0u32; tails.len()];
        for l in v4.listings.iter().chain(&v6.listings).chain(&domains.listings) {
            uses[l.tail as usize] += 1;
        }
        Index { v4, v6, domains, tails, metas, uses, feeds }
    }
}
