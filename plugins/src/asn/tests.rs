//! asn against MaxMind's GeoLite2-ASN test database and its source JSON.

use std::collections::BTreeSet;

use enrichd_engine::{Chain, Config, PluginFactory, PluginState, Registry};
use serde_json::{json, Value};

use crate::test_support::{chain, chain_err, data, event, oracle, run};

fn asn_chain(database: &str) -> Chain {
    chain(&format!("[[chain]]\nplugin = \"asn\"\ndatabase = \"tests/data/maxmind/{database}\"\n"))
        .expect("chain builds")
}

/// What the source data says asn must write for `record`.
fn expected_asn(record: &Value) -> Value {
    let number = record.get("autonomous_system_number").cloned().unwrap_or(Value::Null);
    let org = record.get("autonomous_system_organization").cloned().unwrap_or(Value::Null);
    if number.is_null() && org.is_null() {
        Value::Null
    } else {
        json!({"asn": number, "org": org})
    }
}

#[test]
fn asn_db_matches_source_data_for_every_network() {
    let (networks, probes) = oracle("GeoLite2-ASN-Test.json");
    assert_eq!(networks, 720);
    assert_eq!(probes.iter().map(|p| p.entry).collect::<BTreeSet<_>>().len(), networks, "every network probed");
    let without_org = probes.iter().filter(|p| expected_asn(&p.expected)["org"].is_null()).count();
    assert!(without_org > 0 && without_org < probes.len(), "both record shapes are covered");

    let chain = asn_chain("GeoLite2-ASN-Test.mmdb");
    let events = || probes.iter().map(|p| event(None, Some(&p.ip.to_string()))).collect();
    let first = run(&chain, events());
    let cached = run(&chain, events());
    let mut mismatches = Vec::new();
    for ((probe, (out, warnings)), (again, _)) in probes.iter().zip(&first).zip(&cached) {
        let want = expected_asn(&probe.expected);
        if out["asn"] != want || !warnings.is_empty() {
            mismatches.push(format!("{} ({}): got {} {warnings:?}, want {want}", probe.ip, probe.network, out["asn"]));
        }
        assert_eq!(out, again, "cached answer differs for {}", probe.ip);
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} probes differ:\n{}",
        mismatches.len(),
        probes.len(),
        mismatches.join("\n")
    );
}

/// Second opinion on the record reader: every network of the test DB
/// matches maxminddb's own serde decoding of its record.
#[test]
fn agrees_with_the_maxminddb_decoder_on_every_network() {
    let reader = maxminddb::Reader::open_readfile(data("GeoLite2-ASN-Test.mmdb")).unwrap();
    let mut probes = Vec::new();
    for found in reader.networks(Default::default()).unwrap() {
        let found = found.unwrap();
        let record: maxminddb::geoip2::Asn<'_> = found.decode().unwrap().unwrap();
        let want = json!({"asn": record.autonomous_system_number, "org": record.autonomous_system_organization});
        probes.push((found.network().unwrap().ip(), want));
    }
    assert!(probes.len() >= 400, "{} networks", probes.len()); // the writer merges adjacent ones
    let chain = asn_chain("GeoLite2-ASN-Test.mmdb");
    let events = probes.iter().map(|(ip, _)| event(None, Some(&ip.to_string()))).collect();
    for ((ip, want), (out, _)) in probes.iter().zip(run(&chain, events)) {
        assert_eq!(out["asn"], *want, "{ip}");
    }
}

#[test]
fn known_addresses() {
    let chain = asn_chain("GeoLite2-ASN-Test.mmdb");
    let out = run(
        &chain,
        vec![event(None, Some("1.128.0.1")), event(None, Some("81.2.69.160")), event(None, Some("2600:6000::1"))],
    );
    assert_eq!(out[0].0, json!({"asn": {"asn": 1221, "org": "Telstra Pty Ltd"}}));
    assert_eq!(out[1].0, json!({"asn": null}), "81.2.69.160 is not in the ASN test DB");
    assert_eq!(out[2].0["asn"], json!({"asn": 237, "org": "Merit Network Inc."}));
    let text = String::from_utf8(chain.enrich_address("1.128.0.1".parse().unwrap())).unwrap();
    assert_eq!(text, r#"{"asn":{"asn":1221,"org":"Telstra Pty Ltd"}}"#);
    assert_eq!(chain.lookup_ip("1.128.0.1".parse().unwrap())["asn"], json!({"asn": 1221, "org": "Telstra Pty Ltd"}));
}

#[test]
fn stage3_targets_and_a_geoip_asn_chain() {
    let chain = chain(
        r#"
[[chain]]
plugin = "geoip"
database = "tests/data/maxmind/GeoIP2-City-Test.mmdb"
targets = [{ address = "source", output = "src_geo" }, { address = "destination", output = "dst_geo" }]

[[chain]]
plugin = "asn"
database = "tests/data/maxmind/GeoLite2-ASN-Test.mmdb"
targets = [{ address = "source", output = "src_asn" }, { address = "destination", output = "dst_asn" }]
"#,
    )
    .unwrap();
    let out = run(&chain, vec![event(Some("81.2.69.160"), Some("1.128.0.1")), event(None, None)]);
    assert_eq!(chain.keys().iter().map(|k| &**k).collect::<Vec<_>>(), ["src_geo", "dst_geo", "src_asn", "dst_asn"]);
    assert_eq!(out[0].0["src_geo"]["city"], "London");
    assert_eq!(out[0].0["dst_geo"], Value::Null, "1.128.0.1 is not in the City test DB");
    assert_eq!(out[0].0["src_asn"], Value::Null);
    assert_eq!(out[0].0["dst_asn"]["asn"], 1221);
    assert_eq!(out[1].0, json!({"src_geo": null, "dst_geo": null, "src_asn": null, "dst_asn": null}));
}

#[test]
fn status_missing_and_errors() {
    let status = asn_chain("GeoLite2-ASN-Test.mmdb").reports()[0].status.clone();
    assert_eq!(status.state, PluginState::Loaded);
    assert!(status.version.as_deref().unwrap().starts_with("GeoLite2-ASN built 20"), "{:?}", status.version);
    assert!(status.sources[0].sha256.as_deref().unwrap().starts_with("75901b98ed6e58d3"));

    let missing = asn_chain("nope/GeoLite2-ASN.mmdb");
    let status = &missing.reports()[0].status;
    assert_eq!(status.state, PluginState::Missing);
    assert_eq!(status.sources[0].error.as_deref(), Some("file not found"));
    assert_eq!(run(&missing, vec![event(None, Some("1.128.0.1"))])[0].0, json!({"asn": null}));

    let build_err =
        |db: &str| chain_err(&format!("[[chain]]\nplugin = \"asn\"\ndatabase = \"tests/data/maxmind/{db}\"\n"));
    let err = build_err("GeoIP2-City-Test-Invalid-Node-Count.mmdb");
    assert!(err.contains("opening ASN database") && err.contains("GeoIP2-City-Test-Invalid-Node-Count.mmdb"), "{err}");
    let err = build_err("GeoIP2-City-Test.mmdb");
    assert!(err.contains("is a GeoIP2-City database; use plugin \"geoip\""), "{err}");
}

#[test]
fn env_override_and_schema() {
    let mut registry = Registry::new();
    registry.register(Box::new(super::AsnFactory));
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../enrichd.toml"));
    let mut config = Config::parse("[[chain]]\nplugin = \"asn\"\n", path).unwrap();
    let default = Chain::build(&config.chain, &registry, &config.base_dir).unwrap();
    assert!(default.reports()[0].status.sources[0].path.ends_with("geo/GeoLite2-ASN.mmdb"));
    let db = data("GeoLite2-ASN-Test.mmdb");
    config.apply_env(&registry, |var| (var == "GEOIP_ASN_DB").then(|| db.clone())).unwrap();
    let chain = Chain::build(&config.chain, &registry, &config.base_dir).unwrap();
    assert_eq!(chain.lookup_ip("1.128.0.1".parse().unwrap())["asn"]["asn"], 1221);

    let schema = serde_json::to_value(super::AsnFactory.options_schema()).unwrap();
    assert_eq!(schema["properties"]["database"]["default"], "geo/GeoLite2-ASN.mmdb");
    assert_eq!(
        schema["properties"]["targets"]["default"],
        json!([{"address": "destination_or_source", "output": "asn"}])
    );
    let err = chain_err("[[chain]]\nplugin = \"asn\"\ntargets = []\n");
    assert!(err.contains("`targets` is empty"), "{err}");
}

/// GeoIP and ASN stages leave typed facts (country, AS number) on the event
/// for later stages (rules, metrics), on the side each address came from.
#[test]
fn facts_for_later_stages() {
    let chain = chain(&format!(
        "[[chain]]\nplugin = \"geoip\"\ndatabase = \"{}\"\ntargets = [{{ address = \"source\", output = \"src_geo\" }}, {{ address = \"destination\", output = \"dst_geo\" }}]\n\n\
         [[chain]]\nplugin = \"asn\"\ndatabase = \"{}\"\n",
        data("GeoIP2-City-Test.mmdb"),
        data("GeoLite2-ASN-Test.mmdb")
    ))
    .unwrap();
    let mut batch = enrichd_engine::Batch::synthetic(
        enrichd_engine::Format::FlowsV1,
        vec![event(Some("81.2.69.160"), Some("1.128.0.1")), event(Some("2001:218::1"), None)],
    );
    chain.run(&mut batch);
    let fact = |e: &enrichd_engine::Event, name: &str| {
        let info = chain.fact_named(name).unwrap_or_else(|| panic!("{name} declared"));
        e.fact(info.id).map(|v| info.render_key(v))
    };
    let e = &batch.events()[0];
    assert_eq!(fact(e, "src_country_code").as_deref(), Some("GB"));
    assert_eq!(fact(e, "dst_country_code"), None, "1.128.0.1 is not in the City test DB");
    assert_eq!(fact(e, "dst_as_number").as_deref(), Some("1221"));
    assert_eq!(fact(e, "src_as_number"), None, "asn looks up the destination only by default");
    let e = &batch.events()[1];
    assert_eq!(fact(e, "src_country_code").as_deref(), Some("JP"));
    // Declared by kind and side, with the output key they are written under.
    let info = chain.fact_named("dst_as_number").unwrap();
    assert_eq!(
        (info.decl.kind, info.decl.side),
        (enrichd_engine::FactKind::AsNumber, Some(enrichd_engine::Side::Destination))
    );
    assert_eq!(&*chain.keys()[info.decl.output.unwrap().index()], "asn");
    let mut org = Vec::new();
    (info.decl.values.unwrap())(r#"{"asn":1221,"org":"Telstra"}"#, &mut |o| org.push(o.to_owned()));
    assert_eq!(org, ["Telstra"]);
}
