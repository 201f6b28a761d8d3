//! Output layouts: the default v1.4 layout and the older stage-3 one from
//! `examples/stage3.toml` (the embedded `stage3` output profile), produced
//! by the same plugins and facts.

mod common;

use common::{data, repo, Server, KEY};
use serde_json::json;

#[test]
fn stage3_example_layout() {
    let city = data("maxmind/GeoIP2-City-Test.mmdb");
    let asn = data("maxmind/GeoLite2-ASN-Test.mmdb");
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_file(
        &repo().join("examples/stage3.toml"),
        &[("API_KEY", KEY), ("GEOIP_CITY_DB", &city), ("GEOIP_ASN_DB", &asn)],
        dir,
    );
    let r = s.ingest(
        "flows.v1",
        json!([
            {"src_ip": "81.2.69.160", "dst_ip": "1.128.0.1", "src_port": 1, "dst_port": 2, "protocol": "tcp"},
            {"src_ip": "45.149.3.5", "dst_ip": "2001:218::1"},
            {"dst_ip": "81.2.69.160"}
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let recs = v["records"].as_array().unwrap();
    for rec in recs {
        for key in ["geo", "asn", "ti"] {
            assert!(rec.get(key).is_none(), "no default-layout key {key}: {rec}");
        }
        for key in ["src_geo", "dst_geo", "src_asn", "dst_asn", "threat"] {
            assert!(rec.get(key).is_some(), "{key} missing: {rec}");
        }
    }
    assert_eq!(recs[0]["src_geo"]["city"], "London");
    assert_eq!(recs[0]["dst_asn"]["asn"], 1221);
    assert!(recs[0]["src_asn"].is_null());
    assert_eq!(recs[0]["threat"], json!({"matches": [], "matched": false}));
    assert_eq!(recs[1]["threat"]["matched"], true);
    assert_eq!(recs[1]["threat"]["matches"][0]["indicator"], "45.149.3.0/24");
    assert_eq!(recs[1]["dst_geo"]["country"], "JP");
    // No source address: src_* are null, the destination is still enriched.
    assert!(recs[2]["src_geo"].is_null());
    assert_eq!(recs[2]["dst_geo"]["country"], "GB");
    // The risk rule, as the stage-3 API had it: it reads the matches from
    // the facts the renamed `threat` output carries.
    for rec in recs {
        assert!(rec["risk_score"].is_u64(), "risk_score: {rec}");
        assert!(rec["reasons"].is_array(), "reasons: {rec}");
    }
    assert!(recs[1]["risk_score"].as_u64().unwrap() > recs[2]["risk_score"].as_u64().unwrap(), "{recs:?}");
    assert!(!recs[1]["reasons"].as_array().unwrap().is_empty(), "{}", recs[1]);

    // The same server in the v1 layout, per request: the chain's own keys.
    let r = s.ingest_query("flows.v1", "profile=v1", json!([{"src_ip": "45.149.3.5", "dst_ip": "1.128.0.1"}]));
    assert_eq!(r.status, 200, "{}", r.text);
    let rec = &r.json()["records"][0];
    for key in ["geo", "geo_src", "asn", "asn_src", "ti", "risk_score", "reasons"] {
        assert!(rec.get(key).is_some(), "{key} missing: {rec}");
    }
    assert!(rec.get("threat").is_none() && rec.get("src_geo").is_none(), "{rec}");
    let r = s.ingest_query("flows.v1", "profile=nope", json!([{"src_ip": "45.149.3.5"}]));
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("unknown output profile"), "{}", r.text);

    // Metrics find indicators and AS numbers by fact kind, whatever the
    // outputs are called.
    let r = s.ingest("flows.v1", json!([{"src_ip": "45.149.3.9", "dst_ip": "1.128.0.1", "dst_port": 3389}]));
    assert_eq!(r.status, 200, "{}", r.text);
    let m = s.metrics();
    let top = &m["top"]["5m"];
    assert_eq!(top["indicators"][0]["key"], "45.149.3.0/24", "{top}");
    assert_eq!(top["indicators"][0]["count"], 3, "{top}");
    let asns = top["asns"].as_array().unwrap();
    let telstra = asns.iter().find(|e| e["key"] == "1221").unwrap_or_else(|| panic!("AS 1221 listed: {top}"));
    assert_eq!(telstra["label"], "Telstra Pty Ltd", "{top}");
    let countries: Vec<&str> =
        top["dst_countries"].as_array().unwrap().iter().filter_map(|e| e["key"].as_str()).collect();
    assert!(countries.contains(&"JP") && countries.contains(&"GB"), "{top}");
    assert_eq!(m["totals"]["threat_matches"], 3, "{}", m["totals"]);
    assert!(m["totals"]["risk_count"].as_u64().unwrap() >= 4, "{}", m["totals"]);
}

#[test]
fn default_layout_prefers_destination_then_source() {
    let s = Server::start(&common::test_chain());
    let r = s.ingest("flows.v1", json!([{"src_ip": "81.2.69.160", "dst_ip": "1.128.0.1"}, {"src_ip": "81.2.69.160"}]));
    let v = r.json();
    // Destination 1.128.0.1 is not in the City test DB: geo is null (not the source's).
    assert!(v["records"][0]["geo"].is_null());
    assert_eq!(v["records"][0]["asn"]["asn"], 1221);
    assert_eq!(v["records"][1]["geo"]["city"], "London");
}

#[test]
fn stage3_profile_over_the_default_chain() {
    // The default chain looks up one address per event (destination, else
    // source): the stage-3 keys of the side it answered are written.
    let s = Server::start(&format!("[profiles]\ndefault = \"stage3\"\n{}", common::test_chain()));
    let r = s.ingest("flows.v1", json!([{"src_ip": "81.2.69.160", "dst_ip": "1.128.0.1"}, {"src_ip": "81.2.69.160"}]));
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let recs = v["records"].as_array().unwrap();
    assert_eq!(recs[0]["dst_asn"]["asn"], 1221, "{}", recs[0]);
    assert!(recs[0].get("src_asn").is_none() && recs[0].get("geo").is_none(), "{}", recs[0]);
    assert_eq!(recs[1]["src_geo"]["city"], "London", "{}", recs[1]);
    assert!(recs[1].get("dst_geo").is_none(), "{}", recs[1]);
    assert_eq!(recs[0]["threat"], json!({"matches": [], "matched": false}));
    // And back to v1 per request.
    let r = s.ingest_query("flows.v1", "profile=v1", json!([{"src_ip": "81.2.69.160"}]));
    assert_eq!(r.json()["records"][0]["geo"]["city"], "London");
}

/// `[profiles] key_profiles`: a collector's key picks its layout (keyed by
/// the key's SHA-256, never the key); `?profile=` still wins; other keys get
/// the default.
#[test]
fn each_api_key_can_have_its_own_profile() {
    use sha2::{Digest, Sha256};
    const ECS_KEY: &str = "ecs-collector-key-91c2";
    let digest: String = Sha256::digest(ECS_KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let config = format!(
        "[auth]\napi_keys = [\"{key}\", \"{ECS_KEY}\"]\n[profiles]\nkey_profiles = {{ \"{digest}\" = \"ecs\" }}\n{chain}",
        key = common::KEY,
        chain = common::test_chain()
    );
    let s = Server::start_with(&config, &[]);
    let body = json!({"collector_id": "c", "format": "flows.v1", "records": [{"src_ip": "81.2.69.160", "dst_ip": "1.128.0.1"}]});
    let with_key = |key: &str, query: &str| -> serde_json::Value {
        let mut response = ureq::post(&s.url(&format!("/v1/ingest{query}")))
            .header("Authorization", format!("Bearer {key}"))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .expect("ingest answers 200");
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
    };
    let ecs = with_key(ECS_KEY, "");
    assert_eq!(ecs["records"][0]["destination"]["as"]["number"], 1221, "{ecs}");
    assert!(ecs["records"][0].get("asn").is_none(), "{ecs}");
    let v1 = with_key(common::KEY, "");
    assert_eq!(v1["records"][0]["asn"]["asn"], 1221, "{v1}");
    assert!(v1["records"][0].get("destination").is_none(), "{v1}");
    let chosen = with_key(ECS_KEY, "?profile=v1");
    assert_eq!(chosen["records"][0]["asn"]["asn"], 1221, "{chosen}");
    // The key never appears in what the server shows of its settings.
    let text = s.get("/v1/enrichers").text + &s.get("/v1/metrics").text;
    assert!(!text.contains(ECS_KEY));
}

/// A malformed digest or an unknown profile in `key_profiles` stops start-up
/// (and `check-config`) with a message naming the setting.
#[test]
fn bad_key_profiles_are_refused_at_start() {
    for (entry, says) in
        [("\"abc\" = \"ecs\"", "not a SHA-256"), (&*format!("\"{}\" = \"nope\"", "0".repeat(64)), "nope")]
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, format!("[profiles]\nkey_profiles = {{ {entry} }}\n{}", common::test_chain())).unwrap();
        let out = common::bin().args(["check-config", "--config"]).arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("key_profiles") && err.contains(says), "{err}");
    }
}
