//! End-to-end tests of the `/v1` API: the real binary, real HTTP.

mod common;

use std::io::Write;

use common::{test_chain, Server, KEY};
use serde_json::{json, Value};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn health_version_schema_and_headers() {
    let s = Server::start(&test_chain());
    let health = s.get("/v1/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), json!({"status": "ok"}));
    assert_eq!(health.header("x-api-version"), Some("1.0.0"));
    let generated = health.header("x-request-id").expect("generated request id");
    assert!(generated.len() >= 16);

    let echoed = common::agent().get(&s.url("/v1/health")).header("X-Request-ID", "trace-abc-123").call().unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-abc-123");

    let version = s.get("/v1/version").json();
    for key in ["version", "git_tag", "git_sha", "image_digest"] {
        assert!(version[key].is_string(), "{key} in {version}");
    }
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));

    let schema = s.get("/v1/schema").json();
    assert_eq!(schema["enriched_schema"], "enriched.v1.schema.json");
    for (format, name) in schema["input_schemas"].as_object().unwrap() {
        let doc = s.get(&format!("/v1/schema/{}", name.as_str().unwrap()));
        assert_eq!(doc.status, 200, "{format}");
        let doc = doc.json();
        assert!(doc["$schema"].as_str().unwrap().contains("json-schema.org"));
        assert!(doc["properties"]["records"].is_object(), "{format}: {doc}");
    }
    let enriched = s.get("/v1/schema/enriched.v1.schema.json").json();
    assert!(enriched.to_string().contains("matches"));
    // Built from the facts the stages declare, under their output keys.
    let record = &enriched["$defs"]["EnrichedRecord"]["properties"];
    assert!(record["ti"]["properties"]["matches"].is_object(), "{record}");
    assert_eq!(record["ti"]["x-enrichd-facts"][0]["kind"], "indicator_matches", "{record}");
    assert!(record["geo"].to_string().contains("accuracy_radius"), "{record}");
    assert_eq!(record["asn"]["x-enrichd-facts"][0]["kind"], "as_number", "{record}");
    assert!(record["enrichment_warnings"].is_object());
    let missing = s.get("/v1/schema/nope.json");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "unknown_schema");

    // Unknown routes answer JSON too, with the version header on /v1.
    let nf = s.get("/v1/nothing-here");
    assert_eq!(nf.status, 404);
    assert_eq!(nf.json()["error"], "not_found");
    assert_eq!(nf.header("x-api-version"), Some("1.0.0"));
}

#[test]
fn protected_endpoints_require_a_valid_key() {
    let s = Server::start(&test_chain());
    let body = json!({"format": "flows.v1", "records": []}).to_string();
    for (auth, expect) in [
        (None, 401),
        (Some("Bearer wrong"), 401),
        (Some("Basic dGVzdA=="), 401),
        (Some(&*format!("Bearer {KEY}")), 200),
    ] {
        let mut req = common::agent().post(&s.url("/v1/ingest"));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let mut resp = req.send(body.as_bytes()).unwrap();
        assert_eq!(resp.status().as_u16(), expect, "{auth:?}");
        assert!(resp.headers().get("x-api-version").is_some());
        let text = resp.body_mut().read_to_string().unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        if expect == 401 {
            assert_eq!(v["error"], "unauthorized");
            assert!(!text.contains("wrong"), "the presented key is never echoed: {text}");
        }
    }
    for path in ["/v1/lookup", "/v1/outputs/elastic", "/v1/outputs/splunk"] {
        let r = common::agent().post(&s.url(path)).send("{}".as_bytes()).unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    assert_eq!(common::agent().get(&s.url("/v1/enrichers")).call().unwrap().status().as_u16(), 401);
    // Health, version, schema and metrics are public by default.
    assert_eq!(s.get("/v1/metrics").status, 200);
}

#[test]
fn no_configured_key_fails_closed() {
    let s = Server::start_with(&test_chain(), &[]);
    let r = s.ingest("flows.v1", json!([]));
    assert_eq!(r.status, 401);
    // An empty bearer token is not a key either.
    let r =
        common::agent().post(&s.url("/v1/ingest")).header("Authorization", "Bearer ").send("{}".as_bytes()).unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[test]
fn api_key_from_environment() {
    let s = Server::start_with(&test_chain(), &[("API_KEY", KEY)]);
    assert_eq!(s.ingest("flows.v1", json!([])).status, 200);
}

#[test]
fn ingest_flows_enriches_and_passes_fields_through() {
    let s = Server::start(&test_chain());
    let body = br#"{"collector_id":"lab-1","format":"flows.v1","records":[
        {"ts":1723351200.456,"src_ip":"45.149.3.7","dst_ip":"81.2.69.160","src_port":51515,"dst_port":445,"protocol":"tcp","bytes":1024,"packets":10,"custom":{"nested":[1,2.50,"x"]},"note":"caf\u00e9"},
        {"ts":1723351201,"src_ip":"10.0.0.1","dst_ip":"2001:480::1","src_port":1,"dst_port":53,"proto":17},
        {"src_ip":"not-an-ip","dst_ip":"1.128.0.1","proto":"udp"}
    ]}"#;
    let r = s.post_raw("/v1/ingest", body, &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    // Unknown fields come back byte for byte (number formatting, escapes).
    assert!(r.text.contains(r#""custom":{"nested":[1,2.50,"x"]},"note":"caf\u00e9""#), "{}", r.text);
    let v = r.json();
    assert_eq!(v["collector_id"], "lab-1");
    assert_eq!(v["format"], "flows.v1");
    assert_eq!(v["count"], 3);
    let recs = v["records"].as_array().unwrap();

    // GeoIP2-City-Test: 81.2.69.160 is London, GB.
    assert_eq!(recs[0]["geo"]["country"], "GB");
    assert_eq!(recs[0]["geo"]["city"], "London");
    let matches = recs[0]["ti"]["matches"].as_array().unwrap();
    assert_eq!(matches.len(), 1, "{matches:?}");
    assert_eq!(matches[0]["indicator"], "45.149.3.0/24");
    assert_eq!(matches[0]["field"], "src_ip");
    assert_eq!(recs[0]["bytes"], 1024);

    // IPv6 destination, numeric proto.
    assert!(recs[1]["geo"].is_object() || recs[1]["geo"].is_null());
    assert_eq!(recs[1]["ti"]["matches"], json!([]));

    // An invalid address is kept, noted, and the other address still enriched.
    assert_eq!(recs[2]["src_ip"], "not-an-ip");
    let warnings = recs[2]["enrichment_warnings"].as_array().unwrap();
    assert!(warnings[0].as_str().unwrap().contains("src_ip"), "{warnings:?}");
    assert_eq!(recs[2]["asn"]["asn"], 1221);
    assert_eq!(recs[2]["asn"]["org"], "Telstra Pty Ltd");

    let m = s.metrics();
    assert_eq!(m["records_processed"], 3);
    assert_eq!(m["totals"]["events"], 3);
    assert_eq!(m["totals"]["batches"], 1);
    assert_eq!(m["totals"]["threat_matches"], 1);
}

#[test]
fn ingest_zeek_dotted_and_underscore_names_and_aliases() {
    let s = Server::start(&test_chain());
    let records = json!([
        {"ts": 1723351200.5, "uid": "CAbc1", "id.orig_h": "94.26.1.1", "id.orig_p": 40000, "id.resp_h": "81.2.69.160", "id.resp_p": 22, "proto": "tcp", "conn_state": "SF", "orig_bytes": 10},
        {"ts": 1723351200.5, "id_orig_h": "10.1.2.3", "id_orig_p": 55342, "id_resp_h": "45.149.3.200", "id_resp_p": 53, "proto": "udp", "service": "dns"},
        {"ts": "2024-04-20T00:00:01Z", "id.orig_h": "2001:db8::1", "id.resp_h": "2001:db8::2", "query": "A.B.Evil-Example.com"}
    ]);
    for format in ["zeek.conn.v1", "zeek", "zeek.conn"] {
        let r = s.ingest(format, records.clone());
        assert_eq!(r.status, 200, "{format}: {}", r.text);
        let v = r.json();
        assert_eq!(v["format"], "zeek.conn.v1");
        let recs = v["records"].as_array().unwrap();
        assert_eq!(recs[0]["ti"]["matches"][0]["indicator"], "94.26.0.0/16");
        assert_eq!(recs[0]["ti"]["matches"][0]["field"], "src_ip");
        assert_eq!(recs[0]["geo"]["city"], "London");
        assert_eq!(recs[0]["uid"], "CAbc1");
        assert_eq!(recs[1]["ti"]["matches"][0]["field"], "dst_ip");
        let dm = &recs[2]["ti"]["matches"][0];
        assert_eq!(dm["indicator"], "evil-example.com");
        assert_eq!(dm["field"], "query");
        assert_eq!(recs[2]["ts"], "2024-04-20T00:00:01Z");
    }
}

#[test]
fn record_keys_the_chain_writes_are_replaced_not_duplicated() {
    let s = Server::start(&test_chain());
    let r = s.ingest("flows.v1", json!([{"src_ip": "45.149.3.1", "geo": "client value", "ti": 1, "keep": true}]));
    assert_eq!(r.status, 200);
    assert_eq!(r.text.matches("\"geo\"").count(), 1, "{}", r.text);
    assert_eq!(r.text.matches("\"ti\"").count(), 1, "{}", r.text);
    let rec = &r.json()["records"][0];
    assert_eq!(rec["keep"], true);
    assert_eq!(rec["ti"]["matches"][0]["indicator"], "45.149.3.0/24");
}

fn assert_client_error(r: &common::Reply, status: u16, code: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"], code, "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    v
}

#[test]
fn bad_input_gets_a_precise_4xx_and_nothing_is_counted() {
    let s = Server::start(&test_chain());
    assert_client_error(&s.post_raw("/v1/ingest", b"{not json", &[]), 400, "invalid_json");
    assert_client_error(&s.post_raw("/v1/ingest", b"", &[]), 400, "bad_batch_shape");
    assert_client_error(&s.post_raw("/v1/ingest", b"[1,2]", &[]), 400, "bad_batch_shape");
    assert_client_error(&s.post_raw("/v1/ingest", b"42", &[]), 400, "bad_batch_shape");
    assert_client_error(&s.post_raw("/v1/ingest", &[0xff, 0xfe, b'{'], &[]), 400, "invalid_encoding");
    assert_client_error(&s.post("/v1/ingest", &json!({"records": []})), 400, "missing_format");
    assert_client_error(&s.ingest("netflow.v9", json!([])), 400, "unsupported_format");
    let v = assert_client_error(&s.post("/v1/ingest", &json!({"format": 5, "records": []})), 400, "invalid_field");
    assert_eq!(v["field"], "format");
    let v = assert_client_error(
        &s.post("/v1/ingest", &json!({"format": "flows.v1", "records": {"a": 1}})),
        400,
        "invalid_field",
    );
    assert_eq!(v["field"], "records");
    let v = assert_client_error(
        &s.post("/v1/ingest", &json!({"format": "flows.v1", "collector_id": ["x"], "records": []})),
        400,
        "invalid_field",
    );
    assert_eq!(v["field"], "collector_id");

    let v =
        assert_client_error(&s.ingest("flows.v1", json!([{"src_ip": "1.1.1.1"}, {}, "oops"])), 400, "invalid_record");
    assert_eq!(v["record_index"], 2);
    assert!(v["detail"].as_str().unwrap().contains("record 2"));
    let v = assert_client_error(
        &s.ingest("flows.v1", json!([{}, {"src_ip": "1.1.1.1", "dst_port": "https"}])),
        400,
        "invalid_record",
    );
    assert_eq!(v["record_index"], 1);
    assert_eq!(v["field"], "dst_port");
    let v = assert_client_error(&s.ingest("flows.v1", json!([{"dst_port": 70000}])), 400, "invalid_record");
    assert_eq!(v["field"], "dst_port");
    let v = assert_client_error(&s.ingest("zeek", json!([{"orig_bytes": -5}])), 400, "invalid_record");
    assert_eq!(v["field"], "orig_bytes");
    let v = assert_client_error(&s.ingest("flows.v1", json!([{"src_ip": 12345}])), 400, "invalid_record");
    assert_eq!(v["field"], "src_ip");
    let v = assert_client_error(&s.ingest("flows.v1", json!([{"proto": 300}])), 400, "invalid_record");
    assert_eq!(v["field"], "proto");

    let m = s.metrics();
    assert_eq!(m["records_processed"], 0, "a refused batch is not half-processed: {m}");
    assert_eq!(m["totals"]["batches_rejected"], 16);
    assert!(m["requests_failed"].as_u64().unwrap() >= 16);
    // And the server still works.
    assert_eq!(s.ingest("flows.v1", json!([{"src_ip": "45.149.3.9"}])).status, 200);
}

#[test]
fn record_count_limit() {
    let s = Server::start(&test_chain());
    let record = json!({"src_ip": "10.0.0.1", "dst_ip": "10.0.0.2"});
    let at_limit = vec![record.clone(); 10_000];
    let r = s.ingest("flows.v1", json!(at_limit));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["count"], 10_000);
    let over = vec![record; 10_001];
    let v = assert_client_error(&s.ingest("flows.v1", json!(over)), 413, "too_many_records");
    assert_eq!(v["limit"], 10_000);
    assert_eq!(v["observed"], 10_001);
    // Far more: the records are read no further than one past the limit.
    let far = vec![json!({}); 200_000];
    let v = assert_client_error(&s.ingest("flows.v1", json!(far)), 413, "too_many_records");
    assert_eq!(v["observed"], 10_001, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("at least 10001 (max 10000)"), "{v}");
}

fn padded_body(total: usize) -> Vec<u8> {
    let head = br#"{"format":"flows.v1","records":[{"src_ip":"45.149.3.1","pad":""#;
    let tail = br#""}]}"#;
    let mut body = head.to_vec();
    body.resize(total - tail.len(), b'a');
    body.extend_from_slice(tail);
    body
}

/// Sends a request head declaring `declared` body bytes plus `part` of the
/// body, and reads the answer.
fn raw_exchange(s: &Server, declared: usize, part: &[u8]) -> (u16, String) {
    use std::io::Read;
    let addr = s.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /v1/ingest HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(part);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[test]
fn body_size_limits_count_real_bytes() {
    let s = Server::start(&test_chain());
    let limit = 5 * 1024 * 1024;
    assert_eq!(s.post_raw("/v1/ingest", &padded_body(limit), &[]).status, 200, "exactly the limit is accepted");
    // Over the limit by one byte: refused from the declared length, before
    // the body is read (so speak raw HTTP: a client still sending the body
    // may see the connection close under it).
    let (status, body) = raw_exchange(&s, limit + 1, &padded_body(1024));
    assert_eq!(status, 413, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "batch_too_large");

    // Chunked transfer (no Content-Length): counted as it arrives.
    let big = padded_body(limit + 100);
    let mut reader = &big[..];
    let r = common::agent()
        .post(&s.url("/v1/ingest"))
        .header("Authorization", format!("Bearer {KEY}"))
        .send(ureq::SendBody::from_reader(&mut reader));
    match r {
        Ok(mut resp) => {
            assert_eq!(resp.status().as_u16(), 413);
            assert_eq!(resp.body_mut().read_json::<Value>().unwrap()["error"], "batch_too_large");
        }
        // The server may answer and close before the client finished sending.
        Err(e) => assert!(matches!(e, ureq::Error::Io(_)), "{e}"),
    }
    let small = padded_body(1000);
    let mut reader = &small[..];
    let resp = common::agent()
        .post(&s.url("/v1/ingest"))
        .header("Authorization", format!("Bearer {KEY}"))
        .send(ureq::SendBody::from_reader(&mut reader))
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // gzip: accepted, and the limit holds on the inflated size (a bomb).
    let r = s.post_raw("/v1/ingest", &gzip(&padded_body(4096)), &[("Content-Encoding", "gzip")]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["records"][0]["ti"]["matches"][0]["indicator"], "45.149.3.0/24");
    let bomb = gzip(&padded_body(limit + 1));
    assert!(bomb.len() < 100_000, "compresses well");
    assert_client_error(&s.post_raw("/v1/ingest", &bomb, &[("Content-Encoding", "gzip")]), 413, "batch_too_large");
    assert_client_error(
        &s.post_raw("/v1/ingest", b"not gzip", &[("Content-Encoding", "gzip")]),
        400,
        "decompress_failed",
    );
    assert_client_error(&s.post_raw("/v1/ingest", b"{}", &[("Content-Encoding", "br")]), 415, "unsupported_encoding");
    assert_eq!(s.metrics()["requests_by_class"]["5xx"], 0);
}

#[test]
fn lookup_endpoint() {
    let s = Server::start(&test_chain());
    let v = s.post("/v1/lookup", &json!({"ip": "81.2.69.160"})).json();
    assert_eq!(v["ip"], "81.2.69.160");
    assert_eq!(v["geo"]["country"], "GB");
    assert!(v["asn"].is_null(), "not in the ASN test DB: {v}");
    assert_eq!(v["threats"], json!([]));
    assert_eq!(v["ti"]["matches"], json!([]));

    let v = s.post("/v1/lookup", &json!({"ip": "45.149.3.77"})).json();
    assert_eq!(v["threats"][0]["indicator"], "45.149.3.0/24");
    assert_eq!(v["ti"]["matches"][0]["indicator"], "45.149.3.0/24");

    let v = s.post("/v1/lookup", &json!({"ip": "2001:480::1"})).json();
    assert_eq!(v["ip"], "2001:480::1");
    assert!(v.get("geo").is_some());

    let v = s.post("/v1/lookup", &json!({"ip": "1.128.0.1"})).json();
    assert_eq!(v["asn"]["asn"], 1221);

    assert_client_error(&s.post("/v1/lookup", &json!({})), 400, "missing_ip");
    assert_client_error(&s.post("/v1/lookup", &json!({"ip": ""})), 400, "missing_ip");
    assert_client_error(&s.post("/v1/lookup", &json!({"ip": "999.1.1.1"})), 400, "invalid_ip");
    assert_client_error(&s.post("/v1/lookup", &json!({"ip": 7})), 400, "invalid_ip");
    assert_client_error(&s.post_raw("/v1/lookup", b"nope", &[]), 400, "invalid_json");
}

#[test]
fn metrics_are_exact() {
    let s = Server::start(&test_chain());
    let before = s.metrics();
    for i in 0..5 {
        let records: Vec<Value> =
            (0..20).map(|j| json!({"src_ip": if j % 10 == 0 { "45.149.3.1" } else { "10.0.0.1" }, "n": i})).collect();
        assert_eq!(s.ingest("flows.v1", json!(records)).status, 200);
    }
    let after = s.metrics();
    assert_eq!(after["records_processed"], 100);
    assert_eq!(after["totals"]["events"], 100);
    assert_eq!(after["totals"]["batches"], 5);
    assert_eq!(after["totals"]["threat_matches"], 10);
    // Every request is counted, including the metrics reads themselves.
    assert_eq!(after["requests_total"].as_u64().unwrap(), before["requests_total"].as_u64().unwrap() + 6);
    let stages = after["enrichers"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    assert!(stages.iter().all(|st| st["events"] == 100), "{stages:?}");
}

#[test]
fn output_settings_are_stored_without_echoing_secrets() {
    let s = Server::start(&test_chain());
    let r = s.post(
        "/v1/outputs/elastic",
        &json!({"url": "https://es.example:9200", "username": "elastic", "password": "hunter2-secret", "index": "sec"}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(!r.text.contains("hunter2"), "{}", r.text);
    let v = r.json();
    assert_eq!(v["status"], "configured");
    assert_eq!(v["url"], "https://es.example:9200");
    assert_eq!(v["password_set"], true);

    let r = s.post(
        "/v1/outputs/splunk",
        &json!({"hec_url": "https://splunk.example:8088/services/collector", "token": "tok-SECRET-123"}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(!r.text.contains("SECRET"));
    assert_eq!(r.json()["status"], "configured");

    let shown = s.get_auth("/v1/outputs");
    assert!(!shown.text.contains("hunter2") && !shown.text.contains("SECRET"), "{}", shown.text);
    let splunk = shown.json()["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "splunk").cloned().unwrap();
    assert_eq!(splunk["settings"]["token_set"], true);

    assert_client_error(
        &s.post("/v1/outputs/splunk", &json!({"hec_url": "ftp://x", "token": "t"})),
        422,
        "invalid_settings",
    );
    assert_client_error(
        &s.post("/v1/outputs/splunk", &json!({"hec_url": "https://x.example"})),
        422,
        "invalid_settings",
    );
    assert_client_error(&s.post("/v1/outputs/elastic", &json!({"username": "u"})), 422, "invalid_settings");
    assert_client_error(&s.post_raw("/v1/outputs/elastic", b"[", &[]), 400, "invalid_json");
}

#[test]
fn enrichers_report_state_version_and_hash() {
    let chain = format!(
        "{}\n[[chain]]\nplugin = \"geoip\"\nname = \"geo-missing\"\ndatabase = \"/nonexistent/GeoLite2-City.mmdb\"\ntargets = [{{ address = \"source\", output = \"src_geo\" }}]\n",
        test_chain()
    );
    let s = Server::start(&chain);
    let v = s.get_auth("/v1/enrichers").json();
    let stages = v["enrichers"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|st| st["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["geoip", "asn", "ti", "geo-missing"]);
    for st in &stages[..3] {
        assert_eq!(st["state"], "loaded", "{st}");
        let sha = st["sources"][0]["sha256"].as_str().unwrap();
        assert_eq!(sha.len(), 64);
        assert!(st["sources"][0]["loaded_at"].is_string());
        assert!(st["version"].is_string());
    }
    assert_eq!(stages[3]["state"], "missing");
    let details = s.get_auth("/v1/health/details").json();
    assert_eq!(details["status"], "degraded");
    // Missing data degrades enrichment, not the service.
    let r = s.ingest("flows.v1", json!([{"src_ip": "81.2.69.160"}]));
    assert_eq!(r.status, 200);
    assert!(r.json()["records"][0]["src_geo"].is_null());
}

/// `--log-format json` (here through its environment variable) with the
/// access log on: one JSON object per line, the request's fields as
/// values, a valid key named by its id and never by itself, and admin
/// changes logged at info with the admin key's id.
#[test]
fn json_access_log_names_keys_by_id_only() {
    const ADMIN: &str = "admin-key-51c0e2";
    let config = format!(
        "[auth]\napi_keys = [\"{KEY}\"]\nadmin_keys = [\"{ADMIN}\"]\n[server]\naccess_log = true\n{}",
        test_chain()
    );
    let s = Server::start_with(&config, &[("ENRICHD_LOG_FORMAT", "json")]);
    assert_eq!(s.post("/v1/ingest", &json!({"format": "flows.v1", "records": [{"src_ip": "1.2.3.4"}]})).status, 200);
    let r = common::agent()
        .post(&s.url("/v1/reload"))
        .header("Authorization", &format!("Bearer {ADMIN}"))
        .header("X-Request-ID", "trace-reload-1")
        .send_empty()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(s.get("/v1/nope").status, 404);
    std::thread::sleep(std::time::Duration::from_millis(300));

    let log = s.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    let id = |key: &str| {
        use sha2::Digest;
        sha2::Sha256::digest(key.as_bytes())[..6].iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let access: Vec<&Value> = lines.iter().filter(|l| l["target"] == "enrichd::access").collect();
    let ingest = access.iter().find(|l| l["path"] == "/v1/ingest").expect("ingest logged");
    assert_eq!((ingest["method"].as_str(), ingest["status"].as_u64()), (Some("POST"), Some(200)), "{ingest}");
    assert_eq!((ingest["route"].as_str(), ingest["key_id"].as_str()), (Some("ingest"), Some(&*id(KEY))));
    assert!(ingest["duration_ms"].as_f64().unwrap() >= 0.0);
    let reload = access.iter().find(|l| l["path"] == "/v1/reload").expect("reload logged");
    assert_eq!((reload["request_id"].as_str(), reload["key_id"].as_str()), (Some("trace-reload-1"), Some(&*id(ADMIN))));
    let missing = access.iter().find(|l| l["path"] == "/v1/nope").expect("404 logged");
    assert_eq!((missing["status"].as_u64(), missing["key_id"].as_str()), (Some(404), Some("")));
    let admin = lines.iter().find(|l| l["message"] == "reload requested through the API").expect("admin action");
    assert_eq!((admin["level"].as_str(), admin["key_id"].as_str()), (Some("INFO"), Some(&*id(ADMIN))));
    // Loaded stages log their version as a value, not `Some("...")`.
    let loaded = lines.iter().find(|l| l["message"] == "enricher loaded").expect("stage log");
    assert!(!loaded["version"].as_str().unwrap().starts_with("Some("), "{loaded}");
    assert!(!log.contains(KEY) && !log.contains(ADMIN), "a key in the log");
}

/// With several keys and none of them admin (collectors' keys, a viewer's
/// key), no key may redirect the enriched events: output changes need an
/// admin key then. A single key (the reference project's `API_KEY`) still
/// may, as the single-key tests above show.
#[test]
fn several_keys_without_an_admin_cannot_change_outputs() {
    let s = Server::start_with(
        &format!("[auth]\napi_keys = [\"{KEY}\", \"collector-key-2f9c\"]\n{}", common::test_chain()),
        &[],
    );
    let answer = s.post("/v1/outputs/elastic", &json!({"url": "https://attacker.example:9200"}));
    assert_client_error(&answer, 403, "admin_disabled");
    assert_eq!(s.get_auth("/v1/outputs").json()["outputs"], json!([]), "nothing configured");
}

/// A lone key that may only read (a dashboard's, with events arriving from
/// brokers) is not the reference project's single `API_KEY`: it must not
/// redirect the enriched events either.
#[test]
fn a_lone_read_only_key_cannot_change_outputs() {
    let viewer = "viewer-key-5c1e77";
    let s = Server::start_with(
        &format!(
            "[auth]\n[[auth.keys]]\nname = \"viewer\"\nkey_env = \"VIEWER_KEY\"\nscopes = [\"read\"]\n{}",
            common::test_chain()
        ),
        &[("VIEWER_KEY", viewer)],
    );
    let answer = common::agent()
        .put(&s.url("/v1/outputs/elastic"))
        .header("Authorization", format!("Bearer {viewer}"))
        .header("Content-Type", "application/json")
        .send(json!({"url": "https://attacker.example:9200"}).to_string().as_bytes())
        .unwrap();
    assert_eq!(answer.status().as_u16(), 403);
    let mut listed =
        common::agent().get(&s.url("/v1/outputs")).header("Authorization", format!("Bearer {viewer}")).call().unwrap();
    let listed: Value = serde_json::from_str(&listed.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(listed["outputs"], json!([]), "nothing configured");
}
