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

    // Metrics need a key here: the page says so instead of showing zeros,
    // and so does every panel: the key is missing, not the traffic.
    b.wait_for("the API-key prompt", Duration::from_secs(10), |b| (b.connection() == "auth").then_some(()));
    assert!(b.text("banner").contains("requires an API key"), "banner: {}", b.text("banner"));
    for id in ["epm-empty", "feed-empty", "chain-empty", "outputs-empty", "top-sources", "top-asns"] {
        assert!(b.text(id).contains("API key missing"), "#{id} says {:?}", b.text(id));
    }
    let page = b.js("return document.body.innerText", vec![]);
    assert!(!page.as_str().unwrap().contains("no traffic yet"), "the page blames traffic, not the key:\n{page}");
    // A wrong key: the panels say it was refused.
    b.type_into("api-key", "not-the-key");
    b.click("key-save");
    b.wait_for("the refused key", Duration::from_secs(10), |b| b.text("banner").contains("refused").then_some(()));
    for id in ["epm-empty", "top-sources"] {
        assert!(b.text(id).contains("API key refused"), "#{id} says {:?}", b.text(id));
    }
    // The refused requests are the only console errors allowed, and only
    // before a key is entered.
    for e in b.new_console_entries().iter().filter(|e| e.is_error()) {
        assert!(e.message.contains("401"), "unexpected console error before the key was entered: {e:?}");
    }

    b.enter_key(KEY);
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
    b.enter_key(KEY);
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

#[test]
fn dashboard_draws_the_tables_stages_report() {
    let test = "dashboard_draws_the_tables_stages_report";
    let Some(mut b) = Browser::launch(test) else { return };
    // The TI stage reports a "Feeds" table (indicators live, hits, last
    // hit); the page has no markup for it, the panel appears from
    // /v1/metrics' enrichers[].tables.
    let indicators = repo().join("ti/indicators.txt").display().to_string();
    let chain = format!(
        "[[chain]]\nplugin = \"ti\"\npaths = [\"{indicators}\"]\n\n\
         [[chain.feeds]]\npath = \"{indicators}\"\nname = \"blocklist\"\nconfidence = 70\n"
    );
    let server = Server::start(&chain);
    b.goto(&server.url("/"));
    let row = |b: &mut Browser| -> Option<Vec<String>> {
        let v = b.js(
            "const s = document.querySelector('section.stage-table[data-table=\"Feeds\"][data-stage=\"ti\"]');
             const tr = s && s.querySelector('tbody tr');
             return tr ? [...tr.cells].map((c) => c.textContent + '|' + c.dataset.value) : null",
            vec![],
        );
        Some(v.as_array()?.iter().map(|c| c.as_str().unwrap_or_default().to_string()).collect())
    };
    let before = b.wait_for("the feeds panel", Duration::from_secs(15), row);
    let headings: Vec<String> = serde_json::from_value(
        b.js("return [...document.querySelectorAll('section.stage-table th')].map((t) => t.textContent)", vec![]),
    )
    .unwrap();
    assert_eq!(headings, ["feed", "live", "expired", "decayed", "hits", "sources hit", "last hit"]);
    assert_eq!(before[0], "blocklist|blocklist");
    let live: u64 = before[1].split('|').nth(1).unwrap().parse().unwrap();
    assert!(live > 0, "indicators live: {before:?}");
    assert_eq!((before[4].as_str(), before[6].as_str()), ("0|0", "never|"), "no hit yet");

    let records: Vec<_> =
        (0..3).map(|i| serde_json::json!({"src_ip": format!("45.149.3.{i}"), "dst_ip": "10.0.0.1"})).collect();
    assert_eq!(server.ingest("flows.v1", serde_json::Value::Array(records)).status, 200);
    let after = b.wait_for("the hits", Duration::from_secs(15), |b| row(b).filter(|r| r[4] == "3|3"));
    assert!(after[6].ends_with('Z') && !after[6].starts_with("never"), "last hit shown as a time: {after:?}");
    assert_eq!(after[5], "3|3", "three distinct sources hit the feed");
    let panels: u64 =
        serde_json::from_value(b.js("return document.querySelectorAll('section.stage-table').length", vec![])).unwrap();
    assert_eq!(panels, 1, "one stage, one table");
    b.screenshot(test);
    assert!(b.new_console_entries().iter().all(|e| !e.is_error()), "console errors");
}

/// What of the page's text does not fit, as a list of descriptions (empty
/// when everything fits): each tile's heading, figure and sub-line (and
/// their parts) must lie inside the tile and not overflow their own box
/// (`scrollWidth <= clientWidth`); each top list's key must be one line,
/// left of its count, with its label under it and in front of the share
/// bar (hit-testing the label finds the label, not the bar's cell).
const LAYOUT_PROBLEMS: &str = r#"
const problems = [];
const name = (el) => el.id || (el.className && String(el.className)) || el.tagName;
const rect = (el) => el.getBoundingClientRect();
const inside = (el, box, what) => {
  const r = rect(el), b = rect(box);
  if (r.width === 0 && r.height === 0) return;
  if (r.left < b.left - 0.5 || r.right > b.right + 0.5)
    problems.push(`${what}: ${name(el)} "${el.textContent}" spans ${r.left.toFixed(1)}-${r.right.toFixed(1)}, outside ${b.left.toFixed(1)}-${b.right.toFixed(1)}`);
};
const fits = (el, what) => {
  if (el.scrollWidth > el.clientWidth)
    problems.push(`${what}: ${name(el)} "${el.textContent}" clipped (scrollWidth ${el.scrollWidth} > clientWidth ${el.clientWidth})`);
};
for (const tile of document.querySelectorAll('.tile')) {
  const what = 'tile ' + tile.dataset.tile;
  for (const el of tile.querySelectorAll('h2, .big, .sub')) {
    fits(el, what);
    inside(el, tile, what);
    for (const part of el.children) inside(part, el, what);
  }
}
for (const table of document.querySelectorAll('#tops table')) {
  const what = 'top list ' + (table.id || table.dataset.fact);
  for (const tr of table.tBodies[0].rows) {
    const key = tr.querySelector('td.key'), num = tr.querySelector('td.num');
    if (!key) continue;
    const span = key.querySelector('span'), small = key.querySelector('small');
    if (span.getClientRects().length !== 1) problems.push(`${what}: key "${span.textContent}" wraps`);
    if (rect(span).right > rect(num).left + 0.5) problems.push(`${what}: key "${span.textContent}" runs into its count`);
    fits(num, what);
    if (small) {
      fits(small, what);
      if (rect(small).top < rect(span).bottom - 0.5) problems.push(`${what}: label "${small.textContent}" overlaps its key`);
      small.scrollIntoView({ block: 'center' });
      const r = rect(small);
      const hit = document.elementFromPoint(r.left + Math.min(4, r.width / 2), r.top + r.height / 2);
      if (!hit || !small.contains(hit)) problems.push(`${what}: label "${small.textContent}" is covered by ${hit && name(hit)}`);
    }
  }
}
return problems;
"#;

/// A `flows.v1` batch of 100 records from sources never seen before (the
/// `n`th batch): nine in ten benign, to destinations the MaxMind test
/// databases place in GB, AU (AS1221, "Telstra Pty Ltd") and US; one in ten
/// from 45.149.3.0/24 to SE (AS29518, "Bredband2 AB") on RDP with a large
/// upload, which the risk rule scores 90.
fn distinct_sources(n: usize) -> serde_json::Value {
    let records: Vec<_> = (0..100)
        .map(|i| {
            let k = n * 100 + i;
            if k.is_multiple_of(10) {
                serde_json::json!({"src_ip": format!("45.149.3.{}", 1 + (k / 10) % 254), "dst_ip": "89.160.20.112",
                                   "src_port": 50000, "dst_port": 3389, "proto": "tcp", "bytes": 4_000_000})
            } else {
                let dst = ["81.2.69.142", "1.128.0.1", "216.160.83.56"][k % 3];
                serde_json::json!({"src_ip": format!("10.{}.{}.{}", k >> 16 & 255, k >> 8 & 255, k & 255),
                                   "dst_ip": dst, "dst_port": 443})
            }
        })
        .collect();
    serde_json::Value::Array(records)
}

const POLISH: &str = "dashboard_is_complete_on_load_and_fits_phone_and_laptop_widths";

#[test]
fn dashboard_is_complete_on_load_and_fits_phone_and_laptop_widths() {
    let Some(mut b) = Browser::launch(POLISH) else { return };
    let chain = format!(
        "{}\n[[chain]]\nplugin = \"wasm\"\nname = \"risk\"\nmodule = \"{}\"\n",
        test_chain(),
        repo().join("rules/risk.wasm").display()
    );
    let server = Server::start(&chain);

    // Traffic before the page opens, over at least three 5-second buckets:
    // every source new (so the sources list is noise); requests in the
    // thousands, 125 of them refused, so the Requests tile carries figures
    // as wide as the ones that were clipped ("1,234 / 125 failed").
    let agent = common::agent();
    for i in 0..1_250u32 {
        let status = if i.is_multiple_of(10) {
            agent.post(&server.url("/v1/ingest")).send(&b"{}"[..]).unwrap().status()
        } else {
            agent.get(&server.url("/v1/health")).call().unwrap().status()
        };
        assert_eq!(status.as_u16(), if i.is_multiple_of(10) { 401 } else { 200 });
    }
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(11_500) {
        assert_eq!(server.ingest("flows.v1", distinct_sources(n)).status, 200);
        n += 1;
        std::thread::sleep(Duration::from_millis(400));
    }

    // Opened now, the page draws every sparkline from the server's history
    // at once: three buckets with values could not come from sampling
    // since the page opened.
    b.viewport(1400, 1000, false);
    b.goto(&server.url("/"));
    let sparks = b.wait_for("the first metrics", Duration::from_secs(10), |b| {
        let tiles = tiles(b);
        tiles.iter().all(|(_, t)| t.points > 0).then_some(tiles)
    });
    for (name, t) in &sparks {
        assert!(t.drawn && t.values >= 3, "sparkline {name} is not complete right after load: {t:?}");
    }

    // Public metrics without a key: the lists that name addresses and
    // indicators say they are hidden (not "none"), and the high-risk feed
    // shows its events without their endpoints.
    b.wait_for("the hidden sources list", Duration::from_secs(5), |b| {
        (b.attr("top-sources", "data-withheld").as_deref() == Some("true")).then_some(())
    });
    for id in ["top-sources", "top-indicators"] {
        let (rows, text) = b.rows(id);
        assert!(rows == 0 && text.contains("hidden without an API key"), "#{id}: {rows} {text}");
    }
    assert!(b.text("feed-count").contains("hidden without an API key"), "{}", b.text("feed-count"));
    let feed = b.wait_for("high-risk events without a key", Duration::from_secs(5), |b| {
        let text = b.text("feed");
        text.contains("AS29518").then_some(text)
    });
    assert!(!feed.contains("45.149.3."), "{feed}");
    b.enter_key(KEY);

    // Every source seen once: the list would rank noise, so it says so.
    b.wait_for("the sources list", Duration::from_secs(5), |b| {
        (b.attr("top-sources", "data-noise").as_deref() == Some("true")).then_some(())
    });
    let (rows, text) = b.rows("top-sources");
    assert_eq!(rows, 0, "a noise list shows no entries: {text}");
    assert!(text.contains("too many distinct values"), "{text}");
    // Exact counts stay plain.
    let indicators = b.js("return document.querySelector('#top-indicators td.num').textContent", vec![]);
    assert!(!indicators.as_str().unwrap().contains('≈'), "{indicators}");

    // One source stands out from the noise: listed, its count approximate.
    // (A burst of 4,000 more one-off sources first: the summary's filter
    // then holds counts in every cell, so the newcomer's count carries an
    // error whichever cell it hashes to; with only the traffic above about
    // one cell in a hundred would still be empty.)
    let burst: Vec<_> = (0..4_000u32)
        .map(|i| serde_json::json!({"src_ip": format!("10.200.{}.{}", i >> 8, i & 255), "dst_ip": "1.128.0.1"}))
        .collect();
    assert_eq!(server.ingest("flows.v1", serde_json::Value::Array(burst)).status, 200);
    let heavy: Vec<_> =
        (0..300).map(|_| serde_json::json!({"src_ip": "10.250.0.1", "dst_ip": "1.128.0.1", "dst_port": 22})).collect();
    assert_eq!(server.ingest("flows.v1", serde_json::Value::Array(heavy)).status, 200);
    let (key, shown, title) = b.wait_for("the heavy source", Duration::from_secs(5), |b| {
        let v = b.js(
            "const t = document.getElementById('top-sources');
             const row = t.dataset.noise === 'false' && t.tBodies[0].rows[0];
             const num = row && row.querySelector('td.num');
             return num ? [row.querySelector('td.key').textContent, num.textContent, num.title] : null;",
            vec![],
        );
        let v = v.as_array()?.clone();
        Some((v[0].as_str()?.to_string(), v[1].as_str()?.to_string(), v[2].as_str()?.to_string()))
    });
    assert_eq!(key, "10.250.0.1");
    let figures: Vec<u64> = title
        .split(|c: char| !c.is_ascii_digit() && c != ',')
        .filter_map(|w| w.replace(',', "").parse().ok())
        .collect();
    assert!(shown.starts_with('≈'), "an approximate count is marked: {shown:?}");
    assert!(
        figures.len() == 2 && figures[0] <= 300 && 300 <= figures[1],
        "the tooltip gives the bound around the true 300: {title:?}"
    );

    // High-risk rows name the AS organisation, not only its number.
    b.wait_for("an organisation in the high-risk feed", Duration::from_secs(5), |b| {
        b.text("feed").contains("AS29518 Bredband2 AB").then_some(())
    });
    b.wait_for("AS labels in the top ASNs", Duration::from_secs(5), |b| {
        b.text("top-asns").contains("Telstra Pty Ltd").then_some(())
    });

    // Nothing clipped, wrapped into pieces or hidden under a bar, on a
    // laptop and on a phone.
    for (width, height, mobile) in [(1400, 1000, false), (390, 844, true)] {
        b.viewport(width, height, mobile);
        let problems = b.js(LAYOUT_PROBLEMS, vec![]);
        b.js("window.scrollTo(0, 0)", vec![]);
        b.screenshot(&format!("dashboard-{width}px"));
        b.js("scrollTo(0, scrollY + document.getElementById('feed-title').getBoundingClientRect().top - 100)", vec![]);
        b.screenshot(&format!("dashboard-{width}px-top-lists"));
        assert_eq!(problems, serde_json::json!([]), "at {width} px");
    }
    let errors: Vec<_> = b.new_console_entries().into_iter().filter(|e| e.is_error()).collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}
