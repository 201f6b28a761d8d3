//! Shadow rules, promotion, rollback and history end to end (issue 14
//! point 4): the real binary, HTTP, and a restart.

mod common;

use std::process::Command;

use common::{bin, repo, Reply, Server};
use serde_json::{json, Value};

const ADMIN: &str = "admin-1";

fn call(s: &Server, method: &str, path: &str, key: &str, body: &[u8]) -> Reply {
    let url = s.url(path);
    let auth = format!("Bearer {key}");
    let agent = common::agent();
    let resp = match method {
        "GET" => agent.get(&url).header("Authorization", &auth).call(),
        "DELETE" => agent.delete(&url).header("Authorization", &auth).call(),
        _ => agent.post(&url).header("Authorization", &auth).header("Content-Type", "application/wasm").send(body),
    };
    common::read(resp)
}

fn admin(s: &Server, method: &str, path: &str, body: &[u8]) -> Reply {
    call(s, method, path, ADMIN, body)
}

fn start(dir: tempfile::TempDir, extra: &str) -> Server {
    let p = |name: &str| dir.path().join(name);
    std::fs::copy(repo().join("rules/risk.wasm"), p("risk.wasm")).unwrap();
    let config = format!(
        "[server]\nstate_dir = \"state\"\n[auth]\napi_keys = [\"{key}\"]\nadmin_keys = [\"{ADMIN}\"]\n\
         [reload]\nwatch = false\n\n[[chain]]\nplugin = \"ti\"\npaths = [\"{ti}\"]\n\n\
         [[chain]]\nplugin = \"wasm\"\nname = \"risk\"\nmodule = \"risk.wasm\"\n{extra}",
        key = common::KEY,
        ti = repo().join("ti/indicators.txt").display(),
    );
    std::fs::write(p("config.toml"), config).unwrap();
    let path = p("config.toml");
    Server::start_file(&path, &[], dir)
}

/// Three events the committed risk rule scores 90, 10, 20 and the C
/// example (`admin_ports`) 60, 0, 70.
fn events() -> Value {
    json!([
        {"src_ip": "45.149.3.9", "dst_ip": "8.8.8.8", "src_port": 50000, "dst_port": 3389, "bytes": 4_000_000},
        {"src_ip": "10.0.0.1", "dst_ip": "8.8.8.8", "src_port": 50000, "dst_port": 443, "bytes": 100},
        {"src_ip": "10.0.0.1", "dst_ip": "8.8.8.8", "src_port": 80, "dst_port": 23, "bytes": 4_000_000}
    ])
}

fn scores(s: &Server) -> Vec<Value> {
    let r = s.ingest("flows.v1", events());
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["records"].as_array().unwrap().iter().map(|r| r["risk_score"].clone()).collect()
}

#[test]
fn a_shadow_rule_is_compared_never_applied_and_cannot_hurt_the_live_one() {
    let s = start(tempfile::tempdir().unwrap(), "");
    let shadow = "/v1/rules/risk/shadow";
    let none = call(&s, "GET", shadow, common::KEY, b"");
    assert_eq!((none.status, &none.json()["error"]), (404, &json!("no_shadow")), "{}", none.text);
    // Deploying needs the admin scope; bad modules are clear 4xx.
    let module = std::fs::read(repo().join("rules/examples/admin_ports.wasm")).unwrap();
    assert_eq!(call(&s, "POST", shadow, common::KEY, &module).status, 403);
    let r = admin(&s, "POST", shadow, b"");
    assert_eq!((r.status, &r.json()["error"]), (400, &json!("empty_body")));
    let r = admin(&s, "POST", shadow, b"\0asm garbage");
    assert_eq!((r.status, &r.json()["error"]), (422, &json!("invalid_module")), "{}", r.text);
    let r = admin(&s, "POST", "/v1/rules/risk/shadow?signature=zz", &module);
    assert_eq!((r.status, &r.json()["param"]), (400, &json!("signature")), "{}", r.text);
    // 128 bytes that are not 128 characters (é is two bytes, percent-encoded).
    let multibyte = format!("/v1/rules/risk/shadow?signature={}", "%C3%A9".repeat(64));
    let r = admin(&s, "POST", &multibyte, &module);
    assert_eq!((r.status, &r.json()["param"]), (400, &json!("signature")), "{}", r.text);
    let r = admin(&s, "POST", "/v1/rules/nope/shadow", &module);
    assert_eq!(r.status, 404, "{}", r.text);
    let r = admin(&s, "POST", "/v1/rules/risk/bogus", &module);
    assert_eq!(r.status, 404, "{}", r.text);

    let r = admin(&s, "POST", shadow, &module);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["module"]["added_by"].as_str().map(str::len), Some(12), "a key id: {}", r.text);
    // Responses carry only the live verdicts.
    assert_eq!(scores(&s), [json!(90), json!(10), json!(20)]);
    let sum = call(&s, "GET", shadow, common::KEY, b"").json();
    let summary = &sum["summary"];
    assert_eq!(summary["events_compared"], 3, "{sum}");
    assert_eq!(summary["events_differing"], 3);
    assert_eq!(summary["score_differs"], 3);
    assert_eq!(summary["reasons_differ"], 2, "both give no reasons for the HTTPS event");
    let bucket = |side: &str, i: usize| summary["histograms"][side]["buckets"][i]["count"].as_u64().unwrap();
    assert_eq!((bucket("live", 0), bucket("live", 1), bucket("live", 8)), (1, 1, 1), "10, 20, 90");
    assert_eq!((bucket("shadow", 0), bucket("shadow", 5), bucket("shadow", 6)), (1, 1, 1), "0, 60, 70");
    let sample = &summary["samples"][0];
    assert_eq!(summary["samples"].as_array().unwrap().len(), 1, "one sample per chunk: {summary}");
    assert_eq!(
        (&sample["dst_port"], &sample["live"]["score"], &sample["shadow"]["score"]),
        (&json!(3389), &json!(90), &json!(60))
    );
    assert_eq!(sample["shadow"]["reasons"], json!(["rdp"]));
    assert_eq!(sample["live"]["reasons"].as_array().unwrap().len(), 3);
    let prom = s.get("/metrics").text;
    assert!(prom.contains("telemetry_enricher_shadow_compared_total{enricher=\"risk\"} 3"), "{prom}");
    assert!(prom.contains("telemetry_enricher_shadow_differing_total{enricher=\"risk\"} 3"));

    // A hostile shadow: loops on one event. The live verdicts stand, the
    // shadow's failure is counted and reported.
    let r = admin(&s, "POST", shadow, common::LOOPS_ON_666.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json()["replaced"].is_string());
    let r = s.ingest("flows.v1", json!([{"src_ip": "45.149.3.1", "dst_port": 666}]));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["records"][0]["risk_score"], 70, "the live rule scored: {}", r.text);
    let sum = call(&s, "GET", shadow, common::KEY, b"").json();
    assert_eq!(sum["summary"]["events_not_compared"]["shadow_failed"], 1, "{sum}");
    assert_eq!(sum["shadow_calls"]["errors"]["timeout"], 1);
    assert_eq!(scores(&s), [json!(90), json!(10), json!(20)]);
    let sum = call(&s, "GET", shadow, common::KEY, b"").json();
    assert_eq!(sum["summary"]["events_compared"], 3, "{sum}");
    // The replaced upload is deleted from the state directory; the running
    // one stays until it is removed.
    let kept = || {
        let dir = s.dir.path().join("state/rules/risk");
        let names: Vec<std::ffi::OsString> =
            std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        names.iter().filter(|n| n.to_string_lossy().ends_with(".wasm")).count()
    };
    assert_eq!(kept(), 1, "one upload kept: the running shadow");
    // Removed: nothing is compared any more, and nothing is kept.
    assert_eq!(admin(&s, "DELETE", shadow, b"").status, 200);
    assert_eq!(kept(), 0);
    assert_eq!(admin(&s, "DELETE", shadow, b"").status, 404);
    assert_eq!(s.metrics()["requests_by_class"]["5xx"], 0);
}

#[test]
fn promote_rollback_and_history_survive_a_restart() {
    let mut s = start(tempfile::tempdir().unwrap(), "");
    let module = std::fs::read(repo().join("rules/examples/admin_ports.wasm")).unwrap();
    let r = admin(&s, "POST", "/v1/rules/risk/rollback", b"");
    assert_eq!((r.status, &r.json()["error"]), (409, &json!("nothing_to_roll_back")), "{}", r.text);
    let r = admin(&s, "POST", "/v1/rules/risk/promote", b"");
    assert_eq!((r.status, &r.json()["error"]), (404, &json!("no_shadow")));
    assert_eq!(admin(&s, "POST", "/v1/rules/risk/shadow", &module).status, 200);
    let r = admin(&s, "POST", "/v1/rules/risk/promote", b"");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["live"]["stages"][0]["outcome"], "reloaded", "{}", r.text);
    // Live at once, and the shadow is gone (it is the live rule now).
    assert_eq!(scores(&s), [json!(60), json!(0), json!(70)]);
    assert_eq!(call(&s, "GET", "/v1/rules/risk/shadow", common::KEY, b"").status, 404);
    let history = call(&s, "GET", "/v1/rules/risk/history", common::KEY, b"").json();
    assert_eq!(history["promoted"], true, "{history}");
    assert_eq!(history["history"][0]["action"], "promoted");
    assert_eq!(history["history"][0]["sha256"].as_str(), history["live_sha256"].as_str());
    assert_eq!(history["history"][0]["by"].as_str().map(str::len), Some(12));
    assert_eq!(history["history"][0]["replaced"], history["configured_sha256"]);

    // A restart loads the promoted version, not the configured file.
    s.restart();
    assert_eq!(scores(&s), [json!(60), json!(0), json!(70)]);
    let r = admin(&s, "POST", "/v1/rules/risk/rollback", b"");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(scores(&s), [json!(90), json!(10), json!(20)]);
    let history = call(&s, "GET", "/v1/rules/risk/history", common::KEY, b"").json();
    assert_eq!((&history["promoted"], &history["history"][0]["action"]), (&json!(false), &json!("rolled_back")));
    s.restart();
    assert_eq!(scores(&s), [json!(90), json!(10), json!(20)]);
    // Every change is audited with the key id.
    let audit = call(&s, "GET", "/v1/audit?limit=20", ADMIN, b"").json();
    let targets: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter_map(|e| e["target"].as_str()).collect();
    assert!(targets.contains(&"/v1/rules/risk/promote") && targets.contains(&"/v1/rules/risk/rollback"), "{audit}");
}

#[test]
fn with_signatures_required_a_shadow_must_be_signed() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run(bin().args(["rule", "keygen"]).arg(p("team")));
    std::fs::copy(repo().join("rules/risk.wasm"), p("risk.wasm")).unwrap();
    run(bin().args(["rule", "sign"]).arg(p("risk.wasm")).arg("--key").arg(p("team.pem")));
    std::fs::copy(repo().join("rules/examples/admin_ports.wasm"), p("candidate.wasm")).unwrap();
    run(bin().args(["rule", "sign"]).arg(p("candidate.wasm")).arg("--key").arg(p("team.pem")));
    let sig = std::fs::read_to_string(p("candidate.wasm.sig")).unwrap();
    let raw = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(sig.trim()).unwrap()
    };
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let module = std::fs::read(p("candidate.wasm")).unwrap();
    let s = start(dir, "require_signature = true\ntrusted_keys = [\"team.pub.pem\"]\n");
    let r = admin(&s, "POST", "/v1/rules/risk/shadow", &module);
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.json()["detail"].as_str().unwrap().contains("unsigned"), "{}", r.text);
    let r = admin(&s, "POST", &format!("/v1/rules/risk/shadow?signature={hex}"), &module);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["module"]["signed_by"].as_str().map(str::len), Some(12));
    let r = admin(&s, "POST", "/v1/rules/risk/promote", b"");
    assert_eq!(r.json()["live"]["stages"][0]["outcome"], "reloaded", "{}", r.text);
    assert_eq!(scores(&s), [json!(60), json!(0), json!(70)]);

    // The team's key is rotated: the configured module is signed with the
    // new one, the promoted version is not. The service still starts, on
    // the configured module (it refused to start before: the promoted
    // version's signature failed the build).
    let mut s = s;
    let p = |name: &str| s.dir.path().join(name);
    run(bin().args(["rule", "keygen"]).arg(p("team2")));
    run(bin().args(["rule", "sign"]).arg(p("risk.wasm")).arg("--key").arg(p("team2.pem")));
    let config = std::fs::read_to_string(p("config.toml")).unwrap().replace("team.pub.pem", "team2.pub.pem");
    std::fs::write(p("config.toml"), config).unwrap();
    s.restart();
    assert_eq!(scores(&s), [json!(90), json!(10), json!(20)]);
}

#[test]
fn rule_diff_compares_two_modules_offline() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    let lines: Vec<String> = events_as_lines();
    std::fs::write(&events, lines.join("\n")).unwrap();
    let diff = |extra: &[&str]| {
        let out = bin()
            .args(["rule", "diff"])
            .arg(repo().join("rules/risk.wasm"))
            .arg(repo().join("rules/examples/admin_ports.wasm"))
            .arg("--input")
            .arg(&events)
            .args(["-f", "flows.v1", "--ti"])
            .arg(repo().join("ti/indicators.txt"))
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let text = diff(&[]);
    assert!(text.contains("events compared: 3\nevents differing: 3 (score: 3, reasons: 2)"), "{text}");
    assert!(text.contains("<= 90          1        0"), "{text}");
    let json: Value = serde_json::from_str(&diff(&["--json"])).unwrap();
    // The same summary as the server's (same events, same modules).
    assert_eq!(json["summary"]["events_differing"], 3);
    assert_eq!(json["summary"]["samples"][0]["shadow"]["reasons"], json!(["rdp"]));
    let bad = bin()
        .args(["rule", "diff"])
        .arg(repo().join("rules/risk.wasm"))
        .arg(dir.path().join("missing.wasm"))
        .arg("--input")
        .arg(&events)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("missing.wasm"));
}

fn events_as_lines() -> Vec<String> {
    events().as_array().unwrap().iter().map(Value::to_string).collect()
}

/// A `shadow_module` that cannot load fails only itself: the live rule
/// starts and scores, the stage reports the shadow's problem.
#[test]
fn a_broken_configured_shadow_leaves_the_live_rule_serving() {
    let s = start(tempfile::tempdir().unwrap(), "shadow_module = \"missing.wasm\"\n");
    assert_eq!(scores(&s), [json!(90), json!(10), json!(20)], "the live rule's verdicts");
    let r = call(&s, "GET", "/v1/enrichers", common::KEY, b"");
    assert_eq!(r.status, 200, "{}", r.text);
    let stage = r.json()["enrichers"].as_array().unwrap().iter().find(|e| e["name"] == "risk").cloned().unwrap();
    assert_eq!(stage["state"], "loaded", "{stage}");
    let error = stage["details"]["shadow_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("missing.wasm"), "{stage}");
}
