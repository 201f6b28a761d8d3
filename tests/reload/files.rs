//! Data files edited the ways tools edit them (in place, by rename, a
//! directory gaining and losing files), under load: each change goes live
//! atomically or is held back with the last good version kept.

use super::*;

#[test]
fn indicator_file_edits_go_live_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.txt");
    fs::write(&feed, "198.51.100.0/24\n").unwrap();
    let server = start(dir, &config(&ti_chain("\"feed.txt\""), ""));
    let probe = flows(2, 443, "192.0.2.1");
    let load = Load::start(&server.base, flows(50, 443, "192.0.2.1"), "ti", ti_of_target);
    assert_eq!(ingest(&server.base, &probe).unwrap()[0]["ti"]["matches"], json!([]));

    // Append in place.
    let mut file = fs::OpenOptions::new().append(true).open(&feed).unwrap();
    std::io::Write::write_all(&mut file, format!("{TARGET}\n").as_bytes()).unwrap();
    drop(file);
    let took = wait_for(&server.base, &probe, ti_of_target, &format!("{TARGET}@feed.txt"), LIVE_WITHIN);
    eprintln!("append live after {took:?}");

    // Write to a temporary file, rename over.
    rename_over(&feed, b"203.0.113.0/24\n");
    wait_for(&server.base, &probe, ti_of_target, "203.0.113.0/24@feed.txt", LIVE_WITHIN);

    // Delete, then create: while the file is gone the last good version
    // stays live and the refusal is visible.
    fs::remove_file(&feed).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    stays(&server.base, &probe, ti_of_target, "203.0.113.0/24@feed.txt", Duration::from_millis(200));
    let ti = stage(&server, "ti");
    assert!(ti["last_reload_error"].as_str().unwrap_or("").contains("not found"), "{ti}");
    assert!(ti["reload_failures"].as_u64().unwrap() >= 1);
    fs::write(&feed, format!("{TARGET}\n")).unwrap();
    wait_for(&server.base, &probe, ti_of_target, &format!("{TARGET}@feed.txt"), LIVE_WITHIN);
    assert!(stage(&server, "ti")["last_reload_error"].is_null(), "a good reload clears the error");

    // Garbage (or a write caught half-way) is refused: last good stays.
    fs::write(&feed, "this is not\nan indicator file\n").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    stays(&server.base, &probe, ti_of_target, &format!("{TARGET}@feed.txt"), Duration::from_millis(200));
    assert!(stage(&server, "ti")["last_reload_error"].as_str().unwrap().contains("no valid indicator"));

    // An editor's swap file next to the feed changes nothing.
    let generation = stage(&server, "ti")["generation"].as_u64().unwrap();
    fs::write(feed.with_file_name(".feed.txt.swp"), "binary junk").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(stage(&server, "ti")["generation"].as_u64().unwrap(), generation);

    // Copy over (truncate and rewrite in place).
    fs::write(&feed, "203.0.113.64/26\n").unwrap();
    wait_for(&server.base, &probe, ti_of_target, "203.0.113.64/26@feed.txt", LIVE_WITHIN);
    load.finish();
    let ti = stage(&server, "ti");
    assert!(ti["reloads"].as_u64().unwrap() >= 4, "{ti}");
}

#[test]
fn indicator_directory_gains_and_loses_files() {
    let dir = tempfile::tempdir().unwrap();
    let feeds = dir.path().join("feeds");
    fs::create_dir(&feeds).unwrap();
    fs::write(feeds.join("a.txt"), "198.51.100.1\n").unwrap();
    let server = start(dir, &config(&ti_chain("\"feeds\""), ""));
    let probe = flows(2, 443, "192.0.2.1");
    let load = Load::start(&server.base, flows(50, 443, "192.0.2.1"), "ti", ti_of_target);
    assert_eq!(ti_of_target(&ingest(&server.base, &probe).unwrap()[0]), "");

    fs::write(feeds.join("b.csv"), format!("ip_or_cidr,category,confidence\n{TARGET},c2,90\n")).unwrap();
    wait_for(&server.base, &probe, ti_of_target, &format!("{TARGET}@feeds/b.csv"), LIVE_WITHIN);
    let events = ingest(&server.base, &probe).unwrap();
    assert_eq!(events[0]["ti"]["matches"][0]["category"], "c2");

    fs::write(feeds.join("c.txt"), "203.0.113.0/24\n").unwrap();
    wait_for(
        &server.base,
        &probe,
        ti_of_target,
        &format!("203.0.113.0/24@feeds/c.txt,{TARGET}@feeds/b.csv"),
        LIVE_WITHIN,
    );

    fs::remove_file(feeds.join("b.csv")).unwrap();
    wait_for(&server.base, &probe, ti_of_target, "203.0.113.0/24@feeds/c.txt", LIVE_WITHIN);
    fs::remove_file(feeds.join("c.txt")).unwrap();
    wait_for(&server.base, &probe, ti_of_target, "", LIVE_WITHIN);
    load.finish();
}

#[test]
fn wasm_rule_swap_and_broken_module() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("rule.wasm");
    fs::copy(repo().join("rules/risk.wasm"), &module).unwrap();
    let chain = "[[chain]]\nplugin = \"wasm\"\nname = \"risk\"\nmodule = \"rule.wasm\"\nrole = \"rule\"\n";
    let server = start(dir, &config(chain, ""));
    // Telnet: the default rule gives 10 + 10, the C example rule 70.
    let probe = flows(2, 23, "192.0.2.1");
    let load = Load::start(&server.base, flows(50, 23, "192.0.2.1"), "risk", score);
    assert_eq!(score(&ingest(&server.base, &probe).unwrap()[0]), "20");

    rename_over(&module, &fs::read(repo().join("rules/examples/admin_ports.wasm")).unwrap());
    let took = wait_for(&server.base, &probe, score, "70", LIVE_WITHIN);
    eprintln!("new rule live after {took:?}");
    let generation = stage(&server, "risk")["generation"].as_u64().unwrap();

    // Not WebAssembly, then a module missing the ABI: both refused.
    rename_over(&module, b"\0asm garbage that is not a module");
    std::thread::sleep(Duration::from_millis(600));
    stays(&server.base, &probe, score, "70", Duration::from_millis(200));
    let risk = stage(&server, "risk");
    assert_eq!(risk["generation"].as_u64().unwrap(), generation);
    assert!(risk["last_reload_error"].as_str().unwrap().contains("rule.wasm"), "{risk}");
    assert_eq!(risk["state"], "loaded");

    rename_over(&module, b"\0asm\x01\0\0\0");
    std::thread::sleep(Duration::from_millis(600));
    stays(&server.base, &probe, score, "70", Duration::from_millis(200));

    rename_over(&module, &fs::read(repo().join("rules/risk.wasm")).unwrap());
    wait_for(&server.base, &probe, score, "20", LIVE_WITHIN);
    load.finish();
}

#[test]
fn mmdb_swap_in_place_and_truncated_copy() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("geo.mmdb");
    fs::copy(data("maxmind/GeoIP2-City-Test.mmdb"), &db).unwrap();
    let chain = "[[chain]]\nplugin = \"geoip\"\ndatabase = \"geo.mmdb\"\n";
    let server = start(dir, &config(chain, ""));
    let probe = flows(2, 443, "81.2.69.142");
    let load = Load::start(&server.base, flows(50, 443, "81.2.69.142"), "geoip", city);
    assert_eq!(city(&ingest(&server.base, &probe).unwrap()[0]), "\"London\"");

    // `cp` over the mapped file: truncates and rewrites it in place.
    fs::copy(data("maxmind/GeoIP2-Country-Test.mmdb"), &db).unwrap();
    wait_for(&server.base, &probe, city, "null", LIVE_WITHIN);
    assert_eq!(ingest(&server.base, &probe).unwrap()[0]["geo"]["country"], "GB");

    // A truncated copy is refused; the Country database stays live.
    let full = fs::read(data("maxmind/GeoIP2-City-Test.mmdb")).unwrap();
    fs::write(&db, &full[..full.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    stays(&server.base, &probe, city, "null", Duration::from_millis(200));
    let geo = stage(&server, "geoip");
    assert!(geo["last_reload_error"].as_str().is_some(), "{geo}");
    assert!(geo["version"].as_str().unwrap().contains("Country"), "{geo}");

    fs::write(&db, &full).unwrap();
    wait_for(&server.base, &probe, city, "\"London\"", LIVE_WITHIN);
    load.finish();
}

#[test]
fn a_database_added_after_start_goes_live() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("geo")).unwrap();
    let chain = "[[chain]]\nplugin = \"geoip\"\ndatabase = \"geo/City.mmdb\"\n";
    let server = start(dir, &config(chain, ""));
    let probe = flows(2, 443, "81.2.69.142");
    assert_eq!(stage(&server, "geoip")["state"], "missing");
    assert_eq!(city(&ingest(&server.base, &probe).unwrap()[0]), "null");
    fs::copy(data("maxmind/GeoIP2-City-Test.mmdb"), server.dir.path().join("geo/City.mmdb")).unwrap();
    wait_for(&server.base, &probe, city, "\"London\"", LIVE_WITHIN);
    assert_eq!(stage(&server, "geoip")["state"], "loaded");
}

/// Issue 17, item 1: a sparse 1 GiB file dropped into an indicator
/// directory is refused by its size (no read, no CPU spin, no giant error
/// text); a 10 MB line is skipped and reported by its length. The public
/// metrics and the enrichers report stay small throughout.
#[test]
fn huge_indicator_files_and_lines_are_refused_cheaply() {
    let dir = tempfile::tempdir().unwrap();
    let feeds = dir.path().join("feeds");
    fs::create_dir(&feeds).unwrap();
    fs::write(feeds.join("a.txt"), format!("{TARGET}\n")).unwrap();
    let server = start(dir, &config(&ti_chain("\"feeds\""), ""));
    let probe = flows(2, 443, "192.0.2.1");
    let load = Load::start(&server.base, flows(50, 443, "192.0.2.1"), "ti", ti_of_target);
    let want = format!("{TARGET}@feeds/a.txt");
    assert_eq!(ti_of_target(&ingest(&server.base, &probe).unwrap()[0]), want);
    let small = |server: &Server| {
        let metrics = server.get("/v1/metrics").text.len();
        let enrichers = server.get_auth("/v1/enrichers").text.len();
        assert!(metrics < 64 << 10 && enrichers < 64 << 10, "metrics {metrics} B, enrichers {enrichers} B");
    };

    let sparse = server.dir.path().join("feeds/sparse.txt");
    fs::File::create(&sparse).unwrap().set_len(1 << 30).unwrap();
    let started = Instant::now();
    loop {
        let ti = stage(&server, "ti");
        if ti["last_reload_error"].as_str().is_some_and(|e| e.contains("max_file_bytes")) {
            break;
        }
        assert!(started.elapsed() < LIVE_WITHIN, "no refusal within {LIVE_WITHIN:?}: {ti}");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("sparse 1 GiB file refused after {:?}", started.elapsed());
    stays(&server.base, &probe, ti_of_target, &want, Duration::from_millis(300));
    let health = Instant::now();
    assert_eq!(server.get("/v1/health").status, 200);
    assert!(health.elapsed() < Duration::from_millis(500));
    small(&server);

    // One good line and a 10 MB line of garbage: the good line is taken,
    // the bad one skipped, quoted by its length only.
    fs::remove_file(&sparse).unwrap();
    let mut text = b"198.51.100.0/24\n".to_vec();
    text.extend(std::iter::repeat_n(b'x', 10 << 20));
    text.push(b'\n');
    fs::write(server.dir.path().join("feeds/b.txt"), &text).unwrap();
    let started = Instant::now();
    while stage(&server, "ti")["version"] != "2 indicators from 2 files" {
        assert!(started.elapsed() < LIVE_WITHIN, "{}", stage(&server, "ti"));
        std::thread::sleep(Duration::from_millis(50));
    }
    small(&server);
    load.finish();
}

/// Issue 17, item 4: `: > feed.txt` does not drop the live indicators (the
/// reload is held back) while a client keeps ingesting; a file holding only
/// a comment (`# empty`) empties the feed on purpose.
#[test]
fn an_emptied_indicator_file_is_held_back_until_declared_empty() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.txt");
    fs::write(&feed, format!("{TARGET}\n198.51.100.0/24\n")).unwrap();
    let server = start(dir, &config(&ti_chain("\"feed.txt\""), ""));
    let probe = flows(2, 443, "192.0.2.1");
    let want = format!("{TARGET}@feed.txt");
    let load = Load::start(&server.base, flows(50, 443, "192.0.2.1"), "ti", ti_of_target);
    assert_eq!(ti_of_target(&ingest(&server.base, &probe).unwrap()[0]), want);

    for emptied in ["", "\n  \n"] {
        fs::write(&feed, emptied).unwrap();
        let started = Instant::now();
        while !stage(&server, "ti")["last_reload_error"].as_str().is_some_and(|e| e.contains("held back")) {
            assert!(started.elapsed() < LIVE_WITHIN, "not held back: {}", stage(&server, "ti"));
            std::thread::sleep(Duration::from_millis(25));
        }
        stays(&server.base, &probe, ti_of_target, &want, Duration::from_millis(300));
        let ti = stage(&server, "ti");
        assert_eq!(ti["generation"], 1, "{ti}");
        assert!(ti["last_reload_error"].as_str().unwrap().contains("# empty"), "{ti}");
        // The explicit reload reports the outcome by name.
        let r = admin(&server, "POST", "/v1/reload", None, ADMIN);
        assert_eq!(r.json()["stages"][0]["outcome"], "held_back", "{}", r.text);
        // Reset the marker for the next round.
        fs::write(&feed, format!("{TARGET}\n198.51.100.0/24\n")).unwrap();
        let started = Instant::now();
        while !stage(&server, "ti")["last_reload_error"].is_null() {
            assert!(started.elapsed() < LIVE_WITHIN);
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fs::write(&feed, "# empty: feed retired\n").unwrap();
    wait_for(&server.base, &probe, ti_of_target, "", LIVE_WITHIN);
    let ti = stage(&server, "ti");
    assert!(ti["last_reload_error"].is_null(), "{ti}");
    assert_eq!(ti["details"]["files"][0]["declared_empty"], true, "{ti}");
    load.finish();
}

/// `chain_file`: the entries live in their own file, which is watched like
/// `config.toml`: an edit changes the chain, an emptied file is refused
/// (naming the chain file) and the running chain stays.
#[test]
fn a_chain_file_is_watched_and_an_emptied_one_keeps_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("feed.txt"), format!("{TARGET}\n")).unwrap();
    fs::write(dir.path().join("other.txt"), format!("# other\n{TARGET}\n")).unwrap();
    let chain_path = dir.path().join("chain.toml");
    fs::write(&chain_path, ti_chain("\"feed.txt\"")).unwrap();
    // A top-level key, so before the first section.
    let server = start(dir, &format!("chain_file = \"chain.toml\"\n{}", config("", "")));
    let probe = flows(2, 443, "192.0.2.1");
    wait_for(&server.base, &probe, ti_of_target, &format!("{TARGET}@feed.txt"), LIVE_WITHIN);
    let sha = server.get_auth("/v1/enrichers").json()["chain_file"]["sha256"].clone();
    assert_eq!(sha.as_str().map(str::len), Some(64));

    rename_over(&chain_path, ti_chain("\"other.txt\"").as_bytes());
    wait_for(&server.base, &probe, ti_of_target, &format!("{TARGET}@other.txt"), LIVE_WITHIN);
    let status = server.get_auth("/v1/enrichers").json();
    assert_ne!(status["chain_file"]["sha256"], sha, "{status}");
    assert_eq!(status["reload"]["needs_restart"], json!([]), "{status}");

    fs::write(&chain_path, "").unwrap();
    let started = Instant::now();
    while server.get_auth("/v1/enrichers").json()["reload"]["config_reload_failures"] != json!(1) {
        assert!(started.elapsed() < LIVE_WITHIN, "not refused: {}", server.get_auth("/v1/enrichers").text);
        std::thread::sleep(Duration::from_millis(25));
    }
    stays(&server.base, &probe, ti_of_target, &format!("{TARGET}@other.txt"), Duration::from_millis(200));
    let error = server.get_auth("/v1/enrichers").json()["reload"]["last_config_error"].as_str().unwrap().to_string();
    assert!(error.contains("chain.toml: no [[chain]] entry"), "{error}");
}
