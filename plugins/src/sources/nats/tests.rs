use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use enrichd_engine::component::Factory;
use enrichd_engine::output::BoxFuture;
use enrichd_engine::source::{Accepted, DeadMessage, Ingest, Payload, PayloadShape, Refusal, SourceStats};
use serde_json::{json, Map, Value};

use super::*;
use crate::nats::test_server::NatsServer;

fn errors(options: Value) -> Vec<String> {
    let options: Map<String, Value> = serde_json::from_value(options).unwrap();
    NatsSource.check(&options).into_iter().map(|e| e.field).collect()
}

#[test]
fn registered_with_a_documented_closed_schema() {
    let mut registry = enrichd_engine::Registry::new();
    crate::register_all(&mut registry);
    let kinds: Vec<&str> = registry.sources().map(|f| f.kind()).collect();
    assert_eq!(kinds, ["nats", "kafka"]);
    let schema = serde_json::to_value(NatsSource.options_schema()).unwrap();
    assert_eq!(schema["additionalProperties"], Value::Bool(false), "{schema:#}");
    let properties = schema["properties"].as_object().unwrap();
    for key in ["servers", "password", "stream", "durable", "max_ack_pending", "ack_wait_ms", "max_deliver", "batch"] {
        assert!(properties.contains_key(key), "{key}: {schema:#}");
    }
    for (name, property) in properties {
        assert!(property["description"].as_str().is_some_and(|d| d.len() > 10), "{name} is undocumented");
    }
    assert_eq!(Factory::secret_fields(&NatsSource), ["password", "token"]);
}

#[test]
fn options_are_checked() {
    assert_eq!(errors(json!({})), ["stream", "subjects"]);
    assert!(errors(json!({"stream": "RAW", "subjects": ["raw.>"]})).is_empty());
    assert!(errors(json!({"stream": "RAW", "create": false})).is_empty());
    assert_eq!(
        errors(
            json!({"stream": "R.A", "filter_subject": "raw.>", "max_deliver": 0, "batch": 0, "format": "csv", "ack_wait_ms": 0})
        ),
        ["stream", "ack_wait_ms", "max_deliver", "batch", "format"]
    );
}

fn message(body: impl AsRef<[u8]>, headers: &[(&str, &str)]) -> async_nats::Message {
    let body = body.as_ref().to_vec();
    let mut map = async_nats::HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, *v);
    }
    async_nats::Message {
        subject: "raw.x".into(),
        reply: None,
        length: body.len(),
        payload: body.into(),
        headers: (!headers.is_empty()).then_some(map),
        status: None,
        description: None,
    }
}

#[test]
fn the_shape_comes_from_headers_then_options() {
    let shape_of = |m: &async_nats::Message, f: Option<&str>| shape(m, f).map(|p| (p.shape, p.gzip));
    let ndjson = |f: &str| PayloadShape::Ndjson { format: f.into() };
    assert_eq!(shape_of(&message("{}", &[]), None), Ok((PayloadShape::Envelope, false)));
    assert_eq!(shape_of(&message("{}", &[]), Some("flows.v1")), Ok((ndjson("flows.v1"), false)));
    assert_eq!(shape_of(&message("{}", &[("Enrichd-Format", "zeek")]), None), Ok((ndjson("zeek"), false)));
    assert_eq!(
        shape_of(&message("{}", &[("Enrichd-Format", "envelope")]), Some("zeek")),
        Ok((PayloadShape::Envelope, false))
    );
    assert_eq!(
        shape_of(&message("{}", &[("Content-Type", "application/json")]), Some("zeek")),
        Ok((PayloadShape::Envelope, false))
    );
    assert!(shape_of(&message("{}", &[("Content-Type", "application/x-ndjson")]), None).is_err());
    assert_eq!(
        shape_of(
            &message("{}", &[("Content-Type", "application/x-ndjson"), ("Content-Encoding", "gzip")]),
            Some("zeek")
        ),
        Ok((ndjson("zeek"), true))
    );
    assert_eq!(shape_of(&message([0x1f, 0x8b, 8, 0], &[]), None), Ok((PayloadShape::Envelope, true)));
}

/// An ingest that answers by body: `good` accepted, `bad` refused as bad
/// input, `full` refused for backpressure the first `full_refusals` times.
#[derive(Default)]
struct Scripted {
    stats: SourceStats,
    dead: Mutex<Vec<(Value, String)>>,
    full_refusals: Mutex<u32>,
    accepted: Mutex<Vec<String>>,
}

impl Ingest for Scripted {
    fn submit(&self, payload: Payload) -> BoxFuture<'_, Result<Accepted, Refusal>> {
        Box::pin(async move {
            let body = String::from_utf8(payload.body).unwrap();
            match body.as_str() {
                "bad" => Err(Refusal::BadInput { code: "invalid_json".into(), message: "not JSON".into() }),
                "full"
                    if {
                        let mut n = self.full_refusals.lock().unwrap();
                        *n > 0 && {
                            *n -= 1;
                            true
                        }
                    } =>
                {
                    Err(Refusal::Backpressure {
                        message: "backlog full".into(),
                        retry_after: Duration::from_millis(200),
                    })
                }
                _ => {
                    self.accepted.lock().unwrap().push(body);
                    Ok(Accepted { events: 1 })
                }
            }
        })
    }
    fn dead_letter(&self, m: DeadMessage<'_>) {
        self.dead.lock().unwrap().push((m.origin.clone(), m.reason.to_string()));
    }
    fn stats(&self) -> &SourceStats {
        &self.stats
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_acked_termed_or_given_back_as_the_core_answers() {
    let Some(nats) = NatsServer::start("messages_are_acked_termed_or_given_back_as_the_core_answers") else { return };
    let options =
        json!({"servers": [nats.url], "stream": "RAW", "subjects": ["raw.>"], "ack_wait_ms": 500, "batch": 8});
    let options: Map<String, Value> = serde_json::from_value(options).unwrap();
    assert!(NatsSource.check(&options).is_empty());
    let ctx = SourceContext { name: "nats".into(), base_dir: std::env::temp_dir() };
    let runner = Factory::build(&NatsSource, &options, &ctx).unwrap();
    let ingest = Arc::new(Scripted { full_refusals: Mutex::new(2), ..Default::default() });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(
        ingest.clone(),
        Box::pin(async move {
            let _ = stop_rx.await;
        }),
    ));

    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    // The source creates the stream; wait for it, then publish.
    let stream = loop {
        if let Ok(s) = js.get_stream("RAW").await {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for body in ["good1", "bad", "full", "good2"] {
        js.publish("raw.x", body.into()).await.unwrap().await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while ingest.accepted.lock().unwrap().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "accepted: {:?}", ingest.accepted.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past two ack_waits: the bad message stays settled.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let s = &ingest.stats;
    assert_eq!(s.acked.load(Relaxed), 3);
    assert_eq!(s.termed.load(Relaxed), 1);
    assert!(s.nacked.load(Relaxed) >= 2, "backpressure gave the message back");
    assert_eq!(s.redelivered.load(Relaxed), s.nacked.load(Relaxed), "each given back once, then taken again");
    let dead = ingest.dead.lock().unwrap().clone();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0["stream_seq"], 2);
    assert_eq!(dead[0].0["subject"], "raw.x");
    assert!(dead[0].1.starts_with("invalid_json"), "{dead:?}");
    let mut c: consumer::Consumer<consumer::pull::Config> = stream.get_consumer("enrichd").await.unwrap();
    let info = c.info().await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops promptly").unwrap();
}

/// The backlog the source reports: what the stream holds for its consumer
/// while a message is refused, nothing once all are accepted (asked of the
/// server when a fetch brings nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_reports_its_backlog() {
    let Some(nats) = NatsServer::start("the_source_reports_its_backlog") else { return };
    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: "RAW".into(),
        subjects: vec!["raw.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    for body in ["full", "good1", "good2", "good3", "good4", "good5"] {
        js.publish("raw.x", body.into()).await.unwrap().await.unwrap();
    }
    let options =
        json!({"servers": [nats.url], "stream": "RAW", "subjects": ["raw.>"], "batch": 1, "fetch_wait_ms": 200});
    let options: Map<String, Value> = serde_json::from_value(options).unwrap();
    assert!(NatsSource.check(&options).is_empty(), "{:?}", NatsSource.check(&options));
    let ctx = SourceContext { name: "nats".into(), base_dir: std::env::temp_dir() };
    let runner = Factory::build(&NatsSource, &options, &ctx).unwrap();
    let ingest = Arc::new(Scripted { full_refusals: Mutex::new(u32::MAX), ..Default::default() });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(
        ingest.clone(),
        Box::pin(async move {
            let _ = stop_rx.await;
        }),
    ));
    let backlog_becomes = |want: std::ops::RangeInclusive<u64>| {
        let ingest = ingest.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while !ingest.stats.backlog().is_some_and(|n| want.contains(&n)) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "backlog {:?}, not {want:?}; last error {:?}",
                    ingest.stats.backlog(),
                    ingest.stats.last_error()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // `full` is refused and given back: the five behind it wait (one of
    // them may be taken before `full` comes again).
    backlog_becomes(4..=5).await;
    *ingest.full_refusals.lock().unwrap() = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while ingest.accepted.lock().unwrap().len() < 6 {
        assert!(std::time::Instant::now() < deadline, "accepted: {:?}", ingest.accepted.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    backlog_becomes(0..=0).await;
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops promptly").unwrap();
}
