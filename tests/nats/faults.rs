//! NATS sources and outputs under faults an operator or a cluster can
//! cause: a durable consumer deleted, a stream deleted and created again,
//! an `ack` output that cannot confirm, a dead-letter at its bound, a
//! dead-lettered message larger than the dead-letter used to keep.

use super::*;

/// The durable consumer deleted under a running source (an operator's
/// mistake, a stream recreated): the source looks it up again, creates it,
/// and consumes what is published afterwards, instead of pulling from a
/// consumer that is gone.
#[test]
fn a_deleted_consumer_is_created_again() {
    let Some(nats) = NatsServer::start("a_deleted_consumer_is_created_again") else { return };
    let rt = common::broker_runtime();
    let js = rt.block_on(jetstream(&nats.url));
    let per = 10;
    rt.block_on(publish(&js, 2, per));
    let s = Server::start_with(&config(&nats.url, 30_000), &[]);
    let mut reader = rt.block_on(Reader::new(&js));
    rt.block_on(reader.until(2 * per, Duration::from_secs(30)));
    common::wait_for("the raw consumer to settle", Duration::from_secs(10), || rt.block_on(raw_consumer_idle(&js)));

    rt.block_on(async {
        let stream = js.get_stream("RAW").await.unwrap();
        assert!(stream.delete_consumer("enrichd").await.unwrap().success);
        for m in 2..4 {
            js.publish("raw.zeek", common::conn_envelope("nats-test", m * per, per).into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    rt.block_on(reader.until(4 * per, Duration::from_secs(30)));
    let view = common::source_view(&s);
    assert_eq!(view["state"], "running", "{view}");
}

/// An `ack` output that cannot confirm for a while (its destination down):
/// the source's message stays unsettled (in progress) instead of going back
/// to the broker after `ack_mode_timeout_ms` and being queued again on
/// every redelivery; once the destination is back every event is delivered
/// once and the message acknowledged.
#[test]
fn an_ack_output_that_waits_does_not_queue_redeliveries() {
    use common::receivers::{BulkConfig, BulkReceiver};
    let Some(nats) = NatsServer::start("an_ack_output_that_waits_does_not_queue_redeliveries") else { return };
    let rt = common::broker_runtime();
    let js = rt.block_on(jetstream(&nats.url));
    let bulk = BulkReceiver::start(BulkConfig::default());
    bulk.outage(true);
    let config = format!(
        "[auth]\napi_keys = [\"{key}\"]\n[reload]\nwatch = false\n[[source]]\ntype = \"nats\"\nservers = [\"{url}\"]\n\
         stream = \"RAW\"\nsubjects = [\"raw.>\"]\ndurable = \"enrichd\"\nack_wait_ms = 1000\n\
         [[output]]\ntype = \"elastic\"\nurl = \"{bulk}\"\ndurability = \"ack\"\nflush_interval_ms = 1\n\
         ack_mode_timeout_ms = 200\nbackoff_initial_ms = 50\nbackoff_max_ms = 100\n{chain}",
        key = common::KEY,
        url = nats.url,
        bulk = bulk.url(),
        chain = common::test_chain(),
    );
    let s = Server::start_with(&config, &[]);
    rt.block_on(publish(&js, 1, 10));
    // Ten ack timeouts, and a few ack_waits, pass with the destination down.
    std::thread::sleep(Duration::from_millis(2500));
    let queued = |s: &Server| {
        let o = s.get_auth("/v1/outputs/elastic").json();
        o["counters"]["queued"].as_u64().unwrap_or_else(|| panic!("{o}"))
    };
    assert_eq!(queued(&s), 10, "queued once, not once per redelivery");
    bulk.outage(false);
    common::wait_for("10 documents", Duration::from_secs(30), || bulk.doc_count() == 10);
    common::wait_for("the message acknowledged", Duration::from_secs(10), || {
        common::source_view(&s)["counters"]["acked"] == 1
    });
    assert_eq!(queued(&s), 10);
    assert!(bulk.docs().iter().all(|d| d.times_written == 1), "no event twice");
}

/// Bad-input messages beyond what the bounded dead-letter holds: each is
/// dead-lettered, and the records the bound pushes out are counted as lost
/// with their reason, so dead-lettered = kept + lost.
#[test]
fn dead_letter_evictions_are_counted_as_lost() {
    let Some(nats) = NatsServer::start("dead_letter_evictions_are_counted_as_lost") else { return };
    let rt = common::broker_runtime();
    let js = rt.block_on(jetstream(&nats.url));
    rt.block_on(publish(&js, 0, 0));
    rt.block_on(async {
        for i in 0..10 {
            let body = format!("not JSON {i} {}", "x".repeat(1000));
            js.publish("raw.zeek", body.into()).await.unwrap().await.unwrap();
        }
    });
    let config = config(&nats.url, 30_000).replace("batch = 32\n", "batch = 32\ndeadletter_max_bytes = 4096\n");
    let s = Server::start_with(&config, &[]);
    common::wait_for("10 messages termed", Duration::from_secs(20), || {
        common::source_view(&s)["counters"]["termed"] == 10
    });
    let view = common::source_view(&s);
    let evicted = view["counters"]["lost"]["deadletter_evicted"].as_u64().unwrap();
    assert!(evicted > 0, "{view}");
    assert_eq!(view["counters"]["dead_lettered"], 10, "{view}");
    let kept = s.get_auth("/v1/sources/nats/deadletter").json()["total"].as_u64().unwrap();
    assert_eq!(kept + evicted, 10, "{view}");
    let m = s.get("/metrics").text;
    let line = format!("telemetry_source_lost_total{{source=\"nats\",reason=\"deadletter_evicted\"}} {evicted}");
    assert!(m.contains(&line), "{line} in\n{m}");
}

/// A refused message longer than the 4 KiB the dead-letter used to keep
/// comes back from `GET /v1/sources/{name}/deadletter` byte for byte: a
/// UTF-8 body as text, a binary one (bad gzip) as base64. One larger than
/// the whole dead-letter is counted as lost with its reason, an excerpt
/// in `last_error`, and pushes nothing out.
#[test]
fn a_dead_lettered_message_comes_back_whole() {
    use base64::Engine as _;
    let Some(nats) = NatsServer::start("a_dead_lettered_message_comes_back_whole") else { return };
    let rt = common::broker_runtime();
    let js = rt.block_on(jetstream(&nats.url));
    rt.block_on(publish(&js, 0, 0));
    let text: String = (0..1500).map(|i| format!("not JSON \"{i}\" é\n")).collect();
    assert!(text.len() > 4 * 4096);
    let mut binary = vec![0x1f, 0x8b, 0x08, 0x00, 0xff];
    binary.extend((0..9000u32).map(|i| (i * 7 % 251) as u8));
    let huge = format!("HUGE{}", "x".repeat(70_000));
    rt.block_on(async {
        for body in [text.as_bytes(), &binary, huge.as_bytes()] {
            js.publish("raw.zeek", body.to_vec().into()).await.unwrap().await.unwrap();
        }
    });
    let config = config(&nats.url, 30_000).replace("batch = 32\n", "batch = 32\ndeadletter_max_bytes = 65536\n");
    let s = Server::start_with(&config, &[]);
    common::wait_for("3 messages termed", Duration::from_secs(20), || {
        common::source_view(&s)["counters"]["termed"] == 3
    });
    let dead = s.get_auth("/v1/sources/nats/deadletter").json();
    assert_eq!(dead["total"], 2, "{dead}");
    // Messages are processed concurrently: found by stream sequence.
    let of = |seq: u64| {
        let records = dead["records"].as_array().unwrap();
        records.iter().map(|r| &r["event"]).find(|e| e["origin"]["stream_seq"] == seq).expect("a record").clone()
    };
    let (first, second) = (of(1), of(2));
    let keys: Vec<&String> = first.as_object().unwrap().keys().collect();
    assert!(first["body"].as_str() == Some(text.as_str()), "kept whole: {keys:?}, {} bytes", first["body_bytes"]);
    assert_eq!(first["body_bytes"], text.len());
    let decoded = base64::engine::general_purpose::STANDARD.decode(second["body_base64"].as_str().unwrap()).unwrap();
    assert!(decoded == binary, "the binary body byte for byte");
    let view = common::source_view(&s);
    assert_eq!(view["counters"]["dead_lettered"], 2, "{view}");
    assert_eq!(view["counters"]["lost"]["deadletter_too_large"], 1, "{view}");
    assert_eq!(view["counters"]["lost"]["deadletter_evicted"], 0, "{view}");
    let error = view["last_error"].as_str().unwrap();
    assert!(error.contains("deadletter_too_large") && error.contains("HUGExxx"), "{view}");
    let m = s.get("/metrics").text;
    let line = "telemetry_source_lost_total{source=\"nats\",reason=\"deadletter_too_large\"} 1";
    assert!(m.contains(line), "{line} in\n{m}");
}

/// A stream deleted and created again numbers its messages from 1 anew:
/// the new messages must not share message ids with the old ones in the
/// output stream, whose duplicate window would drop them as repeats
/// (silent loss). Origins carry the stream's creation time.
#[test]
fn a_recreated_stream_is_not_taken_for_repeats() {
    let Some(nats) = NatsServer::start("a_recreated_stream_is_not_taken_for_repeats") else { return };
    let rt = common::broker_runtime();
    let js = rt.block_on(jetstream(&nats.url));
    let per = 10;
    rt.block_on(publish(&js, 1, per));
    let s = Server::start_with(&config(&nats.url, 30_000), &[]);
    let mut reader = rt.block_on(Reader::new(&js));
    rt.block_on(reader.until(per, Duration::from_secs(30)));
    common::wait_for("the raw consumer to settle", Duration::from_secs(10), || rt.block_on(raw_consumer_idle(&js)));
    rt.block_on(async {
        js.delete_stream("RAW").await.unwrap();
        js.create_stream(stream::Config { name: "RAW".into(), subjects: vec!["raw.>".into()], ..Default::default() })
            .await
            .unwrap();
        // Sequence 1 again, other events.
        js.publish("raw.zeek", common::conn_envelope("nats-test", 1000, per).into()).await.unwrap().await.unwrap();
    });
    rt.block_on(reader.until(2 * per, Duration::from_secs(30)));
    assert_eq!(reader.duplicates(), 0);
    let out = output_view(&s);
    assert_eq!(out["counters"]["duplicates"], 0, "{out}");
}

/// The source says whether its broker answers: `connected` (and
/// `telemetry_source_connected`) turns false during an outage, with the
/// time of the error, and true again once the server is back.
#[test]
fn the_source_reports_its_connection() {
    let test = "the_source_reports_its_connection";
    let port = common::nats::free_port().unwrap();
    let Some(nats) = NatsServer::start_at(test, Some(port)) else { return };
    let s = Server::start_with(&config(&nats.url, 30_000), &[]);
    let connected = |s: &Server| common::source_view(s)["connected"] == true;
    common::wait_for("connected", Duration::from_secs(20), || connected(&s));
    assert!(s.get("/metrics").text.contains("telemetry_source_connected{source=\"nats\"} 1"));
    drop(nats);
    common::wait_for("disconnected", Duration::from_secs(30), || !connected(&s));
    let view = common::source_view(&s);
    assert!(view["last_error_at"].is_string(), "{view}");
    assert!(s.get("/metrics").text.contains("telemetry_source_connected{source=\"nats\"} 0"));
    let _back = NatsServer::start_at(test, Some(port)).expect("found above");
    common::wait_for("connected again", Duration::from_secs(30), || connected(&s));
}
