//! A real headless Chromium for end-to-end UI tests, driven over WebDriver.
//!
//! Why WebDriver (chromedriver + `fantoccini`) rather than raw CDP: it is
//! the standard, both binaries ship together in Debian (`chromium`,
//! `chromium-driver`, same version), and `fantoccini` is the maintained
//! async client. Console errors are read from the browser itself
//! (chromedriver's `goog:loggingPrefs` browser log), not from code in the
//! page under test, so a page cannot hide its own errors.
//!
//! Tests are synchronous; [`Browser`] owns a small tokio runtime and blocks
//! on each command. Missing browser: [`Browser::launch`] returns `None`
//! after printing how to install one, except under `CI=true`, where a
//! missing browser is a failure (CI must run these tests, not skip them).
#![allow(dead_code)] // shared by several tests, each using a part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

pub(crate) struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
}

#[derive(Clone, Debug)]
pub(crate) struct LogEntry {
    pub level: String,
    pub source: String,
    pub message: String,
}

impl LogEntry {
    pub(crate) fn is_error(&self) -> bool {
        self.level == "SEVERE"
    }
}

pub(crate) fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).flat_map(|dir| names.iter().map(move |n| dir.join(n))).find(|p| p.is_file())
}

/// Whether a missing prerequisite must fail the test rather than skip it.
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skip (print why and how to enable) or, under CI, fail.
pub(crate) fn skip_or_fail(test: &str, why: &str, how: &str) {
    if in_ci() {
        panic!("{test}: {why} (CI=true, so this is a failure, not a skip). {how}");
    }
    // Straight to the process's stderr: `eprintln!` in a passing test is
    // captured by the harness, and a skip nobody sees is a silent pass.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}. To run it: {how}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

impl Browser {
    /// Types `key` into the dashboard and waits for the keyed stream's
    /// first document: the live mark alone does not tell, since the public
    /// stream it replaces was live too; a keyed document is the one whose
    /// top tables are not withheld.
    pub(crate) fn enter_key(&mut self, key: &str) {
        self.type_into("api-key", key);
        self.click("key-save");
        self.wait_for("the keyed stream", Duration::from_secs(10), |b| {
            let keyed = b.attr("top-sources", "data-withheld").as_deref() == Some("false");
            (b.connection() == "live" && keyed).then_some(())
        });
    }

    /// Starts chromedriver and a headless Chromium session, or `None` (after
    /// printing how to enable the test) when they are not installed.
    /// `CHROME_BIN` / `CHROMEDRIVER` override the search on `PATH`.
    pub(crate) fn launch(test: &str) -> Option<Browser> {
        let chrome = find_program("CHROME_BIN", &["chromium", "chromium-browser", "google-chrome"]);
        let driver = find_program("CHROMEDRIVER", &["chromedriver"]);
        let (Some(chrome), Some(driver)) = (chrome, driver) else {
            skip_or_fail(
                test,
                "no headless browser (chromium and chromedriver) found",
                "apt-get install chromium chromium-driver (or set CHROME_BIN and CHROMEDRIVER)",
            );
            return None;
        };
        Some(Browser::start(&chrome, &driver))
    }

    fn start(chrome: &Path, driver: &Path) -> Browser {
        let port = free_port();
        let mut child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", driver.display()));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chrome,
                "args": [
                    "--headless=new",
                    // Containers and CI runners usually lack the user
                    // namespaces Chromium's sandbox needs; the page is ours.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1440,1400",
                    // The dashboard's default look is dark; screenshot that.
                    "--force-dark-mode",
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let caps = caps.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match runtime.block_on(ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url)) {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("chromedriver exited ({status}) before accepting a session: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    let _ = child.kill();
                    panic!("no WebDriver session from chromedriver within 30 s: {e}");
                }
            }
        };
        Browser { runtime, client: Some(client), driver: child }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("session open")
    }

    pub(crate) fn goto(&self, url: &str) {
        self.runtime.block_on(self.client().goto(url)).unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub(crate) fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.runtime.block_on(self.client().execute(script, args)).unwrap_or_else(|e| panic!("script failed: {e}"))
    }

    /// The visible text of the element with this id.
    pub(crate) fn text(&self, id: &str) -> String {
        self.runtime
            .block_on(async {
                let el = self.client().find(Locator::Id(id)).await?;
                el.text().await
            })
            .unwrap_or_else(|e| panic!("text of #{id}: {e}"))
    }

    pub(crate) fn attr(&self, id: &str, name: &str) -> Option<String> {
        self.runtime
            .block_on(async { self.client().find(Locator::Id(id)).await?.attr(name).await })
            .unwrap_or_else(|e| panic!("attribute {name} of #{id}: {e}"))
    }

    /// Types into an input as a user would (real key events).
    pub(crate) fn type_into(&self, id: &str, text: &str) {
        self.runtime
            .block_on(async { self.client().find(Locator::Id(id)).await?.send_keys(text).await })
            .unwrap_or_else(|e| panic!("typing into #{id}: {e}"));
    }

    pub(crate) fn click(&self, id: &str) {
        self.runtime
            .block_on(async { self.client().find(Locator::Id(id)).await?.click().await })
            .unwrap_or_else(|e| panic!("clicking #{id}: {e}"));
    }

    /// Polls `check` every 250 ms until it returns `Some`, or panics with
    /// `what` and the page's last state after `timeout`.
    pub(crate) fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&mut Browser) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check(self) {
                return v;
            }
            if Instant::now() > deadline {
                let state = self.js("return document.body.innerText.slice(0, 2000)", vec![]);
                panic!("timed out after {timeout:?} waiting for {what}; page text:\n{}", state.as_str().unwrap_or(""));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Saves a PNG of the viewport to `target/test-artifacts/<name>.png`
    /// (under `CARGO_TARGET_DIR` when set) and returns its path.
    pub(crate) fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.runtime.block_on(self.client().screenshot()).expect("screenshot");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
        let dir = target.join("test-artifacts");
        std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// The console entries logged since the last call (chromedriver hands
    /// each entry out once).
    pub(crate) fn new_console_entries(&self) -> Vec<LogEntry> {
        let raw = self.runtime.block_on(self.client().issue_cmd(GetBrowserLog)).expect("reading the browser log");
        raw.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| LogEntry {
                        level: e["level"].as_str().unwrap_or_default().to_string(),
                        source: e["source"].as_str().unwrap_or_default().to_string(),
                        message: e["message"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Browser {
    /// Runs a Chrome DevTools Protocol command through chromedriver (e.g.
    /// `Network.setBlockedURLs` to take an endpoint away from the page).
    pub(crate) fn cdp(&self, cmd: &'static str, params: Value) -> Value {
        self.runtime.block_on(self.client().issue_cmd(Cdp { cmd, params })).unwrap_or_else(|e| panic!("CDP {cmd}: {e}"))
    }
}

/// The dashboard's tiles and sparklines as the page shows them, read from
/// the stable hooks it exposes: `data-value` on each tile figure,
/// `data-points` / `data-values` (points with a value, not gaps) /
/// `data-last-ts` on each sparkline, and whether its line has a path.
pub(crate) const TILES: [&str; 7] = ["events", "sources", "batches", "threats", "risk", "lag", "requests"];

#[derive(Clone, Debug)]
pub(crate) struct Tile {
    pub value: Option<f64>,
    pub sub: Option<f64>,
    pub text: String,
    pub points: u64,
    pub values: u64,
    pub last_ts: u64,
    /// The sparkline's line has something to draw.
    pub drawn: bool,
}

impl Browser {
    pub(crate) fn tile(&self, name: &str) -> Tile {
        let v = self.js(
            "const t = arguments[0]; const $ = (id) => document.getElementById(id);
             const spark = $('spark-' + t);
             return { value: $('tile-' + t + '-value').dataset.value, sub: $('tile-' + t + '-sub').dataset.value,
                      text: $('tile-' + t + '-value').textContent,
                      points: spark.dataset.points, values: spark.dataset.values || '0', last: spark.dataset.lastTs || '0',
                      drawn: !!(spark.querySelector('path.line') && spark.querySelector('path.line').getAttribute('d')) };",
            vec![json!(name)],
        );
        let number = |k: &str| v[k].as_str().and_then(|s| s.parse::<f64>().ok());
        Tile {
            value: number("value"),
            sub: number("sub"),
            text: v["text"].as_str().unwrap_or_default().to_string(),
            points: number("points").unwrap_or(0.0) as u64,
            values: number("values").unwrap_or(0.0) as u64,
            last_ts: number("last").unwrap_or(0.0) as u64,
            drawn: v["drawn"].as_bool().unwrap_or(false),
        }
    }

    /// `data-state` of the connection indicator: `connecting`, `live`,
    /// `polling`, `auth` or `unreachable`.
    pub(crate) fn connection(&self) -> String {
        self.attr("conn", "data-state").unwrap_or_default()
    }

    /// Emulates a viewport of `width` x `height` CSS pixels (`mobile`: a
    /// phone's, honouring the page's viewport meta tag) and waits for the
    /// page to lay out again.
    pub(crate) fn viewport(&self, width: u32, height: u32, mobile: bool) {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 0, "mobile": mobile}),
        );
        let w = self.js(
            "return new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r(innerWidth))))",
            vec![],
        );
        assert_eq!(w.as_u64(), Some(u64::from(width)), "viewport width");
    }

    /// Rows of a dashboard table (`data-rows`) and their visible text.
    pub(crate) fn rows(&self, id: &str) -> (u64, String) {
        let n = self.attr(id, "data-rows").and_then(|v| v.parse().ok()).unwrap_or(0);
        (n, self.text(id))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// chromedriver's `POST /session/{id}/se/log {"type": "browser"}`: the
/// console messages, exceptions and failed loads recorded by the browser
/// (enabled by `goog:loggingPrefs`). Not part of W3C WebDriver, hence a
/// custom command.
#[derive(Debug)]
struct GetBrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for GetBrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_string()))
    }
}

/// chromedriver's `POST /session/{id}/goog/cdp/execute`.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/goog/cdp/execute", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"cmd": self.cmd, "params": self.params}).to_string()))
    }
}
