//! What indicator metadata costs per event: the same 100,000 IPv4
//! indicators loaded twice, once as a plain list (no metadata) and once as
//! a Zeek intel file whose indicators carry source, confidence, severity,
//! tags, last_seen and valid_until, in a feed with a half-life (so every
//! match computes expiry and decay). Both chains run the same batches at
//! 0 %, 10 % and 100 % of events matching, alternating, so the two figures
//! of a row share the machine's state.
//! `cargo run --release -p enrichd-plugins --example ti_match_bench -- [ROUNDS]`

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use enrichd_engine::{Batch, Chain, ChainEntryConfig, Event, Format, Registry};

const INDICATORS: usize = 100_000;
const BATCH: usize = 10_000;

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let dir = std::env::temp_dir().join(format!("ti-match-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let indicators = addresses(INDICATORS, 0x9E37_79B9_7F4A_7C15);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let plain = dir.join("plain.txt");
    let intel = dir.join("intel.zeek");
    let mut text = String::new();
    let mut zeek = String::from(
        "#fields\tindicator\tindicator_type\tmeta.source\tmeta.desc\tmeta.confidence\tmeta.severity\tmeta.tags\tmeta.last_seen\tmeta.valid_until\n",
    );
    for (i, ip) in indicators.iter().enumerate() {
        text.push_str(&format!("{ip}\n"));
        let severity = ["low", "medium", "high"][i % 3];
        zeek.push_str(&format!(
            "{ip}\tIntel::ADDR\tupstream-{}\t-\t{}\t{severity}\tc2,botnet\t{}\t{}\n",
            i % 50,
            50 + i % 50,
            now - 86_400 * (i as u64 % 30),
            now + 86_400 * 365,
        ));
    }
    std::fs::write(&plain, text).unwrap();
    std::fs::write(&intel, zeek).unwrap();

    let mut registry = Registry::new();
    enrichd_plugins::register_all(&mut registry);
    let chain = |options: String| {
        let entry = ChainEntryConfig {
            plugin: "ti".into(),
            name: None,
            enabled: true,
            options: toml::from_str(&options).expect("options"),
            location: Default::default(),
        };
        Chain::build(&[entry], &registry, &dir).expect("chain")
    };
    let without = chain(format!("paths = [{:?}]\napi_indicators = false", plain.display().to_string()));
    let with = chain(format!(
        "paths = [{p:?}]\napi_indicators = false\n[[feeds]]\npath = {p:?}\nname = \"intel\"\nhalf_life_s = 2592000\ndecay_floor = 10",
        p = intel.display().to_string()
    ));

    println!("ns/event over {BATCH}-event batches, {rounds} rounds each (median), {INDICATORS} indicators");
    println!("{:>9} {:>12} {:>12} {:>7}", "matching", "plain list", "metadata", "ratio");
    let misses = addresses(BATCH, 0x2545_F491_4F6C_DD1D);
    for percent in [0usize, 10, 100] {
        let events: Vec<Event> = (0..BATCH)
            .map(|i| {
                let mut e = Event::synthetic();
                e.src_ip = Some(IpAddr::V4(Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8)));
                let hit = i * 100 / BATCH < percent;
                e.dst_ip = Some(IpAddr::V4(if hit { indicators[(i * 7919) % INDICATORS] } else { misses[i] }));
                e
            })
            .collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            a.push(time(&without, &events));
            b.push(time(&with, &events));
        }
        let (a, b) = (median(a), median(b));
        println!("{:>8}% {a:>12.1} {b:>12.1} {:>6.2}×", percent, b / a);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `n` distinct-looking public IPv4 addresses from a seeded LCG.
fn addresses(n: usize, mut s: u64) -> Vec<Ipv4Addr> {
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            Ipv4Addr::from((s >> 32) as u32 | 0x0100_0000)
        })
        .collect()
}

/// Nanoseconds per event of one run of `chain` over a copy of `events`.
fn time(chain: &Chain, events: &[Event]) -> f64 {
    let mut batch = Batch::synthetic(Format::FlowsV1, events.to_vec());
    let started = Instant::now();
    chain.run(&mut batch);
    let ns = started.elapsed().as_nanos() as f64 / events.len() as f64;
    std::hint::black_box(&batch);
    ns
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
