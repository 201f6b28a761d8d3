//! The HTTP/1.1 connection layer under the axum router: accept loop,
//! connection cap, header and keep-alive timeouts, graceful shutdown.
//!
//! `axum::serve` has no timeouts and no cap: one client holding thousands of
//! idle or half-sent connections used to exhaust the file descriptors, after
//! which `accept` failed for everyone. Here:
//!
//! - every connection has a watchdog: a new connection must send a complete
//!   request head within `header_timeout_s` of accept; a kept-alive one may
//!   stay idle `keepalive_timeout_s`, and once the next head has started it
//!   has `header_timeout_s` to finish it. A connection is never closed by
//!   the watchdog while a request is in flight (body stalls are the
//!   handlers' `body_timeout_s`, see `api::body`; event streams run on).
//! - at most `max_connections` are open. At the cap, a new connection evicts
//!   the one that has been waiting longest for a request (idle or with an
//!   unfinished head: nothing is lost, well-behaved clients reconnect);
//!   when every connection is inside a request, the new one gets an
//!   immediate 503 and is closed. Nothing waits in the kernel's backlog, so
//!   health checks keep answering while someone hoards sockets.
//! - accept errors (`EMFILE`, ...) pause the loop briefly instead of
//!   spinning.
//! - on shutdown the listener closes, idle connections close, requests in
//!   flight finish (hyper-util's `GracefulShutdown`).
//!
//! hyper's own `header_read_timeout` is not used: it also runs while a
//! kept-alive connection is idle, so header and keep-alive timeouts could
//! not differ.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

/// Connection limits, from `[server]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    /// At shutdown, how long requests in flight get to finish before their
    /// connections are dropped (`shutdown_flush_ms`): a client that stops
    /// reading a stream must not hold the shutdown, and the outputs' flush,
    /// open for ever.
    pub drain_timeout: Duration,
}

/// How long a connection accepted over the cap waits for the connection it
/// evicted to close (normally microseconds) before it is refused after all.
const EVICTION_WAIT: Duration = Duration::from_secs(2);
/// Pause after an accept error that is not about one connection (`EMFILE`,
/// `ENFILE`, `ENOMEM`, ...): retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` resolves, then drains.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<crate::tls::Tls>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let server = Arc::new(Server {
        limits,
        epoch: Instant::now(),
        permits: Arc::new(Semaphore::new(limits.max_connections)),
        conns: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
    });
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // No timer: hyper's header timeout stays off (see the module docs).
    http.keep_alive(true);
    let http = Arc::new(http);
    tokio::pin!(shutdown);
    let mut last_error_log: Option<Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::error!(error = %e, "accept failed; pausing (is the file-descriptor limit too low for server.max_connections?)");
                        last_error_log = Some(Instant::now());
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let permit = match server.permits.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(_) => match server.evict_one() {
                Some(handoff) => Err(handoff),
                None => {
                    refuse(stream, limits.max_connections, tls.is_some());
                    continue;
                }
            },
        };
        let server = server.clone();
        let http = http.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            // Over the cap: the evicted connection hands its permit over (a
            // plain wait on the semaphore could lose it to a later arrival).
            let permit = match permit {
                Ok(permit) => permit,
                Err(handoff) => match tokio::time::timeout(EVICTION_WAIT, handoff).await {
                    Ok(Ok(permit)) => permit,
                    _ => return refuse(stream, server.limits.max_connections, tls.is_some()),
                },
            };
            let conn = server.register();
            match &tls {
                None => serve_connection(stream, conn.clone(), peer, &server, &http, router, watcher).await,
                Some(tls) => {
                    // The handshake is part of the request head's time: a
                    // client that stalls in it is cut off like a slow head.
                    // A connection at the cap may be evicted before it
                    // has said anything: one that never starts its
                    // handshake is the cheapest to hoard, so it must give
                    // its place up at once, as an idle one does.
                    let acceptor = tls.acceptor();
                    let handshake = tokio::time::timeout(server.limits.header_timeout, acceptor.accept(stream));
                    tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(stream)) => {
                                serve_connection(stream, conn.clone(), peer, &server, &http, router, watcher).await
                            }
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        },
                        () = conn.evict.notified() => tracing::debug!(%peer, "evicted during its TLS handshake"),
                    }
                }
            }
            server.unregister(conn.id);
            let handoff = conn.handoff.lock().expect("handoff").take();
            if let Some(handoff) = handoff {
                let _ = handoff.send(permit); // refused: dropped, released
            }
        });
    }
    drop(listener);
    tracing::info!(connections = graceful.count(), "no longer accepting; waiting for requests in flight");
    if tokio::time::timeout(server.limits.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            after_ms = server.limits.drain_timeout.as_millis() as u64,
            "requests still in flight at the shutdown deadline; their connections are dropped"
        );
    }
}

/// Serves HTTP/1.1 on one accepted (and, with TLS, handshaken) connection
/// until it closes or the watchdog cuts it off.
async fn serve_connection<S>(
    stream: S,
    conn: Arc<Conn>,
    peer: std::net::SocketAddr,
    server: &Server,
    http: &hyper::server::conn::http1::Builder,
    router: Router,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Tracked { inner: stream, conn: conn.clone(), epoch: server.epoch });
    let service = {
        let conn = conn.clone();
        let epoch = server.epoch;
        hyper::service::service_fn(move |mut request: axum::http::Request<Incoming>| {
            let guard = InFlight::enter(conn.clone(), epoch);
            let mut router = router.clone();
            // The client's address, for per-address limits and logs.
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            async move {
                let response = router.call(request.map(Body::new)).await?;
                // The request counts as in flight until its
                // response body is done (or dropped).
                Ok::<_, std::convert::Infallible>(response.map(move |body| {
                    body.map_frame(move |frame| {
                        let _in_flight = &guard;
                        frame
                    })
                }))
            }
        })
    };
    let connection = watcher.watch(http.serve_connection(io, service));
    tokio::select! {
        _ = connection => {}
        () = watchdog(&conn, server.limits, server.epoch) => {}
    }
}

struct Server {
    limits: Limits,
    epoch: Instant,
    permits: Arc<Semaphore>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
}

impl Server {
    fn register(&self) -> Arc<Conn> {
        let now = ms_since(self.epoch);
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Relaxed),
            in_flight: AtomicU32::new(0),
            served: AtomicBool::new(false),
            accepted_ms: now,
            waiting_since_ms: AtomicU64::new(now),
            head_started_ms: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
            handoff: Mutex::new(None),
        });
        self.conns.lock().expect("connection table").insert(conn.id, conn.clone());
        conn
    }

    fn unregister(&self, id: u64) {
        self.conns.lock().expect("connection table").remove(&id);
    }

    /// Tells the connection that has waited longest for a request to close
    /// and hand its permit over; `None` when every connection is inside a
    /// request. O(connections), and only run at the cap.
    fn evict_one(&self) -> Option<oneshot::Receiver<OwnedSemaphorePermit>> {
        let conns = self.conns.lock().expect("connection table");
        let victim = conns
            .values()
            .filter(|c| c.in_flight.load(Relaxed) == 0 && !c.evicted.load(Relaxed))
            .min_by_key(|c| c.waiting_since_ms.load(Relaxed));
        match victim {
            Some(victim) => {
                let (handoff, permit) = oneshot::channel();
                *victim.handoff.lock().expect("handoff") = Some(handoff);
                victim.evicted.store(true, Relaxed);
                victim.evict.notify_one();
                Some(permit)
            }
            None => None,
        }
    }
}

/// What the watchdog knows of one connection. Times are milliseconds since
/// the server's epoch.
struct Conn {
    id: u64,
    in_flight: AtomicU32,
    served: AtomicBool,
    accepted_ms: u64,
    /// When the connection last became free of requests (accept, or the end
    /// of the last response).
    waiting_since_ms: AtomicU64,
    /// First byte received since then (0: none yet).
    head_started_ms: AtomicU64,
    evicted: AtomicBool,
    evict: Notify,
    /// Where the permit goes when an evicted connection closes.
    handoff: Mutex<Option<oneshot::Sender<OwnedSemaphorePermit>>>,
}

impl Conn {
    /// When the connection must be closed, if it stays as it is; `None`
    /// while a request is in flight.
    fn deadline_ms(&self, limits: Limits) -> Option<u64> {
        if self.in_flight.load(Relaxed) > 0 {
            return None;
        }
        let header = limits.header_timeout.as_millis() as u64;
        if !self.served.load(Relaxed) {
            return Some(self.accepted_ms + header);
        }
        match self.head_started_ms.load(Relaxed) {
            0 => Some(self.waiting_since_ms.load(Relaxed) + limits.keepalive_timeout.as_millis() as u64),
            started => Some(started + header),
        }
    }
}

/// Resolves when the connection must close: a timeout passed while it was
/// waiting for a request, or it was evicted.
async fn watchdog(conn: &Conn, limits: Limits, epoch: Instant) {
    // A deadline can only move earlier by a head starting on an idle
    // connection, and then not by more than the shorter timeout: checking at
    // least that often is never late.
    let recheck = limits.header_timeout.min(limits.keepalive_timeout).as_millis() as u64;
    loop {
        let now = ms_since(epoch);
        let wake = match conn.deadline_ms(limits) {
            Some(deadline) if deadline <= now => return,
            Some(deadline) => deadline.min(now + recheck),
            None => now + recheck,
        };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(wake - now)) => {}
            () = conn.evict.notified() => {
                if conn.in_flight.load(Relaxed) == 0 {
                    return;
                }
                // A request arrived meanwhile: let it finish, then close.
                conn.evicted.store(true, Relaxed);
            }
        }
        if conn.evicted.load(Relaxed) && conn.in_flight.load(Relaxed) == 0 {
            return;
        }
    }
}

/// Marks a request in flight on its connection until dropped.
struct InFlight {
    conn: Arc<Conn>,
    epoch: Instant,
}

impl InFlight {
    fn enter(conn: Arc<Conn>, epoch: Instant) -> Self {
        conn.in_flight.fetch_add(1, Relaxed);
        InFlight { conn, epoch }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let conn = &self.conn;
        conn.served.store(true, Relaxed);
        conn.head_started_ms.store(0, Relaxed);
        conn.waiting_since_ms.store(ms_since(self.epoch), Relaxed);
        if conn.in_flight.fetch_sub(1, Relaxed) == 1 && conn.evicted.load(Relaxed) {
            conn.evict.notify_one();
        }
    }
}

/// The socket, noting when a request head starts arriving.
struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
    epoch: Instant,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && self.conn.in_flight.load(Relaxed) == 0
            && self.conn.head_started_ms.load(Relaxed) == 0
        {
            self.conn.head_started_ms.store(ms_since(self.epoch).max(1), Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn ms_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// Over the cap with nothing to evict: a JSON 503, written without waiting
/// (a client that does not read gets nothing), then close.
fn refuse(stream: TcpStream, cap: usize, tls: bool) {
    if tls {
        // A TLS client would read a plain-text answer as a broken
        // handshake: closing says as much, and costs nothing.
        return;
    }
    let body = serde_json::json!({
        "error": "too_many_connections",
        "detail": format!("the server is at its connection limit ({cap}, server.max_connections) with every connection in a request; retry shortly"),
        "limit": cap,
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// Errors about one connection (it went away before we accepted it): not
/// the listener's problem, accept the next one at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// Raises the soft file-descriptor limit to the hard one and returns how
/// many connections fit in it, keeping room for data files, watches and
/// the WASM cache.
pub(crate) fn connection_budget() -> Option<usize> {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit only read and write the `rlimit` values
    // passed by reference, which live on this stack frame for the calls.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        let fds = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
        Some(fds.saturating_sub(fds / 8).saturating_sub(64).max(16))
    }
    #[cfg(not(unix))]
    None
}
