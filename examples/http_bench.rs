//! HTTP load generator: `POST /v1/ingest` against enrichd and against two
//! baseline servers on the same machine, same bodies, same run.
//!
//! The baselines are this program in server mode (`http_bench --serve raw`
//! or `--serve value`, spawned as child processes, hyper on a tokio
//! runtime like enrichd's):
//! - `raw`: the raw pass-through, the limit for a service that must check
//!   its input and return every record: the envelope and each record
//!   validated as JSON (`serde_json` with `RawValue`), the records written
//!   back verbatim in the `/v1/ingest` answer shape;
//! - `value`: the naive floor: the body parsed into a `serde_json::Value`,
//!   `count` added, serialized back.
//!
//! enrichd runs twice: with the default chain of `config.toml` (geoip + asn
//! on the destination or the source, ti on both addresses, the WASM rule)
//! and with the stage-3 chain (geoip + asn on both addresses), the
//! full-size GeoLite2 2018 databases from `../shared/testdata` when present.
//! Bodies: 1,000 (or 100) replayed Zeek conn records (every conn log
//! of the two RITA sets `scripts/bench` reads from, 46,333 records; else
//! `tests/data/zeek/zat-conn.log`) or flows with
//! uniformly random IPv4 addresses. Each client is one keep-alive
//! connection on a thread, sending the next body when the answer is in
//! (a small HTTP/1.1 client over `TcpStream`: the clients share the two
//! cores with the server, so they must cost little).
//!
//! `cargo build --release && cargo run --release --example http_bench --
//! [SECONDS]` (default 5 per figure). `CASES=1000x8,100x1,1000x1` picks
//! batch size x connections, `SERVERS=raw,value,default,stage3` and
//! `BODIES=zeek,random` the rest; `ENRICHD_BIN` another enrichd binary.

#[path = "support/mod.rs"]
mod support;

#[path = "support/inputs.rs"]
mod inputs;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "bench-key";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        return serve(&args[1]);
    }
    let seconds: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(5.0);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // ENRICHD_BIN: another build to measure (a before / after pair).
    let bin = std::env::var_os("ENRICHD_BIN").map_or_else(|| repo.join("target/release/enrichd"), PathBuf::from);
    assert!(bin.exists(), "build the release binary first: cargo build --release");
    let env_list = |name: &str, default: &str| -> Vec<String> {
        std::env::var(name).unwrap_or_else(|_| default.into()).split(',').map(str::to_owned).collect()
    };
    let cases: Vec<(usize, usize)> = env_list("CASES", "1000x8,100x1,1000x1")
        .iter()
        .map(|c| {
            let (b, n) = c.split_once('x').expect("CASES: BATCHxCONNECTIONS");
            (b.parse().unwrap(), n.parse().unwrap())
        })
        .collect();
    let servers = env_list("SERVERS", "raw,value,default,stage3");
    let bodies = env_list("BODIES", "zeek,random");

    let dir = tempfile::tempdir().unwrap();
    let mut running = Vec::new();
    for name in &servers {
        let (child, addr) = match name.as_str() {
            "raw" | "value" => spawn_baseline(name),
            chain @ ("default" | "stage3") => {
                let config = dir.path().join(format!("{chain}.toml"));
                std::fs::write(
                    &config,
                    format!(
                        "[auth]\napi_keys = [\"{KEY}\"]\n[server]\nmax_records = 10000\n{}",
                        chain_toml(&repo, chain)
                    ),
                )
                .unwrap();
                let (child, base) = support::spawn(&bin, &config);
                (child, base.trim_start_matches("http://").to_string())
            }
            other => panic!("unknown server {other:?}"),
        };
        running.push((name.clone(), child, addr));
    }
    let zeek = inputs::zeek_records(&repo);
    println!("{} replayed Zeek records; {seconds} s per figure; servers {servers:?}", zeek.len());
    for &(batch, conns) in &cases {
        for kind in &bodies {
            let records = match kind.as_str() {
                "zeek" => zeek.clone(),
                "random" => random_flows(batch * 50),
                other => panic!("unknown body kind {other:?}"),
            };
            let format = if kind == "zeek" { "zeek.conn.v1" } else { "flows.v1" };
            let bodies: Vec<Vec<u8>> = records
                .chunks(batch)
                .filter(|c| c.len() == batch)
                .map(|c| {
                    format!("{{\"collector_id\":\"bench\",\"format\":\"{format}\",\"records\":[{}]}}", c.join(","))
                        .into_bytes()
                })
                .collect();
            println!("\n{kind} bodies, {batch} records each, {conns} connection(s):");
            let mut figures = Vec::new();
            for (name, _, addr) in &running {
                let r = load(addr, &bodies, batch, conns, Duration::from_secs_f64(seconds));
                println!(
                    "  {name:<8} {:>10.0} events/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} requests, {} failed)",
                    r.eps, r.p50_ms, r.p99_ms, r.requests, r.failed
                );
                figures.push((name.clone(), r));
            }
            let of = |n: &str| figures.iter().find(|(name, _)| name == n).map(|(_, r)| r.eps);
            for (name, r) in figures.iter().filter(|(n, _)| n == "default" || n == "stage3") {
                let ratio = |base: Option<f64>| base.map_or("-".into(), |b| format!("{:.2}x", r.eps / b));
                println!("  {name}: {} the raw pass-through, {} the Value floor", ratio(of("raw")), ratio(of("value")));
            }
        }
    }
    for (_, mut child, _) in running {
        let _ = child.kill();
        let _ = child.wait();
    }
}

struct Load {
    eps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    failed: u64,
}

/// `conns` clients post `bodies` round robin for `time` (after a short
/// warm-up that is not counted).
fn load(addr: &str, bodies: &[Vec<u8>], batch: usize, conns: usize, time: Duration) -> Load {
    let warmup = Duration::from_millis(500);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let bodies = Arc::new(bodies.to_vec());
    let started = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let (stop, failed, addr) = (stop.clone(), failed.clone(), addr.to_string());
            let bodies = bodies.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(&addr);
                let mut times = Vec::new();
                let mut n = i;
                while !stop.load(Relaxed) {
                    let t = Instant::now();
                    let ok = client.post(&bodies[n % bodies.len()]);
                    n += 1;
                    if !ok {
                        failed.fetch_add(1, Relaxed);
                        client = Client::connect(&addr);
                    } else if t.duration_since(started) >= warmup {
                        times.push(t.elapsed());
                    }
                }
                times
            })
        })
        .collect();
    std::thread::sleep(warmup + time);
    stop.store(true, Relaxed);
    let measured = started.elapsed() - warmup;
    let times: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    Load {
        eps: (times.len() * batch) as f64 / measured.as_secs_f64(),
        p50_ms: support::pct(&times, 0.50),
        p99_ms: support::pct(&times, 0.99),
        requests: times.len() as u64,
        failed: failed.load(Relaxed),
    }
}

/// One keep-alive HTTP/1.1 connection: `POST /v1/ingest`, read the answer
/// whole (by `Content-Length`), check it is a 200.
struct Client {
    stream: BufReader<TcpStream>,
    head: Vec<u8>,
    body: Vec<u8>,
}

impl Client {
    fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        Client { stream: BufReader::with_capacity(1 << 16, stream), head: Vec::new(), body: Vec::new() }
    }

    fn post(&mut self, body: &[u8]) -> bool {
        self.head.clear();
        let _ = write!(
            self.head,
            "POST /v1/ingest HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let stream = self.stream.get_mut();
        if stream.write_all(&self.head).and_then(|_| stream.write_all(body)).is_err() {
            return false;
        }
        let (mut status, mut length) = (0u16, None);
        let mut line = String::new();
        loop {
            line.clear();
            if self.stream.read_line(&mut line).unwrap_or(0) == 0 {
                return false;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(code) = l.strip_prefix("HTTP/1.1 ") {
                status = code.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            } else if let Some((name, value)) = l.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let Some(length) = length else { return false };
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).is_ok() && status == 200
    }
}

fn spawn_baseline(mode: &str) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--serve", mode])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn baseline server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").expect("baseline server address").to_string();
    (child, addr)
}

/// Server mode: the `raw` or `value` baseline on 127.0.0.1 (port printed).
fn serve(mode: &str) {
    let raw = match mode {
        "raw" => true,
        "value" => false,
        other => panic!("--serve raw|value, not {other:?}"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| async move {
                        use http_body_util::BodyExt;
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let answer = if raw { pass_through(&body) } else { through_value(&body) };
                        let status = if answer.is_some() { 200 } else { 400 };
                        let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                            answer.unwrap_or_default(),
                        )));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
}

/// The raw pass-through: envelope and records validated, records copied.
fn pass_through(body: &[u8]) -> Option<Vec<u8>> {
    let envelope = support::RawEnvelope::parse(body)?;
    let mut out = Vec::with_capacity(body.len() + 128);
    out.extend_from_slice(b"{\"collector_id\":");
    out.extend_from_slice(envelope.collector_id.map_or("null", |c| c.get()).as_bytes());
    let _ = write!(out, ",\"format\":{},\"count\":{},\"records\":[", envelope.format.get(), envelope.records.len());
    for (i, record) in envelope.records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(record.get().as_bytes());
    }
    out.extend_from_slice(b"]}");
    Some(out)
}

/// The naive floor: parse into a `Value`, serialize back.
fn through_value(body: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let count = v.get("records")?.as_array()?.len();
    v.as_object_mut()?.insert("count".into(), count.into());
    serde_json::to_vec(&v).ok()
}

/// The chain of `config.toml` (`default`) or the stage-3 one, as in
/// `scripts/bench`.
fn chain_toml(repo: &Path, chain: &str) -> String {
    let shared = repo.join("../shared/testdata/mmdb/geolite2-2018-02");
    let (city, asn) = if shared.join("GeoLite2-City.mmdb").exists() {
        (shared.join("GeoLite2-City.mmdb"), shared.join("GeoLite2-ASN.mmdb"))
    } else {
        (repo.join("tests/data/maxmind/GeoIP2-City-Test.mmdb"), repo.join("tests/data/maxmind/GeoLite2-ASN-Test.mmdb"))
    };
    let targets = |out: &str| {
        if chain == "stage3" {
            format!("[{{ address = \"source\", output = \"src_{out}\" }}, {{ address = \"destination\", output = \"dst_{out}\" }}]")
        } else {
            format!("[{{ address = \"destination_or_source\", output = \"{out}\" }}]")
        }
    };
    format!(
        "[[chain]]\nplugin = \"geoip\"\ndatabase = \"{}\"\ntargets = {}\n\
         [[chain]]\nplugin = \"asn\"\ndatabase = \"{}\"\ntargets = {}\n\
         [[chain]]\nplugin = \"ti\"\npaths = [\"{}\"]\naddresses = [\"source\", \"destination\"]\n\
         domain_fields = [\"domain\", \"query\", \"server_name\", \"host\"]\noutput = \"ti\"\n\
         [[chain]]\nplugin = \"wasm\"\nname = \"risk\"\nmodule = \"{}\"\nrole = \"rule\"\n",
        city.display(),
        targets("geo"),
        asn.display(),
        targets("asn"),
        repo.join("ti/indicators.txt").display(),
        repo.join("rules/risk.wasm").display()
    )
}

/// Flow records with uniformly random IPv4 addresses (the generator of
/// `enrichd bench`).
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
