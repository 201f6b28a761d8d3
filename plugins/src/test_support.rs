//! Helpers for the plugins' tests: chains from TOML, synthetic batches and
//! the MaxMind source-data oracle.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use enrichd_engine::{Batch, Chain, Config, ConfigError, Event, Format, Registry};
use serde_json::Value;

/// `tests/data/maxmind/<name>` of the workspace.
pub(crate) fn data(name: &str) -> String {
    format!("{}/../tests/data/maxmind/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A chain from config text whose relative paths resolve against the
/// workspace root.
pub(crate) fn chain(toml: &str) -> Result<Chain, ConfigError> {
    let config = Config::parse(toml, Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../enrichd.toml")))?;
    let mut registry = Registry::new();
    crate::register_all(&mut registry);
    Chain::build(&config.chain, &registry, &config.base_dir)
}

/// The message of a chain build that must fail.
pub(crate) fn chain_err(toml: &str) -> String {
    match chain(toml) {
        Ok(_) => panic!("the chain built, but should not have:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

pub(crate) fn event(src: Option<&str>, dst: Option<&str>) -> Event {
    let mut e = Event::synthetic();
    e.src_ip = src.map(|s| s.parse().expect("test address"));
    e.dst_ip = dst.map(|s| s.parse().expect("test address"));
    e
}

/// Runs `events` through the chain and returns them as written on the
/// wire, parsed back, plus each event's warnings.
pub(crate) fn run(chain: &Chain, events: Vec<Event>) -> Vec<(Value, Vec<String>)> {
    let mut batch = Batch::synthetic(Format::FlowsV1, events);
    chain.run(&mut batch);
    batch
        .events()
        .iter()
        .map(|e| {
            let mut out = Vec::new();
            batch.write_event(e, chain.keys(), &mut out);
            (serde_json::from_slice(&out).expect("output is JSON"), e.warnings().to_vec())
        })
        .collect()
}

/// A listed network in one 128-bit space: IPv4 `a.b.c.d/n` is
/// `::a.b.c.d/(96+n)`, which is also where MaxMind's writer puts it.
#[derive(Clone, Copy)]
struct Net {
    base: u128,
    len: u32,
}

impl Net {
    fn parse(s: &str) -> Net {
        let (addr, len) = s.split_once('/').expect("network has a prefix length");
        let len: u32 = len.parse().expect("prefix length");
        let (base, len) = match addr.parse::<IpAddr>().expect("network address") {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), len + 96),
            IpAddr::V6(v6) => (u128::from(v6), len),
        };
        let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
        Net { base: base & mask, len } // some entries have host bits set
    }
    fn last(self) -> u128 {
        self.base | if self.len == 0 { u128::MAX } else { !(u128::MAX << (128 - self.len)) }
    }
    fn contains(self, a: u128) -> bool {
        a >= self.base && a <= self.last()
    }
}

/// An address to look up and the record the source data says it gets.
pub(crate) struct Probe {
    /// Index of the network's entry in the file.
    pub entry: usize,
    pub network: String,
    pub ip: IpAddr,
    pub expected: Value,
}

/// Reads `source-data/<file>` (a JSON array of `{network: record}`) and
/// returns the number of networks listed and probes for each: its first
/// and last address, and for IPv4 networks also the IPv4-mapped IPv6 form.
/// An address's expected record is the most specific listed network that
/// contains it (ties: the later entry, as the writer overwrites).
pub(crate) fn oracle(file: &str) -> (usize, Vec<Probe>) {
    let text = std::fs::read_to_string(data(&format!("source-data/{file}"))).expect("source data");
    let entries: Vec<serde_json::Map<String, Value>> = serde_json::from_str(&text).expect("source data JSON");
    let nets: Vec<(String, Net, Value)> = entries
        .into_iter()
        .map(|m| {
            let (k, v) = m.into_iter().next().expect("one network per entry");
            let net = Net::parse(&k);
            (k, net, v)
        })
        .collect();
    let expected_for = |a: u128| {
        let containing: Vec<usize> = (0..nets.len()).filter(|&i| nets[i].1.contains(a)).collect();
        let best = *containing.iter().max_by_key(|&&i| (nets[i].1.len, i)).expect("own network");
        // A broader network listed after a narrower one would overwrite
        // it in the built DB; the oracle would then be wrong.
        assert_eq!(best, *containing.last().unwrap(), "ambiguous source data at {a:#x}");
        nets[best].2.clone()
    };
    let mut probes = Vec::new();
    for (entry, (name, net, _)) in nets.iter().enumerate() {
        for a in [net.base, net.last()] {
            let mut ips = Vec::new();
            if a >> 32 == 0 && net.len >= 96 {
                let v4 = Ipv4Addr::from(a as u32);
                ips.push(IpAddr::V4(v4));
                ips.push(IpAddr::V6(v4.to_ipv6_mapped()));
            } else {
                ips.push(IpAddr::V6(Ipv6Addr::from(a)));
            }
            for ip in ips {
                probes.push(Probe { entry, network: name.clone(), ip, expected: expected_for(a) });
            }
        }
    }
    (nets.len(), probes)
}

/// A value for [`mmdb_bytes`]: enough of the MMDB data format to build
/// records by hand.
pub(crate) enum Mmdb<'a> {
    Str(&'a str),
    Double(f64),
    Float(f32),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'a str, Mmdb<'a>)>),
    Array(Vec<Mmdb<'a>>),
}

/// Encodes `value` as an MMDB data section (no pointers).
pub(crate) fn mmdb_bytes(value: &Mmdb<'_>) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, value: &Mmdb<'_>) {
        // Control byte (types past 7 in an extension byte), then the size
        // in the format's 29/30/31 extended forms.
        let head = |out: &mut Vec<u8>, kind: u8, size: usize| {
            let (first, extra) = match size {
                0..29 => (size as u8, Vec::new()),
                29..285 => (29, vec![(size - 29) as u8]),
                285..65_821 => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
                _ => (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec()),
            };
            if kind > 7 {
                out.extend([first, kind - 7]);
            } else {
                out.push(kind << 5 | first);
            }
            out.extend(extra);
        };
        match value {
            Mmdb::Str(s) => {
                head(out, 2, s.len());
                out.extend_from_slice(s.as_bytes());
            }
            Mmdb::Double(d) => {
                head(out, 3, 8);
                out.extend_from_slice(&d.to_be_bytes());
            }
            Mmdb::Float(f) => {
                out.extend_from_slice(&[4, 8]); // extended type 15 = 7 + 8, size 4
                out.extend_from_slice(&f.to_be_bytes());
            }
            Mmdb::U16(u) => {
                head(out, 5, 2);
                out.extend_from_slice(&u.to_be_bytes());
            }
            Mmdb::U32(u) => {
                head(out, 6, 4);
                out.extend_from_slice(&u.to_be_bytes());
            }
            Mmdb::U64(u) => {
                head(out, 9, 8);
                out.extend_from_slice(&u.to_be_bytes());
            }
            Mmdb::Map(entries) => {
                head(out, 7, entries.len());
                for (k, v) in entries {
                    put(out, &Mmdb::Str(k));
                    put(out, v);
                }
            }
            Mmdb::Array(items) => {
                head(out, 11, items.len());
                for v in items {
                    put(out, v);
                }
            }
        }
    }
    let mut out = Vec::new();
    put(&mut out, value);
    out
}

/// A whole `.mmdb` file, for databases no real writer would make: an IPv4
/// tree of one node (24-bit records) where `0.0.0.0/1` has the record
/// `low` and `128.0.0.0/1` the record `high`, of type `database_type`.
pub(crate) fn mmdb_file(database_type: &str, low: &Mmdb<'_>, high: &Mmdb<'_>) -> Vec<u8> {
    let mut data = mmdb_bytes(low);
    let high_at = data.len();
    data.extend(mmdb_bytes(high));
    // A record value past the node count points into the data section,
    // 16 bytes (the separator) further on.
    let record = |offset: usize| ((offset + 1 + 16) as u32).to_be_bytes()[1..].to_vec();
    let mut file = record(0);
    file.extend(record(high_at));
    file.extend([0; 16]);
    file.extend(data);
    file.extend(b"\xab\xcd\xefMaxMind.com");
    file.extend(mmdb_bytes(&Mmdb::Map(vec![
        ("binary_format_major_version", Mmdb::U16(2)),
        ("binary_format_minor_version", Mmdb::U16(0)),
        ("build_epoch", Mmdb::U64(1_700_000_000)),
        ("database_type", Mmdb::Str(database_type)),
        ("description", Mmdb::Map(vec![("en", Mmdb::Str("crafted for a test"))])),
        ("ip_version", Mmdb::U16(4)),
        ("languages", Mmdb::Array(vec![Mmdb::Str("en")])),
        ("node_count", Mmdb::U32(1)),
        ("record_size", Mmdb::U16(24)),
    ])));
    file
}
