//! The `ti_feed` updater against a local HTTP server (ETag/304, 500,
//! truncated and slow bodies, the size cap, the shrink guard, CSV column
//! mapping, STIX bundles) and the STIX pattern reader. The TAXII updater
//! is tested end to end against medallion (tests/ti_feeds.rs).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use enrichd_engine::component::Factory;
use enrichd_engine::updater::{Fetched, UpdateContext, UpdateRunner, Validators};
use serde_json::{json, Value};
use sha2::Digest;

use super::stix::parse_pattern;
use super::TiFeedUpdater;
use crate::updaters::test_server::raw_server;

#[derive(Default)]
struct Remote {
    body: String,
    etag: Option<String>,
    status: Option<StatusCode>,
    seen: Vec<String>,
}

type Shared = Arc<Mutex<Remote>>;

async fn feed(State(remote): State<Shared>, headers: HeaderMap) -> Response {
    let mut r = remote.lock().unwrap();
    let asked = headers.get("if-none-match").and_then(|v| v.to_str().ok()).map(String::from);
    r.seen.push(asked.clone().unwrap_or_default());
    if let Some(status) = r.status {
        return (status, "upstream broke").into_response();
    }
    if asked.is_some() && asked == r.etag {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut response = r.body.clone().into_response();
    if let Some(etag) = &r.etag {
        response.headers_mut().insert("etag", etag.parse().unwrap());
    }
    response
}

async fn checksum(State(remote): State<Shared>) -> String {
    let body = remote.lock().unwrap().body.clone();
    format!("{}  feed\n", enrichd_engine::to_hex(&sha2::Sha256::digest(body.as_bytes())))
}

async fn serve(remote: Shared) -> String {
    let app = axum::Router::new()
        .route("/feed", axum::routing::get(feed))
        .route("/feed.sha256", axum::routing::get(checksum))
        .route("/wrong.sha256", axum::routing::get(|| async { format!("{}  feed\n", "0".repeat(64)) }))
        .with_state(remote);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/feed")
}

fn runner(options: Value, target: &Path) -> Arc<dyn UpdateRunner> {
    let Value::Object(options) = options else { panic!("options are an object") };
    assert_eq!(TiFeedUpdater.check(&options), vec![], "options check");
    let ctx = UpdateContext { name: "t".into(), base_dir: "/".into(), target: target.to_path_buf() };
    TiFeedUpdater.build(&options, &ctx).unwrap()
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (target, staging) = (dir.path().join("feed.csv"), dir.path().join(".feed.csv.update"));
    (dir, target, staging)
}

fn plain_list(n: usize) -> String {
    (0..n).map(|i| format!("198.51.{}.{}\n", i / 250, i % 250 + 1)).collect()
}

#[tokio::test]
async fn etag_304_and_a_failed_fetch_change_nothing() {
    let remote = Shared::default();
    remote.lock().unwrap().body = plain_list(10);
    remote.lock().unwrap().etag = Some("\"v1\"".into());
    let url = serve(remote.clone()).await;
    let (_dir, target, staging) = setup();
    let runner = runner(json!({ "url": url }), &target);
    let Fetched::Staged { validators, detail } = runner.fetch(&Validators::default(), &staging).await.unwrap() else {
        panic!("staged")
    };
    assert_eq!(detail, "plain: 10 indicators");
    assert_eq!(validators.etag.as_deref(), Some("\"v1\""));
    assert_eq!(std::fs::read_to_string(&staging).unwrap(), plain_list(10));
    std::fs::rename(&staging, &target).unwrap();
    assert_eq!(runner.fetch(&validators, &staging).await.unwrap(), Fetched::Unchanged);
    assert_eq!(remote.lock().unwrap().seen, ["", "\"v1\""], "asked conditionally the second time");
    // A 500 is an error (the core keeps the current file and validators).
    remote.lock().unwrap().status = Some(StatusCode::INTERNAL_SERVER_ERROR);
    let err = runner.fetch(&validators, &staging).await.unwrap_err();
    assert!(err.contains("500"), "{err}");
    // A key in the URL's query string stays out of the message.
    let keyed = self::runner(json!({ "url": format!("{url}?apikey=Sekr3t-key") }), &target);
    let err = keyed.fetch(&validators, &staging).await.unwrap_err();
    assert!(err.contains("500") && err.contains("/feed?***") && !err.contains("Sekr3t"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), plain_list(10));
}

#[tokio::test]
async fn truncated_slow_and_oversized_bodies_are_refused() {
    let (_dir, target, staging) = setup();
    let body = plain_list(100).into_bytes();
    // The connection closes before the announced length.
    let url = raw_server(body.clone(), body.len() + 100, Duration::ZERO).await;
    let err = runner(json!({ "url": url }), &target).fetch(&Validators::default(), &staging).await.unwrap_err();
    assert!(err.contains("cut off") || err.contains("truncated"), "{err}");
    // The body stalls past timeout_s.
    let url = raw_server(body.clone(), body.len(), Duration::from_secs(5)).await;
    let started = Instant::now();
    let err = runner(json!({ "url": url, "timeout_s": 1 }), &target)
        .fetch(&Validators::default(), &staging)
        .await
        .unwrap_err();
    assert!(err.contains("timed out") || err.contains("cut off"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    // Over the size cap.
    let url = raw_server(body.clone(), body.len(), Duration::ZERO).await;
    let err = runner(json!({ "url": url, "max_download_bytes": 500 }), &target)
        .fetch(&Validators::default(), &staging)
        .await
        .unwrap_err();
    assert!(err.contains("max_download_bytes"), "{err}");
    assert!(!target.exists());
}

#[tokio::test]
async fn a_feed_shrinking_past_max_shrink_is_held_back() {
    let remote = Shared::default();
    remote.lock().unwrap().body = plain_list(100);
    let url = serve(remote.clone()).await;
    let (_dir, target, staging) = setup();
    let runner = runner(json!({ "url": url, "max_shrink": 0.3 }), &target);
    assert!(matches!(runner.fetch(&Validators::default(), &staging).await.unwrap(), Fetched::Staged { .. }));
    std::fs::rename(&staging, &target).unwrap();
    // 75 of 100: a loss of 25%, within 30%.
    remote.lock().unwrap().body = plain_list(75);
    assert!(matches!(runner.fetch(&Validators::default(), &staging).await.unwrap(), Fetched::Staged { .. }));
    std::fs::rename(&staging, &target).unwrap();
    // 50 of 75: a third, held back.
    remote.lock().unwrap().body = plain_list(50);
    let err = runner.fetch(&Validators::default(), &staging).await.unwrap_err();
    assert!(err.contains("held back") && err.contains("50") && err.contains("75"), "{err}");
    // Garbage is refused whatever the guard says.
    remote.lock().unwrap().body = "<html>maintenance</html>\n".repeat(80);
    let err = runner.fetch(&Validators::default(), &staging).await.unwrap_err();
    assert!(err.contains("no valid indicator"), "{err}");
}

#[tokio::test]
async fn csv_columns_rename_the_feeds_header() {
    let remote = Shared::default();
    remote.lock().unwrap().body =
        "ioc,score,kind,expires\n203.0.113.9,80,c2,2030-01-01\nbad.example,40,phishing,\n".into();
    let url = serve(remote.clone()).await;
    let (_dir, target, staging) = setup();
    let options = json!({ "url": url, "format": "csv",
        "csv_columns": { "indicator": "ioc", "confidence": "score", "category": "kind", "valid_until": "expires" } });
    let Fetched::Staged { detail, .. } =
        runner(options, &target).fetch(&Validators::default(), &staging).await.unwrap()
    else {
        panic!("staged")
    };
    assert_eq!(detail, "csv: 2 indicators");
    let staged = std::fs::read_to_string(&staging).unwrap();
    assert!(staged.starts_with("indicator,confidence,category,valid_until\n"), "{staged}");
    // A declared format the body contradicts is refused.
    remote.lock().unwrap().body = plain_list(3);
    let err = runner(json!({ "url": url, "format": "zeek" }), &target)
        .fetch(&Validators::default(), &staging)
        .await
        .unwrap_err();
    assert!(err.contains("reads as plain"), "{err}");
    // Unknown columns are an options error.
    let Value::Object(bad) = json!({ "url": url, "format": "csv", "csv_columns": { "ioc": "x" } }) else { panic!() };
    assert_eq!(TiFeedUpdater.check(&bad).len(), 1);
}

#[test]
fn credentials_stay_out_of_urls_and_off_plain_http() {
    let fields = |f: &dyn Fn(&serde_json::Map<String, Value>) -> Vec<enrichd_engine::output::FieldError>, v: Value| {
        let Value::Object(o) = v else { panic!() };
        f(&o).into_iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>()
    };
    let feed = |o: &serde_json::Map<String, Value>| TiFeedUpdater.check(o);
    let errors = fields(&feed, json!({ "url": "https://bob:s3cret@intel.example/feed.csv" }));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("credentials") && !errors[0].contains("s3cret"), "{errors:?}");
    let taxii = |o: &serde_json::Map<String, Value>| super::TaxiiUpdater.check(o);
    let base = |url: &str| json!({ "url": url, "collection": "c", "user": "u", "password": "p" });
    assert!(fields(&taxii, base("http://taxii.example/taxii2/"))[0].contains("use https"));
    for fine in ["https://taxii.example/taxii2/", "http://127.0.0.1:9/taxii2/", "http://[::1]:9/", "http://localhost/"]
    {
        assert_eq!(fields(&taxii, base(fine)), Vec::<String>::new(), "{fine}");
    }
}

#[tokio::test]
async fn stix_bundles_are_converted_with_their_metadata() {
    let bundle = json!({"type": "bundle", "id": "bundle--1", "objects": [
        {"type": "indicator", "id": "indicator--a", "pattern_type": "stix",
         "pattern": "[ipv4-addr:value = '203.0.113.7'] OR [domain-name:value = 'Evil.Example']",
         "valid_from": "2024-01-01T00:00:00.000Z", "valid_until": "2031-01-01T00:00:00Z",
         "confidence": 85, "labels": ["c2", "apt,x"], "name": "C2, \"quoted\""},
        {"type": "indicator", "id": "indicator--b", "pattern_type": "stix",
         "pattern": "[file:hashes.'SHA-256' = 'aa']", "valid_from": "2024-01-01T00:00:00Z"},
        {"type": "indicator", "id": "indicator--c", "pattern_type": "stix", "revoked": true,
         "pattern": "[ipv4-addr:value = '203.0.113.8']", "valid_from": "2024-01-01T00:00:00Z"},
        {"type": "identity", "id": "identity--x", "name": "someone"}
    ]});
    let remote = Shared::default();
    remote.lock().unwrap().body = bundle.to_string();
    let url = serve(remote.clone()).await;
    let (_dir, target, staging) = setup();
    let Fetched::Staged { detail, .. } =
        runner(json!({ "url": url }), &target).fetch(&Validators::default(), &staging).await.unwrap()
    else {
        panic!("staged")
    };
    assert!(
        detail.starts_with("csv: 2 indicators; 1 revoked; 1 unsupported STIX pattern(s): indicator--b: "),
        "{detail}"
    );
    let staged = std::fs::read_to_string(&staging).unwrap();
    assert!(staged.contains("203.0.113.7,,85,\"C2, \"\"quoted\"\"\",c2|apt x,2024-01-01T00:00:00.000Z,,2031-01-01T00:00:00Z,indicator--a\n"), "{staged}");
    assert!(staged.contains("domain:evil.example,"), "{staged}");
    assert!(!staged.contains("203.0.113.8"), "revoked: {staged}");
    // Malformed JSON is an error, not a panic.
    remote.lock().unwrap().body = "{\"type\": \"bundle\", \"objects\": [".into();
    let err = runner(json!({ "url": url }), &target).fetch(&Validators::default(), &staging).await.unwrap_err();
    assert!(err.contains("not a STIX bundle"), "{err}");
}

#[test]
fn stix_patterns() {
    let ok = |p: &str| parse_pattern(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(ok("[ipv4-addr:value = '198.51.100.1']"), ["198.51.100.1"]);
    assert_eq!(ok("[ipv4-addr:value = '10.0.0.0/8']"), ["10.0.0.0/8"]);
    assert_eq!(ok("[ipv6-addr:value = '2001:db8::1']"), ["2001:db8::1"]);
    assert_eq!(ok("[domain-name:value = 'A.Example.COM.']"), ["domain:a.example.com"]);
    assert_eq!(ok("[url:value = 'https://bad.example:8443/x?y=1']"), ["domain:bad.example"]);
    assert_eq!(ok("[url:value = 'http://[2001:db8::2]/p']"), ["2001:db8::2"]);
    assert_eq!(
        ok("[ipv4-addr:value = '1.2.3.4' OR domain-name:value = 'x.example'] OR ([url:value = 'http://5.6.7.8/'])"),
        ["1.2.3.4", "domain:x.example", "5.6.7.8"]
    );
    // Escaped quotes are read (and the name then refused: `'` is no
    // domain character).
    assert!(parse_pattern(r"[domain-name:value = 'it\'s.example']").unwrap_err().contains("it's.example"));
    let err = |p: &str| parse_pattern(p).expect_err(p);
    assert!(err("[ipv4-addr:value = '1.2.3.4' AND ipv4-addr:value = '5.6.7.8']").contains("AND"));
    assert!(err("[ipv4-addr:value = '1.2.3.4'] AND [domain-name:value = 'a.example']").contains("AND"));
    assert!(err("[ipv4-addr:value = '1.2.3.4'] WITHIN 5 SECONDS").contains("WITHIN"));
    assert!(err("[ipv4-addr:value != '1.2.3.4']").contains("!="));
    assert!(err("[ipv4-addr:value LIKE '1.2.%']").contains("LIKE"));
    assert!(err("[ipv4-addr:value = '2001:db8::1']").contains("not an ipv4-addr"));
    assert!(err("[file:hashes.MD5 = 'aa']").contains("not supported"));
    assert!(err("[ipv4-addr:value = '1.2.3.4'").contains("expected"));
    assert!(err("[ipv4-addr:value = '1.2.3.4").contains("unterminated"));
    assert!(err("").contains("expected"));
    // Hostile nesting is refused, not recursed into until the stack
    // overflows (which would abort the process), on a small-stack thread.
    let deep = std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(|| {
            let brackets = format!("{}[ipv4-addr:value = '1.2.3.4']{}", "(".repeat(1500), ")".repeat(1500));
            let parens = format!("[{}ipv4-addr:value = '1.2.3.4'{}]", "(".repeat(1500), ")".repeat(1500));
            (parse_pattern(&brackets), parse_pattern(&parens))
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
    let (brackets, parens) = deep;
    assert!(brackets.unwrap_err().contains("nested deeper"));
    assert!(parens.unwrap_err().contains("nested deeper"));
    assert_eq!(ok("(([ipv4-addr:value = '1.2.3.4']))"), ["1.2.3.4"]);
}

#[tokio::test]
async fn a_published_checksum_skips_unchanged_feeds_and_refuses_mismatches() {
    let remote = Shared::default();
    remote.lock().unwrap().body = plain_list(5);
    let url = serve(remote.clone()).await;
    let (_dir, target, staging) = setup();
    let runner = runner(json!({ "url": url, "sha256_url": format!("{url}.sha256") }), &target);
    let Fetched::Staged { validators, .. } = runner.fetch(&Validators::default(), &staging).await.unwrap() else {
        panic!("staged")
    };
    std::fs::rename(&staging, &target).unwrap();
    assert_eq!(runner.fetch(&validators, &staging).await.unwrap(), Fetched::Unchanged);
    assert_eq!(remote.lock().unwrap().seen.len(), 1, "the checksum alone was asked the second time");
    let wrong = self::runner(json!({ "url": url, "sha256_url": format!("{url}/../wrong.sha256") }), &target);
    let err = wrong.fetch(&Validators::default(), &staging).await.unwrap_err();
    assert!(err.contains("is not the published"), "{err}");
}

#[test]
fn converted_files_read_back_with_their_position() {
    use super::stix::Converted;
    let mut file = super::ConvertedFile::default();
    let row = |id: &str, ip: &str| Converted::Rows { id: id.into(), rows: vec![format!("{ip},,50,,,,,,{id}")] };
    file.apply(row("indicator--a", "192.0.2.1"));
    file.apply(row("indicator--b", "192.0.2.2"));
    file.apply(Converted::Unsupported { id: "indicator--c".into(), reason: "AND is not supported: [x]".into() });
    let text = file.render(&["taxii added_after: 2026-01-01T00:00:00.000Z".into()]);
    let (mut back, cursor) = super::taxii::read_converted(&text);
    assert_eq!(cursor.as_deref(), Some("2026-01-01T00:00:00.000Z"));
    assert_eq!(back.render(&["taxii added_after: 2026-01-01T00:00:00.000Z".into()]), text);
    // A new version replaces, a revocation removes.
    back.apply(row("indicator--a", "192.0.2.9"));
    back.apply(Converted::Revoked { id: "indicator--b".into() });
    let text = back.render(&[]);
    assert!(text.contains("192.0.2.9") && !text.contains("192.0.2.1,") && !text.contains("192.0.2.2"), "{text}");
    assert!(text.contains("# unsupported\tindicator--c\tAND is not supported"), "{text}");
    // The rendered size is kept as rows come and go (TAXII bounds it while
    // reading): it equals the rows' lines of the rendered file.
    let rows_bytes = |f: &super::ConvertedFile| f.rows.values().flatten().map(|r| r.len() + 1).sum::<usize>();
    assert_eq!(back.row_bytes(), rows_bytes(&back));
    assert_eq!(file.row_bytes(), rows_bytes(&file));
    back.apply(Converted::Unsupported { id: "indicator--a".into(), reason: "x".into() });
    assert_eq!(back.row_bytes(), 0);
}

/// A TAXII server whose collection never ends (`more: true` on every
/// page) and answers each page after 300 ms: a run stops at `max_run_s`,
/// keeping what it read with its position, instead of reading for
/// `max_pages` x the page time.
#[tokio::test]
async fn a_taxii_run_stops_at_max_run_s_and_keeps_what_it_read() {
    use axum::extract::Query;
    use std::collections::HashMap;
    async fn page(Query(q): Query<HashMap<String, String>>) -> Response {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let n: u32 = q.get("next").and_then(|n| n.strip_prefix('p')).and_then(|n| n.parse().ok()).unwrap_or(0);
        let body = json!({ "more": true, "next": format!("p{}", n + 1), "objects": [
            {"type": "indicator", "id": format!("indicator--{n}"), "pattern_type": "stix",
             "pattern": format!("[ipv4-addr:value = '198.51.100.{}']", n + 1), "valid_from": "2024-01-01T00:00:00Z"}
        ]});
        let added = format!("2026-01-01T00:00:{:02}.000Z", n % 60);
        (
            [("content-type", "application/taxii+json;version=2.1"), ("x-taxii-date-added-last", added.as_str())],
            body.to_string(),
        )
            .into_response()
    }
    let app = axum::Router::new()
        .route("/taxii2/", axum::routing::get(|| async { axum::Json(json!({ "api_roots": ["/api1/"] })) }))
        .route(
            "/api1/collections/",
            axum::routing::get(|| async {
                axum::Json(json!({ "collections": [{ "id": "c1", "title": "intel", "can_read": true }] }))
            }),
        )
        .route("/api1/collections/c1/objects/", axum::routing::get(page));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let Value::Object(options) =
        json!({ "url": format!("http://{addr}/taxii2/"), "collection": "intel", "max_run_s": 1 })
    else {
        unreachable!()
    };
    assert_eq!(super::TaxiiUpdater.check(&options), vec![], "options check");
    let (_dir, target, staging) = setup();
    let ctx = UpdateContext { name: "t".into(), base_dir: "/".into(), target: target.clone() };
    let runner = super::TaxiiUpdater.build(&options, &ctx).unwrap();
    let started = Instant::now();
    let fetched = tokio::time::timeout(Duration::from_secs(30), runner.fetch(&Validators::default(), &staging))
        .await
        .expect("the run ends at max_run_s, not after max_pages (1000) pages")
        .unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(5), "{took:?}");
    let Fetched::Staged { detail, .. } = fetched else { panic!("staged") };
    let staged = std::fs::read_to_string(&staging).unwrap();
    let pages = staged.matches("198.51.100.").count();
    assert!((3..=10).contains(&pages), "{pages} pages read: {detail}\n{staged}");
    // The position is one second before the last page's `date_added`:
    // `added_after` is exclusive, and objects of that instant not read yet
    // must not be skipped.
    assert!(staged.contains(&format!("taxii added_after: 2026-01-01T00:00:{:02}Z", pages - 2)), "{staged}");

    // Out of range: refused by the options check, by name.
    let Value::Object(bad) = json!({ "url": format!("http://{addr}/taxii2/"), "collection": "intel", "max_run_s": 0 })
    else {
        unreachable!()
    };
    let errors = super::TaxiiUpdater.check(&bad);
    assert!(errors.iter().any(|e| e.field == "max_run_s"), "{errors:?}");
}

/// Every row of a pattern repeats the object's tags: an object with
/// hundreds of values and thousands of labels keeps the stage's eight tags
/// per row, each row under the loader's line cap.
#[test]
fn labels_are_capped_before_they_repeat_on_every_row() {
    use super::stix::{convert, Converted};
    let values: Vec<String> = (0..600).map(|i| format!("[ipv4-addr:value = '10.{}.{}.1']", i / 256, i % 256)).collect();
    let labels: Vec<String> = (0..2000).map(|i| format!("{i:0>64}")).collect();
    let object = json!({
        "type": "indicator", "id": "indicator--00000000-0000-4000-8000-000000000001",
        "pattern": values.join(" OR "), "pattern_type": "stix", "labels": labels,
    });
    let Converted::Rows { rows, .. } = convert(&object) else { panic!("not converted") };
    assert_eq!(rows.len(), 600);
    for row in &rows {
        assert!(row.len() < crate::ti::loader::DEFAULT_MAX_LINE_BYTES, "{} bytes", row.len());
        let tags = row.split(',').nth(4).unwrap();
        assert_eq!(tags.split('|').count(), crate::ti::meta::MAX_TAGS, "{row}");
    }
}

/// A bundle whose rows would render past the bound is refused while it is
/// converted, not after.
#[test]
fn a_bundle_that_renders_too_large_is_refused() {
    let values: Vec<String> =
        (0..600).map(|i| format!("[domain-name:value = '{}.example']", "x".repeat(40) + &i.to_string())).collect();
    let description = "d".repeat(600);
    let objects: Vec<Value> = (0..400)
        .map(|n| {
            json!({
                "type": "indicator", "id": format!("indicator--00000000-0000-4000-8000-{n:012}"),
                "pattern": values.join(" OR "), "pattern_type": "stix", "name": description,
            })
        })
        .collect();
    let bundle = json!({"type": "bundle", "id": "bundle--1", "objects": objects}).to_string();
    let error = super::bundle_to_csv(&bundle).unwrap_err();
    assert!(error.contains("MiB"), "{error}");
}

/// A key in the discovery URL's query string stays out of every error
/// (here a discovery answer that is not JSON, and one listing no root).
#[tokio::test]
async fn a_taxii_url_key_is_not_in_errors() {
    let (_dir, target, staging) = setup();
    for body in [&b"not json"[..], &b"{\"api_roots\": []}"[..]] {
        let url = raw_server(body.to_vec(), body.len(), Duration::ZERO).await;
        let Value::Object(options) = json!({ "url": format!("{url}?apikey=Sekr3t-key"), "collection": "intel" }) else {
            unreachable!()
        };
        let ctx = UpdateContext { name: "t".into(), base_dir: "/".into(), target: target.clone() };
        let runner = super::TaxiiUpdater.build(&options, &ctx).unwrap();
        let err = runner.fetch(&Validators::default(), &staging).await.unwrap_err();
        assert!(!err.contains("Sekr3t") && err.contains("?***"), "{err}");
    }
}

/// Two versions of one indicator in a bundle: the newest (`modified`)
/// wins wherever it is listed, so a revocation listed before the version
/// it revokes still removes it.
#[test]
fn the_newest_version_of_an_indicator_wins() {
    let v1 = json!({"type": "indicator", "id": "indicator--5e2c0d44-0000-4000-8000-000000000001",
        "pattern": "[ipv4-addr:value = '203.0.113.9']", "pattern_type": "stix",
        "modified": "2026-01-01T00:00:00.5Z"});
    let mut v2 = v1.clone();
    v2["modified"] = json!("2026-01-01T00:00:00.25Z");
    v2["revoked"] = json!(true);
    let mut v3 = v1.clone();
    v3["modified"] = json!("2026-01-02T00:00:00Z");
    v3["revoked"] = json!(true);
    let csv = |objects: Vec<&Value>| {
        super::bundle_to_csv(&json!({"type": "bundle", "id": "bundle--1", "objects": objects}).to_string()).unwrap().0
    };
    assert!(!csv(vec![&v3, &v1]).contains("203.0.113.9"), "the revocation is newer");
    // 00.5 is after 00.25 (as times, not as text): v1 is the newer one.
    assert!(csv(vec![&v1, &v2]).contains("203.0.113.9"));
    assert!(csv(vec![&v2, &v1]).contains("203.0.113.9"));
}

/// Indicators past their `valid_until` leave a converted file when it is
/// read back for an incremental run; current ones stay.
#[test]
fn expired_indicators_leave_the_converted_file() {
    use super::stix::convert;
    let indicator = |n: u32, valid_until: &str| {
        json!({"type": "indicator", "id": format!("indicator--5e2c0d44-0000-4000-8000-00000000000{n}"),
            "pattern": format!("[ipv4-addr:value = '203.0.113.{n}']"), "pattern_type": "stix",
            "name": "a, quoted description", "valid_until": valid_until})
    };
    let mut file = super::ConvertedFile::default();
    file.apply(convert(&indicator(1, "2020-01-01T00:00:00Z")));
    file.apply(convert(&indicator(2, "2031-01-01T00:00:00Z")));
    file.apply(convert(&indicator(3, "")));
    let (mut back, _) = super::taxii::read_converted(&file.render(&[]));
    let before = back.row_bytes();
    assert_eq!(back.drop_expired(1_800_000_000), 1);
    assert!(back.row_bytes() < before);
    let text = back.render(&[]);
    assert!(!text.contains("203.0.113.1,") && text.contains("203.0.113.2,") && text.contains("203.0.113.3,"), "{text}");
}
