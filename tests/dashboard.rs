//! The dashboard at `/`: how it is served (any machine), and how it behaves
//! in a real headless Chromium against a running `enrichd` under load
//! (machines with `chromium` and `chromium-driver`; skipped elsewhere with
//! a message, a failure under `CI=true`).

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/traffic.rs"]
mod traffic;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use browser::{Browser, Tile, TILES};
use common::{repo, test_chain, Server, KEY};

#[test]
fn dashboard_is_embedded_with_a_strict_csp_and_revalidates() {
    let s = Server::start(&test_chain());
    let page = s.get("/");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = page.header("content-security-policy").expect("CSP header");
    for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(directive), "CSP {csp:?} lacks {directive:?}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert!(page.text.contains("<title>enrichd</title>"));

    for (path, ctype) in [
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
        ("/assets/icon.svg", "image/svg+xml"),
    ] {
        let r = s.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ctype), "{path}");
        assert!(page.text.contains(path), "index.html should reference {path}");
        // Revalidation: the same ETag gets a bodiless 304.
        let etag = r.header("etag").expect("ETag").to_string();
        let again = common::agent().get(&s.url(path)).header("If-None-Match", &etag).call().unwrap();
        assert_eq!(again.status().as_u16(), 304, "{path}");
    }
    // Nothing from elsewhere: the dashboard works offline.
    for path in ["/", "/assets/app.js", "/assets/app.css"] {
        // (The SVG namespace is an identifier, never fetched.)
        let body = s.get(path).text.replace("http://www.w3.org/2000/svg", "");
        assert!(!body.contains("https://") && !body.contains("http://"), "{path} refers to another origin");
    }
    // The JSON listing the dashboard replaced lives at /v1.
    let index = s.get("/v1").json();
    assert_eq!(index["service"], "enrichd");
    assert!(index["api"].as_array().unwrap().iter().any(|p| p == "/v1/stream"));
}

/// Sends `flows.v1` batches until stopped: 50 records every 200 ms. While
/// `malicious` is false no source is in an indicator list; once true, one
/// source in ten is in 45.149.3.0/24.
struct Load {
    stop: Arc<AtomicBool>,
    malicious: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start(server: &Server) -> Load {
        let (stop, malicious) = (Arc::<AtomicBool>::default(), Arc::<AtomicBool>::default());
        let url = server.url("/v1/ingest");
        let (stop2, malicious2) = (Arc::clone(&stop), Arc::clone(&malicious));
        let thread = std::thread::spawn(move || {
            let agent = common::agent();
            let mut flows = traffic::Flows::new(0x5eed);
            // Destinations in the MaxMind test City database (GB, US, SE, CN).
            let dsts = ["81.2.69.160", "216.160.83.56", "89.160.20.112", "175.16.199.1"];
            let mut i = 0;
            while !stop2.load(Ordering::Relaxed) {
                let one_in = if malicious2.load(Ordering::Relaxed) { 10 } else { 0 };
                let body = flows.batch(50, dsts[i % dsts.len()], one_in);
                i += 1;
                let resp = agent
                    .post(&url)
                    .header("Authorization", format!("Bearer {KEY}"))
                    .header("Content-Type", "application/json")
                    .send(body.to_string().as_bytes())
                    .expect("ingest request");
                assert_eq!(resp.status().as_u16(), 200, "ingest refused a generated batch");
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Load { stop, malicious, thread: Some(thread) }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let result = t.join();
            if !std::thread::panicking() {
                result.expect("load generator");
            }
        }
    }
}

fn config() -> String {
    format!(
        "[server]\nmetrics_require_key = true\n\n[auth]\napi_keys = [\"{KEY}\"]\n{chain}\n\
         [[chain]]\nplugin = \"wasm\"\nname = \"risk\"\nmodule = \"{risk}\"\nrole = \"rule\"\n",
        chain = test_chain(),
        risk = repo().join("rules/risk.wasm").display(),
    )
}

fn tiles(b: &Browser) -> Vec<(&'static str, Tile)> {
    TILES.iter().map(|&t| (t, b.tile(t))).collect()
}

const TEST: &str = "dashboard_updates_live_in_a_real_browser";

#[test]
fn dashboard_updates_live_in_a_real_browser() {
    let Some(mut b) = Browser::launch(TEST) else { return };
    let server = Server::start_with(&config(), &[]);
    b.goto(&server.url("/"));

    // Metrics need a key here: the page says so instead of showing zeros.
    b.wait_for("the API-key prompt", Duration::from_secs(10), |b| (b.connection() == "auth").then_some(()));
    assert!(b.text("banner").contains("requires an API key"), "banner: {}", b.text("banner"));
    // The refused requests are the only console errors allowed, and only
    // before a key is entered.
    for e in b.new_console_entries().iter().filter(|e| e.is_error()) {
        assert!(e.message.contains("401"), "unexpected console error before the key was entered: {e:?}");
    }

    b.type_into("api-key", KEY);
    b.click("key-save");
    b.wait_for("the live stream", Duration::from_secs(10), |b| (b.connection() == "live").then_some(()));
    // No traffic yet: an explicit empty state, not a page of zeros.
    b.wait_for("the empty state", Duration::from_secs(5), |b| {
        b.text("banner").contains("No traffic yet").then_some(())
    });
    // The key stays in this tab, out of URLs and out of localStorage.
    let storage = b.js(
        "return { session: sessionStorage.getItem('enrichd.apiKey'), local: localStorage.length,
                  urls: performance.getEntriesByType('resource').map((e) => e.name).concat([location.href]) };",
        vec![],
    );
    assert_eq!(storage["session"], KEY);
    assert_eq!(storage["local"], 0);
    let urls = storage["urls"].as_array().unwrap();
    assert!(urls.iter().any(|u| u.as_str().unwrap().ends_with("/v1/stream")), "{urls:?}");
    assert!(urls.iter().all(|u| !u.as_str().unwrap().contains(KEY)), "API key in a URL: {urls:?}");

    // Benign traffic first.
    let load = Load::start(&server);
    b.wait_for("events on the Events tile", Duration::from_secs(15), |b| {
        (b.tile("events").sub.unwrap_or(0.0) >= 500.0).then_some(())
    });
    let benign = tiles(&b);
    let find = |ts: &[(&str, Tile)], name: &str| ts.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    assert_eq!(find(&benign, "threats").value, Some(0.0), "no indicator matched yet: {benign:?}");
    let benign_risk = find(&benign, "risk").value.expect("Avg Risk shown once events are scored");

    // Then one source in ten from 45.149.3.0/24; run until every sparkline
    // has advanced by at least two 5-second buckets.
    load.malicious.store(true, Ordering::Relaxed);
    let start_ts = benign.iter().map(|(_, t)| t.last_ts).max().unwrap_or(0);
    let after = b.wait_for("two sparkline buckets and threat matches", Duration::from_secs(30), |b| {
        let now = tiles(b);
        let advanced = now.iter().all(|(_, t)| t.last_ts >= start_ts + 10_000);
        (advanced && find(&now, "threats").value.unwrap_or(0.0) > 0.0).then_some(now)
    });

    for ((name, before), (_, now)) in benign.iter().zip(&after) {
        assert!(now.points > before.points, "sparkline {name} gained no points: {before:?} -> {now:?}");
        assert!(now.last_ts >= before.last_ts + 10_000, "sparkline {name} did not advance two buckets");
        assert!(!now.text.is_empty() && now.text != "–", "tile {name} shows no figure: {now:?}");
    }
    // Events: the running total under the per-minute rate; the others'
    // main figure.
    let (before, now) = (find(&benign, "events"), find(&after, "events"));
    assert!(now.sub > before.sub, "Events total did not change: {before:?} -> {now:?}");
    for name in ["batches", "requests", "sources"] {
        let (before, now) = (find(&benign, name), find(&after, name));
        assert!(now.value > before.value, "tile {name} did not change: {before:?} -> {now:?}");
    }
    let threats = find(&after, "threats");
    assert!(threats.value.unwrap() > 0.0, "Threat Matches did not rise: {threats:?}");
    let risk = find(&after, "risk").value.unwrap();
    assert!(risk > benign_risk, "Avg Risk did not rise after malicious traffic: {benign_risk} -> {risk}");
    assert!(find(&after, "lag").value.is_some(), "Queue Lag shows no figure");

    // The rest of the page follows the same data.
    let (n, text) = b.rows("top-indicators");
    assert!(n >= 1 && text.contains("45.149.3.0/24"), "top indicators: {n} {text}");
    let (n, text) = b.rows("top-sources");
    assert!(n >= 1 && !text.contains("no traffic yet"), "top sources: {text}");
    let (n, text) = b.rows("feed");
    assert!(n >= 1 && text.contains("45.149.3."), "high-risk feed: {n} {text}");
    let (n, text) = b.rows("chain");
    assert_eq!(n, 4, "chain: {text}");
    assert!(text.contains("risk") && text.contains("LOADED"), "chain: {text}");
    assert!(b.attr("chart-epm", "data-points").unwrap().parse::<u32>().unwrap() >= 1);
    drop(load);

    let shot = b.screenshot("dashboard");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "screenshot suspiciously small");
    let errors: Vec<_> = b.new_console_entries().into_iter().filter(|e| e.is_error()).collect();
    assert!(errors.is_empty(), "console errors while running: {errors:#?}");

    // Server gone: say so, keep the last figures.
    drop(server);
    b.wait_for("the unreachable state", Duration::from_secs(15), |b| (b.connection() == "unreachable").then_some(()));
    assert!(b.text("banner").contains("Server unreachable"), "banner: {}", b.text("banner"));
    assert!(b.tile("threats").value >= threats.value, "the last figures should stay on screen");
}

#[test]
fn dashboard_falls_back_to_polling_without_the_stream() {
    let test = "dashboard_falls_back_to_polling_without_the_stream";
    let Some(mut b) = Browser::launch(test) else { return };
    let server = Server::start(&test_chain());
    // The browser itself refuses /v1/stream, as a proxy that breaks SSE would.
    b.cdp("Network.enable", serde_json::json!({}));
    b.cdp("Network.setBlockedURLs", serde_json::json!({"urls": ["*/v1/stream"]}));
    b.goto(&server.url("/"));
    b.wait_for("polling mode", Duration::from_secs(15), |b| (b.connection() == "polling").then_some(()));

    let records: Vec<_> = (0..40)
        .map(|i| serde_json::json!({"src_ip": format!("45.149.3.{i}"), "dst_ip": "81.2.69.160", "dst_port": 445}))
        .collect();
    assert_eq!(server.ingest("flows.v1", serde_json::Value::Array(records)).status, 200);
    b.wait_for("the batch on the tiles", Duration::from_secs(10), |b| {
        (b.tile("events").sub == Some(40.0) && b.tile("threats").value == Some(40.0)).then_some(())
    });
    assert_eq!(b.connection(), "polling");
    // The only errors: the blocked stream requests.
    for e in b.new_console_entries().iter().filter(|e| e.is_error()) {
        assert!(
            e.message.contains("/v1/stream") && e.message.contains("ERR_BLOCKED_BY_CLIENT"),
            "unexpected console error: {e:?}"
        );
    }
}

#[test]
fn dashboard_lists_declared_fact_tops_generically() {
    let test = "dashboard_lists_declared_fact_tops_generically";
    let Some(mut b) = Browser::launch(test) else { return };
    // `asn_class` declares a Label fact with top values: the page has no
    // markup for it, the list appears from /v1/metrics' top.<w>.facts.
    let chain = format!(
        "[[chain]]\nplugin = \"asn\"\ndatabase = \"{}\"\n\n[[chain]]\nplugin = \"asn_class\"\n",
        common::data("maxmind/GeoLite2-ASN-Test.mmdb")
    );
    let server = Server::start(&chain);
    b.goto(&server.url("/"));
    let records: Vec<_> =
        (0..5).map(|i| serde_json::json!({"src_ip": format!("10.0.0.{i}"), "dst_ip": "1.128.0.1"})).collect();
    assert_eq!(server.ingest("flows.v1", serde_json::Value::Array(records)).status, 200);
    let (rows, key, title) = b.wait_for("the asn_class top list", Duration::from_secs(15), |b| {
        let v = b.js(
            "const t = document.querySelector('table[data-fact=\"asn_class\"]');
             const k = t && t.querySelector('td.key span');
             return t && k ? [t.dataset.rows, k.textContent, t.closest('.top').querySelector('h3').textContent] : null",
            vec![],
        );
        let v = v.as_array()?.clone();
        Some((v[0].as_str()?.to_string(), v[1].as_str()?.to_string(), v[2].as_str()?.to_string()))
    });
    assert_eq!((rows.as_str(), key.as_str(), title.as_str()), ("1", "isp", "asn class"));
    b.screenshot(test);
    assert!(b.new_console_entries().iter().all(|e| !e.is_error()), "console errors");
}
