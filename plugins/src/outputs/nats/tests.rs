use std::time::Duration;

use async_nats::jetstream;
use enrichd_engine::output::{OutEvent, Outcome, SinkBatch};
use serde_json::json;

use super::*;
use crate::nats::test_server::NatsServer;
use crate::outputs::test_server::{build, error_fields};

#[test]
fn options_are_checked() {
    assert_eq!(error_fields(&NatsOutput, json!({})), ["subject"]);
    assert_eq!(
        error_fields(
            &NatsOutput,
            json!({"subject": "a b", "servers": [], "timeout_ms": 0, "create_stream": "x.y", "max_message_bytes": 10, "password": "p"})
        ),
        ["servers", "timeout_ms", "user", "subject", "create_stream", "max_message_bytes"]
    );
    assert!(error_fields(&NatsOutput, json!({"subject": "enriched.conn", "create_stream": "ENRICHED"})).is_empty());
    assert_eq!(error_fields(&NatsOutput, json!({"subject": "x", "bogus": 1})), ["bogus"]);
}

fn events(jsons: &[String]) -> Vec<OutEvent<'_>> {
    jsons.iter().enumerate().map(|(i, j)| OutEvent { json: j.as_bytes(), id: 100 + i as u64, origin: None }).collect()
}

#[test]
fn events_are_packed_within_the_limit_in_order() {
    let jsons: Vec<String> = [10, 10, 10, 30, 5].iter().map(|n| "x".repeat(*n)).collect();
    let ev = events(&jsons);
    let (messages, too_large) = pack(&ev, 25);
    // The one too large is set apart; it leaves a gap, which breaks the
    // message (a retry without it packs the same messages).
    assert_eq!(messages, vec![vec![0, 1], vec![2], vec![4]]);
    assert_eq!(too_large, [3]);
    // A retry of some messages only (the others settled): the same
    // messages, so the same ids, and a repeat is caught downstream.
    let small: Vec<String> = [9, 9, 9, 19, 9, 9].iter().map(|n| "x".repeat(*n)).collect();
    let all = events(&small);
    let (first, _) = pack(&all, 25);
    assert_eq!(first, vec![vec![0, 1], vec![2], vec![3], vec![4, 5]]);
    // Messages [2] and [4, 5] failed (one was stored, its ack lost): event
    // 4 must not join event 2, or the stored message's repeat gets a new id.
    let left: Vec<OutEvent<'_>> = [2, 4, 5].iter().map(|&i| all[i]).collect();
    let (again, _) = pack(&left, 25);
    assert_eq!(again, vec![vec![0], vec![1, 2]]);
    assert_eq!(message_id("o", 7, &left, &again[0]), message_id("o", 7, &all, &first[1]));
    assert_eq!(message_id("o", 7, &left, &again[1]), message_id("o", 7, &all, &first[3]));
    // The same events give the same id; another scope another.
    assert_eq!(message_id("o", 7, &ev, &messages[0]), message_id("o", 7, &ev, &[0, 1]));
    assert_ne!(message_id("o", 7, &ev, &messages[0]), message_id("o", 8, &ev, &messages[0]));
    assert_ne!(message_id("o", 7, &ev, &[0, 1]), message_id("o", 7, &ev, &[0, 2]));
}

/// Events with an origin: a message holds consecutive events of one
/// input, and its id is the input's key and the index range, whatever the
/// backlog's scope (a redelivered input in another process).
#[test]
fn messages_never_mix_inputs_and_are_named_by_origin() {
    let jsons: Vec<String> = (0..7).map(|_| "x".repeat(10)).collect();
    let origins = [("RAW:1", 0), ("RAW:1", 1), ("RAW:2", 0), ("RAW:2", 1), ("RAW:2", 3), ("RAW:2", 4), ("RAW:2", 5)];
    let ev: Vec<OutEvent<'_>> = jsons
        .iter()
        .zip(origins)
        .enumerate()
        .map(|(i, (j, (key, index)))| OutEvent {
            json: j.as_bytes(),
            id: i as u64,
            origin: Some(enrichd_engine::output::EventOrigin { key, index }),
        })
        .collect();
    let (messages, _) = pack(&ev, 25);
    // A new input breaks a message, so does a gap (index 2 was delivered
    // earlier), and the size limit.
    assert_eq!(messages, vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6]]);
    assert_eq!(message_id("out", 1, &ev, &messages[1]), "out:RAW:2:0-1");
    assert_eq!(message_id("out", 1, &ev, &messages[1]), message_id("out", 2, &ev, &messages[1]));
    assert_eq!(message_id("out", 1, &ev, &messages[3]), "out:RAW:2:5-5");
}

#[tokio::test]
async fn a_missing_server_is_a_retry_for_every_event() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let options = json!({"subject": "x", "servers": [format!("nats://127.0.0.1:{port}")], "timeout_ms": 300});
    let sink = build(&NatsOutput, options, dir.path());
    let jsons = vec!["{}".to_string(); 3];
    let report = sink.send(SinkBatch { events: &events(&jsons), accepted_unix_ms: 0, id_scope: 1 }).await;
    assert!(report.outcomes.iter().all(|o| matches!(o, Outcome::Retry(_))), "{:?}", report.outcomes);
}

#[tokio::test]
async fn batches_are_split_published_and_deduplicated_on_retry() {
    let Some(nats) = NatsServer::start("batches_are_split_published_and_deduplicated_on_retry") else { return };
    let dir = tempfile::tempdir().unwrap();
    let options = json!({
        "subject": "out.events", "servers": [nats.url], "create_stream": "OUT", "max_message_bytes": 2048,
    });
    let sink = build(&NatsOutput, options, dir.path());
    // 40 events of ~200 bytes, one of 5000 (larger than any message).
    let mut jsons: Vec<String> = (0..40).map(|i| json!({"n": i, "pad": "p".repeat(180)}).to_string()).collect();
    jsons.insert(7, json!({"big": "b".repeat(5000)}).to_string());
    let ev = events(&jsons);
    let batch = SinkBatch { events: &ev, accepted_unix_ms: 0, id_scope: 42 };
    let report = sink.send(batch).await;
    assert!(
        matches!(&report.outcomes[7], Outcome::Reject(r) if r.contains("larger than a message")),
        "{:?}",
        report.outcomes[7]
    );
    let delivered = report.outcomes.iter().filter(|o| **o == Outcome::Delivered).count();
    assert_eq!(delivered, 40);
    // A retry of the same entry (a lost ack): the stream keeps one copy and
    // says so.
    let again = sink.send(batch).await;
    assert_eq!(again.outcomes.iter().filter(|o| **o == Outcome::Duplicate).count(), 40);

    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let mut stream = js.get_stream("OUT").await.unwrap();
    let info = stream.info().await.unwrap();
    let messages = info.state.messages;
    assert!(messages >= 40 * 200 / 2048, "split into several messages: {messages}");
    let mut lines = 0;
    for seq in 1..=info.state.last_sequence {
        let m = stream.get_raw_message(seq).await.unwrap();
        assert!(m.payload.len() <= 2048, "{}", m.payload.len());
        assert!(m.headers.get("Nats-Msg-Id").is_some());
        lines += m.payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
    }
    assert_eq!(lines, 40, "each event once");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn more_messages_than_one_ack_wave() {
    let Some(nats) = NatsServer::start("more_messages_than_one_ack_wave") else { return };
    let dir = tempfile::tempdir().unwrap();
    let options = json!({
        "subject": "out.events", "servers": [nats.url], "create_stream": "OUT", "max_message_bytes": 1024,
    });
    let sink = build(&NatsOutput, options, dir.path());
    // One event per message: 2.5 waves.
    let jsons: Vec<String> =
        (0..ACK_WAVE * 5 / 2).map(|i| json!({"n": i, "pad": "p".repeat(400)}).to_string()).collect();
    let ev = events(&jsons);
    let report = sink.send(SinkBatch { events: &ev, accepted_unix_ms: 0, id_scope: 1 }).await;
    assert!(
        report.outcomes.iter().all(|o| *o == Outcome::Delivered),
        "{:?}",
        report.outcomes.iter().find(|o| **o != Outcome::Delivered)
    );
    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let info = js.get_stream("OUT").await.unwrap().info().await.unwrap().clone();
    assert_eq!(info.state.messages as usize, jsons.len());
}

/// A stream whose `max_msg_size` is below the server's `max_payload`
/// refuses full-size messages: the sink learns a smaller limit round by
/// round until the events go through, and refuses for good an event that
/// is over it on its own, instead of retrying the same messages for ever.
#[tokio::test]
async fn a_stream_with_a_smaller_message_limit_is_learned() {
    let Some(nats) = NatsServer::start("a_stream_with_a_smaller_message_limit_is_learned") else { return };
    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: "SMALL".into(),
        subjects: vec!["small.events".into()],
        max_message_size: 4096,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink = build(&NatsOutput, json!({"subject": "small.events", "servers": [nats.url]}), dir.path());
    let mut jsons: Vec<String> = (0..40).map(|i| json!({"n": i, "pad": "p".repeat(180)}).to_string()).collect();
    jsons.push(json!({"big": "b".repeat(6000)}).to_string());
    let ev = events(&jsons);
    let batch = SinkBatch { events: &ev, accepted_unix_ms: 0, id_scope: 9 };
    let mut settled = vec![false; ev.len()];
    for _round in 0..8 {
        let report = sink.send(batch).await;
        for (i, o) in report.outcomes.iter().enumerate() {
            match o {
                Outcome::Delivered | Outcome::Duplicate => settled[i] = true,
                Outcome::Reject(why) => {
                    assert_eq!(i, 40, "only the big event is refused: {why}");
                    settled[i] = true;
                }
                Outcome::Retry(_) => {}
            }
        }
        if settled.iter().all(|s| *s) {
            break;
        }
    }
    assert!(settled.iter().all(|s| *s), "{settled:?}");
    let mut stream = js.get_stream("SMALL").await.unwrap();
    let messages = stream.info().await.unwrap().state.messages;
    assert!(messages >= 2, "{messages}");
}

/// The output's stream deleted under it (`create_stream` set): the round
/// that finds no stream is retried, and the next connects again and
/// creates it, instead of publishing to nothing until a restart.
#[tokio::test]
async fn a_deleted_stream_is_created_again() {
    let Some(nats) = NatsServer::start("a_deleted_stream_is_created_again") else { return };
    let dir = tempfile::tempdir().unwrap();
    let options = json!({"subject": "out.events", "servers": [nats.url], "create_stream": "OUT", "timeout_ms": 1000});
    let sink = build(&NatsOutput, options, dir.path());
    let jsons = [json!({"n": 1}).to_string()];
    let ev = events(&jsons);
    let batch = |scope| SinkBatch { events: &ev, accepted_unix_ms: 0, id_scope: scope };
    assert_eq!(sink.send(batch(1)).await.outcomes, [Outcome::Delivered]);
    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    js.delete_stream("OUT").await.unwrap();
    let mut delivered = false;
    for round in 2..6 {
        if sink.send(batch(round)).await.outcomes == [Outcome::Delivered] {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "the stream was not created again");
    assert!(js.get_stream("OUT").await.is_ok());
}

/// A stream's `max_msg_size` raised after the sink learned a smaller limit:
/// once the learned limit is `relearn_after` old the stream is asked again
/// and messages grow back, instead of staying small until a restart.
#[tokio::test]
async fn a_raised_stream_limit_lets_messages_grow_again() {
    let Some(nats) = NatsServer::start("a_raised_stream_limit_lets_messages_grow_again") else { return };
    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let mut config = jetstream::stream::Config {
        name: "GROW".into(),
        subjects: vec!["grow.events".into()],
        max_message_size: 4096,
        ..Default::default()
    };
    js.create_stream(config.clone()).await.unwrap();
    let options: NatsOutputOptions =
        serde_json::from_value(json!({"subject": "grow.events", "servers": [nats.url]})).unwrap();
    let sink = NatsSink::new(options, "test".into(), Duration::from_millis(200));
    let jsons: Vec<String> = (0..40).map(|i| json!({"n": i, "pad": "p".repeat(180)}).to_string()).collect();
    let ev = events(&jsons);
    let send_all = |scope: u64| {
        let sink = &sink;
        let ev = &ev;
        async move {
            let batch = SinkBatch { events: ev, accepted_unix_ms: 0, id_scope: scope };
            for _round in 0..8 {
                if sink.send(batch).await.outcomes.iter().all(|o| matches!(o, Outcome::Delivered)) {
                    return;
                }
            }
            panic!("not delivered in 8 rounds");
        }
    };
    send_all(1).await;
    assert!(sink.learned().bytes < 4096, "a smaller limit was learned");
    config.max_message_size = 1 << 20;
    js.update_stream(config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = js.get_stream("GROW").await.unwrap().info().await.unwrap().state.messages;
    send_all(2).await;
    let mut stream = js.get_stream("GROW").await.unwrap();
    let after = stream.info().await.unwrap().state.clone();
    assert_eq!(after.messages - before, 1, "the 40 events (~8 KiB) in one message again");
    let last = stream.get_raw_message(after.last_sequence).await.unwrap();
    assert!(last.payload.len() > 4096, "{}", last.payload.len());
}
