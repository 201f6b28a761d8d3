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

mod domains;
mod nets;

use rustc_hash::FxHashMap as HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::meta::{Feed, Meta};
use super::{Hit, Indicator, Kind};
use domains::DomainTable;
pub use nets::Net;
use nets::{IpKey, NetBuilder, NetTable, Node};

const NONE: u32 = u32::MAX;
/// Longest DNS name (without the trailing dot), RFC 1035.
pub const MAX_NAME: usize = 253;

/// Most listings one indicator (a network, a domain) keeps: the same
/// indicator listed again with other metadata (another description, feed or
/// category) adds a listing, and every event it matches carries them all.
/// A feed repeating one indicator a million times must cost neither a
/// quadratic build nor a megabyte per matching event; further listings are
/// dropped like duplicates.
pub const MAX_LISTINGS_PER_INDICATOR: usize = 32;

/// One listing of an indicator: its type and the id of its pre-serialized
/// JSON tail (source file and metadata, see [`IndexBuilder::tail`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Listing {
    kind: Kind,
    tail: u32,
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
    /// if the key already has an identical listing, or
    /// [`MAX_LISTINGS_PER_INDICATOR`] of them.
    fn add(&mut self, key: usize, l: Listing) -> bool {
        let link = self.links.len() as u32;
        if key == self.ends.len() {
            self.ends.push((link, link));
        } else {
            let (mut i, last) = self.ends[key];
            let mut listed = 0;
            while i != NONE {
                if self.links[i as usize].0 == l || listed == MAX_LISTINGS_PER_INDICATOR - 1 {
                    return false;
                }
                listed += 1;
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

#[inline]
fn bit(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

/// The immutable index the enricher queries.
pub struct Index {
    v4: NetTable<u32>,
    v6: NetTable<u128>,
    domains: DomainTable,
    /// Shared with the builder's interning map while building (one copy
    /// of each text).
    tails: Vec<Arc<str>>,
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
        !self.domains.is_empty()
    }

    /// Calls `f` for every domain indicator equal to `name` or one of its
    /// parent domains, most specific first. Case-insensitive; a trailing dot
    /// is ignored. Allocates and copies nothing.
    pub fn for_each_domain_match(&self, name: &str, mut f: impl FnMut(Hit<'_>)) {
        self.domains.for_each_match(name, |listed, l| {
            let t = l.tail as usize;
            f(Hit { kind: l.kind, indicator: Indicator::Domain(listed), tail: &self.tails[t], meta: &self.metas[t] })
        });
    }

    /// Distinct listings by type: `[addr, subnet, domain]`.
    pub fn counts(&self) -> [usize; 3] {
        let mut counts = [0; 3];
        for l in self.v4.listings().iter().chain(self.v6.listings()).chain(self.domains.listings()) {
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
        self.v4.heap_bytes()
            + self.v6.heap_bytes()
            + self.domains.heap_bytes()
            + self.tails.iter().map(|t| t.len() + 32).sum::<usize>()
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
    tails: Vec<Arc<str>>,
    metas: Vec<Meta>,
    /// Text -> id, the key sharing its allocation with `tails` (a feed's
    /// metadata can be most of its bytes: two copies doubled that while
    /// loading).
    tail_ids: HashMap<Arc<str>, u32>,
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
        let text: Arc<str> = text.into();
        self.tails.push(Arc::clone(&text));
        self.metas.push(meta);
        self.tail_ids.insert(text, id);
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
        self.v4.reserve(n);
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
        for l in v4.listings().iter().chain(v6.listings()).chain(domains.listings()) {
            uses[l.tail as usize] += 1;
        }
        Index { v4, v6, domains, tails, metas, uses, feeds }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tail interned twice has one id, and its text is held once: the
    /// interning map's key is the index's own copy.
    #[test]
    fn tails_are_interned_and_stored_once() {
        let mut b = IndexBuilder::default();
        let text = r#","source":"feed.csv","description":"a long description"}"#;
        let id = b.tail(text, Meta::default());
        assert_eq!(b.tail(text, Meta::default()), id);
        assert_eq!(b.tail(",\"source\":\"other\"}", Meta::default()), id + 1);
        let (key, &mapped) = b.tail_ids.get_key_value(text).unwrap();
        assert_eq!(mapped, id);
        assert!(Arc::ptr_eq(key, &b.tails[id as usize]), "one allocation for the text");
        let index = b.finish();
        assert_eq!(Arc::strong_count(&index.tails[id as usize]), 1, "the map's share is gone once built");
        assert_eq!(&*index.tails[id as usize], text);
    }
}
