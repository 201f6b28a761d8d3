//! Hostile and shrinking indicator files: refused cheaply, held back.

use super::*;

/// Issue 17, item 1: a sparse 1 GiB file is refused unread; an over-long
/// line is skipped and never quoted whole; every text the status holds
/// stays small.
#[test]
fn oversized_files_and_lines_are_refused_cheaply() {
    let dir = TempDir::new();
    let good = dir.write("good.txt", "45.149.3.0/24\n");
    let sparse = dir.0.join("sparse.txt");
    fs::File::create(&sparse).unwrap().set_len(1 << 30).unwrap();
    let started = std::time::Instant::now();
    let chain = ti_chain(&[&good, &sparse.display().to_string()], "");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "refused by its size, not read");
    let st = status(&chain);
    assert_eq!(st["version"], "1 indicator from 1 file");
    let error = st["error"].as_str().unwrap();
    assert!(error.contains("1073741824 bytes") && error.contains("max_file_bytes"), "{error}");
    assert!(st.to_string().len() < 4096, "{}", st.to_string().len());

    // The cap is an option, and a file under it is read.
    let small = dir.write("small.txt", "45.149.3.0/24\n198.51.100.7\n");
    let chain = ti_chain(&[&small], "max_file_bytes = 20\n");
    assert!(status(&chain)["error"].as_str().unwrap().contains("over the limit of 20 bytes"));
    let chain = ti_chain(&[&small], "max_file_bytes = 64\n");
    assert!(status(&chain)["error"].is_null());

    // One good line, one 10 MB bad line of NULs: the good one loads, the
    // bad one is reported by its length.
    let mut text = b"198.51.100.7\n".to_vec();
    text.extend(std::iter::repeat_n(0u8, 10 << 20));
    text.extend(b"\n203.0.113.9\n");
    let mixed = dir.write("mixed.txt", &text);
    let chain = ti_chain(&[&mixed], "");
    let st = status(&chain);
    assert_eq!(st["version"], "2 indicators from 1 file", "{st}");
    assert_eq!(st["details"]["skipped_lines"], 1);
    let bad = st["details"]["files"][0]["bad_lines"][0].as_str().unwrap();
    assert_eq!(bad, "2: line is 10485760 bytes, over `max_line_bytes` (8192)");
    assert!(st.to_string().len() < 4096);

    // Only an over-long line: no indicator, an error, still small.
    let only = dir.write("only.txt", vec![b'a'; 1 << 20]);
    let st = status(&ti_chain(&[&only], ""));
    assert_eq!(st["state"], "error");
    assert!(st["error"].as_str().unwrap().contains("no valid indicator"), "{st}");
    assert!(st.to_string().len() < 4096);

    // Under the line cap, a long bad token is quoted as an excerpt.
    let long = dir.write("long.txt", format!("1.2.3.4\n{}\n", "x".repeat(5000)));
    let st = status(&ti_chain(&[&long], ""));
    let bad = st["details"]["files"][0]["bad_lines"][0].as_str().unwrap();
    assert!(bad.len() < 400 && bad.contains("(5000 bytes in all)"), "{bad}");
}

/// Issue 17, item 4, the shrink rule: a file of at least 100 indicators
/// losing more than `max_shrink` of them is held back; small files, and
/// any loss with `max_shrink = 1`, are not.
#[test]
fn large_shrinks_are_held_back() {
    use enrichd_engine::{Engine, Outcome};
    let dir = TempDir::new();
    let list = |n: usize| (0..n).map(|i| format!("10.0.{}.{}\n", i / 250, i % 250 + 1)).collect::<String>();
    let feed = dir.write("feed.txt", list(200));
    let small = dir.write("small.txt", list(10));
    let engine_with = |extra: &str| {
        let toml = format!("[[chain]]\nplugin = \"ti\"\npaths = [{feed:?}, {small:?}]\n{extra}");
        let config = Config::parse(&toml, &dir.0.join("config.toml")).unwrap();
        Engine::new(Chain::build(&config.chain, &registry(), &config.base_dir).unwrap(), registry())
    };
    let engine = engine_with("");
    let reload = |engine: &Engine| {
        let report = engine.reload_all();
        (report.stages[0].outcome, report.stages[0].error.clone())
    };
    fs::write(&feed, list(101)).unwrap(); // lost 49.5 %
    assert_eq!(reload(&engine), (Outcome::Reloaded, None));
    fs::write(&feed, list(40)).unwrap(); // lost 60 % of 101
    let (outcome, error) = reload(&engine);
    assert_eq!(outcome, Outcome::HeldBack);
    assert!(error.unwrap().contains("has 40 indicators where the live one has 101"));
    assert_eq!(engine.chain().reports()[0].status.version.as_deref(), Some("111 indicators from 2 files"));
    fs::write(&small, list(1)).unwrap(); // small files may shrink at will
    fs::write(&feed, list(101)).unwrap();
    assert_eq!(reload(&engine).0, Outcome::Reloaded);

    let engine = engine_with("max_shrink = 1.0\n");
    fs::write(&feed, list(1)).unwrap();
    assert_eq!(reload(&engine).0, Outcome::Reloaded);
    fs::write(&feed, "").unwrap(); // empty stays held back: `# empty` says it
    assert_eq!(reload(&engine).0, Outcome::HeldBack);
    let bad = Config::parse("[[chain]]\nplugin = \"ti\"\nmax_shrink = 1.5\n", &dir.0.join("c.toml")).unwrap();
    let err = Chain::build(&bad.chain, &registry(), &dir.0).unwrap_err().to_string();
    assert!(err.contains("max_shrink"), "{err}");
}

/// A stage already degraded (one feed missing since start) does not take
/// a generation in which another feed became unreadable: the engine's
/// health check sees no change (degraded before and after), so the stage
/// holds it back itself, and the unreadable feed's indicators keep matching.
#[test]
fn a_degraded_stage_does_not_lose_another_feed() {
    use enrichd_engine::{Engine, Outcome};
    let dir = TempDir::new();
    let good = dir.write("good.txt", "198.51.100.7\n");
    let spoiled = dir.write("spoiled.txt", "203.0.113.9\n");
    let missing = dir.0.join("missing.txt").display().to_string();
    let toml = format!("[[chain]]\nplugin = \"ti\"\npaths = [{good:?}, {spoiled:?}, {missing:?}]\n");
    let config = Config::parse(&toml, &dir.0.join("config.toml")).unwrap();
    let engine = Engine::new(Chain::build(&config.chain, &registry(), &config.base_dir).unwrap(), registry());
    assert_eq!(engine.chain().reports()[0].status.version.as_deref(), Some("2 indicators from 2 files"));
    fs::write(&spoiled, [0xffu8, 0xfe, 0x00]).unwrap(); // not UTF-8
    let report = engine.reload_all();
    assert_eq!(report.stages[0].outcome, Outcome::HeldBack, "{:?}", report.stages[0].error);
    let error = report.stages[0].error.clone().unwrap();
    assert!(error.contains("could not be read") && error.contains("live one has 1"), "{error}");
    assert_eq!(engine.chain().reports()[0].status.version.as_deref(), Some("2 indicators from 2 files"));
}

/// One indicator listed again and again with other metadata keeps at most
/// MAX_LISTINGS_PER_INDICATOR listings (built in linear time, not by a
/// scan of its list per line), and an event writes at most 32 matches,
/// the rest counted in `more_matches` and in the match count.
#[test]
fn repeated_indicators_and_matches_are_bounded() {
    let dir = TempDir::new();
    let mut csv = String::from("indicator,description\n");
    for i in 0..100_000 {
        csv.push_str(&format!("domain:evil.example,d{i}\n"));
    }
    for i in 0..1000 {
        csv.push_str(&format!("0.0.0.0/0,w{i}\n10.0.0.0/8,t{i}\n"));
    }
    let feed = dir.write("feed.csv", csv);
    let started = std::time::Instant::now();
    let chain = ti_chain(&[&feed], "");
    // Quadratic, this was ~5 * 10^9 comparisons: minutes, not a second.
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    let (records, counts) = run_ips(&chain, &[(Some("10.1.2.3"), None)]);
    let matches = records[0]["ti"]["matches"].as_array().unwrap();
    assert_eq!(matches.len(), 32, "{}", records[0]);
    let listed = crate::ti::index::MAX_LISTINGS_PER_INDICATOR as u64;
    assert_eq!(records[0]["ti"]["more_matches"], 2 * listed - 32, "{}", records[0]);
    assert_eq!(u64::from(counts[0]), 2 * listed);
    assert!(records[0].to_string().len() < 16 << 10);
    let domain = run_ndjson(&chain, "{\"src_ip\":\"192.0.2.1\",\"domain\":\"a.evil.example\"}\n");
    assert_eq!(domain[0]["ti"]["matches"].as_array().unwrap().len(), listed as usize, "{}", domain[0]);
}

/// IPv4-mapped IPv6 indicators are the IPv4 ones they map: events' mapped
/// addresses are looked up as IPv4, so they match both ways.
#[test]
fn ipv4_mapped_indicators_match() {
    let dir = TempDir::new();
    let feed = dir.write("mapped.txt", "::ffff:203.0.113.9\n::ffff:198.51.100.0/120\n");
    let chain = ti_chain(&[&feed], "");
    let (_, counts) = run_ips(
        &chain,
        &[
            (Some("203.0.113.9"), None),
            (Some("::ffff:203.0.113.9"), None),
            (Some("198.51.100.77"), None),
            (Some("10.0.0.1"), None),
        ],
    );
    assert_eq!(counts, [1, 1, 1, 0]);
}

/// Descriptions of control characters (6 bytes each once escaped) on
/// every line: each indicator's metadata text is bounded, so the index
/// stays near the file's size instead of a dozen times it.
#[test]
fn escaped_metadata_does_not_multiply_memory() {
    let dir = TempDir::new();
    let mut csv = String::from("indicator,description\n");
    for i in 0..1000 {
        csv.push_str(&format!("198.51.{}.{},{}{i}\n", i / 250, i % 250 + 1, "\u{1}".repeat(7000)));
    }
    let feed = dir.write("feed.csv", &csv);
    let (index, _) = crate::ti::load(&[feed], None, |p| PathBuf::from(p), &Default::default(), &[]);
    let index = index.expect("loaded");
    assert_eq!(index.counts()[0], 1000);
    assert!(index.heap_bytes() < 2 * csv.len(), "{} bytes for a {}-byte file", index.heap_bytes(), csv.len());
}
