//! Throughput of the `geoip` + `asn` stages on full-size GeoLite2 databases.
//!
//! `cargo run --release -p enrichd-plugins --example mmdb_bench [DATA_DIR]`
//! where DATA_DIR holds `mmdb/geolite2-2018-02/` and `zeek/rita/` (default
//! `/work/shared/testdata`; not part of the repository). Measures the raw
//! tree walk, then the chain on uniformly random IPv4 and on replayed Zeek
//! conn.log traffic (both addresses of every event), then again with a `ti`
//! stage (FireHOL level 1) to see the whole chain.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use enrichd_engine::{Batch, Chain, Config, Event, Format, Registry};

const BATCH: usize = 10_000;

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "/work/shared/testdata".into()));
    let city = dir.join("mmdb/geolite2-2018-02/GeoLite2-City.mmdb");
    let asn = dir.join("mmdb/geolite2-2018-02/GeoLite2-ASN.mmdb");
    if !city.exists() || !asn.exists() {
        eprintln!("{} or {} not found; nothing to measure", city.display(), asn.display());
        return;
    }
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let random: Vec<(IpAddr, IpAddr)> = (0..1_000_000).map(|_| (random_v4(&mut rng), random_v4(&mut rng))).collect();

    // Raw tree walk (no decode), for scale.
    // SAFETY: benchmark input, not modified while mapped.
    let reader = unsafe { maxminddb::Reader::open_mmap(&city) }.expect("open City");
    let started = Instant::now();
    let mut found = 0usize;
    for (a, _) in &random {
        found += reader.lookup(*a).expect("lookup").has_data() as usize;
    }
    let walk = started.elapsed().as_nanos() as f64 / random.len() as f64;
    println!("City tree walk only, random IPv4: {walk:.0} ns/lookup ({found} of {} found)", random.len());

    // IPv4 from the random set, plus IPv6 from 2000::/4 (mostly allocated).
    let mut sample: Vec<IpAddr> = random[..200_000].iter().map(|&(a, _)| a).collect();
    sample.extend((0..50_000).map(|_| {
        let bits = (u128::from(xorshift(&mut rng)) << 64 | u128::from(xorshift(&mut rng))) >> 4;
        IpAddr::V6(Ipv6Addr::from(bits | 0x2000 << 112))
    }));
    verify(&city, &asn, &sample);
    let dbip = dir.join("mmdb/dbip-country-lite/dbip-country-ipv4.mmdb");
    if dbip.exists() {
        verify_flat(&dbip, &sample);
    }
    let mut registry = Registry::new();
    enrichd_plugins::register_all(&mut registry);
    let ti = Some(dir.join("ti/firehol-2021-04-14/firehol_level1.netset"))
        .filter(|p| p.exists() && registry.get("ti").is_some());
    let zeek = zeek_pairs(&dir.join("zeek/rita/missing_host-2024-04-20"));
    for ti in [None, ti.as_deref()] {
        let with = if ti.is_some() { " +ti" } else { "" };
        report(&format!("random IPv4{with}"), &build_chain(&city, &asn, ti), &random, 1);
        if !zeek.is_empty() {
            report(&format!("Zeek replay, first pass{with}"), &build_chain(&city, &asn, ti), &zeek, 1);
            report(&format!("Zeek replay, 10 passes{with}"), &build_chain(&city, &asn, ti), &zeek, 10);
        }
        if ti.is_none() && zeek.is_empty() {
            eprintln!("no Zeek conn logs found; skipping the replay");
        }
    }
}

/// geoip + asn on both addresses, plus ti on both addresses when `ti` (an
/// indicator list) is given.
fn build_chain(city: &Path, asn: &Path, ti: Option<&Path>) -> Chain {
    let mut toml = format!(
        r#"
[[chain]]
plugin = "geoip"
database = "{}"
targets = [{{ address = "source", output = "src_geo" }}, {{ address = "destination", output = "dst_geo" }}]

[[chain]]
plugin = "asn"
database = "{}"
targets = [{{ address = "source", output = "src_asn" }}, {{ address = "destination", output = "dst_asn" }}]
"#,
        city.display(),
        asn.display()
    );
    if let Some(ti) = ti {
        toml.push_str(&format!("\n[[chain]]\nplugin = \"ti\"\npaths = [\"{}\"]\n", ti.display()));
    }
    let config = Config::parse(&toml, Path::new("/bench.toml")).expect("config");
    let mut registry = Registry::new();
    enrichd_plugins::register_all(&mut registry);
    Chain::build(&config.chain, &registry, &config.base_dir).expect("chain")
}

/// Runs `pairs` through the chain `passes` times in batches and prints the
/// per-event and per-lookup cost of each stage.
fn report(label: &str, chain: &Chain, pairs: &[(IpAddr, IpAddr)], passes: usize) {
    let started = Instant::now();
    for _ in 0..passes {
        for chunk in pairs.chunks(BATCH) {
            let events = chunk
                .iter()
                .map(|&(s, d)| {
                    let mut e = Event::synthetic();
                    e.src_ip = Some(s);
                    e.dst_ip = Some(d);
                    e
                })
                .collect();
            let mut batch = Batch::synthetic(Format::FlowsV1, events);
            chain.run(&mut batch);
        }
    }
    let events = (pairs.len() * passes) as f64;
    let total = started.elapsed().as_secs_f64();
    let reports = chain.reports();
    let chain_ns: f64 = reports.iter().map(|r| r.mean_ns_per_event).sum();
    // Each stage looks at both addresses of an event.
    let stages: Vec<String> =
        reports.iter().map(|r| format!("{} {:.0} ns/event", r.name, r.mean_ns_per_event)).collect();
    println!(
        "{label}: {events} events; chain {:.2} M events/s ({:.2} M/s incl. building batches); {}",
        1e3 / chain_ns,
        events / total / 1e6,
        stages.join(", ")
    );
}

/// Cross-checks the plugins' record reading on real data: each answer must
/// equal one built from maxminddb's own serde decoding of the record.
fn verify(city: &Path, asn: &Path, ips: &[IpAddr]) {
    use maxminddb::geoip2;
    use serde_json::{json, Value};
    let chain = build_chain(city, asn, None);
    // SAFETY: benchmark input, not modified while mapped.
    let (city_db, asn_db) = unsafe { (maxminddb::Reader::open_mmap(city), maxminddb::Reader::open_mmap(asn)) };
    let (city_db, asn_db) = (city_db.expect("open City"), asn_db.expect("open ASN"));
    let mut mismatches = 0;
    let mut found = 0;
    for &ip in ips {
        let got = chain.lookup(enrichd_engine::LookupTarget::Ip(ip)).fields;
        found += usize::from(!got["geo"].is_null());
        let want_geo = match city_db.lookup(ip).unwrap().decode::<geoip2::City>().unwrap() {
            None => Value::Null,
            Some(c) => {
                let mut v = json!({"country": c.country.iso_code, "city": c.city.names.english,
                                   "lat": c.location.latitude, "lon": c.location.longitude});
                for (k, x) in [("continent", c.continent.code), ("timezone", c.location.time_zone)] {
                    if let Some(x) = x {
                        v[k] = x.into();
                    }
                }
                if let Some(r) = c.location.accuracy_radius {
                    v["accuracy_radius"] = r.into();
                }
                // A record with none of these (e.g. only `registered_country`)
                // is answered `null`, like an address not in the database.
                if v.as_object().unwrap().values().all(Value::is_null) {
                    v = Value::Null;
                }
                v
            }
        };
        let want_asn = match asn_db.lookup(ip).unwrap().decode::<geoip2::Asn>().unwrap() {
            None => Value::Null,
            Some(a) => json!({"asn": a.autonomous_system_number, "org": a.autonomous_system_organization}),
        };
        // `lookup` parses our JSON text back, and serde_json's default float
        // parsing may be 1 ULP off: put the expected values through the same.
        let reparse = |v: Value| serde_json::from_str::<Value>(&v.to_string()).expect("JSON");
        let (want_geo, want_asn) = (reparse(want_geo), reparse(want_asn));
        if got["geo"] != want_geo || got["asn"] != want_asn {
            mismatches += 1;
            if mismatches <= 5 {
                eprintln!("{ip}: got {} {}, want {want_geo} {want_asn}", got["geo"], got["asn"]);
            }
        }
    }
    println!(
        "verified {} addresses ({found} with a geo answer) against maxminddb's serde decoding: {mismatches} mismatches",
        ips.len()
    );
}

/// DB-IP's flat `{country_code}` layout in an IPv4-only tree: the country
/// must match the record, IPv6 must give `null`.
fn verify_flat(path: &Path, ips: &[IpAddr]) {
    let toml = format!("[[chain]]\nplugin = \"geoip\"\ndatabase = \"{}\"\n", path.display());
    let config = Config::parse(&toml, Path::new("/bench.toml")).expect("config");
    let mut registry = Registry::new();
    enrichd_plugins::register_all(&mut registry);
    let chain = Chain::build(&config.chain, &registry, &config.base_dir).expect("chain");
    let reader = maxminddb::Reader::open_readfile(path).expect("open DB-IP");
    let mut mismatches = 0;
    for &ip in ips {
        let got = chain.lookup(enrichd_engine::LookupTarget::Ip(ip)).fields["geo"]["country"].clone();
        let want = match ip {
            IpAddr::V6(_) => serde_json::Value::Null,
            IpAddr::V4(_) => {
                let record: Option<serde_json::Value> = reader.lookup(ip).unwrap().decode().unwrap();
                record.map_or(serde_json::Value::Null, |r| r["country_code"].clone())
            }
        };
        mismatches += usize::from(got != want);
    }
    println!("verified {} addresses against DB-IP's flat country_code: {mismatches} mismatches", ips.len());
}

fn random_v4(state: &mut u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from((xorshift(state) >> 32) as u32))
}

/// xorshift64*
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// `(id.orig_h, id.resp_h)` of every record of the gzipped Zeek TSV logs in `dir`.
fn zeek_pairs(dir: &Path) -> Vec<(IpAddr, IpAddr)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.to_string_lossy().ends_with(".log.gz")).collect();
    files.sort();
    let mut pairs = Vec::new();
    for file in files {
        let out = Command::new("gzip").arg("-dc").arg(&file).output().expect("gzip runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut cols = (0, 0);
        for line in text.lines() {
            if let Some(fields) = line.strip_prefix("#fields\t") {
                let names: Vec<&str> = fields.split('\t').collect();
                let at = |n: &str| names.iter().position(|&f| f == n).expect("field present");
                cols = (at("id.orig_h"), at("id.resp_h"));
            } else if !line.starts_with('#') {
                let f: Vec<&str> = line.split('\t').collect();
                if let (Some(Ok(a)), Some(Ok(b))) = (f.get(cols.0).map(|s| s.parse()), f.get(cols.1).map(|s| s.parse()))
                {
                    pairs.push((a, b));
                }
            }
        }
    }
    pairs
}
