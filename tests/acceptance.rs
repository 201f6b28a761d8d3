//! The reference validation run (issue 5, section 4), automated.
//!
//! A fresh `enrichd` with API key `TEST_KEY`, the sample indicators, the
//! full GeoLite2 City and ASN databases and the default risk rule gets
//! 2,000 `flows.v1` events in 20 batches of 100, 0.1 s apart (one source in
//! ten in 45.149.3.0/24, destination 8.8.8.8, ports from the reference set,
//! 200..5,000,000 bytes). Right after, the metrics must show rates, moving
//! time series, queue lag, growing request counts and threat matches, and
//! the dashboard in a real Chromium must show the same numbers.
//!
//! The GeoLite2 databases come from `../shared/testdata` (beside the clone;
//! CI has it). Without them the test is skipped with a message, or fails
//! under `CI=true`. Without a browser only the dashboard half is skipped
//! (a failure under `CI=true`).

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/traffic.rs"]
mod traffic;

use std::path::PathBuf;
use std::time::Duration;

use browser::{Browser, TILES};
use common::{repo, Server};
use serde_json::{json, Value};

const TEST: &str = "reference_validation_run";
const API_KEY: &str = "TEST_KEY";

fn geolite2() -> Option<(PathBuf, PathBuf)> {
    let dir = repo().join("../shared/testdata/mmdb/geolite2-2018-02");
    let (city, asn) = (dir.join("GeoLite2-City.mmdb"), dir.join("GeoLite2-ASN.mmdb"));
    if city.is_file() && asn.is_file() {
        return Some((city, asn));
    }
    browser::skip_or_fail(
        TEST,
        &format!("the full GeoLite2 databases are not at {}", dir.display()),
        "put the shared test data (testdata/mmdb/geolite2-2018-02/GeoLite2-{City,ASN}.mmdb) in ../shared beside this clone",
    );
    None
}

fn call(s: &Server, method: &str, path: &str, body: Option<&Value>) -> Value {
    let agent = common::agent();
    let url = s.url(path);
    let auth = format!("Bearer {API_KEY}");
    let resp = match body {
        Some(body) => agent
            .post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes()),
        None => agent.get(&url).header("Authorization", &auth).call(),
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().with_config().limit(64 << 20).read_to_string().expect("body");
    assert_eq!(status, 200, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
}

/// A number in the metrics document by JSON pointer, e.g. `/rates/epm_1m`.
fn num(m: &Value, pointer: &str) -> f64 {
    m.pointer(pointer).and_then(Value::as_f64).unwrap_or_else(|| panic!("metrics {pointer} is not a number: {m:#}"))
}

/// Non-flat: the series holds at least two different values and some
/// traffic (a positive value). `null` (no events in a bucket) counts as a
/// value of its own.
fn assert_non_flat(name: &str, series: &Value) {
    let points = series.as_array().unwrap_or_else(|| panic!("timeseries.last_5m.{name} is not an array: {series}"));
    assert!(!points.is_empty(), "timeseries.last_5m.{name} is empty");
    let values: Vec<&Value> = points.iter().map(|p| &p[1]).collect();
    assert!(values.iter().any(|v| v != &values[0]), "timeseries.last_5m.{name} is flat: {series}");
    assert!(values.iter().any(|v| v.as_f64().is_some_and(|x| x > 0.0)), "timeseries.last_5m.{name} has no traffic");
    let stamps: Vec<u64> = points.iter().map(|p| p[0].as_u64().expect("ts_ms")).collect();
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "timeseries.last_5m.{name} timestamps not increasing");
}

#[test]
fn reference_validation_run() {
    let Some((city, asn)) = geolite2() else { return };
    let config = format!(
        "[[chain]]\nplugin = \"geoip\"\ndatabase = \"{}\"\n\n[[chain]]\nplugin = \"asn\"\ndatabase = \"{}\"\n\n\
         [[chain]]\nplugin = \"ti\"\npaths = [\"{}\"]\n\n\
         [[chain]]\nplugin = \"wasm\"\nname = \"risk\"\nmodule = \"{}\"\nrole = \"rule\"\n",
        city.display(),
        asn.display(),
        repo().join("ti/indicators.txt").display(),
        repo().join("rules/risk.wasm").display(),
    );
    let s = Server::start_with(&config, &[("API_KEY", API_KEY)]);

    // Lookup: geo and ASN of 8.8.8.8 (values as mmdblookup reads them).
    let found = call(&s, "POST", "/v1/lookup", Some(&json!({"ip": "8.8.8.8"})));
    assert_eq!(found["geo"]["country"], "US", "{found}");
    assert_eq!(found["asn"]["asn"], 15169, "{found}");

    // The reference traffic: 20 batches of 100, 0.1 s apart.
    let mut flows = traffic::Flows::new(2026);
    for i in 0..20 {
        let batch = flows.batch(100, "8.8.8.8", 10);
        let reply = call(&s, "POST", "/v1/ingest", Some(&batch));
        assert_eq!(reply["count"], 100, "batch {i}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Right after.
    let m = call(&s, "GET", "/v1/metrics", None);
    assert_eq!(m["totals"]["events"], 2000, "{}", m["totals"]);
    assert_eq!(m["totals"]["batches"], 20, "{}", m["totals"]);
    assert!(num(&m, "/rates/epm_1m") > 0.0, "rates: {}", m["rates"]);
    assert!(num(&m, "/rates/bpm_1m") > 0.0, "rates: {}", m["rates"]);
    let last_5m = m["timeseries"]["last_5m"].as_object().expect("timeseries.last_5m");
    for name in ["eps", "bpm", "threats", "avg_risk"] {
        assert!(last_5m.contains_key(name), "timeseries.last_5m.{name} missing");
    }
    for (name, series) in last_5m {
        assert_non_flat(name, series);
    }
    assert!(num(&m, "/queue/lag_ms_p95") > 0.0, "queue: {}", m["queue"]);
    // One event in ten has a listed source; 8.8.8.8 is in no list.
    assert_eq!(m["totals"]["events_with_threats"], 200, "{}", m["totals"]);
    assert!(num(&m, "/totals/threat_matches") >= 200.0, "{}", m["totals"]);
    let again = call(&s, "GET", "/v1/metrics", None);
    assert!(
        num(&again, "/requests_total") > num(&m, "/requests_total"),
        "requests_total did not increase between two reads: {} -> {}",
        m["requests_total"],
        again["requests_total"]
    );

    let Some(mut b) = Browser::launch(TEST) else { return };
    dashboard_shows_it(&mut b, &s, &again);
}

fn dashboard_shows_it(b: &mut Browser, s: &Server, m: &Value) {
    b.goto(&s.url("/"));
    b.wait_for("the live stream", Duration::from_secs(10), |b| (b.connection() == "live").then_some(()));
    // An operator's view: addresses and indicators are shown with a key.
    b.enter_key(API_KEY);
    // Wait until the tiles show the run's totals (the first event after load).
    let threat_matches = num(m, "/totals/threat_matches");
    b.wait_for("the run's totals on the tiles", Duration::from_secs(10), |b| {
        (b.tile("events").sub == Some(2000.0) && b.tile("threats").value == Some(threat_matches)).then_some(())
    });

    let positive = |b: &Browser, name: &str| {
        let tile = b.tile(name);
        assert!(tile.value.is_some_and(|v| v > 0.0), "tile {name} should show a positive figure: {tile:?}");
        tile.value.unwrap()
    };
    positive(b, "events");
    assert_eq!(b.tile("batches").value, Some(20.0));
    positive(b, "sources");
    let risk = b.tile("risk").value.expect("Avg Risk shown");
    let api_risk = num(m, "/totals/avg_risk");
    assert!((risk - api_risk).abs() < 1e-6, "Avg Risk tile {risk} vs API {api_risk}");
    positive(b, "lag");
    assert!(positive(b, "requests") >= num(m, "/requests_total"), "Requests tile behind the API");
    for name in TILES {
        let tile = b.tile(name);
        assert!(tile.values >= 1 && tile.drawn, "sparkline {name} draws nothing: {tile:?}");
    }
    assert!(b.attr("chart-epm", "data-points").unwrap().parse::<u32>().unwrap() >= 1);
    assert_eq!(b.attr("epm-empty", "hidden").as_deref(), Some("true"), "events/min chart says no traffic");

    let (_, countries) = b.rows("top-dst_countries");
    assert!(countries.contains("US"), "top destination countries: {countries}");
    let (_, asns) = b.rows("top-asns");
    assert!(asns.contains("15169"), "top ASNs: {asns}");
    let (_, indicators) = b.rows("top-indicators");
    assert!(indicators.contains("45.149.3.0/24"), "top indicators: {indicators}");
    let (n, _) = b.rows("top-sources");
    assert!(n >= 1);
    let (n, feed) = b.rows("feed");
    assert!(n >= 1 && feed.contains("8.8.8.8") && feed.contains("45.149.3."), "high-risk feed: {feed}");
    let (n, chain) = b.rows("chain");
    assert_eq!(n, 4, "{chain}");

    // Held open a little: the page keeps running without errors.
    std::thread::sleep(Duration::from_secs(2));
    b.screenshot("acceptance");
    let errors: Vec<_> = b.new_console_entries().into_iter().filter(|e| e.is_error()).collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}
