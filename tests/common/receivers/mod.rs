//! Strict in-process receivers for the delivery tests: an Elasticsearch
//! `_bulk` endpoint ([`bulk`]) and a Splunk HTTP Event Collector ([`hec`]).
//!
//! No Elasticsearch or Splunk server can run on the test machines, so the
//! end-to-end delivery tests talk to these instead. They are written from
//! the public wire contracts and are deliberately stricter than the real
//! servers where the contract leaves room: anything malformed is refused
//! with the error the real server would send, and the reason is kept in
//! [`Stats::malformed_rejected`], so a sloppy client fails a test instead of
//! passing against a lenient fake. `tests/receivers.rs` proves each rule.
//!
//! Each receiver runs its own thread and tokio runtime (the tests are
//! synchronous), serves HTTP/1.1 with hyper on `127.0.0.1:0`, and stops when
//! dropped. Faults ([`Faults`]) are drawn from a small seeded xorshift, so a
//! failing run replays exactly. [`Server::outage`] really closes the
//! listener and every open connection (clients see "connection refused",
//! not an HTTP error) and rebinds the same port when the outage ends.

pub(crate) mod bulk;
pub(crate) mod hec;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::http::{HeaderMap, Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc as tmpsc;
use tokio::task::JoinSet;

// Every type at `receivers::`; a test crate uses only some of them.
#[allow(unused_imports)]
pub(crate) use bulk::{Auth, BulkConfig, BulkReceiver, StoredDoc};
#[allow(unused_imports)]
pub(crate) use hec::{HecConfig, HecEvent, HecReceiver};

/// Injected failures, all off by default. Rates are per mille (0..=1000),
/// drawn from a xorshift seeded with `seed` (reseeded by `set_faults`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Faults {
    pub(crate) seed: u64,
    /// Whole request answered 5xx (bulk: 503; HEC: 503 code 9), nothing stored.
    pub(crate) request_5xx_per_mille: u32,
    /// Whole request answered 429, nothing stored.
    pub(crate) request_429_per_mille: u32,
    /// Bulk only: an item fails with 429 inside a 200 response.
    pub(crate) item_429_per_mille: u32,
    /// An event whose source (bulk: the document; HEC: the `event` object)
    /// has this top-level field is rejected permanently: bulk answers a
    /// per-item 400 `mapper_parsing_exception`; HEC refuses the whole
    /// request with 400 code 6 and `invalid-event-number`.
    pub(crate) reject_field: Option<String>,
    /// The request is processed (and stored) first, then the answer is held
    /// back this long: a client with a shorter timeout sees a failure for a
    /// write that landed, the at-least-once case.
    pub(crate) delay_ms: u64,
    /// HEC with indexer acknowledgment only: an accepted batch is never
    /// indexed and its ack never turns true.
    pub(crate) ack_loss_per_mille: u32,
}

/// Counters since start. `malformed_rejected` holds one reason per request
/// refused as malformed (bad framing, JSON, headers).
#[derive(Clone, Debug, Default)]
pub(crate) struct Stats {
    pub(crate) requests: u64,
    pub(crate) malformed_rejected: Vec<String>,
    pub(crate) items_ok: u64,
    pub(crate) items_failed_429: u64,
    pub(crate) items_failed_400: u64,
    pub(crate) items_failed_409: u64,
    pub(crate) requests_5xx: u64,
    pub(crate) requests_429: u64,
    pub(crate) unauthorized: u64,
    pub(crate) acks_lost: u64,
    /// `_bulk` answers filtered by a `filter_path` parameter.
    pub(crate) filtered_replies: u64,
}

/// xorshift64*: deterministic fault draws without a dependency.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `per_mille / 1000`; draws nothing at 0, so
    /// turning one fault on does not shift the draws of another.
    pub(crate) fn hit(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.next() % 1000 < u64::from(per_mille)
    }
}

/// A request as the receivers see it: body read whole, still encoded.
pub(crate) struct Request {
    pub(crate) method: Method,
    /// Path without the query string.
    pub(crate) path: String,
    /// The query string (without `?`), if any.
    pub(crate) query: Option<String>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body with `Content-Encoding` undone (`gzip` or none).
    pub(crate) fn decoded_body(&self) -> Result<Vec<u8>, String> {
        match self.header("content-encoding").map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(self.body.to_vec()),
            Some(enc) if enc == "identity" => Ok(self.body.to_vec()),
            Some(enc) if enc == "gzip" => {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&self.body[..])
                    .read_to_end(&mut out)
                    .map_err(|e| format!("Content-Encoding: gzip but the body is not gzip: {e}"))?;
                Ok(out)
            }
            Some(enc) => Err(format!("unsupported Content-Encoding [{enc}]")),
        }
    }
}

/// An answer: status, JSON body, extra headers, and how long to hold it.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: serde_json::Value,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) delay: Duration,
}

impl Reply {
    pub(crate) fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply { status, body, headers: Vec::new(), delay: Duration::ZERO }
    }
}

type Handler = Arc<dyn Fn(Request) -> Reply + Send + Sync>;

enum Ctl {
    Outage(bool),
    Stop,
}

/// The HTTP plumbing both receivers share: a thread with a runtime, an
/// accept loop, outages, stop on drop.
pub(crate) struct Server {
    addr: SocketAddr,
    ctl: tmpsc::UnboundedSender<(Ctl, mpsc::Sender<()>)>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub(crate) fn start(name: &str, handler: Handler) -> Server {
        let (ctl, mut rx) = tmpsc::unbounded_channel::<(Ctl, mpsc::Sender<()>)>();
        let (addr_tx, addr_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("recv-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(async move {
                    let mut listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
                    let addr = listener.local_addr().expect("local addr");
                    addr_tx.send(addr).expect("report address");
                    loop {
                        let (ctl, done) = serve(listener, &handler, &mut rx).await;
                        let _ = done.send(());
                        if matches!(ctl, Ctl::Stop) {
                            return;
                        }
                        // An outage: closed until `outage(false)`, then the same port again.
                        let Some(done) = wait_outage_end(&mut rx).await else { return };
                        listener = rebind(addr).await;
                        let _ = done.send(());
                    }
                });
            })
            .expect("spawn receiver thread");
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("receiver did not start");
        Server { addr, ctl, thread: Some(thread) }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `true`: close the listener and every open connection; returns once
    /// connections are refused. `false`: rebind the same port (retrying
    /// until the bind succeeds); returns once it accepts again.
    pub(crate) fn outage(&self, on: bool) {
        let (tx, rx) = mpsc::channel();
        self.ctl.send((Ctl::Outage(on), tx)).expect("receiver thread gone");
        rx.recv_timeout(Duration::from_secs(30)).expect("receiver did not switch outage state");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let (tx, _rx) = mpsc::channel();
        let _ = self.ctl.send((Ctl::Stop, tx));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts and serves until told to go down; then drops the listener and
/// aborts every connection (so nothing half-open keeps answering).
async fn serve(
    listener: TcpListener,
    handler: &Handler,
    rx: &mut tmpsc::UnboundedReceiver<(Ctl, mpsc::Sender<()>)>,
) -> (Ctl, mpsc::Sender<()>) {
    let mut conns = JoinSet::new();
    let stop = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let handler = handler.clone();
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(req, handler.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            msg = rx.recv() => match msg {
                None => break (Ctl::Stop, mpsc::channel().0),
                Some((Ctl::Outage(false), done)) => drop(done.send(())),
                Some(other) => break other,
            },
        }
    };
    drop(listener);
    conns.shutdown().await;
    stop
}

/// Waits for `outage(false)` (acknowledging repeated `outage(true)`);
/// `None` on stop.
async fn wait_outage_end(rx: &mut tmpsc::UnboundedReceiver<(Ctl, mpsc::Sender<()>)>) -> Option<mpsc::Sender<()>> {
    loop {
        match rx.recv().await {
            None | Some((Ctl::Stop, _)) => return None,
            Some((Ctl::Outage(true), done)) => drop(done.send(())),
            Some((Ctl::Outage(false), done)) => return Some(done),
        }
    }
}

/// Binds `addr` again, retrying: the port may briefly be unavailable.
async fn rebind(addr: SocketAddr) -> TcpListener {
    loop {
        let bound = TcpSocket::new_v4().and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(1024)
        });
        match bound {
            Ok(listener) => return listener,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn answer(req: hyper::Request<Incoming>, handler: Handler) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let request = Request {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
    };
    let reply = handler(request);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = Response::builder()
        .status(StatusCode::from_u16(reply.status).expect("status"))
        .header("content-type", "application/json");
    for (name, value) in &reply.headers {
        response = response.header(*name, value);
    }
    Ok(response.body(Full::new(Bytes::from(reply.body.to_string()))).expect("response"))
}

/// Standard base64 (with padding), for credentials: the receivers compare
/// the header with the encoding of what they were configured with.
pub(crate) fn base64(input: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(input)
}

/// Gzip `data` (tests use it to build compressed requests).
pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}
