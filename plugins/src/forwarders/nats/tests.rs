use async_nats::jetstream;
use enrichd_engine::component::Factory;
use enrichd_engine::forward::{ForwardContext, ForwardError, RawBatch};
use serde_json::{json, Map, Value};

use super::*;
use crate::nats::test_server::NatsServer;

fn fields(options: Value) -> Vec<String> {
    let options: Map<String, Value> = serde_json::from_value(options).unwrap();
    NatsForward.check(&options).into_iter().map(|e| e.field).collect()
}

fn build(options: Value) -> Arc<dyn Forwarder> {
    let options: Map<String, Value> = serde_json::from_value(options).unwrap();
    assert!(NatsForward.check(&options).is_empty());
    Factory::build(&NatsForward, &options, &ForwardContext { name: "nats".into() }).unwrap()
}

#[test]
fn options_are_checked() {
    assert_eq!(fields(json!({})), ["subject"]);
    assert_eq!(
        fields(json!({"subject": "raw.>", "create_stream": "a.b", "max_message_bytes": 5, "servers": []})),
        ["servers", "subject", "create_stream", "max_message_bytes"]
    );
    assert!(fields(json!({"subject": "raw.http", "create_stream": "RAW"})).is_empty());
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let f = build(json!({"subject": "raw.http", "servers": [format!("nats://127.0.0.1:{port}")], "timeout_ms": 300}));
    let answer = f.forward(RawBatch { body: b"{}", events: 0 }).await;
    assert!(matches!(answer, Err(ForwardError::Unavailable(_))), "{answer:?}");
}

/// A server that accepts and never answers: the requests queued behind
/// one connection attempt get its failure when it times out, instead of
/// each trying again in turn (the tenth waiting ten timeouts).
#[tokio::test]
async fn concurrent_forwards_share_one_failed_attempt() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket); // never a byte: no INFO
        }
    });
    let f = build(json!({"subject": "raw.http", "servers": [format!("nats://127.0.0.1:{port}")], "timeout_ms": 500}));
    let started = std::time::Instant::now();
    let answers = futures_util::future::join_all((0..10).map(|_| f.forward(RawBatch { body: b"{}", events: 0 }))).await;
    assert!(answers.iter().all(|a| matches!(a, Err(ForwardError::Unavailable(_)))), "{answers:?}");
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(3), "{took:?} for 10 forwards with a 500 ms timeout");
}

/// Small batches go as they are; a large one gzipped; one too large even
/// then is refused. Each published batch is acknowledged and in the
/// stream with the headers a `nats` source reads.
#[tokio::test]
async fn batches_are_published_gzipped_when_large_and_refused_when_too_large() {
    let Some(nats) = NatsServer::start("batches_are_published_gzipped_when_large") else { return };
    let f = build(json!({
        "subject": "raw.http", "servers": [nats.url], "create_stream": "RAW", "max_message_bytes": 4096,
    }));
    f.forward(RawBatch { body: br#"{"format":"zeek","records":[]}"#, events: 0 }).await.unwrap();
    // Compressible: ~20 KB of repeated records.
    let big = format!(r#"{{"format":"zeek","records":[{}]}}"#, vec![r#"{"uid":"x"}"#; 2000].join(","));
    f.forward(RawBatch { body: big.as_bytes(), events: 2000 }).await.unwrap();
    // Incompressible: xorshift letters (~4.7 bits each: 40,000 of them do
    // not gzip below 4096 bytes).
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: String = (0..40_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    let answer = f.forward(RawBatch { body: noise.as_bytes(), events: 1 }).await;
    assert!(matches!(&answer, Err(ForwardError::TooLarge(m)) if m.contains("smaller batches")), "{answer:?}");

    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let stream = js.get_stream("RAW").await.unwrap();
    assert_eq!(stream.cached_info().state.messages, 2);
    let first = stream.get_raw_message(1).await.unwrap();
    assert_eq!(first.headers.get("Enrichd-Format").map(|v| v.as_str()), Some("envelope"));
    assert!(first.headers.get("Content-Encoding").is_none());
    let second = stream.get_raw_message(2).await.unwrap();
    assert_eq!(second.headers.get("Content-Encoding").map(|v| v.as_str()), Some("gzip"));
    assert!(second.payload.len() < 4096 && second.payload.starts_with(&[0x1f, 0x8b]));
}
