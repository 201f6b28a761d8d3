//! Our own walker for the MMDB search tree, made for batches.
//!
//! Why not `maxminddb::Reader::lookup`: it walks one address at a time,
//! and on a full-size database (GeoLite2-City: 3.9 M nodes, 27 MB of tree)
//! the deeper levels of a walk are cache misses that each wait for the
//! previous one: ~25 dependent loads, 270-400 ns per random address. Here
//! a batch of addresses is walked together, 16 at a time, one level per
//! step, with the next node of every walk prefetched, so the misses of 16
//! walks overlap instead of queueing (memory-level parallelism). And the
//! first [`TOP_BITS`] levels of IPv4 walks, which every walk repeats, are
//! one load from a table built at open time (256 KiB per database), so an
//! IPv4 walk starts at depth 16 of the IPv4 subtree.
//!
//! Format: <https://maxmind.github.io/MaxMind-DB/> ("Search tree section").
//! Every node read is bounds checked against the tree, and a record value
//! that points outside the data section is an error, so a corrupt file
//! yields [`TreeError`], never a panic or an out-of-bounds read.

use std::fmt;
use std::net::IpAddr;

/// IPv4 bits resolved by the start table.
const TOP_BITS: u32 = 16;

/// Walks in flight at once. Beyond ~10-12 the core runs out of miss
/// buffers; 16 keeps them busy while finished walks are replaced.
const LANES: usize = 16;

/// The search tree pointed outside the data section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TreeError;

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the search tree points outside the data section (corrupt database)")
    }
}

impl std::error::Error for TreeError {}

/// What a walk found: a data-section offset, nothing, or corruption.
pub(crate) type Found = Result<Option<usize>, TreeError>;

/// The search tree of one database and its IPv4 start table.
pub(crate) struct Tree {
    node_count: usize,
    /// Bits per record: 24, 28 or 32.
    record_size: u16,
    /// Length of the data section, for checking where records point.
    data_len: usize,
    /// IPv6 addresses have no answer in an IPv4-only tree.
    ipv4_only: bool,
    /// For each value of an IPv4 address's first [`TOP_BITS`] bits, the
    /// record reached from the IPv4 start node (a node, or a terminal when
    /// the walk ended sooner).
    top: Box<[u32]>,
}

impl Tree {
    /// `tree` must be the whole search tree: `node_count` nodes of
    /// `record_size * 2` bits (the caller has checked that much is mapped).
    pub(super) fn new(
        tree: &[u8],
        node_count: usize,
        record_size: u16,
        data_len: usize,
        ipv4_only: bool,
    ) -> Option<Tree> {
        if !matches!(record_size, 24 | 28 | 32) || node_count.checked_mul(usize::from(record_size) / 4)? != tree.len() {
            return None;
        }
        let mut t = Tree { node_count, record_size, data_len, ipv4_only, top: Box::default() };
        // The IPv4 subtree of an IPv6 tree is `::/96`: 96 left turns.
        let mut start = 0;
        if !ipv4_only {
            for _ in 0..96 {
                if start >= node_count {
                    break;
                }
                start = t.read(tree, start, 0);
            }
        }
        t.top = (0..1u32 << TOP_BITS)
            .map(|prefix| {
                let mut node = start;
                for i in (0..TOP_BITS).rev() {
                    if node >= node_count {
                        break;
                    }
                    node = t.read(tree, node, (prefix >> i) as usize & 1);
                }
                node as u32 // a record value has at most 32 bits
            })
            .collect();
        Some(t)
    }

    /// One record of a node below `node_count` (what `tree` holds).
    #[inline(always)]
    fn read(&self, tree: &[u8], node: usize, bit: usize) -> usize {
        match self.record_size {
            24 => read::<24>(tree, node, bit),
            28 => read::<28>(tree, node, bit),
            _ => read::<32>(tree, node, bit),
        }
    }

    /// Looks up one address (canonical: IPv4-mapped IPv6 given as IPv4).
    pub(crate) fn find(&self, tree: &[u8], ip: IpAddr) -> Found {
        let mut out = [Ok(None)];
        self.find_many(tree, &[ip], &mut out);
        out[0]
    }

    /// Looks up every address of `ips` (canonical) into `out`, same order.
    pub(crate) fn find_many(&self, tree: &[u8], ips: &[IpAddr], out: &mut [Found]) {
        assert_eq!(ips.len(), out.len());
        match self.record_size {
            24 => self.walk::<24>(tree, ips, out),
            28 => self.walk::<28>(tree, ips, out),
            _ => self.walk::<32>(tree, ips, out),
        }
    }

    /// The interleaved walk: up to [`LANES`] walks advance one level per
    /// round; a finished walk's lane takes the next address.
    fn walk<const BITS: usize>(&self, tree: &[u8], ips: &[IpAddr], out: &mut [Found]) {
        let mut lanes = [Lane::default(); LANES];
        let mut active = 0;
        let mut next = 0;
        loop {
            while active < LANES && next < ips.len() {
                match self.start(ips[next]) {
                    Ok(mut lane) => {
                        lane.index = next;
                        prefetch::<BITS>(tree, lane.node, lane.bit());
                        lanes[active] = lane;
                        active += 1;
                    }
                    Err(node) => out[next] = self.resolve(node),
                }
                next += 1;
            }
            if active == 0 {
                return;
            }
            let mut i = 0;
            while i < active {
                let lane = &mut lanes[i];
                lane.node = read::<BITS>(tree, lane.node, lane.bit());
                lane.key <<= 1;
                lane.left -= 1;
                if lane.node < self.node_count && lane.left > 0 {
                    prefetch::<BITS>(tree, lane.node, lane.bit());
                    i += 1;
                } else {
                    out[lane.index] = self.resolve(lane.node);
                    active -= 1;
                    lanes[i] = lanes[active]; // `i` is looked at again
                }
            }
        }
    }

    /// A lane at the first node below the start table, or the terminal
    /// value when the walk is already over.
    #[inline(always)]
    fn start(&self, ip: IpAddr) -> Result<Lane, usize> {
        let lane = match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let node = self.top[(bits >> (32 - TOP_BITS)) as usize] as usize;
                Lane { node, key: u128::from(bits) << (96 + TOP_BITS), left: 32 - TOP_BITS, index: 0 }
            }
            // No IPv6 answer in an IPv4 tree: `node_count` reads as "not found".
            IpAddr::V6(_) if self.ipv4_only => return Err(self.node_count),
            IpAddr::V6(v6) => Lane { node: 0, key: u128::from(v6), left: 128, index: 0 },
        };
        if lane.node < self.node_count {
            Ok(lane)
        } else {
            Err(lane.node)
        }
    }

    /// Calls `f` with what every record of a sample of about `max_nodes`
    /// nodes, spread evenly over the tree, points at: a data-section
    /// offset, or `Err` when it points outside the data section. Inner
    /// nodes and "not found" are skipped. For validating a database before
    /// it goes live.
    pub(super) fn sample_records(&self, tree: &[u8], max_nodes: usize, mut f: impl FnMut(Result<usize, TreeError>)) {
        let step = self.node_count.div_ceil(max_nodes.max(1)).max(1);
        for node in (0..self.node_count).step_by(step) {
            for bit in 0..2 {
                match self.resolve(self.read(tree, node, bit)) {
                    Ok(Some(offset)) => f(Ok(offset)),
                    Ok(None) => {}
                    Err(e) => f(Err(e)),
                }
            }
        }
    }

    /// What the record value a walk ended on means. A walk that ran out of
    /// bits on an inner node found nothing, as in `maxminddb`.
    #[inline(always)]
    fn resolve(&self, node: usize) -> Found {
        if node <= self.node_count {
            return Ok(None);
        }
        match (node - self.node_count).checked_sub(16) {
            Some(offset) if offset < self.data_len => Ok(Some(offset)),
            _ => Err(TreeError),
        }
    }
}

/// One walk in flight.
#[derive(Clone, Copy, Default)]
struct Lane {
    node: usize,
    /// Address bits not yet used, most significant first.
    key: u128,
    left: u32,
    /// Position in the input.
    index: usize,
}

impl Lane {
    #[inline(always)]
    fn bit(&self) -> usize {
        (self.key >> 127) as usize
    }
}

/// Record `bit` (0 left, 1 right) of `node` in a tree of `BITS`-bit records.
/// Callers only read nodes below `node_count`, which `Tree::new` checked
/// are all in `tree`; the check here is a second line that reads as node 0
/// (a walk then just runs out of bits).
#[inline(always)]
fn read<const BITS: usize>(tree: &[u8], node: usize, bit: usize) -> usize {
    let at = node * (BITS / 4) + bit * (BITS / 8);
    match BITS {
        24 => tree.get(at..at + 3).map_or(0, |b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2])),
        28 => tree.get(at..at + 4).map_or(0, |b| {
            let word = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            // The middle byte holds the high nibbles of both records.
            (if bit == 0 { (word >> 8) | (word << 20) & 0x0F00_0000 } else { word & 0x0FFF_FFFF }) as usize
        }),
        _ => tree.get(at..at + 4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize),
    }
}

/// Asks the CPU to start loading the record a walk reads next.
#[inline(always)]
fn prefetch<const BITS: usize>(tree: &[u8], node: usize, bit: usize) {
    if let Some(byte) = tree.get(node * (BITS / 4) + bit * (BITS / 8)) {
        prefetch_line(byte);
    }
}

pub(crate) use enrichd_engine::hint::prefetch_line;

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::test_support;

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// The tree of `bytes` as `Database::open` builds it.
    fn tree_of(bytes: &[u8]) -> (Tree, &[u8]) {
        let reader = maxminddb::Reader::from_source(bytes).unwrap();
        let md = reader.metadata();
        let len = md.node_count as usize * usize::from(md.record_size) / 4;
        let tree = Tree::new(
            &bytes[..len],
            md.node_count as usize,
            md.record_size,
            bytes.len() - len - 16,
            md.ip_version == 4,
        );
        (tree.unwrap(), &bytes[..len])
    }

    /// Addresses in and around every network of each test database (random
    /// host bits, some flipped just above the prefix), random addresses
    /// anywhere, and the extremes: every answer, batched and alone, equals
    /// `maxminddb`'s.
    #[test]
    fn agrees_with_maxminddb_on_random_addresses() {
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for name in [
            "MaxMind-DB-test-ipv4-24",
            "MaxMind-DB-test-ipv4-28",
            "MaxMind-DB-test-ipv4-32",
            "MaxMind-DB-test-ipv6-24",
            "MaxMind-DB-test-mixed-28",
            "MaxMind-DB-test-mixed-32",
            "GeoIP2-City-Test",
            "GeoIP2-Country-Test",
            "GeoLite2-ASN-Test",
        ] {
            let bytes = std::fs::read(test_support::data(&format!("{name}.mmdb"))).unwrap();
            let reader = maxminddb::Reader::from_source(&bytes[..]).unwrap();
            let (tree, nodes) = tree_of(&bytes);
            let mut ips: Vec<IpAddr> = Vec::new();
            let options = maxminddb::WithinOptions::default().include_aliased_networks();
            for network in reader.networks(options).unwrap() {
                let network = network.unwrap().network().unwrap();
                let (base, host_bits) = match network.ip() {
                    IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), 32 - u32::from(network.prefix())),
                    IpAddr::V6(v6) => (u128::from(v6), 128 - u32::from(network.prefix())),
                };
                for _ in 0..8 {
                    let r = u128::from(xorshift(&mut rng)) << 64 | u128::from(xorshift(&mut rng));
                    // Host bits plus up to 3 bits above the prefix.
                    let spread = (host_bits + (r >> 126) as u32).min(128);
                    let mask = if spread == 128 { u128::MAX } else { (1u128 << spread) - 1 };
                    ips.push(IpAddr::V6(Ipv6Addr::from(base ^ (r & mask))).to_canonical());
                }
            }
            for _ in 0..2_000 {
                ips.push(IpAddr::V4(Ipv4Addr::from(xorshift(&mut rng) as u32)));
                let v6 = u128::from(xorshift(&mut rng)) << 64 | u128::from(xorshift(&mut rng));
                ips.push(IpAddr::V6(Ipv6Addr::from(v6 >> 3 | 0x2000 << 112))); // 2000::/3
            }
            ips.extend(
                ["0.0.0.0", "255.255.255.255", "::", "::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
                    .map(|s| s.parse::<IpAddr>().unwrap()),
            );
            let mut batched = vec![Ok(None); ips.len()];
            tree.find_many(nodes, &ips, &mut batched);
            let mut found = 0;
            for (ip, got) in ips.iter().zip(&batched) {
                let want = match ip {
                    IpAddr::V6(_) if reader.metadata().ip_version == 4 => None,
                    _ => reader.lookup(*ip).unwrap().offset(),
                };
                assert_eq!(*got, Ok(want), "{name} {ip}");
                assert_eq!(tree.find(nodes, *ip), Ok(want), "{name} {ip} alone");
                found += usize::from(want.is_some());
            }
            eprintln!("{name}: {found} of {} addresses found", ips.len());
            assert!(found * 4 > ips.len() - 4_000, "{name}: only {found} addresses found; the test proves little");
        }
    }

    /// Records pointing into the metadata or back into the tree separator,
    /// and trees too short for their node count: errors, no panic.
    #[test]
    fn corrupt_trees_are_errors() {
        // Two 24-bit nodes. Node 0: left -> node 1, right -> data offset 0.
        // Node 1: left -> "not found" (2), right -> 2 + 10 (inside the
        // 16-byte separator: invalid).
        let nodes = [0, 0, 1, 0, 0, 18, 0, 0, 2, 0, 0, 12];
        let tree = Tree::new(&nodes, 2, 24, 1, true).unwrap();
        let at = |s: &str| tree.find(&nodes, s.parse().unwrap());
        assert_eq!(at("128.0.0.1"), Ok(Some(0)));
        assert_eq!(at("0.0.0.1"), Ok(None));
        assert_eq!(at("64.0.0.1"), Err(TreeError));
        assert_eq!(at("::1"), Ok(None), "IPv6 in an IPv4-only tree");
        // Data offset 0 of an empty data section: out of bounds.
        let tree = Tree::new(&nodes, 2, 24, 0, true).unwrap();
        assert_eq!(tree.find(&nodes, "128.0.0.1".parse().unwrap()), Err(TreeError));
        // Lengths that do not match the node count or record size.
        assert!(Tree::new(&nodes[..11], 2, 24, 1, true).is_none());
        assert!(Tree::new(&nodes, 2, 20, 1, true).is_none());
        assert!(Tree::new(&nodes, usize::MAX / 2, 24, 1, true).is_none());
        // Bytes flipped in a real tree: any answer, but no panic.
        let bytes = std::fs::read(test_support::data("MaxMind-DB-test-mixed-28.mmdb")).unwrap();
        let (clean, nodes) = tree_of(&bytes);
        let ips: Vec<IpAddr> = (0..=255u8).map(|h| IpAddr::from([1, 1, 1, h])).collect();
        let mut out = vec![Ok(None); ips.len()];
        for i in (0..nodes.len()).step_by(nodes.len() / 50) {
            let mut broken = nodes.to_vec();
            broken[i] ^= 0xff;
            let tree = Tree::new(&broken, clean.node_count, 28, clean.data_len, false).unwrap();
            tree.find_many(&broken, &ips, &mut out);
            let _ = tree.find(&broken, "2001::1".parse().unwrap());
        }
    }
}
