//! IP networks: a laminar family flattened into sorted intervals (see the
//! parent module's docs for why).

use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{bit, Listing, NONE};

/// A normalized network (host bits cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Net {
    V4(u32, u8),
    V6(u128, u8),
}

impl Net {
    /// A network from an address and prefix length, host bits cleared
    /// (the flag says whether there were any); `None` if `len` is too long.
    /// An IPv4-mapped IPv6 network (`::ffff:1.2.3.4`, `::ffff:0:0/96`) is
    /// the IPv4 network it maps: lookups see events' mapped addresses as
    /// IPv4, so stored as IPv6 it would never match.
    pub fn new(ip: IpAddr, len: u8) -> Option<(Net, bool)> {
        fn clear<K: IpKey>(k: K, len: u8) -> Option<(K, bool)> {
            let n = K::narrow(k.widen() & !K::host_mask(len).widen());
            (len as u32 <= K::BITS).then_some((n, n != k))
        }
        let (ip, len) = match ip {
            IpAddr::V6(a) if (96..=128).contains(&len) => match a.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), len - 96),
                None => (ip, len),
            },
            _ => (ip, len),
        };
        match ip {
            IpAddr::V4(a) => clear(u32::from(a), len).map(|(k, c)| (Net::V4(k, len), c)),
            IpAddr::V6(a) => clear(u128::from(a), len).map(|(k, c)| (Net::V6(k, len), c)),
        }
    }

    pub fn host(ip: IpAddr) -> Net {
        match ip.to_canonical() {
            IpAddr::V4(a) => Net::V4(a.into(), 32),
            IpAddr::V6(a) => Net::V6(a.into(), 128),
        }
    }
}

/// An address as an integer: `u32` for IPv4, `u128` for IPv6. The
/// arithmetic is written once on `u128`; the compiler narrows it again.
pub(super) trait IpKey: Copy + Ord + Hash {
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

/// A network in the table, with its enclosing network and its listings.
#[derive(Clone, Copy, Debug)]
pub(super) struct Node<K> {
    pub(super) start: K,
    pub(super) len: u8,
    parent: u32,
    first: u32,
    count: u32,
}

/// All networks of one address family, flattened into intervals.
pub(super) struct NetTable<K> {
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
    pub(super) fn for_each(&self, k: K, mut f: impl FnMut(&Node<K>, Listing)) {
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

impl<K> NetTable<K> {
    /// Every listing of every network, in network order.
    pub(super) fn listings(&self) -> &[Listing] {
        &self.listings
    }

    /// Approximate heap memory held.
    pub(super) fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * size_of::<Node<K>>()
            + self.listings.capacity() * size_of::<Listing>()
            + self.intervals.capacity() * size_of::<(K, u32)>()
            + self.top.capacity() * 4
            + self.covered.capacity() * 8
    }
}

/// Networks of one family as added: `(start, prefix length, listing)`.
/// No lookup per add (a hash map over a million random keys was 40 % of a
/// load, all cache misses): duplicates are dropped when sorting in
/// `finish`, and the loader counts each file's own repeats before adding.
#[derive(Default)]
pub(super) struct NetBuilder<K> {
    entries: Vec<(K, u8, Listing)>,
}

impl<K: IpKey> NetBuilder<K> {
    pub(super) fn add(&mut self, start: K, len: u8, listing: Listing) {
        self.entries.push((start, len, listing));
    }

    /// Makes room for about `n` more networks.
    pub(super) fn reserve(&mut self, n: usize) {
        self.entries.reserve(n);
    }

    pub(super) fn finish(self) -> NetTable<K> {
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
            // At most MAX_LISTINGS_PER_INDICATOR, in file order (see there).
            let kept = n.min(super::MAX_LISTINGS_PER_INDICATOR);
            table.listings.extend(rest[..kept].iter().map(|&(.., listing)| listing));
            table.nodes.push(Node { start, len, parent: NONE, first, count: kept as u32 });
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
