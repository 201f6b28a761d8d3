//! Delivery end to end: the real `enrichd` binary, real HTTP, and the
//! strict `_bulk` / HEC receivers of `tests/common/receivers`.
//!
//! Every test checks the books: what was accepted is delivered,
//! dead-lettered with its reason, or counted as lost (and lost must be 0).

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/promtool.rs"]
mod promtool;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::receivers::{Auth, BulkConfig, BulkReceiver, Faults, HecConfig, HecReceiver};
use common::{Reply, Server, KEY};
use serde_json::{json, Value};

const ES_PASSWORD: &str = "es-pw-7d1f0c9a";
const HEC_TOKEN: &str = "hec-token-3b8e51aa";

/// `n` Zeek conn records with unique uids `U<from+i>`; every
/// `poison_every`-th carries the field the receivers refuse for good.
fn records(from: usize, n: usize, poison_every: usize) -> Value {
    let records: Vec<Value> = (from..from + n)
        .map(|i| {
            let mut r = json!({
                "ts": 1723351200.5 + i as f64, "uid": format!("U{i}"),
                "id.orig_h": "10.1.2.3", "id.orig_p": 40000 + (i % 20000), "id.resp_h": "81.2.69.160",
                "id.resp_p": 443, "proto": "tcp",
            });
            if poison_every > 0 && i % poison_every == poison_every - 1 {
                r["poison"] = json!(true);
            }
            r
        })
        .collect();
    Value::Array(records)
}

fn ingest_async(s: &Server, from: usize, n: usize, poison_every: usize) -> Reply {
    s.ingest_query("zeek.conn.v1", "mode=async", records(from, n, poison_every))
}

fn output(s: &Server, name: &str) -> Value {
    let r = s.get_auth(&format!("/v1/outputs/{name}"));
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

fn counter(o: &Value, name: &str) -> u64 {
    o["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {o}"))
}

fn put(s: &Server, path: &str, body: &Value) -> Reply {
    let req = common::agent()
        .put(&s.url(path))
        .header("Authorization", format!("Bearer {KEY}"))
        .header("Content-Type", "application/json");
    let mut resp = req.send(body.to_string().as_bytes()).expect("HTTP exchange");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    Reply { status, headers, text: resp.body_mut().read_to_string().unwrap() }
}

fn delete(s: &Server, path: &str) -> Reply {
    let mut resp = common::agent()
        .delete(&s.url(path))
        .header("Authorization", format!("Bearer {KEY}"))
        .call()
        .expect("HTTP exchange");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    Reply { status, headers, text: resp.body_mut().read_to_string().unwrap() }
}

fn uid(source: &Value) -> String {
    source["uid"].as_str().unwrap_or_else(|| panic!("no uid in {source}")).to_string()
}

/// The reference project's requests, verbatim, configure outputs that
/// deliver; secrets never come back; settings survive a restart; bad
/// settings get every field error at once.
#[test]
fn reference_requests_configure_working_outputs() {
    let bulk = BulkReceiver::start(BulkConfig {
        auth: Some(Auth::Basic { user: "elastic".into(), pass: ES_PASSWORD.into() }),
    });
    let hec = HecReceiver::start(HecConfig { token: HEC_TOKEN.into(), ..Default::default() });
    let mut s = Server::start(&common::test_chain());

    let elastic = json!({"url": bulk.url(), "index_prefix": "telemetry", "username": "elastic",
        "password": ES_PASSWORD, "batch_max": 500, "flush_interval_ms": 200, "enabled": true});
    let r = s.post("/v1/outputs/elastic", &elastic);
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["password_set"], true);
    let splunk = json!({"hec_url": format!("{}/services/collector", hec.url()), "token": HEC_TOKEN,
        "index": "main", "sourcetype": "enrichd:conn", "source": "enrichd", "batch_max": 500,
        "flush_interval_ms": 200, "enabled": true});
    let r = s.post("/v1/outputs/splunk", &splunk);
    assert_eq!(r.status, 201, "{}", r.text);
    // The same settings again: an update.
    assert_eq!(s.post("/v1/outputs/splunk", &splunk).status, 200);

    for b in 0..3 {
        let r = s.ingest("zeek.conn.v1", records(b * 100, 100, 0));
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json()["records"].as_array().unwrap().len(), 100, "the records still come back");
    }
    common::wait_for("300 documents", Duration::from_secs(30), || bulk.doc_count() == 300);
    common::wait_for("300 HEC events", Duration::from_secs(30), || hec.events().len() == 300);
    let docs = bulk.docs();
    assert!(docs.iter().all(|d| d.index.starts_with("telemetry-20")), "daily index: {}", docs[0].index);
    assert!(docs.iter().any(|d| d.source["geo"]["country"] == "GB"), "enriched: {}", docs[0].source);
    let events = hec.events();
    assert_eq!(events[0].sourcetype.as_deref(), Some("enrichd:conn"));
    assert_eq!(events[0].index.as_deref(), Some("main"));
    assert!(bulk.stats().malformed_rejected.is_empty(), "{:?}", bulk.stats().malformed_rejected);
    assert!(hec.stats().malformed_rejected.is_empty(), "{:?}", hec.stats().malformed_rejected);
    assert_eq!(bulk.stats().filtered_replies, bulk.stats().requests, "every _bulk answer filtered (filter_path)");

    let listed = s.get_auth("/v1/outputs");
    assert_eq!(listed.status, 200);
    let mut names: Vec<String> =
        listed.json()["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap().to_string()).collect();
    names.sort();
    assert_eq!(names, ["elastic", "splunk"]);
    // The receiver counts a document when the request arrives; the output
    // counts it sent once the answer is read: wait for the answer.
    common::wait_for("the elastic output to count 300 sent", Duration::from_secs(10), || {
        counter(&output(&s, "elastic"), "sent") == 300
    });
    let o = output(&s, "elastic");
    assert_eq!(counter(&o, "sent"), 300, "{o}");
    assert_eq!(o["settings"]["password_set"], true);
    assert_eq!(o["source"], "api");

    let probe = s.post("/v1/outputs/test", &json!({"target": "elastic"}));
    assert_eq!(probe.status, 200, "{}", probe.text);
    assert_eq!(probe.json()["ok"], true, "{}", probe.text);
    assert_eq!(probe.json()["http_status"], 200);
    let probe = s.post("/v1/outputs/test", &json!({"target": "nowhere"}));
    assert_eq!(probe.status, 404);

    // Every field error at once, 422.
    let r = put(&s, "/v1/outputs/elastic", &json!({"url": "ftp://x", "batch_max": 0, "bogus": 1}));
    assert_eq!(r.status, 422, "{}", r.text);
    let fields: HashSet<String> =
        r.json()["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_string()).collect();
    for f in ["url", "batch_max", "bogus"] {
        assert!(fields.contains(f), "{f} missing in {}", r.text);
    }
    let r = put(&s, "/v1/outputs/splunk", &json!({"hec_url": hec.url(), "batch_max": 60000}));
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("token") && r.text.contains("batch_max"), "{}", r.text);

    // The settings live in the state directory, private, and survive.
    s.terminate();
    s.start_again();
    let o = output(&s, "splunk");
    assert_eq!(o["settings"]["token_set"], true, "{o}");
    s.ingest("zeek.conn.v1", records(300, 10, 0));
    common::wait_for("310 HEC events", Duration::from_secs(30), || hec.events().len() == 310);
    let r = delete(&s, "/v1/outputs/splunk");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(delete(&s, "/v1/outputs/splunk").status, 404);
    assert_eq!(s.get_auth("/v1/outputs/splunk").status, 404);

    // No secret in any answer or log line.
    let everything =
        format!("{}{}{}{}", s.get_auth("/v1/outputs").text, s.get("/v1/metrics").text, s.get("/metrics").text, s.log());
    for secret in [ES_PASSWORD, HEC_TOKEN] {
        assert!(!everything.contains(secret), "secret {secret} leaked");
    }
}

/// 100,000 events while both receivers throw 429s, 5xx, per-item
/// rejections and slow answers, and go away for 30 s: afterwards each is
/// in Elasticsearch exactly once (by `_id`) or in the dead-letter with its
/// reason, and in Splunk at least once (indexer acks lost on purpose
/// cause resends); delivered + dead-lettered = accepted; lost = 0.
#[test]
fn hundred_thousand_events_survive_faults_and_an_outage() {
    let bulk = BulkReceiver::start(BulkConfig::default());
    let hec = HecReceiver::start(HecConfig { token: HEC_TOKEN.into(), indexer_ack: true, ack_delay_ms: 20 });
    let faults = Faults {
        seed: 7,
        request_5xx_per_mille: 30,
        request_429_per_mille: 30,
        item_429_per_mille: 50,
        reject_field: Some("poison".into()),
        delay_ms: 2,
        ack_loss_per_mille: 20,
    };
    bulk.set_faults(faults.clone());
    hec.set_faults(faults);
    let config = format!(
        r#"[auth]
api_keys = ["{KEY}"]
[server]
max_records = 10000

[[output]]
type = "elastic"
url = "{es}"
id_mode = "hash"
gzip = false
batch_max = 1000
flush_interval_ms = 50
backoff_initial_ms = 20
backoff_max_ms = 1000

[[output]]
type = "splunk"
hec_url = "{hec}"
token = "{HEC_TOKEN}"
indexer_ack = true
ack_timeout_ms = 5000
ack_poll_ms = 20
gzip = false
batch_max = 1000
flush_interval_ms = 50
backoff_initial_ms = 20
backoff_max_ms = 1000
{chain}"#,
        es = bulk.url(),
        hec = hec.url(),
        chain = common::test_chain(),
    );
    let s = Server::start_with(&config, &[]);
    const BATCH: usize = 1000;
    const POISON_EVERY: usize = 1000;
    let mut accepted = 0;
    for b in 0..100 {
        if b == 30 {
            bulk.outage(true);
            hec.outage(true);
        }
        if b == 70 {
            // A 30 s outage in all, ingest going on through it.
            std::thread::sleep(Duration::from_secs(27));
            bulk.outage(false);
            hec.outage(false);
        }
        let r = ingest_async(&s, b * BATCH, BATCH, POISON_EVERY);
        assert_eq!(r.status, 202, "{}", r.text);
        assert_eq!(r.json()["accepted"], BATCH);
        accepted += BATCH as u64;
    }
    let poisoned = (accepted as usize / POISON_EVERY) as u64;
    let t0 = Instant::now();
    for name in ["elastic", "splunk"] {
        common::wait_for(&format!("{name} to drain"), Duration::from_secs(180), || {
            let o = output(&s, name);
            o["backlog"]["events"] == 0 && counter(&o, "sent") + counter(&o, "dead_lettered") >= accepted
        });
        let o = output(&s, name);
        eprintln!("{name} drained {:?} after the last batch", t0.elapsed());
        assert_eq!(counter(&o, "queued"), accepted, "{o}");
        assert_eq!(counter(&o, "sent") + counter(&o, "dead_lettered"), accepted, "{o}");
        assert_eq!(counter(&o, "dead_lettered"), poisoned, "only the poisoned events: {o}");
        assert_eq!(counter(&o, "lost"), 0, "{o}");
        assert!(counter(&o, "retried") > 0, "faults were injected: {o}");
        let dead = s.get_auth(&format!("/v1/outputs/{name}/deadletter?limit=1000")).json();
        assert_eq!(dead["total"], poisoned);
        for rec in dead["records"].as_array().unwrap() {
            assert_eq!(rec["event"]["poison"], true, "{rec}");
            assert!(!rec["error"].as_str().unwrap().is_empty(), "{rec}");
        }
    }

    // Elasticsearch: exactly once by _id.
    let docs = bulk.docs();
    let rewritten: Vec<_> = docs.iter().filter(|d| d.times_written != 1).collect();
    assert!(rewritten.is_empty(), "{} documents written more than once", rewritten.len());
    let uids: HashSet<String> = docs.iter().map(|d| uid(&d.source)).collect();
    assert_eq!(docs.len(), uids.len(), "one document per event");
    assert_eq!(docs.len() as u64, accepted - poisoned);
    // Splunk: at least once, duplicates only from lost acks.
    let mut seen: HashMap<String, u32> = HashMap::new();
    for e in hec.events() {
        *seen.entry(uid(&e.event)).or_default() += 1;
    }
    assert_eq!(seen.len() as u64, accepted - poisoned, "every good event indexed");
    assert!(seen.keys().all(|u| u.starts_with('U')));
    let stats = hec.stats();
    assert!(stats.malformed_rejected.is_empty(), "{:?}", stats.malformed_rejected);
    assert!(bulk.stats().malformed_rejected.is_empty(), "{:?}", bulk.stats().malformed_rejected);
    // Replay sends the dead-letter again: still poisoned, so back it comes.
    let r = s.post("/v1/outputs/elastic/deadletter/replay", &json!({}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["replayed"], poisoned);
    common::wait_for("the replay", Duration::from_secs(30), || {
        counter(&output(&s, "elastic"), "dead_lettered") == 2 * poisoned
    });
    assert_eq!(s.get_auth("/v1/outputs/elastic/deadletter").json()["total"], poisoned);
    let m = s.get("/metrics").text;
    promtool::check(&m);
    assert!(m.contains(&format!("telemetry_output_sent_total{{output=\"elastic\"}} {}", accepted - poisoned)), "{m}");
    assert!(m.contains("telemetry_output_lost_total{output=\"elastic\",reason=\"deadletter_evicted\"} 0"), "{m}");
}

/// `kill -9` mid-load in spool mode: every event answered 200 before the
/// kill is delivered after the restart (exactly once by `_id`).
#[test]
fn kill_9_in_spool_mode_loses_nothing_answered() {
    let bulk = BulkReceiver::start(BulkConfig::default());
    bulk.outage(true);
    let config = format!(
        "[auth]\napi_keys = [\"{KEY}\"]\n[[output]]\ntype = \"elastic\"\nurl = \"{}\"\nid_mode = \"hash\"\n\
         flush_interval_ms = 50\nbackoff_max_ms = 500\n{}",
        bulk.url(),
        common::test_chain()
    );
    let mut s = Server::start_with(&config, &[]);
    let base = s.base.clone();
    let answered = std::thread::spawn(move || {
        let mut answered = Vec::new();
        for b in 0.. {
            let body = json!({"collector_id": "k", "format": "zeek.conn.v1", "records": records(b * 200, 200, 0)});
            let r = common::agent()
                .post(&format!("{base}/v1/ingest?mode=async"))
                .header("Authorization", format!("Bearer {KEY}"))
                .send(body.to_string().as_bytes());
            match r {
                Ok(resp) if resp.status() == 202 => answered.push(b),
                _ => break,
            }
        }
        answered
    });
    std::thread::sleep(Duration::from_millis(1500));
    s.restart(); // SIGKILL, then start again on the same state directory
    let answered = answered.join().unwrap();
    assert!(answered.len() > 2, "load ran before the kill: {answered:?}");
    bulk.outage(false);
    let expected: HashSet<String> =
        answered.iter().flat_map(|b| (b * 200..b * 200 + 200).map(|i| format!("U{i}"))).collect();
    common::wait_for("every answered event", Duration::from_secs(60), || {
        let have: HashSet<String> = bulk.docs().iter().map(|d| uid(&d.source)).collect();
        expected.is_subset(&have)
    });
    assert!(bulk.docs().iter().all(|d| d.times_written == 1), "exactly once by _id");
}

/// A full spool: 503 + Retry-After + a JSON reason, nothing of the request
/// accepted, memory flat; once the destination is back, everything
/// accepted arrives.
#[test]
fn a_full_spool_answers_503_and_loses_nothing() {
    let bulk = BulkReceiver::start(BulkConfig::default());
    bulk.outage(true);
    let config = format!(
        "[auth]\napi_keys = [\"{KEY}\"]\n[[output]]\ntype = \"elastic\"\nurl = \"{}\"\nspool_max_bytes = 1048576\n\
         flush_interval_ms = 50\nbackoff_max_ms = 300\n{}",
        bulk.url(),
        common::test_chain()
    );
    let s = Server::start_with(&config, &[]);
    let mut accepted = 0;
    let mut refused = None;
    for b in 0..200 {
        let r = ingest_async(&s, b * 200, 200, 0);
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 202, "{}", r.text);
        accepted += 200;
    }
    let r = refused.expect("the spool filled up");
    assert!(r.header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok()), "{:?}", r.headers);
    assert_eq!(r.json()["error"], "output_backlog_full");
    assert_eq!(r.json()["output"], "elastic");
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().to_string();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
    };
    let before = rss();
    for b in 0..100 {
        assert_eq!(ingest_async(&s, 1_000_000 + b * 200, 200, 0).status, 503);
    }
    let after = rss();
    assert!(after < before + 20_000, "memory flat while refusing: {before} kB -> {after} kB");
    let o = output(&s, "elastic");
    assert_eq!(counter(&o, "queued"), accepted, "refused requests queued nothing: {o}");
    assert!(counter(&o, "refused") >= 200 * 101);
    bulk.outage(false);
    common::wait_for("the spool to drain", Duration::from_secs(60), || bulk.doc_count() as u64 == accepted);
    common::wait_for("the backlog to clear", Duration::from_secs(10), || {
        output(&s, "elastic")["backlog"]["events"] == 0
    });
    assert_eq!(ingest_async(&s, 2_000_000, 10, 0).status, 202, "accepting again");
}

/// `ack` mode answers once delivered; `?mode=async` and `Prefer:
/// respond-async` answer 202; a destination that does not confirm in time
/// gets the client a 504 and the events still arrive.
#[test]
fn ack_mode_answers_after_delivery() {
    let bulk = BulkReceiver::start(BulkConfig::default());
    let config = format!(
        "[auth]\napi_keys = [\"{KEY}\"]\n[[output]]\ntype = \"elastic\"\nurl = \"{}\"\ndurability = \"ack\"\n\
         flush_interval_ms = 1\nack_mode_timeout_ms = 1500\nbackoff_max_ms = 200\n{}",
        bulk.url(),
        common::test_chain()
    );
    let s = Server::start_with(&config, &[]);
    let r = s.ingest("zeek.conn.v1", records(0, 50, 0));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(bulk.doc_count(), 50, "delivered before the answer");
    let r = s.post_raw(
        "/v1/ingest",
        json!({"collector_id": "a", "format": "zeek.conn.v1", "records": records(50, 5, 0)}).to_string().as_bytes(),
        &[("Prefer", "respond-async")],
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json()["accepted"], 5);
    assert_eq!(bulk.doc_count(), 55);
    bulk.outage(true);
    let r = s.ingest("zeek.conn.v1", records(55, 5, 0));
    assert_eq!(r.status, 504, "{}", r.text);
    assert_eq!(r.json()["error"], "delivery_timeout");
    bulk.outage(false);
    common::wait_for("the late events", Duration::from_secs(30), || bulk.doc_count() == 60);
    let r = s.ingest_query("zeek.conn.v1", "mode=later", records(0, 1, 0));
    assert_eq!(r.status, 400);
}

/// `[[output]]` in config.toml, hot-reloaded; the `file` output; the old
/// `[output]` table refused with a pointer to `[profiles]`.
#[test]
fn config_outputs_reload_and_the_file_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let entry = |name: &str| {
        format!(
            "[[output]]\ntype = \"file\"\nname = \"{name}\"\npath = \"out/{name}.ndjson\"\nflush_interval_ms = 20\n"
        )
    };
    let head = format!("[auth]\napi_keys = [\"{KEY}\"]\n[reload]\nwatch = true\ndebounce_ms = 50\n");
    std::fs::write(&path, format!("{head}{}{}", entry("first"), common::test_chain())).unwrap();
    let s = Server::start_file(&path, &[], dir);
    let lines = |name: &str| {
        std::fs::read_to_string(s.dir.path().join(format!("out/{name}.ndjson"))).map_or(0, |t| t.lines().count())
    };
    assert_eq!(s.ingest("zeek.conn.v1", records(0, 20, 0)).status, 200);
    common::wait_for("20 lines", Duration::from_secs(15), || lines("first") == 20);
    std::fs::write(&path, format!("{head}{}{}{}", entry("first"), entry("second"), common::test_chain())).unwrap();
    common::wait_for("the second output", Duration::from_secs(15), || s.get_auth("/v1/outputs/second").status == 200);
    assert_eq!(output(&s, "second")["source"], "config");
    assert_eq!(s.ingest("zeek.conn.v1", records(20, 10, 0)).status, 200);
    common::wait_for("both files", Duration::from_secs(15), || lines("first") == 30 && lines("second") == 10);
    // A config-only output cannot be deleted through the API.
    assert_eq!(delete(&s, "/v1/outputs/first").status, 409);
    // A bad entry is refused whole; the running outputs stay.
    std::fs::write(&path, format!("{head}{}[[output]]\ntype = \"nope\"\n{}", entry("first"), common::test_chain()))
        .unwrap();
    common::wait_for("the refusal", Duration::from_secs(15), || {
        s.get_auth("/v1/enrichers").json()["reload"]["last_config_error"].as_str().is_some_and(|e| e.contains("nope"))
    });
    assert_eq!(s.get_auth("/v1/outputs/second").status, 200, "keep-last-good");
    // A good new output beside a bad chain entry: refused whole, the new
    // output is not left delivering (it was, under a \"rejected\" answer).
    let reloads = |s: &Server| s.get_auth("/v1/enrichers").json()["reload"]["config_reload_failures"].as_u64();
    let failures = reloads(&s);
    std::fs::write(
        &path,
        format!("{head}{}{}{}\n[[chain]]\nplugin = \"nope\"\n", entry("first"), entry("third"), common::test_chain()),
    )
    .unwrap();
    common::wait_for("the refusal", Duration::from_secs(15), || reloads(&s) > failures);
    let r = s.get_auth("/v1/enrichers").json();
    assert!(r["reload"]["last_config_error"].as_str().is_some_and(|e| e.contains("nope")), "{r}");
    assert_eq!(s.get_auth("/v1/outputs/third").status, 404, "a refused file's output went live");
    assert_eq!(s.get_auth("/v1/outputs/second").status, 200, "the running outputs stay");

    let old = tempfile::tempdir().unwrap();
    let old_path = old.path().join("config.toml");
    std::fs::write(&old_path, format!("[output]\nprofile = \"ecs\"\n{}", common::test_chain())).unwrap();
    let out = common::bin().args(["serve", "--config"]).arg(&old_path).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[profiles]") && stderr.contains(":1"), "{stderr}");
}

/// Settings that come through the API name files only inside the state
/// directory's `output-files/`: an API key that may change outputs must
/// not be a way to append events to any file the service can write (a
/// shell profile, a cron file) or to read any file as a CA.
#[test]
fn api_outputs_name_files_only_inside_the_state_directory() {
    let s = Server::start(&common::test_chain());
    let outside = s.dir.path().join("outside.ndjson");
    let refused = [
        json!({"type": "file", "path": outside.display().to_string()}),
        json!({"type": "file", "path": "../outside.ndjson"}),
        json!({"type": "file", "path": "events/../../outside.ndjson"}),
        json!({"type": "elastic", "url": "https://es.example:9200", "ca_file": "/etc/passwd"}),
        json!({"type": "splunk", "hec_url": "https://hec.example:8088", "token": "t", "ca_file": "../ca.pem"}),
    ];
    for body in refused {
        let r = put(&s, "/v1/outputs/confined", &body);
        assert_eq!(r.status, 422, "{body} -> {}", r.text);
        let fields: Vec<String> =
            r.json()["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_string()).collect();
        assert!(fields.iter().any(|f| f == "path" || f == "ca_file"), "{body} -> {fields:?}");
    }
    assert_eq!(s.get_auth("/v1/outputs/confined").status, 404, "nothing was configured");

    let r =
        put(&s, "/v1/outputs/confined", &json!({"type": "file", "path": "events/out.ndjson", "flush_interval_ms": 20}));
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(s.ingest("zeek.conn.v1", records(0, 5, 0)).status, 200);
    let inside = s.dir.path().join("state/output-files/events/out.ndjson");
    common::wait_for("5 lines inside the state directory", Duration::from_secs(15), || {
        std::fs::read_to_string(&inside).is_ok_and(|t| t.lines().count() == 5)
    });
    assert!(!outside.exists());
}

/// A `DELETE` of an output's API settings that cannot be applied (the
/// file's entry of that name needs another durability while events are
/// queued) is refused whole: the API's settings stay stored and running,
/// and a second `DELETE` is refused the same way, not with "comes from
/// config.toml" while the API's settings still run.
#[test]
fn a_refused_delete_keeps_the_api_settings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{down}");
    let file_entry =
        format!("[[output]]\ntype = \"elastic\"\nname = \"es\"\nurl = \"{url}\"\ndurability = \"spool\"\n");
    let head = format!("[auth]\napi_keys = [\"{KEY}\"]\n");
    std::fs::write(&path, format!("{head}{file_entry}{}", common::test_chain())).unwrap();
    let s = Server::start_file(&path, &[], dir);
    let r = put(&s, "/v1/outputs/es", &json!({"type": "elastic", "url": url, "durability": "memory"}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(ingest_async(&s, 0, 5, 0).status, 202);
    common::wait_for("5 events queued", Duration::from_secs(15), || {
        output(&s, "es")["backlog"]["events"].as_u64() == Some(5)
    });
    for _ in 0..2 {
        let r = delete(&s, "/v1/outputs/es");
        assert_eq!(r.status, 422, "{}", r.text);
        assert!(r.text.contains("durability cannot change"), "{}", r.text);
    }
    assert_eq!(output(&s, "es")["source"], "api");
    assert!(s.dir.path().join("state/outputs/es.json").exists(), "the API's settings are still stored");
}
