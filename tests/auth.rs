//! Scoped keys end to end (issue 13 point 3): `[[auth.keys]]` entries
//! stored as SHA-256 digests, each with its scopes; 401 for unknown keys,
//! 403 naming the missing scope for known ones; keys rotated by a reload
//! without a restart, audited without naming a key.

mod common;

use std::fs;
use std::process::Stdio;

use common::{agent, bin, test_chain, Reply, Server};
use serde_json::{json, Value};

fn call(s: &Server, method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> Reply {
    let url = s.url(path);
    let with_key = |req: ureq::RequestBuilder<ureq::typestate::WithBody>| match key {
        Some(k) => req.header("Authorization", format!("Bearer {k}")),
        None => req,
    };
    let resp = match method {
        "POST" => with_key(agent().post(&url)).send_json(body.cloned().unwrap_or(json!({}))),
        _ => {
            let req = agent().get(&url);
            match key {
                Some(k) => req.header("Authorization", format!("Bearer {k}")).call(),
                None => req.call(),
            }
        }
    };
    let mut resp = resp.expect("HTTP exchange");
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        text: resp.body_mut().read_to_string().unwrap(),
    }
}

/// `enrichd key new` output: (the key, the `[[auth.keys]]` entry).
fn new_key(name: &str, scopes: &str) -> (String, String) {
    let out = bin().args(["key", "new", "--name", name, "--scopes", scopes]).stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().find(|l| l.starts_with("enr_")).expect("a key line").to_string();
    let entry = text[text.find("[[auth.keys]]").expect("an entry")..].to_string();
    assert!(!entry.contains(&key), "the entry holds only the digest: {entry}");
    (key, entry)
}

/// The printed entry is TOML whatever the name holds (Rust's `{:?}`
/// printed a zero-width space as `\u{200b}`, which TOML does not read).
#[test]
fn key_new_prints_an_entry_toml_reads_for_any_name() {
    for name in ["sensor \"eu\"", "soc\u{200b}desk", "tab\there", "ünï"] {
        let (_, entry) = new_key(name, "read");
        let doc: toml::Table = toml::from_str(&entry).unwrap_or_else(|e| panic!("{entry}: {e}"));
        assert_eq!(doc["auth"]["keys"][0]["name"].as_str(), Some(name), "{entry}");
    }
}

fn ingest_body() -> Value {
    json!({"collector_id": "t", "format": "flows.v1", "records": [{"src_ip": "10.0.0.1", "dst_ip": "1.128.0.1",
        "src_port": 1, "dst_port": 443, "protocol": "tcp", "bytes": 1, "packets": 1}]})
}

#[test]
fn scoped_keys_get_what_their_scopes_allow_and_rotate_without_a_restart() {
    let (sensor, sensor_entry) = new_key("sensor-eu", "ingest");
    let (viewer, viewer_entry) = new_key("soc-dashboard", "read");
    let (operator, operator_entry) = new_key("operator", "admin,read");
    let config = |entries: &str| format!("[reload]\nwatch = false\n\n[auth]\n\n{entries}\n{}", test_chain());
    let mut s =
        Server::start_with(&config(&format!("{sensor_entry}\n{viewer_entry}\n{operator_entry}")), &[("API_KEY", "")]);
    let config_path = s.dir.path().join("config.toml");

    // ingest: the sensor only.
    assert_eq!(call(&s, "POST", "/v1/ingest", Some(&sensor), Some(&ingest_body())).status, 200);
    let r = call(&s, "POST", "/v1/ingest", Some(&viewer), Some(&ingest_body()));
    assert_eq!((r.status, r.json()["error"].clone()), (403, json!("scope_required")), "{}", r.text);
    assert_eq!(r.json()["required_scope"], "ingest");
    // read: the viewer and the operator, not the sensor.
    assert_eq!(call(&s, "GET", "/v1/enrichers", Some(&viewer), None).status, 200);
    assert_eq!(call(&s, "GET", "/v1/enrichers", Some(&operator), None).status, 200);
    let r = call(&s, "GET", "/v1/enrichers", Some(&sensor), None);
    assert_eq!((r.status, r.json()["required_scope"].clone()), (403, json!("read")), "{}", r.text);
    assert_eq!(call(&s, "POST", "/v1/lookup", Some(&sensor), Some(&json!({"ip": "1.128.0.1"}))).status, 403);
    // admin: the operator only.
    assert_eq!(call(&s, "GET", "/v1/audit", Some(&operator), None).status, 200);
    let r = call(&s, "POST", "/v1/reload", Some(&viewer), None);
    assert_eq!((r.status, r.json()["error"].clone()), (403, json!("admin_key_required")), "{}", r.text);
    // Unknown keys are 401, and no answer names a key.
    let r = call(&s, "GET", "/v1/enrichers", Some("enr_0000"), None);
    assert_eq!(r.status, 401);
    for key in [&sensor, &viewer, &operator] {
        assert!(!r.text.contains(key.as_str()));
    }

    // Rotation: the sensor's key is replaced by a new one; a reload makes
    // it live, no restart. The old key stops working at once.
    let (sensor2, sensor2_entry) = new_key("sensor-eu", "ingest");
    fs::write(&config_path, config(&format!("{sensor2_entry}\n{viewer_entry}\n{operator_entry}"))).unwrap();
    let pid = s.pid();
    let r = call(&s, "POST", "/v1/reload", Some(&operator), None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["needs_restart"], json!([]), "keys apply live: {}", r.text);
    assert_eq!(s.pid(), pid);
    assert_eq!(call(&s, "POST", "/v1/ingest", Some(&sensor), Some(&ingest_body())).status, 401);
    assert_eq!(call(&s, "POST", "/v1/ingest", Some(&sensor2), Some(&ingest_body())).status, 200);
    let audit = call(&s, "GET", "/v1/audit", Some(&operator), None).json();
    let rotation = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "keys_replaced")
        .unwrap_or_else(|| panic!("no keys_replaced entry: {audit}"));
    assert_ne!(rotation["before_sha256"], rotation["after_sha256"]);
    let log = fs::read_to_string(s.dir.path().join("state/audit.jsonl")).unwrap() + &s.log();
    for key in [&sensor, &sensor2, &viewer, &operator] {
        assert!(!log.contains(key.as_str()), "a key in the audit log or the server log");
    }

    // A broken entry is refused whole: the running keys stay.
    fs::write(&config_path, config("[[auth.keys]]\nname = \"x\"\nsha256 = \"abc\"\nscopes = [\"read\"]\n")).unwrap();
    let r = call(&s, "POST", "/v1/reload", Some(&operator), None);
    assert!(r.text.contains("64 hex"), "{}", r.text);
    assert_eq!(call(&s, "POST", "/v1/ingest", Some(&sensor2), Some(&ingest_body())).status, 200);
    assert_eq!(call(&s, "GET", "/v1/audit", Some(&operator), None).status, 200);

    // A restart on a broken file fails with the entry named.
    let out = bin().args(["check-config", "--config"]).arg(&config_path).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[[auth.keys]] #1") && stderr.contains("config.toml:"), "{stderr}");
    s.terminate();
}

#[test]
fn key_hash_prints_the_digest_and_id_logs_use() {
    use std::io::Write;
    let mut child =
        bin().args(["key", "hash"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("enrichd key hash");
    child.stdin.take().unwrap().write_all(b"test-key-7f3a\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    // What the operator's side computes: `printf %s KEY | sha256sum`.
    let expected = std::process::Command::new("sh")
        .args(["-c", "printf %s test-key-7f3a | sha256sum"])
        .output()
        .expect("sha256sum");
    let expected = String::from_utf8(expected.stdout).unwrap().split_whitespace().next().unwrap().to_string();
    assert_eq!(expected.len(), 64);
    assert!(text.contains(&format!("sha256 = \"{expected}\"")), "{text}");
    assert!(text.contains(&format!("id = {}", &expected[..12])), "{text}");
}

/// A key removed by a reload also stops what it was watching: an open tap
/// ends within a couple of seconds, instead of streaming event content
/// to a key that no longer exists.
#[test]
fn a_removed_key_ends_its_open_tap() {
    use std::io::{BufRead, BufReader};
    let (old, admin) = ("old-key-4d1c", "admin-key-8e2a");
    let config = |keys: &str| {
        format!("[reload]\nwatch = false\n[auth]\napi_keys = [{keys}]\nadmin_keys = [\"{admin}\"]\n{}", test_chain())
    };
    let s = Server::start_with(&config(&format!("\"{old}\", \"new-key-77f0\"")), &[("API_KEY", "")]);
    let response =
        agent().get(&s.url("/v1/tap?rate=1000")).header("Authorization", format!("Bearer {old}")).call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(response.into_body().into_reader()).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
        // Dropping `tx` tells the test the stream ended.
    });
    fs::write(s.dir.path().join("config.toml"), config("\"new-key-77f0\"")).unwrap();
    assert_eq!(call(&s, "POST", "/v1/reload", Some(admin), None).status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert_eq!(call(&s, "POST", "/v1/ingest", Some("new-key-77f0"), Some(&ingest_body())).status, 200);
        match rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            _ => assert!(std::time::Instant::now() < deadline, "the tap still streams to a removed key"),
        }
    }
}
