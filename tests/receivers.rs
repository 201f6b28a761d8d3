//! The strict receivers (`tests/common/receivers/`) checked with a plain
//! HTTP client: each strictness rule and fault does what its docs say, so a
//! delivery test that passes against them means the client speaks the real
//! contracts.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::receivers::{gzip, Auth, BulkConfig, BulkReceiver, Faults, HecConfig, HecReceiver};
use serde_json::{json, Value};

const NDJSON: (&str, &str) = ("content-type", "application/x-ndjson");
const TOKEN: &str = "11111111-2222-3333-4444-555555555555";
const CHANNEL: &str = "0b9e2d4c-6a1f-4e3b-9c8d-7f6e5d4c3b2a";

struct Answer {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Value,
}

fn agent(timeout: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(timeout).build().into()
}

fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Answer, ureq::Error> {
    let agent = agent(Some(Duration::from_secs(10)));
    let mut resp = if method == "GET" {
        let mut req = agent.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.call()?
    } else {
        let mut req = agent.post(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send(body)?
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.body_mut().read_to_string()?;
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"));
    Ok(Answer { status, headers, body })
}

fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    request("POST", url, headers, body).expect("HTTP exchange")
}

fn bulk() -> BulkReceiver {
    BulkReceiver::start(BulkConfig::default())
}

/// `n` index actions into `logs`, ids `d0..`, each source `{"n": i}`.
fn bulk_body(n: usize) -> String {
    (0..n).map(|i| format!("{{\"index\":{{\"_index\":\"logs\",\"_id\":\"d{i}\"}}}}\n{{\"n\":{i}}}\n")).collect()
}

fn item(answer: &Answer, i: usize) -> &Value {
    let item = &answer.body["items"][i];
    item.get("index").or_else(|| item.get("create")).unwrap_or_else(|| panic!("item {i}: {}", answer.body))
}

#[test]
fn bulk_stores_documents_and_answers_per_contract() {
    let es = bulk();
    let body = "{\"index\":{\"_index\":\"logs\",\"_id\":\"a\"}}\n{\"msg\":\"one\"}\r\n{\"create\":{\"_index\":\"logs\"}}\n{\"msg\":\"two\"}\n";
    let answer = post(&format!("{}/_bulk?refresh=false", es.url()), &[NDJSON], body.as_bytes());
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers.get("x-elastic-product").unwrap(), "Elasticsearch");
    assert_eq!(answer.body["errors"], false);
    assert!(answer.body["took"].is_u64());
    let first = item(&answer, 0);
    assert_eq!((first["_index"].as_str(), first["_id"].as_str()), (Some("logs"), Some("a")));
    assert_eq!((first["status"].as_u64(), first["result"].as_str()), (Some(201), Some("created")));
    let auto = answer.body["items"][1]["create"]["_id"].as_str().unwrap().to_string();
    assert_eq!(auto.len(), 20);
    // Path index as the default; an `index` of an existing id replaces it.
    let again = "{\"index\":{\"_id\":\"a\"}}\n{\"msg\":\"one again\"}\n";
    let answer = post(&format!("{}/logs/_bulk", es.url()), &[NDJSON], again.as_bytes());
    assert_eq!(
        (item(&answer, 0)["status"].as_u64(), item(&answer, 0)["result"].as_str()),
        (Some(200), Some("updated"))
    );
    let docs = es.docs();
    assert_eq!(es.doc_count(), 2);
    let a = docs.iter().find(|d| d.id == "a").unwrap();
    assert_eq!((a.times_written, &a.source), (2, &json!({"msg": "one again"})));
    assert!(docs.iter().any(|d| d.id == auto && d.source == json!({"msg": "two"})));
    assert_eq!(es.stats().items_ok, 3);
}

/// `filter_path` as Beats, Logstash and enrichd send it: only the kept
/// paths come back; an unknown parameter is refused like Elasticsearch
/// refuses it.
#[test]
fn bulk_filters_answers_by_filter_path() {
    let es = bulk();
    let body = "{\"create\":{\"_index\":\"logs\",\"_id\":\"x\"}}\n{\"v\":1}\n{\"create\":{\"_index\":\"logs\",\"_id\":\"x\"}}\n{\"v\":2}\n";
    let url = format!("{}/_bulk?filter_path=errors%2Citems.*.error%2Citems.*.status", es.url());
    let answer = post(&url, &[NDJSON], body.as_bytes());
    assert_eq!(answer.status, 200);
    let conflict = &answer.body["items"][1]["create"];
    assert_eq!(conflict["error"]["type"], "version_conflict_engine_exception");
    assert_eq!(
        answer.body,
        json!({"errors": true, "items": [{"create": {"status": 201}}, {"create": {"status": 409, "error": conflict["error"]}}]})
    );
    assert_eq!(es.stats().filtered_replies, 1);
    let answer = post(&format!("{}/_bulk?filter_path=items.*.status", es.url()), &[NDJSON], bulk_body(1).as_bytes());
    assert_eq!(answer.body, json!({"items": [{"index": {"status": 201}}]}));
    let answer = post(&format!("{}/_bulk?refresh=true&colour=red", es.url()), &[NDJSON], bulk_body(1).as_bytes());
    assert_eq!(answer.status, 400);
    assert!(answer.body["error"]["reason"].as_str().unwrap().contains("[colour]"), "{}", answer.body);
}

#[test]
fn bulk_create_of_an_existing_id_is_a_409_item() {
    let es = bulk();
    let body = "{\"create\":{\"_index\":\"logs\",\"_id\":\"x\"}}\n{\"v\":1}\n{\"create\":{\"_index\":\"logs\",\"_id\":\"x\"}}\n{\"v\":2}\n";
    let answer = post(&format!("{}/_bulk", es.url()), &[NDJSON], body.as_bytes());
    assert_eq!((answer.status, &answer.body["errors"]), (200, &json!(true)));
    assert_eq!(item(&answer, 0)["status"], 201);
    assert_eq!(item(&answer, 1)["status"], 409);
    assert_eq!(item(&answer, 1)["error"]["type"], "version_conflict_engine_exception");
    assert_eq!(es.docs()[0].source, json!({"v": 1}));
    assert_eq!(es.stats().items_failed_409, 1);
}

#[test]
fn bulk_refuses_every_framing_mistake_whole() {
    let es = bulk();
    // (mistake, body after one good pair, what the recorded reason says)
    let cases: [(&str, &str, &str); 11] = [
        ("no final newline", "{\"index\":{\"_index\":\"l\"}}\n{\"a\":1}", "terminated by a newline"),
        ("blank line", "{\"index\":{\"_index\":\"l\"}}\n\n{\"a\":1}\n", "line [4] is blank"),
        ("pretty-printed source", "{\"index\":{\"_index\":\"l\"}}\n{\n\"a\":1}\n", "line [4] is not one JSON value"),
        ("no _index anywhere", "{\"index\":{}}\n{\"a\":1}\n", "index is missing"),
        ("unsupported action", "{\"delete\":{\"_index\":\"l\",\"_id\":\"1\"}}\n", "found [delete]"),
        (
            "two actions",
            "{\"index\":{\"_index\":\"l\"},\"create\":{\"_index\":\"l\"}}\n{\"a\":1}\n",
            "exactly one action",
        ),
        (
            "_type (gone in 8)",
            "{\"index\":{\"_index\":\"l\",\"_type\":\"_doc\"}}\n{\"a\":1}\n",
            "unknown parameter [_type]",
        ),
        ("source is an array", "{\"index\":{\"_index\":\"l\"}}\n[1]\n", "not a JSON object"),
        ("missing source line", "{\"index\":{\"_index\":\"l\"}}\n", "no source line"),
        ("numeric _id", "{\"index\":{\"_index\":\"l\",\"_id\":7}}\n{\"a\":1}\n", "[_id] must be a string"),
        ("empty body", "", "request body is required"),
    ];
    for (what, body, reason) in cases {
        // A good pair first: a refused request must store nothing of it.
        let body = if body.is_empty() { String::new() } else { format!("{}{body}", bulk_body(1)) };
        let answer = post(&format!("{}/_bulk", es.url()), &[NDJSON], body.as_bytes());
        assert_eq!(answer.status, 400, "{what}: {}", answer.body);
        assert_eq!(answer.body["error"]["type"], "illegal_argument_exception", "{what}");
        assert_eq!(answer.body["status"], 400, "{what}");
        let recorded = es.stats().malformed_rejected.pop().unwrap_or_default();
        assert!(recorded.contains(reason), "{what}: recorded {recorded:?}");
    }
    assert_eq!(es.doc_count(), 0);
    let stats = es.stats();
    assert_eq!(stats.malformed_rejected.len(), 11, "{:?}", stats.malformed_rejected);
}

#[test]
fn bulk_requires_an_ndjson_or_json_content_type() {
    let es = bulk();
    let url = format!("{}/_bulk", es.url());
    for ct in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let headers: Vec<(&str, &str)> = ct.map(|ct| ("content-type", ct)).into_iter().collect();
        let answer = post(&url, &headers, bulk_body(1).as_bytes());
        assert_eq!(answer.status, 406, "{ct:?}: {}", answer.body);
    }
    for ct in ["application/json; charset=UTF-8", "application/vnd.elasticsearch+x-ndjson; compatible-with=8"] {
        assert_eq!(post(&url, &[("content-type", ct)], bulk_body(1).as_bytes()).status, 200, "{ct}");
    }
}

#[test]
fn bulk_honours_gzip_and_refuses_a_lie_about_it() {
    let es = bulk();
    let url = format!("{}/_bulk", es.url());
    let answer = post(&url, &[NDJSON, ("content-encoding", "gzip")], &gzip(bulk_body(3).as_bytes()));
    assert_eq!((answer.status, es.doc_count()), (200, 3));
    let answer = post(&url, &[NDJSON, ("content-encoding", "gzip")], bulk_body(1).as_bytes());
    assert_eq!(answer.status, 400);
    assert_eq!(post(&url, &[NDJSON, ("content-encoding", "br")], bulk_body(1).as_bytes()).status, 400);
}

#[test]
fn bulk_checks_basic_and_api_key_credentials() {
    let basic = Auth::Basic { user: "elastic".into(), pass: "s3cret".into() };
    assert_eq!(basic.header(), "Basic ZWxhc3RpYzpzM2NyZXQ=");
    for auth in [basic, Auth::ApiKey("aWQ6a2V5".into())] {
        let es = BulkReceiver::start(BulkConfig { auth: Some(auth.clone()) });
        let url = format!("{}/_bulk", es.url());
        let answer = post(&url, &[NDJSON], bulk_body(1).as_bytes());
        assert_eq!((answer.status, &answer.body["error"]["type"]), (401, &json!("security_exception")));
        assert!(answer.headers.get("www-authenticate").is_some());
        assert_eq!(post(&url, &[NDJSON, ("authorization", "Basic Zm9vOmJhcg==")], b"x").status, 401);
        assert_eq!(request("GET", &es.url(), &[], b"").unwrap().status, 401);
        let header = auth.header();
        assert_eq!(post(&url, &[NDJSON, ("authorization", &header)], bulk_body(1).as_bytes()).status, 200);
        let info = request("GET", &es.url(), &[("authorization", &header)], b"").unwrap();
        assert!(info.body["version"]["number"].as_str().unwrap().starts_with("8."), "{}", info.body);
        assert_eq!((es.stats().unauthorized, es.doc_count()), (3, 1));
    }
}

#[test]
fn bulk_item_failures_leave_the_rest_stored() {
    let es = bulk();
    es.set_faults(Faults { reject_field: Some("poison".into()), ..Faults::default() });
    let body = format!("{}{}", bulk_body(2), "{\"index\":{\"_index\":\"Logs\"}}\n{\"a\":1}\n");
    let body = body.replace("{\"n\":1}", "{\"n\":1,\"poison\":true}");
    let answer = post(&format!("{}/_bulk", es.url()), &[NDJSON], body.as_bytes());
    assert_eq!((answer.status, &answer.body["errors"]), (200, &json!(true)));
    assert_eq!(item(&answer, 0)["status"], 201);
    assert_eq!(
        (item(&answer, 1)["status"].as_u64(), item(&answer, 1)["error"]["type"].as_str()),
        (Some(400), Some("mapper_parsing_exception"))
    );
    assert_eq!(item(&answer, 2)["error"]["type"], "invalid_index_name_exception");
    assert_eq!((es.doc_count(), es.stats().items_failed_400), (1, 2));
}

/// Item 429s follow the seed: the same seed fails the same items.
#[test]
fn bulk_item_429s_are_deterministic_with_the_seed() {
    let statuses = |seed| {
        let es = bulk();
        es.set_faults(Faults { seed, item_429_per_mille: 300, ..Faults::default() });
        let answer = post(&format!("{}/_bulk", es.url()), &[NDJSON], bulk_body(40).as_bytes());
        let statuses: Vec<u64> = (0..40).map(|i| item(&answer, i)["status"].as_u64().unwrap()).collect();
        let failed = statuses.iter().filter(|&&s| s == 429).count();
        assert!((4..=24).contains(&failed), "{failed} of 40 at 30%");
        assert_eq!(es.doc_count(), 40 - failed);
        assert_eq!(es.stats().items_failed_429, failed as u64);
        assert_eq!(
            item(&answer, statuses.iter().position(|&s| s == 429).unwrap())["error"]["type"],
            "es_rejected_execution_exception"
        );
        statuses
    };
    assert_eq!(statuses(7), statuses(7));
    assert_ne!(statuses(7), statuses(8));
}

#[test]
fn request_faults_store_nothing() {
    let es = bulk();
    let url = format!("{}/_bulk", es.url());
    es.set_faults(Faults { request_5xx_per_mille: 1000, ..Faults::default() });
    assert_eq!(post(&url, &[NDJSON], bulk_body(2).as_bytes()).status, 503);
    es.set_faults(Faults { request_429_per_mille: 1000, ..Faults::default() });
    assert_eq!(post(&url, &[NDJSON], bulk_body(2).as_bytes()).status, 429);
    let stats = es.stats();
    assert_eq!((stats.requests_5xx, stats.requests_429, es.doc_count()), (1, 1, 0));

    let hec = HecReceiver::start(HecConfig { token: TOKEN.into(), ..HecConfig::default() });
    let url = format!("{}/services/collector/event", hec.url());
    let auth = format!("Splunk {TOKEN}");
    hec.set_faults(Faults { request_5xx_per_mille: 1000, ..Faults::default() });
    let answer = post(&url, &[("authorization", &auth)], br#"{"event":"x"}"#);
    assert_eq!((answer.status, &answer.body), (503, &json!({"text": "Server is busy", "code": 9})));
    hec.set_faults(Faults { request_429_per_mille: 1000, ..Faults::default() });
    assert_eq!(post(&url, &[("authorization", &auth)], br#"{"event":"x"}"#).status, 429);
    assert!(hec.events().is_empty());
}

/// A slow answer still stores: a client that gives up early has delivered.
#[test]
fn delay_holds_the_answer_after_storing() {
    let es = bulk();
    es.set_faults(Faults { delay_ms: 1000, ..Faults::default() });
    let started = Instant::now();
    let late = agent(Some(Duration::from_millis(100)))
        .post(&format!("{}/_bulk", es.url()))
        .header("content-type", "application/x-ndjson")
        .send(bulk_body(1).as_bytes());
    assert!(late.is_err(), "the client should have timed out");
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(es.doc_count(), 1);
    let started = Instant::now();
    assert_eq!(post(&format!("{}/_bulk", es.url()), &[NDJSON], bulk_body(1).as_bytes()).status, 200);
    assert!(started.elapsed() >= Duration::from_millis(1000));
}

#[test]
fn outage_refuses_connections_then_recovers_on_the_same_port() {
    let es = bulk();
    let url = format!("{}/_bulk", es.url());
    let addr = es.url().trim_start_matches("http://").to_string();
    // A kept-alive connection from before the outage must be cut too.
    let mut open = TcpStream::connect(&addr).unwrap();
    let body = bulk_body(1);
    let head = format!(
        "POST /_bulk HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    open.write_all(format!("{head}{body}").as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    assert!(open.read(&mut buf).unwrap() > 0);
    es.outage(true);
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match open.read(&mut buf) {
        Ok(0) => {}
        Err(e) if !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
        other => panic!("the kept-alive connection is still open: {other:?}"),
    }
    let refused = TcpStream::connect(&addr).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(request("POST", &url, &[NDJSON], bulk_body(1).as_bytes()).is_err());
    es.outage(true); // idempotent
    es.outage(false);
    assert_eq!(post(&url, &[NDJSON], bulk_body(2).as_bytes()).status, 200);
    assert_eq!(es.doc_count(), 2);

    let hec = HecReceiver::start(HecConfig { token: TOKEN.into(), ..HecConfig::default() });
    hec.outage(true);
    assert!(request("GET", &format!("{}/services/collector/health", hec.url()), &[], b"").is_err());
    hec.outage(false);
    let health = request("GET", &format!("{}/services/collector/health", hec.url()), &[], b"").unwrap();
    assert_eq!((health.status, &health.body), (200, &json!({"text": "HEC is healthy", "code": 17})));
}

fn hec(indexer_ack: bool, ack_delay_ms: u64) -> HecReceiver {
    HecReceiver::start(HecConfig { token: TOKEN.into(), indexer_ack, ack_delay_ms })
}

fn hec_post(hec: &HecReceiver, path: &str, extra: &[(&str, &str)], body: &[u8]) -> Answer {
    let auth = format!("Splunk {TOKEN}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    post(&format!("{}{path}", hec.url()), &headers, body)
}

#[test]
fn hec_accepts_concatenated_events_on_every_event_path() {
    let splunk = hec(false, 0);
    let body = br#"{"event":{"a":1},"time":1700000000.25,"host":"h","source":"s","sourcetype":"st","index":"main","fields":{"k":"v","n":[1,"2"]}}{"event":"two"}
  {"event":3}"#;
    let answer = hec_post(&splunk, "/services/collector/event", &[], body);
    assert_eq!((answer.status, &answer.body), (200, &json!({"text": "Success", "code": 0})));
    for path in ["/services/collector", "/services/collector/event/1.0"] {
        assert_eq!(hec_post(&splunk, path, &[("content-encoding", "gzip")], &gzip(br#"{"event":"z"}"#)).status, 200);
    }
    let events = splunk.events();
    assert_eq!(events.len(), 5);
    assert_eq!((&events[0].event, events[0].time), (&json!({"a": 1}), Some(1_700_000_000.25)));
    assert_eq!(events[0].host.as_deref(), Some("h"));
    assert_eq!((events[0].sourcetype.as_deref(), events[0].index.as_deref()), (Some("st"), Some("main")));
    assert_eq!(events[0].fields.as_ref().unwrap()["k"], "v");
    assert_eq!((&events[2].event, events[2].time, events[2].source.as_deref()), (&json!(3), None, None));
    assert_eq!(splunk.stats().items_ok, 5);
}

#[test]
fn hec_checks_the_token() {
    let splunk = hec(false, 0);
    let url = format!("{}/services/collector/event", splunk.url());
    let body = br#"{"event":"x"}"#;
    let cases = [(None, 401, 2), (Some(format!("Bearer {TOKEN}")), 401, 3), (Some("Splunk nope".into()), 403, 4)];
    for (header, status, code) in cases {
        let headers: Vec<(&str, &str)> = header.as_deref().map(|h| ("authorization", h)).into_iter().collect();
        let answer = post(&url, &headers, body);
        assert_eq!((answer.status, &answer.body["code"]), (status, &json!(code)), "{header:?}");
    }
    assert_eq!((splunk.stats().unauthorized, splunk.events().len()), (3, 0));
}

#[test]
fn hec_refuses_malformed_batches_whole_with_the_event_number() {
    let splunk = hec(false, 0);
    let good = r#"{"event":"ok"}"#;
    let cases: [(&str, u32, Option<u64>); 9] = [
        ("", 5, None),
        (" \n ", 5, None),
        ("{\"event\":\"ok\"} {\"event\":", 6, Some(1)),
        ("[{\"event\":\"x\"}]", 6, Some(0)),
        ("{\"event\":\"ok\"}{\"event\":\"ok\"}{\"time\":1}", 12, Some(2)),
        ("{\"event\":\"  \"}", 13, Some(0)),
        ("{\"event\":\"ok\"}{\"event\":\"x\",\"time\":\"1700000000\"}", 6, Some(1)),
        ("{\"event\":\"x\",\"host\":7}", 6, Some(0)),
        ("{\"event\":\"x\",\"fields\":{\"nested\":{\"a\":1}}}", 15, Some(0)),
    ];
    for (body, code, number) in cases {
        let answer = hec_post(&splunk, "/services/collector/event", &[], body.as_bytes());
        assert_eq!((answer.status, &answer.body["code"]), (400, &json!(code)), "{body}: {}", answer.body);
        assert_eq!(answer.body["invalid-event-number"].as_u64(), number, "{body}");
    }
    assert!(splunk.events().is_empty(), "a refused request stored events");
    assert_eq!(splunk.stats().malformed_rejected.len(), 9);
    assert_eq!(hec_post(&splunk, "/services/collector", &[], good.as_bytes()).status, 200);
}

#[test]
fn hec_reject_field_refuses_the_whole_request() {
    let splunk = hec(false, 0);
    splunk.set_faults(Faults { reject_field: Some("poison".into()), ..Faults::default() });
    let body = br#"{"event":{"a":1}} {"event":{"poison":1}} {"event":{"a":2}}"#;
    let answer = hec_post(&splunk, "/services/collector/event", &[], body);
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body, json!({"text": "Invalid data format", "code": 6, "invalid-event-number": 1}));
    let stats = splunk.stats();
    assert_eq!((splunk.events().len(), stats.items_failed_400, stats.malformed_rejected.len()), (0, 1, 0));
}

#[test]
fn hec_indexer_ack_flow() {
    let splunk = hec(true, 1000); // generous: the first queries must land before it
    let path = "/services/collector/event";
    let body = br#"{"event":"a"}"#;
    let missing = hec_post(&splunk, path, &[], body);
    assert_eq!((missing.status, &missing.body["code"]), (400, &json!(10)));
    let bad = hec_post(&splunk, path, &[("x-splunk-request-channel", "not-a-guid")], body);
    assert_eq!((bad.status, &bad.body["code"]), (400, &json!(11)));
    let chan = [("x-splunk-request-channel", CHANNEL)];
    assert_eq!(hec_post(&splunk, path, &chan, body).body, json!({"text": "Success", "code": 0, "ackId": 0}));
    assert_eq!(hec_post(&splunk, path, &chan, br#"{"event":"b"}"#).body["ackId"], 1);
    let other = [("x-splunk-request-channel", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")];
    assert_eq!(hec_post(&splunk, path, &other, body).body["ackId"], 0, "ack ids count per channel");
    let query = br#"{"acks":[0,1,7]}"#;
    let ack = hec_post(&splunk, "/services/collector/ack", &chan, query);
    assert_eq!(ack.body, json!({"acks": {"0": false, "1": false, "7": false}}));
    assert!(splunk.events().is_empty(), "indexed before the ack delay");
    std::thread::sleep(Duration::from_millis(1100));
    let ack = hec_post(&splunk, "/services/collector/ack", &chan, query);
    assert_eq!(ack.body, json!({"acks": {"0": true, "1": true, "7": false}}));
    let again = hec_post(&splunk, "/services/collector/ack", &chan, query);
    assert_eq!(again.body, json!({"acks": {"0": false, "1": false, "7": false}}), "a reported ack is forgotten");
    assert_eq!(splunk.events().len(), 3);
    assert_eq!(hec_post(&splunk, "/services/collector/ack", &chan, br#"{"acks":"0"}"#).body["code"], 6);
    assert_eq!(hec_post(&splunk, "/services/collector/ack", &[], query).body["code"], 10);
    let plain = hec(false, 0);
    assert_eq!(hec_post(&plain, "/services/collector/ack", &chan, query).body["code"], 14);
}

#[test]
fn hec_lost_acks_never_turn_true() {
    let splunk = hec(true, 0);
    splunk.set_faults(Faults { ack_loss_per_mille: 1000, ..Faults::default() });
    let chan = [("x-splunk-request-channel", CHANNEL)];
    let answer = hec_post(&splunk, "/services/collector/event", &chan, br#"{"event":"gone"}"#);
    assert_eq!((answer.status, &answer.body["ackId"]), (200, &json!(0)));
    std::thread::sleep(Duration::from_millis(50));
    let ack = hec_post(&splunk, "/services/collector/ack", &chan, br#"{"acks":[0]}"#);
    assert_eq!(ack.body, json!({"acks": {"0": false}}));
    assert!(splunk.events().is_empty());
    assert_eq!(splunk.stats().acks_lost, 1);
    splunk.set_faults(Faults::default());
    assert_eq!(hec_post(&splunk, "/services/collector/event", &chan, br#"{"event":"kept"}"#).body["ackId"], 1);
    assert_eq!(
        hec_post(&splunk, "/services/collector/ack", &chan, br#"{"acks":[0,1]}"#).body,
        json!({"acks": {"0": false, "1": true}})
    );
    assert_eq!(splunk.events()[0].event, "kept");
}
