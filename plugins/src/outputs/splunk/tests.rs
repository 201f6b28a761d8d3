//! The `splunk` output against a local server playing a HEC endpoint: the
//! request it sends, the answers it maps, indexer acknowledgement.

use std::time::{Duration, Instant};

use enrichd_engine::output::Outcome;
use serde_json::{json, Value};

use super::options::collector_base;
use super::SplunkOutput;
use crate::outputs::test_server::{build, error_fields, refused_addr, send, serve, Seen};

/// 2023-11-14T22:13:20.123Z.
const T: u64 = 1_700_000_000_123;

const SUCCESS: &str = r#"{"text":"Success","code":0}"#;

fn retry_text(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Retry(text) => text,
        other => panic!("expected a retry, got {other:?}"),
    }
}

#[test]
fn check_lists_every_error() {
    assert_eq!(error_fields(&SplunkOutput, json!({})), ["hec_url", "token"]);
    assert_eq!(
        error_fields(&SplunkOutput, json!({ "indexer_ack": "yes", "gzip": 1, "tokn": "x" })),
        ["gzip", "indexer_ack", "tokn", "hec_url", "token"]
    );
    let fields = error_fields(
        &SplunkOutput,
        json!({
            "url": "splunk:8088",
            "token": " ",
            "index": "",
            "sourcetype": "",
            "ack_poll_ms": 0,
            "ack_timeout_ms": 0,
            "timeout_ms": 700_000,
        }),
    );
    assert_eq!(fields, ["hec_url", "token", "index", "sourcetype", "ack_poll_ms", "ack_timeout_ms", "timeout_ms"]);
    assert!(error_fields(&SplunkOutput, json!({ "url": "https://s:8088", "token": "t" })).is_empty());
}

#[test]
fn collector_suffixes_are_normalised() {
    for url in [
        "https://s:8088",
        "https://s:8088/",
        "https://s:8088/services/collector",
        "https://s:8088/services/collector/",
        "https://s:8088/services/collector/event",
        "https://s:8088/services/collector/event?channel=x",
    ] {
        assert_eq!(collector_base(url), "https://s:8088", "{url}");
    }
    assert_eq!(collector_base("https://proxy/splunk/services/collector/event"), "https://proxy/splunk");
}

#[tokio::test]
async fn sends_hec_envelopes_with_the_token() {
    let server = serve(|_, _| (200, SUCCESS.into())).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = build(
        &SplunkOutput,
        json!({
            "hec_url": format!("{}/services/collector/", server.url),
            "token": "tok-123",
            "index": "security",
            "host": "edge-1",
        }),
        dir.path(),
    );
    let report = send(&*sink, &[r#"{"a":1}"#, "{\n\"b\":\"x\"}"], T).await;
    assert_eq!(report.outcomes, [Outcome::Delivered, Outcome::Delivered]);
    assert_eq!(report.http_status, Some(200));
    let seen = server.seen();
    let request = &seen[0];
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/services/collector/event"));
    assert_eq!(request.header("authorization"), "Splunk tok-123");
    assert_eq!(request.header("content-encoding"), "gzip");
    assert!(uuid::Uuid::parse_str(request.header("x-splunk-request-channel")).is_ok());
    let lines: Vec<&str> = request.text().lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].starts_with(
            r#"{"time":1700000000.123,"host":"edge-1","source":"enrichd","sourcetype":"enrichd:event","index":"security","event":"#
        ),
        "{}",
        lines[0]
    );
    let envelopes: Vec<Value> = lines.iter().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(envelopes[0]["event"], json!({ "a": 1 }));
    assert_eq!(envelopes[1]["event"], json!({ "b": "x" }));
    // The channel is the sink's: the same on every request.
    send(&*sink, &["{}"], T).await;
    let seen = server.seen();
    assert_eq!(seen[1].header("x-splunk-request-channel"), request.header("x-splunk-request-channel"));
}

#[tokio::test]
async fn a_bad_event_is_rejected_and_the_others_resent() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        serve(|_, _| (400, r#"{"text":"Event field cannot be blank","code":13,"invalid-event-number":1}"#.into()))
            .await;
    let sink = build(&SplunkOutput, json!({ "hec_url": server.url, "token": "t" }), dir.path());
    let report = send(&*sink, &["{}", "{}", "{}"], T).await;
    assert!(matches!(&report.outcomes[0], Outcome::Retry(_)), "{report:?}");
    assert_eq!(report.outcomes[1], Outcome::Reject("HTTP 400: Event field cannot be blank".into()));
    assert!(matches!(&report.outcomes[2], Outcome::Retry(_)), "{report:?}");
}

#[tokio::test]
async fn whole_request_answers_apply_to_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(u16, &str, bool, &str); 7] = [
        (400, r#"{"text":"Invalid data format","code":6}"#, false, "HTTP 400: Invalid data format"),
        (400, r#"{"text":"Incorrect index","code":7,"invalid-event-number":0}"#, true, "Incorrect index"),
        (401, r#"{"text":"Invalid token","code":4}"#, true, "token rejected (HTTP 401: Invalid token)"),
        (403, r#"{"text":"Token disabled","code":1}"#, true, "token rejected"),
        (413, "", false, "lower batch_max"),
        (503, r#"{"text":"Server is busy","code":9}"#, true, "HTTP 503: Server is busy"),
        (404, "not found", true, "HTTP 404: not found"),
    ];
    for (status, body, retry, text) in cases {
        let server = serve(move |_, _| (status, body.to_string())).await;
        let sink = build(&SplunkOutput, json!({ "hec_url": server.url, "token": "t" }), dir.path());
        let report = send(&*sink, &["{}", "{}"], T).await;
        assert_eq!(report.outcomes.len(), 2);
        assert_eq!(report.outcomes[0], report.outcomes[1]);
        let message = match (&report.outcomes[0], retry) {
            (Outcome::Retry(m), true) | (Outcome::Reject(m), false) => m,
            (other, _) => panic!("HTTP {status}: {other:?}"),
        };
        assert!(message.contains(text), "HTTP {status}: {message}");
    }
}

/// A HEC that answers events with ack id 7 and acknowledges it on the
/// `acked_at`-th poll (never if `None`).
fn acking_server(acked_at: Option<usize>) -> impl Fn(&Seen, usize) -> (u16, String) {
    move |seen, earlier| {
        if seen.path == "/services/collector/event" {
            return (200, r#"{"text":"Success","code":0,"ackId":7}"#.into());
        }
        let acked = acked_at.is_some_and(|at| earlier >= at);
        (200, json!({ "acks": { "7": acked } }).to_string())
    }
}

#[tokio::test]
async fn indexer_ack_is_polled_until_true() {
    let server = serve(acking_server(Some(3))).await;
    let dir = tempfile::tempdir().unwrap();
    let options = json!({ "hec_url": server.url, "token": "t", "indexer_ack": true, "ack_poll_ms": 10 });
    let sink = build(&SplunkOutput, options, dir.path());
    let report = send(&*sink, &["{}", "{}"], T).await;
    assert_eq!(report.outcomes, [Outcome::Delivered, Outcome::Delivered]);
    let seen = server.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let channel = seen[0].header("x-splunk-request-channel");
    for poll in &seen[1..] {
        assert_eq!(poll.path, "/services/collector/ack");
        assert_eq!(poll.header("x-splunk-request-channel"), channel);
        assert_eq!(poll.header("authorization"), "Splunk t");
        assert_eq!(serde_json::from_slice::<Value>(&poll.body).unwrap(), json!({ "acks": [7] }));
    }
}

#[tokio::test]
async fn indexer_ack_times_out_into_a_retry() {
    let server = serve(acking_server(None)).await;
    let dir = tempfile::tempdir().unwrap();
    let options = json!({
        "hec_url": server.url, "token": "t", "indexer_ack": true, "ack_poll_ms": 20, "ack_timeout_ms": 200,
    });
    let sink = build(&SplunkOutput, options, dir.path());
    let started = Instant::now();
    let report = send(&*sink, &["{}"], T).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(retry_text(&report.outcomes[0]).starts_with("indexer ack timeout"), "{report:?}");
    assert_eq!(report.http_status, None, "no verdict on the events: waited for, not charged to them");
    assert!(server.seen().len() > 2);
}

/// A 2xx proves delivery only as HEC's own answer; with indexer ack it
/// must carry an ackId to poll.
#[tokio::test]
async fn a_success_that_is_not_hec_proves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (json!({}), "<html>catch-all</html>", "not a HEC reply"),
        (json!({"indexer_ack": true}), r#"{"text":"Success","code":0}"#, "without an ackId"),
    ];
    for (extra, body, why) in cases {
        let server = serve(move |_, _| (200, body.to_string())).await;
        let mut options = json!({ "hec_url": server.url, "token": "t" });
        options.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let sink = build(&SplunkOutput, options, dir.path());
        let report = send(&*sink, &["{}", "{}"], T).await;
        for outcome in &report.outcomes {
            assert!(retry_text(outcome).contains(why), "{body}: {report:?}");
        }
    }
}

#[tokio::test]
async fn without_indexer_ack_an_ack_id_is_not_polled() {
    let server = serve(acking_server(None)).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = build(&SplunkOutput, json!({ "hec_url": server.url, "token": "t" }), dir.path());
    assert_eq!(send(&*sink, &["{}"], T).await.outcomes, [Outcome::Delivered]);
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn network_errors_are_retried_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let addr = refused_addr().await;
    let sink =
        build(&SplunkOutput, json!({ "hec_url": format!("https://{addr}"), "token": "sekrit-token" }), dir.path());
    let report = send(&*sink, &["{}"], T).await;
    let message = retry_text(&report.outcomes[0]);
    assert!(message.starts_with(&format!("https://{addr}/services/collector/event: cannot connect")), "{message}");
    assert!(!message.contains("sekrit"), "{message}");
}

/// HEC lost the channel (a restart): it hands out an ack id still awaited
/// here. That request is resent on a new channel, and the earlier one's
/// `true`, which may now answer for the newer request, is not trusted.
#[tokio::test]
async fn a_reset_channel_is_left_and_its_ambiguous_acks_retried() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;
    let restarted = Arc::new(AtomicBool::new(false));
    let server = serve({
        let restarted = restarted.clone();
        move |seen, _| {
            if seen.path == "/services/collector/event" {
                // Before and after the restart, the channel's count is at 7.
                return (200, r#"{"text":"Success","code":0,"ackId":7}"#.into());
            }
            (200, json!({ "acks": { "7": restarted.load(Relaxed) } }).to_string())
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let options = json!({ "hec_url": server.url, "token": "t", "indexer_ack": true, "ack_poll_ms": 10 });
    let sink = build(&SplunkOutput, options, dir.path());
    let first = send(&*sink, &["{}"], T);
    let second = async {
        tokio::time::sleep(Duration::from_millis(100)).await; // the first is polling
        let report = send(&*sink, &["{}"], T).await;
        restarted.store(true, Relaxed); // now "7" is acknowledged: whose?
        report
    };
    let (first, second) = tokio::join!(first, second);
    assert!(retry_text(&second.outcomes[0]).contains("handed out again"), "{second:?}");
    assert!(retry_text(&first.outcomes[0]).contains("channel reset while ackId 7"), "{first:?}");
    // What follows goes on a new channel.
    let seen = server.seen();
    let channels: Vec<String> = seen.iter().map(|s| s.header("x-splunk-request-channel").to_string()).collect();
    let third = send(&*sink, &["{}"], T).await;
    assert_eq!(third.outcomes, [Outcome::Delivered]);
    let later = server.seen();
    let new_channel = later[seen.len()].header("x-splunk-request-channel");
    assert!(channels.iter().all(|c| c != new_channel), "{new_channel} was used before");
}
