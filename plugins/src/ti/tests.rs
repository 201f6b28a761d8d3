//! Tests of the threat-intel plugin, through the real chain wherever the
//! behaviour is visible there.
//!
//! Outside truth first: Zeek's own baseline for overlapping subnets, the
//! third-party indicator files in `tests/data/ti` (see ATTRIBUTION.md), and
//! the full public lists in `../shared` when present. The index is also
//! checked against a brute-force oracle on random prefixes.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use enrichd_engine::{parse_ndjson, Batch, Chain, Config, Event, Format, PluginFactory, Registry};
use serde_json::{json, Value};

use super::index::{IndexBuilder, Net};
use super::Kind;
use super::TiFactory;

mod index_checks;
mod limits;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn data(name: &str) -> String {
    repo().join("tests/data/ti").join(name).display().to_string()
}

fn shared(rel: &str) -> Option<PathBuf> {
    let path = repo().join("../shared/testdata/ti").join(rel);
    path.exists().then_some(path)
}

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("enrichd-ti-test-{}-{n}", std::process::id()));
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn write(&self, name: &str, content: impl AsRef<[u8]>) -> String {
        let path = self.0.join(name);
        fs::write(&path, content).unwrap();
        path.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Box::new(TiFactory));
    r
}

/// Builds a chain from `[[chain]]` TOML; relative paths resolve against `base`.
fn chain(toml: &str, base: &Path) -> Chain {
    let config = Config::parse(toml, &base.join("config.toml")).unwrap();
    Chain::build(&config.chain, &registry(), &config.base_dir).unwrap()
}

fn ti_chain(paths: &[&str], extra: &str) -> Chain {
    let list: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
    chain(&format!("[[chain]]\nplugin = \"ti\"\npaths = [{}]\n{extra}", list.join(", ")), &repo())
}

fn output(chain: &Chain, batch: &Batch) -> Vec<Value> {
    batch
        .events()
        .iter()
        .map(|e| {
            let mut out = Vec::new();
            batch.write_event(e, chain.keys(), &mut out);
            serde_json::from_slice(&out).unwrap()
        })
        .collect()
}

/// The event's `indicator_matches` fact (0 when not set).
fn matches(chain: &Chain, event: &Event) -> u32 {
    chain.fact_named("indicator_matches").and_then(|f| event.fact(f.id)).unwrap_or(0)
}

/// Runs events with the given (src, dst) addresses; returns the records.
fn run_ips(chain: &Chain, pairs: &[(Option<&str>, Option<&str>)]) -> (Vec<Value>, Vec<u32>) {
    let events = pairs
        .iter()
        .map(|(s, d)| {
            let mut e = Event::synthetic();
            e.src_ip = s.map(|s| s.parse().unwrap());
            e.dst_ip = d.map(|d| d.parse().unwrap());
            e
        })
        .collect();
    let mut batch = Batch::synthetic(Format::FlowsV1, events);
    chain.run(&mut batch);
    (output(chain, &batch), batch.events().iter().map(|e| matches(chain, e)).collect())
}

fn run_ndjson(chain: &Chain, text: &str) -> Vec<Value> {
    let mut batch = parse_ndjson(text.to_string(), Format::FlowsV1, chain.parse_spec(), 0).unwrap();
    chain.run(&mut batch);
    output(chain, &batch)
}

fn status(chain: &Chain) -> Value {
    serde_json::to_value(&chain.reports()[0]).unwrap()
}

/// Non-blank, non-comment lines of a list file.
fn data_lines(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap();
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

/// The `indicator` of each match of a record.
fn indicators(record: &Value, key: &str) -> Vec<String> {
    record[key]["matches"].as_array().unwrap().iter().map(|m| m["indicator"].as_str().unwrap().to_string()).collect()
}

#[test]
fn zeek_match_subnet_oracle() {
    // Zeek's baseline: each `Seen: [indicator=IP, ...]` is followed by one
    // `Item: [indicator=X, indicator_type=Intel::T, meta=[source=S, desc=D,
    // url=U]]` per intel item Zeek matched for that address.
    let baseline = fs::read_to_string(data("zeek-match-subnet.expected-output.txt")).unwrap();
    let field = |line: &str, name: &str, end: &str| -> String {
        let start = line.find(name).unwrap_or_else(|| panic!("{name} in {line}")) + name.len();
        let rest = &line[start..];
        rest[..rest.find(end).unwrap()].to_string()
    };
    let mut expected: Vec<(String, Vec<Value>)> = Vec::new();
    for line in baseline.lines() {
        if line.starts_with("Seen: ") {
            expected.push((field(line, "[indicator=", ","), Vec::new()));
        } else if line.starts_with("Item: ") {
            let kind = field(line, "indicator_type=Intel::", ",").to_ascii_lowercase();
            expected.last_mut().unwrap().1.push(json!({
                "indicator": field(line, "[indicator=", ","),
                "type": kind,
                "feed": field(line, "source=", ","),
                "description": field(line, "desc=", ", url="),
            }));
        }
    }
    assert_eq!(expected.len(), 3, "three lookups in Zeek's baseline");

    let intel = data("zeek-match-subnet.intel.dat");
    let chain = ti_chain(&[&intel], "");
    for (seen, items) in &expected {
        let (records, counts) = run_ips(&chain, &[(Some(seen), None)]);
        let matches = records[0]["ti"]["matches"].as_array().unwrap();
        // Zeek prints its items in no particular order; ours are most
        // specific first. Compare as sets, then check our order.
        let mut got: Vec<Value> = matches
            .iter()
            .map(|m| {
                assert_eq!((m["field"].as_str(), m["value"].as_str()), (Some("src_ip"), Some(seen.as_str())));
                assert_eq!(m["source"].as_str(), Some(intel.as_str()));
                json!({"indicator": m["indicator"], "type": m["type"], "feed": m["feed"], "description": m["description"]})
            })
            .collect();
        let mut want = items.clone();
        let key = |v: &Value| v["indicator"].as_str().unwrap().to_string();
        got.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(got, want, "matches of {seen}");
        assert_eq!(counts[0] as usize, items.len());
        let lens: Vec<u32> = indicators(&records[0], "ti")
            .iter()
            .map(|i| i.split_once('/').map_or(32, |(_, l)| l.parse().unwrap()))
            .collect();
        assert!(lens.windows(2).all(|w| w[0] > w[1]), "most specific first: {lens:?}");
    }
    // Not in Zeek's baseline, but plain consequences of the same file.
    let (records, _) = run_ips(&chain, &[(Some("192.168.3.1"), Some("192.168.142.200"))]);
    assert_eq!(indicators(&records[0], "ti"), ["192.168.142.0/24", "192.168.128.0/18"]);
}

#[test]
fn sample_indicators_file() {
    let path = repo().join("ti/indicators.txt").display().to_string();
    let chain = ti_chain(&[&path], "");
    let st = status(&chain);
    assert_eq!(st["state"], "loaded");
    assert_eq!(st["version"], "4 indicators from 1 file");
    assert_eq!(st["details"]["indicators"], json!({"addr": 0, "subnet": 2, "domain": 2}));
    assert_eq!(st["details"]["skipped_lines"], 0);
    assert_eq!(st["sources"][0]["sha256"].as_str().unwrap().len(), 64);

    let (records, counts) = run_ips(
        &chain,
        &[(Some("45.149.3.7"), Some("94.26.200.1")), (Some("10.0.0.1"), Some("8.8.8.8")), (None, None)],
    );
    assert_eq!(
        records[0]["ti"]["matches"],
        json!([
            {"indicator": "45.149.3.0/24", "type": "subnet", "field": "src_ip", "value": "45.149.3.7", "source": path},
            {"indicator": "94.26.0.0/16", "type": "subnet", "field": "dst_ip", "value": "94.26.200.1", "source": path},
        ])
    );
    assert_eq!(counts, [2, 0, 0]);
    assert_eq!(records[1]["ti"], json!({"matches": []}));
    assert_eq!(records[2]["ti"], json!({"matches": []}));
    let (records, _) = run_ips(&chain, &[(Some("45.149.4.1"), Some("94.27.0.0"))]);
    assert_eq!(records[0]["ti"], json!({"matches": []}), "just outside both networks");

    // Domains: exact and parent, case and trailing dot ignored; the
    // `domain:` prefix is cut exactly (the old loader lost the first letter,
    // which would match `vil-example.com` and miss `evil-example.com`).
    let lines = [
        r#"{"query":"evil-example.com"}"#,
        r#"{"query":"a.b.EVIL-example.COM."}"#,
        r#"{"server_name":"cnc.badco.org","query":"x.evil-example.com"}"#,
        r#"{"query":"notevil-example.com"}"#,
        r#"{"query":"vil-example.com"}"#,
        r#"{"query":"badco.org"}"#,
        r#"{"host":"xcnc.badco.org"}"#,
        r#"{"query":"evil-example.com.attacker.net"}"#,
        r#"{"domain":"evil-example.co"}"#,
        r#"{"host":"CNC.badco.org:8080","query":42}"#,
    ];
    let dots = format!("{{\"query\":\"{}evil-example.com\"}}", ".".repeat(230));
    let labels = format!("{{\"query\":\"{}evil-example.com\"}}", "a.".repeat(118));
    let too_long = format!("{{\"query\":\"{}evil-example.com\"}}", "a.".repeat(119));
    let lines: Vec<&str> = lines.iter().copied().chain([dots.as_str(), labels.as_str(), too_long.as_str()]).collect();
    let records = run_ndjson(&chain, &lines.join("\n"));
    let got: Vec<Vec<String>> = records.iter().map(|r| indicators(r, "ti")).collect();
    assert_eq!(got[0], ["evil-example.com"]);
    assert_eq!(got[1], ["evil-example.com"]);
    assert_eq!(got[2], ["evil-example.com", "cnc.badco.org"], "domain fields in configured order");
    assert!(got[3..9].iter().all(Vec::is_empty), "look-alikes must not match: {got:?}");
    assert_eq!(got[9], ["cnc.badco.org"]);
    assert_eq!(got[10..], [vec![], vec!["evil-example.com"], vec![]], "empty labels; 252 and 254 bytes");
    let m = &records[1]["ti"]["matches"][0];
    assert_eq!((m["type"].as_str(), m["field"].as_str()), (Some("domain"), Some("query")));
    assert_eq!(m["value"], "a.b.EVIL-example.COM.", "value as sent");
    assert_eq!(records[2]["ti"]["matches"][1]["field"], "server_name");
    assert_eq!(records[0]["query"], "evil-example.com", "record fields pass through");
}

#[test]
fn plain_lines_formats_and_bad_lines() {
    let dir = TempDir::new();
    let file = dir.write(
        "mixed.txt",
        "# header comment\n\
         \n\
         203.0.113.7   # trailing comment\n\
         198.51.100.9\t10\n\
         10.1.2.3/24\n\
         2001:db8::/32\n\
         2001:db8:ffff::1\n\
         0.0.0.0 Hosts-Example.com\n\
         127.0.0.1 localhost\n\
         bare-domain.example\n\
         *.wild.example\n\
         999.1.1.1\n\
         10.0.0.0/33\n\
         localhost\n\
         bad!name.example\n\
         domain:\n\
         203.0.113.7\n\
         Sub.Wild.Example\n",
    );
    let chain = ti_chain(&[&file], "");
    let st = status(&chain);
    let f = &st["details"]["files"][0];
    assert_eq!(f["format"], "plain");
    assert_eq!((f["addr"].as_u64(), f["subnet"].as_u64(), f["domain"].as_u64()), (Some(3), Some(2), Some(4)));
    assert_eq!((f["duplicates"].as_u64(), f["normalized"].as_u64()), (Some(1), Some(1)));
    assert_eq!(f["skipped_lines"], 5);
    let bad: Vec<u64> = f["bad_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().split(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(bad, [12, 13, 14, 15, 16], "{:#}", f["bad_lines"]);

    let (records, _) = run_ips(
        &chain,
        &[
            (Some("203.0.113.7"), Some("198.51.100.9")),
            (Some("10.1.2.200"), Some("2001:db8:ffff::1")),
            (Some("::ffff:203.0.113.7"), Some("0.0.0.0")),
        ],
    );
    assert_eq!(indicators(&records[0], "ti"), ["203.0.113.7", "198.51.100.9"]);
    assert_eq!(indicators(&records[1], "ti"), ["10.1.2.0/24", "2001:db8:ffff::1", "2001:db8::/32"]);
    assert_eq!(records[1]["ti"]["matches"][1]["type"], "addr");
    assert_eq!(indicators(&records[2], "ti"), ["203.0.113.7"], "IPv4-mapped IPv6; hosts sink not an indicator");
    let records = run_ndjson(
        &chain,
        "{\"query\":\"hosts-example.com\"}\n{\"query\":\"a.wild.example\"}\n{\"query\":\"BARE-domain.example\"}\n\
         {\"query\":\"x.sub.wild.example\"}",
    );
    let got: Vec<Vec<String>> = records.iter().map(|r| indicators(r, "ti")).collect();
    assert_eq!(got[..3], [["hosts-example.com"], ["wild.example"], ["bare-domain.example"]]);
    assert_eq!(got[3], ["sub.wild.example", "wild.example"], "every parent listed, most specific first");
}

#[test]
fn csv_with_header_in_any_order() {
    let dir = TempDir::new();
    let file = dir.write(
        "feed.csv",
        "# exported indicators\n\
         confidence,ip_or_cidr,category,description\n\
         90,45.149.3.0/24,botnet,\"C2, tier 1\"\n\
         ,198.51.100.0/24,,\n\
         150,192.0.2.1,scanner,\n\
         80,not-an-ip!,x,\n\
         70\n\
         55,domain:csv-evil.example,phishing,\"say \"\"hi\"\"\"\n",
    );
    let chain = ti_chain(&[&file], "");
    let st = status(&chain);
    let f = &st["details"]["files"][0];
    assert_eq!(
        (f["format"].as_str(), f["indicators"].as_u64(), f["skipped_lines"].as_u64()),
        (Some("csv"), Some(3), Some(3))
    );
    assert!(f["bad_lines"][0].as_str().unwrap().starts_with("5: confidence"), "{}", f["bad_lines"]);
    let (records, _) = run_ips(&chain, &[(Some("45.149.3.1"), Some("198.51.100.1"))]);
    assert_eq!(
        records[0]["ti"]["matches"],
        json!([
            {"indicator": "45.149.3.0/24", "type": "subnet", "field": "src_ip", "value": "45.149.3.1", "source": file,
             "category": "botnet", "confidence": 90, "description": "C2, tier 1"},
            {"indicator": "198.51.100.0/24", "type": "subnet", "field": "dst_ip", "value": "198.51.100.1", "source": file},
        ])
    );
    let records = run_ndjson(&chain, r#"{"query":"www.csv-evil.example"}"#);
    let m = &records[0]["ti"]["matches"][0];
    assert_eq!((m["category"].as_str(), m["confidence"].as_u64()), (Some("phishing"), Some(55)));
    assert_eq!(m["description"], "say \"hi\"");
}

#[test]
fn zeek_intel_files() {
    // zat's example: 225 ADDR, 179 DOMAIN and 96 FILE_HASH items (counted
    // from the file's indicator_type column).
    let zat = data("zat-intel_example.intel.txt");
    let text = fs::read_to_string(&zat).unwrap();
    let count = |t: &str| text.lines().filter(|l| l.split('\t').nth(1) == Some(t)).count();
    let chain = ti_chain(&[&zat], "");
    let st = status(&chain);
    assert_eq!(
        st["details"]["indicators"],
        json!({"addr": count("Intel::ADDR"), "subnet": 0, "domain": count("Intel::DOMAIN")})
    );
    assert_eq!(st["details"]["unsupported"], count("Intel::FILE_HASH"));
    assert_eq!((count("Intel::ADDR"), count("Intel::DOMAIN"), count("Intel::FILE_HASH")), (225, 179, 96));
    assert_eq!(st["details"]["skipped_lines"], 0);
    assert_eq!(st["details"]["files"][0]["format"], "zeek");
    // Every ADDR and DOMAIN item of the file matches itself.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let cols: Vec<&str> = line.split('\t').collect();
        let record = match cols[1] {
            "Intel::ADDR" => json!({"dst_ip": cols[0]}),
            "Intel::DOMAIN" => json!({"query": cols[0]}),
            _ => continue,
        };
        let records = run_ndjson(&chain, &record.to_string());
        let m = &records[0]["ti"]["matches"][0];
        assert_eq!(m["indicator"].as_str(), Some(cols[0].to_ascii_lowercase().as_str()), "{line}");
        assert_eq!((m["feed"].as_str(), m["description"].as_str()), (Some(cols[2]), Some(cols[4])), "{line}");
    }

    // Zeek's documentation examples, `-` meaning unset.
    let chain = ti_chain(&[&data("zeek-doc-basic.intel.txt"), &data("zeek-doc-donotice.intel.txt")], "");
    assert_eq!(status(&chain)["version"], "3 indicators from 2 files");
    let records = run_ndjson(&chain, "{\"src_ip\":\"1.2.3.4\",\"query\":\"x.a.b.com\"}\n{\"host\":\"WWW.reddit.com\"}");
    assert_eq!(
        records[0]["ti"]["matches"],
        json!([
            {"indicator": "1.2.3.4", "type": "addr", "field": "src_ip", "value": "1.2.3.4",
             "source": data("zeek-doc-donotice.intel.txt"), "feed": "source1", "description": "Sending phishing email",
             "url": "http://source1.com/badhosts/1.2.3.4"},
            {"indicator": "a.b.com", "type": "domain", "field": "query", "value": "x.a.b.com",
             "source": data("zeek-doc-donotice.intel.txt"), "feed": "source2", "description": "Name used for data exfiltration"},
        ])
    );
    assert_eq!(records[1]["ti"]["matches"][0]["feed"], "my_special_source");

    // Bad Zeek lines: wrong field count, bad address, unknown types.
    let dir = TempDir::new();
    let file = dir.write(
        "bad.intel",
        "#separator \\x09\n\
         #fields\tindicator\tindicator_type\tmeta.source\n\
         10.9.8.7\tIntel::ADDR\tfeed-a\n\
         10.9.8.0/24\tIntel::ADDR\tfeed-a\n\
         only-two\tIntel::DOMAIN\n\
         http://x.example/a\tIntel::URL\tfeed-a\n\
         -\tIntel::ADDR\tfeed-a\n\
         10.9.0.0/16\tIntel::SUBNET\t-\n",
    );
    let chain = ti_chain(&[&file], "");
    let f = &status(&chain)["details"]["files"][0];
    assert_eq!(
        (f["indicators"].as_u64(), f["unsupported"].as_u64(), f["skipped_lines"].as_u64()),
        (Some(2), Some(1), Some(3))
    );
    let bad: Vec<&str> = f["bad_lines"].as_array().unwrap().iter().map(|l| &l.as_str().unwrap()[..2]).collect();
    assert_eq!(bad, ["4:", "5:", "7:"]);
    let (records, _) = run_ips(&chain, &[(Some("10.9.8.7"), None)]);
    assert_eq!(
        records[0]["ti"]["matches"][1],
        json!({"indicator": "10.9.0.0/16", "type": "subnet",
        "field": "src_ip", "value": "10.9.8.7", "source": file})
    );
}

/// Real list layouts: IPsum `ip<TAB>count` and a hosts-format block list.
#[test]
fn ipsum_and_hosts_format_lists() {
    let (ipsum, hosts) = (data("ipsum-level7.txt"), data("blocklistproject-ransomware.txt"));
    let chain = ti_chain(&[&ipsum, &hosts], "");
    let files = status(&chain)["details"]["files"].clone();
    let (ips, names) = (data_lines(Path::new(&ipsum)), data_lines(Path::new(&hosts)));
    assert_eq!((ips.len(), names.len()), (70, 1904), "ATTRIBUTION.md counts");
    assert_eq!((files[0]["addr"].as_u64(), files[0]["skipped_lines"].as_u64()), (Some(70), Some(0)));
    assert_eq!((files[1]["domain"].as_u64(), files[1]["skipped_lines"].as_u64()), (Some(1904), Some(0)));
    assert!(names.iter().all(|l| l.starts_with("0.0.0.0 ")), "hosts format");
    let ip = ips[3].split('\t').next().unwrap();
    let name = names[100].strip_prefix("0.0.0.0 ").unwrap();
    let records =
        run_ndjson(&chain, &format!("{{\"dst_ip\":\"{ip}\",\"query\":\"x.{name}\"}}\n{{\"src_ip\":\"0.0.0.0\"}}"));
    assert_eq!(indicators(&records[0], "ti"), [ip, name]);
    assert_eq!(indicators(&records[1], "ti"), Vec::<String>::new(), "the sink address is not an indicator");
}

#[test]
fn several_files_directories_and_duplicates() {
    let dir = TempDir::new();
    let feeds = dir.0.join("feeds");
    fs::create_dir(&feeds).unwrap();
    fs::create_dir(feeds.join("subdir")).unwrap();
    fs::write(feeds.join("a.txt"), "45.149.3.0/24\n45.149.3.0/24\n").unwrap();
    fs::write(feeds.join("b.csv"), "ip_or_cidr,category,confidence\n45.149.3.0/24,c2,70\n").unwrap();
    for skipped in [".hidden", "a.txt~", ".a.txt.swp", "c.swp", "d.tmp", "subdir/e.txt"] {
        fs::write(feeds.join(skipped), "45.149.3.0/24\n").unwrap();
    }
    let single = dir.write("single.txt", "45.149.3.7\n");
    let toml = format!("[[chain]]\nplugin = \"ti\"\npaths = [\"feeds\", {single:?}, \"feeds/a.txt\"]\n");
    let chain = chain(&toml, &dir.0);
    let st = status(&chain);
    assert_eq!(st["version"], "3 indicators from 3 files");
    let files = st["details"]["files"].as_array().unwrap();
    let sources: Vec<&str> = files.iter().map(|f| f["source"].as_str().unwrap()).collect();
    assert_eq!(sources, ["feeds/a.txt", "feeds/b.csv", single.as_str()], "hidden/backup files and subdirs skipped");
    assert_eq!(files[0]["duplicates"], 1, "an exact repeat within a file counts once");
    let (records, counts) = run_ips(&chain, &[(None, Some("45.149.3.7"))]);
    let m = records[0]["ti"]["matches"].as_array().unwrap();
    let got: Vec<(&str, &str)> =
        m.iter().map(|m| (m["indicator"].as_str().unwrap(), m["source"].as_str().unwrap())).collect();
    assert_eq!(
        got,
        [("45.149.3.7", single.as_str()), ("45.149.3.0/24", "feeds/a.txt"), ("45.149.3.0/24", "feeds/b.csv")]
    );
    assert_eq!(m[2]["category"], "c2");
    assert_eq!(counts, [3]);
}

#[test]
fn missing_and_unreadable_files() {
    let dir = TempDir::new();
    let chain = ti_chain(&[&dir.0.join("nope.txt").display().to_string()], "");
    let st = status(&chain);
    assert_eq!(st["state"], "missing");
    assert_eq!(st["sources"][0]["error"], "file not found");
    assert!(st.get("version").is_none());
    let (records, counts) = run_ips(&chain, &[(Some("45.149.3.7"), None)]);
    assert!(records[0].get("ti").is_none(), "missing data: events pass through unchanged");
    assert_eq!(counts, [0]);

    let good = dir.write("good.txt", "45.149.3.0/24\n");
    let latin1 = dir.write("latin1.txt", b"# caf\xe9\n1.2.3.4\n");
    let chain = ti_chain(&[&good, &dir.0.join("nope.txt").display().to_string(), &latin1], "");
    let st = status(&chain);
    assert_eq!(st["state"], "loaded");
    assert_eq!(st["version"], "1 indicator from 1 file");
    assert_eq!(st["sources"][1]["error"], "file not found");
    assert!(st["sources"][2]["error"].as_str().unwrap().contains("UTF-8"));
    assert_eq!(indicators(&run_ips(&chain, &[(Some("45.149.3.7"), Some("1.2.3.4"))]).0[0], "ti"), ["45.149.3.0/24"]);

    let chain = ti_chain(&[&latin1], "");
    assert_eq!(status(&chain)["state"], "error");
    let empty = TempDir::new();
    let chain = ti_chain(&[&empty.0.display().to_string()], "");
    assert_eq!(status(&chain)["state"], "missing");
}

#[test]
fn stage3_layout_lookup_and_address_selection() {
    let sample = repo().join("ti/indicators.txt").display().to_string();
    let chain = ti_chain(&[&sample], "output = \"threat\"\nmatched_flag = true\naddresses = [\"destination\"]");
    let (records, _) = run_ips(&chain, &[(Some("45.149.3.7"), Some("8.8.8.8")), (Some("8.8.8.8"), Some("45.149.3.7"))]);
    assert_eq!(records[0]["threat"], json!({"matches": [], "matched": false}), "source not checked");
    assert_eq!(records[1]["threat"]["matched"], true);
    assert_eq!(indicators(&records[1], "threat"), ["45.149.3.0/24"]);

    let answer = chain.lookup(enrichd_engine::LookupTarget::Ip("94.26.1.2".parse().unwrap()));
    let want =
        json!([{"indicator": "94.26.0.0/16", "type": "subnet", "field": "ip", "value": "94.26.1.2", "source": sample}]);
    assert_eq!(answer.aliases["threats"], want, "the reference API's name, as an alias");
    assert_eq!(answer.fields["threat"], json!({"matches": want, "matched": true}), "under the stage's output key");
    assert!(answer.fields.get("ti").is_none() && answer.fields.get("threats").is_none());
    let clean = chain.lookup(enrichd_engine::LookupTarget::Ip("8.8.8.8".parse().unwrap()));
    assert_eq!(clean.aliases["threats"], json!([]));

    let chain = ti_chain(&[&sample], "addresses = [\"destination_or_source\", \"source\"]");
    let (records, counts) = run_ips(&chain, &[(Some("45.149.3.7"), None), (Some("94.26.0.1"), Some("45.149.3.9"))]);
    assert_eq!(counts, [1, 2], "the source is checked once even when selected twice");
    assert_eq!(records[1]["ti"]["matches"][0]["field"], "src_ip");
}

#[test]
fn options_and_env_override() {
    let dir = TempDir::new();
    let a = dir.write("a.txt", "1.1.1.1\n");
    let b = dir.write("b.txt", "2.2.2.2\n");
    let text = "[[chain]]\nplugin = \"ti\"\n";
    let mut config = Config::parse(text, &dir.0.join("config.toml")).unwrap();
    config.apply_env(&registry(), |v| (v == "TI_PATH").then(|| format!("{a}, {b}"))).unwrap();
    let chain = Chain::build(&config.chain, &registry(), &config.base_dir).unwrap();
    assert_eq!(status(&chain)["version"], "2 indicators from 2 files");

    for (bad, why) in [
        ("path = \"x\"", "unknown field"),
        ("addresses = [\"sideways\"]", "unknown variant"),
        ("paths = []", "at least one"),
        ("output = \"\"", "output"),
        ("matched_flag = \"yes\"", "invalid type"),
    ] {
        let config = Config::parse(&format!("{text}{bad}\n"), &dir.0.join("config.toml")).unwrap();
        let err = Chain::build(&config.chain, &registry(), &config.base_dir).expect_err(bad).to_string();
        assert!(err.contains(why), "{bad}: {err}");
    }
    let schema = serde_json::to_value(TiFactory.options_schema()).unwrap();
    assert_eq!(schema["additionalProperties"], false);
}
