//! TLS end to end (issue 13 point 3): HTTPS with certificates made by
//! OpenSSL and requests made by curl (outside implementations of both
//! ends), client certificates, rotation by replacing the files, a broken
//! replacement refused, and a stalled handshake cut off.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Server, KEY};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A P-256 key and a certificate for `cn` signed by the test CA.
fn issue(dir: &Path, name: &str, cn: &str, usage: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

fn curl(dir: &Path, url: &str, extra: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "-v", "--max-time", "10", "--cacert", "ca.pem"])
        .args(extra)
        .arg(url)
        .current_dir(dir)
        .output()
        .expect("curl")
}

const CLIENT: [&str; 4] = ["--cert", "client.pem", "--key", "client.key"];

#[test]
fn https_with_client_certificates_rotates_and_keeps_the_last_good_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ca_and_server(dir);
    issue(dir, "client", "sensor-eu", "clientAuth");
    let config = format!(
        "[server]\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\ntls_client_ca = \"ca.pem\"\nheader_timeout_s = 1\n\
         [auth]\napi_keys = [\"{KEY}\"]\n[reload]\nwatch = false\n\n{}",
        common::test_chain()
    );
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, config).unwrap();
    let s = Server::start_file(&config_path, &[], tmp);
    let dir = s.dir.path();
    assert!(s.base.starts_with("https://"), "{}", s.base);
    let health = s.url("/v1/health");

    // A client with a certificate from the CA gets in.
    let ok = curl(dir, &health, &CLIENT);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout), r#"{"status":"ok"}"#);
    assert!(String::from_utf8_lossy(&ok.stderr).contains("CN=enrichd-1"));
    let auth = format!("Authorization: Bearer {KEY}");
    let details = curl(dir, &s.url("/v1/health/details"), &[&CLIENT[..], &["-H", &auth]].concat());
    let details: serde_json::Value = serde_json::from_slice(&details.stdout).unwrap();
    assert_eq!(details["tls"]["client_auth"], "required", "{details}");
    // Without one, or over plain HTTP, nothing is served.
    assert!(!curl(dir, &health, &[]).status.success(), "no client certificate must fail the handshake");
    let plain = curl(dir, &health.replace("https://", "http://"), &[]);
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("ok"));

    // A stalled handshake is cut off after header_timeout_s; others go on.
    let mut stalled = TcpStream::connect(s.base.trim_start_matches("https://")).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    assert!(curl(dir, &health, &CLIENT).status.success());
    let mut buf = [0u8; 64];
    assert!(matches!(stalled.read(&mut buf), Ok(0) | Err(_)));
    assert!(started.elapsed() < Duration::from_secs(4), "closed after {:?}", started.elapsed());

    // Rotation: a new pair renamed into place is served within seconds.
    issue(dir, "next", "enrichd-2", "serverAuth");
    std::fs::rename(dir.join("next.key"), dir.join("server.key")).unwrap();
    std::fs::rename(dir.join("next.pem"), dir.join("server.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = curl(dir, &health, &CLIENT);
        if String::from_utf8_lossy(&out.stderr).contains("CN=enrichd-2") {
            break;
        }
        assert!(Instant::now() < deadline, "the new certificate was not picked up");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A broken replacement is refused and reported; the running pair stays.
    std::fs::write(dir.join("server.pem"), "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = curl(dir, &s.url("/v1/health/details"), &[&CLIENT[..], &["-H", &auth]].concat());
        assert!(out.status.success(), "still served: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("CN=enrichd-2"));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if doc["tls"]["last_error"].as_str().is_some_and(|e| e.contains("tls_cert")) {
            break;
        }
        assert!(Instant::now() < deadline, "no error reported: {doc}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A test CA and a server certificate in `dir`.
fn ca_and_server(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=enrichd test CA",
        ],
    );
    issue(dir, "server", "enrichd-1", "serverAuth");
}

/// Sockets that never start their handshake, as many as the connection
/// cap, do not lock HTTPS clients out: each newcomer evicts one at once
/// (before, a stalled handshake ignored eviction, and newcomers were
/// refused until `header_timeout_s` ended it), and nothing in plain text
/// is written to a TLS client.
#[test]
fn silent_sockets_at_the_cap_do_not_lock_https_clients_out() {
    let tmp = tempfile::tempdir().unwrap();
    ca_and_server(tmp.path());
    let config = format!(
        "[server]\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\nmax_connections = 4\nheader_timeout_s = 30\n\
         [auth]\napi_keys = [\"{KEY}\"]\n[reload]\nwatch = false\n\n{}",
        common::test_chain()
    );
    let config_path = tmp.path().join("config.toml");
    std::fs::write(&config_path, config).unwrap();
    let s = Server::start_file(&config_path, &[], tmp);
    let dir = s.dir.path();
    let address = s.base.trim_start_matches("https://").to_string();
    let hoard: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&address).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let started = Instant::now();
        let out = curl(dir, &s.url("/v1/health"), &[]);
        assert!(out.status.success(), "refused at the cap: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), r#"{"status":"ok"}"#);
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    }
    drop(hoard);
}

#[test]
fn tls_settings_that_cannot_work_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[server]\ntls_cert = \"server.pem\"\n").unwrap();
    let out = common::bin().args(["check-config", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls_cert is set without tls_key"));
    // Files that are not there: serve says which.
    std::fs::write(&config, "[server]\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\n").unwrap();
    let out = common::bin().args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.pem"), "{}", String::from_utf8_lossy(&out.stderr));
}
