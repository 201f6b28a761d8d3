//! Scale-out benchmark (issue 12 §5): events/s end to end on NATS
//! JetStream (raw stream → `enrichd serve` instances → output stream) with
//! 1, 2 and 3 instances, beside the broker's own figures measured in the
//! same run, and the CPU enrichment costs over a plain relay.
//!
//! One real `nats-server -js` (found as `tests/common/nats.rs` does:
//! `NATS_SERVER`, else `PATH`; store in a temp dir, loopback port). Raw
//! messages are `/v1/ingest` envelopes of 1,000 replayed Zeek conn records
//! (the RITA logs of `scripts/bench` from `../shared/testdata`, else
//! `tests/data/zeek/zat-conn.log`), cycled over the distinct envelopes.
//! The phases, each on fresh `RAW` (`raw.>`) and `ENRICHED` (`enriched.>`)
//! file-storage streams:
//!
//! 1. **publish**: M messages, async publishes with up to 256 acks
//!    outstanding: the broker's publish events/s;
//! 2. **consume**: a pull consumer drains them, acking each: its events/s;
//! 3. **relay**: this program as a child process (`scale_bench relay`)
//!    pulls from `RAW` the way enrichd's source does (same fetch batch and
//!    concurrency), publishes each body unchanged to `ENRICHED`, acks the
//!    raw message after the publish ack: events/s and CPU seconds per
//!    million events (utime + stime from `/proc/<pid>/stat`); then the
//!    **validating relay**, the same on a fresh backlog but checking each
//!    message as the cheapest correct service would (envelope and records
//!    parsed as JSON, records written back verbatim as NDJSON: issue 18's
//!    raw pass-through);
//! 4. **enrich ×k** (k = 1, 2, 3): M messages published first (a backlog:
//!    the drain rate of the enrichment tier is measured alone, not mixed
//!    with the publisher), the durable consumer created *paused*, k release
//!    `enrichd serve` instances started on it (`[[source]] type = "nats"`,
//!    `[[output]] type = "nats"`, the `scripts/bench` chain with full-size
//!    GeoLite2 City/ASN on both addresses when present, indicators, WASM
//!    rule), their CPU read once they run, then the consumer resumed: timed
//!    until the instances' output counters say every event is in
//!    `ENRICHED` (sent minus duplicates, i.e. publishes the stream
//!    acknowledged), then the stream is read back and its events counted
//!    (`VERIFY=0` skips that). Startup (databases, rule compilation) is not
//!    in the CPU or the time.
//!
//! Reported: events/s, its ratio to the broker's publish and consume
//! figures and to the relay; CPU seconds per million events of the
//! instances (and of nats-server, which shares the two cores); enrich CPU
//! over relay CPU − 1 (the target: < 25 %) and over the validating
//! relay's (see docs/SCALING.md for why the second); load average before
//! and after. The last lines are a markdown table for `docs/SCALING.md`.
//!
//! `cargo build --release && cargo run --release --example scale_bench --
//! [MESSAGES] [INSTANCES]` (defaults: 2000 messages = 2 M events,
//! instances `1,2,3`). Environment: `DURABILITY` of the output (`spool`,
//! as `docs/SCALING.md` deploys it, or `memory`), `BATCH` and
//! `CONCURRENCY` of the source and the relay (enrichd's defaults 64 and
//! 4), `MAX_ACK_PENDING` (default 1000 × instances), `VERIFY=0`,
//! `ENRICHD_BIN` another enrichd binary, `TIMEOUT_S` per phase (600),
//! `OUTPUT_OPTIONS` extra `[[output]]` settings, `;`-separated
//! (docs/SCALING.md: `max_in_flight = 16;batch_max = 4000`).

#[path = "support/inputs.rs"]
mod inputs;
#[path = "../tests/common/nats.rs"]
mod nats;
#[path = "support/mod.rs"]
mod support;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use async_nats::jetstream::{self, consumer, stream, Context};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};

const KEY: &str = "bench-key";
const PER_MESSAGE: usize = 1000;
/// Publishes in flight (acks not yet awaited) while loading the stream.
const WINDOW: usize = 256;

struct Opts {
    messages: usize,
    instances: Vec<usize>,
    durability: String,
    batch: usize,
    concurrency: usize,
    /// `None`: 1000 × the instance count.
    max_ack_pending: Option<i64>,
    verify: bool,
    timeout: Duration,
}

/// One measured phase.
struct Row {
    name: String,
    events: u64,
    secs: f64,
    /// CPU seconds of the measured process(es) (none for the broker-only
    /// phases), and per instance (events, CPU seconds).
    cpu: Option<f64>,
    per_instance: Vec<(u64, f64)>,
    broker_cpu: f64,
}

impl Row {
    fn eps(&self) -> f64 {
        self.events as f64 / self.secs
    }
    fn cpu_per_mev(&self) -> Option<f64> {
        self.cpu.map(|c| c / self.events as f64 * 1e6)
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("relay") {
        return relay_main(&args[1..]);
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let num = |k: &str, d: usize| -> anyhow::Result<usize> {
        env(k).map_or(Ok(d), |v| v.parse().with_context(|| format!("{k}={v:?} is not a number")))
    };
    let opts = Opts {
        messages: args.first().map_or(Ok(2000), |a| a.parse()).context("MESSAGES: a number")?,
        instances: args.get(1).map_or("1,2,3", String::as_str).split(',').map(str::parse).collect::<Result<_, _>>()?,
        durability: env("DURABILITY").unwrap_or_else(|| "spool".into()),
        batch: num("BATCH", 64)?,
        concurrency: num("CONCURRENCY", 4)?,
        max_ack_pending: env("MAX_ACK_PENDING").map(|v| v.parse()).transpose()?,
        verify: env("VERIFY").as_deref() != Some("0"),
        timeout: Duration::from_secs(num("TIMEOUT_S", 600)? as u64),
    };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = env("ENRICHD_BIN").map_or_else(|| repo.join("target/release/enrichd"), PathBuf::from);
    if !bin.exists() {
        bail!("{} missing: build it first (cargo build --release)", bin.display());
    }
    let load_before = loadavg();
    let bodies = envelopes(&repo);
    let Some(server) = nats::NatsServer::start("scale_bench") else { bail!("no nats-server (see above)") };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let js = rt.block_on(async { anyhow::Ok(jetstream::new(async_nats::connect(&server.url).await?)) })?;
    let (m, events) = (opts.messages, (opts.messages * PER_MESSAGE) as u64);
    println!(
        "{m} messages x {PER_MESSAGE} events ({} distinct bodies, {} KiB each on average), nats-server pid {} at {}, \
         output durability {}, source batch {} x concurrency {}",
        bodies.len(),
        bodies.iter().map(Bytes::len).sum::<usize>() / bodies.len() / 1024,
        server.pid(),
        server.url,
        opts.durability,
        opts.batch,
        opts.concurrency
    );
    println!("load average before: {load_before}");
    let broker = server.pid();
    let mut rows: Vec<Row> = Vec::new();
    let mut publishes: Vec<f64> = Vec::new();

    // Broker ceiling: publish, consume, relay (one backlog for the three).
    rt.block_on(fresh_streams(&js))?;
    let (secs, broker_cpu) = measured(broker, || rt.block_on(publish(&js, &bodies, m)))?;
    publishes.push(events as f64 / secs);
    rows.push(Row { name: "broker publish".into(), events, secs, cpu: None, per_instance: vec![], broker_cpu });
    let (secs, broker_cpu) = measured(broker, || rt.block_on(consume(&js, m, opts.batch, opts.timeout)))?;
    rows.push(Row { name: "broker consume".into(), events, secs, cpu: None, per_instance: vec![], broker_cpu });
    rows.push(relay(&rt, &js, &server.url, &opts, broker, false)?);
    print_row(rows.last().unwrap());
    rt.block_on(fresh_streams(&js))?;
    let secs = rt.block_on(publish(&js, &bodies, m))?;
    publishes.push(events as f64 / secs);
    rows.push(relay(&rt, &js, &server.url, &opts, broker, true)?);
    print_row(rows.last().unwrap());

    for &k in &opts.instances {
        rt.block_on(fresh_streams(&js))?;
        let secs = rt.block_on(publish(&js, &bodies, m))?;
        publishes.push(events as f64 / secs);
        let row = enrich(&rt, &js, &bin, &repo, &server.url, &opts, k, broker)?;
        print_row(&row);
        rows.push(row);
    }
    let load_after = loadavg();
    // The publish row: the mean of every load of the run (its CPU: the first).
    rows[0].secs = events as f64 / (publishes.iter().sum::<f64>() / publishes.len() as f64);
    let spread = publishes.iter().map(|p| format!("{p:.0}")).collect::<Vec<_>>().join(", ");
    println!("\nbroker publish events/s per load ({} loads, the table shows the mean): {spread}", publishes.len());
    println!("load average after: {load_after}\n");
    table(&rows, &opts, &load_before, &load_after);
    Ok(())
}

/// Deletes and creates `RAW` and `ENRICHED` (file storage, no limits).
async fn fresh_streams(js: &Context) -> anyhow::Result<()> {
    for (name, subject) in [("RAW", "raw.>"), ("ENRICHED", "enriched.>")] {
        let _ = js.delete_stream(name).await;
        let config = stream::Config { name: name.into(), subjects: vec![subject.into()], ..Default::default() };
        js.create_stream(config).await.map_err(|e| anyhow!("creating stream {name}: {e}"))?;
    }
    Ok(())
}

/// Publishes `n` bodies to `raw.zeek`, `WINDOW` acks outstanding: seconds.
async fn publish(js: &Context, bodies: &[Bytes], n: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut acks = VecDeque::with_capacity(WINDOW);
    for i in 0..n {
        acks.push_back(js.publish("raw.zeek", bodies[i % bodies.len()].clone()).await?);
        if acks.len() >= WINDOW {
            acks.pop_front().unwrap().await.context("publish ack")?;
        }
    }
    for ack in acks {
        ack.await.context("publish ack")?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The pull consumer every reader of `RAW` uses (enrichd's settings).
fn raw_consumer(name: &str, max_ack_pending: i64) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(name.into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending,
        ..Default::default()
    }
}

/// Drains `n` messages from `RAW` with a fresh consumer, acking each:
/// seconds.
async fn consume(js: &Context, n: usize, batch: usize, timeout: Duration) -> anyhow::Result<f64> {
    let stream = js.get_stream("RAW").await?;
    let consumer = stream.create_consumer(raw_consumer("drain", 1000)).await?;
    let started = Instant::now();
    let mut messages = consumer.stream().max_messages_per_batch(batch).messages().await?;
    for _ in 0..n {
        let next = tokio::time::timeout(timeout, messages.next()).await.context("consume: no message in time")?;
        let message = next.context("consume: the stream ended")?.map_err(|e| anyhow!("consume: {e}"))?;
        message.ack().await.map_err(|e| anyhow!("ack: {e}"))?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The relay phase: a child process (`scale_bench relay`) drains `RAW`
/// into `ENRICHED`; its CPU from `/proc`. `validate`: the relay checks
/// each message the way the cheapest correct service would (envelope and
/// records parsed as JSON, records written back verbatim as NDJSON: issue
/// 18's raw pass-through), not only forwards its bytes.
fn relay(
    rt: &tokio::runtime::Runtime,
    js: &Context,
    url: &str,
    o: &Opts,
    broker: u32,
    validate: bool,
) -> anyhow::Result<Row> {
    let raw = rt.block_on(js.get_stream("RAW"))?;
    rt.block_on(raw.create_consumer(raw_consumer("relay", 1000))).map_err(|e| anyhow!("relay consumer: {e}"))?;
    let mode = if validate { "validate" } else { "forward" };
    let child = Command::new(std::env::current_exe()?)
        .args(["relay", url, &o.messages.to_string(), &o.batch.to_string(), &o.concurrency.to_string(), mode])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning the relay")?;
    let mut relay = Guard(child);
    let mut stdin = relay.0.stdin.take();
    let lines = lines_of(relay.0.stdout.take().unwrap());
    let expect = |want: &str| match lines.recv_timeout(o.timeout) {
        Ok(line) if line == want => Ok(()),
        other => Err(anyhow!("relay: expected {want:?}, got {other:?} (did it exit? see its stderr)")),
    };
    expect("ready")?;
    let pid = relay.0.id();
    let (secs, broker_cpu, cpu) = {
        let (cpu0, broker0) = (support::cpu_seconds(pid)?, support::cpu_seconds(broker)?);
        let started = Instant::now();
        go(&mut stdin)?;
        expect("done")?;
        let secs = started.elapsed().as_secs_f64();
        (secs, support::cpu_seconds(broker)? - broker0, support::cpu_seconds(pid)? - cpu0)
    };
    drop(stdin); // it exits on EOF
    let _ = relay.0.wait();
    let stored = rt.block_on(async { anyhow::Ok(js.get_stream("ENRICHED").await?.info().await?.state.messages) })?;
    if stored != o.messages as u64 {
        bail!("relay: ENRICHED holds {stored} messages, {} expected", o.messages);
    }
    let events = (o.messages * PER_MESSAGE) as u64;
    let name = if validate { "validating relay" } else { "plain relay" };
    Ok(Row { name: name.into(), events, secs, cpu: Some(cpu), per_instance: vec![(events, cpu)], broker_cpu })
}

fn go(stdin: &mut Option<ChildStdin>) -> anyhow::Result<()> {
    let stdin = stdin.as_mut().context("no stdin")?;
    stdin.write_all(b"go\n")?;
    Ok(stdin.flush()?)
}

/// `scale_bench relay URL MESSAGES BATCH CONCURRENCY forward|validate`: prints `ready`,
/// waits for a line on stdin, relays MESSAGES messages from the `relay`
/// consumer of `RAW` to `enriched.relay` (publish, await the ack, then ack
/// the raw message; fetches of BATCH, CONCURRENCY messages at once, like
/// enrichd's source), prints `done`, exits at the end of stdin.
fn relay_main(args: &[String]) -> anyhow::Result<()> {
    let [url, n, batch, concurrency, mode] = args else { bail!("relay URL MESSAGES BATCH CONCURRENCY MODE") };
    let validate = mode == "validate";
    let (n, batch, concurrency): (usize, usize, usize) = (n.parse()?, batch.parse()?, concurrency.parse()?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let js = jetstream::new(async_nats::connect(url.as_str()).await?);
        let consumer: consumer::PullConsumer =
            js.get_stream("RAW").await?.get_consumer("relay").await.map_err(|e| anyhow!("{e}"))?;
        println!("ready");
        let mut stdin = BufReader::new(std::io::stdin());
        let mut line = String::new();
        stdin.read_line(&mut line)?;
        let done = AtomicUsize::new(0);
        while done.load(Relaxed) < n {
            let want = batch.min(n - done.load(Relaxed));
            let fetch = consumer.batch().max_messages(want).expires(Duration::from_secs(1)).messages().await;
            let messages = fetch.map_err(|e| anyhow!("fetch: {e}"))?;
            messages
                .for_each_concurrent(concurrency, |message| async {
                    let relayed = async {
                        let message = message.map_err(|e| anyhow!("receive: {e}"))?;
                        let body = if validate { passthrough(&message.payload)? } else { message.payload.clone() };
                        let ack = js.publish("enriched.relay", body).await?;
                        ack.await?;
                        message.ack().await.map_err(|e| anyhow!("ack: {e}"))
                    };
                    match relayed.await {
                        Ok(()) => _ = done.fetch_add(1, Relaxed),
                        Err(e) => {
                            eprintln!("relay failed: {e}");
                            std::process::exit(1);
                        }
                    }
                })
                .await;
        }
        println!("done");
        while stdin.read_line(&mut line)? > 0 {}
        anyhow::Ok(())
    })
}

/// A `/v1/ingest` envelope checked as JSON, its records written back
/// verbatim as NDJSON (no field decoded).
fn passthrough(body: &[u8]) -> anyhow::Result<Bytes> {
    let envelope = support::RawEnvelope::parse(body).context("not a /v1/ingest envelope of objects")?;
    let mut out = Vec::with_capacity(body.len());
    for record in envelope.records {
        out.extend_from_slice(record.get().as_bytes());
        out.push(b'\n');
    }
    Ok(out.into())
}

/// One enrichment run with `k` instances on a backlog of `o.messages`.
#[allow(clippy::too_many_arguments)]
fn enrich(
    rt: &tokio::runtime::Runtime,
    js: &Context,
    bin: &Path,
    repo: &Path,
    url: &str,
    o: &Opts,
    k: usize,
    broker: u32,
) -> anyhow::Result<Row> {
    let max_ack_pending = o.max_ack_pending.unwrap_or(1000 * k as i64);
    // Paused until resumed below: the instances start on an idle consumer.
    let mut config = raw_consumer("enrichd", max_ack_pending);
    let later = async_nats::datetime::add_std_duration(async_nats::datetime::now(), Duration::from_secs(3600));
    config.pause_until = Some(later.map_err(|e| anyhow!("{e}"))?);
    let raw = rt.block_on(js.get_stream("RAW"))?;
    rt.block_on(raw.create_consumer(config)).map_err(|e| anyhow!("enrichd consumer: {e}"))?;
    let dir = tempfile::tempdir()?;
    let text = format!(
        "[auth]\napi_keys = [\"{KEY}\"]\n[reload]\nwatch = false\n\
         [[source]]\ntype = \"nats\"\nservers = [\"{url}\"]\nstream = \"RAW\"\nsubjects = [\"raw.>\"]\n\
         durable = \"enrichd\"\ncreate = false\nmax_ack_pending = {max_ack_pending}\nbatch = {}\nconcurrency = {}\n\
         [[output]]\ntype = \"nats\"\nname = \"enriched\"\nservers = [\"{url}\"]\nsubject = \"enriched.conn\"\n\
         durability = \"{}\"\n{}\n{}",
        o.batch,
        o.concurrency,
        o.durability,
        support::output_options(),
        inputs::stage3_chain(repo)
    );
    let mut instances = Vec::new();
    for i in 0..k {
        let path = dir.path().join(format!("{i}/config.toml"));
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, &text)?;
        let (child, base) = support::spawn(bin, &path);
        instances.push((Guard(child), base));
    }
    for (_, base) in &instances {
        wait_until(o.timeout, &format!("the source of {base} to run"), || {
            Ok(get(base, "/v1/sources")?["sources"][0]["state"] == "running")
        })?;
    }
    std::thread::sleep(Duration::from_millis(500)); // settle after startup
    let pids: Vec<u32> = instances.iter().map(|(g, _)| g.0.id()).collect();
    let total = (o.messages * PER_MESSAGE) as u64;
    let delivered = |base: &str| -> anyhow::Result<u64> {
        let outputs = get(base, "/v1/outputs")?;
        let out = outputs["outputs"].as_array().and_then(|a| a.iter().find(|o| o["name"] == "enriched")).cloned();
        let c = &out.context("no output \"enriched\"")?["counters"];
        Ok(c["sent"].as_u64().unwrap_or(0) - c["duplicates"].as_u64().unwrap_or(0))
    };
    let cpu0: Vec<f64> = pids.iter().map(|&p| support::cpu_seconds(p)).collect::<Result<_, _>>()?;
    let broker0 = support::cpu_seconds(broker)?;
    let started = Instant::now();
    rt.block_on(raw.resume_consumer("enrichd")).map_err(|e| anyhow!("resuming the consumer: {e}"))?;
    wait_until(o.timeout, &format!("{total} events in ENRICHED"), || {
        let mut sum = 0;
        for (_, base) in &instances {
            sum += delivered(base)?;
        }
        Ok(sum >= total)
    })?;
    let secs = started.elapsed().as_secs_f64();
    let broker_cpu = support::cpu_seconds(broker)? - broker0;
    let mut per_instance = Vec::new();
    for (i, (_, base)) in instances.iter().enumerate() {
        per_instance.push((delivered(base)?, support::cpu_seconds(pids[i])? - cpu0[i]));
    }
    drop(instances);
    if o.verify {
        let stored = rt.block_on(count_events(js, "enriched.conn", o.timeout))?;
        if stored != total {
            bail!("{k} instances: ENRICHED holds {stored} events, {total} expected");
        }
    }
    let cpu = per_instance.iter().map(|(_, c)| c).sum();
    let name = format!("enrichd x{k}");
    Ok(Row { name, events: total, secs, cpu: Some(cpu), per_instance, broker_cpu })
}

/// Events (NDJSON lines) stored in `ENRICHED` under `subject`, read with a
/// consumer of its own.
async fn count_events(js: &Context, subject: &str, timeout: Duration) -> anyhow::Result<u64> {
    let mut stream = js.get_stream("ENRICHED").await?;
    let messages = stream.info().await?.state.messages;
    let config = consumer::pull::Config { filter_subject: subject.into(), ..Default::default() };
    let consumer = stream.create_consumer(config).await.map_err(|e| anyhow!("verify consumer: {e}"))?;
    let mut reading = consumer.stream().max_messages_per_batch(100).messages().await?;
    let (mut events, mut seen) = (0u64, 0u64);
    while seen < messages {
        let next = tokio::time::timeout(timeout, reading.next()).await.context("verify: no message in time")?;
        let message = next.context("verify: the stream ended")?.map_err(|e| anyhow!("verify: {e}"))?;
        events += memchr::memchr_iter(b'\n', &message.payload).count() as u64;
        seen += 1;
        if message.info().map_err(|e| anyhow!("{e}"))?.pending == 0 {
            break;
        }
    }
    Ok(events)
}

/// Runs `f`, returning its seconds and the CPU seconds `broker` spent.
fn measured(broker: u32, f: impl FnOnce() -> anyhow::Result<f64>) -> anyhow::Result<(f64, f64)> {
    let before = support::cpu_seconds(broker)?;
    let secs = f()?;
    Ok((secs, support::cpu_seconds(broker)? - before))
}

/// `GET base+path` with the bench key, as JSON.
fn get(base: &str, path: &str) -> anyhow::Result<Value> {
    let mut answer =
        ureq::get(&format!("{base}{path}")).header("Authorization", format!("Bearer {KEY}")).call()?.into_body();
    Ok(answer.read_json()?)
}

fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        // Errors while waiting (an instance still starting) are retried
        // until the deadline, which reports the last one.
        let last = match done() {
            Ok(true) => return Ok(()),
            Ok(false) => None,
            Err(e) => Some(e),
        };
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The lines a child prints, through a channel (closed when it exits).
fn lines_of(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A child process killed (and reaped) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The raw messages: `/v1/ingest` envelopes of `PER_MESSAGE` replayed Zeek
/// conn records each (the records cycled to fill the last ones).
fn envelopes(repo: &Path) -> Vec<Bytes> {
    let records: Vec<Value> =
        inputs::zeek_records(repo).iter().map(|r| serde_json::from_str(r).expect("a JSON record")).collect();
    let count = records.len().div_ceil(PER_MESSAGE).max(1);
    (0..count)
        .map(|b| {
            let chunk: Vec<&Value> =
                (0..PER_MESSAGE).map(|i| &records[(b * PER_MESSAGE + i) % records.len()]).collect();
            let body = json!({"collector_id": "scale-bench", "format": "zeek.conn.v1", "records": chunk});
            Bytes::from(serde_json::to_vec(&body).unwrap())
        })
        .collect()
}

fn print_row(r: &Row) {
    let each: Vec<String> =
        r.per_instance.iter().map(|(e, c)| format!("{e} ev, {c:.2} CPU-s ({:.2} cores)", c / r.secs)).collect();
    println!(
        "{:>14}: {:>9.0} ev/s in {:.2} s; CPU {} s/M events; nats-server {:.2} s/M events; {}",
        r.name,
        r.eps(),
        r.secs,
        r.cpu_per_mev().map_or("-".into(), |c| format!("{c:.2}")),
        r.broker_cpu / r.events as f64 * 1e6,
        each.join("; ")
    );
}

/// The markdown table (and the target's verdict per row).
fn table(rows: &[Row], o: &Opts, before: &str, after: &str) {
    let find = |n: &str| rows.iter().find(|r| r.name == n);
    let (publish, consume, relay) = (find("broker publish"), find("broker consume"), find("plain relay"));
    let eps = |r: Option<&Row>| r.map_or(f64::NAN, Row::eps);
    let relay_cpu = relay.and_then(Row::cpu_per_mev).unwrap_or(f64::NAN);
    let validating_cpu = find("validating relay").and_then(Row::cpu_per_mev).unwrap_or(f64::NAN);
    println!(
        "{} messages x {PER_MESSAGE} events, output durability `{}`, source batch {} x concurrency {}; \
         load average {before} before, {after} after.\n",
        o.messages, o.durability, o.batch, o.concurrency
    );
    println!(
        "| run | events/s | vs broker publish | vs broker consume | vs relay | CPU s / M events (per instance) | \
         CPU over relay | CPU over validating relay | nats-server CPU s / M events |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let per: Vec<String> = r
            .per_instance
            .iter()
            .map(|&(e, c)| if e == 0 { "idle".into() } else { format!("{:.2}", c / e as f64 * 1e6) })
            .collect();
        let over = match (r.name.starts_with("enrichd"), r.cpu_per_mev()) {
            (true, Some(c)) => {
                let x = c / relay_cpu - 1.0;
                format!("{:+.0} % ({})", x * 100.0, if x < 0.25 { "< 25 %: met" } else { "≥ 25 %: not met" })
            }
            _ => "-".into(),
        };
        let over_validating = match (r.name.starts_with("enrichd"), r.cpu_per_mev()) {
            (true, Some(c)) => format!("{:+.0} %", (c / validating_cpu - 1.0) * 100.0),
            _ => "-".into(),
        };
        println!(
            "| {} | {:.0} | {:.2}x | {:.2}x | {} | {} | {over} | {over_validating} | {:.2} |",
            r.name,
            r.eps(),
            r.eps() / eps(publish),
            r.eps() / eps(consume),
            if r.name == "plain relay" || relay.is_none() {
                "-".into()
            } else {
                format!("{:.2}x", r.eps() / eps(relay))
            },
            r.cpu_per_mev().map_or("-".into(), |c| format!("{c:.2} ({})", per.join(", "))),
            r.broker_cpu / r.events as f64 * 1e6
        );
    }
}
