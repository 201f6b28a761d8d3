//! Hot reload, end to end: the real binary, real files edited the ways
//! tools edit them, under continuous ingest load from a concurrent client.
//!
//! Every loaded request must succeed, and every batch must be enriched by
//! one version: all its events carry the same generation stamp, and the
//! enrichment observed for each stage generation never varies (a batch
//! mixing old and new data would show two answers for one generation).

mod common;

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

#[test]
fn indicator_file_edits_go_live_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.txt");
    fs::write(&feed, "198.51.100.0/24\n").unwrap();
    let server = start(dir, &config(&ti_chain("\"feed.txt\""), ""));
    let probe = flows(2, 443, "192.0.2.1");
    let load = Load::start(&server.base, flows(50, 443, "192.0.2.1"), "ti", ti_of_target);
    assert_eq!(ingest(&server.base, &probe).unwrap()[0]["ti"]["matches"], json!([]));

    // Append in place.
    let mut file = fs::OpenOptions::new().append(true).open(&feed).unwrap();
    std::io::Write::write_all(&mut file, format!("{TARGET}\n").as_bytes()).unwrap();
    drop(file);
    let took = wait_for(&server.base, &probe, ti_of_target, &format!("{TARGET}@feed.txt"), LIVE_WITHIN);
    eprintln!("append live after {took:?}");

    // Write to a temporary file, rename over.
    rename_over(&feed, b"203.0.113.0/24\n");
    wait_for(&server.base, &probe, ti_of_target, "203.0.113.0/24@feed.txt", LIVE_WITHIN);

    // Delete, then create: while the file is gone the last good version
    // stays live and the refusal is visible.
    fs::remove_file(&feed).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    stays(&server.base, &probe, ti_of_target, "203.0.113.0/24@feed.txt", Duration::from_millis(200));
    let ti = stage(&server, "ti");
    assert!(ti["last_reload_error"].as_str().unwrap_or("").contains("not found"), "{ti}");
    assert!(ti["reload_failures"].as_u64().unwrap() >= 1);
    fs::write(&feed, format!("{TARGET}\n")).unwrap();
    wait_for(&server.base, &probe, ti_of_target, &format!("{TARGET}@feed.txt"), LIVE_WITHIN);
    assert!(stage(&server, "ti")["last_reload_error"].is_null(), "a good reload clears the error");

    // Garbage (or a write caught half-way) is refused: last good stays.
    fs::write(&feed, "this is not\nan indicator file\n").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    stays(&server.base, &probe, ti_of_target, &format!("{TARGET}@feed.txt"), Duration::from_millis(200));
    assert!(stage(&server, "ti")["last_reload_error"].as_str().unwrap().contains("no valid indicator"));

    // An editor's swap file next to the feed changes nothing.
    let generation = stage(&server, "ti")["generation"].as_u64().unwrap();
    fs::write(feed.with_file_name(".feed.txt.swp"), "binary junk").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(stage(&server, "ti")["generation"].as_u64().unwrap(), generation);

    // Copy over (truncate and rewrite in place).
    fs::write(&feed, "203.0.113.64/26\n").unwrap();
    wait_for(&server.base, &probe, ti_of_target, "203.0.113.64/26@feed.txt", LIVE_WITHIN);
    load.finish();
    let ti = stage(&server, "ti");
    assert!(ti["reloads"].as_u64().unwrap() >= 4, "{ti}");
}

#[test]
fn indicator_directory_gains_and_loses_files() {
    let dir = tempfile::tempdir().unwrap();
    let feeds = dir.path().join("feeds");
    fs::create_dir(&feeds).unwrap();
    fs::write(feeds.join("a.txt"), "198.51.100.1\n").unwrap();
    let server = start(dir, &config(&ti_chain("\"feeds\""), ""));
    let probe = flows(2, 443, "192.0.2.1");
    let load = Load::start(&server.base, flows(50, 443, "192.0.2.1"), "ti", ti_of_target);
    assert_eq!(ti_of_target(&ingest(&server.base, &probe).unwrap()[0]), "");

    fs::write(feeds.join("b.csv"), format!("ip_or_cidr,category,confidence\n{TARGET},c2,90\n")).unwrap();
    wait_for(&server.base, &probe, ti_of_target, &format!("{TARGET}@feeds/b.csv"), LIVE_WITHIN);
    let events = ingest(&server.base, &probe).unwrap();
    assert_eq!(events[0]["ti"]["matches"][0]["category"], "c2");

    fs::write(feeds.join("c.txt"), "203.0.113.0/24\n").unwrap();
    wait_for(
        &server.base,
        &probe,
        ti_of_target,
        &format!("203.0.113.0/24@feeds/c.txt,{TARGET}@feeds/b.csv"),
        LIVE_WITHIN,
    );

    fs::remove_file(feeds.join("b.csv")).unwrap();
    wait_for(&server.base, &probe, ti_of_target, "203.0.113.0/24@feeds/c.txt", LIVE_WITHIN);
    fs::remove_file(feeds.join("c.txt")).unwrap();
    wait_for(&server.base, &probe, ti_of_target, "", LIVE_WITHIN);
    load.finish();
}

#[test]
fn wasm_rule_swap_and_broken_module() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("rule.wasm");
    fs::copy(repo().join("rules/risk.wasm"), &module).unwrap();
    let chain = "[[chain]]\nplugin = \"wasm\"\nname = \"risk\"\nmodule = \"rule.wasm\"\nrole = \"rule\"\n";
    let server = start(dir, &config(chain, ""));
    // Telnet: the default rule gives 10 + 10, the C example rule 70.
    let probe = flows(2, 23, "192.0.2.1");
    let load = Load::start(&server.base, flows(50, 23, "192.0.2.1"), "risk", score);
    assert_eq!(score(&ingest(&server.base, &probe).unwrap()[0]), "20");

    rename_over(&module, &fs::read(repo().join("rules/examples/admin_ports.wasm")).unwrap());
    let took = wait_for(&server.base, &probe, score, "70", LIVE_WITHIN);
    eprintln!("new rule live after {took:?}");
    let generation = stage(&server, "risk")["generation"].as_u64().unwrap();

    // Not WebAssembly, then a module missing the ABI: both refused.
    rename_over(&module, b"\0asm garbage that is not a module");
    std::thread::sleep(Duration::from_millis(600));
    stays(&server.base, &probe, score, "70", Duration::from_millis(200));
    let risk = stage(&server, "risk");
    assert_eq!(risk["generation"].as_u64().unwrap(), generation);
    assert!(risk["last_reload_error"].as_str().unwrap().contains("rule.wasm"), "{risk}");
    assert_eq!(risk["state"], "loaded");

    rename_over(&module, b"\0asm\x01\0\0\0");
    std::thread::sleep(Duration::from_millis(600));
    stays(&server.base, &probe, score, "70", Duration::from_millis(200));

    rename_over(&module, &fs::read(repo().join("rules/risk.wasm")).unwrap());
    wait_for(&server.base, &probe, score, "20", LIVE_WITHIN);
    load.finish();
}

#[test]
fn mmdb_swap_in_place_and_truncated_copy() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("geo.mmdb");
    fs::copy(data("maxmind/GeoIP2-City-Test.mmdb"), &db).unwrap();
    let chain = "[[chain]]\nplugin = \"geoip\"\ndatabase = \"geo.mmdb\"\n";
    let server = start(dir, &config(chain, ""));
    let probe = flows(2, 443, "81.2.69.142");
    let load = Load::start(&server.base, flows(50, 443, "81.2.69.142"), "geoip", city);
    assert_eq!(city(&ingest(&server.base, &probe).unwrap()[0]), "\"London\"");

    // `cp` over the mapped file: truncates and rewrites it in place.
    fs::copy(data("maxmind/GeoIP2-Country-Test.mmdb"), &db).unwrap();
    wait_for(&server.base, &probe, city, "null", LIVE_WITHIN);
    assert_eq!(ingest(&server.base, &probe).unwrap()[0]["geo"]["country"], "GB");

    // A truncated copy is refused; the Country database stays live.
    let full = fs::read(data("maxmind/GeoIP2-City-Test.mmdb")).unwrap();
    fs::write(&db, &full[..full.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    stays(&server.base, &probe, city, "null", Duration::from_millis(200));
    let geo = stage(&server, "geoip");
    assert!(geo["last_reload_error"].as_str().is_some(), "{geo}");
    assert!(geo["version"].as_str().unwrap().contains("Country"), "{geo}");

    fs::write(&db, &full).unwrap();
    wait_for(&server.base, &probe, city, "\"London\"", LIVE_WITHIN);
    load.finish();
}

#[test]
fn config_changes_apply_live_or_ask_for_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("feed.txt"), format!("{TARGET}\n")).unwrap();
    let asn = format!("[[chain]]\nplugin = \"asn\"\ndatabase = \"{}\"\n", data("maxmind/GeoLite2-ASN-Test.mmdb"));
    let chain = format!("{}{asn}", ti_chain("\"feed.txt\""));
    let server = start(dir, &config(&chain, ""));
    let path = server.dir.path().join("config.toml");
    let probe = flows(2, 443, "1.128.0.1");
    let has_asn = |e: &Value| e["asn"]["asn"].to_string();
    assert_eq!(has_asn(&ingest(&server.base, &probe).unwrap()[0]), "1221");
    let ti_generation = stage(&server, "ti")["generation"].clone();

    // Disable a stage: applied live; the untouched stage keeps its data.
    fs::write(
        &path,
        config(&format!("{}{}", ti_chain("\"feed.txt\""), asn.replace("\"asn\"\n", "\"asn\"\nenabled = false\n")), ""),
    )
    .unwrap();
    wait_for(&server.base, &probe, has_asn, "null", LIVE_WITHIN);
    assert_eq!(stage(&server, "ti")["generation"], ti_generation);
    assert_eq!(ti_of_target(&ingest(&server.base, &probe).unwrap()[0]), format!("{TARGET}@feed.txt"));

    // A broken configuration is refused whole, with file and line.
    fs::write(&path, config(&format!("{chain}[[chain]]\nplugin = \"no-such-plugin\"\n"), "")).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let status = server.get_auth("/v1/enrichers").json();
    let error = status["reload"]["last_config_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("config.toml:") && error.contains("no-such-plugin"), "{status}");
    assert_eq!(has_asn(&ingest(&server.base, &probe).unwrap()[0]), "null");

    // What cannot change live is reported, not ignored.
    fs::write(&path, config(&chain, "[server]\nmax_records = 5\n")).unwrap();
    wait_for(&server.base, &probe, has_asn, "1221", LIVE_WITHIN);
    let status = server.get_auth("/v1/enrichers").json();
    assert_eq!(status["reload"]["needs_restart"], json!(["server"]), "{status}");
    assert!(ingest(&server.base, &flows(8, 443, "1.128.0.1")).is_ok(), "the running limit stays until restart");
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

#[test]
fn api_indicators_need_the_admin_key_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("feed.txt"), "198.51.100.0/24\n").unwrap();
    let text = config(&ti_chain("\"feed.txt\""), "");
    let server = start(dir, &text);
    let probe = flows(2, 443, "192.0.2.1");
    let put = json!({"indicators": [{"indicator": TARGET, "category": "scanner", "confidence": 75}]});

    // A valid key of the wrong kind is known but not allowed: 403 (an
    // unknown key stays 401).
    let r = admin(&server, "PUT", "/v1/indicators", Some(&put), KEY);
    assert_eq!((r.status, r.json()["error"].clone()), (403, json!("admin_key_required")), "{}", r.text);
    assert_eq!(admin(&server, "POST", "/v1/reload", None, KEY).status, 403);
    assert_eq!(admin(&server, "PUT", "/v1/indicators", Some(&put), "not-a-key").status, 401);
    let bad = json!([{"indicator": TARGET}, {"indicator": "999.1.1.1"}]);
    let r = admin(&server, "PUT", "/v1/indicators", Some(&bad), ADMIN);
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["index"], 1);
    assert!(
        admin(&server, "GET", "/v1/indicators", None, ADMIN).json()["indicators"].as_array().unwrap().is_empty(),
        "nothing of a refused request is stored"
    );

    let r = admin(&server, "PUT", "/v1/indicators", Some(&put), ADMIN);
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json()["indicators"][0]["id"].as_str().unwrap().to_string();
    // Live when the call returns.
    let event = &ingest(&server.base, &probe).unwrap()[0];
    assert_eq!(ti_of_target(event), format!("{TARGET}@api"));
    assert_eq!(event["ti"]["matches"][0]["category"], "scanner");

    // A restart on the same state directory keeps it.
    let mut server = server;
    server.restart();
    assert_eq!(ti_of_target(&ingest(&server.base, &probe).unwrap()[0]), format!("{TARGET}@api"));

    let r = admin(&server, "DELETE", &format!("/v1/indicators/{id}"), None, ADMIN);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(ti_of_target(&ingest(&server.base, &probe).unwrap()[0]), "");
    assert_eq!(admin(&server, "DELETE", &format!("/v1/indicators/{id}"), None, ADMIN).status, 404);
}

#[test]
fn admin_endpoints_are_disabled_without_an_admin_key() {
    let server = Server::start(&common::test_chain());
    let r = admin(&server, "POST", "/v1/reload", None, KEY);
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.json()["error"], "admin_disabled");
}

#[test]
fn sighup_and_reload_endpoint_work_without_watching() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.txt");
    fs::write(&feed, "198.51.100.0/24\n").unwrap();
    let server =
        start(dir, &config(&ti_chain("\"feed.txt\""), "watch = false\n").replace("\n\n[[chain]]", "\n[[chain]]"));
    let probe = flows(2, 443, "192.0.2.1");

    fs::write(&feed, format!("{TARGET}\n")).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(ti_of_target(&ingest(&server.base, &probe).unwrap()[0]), "", "not watching: nothing reloads by itself");
    let r = admin(&server, "POST", "/v1/reload", None, ADMIN);
    assert_eq!(r.status, 200, "{}", r.text);
    let stages = r.json()["stages"].clone();
    assert_eq!(stages[0]["outcome"], "reloaded", "{stages}");
    assert_eq!(ti_of_target(&ingest(&server.base, &probe).unwrap()[0]), format!("{TARGET}@feed.txt"));

    fs::write(&feed, "203.0.113.0/24\n").unwrap();
    let pid = server.pid();
    let status = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    wait_for(&server.base, &probe, ti_of_target, "203.0.113.0/24@feed.txt", LIVE_WITHIN);
}

#[test]
fn a_database_added_after_start_goes_live() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("geo")).unwrap();
    let chain = "[[chain]]\nplugin = \"geoip\"\ndatabase = \"geo/City.mmdb\"\n";
    let server = start(dir, &config(chain, ""));
    let probe = flows(2, 443, "81.2.69.142");
    assert_eq!(stage(&server, "geoip")["state"], "missing");
    assert_eq!(city(&ingest(&server.base, &probe).unwrap()[0]), "null");
    fs::copy(data("maxmind/GeoIP2-City-Test.mmdb"), server.dir.path().join("geo/City.mmdb")).unwrap();
    wait_for(&server.base, &probe, city, "\"London\"", LIVE_WITHIN);
    assert_eq!(stage(&server, "geoip")["state"], "loaded");
}

/// Issue 17, item 1: a sparse 1 GiB file dropped into an indicator
/// directory is refused by its size (no read, no CPU spin, no giant error
/// text); a 10 MB line is skipped and reported by its length. The public
/// metrics and the enrichers report stay small throughout.
#[test]
fn huge_indicator_files_and_lines_are_refused_cheaply() {
    let dir = tempfile::tempdir().unwrap();
    let feeds = dir.path().join("feeds");
    fs::create_dir(&feeds).unwrap();
    fs::write(feeds.join("a.txt"), format!("{TARGET}\n")).unwrap();
    let server = start(dir, &config(&ti_chain("\"feeds\""), ""));
    let probe = flows(2, 443, "192.0.2.1");
    let load = Load::start(&server.base, flows(50, 443, "192.0.2.1"), "ti", ti_of_target);
    let want = format!("{TARGET}@feeds/a.txt");
    assert_eq!(ti_of_target(&ingest(&server.base, &probe).unwrap()[0]), want);
    let small = |server: &Server| {
        let metrics = server.get("/v1/metrics").text.len();
        let enrichers = server.get_auth("/v1/enrichers").text.len();
        assert!(metrics < 64 << 10 && enrichers < 64 << 10, "metrics {metrics} B, enrichers {enrichers} B");
    };

    let sparse = server.dir.path().join("feeds/sparse.txt");
    fs::File::create(&sparse).unwrap().set_len(1 << 30).unwrap();
    let started = Instant::now();
    loop {
        let ti = stage(&server, "ti");
        if ti["last_reload_error"].as_str().is_some_and(|e| e.contains("max_file_bytes")) {
            break;
        }
        assert!(started.elapsed() < LIVE_WITHIN, "no refusal within {LIVE_WITHIN:?}: {ti}");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("sparse 1 GiB file refused after {:?}", started.elapsed());
    stays(&server.base, &probe, ti_of_target, &want, Duration::from_millis(300));
    let health = Instant::now();
    assert_eq!(server.get("/v1/health").status, 200);
    assert!(health.elapsed() < Duration::from_millis(500));
    small(&server);

    // One good line and a 10 MB line of garbage: the good line is taken,
    // the bad one skipped, quoted by its length only.
    fs::remove_file(&sparse).unwrap();
    let mut text = b"198.51.100.0/24\n".to_vec();
    text.extend(std::iter::repeat_n(b'x', 10 << 20));
    text.push(b'\n');
    fs::write(server.dir.path().join("feeds/b.txt"), &text).unwrap();
    let started = Instant::now();
    while stage(&server, "ti")["version"] != "2 indicators from 2 files" {
        assert!(started.elapsed() < LIVE_WITHIN, "{}", stage(&server, "ti"));
        std::thread::sleep(Duration::from_millis(50));
    }
    small(&server);
    load.finish();
}

/// Issue 17, item 12: `serve --listen` (every test server runs with
/// `--listen 127.0.0.1:0`) is part of the running settings: an unchanged
/// file, or a file changing only the overridden address, needs no restart.
#[test]
fn cli_listen_is_not_a_pending_restart() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("feed.txt"), format!("{TARGET}\n")).unwrap();
    let text = config(&ti_chain("\"feed.txt\""), "watch = false\n").replace("\n\n[[chain]]", "\n[[chain]]");
    let server = start(dir, &text);
    let reload = |server: &Server| {
        let r = admin(server, "POST", "/v1/reload", None, ADMIN);
        assert_eq!(r.status, 200, "{}", r.text);
        r.json()["needs_restart"].clone()
    };
    assert_eq!(reload(&server), json!([]), "unchanged file");
    let path = server.dir.path().join("config.toml");
    fs::write(&path, format!("[server]\nlisten = \"127.0.0.1:9\"\n{text}")).unwrap();
    assert_eq!(reload(&server), json!([]), "the command line's address wins over the file's");
    fs::write(&path, format!("[server]\nmax_records = 5\n{text}")).unwrap();
    assert_eq!(reload(&server), json!(["server"]));
}

/// Issue 17, item 5: an emptied configuration file, or one cut before its
/// first `[[chain]]` that still parses, does not swap in an empty chain;
/// `chain = []` written out does.
#[test]
fn an_empty_or_chainless_config_keeps_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("feed.txt"), format!("{TARGET}\n")).unwrap();
    let text = config(&ti_chain("\"feed.txt\""), "");
    let server = start(dir, &text);
    let path = server.dir.path().join("config.toml");
    let probe = flows(2, 443, "192.0.2.1");
    let want = format!("{TARGET}@feed.txt");
    let load = Load::start(&server.base, flows(50, 443, "192.0.2.1"), "ti", ti_of_target);
    let failures =
        |server: &Server| server.get_auth("/v1/enrichers").json()["reload"]["config_reload_failures"].clone();

    // `: > config.toml`, then a write cut after the first sections.
    let cut = text[..text.find("[[chain]]").unwrap()].to_string();
    for (n, broken) in ["", &cut].into_iter().enumerate() {
        fs::write(&path, broken).unwrap();
        let started = Instant::now();
        while failures(&server) != json!(n + 1) {
            assert!(started.elapsed() < LIVE_WITHIN, "not refused: {}", server.get_auth("/v1/enrichers").text);
            std::thread::sleep(Duration::from_millis(25));
        }
        stays(&server.base, &probe, ti_of_target, &want, Duration::from_millis(200));
        let status = server.get_auth("/v1/enrichers").json();
        let error = status["reload"]["last_config_error"].as_str().unwrap();
        assert!(error.contains("no [[chain]] entry") && error.contains("chain = []"), "{error}");
        assert_eq!(status["reload"]["needs_restart"], json!([]), "a refused file changes nothing: {status}");
        assert_eq!(status["enrichers"].as_array().unwrap().len(), 1);
    }
    load.finish();

    // The explicit reload answers the same, with the refusal in its report.
    let r = admin(&server, "POST", "/v1/reload", None, ADMIN);
    assert_eq!(r.json()["config"]["outcome"], "rejected", "{}", r.text);

    // Written out (top level, before the first section), an empty chain
    // is applied.
    fs::write(&path, format!("chain = []\n{cut}")).unwrap();
    wait_for(&server.base, &probe, |e| e["ti"].to_string(), "null", LIVE_WITHIN);
    assert!(server.get_auth("/v1/enrichers").json()["enrichers"].as_array().unwrap().is_empty());
}

/// Issue 17, item 4: `: > feed.txt` does not drop the live indicators (the
/// reload is held back) while a client keeps ingesting; a file holding only
/// a comment (`# empty`) empties the feed on purpose.
#[test]
fn an_emptied_indicator_file_is_held_back_until_declared_empty() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.txt");
    fs::write(&feed, format!("{TARGET}\n198.51.100.0/24\n")).unwrap();
    let server = start(dir, &config(&ti_chain("\"feed.txt\""), ""));
    let probe = flows(2, 443, "192.0.2.1");
    let want = format!("{TARGET}@feed.txt");
    let load = Load::start(&server.base, flows(50, 443, "192.0.2.1"), "ti", ti_of_target);
    assert_eq!(ti_of_target(&ingest(&server.base, &probe).unwrap()[0]), want);

    for emptied in ["", "\n  \n"] {
        fs::write(&feed, emptied).unwrap();
        let started = Instant::now();
        while !stage(&server, "ti")["last_reload_error"].as_str().is_some_and(|e| e.contains("held back")) {
            assert!(started.elapsed() < LIVE_WITHIN, "not held back: {}", stage(&server, "ti"));
            std::thread::sleep(Duration::from_millis(25));
        }
        stays(&server.base, &probe, ti_of_target, &want, Duration::from_millis(300));
        let ti = stage(&server, "ti");
        assert_eq!(ti["generation"], 1, "{ti}");
        assert!(ti["last_reload_error"].as_str().unwrap().contains("# empty"), "{ti}");
        // The explicit reload reports the outcome by name.
        let r = admin(&server, "POST", "/v1/reload", None, ADMIN);
        assert_eq!(r.json()["stages"][0]["outcome"], "held_back", "{}", r.text);
        // Reset the marker for the next round.
        fs::write(&feed, format!("{TARGET}\n198.51.100.0/24\n")).unwrap();
        let started = Instant::now();
        while !stage(&server, "ti")["last_reload_error"].is_null() {
            assert!(started.elapsed() < LIVE_WITHIN);
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fs::write(&feed, "# empty: feed retired\n").unwrap();
    wait_for(&server.base, &probe, ti_of_target, "", LIVE_WITHIN);
    let ti = stage(&server, "ti");
    assert!(ti["last_reload_error"].is_null(), "{ti}");
    assert_eq!(ti["details"]["files"][0]["declared_empty"], true, "{ti}");
    load.finish();
}

/// Every change is in the audit log: API reloads, indicator edits and
/// output settings with the admin key's id, file edits picked up by the
/// watcher, each with the content hashes before and after; only an admin
/// key reads it.
#[test]
fn changes_are_audited_with_key_ids_and_hashes() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("feed.txt"), "198.51.100.0/24\n").unwrap();
    let server = start(dir, &config(&ti_chain("\"feed.txt\""), ""));
    let id = |key: &str| {
        use sha2::Digest;
        sha2::Sha256::digest(key.as_bytes())[..6].iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let put = json!({"indicators": [{"indicator": TARGET}]});
    assert_eq!(admin(&server, "PUT", "/v1/indicators", Some(&put), ADMIN).status, 200);
    assert_eq!(admin(&server, "POST", "/v1/reload", None, ADMIN).status, 200);
    let out = json!({"type": "file", "path": "archive.ndjson"});
    assert_eq!(admin(&server, "PUT", "/v1/outputs/archive", Some(&out), ADMIN).status, 201);
    fs::write(server.dir.path().join("feed.txt"), "198.51.100.0/24\n192.0.2.0/24\n").unwrap();
    let deadline = Instant::now() + LIVE_WITHIN;
    let entries = loop {
        let r = admin(&server, "GET", "/v1/audit?limit=50", None, ADMIN);
        assert_eq!(r.status, 200, "{}", r.text);
        let entries = r.json()["entries"].as_array().unwrap().clone();
        if entries.iter().any(|e| e["actor"] == "watcher" && e["action"] == "stage_swapped") {
            break entries;
        }
        assert!(Instant::now() < deadline, "the watcher's swap was not audited: {entries:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let find = |action: &str| {
        entries.iter().find(|e| e["action"] == action).unwrap_or_else(|| panic!("{action}: {entries:#?}"))
    };
    let edit = find("resource_put");
    assert_eq!((edit["target"].as_str(), edit["key_id"].as_str()), (Some("/v1/indicators"), Some(&*id(ADMIN))));
    assert_eq!(edit["result"], "200");
    assert_ne!(edit["before_sha256"], edit["after_sha256"], "the indicator edit changed what runs: {edit}");
    assert_eq!(find("reload")["key_id"].as_str(), Some(&*id(ADMIN)));
    let output = find("output_set");
    assert!(output["before_sha256"].is_null() && output["after_sha256"].is_string(), "{output}");
    let swap = entries.iter().find(|e| e["actor"] == "watcher").unwrap();
    assert_eq!(swap["target"], "ti");
    assert!(swap["key_id"].is_null() && swap["before_sha256"] != swap["after_sha256"], "{swap}");
    // Newest first.
    let times: Vec<&str> = entries.iter().map(|e| e["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    assert_eq!(admin(&server, "GET", "/v1/audit", None, KEY).status, 403);
    assert_eq!(server.get("/v1/audit").status, 401);
    assert_eq!(admin(&server, "GET", "/v1/audit?limit=0", None, ADMIN).status, 400);
    let file = server.dir.path().join("state/audit.jsonl");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let text = fs::read_to_string(&file).unwrap();
    assert!(!text.contains(ADMIN) && !text.contains(KEY), "a key in the audit log");
}

/// `chain_file`: the entries live in their own file, which is watched like
/// `config.toml`: an edit changes the chain, an emptied file is refused
/// (naming the chain file) and the running chain stays.
#[test]
fn a_chain_file_is_watched_and_an_emptied_one_keeps_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("feed.txt"), format!("{TARGET}\n")).unwrap();
    fs::write(dir.path().join("other.txt"), format!("# other\n{TARGET}\n")).unwrap();
    let chain_path = dir.path().join("chain.toml");
    fs::write(&chain_path, ti_chain("\"feed.txt\"")).unwrap();
    // A top-level key, so before the first section.
    let server = start(dir, &format!("chain_file = \"chain.toml\"\n{}", config("", "")));
    let probe = flows(2, 443, "192.0.2.1");
    wait_for(&server.base, &probe, ti_of_target, &format!("{TARGET}@feed.txt"), LIVE_WITHIN);
    let sha = server.get_auth("/v1/enrichers").json()["chain_file"]["sha256"].clone();
    assert_eq!(sha.as_str().map(str::len), Some(64));

    rename_over(&chain_path, ti_chain("\"other.txt\"").as_bytes());
    wait_for(&server.base, &probe, ti_of_target, &format!("{TARGET}@other.txt"), LIVE_WITHIN);
    let status = server.get_auth("/v1/enrichers").json();
    assert_ne!(status["chain_file"]["sha256"], sha, "{status}");
    assert_eq!(status["reload"]["needs_restart"], json!([]), "{status}");

    fs::write(&chain_path, "").unwrap();
    let started = Instant::now();
    while server.get_auth("/v1/enrichers").json()["reload"]["config_reload_failures"] != json!(1) {
        assert!(started.elapsed() < LIVE_WITHIN, "not refused: {}", server.get_auth("/v1/enrichers").text);
        std::thread::sleep(Duration::from_millis(25));
    }
    stays(&server.base, &probe, ti_of_target, &format!("{TARGET}@other.txt"), Duration::from_millis(200));
    let error = server.get_auth("/v1/enrichers").json()["reload"]["last_config_error"].as_str().unwrap().to_string();
    assert!(error.contains("chain.toml: no [[chain]] entry"), "{error}");
}
