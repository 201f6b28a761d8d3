//! Soak run (issue 13 point 5): half of the measured maximum load for a
//! long time, with indicator reloads every 30 s, a rule swap every 2 min
//! and 2,000 keep-alive connections held open, sampling the server's RSS,
//! open file descriptors and request latency every 10 s.
//!
//! Pass/fail (exit 1 on fail): zero failed requests (ingest or the held
//! connections' health checks); file descriptors flat (last sample within
//! 2 % + 16 of the first after the connections are open); resident memory
//! stable (no sample in the last third of the run above 1.3x the median of
//! the middle third). The p99 curve is printed for the report; it is not
//! judged here (a shared machine drifts; see docs/PERFORMANCE.md).
//!
//! `scripts/soak` builds the release binary and runs this; settings from
//! the environment: `SOAK_SECONDS` (1800), `SOAK_CONNECTIONS` (2000),
//! `SOAK_RELOAD_S` (30), `SOAK_SWAP_S` (120), `SOAK_CALIBRATE_S` (10),
//! `SOAK_LOAD` (0.5 of the calibrated maximum), `SOAK_BIN`
//! (target/release/enrichd), `SOAK_CSV` (a file for the samples).

#[path = "support/mod.rs"]
mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const KEY: &str = "soak-key";
const ADMIN: &str = "soak-admin";
const CLIENTS: usize = 4;
const BATCH: usize = 100;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    failures: AtomicU64,
    health_checks: AtomicU64,
    health_failures: AtomicU64,
    reloads: AtomicU64,
    swaps: AtomicU64,
    latencies: Mutex<Vec<Duration>>,
    first_failure: Mutex<Option<String>>,
}

impl Counters {
    fn fail(&self, counter: &AtomicU64, why: String) {
        counter.fetch_add(1, Relaxed);
        let mut first = self.first_failure.lock().unwrap();
        if first.is_none() {
            eprintln!("first failure: {why}");
            *first = Some(why);
        }
    }
}

fn main() {
    let seconds: u64 = env("SOAK_SECONDS", 1800);
    let connections: usize = env("SOAK_CONNECTIONS", 2000);
    let reload_every = Duration::from_secs(env("SOAK_RELOAD_S", 30));
    let swap_every = Duration::from_secs(env("SOAK_SWAP_S", 120));
    let calibrate = Duration::from_secs(env("SOAK_CALIBRATE_S", 10));
    let load: f64 = env("SOAK_LOAD", 0.5);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = std::env::var_os("SOAK_BIN").map(PathBuf::from).unwrap_or_else(|| repo.join("target/release/enrichd"));
    assert!(bin.exists(), "{} not found: cargo build --release (or set SOAK_BIN)", bin.display());
    raise_fd_limit(connections as u64 + 1024);

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::copy(repo.join("rules/risk.wasm"), d.join("rule.wasm")).unwrap();
    fs::write(d.join("feed.txt"), indicators(0)).unwrap();
    let config = format!(
        "[server]\nmax_connections = {max}\n[auth]\napi_keys = [\"{KEY}\"]\nadmin_keys = [\"{ADMIN}\"]\n\
         [reload]\nwatch = true\n\n\
         [[chain]]\nplugin = \"geoip\"\ndatabase = \"{city}\"\n\n[[chain]]\nplugin = \"asn\"\ndatabase = \"{asn}\"\n\n\
         [[chain]]\nplugin = \"ti\"\npaths = [\"feed.txt\"]\n\n[[chain]]\nplugin = \"wasm\"\nname = \"risk\"\nmodule = \"rule.wasm\"\n",
        max = connections + 512,
        city = repo.join("tests/data/maxmind/GeoIP2-City-Test.mmdb").display(),
        asn = repo.join("tests/data/maxmind/GeoLite2-ASN-Test.mmdb").display(),
    );
    fs::write(d.join("config.toml"), config).unwrap();
    let (mut child, base) = support::spawn(&bin, &d.join("config.toml"));
    let pid = child.id();
    let addr = base.trim_start_matches("http://").to_string();
    let body = Arc::new(batch().to_string());

    // Calibrate: the clients as fast as they go.
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients = start_clients(&base, &body, &counters, &stop, None);
    std::thread::sleep(calibrate);
    stop.store(true, Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let max_rps = counters.requests.load(Relaxed) as f64 / calibrate.as_secs_f64();
    let target_rps = max_rps * load;
    println!(
        "calibrated: {max_rps:.0} requests/s of {BATCH} events at most ({:.0} events/s); soaking at {target_rps:.0} \
         requests/s for {seconds} s with {connections} held connections",
        max_rps * BATCH as f64
    );
    assert_eq!(counters.failures.load(Relaxed), 0, "requests failed while calibrating");

    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients = start_clients(&base, &body, &counters, &stop, Some(target_rps / CLIENTS as f64));
    let holder = {
        let (counters, stop, addr) = (counters.clone(), stop.clone(), addr.clone());
        std::thread::spawn(move || hold_connections(&addr, connections, &counters, &stop))
    };
    let changer = {
        let (counters, stop, dir, repo) = (counters.clone(), stop.clone(), d.to_path_buf(), repo.clone());
        std::thread::spawn(move || change_files(&dir, &repo, reload_every, swap_every, &counters, &stop))
    };

    let mut csv = std::env::var_os("SOAK_CSV").map(|p| fs::File::create(p).expect("SOAK_CSV"));
    let header = "t_s,rss_mib,fds,requests,failures,health_checks,health_failures,reloads,swaps,p50_ms,p99_ms";
    println!("{header}");
    if let Some(f) = csv.as_mut() {
        writeln!(f, "{header}").unwrap();
    }
    let started = Instant::now();
    let mut samples: Vec<(f64, f64, usize, f64)> = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(10).min(Duration::from_secs(seconds).saturating_sub(started.elapsed())));
        let window = std::mem::take(&mut *counters.latencies.lock().unwrap());
        let t = started.elapsed().as_secs_f64();
        let (rss, fds) = (support::rss_kib(pid) as f64 / 1024.0, fds(pid));
        let (p50, p99) = (support::pct(&window, 0.5), support::pct(&window, 0.99));
        let row = format!(
            "{t:.0},{rss:.1},{fds},{},{},{},{},{},{},{p50:.2},{p99:.2}",
            counters.requests.load(Relaxed),
            counters.failures.load(Relaxed),
            counters.health_checks.load(Relaxed),
            counters.health_failures.load(Relaxed),
            counters.reloads.load(Relaxed),
            counters.swaps.load(Relaxed)
        );
        println!("{row}");
        if let Some(f) = csv.as_mut() {
            writeln!(f, "{row}").unwrap();
        }
        samples.push((t, rss, fds, p99));
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
    }
    stop.store(true, Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    holder.join().unwrap();
    changer.join().unwrap();
    let exited = child.try_wait().ok().flatten();
    let _ = child.kill();
    let _ = child.wait();
    std::process::exit(judge(&samples, &counters, exited.is_some()));
}

/// The verdict (0 = pass), printed with its reasons.
fn judge(samples: &[(f64, f64, usize, f64)], c: &Counters, server_died: bool) -> i32 {
    let mut problems = Vec::new();
    if server_died {
        problems.push("the server exited".to_string());
    }
    let (failures, health) = (c.failures.load(Relaxed), c.health_failures.load(Relaxed));
    if failures + health > 0 {
        problems.push(format!(
            "{failures} ingest and {health} health requests failed (first: {:?})",
            c.first_failure.lock().unwrap()
        ));
    }
    if samples.len() >= 3 {
        // Descriptors after the connections are open (the second sample).
        let (first, last) = (samples[1].2 as f64, samples[samples.len() - 1].2 as f64);
        if last > first * 1.02 + 16.0 {
            problems.push(format!("file descriptors grew from {first} to {last}"));
        }
        let third = samples.len() / 3;
        let mut middle: Vec<f64> = samples[third..2 * third].iter().map(|s| s.1).collect();
        middle.sort_by(|a, b| a.total_cmp(b));
        if let Some(median) = middle.get(middle.len() / 2) {
            let peak = samples[2 * third..].iter().map(|s| s.1).fold(0.0, f64::max);
            println!("RSS: median of the middle third {median:.1} MiB, peak of the last third {peak:.1} MiB");
            if peak > median * 1.3 {
                problems.push(format!("RSS grew: {peak:.1} MiB late vs {median:.1} MiB median mid-run"));
            }
        }
    }
    println!(
        "requests {} (failed {failures}), health checks {} (failed {health}), indicator reloads {}, rule swaps {}",
        c.requests.load(Relaxed),
        c.health_checks.load(Relaxed),
        c.reloads.load(Relaxed),
        c.swaps.load(Relaxed)
    );
    if problems.is_empty() {
        println!("soak: pass");
        0
    } else {
        println!("soak: FAIL: {}", problems.join("; "));
        1
    }
}

fn start_clients(
    base: &str,
    body: &Arc<String>,
    counters: &Arc<Counters>,
    stop: &Arc<AtomicBool>,
    rps_each: Option<f64>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|_| {
            let (url, body, counters, stop) =
                (format!("{base}/v1/ingest"), body.clone(), counters.clone(), stop.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                let interval = rps_each.map(|r| Duration::from_secs_f64(1.0 / r.max(0.1)));
                let mut next = Instant::now();
                while !stop.load(Relaxed) {
                    if let Some(interval) = interval {
                        next += interval;
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let sent = Instant::now();
                    let result = agent
                        .post(&url)
                        .header("Authorization", format!("Bearer {KEY}"))
                        .header("Content-Type", "application/json")
                        .send(body.as_bytes())
                        .map_err(|e| e.to_string())
                        .and_then(|mut r| {
                            let status = r.status().as_u16();
                            r.body_mut().read_to_vec().map_err(|e| e.to_string())?;
                            if status == 200 {
                                Ok(())
                            } else {
                                Err(format!("status {status}"))
                            }
                        });
                    counters.requests.fetch_add(1, Relaxed);
                    match result {
                        Ok(()) => counters.latencies.lock().unwrap().push(sent.elapsed()),
                        Err(e) => counters.fail(&counters.failures, format!("ingest: {e}")),
                    }
                }
            })
        })
        .collect()
}

/// Opens `n` keep-alive connections and sends a health check on each every
/// 20 s (well within the server's keep-alive timeout), until `stop`.
fn hold_connections(addr: &str, n: usize, counters: &Counters, stop: &AtomicBool) {
    let mut conns: Vec<Option<TcpStream>> = (0..n)
        .map(|_| {
            TcpStream::connect(addr).map_err(|e| counters.fail(&counters.health_failures, format!("connect: {e}"))).ok()
        })
        .collect();
    while !stop.load(Relaxed) {
        let round = Instant::now();
        for slot in conns.iter_mut() {
            let Some(stream) = slot.as_mut() else { continue };
            counters.health_checks.fetch_add(1, Relaxed);
            if let Err(e) = health_check(stream) {
                counters.fail(&counters.health_failures, format!("held connection: {e}"));
                *slot = TcpStream::connect(addr).ok();
            }
            if stop.load(Relaxed) {
                return;
            }
        }
        while round.elapsed() < Duration::from_secs(20) && !stop.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn health_check(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /v1/health HTTP/1.1\r\nHost: soak\r\n\r\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("closed by the server"));
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return if text.starts_with("HTTP/1.1 200") {
                    Ok(())
                } else {
                    Err(std::io::Error::other(text.lines().next().unwrap_or("").to_string()))
                };
            }
        }
    }
}

/// Replaces the indicator file every `reload_every` and swaps the rule
/// module every `swap_every`, each by writing beside and renaming over.
fn change_files(
    dir: &Path,
    repo: &Path,
    reload_every: Duration,
    swap_every: Duration,
    c: &Counters,
    stop: &AtomicBool,
) {
    let modules = [repo.join("rules/examples/admin_ports.wasm"), repo.join("rules/risk.wasm")];
    let (mut next_reload, mut next_swap) = (Instant::now() + reload_every, Instant::now() + swap_every);
    let mut round = 0;
    while !stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if Instant::now() >= next_reload {
            round += 1;
            fs::write(dir.join("feed.tmp"), indicators(round)).unwrap();
            fs::rename(dir.join("feed.tmp"), dir.join("feed.txt")).unwrap();
            c.reloads.fetch_add(1, Relaxed);
            next_reload += reload_every;
        }
        if Instant::now() >= next_swap {
            let module = &modules[c.swaps.load(Relaxed) as usize % 2];
            fs::copy(module, dir.join("rule.tmp")).unwrap();
            fs::rename(dir.join("rule.tmp"), dir.join("rule.wasm")).unwrap();
            c.swaps.fetch_add(1, Relaxed);
            next_swap += swap_every;
        }
    }
}

/// 100,000 indicators (addresses and /24s), different each round.
fn indicators(round: u64) -> String {
    let mut text = String::with_capacity(2 << 20);
    for i in 0..100_000u64 {
        let x = i.wrapping_mul(2_654_435_761).wrapping_add(round * 7919) as u32;
        let [a, b, c, d] = x.to_be_bytes();
        if i % 10 == 0 {
            text.push_str(&format!("{}.{b}.{c}.0/24\n", a % 223 + 1));
        } else {
            text.push_str(&format!("{}.{b}.{c}.{d}\n", a % 223 + 1));
        }
    }
    text.push_str("45.149.3.9\n");
    text
}

fn batch() -> Value {
    let records: Vec<Value> = (0..BATCH)
        .map(|i| {
            let dst_port = [443, 3389, 22][i % 3];
            json!({"src_ip": format!("45.{}.{}.{}", i % 200, (i * 7) % 250, (i * 13) % 250),
                   "dst_ip": format!("81.2.69.{}", i % 250), "src_port": 40000 + i, "dst_port": dst_port,
                   "protocol": "tcp", "bytes": 1200 + i * 1000})
        })
        .collect();
    json!({"collector_id": "soak", "format": "flows.v1", "records": records})
}

fn fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn raise_fd_limit(want: u64) {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
