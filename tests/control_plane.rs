//! The control plane end to end: one real `nats-server` (JetStream) and
//! three real `enrichd` instances, each with `[[update]] type =
//! "nats_object"` entries for its rule module and its indicator file. A
//! rule published once with `enrichd publish` must be live on all three
//! within 2 s (each instance's answer to a probe event shows the new
//! rule's verdict); a broken module published behind the CLI's back must
//! leave all three on the old rule, each reporting the refusal; published
//! indicators must match; `enrichd cluster status` must list the three,
//! and an instance stopped cleanly must leave that list at once.
//! A chain file (`chain_file`) published the same way changes every
//! instance's chain; a broken one changes none.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::nats::NatsServer;
use common::{bin, repo, Server, KEY};
use serde_json::{json, Value};

fn config(url: &str) -> String {
    format!(
        r#"[auth]
api_keys = ["{KEY}"]

[[chain]]
plugin = "ti"
paths = ["ti.txt"]

[[chain]]
plugin = "wasm"
name = "risk"
module = "rule.wasm"

[[update]]
type = "nats_object"
name = "risk"
path = "rule.wasm"
servers = ["{url}"]
bucket = "control"
object = "risk.wasm"
interval_s = 3600

[[update]]
type = "nats_object"
name = "indicators"
path = "ti.txt"
servers = ["{url}"]
bucket = "control"
interval_s = 3600
"#
    )
}

fn instance(url: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("rules/risk.wasm"), dir.path().join("rule.wasm")).unwrap();
    std::fs::write(dir.path().join("ti.txt"), "198.51.100.1\n").unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config(url)).unwrap();
    Server::start_file(&path, &[], dir)
}

/// An SSH connection from a documentation address: the risk rule and
/// `admin_ports` judge it differently, the indicator test matches its source.
fn probe(s: &Server) -> Value {
    let r = s.ingest(
        "flows.v1",
        json!([{"src_ip": "203.0.113.77", "dst_ip": "8.8.8.8", "src_port": 50000, "dst_port": 22, "bytes": 100}]),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["records"][0].clone()
}

fn verdict(record: &Value) -> (Value, Value) {
    (record["risk_score"].clone(), record["reasons"].clone())
}

fn stage(s: &Server, name: &str) -> Value {
    let doc = s.get_auth("/v1/enrichers").json();
    doc["enrichers"].as_array().unwrap().iter().find(|e| e["name"] == name).cloned().unwrap()
}

fn publish(kind: &str, name: &str, file: &Path, config: &Path) -> std::process::Output {
    bin().args(["publish", kind, name]).arg(file).arg("--config").arg(config).output().unwrap()
}

#[test]
fn a_rule_published_once_is_live_on_every_instance_and_a_broken_one_nowhere() {
    let Some(nats) = NatsServer::start("a_rule_published_once_is_live_on_every_instance_and_a_broken_one_nowhere")
    else {
        return;
    };
    let instances: Vec<Server> = (0..3).map(|_| instance(&nats.url)).collect();
    let config_path = instances[0].dir.path().join("config.toml");
    let old = verdict(&probe(&instances[0]));
    let new = (json!(40), json!(["ssh"]));
    assert_ne!(old, new, "the probe must tell the two rules apart");
    for s in &instances {
        assert_eq!(verdict(&probe(s)), old);
        assert_eq!(stage(s, "risk")["sources"][0]["origin"], json!({"from": "file"}));
    }

    // Published once: live everywhere within 2 s of the command's answer.
    let out = publish("rule", "risk", &repo().join("rules/examples/admin_ports.wasm"), &config_path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    let published = Instant::now();
    let revision = printed.split("revision ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().to_string();
    common::wait_for("the new rule on all three instances", Duration::from_secs(10), || {
        instances.iter().all(|s| verdict(&probe(s)) == new)
    });
    let took = published.elapsed();
    eprintln!("published rule live on all three instances after {took:?}");
    assert!(took <= Duration::from_secs(2), "live on all three after {took:?}");
    for s in &instances {
        let origin = &stage(s, "risk")["sources"][0]["origin"];
        assert_eq!(origin["from"], "update", "{origin}");
        assert_eq!(origin["update"], "risk");
        assert_eq!(origin["revision"], revision.as_str(), "{origin}");
        let text = s.get_auth("/metrics").text;
        let line = format!(
            "telemetry_enricher_content_info{{enricher=\"risk\",from=\"update\",update=\"risk\",revision=\"{revision}\"}} 1"
        );
        assert!(text.contains(&line), "{line} in /metrics");
    }

    // A broken module: the CLI refuses it...
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm\x01\0\0\0 this is not a module").unwrap();
    let out = publish("rule", "risk", &broken, &config_path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a module the wasm stage would load"), "{err}");
    // ...and when someone puts it in the bucket anyway, every instance
    // keeps the last good rule and reports the refusal.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
        let store = js.get_object_store("control").await.unwrap();
        store.put("risk.wasm", &mut &b"\0asm\x01\0\0\0 this is not a module"[..]).await.unwrap();
    });
    common::wait_for("the refusal on all three instances", Duration::from_secs(10), || {
        instances.iter().all(|s| stage(s, "risk")["reload_failures"].as_u64().unwrap_or(0) >= 1)
    });
    for s in &instances {
        let risk = stage(s, "risk");
        assert!(risk["last_reload_error"].as_str().is_some_and(|e| !e.is_empty()), "{risk}");
        assert_eq!(risk["sources"][0]["origin"]["revision"], revision.as_str(), "still the good one: {risk}");
        assert_eq!(verdict(&probe(s)), new);
    }

    // Indicators: published once, matched everywhere.
    let indicators = dir.path().join("indicators.txt");
    std::fs::write(&indicators, "# control plane test\n203.0.113.77\n").unwrap();
    assert!(probe(&instances[0])["ti"].is_null() || !probe(&instances[0])["ti"].to_string().contains("203.0.113.77"));
    let out = publish("indicators", "indicators", &indicators, &config_path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    common::wait_for("the published indicator on all three instances", Duration::from_secs(10), || {
        instances.iter().all(|s| probe(s)["ti"].to_string().contains("203.0.113.77"))
    });
    for s in &instances {
        assert_eq!(stage(s, "ti")["sources"][0]["origin"]["update"], "indicators");
    }

    // The status board: every instance reports itself (renewed every 5 s),
    // with the rule's revision it serves.
    let ids: Vec<String> = instances
        .iter()
        .map(|s| s.get_auth("/v1/enrichers").json()["instance"]["id"].as_str().unwrap().to_string())
        .collect();
    let mut members = Vec::new();
    common::wait_for("three instances on the board, each serving the published rule", Duration::from_secs(15), || {
        let out = bin().args(["cluster", "status", "--json", "--config"]).arg(&config_path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        members = serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap();
        members.len() == 3
            && members.iter().all(|m| {
                let risk = m["stages"].as_array().unwrap().iter().find(|s| s["name"] == "risk").unwrap();
                risk["content"][0]["revision"] == revision.as_str()
            })
    });
    for m in &members {
        assert!(ids.iter().any(|id| m["instance"] == id.as_str()), "{m}");
        assert!(m["uptime_s"].is_u64() && m["events_per_s"].is_number(), "{m}");
        let risk = m["stages"].as_array().unwrap().iter().find(|s| s["name"] == "risk").unwrap();
        assert_eq!(risk["generation"], 2, "{m}");
        assert_eq!(risk["content"][0]["sha256"].as_str().map(str::len), Some(64), "{m}");
    }
    let out = bin().args(["cluster", "status", "--config"]).arg(&config_path).output().unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("3 instance(s)") && ids.iter().all(|id| table.contains(id.as_str())), "{table}");
    for s in &instances {
        let board = &s.get_auth("/v1/enrichers").json()["instance"]["board"];
        assert_eq!(board["update"], "risk", "{board}");
        assert!(board["announces"].as_u64().unwrap() >= 1 && board["last_error"].is_null(), "{board}");
    }

    // A clean shutdown takes the instance off the board at once, not
    // after its entry's 15 s time to live.
    let mut instances = instances;
    let mut stopped = instances.pop().unwrap();
    let stopped_id = &ids[2];
    assert!(stopped.terminate().success());
    common::wait_for("the stopped instance's log line", Duration::from_secs(5), || {
        stopped.log().contains("removed this instance from the status board")
    });
    let out = bin().args(["cluster", "status", "--json", "--config"]).arg(&config_path).output().unwrap();
    let members = serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap();
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.iter().all(|m| m["instance"] != stopped_id.as_str()), "{members:?}");

    // Publishing through an entry that does not exist says which do.
    let out = publish("indicators", "nope", &indicators, &config_path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no enabled [[update]] entry named \"nope\"") && err.contains("risk, indicators"), "{err}");
}

/// An instance whose chain lives in `chain.toml`, kept current from the
/// bucket by the `[[update]]` entry `chain`.
fn chain_file_instance(url: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("rules/risk.wasm"), dir.path().join("rule.wasm")).unwrap();
    std::fs::write(dir.path().join("ti.txt"), "203.0.113.77\n").unwrap();
    std::fs::write(dir.path().join("chain.toml"), "[[chain]]\nplugin = \"ti\"\npaths = [\"ti.txt\"]\n").unwrap();
    let config = format!(
        r#"chain_file = "chain.toml"

[auth]
api_keys = ["{KEY}"]

[[update]]
type = "nats_object"
name = "chain"
path = "chain.toml"
servers = ["{url}"]
bucket = "control"
interval_s = 3600
"#
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    Server::start_file(&path, &[], dir)
}

#[test]
fn a_chain_file_published_once_changes_every_instance_and_a_broken_one_none() {
    let Some(nats) = NatsServer::start("a_chain_file_published_once_changes_every_instance_and_a_broken_one_none")
    else {
        return;
    };
    let instances: Vec<Server> = (0..2).map(|_| chain_file_instance(&nats.url)).collect();
    let config_path = instances[0].dir.path().join("config.toml");
    for s in &instances {
        let record = probe(s);
        assert!(record["ti"].to_string().contains("203.0.113.77") && record["risk_score"].is_null(), "{record}");
        let doc = s.get_auth("/v1/enrichers").json();
        assert_eq!(doc["chain_file"]["origin"], json!({"from": "file"}), "{doc}");
    }

    // The CLI refuses a chain no instance could build...
    let dir = tempfile::tempdir().unwrap();
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[[chain]]\nplugin = \"ti\"\npaths = [\"ti.txt\"]\n\n[[chain]]\nplugin = \"nope\"\n")
        .unwrap();
    let out = publish("chain", "chain", &unknown, &config_path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown.toml:5") && err.contains("unknown plugin \"nope\""), "{err}");
    let sections = dir.path().join("sections.toml");
    std::fs::write(&sections, "[[chain]]\nplugin = \"ti\"\n\n[auth]\napi_keys = [\"x\"]\n").unwrap();
    let out = publish("chain", "chain", &sections, &config_path);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `auth`"));

    // ...and publishes a good one: the risk rule joins every chain.
    let good = dir.path().join("chain.toml");
    let text = "[[chain]]\nplugin = \"ti\"\npaths = [\"ti.txt\"]\n\n[[chain]]\nplugin = \"wasm\"\nname = \"risk\"\nmodule = \"rule.wasm\"\n";
    std::fs::write(&good, text).unwrap();
    let out = publish("chain", "chain", &good, &config_path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    let revision = printed.split("revision ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().to_string();
    common::wait_for("the published chain on both instances", Duration::from_secs(10), || {
        instances.iter().all(|s| probe(s)["risk_score"].is_number())
    });
    for s in &instances {
        let doc = s.get_auth("/v1/enrichers").json();
        let origin = &doc["chain_file"]["origin"];
        assert_eq!(origin["update"], "chain", "{doc}");
        assert_eq!(origin["revision"], revision.as_str(), "{doc}");
        // Applied by the updater (and seen again, unchanged, by the watcher).
        assert!(doc["reload"]["config_reloads"].as_u64() >= Some(1), "{doc}");
        assert!(doc["enrichers"].as_array().unwrap().iter().any(|e| e["name"] == "risk"), "{doc}");
        // The public view names no path.
        assert!(!s.get("/v1/metrics").text.contains("chain.toml"));
    }

    // Put into the bucket behind the CLI's back, a chain naming an unknown
    // plugin is refused by every instance, which keeps its running chain.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
        let store = js.get_object_store("control").await.unwrap();
        store.put("chain", &mut &b"[[chain]]\nplugin = \"nope\"\n"[..]).await.unwrap();
    });
    common::wait_for("the refusal on both instances", Duration::from_secs(10), || {
        instances
            .iter()
            .all(|s| s.get_auth("/v1/enrichers").json()["reload"]["config_reload_failures"].as_u64() >= Some(1))
    });
    for s in &instances {
        let doc = s.get_auth("/v1/enrichers").json();
        let error = doc["reload"]["last_config_error"].as_str().unwrap_or_default();
        assert!(error.contains("nope"), "{doc}");
        assert!(probe(s)["risk_score"].is_number(), "the published chain keeps serving");
    }
}
