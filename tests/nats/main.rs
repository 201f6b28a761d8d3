//! NATS JetStream end to end: a real `nats-server -js` (see
//! `tests/common/nats.rs`), the real `enrichd` binary with a `nats` source
//! on a raw-events stream and a `nats` output to an enriched stream.
//!
//! What is checked: every event published arrives enriched in the output
//! stream and the consumer has nothing pending or unacknowledged at the
//! end; a poison message is termed and dead-lettered once, never
//! redelivered; after `kill -9` mid-load and a restart every event arrives
//! once (the redelivered messages' copies dropped by the output stream's
//! duplicate window, through `Nats-Msg-Id`s from the source's stream
//! sequence); a message given back and redelivered, or consumed again by
//! another consumer, is stored once.

#[path = "../common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use common::nats::NatsServer;
use common::Server;
use futures_util::StreamExt;
use serde_json::Value;

/// The source, the output and the test chain, on `url`.
fn config(url: &str, ack_wait_ms: u64) -> String {
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
durable = "enrichd"
ack_wait_ms = {ack_wait_ms}
batch = 32

[[output]]
type = "nats"
name = "enriched"
servers = ["{url}"]
subject = "enriched.conn"
create_stream = "ENRICHED"
durability = "spool"
batch_max = 2000
flush_interval_ms = 20
{chain}"#,
        key = common::KEY,
        chain = common::test_chain(),
    )
}

async fn jetstream(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.expect("connect to the test nats-server"))
}

/// Publishes `messages` envelopes of `per` events (ids from 0), each
/// publish acknowledged.
async fn publish(js: &jetstream::Context, messages: usize, per: usize) {
    js.get_or_create_stream(stream::Config {
        name: "RAW".into(),
        subjects: vec!["raw.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut acks = Vec::new();
    for m in 0..messages {
        acks.push(js.publish("raw.zeek", common::conn_envelope("nats-test", m * per, per).into()).await.unwrap());
    }
    for ack in acks {
        ack.await.expect("publish acknowledged");
    }
}

/// Reads everything new from the output stream (through a durable
/// consumer of the test's own): uid -> times seen, and every event checked
/// to be enriched.
struct Reader {
    consumer: consumer::Consumer<consumer::pull::Config>,
    seen: HashMap<String, u32>,
    messages: u64,
}

impl Reader {
    async fn new(js: &jetstream::Context) -> Reader {
        let deadline = Instant::now() + Duration::from_secs(30);
        // The output creates the stream on its first connection.
        let stream = loop {
            match js.get_stream("ENRICHED").await {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "no ENRICHED stream: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let consumer = stream
            .get_or_create_consumer(
                "verify",
                consumer::pull::Config { durable_name: Some("verify".into()), ..Default::default() },
            )
            .await
            .unwrap();
        Reader { consumer, seen: HashMap::new(), messages: 0 }
    }

    async fn read(&mut self) {
        let mut batch =
            self.consumer.batch().max_messages(500).expires(Duration::from_millis(200)).messages().await.unwrap();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            self.messages += 1;
            for line in message.payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let event: Value = serde_json::from_slice(line).expect("an NDJSON event");
                assert_eq!(event["geo"]["country"], "GB", "enriched: {event}");
                let uid = event["uid"].as_str().expect("uid").to_string();
                *self.seen.entry(uid).or_default() += 1;
            }
            message.ack().await.unwrap();
        }
    }

    /// Reads until `n` distinct events were seen.
    async fn until(&mut self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.seen.len() < n {
            assert!(Instant::now() < deadline, "{} of {n} events in the output stream", self.seen.len());
            self.read().await;
        }
    }

    fn duplicates(&self) -> u32 {
        self.seen.values().map(|n| n - 1).sum()
    }
}

async fn raw_consumer_idle(js: &jetstream::Context) -> bool {
    let stream = js.get_stream("RAW").await.unwrap();
    let mut c: consumer::Consumer<consumer::pull::Config> = stream.get_consumer("enrichd").await.unwrap();
    let info = c.info().await.unwrap();
    info.num_pending == 0 && info.num_ack_pending == 0
}

#[test]
fn events_flow_from_the_raw_stream_to_the_output_stream() {
    let Some(nats) = NatsServer::start("events_flow_from_the_raw_stream_to_the_output_stream") else { return };
    let rt = common::broker_runtime();
    let js = rt.block_on(jetstream(&nats.url));
    let (messages, per) = (200, 100);
    rt.block_on(publish(&js, messages, per));
    let s = Server::start_with(&config(&nats.url, 30_000), &[]);
    let mut reader = rt.block_on(Reader::new(&js));
    rt.block_on(reader.until(messages * per, Duration::from_secs(40)));
    assert_eq!(reader.duplicates(), 0, "no crash, no duplicates");
    common::wait_for("the raw consumer to settle", Duration::from_secs(10), || rt.block_on(raw_consumer_idle(&js)));

    let view = common::source_view(&s);
    assert_eq!(view["name"], "nats");
    assert_eq!(view["state"], "running", "{view}");
    assert_eq!(view["counters"]["acked"], messages, "{view}");
    assert_eq!(view["counters"]["events"], messages * per, "{view}");
    assert_eq!(view["counters"]["termed"], 0, "{view}");
    let doc = s.get("/v1/metrics").json();
    assert_eq!(doc["sources"][0]["counters"]["acked"], messages, "{doc}");
    assert!(doc["sources"][0].get("settings").is_none(), "settings only with a key");
    let m = s.get("/metrics").text;
    assert!(m.contains(&format!("telemetry_source_acked_total{{source=\"nats\"}} {messages}")), "{m}");
    assert!(m.contains("telemetry_source_running{source=\"nats\"} 1"), "{m}");
    assert!(m.contains(&format!("telemetry_output_sent_total{{output=\"enriched\"}} {}", messages * per)), "{m}");
}

#[test]
fn a_poison_message_is_termed_and_dead_lettered_once() {
    let Some(nats) = NatsServer::start("a_poison_message_is_termed_and_dead_lettered_once") else { return };
    let rt = common::broker_runtime();
    let js = rt.block_on(jetstream(&nats.url));
    rt.block_on(publish(&js, 1, 10));
    rt.block_on(async {
        js.publish("raw.zeek", "this is not JSON".into()).await.unwrap().await.unwrap();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Enrichd-Format", "zeek.conn.v1");
        let ndjson = "{\"ts\":1.0,\"uid\":\"N1\",\"id.orig_h\":\"10.0.0.1\",\"id.resp_h\":\"81.2.69.160\"}\n";
        js.publish_with_headers("raw.zeek", headers, ndjson.into()).await.unwrap().await.unwrap();
    });
    // A short ack_wait: a poison message that were merely left unsettled
    // would come back within the test.
    let s = Server::start_with(&config(&nats.url, 500), &[]);
    let mut reader = rt.block_on(Reader::new(&js));
    rt.block_on(reader.until(11, Duration::from_secs(20)));
    common::wait_for("the poison message to be termed", Duration::from_secs(10), || {
        common::source_view(&s)["counters"]["termed"] == 1
    });
    // Several ack_waits later: still once.
    std::thread::sleep(Duration::from_millis(2000));
    let view = common::source_view(&s);
    assert_eq!(view["counters"]["messages"], 3, "{view}");
    assert_eq!(view["counters"]["redelivered"], 0, "{view}");
    assert_eq!(view["counters"]["termed"], 1, "{view}");
    assert_eq!(view["counters"]["dead_lettered"], 1, "{view}");
    assert!(rt.block_on(raw_consumer_idle(&js)));
    let dead = s.get_auth("/v1/sources/nats/deadletter").json();
    assert_eq!(dead["total"], 1, "{dead}");
    let record = &dead["records"][0];
    assert_eq!(record["event"]["origin"]["subject"], "raw.zeek", "{record}");
    assert_eq!(record["event"]["origin"]["stream_seq"], 2, "{record}");
    assert_eq!(record["event"]["body"], "this is not JSON", "{record}");
    assert!(record["error"].as_str().unwrap().starts_with("invalid_json"), "{record}");
    assert_eq!(reader.seen.get("N1"), Some(&1), "the NDJSON message with a format header");

    // Reconciled on reload like `[[output]]`: a bad entry is refused whole
    // (the source keeps running), a disabled one stops, its counters kept.
    let path = s.dir.path().join("config.toml");
    let reload = |text: String| {
        std::fs::write(&path, text).unwrap();
        // SAFETY: kill(2) with the pid of the enrichd this test spawned.
        unsafe { libc::kill(s.pid() as i32, libc::SIGHUP) };
    };
    let good = config(&nats.url, 500);
    reload(good.replace("batch = 32\n", "batch = 32\nmax_deliver = 0\n"));
    common::wait_for("the refusal", Duration::from_secs(10), || {
        s.get_auth("/v1/enrichers").json()["reload"]["last_config_error"]
            .as_str()
            .is_some_and(|e| e.contains("[[source]]") && e.contains("max_deliver"))
    });
    assert_eq!(common::source_view(&s)["state"], "running", "keep-last-good");
    reload(good.replace("batch = 32\n", "batch = 32\nenabled = false\n"));
    common::wait_for("the source to stop", Duration::from_secs(10), || common::source_view(&s)["state"] == "disabled");
    assert_eq!(common::source_view(&s)["counters"]["termed"], 1, "counters kept");
    assert!(s.get("/metrics").text.contains("telemetry_source_enabled{source=\"nats\"} 0"));
}

#[test]
fn kill_9_mid_load_loses_no_event() {
    let Some(nats) = NatsServer::start("kill_9_mid_load_loses_no_event") else { return };
    let rt = common::broker_runtime();
    let js = rt.block_on(jetstream(&nats.url));
    let (messages, per) = (400, 50);
    rt.block_on(publish(&js, 1, per));
    let mut s = Server::start_with(&config(&nats.url, 2000), &[]);
    let mut reader = rt.block_on(Reader::new(&js));
    // Mid-load: the publisher still publishing, events on their way out.
    let publisher = {
        let js = js.clone();
        rt.spawn(async move {
            let mut acks = Vec::new();
            for m in 1..messages {
                acks.push(
                    js.publish("raw.zeek", common::conn_envelope("nats-test", m * per, per).into()).await.unwrap(),
                );
                if m % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            for ack in acks {
                ack.await.expect("publish acknowledged");
            }
        })
    };
    rt.block_on(reader.until(1000, Duration::from_secs(30)));
    let before = reader.seen.len();
    s.restart(); // SIGKILL, then the same configuration and state directory
    rt.block_on(publisher).unwrap();
    rt.block_on(reader.until(messages * per, Duration::from_secs(40)));
    common::wait_for("the raw consumer to settle", Duration::from_secs(15), || rt.block_on(raw_consumer_idle(&js)));
    let duplicates = reader.duplicates();
    let deduped = output_view(&s)["counters"]["duplicates"].as_u64().unwrap();
    eprintln!(
        "kill -9 after {before} events: {} events, {duplicates} duplicates stored, {deduped} dropped by the \
         stream (counted by the restarted instance), in {} messages",
        reader.seen.len(),
        reader.messages
    );
    assert_eq!(reader.seen.len(), messages * per);
    // Redelivered messages and the spool's resent round carry the ids of
    // their first publish: the stream keeps one copy.
    assert_eq!(duplicates, 0, "every event stored once");
}

fn output_view(s: &Server) -> Value {
    let r = s.get_auth("/v1/outputs");
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "enriched").expect("the output").clone()
}

/// A message the source gives back (`nak`: here an `ack` output that does
/// not confirm in time, because its stream does not exist yet) comes back
/// and is enriched and queued again while its first copy still waits: once
/// the stream exists, both copies are published with the same
/// `Nats-Msg-Id`s and the stream keeps one. Then a second consumer reads
/// the whole raw stream again (another process would do the same after a
/// lost consumer): nothing new is stored.
#[test]
fn redelivered_messages_are_stored_once() {
    let Some(nats) = NatsServer::start("redelivered_messages_are_stored_once") else { return };
    let rt = common::broker_runtime();
    let js = rt.block_on(jetstream(&nats.url));
    let (messages, per) = (20, 50);
    rt.block_on(publish(&js, messages, per));
    let text = config(&nats.url, 1_000).replace("create_stream = \"ENRICHED\"\n", "").replace(
        "durability = \"spool\"",
        "durability = \"ack\"\nack_mode_timeout_ms = 300\nbackoff_max_ms = 200\ntimeout_ms = 500",
    );
    assert!(text.contains("durability = \"ack\"") && !text.contains("create_stream"), "{text}");
    let mut s = Server::start_with(&text, &[]);
    // The output's stream does not exist yet: its events wait in the `ack`
    // output's queue, and their messages wait unsettled. Restarting the
    // source (a reload that changes it) leaves them unacknowledged: the
    // server redelivers them after `ack_wait_ms` and their events are
    // queued again.
    let path = s.dir.path().join("config.toml");
    for batch in [31, 30, 29] {
        common::wait_for("messages in hand", Duration::from_secs(20), || {
            common::source_view(&s)["counters"]["messages"].as_u64().unwrap() > 0
        });
        std::fs::write(&path, text.replace("batch = 32\n", &format!("batch = {batch}\n"))).unwrap();
        // SAFETY: kill(2) with the pid of the enrichd this test spawned.
        unsafe { libc::kill(s.pid() as i32, libc::SIGHUP) };
        std::thread::sleep(Duration::from_millis(1500));
    }
    common::wait_for("messages redelivered", Duration::from_secs(30), || {
        common::source_view(&s)["counters"]["redelivered"].as_u64().unwrap() >= 3
    });
    std::fs::write(&path, &text).unwrap();
    rt.block_on(async {
        js.create_stream(stream::Config {
            name: "ENRICHED".into(),
            subjects: vec!["enriched.conn".into()],
            ..Default::default()
        })
        .await
        .unwrap()
    });
    let mut reader = rt.block_on(Reader::new(&js));
    rt.block_on(reader.until(messages * per, Duration::from_secs(30)));
    common::wait_for("the raw consumer to settle", Duration::from_secs(15), || rt.block_on(raw_consumer_idle(&js)));
    common::wait_for("the output to drain", Duration::from_secs(10), || {
        output_view(&s)["backlog"]["events"].as_u64().unwrap_or(0) == 0
    });
    rt.block_on(reader.read());
    let view = common::source_view(&s);
    let out = output_view(&s);
    eprintln!("source {view}\noutput {out}");
    assert_eq!(reader.seen.len(), messages * per);
    assert_eq!(reader.duplicates(), 0, "each event stored once");
    let queued = out["counters"]["queued"].as_u64().unwrap();
    let deduped = out["counters"]["duplicates"].as_u64().unwrap();
    assert!(queued > (messages * per) as u64, "copies were queued: {out}");
    assert_eq!(deduped, queued - (messages * per) as u64, "every extra copy dropped by the stream: {out}");
    let m = s.get("/metrics").text;
    assert!(m.contains(&format!("telemetry_output_duplicates_total{{output=\"enriched\"}} {deduped}")), "{m}");

    // The whole raw stream again, through a new consumer, after a restart
    // (a new process, a new backlog): every event is a duplicate.
    std::fs::write(&path, text.replace("durable = \"enrichd\"", "durable = \"again\"")).unwrap();
    s.restart();
    common::wait_for("the second pass", Duration::from_secs(30), || {
        let out = output_view(&s);
        out["counters"]["duplicates"].as_u64().unwrap() >= (messages * per) as u64
    });
    rt.block_on(reader.read());
    assert_eq!(reader.duplicates(), 0, "nothing stored twice: {}", output_view(&s));
    let out = output_view(&s);
    assert_eq!(out["counters"]["duplicates"], out["counters"]["sent"], "{out}");
}

/// A full backlog (the output's server is down, its memory queue at its
/// bound) makes the source give messages back and stop pulling; nothing
/// is lost, and once the output's server is up every event arrives.
#[test]
fn backpressure_pauses_the_source_and_loses_nothing() {
    let test = "backpressure_pauses_the_source_and_loses_nothing";
    let Some(raw) = NatsServer::start(test) else { return };
    let out_port = common::nats::free_port().unwrap();
    let rt = common::broker_runtime();
    let js = rt.block_on(jetstream(&raw.url));
    let (messages, per) = (40, 100);
    rt.block_on(publish(&js, messages, per));
    let text = config(&raw.url, 30_000)
        .replace(
            &format!("servers = [\"{}\"]\nsubject", raw.url),
            &format!("servers = [\"nats://127.0.0.1:{out_port}\"]\nsubject"),
        )
        .replace(
            "durability = \"spool\"",
            "durability = \"memory\"\nqueue_max_events = 1000\nbackoff_max_ms = 300\ntimeout_ms = 500",
        );
    assert!(text.contains(&out_port.to_string()), "{text}");
    let s = Server::start_with(&text, &[]);
    common::wait_for("messages given back", Duration::from_secs(20), || {
        common::source_view(&s)["counters"]["nacked"].as_u64().unwrap() > 0
    });
    let view = common::source_view(&s);
    assert!(view["counters"]["events"].as_u64().unwrap() <= 1000, "at most the bound accepted: {view}");
    assert!(!rt.block_on(raw_consumer_idle(&js)), "the rest waits in the stream");

    let out = NatsServer::start_at(test, Some(out_port)).expect("found above");
    let out_js = rt.block_on(jetstream(&out.url));
    let mut reader = rt.block_on(Reader::new(&out_js));
    rt.block_on(reader.until(messages * per, Duration::from_secs(40)));
    assert_eq!(reader.duplicates(), 0);
    common::wait_for("the raw consumer to settle", Duration::from_secs(10), || rt.block_on(raw_consumer_idle(&js)));
    let view = common::source_view(&s);
    assert_eq!(view["counters"]["acked"], messages, "{view}");
    assert_eq!(view["counters"]["termed"], 0, "{view}");
}

/// Issue 12 §4: three instances share the consumer, 200,000 events are
/// published, one instance is killed (`kill -9`) mid-load and started
/// again on its state directory (its spool holds events it had accepted):
/// every event reaches the output stream, stored once (redeliveries carry
/// their first ids), and the consumer has nothing pending at the end.
#[test]
fn three_instances_and_a_kill_9_lose_nothing() {
    let Some(nats) = NatsServer::start("three_instances_and_a_kill_9_lose_nothing") else { return };
    let rt = common::broker_runtime();
    let js = rt.block_on(jetstream(&nats.url));
    let (messages, per) = (2000, 100);
    rt.block_on(publish(&js, 1, per));
    let text = config(&nats.url, 2000);
    let mut servers: Vec<Server> = (0..3).map(|_| Server::start_with(&text, &[])).collect();
    let mut reader = rt.block_on(Reader::new(&js));
    let started = Instant::now();
    let publisher = {
        let js = js.clone();
        rt.spawn(async move {
            let mut acks = Vec::new();
            for m in 1..messages {
                acks.push(
                    js.publish("raw.zeek", common::conn_envelope("nats-test", m * per, per).into()).await.unwrap(),
                );
                if acks.len() >= 200 {
                    for ack in acks.drain(..) {
                        ack.await.expect("publish acknowledged");
                    }
                }
            }
            for ack in acks {
                ack.await.expect("publish acknowledged");
            }
        })
    };
    rt.block_on(reader.until(20_000, Duration::from_secs(60)));
    // It is working when it dies: it has taken messages.
    let before = common::source_view(&servers[1])["counters"]["messages"].as_u64().unwrap();
    assert!(before > 0, "the instance killed had work");
    servers[1].restart(); // SIGKILL, then the same configuration and state
    rt.block_on(publisher).unwrap();
    rt.block_on(reader.until(messages * per, Duration::from_secs(120)));
    common::wait_for("the raw consumer to settle", Duration::from_secs(20), || rt.block_on(raw_consumer_idle(&js)));
    rt.block_on(reader.read());
    let deduped: u64 = servers.iter().map(|s| output_view(s)["counters"]["duplicates"].as_u64().unwrap()).sum();
    let redelivered: u64 =
        servers.iter().map(|s| common::source_view(s)["counters"]["redelivered"].as_u64().unwrap()).sum();
    eprintln!(
        "3 instances, kill -9 of one after it took {before} messages: {} events in {:.1} s, {} stored twice, \
         {deduped} dropped by the stream, {redelivered} redeliveries",
        reader.seen.len(),
        started.elapsed().as_secs_f64(),
        reader.duplicates()
    );
    assert_eq!(reader.seen.len(), messages * per);
    assert_eq!(reader.duplicates(), 0, "every event stored once");
}

mod faults;
