//! Declared texts (ABI 1.1): reasons and tags written by id come out as
//! the texts the module declared when it loaded, in the order written,
//! mixed with texts written out; a hostile table or id is a load error or a
//! malformed result, never a crash or a wrong text.

use std::path::Path;

use enrichd_engine::{parse_ndjson, Chain, Config, Format, Registry};
use serde_json::{json, Value};

/// Memory: the exchange area at 0, the texts `alpha` and `b"eta` at
/// 100,000, their table at 100,100 (and at 100,200 a table whose one text
/// lies far outside memory). Per event, by destination port:
/// 80 → reasons [id 1, text "x", id 0]; 81 → nine ids alternating 0, 1
/// (too many to pack); 82 → tag id 1 and reason id `id82`; 83 → ids
/// [1, 0]; 84 → ids [0, 1]; any other port → no reason. Every event gets score 42. Each call first scribbles
/// over the declared bytes: the host must keep the texts it read at load.
fn module(version: u32, texts_export: &str, id82: u32) -> String {
    format!(
        r#"(module
  (memory (export "memory") 2)
  (data (i32.const 100000) "alphab\"eta")
  (data (i32.const 100100) "\02\00\00\00" "\a0\86\01\00" "\05\00\00\00" "\a5\86\01\00" "\05\00\00\00")
  (data (i32.const 100200) "\01\00\00\00" "\00\ff\ff\ff" "\04\00\00\00")
  (func (export "enrichd_abi_version") (result i32) (i32.const {version}))
  (func (export "enrichd_io") (result i32) (i32.const 0))
  {texts_export}
  (func $byte (param $at i32) (param $ev i32) (param $kind i32) (param $b i32) (result i32)
    (i32.store16 (local.get $at) (local.get $ev))
    (i32.store8 offset=2 (local.get $at) (local.get $kind))
    (i32.store16 offset=3 (local.get $at) (i32.const 1))
    (i32.store8 offset=5 (local.get $at) (local.get $b))
    (i32.add (local.get $at) (i32.const 6)))
  (func (export "enrichd_process") (param $n i32) (result i32)
    (local $i i32) (local $at i32) (local $port i32) (local $k i32)
    (i32.store (i32.const 100000) (i32.const 0x5a5a5a5a))
    (local.set $at (i32.const 28680))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $port (i32.load16_u offset=98 (i32.mul (local.get $i) (i32.const 112))))
      (i32.store16 (local.get $at) (local.get $i))
      (i32.store8 offset=2 (local.get $at) (i32.const 1))
      (i32.store16 offset=3 (local.get $at) (i32.const 4))
      (i32.store offset=5 (local.get $at) (i32.const 42))
      (local.set $at (i32.add (local.get $at) (i32.const 9)))
      (if (i32.eq (local.get $port) (i32.const 80)) (then
        (local.set $at (call $byte (local.get $at) (local.get $i) (i32.const 5) (i32.const 1)))
        (local.set $at (call $byte (local.get $at) (local.get $i) (i32.const 2) (i32.const 0x78)))
        (local.set $at (call $byte (local.get $at) (local.get $i) (i32.const 5) (i32.const 0)))))
      (if (i32.eq (local.get $port) (i32.const 81)) (then
        (local.set $k (i32.const 0))
        (block $d (loop $l
          (br_if $d (i32.ge_u (local.get $k) (i32.const 9)))
          (local.set $at (call $byte (local.get $at) (local.get $i) (i32.const 5) (i32.and (local.get $k) (i32.const 1))))
          (local.set $k (i32.add (local.get $k) (i32.const 1)))
          (br $l)))))
      (if (i32.eq (local.get $port) (i32.const 82)) (then
        (local.set $at (call $byte (local.get $at) (local.get $i) (i32.const 6) (i32.const 1)))
        (local.set $at (call $byte (local.get $at) (local.get $i) (i32.const 5) (i32.const {id82})))))
      (if (i32.eq (local.get $port) (i32.const 83)) (then
        (local.set $at (call $byte (local.get $at) (local.get $i) (i32.const 5) (i32.const 1)))
        (local.set $at (call $byte (local.get $at) (local.get $i) (i32.const 5) (i32.const 0)))))
      (if (i32.eq (local.get $port) (i32.const 84)) (then
        (local.set $at (call $byte (local.get $at) (local.get $i) (i32.const 5) (i32.const 0)))
        (local.set $at (call $byte (local.get $at) (local.get $i) (i32.const 5) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i32.store (i32.const 28672) (i32.sub (local.get $at) (i32.const 28680)))
    (i32.const 0)))"#
    )
}

fn texts_at(table: u32) -> String {
    format!(r#"(func (export "enrichd_texts") (result i32) (i32.const {table}))"#)
}

const V1_1: u32 = 65537;

fn chain(dir: &Path, wat: &str) -> Result<Chain, String> {
    let path = dir.join("rule.wat");
    std::fs::write(&path, wat).unwrap();
    let toml = format!(
        "[[chain]]\nplugin = \"wasm\"\nname = \"rule\"\nmodule = \"{}\"\nfallback_score = 77\n",
        path.display()
    );
    let mut registry = Registry::new();
    registry.register(Box::new(enrichd_wasm::WasmFactory));
    let config = Config::parse(&toml, &dir.join("c.toml")).map_err(|e| e.to_string())?;
    Chain::build(&config.chain, &registry, dir).map_err(|e| format!("{e:#}"))
}

const PORTS: [u16; 6] = [80, 81, 82, 83, 84, 53];

/// 600 events cycling through [`PORTS`] (so lists change from event to
/// event and chunk to chunk).
fn run(chain: &Chain) -> Vec<Value> {
    let lines: Vec<String> =
        (0..600).map(|i| format!(r#"{{"src_ip":"10.0.0.1","dst_port":{}}}"#, PORTS[i % PORTS.len()])).collect();
    let mut batch = parse_ndjson(lines.join("\n"), Format::FlowsV1, chain.parse_spec(), 0).unwrap();
    chain.run(&mut batch);
    let mut out = Vec::new();
    batch.write_events_array(chain.keys(), &mut out);
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn reasons_and_tags_by_id_are_the_texts_declared_at_load_in_written_order() {
    let dir = tempfile::tempdir().unwrap();
    let chain = chain(dir.path(), &module(V1_1, &texts_at(100100), 0)).unwrap();
    let report = serde_json::to_value(chain.reports().into_iter().find(|r| r.name == "rule").unwrap()).unwrap();
    assert_eq!(report["details"]["declared_texts"], 2, "{report}");
    assert!(report["version"].as_str().unwrap().contains("ABI 1.1"), "{report}");
    // Twice: the second batch reads every list from the caches.
    for _ in 0..2 {
        for (i, ev) in run(&chain).iter().enumerate() {
            assert_eq!(ev["risk_score"], 42, "event {i}: {ev}");
            let (reasons, tags) = match PORTS[i % PORTS.len()] {
                80 => (json!(["b\"eta", "x", "alpha"]), None),
                81 => {
                    (json!(["alpha", "b\"eta", "alpha", "b\"eta", "alpha", "b\"eta", "alpha", "b\"eta", "alpha"]), None)
                }
                82 => (json!(["alpha"]), Some(json!(["b\"eta"]))),
                83 => (json!(["b\"eta", "alpha"]), None),
                84 => (json!(["alpha", "b\"eta"]), None),
                _ => (json!([]), None),
            };
            assert_eq!(ev["reasons"], reasons, "event {i}");
            assert_eq!(ev.get("tags"), tags.as_ref(), "event {i}");
        }
    }
}

#[test]
fn an_undeclared_id_is_a_malformed_result() {
    let dir = tempfile::tempdir().unwrap();
    // Id 2 of two texts; and any id from a module that declares none (1.1
    // without the export, or 1.0 even with it).
    for wat in [module(V1_1, &texts_at(100100), 2), module(V1_1, "", 0), module(65536, &texts_at(100100), 0)] {
        let chain = chain(dir.path(), &wat).unwrap();
        let events = run(&chain);
        assert!(
            events.iter().all(|e| e["risk_score"] == 77 && e["reasons"] == json!(["rule error: malformed_result"])),
            "{}",
            events[0]
        );
    }
}

#[test]
fn a_hostile_text_table_is_a_load_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // Outside memory (2 pages), a text outside memory, a wrong type.
        (texts_at(200_000), "enrichd_texts: the text table's count reads outside memory".to_string()),
        (texts_at(100_200), "enrichd_texts: declared text 0 lies outside memory (0xffffff00, 4 bytes)".to_string()),
        (
            r#"(func (export "enrichd_texts") (param i32) (result i32) (i32.const 0))"#.to_string(),
            "exports `enrichd_texts` as (i32) -> (i32), expected () -> (i32)".to_string(),
        ),
        // "alph" read as the count.
        (texts_at(100_000), format!("declares {} texts; at most 255", u32::from_le_bytes(*b"alph"))),
        // A trap while making the table.
        (r#"(func (export "enrichd_texts") (result i32) unreachable)"#.to_string(), "enrichd_texts failed".to_string()),
    ];
    for (export, want) in cases {
        let err = chain(dir.path(), &module(V1_1, &export, 0)).err().unwrap_or_default();
        assert!(err.contains(&want), "{want}: {err}");
    }
}

/// `count` declared texts, each the same 1,024 bytes of `\x01` (6 bytes of
/// JSON each: 6,146 per text as a JSON string). Each event gets
/// `dst_port` reasons, all id 0: 6-byte entries that expand a thousandfold.
fn expanding_module(count: u32) -> String {
    let text = "\\01".repeat(1024);
    let entries = "\"\\a0\\86\\01\\00\" \"\\00\\04\\00\\00\" ".repeat(count as usize);
    format!(
        r#"(module
  (memory (export "memory") 2)
  (data (i32.const 100000) "{text}")
  (data (i32.const 102000) "\{count:02x}\00\00\00" {entries})
  (func (export "enrichd_abi_version") (result i32) (i32.const {V1_1}))
  (func (export "enrichd_io") (result i32) (i32.const 0))
  (func (export "enrichd_texts") (result i32) (i32.const 102000))
  (func (export "enrichd_process") (param $n i32) (result i32)
    (local $i i32) (local $at i32) (local $k i32)
    (local.set $at (i32.const 28680))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $k (i32.load16_u offset=98 (i32.mul (local.get $i) (i32.const 112))))
      (block $d (loop $l
        (br_if $d (i32.eqz (local.get $k)))
        (i32.store16 (local.get $at) (local.get $i))
        (i32.store8 offset=2 (local.get $at) (i32.const 5))
        (i32.store16 offset=3 (local.get $at) (i32.const 1))
        (i32.store8 offset=5 (local.get $at) (i32.const 0))
        (local.set $at (i32.add (local.get $at) (i32.const 6)))
        (local.set $k (i32.sub (local.get $k) (i32.const 1)))
        (br $l)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i32.store (i32.const 28672) (i32.sub (local.get $at) (i32.const 28680)))
    (i32.const 0)))"#,
    )
}

/// `n` events to destination port `port`, run through `chain`: the events
/// and the size of their JSON.
fn run_port(chain: &Chain, n: usize, port: u16) -> (Vec<Value>, usize) {
    let lines: Vec<String> = (0..n).map(|_| format!(r#"{{"src_ip":"10.0.0.1","dst_port":{port}}}"#)).collect();
    let mut batch = parse_ndjson(lines.join("\n"), Format::FlowsV1, chain.parse_spec(), 0).unwrap();
    chain.run(&mut batch);
    let mut out = Vec::new();
    batch.write_events_array(chain.keys(), &mut out);
    (serde_json::from_slice(&out).unwrap(), out.len())
}

#[test]
fn declared_texts_are_bounded_in_all_and_in_what_one_call_makes_of_them() {
    let dir = tempfile::tempdir().unwrap();
    // 17 KiB of texts is refused at load; 16 KiB is the bound.
    let err = chain(dir.path(), &expanding_module(17)).err().unwrap_or_default();
    assert!(err.contains("declared text 16 brings the texts to 17408 bytes; at most 16384 in all"), "{err}");
    let chain16 = chain(dir.path(), &expanding_module(16)).unwrap();
    let text = "\u{1}".repeat(1024);
    let (events, _) = run_port(&chain16, 10, 1);
    assert!(events.iter().all(|e| e["reasons"] == json!([text])), "{}", events[0]);

    // Within the table's bound, a call that would expand past 1 MiB of
    // reasons (10 events x 32 ids x 6 KiB) is a malformed result, not
    // 2 MB of output...
    let chain1 = chain(dir.path(), &expanding_module(1)).unwrap();
    let (events, _) = run_port(&chain1, 10, 32);
    assert!(
        events.iter().all(|e| e["risk_score"] == 77 && e["reasons"] == json!(["rule error: malformed_result"])),
        "{}",
        events[0]
    );
    // ... and a batch of 600 such events (118 MB of reasons unbounded)
    // stays small, whatever the breaker makes of the failures.
    let (events, bytes) = run_port(&chain1, 600, 32);
    assert!(bytes < 200_000, "{bytes} bytes of events");
    assert!(events.iter().all(|e| e["risk_score"] == 77), "{}", events[0]);
    // Fewer are fine: 100 events x 1 id x 6 KiB (600 KiB) in one call.
    let (events, _) = run_port(&chain1, 100, 1);
    assert!(events.iter().all(|e| e["reasons"] == json!([text])), "{}", events[0]);
}
