//! The offline subcommands, run as a user would: the real binary.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::io::Write;
use std::process::{Output, Stdio};

use common::{bin, data, repo, test_chain};
use serde_json::Value;

fn run(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = bin();
    cmd.args(args).current_dir(repo()).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for var in common::OVERRIDE_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_config(dir: &tempfile::TempDir, content: &str) -> String {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

#[test]
fn committed_config_is_valid_and_starts_degraded_without_databases() {
    let out = run(&["check-config", "--allow-missing"], "", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("config.toml: ok (4 chain entries)"), "{stdout}");
    assert!(stdout.contains("ti") && stdout.contains("Loaded"), "{stdout}");
    assert!(stdout.lines().any(|l| l.trim_start().starts_with("risk") && l.contains("Loaded")), "{stdout}");
    // geo/ holds no databases in a fresh clone (MaxMind's licence): missing
    // is accepted only when asked for.
    if !repo().join("geo/GeoLite2-City.mmdb").exists() {
        assert!(stdout.contains("Missing"), "{stdout}");
        let out = run(&["check-config"], "", &[]);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains("config.toml:") && err.contains("geo/GeoLite2-City.mmdb"), "{err}");
        assert!(err.contains("--allow-missing"), "{err}");
    }
}

/// What `serve` only degrades on, `check-config` refuses, naming the key
/// or entry and its line.
#[test]
fn check_config_refuses_broken_setups_that_serve_would_degrade_on() {
    let dir = tempfile::tempdir().unwrap();
    let rule = repo().join("rules/risk.wasm").display().to_string();
    // A typo'd module path: scoring would be silently off.
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[chain]]\nplugin = \"wasm\"\nname = \"risk\"\nmodule = \"{}\"\n",
        rule.replace("risk.wasm", "nope.wasm")
    );
    let path = write_config(&dir, &config);
    let out = run(&["check-config", "--config", &path], "", &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("{path}:4")) && err.contains("nope.wasm"), "{err}");
    // Missing files may be allowed; a file that is there but broken may not.
    assert!(run(&["check-config", "--config", &path, "--allow-missing"], "", &[]).status.success());
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm not really").unwrap();
    let path = write_config(
        &dir,
        &format!("[[chain]]\nplugin = \"wasm\"\nname = \"risk\"\nmodule = \"{}\"\n", broken.display()),
    );
    let out = run(&["check-config", "--config", &path, "--allow-missing"], "", &[]);
    assert!(!out.status.success() && text(&out.stderr).contains("broken.wasm"), "{}", text(&out.stderr));
    // Values serve would fail on late, or never say which key they are.
    for (content, line, needle) in [
        ("[server]\nlisten = \"127.0.0.1:99999\"\n", ":2", "[server] listen"),
        ("[reload]\ndebounce_ms = \"soon\"\n", ":2", "[reload] debounce_ms: invalid type"),
    ] {
        let path = write_config(&dir, content);
        let out = run(&["check-config", "--config", &path, "--allow-missing"], "", &[]);
        let err = text(&out.stderr);
        assert!(!out.status.success() && err.contains(&format!("{path}{line}")) && err.contains(needle), "{err}");
    }
    assert!(run(&["check-config", "--config", &rule], "", &[]).status.code() != Some(0));
}

#[test]
fn config_errors_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\nlisten = \"x\"\nbogus = 1\n", ":3", "bogus"),
        ("[[chain]]\nplugin = \"geoip\"\n\n[[chain]]\nplugin = \"nope\"\n", ":4", "unknown plugin \"nope\""),
        ("[[chain]]\nplugin = \"ti\"\npaths = [\"x\"]\nbogus_option = true\n", ":1", "bogus_option"),
        ("[[chain]]\nname = \"x\"\n", ":1", "`plugin` is required"),
        ("[server\n", ":1", ""),
    ];
    for (content, line, needle) in cases {
        let path = write_config(&dir, content);
        let out = run(&["check-config", "--config", &path], "", &[]);
        assert!(!out.status.success(), "{content}");
        let err = text(&out.stderr);
        assert!(err.contains(&format!("{path}{line}")), "{content:?}: {err}");
        assert!(err.contains(needle), "{content:?}: {err}");
    }
}

#[test]
fn corrupt_database_stops_startup_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let broken = data("maxmind/GeoIP2-City-Test-Invalid-Node-Count.mmdb");
    let path = write_config(&dir, &format!("[[chain]]\nplugin = \"geoip\"\ndatabase = \"{broken}\"\n"));
    let out = run(&["check-config", "--config", &path], "", &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("GeoIP2-City-Test-Invalid-Node-Count.mmdb"), "{}", text(&out.stderr));
    let out = run(&["serve", "--config", &path, "--listen", "127.0.0.1:0"], "", &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("GeoIP2-City-Test-Invalid-Node-Count.mmdb"));
}

#[test]
fn environment_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "[[chain]]\nplugin = \"geoip\"\n\n[[chain]]\nplugin = \"asn\"\n\n[[chain]]\nplugin = \"ti\"\n",
    );
    let city = data("maxmind/GeoIP2-City-Test.mmdb");
    let asn = data("maxmind/GeoLite2-ASN-Test.mmdb");
    let ti = repo().join("ti/indicators.txt").display().to_string();
    let env = [("GEOIP_CITY_DB", city.as_str()), ("GEOIP_ASN_DB", asn.as_str()), ("TI_PATH", ti.as_str())];
    let out = run(&["lookup", "81.2.69.160", "--config", &path], "", &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["geo"]["city"], "London");
    let out = run(&["lookup", "94.26.7.7", "--config", &path], "", &env);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ti"]["matches"][0]["indicator"], "94.26.0.0/16");

    let off = [env[0], env[1], env[2], ("ENRICH_ENABLE_TI", "false"), ("ENRICH_ENABLE_GEOIP", "0")];
    let out = run(&["check-config", "--config", &path], "", &off);
    let stdout = text(&out.stdout);
    assert!(stdout.lines().any(|l| l.trim_start().starts_with("ti") && l.contains("Disabled")), "{stdout}");
    assert!(stdout.lines().any(|l| l.trim_start().starts_with("geoip") && l.contains("Disabled")), "{stdout}");
    let out = run(&["check-config", "--config", &path], "", &[("ENRICH_ENABLE_TI", "maybe")]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("ENRICH_ENABLE_TI"));
}

/// `lookup` takes an address or a domain, and shows each answer once (the
/// HTTP API keeps the reference API's `threats` alias; people do not need
/// it twice).
#[test]
fn lookup_an_address_or_a_domain() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &test_chain());
    let out = run(&["lookup", "45.149.3.7", "--config", &path], "", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ti"]["matches"][0]["indicator"], "45.149.3.0/24");
    assert!(v.get("threats").is_none(), "{v}");
    let out = run(&["lookup", "WWW.Evil-Example.com.", "--config", &path], "", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["domain"], "www.evil-example.com");
    assert_eq!(v["ti"]["matches"][0]["indicator"], "evil-example.com", "{v}");
    assert!(v.get("geo").is_none(), "address databases say nothing of a domain: {v}");
    let out = run(&["lookup", "not an address", "--config", &path], "", &[]);
    assert!(!out.status.success() && text(&out.stderr).contains("neither an IP address nor a domain"));
}

#[test]
fn config_schema_lists_every_plugin() {
    let out = run(&["config-schema"], "", &[]);
    assert!(out.status.success());
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = schema["properties"]["chain"]["items"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["properties"]["plugin"]["const"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["geoip", "asn", "ti", "asn_class", "wasm"]);
    assert!(schema["properties"]["server"].is_object());
}

/// Checks a configuration against the printed schema with Python's
/// `jsonschema` (the reference validator the issue was found with): the
/// schema itself is valid, every `$ref` resolves, and the answer is the
/// list of error messages.
const VALIDATE_PY: &str = r##"
import json, sys, tomllib
import jsonschema
schema = json.load(open(sys.argv[1]))
cls = jsonschema.validators.validator_for(schema)
cls.check_schema(schema)
validator = cls(schema)
def refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for v in node.values():
            yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)
for ref in sorted(set(refs(schema))):
    if not ref.startswith("#/"):
        sys.exit(f"$ref {ref} is not local")
    target = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
errors = {}
for path in sys.argv[2:]:
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    errors[path] = sorted(e.message for e in validator.iter_errors(doc))
print(json.dumps(errors))
"##;

#[test]
fn config_schema_validates_the_shipped_config_with_a_real_validator() {
    let has_jsonschema = std::process::Command::new("python3")
        .args(["-c", "import jsonschema, tomllib"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_jsonschema {
        browser::skip_or_fail(
            "config schema validation",
            "python3 with jsonschema not found",
            "apt-get install python3-jsonschema",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["config-schema"], "", &[]);
    assert!(out.status.success());
    let schema = dir.path().join("schema.json");
    std::fs::write(&schema, &out.stdout).unwrap();
    // Every plugin and output with typical options, and a file with a typo:
    // the check must be able to fail.
    let full = write_config(
        &dir,
        &format!(
            "{}\n[[output]]\ntype = \"elastic\"\nurl = \"http://127.0.0.1:9200\"\n\n[[output]]\ntype = \"file\"\npath = \"out.ndjson\"\n",
            test_chain()
        ),
    );
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[server]\nlisten = \"127.0.0.1:8080\"\nmax_recods = 10\n").unwrap();
    let shipped = repo().join("config.toml");
    let out = std::process::Command::new("python3")
        .args(["-c", VALIDATE_PY])
        .arg(&schema)
        .args([shipped.as_path(), std::path::Path::new(&full), typo.as_path()])
        .output()
        .unwrap();
    assert!(out.status.success(), "the validator refused the schema: {}", text(&out.stderr));
    let errors: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(errors[shipped.display().to_string()], serde_json::json!([]), "config.toml");
    assert_eq!(errors[&full], serde_json::json!([]), "every plugin and an output of two types");
    let typo_errors = errors[typo.display().to_string()].to_string();
    assert!(typo_errors.contains("max_recods"), "{typo_errors}");
}

#[test]
fn enrich_ndjson_and_zeek_tsv_offline() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &test_chain());
    let input = "{\"id.orig_h\":\"45.149.3.7\",\"id.resp_h\":\"81.2.69.160\",\"uid\":\"C1\"}\n\n{\"id.orig_h\":\"10.0.0.1\",\"id.resp_h\":\"1.128.0.1\"}\n";
    let out = run(&["enrich", "--config", &path, "--format", "zeek"], input, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stderr);
    assert!(summary.contains("2 events enriched, 1 with indicator matches, 0 skipped, in "), "{summary}");
    let lines: Vec<Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["uid"], "C1");
    assert_eq!(lines[0]["geo"]["city"], "London");
    assert_eq!(lines[0]["ti"]["matches"][0]["field"], "src_ip");
    assert_eq!(lines[1]["asn"]["asn"], 1221);

    // A bad record is reported with its line and skipped; the rest goes through.
    let input = "{\"id.orig_h\":\"45.149.3.7\"}\n{\"id.orig_p\":\"x\"}\n{\"id.orig_h\":\"10.0.0.1\"}\n";
    let out = run(&["enrich", "--config", &path, "--batch-size", "10"], input, &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("line 2, field `id.orig_p`"), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 2);

    // Real Zeek TSV (ZAT conn.log, MIT): every row comes out enriched.
    let zeek = data("zeek/zat-conn.log");
    let out = run(&["enrich", "--config", &path, "--zeek-tsv", &zeek], "", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let expected =
        std::fs::read_to_string(&zeek).unwrap().lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count();
    assert_eq!(rows.len(), expected);
    assert!(rows.iter().all(|r| r["id.orig_h"].is_string() && r["ti"]["matches"].is_array()));
    // A row cut short (a live log's half-written last line) and a line that
    // is not UTF-8 are skipped and reported; the run goes on and the
    // records read before them are not lost (the run used to end there,
    // writing nothing).
    let cut = "#separator \\x09\n#fields\tts\tid.orig_h\tid.resp_h\n#types\ttime\taddr\taddr\n\
               1.0\t10.0.0.1\t8.8.8.8\n2.0\t10.0.0.2\n3.0\t10.0.0.3\t1.1.1.1\n";
    let out = run(&["enrich", "--config", &path, "--zeek-tsv"], cut, &[]);
    let err = text(&out.stderr);
    assert_eq!(text(&out.stdout).lines().count(), 2, "{err}");
    assert!(err.contains("Zeek TSV line 5: 2 columns") && err.contains("1 record(s) skipped, 2 enriched"), "{err}");
    let mut bytes = b"{\"id.orig_h\":\"10.0.0.1\"}\n".to_vec();
    bytes.extend_from_slice(b"{\"x\":\"\xff\"}\n{\"id.orig_h\":\"10.0.0.2\"}\n");
    let dir_in = tempfile::tempdir().unwrap();
    let latin = dir_in.path().join("latin1.ndjson");
    std::fs::write(&latin, bytes).unwrap();
    let out = run(&["enrich", "--config", &path, latin.to_str().unwrap()], "", &[]);
    let err = text(&out.stderr);
    assert_eq!(text(&out.stdout).lines().count(), 2, "{err}");
    assert!(err.contains("line 2: ") && err.contains("1 record(s) skipped"), "{err}");
    // A bad record after it is reported at its own line (it was one line
    // early: the unreadable line was not in its batch).
    let mut bytes = b"{\"id.orig_h\":\"10.0.0.1\"}\n{\"x\":\"\xff\"}\n{\"id.orig_p\":\"x\"}\n".to_vec();
    bytes.extend_from_slice(b"{\"id.orig_h\":\"10.0.0.2\"}\n");
    std::fs::write(&latin, bytes).unwrap();
    let out = run(&["enrich", "--config", &path, latin.to_str().unwrap()], "", &[]);
    let err = text(&out.stderr);
    assert!(err.contains("line 3, field `id.orig_p`") && err.contains("2 record(s) skipped, 2 enriched"), "{err}");
    // Rows that cannot be read at all: stopped, said why.
    let headless = "1.0\t10.0.0.1\t8.8.8.8\n".repeat(500);
    let out = run(&["enrich", "--config", &path, "--zeek-tsv"], &headless, &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("the first 100 rows could not be read"), "{}", text(&out.stderr));

    // The same log without --zeek-tsv: recognised by its header, said so.
    let out = run(&["enrich", "--config", &path, &zeek], "", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("reading it as --zeek-tsv"), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), expected);

    // Input that is not records at all: ten messages, then a summary, not
    // one message per line.
    let arrays = "[1,2]\n".repeat(5000);
    let out = run(&["enrich", "--config", &path, "--batch-size", "100"], &arrays, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().filter(|l| l.contains("expected a JSON object")).count(), 10, "{err}");
    assert!(err.contains("the first 100 records were all refused") && err.contains("--zeek-tsv"), "{err}");
    // Mostly good input with many bad lines: a count, the first ten shown.
    let mixed: String = (0..300).map(|i| if i % 2 == 0 { "{\"id.orig_h\":\"10.0.0.1\"}\n" } else { "7\n" }).collect();
    let out = run(&["enrich", "--config", &path, "--batch-size", "50"], &mixed, &[]);
    let err = text(&out.stderr);
    assert_eq!(text(&out.stdout).lines().count(), 150);
    assert!(err.contains("150 record(s) skipped, 150 enriched (the first 10 shown above)"), "{err}");
}

#[test]
fn enrich_in_an_output_profile_and_a_profile_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mine.toml"),
        "name = \"mine\"\n[[field]]\npath = \"net.dst_country\"\nkind = \"country_code\"\nvalue = \"scalar\"\n\
         [[field]]\npath = \"net.dst\"\ninput = \"dst_ip\"\n",
    )
    .unwrap();
    let path = write_config(&dir, &format!("[profiles]\nfiles = [\"mine.toml\"]\n{}", test_chain()));
    let input = "{\"id.orig_h\":\"45.149.3.7\",\"id.resp_h\":\"81.2.69.160\",\"uid\":\"C1\"}\n";
    let out = run(&["enrich", "--config", &path, "--format", "zeek", "--profile", "ecs"], input, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(line["destination"]["geo"]["city_name"], "London", "{line}");
    assert_eq!(line["threat"]["enrichments"][0]["matched"]["field"], "src_ip", "{line}");
    assert!(line.get("geo").is_none(), "{line}");
    let out = run(&["enrich", "--config", &path, "--format", "zeek", "--profile", "mine"], input, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(
        line,
        serde_json::json!({"id.orig_h": "45.149.3.7", "id.resp_h": "81.2.69.160", "uid": "C1",
        "net": {"dst_country": "GB", "dst": "81.2.69.160"}})
    );
    let out = run(&["enrich", "--config", &path, "--profile", "nope"], input, &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("unknown output profile"), "{}", text(&out.stderr));
    // A config naming an unknown default profile is refused up front.
    let bad = write_config(&dir, &format!("[profiles]\ndefault = \"nope\"\n{}", test_chain()));
    let out = run(&["check-config", "--config", &bad], "", &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("[profiles] default"), "{}", text(&out.stderr));
}

/// `--version` says which commit and guest ABI; completions and man pages
/// come from the same definition as `--help`.
#[test]
fn version_completions_and_man_pages() {
    let out = run(&["--version"], "", &[]);
    let version = text(&out.stdout);
    assert!(version.starts_with(&format!("enrichd {} (git ", env!("CARGO_PKG_VERSION"))), "{version}");
    assert!(version.contains("WASM guest ABI 1."), "{version}");
    for (shell, needle) in [("bash", "_enrichd()"), ("zsh", "#compdef enrichd"), ("fish", "complete -c enrichd")] {
        let out = run(&["completions", shell], "", &[]);
        assert!(out.status.success() && text(&out.stdout).contains(needle), "{shell}");
        assert!(text(&out.stdout).contains("check-config") && text(&out.stdout).contains("allow-missing"), "{shell}");
    }
    let out = run(&["man"], "", &[]);
    assert!(text(&out.stdout).contains(".TH enrichd 1"), "{}", text(&out.stdout));
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["man", "--dir", &dir.path().display().to_string()], "", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tap = std::fs::read_to_string(dir.path().join("enrichd-tap.1")).unwrap();
    assert!(tap.contains("min\\-risk") || tap.contains("min-risk"), "{tap}");
}

/// A copied binary in an empty directory, no configuration anywhere:
/// `serve` starts on the built-in default (written to the data directory,
/// here systemd's `STATE_DIRECTORY`), says so, scores with the bundled rule
/// and degrades without the databases; `init` writes the same layout.
#[test]
fn serve_runs_anywhere_on_the_built_in_default() {
    let dir = tempfile::tempdir().unwrap();
    let (cwd, data, xdg) = (dir.path().join("cwd"), dir.path().join("data"), dir.path().join("xdg"));
    for d in [&cwd, &xdg] {
        std::fs::create_dir_all(d).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = bin();
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")]).current_dir(&cwd);
    for var in common::OVERRIDE_VARS.iter().chain(&["ENRICHD_CONFIG", "ENRICHD_DATA_DIR"]) {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .env("STATE_DIRECTORY", &data)
        .env("XDG_CONFIG_HOME", &xdg)
        .env("API_KEY", "anywhere-key")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let agent = common::agent();
    let up = (0..300).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        agent.get(&format!("{base}/v1/health")).call().is_ok()
    });
    let answer = up.then(|| {
        let body = r#"{"format":"flows.v1","records":[{"src_ip":"45.149.3.7","dst_ip":"8.8.8.8","dst_port":23}]}"#;
        agent
            .post(&format!("{base}/v1/ingest"))
            .header("Authorization", "Bearer anywhere-key")
            .send(body)
            .ok()
            .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
    });
    let details = agent
        .get(&format!("{base}/v1/health/details"))
        .header("Authorization", "Bearer anywhere-key")
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_json::<Value>().ok());
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = text(&out.stderr);
    assert!(up, "did not start: {log}");
    let record = answer.flatten().expect("ingest answered")["records"][0].clone();
    assert_eq!(record["ti"]["matches"][0]["indicator"], "45.149.3.0/24", "{record}");
    assert!(record["risk_score"].as_u64().unwrap() >= 70, "the bundled rule scores: {record}");
    assert!(record["geo"].is_null(), "no database yet: {record}");
    assert!(log.contains("starting on the built-in default") && log.contains(&data.display().to_string()), "{log}");
    assert!(data.join("config.toml").is_file() && data.join("rules/risk.wasm").is_file());
    assert_eq!(details.unwrap()["status"], "degraded");

    let init_dir = dir.path().join("init");
    let out = run(&["init", &init_dir.display().to_string()], "", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("written") && text(&out.stdout).contains("check-config"));
    let config = init_dir.join("config.toml").display().to_string();
    let out = run(&["check-config", "--config", &config, "--allow-missing"], "", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["init", &init_dir.display().to_string()], "", &[]);
    assert!(text(&out.stdout).lines().filter(|l| l.starts_with("kept")).count() == 4, "{}", text(&out.stdout));
}

/// `bench` refuses what it cannot measure with a message and exit code 1,
/// not a panic (101): no time, input that is not records.
#[test]
fn bench_refuses_bad_arguments_and_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &test_chain());
    for seconds in ["0", "NaN", "1e9"] {
        let out = run(&["bench", "--config", &path, "--random", "10", "--seconds", seconds], "", &[]);
        assert_eq!(out.status.code(), Some(1), "--seconds {seconds}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("--seconds"), "{}", text(&out.stderr));
    }
    let input = dir.path().join("in.ndjson");
    std::fs::write(&input, "{\"src_ip\":\"10.0.0.1\"}\nnot json\n").unwrap();
    let args = ["bench", "--config", &path, "--random", "0", "--seconds", "0.05", "--ndjson", input.to_str().unwrap()];
    let out = run(&args, "", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("replayed record 2 is not JSON"), "{}", text(&out.stderr));
    // Blank lines are skipped, not records.
    std::fs::write(&input, "{\"src_ip\":\"10.0.0.1\"}\n\n\n").unwrap();
    let out = run(&args, "", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
