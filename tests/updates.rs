//! `[[update]]` end to end (issue 15, point 2): the real binary keeps a
//! GeoIP database current from a local stand-in for MaxMind's download
//! service serving real archives built from the test databases. A new
//! edition is swapped in and answers lookups; an unchanged one is not
//! downloaded; refused credentials, a wrong checksum and a file that is no
//! database are reported while the last good database keeps serving, and
//! the licence key appears in no answer and no log line.

mod common;

use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{agent, data, Server, KEY};
use serde_json::Value;
use sha2::{Digest, Sha256};

const ADMIN: &str = "admin-key-9d1f";
const LICENCE: &str = "licence-Qm4v-do-not-log";

#[derive(Default)]
struct Remote {
    archive: Vec<u8>,
    checksum: Option<String>,
    /// Answer every request 401.
    refuse: bool,
    seen: Vec<String>,
}

type Shared = Arc<Mutex<Remote>>;

fn archive(db: &str) -> Vec<u8> {
    let bytes = std::fs::read(data(&format!("maxmind/{db}"))).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "GeoIP2-City_20240101/GeoIP2-City.mmdb", &bytes[..]).unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

async fn download(
    State(remote): State<Shared>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    use base64::Engine as _;
    let mut r = remote.lock().unwrap();
    let suffix = q.get("suffix").cloned().unwrap_or_default();
    r.seen.push(suffix.clone());
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("42:{LICENCE}")));
    if r.refuse || headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (StatusCode::UNAUTHORIZED, "Invalid license key").into_response();
    }
    match suffix.as_str() {
        "tar.gz.sha256" => {
            let sum = r.checksum.clone().unwrap_or_else(|| enrichd_engine::to_hex(&Sha256::digest(&r.archive)));
            format!("{sum}  GeoIP2-City_20240101.tar.gz\n").into_response()
        }
        "tar.gz" => r.archive.clone().into_response(),
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

/// The stand-in for MaxMind, on its own runtime thread.
fn remote() -> (Shared, String) {
    let remote = Shared::default();
    let app = axum::Router::new()
        .route("/geoip/databases/GeoIP2-City/download", axum::routing::get(download))
        .with_state(remote.clone());
    (remote, format!("http://{}", common::serve_app(app)))
}

fn run_update(server: &Server, name: &str) -> (u16, Value) {
    let reply = agent()
        .post(&server.url(&format!("/v1/updates/{name}/run")))
        .header("Authorization", format!("Bearer {ADMIN}"))
        .send_empty()
        .unwrap();
    let status = reply.status().as_u16();
    let text = reply.into_body().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

fn city_of(server: &Server, ip: &str) -> Value {
    server.post("/v1/lookup", &serde_json::json!({ "ip": ip })).json()["geo"]["city"].clone()
}

fn geoip_stage(server: &Server) -> Value {
    let doc = server.get_auth("/v1/enrichers").json();
    doc["enrichers"].as_array().unwrap().iter().find(|s| s["plugin"] == "geoip").unwrap().clone()
}

#[test]
fn a_maxmind_edition_is_kept_current_and_bad_updates_keep_the_last_good_database() {
    let (remote, base) = remote();
    remote.lock().unwrap().archive = archive("GeoIP2-City-Test.mmdb");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("geo/GeoIP2-City.mmdb");
    let config = format!(
        r#"[auth]
api_keys = ["{KEY}"]
admin_keys = ["{ADMIN}"]

[[chain]]
plugin = "geoip"
database = "{db}"

[[update]]
type = "maxmind"
name = "city"
path = "{db}"
interval_s = 3600
on_start = false
account_id = 42
edition_id = "GeoIP2-City"
base_url = "{base}"
"#,
        db = db.display()
    );
    let server = Server::start_with(&config, &[("MAXMIND_LICENSE_KEY", LICENCE)]);
    assert_eq!(geoip_stage(&server)["state"], "missing");
    assert_eq!(city_of(&server, "81.2.69.160"), Value::Null);

    // Unknown entry, wrong key kind.
    let reply = agent().post(&server.url("/v1/updates/nope/run")).header("Authorization", format!("Bearer {ADMIN}"));
    assert_eq!(reply.send_empty().unwrap().status(), 404);
    assert_eq!(server.post("/v1/updates/city/run", &Value::Null).status, 403, "an API key is not an admin key");

    // First run: downloaded, verified, swapped, live when the call answers.
    let (status, view) = run_update(&server, "city");
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["last_result"], "changed", "{view}");
    assert!(view["last_detail"].as_str().unwrap().starts_with("GeoIP2-City built "), "{view}");
    assert_eq!(view["settings"]["edition_id"], "GeoIP2-City");
    assert_eq!(city_of(&server, "81.2.69.160"), "London");
    let stage = geoip_stage(&server);
    assert_eq!(stage["state"], "loaded", "{stage}");
    let hash = stage["sources"][0]["sha256"].clone();
    assert!(stage["data_age_s"].as_u64().unwrap() > 0, "{stage}");
    assert!(stage["data_built_at"].as_u64().is_some(), "{stage}");

    // Same published checksum: no download, no swap.
    let (_, view) = run_update(&server, "city");
    assert_eq!(view["last_result"], "unchanged", "{view}");
    assert_eq!(remote.lock().unwrap().seen, ["tar.gz.sha256", "tar.gz", "tar.gz.sha256"]);
    assert_eq!(geoip_stage(&server)["sources"][0]["sha256"], hash);

    // A new edition whose archive does not match its checksum: refused.
    {
        let mut r = remote.lock().unwrap();
        r.archive = archive("GeoIP2-Country-Test.mmdb");
        r.checksum = Some("0".repeat(64));
    }
    let (_, view) = run_update(&server, "city");
    assert_eq!(view["last_result"], "failed");
    assert!(view["last_error"].as_str().unwrap().contains("differs from the published"), "{view}");
    // A database of another type (Country for a City edition): refused.
    remote.lock().unwrap().checksum = None;
    let (_, view) = run_update(&server, "city");
    assert!(view["last_error"].as_str().unwrap().contains("not \"GeoIP2-City\""), "{view}");
    // Refused credentials: reported, never the key.
    remote.lock().unwrap().refuse = true;
    let (_, view) = run_update(&server, "city");
    assert_eq!(view["state"], "failing");
    assert!(view["last_error"].as_str().unwrap().contains("401"), "{view}");
    assert_eq!(view["failures"], 3);
    // Through all of it the first database kept serving.
    assert_eq!(city_of(&server, "81.2.69.160"), "London");
    assert_eq!(geoip_stage(&server)["sources"][0]["sha256"], hash);

    let audit =
        agent().get(&server.url("/v1/audit")).header("Authorization", format!("Bearer {ADMIN}")).call().unwrap();
    let audit: Value = serde_json::from_str(&audit.into_body().read_to_string().unwrap()).unwrap();
    let swaps: Vec<&Value> =
        audit["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "data_file_updated").collect();
    assert_eq!(swaps.len(), 1, "{audit}");
    assert_eq!(swaps[0]["actor"], "updater");

    let list = server.get_auth("/v1/updates").json();
    assert_eq!(list["updates"][0]["name"], "city");
    assert!(list["types"].as_array().unwrap().iter().any(|t| t["type"] == "maxmind"));
    let prometheus = server.get("/metrics").text;
    for line in [
        "telemetry_update_changes_total{updater=\"city\"} 1",
        "telemetry_update_failures_total{updater=\"city\"} 3",
        "telemetry_update_healthy{updater=\"city\"} 0",
        "telemetry_enricher_data_age_seconds{enricher=\"geoip\"}",
    ] {
        assert!(prometheus.contains(line), "{line} in\n{prometheus}");
    }
    for text in [list.to_string(), server.metrics().to_string(), prometheus, server.log()] {
        assert!(!text.contains(LICENCE), "the licence key leaked: {text}");
    }

    // A changed [[update]] entry applies at the next start, and says so.
    let path = server.dir.path().join("config.toml");
    std::fs::write(&path, config.replace("interval_s = 3600", "interval_s = 7200")).unwrap();
    let reply = agent()
        .post(&server.url("/v1/reload"))
        .header("Authorization", format!("Bearer {ADMIN}"))
        .send_empty()
        .unwrap();
    let text = reply.into_body().read_to_string().unwrap();
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["needs_restart"], serde_json::json!(["update"]), "{answer}");
}

/// `on_start`: a missing database is fetched at start, and the state kept
/// in the state directory means a restart does not download it again.
#[test]
fn a_missing_database_is_fetched_at_start_and_not_again_after_a_restart() {
    let (remote, base) = remote();
    remote.lock().unwrap().archive = archive("GeoIP2-City-Test.mmdb");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("GeoIP2-City.mmdb");
    let config = format!(
        "[auth]\napi_keys = [\"{KEY}\"]\n[[chain]]\nplugin = \"geoip\"\ndatabase = \"{db}\"\n\
         [[update]]\ntype = \"maxmind\"\npath = \"{db}\"\naccount_id = 42\nlicense_key = \"{LICENCE}\"\n\
         edition_id = \"GeoIP2-City\"\nbase_url = \"{base}\"\n",
        db = db.display()
    );
    let mut server = Server::start_with(&config, &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while city_of(&server, "81.2.69.160") != "London" {
        assert!(std::time::Instant::now() < deadline, "not fetched at start: {}", server.get_auth("/v1/updates").text);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let view = &server.get_auth("/v1/updates").json()["updates"][0];
    assert_eq!(view["settings"]["license_key_set"], true, "{view}");
    assert!(!view.to_string().contains(LICENCE));
    server.restart();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(city_of(&server, "81.2.69.160"), "London");
    assert_eq!(remote.lock().unwrap().seen, ["tar.gz.sha256", "tar.gz"], "checked once, within interval_s");
    assert!(!server.log().contains(LICENCE));
}

/// A bad `[[update]]` entry stops the start with every problem and its line.
#[test]
fn bad_entries_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[[update]]\ntype = \"maxmind\"\nedition_id = \"x/y\"\ninterval_s = 1\n").unwrap();
    let out = common::bin().args(["serve", "--config"]).arg(&path).args(["--listen", "127.0.0.1:0"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in ["[[update]] (line 1)", "path: required", "interval_s", "edition_id"] {
        assert!(err.contains(want), "{want} in {err}");
    }
}

/// `check-config` checks `[[update]]` entries, and accepts a missing
/// database that an entry will fetch (and only that one).
#[test]
fn check_config_knows_update_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let out = common::bin().args(["check-config", "--config"]).arg(&path).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let chain = "[[chain]]\nplugin = \"geoip\"\ndatabase = \"geo/City.mmdb\"\n";
    let update = "[[update]]\ntype = \"mmdb_url\"\npath = \"geo/City.mmdb\"\nurl = \"http://127.0.0.1:9/City.mmdb\"\n";
    let (ok, out) = check(chain);
    assert!(!ok, "a missing database with nothing to fetch it: {out}");
    let (ok, out) = check(&format!("{chain}{update}"));
    assert!(ok, "{out}");
    let (ok, out) = check(&format!("{chain}{update}interval_s = 0\n"));
    assert!(!ok && out.contains("interval_s"), "{out}");
}
