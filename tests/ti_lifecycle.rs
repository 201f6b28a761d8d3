//! Threat-intel metadata, lifecycle and hit statistics end to end (issue
//! 14 §1 and §3): a real `enrichd` with a plain list (no metadata), a plain
//! list with feed defaults and a Zeek intel file with `meta.*` columns,
//! followed by the committed default risk rule and a rule reading the new
//! facts. Checks verdicts, match contents, expiry without a reload, decay,
//! `/v1/enrichers`, `/metrics` and `GET /v1/indicators/hits`.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{repo, Server};
use serde_json::{json, Value};

/// A rule appending, per event, the JSON of `field("ti_confidence")` and
/// of `field("ti_severity")` as reasons (when set).
const READ_FACTS: &str = r#"(module
  (import "enrichd_v1" "field" (func $field (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 100000) "ti_confidence")
  (data (i32.const 100032) "ti_severity")
  (func (export "enrichd_abi_version") (result i32) (i32.const 65536))
  (func (export "enrichd_io") (result i32) (i32.const 0))
  (func $one (param $i i32) (param $name i32) (param $name_len i32) (param $at i32) (result i32)
    (local $len i32)
    (local.set $len (call $field (local.get $i) (local.get $name) (local.get $name_len) (i32.const 110000) (i32.const 64)))
    (if (i32.and (i32.gt_s (local.get $len) (i32.const 0)) (i32.le_s (local.get $len) (i32.const 64)))
      (then
        (i32.store16 (local.get $at) (local.get $i))
        (i32.store8 (i32.add (local.get $at) (i32.const 2)) (i32.const 2))
        (i32.store16 (i32.add (local.get $at) (i32.const 3)) (local.get $len))
        (memory.copy (i32.add (local.get $at) (i32.const 5)) (i32.const 110000) (local.get $len))
        (local.set $at (i32.add (local.get $at) (i32.add (local.get $len) (i32.const 5))))))
    (local.get $at))
  (func (export "enrichd_process") (param $n i32) (result i32)
    (local $i i32) (local $at i32)
    (local.set $at (i32.const 28680))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $at (call $one (local.get $i) (i32.const 100000) (i32.const 13) (local.get $at)))
      (local.set $at (call $one (local.get $i) (i32.const 100032) (i32.const 11) (local.get $at)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (i32.store (i32.const 28672) (i32.sub (local.get $at) (i32.const 28680)))
    (i32.const 0)))"#;

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn record(s: &Server, dst: &str, query: Option<&str>) -> Value {
    common::enrich_one_flow(s, dst, query)
}

fn feed<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["details"]["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feed"] == name)
        .unwrap_or_else(|| panic!("{status}"))
}

#[test]
fn metadata_expiry_decay_and_hit_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("plain.txt"), "45.149.3.7\n").unwrap();
    std::fs::write(path("scanners.txt"), "203.0.113.9\n").unwrap();
    let expires = now() + 8;
    let day = 86_400;
    std::fs::write(
        path("intel.zeek"),
        format!(
            "#fields\tindicator\tindicator_type\tmeta.source\tmeta.desc\tmeta.confidence\tmeta.severity\tmeta.tags\tmeta.last_seen\tmeta.valid_until\n\
             198.51.100.7\tIntel::ADDR\tupstream-x\tc2 server\t90\thigh\tc2,botnet\t-\t{expires}\n\
             192.0.2.50\tIntel::ADDR\tupstream-x\t-\t60\tlow\t-\t{seen_1d}\t-\n\
             bad.example\tIntel::DOMAIN\tupstream-x\t-\t80\tmedium\t-\t{seen_10d}\t-\n",
            seen_1d = now() - day,
            seen_10d = now() - 10 * day,
        ),
    )
    .unwrap();
    let wat = path("read_facts.wat");
    std::fs::write(&wat, READ_FACTS).unwrap();
    let chain = format!(
        r#"
[[chain]]
plugin = "ti"
paths = ["{plain}", "{scanners}", "{intel}"]
api_indicators = false

[[chain.feeds]]
path = "{scanners}"
name = "scanners"
confidence = 50
severity = "low"
tags = ["scanner"]

[[chain.feeds]]
path = "{intel}"
name = "zeek-intel"
half_life_s = {half_life}
decay_floor = 20

[[chain]]
plugin = "wasm"
name = "risk"
module = "{risk}"
role = "rule"

[[chain]]
plugin = "wasm"
name = "reader"
module = "{wat}"
score_field = "reader_score"
reasons_field = "facts_seen"
"#,
        plain = path("plain.txt"),
        scanners = path("scanners.txt"),
        intel = path("intel.zeek"),
        half_life = 2 * day,
        risk = repo().join("rules/risk.wasm").display(),
    );
    let s = Server::start(&chain);

    // An indicator without metadata: the match and the default rule's
    // verdict are exactly what they were before metadata existed.
    let r = record(&s, "45.149.3.7", None);
    assert_eq!(
        r["ti"],
        json!({"matches": [{"indicator": "45.149.3.7", "type": "addr", "field": "dst_ip", "value": "45.149.3.7", "source": path("plain.txt")}]}),
        "{r}"
    );
    assert_eq!(
        (&r["risk_score"], &r["reasons"]),
        (&json!(70), &json!(["threat intel match (1 indicator) +60"])),
        "{r}"
    );
    assert_eq!(r["facts_seen"], json!([]), "no metadata, no metadata facts: {r}");
    let clean = record(&s, "8.8.8.8", None);
    assert_eq!((&clean["risk_score"], &clean["reasons"]), (&json!(10), &json!([])), "{clean}");

    // A plain list with its feed's defaults.
    let r = record(&s, "203.0.113.9", None);
    let m = &r["ti"]["matches"][0];
    assert_eq!(
        (&m["source"], &m["confidence"], &m["severity"], &m["tags"]),
        (&json!("scanners"), &json!(50), &json!("low"), &json!(["scanner"])),
        "{r}"
    );
    assert_eq!(r["risk_score"], 70, "the default rule does not weigh confidence: {r}");
    assert_eq!(r["facts_seen"], json!(["50", "\"low\""]), "rules read the facts: {r}");

    // Zeek meta.* columns.
    let r = record(&s, "198.51.100.7", None);
    let m = &r["ti"]["matches"][0];
    assert_eq!(
        (&m["source"], &m["feed"], &m["description"]),
        (&json!("zeek-intel"), &json!("upstream-x"), &json!("c2 server")),
        "{r}"
    );
    assert_eq!(
        (&m["confidence"], &m["severity"], &m["tags"]),
        (&json!(90), &json!("high"), &json!(["c2", "botnet"])),
        "{r}"
    );
    assert!(m["valid_until"].as_str().unwrap().ends_with('Z'), "{r}");
    assert_eq!(r["facts_seen"], json!(["90", "\"high\""]), "{r}");

    // Decay: seen a day ago with a two-day half-life: 60 * 2^-0.5 = 42.
    let r = record(&s, "192.0.2.50", None);
    assert_eq!(
        (&r["ti"]["matches"][0]["effective_confidence"], &r["ti"]["matches"][0]["confidence"]),
        (&json!(42), &json!(60)),
        "{r}"
    );
    assert_eq!(r["facts_seen"], json!(["42", "\"low\""]), "rules get the effective confidence: {r}");
    // Ten days: 80 * 2^-5 = 2.5, under the floor: no longer matches.
    let r = record(&s, "8.8.4.4", Some("www.bad.example"));
    assert_eq!((&r["ti"]["matches"], &r["risk_score"]), (&json!([]), &json!(10)), "{r}");

    // /v1/enrichers: live / expired / decayed per feed, with hits.
    let enrichers = s.get_auth("/v1/enrichers").json();
    let ti = enrichers["enrichers"].as_array().unwrap().iter().find(|e| e["name"] == "ti").unwrap().clone();
    let zeek = feed(&ti, "zeek-intel");
    assert_eq!(
        (&zeek["live"], &zeek["expired"], &zeek["decayed"], &zeek["hits"]),
        (&json!(2), &json!(0), &json!(1), &json!(2)),
        "{zeek}"
    );
    assert_eq!((&feed(&ti, "scanners")["live"], &feed(&ti, "scanners")["hits"]), (&json!(1), &json!(1)));

    // Hit statistics: per indicator and per feed, filtered, bounded.
    for _ in 0..3 {
        record(&s, "198.51.100.7", None);
    }
    let hits = s.get_auth("/v1/indicators/hits?feed=zeek-intel&top=1");
    assert_eq!(hits.status, 200, "{}", hits.text);
    let stage = &hits.json()["stages"][0];
    assert_eq!(stage["stage"], "ti");
    assert_eq!(stage["feeds"].as_array().unwrap().len(), 1, "{stage}");
    let top = &stage["indicators"];
    assert_eq!(top.as_array().unwrap().len(), 1, "{stage}");
    assert_eq!(
        (&top[0]["indicator"], &top[0]["hits"], &top[0]["distinct_sources"]),
        (&json!("198.51.100.7"), &json!(4), &json!(1)),
        "{stage}"
    );
    assert!(top[0]["last_hit"].is_string() && stage["feeds"][0]["last_hit"].is_string(), "{stage}");
    let all = s.get_auth("/v1/indicators/hits").json();
    assert_eq!(all["stages"][0]["indicators"].as_array().unwrap().len(), 4, "{all}");
    let bad = s.get_auth("/v1/indicators/hits?top=0");
    assert_eq!((bad.status, &bad.json()["error"]), (400, &json!("invalid_query")), "{}", bad.text);
    assert_eq!(s.get_auth("/v1/indicators/hits?nope=1").status, 400);
    assert_eq!(s.get("/v1/indicators/hits").status, 401, "read scope");

    // Prometheus: per-feed series, bounded labels.
    let metrics = s.get("/metrics").text;
    for line in [
        "telemetry_enricher_indicators{enricher=\"ti\",feed=\"zeek-intel\",state=\"decayed\"} 1.0",
        "telemetry_enricher_indicator_hits_total{enricher=\"ti\",feed=\"zeek-intel\"} 5.0",
        "telemetry_enricher_indicators{enricher=\"ti\",feed=\"scanners\",state=\"live\"} 1.0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing from:\n{metrics}");
    }
    assert!(metrics
        .contains("telemetry_enricher_indicator_last_hit_timestamp_seconds{enricher=\"ti\",feed=\"zeek-intel\"}"));

    // Expiry, without a reload: past valid_until the indicator stops.
    let generation = ti["generation"].clone();
    while now() <= expires {
        std::thread::sleep(Duration::from_millis(250));
    }
    let r = record(&s, "198.51.100.7", None);
    assert_eq!((&r["ti"]["matches"], &r["risk_score"]), (&json!([]), &json!(10)), "{r}");
    let enrichers = s.get_auth("/v1/enrichers").json();
    let ti = enrichers["enrichers"].as_array().unwrap().iter().find(|e| e["name"] == "ti").unwrap().clone();
    assert_eq!(ti["generation"], generation, "no reload happened");
    assert_eq!((&feed(&ti, "zeek-intel")["live"], &feed(&ti, "zeek-intel")["expired"]), (&json!(1), &json!(1)), "{ti}");
}
