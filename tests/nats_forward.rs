//! `[ingest] forward`: an HTTP-ingest instance publishes raw batches to a
//! JetStream stream instead of enriching them, and another instance
//! consumes that stream with a `nats` source and outputs enriched events.
//! A real `nats-server` (`tests/common/nats.rs`) and two real `enrichd`
//! processes.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use common::nats::NatsServer;
use common::Server;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// The forwarding instance: no chain work, no outputs.
fn forwarder_config(url: &str, timeout_ms: u64) -> String {
    format!(
        r#"
[auth]
api_keys = ["{key}"]

[reload]
watch = false

[ingest]
forward = "nats"

[[forward]]
type = "nats"
servers = ["{url}"]
subject = "raw.http"
create_stream = "RAW"
timeout_ms = {timeout_ms}
{chain}"#,
        key = common::KEY,
        chain = common::test_chain(),
    )
}

/// The enriching instance: a source on RAW, an output to ENRICHED.
fn worker_config(url: &str) -> String {
    format!(
        r#"
[auth]
api_keys = ["{key}"]

[reload]
watch = false

[[source]]
type = "nats"
servers = ["{url}"]
stream = "RAW"
subjects = ["raw.>"]

[[output]]
type = "nats"
name = "enriched"
servers = ["{url}"]
subject = "enriched.conn"
create_stream = "ENRICHED"
flush_interval_ms = 20
{chain}"#,
        key = common::KEY,
        chain = common::test_chain(),
    )
}

fn records(from: usize, n: usize) -> Value {
    (from..from + n)
        .map(|i| {
            json!({
                "ts": 1723351200.5 + i as f64, "uid": format!("F{i}"),
                "id.orig_h": "10.1.2.3", "id.orig_p": 40000 + (i % 20000), "id.resp_h": "81.2.69.160",
                "id.resp_p": 443, "proto": "tcp", "service": "ssl", "conn_state": "SF",
            })
        })
        .collect()
}

/// uid -> times seen in ENRICHED, each event checked to be enriched.
async fn read_enriched(js: &jetstream::Context, want: usize, timeout: Duration) -> HashMap<String, u32> {
    let deadline = Instant::now() + timeout;
    let stream = loop {
        match js.get_stream("ENRICHED").await {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "no ENRICHED stream: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let consumer: consumer::Consumer<consumer::pull::Config> = stream
        .get_or_create_consumer(
            "verify",
            consumer::pull::Config { durable_name: Some("verify".into()), ..Default::default() },
        )
        .await
        .unwrap();
    let mut seen: HashMap<String, u32> = HashMap::new();
    while seen.len() < want {
        assert!(Instant::now() < deadline, "{} of {want} events in the output stream", seen.len());
        let mut batch =
            consumer.batch().max_messages(500).expires(Duration::from_millis(200)).messages().await.unwrap();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            for line in message.payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let event: Value = serde_json::from_slice(line).unwrap();
                assert_eq!(event["geo"]["country"], "GB", "enriched: {event}");
                assert_eq!(event["collector_id"], Value::Null, "records only: {event}");
                *seen.entry(event["uid"].as_str().unwrap().to_string()).or_default() += 1;
            }
            message.ack().await.unwrap();
        }
    }
    seen
}

#[test]
fn http_batches_forwarded_by_one_instance_are_enriched_by_another() {
    let Some(nats) = NatsServer::start("http_batches_forwarded_by_one_instance_are_enriched_by_another") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let js = rt.block_on(async { jetstream::new(async_nats::connect(&nats.url).await.unwrap()) });
    let worker = Server::start_with(&worker_config(&nats.url), &[]);
    let edge = Server::start_with(&forwarder_config(&nats.url, 5000), &[]);

    let (batches, per) = (40, 100);
    for b in 0..batches {
        let r = edge.ingest("zeek.conn.v1", records(b * per, per));
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json(), json!({"accepted": per, "forwarded": "nats"}));
    }
    // Larger than NATS' 1 MiB max_payload: published gzipped, still one
    // message (the consumer accepts or refuses it whole).
    let big = 8000;
    let from = batches * per;
    let r = edge.ingest("zeek.conn.v1", records(from, big));
    assert_eq!(r.status, 200, "{}", r.text);
    // Refused at the edge, with the same 400 as enriching would give:
    // nothing is published.
    let r = edge.ingest("zeek.conn.v1", json!([{"ts": 1.0, "uid": "bad", "id.resp_p": "https"}]));
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["record_index"], 0, "{}", r.text);

    let total = batches * per + big;
    let seen = rt.block_on(read_enriched(&js, total, Duration::from_secs(60)));
    assert_eq!(seen.len(), total);
    assert!(seen.values().all(|n| *n == 1), "each event once");
    assert!(!seen.contains_key("bad"));

    let forward = &edge.metrics()["forward"];
    assert_eq!(forward["batches"], batches + 1, "{forward}");
    assert_eq!(forward["events"], total, "{forward}");
    assert_eq!(forward["failed"], 0, "{forward}");
    assert_eq!(edge.metrics()["totals"]["events"], 0, "nothing enriched at the edge");
    let raw = rt.block_on(async { js.get_stream("RAW").await.unwrap().info().await.unwrap().state.messages });
    assert_eq!(raw, batches as u64 + 1, "one message per batch");
    common::wait_for("the worker to ack every message", Duration::from_secs(10), || {
        worker.get_auth("/v1/sources").json()["sources"][0]["counters"]["acked"] == batches + 1
    });
}

#[test]
fn forwarding_without_a_server_answers_503_and_a_reload_asks_for_a_restart() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("nats://127.0.0.1:{port}");
    let edge = Server::start_with(&forwarder_config(&url, 300), &[]);
    let r = edge.ingest("zeek.conn.v1", records(0, 3));
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.json()["error"], "forward_unavailable", "{}", r.text);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(edge.metrics()["forward"]["failed"], 1);

    // Switching forwarding off is a deployment change: reported, not applied.
    let path = edge.dir.path().join("config.toml");
    std::fs::write(&path, forwarder_config(&url, 300).replace("forward = \"nats\"\n", "")).unwrap();
    // SAFETY: kill(2) with the pid of the enrichd this test spawned.
    unsafe { libc::kill(edge.pid() as i32, libc::SIGHUP) };
    common::wait_for("the reload", Duration::from_secs(10), || {
        edge.get_auth("/v1/enrichers").json()["reload"]["needs_restart"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s == "forward"))
    });
    assert_eq!(edge.ingest("zeek.conn.v1", records(0, 1)).status, 503, "still forwarding until a restart");
}
