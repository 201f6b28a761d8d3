//! Reload benchmark: time from a file write to live, memory, and ingest
//! latency while a large indicator file is reloaded under load.
//!
//! Spawns the release `enrichd` (build it first: `cargo build --release`),
//! feeds it batches from one client thread, and replaces its indicator
//! file (write to a temporary file, rename over) with a new one holding a
//! probe address. A second client polls with the probe until it matches.
//! Reported: write-to-live time, the server's resident memory before,
//! during (peak) and after, and request latency p50/p99 in the steady
//! window before the write next to the window from the write until live.
//!
//! `cargo run --release --example reload_bench -- [INDICATORS] [REAL_LIST_DIR]`
//! (defaults: 1,000,000 generated indicators; `../shared/testdata/ti`
//! when present, whose real lists are reloaded the same way).

#[path = "support/mod.rs"]
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const KEY: &str = "bench-key";
const PROBE: &str = "100.64.255.254";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let real = args.get(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("../shared/testdata/ti"));
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/enrichd");
    assert!(bin.exists(), "build the release binary first: cargo build --release");

    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.txt");
    let started = Instant::now();
    fs::write(&feed, generate(n, 1, None)).unwrap();
    println!("generated {n} indicators ({} MiB) in {:?}", fs::metadata(&feed).unwrap().len() >> 20, started.elapsed());
    let next = generate(n, 2, Some(PROBE));
    run_case(&bin, dir.path(), "generated", &feed, next.as_bytes());

    if real.is_dir() {
        let dir = tempfile::tempdir().unwrap();
        let lists = dir.path().join("lists");
        fs::create_dir(&lists).unwrap();
        let mut total = 0;
        for sub in ["firehol-2021-04-14", "ipsum", "blocklistproject"] {
            for entry in fs::read_dir(real.join(sub)).into_iter().flatten().flatten() {
                let name = format!("{sub}-{}", entry.file_name().to_string_lossy());
                total += fs::copy(entry.path(), lists.join(name)).unwrap();
            }
        }
        println!("\nreal lists: {} MiB from {}", total >> 20, real.display());
        let feed = lists.join("zz-probe.txt");
        fs::write(&feed, "192.0.2.1\n").unwrap();
        run_case(&bin, dir.path(), "real lists (dir)", &feed, format!("{PROBE}\n").as_bytes());
    }
}

/// `n` indicators: 90 % addresses, 10 % /24 networks, from a fixed LCG.
fn generate(n: usize, seed: u64, probe: Option<&str>) -> String {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = String::with_capacity(n * 16);
    out.push_str("# generated for the reload benchmark\n");
    for i in 0..n {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let ip = std::net::Ipv4Addr::from((s >> 32) as u32 | 0x0100_0000);
        if i % 10 == 0 {
            let o = ip.octets();
            out.push_str(&format!("{}.{}.{}.0/24\n", o[0], o[1], o[2]));
        } else {
            out.push_str(&format!("{ip}\n"));
        }
    }
    if let Some(p) = probe {
        out.push_str(p);
        out.push('\n');
    }
    out
}

fn run_case(bin: &Path, dir: &Path, label: &str, feed: &Path, next: &[u8]) {
    let paths = if feed.parent().unwrap().file_name().unwrap() == "lists" { "lists" } else { "feed.txt" };
    let config = dir.join("config.toml");
    fs::write(
        &config,
        format!(
            "[auth]\napi_keys = [\"{KEY}\"]\n[reload]\ndebounce_ms = 100\n[[chain]]\nplugin = \"ti\"\npaths = [\"{paths}\"]\n"
        ),
    )
    .unwrap();
    let load_started = Instant::now();
    let (mut child, base) = support::spawn(bin, &config);
    println!("[{label}] server up (initial load included) in {:?}", load_started.elapsed());
    let pid = child.id();
    let rss_before = support::rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::default();
    let client = {
        let (stop, samples, base) = (stop.clone(), samples.clone(), base.clone());
        std::thread::spawn(move || {
            let agent = ureq::Agent::new_with_defaults();
            let batch = batch(100);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = agent
                    .post(&format!("{base}/v1/ingest"))
                    .header("Authorization", format!("Bearer {KEY}"))
                    .send_json(&batch)
                    .map(|mut r| r.body_mut().read_to_vec().is_ok())
                    .unwrap_or(false);
                assert!(ok, "ingest failed during the benchmark");
                samples.lock().unwrap().push((t, t.elapsed()));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(4));

    let peak = Arc::new(Mutex::new(rss_before));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = support::rss_kib(pid);
                let mut p = peak.lock().unwrap();
                *p = (*p).max(r);
                drop(p);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let tmp = feed.with_extension("new");
    fs::write(&tmp, next).unwrap();
    let written = Instant::now();
    fs::rename(&tmp, feed).unwrap();
    let agent = ureq::Agent::new_with_defaults();
    let probe = json!({"format": "flows.v1", "records": [{"src_ip": PROBE, "dst_ip": "192.0.2.9"}]});
    let live = loop {
        let text = agent
            .post(&format!("{base}/v1/ingest"))
            .header("Authorization", format!("Bearer {KEY}"))
            .send_json(&probe)
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        if text.contains(&format!("\"indicator\":\"{PROBE}\"")) {
            break written.elapsed();
        }
        assert!(written.elapsed() < Duration::from_secs(30), "not live after 30 s");
        std::thread::sleep(Duration::from_millis(5));
    };
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    sampler.join().unwrap();
    let rss_after = support::rss_kib(pid);

    let samples = samples.lock().unwrap();
    let steady: Vec<Duration> = samples.iter().filter(|(t, _)| *t < written).map(|s| s.1).collect();
    let during: Vec<Duration> =
        samples.iter().filter(|(t, d)| *t + *d >= written && *t <= written + live).map(|s| s.1).collect();
    println!("[{label}] write -> live: {:.0} ms", live.as_secs_f64() * 1e3);
    println!(
        "[{label}] RSS: {} MiB before, {} MiB peak during reload, {} MiB after",
        rss_before >> 10,
        *peak.lock().unwrap() >> 10,
        rss_after >> 10
    );
    let (s50, s99) = (support::pct(&steady, 0.50), support::pct(&steady, 0.99));
    let (d50, d99) = (support::pct(&during, 0.50), support::pct(&during, 0.99));
    println!("[{label}] ingest latency steady  ({} requests): p50 {s50:.2} ms, p99 {s99:.2} ms", steady.len());
    println!(
        "[{label}] ingest latency reloading ({} requests): p50 {d50:.2} ms, p99 {d99:.2} ms ({:.1}x steady p99)",
        during.len(),
        d99 / s99
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn batch(n: usize) -> Value {
    let records: Vec<Value> = (0..n)
        .map(|i| {
            json!({"src_ip": format!("45.{}.{}.{}", i % 200, (i * 7) % 250, (i * 13) % 250),
                   "dst_ip": format!("8.8.{}.{}", i % 4, i % 250), "src_port": 40000 + i, "dst_port": 443,
                   "protocol": "tcp", "bytes": 1200})
        })
        .collect();
    json!({"collector_id": "bench", "format": "flows.v1", "records": records})
}
