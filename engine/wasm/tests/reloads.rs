//! A `wasm` stage rebuilt by a reload (`POST /v1/reload`, SIGHUP, a watched
//! path) from unchanged content must behave as the generation it replaces:
//! the same breaker state and counters, the same view of the record.

use std::path::Path;

use enrichd_engine::{parse_ndjson, Engine, Format, Outcome, Registry};
use serde_json::{json, Value};

/// A rule whose `enrichd_process` runs `body` (WAT instructions leaving
/// the status on the stack); `imports` and `data` go before it.
fn rule(imports: &str, data: &str, body: &str) -> String {
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 3)
  {data}
  (func (export "enrichd_abi_version") (result i32) (i32.const 65536))
  (func (export "enrichd_io") (result i32) (i32.const 0))
  (func (export "enrichd_process") (param $n i32) (result i32) {body}))"#
    )
}

/// An engine running an indicator stage, then the rule in `wat` as stage
/// "rule" with the entry options `extra`.
fn engine(dir: &Path, wat: &str, extra: &str) -> Engine {
    let path = dir.join("rule.wat");
    std::fs::write(&path, wat).unwrap();
    let toml = format!(
        "[[chain]]\nplugin = \"ti\"\npaths = [\"{ti}\"]\n\n[[chain]]\nplugin = \"wasm\"\nname = \"rule\"\nmodule = \"{m}\"\n{extra}\n",
        ti = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ti/indicators.txt"),
        m = path.display(),
    );
    let mut registry = Registry::new();
    enrichd_plugins::register_all(&mut registry);
    registry.register(Box::new(enrichd_wasm::WasmFactory));
    let config = enrichd_engine::Config::parse(&toml, &dir.join("c.toml")).unwrap();
    let chain = enrichd_engine::Chain::build(&config.chain, &registry, dir).unwrap();
    Engine::new(chain, registry)
}

/// Runs `lines` (NDJSON) through the engine's current chain.
fn run(engine: &Engine, lines: &str) -> Vec<Value> {
    let chain = engine.chain();
    let mut batch = parse_ndjson(lines.into(), Format::FlowsV1, chain.parse_spec(), 0).unwrap();
    chain.run(&mut batch);
    let mut out = Vec::new();
    batch.write_events_array(chain.keys(), &mut out);
    serde_json::from_slice(&out).unwrap()
}

fn report(engine: &Engine) -> Value {
    let r = engine.chain().reports().into_iter().find(|r| r.name == "rule").unwrap();
    serde_json::to_value(&r).unwrap()
}

fn reload_outcome(engine: &Engine) -> Outcome {
    engine.reload_all().stages.into_iter().find(|s| s.name == "rule").unwrap().outcome
}

const EVENT: &str = r#"{"src_ip":"45.149.3.7","dst_port":80}"#;

/// With `breaker_cooldown_s = 0` the breaker stays open "until the module
/// is replaced": reloading everything (here with nothing changed) is not
/// replacing it. Before, the rebuilt stage came with a closed breaker and
/// zeroed counters, reported `loaded` where the live one reported
/// `error`, and was swapped in as an improvement, calling the failing rule
/// again.
#[test]
fn a_reload_of_the_same_module_keeps_its_open_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let trapping = rule("", "", "(unreachable)");
    let engine = engine(dir.path(), &trapping, "breaker_failures = 1\nbreaker_cooldown_s = 0");
    assert_eq!(run(&engine, EVENT)[0]["reasons"], json!(["rule error: trap"]));
    let before = report(&engine);
    assert_eq!((before["state"].as_str(), before["details"]["circuit_open"].as_bool()), (Some("error"), Some(true)));

    assert_eq!(reload_outcome(&engine), Outcome::Unchanged);
    let after = report(&engine);
    assert_eq!(after["details"]["circuit_open"], true, "{after}");
    assert_eq!(after["details"]["errors"]["trap"], 1, "the counters are kept too: {after}");
    assert_eq!(run(&engine, EVENT)[0]["reasons"], json!(["rule error: circuit_open"]), "not called again");

    // Another module is a replacement: a fresh breaker, and it runs.
    let good = rule("", "", "(i32.store (i32.const 28672) (i32.const 0)) (i32.const 0)");
    std::fs::write(dir.path().join("rule.wat"), good).unwrap();
    assert_eq!(reload_outcome(&engine), Outcome::Reloaded);
    assert_eq!(report(&engine)["details"]["circuit_open"], false);
    assert_eq!(run(&engine, EVENT)[0]["reasons"], json!([]));
}
