//! The embedded `ecs` output profile against the ECS field definitions
//! (`tests/data/ecs/fields.json`, extracted from Elastic's `@elastic/ecs`
//! package; see its ATTRIBUTION.md): real records enriched with the MaxMind
//! test databases, the sample indicators and the risk rule, every leaf the
//! profile writes checked for a known field and the JSON type of its ECS type.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;

use common::{data, repo, Server};
use serde_json::{json, Value};

/// The top-level keys the profile writes (the records below carry none).
const WRITTEN: [&str; 6] = ["source", "destination", "network", "threat", "event", "tags"];
/// The documented custom namespace (reasons have no ECS field).
const CUSTOM: &str = "enrichd";

fn chain() -> String {
    format!(
        r#"
[[chain]]
plugin = "geoip"
database = "{city}"
targets = [{{ address = "source", output = "g1" }}, {{ address = "destination", output = "g2" }}]

[[chain]]
plugin = "asn"
database = "{asn}"
targets = [{{ address = "source", output = "a1" }}, {{ address = "destination", output = "a2" }}]

[[chain]]
plugin = "ti"
paths = ["{ti}", "{zeek}"]

[[chain]]
plugin = "wasm"
name = "risk"
module = "{risk}"
"#,
        city = data("maxmind/GeoIP2-City-Test.mmdb"),
        asn = data("maxmind/GeoLite2-ASN-Test.mmdb"),
        ti = repo().join("ti/indicators.txt").display(),
        zeek = data("ti/zeek-doc-basic.intel.txt"),
        risk = repo().join("rules/risk.wasm").display(),
    )
}

fn records() -> Value {
    json!([
        {"src_ip": "81.2.69.160", "dst_ip": "1.128.0.1", "src_port": 50000, "dst_port": 443, "protocol": "tcp", "bytes": 10},
        {"src_ip": "45.149.3.5", "dst_ip": "2001:218::1", "dst_port": 3389, "protocol": "udp"},
        {"src_ip": "89.160.20.128", "dst_ip": "94.26.1.1", "protocol": "icmp"},
        {"dst_ip": "81.2.69.160"},
        {"src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "protocol": 47},
    ])
}

struct Ecs {
    fields: serde_json::Map<String, Value>,
    seen: BTreeSet<String>,
}

impl Ecs {
    fn load() -> Ecs {
        let text = std::fs::read_to_string(repo().join("tests/data/ecs/fields.json")).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        Ecs { fields: doc["fields"].as_object().unwrap().clone(), seen: BTreeSet::new() }
    }

    /// Checks `value` written at `path` (recursing through plain objects).
    fn check(&mut self, path: &str, value: &Value, rec: &Value) {
        let Some(def) = self.fields.get(path).cloned() else {
            let Value::Object(map) = value else { panic!("{path} is not an ECS field: {rec}") };
            assert!(!map.is_empty(), "{path}: empty object written: {rec}");
            for (k, v) in map {
                self.check(&format!("{path}.{k}"), v, rec);
            }
            return;
        };
        self.seen.insert(path.to_string());
        let ty = def["type"].as_str().unwrap();
        if ty == "nested" {
            let items = value.as_array().unwrap_or_else(|| panic!("{path} (nested) must be an array: {rec}"));
            assert!(!items.is_empty(), "{path}: empty: {rec}");
            for item in items {
                let map = item.as_object().unwrap_or_else(|| panic!("{path}[] must hold objects: {rec}"));
                for (k, v) in map {
                    self.check(&format!("{path}.{k}"), v, rec);
                }
            }
            return;
        }
        let values: Vec<&Value> = match value {
            Value::Array(items) if def["array"] == true => items.iter().collect(),
            v => vec![v],
        };
        for v in values {
            let ok = match ty {
                "keyword" => v.is_string(),
                "long" => v.is_i64() || v.is_u64(),
                "float" | "scaled_float" | "double" => v.is_number(),
                "ip" => v.as_str().is_some_and(|s| s.parse::<IpAddr>().is_ok()),
                "geo_point" => v.as_object().is_some_and(|o| {
                    o.len() == 2
                        && o["lat"].as_f64().is_some_and(|l| (-90.0..=90.0).contains(&l))
                        && o["lon"].as_f64().is_some_and(|l| (-180.0..=180.0).contains(&l))
                }),
                other => panic!("{path}: ECS type {other} not handled by this test"),
            };
            assert!(ok, "{path}: {v} is not a valid ECS {ty}: {rec}");
        }
    }
}

fn check_records(recs: &[Value], ecs: &mut Ecs) {
    for rec in recs {
        for key in WRITTEN {
            if let Some(v) = rec.get(key) {
                ecs.check(key, v, rec);
            }
        }
        if let Some(custom) = rec.get(CUSTOM) {
            let reasons = custom["reasons"].as_array().unwrap_or_else(|| panic!("{CUSTOM}.reasons: {rec}"));
            assert!(reasons.iter().all(Value::is_string), "{rec}");
            assert_eq!(custom.as_object().unwrap().len(), 1, "{rec}");
        }
        let allowed: BTreeSet<&str> = WRITTEN.iter().copied().chain([CUSTOM, "enrichment_warnings"]).collect();
        for key in rec.as_object().unwrap().keys() {
            let own = ["src_ip", "dst_ip", "src_port", "dst_port", "protocol", "bytes"].contains(&key.as_str());
            assert!(own || allowed.contains(key.as_str()), "unexpected key {key}: {rec}");
        }
    }
}

#[test]
fn ecs_profile_writes_valid_ecs_fields() {
    let s = Server::start(&format!("[profiles]\ndefault = \"ecs\"\n{}", chain()));
    let r = s.ingest("flows.v1", records());
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let recs = v["records"].as_array().unwrap();
    let mut ecs = Ecs::load();
    check_records(recs, &mut ecs);

    // The values, not only their types.
    assert_eq!(recs[0]["source"]["geo"]["city_name"], "London", "{}", recs[0]);
    assert_eq!(recs[0]["source"]["geo"]["country_iso_code"], "GB");
    assert!(recs[0]["source"]["geo"]["location"]["lat"].is_number());
    assert_eq!(recs[0]["destination"]["as"]["number"], 1221);
    assert_eq!(recs[0]["destination"]["as"]["organization"]["name"], "Telstra Pty Ltd");
    assert_eq!(recs[0]["source"]["ip"], "81.2.69.160");
    assert_eq!(recs[0]["source"]["port"], 50000);
    assert_eq!(recs[0]["network"], json!({"transport": "tcp", "iana_number": "6"}));
    assert!(recs[0].get("threat").is_none(), "no match, no threat: {}", recs[0]);
    let e = &recs[1]["threat"]["enrichments"][0];
    assert_eq!(e["indicator"]["name"], "45.149.3.0/24", "{}", recs[1]);
    assert_eq!(e["matched"], json!({"atomic": "45.149.3.5", "field": "src_ip"}));
    assert_eq!(recs[1]["destination"]["geo"]["country_iso_code"], "JP");
    assert!(recs[1]["event"]["risk_score"].as_f64().unwrap() > 0.0, "{}", recs[1]);
    assert!(!recs[1]["enrichd"]["reasons"].as_array().unwrap().is_empty(), "{}", recs[1]);
    assert_eq!(recs[2]["network"]["transport"], "icmp");
    assert_eq!(recs[3]["destination"]["geo"]["country_iso_code"], "GB");
    assert!(recs[3].get("source").is_none(), "no source address: nothing under source: {}", recs[3]);
    assert_eq!(recs[4]["network"], json!({"transport": "47", "iana_number": "47"}));

    // Every kind of field the profile writes came up at least once.
    for field in [
        "source.ip",
        "source.port",
        "destination.port",
        "source.geo.location",
        "source.geo.timezone",
        "source.as.number",
        "source.as.organization.name",
        "destination.geo.country_iso_code",
        "threat.enrichments",
        "threat.enrichments.indicator.name",
        "threat.enrichments.matched.atomic",
        "event.risk_score",
    ] {
        assert!(ecs.seen.contains(field), "{field} never written; seen: {:?}", ecs.seen);
    }

    // The same profile per request over the default chain (one address per event).
    let s = Server::start(&common::test_chain());
    let r = s.ingest_query("flows.v1", "profile=ecs", records());
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let recs = v["records"].as_array().unwrap();
    let mut ecs = Ecs::load();
    check_records(recs, &mut ecs);
    assert_eq!(recs[0]["destination"]["as"]["number"], 1221);
    assert!(recs[0]["source"].get("geo").is_none(), "the default chain looked up the destination: {}", recs[0]);
}

/// The profile's own file agrees with the subset shipped: every ECS path it
/// names (outside the custom namespace) is in `fields.json`.
#[test]
fn ecs_profile_names_only_known_fields() {
    let ecs = Ecs::load();
    let profiles = enrichd_engine::Profiles::embedded();
    let profile = profiles.get("ecs").unwrap().unwrap();
    for f in profile.fields() {
        if f.path.starts_with(&format!("{CUSTOM}.")) {
            continue;
        }
        let known =
            ecs.fields.contains_key(&f.path) || ecs.fields.keys().any(|k| k.starts_with(&format!("{}.", f.path)));
        assert!(known, "{} is not (under) a listed ECS field", f.path);
    }
}
