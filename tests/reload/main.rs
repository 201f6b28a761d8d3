//! Hot reload, end to end: the real binary, real files edited the ways
//! tools edit them, under continuous ingest load from a concurrent client.
//!
//! Every loaded request must succeed, and every batch must be enriched by
//! one version: all its events carry the same generation stamp, and the
//! enrichment observed for each stage generation never varies (a batch
//! mixing old and new data would show two answers for one generation).

#[path = "../common/mod.rs"]
mod common;
mod control;
mod files;
mod replaced;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{agent, data, repo, Server, KEY};
use serde_json::{json, Value};

const ADMIN: &str = "admin-key-5d1e";
const GEN: &str = "enrichd_generation";
/// The address the edited indicators are about.
const TARGET: &str = "203.0.113.77";
/// How long a change may take to be live before the test fails. Generous on
/// purpose: these tests run a dozen servers (debug builds) with load clients
/// in parallel on two cores, and the watcher runs at a lower CPU priority
/// than ingest, so under the suite's load it can wait seconds for a core.
/// How fast a change goes live is a benchmark figure
/// (`examples/reload_bench`, docs/PERFORMANCE.md), not a test assertion.
const LIVE_WITHIN: Duration = Duration::from_secs(15);

fn config(chain: &str, extra: &str) -> String {
    format!(
        "[auth]\napi_keys = [\"{KEY}\"]\nadmin_keys = [\"{ADMIN}\"]\n\n[reload]\ndebounce_ms = 100\n\
         generation_field = \"{GEN}\"\n{extra}\n{chain}"
    )
}

fn start(dir: tempfile::TempDir, config_text: &str) -> Server {
    let path = dir.path().join("config.toml");
    fs::write(&path, config_text).unwrap();
    Server::start_file(&path, &[], dir)
}

fn flows(n: usize, dst_port: u16, dst_ip: &str) -> Value {
    let records: Vec<Value> = (0..n)
        .map(|i| {
            let src = if i % 2 == 0 { TARGET.to_string() } else { format!("198.18.0.{}", i % 250 + 1) };
            json!({"ts": 1_700_000_000 + i, "src_ip": src, "dst_ip": dst_ip, "src_port": 40000 + i,
                   "dst_port": dst_port, "protocol": "tcp", "bytes": 1200})
        })
        .collect();
    Value::Array(records)
}

fn ingest(base: &str, records: &Value) -> Result<Vec<Value>, String> {
    let body = json!({"collector_id": "reload-test", "format": "flows.v1", "records": records});
    let mut resp = agent()
        .post(&format!("{base}/v1/ingest"))
        .header("Authorization", format!("Bearer {KEY}"))
        .send_json(&body)
        .map_err(|e| format!("transport: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("status {status}: {text}"));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(v["records"].as_array().cloned().unwrap_or_default())
}

/// What a test looks at in an enriched event.
type Observe = fn(&Value) -> String;

fn ti_of_target(event: &Value) -> String {
    let mut hits: Vec<String> = event["ti"]["matches"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["field"] == "src_ip")
        .map(|m| format!("{}@{}", m["indicator"].as_str().unwrap_or(""), m["source"].as_str().unwrap_or("")))
        .collect();
    hits.sort();
    hits.join(",")
}

fn score(event: &Value) -> String {
    event["risk_score"].to_string()
}

fn city(event: &Value) -> String {
    event["geo"]["city"].to_string()
}

/// A client sending batches until stopped, checking every answer.
struct Load {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(u64, Vec<String>)>,
}

impl Load {
    fn start(base: &str, records: Value, stage: &'static str, observe: Observe) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let base = base.to_string();
        let handle = std::thread::spawn(move || {
            let mut problems = Vec::new();
            let mut seen: BTreeMap<u64, String> = BTreeMap::new();
            let mut requests = 0;
            while !flag.load(Ordering::Relaxed) {
                requests += 1;
                let events = match ingest(&base, &records) {
                    Ok(e) => e,
                    Err(e) => {
                        problems.push(e);
                        continue;
                    }
                };
                let stamp = &events[0][GEN];
                if events.iter().any(|e| &e[GEN] != stamp) {
                    problems.push(format!("one batch carries several generation stamps: {stamp}"));
                }
                let Some(generation) = stamp[stage].as_u64() else {
                    problems.push(format!("no {stage} generation in stamp {stamp}"));
                    continue;
                };
                // Events of the target address (even positions) must all agree.
                let answers: Vec<String> = events.iter().step_by(2).map(observe).collect();
                if answers.iter().any(|a| a != &answers[0]) {
                    problems
                        .push(format!("mixed answers in one batch at {stage} generation {generation}: {answers:?}"));
                }
                match seen.get(&generation) {
                    Some(prev) if prev != &answers[0] => problems
                        .push(format!("{stage} generation {generation} answered both {prev:?} and {:?}", answers[0])),
                    _ => {
                        seen.insert(generation, answers[0].clone());
                    }
                }
            }
            (requests, problems)
        });
        Load { stop, handle }
    }

    /// Stops the client and fails the test on any failed or mixed batch.
    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let (requests, problems) = self.handle.join().expect("load thread");
        assert!(requests > 10, "the load client sent only {requests} requests");
        assert!(
            problems.is_empty(),
            "{} problems in {requests} requests: {:?}",
            problems.len(),
            &problems[..problems.len().min(5)]
        );
    }
}

/// Sends `records` until `observe` on the first event gives `want`;
/// returns how long it took. Panics after `within`.
fn wait_for(base: &str, records: &Value, observe: Observe, want: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let events = ingest(base, records).expect("ingest");
        let got = observe(&events[0]);
        if got == want {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "not live within {within:?}: want {want:?}, still {got:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Stays at `want` for `period` (a refused reload must not change answers).
fn stays(base: &str, records: &Value, observe: Observe, want: &str, period: Duration) {
    let started = Instant::now();
    while started.elapsed() < period {
        let events = ingest(base, records).expect("ingest");
        assert_eq!(observe(&events[0]), want, "the answer changed although the reload should have been refused");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stage(server: &Server, name: &str) -> Value {
    let all = server.get_auth("/v1/enrichers").json();
    all["enrichers"].as_array().unwrap().iter().find(|e| e["name"] == name).cloned().expect("stage listed")
}

/// Writes via a temporary file and a rename, like most tools that care.
fn rename_over(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("tmp-new");
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn ti_chain(paths: &str) -> String {
    format!("[[chain]]\nplugin = \"ti\"\npaths = [{paths}]\n")
}

fn admin(server: &Server, method: &str, path: &str, body: Option<&Value>, key: &str) -> common::Reply {
    let url = server.url(path);
    let auth = format!("Bearer {key}");
    let resp = match (method, body) {
        ("PUT", Some(b)) => agent().put(&url).header("Authorization", &auth).send_json(b),
        ("POST", _) => agent().post(&url).header("Authorization", &auth).send_empty(),
        ("DELETE", _) => agent().delete(&url).header("Authorization", &auth).call(),
        _ => agent().get(&url).header("Authorization", &auth).call(),
    };
    let mut resp = resp.expect("HTTP exchange");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    common::Reply { status, headers, text: resp.body_mut().read_to_string().unwrap() }
}
