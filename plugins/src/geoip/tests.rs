//! geoip against MaxMind's test databases and the JSON they were built from.

use std::collections::BTreeSet;

use enrichd_engine::{Chain, Config, PluginFactory, PluginState, Registry};
use serde_json::{json, Value};

use crate::test_support::{chain, chain_err, data, event, oracle, run, Probe};

fn geoip_chain(database: &str) -> Chain {
    chain(&format!("[[chain]]\nplugin = \"geoip\"\ndatabase = \"tests/data/maxmind/{database}\"\n"))
        .expect("chain builds")
}

/// What the source data says geoip must write for `record`, derived from
/// the JSON independently of the plugin's decoding.
fn expected_geo(record: &Value) -> Value {
    let at = |p: &str| record.pointer(p).cloned().unwrap_or(Value::Null);
    // The JSON writes whole degrees as integers (`37`); the database stores
    // doubles, written back as `37.0`. Compare them as doubles.
    let degrees = |p: &str| record.pointer(p).and_then(Value::as_f64).map_or(Value::Null, Value::from);
    let mut answer = json!({
        "country": at("/country/iso_code"),
        "city": at("/city/names/en"),
        "lat": degrees("/location/latitude"),
        "lon": degrees("/location/longitude"),
    });
    for (key, path) in [
        ("continent", "/continent/code"),
        ("timezone", "/location/time_zone"),
        ("accuracy_radius", "/location/accuracy_radius"),
    ] {
        if let Some(v) = record.pointer(path) {
            answer[key] = v.clone();
        }
    }
    if answer.as_object().unwrap().values().all(Value::is_null) {
        Value::Null
    } else {
        answer
    }
}

/// Runs every probe through `chain` (twice: the second pass is served from
/// the per-thread caches) and returns the mismatches.
fn check_probes(chain: &Chain, probes: &[Probe]) -> Vec<String> {
    let events = || probes.iter().map(|p| event(None, Some(&p.ip.to_string()))).collect();
    let first = run(chain, events());
    let second = run(chain, events());
    let mut mismatches = Vec::new();
    for ((probe, (out, warnings)), (again, _)) in probes.iter().zip(&first).zip(&second) {
        let want = expected_geo(&probe.expected);
        if out["geo"] != want || !warnings.is_empty() {
            mismatches.push(format!("{} ({}): got {} {warnings:?}, want {want}", probe.ip, probe.network, out["geo"]));
        }
        assert_eq!(out, again, "cached answer differs for {}", probe.ip);
    }
    mismatches
}

#[test]
fn city_db_matches_source_data_for_every_network() {
    let (networks, probes) = oracle("GeoIP2-City-Test.json");
    assert_eq!(networks, 251);
    let checked: BTreeSet<usize> = probes.iter().map(|p| p.entry).collect();
    assert_eq!(checked.len(), networks, "every listed network is probed");
    assert!(probes.iter().any(|p| p.ip.is_ipv4()) && probes.iter().any(|p| p.ip.is_ipv6()));
    // Guard against a vacuous oracle: the fields compared are really there.
    let with_city = probes.iter().filter(|p| expected_geo(&p.expected)["city"].is_string()).count();
    let with_radius = probes.iter().filter(|p| expected_geo(&p.expected)["accuracy_radius"].is_number()).count();
    assert!(with_city >= 50 && with_radius >= 500, "{with_city} {with_radius}");

    let mismatches = check_probes(&geoip_chain("GeoIP2-City-Test.mmdb"), &probes);
    assert!(
        mismatches.is_empty(),
        "{} of {} probes differ:\n{}",
        mismatches.len(),
        probes.len(),
        mismatches.join("\n")
    );
}

#[test]
fn country_db_matches_source_data_and_has_no_city() {
    let (networks, probes) = oracle("GeoIP2-Country-Test.json");
    assert_eq!(networks, 345);
    assert_eq!(probes.iter().map(|p| p.entry).collect::<BTreeSet<_>>().len(), networks);
    let chain = geoip_chain("GeoIP2-Country-Test.mmdb");
    let mismatches = check_probes(&chain, &probes);
    assert!(
        mismatches.is_empty(),
        "{} of {} probes differ:\n{}",
        mismatches.len(),
        probes.len(),
        mismatches.join("\n")
    );

    let out = run(&chain, vec![event(None, Some("81.2.69.160"))]);
    assert_eq!(out[0].0["geo"], json!({"country": "GB", "city": null, "lat": null, "lon": null, "continent": "EU"}));
}

/// Second opinion on the record reader: for every network in the test
/// databases, the answer matches one built from maxminddb's own serde
/// decoding of the record.
#[test]
fn agrees_with_the_maxminddb_decoder_on_every_network() {
    for (database, min_networks) in [("GeoIP2-City-Test.mmdb", 250), ("GeoIP2-Country-Test.mmdb", 300)] {
        let reader = maxminddb::Reader::open_readfile(data(database)).unwrap();
        let mut probes = Vec::new();
        for found in reader.networks(Default::default()).unwrap() {
            let found = found.unwrap();
            let record: maxminddb::geoip2::City<'_> = found.decode().unwrap().unwrap();
            let mut want = json!({
                "country": record.country.iso_code,
                "city": record.city.names.english,
                "lat": record.location.latitude,
                "lon": record.location.longitude,
            });
            if let Some(code) = record.continent.code {
                want["continent"] = code.into();
            }
            if let Some(zone) = record.location.time_zone {
                want["timezone"] = zone.into();
            }
            if let Some(radius) = record.location.accuracy_radius {
                want["accuracy_radius"] = radius.into();
            }
            if want.as_object().unwrap().values().all(Value::is_null) {
                want = Value::Null;
            }
            probes.push((found.network().unwrap().ip(), want));
        }
        assert!(probes.len() >= min_networks, "{database}: {} networks", probes.len());
        let chain = geoip_chain(database);
        let events = probes.iter().map(|(ip, _)| event(None, Some(&ip.to_string()))).collect();
        for ((ip, want), (out, _)) in probes.iter().zip(run(&chain, events)) {
            assert_eq!(out["geo"], *want, "{database} {ip}");
        }
    }
}

#[test]
fn known_addresses_ipv4_and_ipv6() {
    let chain = geoip_chain("GeoIP2-City-Test.mmdb");
    let out = run(&chain, vec![event(None, Some("81.2.69.160")), event(None, Some("2001:218::1"))]);
    let london = &out[0].0["geo"];
    assert_eq!((london["country"].as_str(), london["city"].as_str()), (Some("GB"), Some("London")));
    assert_eq!((london["lat"].as_f64(), london["lon"].as_f64()), (Some(51.5142), Some(-0.0931)));
    assert_eq!(london["timezone"], "Europe/London");
    let tokyo = &out[1].0["geo"];
    assert_eq!(
        *tokyo,
        json!({"country": "JP", "city": null, "lat": 35.68536, "lon": 139.75309, "continent": "AS",
               "timezone": "Asia/Tokyo", "accuracy_radius": 100})
    );
    // The four keys come first, in this order, whatever the record holds.
    let text = String::from_utf8(chain.enrich_address("81.2.69.160".parse().unwrap())).unwrap();
    assert!(text.starts_with(r#"{"geo":{"country":"GB","city":"London","lat":51.5142,"lon":-0.0931,"#), "{text}");
}

#[test]
fn absent_or_unknown_addresses_give_null() {
    let chain = geoip_chain("GeoIP2-City-Test.mmdb");
    let out = run(
        &chain,
        vec![
            event(None, None),
            event(None, Some("10.1.2.3")),
            event(None, Some("fe80::1")),
            event(Some("81.2.69.160"), None),
        ],
    );
    assert_eq!(out[0].0, json!({"geo": null}));
    assert_eq!(out[1].0, json!({"geo": null}));
    assert_eq!(out[2].0, json!({"geo": null}));
    // The default target falls back to the source address.
    assert_eq!(out[3].0["geo"]["city"], "London");
    assert!(out.iter().all(|(_, w)| w.is_empty()));
}

/// Layouts other than GeoIP2's, built by hand: DB-IP's flat fields, plain
/// name strings, float coordinates; and names that need JSON escaping.
#[test]
fn flat_layouts_and_escaping() {
    use crate::mmdb::{DataSection, RecordFormat};
    use crate::test_support::{mmdb_bytes, Mmdb, Mmdb::*};
    let encode = |record: Mmdb<'_>| {
        let bytes = mmdb_bytes(&record);
        let data = DataSection::new(&bytes);
        let mut out = Vec::new();
        super::Geo::encode(&data, data.record(0).unwrap().unwrap(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    // DB-IP Country Lite.
    assert_eq!(encode(Map(vec![("country_code", Str("AU"))])), r#"{"country":"AU","city":null,"lat":null,"lon":null}"#);
    // DB-IP City Lite style: a plain city name and `float` coordinates.
    let city = Map(vec![
        ("city", Str("Sydney")),
        ("country_code", Str("AU")),
        ("latitude", Float(-33.8678)),
        ("longitude", Float(151.2073)),
    ]);
    assert_eq!(encode(city), r#"{"country":"AU","city":"Sydney","lat":-33.8678,"lon":151.2073}"#);
    // Names where GeoIP2 has maps, codes beside them (IPinfo Lite).
    let named = Map(vec![
        ("continent", Str("Oceania")),
        ("continent_code", Str("OC")),
        ("country", Str("Australia")),
        ("country_code", Str("AU")),
    ]);
    assert_eq!(encode(named), r#"{"country":"AU","city":null,"lat":null,"lon":null,"continent":"OC"}"#);
    // GeoIP2 maps win over flat fields; names are escaped.
    let both = Map(vec![
        ("city", Map(vec![("names", Map(vec![("de", Str("x")), ("en", Str("Say \"hi\" \\ bye\n"))]))])),
        ("country", Map(vec![("iso_code", Str("GB"))])),
        ("country_code", Str("FR")),
        ("location", Map(vec![("accuracy_radius", U16(5)), ("latitude", Double(1.5)), ("longitude", Double(-2.0))])),
    ]);
    let text = encode(both);
    assert_eq!(text, r#"{"country":"GB","city":"Say \"hi\" \\ bye\n","lat":1.5,"lon":-2.0,"accuracy_radius":5}"#);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["city"], "Say \"hi\" \\ bye\n");
    // Nothing to report: null.
    assert_eq!(encode(Map(vec![("ip", Str("1.1.1.1")), ("country", U16(3))])), "null");
}

#[test]
fn stage3_targets_use_the_right_addresses() {
    let chain = chain(
        r#"
[[chain]]
plugin = "geoip"
database = "tests/data/maxmind/GeoIP2-City-Test.mmdb"
targets = [{ address = "source", output = "src_geo" }, { address = "destination", output = "dst_geo" }]
"#,
    )
    .unwrap();
    assert_eq!(chain.keys().iter().map(|k| &**k).collect::<Vec<_>>(), ["src_geo", "dst_geo"]);
    let out = run(
        &chain,
        vec![event(Some("81.2.69.160"), Some("2001:218::1")), event(Some("2001:218::1"), None), event(None, None)],
    );
    assert_eq!(out[0].0["src_geo"]["city"], "London");
    assert_eq!(out[0].0["dst_geo"]["country"], "JP");
    assert_eq!(out[1].0["src_geo"]["country"], "JP");
    assert_eq!(out[1].0["dst_geo"], Value::Null);
    assert_eq!(out[2].0, json!({"src_geo": null, "dst_geo": null}));
}

#[test]
fn loaded_status_describes_the_database() {
    let chain = geoip_chain("GeoIP2-City-Test.mmdb");
    let status = &chain.reports()[0].status;
    assert_eq!(status.state, PluginState::Loaded);
    let version = status.version.as_deref().unwrap();
    assert!(version.starts_with("GeoIP2-City built 20"), "{version}");
    let bytes = std::fs::read(data("GeoIP2-City-Test.mmdb")).unwrap();
    let source = &status.sources[0];
    assert!(source.path.ends_with("tests/data/maxmind/GeoIP2-City-Test.mmdb"));
    assert_eq!(source.size_bytes, Some(bytes.len() as u64));
    let sha = source.sha256.as_deref().unwrap();
    assert!(sha.starts_with("ed972738e4e03a3e"), "{sha}"); // sha256sum of the file
    assert_eq!(status.details["database_type"], "GeoIP2-City");
    assert_eq!(status.details["ip_version"], 6);
    assert!(status.details["languages"].as_array().unwrap().contains(&json!("en")));
}

/// The shared record cache: filled by one thread, answering another, and
/// off with `record_cache_mb = 0`; the answers are the same every way (and
/// the oracle tests above run through it with 8-slot per-thread tables).
#[test]
fn record_cache_is_shared_bounded_and_reported() {
    let (_, probes) = oracle("GeoIP2-City-Test.json");
    let events = || probes.iter().map(|p| event(None, Some(&p.ip.to_string()))).collect::<Vec<_>>();
    let db = "database = \"tests/data/maxmind/GeoIP2-City-Test.mmdb\"";
    let shared = chain(&format!("[[chain]]\nplugin = \"geoip\"\n{db}\n")).unwrap();
    let off = chain(&format!("[[chain]]\nplugin = \"geoip\"\n{db}\nrecord_cache_mb = 0\n")).unwrap();
    let filled = std::thread::scope(|s| s.spawn(|| run(&shared, events())).join().unwrap());
    let cache = shared.reports()[0].status.details["record_cache"].clone();
    assert!(cache["entries"].as_u64().unwrap() > 50, "{cache}");
    assert_eq!(cache["max_bytes"], 64 << 20);
    let other_thread = std::thread::scope(|s| s.spawn(|| run(&shared, events())).join().unwrap());
    assert_eq!(filled, other_thread);
    assert_eq!(shared.reports()[0].status.details["record_cache"]["entries"], cache["entries"]);
    assert_eq!(run(&off, events()), filled);
    let none = &off.reports()[0].status.details["record_cache"];
    assert_eq!((&none["entries"], &none["max_bytes"]), (&json!(0), &json!(0)));
}

#[test]
fn missing_file_reports_missing_and_writes_null() {
    let chain = geoip_chain("no-such.mmdb");
    let status = &chain.reports()[0].status;
    assert_eq!(status.state, PluginState::Missing);
    assert!(status.sources[0].path.ends_with("tests/data/maxmind/no-such.mmdb"));
    assert_eq!(status.sources[0].error.as_deref(), Some("file not found"));
    assert_eq!(status.error.as_deref(), Some("file not found"));
    let out = run(&chain, vec![event(Some("81.2.69.160"), Some("81.2.69.160"))]);
    assert_eq!(out[0].0, json!({"geo": null}));
    assert_eq!(chain.lookup_ip("81.2.69.160".parse().unwrap())["geo"], Value::Null);
}

#[test]
fn corrupt_file_fails_the_build_naming_the_file() {
    let err = geoip_chain_err("GeoIP2-City-Test-Invalid-Node-Count.mmdb");
    assert!(err.contains("opening GeoIP database"), "{err}");
    assert!(err.contains("tests/data/maxmind/GeoIP2-City-Test-Invalid-Node-Count.mmdb"), "{err}");
    // A directory is not a database either.
    let err = chain_err("[[chain]]\nplugin = \"geoip\"\ndatabase = \"tests/data/maxmind\"\n");
    assert!(err.contains("opening GeoIP database") && err.contains("tests/data/maxmind"), "{err}");
}

#[test]
fn asn_database_is_refused_with_a_hint() {
    let err = geoip_chain_err("GeoLite2-ASN-Test.mmdb");
    assert!(err.contains("is a GeoLite2-ASN database; use plugin \"asn\""), "{err}");
}

fn geoip_chain_err(database: &str) -> String {
    chain_err(&format!("[[chain]]\nplugin = \"geoip\"\ndatabase = \"tests/data/maxmind/{database}\"\n"))
}

/// MaxMind's database with a double of the wrong size used to load and
/// warn on every lookup of 2001:220::1; the sample decoded when it is
/// opened reaches that record, so it is now refused (issue 17, item 7).
#[test]
fn undecodable_record_is_refused_at_load() {
    let err = geoip_chain_err("GeoIP2-City-Test-Broken-Double-Format.mmdb");
    assert!(err.contains("corrupt data: ") && err.contains("malformed record data"), "{err}");
}

#[test]
fn ipv6_in_an_ipv4_only_database_is_null() {
    let chain = geoip_chain("MaxMind-DB-test-ipv4-24.mmdb");
    assert_eq!(chain.reports()[0].status.details["ip_version"], 4);
    let out = run(&chain, vec![event(None, Some("2001:db8::1")), event(None, Some("::ffff:1.1.1.1"))]);
    assert_eq!(out[0], (json!({"geo": null}), vec![]));
    // Found (1.1.1.1/32 exists) but the record has no geo fields: null too.
    assert_eq!(out[1], (json!({"geo": null}), vec![]));
    assert_eq!(chain.lookup_ip("2001:db8::1".parse().unwrap())["geo"], Value::Null);
}

#[test]
fn lookup_answers_under_geo() {
    let chain = geoip_chain("GeoIP2-City-Test.mmdb");
    let answer = chain.lookup_ip("81.2.69.160".parse().unwrap());
    assert_eq!(answer["geo"]["city"], "London");
    assert_eq!(answer["geo"]["country"], "GB");
}

#[test]
fn options_are_validated() {
    let err = chain_err("[[chain]]\nplugin = \"geoip\"\ndatbase = \"x.mmdb\"\n");
    assert!(err.contains("unknown field `datbase`"), "{err}");
    let bad_address = "[[chain]]\nplugin = \"geoip\"\ntargets = [{ address = \"src\", output = \"g\" }]\n";
    assert!(chain(bad_address).is_err());
    let dup = "[[chain]]\nplugin = \"geoip\"\ntargets = [{ address = \"source\", output = \"g\" }, { address = \"destination\", output = \"g\" }]\n";
    assert!(chain_err(dup).contains("used twice"));
}

#[test]
fn env_override_sets_the_database_and_default_path_is_relative() {
    let mut registry = Registry::new();
    registry.register(Box::new(super::GeoIpFactory));
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../enrichd.toml"));
    let mut config = Config::parse("[[chain]]\nplugin = \"geoip\"\n", path).unwrap();
    let default = Chain::build(&config.chain, &registry, &config.base_dir).unwrap();
    assert!(default.reports()[0].status.sources[0].path.ends_with("geo/GeoLite2-City.mmdb"));
    let db = data("GeoIP2-City-Test.mmdb");
    config.apply_env(&registry, |var| (var == "GEOIP_CITY_DB").then(|| db.clone())).unwrap();
    let chain = Chain::build(&config.chain, &registry, &config.base_dir).unwrap();
    assert_eq!(chain.reports()[0].status.state, PluginState::Loaded);
    assert_eq!(chain.lookup_ip("81.2.69.160".parse().unwrap())["geo"]["city"], "London");
}

#[test]
fn options_schema_documents_defaults() {
    let schema = serde_json::to_value(super::GeoIpFactory.options_schema()).unwrap();
    assert_eq!(schema["properties"]["database"]["default"], "geo/GeoLite2-City.mmdb", "{schema}");
    assert_eq!(
        schema["properties"]["targets"]["default"],
        json!([{"address": "destination_or_source", "output": "geo"}]),
        "{schema}"
    );
}

/// Issue 17, item 1: a database over `max_database_bytes` is refused before
/// it is copied to a snapshot (a sparse 1 GiB file costs nothing here).
#[test]
fn oversized_database_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let sparse = dir.path().join("huge.mmdb");
    std::fs::File::create(&sparse).unwrap().set_len(2 << 30).unwrap();
    let started = std::time::Instant::now();
    let err = chain_err(&format!("[[chain]]\nplugin = \"geoip\"\ndatabase = {:?}\n", sparse.display().to_string()));
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "refused by its size, not copied");
    assert!(err.contains("2147483648 bytes") && err.contains("max_database_bytes"), "{err}");
    // The option lowers the cap; a database under it loads.
    let db = data("GeoIP2-City-Test.mmdb");
    let err = chain_err(&format!("[[chain]]\nplugin = \"geoip\"\ndatabase = {db:?}\nmax_database_bytes = 1000\n"));
    assert!(err.contains("over the limit of 1000 bytes"), "{err}");
    chain(&format!("[[chain]]\nplugin = \"geoip\"\ndatabase = {db:?}\nmax_database_bytes = 100000000\n")).unwrap();
}

/// Issue 15: `max_age_days` / `stale`. MaxMind's test databases were built
/// long ago, so with `max_age_days = 1` they are stale: `warn` keeps
/// enriching and reports degraded, `tag` also marks each event, `stop`
/// writes `null`, answers lookups with `null` and reports `error`. The
/// build time is reported whatever the policy, for the age in the API.
#[test]
fn stale_databases_follow_the_policy() {
    let config = |policy: &str| {
        format!(
            "[[chain]]\nplugin = \"geoip\"\ndatabase = \"tests/data/maxmind/GeoIP2-City-Test.mmdb\"\n\
             max_age_days = 1\nstale = \"{policy}\"\n"
        )
    };
    let london = || vec![event(None, Some("81.2.69.160"))];
    let fresh = geoip_chain("GeoIP2-City-Test.mmdb");
    let report = &fresh.reports()[0];
    assert!(report.status.data_built_at.is_some_and(|t| t > 1_000_000_000), "{:?}", report.status.data_built_at);
    assert!(report.data_age_s.is_some_and(|a| a > 86_400));
    assert_eq!(report.status.error, None, "no policy by default");

    let warn = chain(&config("warn")).unwrap();
    let report = &warn.reports()[0];
    assert_eq!(report.status.state, PluginState::Loaded);
    let error = report.status.error.clone().unwrap();
    assert!(error.contains("days old, over max_age_days = 1"), "{error}");
    let (out, warnings) = &run(&warn, london())[0];
    assert_eq!(out["geo"]["city"], "London");
    assert!(warnings.is_empty(), "{warnings:?}");

    let tag = chain(&config("tag")).unwrap();
    let (out, warnings) = &run(&tag, london())[0];
    assert_eq!(out["geo"]["city"], "London");
    assert!(warnings.iter().any(|w| w.contains("geoip: stale database")), "{warnings:?}");

    let stop = chain(&config("stop")).unwrap();
    let report = &stop.reports()[0];
    assert_eq!(report.status.state, PluginState::Error);
    assert!(report.status.error.as_deref().unwrap().contains("not enriching"), "{:?}", report.status.error);
    let (out, _) = &run(&stop, london())[0];
    assert_eq!(out["geo"], Value::Null);
    assert_eq!(stop.lookup_ip("81.2.69.160".parse().unwrap())["geo"], Value::Null);

    let err = chain_err(&config("never"));
    assert!(err.contains("unknown variant"), "{err}");
}

/// A crafted database whose record encodes to more than 8 KiB
/// (`MAX_ANSWER_BYTES` in `mmdb/cache.rs`; the reader's own bound on one
/// string is 16 KiB): the database loads, that answer is refused like a
/// malformed record (`null` and a warning) every time it is asked for, so
/// it never went into a cache, and the other network still answers. A
/// record just under the cap answers.
#[test]
fn answers_over_8_kib_are_refused_before_the_caches() {
    use crate::test_support::{mmdb_file, Mmdb, Mmdb::*};
    fn city<'a>(name: &'a str, country: &'a str) -> Mmdb<'a> {
        Map(vec![
            ("city", Map(vec![("names", Map(vec![("en", Str(name))]))])),
            ("country", Map(vec![("iso_code", Str(country))])),
        ])
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crafted.mmdb");
    let config = format!("[[chain]]\nplugin = \"geoip\"\ndatabase = {:?}\n", path.display().to_string());
    // 0.0.0.0/1 has the crafted record, 128.0.0.0/1 an ordinary one.
    let events = || vec![event(Some("1.2.3.4"), None), event(Some("200.1.1.1"), None), event(Some("1.2.3.5"), None)];

    let long = "x".repeat(9 << 10);
    std::fs::write(&path, mmdb_file("GeoIP2-City", &city(&long, "GB"), &city("Paris", "FR"))).unwrap();
    let chain = chain(&config).unwrap();
    assert_eq!(chain.reports()[0].status.state, PluginState::Loaded);
    assert_eq!(chain.reports()[0].status.error, None);
    for pass in 0..2 {
        let out = run(&chain, events());
        for (i, ip) in [(0, "1.2.3.4"), (2, "1.2.3.5")] {
            let (answer, warnings) = &out[i];
            assert_eq!(answer["geo"], Value::Null, "pass {pass}");
            assert!(
                warnings.len() == 1 && warnings[0].contains(&format!("lookup of {ip} failed: malformed record data")),
                "pass {pass}: {warnings:?}"
            );
            assert!(warnings[0].len() < 200, "the answer is not quoted: {warnings:?}");
        }
        assert_eq!(out[1].0["geo"], json!({"country": "FR", "city": "Paris", "lat": null, "lon": null}));
        assert!(out[1].1.is_empty());
    }

    // Just under the cap: answered.
    let long = "y".repeat(8_100);
    std::fs::write(&path, mmdb_file("GeoIP2-City", &city(&long, "GB"), &city("Paris", "FR"))).unwrap();
    let out = run(&crate::test_support::chain(&config).unwrap(), events());
    assert_eq!(out[0].0["geo"]["city"].as_str().map(str::len), Some(8_100));
    assert!(out[0].1.is_empty(), "{:?}", out[0].1);
}
