//! The `elastic` output against a local server playing Elasticsearch: the
//! bulk request it sends, how each answer maps to outcomes, and failures.

use enrichd_engine::output::Outcome;
use serde_json::{json, Value};

use super::{base64, says_all_delivered, utc_date, write_event_id, ElasticOutput};
use crate::outputs::test_server::{build, error_fields, refused_addr, send, serve, silent_server, Seen};

/// 2023-11-14T22:13:20Z.
const T: u64 = 1_700_000_000_000;

/// A bulk response with one item per status, `op` the operation.
fn bulk_reply(op: &str, statuses: &[u16]) -> String {
    let items: Vec<Value> = statuses
        .iter()
        .map(|&status| {
            let mut result = json!({ "status": status });
            if status >= 300 {
                result["error"] = json!({ "type": format!("err_{status}"), "reason": format!("reason {status}") });
            }
            json!({ op: result })
        })
        .collect();
    json!({ "took": 1, "errors": statuses.iter().any(|&s| s >= 300), "items": items }).to_string()
}

/// The request's NDJSON lines, parsed.
fn lines(seen: &Seen) -> Vec<Value> {
    seen.text().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

fn ok_server(op: &'static str) -> impl Fn(&Seen, usize) -> (u16, String) {
    move |seen, _| {
        let n = seen.text().lines().count() / 2;
        (200, bulk_reply(op, &vec![201; n]))
    }
}

#[test]
fn check_lists_every_error() {
    assert_eq!(error_fields(&ElasticOutput, json!({})), ["url"]);
    // Type errors, one per key, including a flattened HTTP option and an
    // unknown key (deny_unknown_fields holds with the flattened options).
    assert_eq!(
        error_fields(&ElasticOutput, json!({ "id_mode": "uuid", "tls_verify": "yes", "bogus": 1, "url": "http://h" })),
        ["bogus", "id_mode", "tls_verify"]
    );
    let fields = error_fields(
        &ElasticOutput,
        json!({
            "urls": ["ftp://es", "http://ok:9200"],
            "index_prefix": "Logs",
            "password": "p",
            "api_key": "k",
            "pipeline": "",
            "timeout_ms": 0,
        }),
    );
    assert_eq!(fields, ["urls[0]", "index_prefix", "pipeline", "password", "api_key", "timeout_ms"]);
    assert!(error_fields(&ElasticOutput, json!({ "url": "http://a", "urls": ["http://b"] })).is_empty());
    assert_eq!(error_fields(&ElasticOutput, json!({ "url": "http://a", "username": "u" })), ["username"]);
    assert_eq!(error_fields(&ElasticOutput, json!({ "url": "http://a", "data_stream": "logs,x" })), ["data_stream"]);
    // `index` is an alias of `index_prefix`.
    assert_eq!(error_fields(&ElasticOutput, json!({ "url": "http://a", "index": "Bad" })), ["index_prefix"]);
    assert!(
        error_fields(&ElasticOutput, json!({ "url": "https://a:9200", "username": "u", "password": "p" })).is_empty()
    );
}

/// The parser-free reading of an all-success answer says yes only to
/// Elasticsearch's own shape with exactly one success per event; anything
/// else goes to the parser (which the answer-mapping tests below cover).
#[test]
fn all_delivered_is_read_without_a_parser_only_when_certain() {
    let filtered = |n: usize| {
        let items = vec![r#"{"index":{"status":201}}"#; n].join(",");
        format!(r#"{{"errors":false,"items":[{items}]}}"#)
    };
    for n in [1, 2, 1000] {
        assert!(says_all_delivered(filtered(n).as_bytes(), n));
        assert!(!says_all_delivered(filtered(n).as_bytes(), n + 1));
        assert!(!says_all_delivered(filtered(n).as_bytes(), n - 1));
    }
    // Unfiltered, as a cluster without filter_path support answers.
    let full = r#"{"took":30,"errors":false,"items":[{"index":{"_index":"a","_id":"1","_version":1,"result":"created","_shards":{"total":2,"successful":1,"failed":0},"_seq_no":0,"_primary_term":1,"status":201}}]}"#;
    assert!(says_all_delivered(full.as_bytes(), 1));
    // A key-like text inside a string is escaped, so it does not count.
    let tricky = r#"{"errors":false,"items":[{"index":{"_id":"x\"status\":1","status":201}}]}"#;
    assert!(says_all_delivered(tricky.as_bytes(), 1));
    for declined in [
        bulk_reply("index", &[201, 429]),
        // Keys after `items` (this helper sorts them): left to the parser.
        bulk_reply("create", &[201]),
        r#"{"errors":true,"items":[{"index":{"status":201}}]}"#.to_string(),
        r#"{"items":[{"index":{"status":201}}],"errors":false}"#.to_string(),
        r#"{"errors":false,"items":[{"index":{"status":201}}"#.to_string(),
        r#"{"errors":false}"#.to_string(),
        r#"{"took":1,"nested":{"errors":false,"items":[{"index":{"status":201}}]}}"#.to_string(),
        r#"{"errors": false, "items" : [{"index": {"status" : 201}}]}"#.to_string(),
        "not json \"items\": [\"status\":]}".to_string(),
        String::new(),
    ] {
        assert!(!says_all_delivered(declined.as_bytes(), 1), "{declined}");
    }
}

#[test]
fn daily_index_dates_are_utc_civil_dates() {
    assert_eq!(utc_date(0), "1970.01.01");
    assert_eq!(utc_date(T), "2023.11.14");
    assert_eq!(utc_date(951_782_400_000), "2000.02.29");
    assert_eq!(utc_date(951_868_799_999), "2000.02.29");
    assert_eq!(utc_date(951_868_800_000), "2000.03.01");
    assert_eq!(utc_date(4_107_542_400_000), "2100.03.01");
    assert_eq!(utc_date(1_735_689_599_000), "2024.12.31");
}

#[test]
fn basic_auth_is_standard_base64() {
    for (plain, encoded) in
        [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("elastic:s3cret", "ZWxhc3RpYzpzM2NyZXQ=")]
    {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
}

#[tokio::test]
async fn sends_gzipped_action_and_source_pairs_to_the_daily_index() {
    let server = serve(ok_server("index")).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = build(
        &ElasticOutput,
        json!({ "url": format!("{}/prefix/", server.url), "username": "elastic", "password": "s3cret", "index": "logs" }),
        dir.path(),
    );
    let report = send(&*sink, &[r#"{"a":1}"#, r#"{  "b": 2 }"#], T).await;
    assert_eq!(report.outcomes, [Outcome::Delivered, Outcome::Delivered]);
    assert_eq!(report.http_status, Some(200));
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    let filter = "filter_path=errors%2Citems.*.error%2Citems.*.status";
    assert_eq!(
        (request.method.as_str(), request.path.as_str(), request.query.as_str()),
        ("POST", "/prefix/_bulk", filter)
    );
    assert_eq!(request.header("content-encoding"), "gzip");
    assert_eq!(request.header("content-type"), "application/x-ndjson");
    assert_eq!(request.header("authorization"), "Basic ZWxhc3RpYzpzM2NyZXQ=");
    assert!(request.text().ends_with('\n'));
    let action = json!({ "index": { "_index": "logs-2023.11.14" } });
    assert_eq!(lines(request), [action.clone(), json!({ "a": 1 }), action, json!({ "b": 2 })]);
}

#[tokio::test]
async fn hash_ids_are_stable_and_use_create() {
    let server = serve(ok_server("create")).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = build(
        &ElasticOutput,
        json!({
            "url": server.url.replace("http://", "http://user:pw@"),
            "id_mode": "hash",
            "api_key": "a2V5",
            "gzip": false,
            "pipeline": "geo & more",
        }),
        dir.path(),
    );
    let events = [r#"{"a":1}"#, r#"{"a":2}"#];
    send(&*sink, &events, T).await;
    send(&*sink, &events, T + 86_400_000).await;
    let seen = server.seen();
    assert_eq!(seen[0].header("content-encoding"), "");
    // The configured key wins over credentials in the URL: one header.
    assert_eq!(seen[0].headers.get_all("authorization").iter().collect::<Vec<_>>(), ["ApiKey a2V5"]);
    assert_eq!(seen[0].query, "pipeline=geo+%26+more&filter_path=errors%2Citems.*.error%2Citems.*.status");
    let first = lines(&seen[0]);
    let mut id = Vec::new();
    write_event_id(events[0].as_bytes(), &mut id);
    let id = String::from_utf8(id).unwrap();
    // The first 128 bits of the event's SHA-256, in lower-case hex
    // (`printf '{"a":1}' | sha256sum`).
    assert_eq!(id, "015abd7f5cc57a2dd94b7590f04ad808");
    assert_eq!(first[0], json!({ "create": { "_index": "enrichd-2023.11.14", "_id": id } }));
    assert_ne!(first[2]["create"]["_id"], first[0]["create"]["_id"]);
    let second = lines(&seen[1]);
    assert_eq!(second[0], json!({ "create": { "_index": "enrichd-2023.11.15", "_id": id } }));
    assert_eq!(second[2]["create"]["_id"], first[2]["create"]["_id"]);
}

#[tokio::test]
async fn data_streams_get_create_operations() {
    let server = serve(ok_server("create")).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = build(&ElasticOutput, json!({ "url": server.url, "data_stream": "logs-enrichd-default" }), dir.path());
    send(&*sink, &[r#"{"a":1}"#], T).await;
    assert_eq!(lines(&server.seen()[0])[0], json!({ "create": { "_index": "logs-enrichd-default" } }));
}

#[tokio::test]
async fn each_item_gets_its_own_outcome() {
    let server = serve(|_, _| (200, bulk_reply("create", &[201, 200, 409, 429, 400, 503]))).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = build(&ElasticOutput, json!({ "url": server.url, "id_mode": "hash" }), dir.path());
    let report = send(&*sink, &["{}", "{}", "{}", "{}", "{}", "{}"], T).await;
    assert_eq!(
        report.outcomes,
        [
            Outcome::Delivered,
            Outcome::Delivered,
            // Already indexed by an earlier attempt.
            Outcome::Duplicate,
            Outcome::Retry("err_429: reason 429".into()),
            Outcome::Reject("err_400: reason 400".into()),
            Outcome::Retry("err_503: reason 503".into()),
        ]
    );
    // Without hash ids a conflict is not a duplicate of ours.
    let server = serve(|_, _| (200, bulk_reply("index", &[409]))).await;
    let sink = build(&ElasticOutput, json!({ "url": server.url }), dir.path());
    assert_eq!(send(&*sink, &["{}"], T).await.outcomes, [Outcome::Reject("err_409: reason 409".into())]);
}

#[tokio::test]
async fn whole_request_answers_apply_to_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let error = json!({ "error": { "type": "security_exception", "reason": "missing authentication" } }).to_string();
    // (status, body, retried (else rejected), text in the message)
    let cases: [(u16, String, bool, &str); 8] = [
        (413, String::new(), false, "lower batch_max"),
        (401, error.clone(), true, "security_exception: missing authentication"),
        (403, error.clone(), true, "HTTP 403"),
        (400, error, false, "HTTP 400: security_exception"),
        (429, "busy".into(), true, "HTTP 429: busy"),
        (502, "<html>bad gateway</html>".into(), true, "bad gateway"),
        (200, "not json".into(), true, "unreadable bulk response"),
        (200, bulk_reply("index", &[201]), true, "1 items for 2 events"),
    ];
    for (status, body, retry, text) in cases {
        let server = serve(move |_, _| (status, body.clone())).await;
        let sink = build(&ElasticOutput, json!({ "url": server.url }), dir.path());
        let report = send(&*sink, &["{}", "{}"], T).await;
        assert_eq!(report.http_status, Some(status));
        assert_eq!(report.outcomes.len(), 2);
        assert_eq!(report.outcomes[0], report.outcomes[1]);
        let message = match (&report.outcomes[0], retry) {
            (Outcome::Retry(m), true) | (Outcome::Reject(m), false) => m,
            (other, _) => panic!("HTTP {status}: {other:?}"),
        };
        assert!(message.contains(text), "HTTP {status}: {message}");
    }
}

#[tokio::test]
async fn network_errors_are_retried_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let addr = refused_addr().await;
    let sink = build(
        &ElasticOutput,
        json!({ "url": format!("http://admin:hunter2@{addr}/es?token=qwerty"), "username": "u", "password": "s3cret" }),
        dir.path(),
    );
    let report = send(&*sink, &["{}", "{}"], T).await;
    assert_eq!(report.http_status, None);
    let Outcome::Retry(message) = &report.outcomes[0] else { panic!("{report:?}") };
    assert_eq!(report.outcomes[1], report.outcomes[0]);
    assert!(message.starts_with(&format!("http://***@{addr}/es/_bulk?***: cannot connect")), "{message}");
    for secret in ["hunter2", "s3cret", "qwerty", "admin", "Basic"] {
        assert!(!message.contains(secret), "{message}");
    }
}

#[tokio::test]
async fn timeouts_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _server) = silent_server().await;
    let sink = build(&ElasticOutput, json!({ "url": url, "timeout_ms": 300 }), dir.path());
    let started = std::time::Instant::now();
    let report = send(&*sink, &["{}"], T).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(matches!(&report.outcomes[0], Outcome::Retry(m) if m.contains("timed out")), "{report:?}");
}

#[tokio::test]
async fn nodes_take_turns_and_an_unreachable_one_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let a = serve(ok_server("index")).await;
    let b = serve(ok_server("index")).await;
    let sink = build(&ElasticOutput, json!({ "urls": [a.url, b.url] }), dir.path());
    for _ in 0..4 {
        assert_eq!(send(&*sink, &["{}"], T).await.outcomes, [Outcome::Delivered]);
    }
    assert_eq!((a.seen().len(), b.seen().len()), (2, 2));

    let dead = format!("http://{}", refused_addr().await);
    let sink = build(&ElasticOutput, json!({ "urls": [dead, a.url] }), dir.path());
    for _ in 0..2 {
        assert_eq!(send(&*sink, &["{}"], T).await.outcomes, [Outcome::Delivered]);
    }
    assert_eq!(a.seen().len(), 4);
}
