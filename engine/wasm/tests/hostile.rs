//! Hostile and broken modules, written in WAT: none of them may hurt the
//! engine. Each misbehaves only when the first event of a chunk has
//! destination port 666, so the other chunks of the same batch show that
//! only the guilty chunk got the fallback.

use std::path::Path;

use enrichd_engine::{parse_ndjson, Chain, Config, Format, PluginState, Registry};
use serde_json::Value;

const GOOD: &str = r#"
  (func $good (param $n i32) (local $i i32) (local $at i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $at (i32.add (i32.const 28680) (i32.mul (local.get $i) (i32.const 9))))
      (i32.store16 (local.get $at) (local.get $i))
      (i32.store8 offset=2 (local.get $at) (i32.const 1))
      (i32.store16 offset=3 (local.get $at) (i32.const 4))
      (i32.store offset=5 (local.get $at) (i32.const 42))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i32.store (i32.const 28672) (i32.mul (local.get $n) (i32.const 9))))
  (func $recurse (param i32) (result i32) (call $recurse (i32.add (local.get 0) (i32.const 1))))
"#;

fn module(version: u32, behaviour: &str) -> String {
    module_with(version, "", behaviour, "(nop)")
}

/// `before` runs first on a poisoned chunk, `after` once the good results
/// are written (no epoch check follows it); `imports` go first.
fn module_with(version: u32, imports: &str, before: &str, after: &str) -> String {
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 2)
  (table $t 1 funcref)
  (func (export "enrichd_abi_version") (result i32) (i32.const {version}))
  (func (export "enrichd_io") (result i32) (i32.const 0))
  {GOOD}
  (func (export "enrichd_process") (param $n i32) (result i32)
    (if (i32.eq (i32.load16_u (i32.const 98)) (i32.const 666)) (then {before}))
    (call $good (local.get $n))
    (if (i32.eq (i32.load16_u (i32.const 98)) (i32.const 666)) (then {after}))
    (i32.const 0)))"#
    )
}

fn chain(dir: &Path, wat: &str, extra: &str) -> Result<Chain, String> {
    let path = dir.join("rule.wat");
    std::fs::write(&path, wat).unwrap();
    let toml = format!(
        "[[chain]]\nplugin = \"ti\"\npaths = [\"{ti}\"]\n\n[[chain]]\nplugin = \"wasm\"\nname = \"rule\"\nmodule = \"{m}\"\n{deadline}{extra}\n",
        ti = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ti/indicators.txt"),
        m = path.display(),
        deadline = if extra.contains("deadline_ms") { "" } else { "deadline_ms = 20\n" },
    );
    let mut registry = Registry::new();
    enrichd_plugins::register_all(&mut registry);
    registry.register(Box::new(enrichd_wasm::WasmFactory));
    let config = Config::parse(&toml, &dir.join("c.toml")).map_err(|e| e.to_string())?;
    Chain::build(&config.chain, &registry, dir).map_err(|e| format!("{e:#}"))
}

/// 300 events: chunk 1 = events 0..256, chunk 2 = 256..300; `poison` puts
/// port 666 on the first event of chunk 2.
fn run(chain: &Chain, poison: bool) -> Vec<Value> {
    run_poisoned(chain, poison.then_some(256))
}

/// 300 events (chunks of 256): the one at `poisoned` makes the test
/// module misbehave.
fn run_poisoned(chain: &Chain, poisoned: Option<usize>) -> Vec<Value> {
    let lines: Vec<String> = (0..300)
        .map(|i| {
            let port = if poisoned == Some(i) { 666 } else { 80 };
            format!(r#"{{"src_ip":"45.149.3.{}","dst_port":{port}}}"#, i % 250)
        })
        .collect();
    let mut batch = parse_ndjson(lines.join("\n"), Format::FlowsV1, chain.parse_spec(), 0).unwrap();
    chain.run(&mut batch);
    let mut out = Vec::new();
    batch.write_events_array(chain.keys(), &mut out);
    serde_json::from_slice::<Vec<Value>>(&out).unwrap()
}

fn details(chain: &Chain) -> Value {
    let r = chain.reports().into_iter().find(|r| r.name == "rule").unwrap();
    serde_json::to_value(&r).unwrap()
}

fn assert_isolated(behaviour: &str, kind: &str) {
    assert_isolated_wat(&module(65536, behaviour), "", kind)
}

fn assert_isolated_wat(wat: &str, extra: &str, kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let chain = chain(dir.path(), wat, &format!("fallback_score = 77\n{extra}")).unwrap();
    let events = run(&chain, true);
    for (i, ev) in events.iter().enumerate() {
        // Earlier stages are unaffected everywhere.
        assert_eq!(ev["ti"]["matches"][0]["indicator"], "45.149.3.0/24");
        if i < 256 {
            assert_eq!(ev["risk_score"], 42, "{kind}: event {i} of the good chunk");
            assert_eq!(ev["reasons"], serde_json::json!([]));
        } else {
            assert_eq!(ev["risk_score"], 77, "{kind}: event {i}");
            assert_eq!(ev["reasons"], serde_json::json!([format!("rule error: {kind}")]), "{kind}");
        }
    }
    let d = details(&chain);
    assert_eq!(d["details"]["errors"][kind], 1, "{kind}: {d}");
    assert_eq!(d["state"], "loaded");
    // The recycled instance serves the next batch normally.
    let events = run(&chain, false);
    let bad: Vec<&Value> = events.iter().filter(|e| e["risk_score"] != 42).take(1).collect();
    assert!(bad.is_empty(), "{kind}: recovered: {bad:?} {}", details(&chain));
}

#[test]
fn infinite_loop_times_out() {
    let started = std::time::Instant::now();
    assert_isolated("(loop $l (br $l))", "timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn unbounded_memory_grow_hits_the_cap() {
    assert_isolated("(loop $l (drop (memory.grow (i32.const 16))) (br $l))", "memory");
}

#[test]
fn table_grow_past_the_cap_fails_the_call() {
    // The probe grew by 50M entries a call (~381 MB each, counted as
    // successes); 1M is enough to cross the default cap of 10,000.
    assert_isolated("(drop (table.grow $t (ref.null func) (i32.const 1000000)))", "table");
}

#[test]
fn table_cap_is_configurable_and_applies_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let grow = module(65536, "(drop (table.grow $t (ref.null func) (i32.const 20000)))");
    let c = chain(dir.path(), &grow, "table_limit_elements = 30000").unwrap();
    run(&c, true);
    assert_eq!(details(&c)["details"]["errors"]["table"], 0);
    assert_eq!(details(&c)["details"]["table_limit_elements"], 30000);

    let big_table = module(65536, "(nop)").replace("(table $t 1 funcref)", "(table $t 20000 funcref)");
    let err = chain(dir.path(), &big_table, "").unwrap_err();
    assert!(err.contains("instantiation failed"), "{err}");
    let five_tables = module(65536, "(nop)").replace("(table $t 1 funcref)", &"(table 1 funcref)".repeat(5));
    let err = chain(dir.path(), &five_tables, "").unwrap_err();
    assert!(err.contains("instantiation failed"), "{err}");
}

/// The epoch is checked at function entries, loop headers and before bulk
/// operations, not after them: a call whose last instruction is one long
/// host-side operation (here a 16 MB fill, 8-13 ms; a table.grow of 50M
/// entries in the probe) returns past its deadline. It is a timeout: its
/// results are not applied and the breaker counts it.
#[test]
fn a_call_returning_past_its_deadline_is_a_timeout() {
    let fill = "(memory.fill (i32.const 131072) (i32.const 1) (i32.const 16000000))";
    let wat = module_with(65536, "", "(drop (memory.grow (i32.const 254)))", fill);
    let started = std::time::Instant::now();
    assert_isolated_wat(&wat, "deadline_ms = 4", "timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn host_calls_do_not_outlast_the_deadline() {
    let imports = r#"(import "enrichd_v1" "field" (func $field (param i32 i32 i32 i32 i32) (result i32)))
  (import "enrichd_v1" "log" (func $log (param i32 i32 i32)))"#;
    for spin in [
        // An unknown key: the record is parsed again every call.
        "(loop $l (drop (call $field (i32.const 0) (i32.const 100000) (i32.const 2) (i32.const 110000) (i32.const 64))) (br $l))",
        // A key over the length cap, read from all of memory.
        "(loop $l (drop (call $field (i32.const 0) (i32.const 0) (i32.const 131072) (i32.const 110000) (i32.const 64))) (br $l))",
        "(loop $l (call $log (i32.const 3) (i32.const 100000) (i32.const 2)) (br $l))",
    ] {
        let started = std::time::Instant::now();
        let spin = format!("(i32.store16 (i32.const 100000) (i32.const 0x7a7a)) {spin}");
        assert_isolated_wat(&module_with(65536, imports, &spin, "(nop)"), "", "timeout");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{spin}");
    }
}

#[test]
fn field_result_from_a_rule_is_malformed() {
    // A FIELD entry {event 0, key "x", value 1}: a rule declares no field.
    assert_isolated(
        "(i32.store16 (i32.const 28680) (i32.const 0)) (i32.store8 (i32.const 28682) (i32.const 4)) \
         (i32.store16 (i32.const 28683) (i32.const 3)) (i32.store8 (i32.const 28685) (i32.const 1)) \
         (i32.store8 (i32.const 28686) (i32.const 120)) (i32.store8 (i32.const 28687) (i32.const 49)) \
         (i32.store (i32.const 28672) (i32.const 8)) (return (i32.const 0))",
        "malformed_result",
    );
}

#[test]
fn undeclared_field_from_an_enricher_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    // Sets "y" = 1 on event 0; the entry declares only "x".
    let wat = module(
        65536,
        "(i32.store16 (i32.const 28680) (i32.const 0)) (i32.store8 (i32.const 28682) (i32.const 4)) \
         (i32.store16 (i32.const 28683) (i32.const 3)) (i32.store8 (i32.const 28685) (i32.const 1)) \
         (i32.store8 (i32.const 28686) (i32.const 121)) (i32.store8 (i32.const 28687) (i32.const 49)) \
         (i32.store (i32.const 28672) (i32.const 8)) (return (i32.const 0))",
    );
    let chain = chain(dir.path(), &wat, "role = \"enricher\"\nfields = [\"x\", \"y2\"]").unwrap();
    let events = run(&chain, true);
    assert!(events[256]["x"].is_null() && events[256].get("y").is_none(), "{}", events[256]);
    assert_eq!(details(&chain)["details"]["errors"]["malformed_result"], 1);
}

#[test]
fn oversized_module_file_is_refused_and_the_last_good_stays() {
    let dir = tempfile::tempdir().unwrap();
    let c = chain(dir.path(), &module(65536, "(nop)"), "").unwrap();
    let mut registry = Registry::new();
    enrichd_plugins::register_all(&mut registry);
    registry.register(Box::new(enrichd_wasm::WasmFactory));
    let engine = enrichd_engine::Engine::new(c, registry);
    // Sparse: 64 MiB that cost no disk. (The probe's 1 GiB file peaked at
    // 5.2 GB RSS; 64 MiB keeps the test cheap without the fix too.)
    let file = std::fs::OpenOptions::new().write(true).open(dir.path().join("rule.wat")).unwrap();
    file.set_len(64 << 20).unwrap();
    let started = std::time::Instant::now();
    let report = engine.reload_all();
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let rule = report.stages.iter().find(|s| s.name == "rule").unwrap();
    assert_eq!(rule.outcome, enrichd_engine::Outcome::Rejected);
    let err = rule.error.as_deref().unwrap();
    assert!(err.contains("67108864 bytes, over the module size limit of 16777216 bytes"), "{err}");
    assert!(err.len() < 300, "{err}");
    // The module loaded before still scores.
    assert!(run(&engine.chain(), false).iter().all(|e| e["risk_score"] == 42));
    // And the limit is the entry's to set.
    let err = chain(dir.path(), &module(65536, "(nop)"), "module_size_limit_mib = 0").unwrap_err();
    assert!(err.contains("over the module size limit of 0 bytes"), "{err}");
}

#[test]
fn load_errors_quote_guest_names_escaped_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("x\\n2026-01-01T00:00:00Z ERROR forged{}", "a".repeat(10_000));
    let wat = module(65536, "(nop)").replace(
        "(memory (export \"memory\") 2)",
        &format!("(import \"env\" \"{name}\" (func))\n  (memory (export \"memory\") 2)"),
    );
    let err = chain(dir.path(), &wat, "").unwrap_err();
    assert!(!err.contains('\n') && err.contains("x\\n2026") && err.len() < 400, "{err}");
}

#[test]
fn trap() {
    assert_isolated("(unreachable)", "trap");
}

#[test]
fn stack_overflow() {
    assert_isolated("(drop (call $recurse (i32.const 0)))", "stack_overflow");
}

#[test]
fn guest_reported_error() {
    assert_isolated("(return (i32.const 1))", "guest_error");
}

#[test]
fn oversized_result_length() {
    assert_isolated("(i32.store (i32.const 28672) (i32.const 70000)) (return (i32.const 0))", "malformed_result");
}

#[test]
fn unknown_entry_kind() {
    assert_isolated(
        "(i32.store8 (i32.const 28682) (i32.const 9)) (i32.store (i32.const 28672) (i32.const 5)) (return (i32.const 0))",
        "malformed_result",
    );
}

#[test]
fn result_for_an_event_that_does_not_exist() {
    assert_isolated(
        "(i32.store16 (i32.const 28680) (i32.const 999)) (i32.store8 (i32.const 28682) (i32.const 1)) \
         (i32.store16 (i32.const 28683) (i32.const 4)) (i32.store (i32.const 28672) (i32.const 9)) (return (i32.const 0))",
        "malformed_result",
    );
}

#[test]
fn huge_reason_string() {
    assert_isolated(
        "(i32.store16 (i32.const 28680) (i32.const 0)) (i32.store8 (i32.const 28682) (i32.const 2)) \
         (i32.store16 (i32.const 28683) (i32.const 5000)) (i32.store (i32.const 28672) (i32.const 5005)) (return (i32.const 0))",
        "malformed_result",
    );
}

#[test]
fn circuit_breaker_opens_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let chain = chain(dir.path(), &module(65536, "(unreachable)"), "breaker_failures = 3").unwrap();
    for _ in 0..3 {
        run(&chain, true);
    }
    let d = details(&chain);
    assert_eq!(d["state"], "error", "{d}");
    assert_eq!(d["details"]["circuit_open"], true);
    assert!(d["error"].as_str().unwrap().contains("circuit breaker"));
    // Even good chunks are no longer run through the module.
    let events = run(&chain, false);
    assert_eq!(events[0]["reasons"], serde_json::json!(["rule error: circuit_open"]));
    assert!(events[0]["risk_score"].is_null(), "no fallback_score configured: null");
}

/// Half-open: after its cool-down the breaker lets one call through; a
/// good one closes it, a bad one opens it for twice as long.
#[test]
fn circuit_breaker_tries_again_after_its_cool_down() {
    let dir = tempfile::tempdir().unwrap();
    let chain =
        chain(dir.path(), &module(65536, "(unreachable)"), "breaker_failures = 2\nbreaker_cooldown_s = 1").unwrap();
    let open_twice = |opened: u64| {
        for _ in 0..2 {
            run(&chain, true);
        }
        let d = details(&chain);
        assert_eq!(
            (d["details"]["circuit_open"].as_bool(), d["details"]["circuit_opened"].as_u64()),
            (Some(true), Some(opened))
        );
        assert!(d["error"].as_str().unwrap().contains("a trial call in 1 s"), "{d}");
        assert_eq!(run(&chain, false)[0]["reasons"], serde_json::json!(["rule error: circuit_open"]), "cooling down");
        std::thread::sleep(std::time::Duration::from_millis(1100));
    };
    open_twice(1);
    // The first chunk is the trial: it succeeds, so every chunk is scored.
    let events = run(&chain, false);
    assert!(events.iter().all(|e| e["risk_score"].is_u64()), "closed again: {}", events[0]);
    let d = details(&chain);
    assert_eq!((d["state"].as_str(), d["details"]["circuit_open"].as_bool()), (Some("loaded"), Some(false)), "{d}");

    open_twice(2);
    // A trial that fails: open again for twice the cool-down.
    let events = run_poisoned(&chain, Some(0));
    assert_eq!(events[0]["reasons"], serde_json::json!(["rule error: trap"]), "the trial ran and failed");
    assert_eq!(events[299]["reasons"], serde_json::json!(["rule error: circuit_open"]), "the rest was not called");
    let d = details(&chain);
    assert_eq!(d["details"]["circuit_opened"], 3);
    assert_eq!(d["details"]["circuit_next_trial_s"], 2, "{d}");
}

#[test]
fn load_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let err = chain(dir.path(), &module(2 << 16, "(nop)"), "").unwrap_err();
    assert!(err.contains("rule.wat") && err.contains("built for ABI 2.0") && err.contains("supports 1.0"), "{err}");

    let no_process = module(65536, "(nop)").replace("(export \"enrichd_process\")", "");
    let err = chain(dir.path(), &no_process, "").unwrap_err();
    assert!(err.contains("lacks the export `enrichd_process`"), "{err}");

    let wrong_sig = module(65536, "(nop)").replace(
        "(func (export \"enrichd_io\") (result i32) (i32.const 0))",
        "(func (export \"enrichd_io\") (param i32) (result i32) (i32.const 0))",
    );
    let err = chain(dir.path(), &wrong_sig, "").unwrap_err();
    assert!(err.contains("exports `enrichd_io` as (i32) -> (i32), expected () -> (i32)"), "{err}");

    let wasi = module(65536, "(nop)").replace(
        "(memory (export \"memory\") 2)",
        "(import \"wasi_snapshot_preview1\" \"fd_write\" (func (param i32 i32 i32 i32) (result i32)))\n  (memory (export \"memory\") 2)",
    );
    let err = chain(dir.path(), &wasi, "").unwrap_err();
    assert!(err.contains("imports wasi_snapshot_preview1.fd_write, which the host does not provide"), "{err}");

    let tiny_memory =
        module(65536, "(nop)").replace("(memory (export \"memory\") 2)", "(memory (export \"memory\") 1)");
    let err = chain(dir.path(), &tiny_memory, "").unwrap_err();
    assert!(err.contains("exchange area"), "{err}");

    let err = chain(dir.path(), "this is not wasm", "").unwrap_err();
    assert!(err.contains("not a valid WebAssembly module"), "{err}");
}

#[test]
fn missing_module_is_reported_and_events_get_the_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("[[chain]]\nplugin = \"wasm\"\nmodule = \"{}\"\n", dir.path().join("nope.wasm").display());
    let mut registry = Registry::new();
    registry.register(Box::new(enrichd_wasm::WasmFactory));
    let config = Config::parse(&toml, &dir.path().join("c.toml")).unwrap();
    let chain = Chain::build(&config.chain, &registry, dir.path()).unwrap();
    assert_eq!(chain.reports()[0].status.state, PluginState::Missing);
    let events = run(&chain, false);
    assert_eq!(events[0]["reasons"], serde_json::json!(["rule error: unavailable"]));
}

/// Before/after figures for issue 17 item 2 (not a regression test: run
/// it by hand). A rule whose every call grows its table by
/// `PROBE_GROW` entries (default 50,000,000), called `PROBE_CALLS` times
/// (default 3): per-call wall time, peak RSS (VmHWM) and what the module's
/// counters say.
///
/// `cargo test -p enrichd-wasm --test hostile probe_table_grow -- --ignored --nocapture`
#[test]
#[ignore]
fn probe_table_grow() {
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (calls, grow) = (env("PROBE_CALLS", 3), env("PROBE_GROW", 50_000_000));
    let wat = format!(
        r#"(module
  (memory (export "memory") 2)
  (table $t 1 funcref)
  (func (export "enrichd_abi_version") (result i32) (i32.const 65536))
  (func (export "enrichd_io") (result i32) (i32.const 0))
  {GOOD}
  (func (export "enrichd_process") (param $n i32) (result i32)
    (call $good (local.get $n))
    ;; Last: no epoch check (function entry, loop) runs after it.
    (drop (table.grow $t (ref.null func) (i32.const {grow})))
    (i32.const 0)))"#
    );
    let hwm = || {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines().find(|l| l.starts_with("VmHWM")).unwrap().split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
            / 1024
    };
    let dir = tempfile::tempdir().unwrap();
    let chain = chain(dir.path(), &wat, "deadline_ms = 10\nfallback_score = 77").unwrap();
    println!("probe: table.grow by {grow} per call, deadline_ms = 10; VmHWM before: {} MiB", hwm());
    for i in 0..calls {
        let lines = r#"{"src_ip":"10.0.0.1","dst_port":80}"#;
        let mut batch = parse_ndjson(lines.to_string(), Format::FlowsV1, chain.parse_spec(), 0).unwrap();
        let started = std::time::Instant::now();
        chain.run(&mut batch);
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let mut out = Vec::new();
        batch.write_events_array(chain.keys(), &mut out);
        let ev: Vec<Value> = serde_json::from_slice(&out).unwrap();
        println!(
            "call {i}: {ms:.1} ms, VmHWM {} MiB, risk_score {}, reasons {}",
            hwm(),
            ev[0]["risk_score"],
            ev[0]["reasons"]
        );
    }
    let d = details(&chain);
    println!("state {}, calls {}, errors {}", d["state"], d["details"]["calls"], d["details"]["errors"]);
}

/// An instantiation on the hot path (a thread's first call, a recycled
/// instance, a new generation) holds up its batch like a call: it gets the
/// call deadline, not the second a load's probe gets. So a module whose
/// start-up fits only the probe's budget is refused at load, saying why,
/// rather than loaded and then failing every batch (before this stop:
/// loaded, and stalled a batch up to a second whenever its instance was
/// recycled).
#[test]
fn a_start_up_longer_than_the_call_deadline_is_refused_at_load() {
    // ~100 ms of CPU here: far past a 5 ms deadline, far under a second.
    let spin = "(func $spin (local $i i32)
      (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const 150000000)))))
    (start $spin)";
    let dir = tempfile::tempdir().unwrap();
    let module = module_with(65536, spin, "(unreachable)", "(nop)");
    let Err(err) = chain(dir.path(), &module, "deadline_ms = 5") else { panic!("loaded") };
    assert!(err.contains("deadline_ms (5 ms)"), "{err}");
    // With a deadline its start-up fits, it loads.
    assert!(chain(dir.path(), &module, "deadline_ms = 1000").is_ok());
}
