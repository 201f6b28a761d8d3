//! The live stream end to end: `GET /v1/tap` and `enrichd tap` / `enrichd
//! top` against a running server, with real traffic.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::{bin, test_chain, Server, KEY};
use serde_json::{json, Value};

/// `n` flows.v1 records; every `bad_every`-th from a listed network.
fn flows(n: usize, bad_every: usize) -> Value {
    let records: Vec<Value> = (0..n)
        .map(|i| {
            let src = if i % bad_every == 0 {
                format!("45.149.3.{}", i % 250)
            } else {
                format!("10.0.{}.{}", i / 250, i % 250)
            };
            json!({"src_ip": src, "dst_ip": "81.2.69.160", "dst_port": 443 + (i % 2), "protocol": "tcp", "seq": i})
        })
        .collect();
    json!(records)
}

/// Opens `GET /v1/tap?query` and hands each line to the returned channel
/// (the stream is read on a thread; it ends when the server ends it).
fn open_tap(s: &Server, query: &str) -> mpsc::Receiver<Value> {
    let url = s.url(&format!("/v1/tap?{query}"));
    let response = common::agent().get(&url).header("Authorization", &format!("Bearer {KEY}")).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(response.into_body().into_reader()).lines().map_while(Result::ok) {
            if tx.send(serde_json::from_str::<Value>(&line).expect("one JSON object per line")).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for_watchers(s: &Server, n: u64) {
    for _ in 0..200 {
        if s.metrics()["tap"]["watchers"] == n {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{n} tap watcher(s) never registered: {}", s.metrics()["tap"]);
}

#[test]
fn tap_filters_rate_limits_and_ends() {
    let s = Server::start(&test_chain());
    // Refusals: no key, unknown or malformed parameters (JSON, naming it).
    assert_eq!(s.get("/v1/tap").status, 401);
    for (query, param) in [("min_risk=500", "min_risk"), ("where=oops", "where"), ("colour=red", "colour")] {
        let r = s.get_auth(&format!("/v1/tap?{query}"));
        assert_eq!((r.status, r.json()["param"].as_str()), (400, Some(param)), "{query}: {}", r.text);
    }

    // Matched events only, with a field condition, 1000/s: exactly the
    // matching events of the batch, enriched.
    let matched = open_tap(&s, "matched=true&where=dst_port%3D443&rate=1000&limit=10");
    wait_for_watchers(&s, 1);
    assert_eq!(s.ingest("flows.v1", flows(100, 5)).status, 200);
    let got: Vec<Value> = (0..10).map(|_| matched.recv_timeout(Duration::from_secs(10)).expect("event")).collect();
    for e in &got {
        assert_eq!(e["ti"]["matches"][0]["indicator"], "45.149.3.0/24", "{e}");
        assert_eq!(e["dst_port"], 443);
        assert_eq!(e["seq"].as_u64().unwrap() % 10, 0, "every 5th is bad, every 2nd is port 443: {e}");
    }
    assert!(matched.recv_timeout(Duration::from_secs(2)).is_err(), "the stream ends at its limit");
    wait_for_watchers(&s, 0);

    // rate=1: the bucket starts with one event; a 100-event batch shows one.
    let slow = open_tap(&s, "rate=1&has=geo.country");
    wait_for_watchers(&s, 1);
    assert_eq!(s.ingest("flows.v1", flows(100, 1000)).status, 200);
    let first = slow.recv_timeout(Duration::from_secs(10)).expect("one event");
    assert_eq!(first["geo"]["country"], "GB", "{first}");
    assert!(slow.recv_timeout(Duration::from_millis(300)).is_err(), "over the rate, the rest is not shown");
}

#[test]
fn tap_and_top_commands() {
    let s = Server::start(&test_chain());
    let tap = bin()
        .args(["tap", "--url", &s.base, "--matched", "--limit", "3", "--rate", "100"])
        .env("API_KEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_watchers(&s, 1);
    assert_eq!(s.ingest("flows.v1", flows(50, 2)).status, 200);
    let out = tap.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|e| !e["ti"]["matches"].as_array().unwrap().is_empty()));

    // Without the key: a clear refusal naming the variable.
    let out = bin().args(["tap", "--url", &s.base, "--limit", "1"]).env_remove("API_KEY").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 401 Unauthorized (set API_KEY"), "{out:?}");

    let out = bin().args(["top", "--once", "--url", &s.base]).env("API_KEY", KEY).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let view = String::from_utf8_lossy(&out.stdout);
    assert!(view.contains("events/s (10 s)") && view.contains("events total") && view.contains("50"), "{view}");
    for stage in ["geoip", "asn", "ti"] {
        assert!(view.lines().any(|l| l.starts_with(stage) && l.contains("loaded")), "{stage}: {view}");
    }
}

/// A client that opens the tap and never reads: once its socket is full
/// the stream cannot be polled to see the shutdown, so graceful shutdown
/// must not wait for it beyond `shutdown_flush_ms`.
#[test]
fn a_tap_client_that_stops_reading_does_not_hold_the_shutdown() {
    use std::io::Write;
    let mut s = Server::start_with(
        &format!("[auth]\napi_keys = [\"{KEY}\"]\n[server]\nshutdown_flush_ms = 1000\n{}", test_chain()),
        &[],
    );
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut stuck = std::net::TcpStream::connect(&addr).unwrap();
    write!(stuck, "GET /v1/tap?rate=1000 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n\r\n").unwrap();
    wait_for_watchers(&s, 1);
    // Far more than the socket buffers hold (the sender's grows to a few
    // MiB), at the tap's top rate: 1,000 events/s of ~4 KiB.
    let mut big = flows(1000, 7);
    for r in big.as_array_mut().unwrap() {
        r["pad"] = json!("x".repeat(4 << 10));
    }
    for _ in 0..5 {
        assert_eq!(s.ingest("flows.v1", big.clone()).status, 200);
        std::thread::sleep(Duration::from_millis(600));
    }
    let pid = s.pid();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let status = s.terminate();
        let _ = tx.send(status);
    });
    let ended = rx.recv_timeout(Duration::from_secs(15));
    if ended.is_err() {
        // SAFETY: kill(2) on the child this test spawned, not yet reaped.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        panic!("enrichd did not exit within 15 s of SIGTERM");
    }
    drop(stuck);
}

/// What a watcher can cost is bounded: an event over 16 KiB encoded is
/// counted as dropped instead of queued (slow watchers hold at most their
/// queue of small events), and a JSON condition that never matches tests
/// at most 256 events of a batch.
#[test]
fn large_events_are_dropped_and_json_tests_bounded() {
    let s = Server::start(&test_chain());
    let tap = open_tap(&s, "rate=1000");
    wait_for_watchers(&s, 1);
    let mut records = flows(4, 1000);
    records[1]["pad"] = json!("x".repeat(20 << 10));
    assert_eq!(s.ingest("flows.v1", records).status, 200);
    let seqs: Vec<u64> =
        (0..3).map(|_| tap.recv_timeout(Duration::from_secs(10)).expect("event")["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [0, 2, 3], "the large event is not sent");
    assert_eq!(s.metrics()["tap"]["dropped"], 1);

    // `where` on a value no event has, then on one only the 300th has:
    // beyond the first 256 events of the batch nothing is tested.
    let never = open_tap(&s, "rate=1000&where=seq%3D299");
    wait_for_watchers(&s, 2);
    assert_eq!(s.ingest("flows.v1", flows(1000, 1000)).status, 200);
    assert!(never.recv_timeout(Duration::from_millis(500)).is_err(), "the 300th event is past the tested ones");
    let hit = open_tap(&s, "rate=1000&where=seq%3D99");
    wait_for_watchers(&s, 3);
    assert_eq!(s.ingest("flows.v1", flows(1000, 1000)).status, 200);
    assert_eq!(hit.recv_timeout(Duration::from_secs(10)).expect("the 100th")["seq"], 99);
}
