use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use enrichd_engine::component::Factory;
use enrichd_engine::output::BoxFuture;
use enrichd_engine::source::{Accepted, DeadMessage, Ingest, Payload, PayloadShape, Refusal, SourceStats};
use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;
use serde_json::{json, Map, Value};

use super::statistics::GroupStatistics;
use super::*;
use crate::kafka::test_broker::KafkaBroker;
use crate::kafka::test_client::{create_topic, produce};

fn errors(options: Value) -> Vec<String> {
    let options: Map<String, Value> = serde_json::from_value(options).unwrap();
    KafkaSource.check(&options).into_iter().map(|e| e.field).collect()
}

#[test]
fn kafka_source_registered_with_a_documented_closed_schema() {
    let mut registry = enrichd_engine::Registry::new();
    crate::register_all(&mut registry);
    assert!(registry.sources().any(|f| f.kind() == "kafka"));
    let schema = serde_json::to_value(KafkaSource.options_schema()).unwrap();
    assert_eq!(schema["additionalProperties"], Value::Bool(false), "{schema:#}");
    let properties = schema["properties"].as_object().unwrap();
    for key in ["brokers", "client", "sasl_password", "topics", "group_id", "start_at", "commit_interval_ms", "format"]
    {
        assert!(properties.contains_key(key), "{key}: {schema:#}");
    }
    for (name, property) in properties {
        assert!(property["description"].as_str().is_some_and(|d| d.len() > 10), "{name} is undocumented");
    }
    assert_eq!(Factory::secret_fields(&KafkaSource), ["sasl_password"]);
}

#[test]
fn kafka_source_options_are_checked() {
    assert_eq!(errors(json!({})), ["topics"]);
    assert!(errors(json!({"topics": ["raw"], "brokers": ["k1:9092", "k2:9092"]})).is_empty());
    assert_eq!(
        errors(json!({
            "topics": ["a b"], "group_id": "", "brokers": ["k1"], "commit_interval_ms": 700000,
            "format": "csv", "start_at": "middle", "client": {"enable.auto.commit": "true"},
        })),
        ["start_at", "brokers", "client", "topics", "group_id", "commit_interval_ms", "format"]
    );
}

#[test]
fn a_refused_broker_with_credentials_is_not_echoed() {
    let options = json!({"topics": ["raw"], "brokers": ["alice:s3cr3t-pw@k1:9092"]});
    let errors = KafkaSource.check(options.as_object().unwrap());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(!errors[0].message.contains("s3cr3t-pw") && errors[0].message.contains("k1:9092"), "{errors:?}");
}

#[test]
fn kafka_bodies_are_read_like_the_nats_sources() {
    let shape_of = |headers: &[(&str, &str)], format: Option<&str>| {
        let header =
            |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string());
        crate::sources::payload(b"{}", header, format).map(|p| p.shape)
    };
    assert_eq!(shape_of(&[], None), Ok(PayloadShape::Envelope));
    assert_eq!(
        shape_of(&[("enrichd-format", "zeek.conn.v1")], None),
        Ok(PayloadShape::Ndjson { format: "zeek.conn.v1".into() })
    );
    assert!(shape_of(&[("Content-Type", "application/x-ndjson")], None).is_err());
}

/// An ingest that answers by body: `bad` refused as bad input, `full`
/// refused for backpressure the first `full_refusals` times, anything else
/// accepted (its origin recorded).
#[derive(Default)]
struct Scripted {
    stats: SourceStats,
    dead: Mutex<Vec<(Value, String)>>,
    full_refusals: Mutex<u32>,
    accepted: Mutex<Vec<(String, String)>>,
}

impl Ingest for Scripted {
    fn submit(&self, payload: Payload) -> BoxFuture<'_, Result<Accepted, Refusal>> {
        Box::pin(async move {
            let body = String::from_utf8(payload.body).unwrap();
            if body == "bad" {
                return Err(Refusal::BadInput { code: "invalid_json".into(), message: "not JSON".into() });
            }
            if body == "full" {
                let mut n = self.full_refusals.lock().unwrap();
                if *n > 0 {
                    *n -= 1;
                    return Err(Refusal::Backpressure {
                        message: "backlog full".into(),
                        retry_after: Duration::from_millis(200),
                    });
                }
            }
            self.accepted.lock().unwrap().push((body, payload.origin.unwrap_or_default()));
            Ok(Accepted { events: 1 })
        })
    }
    fn dead_letter(&self, m: DeadMessage<'_>) {
        self.dead.lock().unwrap().push((m.origin.clone(), m.reason.to_string()));
    }
    fn stats(&self) -> &SourceStats {
        &self.stats
    }
}

/// Runs the source on `options` until the returned sender is used.
fn start(options: Value, ingest: Arc<Scripted>) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let options: Map<String, Value> = serde_json::from_value(options).unwrap();
    assert!(KafkaSource.check(&options).is_empty(), "{:?}", KafkaSource.check(&options));
    let ctx = SourceContext { name: "kafka".into(), base_dir: std::env::temp_dir() };
    let runner = Factory::build(&KafkaSource, &options, &ctx).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(
        ingest,
        Box::pin(async move {
            let _ = stop_rx.await;
        }),
    ));
    (stop_tx, task)
}

async fn wait_accepted(ingest: &Scripted, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ingest.accepted.lock().unwrap().len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "accepted: {:?}, {} messages, last error {:?}",
            ingest.accepted.lock().unwrap(),
            ingest.stats.messages.load(Relaxed),
            ingest.stats.last_error()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The group's committed offset of partition 0 of `topic`, asked by a
/// client that does not join the group (a member that joins and goes
/// away can leave tansu's group rebalancing for good).
fn committed(brokers: &str, group: &str, topic: &str) -> i64 {
    let c: rdkafka::consumer::BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let offsets = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    offsets.find_partition(topic, 0).unwrap().offset().to_raw().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_messages_are_committed_dead_lettered_or_held_as_the_core_answers() {
    let test = "kafka_messages_are_committed_dead_lettered_or_held_as_the_core_answers";
    let Some(broker) = KafkaBroker::start(test) else { return };
    let brokers = broker.address.clone();
    create_topic(&brokers, "raw", 1).await;
    for body in ["good1", "bad", "full", "good2"] {
        produce(&brokers, "raw", body.as_bytes(), &[]).await;
    }
    let options = json!({"brokers": [brokers], "topics": ["raw"], "group_id": "g", "commit_interval_ms": 0});
    let ingest = Arc::new(Scripted { full_refusals: Mutex::new(2), ..Default::default() });
    let (stop, task) = start(options.clone(), ingest.clone());
    wait_accepted(&ingest, 3).await;
    let s = &ingest.stats;
    assert_eq!(s.messages.load(Relaxed), 4, "the refused message is held, not fetched again");
    assert_eq!(s.acked.load(Relaxed), 3);
    assert_eq!(s.termed.load(Relaxed), 1);
    assert_eq!(s.nacked.load(Relaxed), 2, "two refusals, then accepted");
    let accepted = ingest.accepted.lock().unwrap().clone();
    let bodies: Vec<&str> = accepted.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(bodies, ["good1", "full", "good2"], "in order");
    // The origin key: the cluster's identity, then topic, partition and
    // offset (two clusters' `raw:0:0` are not one message).
    let (cluster, key) = accepted[0].1.split_once('/').expect("a cluster prefix");
    assert!(!cluster.is_empty());
    assert_eq!(key, "raw:0:0", "origin key");
    assert_eq!(accepted[2].1, format!("{cluster}/raw:0:3"));
    let dead = ingest.dead.lock().unwrap().clone();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, json!({"topic": "raw", "partition": 0, "offset": 1}));
    assert!(dead[0].1.starts_with("invalid_json"), "{dead:?}");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task).await.expect("stops promptly").unwrap();
    assert_eq!(committed(&brokers, "g", "raw"), 4, "committed past every settled message");

    // Started again in the same group: it resumes after the commit, and
    // takes only what is new.
    produce(&brokers, "raw", b"good3", &[("Enrichd-Format", "zeek.conn.v1")]).await;
    let again = Arc::new(Scripted::default());
    let (stop, task) = start(options, again.clone());
    wait_accepted(&again, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The same prefix after a restart: origins stay stable.
    assert_eq!(again.accepted.lock().unwrap().clone(), [("good3".to_string(), format!("{cluster}/raw:0:4"))]);
    assert_eq!(again.stats.messages.load(Relaxed), 1);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task).await.expect("stops promptly").unwrap();
    assert_eq!(committed(&brokers, "g", "raw"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_stops_while_refused_without_committing_the_held_message() {
    let test = "kafka_source_stops_while_refused_without_committing_the_held_message";
    let Some(broker) = KafkaBroker::start(test) else { return };
    let brokers = broker.address.clone();
    create_topic(&brokers, "raw", 1).await;
    for body in ["good1", "full"] {
        produce(&brokers, "raw", body.as_bytes(), &[]).await;
    }
    let options = json!({"brokers": [brokers], "topics": ["raw"], "group_id": "g", "commit_interval_ms": 60000});
    let ingest = Arc::new(Scripted { full_refusals: Mutex::new(u32::MAX), ..Default::default() });
    let (stop, task) = start(options, ingest.clone());
    wait_accepted(&ingest, 1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ingest.stats.nacked.load(Relaxed) < 2 {
        assert!(std::time::Instant::now() < deadline, "refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task).await.expect("stops promptly").unwrap();
    // The final commit covers the settled message (the interval had not
    // passed), not the one still refused: it is redelivered.
    assert_eq!(committed(&brokers, "g", "raw"), 1);
}

/// The backlog from librdkafka's statistics (the shape of its
/// STATISTICS.md, trimmed): the lag of the partitions this member holds,
/// not of the internal partition -1 nor of partitions it does not hold.
#[test]
fn the_backlog_is_the_lag_of_the_assigned_partitions() {
    let stats = |state: &str, assigned: i64, lags: &[(i32, i64)]| {
        let partitions: Map<String, Value> = lags
            .iter()
            .map(|(p, lag)| {
                let state = if *p == 9 { "none" } else { "active" }; // 9: revoked, its last lag kept
                (
                    p.to_string(),
                    json!({"partition": p, "consumer_lag": lag, "consumer_lag_stored": -1, "fetch_state": state}),
                )
            })
            .collect();
        let doc = json!({
            "name": "rdkafka#consumer-1", "type": "consumer",
            "topics": {"raw": {"topic": "raw", "partitions": partitions}},
            "cgrp": {"state": state, "join_state": "steady", "assignment_size": assigned},
        });
        serde_json::from_value::<GroupStatistics>(doc).unwrap().backlog()
    };
    assert_eq!(stats("up", 2, &[(0, 7), (1, 5), (2, -1), (-1, 40), (9, 100)]), Some(12));
    assert_eq!(stats("up", 1, &[(0, -1), (-1, 3)]), None, "assigned, nothing known yet");
    assert_eq!(stats("up", 0, &[(0, -1)]), Some(0), "no partition here: nothing waits for it");
    assert_eq!(stats("wait-coord", 0, &[]), None, "the group has not answered");
    // Nothing committed yet: the lag behind the stored offset stands in.
    let first = json!({"topics": {"raw": {"partitions": {"0": {"partition": 0, "consumer_lag": -1,
        "consumer_lag_stored": 6, "fetch_state": "active"}}}}, "cgrp": {"state": "up", "assignment_size": 1}});
    assert_eq!(serde_json::from_value::<GroupStatistics>(first).unwrap().backlog(), Some(6));
    let bare = serde_json::from_value::<GroupStatistics>(json!({"name": "c", "type": "consumer"})).unwrap();
    assert_eq!(bare.backlog(), None);
}

/// The backlog a running member reports: the messages behind its group's
/// commit while one is held (refused), none once everything is accepted.
/// The number during the hold also shows the consumer is polled while it
/// holds a message (librdkafka hands statistics over only when polled,
/// and counts a member that stops polling as failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_reports_its_backlog() {
    let test = "kafka_source_reports_its_backlog";
    let Some(broker) = KafkaBroker::start(test) else { return };
    let brokers = broker.address.clone();
    create_topic(&brokers, "raw", 1).await;
    for body in ["good1", "full", "good2", "good3", "good4"] {
        produce(&brokers, "raw", body.as_bytes(), &[]).await;
    }
    let options = json!({"brokers": [brokers], "topics": ["raw"], "group_id": "g", "commit_interval_ms": 0});
    let ingest = Arc::new(Scripted { full_refusals: Mutex::new(u32::MAX), ..Default::default() });
    assert_eq!(ingest.stats.backlog(), None, "unknown before the group answers");
    let (stop, task) = start(options, ingest.clone());
    wait_accepted(&ingest, 1).await;
    let backlog_becomes = |want: u64| {
        let ingest = ingest.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while ingest.stats.backlog() != Some(want) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "backlog {:?}, not {want}; last error {:?}",
                    ingest.stats.backlog(),
                    ingest.stats.last_error()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // `good1` committed; `full` held: four messages wait.
    backlog_becomes(4).await;
    assert_eq!(ingest.stats.messages.load(Relaxed), 2, "nothing is taken past the held message");
    *ingest.full_refusals.lock().unwrap() = 0;
    wait_accepted(&ingest, 5).await;
    let bodies: Vec<String> = ingest.accepted.lock().unwrap().iter().map(|(b, _)| b.clone()).collect();
    assert_eq!(bodies, ["good1", "full", "good2", "good3", "good4"], "in order, each once");
    backlog_becomes(0).await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task).await.expect("stops promptly").unwrap();
}

/// A message whose offset cannot be stored (its partition was taken away
/// while it was processed, as a rebalance does) is not acknowledged: not
/// counted as `acked` (accepted) or `termed` (bad input, dead-lettered
/// all the same) but as given back (`nacked`), the error in `last_error`,
/// and nothing is committed past it, so the partition's next owner reads
/// it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_offset_cannot_be_stored_is_not_counted_as_acknowledged() {
    let test = "a_message_whose_offset_cannot_be_stored_is_not_counted_as_acknowledged";
    let Some(broker) = KafkaBroker::start(test) else { return };
    let brokers = broker.address.clone();
    create_topic(&brokers, "raw", 1).await;
    for body in ["good1", "bad"] {
        produce(&brokers, "raw", body.as_bytes(), &[]).await;
    }
    let options = json!({"brokers": [brokers], "topics": ["raw"], "group_id": "g", "commit_interval_ms": 0});
    let options: KafkaSourceOptions = serde_json::from_value(options).unwrap();
    let runner = KafkaRunner { options, name: "kafka".into() };
    let scripted = Arc::new(Scripted::default());
    let ingest: Arc<dyn Ingest> = scripted.clone();
    let consumer = Arc::new(runner.consumer(&ingest).unwrap());
    let mut messages = Vec::new();
    while messages.len() < 2 {
        let received = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await;
        messages.push(received.expect("a message within 30 s").expect("a message"));
    }
    // What a rebalance that revokes the partition does to this member.
    consumer.unassign().unwrap();
    let (_stopping, mut stopped) = watch::channel(false);
    let mut early = VecDeque::new();
    for message in &messages {
        let settled = runner.process(&consumer, "c", message, &ingest, &mut stopped, &mut early).await;
        assert!(matches!(settled, Settled::GivenBack));
    }
    let s = &scripted.stats;
    assert_eq!(scripted.accepted.lock().unwrap().len(), 1, "the core accepted good1");
    assert_eq!(scripted.dead.lock().unwrap().len(), 1, "bad is dead-lettered before its offset is stored");
    assert_eq!(s.acked.load(Relaxed), 0, "not acknowledged");
    assert_eq!(s.termed.load(Relaxed), 0, "not settled for good");
    assert_eq!(s.nacked.load(Relaxed), 2, "given back");
    let error = s.last_error().unwrap_or_default();
    assert!(error.contains("offset 1 of raw:0 not stored") && error.contains("read again"), "{error}");
    commit(&*consumer, CommitMode::Sync, "kafka", s);
    drop(messages);
    tokio::task::spawn_blocking(move || drop(consumer)).await.unwrap();
    assert_eq!(committed(&brokers, "g", "raw"), -1001, "nothing committed past them (-1001: none)");
}

/// Errors from the consumer's queue are one partition's or topic's: each
/// is reported without a pause (the pause, growing to 1 s per error, held
/// every healthy partition's messages queued behind it); only errors back
/// to back with nothing else between them pause, so such a queue does not
/// spin.
#[test]
fn a_partition_error_does_not_pause_the_other_partitions() {
    let mut errors = ReceiveErrors::default();
    for _ in 0..1000 {
        assert_eq!(errors.error(), None, "an error between messages costs no pause");
        errors.quiet();
    }
    for _ in 1..ERRORS_BEFORE_PAUSE {
        assert_eq!(errors.error(), None);
    }
    assert_eq!(errors.error(), Some(ERROR_PAUSE), "nothing but errors, back to back");
    assert_eq!(errors.error(), Some(ERROR_PAUSE));
    errors.quiet();
    assert_eq!(errors.error(), None);
}

/// One broker out of reach (its partitions' leaders gone) is reported,
/// but the source stays connected: the other brokers' partitions are
/// read. Losing every broker, or being refused by them, disconnects it.
#[test]
fn one_broker_down_does_not_disconnect_the_source() {
    let scripted = Arc::new(Scripted::default());
    let ingest: Arc<dyn Ingest> = scripted.clone();
    let context = GroupContext::new("kafka", &ingest);
    scripted.stats.set_connected(true);
    let transport = KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
    rdkafka::ClientContext::error(&context, transport, "127.0.0.1:9093/2: Connection refused");
    assert!(scripted.stats.connected(), "the other brokers still answer");
    assert!(scripted.stats.last_error().unwrap().contains("9093/2"), "reported all the same");
    let down = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
    rdkafka::ClientContext::error(&context, down, "3/3 brokers are down");
    assert!(!scripted.stats.connected());
}

/// A subscribed topic that does not exist (one topic's trouble, reported
/// once by librdkafka through the consumer's queue) is shown in
/// `last_error` but does not mark the source disconnected, and the other
/// topic's messages are consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_reported_without_disconnecting_the_source() {
    let test = "a_missing_topic_is_reported_without_disconnecting_the_source";
    let Some(broker) = KafkaBroker::start(test) else { return };
    let brokers = broker.address.clone();
    create_topic(&brokers, "raw", 1).await;
    let options = json!({"brokers": [brokers], "topics": ["raw", "missing"], "group_id": "g", "commit_interval_ms": 0});
    let ingest = Arc::new(Scripted::default());
    let (stop, task) = start(options, ingest.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ingest.stats.last_error().is_some_and(|e| e.contains("missing")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no error for the missing topic: {:?}",
            ingest.stats.last_error()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ingest.stats.connected(), "the brokers answer: {:?}", ingest.stats.last_error());
    produce(&brokers, "raw", b"good1", &[]).await;
    wait_accepted(&ingest, 1).await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task).await.expect("stops promptly").unwrap();
}
