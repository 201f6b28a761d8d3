//! Bench inputs shared by the examples that replay Zeek traffic through
//! the chain of `scripts/bench`: the RITA conn logs and that chain.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

#[allow(dead_code)]
#[path = "../../src/cli/zeek_tsv.rs"]
mod zeek_tsv;

/// The chain of `scripts/bench` (stage 3): full-size GeoLite2 2018 City and
/// ASN on both addresses when `../shared/testdata` has them (else the test
/// databases), the sample indicators, the WASM risk rule.
pub(crate) fn stage3_chain(repo: &Path) -> String {
    let shared = repo.join("../shared/testdata/mmdb/geolite2-2018-02");
    let (city, asn) = if shared.join("GeoLite2-City.mmdb").exists() {
        (shared.join("GeoLite2-City.mmdb"), shared.join("GeoLite2-ASN.mmdb"))
    } else {
        (repo.join("tests/data/maxmind/GeoIP2-City-Test.mmdb"), repo.join("tests/data/maxmind/GeoLite2-ASN-Test.mmdb"))
    };
    format!(
        "[[chain]]\nplugin = \"geoip\"\ndatabase = \"{}\"\ntargets = [{{ address = \"source\", output = \"src_geo\" }}, \
         {{ address = \"destination\", output = \"dst_geo\" }}]\n\
         [[chain]]\nplugin = \"asn\"\ndatabase = \"{}\"\ntargets = [{{ address = \"source\", output = \"src_asn\" }}, \
         {{ address = \"destination\", output = \"dst_asn\" }}]\n\
         [[chain]]\nplugin = \"ti\"\npaths = [\"{}\"]\n\
         [[chain]]\nplugin = \"wasm\"\nname = \"risk\"\nmodule = \"{}\"\n",
        city.display(),
        asn.display(),
        repo.join("ti/indicators.txt").display(),
        repo.join("rules/risk.wasm").display()
    )
}

/// The conn logs of the RITA sets `scripts/bench` reads from (all of them,
/// not only its `conn.0*` subset), as JSON texts.
pub(crate) fn zeek_records(repo: &Path) -> Vec<String> {
    let shared = repo.join("../shared/testdata/zeek/rita");
    let mut files: Vec<PathBuf> = ["missing_host-2024-04-20", "proxy_rolling"]
        .iter()
        .filter_map(|d| std::fs::read_dir(shared.join(d)).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("conn.") && name.ends_with(".log.gz")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        files.push(repo.join("tests/data/zeek/zat-conn.log"));
    }
    let mut records = Vec::new();
    for path in files {
        let file = std::fs::File::open(&path).unwrap();
        let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
        } else {
            Box::new(BufReader::new(file))
        };
        records.extend(zeek_tsv::ZeekTsvReader::new(reader).map(|r| r.expect("Zeek TSV row")));
    }
    records
}
