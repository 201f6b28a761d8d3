//! WebAssembly rules end to end: the committed risk rule scoring over HTTP,
//! a hostile module that cannot take the server down, and the `rule` CLI.

mod common;

use std::process::Command;

use common::{bin, repo, Server};
use serde_json::{json, Value};

fn risk_chain(extra: &str) -> String {
    format!(
        "[[chain]]\nplugin = \"ti\"\npaths = [\"{ti}\"]\n\n[[chain]]\nplugin = \"wasm\"\nname = \"risk\"\nmodule = \"{risk}\"\n{extra}",
        ti = repo().join("ti/indicators.txt").display(),
        risk = repo().join("rules/risk.wasm").display(),
    )
}

#[test]
fn risk_rule_scores_ingested_events() {
    let s = Server::start(&risk_chain(""));
    let r = s.ingest(
        "flows.v1",
        json!([
            {"src_ip": "45.149.3.9", "dst_ip": "8.8.8.8", "src_port": 50000, "dst_port": 3389, "bytes": 4_000_000},
            {"src_ip": "10.0.0.1", "dst_ip": "8.8.8.8", "src_port": 50000, "dst_port": 443, "bytes": 100},
            {"src_ip": "10.0.0.1", "dst_ip": "8.8.8.8", "src_port": 80, "dst_port": 23, "bytes": 4_000_000}
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let recs = r.json()["records"].as_array().unwrap().clone();
    assert_eq!(recs[0]["risk_score"], 90);
    assert_eq!(recs[0]["reasons"].as_array().unwrap().len(), 3);
    assert_eq!(recs[1]["risk_score"], 10);
    assert_eq!(recs[1]["reasons"], json!([]));
    assert_eq!(recs[2]["risk_score"], 20, "source port 80 is not ephemeral");
    let r = s.ingest("zeek", json!([{"id.orig_h": "10.0.0.2", "id.orig_p": 40000, "id.resp_h": "1.1.1.1", "id.resp_p": 445, "orig_bytes": 1_000_001}]));
    assert_eq!(r.json()["records"][0]["risk_score"], 30);
}

#[test]
fn a_hostile_module_fails_only_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let wat = dir.path().join("evil.wat");
    std::fs::write(&wat, common::LOOPS_ON_666).unwrap();
    let chain = format!(
        "{}\n[[chain]]\nplugin = \"wasm\"\nname = \"evil\"\nmodule = \"{}\"\nscore_field = \"evil_score\"\nreasons_field = \"evil_reasons\"\ntags_field = \"evil_tags\"\nfallback_score = 99\n",
        risk_chain(""),
        wat.display()
    );
    let s = Server::start(&chain);
    let bad = s.ingest("flows.v1", json!([{"src_ip": "45.149.3.1", "dst_port": 666}]));
    assert_eq!(bad.status, 200, "{}", bad.text);
    let rec = &bad.json()["records"][0];
    assert_eq!(rec["evil_score"], 99);
    assert_eq!(rec["evil_reasons"], json!(["rule error: timeout"]));
    assert_eq!(rec["risk_score"], 70, "the other rule still scored: {rec}");
    let good = s.ingest("flows.v1", json!([{"src_ip": "10.0.0.1", "dst_port": 80}]));
    assert_eq!(good.json()["records"][0]["evil_score"], 42);
    let stages = s.get_auth("/v1/enrichers").json();
    let evil = stages["enrichers"].as_array().unwrap().iter().find(|e| e["name"] == "evil").unwrap().clone();
    assert_eq!(evil["details"]["timeouts"], 1, "{evil}");
    assert_eq!(evil["details"]["calls"], 2);
    assert_eq!(s.metrics()["requests_by_class"]["5xx"], 0);
}

#[test]
fn rule_check_and_rule_test_cli() {
    let out = bin().args(["rule", "check"]).arg(repo().join("rules/risk.wasm")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["abi_version"], "1.1");
    // Its six fixed reasons (rules/risk/src/lib.rs), declared once.
    assert_eq!(report["declared_texts"], 6);
    assert_eq!(report["imports"], json!([]));
    assert!(report["exports"].as_array().unwrap().contains(&json!("enrichd_process")));
    assert_eq!(report["memory_limit_mib"], 16);

    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm\x01\0\0\0").unwrap();
    let out = bin().args(["rule", "check"]).arg(&bogus).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lacks the export"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let events = dir.path().join("events.ndjson");
    std::fs::write(&events, "{\"src_ip\":\"45.149.3.1\",\"dst_port\":23}\n{\"src_ip\":\"10.0.0.1\",\"dst_port\":22}\n")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_enrichd"))
        .args(["rule", "test", "--format", "flows.v1"])
        .arg(repo().join("rules/risk.wasm"))
        .arg("--events")
        .arg(&events)
        .arg("--ti")
        .arg(repo().join("ti/indicators.txt"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["risk_score"], 80);
    assert_eq!(lines[1]["risk_score"], 10);
}

#[test]
fn precompiled_modules_are_cached_and_a_corrupt_artifact_is_recompiled() {
    let mut s = Server::start(&risk_chain(""));
    let cache = s.dir.path().join("state/wasm-cache");
    let artifacts: Vec<_> = std::fs::read_dir(&cache).expect("cache directory").flatten().map(|e| e.path()).collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert!(artifacts[0].extension().is_some_and(|e| e == "cwasm"));
    // A damaged artifact must not stop the rule: it is dropped and the
    // module compiled again.
    std::fs::write(&artifacts[0], b"not a wasmtime artifact").unwrap();
    s.restart();
    let r = s.ingest("flows.v1", json!([{"src_ip": "10.0.0.1", "dst_ip": "8.8.8.8", "dst_port": 23}]));
    assert_eq!(r.json()["records"][0]["risk_score"], 20, "{}", r.text);
    assert!(std::fs::read(&artifacts[0]).unwrap().len() > 1000, "the artifact was written again");
}

/// Guest text cannot forge log lines: a module's log message and an import
/// name it chose both carry a line break followed by a fake log line.
#[test]
fn guest_text_cannot_forge_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let forged = r"\n2026-01-01T00:00:00.000000Z ERROR enrichd: forged";
    let logger = dir.path().join("logger.wat");
    std::fs::write(
        &logger,
        format!(
            r#"(module (import "enrichd_v1" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 2)
  (data (i32.const 100000) "hello{forged}\1b[2K")
  (func (export "enrichd_abi_version") (result i32) (i32.const 65536))
  (func (export "enrichd_io") (result i32) (i32.const 0))
  (func (export "enrichd_process") (param $n i32) (result i32)
    (call $log (i32.const 0) (i32.const 100000) (i32.const 60)) (i32.const 0)))"#
        ),
    )
    .unwrap();
    let events = dir.path().join("events.ndjson");
    std::fs::write(&events, "{\"src_ip\":\"10.0.0.1\"}\n").unwrap();
    let out =
        bin().args(["rule", "test", "-f", "flows.v1"]).arg(&logger).arg("--events").arg(&events).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(r"hello\n2026-01-01T00:00:00.000000Z ERROR enrichd: forged\u{1b}[2K"), "{stderr}");
    assert!(!stderr.lines().any(|l| l.starts_with("2026-01-01")) && !stderr.contains('\x1b'), "{stderr}");

    let importer = dir.path().join("importer.wat");
    std::fs::write(&importer, format!(r#"(module (import "env" "x{forged}" (func)) (memory (export "memory") 2))"#))
        .unwrap();
    let out = bin().args(["rule", "check"]).arg(&importer).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(r"env.x\n2026-01-01"), "{stderr}");
    assert!(!stderr.lines().any(|l| l.starts_with("2026-01-01")), "{stderr}");
}

/// Runs a command; panics with its stderr unless it succeeds.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Issue 13 point 4: with `require_signature` a module loads only when
/// signed by a trusted key. Keys and one signature come from OpenSSL, so
/// the formats are checked against an outside implementation both ways.
#[test]
fn only_modules_signed_by_a_trusted_key_load() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    run(Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(p("team.pem")));
    run(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(p("team.pem")).arg("-out").arg(p("team.pub.pem")));
    std::fs::copy(repo().join("rules/risk.wasm"), p("rule.wasm")).unwrap();
    // OpenSSL signs (raw 64 bytes); enrichd verifies.
    run(Command::new("openssl")
        .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
        .arg(p("team.pem"))
        .arg("-in")
        .arg(p("rule.wasm"))
        .arg("-out")
        .arg(p("rule.wasm.sig")));
    assert!(
        run(bin().args(["rule", "verify"]).arg(p("rule.wasm")).arg("--key").arg(p("team.pub.pem"))).starts_with("ok")
    );
    // An enrichd key pair does not verify what the team's key signed.
    run(bin().args(["rule", "keygen"]).arg(p("other")));
    let refused =
        bin().args(["rule", "verify"]).arg(p("rule.wasm")).arg("--key").arg(p("other.pub.pem")).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not match"));

    let config = format!(
        "[auth]\napi_keys = [\"{key}\"]\nadmin_keys = [\"admin-1\"]\n[reload]\nwatch = false\n\n\
         [[chain]]\nplugin = \"wasm\"\nname = \"risk\"\nmodule = \"rule.wasm\"\nrequire_signature = true\n\
         trusted_keys = [\"team.pub.pem\"]\n",
        key = common::KEY
    );
    std::fs::write(p("config.toml"), config).unwrap();
    let s = Server::start_file(&p("config.toml"), &[], dir);
    let p = |name: &str| s.dir.path().join(name);
    let event =
        json!([{"src_ip": "10.0.0.1", "dst_ip": "8.8.8.8", "src_port": 80, "dst_port": 23, "bytes": 4_000_000}]);
    let score = |s: &Server| s.ingest("flows.v1", event.clone()).json()["records"][0]["risk_score"].clone();
    assert_eq!(score(&s), 20);
    let stage = |s: &Server| s.get_auth("/v1/enrichers").json()["enrichers"][0].clone();
    let signed_by = stage(&s)["details"]["signature"]["signed_by"].as_str().expect("signed_by").to_string();
    assert_eq!(signed_by.len(), 12);
    let reload = |s: &Server| {
        let mut resp = common::agent()
            .post(&s.url("/v1/reload"))
            .header("Authorization", "Bearer admin-1")
            .send_empty()
            .expect("reload");
        let text = resp.body_mut().read_to_string().unwrap();
        serde_json::from_str::<Value>(&text).unwrap()
    };

    // Another module dropped in its place, the old signature beside it:
    // refused, the signed one keeps scoring.
    std::fs::copy(repo().join("rules/examples/admin_ports.wasm"), p("rule.wasm")).unwrap();
    let r = reload(&s);
    assert_eq!(r["stages"][0]["outcome"], "rejected", "{r}");
    assert!(r["stages"][0]["error"].as_str().unwrap().contains("does not match"), "{r}");
    assert_eq!(score(&s), 20, "the last good module still scores");
    // Unsigned: refused the same way.
    std::fs::remove_file(p("rule.wasm.sig")).unwrap();
    let r = reload(&s);
    assert!(r["stages"][0]["error"].as_str().unwrap().contains("unsigned"), "{r}");
    assert_eq!(score(&s), 20);

    // Signed by enrichd with the team's OpenSSL key: it goes live. OpenSSL
    // agrees the signature is good.
    run(bin().args(["rule", "sign"]).arg(p("rule.wasm")).arg("--key").arg(p("team.pem")));
    let sig = std::fs::read_to_string(p("rule.wasm.sig")).unwrap();
    let raw = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(sig.trim()).unwrap()
    };
    std::fs::write(p("raw.sig"), raw).unwrap();
    let verified = run(Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
        .arg(p("team.pub.pem"))
        .arg("-in")
        .arg(p("rule.wasm"))
        .arg("-sigfile")
        .arg(p("raw.sig")));
    assert!(verified.contains("Signature Verified Successfully"), "{verified}");
    let r = reload(&s);
    assert_eq!(r["stages"][0]["outcome"], "reloaded", "{r}");
    let now = stage(&s);
    let expected_sha = run(Command::new("sha256sum").arg(p("rule.wasm")));
    assert_eq!(now["sources"][0]["sha256"].as_str().unwrap(), expected_sha.split_whitespace().next().unwrap());
    assert_eq!(now["details"]["signature"]["signed_by"], signed_by.as_str());
}
