//! The plugin contract's facts end to end: a plugin that declares a new
//! fact (`asn_class`, registered with one line in src/app.rs) shows up in
//! `/v1/schema`, in `/v1/metrics` top lists and is readable by a rule
//! through the `field` import, under renamed outputs.

mod common;

use common::{data, Server};
use serde_json::Value;

/// A rule that, for every event, appends the JSON of `field("asn_class")`
/// (when present) as a reason.
const READ_CLASS: &str = r#"(module
  (import "enrichd_v1" "field" (func $field (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 100000) "asn_class")
  (func (export "enrichd_abi_version") (result i32) (i32.const 65536))
  (func (export "enrichd_io") (result i32) (i32.const 0))
  (func (export "enrichd_process") (param $n i32) (result i32)
    (local $i i32) (local $len i32) (local $at i32)
    (local.set $at (i32.const 28680))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $len (call $field (local.get $i) (i32.const 100000) (i32.const 9) (i32.const 110000) (i32.const 64)))
      (if (i32.and (i32.gt_s (local.get $len) (i32.const 0)) (i32.le_s (local.get $len) (i32.const 64)))
        (then
          (i32.store16 (local.get $at) (local.get $i))
          (i32.store8 (i32.add (local.get $at) (i32.const 2)) (i32.const 2))
          (i32.store16 (i32.add (local.get $at) (i32.const 3)) (local.get $len))
          (memory.copy (i32.add (local.get $at) (i32.const 5)) (i32.const 110000) (local.get $len))
          (local.set $at (i32.add (local.get $at) (i32.add (local.get $len) (i32.const 5))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    (i32.store (i32.const 28672) (i32.sub (local.get $at) (i32.const 28680)))
    (i32.const 0)))"#;

#[test]
fn a_new_fact_reaches_schema_metrics_and_rules() {
    let dir = tempfile::tempdir().unwrap();
    let wat = dir.path().join("read_class.wat");
    std::fs::write(&wat, READ_CLASS).unwrap();
    let chain = format!(
        "[[chain]]\nplugin = \"asn\"\ndatabase = \"{asn}\"\ntargets = [{{ address = \"destination\", output = \"net_owner\" }}]\n\n\
         [[chain]]\nplugin = \"asn_class\"\noutput = \"network_type\"\n\n\
         [[chain]]\nplugin = \"wasm\"\nname = \"reader\"\nmodule = \"{wat}\"\nscore_field = \"s\"\nreasons_field = \"class_seen\"\n",
        asn = data("maxmind/GeoLite2-ASN-Test.mmdb"),
        wat = wat.display(),
    );
    let s = Server::start(&chain);

    // /v1/schema: the new output, described by its plugin, under its key.
    let schema = s.get("/v1/schema/enriched.v1.schema.json").json();
    let record = &schema["$defs"]["EnrichedRecord"]["properties"];
    let class = &record["network_type"];
    assert!(class["enum"].as_array().unwrap().contains(&Value::from("hosting")), "{record}");
    assert_eq!(class["x-enrichd-facts"][0]["name"], "asn_class", "{record}");
    assert_eq!(class["x-enrichd-facts"][0]["kind"], "label", "{record}");
    assert_eq!(record["net_owner"]["x-enrichd-facts"][0]["kind"], "as_number", "{record}");

    let r = s.ingest(
        "flows.v1",
        serde_json::json!([
            {"src_ip": "10.0.0.1", "dst_ip": "1.128.0.1"},
            {"src_ip": "10.0.0.2", "dst_ip": "1.128.0.2"},
            {"src_ip": "10.0.0.3", "dst_ip": "10.9.9.9"}
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let recs = r.json()["records"].as_array().unwrap().clone();
    assert_eq!(recs[0]["network_type"], "isp", "{}", recs[0]);
    assert_eq!(recs[0]["net_owner"]["org"], "Telstra Pty Ltd");
    assert!(recs[2]["network_type"].is_null());
    // The rule read it by the fact's name, not by the renamed output key.
    assert_eq!(recs[0]["class_seen"], serde_json::json!(["\"isp\""]), "{}", recs[0]);
    assert_eq!(recs[2]["class_seen"], serde_json::json!([]), "{}", recs[2]);

    // /v1/metrics: a generic top list for the fact, by its name.
    let m = s.metrics();
    let top = &m["top"]["5m"]["facts"]["asn_class"];
    assert_eq!(top[0]["key"], "isp", "{}", m["top"]);
    assert_eq!(top[0]["count"], 2, "{}", m["top"]);
    // And the AS list still gets its label from the renamed output.
    assert_eq!(m["top"]["5m"]["asns"][0]["label"], "Telstra Pty Ltd", "{}", m["top"]);
}
