//! A real TAXII 2.1 server for tests: medallion (PyPI, the OASIS
//! reference implementation) on a free loopback port, its memory backend
//! loaded with a collection `tests/taxii/build_collection.py` builds with
//! the OASIS `stix2` library. Killed on drop.
//!
//! `.ci/run` installs both (`medallion==3.0.0`, `stix2==3.0.2`).
//! `MEDALLION` names the binary, else it is looked up on `PATH` and in
//! `~/.local/bin` (where `pip install --user` puts it). Without it (or
//! without `stix2`) a test skips with how to install them, except under
//! `CI=true`, where it fails.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The collection the build script writes.
pub(crate) const COLLECTION: &str = "91a7b528-80eb-42ed-a74d-c6fbd5a26116";
pub(crate) const USER: &str = "taxii-reader";
pub(crate) const PASSWORD: &str = "Tx-pass-7Qv2-do-not-log";

pub(crate) struct Medallion {
    child: Child,
    /// `http://127.0.0.1:<port>`
    pub url: String,
    /// Holds data.json, config.json, revoke.json and the server's log.
    pub dir: tempfile::TempDir,
}

fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MEDALLION") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/bin"));
    std::env::split_paths(&path).chain(home).map(|dir| dir.join("medallion")).find(|p| p.is_file())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

impl Medallion {
    /// Starts medallion with pages of at most `page_size` objects, or
    /// `None` outside CI when it or stix2 is missing.
    pub(crate) fn start(test: &str, page_size: u32) -> Option<Medallion> {
        let stix2 = Command::new("python3").args(["-c", "import stix2"]).status().is_ok_and(|s| s.success());
        let binary = find_binary().filter(|_| stix2);
        let Some(binary) = binary else {
            let how = "python3 -m pip install --user medallion==3.0.0 stix2==3.0.2 (or set MEDALLION)";
            if in_ci() {
                panic!("{test}: medallion or stix2 missing (CI=true, so this is a failure, not a skip). {how}");
            }
            eprintln!("SKIPPED {test}: medallion or stix2 missing. To run it: {how}");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = super::nats::free_port().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let script = super::repo().join("tests/taxii/build_collection.py");
        let built = Command::new("python3").arg(&script).arg(dir.path()).arg(&url).output().unwrap();
        assert!(built.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&built.stderr));
        let config = serde_json::json!({
            "backend": {"module": "medallion.backends.memory_backend", "module_class": "MemoryBackend",
                        "filename": dir.path().join("data.json")},
            "users": {USER: PASSWORD},
            "taxii": {"max_page_size": page_size},
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("medallion.log")).unwrap();
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg(dir.path().join("config.json"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", binary.display()));
        let server = Medallion { child, url, dir };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "medallion did not listen: {}", server.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("medallion.log")).unwrap_or_default()
    }

    /// POSTs `revoke.json` (a revoked version of the C2 indicator) to the
    /// collection, as a producer would.
    pub(crate) fn post_revocation(&self) {
        let body = std::fs::read_to_string(self.dir.path().join("revoke.json")).unwrap();
        let url = format!("{}/api1/collections/{COLLECTION}/objects/", self.url);
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        let reply = super::agent()
            .post(&url)
            .header("Authorization", format!("Basic {auth}"))
            .header("Accept", "application/taxii+json;version=2.1")
            .header("Content-Type", "application/taxii+json;version=2.1")
            .send(body.as_bytes())
            .unwrap();
        let text = reply.into_body().read_to_string().unwrap();
        assert!(text.contains("\"success_count\": 1"), "{text}");
    }
}

impl Drop for Medallion {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
