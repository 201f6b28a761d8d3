//! `enrichd bench`: throughput of the in-process chain, next to two
//! baselines measured in the same run.
//!
//! Machines here drift 15-30 % within an hour, so an absolute figure means
//! little alone. Every workload is therefore measured, one after the other
//! on one thread: two baselines on the same records — a plain serde_json
//! parse to `Value` and serialize (the naive floor), and a raw pass-through
//! (each record validated as JSON with `RawValue` and copied back verbatim:
//! the limit for a service that must check its input and return every
//! record) — then, per configuration given, the chain alone on pre-parsed
//! batches and the full pipeline as `/v1/ingest` runs it: the same
//! [`Pipeline`] (parse, chain, live metrics, write), not a copy of it.
//! The live-metrics fold of the enriched batches is timed too, and parse +
//! write (the pipeline minus chain and fold) is set against the raw
//! pass-through.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use enrichd_engine::{parse_ndjson, Chain, Encoding, Format, Input, Limits, Pipeline, Split};

use crate::app;
use crate::metrics::Metrics;

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Configuration file whose chain is measured; repeat the flag to
    /// measure several chains against the same baselines.
    #[arg(long, short, default_value = "config.toml")]
    config: Vec<PathBuf>,
    /// Replay these logs (Zeek TSV, `.gz` ok); repeat the flag for several.
    #[arg(long = "zeek-log")]
    zeek_logs: Vec<PathBuf>,
    /// Replay these NDJSON files.
    #[arg(long)]
    ndjson: Vec<PathBuf>,
    /// Record format of the replayed files.
    #[arg(long, default_value = "zeek.conn.v1")]
    format: String,
    /// Also run N flows with uniformly random IPv4 addresses (0 = skip).
    #[arg(long, default_value_t = 200_000)]
    random: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Minimum measuring time per figure, seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Measure only the chain on pre-parsed batches (for profiling).
    #[arg(long)]
    chain_only: bool,
}

struct Workload {
    name: String,
    format: Format,
    /// NDJSON chunks of `batch_size` records.
    chunks: Vec<String>,
    records: usize,
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 3600.0) {
        anyhow::bail!("--seconds must be a number of seconds above 0 (at most 3600), not {}", args.seconds);
    }
    let mut chains = Vec::new();
    for path in &args.config {
        let (_, chain) = app::load(path, &app::registry())?;
        println!("chain ({}):", path.display());
        for r in chain.reports() {
            println!("  {:<10} {:?} {}", r.name, r.status.state, r.status.version.unwrap_or_default());
        }
        chains.push((path.display().to_string(), chain));
    }
    let mut workloads = Vec::new();
    let format = Format::from_name(&args.format).context("unknown --format")?;
    let mut lines = Vec::new();
    for path in &args.zeek_logs {
        for line in super::read_lines(super::open_input(Some(path))?, true) {
            lines.push(line?);
        }
    }
    for path in &args.ndjson {
        for line in super::read_lines(super::open_input(Some(path))?, false) {
            lines.push(line?);
        }
    }
    // Blank lines are no records; anything else must be one, checked
    // before measuring (the measured loops take it for granted).
    lines.retain(|l| !l.trim().is_empty());
    for (i, line) in lines.iter().enumerate() {
        serde_json::from_str::<&serde_json::value::RawValue>(line)
            .with_context(|| format!("replayed record {} is not JSON", i + 1))?;
    }
    if !lines.is_empty() {
        workloads.push(workload("replayed logs", format, lines, args.batch_size));
    }
    for w in &workloads {
        for (name, chain) in &chains {
            for chunk in &w.chunks {
                if let Err(e) = parse_ndjson(chunk.clone(), w.format, chain.parse_spec(), 0) {
                    anyhow::bail!("{}: not records of {} for the chain of {name}: {e}", w.name, w.format.name());
                }
            }
        }
    }
    if args.random > 0 {
        workloads.push(workload("random IPv4", Format::FlowsV1, random_flows(args.random), args.batch_size));
    }
    let budget = Duration::from_secs_f64(args.seconds);
    let baseline_budget = if args.chain_only { Duration::ZERO } else { budget };
    for w in &workloads {
        println!("\n{}: {} records, batches of {}", w.name, w.records, args.batch_size);
        let value = measure(baseline_budget, w, |chunk, out| {
            for line in chunk.lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("bench input is JSON");
                serde_json::to_writer(&mut *out, &v).expect("serializes");
                out.push(b'\n');
            }
        });
        let raw = measure(baseline_budget, w, |chunk, out| {
            for line in chunk.lines() {
                let v: &serde_json::value::RawValue = serde_json::from_str(line).expect("bench input is JSON");
                out.extend_from_slice(v.get().as_bytes());
                out.push(b'\n');
            }
        });
        if !args.chain_only {
            report("baseline serde_json Value parse+serialize", &value, w.records);
            report("baseline raw pass-through (RawValue+copy)", &raw, w.records);
        }
        for (name, chain) in &chains {
            if chains.len() > 1 {
                println!("  chain {name}:");
            }
            bench_chain(&args, budget, chain, w, &value, &raw);
        }
    }
    Ok(())
}

fn bench_chain(
    args: &BenchArgs,
    budget: Duration,
    chain: &Chain,
    w: &Workload,
    value: &Measurement,
    raw: &Measurement,
) {
    let mut batches: Vec<_> = w
        .chunks
        .iter()
        .map(|c| parse_ndjson(c.clone(), w.format, chain.parse_spec(), 0).expect("bench input parses"))
        .collect();
    let before = chain.reports();
    let chain_only = measure_chain(budget, chain, &mut batches);
    report("chain only (pre-parsed batches)", &chain_only, w.records);
    for (b, a) in before.iter().zip(chain.reports()) {
        let events = a.events - b.events;
        let ns = a.mean_ns_per_event * a.events as f64 - b.mean_ns_per_event * b.events as f64;
        if events > 0 {
            println!("    stage {:<12} {:>8.1} ns/event", a.name, ns / events as f64);
        }
    }
    let (chain_ns, fold_ns) = measure_metrics_fold(budget, chain, &mut batches);
    println!(
        "  chain then metrics fold, per batch:          chain {chain_ns:>6.1} ns/event, fold {fold_ns:>6.1} ns/event ({:.1}%)",
        100.0 * fold_ns / chain_ns
    );
    if args.chain_only {
        return;
    }
    let one_thread = || Split::new(usize::MAX, 1);
    let full = measure_pipeline(budget, chain, w, args.batch_size, one_thread(), Body::Ndjson);
    report("full pipeline: parse, chain, metrics, write", &full, w.records);
    let split = Split::default();
    if split.max_parts > 1 && args.batch_size >= split.min_events {
        // What `/v1/ingest` does with a batch this large when it is alone:
        // decoding, chain and writing split over the idle cores (wall
        // time), on NDJSON and on envelope bodies (whose records array is
        // split at guessed boundaries).
        let parted = measure_pipeline(budget, chain, w, args.batch_size, split.clone(), Body::Ndjson);
        report(&format!("full pipeline, batch split over up to {} threads", split.max_parts), &parted, w.records);
        println!("  split vs one thread: {:.2}x the events/s", full.ns_per_event() / parted.ns_per_event());
        let whole = measure_pipeline(budget, chain, w, args.batch_size, one_thread(), Body::Envelope);
        report("full pipeline, envelope bodies, one thread", &whole, w.records);
        let parted = measure_pipeline(budget, chain, w, args.batch_size, split, Body::Envelope);
        report("full pipeline, envelope bodies, split", &parted, w.records);
        println!("  split vs one thread: {:.2}x the events/s", whole.ns_per_event() / parted.ns_per_event());
    }
    let (full_ns, value_ns, raw_ns) = (full.ns_per_event(), value.ns_per_event(), raw.ns_per_event());
    println!(
        "  full pipeline events/s: {:.2}x the Value baseline's, {:.2}x the raw pass-through's",
        value_ns / full_ns,
        raw_ns / full_ns
    );
    // What the pipeline spends beside enrichment: its time minus the chain
    // and the fold measured just before on the same batches.
    let parse_write = full_ns - chain_ns - fold_ns;
    println!(
        "  parse + write (pipeline - chain - fold): {parse_write:>6.0} ns/event = {:.2}x the raw pass-through's {raw_ns:.0} ns/event",
        parse_write / raw_ns
    );
}

fn workload(name: &str, format: Format, lines: Vec<String>, batch_size: usize) -> Workload {
    let records = lines.len();
    let chunks = lines.chunks(batch_size.max(1)).map(|c| c.join("\n") + "\n").collect();
    Workload { name: name.into(), format, chunks, records }
}

struct Measurement {
    events: u64,
    total: Duration,
    batch_times: Vec<Duration>,
}

impl Measurement {
    fn ns_per_event(&self) -> f64 {
        self.total.as_nanos() as f64 / self.events.max(1) as f64
    }
}

fn measure(budget: Duration, w: &Workload, f: impl FnMut(&str, &mut Vec<u8>)) -> Measurement {
    measure_owned(budget, w, |c| c, f)
}

/// [`measure`] where each batch is first made into what the measured code
/// takes (`prepare`, not timed): the pipeline takes its input as an owned
/// `String`, which a server already has as the request body, so copying
/// the benchmark's batch is no part of the figure (the baselines read the
/// same text in place).
fn measure_owned<'w, T>(
    budget: Duration,
    w: &'w Workload,
    mut prepare: impl FnMut(&'w str) -> T,
    mut f: impl FnMut(T, &mut Vec<u8>),
) -> Measurement {
    let mut out = Vec::with_capacity(1 << 20);
    let mut m = Measurement { events: 0, total: Duration::ZERO, batch_times: Vec::new() };
    let per_chunk = |c: &str| c.lines().count() as u64;
    while m.total < budget {
        for chunk in &w.chunks {
            out.clear();
            let input = prepare(chunk);
            let t = Instant::now();
            f(input, &mut out);
            let dt = t.elapsed();
            std::hint::black_box(&out);
            m.total += dt;
            m.batch_times.push(dt);
            m.events += per_chunk(chunk);
        }
    }
    m
}

/// How a measured batch arrives.
#[derive(Clone, Copy)]
enum Body {
    Ndjson,
    /// `{"format", "records": [...]}`, as `/v1/ingest` gets it.
    Envelope,
}

/// The pipeline users run (the same [`Pipeline`] `/v1/ingest` and `enrichd
/// enrich` use, live metrics attached, their ticker running), on `body`s.
/// `split`: how batches may be split over threads (the one-core figures
/// use none).
fn measure_pipeline(
    budget: Duration,
    chain: &Chain,
    w: &Workload,
    batch_size: usize,
    split: Split,
    body: Body,
) -> Measurement {
    let metrics = Arc::new(Metrics::default());
    let pipeline =
        Pipeline::new(Limits { max_records: batch_size.max(1) }).with_observer(metrics.clone()).with_split(split);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Ticks once a second like the server's ticker; looks at `stop` more often.
        scope.spawn(|| {
            for n in 1u64.. {
                std::thread::sleep(Duration::from_millis(100));
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if n % 10 == 0 {
                    metrics.tick();
                }
            }
        });
        let owned = |chunk: &str| match body {
            Body::Ndjson => Input::Ndjson { text: chunk.to_owned(), format: w.format, first_index: 0 },
            Body::Envelope => Input::Envelope(
                format!(
                    r#"{{"format":"{}","records":[{}]}}"#,
                    w.format.name(),
                    chunk.lines().collect::<Vec<_>>().join(",")
                )
                .into_bytes(),
            ),
        };
        let m = measure_owned(budget, w, owned, |input, out| {
            pipeline.run(chain, input, Encoding::NDJSON, Instant::now(), out).expect("bench input parses");
        });
        stop.store(true, Ordering::Relaxed);
        m
    })
}

fn measure_chain(budget: Duration, chain: &Chain, batches: &mut [enrichd_engine::Batch]) -> Measurement {
    let mut m = Measurement { events: 0, total: Duration::ZERO, batch_times: Vec::new() };
    while m.total < budget {
        for batch in batches.iter_mut() {
            let t = Instant::now();
            chain.run(batch);
            let dt = t.elapsed();
            m.total += dt;
            m.batch_times.push(dt);
            m.events += batch.len() as u64;
        }
    }
    m
}

/// (chain, metrics fold) ns/event, measured batch by batch as `/v1/ingest`
/// runs them: the fold right after the chain, on the batch still in cache,
/// with the ticker's drain every second included.
fn measure_metrics_fold(budget: Duration, chain: &Chain, batches: &mut [enrichd_engine::Batch]) -> (f64, f64) {
    let metrics = Metrics::default();
    let (mut events, mut chain_time, mut fold_time) = (0u64, Duration::ZERO, Duration::ZERO);
    let mut since_tick = Duration::ZERO;
    while chain_time + fold_time < budget {
        for batch in batches.iter_mut() {
            let t0 = Instant::now();
            chain.run(batch);
            let t1 = Instant::now();
            metrics.observe_batch(
                (chain.facts(), chain.generation()),
                batch.events(),
                Duration::from_micros(100),
                Duration::from_micros(50),
            );
            if since_tick >= Duration::from_secs(1) {
                metrics.tick();
                since_tick = Duration::ZERO;
            }
            let t2 = Instant::now();
            chain_time += t1 - t0;
            fold_time += t2 - t1;
            since_tick += t2 - t0;
            events += batch.len() as u64;
        }
    }
    std::hint::black_box(metrics.read());
    let per_event = |d: Duration| d.as_nanos() as f64 / events as f64;
    (per_event(chain_time), per_event(fold_time))
}

fn report(label: &str, m: &Measurement, _records: usize) {
    let mut times = m.batch_times.clone();
    times.sort_unstable();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    let ns = m.total.as_nanos() as f64 / m.events as f64;
    println!(
        "  {label:<44} {:>12.0} events/s {:>8.0} ns/event   batch p50 {:>8.1} us  p99 {:>8.1} us",
        1e9 / ns,
        ns,
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6
    );
}

/// Flow records with uniformly random IPv4 addresses (xorshift, fixed seed).
fn random_flows(n: usize) -> Vec<String> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|i| {
            let (s, d, r) = (next() as u32, next() as u32, next());
            format!(
                r#"{{"ts":{},"src_ip":"{}","dst_ip":"{}","src_port":{},"dst_port":{},"protocol":"tcp","bytes":{},"packets":{}}}"#,
                1_700_000_000 + i as u64,
                std::net::Ipv4Addr::from(s),
                std::net::Ipv4Addr::from(d),
                1024 + (r % 60000),
                [53, 80, 443, 445, 3389, 1433, 22, 23][(r >> 20) as usize % 8],
                200 + (r >> 24) % 5_000_000,
                1 + (r >> 40) % 1000
            )
        })
        .collect()
}
