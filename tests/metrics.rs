//! Live metrics end to end: the real binary, real HTTP, traffic shaped like
//! the acceptance run (2,000 flows.v1 events, batches of 100, 0.1 s apart,
//! 10% of sources in 45.149.3.0/24 from ti/indicators.txt).

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/promtool.rs"]
mod promtool;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::{agent, repo, test_chain, Server, KEY};
use serde_json::{json, Value};

fn chain() -> String {
    format!(
        "{}\n[[chain]]\nplugin = \"wasm\"\nname = \"risk\"\nmodule = \"{}\"\n",
        test_chain(),
        repo().join("rules/risk.wasm").display()
    )
}

/// Destinations the MaxMind test databases know (country / AS).
const DESTINATIONS: [&str; 4] = ["89.160.20.112", "81.2.69.142", "1.128.0.1", "216.160.83.56"];

fn batch(b: usize) -> Value {
    let records: Vec<Value> = (0..100)
        .map(|i| {
            let n = b * 100 + i;
            if n.is_multiple_of(10) {
                // Known-bad source, RDP, large upload: scores 90.
                json!({"src_ip": format!("45.149.3.{}", n % 7), "dst_ip": "89.160.20.112",
                       "src_port": 50000, "dst_port": 3389, "proto": "tcp", "bytes": 4_000_000})
            } else {
                json!({"src_ip": format!("10.1.{}.{}", n / 250, n % 250), "dst_ip": DESTINATIONS[n % 4],
                       "src_port": 40000 + (n % 1000), "dst_port": 443, "proto": "tcp", "bytes": 1200})
            }
        })
        .collect();
    json!(records)
}

fn send_acceptance_traffic(s: &Server) {
    for b in 0..20 {
        let r = s.ingest("flows.v1", batch(b));
        assert_eq!(r.status, 200, "{}", r.text);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn non_flat(series: &Value) -> bool {
    let values: Vec<&Value> = series.as_array().unwrap().iter().map(|p| &p[1]).collect();
    values.iter().any(|v| *v != values[0])
}

/// Parses the text exposition strictly enough to catch format slips:
/// every sample line is `name{labels} value` with a float value, every
/// sample's family has a TYPE line. Returns (name with labels, value).
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            typed.insert(parts.next().unwrap().to_string());
            assert!(matches!(parts.next(), Some("counter" | "gauge" | "histogram")), "{line}");
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "{line}");
        }
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        assert!(typed.contains(name) || typed.contains(family), "no TYPE for {line}");
        samples.push((series.to_string(), value));
    }
    samples
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples.iter().find(|(s, _)| s == series).unwrap_or_else(|| panic!("{series} missing")).1
}

#[test]
fn acceptance_traffic_shows_in_json_and_prometheus() {
    let s = Server::start(&chain());
    send_acceptance_traffic(&s);
    let first = s.metrics();
    let m = s.metrics();

    assert!(m["requests_total"].as_u64().unwrap() > first["requests_total"].as_u64().unwrap());
    assert!(m["rates"]["epm_1m"].as_f64().unwrap() > 0.0, "{}", m["rates"]);
    assert!(m["rates"]["bpm_1m"].as_f64().unwrap() > 0.0, "{}", m["rates"]);
    // Every tile's sparkline has its history here, not only the page's own samples.
    for name in ["eps", "bpm", "threats", "avg_risk", "unique_sources", "lag_ms_p95", "requests"] {
        let series = &m["timeseries"]["last_5m"][name];
        assert_eq!(series.as_array().unwrap().len(), 60, "{name}");
        assert!(non_flat(series), "{name} is flat: {series}");
    }
    let last_5m = &m["timeseries"]["last_5m"];
    let newest = |name: &str| last_5m[name].as_array().unwrap().iter().rev().find_map(|p| p[1].as_f64()).unwrap();
    assert_eq!(newest("unique_sources"), m["totals"]["unique_sources"].as_f64().unwrap());
    let requests: f64 = last_5m["requests"].as_array().unwrap().iter().filter_map(|p| p[1].as_f64()).sum();
    assert!(requests >= 20.0, "the 20 ingest requests are in the requests series: {requests}");
    assert!(newest("lag_ms_p95") > 0.0);
    assert!(m["queue"]["lag_ms_p95"].as_f64().unwrap() > 0.0, "{}", m["queue"]);
    assert!(m["queue"]["lag_ms_p50"].as_f64().unwrap() <= m["queue"]["lag_ms_p99"].as_f64().unwrap());

    let t = &m["totals"];
    assert_eq!(t["events"], 2000);
    assert_eq!(t["batches"], 20);
    assert_eq!(t["threat_matches"], 200);
    assert_eq!(t["events_with_threats"], 200);
    assert_eq!(m["records_processed"], 2000);
    // 1,800 benign sources are all distinct, plus 7 bad ones: 1,807 ± 3%.
    let unique = t["unique_sources"].as_f64().unwrap();
    assert!((unique - 1807.0).abs() < 1807.0 * 0.03, "unique_sources {unique}");
    assert_eq!(t["risk_count"], 2000);
    assert!(t["avg_risk"].as_f64().unwrap() > 0.0);

    // 2,000 events in about 2-3 s: the one-minute rate is over the elapsed
    // time, not diluted by a minute that has not happened.
    let eps = m["rates"]["eps_1m"].as_f64().unwrap();
    // (Divided by a full minute it would be 33; allow a slow, loaded machine.)
    assert!(eps > 2000.0 / 30.0, "eps_1m {eps}");

    let top = &m["top"]["5m"];
    assert_eq!(top["indicators"][0], json!({"key": "45.149.3.0/24", "count": 200, "error": 0}));
    assert_eq!(top["dst_countries"][0]["key"], "SE", "{}", top["dst_countries"]);
    let asns = top["asns"].as_array().unwrap();
    let bredband = asns.iter().find(|a| a["key"] == "29518").expect("AS29518 listed");
    assert_eq!(bredband["label"], "Bredband2 AB");
    assert_eq!(bredband["count"], 200 + 400, "bad ones plus every 4th benign one not already bad");
    assert!(top["sources"][0]["key"].as_str().unwrap().starts_with("45.149.3."));
    assert_eq!(m["top"]["15m"]["indicators"][0]["count"], 200);

    let high = m["recent_high_risk"].as_array().unwrap();
    assert_eq!(high.len(), 50, "bounded to the newest 50");
    assert_eq!(high[0]["risk_score"], 90);
    assert_eq!(high[0]["indicators"], json!(["45.149.3.0/24"]));
    assert_eq!((&high[0]["asn"], &high[0]["asn_label"]), (&json!(29518), &json!("Bredband2 AB")), "{}", high[0]);
    assert!(!high[0]["reasons"].as_array().unwrap().is_empty());
    assert!(high.windows(2).all(|w| w[0]["ts_ms"].as_u64() >= w[1]["ts_ms"].as_u64()), "newest first");

    let risk = m["enrichers"].as_array().unwrap().iter().find(|e| e["name"] == "risk").unwrap();
    assert_eq!(risk["events"], 2000);
    assert_eq!(risk["state"], "loaded");
    assert!(m["enrichers"][0]["details"].is_object(), "per-stage details kept");
    assert_eq!(m["outputs"], json!([]), "no output configured");

    // Prometheus: parses, names present, counters agree with the JSON.
    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let samples = parse_prometheus(&r.text);
    assert_eq!(sample(&samples, "telemetry_ingest_total"), 2000.0);
    assert_eq!(sample(&samples, "telemetry_batches_total"), 20.0);
    assert_eq!(sample(&samples, "telemetry_threat_matches_total"), 200.0);
    assert_eq!(sample(&samples, "telemetry_risk_score_count"), 2000.0);
    assert_eq!(sample(&samples, "telemetry_risk_score_sum"), t["risk_sum"].as_f64().unwrap());
    assert_eq!(sample(&samples, "telemetry_processing_duration_seconds_count"), 20.0);
    assert_eq!(sample(&samples, "telemetry_processing_duration_seconds_bucket{le=\"+Inf\"}"), 20.0);
    let p_sum = sample(&samples, "telemetry_processing_duration_seconds_sum");
    assert!(p_sum > 0.0 && p_sum < 20.0, "seconds, not milliseconds: {p_sum}");
    assert_eq!(sample(&samples, "telemetry_queue_lag_seconds_count"), 20.0);
    assert!(
        sample(&samples, "telemetry_queue_lag_seconds_bucket{le=\"10\"}") == 20.0,
        "every batch of this test waited less than 10 s"
    );
    assert!(sample(&samples, "telemetry_sources_active") > 1700.0);
    assert!(sample(&samples, "telemetry_requests_total{route=\"ingest\",status_class=\"2xx\"}") >= 20.0);
    // This test's earlier GET /v1/metrics and /v1/enrichers calls.
    assert!(sample(&samples, "telemetry_requests_total{route=\"metrics\",status_class=\"2xx\"}") >= 1.0);
    assert_eq!(sample(&samples, "telemetry_enricher_events_total{enricher=\"ti\"}"), 2000.0);
    assert_eq!(sample(&samples, "telemetry_enricher_event_duration_seconds_count{enricher=\"risk\"}"), 2000.0);
    assert_eq!(
        sample(&samples, "telemetry_enricher_event_duration_seconds_bucket{enricher=\"risk\",le=\"+Inf\"}"),
        2000.0
    );
    for name in [
        "telemetry_enricher_event_duration_seconds_sum{enricher=\"risk\"}",
        "telemetry_enricher_errors_total{enricher=\"risk\"}",
        "telemetry_enricher_reloads_total{enricher=\"ti\"}",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
        "process_open_fds",
    ] {
        sample(&samples, name);
    }
    assert!(samples.iter().any(|(s, v)| s.starts_with("enrichd_build_info{version=") && *v == 1.0));
    assert!(!samples.iter().any(|(s, _)| s.starts_with("build_info")), "no unprefixed build_info");
    promtool::check(&r.text);
}

#[test]
fn windows_report_zeros_before_traffic_and_rates_from_the_first_batch() {
    let s = Server::start(&chain());
    let m = s.metrics();
    assert_eq!(m["rates"]["eps_1m"], 0.0);
    assert_eq!(m["queue"]["lag_ms_p95"], 0.0);
    assert_eq!(m["totals"]["avg_risk"], 0.0);
    let eps = m["timeseries"]["last_5m"]["eps"].as_array().unwrap();
    assert_eq!(eps.len(), 60);
    let ts: Vec<u64> = eps.iter().map(|p| p[0].as_u64().unwrap()).collect();
    assert!(ts.iter().all(|t| t % 5000 == 0) && ts.windows(2).all(|w| w[1] - w[0] == 5000));
    assert!(m["timeseries"]["last_5m"]["avg_risk"].as_array().unwrap().iter().all(|p| p[1].is_null()));
    assert!(m["server_time_ms"].as_u64().unwrap() >= *ts.last().unwrap());

    let r = s.ingest("flows.v1", batch(0));
    assert_eq!(r.status, 200);
    let m = s.metrics();
    assert!(m["rates"]["eps_1m"].as_f64().unwrap() > 10.0, "not 100/60: {}", m["rates"]);
    let lag = m["queue"]["lag_ms_p50"].as_f64().unwrap();
    assert!(lag > 0.0 && lag.fract() != 0.0, "float milliseconds: {lag}");
}

/// Reads `count` SSE events of type `metrics` from an open stream.
fn read_events(reader: impl std::io::Read, count: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut kind = String::new();
    for line in BufReader::new(reader).lines() {
        let line = line.expect("stream line");
        if let Some(k) = line.strip_prefix("event: ") {
            kind = k.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            assert_eq!(kind, "metrics");
            events.push(serde_json::from_str::<Value>(data).expect("event data is JSON"));
            if events.len() == count {
                break;
            }
        }
    }
    events
}

#[test]
fn stream_sends_the_metrics_document_every_second() {
    let s = Server::start(&chain());
    let started = Instant::now();
    let mut resp = agent().get(&s.url("/v1/stream")).call().expect("stream");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = read_events(resp.body_mut().as_reader(), 2);
    assert_eq!(events.len(), 2);
    assert!(started.elapsed() < Duration::from_secs(5));
    for e in &events {
        assert!(e["rates"]["epm_1m"].is_number() && e["timeseries"]["last_5m"]["eps"].is_array());
    }
    let (t0, t1) = (events[0]["server_time_ms"].as_u64().unwrap(), events[1]["server_time_ms"].as_u64().unwrap());
    assert!((500..=5000).contains(&(t1 - t0)), "about one second apart: {}", t1 - t0);
}

#[test]
fn metrics_key_rule_covers_all_three_endpoints_and_only_the_header() {
    let config = format!("[server]\nmetrics_require_key = true\n[auth]\napi_keys = [\"{KEY}\"]\n{}", chain());
    let s = Server::start_with(&config, &[]);
    for path in ["/v1/metrics", "/v1/stream", "/metrics"] {
        assert_eq!(s.get(path).status, 401, "{path} without key");
        let in_url = format!("{path}?api_key={KEY}&token={KEY}&access_token={KEY}");
        assert_eq!(s.get(&in_url).status, 401, "{path}: a key in the URL is not accepted");
    }
    assert_eq!(s.get_auth("/v1/metrics").status, 200);
    assert_eq!(s.get_auth("/metrics").status, 200);
    let mut resp =
        agent().get(&s.url("/v1/stream")).header("Authorization", format!("Bearer {KEY}")).call().expect("stream");
    assert_eq!(resp.status(), 200);
    assert_eq!(read_events(resp.body_mut().as_reader(), 1).len(), 1);
}

/// Unauthenticated readers of the public metrics learn that a stage has a
/// problem, not its text (which names files): that needs an API key.
#[test]
fn public_metrics_withhold_error_texts() {
    let dir = tempfile::tempdir().unwrap();
    let feeds = dir.path().join("private-feeds-8d2f");
    std::fs::create_dir(&feeds).unwrap();
    let feed = feeds.join("feed.txt");
    std::fs::write(&feed, "203.0.113.0/24\n").unwrap();
    let config = format!(
        "[auth]\napi_keys = [\"{KEY}\"]\n[reload]\ndebounce_ms = 100\n[[chain]]\nplugin = \"ti\"\npaths = [\"{}\"]\n",
        feed.display()
    );
    let s = Server::start_with(&config, &[]);
    std::fs::write(&feed, "not an indicator\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let keyed = loop {
        let r = s.get_auth("/v1/metrics");
        let ti = r.json()["enrichers"][0].clone();
        if ti["last_reload_error"].is_string() {
            break r.text;
        }
        assert!(Instant::now() < deadline, "the bad file was never refused: {ti}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(keyed.contains("private-feeds-8d2f"), "with a key, the text names the file: {keyed}");
    for path in ["/v1/metrics", "/metrics"] {
        let public = s.get(path).text;
        assert!(!public.contains("private-feeds-8d2f") && !public.contains("feed.txt"), "{path}: {public}");
    }
    let ti = s.get("/v1/metrics").json()["enrichers"][0].clone();
    assert!(ti["last_reload_error"].as_str().unwrap().starts_with("withheld"), "{ti}");
    assert_eq!(ti["reload_failures"], 1, "the count stays public: {ti}");
}

/// Public metrics keep the monitored network's addresses and what threat
/// intel flagged to key holders (`server.metrics_public_detail = false`, the
/// default): counts, countries and AS numbers stay public, the high-risk
/// events stay with their scores and reasons but without endpoints. The
/// stream is the same document. With the switch on, the public sees all.
#[test]
fn public_metrics_withhold_addresses_and_indicators() {
    let s = Server::start_with(&format!("[auth]\napi_keys = [\"{KEY}\"]\n{}", chain()), &[]);
    send_acceptance_traffic(&s);
    let public = s.get("/v1/metrics");
    assert_eq!(public.status, 200);
    for secret in ["45.149.3.", "10.1.", "89.160.20.112", "45.149.3.0/24"] {
        assert!(!public.text.contains(secret), "public metrics name {secret}: {}", public.text);
    }
    let m = public.json();
    assert_eq!(m["totals"]["events"], 2000, "counts stay public");
    assert_eq!(m["totals"]["threat_matches"], 200);
    let top = &m["top"]["5m"];
    assert_eq!(top["dst_countries"][0]["key"], "SE", "countries stay public: {top}");
    assert!(top["asns"].as_array().unwrap().iter().any(|a| a["key"] == "29518"), "AS numbers stay public: {top}");
    assert_eq!((&top["sources"], &top["indicators"]), (&json!([]), &json!([])));
    let high = m["recent_high_risk"].as_array().unwrap();
    assert_eq!(high.len(), 50, "the events stay");
    assert_eq!((high[0]["risk_score"].clone(), high[0]["src_ip"].clone()), (json!(90), Value::Null));
    assert_eq!(high[0]["dst_port"], 3389);
    assert!(!high[0]["reasons"].as_array().unwrap().is_empty());
    let withheld = m["withheld"].as_array().unwrap();
    assert!(withheld.contains(&json!("top.sources")) && withheld.contains(&json!("recent_high_risk.src_ip")), "{m}");

    let mut resp = agent().get(&s.url("/v1/stream")).call().expect("stream");
    let event = read_events(resp.body_mut().as_reader(), 1).remove(0);
    assert_eq!(event["withheld"], m["withheld"], "the stream withholds the same");
    assert_eq!(event["top"]["5m"]["sources"], json!([]));

    let keyed = s.metrics();
    assert_eq!(keyed["withheld"], json!([]));
    assert!(keyed["top"]["5m"]["sources"][0]["key"].as_str().unwrap().starts_with("45.149.3."), "{keyed}");
    assert_eq!(keyed["recent_high_risk"][0]["indicators"], json!(["45.149.3.0/24"]));

    let config = format!("[server]\nmetrics_public_detail = true\n[auth]\napi_keys = [\"{KEY}\"]\n{}", chain());
    let open = Server::start_with(&config, &[]);
    send_acceptance_traffic(&open);
    let m = open.get("/v1/metrics").json();
    assert_eq!(m["withheld"], json!([]));
    assert!(m["top"]["5m"]["sources"][0]["key"].as_str().unwrap().starts_with("45.149.3."), "{m}");
}

/// The same for outputs: a failing output's last error names its file (or
/// host, or what the destination answered); public readers see that there
/// is one, and when, not its text.
#[test]
fn public_metrics_withhold_output_error_texts() {
    // /dev/full opens and then refuses every write (ENOSPC).
    let config = format!(
        "[auth]\napi_keys = [\"{KEY}\"]\n[[output]]\ntype = \"file\"\nname = \"archive\"\npath = \"/dev/full\"\n\
         flush_interval_ms = 20\nbackoff_initial_ms = 10\nbackoff_max_ms = 50\n"
    );
    let s = Server::start_with(&config, &[]);
    assert_eq!(s.ingest("flows.v1", batch(0)).status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    let keyed = loop {
        let doc = s.get_auth("/v1/metrics").json();
        let error = doc["outputs"][0]["counters"]["last_error"]["message"].clone();
        if error.is_string() {
            break error.as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the write never failed: {doc}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(keyed.contains("/dev/full"), "with a key, the text names the file: {keyed}");
    for path in ["/v1/metrics", "/metrics"] {
        let public = s.get(path).text;
        assert!(!public.contains("/dev/full"), "{path}: {public}");
    }
    let error = &s.get("/v1/metrics").json()["outputs"][0]["counters"]["last_error"];
    assert!(error["message"].as_str().unwrap().starts_with("withheld"), "{error}");
    assert!(error["unix_ms"].is_u64(), "when stays public: {error}");
}

/// Every series appears once: two indicator files found as they are have
/// the same origin labels, and must still make one `content_info` series.
#[test]
fn every_prometheus_series_is_unique() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
    std::fs::write(&a, "198.51.100.1\n").unwrap();
    std::fs::write(&b, "198.51.100.2\n").unwrap();
    let s = Server::start(&format!("[[chain]]\nplugin = \"ti\"\npaths = [\"{}\", \"{}\"]\n", a.display(), b.display()));
    let text = s.get("/metrics").text;
    let mut seen = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let series = line.rsplit_once(' ').map_or(line, |(series, _)| series);
        assert!(seen.insert(series.to_string()), "{series} twice in\n{text}");
    }
    assert!(text.contains("telemetry_enricher_content_info{enricher=\"ti\",from=\"file\""), "{text}");
    promtool::check(&text);
}

/// `/v1/stream` holds a connection for as long as its client likes and is
/// public by default: the number open at once is bounded, so they cannot
/// take every connection slot, and health checks keep answering.
#[test]
fn metrics_streams_are_bounded() {
    use std::io::{Read, Write};
    let s = Server::start(&test_chain());
    let addr = s.base.trim_start_matches("http://").to_string();
    let open = |n: usize| -> Vec<std::net::TcpStream> {
        (0..n)
            .map(|_| {
                let mut c = std::net::TcpStream::connect(&addr).unwrap();
                write!(c, "GET /v1/stream HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
                let mut head = [0u8; 12];
                c.read_exact(&mut head).unwrap();
                assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
                c
            })
            .collect()
    };
    let streams = open(64);
    let r = s.get("/v1/stream");
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json()["error"], "too_many_streams");
    assert_eq!(s.get("/v1/health").status, 200);
    drop(streams);
    common::wait_for("a stream slot", Duration::from_secs(10), || {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        write!(c, "GET /v1/stream HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 200"
    });
}
