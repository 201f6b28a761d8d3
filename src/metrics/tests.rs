//! The facade end to end in-process, on a manual clock.

use std::sync::Arc;
use std::time::Duration;

use enrichd_engine::{Event, FactDecl, FactInfo, FactKind, Observer, Side};

use super::clock::{Clock, ManualClock};
use super::{report, Metrics};

const T0: u64 = 1_800_000_000_000;

fn metrics() -> (Arc<ManualClock>, Metrics) {
    let clock = Arc::new(ManualClock::new(T0 + 200));
    let m = Metrics::with_clock(Box::new(clock.clone()));
    (clock, m)
}

/// A destination country fact and a score fact, as stages declare them.
fn facts() -> Arc<[FactInfo]> {
    enrichd_engine::fact::table([
        ("geo", FactDecl::new("dst_country_code", FactKind::CountryCode).side(Side::Destination)),
        ("rule", FactDecl::new("score", FactKind::Score)),
    ])
    .into()
}

fn batch(n: usize, risk: u8) -> Vec<Event> {
    let facts = facts();
    (0..n)
        .map(|i| {
            let mut e = Event::synthetic();
            e.src_ip = Some(std::net::IpAddr::from([10, 0, (i / 256) as u8, i as u8]));
            e.set_fact(facts[0].id, enrichd_engine::fact::pack_country("DE").unwrap());
            e.set_fact(facts[1].id, u32::from(risk));
            e
        })
        .collect()
}

#[test]
fn rates_and_series_from_the_first_second_and_rolling_to_zero() {
    let (clock, m) = metrics();
    let keys = facts();
    for _ in 0..10 {
        clock.advance(100);
        m.observe_batch((&keys, 1), &batch(100, 40), Duration::from_micros(250), Duration::from_micros(80));
    }
    // 1.2 s after start: 1000 events, 10 batches.
    clock.advance(200);
    let doc = report::document(&m, &m.read());
    assert_eq!(doc["totals"]["events"], 1000);
    assert_eq!(doc["totals"]["batches"], 10);
    let eps = doc["rates"]["eps_1m"].as_f64().unwrap();
    assert!((eps - 1000.0 / 1.2).abs() < 1e-6, "rate over the 1.2 s elapsed, not a minute: {eps}");
    assert!((doc["rates"]["bpm_1m"].as_f64().unwrap() - 10.0 / 1.2 * 60.0).abs() < 1e-6);
    let lag = doc["queue"]["lag_ms_p95"].as_f64().unwrap();
    assert!((lag - 0.25).abs() < 0.01, "sub-millisecond lag reported as such: {lag}");
    let unique = doc["totals"]["unique_sources"].as_u64().unwrap();
    assert!((98..=102).contains(&unique), "HyperLogLog estimate of 100: {unique}");
    assert_eq!(doc["totals"]["avg_risk"], 40.0);
    assert_eq!(doc["top"]["5m"]["dst_countries"][0], serde_json::json!({"key": "DE", "count": 1000, "error": 0}));
    let eps_series = doc["timeseries"]["last_5m"]["eps"].as_array().unwrap();
    assert_eq!(eps_series.len(), 60);
    let last = eps_series.last().unwrap();
    assert_eq!(last[0].as_u64().unwrap() % 5000, 0);
    assert!(last[1].as_f64().unwrap() > 0.0);
    assert_eq!(doc["timeseries"]["last_5m"]["avg_risk"][0][1], serde_json::Value::Null);
    assert_eq!(doc["timeseries"]["last_15m"]["epm"].as_array().unwrap().len(), 60);

    // Two minutes of silence: rates fall to zero, the series move on.
    clock.advance(120_000);
    let doc = report::document(&m, &m.read());
    assert_eq!(doc["rates"]["eps_1m"], 0.0);
    assert_eq!(doc["eps"], 0.0);
    let last = doc["timeseries"]["last_5m"]["eps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last[1], 0.0);
    assert_eq!(last[0].as_u64().unwrap(), T0 + 120_000, "now is T0 + 121.4 s");
    assert_eq!(doc["queue"]["lag_ms_p95"], 0.0, "no requests in the window");
    assert_eq!(doc["totals"]["events"], 1000, "totals stay");
    assert_eq!(doc["top"]["15m"]["dst_countries"][0]["count"], 1000);
}

#[test]
fn the_ticker_drains_shards_from_other_threads() {
    let (clock, m) = metrics();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| m.observe_batch((&facts(), 1), &batch(50, 80), Duration::ZERO, Duration::ZERO));
        }
    });
    m.tick();
    clock.advance(1000);
    let r = m.read();
    assert_eq!(r.totals.events, 200);
    assert_eq!(r.high_risk.len(), 50, "bounded");
    assert!(r.high_risk.windows(2).all(|w| w[0].ts_ms >= w[1].ts_ms), "newest first");
    assert_eq!(clock.now_ms(), T0 + 1200);
}

#[test]
fn in_flight_guards_count_and_release() {
    let (_, m) = metrics();
    {
        let _b = m.batch_in_flight();
        Observer::entering(&m, 40);
        assert_eq!(m.in_flight(), (1, 40));
        Observer::left(&m, 40);
    }
    assert_eq!(m.in_flight(), (0, 0));
}

#[test]
fn every_sparkline_has_its_series_from_the_server() {
    let (clock, m) = metrics();
    let keys = facts();
    // 1 s in: 100 sources, lag 250 µs, 3 requests.
    clock.advance(800);
    m.observe_batch((&keys, 1), &batch(100, 40), Duration::from_micros(250), Duration::ZERO);
    for status in [200, 200, 401] {
        m.record_request(super::RouteGroup::Api, status);
    }
    m.tick();
    // 20 s later: 300 sources in all, a slower batch, 2 more requests.
    clock.advance(20_000);
    m.observe_batch((&keys, 1), &batch(300, 40), Duration::from_millis(8), Duration::ZERO);
    m.record_request(super::RouteGroup::Ingest, 200);
    m.record_request(super::RouteGroup::Ingest, 200);
    let doc = report::document(&m, &m.read());
    let s = &doc["timeseries"]["last_5m"];
    let at = |name: &str| -> Vec<(u64, serde_json::Value)> {
        let list = s[name].as_array().unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(list.len(), 60, "{name}");
        list.iter().map(|p| (p[0].as_u64().unwrap(), p[1].clone())).collect()
    };
    let started = T0 + 200;
    let (sources, lag, requests) = (at("unique_sources"), at("lag_ms_p95"), at("requests"));
    for (ts, v) in &sources {
        if ts + 5000 <= started {
            assert!(v.is_null(), "before start: no data, not 0 ({ts})");
        }
    }
    let value = |list: &[(u64, serde_json::Value)], ts: u64| list.iter().find(|(t, _)| *t == ts).unwrap().1.clone();
    let (b1, b2) = (T0, T0 + 20_000); // the buckets of the two batches
    let first = value(&sources, b1).as_u64().unwrap();
    assert!((98..=102).contains(&first), "{first}");
    assert_eq!(value(&sources, b1 + 10_000).as_u64(), Some(first), "carried forward while nothing changes");
    let now = sources.last().unwrap().1.as_u64().unwrap();
    assert!((295..=305).contains(&now), "{now}");
    assert_eq!(now, doc["totals"]["unique_sources"].as_u64().unwrap(), "the last point is the tile's figure");

    assert!((value(&lag, b1).as_f64().unwrap() - 0.25).abs() < 0.01);
    assert!(value(&lag, b1 + 5000).is_null(), "a bucket without batches has no lag");
    assert!((value(&lag, b2).as_f64().unwrap() - 8.0).abs() < 0.1);

    assert_eq!(value(&requests, b1), 3);
    assert_eq!(value(&requests, b2), 2);
    assert_eq!(requests.iter().map(|(_, v)| v.as_u64().unwrap()).sum::<u64>(), 5);
    assert_eq!(doc["requests_total"], 5);
}

/// A `top_values` label fact, declared with `labels` (a reload declaring
/// it again with other labels keeps its id).
fn label_facts(labels: [&str; 2]) -> Arc<[FactInfo]> {
    enrichd_engine::fact::table([("class", FactDecl::new("class", FactKind::Label).labels(labels).top_values())]).into()
}

fn labelled(facts: &Arc<[FactInfo]>, n: usize, value: u32) -> Vec<Event> {
    (0..n)
        .map(|_| {
            let mut e = Event::synthetic();
            e.set_fact(facts[0].id, value);
            e
        })
        .collect()
}

/// The `class` top list of the 5-minute window, as `label:count`.
fn class_top(m: &Metrics) -> Vec<String> {
    let doc = report::document(m, &m.read());
    let list = doc["top"]["5m"]["facts"]["class"].as_array().cloned().unwrap_or_default();
    list.iter().map(|e| format!("{}:{}", e["key"].as_str().unwrap(), e["count"])).collect()
}

/// A reload declares the fact again with other labels (same id, a table as
/// long as before). Before, the lists were named and rendered with the
/// table of whichever shard was drained last, and shards keep the table of
/// their last batch (an idle one the old table), so from one tick to the
/// next the list flickered between old and new labels, with old counts
/// added to new ones under one label.
#[test]
fn a_reload_relabelling_a_top_fact_never_mixes_tables() {
    let (clock, m) = metrics();
    let (old, new) = (label_facts(["low", "high"]), label_facts(["quiet", "loud"]));
    // Each batch on a thread of its own: threads are dealt different
    // shards, so both tables are in the shards at once.
    let on_a_thread = |facts: &Arc<[FactInfo]>, generation: u64, events: Vec<Event>| {
        std::thread::scope(|s| {
            s.spawn(|| m.observe_batch((facts, generation), &events, Duration::ZERO, Duration::ZERO));
        })
    };
    on_a_thread(&old, 1, labelled(&old, 5, 0));
    assert_eq!(class_top(&m), ["low:5"]);

    // The swap: a batch of the new chain, and one of the old chain that
    // was still running.
    clock.advance(1000);
    on_a_thread(&new, 2, labelled(&new, 3, 1));
    on_a_thread(&old, 1, labelled(&old, 2, 0));
    for tick in 0..6 {
        assert_eq!(class_top(&m), ["loud:3"], "tick {tick}: only the new table's counts, with its labels");
        clock.advance(1000);
        m.tick();
    }
    // An old batch after the new table was seen is not counted with it.
    on_a_thread(&old, 1, labelled(&old, 4, 1));
    on_a_thread(&new, 2, labelled(&new, 1, 0));
    assert_eq!(class_top(&m), ["loud:3", "quiet:1"]);
}
