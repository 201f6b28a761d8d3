//! How changes are asked for and seen: the configuration file, SIGHUP
//! and the reload endpoint, the admin API and its key, the audit log.

use super::*;

#[test]
fn config_changes_apply_live_or_ask_for_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("feed.txt"), format!("{TARGET}\n")).unwrap();
    let asn = format!("[[chain]]\nplugin = \"asn\"\ndatabase = \"{}\"\n", data("maxmind/GeoLite2-ASN-Test.mmdb"));
    let chain = format!("{}{asn}", ti_chain("\"feed.txt\""));
    let server = start(dir, &config(&chain, ""));
    let path = server.dir.path().join("config.toml");
    let probe = flows(2, 443, "1.128.0.1");
    let has_asn = |e: &Value| e["asn"]["asn"].to_string();
    assert_eq!(has_asn(&ingest(&server.base, &probe).unwrap()[0]), "1221");
    let ti_generation = stage(&server, "ti")["generation"].clone();

    // Disable a stage: applied live; the untouched stage keeps its data.
    fs::write(
        &path,
        config(&format!("{}{}", ti_chain("\"feed.txt\""), asn.replace("\"asn\"\n", "\"asn\"\nenabled = false\n")), ""),
    )
    .unwrap();
    wait_for(&server.base, &probe, has_asn, "null", LIVE_WITHIN);
    assert_eq!(stage(&server, "ti")["generation"], ti_generation);
    assert_eq!(ti_of_target(&ingest(&server.base, &probe).unwrap()[0]), format!("{TARGET}@feed.txt"));

    // A broken configuration is refused whole, with file and line.
    fs::write(&path, config(&format!("{chain}[[chain]]\nplugin = \"no-such-plugin\"\n"), "")).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let status = server.get_auth("/v1/enrichers").json();
    let error = status["reload"]["last_config_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("config.toml:") && error.contains("no-such-plugin"), "{status}");
    assert_eq!(has_asn(&ingest(&server.base, &probe).unwrap()[0]), "null");

    // What cannot change live is reported, not ignored.
    fs::write(&path, config(&chain, "[server]\nmax_records = 5\n")).unwrap();
    wait_for(&server.base, &probe, has_asn, "1221", LIVE_WITHIN);
    let status = server.get_auth("/v1/enrichers").json();
    assert_eq!(status["reload"]["needs_restart"], json!(["server"]), "{status}");
    assert!(ingest(&server.base, &flows(8, 443, "1.128.0.1")).is_ok(), "the running limit stays until restart");
}

#[test]
fn api_indicators_need_the_admin_key_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("feed.txt"), "198.51.100.0/24\n").unwrap();
    let text = config(&ti_chain("\"feed.txt\""), "");
    let server = start(dir, &text);
    let probe = flows(2, 443, "192.0.2.1");
    let put = json!({"indicators": [{"indicator": TARGET, "category": "scanner", "confidence": 75}]});

    // A valid key of the wrong kind is known but not allowed: 403 (an
    // unknown key stays 401).
    let r = admin(&server, "PUT", "/v1/indicators", Some(&put), KEY);
    assert_eq!((r.status, r.json()["error"].clone()), (403, json!("admin_key_required")), "{}", r.text);
    assert_eq!(admin(&server, "POST", "/v1/reload", None, KEY).status, 403);
    assert_eq!(admin(&server, "PUT", "/v1/indicators", Some(&put), "not-a-key").status, 401);
    let bad = json!([{"indicator": TARGET}, {"indicator": "999.1.1.1"}]);
    let r = admin(&server, "PUT", "/v1/indicators", Some(&bad), ADMIN);
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["index"], 1);
    assert!(
        admin(&server, "GET", "/v1/indicators", None, ADMIN).json()["indicators"].as_array().unwrap().is_empty(),
        "nothing of a refused request is stored"
    );

    let r = admin(&server, "PUT", "/v1/indicators", Some(&put), ADMIN);
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.json()["indicators"][0]["id"].as_str().unwrap().to_string();
    // Live when the call returns.
    let event = &ingest(&server.base, &probe).unwrap()[0];
    assert_eq!(ti_of_target(event), format!("{TARGET}@api"));
    assert_eq!(event["ti"]["matches"][0]["category"], "scanner");

    // A restart on the same state directory keeps it.
    let mut server = server;
    server.restart();
    assert_eq!(ti_of_target(&ingest(&server.base, &probe).unwrap()[0]), format!("{TARGET}@api"));

    let r = admin(&server, "DELETE", &format!("/v1/indicators/{id}"), None, ADMIN);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(ti_of_target(&ingest(&server.base, &probe).unwrap()[0]), "");
    assert_eq!(admin(&server, "DELETE", &format!("/v1/indicators/{id}"), None, ADMIN).status, 404);
}

#[test]
fn admin_endpoints_are_disabled_without_an_admin_key() {
    let server = Server::start(&common::test_chain());
    let r = admin(&server, "POST", "/v1/reload", None, KEY);
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.json()["error"], "admin_disabled");
}

#[test]
fn sighup_and_reload_endpoint_work_without_watching() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.txt");
    fs::write(&feed, "198.51.100.0/24\n").unwrap();
    let server =
        start(dir, &config(&ti_chain("\"feed.txt\""), "watch = false\n").replace("\n\n[[chain]]", "\n[[chain]]"));
    let probe = flows(2, 443, "192.0.2.1");

    fs::write(&feed, format!("{TARGET}\n")).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(ti_of_target(&ingest(&server.base, &probe).unwrap()[0]), "", "not watching: nothing reloads by itself");
    let r = admin(&server, "POST", "/v1/reload", None, ADMIN);
    assert_eq!(r.status, 200, "{}", r.text);
    let stages = r.json()["stages"].clone();
    assert_eq!(stages[0]["outcome"], "reloaded", "{stages}");
    assert_eq!(ti_of_target(&ingest(&server.base, &probe).unwrap()[0]), format!("{TARGET}@feed.txt"));

    fs::write(&feed, "203.0.113.0/24\n").unwrap();
    let pid = server.pid();
    let status = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    wait_for(&server.base, &probe, ti_of_target, "203.0.113.0/24@feed.txt", LIVE_WITHIN);
}

/// Issue 17, item 12: `serve --listen` (every test server runs with
/// `--listen 127.0.0.1:0`) is part of the running settings: an unchanged
/// file, or a file changing only the overridden address, needs no restart.
#[test]
fn cli_listen_is_not_a_pending_restart() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("feed.txt"), format!("{TARGET}\n")).unwrap();
    let text = config(&ti_chain("\"feed.txt\""), "watch = false\n").replace("\n\n[[chain]]", "\n[[chain]]");
    let server = start(dir, &text);
    let reload = |server: &Server| {
        let r = admin(server, "POST", "/v1/reload", None, ADMIN);
        assert_eq!(r.status, 200, "{}", r.text);
        r.json()["needs_restart"].clone()
    };
    assert_eq!(reload(&server), json!([]), "unchanged file");
    let path = server.dir.path().join("config.toml");
    fs::write(&path, format!("[server]\nlisten = \"127.0.0.1:9\"\n{text}")).unwrap();
    assert_eq!(reload(&server), json!([]), "the command line's address wins over the file's");
    fs::write(&path, format!("[server]\nmax_records = 5\n{text}")).unwrap();
    assert_eq!(reload(&server), json!(["server"]));
}

/// Issue 17, item 5: an emptied configuration file, or one cut before its
/// first `[[chain]]` that still parses, does not swap in an empty chain;
/// `chain = []` written out does.
#[test]
fn an_empty_or_chainless_config_keeps_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("feed.txt"), format!("{TARGET}\n")).unwrap();
    let text = config(&ti_chain("\"feed.txt\""), "");
    let server = start(dir, &text);
    let path = server.dir.path().join("config.toml");
    let probe = flows(2, 443, "192.0.2.1");
    let want = format!("{TARGET}@feed.txt");
    let load = Load::start(&server.base, flows(50, 443, "192.0.2.1"), "ti", ti_of_target);
    let failures =
        |server: &Server| server.get_auth("/v1/enrichers").json()["reload"]["config_reload_failures"].clone();

    // `: > config.toml`, then a write cut after the first sections.
    let cut = text[..text.find("[[chain]]").unwrap()].to_string();
    for (n, broken) in ["", &cut].into_iter().enumerate() {
        fs::write(&path, broken).unwrap();
        let started = Instant::now();
        while failures(&server) != json!(n + 1) {
            assert!(started.elapsed() < LIVE_WITHIN, "not refused: {}", server.get_auth("/v1/enrichers").text);
            std::thread::sleep(Duration::from_millis(25));
        }
        stays(&server.base, &probe, ti_of_target, &want, Duration::from_millis(200));
        let status = server.get_auth("/v1/enrichers").json();
        let error = status["reload"]["last_config_error"].as_str().unwrap();
        assert!(error.contains("no [[chain]] entry") && error.contains("chain = []"), "{error}");
        assert_eq!(status["reload"]["needs_restart"], json!([]), "a refused file changes nothing: {status}");
        assert_eq!(status["enrichers"].as_array().unwrap().len(), 1);
    }
    load.finish();

    // The explicit reload answers the same, with the refusal in its report.
    let r = admin(&server, "POST", "/v1/reload", None, ADMIN);
    assert_eq!(r.json()["config"]["outcome"], "rejected", "{}", r.text);

    // Written out (top level, before the first section), an empty chain
    // is applied.
    fs::write(&path, format!("chain = []\n{cut}")).unwrap();
    wait_for(&server.base, &probe, |e| e["ti"].to_string(), "null", LIVE_WITHIN);
    assert!(server.get_auth("/v1/enrichers").json()["enrichers"].as_array().unwrap().is_empty());
}

/// Every change is in the audit log: API reloads, indicator edits and
/// output settings with the admin key's id, file edits picked up by the
/// watcher, each with the content hashes before and after; only an admin
/// key reads it.
#[test]
fn changes_are_audited_with_key_ids_and_hashes() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("feed.txt"), "198.51.100.0/24\n").unwrap();
    let server = start(dir, &config(&ti_chain("\"feed.txt\""), ""));
    let id = |key: &str| {
        use sha2::Digest;
        sha2::Sha256::digest(key.as_bytes())[..6].iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let put = json!({"indicators": [{"indicator": TARGET}]});
    assert_eq!(admin(&server, "PUT", "/v1/indicators", Some(&put), ADMIN).status, 200);
    assert_eq!(admin(&server, "POST", "/v1/reload", None, ADMIN).status, 200);
    let out = json!({"type": "file", "path": "archive.ndjson"});
    assert_eq!(admin(&server, "PUT", "/v1/outputs/archive", Some(&out), ADMIN).status, 201);
    fs::write(server.dir.path().join("feed.txt"), "198.51.100.0/24\n192.0.2.0/24\n").unwrap();
    let deadline = Instant::now() + LIVE_WITHIN;
    let entries = loop {
        let r = admin(&server, "GET", "/v1/audit?limit=50", None, ADMIN);
        assert_eq!(r.status, 200, "{}", r.text);
        let entries = r.json()["entries"].as_array().unwrap().clone();
        if entries.iter().any(|e| e["actor"] == "watcher" && e["action"] == "stage_swapped") {
            break entries;
        }
        assert!(Instant::now() < deadline, "the watcher's swap was not audited: {entries:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let find = |action: &str| {
        entries.iter().find(|e| e["action"] == action).unwrap_or_else(|| panic!("{action}: {entries:#?}"))
    };
    let edit = find("resource_put");
    assert_eq!((edit["target"].as_str(), edit["key_id"].as_str()), (Some("/v1/indicators"), Some(&*id(ADMIN))));
    assert_eq!(edit["result"], "200");
    assert_ne!(edit["before_sha256"], edit["after_sha256"], "the indicator edit changed what runs: {edit}");
    assert_eq!(find("reload")["key_id"].as_str(), Some(&*id(ADMIN)));
    let output = find("output_set");
    assert!(output["before_sha256"].is_null() && output["after_sha256"].is_string(), "{output}");
    let swap = entries.iter().find(|e| e["actor"] == "watcher").unwrap();
    assert_eq!(swap["target"], "ti");
    assert!(swap["key_id"].is_null() && swap["before_sha256"] != swap["after_sha256"], "{swap}");
    // Newest first.
    let times: Vec<&str> = entries.iter().map(|e| e["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    assert_eq!(admin(&server, "GET", "/v1/audit", None, KEY).status, 403);
    assert_eq!(server.get("/v1/audit").status, 401);
    assert_eq!(admin(&server, "GET", "/v1/audit?limit=0", None, ADMIN).status, 400);
    let file = server.dir.path().join("state/audit.jsonl");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let text = fs::read_to_string(&file).unwrap();
    assert!(!text.contains(ADMIN) && !text.contains(KEY), "a key in the audit log");
}
