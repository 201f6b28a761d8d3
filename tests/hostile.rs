//! Hostile-input probes of issue 17, replayed small: socket hoarding,
//! slow or stalled clients, secrets in URLs, duplicate keys, refusals that
//! must be JSON. Every test is bounded to a few seconds.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{test_chain, Server, KEY};
use serde_json::{json, Value};

/// A server with `[server]` settings `server` plus the test key and chain.
fn start(server: &str) -> Server {
    Server::start_with(&format!("[server]\n{server}\n[auth]\napi_keys = [\"{KEY}\"]\n{}", test_chain()), &[])
}

fn connect(s: &Server) -> TcpStream {
    let stream = TcpStream::connect(s.base.trim_start_matches("http://")).expect("connect");
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    stream
}

/// Reads until the server closes the connection or `limit` passes; returns
/// what was read and when the connection closed (None: still open).
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    read_until_closed_since(stream, Instant::now(), limit)
}

/// The same, with times counted from `started`.
fn read_until_closed_since(stream: &mut TcpStream, started: Instant, limit: Duration) -> (String, Option<Duration>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), Some(started.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), Some(started.elapsed())),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), None)
}

/// The server process's open sockets.
fn sockets(s: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")))
                .count()
        })
        .unwrap_or(0)
}

fn partial_head(s: &Server) -> TcpStream {
    let mut stream = connect(s);
    stream.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    stream
}

/// A client that keeps sending good requests on fresh connections until
/// told to stop, counting answers that are not 200.
struct GoodClient {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl GoodClient {
    fn start(s: &Server) -> GoodClient {
        let (stop, failures, sent) = (Arc::default(), Arc::default(), Arc::default());
        let base = s.base.clone();
        let (stop2, failures2, sent2): (Arc<AtomicBool>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
            (Arc::clone(&stop), Arc::clone(&failures), Arc::clone(&sent));
        let thread = std::thread::spawn(move || {
            let body = json!({"format": "flows.v1", "records": [{"src_ip": "45.149.3.1"}]}).to_string();
            while !stop2.load(Ordering::Relaxed) {
                let health = common::agent().get(&format!("{base}/v1/health")).call();
                let ingest = common::agent()
                    .post(&format!("{base}/v1/ingest"))
                    .header("Authorization", format!("Bearer {KEY}"))
                    .send(body.as_bytes());
                for r in [health, ingest] {
                    sent2.fetch_add(1, Ordering::Relaxed);
                    if !r.is_ok_and(|r| r.status() == 200) {
                        failures2.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        GoodClient { stop, failures, sent, thread }
    }

    /// Stops; returns (requests sent, failures).
    fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        (self.sent.load(Ordering::Relaxed), self.failures.load(Ordering::Relaxed))
    }
}

#[test]
fn hoarded_sockets_beyond_the_cap_do_not_lock_others_out() {
    let s = start("max_connections = 32\nheader_timeout_s = 60\nkeepalive_timeout_s = 60");
    let base_sockets = sockets(&s);
    // Twice the cap of half-sent request heads, as the probe did with 20,000.
    let hoard: Vec<TcpStream> = (0..64).map(|_| partial_head(&s)).collect();
    std::thread::sleep(Duration::from_millis(300));
    // Each good connection now evicts the longest-waiting hoarded one.
    let good = GoodClient::start(&s);
    let open = sockets(&s) - base_sockets;
    assert!(open <= 32 + 3, "the server holds {open} client sockets, over its cap of 32");
    std::thread::sleep(Duration::from_millis(300));
    let open = sockets(&s) - base_sockets;
    assert!(open <= 32 + 3, "the server holds {open} client sockets, over its cap of 32");
    for _ in 0..10 {
        let started = Instant::now();
        let r = s.get("/v1/health");
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(started.elapsed() < Duration::from_secs(2), "health took {:?}", started.elapsed());
    }
    let (sent, failures) = good.finish();
    assert!(sent > 0);
    assert_eq!(failures, 0, "{failures} of {sent} good requests failed during the attack");
    drop(hoard);
}

#[test]
fn at_the_cap_with_every_connection_busy_newcomers_get_a_json_503() {
    let s = start("max_connections = 4\nbody_timeout_s = 30");
    // Four requests in flight: authenticated ingests whose bodies never come.
    let busy: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut stream = connect(&s);
            let head = format!(
                "POST /v1/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 1000\r\n\r\n{{"
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut stream = connect(&s);
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(3));
    assert!(closed.is_some(), "a refused connection is closed");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body: Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["error"], "too_many_connections");
    assert_eq!(body["limit"], 4);
    drop(busy);
    // Once they are gone, the server serves again.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.get("/v1/health").status, 200);
}

#[test]
fn slow_and_stalled_clients_are_cut_off_and_good_ones_are_not() {
    let s = start("header_timeout_s = 1\nkeepalive_timeout_s = 2\nbody_timeout_s = 1");
    let good = GoodClient::start(&s);

    let sent = Instant::now();
    // (b) A request head that never ends is closed after the header timeout.
    let mut partial = partial_head(&s);
    // (c) A kept-alive connection left idle is closed after the keep-alive timeout.
    let mut idle = connect(&s);
    idle.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // (d) An authenticated ingest whose body stalls gets 408 and is closed.
    let mut stalled = connect(&s);
    let head = format!(
        "POST /v1/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"format\":"
    );
    stalled.write_all(head.as_bytes()).unwrap();

    let (nothing, closed) = read_until_closed_since(&mut partial, sent, Duration::from_secs(5));
    let closed = closed.expect("partial request head still open after 5 s (header_timeout_s = 1)");
    assert!(closed >= Duration::from_millis(800), "closed too early: {closed:?}");
    assert!(nothing.is_empty(), "{nothing}");

    let (answer, closed) = read_until_closed_since(&mut idle, sent, Duration::from_secs(6));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let closed = closed.expect("idle keep-alive connection still open after 6 s (keepalive_timeout_s = 2)");
    assert!(closed >= Duration::from_millis(1800), "closed before the keep-alive timeout: {closed:?}");

    let (answer, closed) = read_until_closed_since(&mut stalled, sent, Duration::from_secs(5));
    assert!(closed.is_some(), "stalled body still open after 5 s (body_timeout_s = 1): {answer}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body: Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["error"], "body_timeout");

    let (sent, failures) = good.finish();
    assert!(sent > 10, "{sent}");
    assert_eq!(failures, 0, "{failures} of {sent} good requests failed");
    assert_eq!(s.metrics()["requests_by_class"]["5xx"], 0);
}

#[test]
fn duplicate_keys_in_a_record_are_refused_with_its_index() {
    let s = Server::start(&test_chain());
    let body = br#"{"format":"flows.v1","records":[{"src_ip":"10.0.0.1"},{"src_ip":"1.2.3.4","src_ip":"45.149.3.1"}]}"#;
    let r = s.post_raw("/v1/ingest", body, &[]);
    assert_eq!(r.status, 400, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"], "invalid_record");
    assert_eq!(v["record_index"], 1);
    assert_eq!(v["field"], "src_ip");
    assert!(v["detail"].as_str().unwrap().contains("duplicate key"), "{v}");
    let body = br#"{"format":"zeek","records":[{"id.orig_h":"1.2.3.4","id_orig_h":"5.6.7.8"}]}"#;
    let v = s.post_raw("/v1/ingest", body, &[]).json();
    assert_eq!((v["record_index"].as_u64(), v["field"].as_str()), (Some(0), Some("id_orig_h")), "{v}");
    assert_eq!(s.metrics()["records_processed"], 0);
}

/// The first `/v1/stream` event, raw.
fn first_stream_event(s: &Server, key: bool) -> String {
    let mut stream = connect(s);
    let auth = if key { format!("Authorization: Bearer {KEY}\r\n") } else { String::new() };
    stream.write_all(format!("GET /v1/stream HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes()).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while started.elapsed() < Duration::from_secs(5) {
        if let Ok(n) = stream.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if text.contains("event: metrics") && text.contains("}\n\n") {
                return text.into_owned();
            }
        }
    }
    panic!("no stream event: {}", String::from_utf8_lossy(&got));
}

#[test]
fn secrets_in_output_urls_are_never_shown() {
    let s = start("");
    let secrets = ["pw-USERINFO", "QUERY-apikey", "FRAG-secret", "HECQUERY-token", "HECFRAG", "tok-BODY", "pass-BODY"];
    let elastic = json!({"url": "https://user-NAME:pw-USERINFO@es.example:9200/?api_key=QUERY-apikey#FRAG-secret",
                         "urls": ["https://es2.example:9200#FRAG-secret"],
                         "username": "user-NAME", "password": "pass-BODY", "index": "idx-name"});
    let splunk = json!({"hec_url": "https://splunk.example:8088/services/collector?token=HECQUERY-token#HECFRAG",
                        "token": "tok-BODY", "index": "idx-name"});
    let mut answers = vec![s.post("/v1/outputs/elastic", &elastic), s.post("/v1/outputs/splunk", &splunk)];
    assert!(answers.iter().all(|r| r.status == 201), "{}", answers[0].text);
    let shown = s.get_auth("/v1/outputs");
    let settings = |name: &str| {
        shown.json()["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap()["settings"].clone()
    };
    assert_eq!(settings("splunk")["hec_url"], "https://splunk.example:8088/services/collector?***#***");
    assert_eq!(settings("elastic")["url"], "https://***@es.example:9200/?***#***");
    answers.push(shown);
    for path in ["/v1/metrics", "/metrics", "/v1/enrichers", "/v1/health/details", "/v1", "/v1/health"] {
        answers.push(s.get(path));
        answers.push(s.get_auth(path));
    }
    let streams = [first_stream_event(&s, false), first_stream_event(&s, true)];
    for text in answers.iter().map(|r| &r.text).chain(&streams).chain([&s.log()]) {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} shown in: {text}");
        }
    }
    // Public metrics say an output is configured, not where or as whom.
    let public = s.get("/v1/metrics").json();
    let elastic = public["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "elastic").cloned().unwrap();
    assert_eq!(elastic["state"], "running");
    assert!(elastic.get("settings").is_none(), "{}", public["outputs"]);
    let text = s.get("/v1/metrics").text + &streams[0];
    for detail in ["es.example", "user-NAME", "idx-name", "idx-NAME", "splunk.example"] {
        assert!(!text.contains(detail), "{detail} shown without a key");
    }
    let keyed = s.get_auth("/v1/metrics").json();
    let elastic = keyed["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "elastic").cloned().unwrap();
    assert_eq!(elastic["settings"]["username"], "user-NAME");
    assert!(streams[1].contains("user-NAME"));
}

fn assert_json_error(r: &common::Reply, status: u16, code: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.text);
    assert!(r.header("content-type").is_some_and(|t| t.starts_with("application/json")), "{:?}", r.headers);
    let v = r.json();
    assert_eq!(v["error"], code, "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn every_refusal_is_json() {
    let config = format!("[auth]\napi_keys = [\"{KEY}\"]\nadmin_keys = [\"{KEY}\"]\n{}", test_chain());
    let s = Server::start_with(&config, &[]);
    assert_json_error(&s.get("/nope"), 404, "not_found");
    // 405: axum's own answer had an empty body.
    let r = common::agent().delete(&s.url("/v1/health")).call().unwrap();
    let r = common::Reply {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        text: {
            let mut r = r;
            r.body_mut().read_to_string().unwrap()
        },
    };
    let v = assert_json_error(&r, 405, "method_not_allowed");
    assert!(r.header("allow").is_some_and(|a| a.contains("GET")), "{:?}", r.headers);
    assert!(v["detail"].as_str().unwrap().contains("DELETE"), "{v}");
    // 413 on every body-taking endpoint, at the documented limit (axum's own
    // 2 MB limit answered in plain text on these).
    for (method, path) in [("POST", "/v1/lookup"), ("PUT", "/v1/indicators"), ("POST", "/v1/outputs/splunk")] {
        // Refused from the declared length: send only the head and a little.
        let mut stream = connect(&s);
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\n\r\n{{",
            5 * 1024 * 1024 + 1
        );
        stream.write_all(head.as_bytes()).unwrap();
        let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(3));
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(answer.to_ascii_lowercase().contains("content-type: application/json"), "{answer}");
        let v: Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(v["error"], "batch_too_large", "{path}");
        assert_eq!(v["limit_bytes"], 5 * 1024 * 1024, "{path}");
    }
    // And counted on the bytes received (3 MB: over axum's old 2 MB default, under ours).
    let r = raw(&s, "POST", "/v1/lookup", &[], &vec![b' '; 3 * 1024 * 1024]);
    assert_json_error(&r, 400, "invalid_json");
    // Content-Encoding: gzip is decoded everywhere; other encodings get 415.
    let r = raw(&s, "POST", "/v1/lookup", &[("Content-Encoding", "gzip")], &gzip(br#"{"ip":"81.2.69.160"}"#));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["geo"]["country"], "GB");
    let r = raw(&s, "PUT", "/v1/indicators", &[("Content-Encoding", "gzip")], &gzip(br#"{"indicator":"203.0.113.9"}"#));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_json_error(
        &raw(&s, "POST", "/v1/lookup", &[("Content-Encoding", "br")], b"{}"),
        415,
        "unsupported_encoding",
    );
    // A path parameter axum cannot decode.
    assert_json_error(&s.get("/v1/schema/%FF"), 400, "bad_request");
    // Header limits are hyper's (431 before any handler runs): documented.
    let mut stream = connect(&s);
    let headers: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    stream.write_all(format!("GET /v1/health HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes()).unwrap();
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(3));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

/// A request with the key, raw bytes as the body, read whole.
fn raw(s: &Server, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> common::Reply {
    let mut req = ureq::http::Request::builder().method(method).uri(s.url(path));
    req = req.header("Authorization", format!("Bearer {KEY}")).header("Content-Type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = common::agent().run(req.body(body.to_vec()).unwrap());
    match resp {
        Ok(mut resp) => common::Reply {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            text: resp.body_mut().read_to_string().unwrap(),
        },
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

/// True once the process has exited (a zombie until the test reaps it).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

#[test]
fn sigterm_drains_requests_in_flight_and_ends_event_streams() {
    let s = start("body_timeout_s = 10");
    let mut sse = connect(&s);
    sse.write_all(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut idle = connect(&s);
    idle.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // An ingest in flight: head and half of the body sent.
    let body = json!({"format": "flows.v1", "records": [{"src_ip": "45.149.3.1"}]}).to_string();
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    let mut busy = connect(&s);
    let head = format!(
        "POST /v1/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    busy.write_all(head.as_bytes()).unwrap();
    busy.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let status = std::process::Command::new("kill").args(["-TERM", &s.pid().to_string()]).status().unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!exited(s.pid()), "exited with a request in flight");
    busy.write_all(rest).unwrap();
    let (answer, closed) = read_until_closed(&mut busy, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 200"), "the request in flight is answered: {answer}");
    assert!(closed.is_some());
    let (_, closed) = read_until_closed(&mut sse, Duration::from_secs(5));
    assert!(closed.is_some(), "the event stream ends on shutdown");
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(5));
    assert!(closed.is_some(), "idle connections are closed on shutdown");
    let started = Instant::now();
    while !exited(s.pid()) {
        assert!(started.elapsed() < Duration::from_secs(5), "still running 5 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GETs `path` with `key` (none: no Authorization header).
fn get_as(s: &Server, path: &str, key: Option<&str>) -> common::Reply {
    let mut req = common::agent().get(&s.url(path));
    if let Some(key) = key {
        req = req.header("Authorization", format!("Bearer {key}"));
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    common::Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        text: resp.body_mut().read_to_string().unwrap(),
    }
}

/// Requests until the first 429 (at most `tries`); the successes before it
/// and the refusal.
fn until_refused(s: &Server, path: &str, key: Option<&str>, tries: usize) -> (usize, common::Reply) {
    for ok in 0..tries {
        let r = get_as(s, path, key);
        if r.status == 429 {
            return (ok, r);
        }
        assert_eq!(r.status, 200, "{path}: {}", r.text);
    }
    panic!("{path}: no 429 after {tries} requests");
}

#[test]
fn rate_limits_refuse_with_429_and_retry_after_per_key_and_per_address() {
    const OTHER: &str = "second-key-91c2";
    let config =
        |server: &str| format!("[server]\n{server}\n[auth]\napi_keys = [\"{KEY}\", \"{OTHER}\"]\n{}", test_chain());
    // Per key: 2/s with one second of burst. Each key has its own budget.
    let s = Server::start_with(&config("rate_limit_per_key = 2\nrate_limit_burst_s = 1"), &[]);
    let (ok, refusal) = until_refused(&s, "/v1/enrichers", Some(KEY), 20);
    assert!((2..=5).contains(&ok), "{ok} requests passed a budget of 2");
    let body = assert_json_error(&refusal, 429, "rate_limited");
    assert_eq!(body["limited_by"], "key", "{body}");
    let retry: u64 = refusal.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(get_as(&s, "/v1/enrichers", Some(OTHER)).status, 200, "another key has its own budget");
    std::thread::sleep(Duration::from_secs(retry));
    assert_eq!(get_as(&s, "/v1/enrichers", Some(KEY)).status, 200, "the budget refills");
    let text = get_as(&s, "/metrics", Some(KEY)).text;
    let refused = |by: &str| {
        let line = format!("telemetry_rate_limited_total{{by=\"{by}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(line.as_str())).map(|v| v.parse::<u64>().unwrap())
    };
    assert!(refused("key").unwrap() >= 1, "{text}");
    assert_eq!(refused("address"), Some(0));
    assert!(
        s.get("/v1/metrics").json()["rate_limited"]["key"].as_u64().unwrap() >= 1,
        "read without a key: its budget is spent"
    );
    drop(s);

    // Per address: whichever key (or none) is used; probes and scrapes are
    // not counted against it.
    let s = Server::start_with(&config("rate_limit_per_address = 3\nrate_limit_burst_s = 1"), &[]);
    for _ in 0..20 {
        assert_eq!(get_as(&s, "/v1/health", None).status, 200);
        assert_eq!(get_as(&s, "/metrics", None).status, 200);
    }
    let mut passed = 0;
    let refusal = loop {
        let key = if passed % 2 == 0 { KEY } else { OTHER };
        let r = get_as(&s, "/v1/enrichers", Some(key));
        if r.status == 429 {
            break r;
        }
        assert_eq!(r.status, 200, "{}", r.text);
        passed += 1;
        assert!(passed <= 8, "no 429 from the address limit");
    };
    assert!(passed >= 3, "{passed} requests passed a budget of 3");
    assert_eq!(assert_json_error(&refusal, 429, "rate_limited")["limited_by"], "address");
    assert!(refusal.header("retry-after").is_some());
    let after = get_as(&s, "/metrics", None).text;
    assert!(after.contains("telemetry_rate_limited_total{by=\"address\"} "), "{after}");
    drop(s);

    // Wrong keys are charged to the address even where probes are free:
    // `/v1/health/details` checks keys, and guessing there was unlimited.
    let s = Server::start_with(&config("rate_limit_per_address = 3\nrate_limit_burst_s = 1"), &[]);
    let mut refused = None;
    for _ in 0..10 {
        let r = get_as(&s, "/v1/health/details", Some("a-guess"));
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 401, "{}", r.text);
    }
    let refusal = refused.expect("ten wrong keys at /v1/health/details and no 429");
    assert_eq!(assert_json_error(&refusal, 429, "rate_limited")["limited_by"], "address");
    assert_eq!(get_as(&s, "/v1/health", None).status, 200, "anonymous probes stay free");
    // Plain /v1/health checks no key: a header there (an ingress's Basic
    // auth, say) is no guess, and never charged.
    for _ in 0..10 {
        assert_eq!(get_as(&s, "/v1/health", Some("ingress-added")).status, 200);
    }
}
