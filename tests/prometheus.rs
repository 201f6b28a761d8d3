//! The shipped Grafana dashboard and Prometheus alerts against a real
//! Prometheus (Debian's 2.42) scraping a running enrichd under load: every
//! dashboard query returns data, every alert expression evaluates, names
//! only metrics that exist, and every rule is healthy.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{repo, test_chain, Server};
use serde_json::{json, Value};

struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(binary: &std::path::Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let rules = repo().join("deploy/prometheus/alerts.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: enrichd\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start prometheus");
        Prometheus { child, base: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let mut request = common::agent().get(&format!("{}{path}", self.base));
        for (k, v) in query {
            request = request.query(k, v);
        }
        request.call().ok().and_then(|mut r| r.body_mut().read_json::<Value>().ok())
    }

    /// The instant vector (or an error text) for `expr`.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let answer = self.api("/api/v1/query", &[("query", expr)]).ok_or("no answer")?;
        if answer["status"] != "success" {
            return Err(answer.to_string());
        }
        Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

/// The `expr` of every rule in the alerts file (plain and `>-` folded).
fn alert_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else { continue };
        let rest = rest.trim();
        if rest != ">-" && rest != ">" {
            exprs.push(rest.to_string());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let body: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .map(|l| l.trim())
            .collect();
        exprs.push(body.join(" "));
    }
    exprs
}

/// Metric names an expression reads (ours, the process families, `up`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        let known = ["telemetry_", "process_", "enrichd_"].iter().any(|p| word.starts_with(p)) || word == "up";
        if known && !names.contains(&word) {
            names.push(word.clone());
        }
        word.clear();
    }
    names
}

#[test]
fn dashboard_and_alert_queries_return_data_from_a_real_prometheus() {
    let Some(binary) = browser::find_program("PROMETHEUS", &["prometheus"]) else {
        browser::skip_or_fail("prometheus end to end", "prometheus not found", "apt-get install prometheus");
        return;
    };
    let rules_file = repo().join("deploy/prometheus/alerts.yml");
    if let Some(promtool) = browser::find_program("PROMTOOL", &["promtool"]) {
        let check = Command::new(promtool).args(["check", "rules"]).arg(&rules_file).output().unwrap();
        assert!(check.status.success(), "promtool check rules: {}", String::from_utf8_lossy(&check.stdout));
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.ndjson");
    let chain =
        format!("{}\n[[output]]\ntype = \"file\"\nname = \"archive\"\npath = \"{}\"\n", test_chain(), out.display());
    let s = Server::start(&chain);
    let prometheus = Prometheus::start(&binary, s.base.trim_start_matches("http://"));

    // Load while Prometheus scrapes every second: 100-event batches, a
    // tenth of them from a listed network.
    let records: Vec<Value> = (0..100)
        .map(|i| {
            let src = if i % 10 == 0 { "45.149.3.9".to_string() } else { format!("10.0.0.{i}") };
            json!({"src_ip": src, "dst_ip": "81.2.69.160", "dst_port": 443})
        })
        .collect();
    let started = Instant::now();
    let mut ready = false;
    while started.elapsed() < Duration::from_secs(60) {
        assert_eq!(s.ingest("flows.v1", json!(records)).status, 200);
        std::thread::sleep(Duration::from_millis(100));
        // Enough history for rate() over several scrapes.
        if started.elapsed() > Duration::from_secs(6) {
            let scrapes = prometheus.query("count_over_time(up{job=\"enrichd\"}[1m])").unwrap_or_default();
            if scrapes.first().and_then(|r| r["value"][1].as_str()).and_then(|v| v.parse::<u32>().ok()) >= Some(5) {
                ready = true;
                break;
            }
        }
    }
    assert!(ready, "Prometheus did not scrape enrichd five times in a minute");

    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/grafana/enrichd.json")).unwrap()).unwrap();
    let mut checked = 0;
    let mut empty = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap().replace("$__rate_interval", "1m").replace("$instance", ".*");
            match prometheus.query(&expr) {
                Ok(result) if !result.is_empty() => checked += 1,
                Ok(_) => empty.push(format!("{}: {expr}", panel["title"])),
                Err(e) => panic!("{}: {expr}: {e}", panel["title"]),
            }
        }
    }
    assert!(empty.is_empty(), "dashboard queries without data: {empty:#?}");
    assert!(checked >= 12, "{checked} queries");

    let alerts = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let exprs = alert_exprs(&alerts);
    assert_eq!(exprs.len(), 11);
    for expr in &exprs {
        prometheus.query(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        for name in metric_names(expr) {
            let series = prometheus.query(&format!("count({{__name__=\"{name}\"}})")).unwrap();
            assert!(!series.is_empty(), "alert reads {name}, which enrichd does not export: {expr}");
        }
    }
    // Every rule loaded and evaluated without error.
    let rules = prometheus.api("/api/v1/rules", &[]).unwrap();
    let rules: Vec<&Value> = rules["data"]["groups"][0]["rules"].as_array().unwrap().iter().collect();
    assert_eq!(rules.len(), 11);
    for rule in rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    // None of them fires on a healthy, loaded instance.
    let firing = prometheus.api("/api/v1/alerts", &[]).unwrap();
    let firing: Vec<&Value> =
        firing["data"]["alerts"].as_array().unwrap().iter().filter(|a| a["state"] == "firing").collect();
    assert!(firing.is_empty(), "{firing:#?}");
}

#[test]
fn alert_expressions_are_read_whole() {
    let text = "      - alert: A\n        expr: up == 0\n      - alert: B\n        expr: >-\n          rate(x_total[5m])\n          > 1\n        for: 5m\n";
    assert_eq!(alert_exprs(text), ["up == 0", "rate(x_total[5m]) > 1"]);
    assert_eq!(
        metric_names("sum(rate(telemetry_ingest_total{job=\"up\"}[5m])) and up"),
        ["telemetry_ingest_total", "up"]
    );
}
