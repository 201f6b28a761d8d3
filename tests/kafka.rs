//! Kafka end to end: a real `tansu` broker (see `tests/common/kafka.rs`),
//! the real `enrichd` binary with a `kafka` source on a raw topic of three
//! partitions and a `kafka` output to an enriched topic.
//!
//! What is checked: every event produced arrives enriched in the output
//! topic; enrichd stopped mid-way (after the first half, the second half
//! produced while it is down) and started again resumes from the
//! group's committed offsets (it does not read the topic again from the
//! start) and nothing is lost (copies are allowed, counted by the
//! `Enrichd-Msg-Id` the output repeats); a poison message is dead-lettered
//! once and committed past, so a restart does not see it again.
//!
//! Not tested, and why: consumer-group failover after `kill -9` of
//! enrichd. tansu 0.6.0 keeps a killed member's partitions assigned to it
//! (they are never handed to the rest of the group, nor to the member's
//! replacement), so the restarts here are graceful (SIGTERM: the source
//! commits and leaves the group). Against Kafka itself the group hands the
//! partitions over after `session.timeout.ms` and the messages after the
//! last commit are consumed again: the at-least-once path the SIGTERM
//! restart exercises, minus the final commit. Transactions are not used
//! (tansu does not implement them either).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::kafka::KafkaBroker;
use common::Server;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value};

/// The source, the output and the test chain, on `brokers`.
fn config(brokers: &str) -> String {
    format!(
        r#"
[auth]
api_keys = ["{key}"]

[reload]
watch = false

[[source]]
type = "kafka"
brokers = ["{brokers}"]
topics = ["raw"]
group_id = "enrichd"
commit_interval_ms = 200

[[output]]
type = "kafka"
name = "enriched"
brokers = ["{brokers}"]
topic = "enriched"
durability = "spool"
batch_max = 2000
flush_interval_ms = 20
{chain}"#,
        key = common::KEY,
        chain = common::test_chain(),
    )
}

async fn create_topics(brokers: &str) {
    let admin: AdminClient<_> = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let topics =
        [NewTopic::new("raw", 3, TopicReplication::Fixed(1)), NewTopic::new("enriched", 1, TopicReplication::Fixed(1))];
    for r in admin.create_topics(&topics, &AdminOptions::new()).await.unwrap() {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new().set("bootstrap.servers", brokers).set("enable.idempotence", "true").create().unwrap()
}

/// Produces `messages` envelopes of `per` events (ids from `from * per`),
/// each acknowledged.
async fn produce(p: &FutureProducer, from: usize, messages: usize, per: usize) {
    let bodies: Vec<(String, Vec<u8>)> =
        (from..from + messages).map(|m| (m.to_string(), common::conn_envelope("kafka-test", m * per, per))).collect();
    // Keyed, so the messages spread over the three partitions.
    let sends = bodies.iter().map(|(key, body)| {
        let record = FutureRecord::to("raw").key(key).payload(body);
        p.send(record, Duration::from_secs(10))
    });
    for r in futures_util::future::join_all(sends).await {
        r.map_err(|(e, _)| e).expect("produced");
    }
}

/// Reads everything new from the output topic (a consumer group of the
/// test's own): uid -> times seen, every event checked to be enriched,
/// and the message ids seen more than once.
struct Reader {
    consumer: StreamConsumer,
    seen: HashMap<String, u32>,
    ids: HashSet<String>,
    repeated_ids: u32,
}

impl Reader {
    fn new(brokers: &str) -> Reader {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "verify")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["enriched"]).unwrap();
        Reader { consumer, seen: HashMap::new(), ids: HashSet::new(), repeated_ids: 0 }
    }

    /// Reads for up to `window`.
    async fn read(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(message) = tokio::time::timeout(left, self.consumer.recv()).await else { return };
            let message = message.expect("reading the output topic");
            let id = message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "Enrichd-Msg-Id").and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .expect("every message has an Enrichd-Msg-Id");
            assert_eq!(message.key(), Some(id.as_bytes()), "the id is the key");
            if !self.ids.insert(id) {
                self.repeated_ids += 1;
            }
            for line in message.payload().unwrap_or_default().split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let event: Value = serde_json::from_slice(line).expect("an NDJSON event");
                assert_eq!(event["geo"]["country"], "GB", "enriched: {event}");
                let uid = event["uid"].as_str().expect("uid").to_string();
                *self.seen.entry(uid).or_default() += 1;
            }
        }
    }

    /// Reads until `n` distinct events were seen.
    async fn until(&mut self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.seen.len() < n {
            assert!(Instant::now() < deadline, "{} of {n} events in the output topic", self.seen.len());
            self.read(Duration::from_millis(300)).await;
        }
    }

    fn duplicates(&self) -> u32 {
        self.seen.values().map(|n| n - 1).sum()
    }
}

fn counter(s: &Server, name: &str) -> u64 {
    common::source_view(s)["counters"][name].as_u64().unwrap()
}

#[test]
fn events_flow_and_a_restart_resumes_from_the_committed_offsets() {
    let test = "events_flow_and_a_restart_resumes_from_the_committed_offsets";
    let Some(broker) = KafkaBroker::start(test) else { return };
    let brokers = broker.address.clone();
    let rt = common::broker_runtime();
    // rdkafka's clients start timers when created and sending: in the
    // runtime's context.
    let _entered = rt.enter();
    rt.block_on(create_topics(&brokers));
    let p = producer(&brokers);
    let (messages, per) = (120, 50);
    rt.block_on(produce(&p, 0, messages / 2, per));
    let mut s = Server::start_with(&config(&brokers), &[]);
    let mut reader = Reader::new(&brokers);
    rt.block_on(reader.until(1000, Duration::from_secs(60)));

    // Mid-way: stopped (SIGTERM: see the module docs for why not kill -9),
    // the second half produced meanwhile, started again.
    let acked_before = counter(&s, "acked");
    assert!(acked_before > 0, "the first instance had work");
    let status = s.terminate();
    assert!(status.success(), "graceful stop: {status:?}");
    rt.block_on(produce(&p, messages / 2, messages / 2, per));
    s.start_again();
    rt.block_on(reader.until(messages * per, Duration::from_secs(90)));
    common::wait_for("the source to settle", Duration::from_secs(20), || {
        let view = common::source_view(&s);
        view["counters"]["acked"].as_u64().unwrap() + acked_before >= messages as u64
            || view["counters"]["messages"].as_u64().unwrap() + acked_before >= messages as u64
    });
    rt.block_on(reader.read(Duration::from_secs(1)));

    let view = common::source_view(&s);
    let taken_after = view["counters"]["messages"].as_u64().unwrap();
    eprintln!(
        "kafka restart after {acked_before} messages acked: {} events, {} stored twice, {} repeated message ids, \
         the restarted instance took {taken_after} of {messages} messages",
        reader.seen.len(),
        reader.duplicates(),
        reader.repeated_ids
    );
    assert_eq!(reader.seen.len(), messages * per, "nothing lost");
    assert!(
        taken_after <= messages as u64 - acked_before,
        "resumed from the committed offsets, not from the start: {view}"
    );
    // A graceful stop commits what it settled: nothing is read twice.
    assert_eq!(reader.duplicates(), 0, "{view}");
    assert_eq!(view["state"], "running", "{view}");
    assert_eq!(view["counters"]["termed"], 0, "{view}");
    let m = s.get("/metrics").text;
    assert!(m.contains("telemetry_source_running{source=\"kafka\"} 1"), "{m}");
    assert!(m.contains(&format!("telemetry_source_acked_total{{source=\"kafka\"}} {taken_after}")), "{m}");
}

#[test]
fn a_poison_message_is_dead_lettered_once_and_committed_past() {
    let Some(broker) = KafkaBroker::start("a_poison_message_is_dead_lettered_once_and_committed_past") else {
        return;
    };
    let brokers = broker.address.clone();
    let rt = common::broker_runtime();
    // rdkafka's clients start timers when created and sending: in the
    // runtime's context.
    let _entered = rt.enter();
    rt.block_on(create_topics(&brokers));
    let p = producer(&brokers);
    // One partition's order is what the offsets below rely on.
    let send = |body: &[u8], headers: OwnedHeaders| {
        let record = FutureRecord::<(), _>::to("raw").partition(1).payload(body).headers(headers);
        rt.block_on(p.send(record, Duration::from_secs(10))).map_err(|(e, _)| e).expect("produced");
    };
    send(&common::conn_envelope("kafka-test", 0, 10), OwnedHeaders::new());
    send(b"this is not JSON", OwnedHeaders::new());
    let ndjson = "{\"ts\":1.0,\"uid\":\"N1\",\"id.orig_h\":\"10.0.0.1\",\"id.resp_h\":\"81.2.69.160\"}\n";
    send(ndjson.as_bytes(), OwnedHeaders::new().insert(Header { key: "Enrichd-Format", value: Some("zeek.conn.v1") }));

    let mut s = Server::start_with(&config(&brokers), &[]);
    let mut reader = Reader::new(&brokers);
    rt.block_on(reader.until(11, Duration::from_secs(60)));
    common::wait_for("the poison message to be dead-lettered", Duration::from_secs(10), || counter(&s, "termed") == 1);
    std::thread::sleep(Duration::from_millis(1000));
    let view = common::source_view(&s);
    assert_eq!(view["counters"]["messages"], 3, "{view}");
    assert_eq!(view["counters"]["acked"], 2, "{view}");
    assert_eq!(view["counters"]["termed"], 1, "{view}");
    assert_eq!(view["counters"]["dead_lettered"], 1, "{view}");
    let dead = s.get_auth("/v1/sources/kafka/deadletter").json();
    assert_eq!(dead["total"], 1, "{dead}");
    let record = &dead["records"][0];
    assert_eq!(record["event"]["origin"], json!({"topic": "raw", "partition": 1, "offset": 1}), "{record}");
    assert_eq!(record["event"]["body"], "this is not JSON", "{record}");
    assert!(record["error"].as_str().unwrap().starts_with("invalid_json"), "{record}");
    assert_eq!(reader.seen.get("N1"), Some(&1), "the NDJSON message with a format header");

    // Restarted: the group's offsets are past all three, the poison one
    // included; nothing is consumed again.
    assert!(s.terminate().success());
    s.start_again();
    common::wait_for("the source to run again", Duration::from_secs(20), || {
        common::source_view(&s)["state"] == "running"
    });
    std::thread::sleep(Duration::from_secs(5));
    let view = common::source_view(&s);
    assert_eq!(view["counters"]["messages"], 0, "committed past: {view}");
    rt.block_on(reader.read(Duration::from_millis(500)));
    assert_eq!(reader.duplicates(), 0);
}
