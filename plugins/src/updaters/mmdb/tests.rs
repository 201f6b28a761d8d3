//! The `.mmdb` updaters against a local HTTP server serving real
//! archives built here from MaxMind's test databases: success, unchanged
//! (checksum, 304), refused credentials, wrong checksum, truncated bodies,
//! files that are not databases or of the wrong type, size bounds.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use enrichd_engine::component::Factory;
use enrichd_engine::updater::{Fetched, UpdateContext, UpdateRunner, Validators};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{MaxMindUpdater, MmdbUrlUpdater};
use crate::test_support::data;
use crate::updaters::test_server::raw_server;

const KEY: &str = "lic-7Hq2-secret";
const BASIC: &str = "Basic NDI6bGljLTdIcTItc2VjcmV0"; // base64("42:lic-7Hq2-secret")

/// A `.tar.gz` as MaxMind ships them: a dated directory with the database
/// and a licence file.
fn archive(member: &str, bytes: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (name, content) in [("LICENSE.txt", &b"test licence"[..]), (member, bytes)] {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("GeoIP2-City_20240101/{name}"), content).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn city() -> Vec<u8> {
    std::fs::read(data("GeoIP2-City-Test.mmdb")).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    enrichd_engine::to_hex(&Sha256::digest(bytes))
}

/// What the test server serves and has seen.
#[derive(Default)]
struct Remote {
    archive: Vec<u8>,
    /// Published checksum (default: the archive's).
    checksum: Option<String>,
    etag: Option<String>,
    seen: Vec<String>,
}

type Shared = Arc<Mutex<Remote>>;

async fn maxmind(
    State(remote): State<Shared>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut r = remote.lock().unwrap();
    let suffix = q.get("suffix").cloned().unwrap_or_default();
    r.seen.push(suffix.clone());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(BASIC) {
        return (StatusCode::UNAUTHORIZED, "Invalid account ID or license key").into_response();
    }
    match suffix.as_str() {
        "tar.gz.sha256" => {
            let sum = r.checksum.clone().unwrap_or_else(|| sha256(&r.archive));
            format!("{sum}  GeoIP2-City_20240101.tar.gz\n").into_response()
        }
        "tar.gz" => r.archive.clone().into_response(),
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

async fn plain(State(remote): State<Shared>, headers: HeaderMap) -> Response {
    let mut r = remote.lock().unwrap();
    let asked = headers.get("if-none-match").and_then(|v| v.to_str().ok()).map(String::from);
    r.seen.push(format!("if-none-match={}", asked.clone().unwrap_or_default()));
    if asked.is_some() && asked == r.etag {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut response = r.archive.clone().into_response();
    if let Some(etag) = &r.etag {
        response.headers_mut().insert("etag", etag.parse().unwrap());
    }
    response
}

async fn serve(remote: Shared) -> String {
    let app = axum::Router::new()
        .route("/geoip/databases/GeoIP2-City/download", axum::routing::get(maxmind))
        .route("/db", axum::routing::get(plain))
        .with_state(remote);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn runner(factory: &enrichd_engine::updater::UpdaterFactory, options: Value, target: &Path) -> Arc<dyn UpdateRunner> {
    let Value::Object(options) = options else { panic!("options are an object") };
    assert_eq!(factory.check(&options), vec![], "options check");
    let ctx = UpdateContext { name: "t".into(), base_dir: "/".into(), target: target.to_path_buf() };
    factory.build(&options, &ctx).unwrap()
}

fn maxmind_runner(base: &str, key: &str, target: &Path) -> Arc<dyn UpdateRunner> {
    let options = json!({"account_id": 42, "license_key": key, "edition_id": "GeoIP2-City", "base_url": base});
    runner(&MaxMindUpdater, options, target)
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (target, staging) = (dir.path().join("city.mmdb"), dir.path().join(".city.mmdb.update"));
    (dir, target, staging)
}

#[tokio::test]
async fn maxmind_downloads_verifies_and_then_skips_an_unchanged_edition() {
    let remote = Shared::default();
    remote.lock().unwrap().archive = archive("GeoIP2-City.mmdb", &city());
    let base = serve(remote.clone()).await;
    let (_dir, target, staging) = setup();
    let runner = maxmind_runner(&base, KEY, &target);
    let fetched = runner.fetch(&Validators::default(), &staging).await.unwrap();
    let Fetched::Staged { validators, detail } = fetched else { panic!("{fetched:?}") };
    assert_eq!(validators.digest.as_deref(), Some(sha256(&remote.lock().unwrap().archive).as_str()));
    assert!(detail.starts_with("GeoIP2-City built "), "{detail}");
    assert_eq!(std::fs::read(&staging).unwrap(), city(), "the member, byte for byte");
    std::fs::rename(&staging, &target).unwrap();
    // Same published checksum: no download.
    let seen_before = remote.lock().unwrap().seen.len();
    assert_eq!(runner.fetch(&validators, &staging).await.unwrap(), Fetched::Unchanged);
    assert_eq!(remote.lock().unwrap().seen[seen_before..], ["tar.gz.sha256"]);
    // The target gone: downloaded again whatever the checksum.
    std::fs::remove_file(&target).unwrap();
    assert!(matches!(runner.fetch(&validators, &staging).await.unwrap(), Fetched::Staged { .. }));
}

#[tokio::test]
async fn refused_credentials_say_so_without_the_key() {
    let remote = Shared::default();
    remote.lock().unwrap().archive = archive("GeoIP2-City.mmdb", &city());
    let base = serve(remote.clone()).await;
    let (_dir, target, staging) = setup();
    let wrong = "wrong-key-Zx81";
    let err = maxmind_runner(&base, wrong, &target).fetch(&Validators::default(), &staging).await.unwrap_err();
    assert!(err.contains("401") && err.contains("licence key"), "{err}");
    assert!(!err.contains(wrong) && !err.contains(KEY), "{err}");
    assert!(!staging.exists());
}

#[tokio::test]
async fn a_checksum_mismatch_is_refused() {
    let remote = Shared::default();
    remote.lock().unwrap().archive = archive("GeoIP2-City.mmdb", &city());
    remote.lock().unwrap().checksum = Some("ab".repeat(32));
    let base = serve(remote.clone()).await;
    let (_dir, target, staging) = setup();
    let err = maxmind_runner(&base, KEY, &target).fetch(&Validators::default(), &staging).await.unwrap_err();
    assert!(err.contains("differs from the published") && err.contains("not used"), "{err}");
    // A checksum file that is not one.
    remote.lock().unwrap().checksum = Some("<html>".into());
    let err = maxmind_runner(&base, KEY, &target).fetch(&Validators::default(), &staging).await.unwrap_err();
    assert!(err.contains("not a SHA-256 checksum file"), "{err}");
}

#[tokio::test]
async fn archives_without_a_valid_database_of_the_edition_are_refused() {
    let remote = Shared::default();
    let base = serve(remote.clone()).await;
    let (_dir, target, staging) = setup();
    let runner = maxmind_runner(&base, KEY, &target);
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("GeoIP2-City.mmdb", b"this is not a database".repeat(100), "not used"),
        (
            "GeoIP2-City.mmdb",
            std::fs::read(data("GeoLite2-ASN-Test.mmdb")).unwrap(),
            "\"GeoLite2-ASN\", not \"GeoIP2-City\"",
        ),
        ("Other.mmdb", city(), "holds no \"GeoIP2-City.mmdb\""),
        // Cut in the middle of the data section: metadata gone.
        ("GeoIP2-City.mmdb", city()[..city().len() / 2].to_vec(), "not used"),
    ];
    for (member, bytes, want) in cases {
        remote.lock().unwrap().archive = archive(member, &bytes);
        let err = runner.fetch(&Validators::default(), &staging).await.unwrap_err();
        assert!(err.contains(want), "{member}: {err}");
    }
    // Not even an archive: the bytes are taken as a database and refused.
    remote.lock().unwrap().archive = b"\x1f\x8bnot gzip at all".to_vec();
    let err = runner.fetch(&Validators::default(), &staging).await.unwrap_err();
    assert!(err.contains("archive"), "{err}");
}

#[tokio::test]
async fn truncated_downloads_are_refused() {
    let (_dir, target, staging) = setup();
    // The connection closes early.
    let whole = archive("GeoIP2-City.mmdb", &city());
    let url = raw_server(whole[..whole.len() / 2].to_vec(), whole.len(), Duration::ZERO).await;
    let runner = runner(&MmdbUrlUpdater, json!({ "url": url }), &target);
    let err = runner.fetch(&Validators::default(), &staging).await.unwrap_err();
    assert!(err.contains("cut off") || err.contains("truncated"), "{err}");
    // Credentials in the URL (a mirror behind basic auth, a key in the
    // query) never appear in what the error says.
    let url = raw_server(whole[..whole.len() / 2].to_vec(), whole.len(), Duration::ZERO).await;
    let secret = format!("{}?key=Qk3y-77", url.replacen("://", "://mirror:Pa55w0rd-9@", 1));
    let err = self::runner(&MmdbUrlUpdater, json!({ "url": secret }), &target)
        .fetch(&Validators::default(), &staging)
        .await
        .unwrap_err();
    assert!(err.contains("***@") && !err.contains("Pa55w0rd") && !err.contains("Qk3y"), "{err}");
    // A complete response whose content is a cut archive.
    let remote = Shared::default();
    remote.lock().unwrap().archive = whole[..whole.len() * 2 / 3].to_vec();
    let base = serve(remote).await;
    let runner = self::runner(&MmdbUrlUpdater, json!({ "url": format!("{base}/db") }), &target);
    let err = runner.fetch(&Validators::default(), &staging).await.unwrap_err();
    assert!(err.contains("truncated") || err.contains("corrupt"), "{err}");
}

#[tokio::test]
async fn url_updates_ask_conditionally_and_keep_the_type() {
    let remote = Shared::default();
    remote.lock().unwrap().archive = city(); // a bare .mmdb
    remote.lock().unwrap().etag = Some("\"v1\"".into());
    let base = serve(remote.clone()).await;
    let (_dir, target, staging) = setup();
    let runner = runner(&MmdbUrlUpdater, json!({ "url": format!("{base}/db") }), &target);
    let Fetched::Staged { validators, .. } = runner.fetch(&Validators::default(), &staging).await.unwrap() else {
        panic!("staged")
    };
    assert_eq!(validators.etag.as_deref(), Some("\"v1\""));
    std::fs::rename(&staging, &target).unwrap();
    assert_eq!(runner.fetch(&validators, &staging).await.unwrap(), Fetched::Unchanged, "304");
    assert_eq!(remote.lock().unwrap().seen.last().unwrap(), "if-none-match=\"v1\"");
    // A new version of another type: refused, the current file's type wins.
    {
        let mut r = remote.lock().unwrap();
        r.etag = Some("\"v2\"".into());
        r.archive = std::fs::read(data("GeoLite2-ASN-Test.mmdb")).unwrap();
    }
    let err = runner.fetch(&validators, &staging).await.unwrap_err();
    assert!(err.contains("the current file's type"), "{err}");
}

#[tokio::test]
async fn downloads_and_databases_are_bounded() {
    let remote = Shared::default();
    remote.lock().unwrap().archive = archive("GeoIP2-City.mmdb", &city());
    let base = serve(remote).await;
    let (_dir, target, staging) = setup();
    let url = format!("{base}/db");
    let small = runner(&MmdbUrlUpdater, json!({ "url": url, "max_download_bytes": 1000 }), &target);
    let err = small.fetch(&Validators::default(), &staging).await.unwrap_err();
    assert!(err.contains("max_download_bytes = 1000"), "{err}");
    let small = runner(&MmdbUrlUpdater, json!({ "url": url, "max_database_bytes": 1000 }), &target);
    let err = small.fetch(&Validators::default(), &staging).await.unwrap_err();
    assert!(err.contains("max_database_bytes = 1000"), "{err}");
}

#[test]
fn options_are_checked_whole() {
    let check = |f: &enrichd_engine::updater::UpdaterFactory, v: Value| {
        let Value::Object(o) = v else { unreachable!() };
        f.check(&o).into_iter().map(|e| e.field).collect::<Vec<_>>()
    };
    let fields = check(
        &MaxMindUpdater,
        json!({"account_id": "x1", "edition_id": "../etc", "base_url": "file:///", "timeout_s": 0, "license_key": ""}),
    );
    assert_eq!(fields, ["edition_id", "account_id", "license_key", "base_url", "timeout_s"]);
    assert_eq!(check(&MmdbUrlUpdater, json!({"url": "http://h/x", "sha256_url": "nope"})), ["sha256_url"]);
    assert_eq!(check(&MmdbUrlUpdater, json!({"url": "http://h/x", "extra": 1})), ["extra"]);
    // No key anywhere: the build says where to put one.
    let Value::Object(o) =
        json!({"account_id": 1, "edition_id": "GeoLite2-City", "license_key_env": "ENRICHD_TEST_NO_SUCH_VAR"})
    else {
        unreachable!()
    };
    let ctx = UpdateContext { name: "t".into(), base_dir: "/".into(), target: "/x".into() };
    let err = Factory::build(&MaxMindUpdater, &o, &ctx).err().unwrap().to_string();
    assert!(err.contains("ENRICHD_TEST_NO_SUCH_VAR"), "{err}");
}

/// A member before the database that inflates without end (a gzip bomb
/// under a harmless name) is refused once the whole archive's inflated
/// bytes pass the bound, not read to its end to be skipped.
#[test]
fn a_bomb_before_the_database_is_refused_within_the_bound() {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let bomb: u64 = 24 << 20;
    let mut header = tar::Header::new_gnu();
    header.set_size(bomb);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "GeoIP2-City_20240101/README.txt", std::io::Read::take(std::io::repeat(0), bomb))
        .unwrap();
    let db = city();
    let mut header = tar::Header::new_gnu();
    header.set_size(db.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "GeoIP2-City_20240101/GeoIP2-City.mmdb", &db[..]).unwrap();
    let archive = tar.into_inner().unwrap().finish().unwrap();
    assert!(archive.len() < 1 << 20, "{} bytes", archive.len());

    let dir = tempfile::tempdir().unwrap();
    let download = dir.path().join("download");
    std::fs::write(&download, &archive).unwrap();
    let staging = dir.path().join("staging");
    let err = super::fetch::unpack(std::fs::File::open(&download).unwrap(), &staging, None, 1 << 20).unwrap_err();
    assert!(err.contains("inflates to over"), "{err}");
    // Within the bound the same archive is fine.
    super::fetch::unpack(std::fs::File::open(&download).unwrap(), &staging, None, 16 << 20).unwrap();
}
