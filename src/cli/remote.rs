//! Subcommands that watch a running server over its API: `enrichd tap`
//! (the live stream of enriched events, `GET /v1/tap`) and `enrichd top`
//! (rates, stages and outputs from `GET /v1/metrics`), in the spirit of
//! `vector tap` / `vector top`. Plain HTTP, a blocking client: these are
//! debugging tools a person runs next to the server.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

/// Where the server is and how to authenticate.
#[derive(clap::Args)]
pub(crate) struct Remote {
    /// Base URL of the running enrichd.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API key (taken from the environment so it stays out of the process
    /// list and shell history).
    #[arg(long = "key-env", value_name = "VAR", default_value = "API_KEY")]
    key_env: String,
}

impl Remote {
    fn get(&self, path_and_query: &str, timeout: Option<Duration>) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}{path_and_query}", self.url.trim_end_matches('/'));
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(timeout).build().into();
        let mut request = agent.get(&url);
        if let Some(key) = std::env::var(&self.key_env).ok().filter(|k| !k.is_empty()) {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let mut response = request.call().with_context(|| format!("GET {url}"))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            let detail: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
            let hint = if status == 401 { format!(" (set {} to an API key)", self.key_env) } else { String::new() };
            bail!("GET {url}: HTTP {status}{hint}: {}", detail.get("detail").unwrap_or(&detail));
        }
        Ok(response)
    }
}

#[derive(clap::Args)]
pub(crate) struct TapArgs {
    #[command(flatten)]
    remote: Remote,
    /// Only events where this dotted path is present and not null
    /// (`geo.country`, `ti.matches.0`); repeat for several.
    #[arg(long)]
    has: Vec<String>,
    /// Only events where PATH's value is VALUE (`geo.country=SE`,
    /// `dst_port=443`); repeat for several.
    #[arg(long = "where", value_name = "PATH=VALUE")]
    equals: Vec<String>,
    /// Only events some rule scored at least this (0-100).
    #[arg(long)]
    min_risk: Option<u8>,
    /// Only events that matched an indicator.
    #[arg(long)]
    matched: bool,
    /// At most this many events per second (1-1000).
    #[arg(long, default_value_t = 10)]
    rate: u32,
    /// Stop after this many events.
    #[arg(long)]
    limit: Option<u64>,
}

/// Streams the tapped events to standard output, one JSON object per line.
pub(crate) fn tap(args: TapArgs) -> anyhow::Result<()> {
    let mut query = vec![format!("rate={}", args.rate)];
    query.extend(args.has.iter().map(|p| format!("has={}", encode(p))));
    query.extend(args.equals.iter().map(|p| format!("where={}", encode(p))));
    query.extend(args.min_risk.map(|n| format!("min_risk={n}")));
    query.extend(args.matched.then(|| "matched=true".to_string()));
    query.extend(args.limit.map(|n| format!("limit={n}")));
    let response = args.remote.get(&format!("/v1/tap?{}", query.join("&")), None)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in BufReader::new(response.into_body().into_reader()).lines() {
        let line = line.context("reading the stream")?;
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break; // the reader went away (`| head`)
        }
    }
    Ok(())
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(clap::Args)]
pub(crate) struct TopArgs {
    #[command(flatten)]
    remote: Remote,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2)]
    interval: u64,
    /// Print one view and exit (the default when output is not a terminal).
    #[arg(long)]
    once: bool,
}

/// A terminal view of `/v1/metrics`, redrawn every `interval` seconds.
pub(crate) fn top(args: TopArgs) -> anyhow::Result<()> {
    let live = !args.once && std::io::stdout().is_terminal();
    loop {
        let mut response = args.remote.get("/v1/metrics", Some(Duration::from_secs(10)))?;
        let doc: Value = response.body_mut().read_json().context("reading /v1/metrics")?;
        let view = render(&doc, &args.remote.url);
        let mut out = std::io::stdout().lock();
        if live {
            // Clear the screen and home the cursor.
            write!(out, "\x1b[2J\x1b[H")?;
        }
        write!(out, "{view}")?;
        out.flush()?;
        if !live {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(args.interval.max(1)));
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// The view as text (kept apart from the terminal for tests).
pub(crate) fn render(doc: &Value, url: &str) -> String {
    let mut s = String::new();
    let rates = &doc["rates"];
    let queue = &doc["queue"];
    s += &format!(
        "enrichd at {url}   up {:.0} s\n\nevents/s (10 s) {:>12.0}   batches/min {:>10.0}   events total {:>14}\n",
        num(&doc["uptime_s"]),
        num(&rates["eps_10s"]),
        num(&rates["bpm_1m"]),
        doc["totals"]["events"].as_u64().unwrap_or(0),
    );
    s += &format!(
        "queue lag ms p50/p95/p99 {:.2}/{:.2}/{:.2}   in flight {} batches   threat matches {}   requests failed {}\n",
        num(&queue["lag_ms_p50"]),
        num(&queue["lag_ms_p95"]),
        num(&queue["lag_ms_p99"]),
        doc["queue_depth"].as_u64().unwrap_or(0),
        doc["totals"]["threat_matches"].as_u64().unwrap_or(0),
        doc["requests_failed"].as_u64().unwrap_or(0),
    );
    s += "\nSTAGE            PLUGIN    STATE      EVENTS          NS/EVENT   RELOADS  FAILED\n";
    for e in doc["enrichers"].as_array().into_iter().flatten() {
        s += &format!(
            "{:<16} {:<9} {:<10} {:>14} {:>12.0} {:>9} {:>7}\n",
            text(&e["name"]),
            text(&e["plugin"]),
            text(&e["state"]),
            e["events"].as_u64().unwrap_or(0),
            num(&e["mean_ns_per_event"]),
            e["reloads"].as_u64().unwrap_or(0),
            e["reload_failures"].as_u64().unwrap_or(0),
        );
    }
    let outputs = doc["outputs"].as_array().into_iter().flatten().collect::<Vec<_>>();
    if !outputs.is_empty() {
        s += "\nOUTPUT           TYPE      STATE      SENT            BACKLOG    DEAD-LETTERED  LOST\n";
        for o in outputs {
            let c = &o["counters"];
            s += &format!(
                "{:<16} {:<9} {:<10} {:>14} {:>10} {:>14} {:>5}\n",
                text(&o["name"]),
                text(&o["type"]),
                text(&o["state"]),
                c["sent"].as_u64().unwrap_or(0),
                o["backlog"]["events"].as_u64().unwrap_or(0),
                c["dead_lettered"].as_u64().unwrap_or(0),
                c["lost"].as_u64().unwrap_or(0),
            );
        }
    }
    if let Some(watchers) = doc["tap"]["watchers"].as_u64().filter(|n| *n > 0) {
        s += &format!("\ntaps open: {watchers}\n");
    }
    s
}
