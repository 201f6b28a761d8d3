use std::collections::HashSet;
use std::time::Duration;

use enrichd_engine::component::Factory;
use enrichd_engine::output::{EventOrigin, OutEvent, Outcome, SinkBatch};
use rdkafka::Message;
use serde_json::json;

use super::*;
use crate::kafka::test_broker::KafkaBroker;
use crate::kafka::test_client::{create_topic, header, read, reader};
use crate::outputs::test_server::{build, error_fields};

#[test]
fn kafka_output_options_are_checked() {
    assert_eq!(error_fields(&KafkaOutput, json!({})), ["topic"]);
    assert_eq!(
        error_fields(
            &KafkaOutput,
            json!({"topic": "a/b", "brokers": [], "timeout_ms": 0, "max_message_bytes": 10,
                   "client": {"acks": "1", "session.timeout.ms": "1000"}})
        ),
        ["brokers", "client", "client", "timeout_ms", "topic", "max_message_bytes"]
    );
    assert!(error_fields(&KafkaOutput, json!({"topic": "enriched", "client": {"linger.ms": "5"}})).is_empty());
    assert_eq!(error_fields(&KafkaOutput, json!({"topic": "x", "bogus": 1})), ["bogus"]);
    assert_eq!(Factory::secret_fields(&KafkaOutput), ["sasl_password"]);
}

#[test]
fn kafka_producer_guarantees_win_over_the_passthrough() {
    let mut connection = KafkaConnection::default();
    connection.client.insert("linger.ms".into(), "5".into());
    let config = producer_config(&connection, "out", 4096);
    assert_eq!(config.get("enable.idempotence"), Some("true"));
    assert_eq!(config.get("acks"), Some("all"));
    assert_eq!(config.get("linger.ms"), Some("5"));
    assert_eq!(config.get("message.max.bytes"), Some("5120"));
}

fn events(jsons: &[String], key: Option<&'static str>) -> Vec<OutEvent<'static>> {
    jsons
        .iter()
        .enumerate()
        .map(|(i, j)| OutEvent {
            json: j.clone().leak().as_bytes(),
            id: 100 + i as u64,
            origin: key.map(|key| EventOrigin { key, index: i as u32 }),
        })
        .collect()
}

#[tokio::test]
async fn kafka_output_without_a_broker_retries_every_event() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let options = json!({"topic": "x", "brokers": [format!("127.0.0.1:{port}")], "timeout_ms": 500});
    let sink = build(&KafkaOutput, options, dir.path());
    let jsons = vec!["{}".to_string(); 3];
    let started = std::time::Instant::now();
    let report = sink.send(SinkBatch { events: &events(&jsons, None), accepted_unix_ms: 0, id_scope: 1 }).await;
    assert!(report.outcomes.iter().all(|o| matches!(o, Outcome::Retry(_))), "{:?}", report.outcomes);
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by timeout_ms: {:?}", started.elapsed());
    sink.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_batches_are_split_produced_and_keyed_stably() {
    let Some(broker) = KafkaBroker::start("kafka_batches_are_split_produced_and_keyed_stably") else { return };
    create_topic(&broker.address, "out", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let options = json!({"topic": "out", "brokers": [broker.address], "max_message_bytes": 2048});
    let sink = build(&KafkaOutput, options, dir.path());
    // 40 events of ~200 bytes from one input, one of 5000 (larger than any
    // message).
    let mut jsons: Vec<String> = (0..40).map(|i| json!({"n": i, "pad": "p".repeat(180)}).to_string()).collect();
    jsons.insert(7, json!({"big": "b".repeat(5000)}).to_string());
    let ev = events(&jsons, Some("raw:0:9"));
    let batch = SinkBatch { events: &ev, accepted_unix_ms: 0, id_scope: 42 };
    let report = sink.send(batch).await;
    assert!(
        matches!(&report.outcomes[7], Outcome::Reject(r) if r.contains("larger than a message")),
        "{:?}",
        report.outcomes[7]
    );
    assert_eq!(report.outcomes.iter().filter(|o| **o == Outcome::Delivered).count(), 40);
    // A retry of the same batch produces the same keys again (Kafka keeps
    // both copies; a reader drops the repeat by key).
    let again = sink.send(batch).await;
    assert_eq!(again.outcomes.iter().filter(|o| **o == Outcome::Delivered).count(), 40);
    sink.close().await;

    let c = reader(&broker.address, "verify", "out");
    let messages = read(&c, usize::MAX, Duration::from_secs(8)).await;
    let mut ids = HashSet::new();
    let mut lines = 0;
    for m in &messages {
        let body = m.payload().unwrap();
        assert!(body.len() <= 2048, "{}", body.len());
        let id = header(m, "Enrichd-Msg-Id").expect("an id header");
        assert_eq!(m.key(), Some(id.as_bytes()), "the id is the key");
        assert!(id.starts_with("test:raw:0:9:"), "{id}");
        assert_eq!(header(m, "Content-Type").as_deref(), Some("application/x-ndjson"));
        if ids.insert(id) {
            lines += body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
        }
    }
    assert!(ids.len() >= 40 * 200 / 2048, "split into several messages: {}", ids.len());
    assert_eq!(messages.len(), 2 * ids.len(), "the retry repeated every id: {} messages", messages.len());
    assert_eq!(lines, 40, "each event once after dropping repeated ids");
}

/// A fatal producer error (InitProducerId refused: the IdempotentWrite ACL
/// missing) ends the producer; once the cause is gone the output delivers
/// again with a new one, instead of failing every round until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_is_left_behind() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("enriched", 1, 1).unwrap();
    cluster.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED; 3],
    );
    let dir = tempfile::tempdir().unwrap();
    let options = json!({"topic": "enriched", "brokers": [cluster.bootstrap_servers()], "timeout_ms": 3000});
    let sink = build(&KafkaOutput, options, dir.path());
    let jsons = [json!({"n": 1}).to_string()];
    let events: Vec<OutEvent<'_>> =
        jsons.iter().map(|j| OutEvent { json: j.as_bytes(), id: 1, origin: None }).collect();
    let batch = SinkBatch { events: &events, accepted_unix_ms: 0, id_scope: 1 };
    let first = sink.send(batch).await;
    assert!(matches!(&first.outcomes[0], Outcome::Retry(why) if why.contains("fatal")), "{:?}", first.outcomes);
    cluster.clear_request_errors(RDKafkaApiKey::InitProducerId);
    let mut delivered = false;
    for _ in 0..5 {
        if sink.send(batch).await.outcomes[0] == Outcome::Delivered {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "a new producer delivers once the cause is gone");
}

/// librdkafka's client errors (here: no broker at the address) reach the
/// output's error report, which the runtime shows as its last error; they
/// were only logged.
#[tokio::test]
async fn client_errors_reach_the_error_report() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut ctx = crate::outputs::test_server::context(dir.path());
    ctx.errors = {
        let seen = seen.clone();
        ErrorReport::new(move |e| seen.lock().unwrap().push(e))
    };
    let options = json!({"topic": "x", "brokers": [format!("127.0.0.1:{port}")], "timeout_ms": 500});
    let sink = Factory::build(&KafkaOutput, &options.as_object().unwrap().clone(), &ctx).unwrap();
    let jsons = vec!["{}".to_string()];
    let report = sink.send(SinkBatch { events: &events(&jsons, None), accepted_unix_ms: 0, id_scope: 1 }).await;
    assert!(matches!(report.outcomes[0], Outcome::Retry(_)), "{:?}", report.outcomes);
    sink.close().await;
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().any(|e| e.starts_with("kafka client:")), "{seen:?}");
}
