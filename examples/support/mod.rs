//! What the benchmark and soak examples share: starting the server binary
//! and reading its memory and latency figures.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Starts `bin serve` on `config` on a free port (logs at warn to our
/// stderr); the child and its base URL.
pub(crate) fn spawn(bin: &Path, config: &Path) -> (Child, String) {
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0"])
        .env("ENRICHD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn enrichd");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        let line = lines.next().expect("enrichd exited").unwrap();
        if let Some(addr) = line.strip_prefix("enrichd listening on ") {
            break addr.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, base)
}

/// Resident set size of `pid`, KiB (0 when unreadable).
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) `pid` has used so far.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    use anyhow::Context as _;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces), from
    // field 3 (state): utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf(3) reads a configuration value and touches no memory.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Ok(ticks as f64 / hz as f64)
}

/// `OUTPUT_OPTIONS` from the environment: extra `[[output]]` settings,
/// `;`-separated, as TOML lines (empty when unset).
pub(crate) fn output_options() -> String {
    std::env::var("OUTPUT_OPTIONS").unwrap_or_default().replace(';', "\n")
}

/// A `/v1/ingest` envelope read the way a raw pass-through does: checked
/// as JSON, `format` present, every record an object, nothing decoded.
#[derive(serde::Deserialize)]
pub(crate) struct RawEnvelope<'a> {
    #[serde(borrow)]
    pub(crate) collector_id: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    pub(crate) format: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    pub(crate) records: Vec<&'a serde_json::value::RawValue>,
}

impl<'a> RawEnvelope<'a> {
    pub(crate) fn parse(body: &'a [u8]) -> Option<Self> {
        let envelope: RawEnvelope = serde_json::from_str(std::str::from_utf8(body).ok()?).ok()?;
        envelope.records.iter().all(|r| r.get().starts_with('{')).then_some(envelope)
    }
}

/// The `q` quantile of `samples` in milliseconds (NaN when empty).
pub(crate) fn pct(samples: &[Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// The machine's CPU ticks so far: `(steal, total)` from `/proc/stat`'s
/// `cpu` line. On a shared VM the hypervisor gives our vCPUs' time to
/// other guests ("steal"); a run with much of it is not comparable to one
/// without, so the benchmarks print it beside their figures.
pub(crate) fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|l| l.split_whitespace().filter_map(|f| f.parse().ok()).collect())
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal (guest counted in user)
    (fields.get(7).copied().unwrap_or(0), fields.iter().take(8).sum())
}

/// Steal as a share of the machine's CPU time between two [`cpu_ticks`].
pub(crate) fn steal_pct(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1).max(1);
    100.0 * after.0.saturating_sub(before.0) as f64 / total as f64
}
