//! Times loading a large indicator file, phase by phase (read + parse into
//! the builder, then building the index): what a reload of it costs.
//! `cargo run --release -p enrichd-plugins --example ti_load -- [N]`

use std::path::PathBuf;
use std::time::Instant;

use enrichd_plugins::ti::index::IndexBuilder;
use enrichd_plugins::ti::loader;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut text = String::with_capacity(n * 16);
    for i in 0..n {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let ip = std::net::Ipv4Addr::from((s >> 32) as u32 | 0x0100_0000);
        if i % 10 == 0 {
            let o = ip.octets();
            text.push_str(&format!("{}.{}.{}.0/24\n", o[0], o[1], o[2]));
        } else {
            text.push_str(&format!("{ip}\n"));
        }
    }
    let dir = std::env::temp_dir().join(format!("ti-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("feed.txt");
    std::fs::write(&path, &text).unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let mut builder = IndexBuilder::default();
        let reports = loader::load_all(
            &[path.display().to_string()],
            |p| PathBuf::from(p),
            &mut builder,
            &Default::default(),
            &[],
        );
        let parsed = started.elapsed();
        let index = builder.finish();
        let total = started.elapsed();
        println!(
            "{n} indicators: read+parse {:.0} ms, index {:.0} ms, total {:.0} ms ({} loaded, {} KiB index)",
            parsed.as_secs_f64() * 1e3,
            (total - parsed).as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3,
            reports[0].indicators,
            index.heap_bytes() / 1024
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}
