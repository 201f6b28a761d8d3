//! Shared helpers for the end-to-end tests: spawn the real `enrichd` binary
//! on a free port with a given configuration and talk HTTP to it.
#![allow(dead_code)]

pub(crate) mod kafka;
pub(crate) mod medallion;
pub(crate) mod nats;
pub(crate) mod receivers;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub(crate) const KEY: &str = "test-key-7f3a";

/// A WebAssembly rule (text format) that loops forever on destination
/// port 666 and scores 42 otherwise: a guest the epoch deadline must stop.
pub(crate) const LOOPS_ON_666: &str = r#"(module (memory (export "memory") 2)
  (func (export "enrichd_abi_version") (result i32) (i32.const 65536))
  (func (export "enrichd_io") (result i32) (i32.const 0))
  (func (export "enrichd_process") (param $n i32) (result i32)
    (if (i32.eq (i32.load16_u (i32.const 98)) (i32.const 666)) (then (loop $l (br $l))))
    (i32.store16 (i32.const 28680) (i32.const 0)) (i32.store8 (i32.const 28682) (i32.const 1))
    (i32.store16 (i32.const 28683) (i32.const 4)) (i32.store (i32.const 28685) (i32.const 42))
    (i32.store (i32.const 28672) (i32.const 9)) (i32.const 0)))"#;

/// Environment variables that override configuration: cleared for every
/// spawned binary so the developer's shell cannot change a test.
pub(crate) const OVERRIDE_VARS: [&str; 9] = [
    "ENRICHD_LOG",
    "ENRICHD_LOG_FORMAT",
    "API_KEY",
    "GEOIP_CITY_DB",
    "GEOIP_ASN_DB",
    "TI_PATH",
    "ENRICH_ENABLE_GEOIP",
    "ENRICH_ENABLE_ASN",
    "ENRICH_ENABLE_TI",
];

/// The enriched record of one TCP flow from 10.1.1.1 to `dst` (with a DNS
/// `query` when given), sent through `/v1/ingest`.
pub(crate) fn enrich_one_flow(s: &Server, dst: &str, query: Option<&str>) -> Value {
    let mut rec = serde_json::json!({
        "src_ip": "10.1.1.1", "dst_ip": dst, "src_port": 50000, "dst_port": 80, "protocol": "tcp", "bytes": 10
    });
    if let Some(q) = query {
        rec["query"] = q.into();
    }
    let r = s.ingest("flows.v1", serde_json::json!([rec]));
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["records"][0].clone()
}

/// Serves `app` on a free loopback port from its own runtime thread (for
/// stand-ins of remote servers: feeds, download services); its address.
pub(crate) fn serve_app(app: axum::Router) -> std::net::SocketAddr {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// The repository root (paths in test configs are made absolute with it).
pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn data(rel: &str) -> String {
    repo().join("tests/data").join(rel).display().to_string()
}

pub(crate) fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_enrichd"))
}

/// The default chain with the MaxMind test databases and the sample indicators.
pub(crate) fn test_chain() -> String {
    format!(
        r#"
[[chain]]
plugin = "geoip"
database = "{city}"

[[chain]]
plugin = "asn"
database = "{asn}"

[[chain]]
plugin = "ti"
paths = ["{ti}"]
"#,
        city = data("maxmind/GeoIP2-City-Test.mmdb"),
        asn = data("maxmind/GeoLite2-ASN-Test.mmdb"),
        ti = repo().join("ti/indicators.txt").display(),
    )
}

pub(crate) struct Server {
    child: Child,
    pub base: String,
    pub dir: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
    /// Everything the server wrote to stderr (its log), across restarts.
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// Starts `enrichd serve` with `[auth] api_keys = [KEY]` plus `chain`.
    pub(crate) fn start(chain: &str) -> Server {
        Server::start_with(&format!("[auth]\napi_keys = [\"{KEY}\"]\n{chain}"), &[])
    }

    /// Starts `enrichd serve` with exactly `config` and extra environment.
    pub(crate) fn start_with(config: &str, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).expect("write config");
        Server::start_file(&path, env, dir)
    }

    pub(crate) fn start_file(path: &Path, env: &[(&str, &str)], dir: tempfile::TempDir) -> Server {
        let log = std::sync::Arc::default();
        let (child, base) = spawn(path, env, &log);
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Server { child, base, dir, config: path.to_path_buf(), env, log }
    }

    /// Stops the server and starts it again on the same configuration and
    /// directory (state kept on disk must survive this).
    pub(crate) fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (child, base) = spawn(&self.config, &env, &self.log);
        self.child = child;
        self.base = base;
    }

    /// Stops the server with SIGTERM and waits for it to exit (graceful
    /// shutdown); `restart_only` then starts it again.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) with a pid this test spawned and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait for enrichd")
    }

    /// Starts the server again after [`Server::terminate`].
    pub(crate) fn start_again(&mut self) {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (child, base) = spawn(&self.config, &env, &self.log);
        self.child = child;
        self.base = base;
    }

    /// The server's log so far (stderr of every run).
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

fn spawn(path: &Path, env: &[(&str, &str)], log: &std::sync::Arc<std::sync::Mutex<String>>) -> (Child, String) {
    {
        let mut cmd = bin();
        cmd.args(["serve", "--config"]).arg(path).args(["--listen", "127.0.0.1:0"]);
        for var in OVERRIDE_VARS {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn enrichd");
        // The log goes to the test's output (shown when it fails) and is
        // kept for tests that check what was logged.
        let stderr = child.stderr.take().unwrap();
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let mut log = log.lock().unwrap();
                if log.len() < 16 << 20 {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("enrichd listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                panic!("enrichd did not start: {:?}", child.wait());
            }
        };
        (child, base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// An HTTP answer, read whole.
pub(crate) struct Reply {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub text: String,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub(crate) fn read(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut resp = resp.expect("HTTP exchange");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.body_mut().with_config().limit(64 << 20).read_to_string().expect("body");
    Reply { status, headers, text }
}

impl Server {
    pub(crate) fn get(&self, path: &str) -> Reply {
        read(agent().get(&self.url(path)).call())
    }

    pub(crate) fn get_auth(&self, path: &str) -> Reply {
        read(agent().get(&self.url(path)).header("Authorization", format!("Bearer {KEY}")).call())
    }

    /// POST raw bytes with the API key and extra headers.
    pub(crate) fn post_raw(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
        let mut req = agent().post(&self.url(path)).header("Authorization", format!("Bearer {KEY}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        read(req.header("Content-Type", "application/json").send(body))
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_raw(path, body.to_string().as_bytes(), &[])
    }

    pub(crate) fn ingest(&self, format: &str, records: Value) -> Reply {
        self.post("/v1/ingest", &serde_json::json!({"collector_id": "test", "format": format, "records": records}))
    }

    /// [`Server::ingest`] with a query string (`profile=ecs`).
    pub(crate) fn ingest_query(&self, format: &str, query: &str, records: Value) -> Reply {
        let body = serde_json::json!({"collector_id": "test", "format": format, "records": records});
        self.post(&format!("/v1/ingest?{query}"), &body)
    }

    /// `GET /v1/metrics` as an operator reads it: with the API key, so
    /// addresses and indicators are shown (`metrics_public_detail`).
    /// Tests of what the public sees call `get("/v1/metrics")`.
    pub(crate) fn metrics(&self) -> Value {
        self.get_auth("/v1/metrics").json()
    }
}

/// A `/v1/ingest` envelope of `n` Zeek conn records with uids
/// `U<from+i>`, as the broker tests publish them.
pub(crate) fn conn_envelope(collector: &str, from: usize, n: usize) -> Vec<u8> {
    let records: Vec<serde_json::Value> = (from..from + n)
        .map(|i| {
            serde_json::json!({
                "ts": 1723351200.5 + i as f64, "uid": format!("U{i}"),
                "id.orig_h": "10.1.2.3", "id.orig_p": 40000 + (i % 20000), "id.resp_h": "81.2.69.160",
                "id.resp_p": 443, "proto": "tcp",
            })
        })
        .collect();
    serde_json::json!({"collector_id": collector, "format": "zeek.conn.v1", "records": records})
        .to_string()
        .into_bytes()
}

/// The runtime the broker tests drive their clients on.
pub(crate) fn broker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Polls `done` every 50 ms; fails the test naming `what` after `timeout`.
pub(crate) fn wait_for(what: &str, timeout: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The first `[[source]]`'s view in `/v1/sources`.
pub(crate) fn source_view(s: &Server) -> serde_json::Value {
    let r = s.get_auth("/v1/sources");
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["sources"][0].clone()
}
