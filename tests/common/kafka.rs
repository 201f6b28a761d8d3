//! A real Kafka-protocol broker for tests: `tansu` on a free loopback
//! port, its SQLite store in a temporary directory that is also its
//! working directory, killed (and the directory removed) on drop.
//!
//! Why tansu: it is the only Kafka-protocol broker that builds on these
//! machines (no JVM; shared notes, brokers.md). `tansu` 0.6.0 from
//! crates.io with `--features libsql,dynostore` (`.ci/run` installs it).
//! It handles what these tests use: produce, consume, consumer groups,
//! offset commit and resume, the idempotent producer, persistence. It does
//! not hand a SIGKILLed member's partitions to the rest of its group, so
//! nothing here tests consumer-group failover after a crash.
//!
//! The binary: `TANSU`, else `tansu` on `PATH`, else `~/.cargo/bin/tansu`.
//! Without one a test skips with a message saying how to install it,
//! except under `CI=true`, where it fails (a skip there would be a silent
//! pass) unless `TANSU_UNAVAILABLE` says why CI has none (`.ci/run` sets it
//! when the broker's build does not fit CI's time: the issue makes Kafka
//! no CI gate then); the skip prints that reason.
//!
//! Its defaults bind 0.0.0.0 and read `.env` from the working directory:
//! every listener URL is passed explicitly (loopback) and it runs from the
//! temporary directory.
//!
//! Shared by the enrichd crate's tests (`mod kafka;` in `tests/common`) and
//! the plugins' unit tests (`#[path]`), so it uses only std and `tempfile`.
#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct KafkaBroker {
    child: Child,
    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub address: String,
    pub port: u16,
    _dir: tempfile::TempDir,
}

pub(crate) fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TANSU") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path).map(|dir| dir.join("tansu")).find(|p| p.is_file());
    on_path.or_else(|| {
        let home = std::env::var_os("HOME")?;
        Some(PathBuf::from(home).join(".cargo/bin/tansu")).filter(|p| p.is_file())
    })
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

impl KafkaBroker {
    /// Starts a broker, or `None` (after printing how to enable `test`)
    /// when no `tansu` is installed outside CI.
    pub(crate) fn start(test: &str) -> Option<KafkaBroker> {
        let Some(binary) = find_binary() else {
            let how = "cargo install --locked tansu --version 0.6.0 --features libsql,dynostore (~10 min; or set \
                       TANSU to a tansu binary)";
            if let Some(reason) = std::env::var("TANSU_UNAVAILABLE").ok().filter(|r| !r.is_empty()) {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
                return None;
            }
            if in_ci() {
                panic!("{test}: no tansu found (CI=true, so this is a failure, not a skip). {how}");
            }
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: no tansu found. To run it: {how}");
            return None;
        };
        // A port freed by the OS can be taken again before the broker
        // binds it: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(&binary) {
                Ok(broker) => return Some(broker),
                Err(e) => last = e,
            }
        }
        panic!("{test}: tansu did not start: {last}");
    }

    fn try_start(binary: &PathBuf) -> Result<KafkaBroker, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut child = Command::new(binary)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            // tansu takes the database path relative to its working
            // directory (the temporary one).
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", binary.display()))?;
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                // Its log goes to the test's output from here on.
                let mut stderr = child.stderr.take().expect("piped");
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stderr.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        eprint!("{}", String::from_utf8_lossy(&buf[..n]));
                    }
                });
                return Ok(KafkaBroker { child, address: format!("127.0.0.1:{port}"), port, _dir: dir });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut log = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut log);
                }
                return Err(format!("tansu exited ({status}): {log}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("not listening on {address} after 20 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
