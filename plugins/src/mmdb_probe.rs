//! Everything the `geoip` and `asn` plugins do with a database file's
//! bytes, as one call over a byte slice, for the fuzz harness
//! (`fuzz/fuzz_targets/mmdb.rs`) and the corrupted-database tests.
//!
//! A database is a file users drop in place, so a hostile or damaged one
//! must end in an error: never a panic, an endless walk, an out-of-bounds
//! read or a huge allocation. Going through the same steps as opening and
//! serving ([`crate::mmdb::layout`], the validation sample, batch walks, record
//! encoding) without the snapshot file and mapping keeps the fuzzer fast
//! (no file system per input) while testing the code that runs. It sits
//! beside `mmdb`, not in it: it names the plugins built on `mmdb`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use maxminddb::Reader;

use crate::asn::Asn;
use crate::geoip::Geo;
use crate::mmdb::tree::Found;
use crate::mmdb::{encode_record, layout, validate_sample, RecordFormat};

/// Addresses looked up in every probed database: both ends of both
/// families, the IPv4 subtree of an IPv6 tree, and a few in between.
const ADDRESSES: [IpAddr; 10] = [
    IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)),
    IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
    IpAddr::V4(Ipv4Addr::new(81, 2, 69, 160)),
    IpAddr::V4(Ipv4Addr::new(128, 101, 101, 101)),
    IpAddr::V4(Ipv4Addr::new(255, 255, 255, 255)),
    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0x218, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0x2a02, 0xcf40, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0x8000, 0, 0, 0, 0, 0, 0, 0)),
    IpAddr::V6(Ipv6Addr::new(0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff)),
];

/// What [`probe`] saw in a database that opened.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// Whether the validation sample passed, per format (geoip, asn).
    pub valid: [bool; 2],
    /// Lookups that found a record.
    pub found: usize,
    /// Lookups or record reads that failed with an error.
    pub errors: usize,
}

/// Opens `bytes` as a database the way the plugins do, validates it as a
/// `geoip` and as an `asn` database, looks up a fixed set of addresses
/// (the batch walk) and encodes every record found in both formats.
/// `Err` is the message opening would have failed with. Every answer
/// encoded is checked to be valid JSON (a panic otherwise: `/v1/lookup`
/// parses it back).
pub fn probe(bytes: &[u8]) -> Result<Probe, String> {
    let reader = Reader::from_source(bytes).map_err(|e| e.to_string())?;
    let md = reader.metadata();
    let (tree, tree_len, data) = layout(bytes, md).map_err(str::to_owned)?;
    let (nodes, data) = (&bytes[..tree_len], &bytes[data]);
    let mut probe = Probe {
        valid: [validate_sample::<Geo>(&tree, nodes, data).is_ok(), validate_sample::<Asn>(&tree, nodes, data).is_ok()],
        ..Probe::default()
    };
    let ips: Vec<IpAddr> = ADDRESSES.iter().map(|ip| ip.to_canonical()).collect();
    let mut found: Vec<Found> = vec![Ok(None); ips.len()];
    tree.find_many(nodes, &ips, &mut found);
    let mut out = Vec::new();
    for (ip, answer) in ips.iter().zip(found) {
        assert_eq!(answer, tree.find(nodes, *ip), "a batch walk and a single walk disagree on {ip}");
        match answer {
            Ok(Some(offset)) => {
                probe.found += 1;
                probe.errors += usize::from(encode_checked::<Geo>(data, offset, &mut out).is_err());
                probe.errors += usize::from(encode_checked::<Asn>(data, offset, &mut out).is_err());
            }
            Ok(None) => {}
            Err(_) => probe.errors += 1,
        }
    }
    Ok(probe)
}

/// Encodes the record at `offset` and checks the answer is one JSON value.
fn encode_checked<F: RecordFormat>(data: &[u8], offset: usize, out: &mut Vec<u8>) -> Result<(), ()> {
    encode_record::<F>(data, offset, out).map_err(drop)?;
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(out) {
        panic!("{} answer is not valid JSON ({e}): {}", F::KIND, String::from_utf8_lossy(out));
    }
    Ok(())
}

/// The same for a database file (for tests).
#[cfg(test)]
pub(crate) fn probe_file(path: &std::path::Path) -> Result<Probe, String> {
    probe(&std::fs::read(path).map_err(|e| e.to_string())?)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn testdata(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/maxmind").join(name)
    }

    /// The fuzz seeds: every good test database opens, validates as the
    /// format it is, and answers lookups without errors.
    #[test]
    fn test_databases_probe_clean() {
        for (name, geo, asn) in [
            ("GeoIP2-City-Test.mmdb", true, true),
            ("GeoIP2-Country-Test.mmdb", true, true),
            ("GeoLite2-ASN-Test.mmdb", true, true),
            ("MaxMind-DB-test-ipv4-24.mmdb", true, true),
            ("MaxMind-DB-test-mixed-32.mmdb", true, true),
        ] {
            let probe = probe_file(&testdata(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(probe.valid, [geo, asn], "{name}");
            assert_eq!(probe.errors, 0, "{name}: {probe:?}");
        }
        let found = probe_file(&testdata("GeoIP2-City-Test.mmdb")).unwrap().found;
        assert!(found > 0, "81.2.69.160 and 2001:218:: are in the City test database");
    }

    /// A database whose metadata names more nodes than the file holds is
    /// refused when opened, not read past its end.
    #[test]
    fn invalid_node_count_is_refused() {
        assert!(probe_file(&testdata("GeoIP2-City-Test-Invalid-Node-Count.mmdb")).is_err());
    }
}
