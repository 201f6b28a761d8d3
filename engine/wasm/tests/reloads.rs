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
    engine_then(dir, wat, extra, "")
}

/// [`engine`], with the chain entries `after` after the rule.
fn engine_then(dir: &Path, wat: &str, extra: &str, after: &str) -> Engine {
    std::fs::write(dir.join("rule.wat"), wat).unwrap();
    let mut registry = Registry::new();
    enrichd_plugins::register_all(&mut registry);
    registry.register(Box::new(enrichd_wasm::WasmFactory));
    let chain = enrichd_engine::Chain::build(&entries(dir, extra, after), &registry, dir).unwrap();
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

    // The same module with other options (a `config` value fixed, say) is
    // a different rule as far as its failures go: the breaker closes.
    let toml = format!(
        "[[chain]]\nplugin = \"ti\"\npaths = [\"{ti}\"]\n\n[[chain]]\nplugin = \"wasm\"\nname = \"rule\"\nmodule = \"{m}\"\n\
         breaker_failures = 1\nbreaker_cooldown_s = 0\nconfig = {{ fixed = \"yes\" }}\n",
        ti = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ti/indicators.txt"),
        m = dir.path().join("rule.wat").display(),
    );
    let config = enrichd_engine::Config::parse(&toml, &dir.path().join("c.toml")).unwrap();
    let applied = engine.apply_entries(&config.chain).unwrap();
    let rule_stage = applied.stages.iter().find(|s| s.name == "rule").unwrap();
    assert_eq!(rule_stage.outcome, Outcome::Reloaded);
    assert_eq!(report(&engine)["details"]["circuit_open"], false, "{}", report(&engine));
    assert_eq!(run(&engine, EVENT)[0]["reasons"], json!(["rule error: trap"]), "called again");

    // Another module is a replacement: a fresh breaker, and it runs.
    let good = rule("", "", "(i32.store (i32.const 28672) (i32.const 0)) (i32.const 0)");
    std::fs::write(dir.path().join("rule.wat"), good).unwrap();
    assert_eq!(reload_outcome(&engine), Outcome::Reloaded);
    assert_eq!(report(&engine)["details"]["circuit_open"], false);
    assert_eq!(run(&engine, EVENT)[0]["reasons"], json!([]));
}

/// A rule tagging event 0 with the JSON `field` gives for `tags` (a key
/// this rule itself writes) and `later` (one a later stage writes): at the
/// rule's turn neither is written yet, so both come from the raw record.
const ECHO: &str = r#"
  (func $tag (param $key i32) (param $klen i32) (param $at i32) (result i32) (local $n i32)
    (local.set $n (call $field (i32.const 0) (local.get $key) (local.get $klen) (i32.add (local.get $at) (i32.const 5)) (i32.const 100)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i32.const 0))))
    (i32.store16 (local.get $at) (i32.const 0))
    (i32.store8 offset=2 (local.get $at) (i32.const 3))
    (i32.store16 offset=3 (local.get $at) (local.get $n))
    (i32.add (local.get $n) (i32.const 5)))"#;

/// Before, a rebuilt stage's `field` read the whole, append-only key table
/// (its own keys and later stages' included, unlike at its first build):
/// after a reload both lookups found a key not yet written and answered
/// "absent" instead of the record's value.
#[test]
fn field_reads_the_same_keys_after_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let field = r#"(import "enrichd_v1" "field" (func $field (param i32 i32 i32 i32 i32) (result i32)))"#;
    let data = format!(r#"(data (i32.const 100000) "tags") (data (i32.const 100016) "later") {ECHO}"#);
    let body = "(local $len i32)
        (local.set $len (call $tag (i32.const 100000) (i32.const 4) (i32.const 28680)))
        (local.set $len (i32.add (local.get $len) (call $tag (i32.const 100016) (i32.const 5) (i32.add (i32.const 28680) (local.get $len)))))
        (i32.store (i32.const 28672) (local.get $len))
        (i32.const 0)";
    let echo = rule(field, &data, body);
    let later = dir.path().join("later.wat");
    std::fs::write(&later, rule("", "", "(i32.store (i32.const 28672) (i32.const 0)) (i32.const 0)")).unwrap();
    let after = format!(
        "[[chain]]\nplugin = \"wasm\"\nname = \"later\"\nmodule = \"{}\"\nrole = \"enricher\"\nfields = [\"later\"]\n",
        later.display()
    );
    let engine = engine_then(dir.path(), &echo, "", &after);
    let event = r#"{"src_ip":"45.149.3.7","dst_port":80,"tags":["client"],"later":"raw"}"#;
    let expected = json!(["[\"client\"]", "\"raw\""]);
    assert_eq!(run(&engine, event)[0]["tags"], expected, "at the first build");

    // Other bytes, same behaviour: the rebuilt stage is swapped in.
    std::fs::write(dir.path().join("rule.wat"), format!("{echo}\n;; edited\n")).unwrap();
    assert_eq!(reload_outcome(&engine), Outcome::Reloaded);
    assert_eq!(run(&engine, event)[0]["tags"], expected, "after a reload");
}

/// The `ti` + `rule` (`rule.wat`) entries with the rule's options `extra`
/// and the entries `after`, as the configuration file gives them.
fn entries(dir: &Path, extra: &str, after: &str) -> Vec<enrichd_engine::ChainEntryConfig> {
    let toml = format!(
        "[[chain]]\nplugin = \"ti\"\npaths = [\"{ti}\"]\n\n[[chain]]\nplugin = \"wasm\"\nname = \"rule\"\nmodule = \"{m}\"\n{extra}\n{after}\n",
        ti = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ti/indicators.txt"),
        m = dir.join("rule.wat").display(),
    );
    enrichd_engine::Config::parse(&toml, &dir.join("c.toml")).unwrap().chain
}

/// The SHA-256 of the shadow the live stage runs (null: none).
fn shadow_sha(engine: &Engine) -> Value {
    report(engine)["details"]["shadow"]["sha256"].clone()
}

/// A refused reload changes nothing live, and the shadow is live state.
/// Before, building the stage installed its `shadow_module` (or removed
/// the configured one) in the cell the live generation shares, whether or
/// not the build then went live: a configuration refused for another
/// entry, or a rebuild refused by keep-last-good, still started or stopped
/// a shadow rule.
#[test]
fn a_refused_reload_leaves_the_live_shadow_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let body = "(i32.store (i32.const 28672) (i32.const 0)) (i32.const 0)";
    let (a, b) = (d.join("a.wat"), d.join("b.wat"));
    std::fs::write(&a, format!("{}\n;; a\n", rule("", "", body))).unwrap();
    std::fs::write(&b, format!("{}\n;; b\n", rule("", "", body))).unwrap();
    let with_a = format!("shadow_module = \"{}\"", a.display());
    let with_b = format!("shadow_module = \"{}\"", b.display());
    let engine = engine(d, &rule("", "", body), &with_a);
    let live_a = shadow_sha(&engine);
    assert!(live_a.is_string(), "the configured shadow runs from the start: {}", report(&engine));

    // A configuration whose chain does not build (a later entry is wrong):
    // neither a new shadow nor the removal of this one.
    let broken = "[[chain]]\nplugin = \"no_such_plugin\"\n";
    assert!(engine.prepare_entries(&entries(d, &with_b, broken)).is_err());
    assert_eq!(shadow_sha(&engine), live_a, "a refused file started its shadow");
    assert!(engine.prepare_entries(&entries(d, "", broken)).is_err());
    assert_eq!(shadow_sha(&engine), live_a, "a refused file stopped the shadow");

    // Built, then refused by what comes after the chain (an output or a
    // source): the prepared chain is dropped without going live.
    drop(engine.prepare_entries(&entries(d, &with_b, "")).unwrap());
    drop(engine.prepare_entries(&entries(d, "", "")).unwrap());
    assert_eq!(shadow_sha(&engine), live_a, "a prepared, never committed chain changed the shadow");

    // A rebuild refused by keep-last-good (the live module vanished) while
    // the shadow file changed: the shadow stays the one loaded.
    std::fs::write(&a, format!("{}\n;; a, edited\n", rule("", "", body))).unwrap();
    let live = std::fs::read(d.join("rule.wat")).unwrap();
    std::fs::remove_file(d.join("rule.wat")).unwrap();
    assert_eq!(reload_outcome(&engine), Outcome::Rejected);
    assert_eq!(shadow_sha(&engine), live_a, "a refused rebuild replaced the shadow");
    std::fs::write(d.join("rule.wat"), live).unwrap();

    // Committed, the change applies: another shadow, then none.
    let prepared = engine.prepare_entries(&entries(d, &with_b, "")).unwrap();
    assert_eq!(shadow_sha(&engine), live_a, "not before the commit");
    engine.commit_entries(prepared, &entries(d, &with_b, "")).unwrap();
    let live_b = shadow_sha(&engine);
    assert!(live_b.is_string() && live_b != live_a, "{}", report(&engine));
    engine.apply_entries(&entries(d, "", "")).unwrap();
    assert_eq!(shadow_sha(&engine), Value::Null, "shadow_module removed and committed");
}
