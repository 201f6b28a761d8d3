//! The packaging files against the binary they ship: the Debian package
//! (built with `scripts/package-deb`, installed with `dpkg -i` under CI and
//! started as a plain process), and the container files (no container
//! engine runs on these machines: their paths, variables, port and health
//! check are checked against what the binary reads and serves, by running
//! it the way the image's `CMD` and `ENV` do).

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{data, repo};
use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits for `/v1/health`, then returns `/v1/health/details` (with `key`).
fn health_details(child: &mut Child, port: u16, key: &str) -> Value {
    let agent = common::agent();
    for _ in 0..400 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("enrichd exited: {status}");
        }
        let ok = agent.get(&format!("http://127.0.0.1:{port}/v1/health")).call().is_ok_and(|r| r.status() == 200);
        if ok {
            let mut r = agent
                .get(&format!("http://127.0.0.1:{port}/v1/health/details"))
                .header("Authorization", &format!("Bearer {key}"))
                .call()
                .unwrap();
            return r.body_mut().read_json().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("enrichd did not answer /v1/health");
}

fn stage_state(details: &Value, name: &str) -> String {
    let stages = details["enrichers"].as_array().unwrap_or_else(|| panic!("{details}"));
    let stage = stages.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("{name}: {details}"));
    stage["state"].as_str().unwrap().to_string()
}

fn build_deb(out: &Path) -> PathBuf {
    let built = Command::new(repo().join("scripts/package-deb"))
        .arg(out)
        .env("ENRICHD_BIN", env!("CARGO_BIN_EXE_enrichd"))
        .output()
        .unwrap();
    assert!(built.status.success(), "package-deb: {}", String::from_utf8_lossy(&built.stderr));
    PathBuf::from(String::from_utf8_lossy(&built.stdout).trim())
}

#[test]
fn debian_package_installs_and_serves() {
    if browser::find_program("DPKG_DEB", &["dpkg-deb"]).is_none() {
        browser::skip_or_fail("debian package", "dpkg-deb not found", "run on Debian");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(dir.path());
    let root = dir.path().join("root");
    let extracted = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root).status().unwrap();
    assert!(extracted.success());
    for file in [
        "usr/bin/enrichd",
        "etc/enrichd/config.toml",
        "etc/enrichd/enrichd.env",
        "etc/enrichd/ti/indicators.txt",
        "usr/share/enrichd/rules/risk.wasm",
        "lib/systemd/system/enrichd.service",
        "usr/share/man/man1/enrichd.1.gz",
        "usr/share/man/man1/enrichd-serve.1.gz",
        "usr/share/bash-completion/completions/enrichd",
    ] {
        assert!(root.join(file).is_file(), "{file} missing from the package");
    }
    // Every data path in the packaged config is absolute and points where
    // the package puts things (or the service's state directory).
    let config = std::fs::read_to_string(root.join("etc/enrichd/config.toml")).unwrap();
    for line in config
        .lines()
        .filter(|l| ["database =", "paths =", "module =", "state_dir ="].iter().any(|k| l.trim_start().starts_with(k)))
    {
        let value = line.split_once('=').unwrap().1.trim().trim_start_matches('[').trim_start_matches('"');
        assert!(value.starts_with('/'), "relative path in the packaged config: {line}");
    }
    for expected in [
        "/var/lib/enrichd/geo/GeoLite2-City.mmdb",
        "/usr/share/enrichd/rules/risk.wasm",
        "/etc/enrichd/ti/indicators.txt",
        "/var/lib/enrichd/state",
    ] {
        assert!(config.contains(expected), "{expected} not in the packaged config");
    }
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/enrichd.service")).unwrap();
    for setting in [
        "ExecStart=/usr/bin/enrichd serve --config /etc/enrichd/config.toml",
        "DynamicUser=yes",
        "StateDirectory=enrichd",
        "ProtectSystem=strict",
        "ReadOnlyPaths=/etc/enrichd /usr/share/enrichd",
        "NoNewPrivileges=yes",
        "EnvironmentFile=-/etc/enrichd/enrichd.env",
    ] {
        assert!(unit.lines().any(|l| l == setting), "unit lacks {setting}");
    }
    let conffiles = Command::new("dpkg-deb").arg("-I").arg(&deb).arg("conffiles").output().unwrap();
    assert!(String::from_utf8_lossy(&conffiles.stdout).contains("/etc/enrichd/config.toml"));

    // Installed for real where it may change the machine (CI's fresh one,
    // or when asked), then started as a plain process on the packaged files.
    let may_install = browser::in_ci() || std::env::var("ENRICHD_TEST_DPKG").is_ok_and(|v| v == "1");
    // SAFETY: getuid(2) cannot fail.
    if !may_install || unsafe { libc::getuid() } != 0 {
        browser::skip_or_fail(
            "dpkg -i of the package",
            "not allowed to install packages here",
            "CI=true or ENRICHD_TEST_DPKG=1, as root",
        );
        return;
    }
    let had_state = Path::new("/var/lib/enrichd").exists();
    let install = Command::new("dpkg").arg("-i").arg(&deb).output().unwrap();
    assert!(install.status.success(), "dpkg -i: {}", String::from_utf8_lossy(&install.stderr));
    let port = free_port();
    let mut child = Command::new("/usr/bin/enrichd")
        .args(["serve", "--config", "/etc/enrichd/config.toml", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir("/")
        .env("API_KEY", "package-test-key")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let details = health_details(&mut child, port, "package-test-key");
    let _ = child.kill();
    let _ = child.wait();
    let purge = Command::new("dpkg").args(["--purge", "enrichd"]).output().unwrap();
    if !had_state {
        let _ = std::fs::remove_dir_all("/var/lib/enrichd");
    }
    assert_eq!(stage_state(&details, "risk"), "loaded", "the packaged rule: {details}");
    assert_eq!(stage_state(&details, "ti"), "loaded", "the packaged indicators: {details}");
    assert_eq!(stage_state(&details, "geoip"), "missing", "no database shipped: {details}");
    assert!(purge.status.success(), "dpkg --purge: {}", String::from_utf8_lossy(&purge.stderr));
    assert!(!Path::new("/usr/bin/enrichd").exists());
}

/// The `KEY=value` (or `# KEY=value`) names of an env file.
fn env_names(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
        .collect()
}

#[test]
fn container_files_match_the_binary() {
    let containerfile = read("deploy/container/Containerfile");
    let compose = read("deploy/compose.yaml");
    let env_example = read("deploy/.env.example");

    // Every variable the env file sets is one the binary documents.
    let help = Command::new(env!("CARGO_BIN_EXE_enrichd")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let documented: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Environment:"))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.bytes().all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'<' || b == b'>'))
        .collect();
    let known = |name: &str| {
        documented.iter().any(|d| match d.split_once('<') {
            Some((prefix, rest)) => {
                let suffix = rest.split_once('>').map_or("", |(_, s)| s);
                name.starts_with(prefix) && name.ends_with(suffix) && name.len() > prefix.len() + suffix.len()
            }
            None => *d == name,
        })
    };
    let names = env_names(&env_example);
    assert!(names.contains(&"API_KEY".to_string()), "{names:?}");
    for name in &names {
        assert!(known(name), "{name} (deploy/.env.example) is not a variable enrichd reads: {documented:?}");
    }

    // The image: data in /data, the listen port exposed, the health check
    // on the health route, the same in compose.
    assert!(containerfile.contains("ENRICHD_DATA_DIR=/data"), "data directory");
    assert!(containerfile.contains("CMD [\"serve\", \"--listen\", \"0.0.0.0:8080\"]"));
    assert!(containerfile.contains("EXPOSE 8080"));
    assert!(containerfile.contains("curl -fsS http://localhost:8080/v1/health"));
    assert!(containerfile.contains("USER enrichd"), "non-root");
    assert!(
        compose.contains("\"8080:8080\"") && compose.contains("./data:/data") && compose.contains("env_file: .env")
    );
    assert!(compose.contains("\"curl\", \"-fsS\", \"http://localhost:8080/v1/health\""));

    // Run it as the image does (its ENV and CMD, an empty working
    // directory), with the reference layout's database in /data/geo.
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(data_dir.join("geo")).unwrap();
    std::fs::copy(data("maxmind/GeoIP2-City-Test.mmdb"), data_dir.join("geo/GeoLite2-City.mmdb")).unwrap();
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_enrichd"));
    for var in common::OVERRIDE_VARS {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .env("ENRICHD_DATA_DIR", &data_dir)
        .env("ENRICHD_LOG_FORMAT", "json")
        .env("API_KEY", "container-key")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let details = health_details(&mut child, port, "container-key");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(stage_state(&details, "geoip"), "loaded", "/data/geo/GeoLite2-City.mmdb: {details}");
    assert_eq!(stage_state(&details, "ti"), "loaded", "/data/ti/indicators.txt: {details}");
    assert_eq!(stage_state(&details, "risk"), "loaded", "{details}");
    assert!(data_dir.join("ti/indicators.txt").is_file() && data_dir.join("config.toml").is_file());
}
