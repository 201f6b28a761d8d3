//! Times a threat-intel feed update, phase by phase: the `ti_feed` updater
//! fetching a CSV feed with metadata (and a STIX 2.1 bundle) from a local
//! HTTP server, converting, validating with the loader, applying the shrink
//! guard against the current file and staging it; then the stage's load of
//! the staged file (what the reload after the swap costs).
//! `cargo run --release -p enrichd-plugins --example ti_feed_load -- [N]`

use std::path::PathBuf;
use std::time::Instant;

use enrichd_engine::component::Factory;
use enrichd_engine::updater::{Fetched, UpdateContext, Validators};
use enrichd_plugins::ti::index::IndexBuilder;
use enrichd_plugins::ti::loader;
use enrichd_plugins::updaters::ti::TiFeedUpdater;

fn csv(n: usize) -> String {
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut text = String::with_capacity(n * 48);
    text.push_str("indicator,confidence,tags,valid_until\n");
    for i in 0..n {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let ip = std::net::Ipv4Addr::from((s >> 32) as u32 | 0x0100_0000);
        text.push_str(&format!("{ip},{},scanner|tor,2031-01-01\n", i % 100));
    }
    text
}

fn bundle(n: usize) -> String {
    let objects: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let ip = std::net::Ipv4Addr::from(0x0A00_0000u32 + i as u32);
            serde_json::json!({"type": "indicator", "spec_version": "2.1", "id": format!("indicator--{i:08x}-0000-4000-8000-000000000000"),
                "created": "2026-01-01T00:00:00.000Z", "modified": "2026-01-01T00:00:00.000Z",
                "pattern": format!("[ipv4-addr:value = '{ip}']"), "pattern_type": "stix",
                "valid_from": "2026-01-01T00:00:00Z", "confidence": 70, "labels": ["c2"], "name": "C2 server"})
        })
        .collect();
    serde_json::json!({"type": "bundle", "id": "bundle--1", "objects": objects}).to_string()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let (csv, stix) = (csv(n), bundle(n / 10));
    let app = axum::Router::new()
        .route("/feed.csv", axum::routing::get(move || async move { csv }))
        .route("/bundle.json", axum::routing::get(move || async move { stix }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    for (what, path, count) in [("csv", "feed.csv", n), ("stix", "bundle.json", n / 10)] {
        let target = dir.path().join(format!("{what}.csv"));
        let staging = dir.path().join(format!(".{what}.update"));
        let serde_json::Value::Object(options) = serde_json::json!({"url": format!("http://{addr}/{path}")}) else {
            unreachable!()
        };
        let ctx = UpdateContext { name: what.into(), base_dir: "/".into(), target: target.clone() };
        let runner = TiFeedUpdater.build(&options, &ctx).unwrap();
        for round in 0..3 {
            let started = Instant::now();
            let fetched = runner.fetch(&Validators::default(), &staging).await.unwrap();
            let fetch = started.elapsed();
            let Fetched::Staged { detail, .. } = fetched else { panic!("{fetched:?}") };
            std::fs::rename(&staging, &target).unwrap();
            let loaded = Instant::now();
            let mut builder = IndexBuilder::default();
            let reports = loader::load_all(
                &[target.display().to_string()],
                |p| PathBuf::from(p),
                &mut builder,
                &Default::default(),
                &[],
            );
            let _index = builder.finish();
            let load = loaded.elapsed();
            println!(
                "{what} {count} indicators, round {round} ({}): fetch+convert+validate+guard+stage {:.0} ms, stage load {:.0} ms, total {:.0} ms [{detail}; {} loaded]",
                if round == 0 { "no current file" } else { "guard parses the current file" },
                fetch.as_secs_f64() * 1e3,
                load.as_secs_f64() * 1e3,
                (fetch + load).as_secs_f64() * 1e3,
                reports[0].indicators
            );
        }
    }
}
