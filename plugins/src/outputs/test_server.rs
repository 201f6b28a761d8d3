//! What the output tests share: a local HTTP server standing in for
//! Elasticsearch or Splunk (records every request, gunzipped, and answers
//! with a closure), addresses that refuse or never answer, and building and
//! calling sinks the way the runtime does (from JSON options).

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use enrichd_engine::output::{OutEvent, OutputContext, OutputFactory, SendReport, Sink, SinkBatch};
use serde_json::{Map, Value};

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) headers: HeaderMap,
    /// The body, gunzipped when `Content-Encoding: gzip`.
    pub(crate) body: Vec<u8>,
}

impl Seen {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
    }

    pub(crate) fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// A running server; stops when dropped.
pub(crate) struct Server {
    pub(crate) url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Requests so far, in order.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves on 127.0.0.1: `respond(request, number of earlier requests)`
/// gives the status and JSON body.
pub(crate) async fn serve(respond: impl Fn(&Seen, usize) -> (u16, String) + Send + Sync + 'static) -> Server {
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let respond = Arc::new(respond);
    let log = seen.clone();
    let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let log = log.clone();
        let respond = respond.clone();
        async move {
            let mut decoded = Vec::new();
            if headers.get(header::CONTENT_ENCODING).is_some_and(|v| v == "gzip") {
                flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut decoded).expect("valid gzip");
            } else {
                decoded = body.to_vec();
            }
            let request = Seen {
                method: method.to_string(),
                path: uri.path().to_string(),
                query: uri.query().unwrap_or("").to_string(),
                headers,
                body: decoded,
            };
            let earlier = log.lock().unwrap().len();
            let (status, body) = respond(&request, earlier);
            log.lock().unwrap().push(request);
            (StatusCode::from_u16(status).unwrap(), [(header::CONTENT_TYPE, "application/json")], body)
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server { url, seen, task }
}

/// A loopback address nothing listens on (connections are refused).
pub(crate) async fn refused_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A server that accepts connections and never answers; stops when the
/// handle is dropped.
pub(crate) async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

pub(crate) fn context(base_dir: &Path) -> OutputContext {
    OutputContext {
        name: "test".into(),
        base_dir: base_dir.to_path_buf(),
        state_dir: base_dir.join("state"),
        batch_max: 100,
        errors: Default::default(),
    }
}

/// Builds a sink from JSON options after checking them, as the runtime
/// does.
pub(crate) fn build(factory: &OutputFactory, options: Value, base_dir: &Path) -> Arc<dyn Sink> {
    let options: Map<String, Value> = serde_json::from_value(options).unwrap();
    let errors = factory.check(&options);
    assert!(errors.is_empty(), "{errors:?}");
    factory.build(&options, &context(base_dir)).unwrap()
}

/// The field names `check` complains about, in order.
pub(crate) fn error_fields(factory: &OutputFactory, options: Value) -> Vec<String> {
    let options: Map<String, Value> = serde_json::from_value(options).unwrap();
    factory.check(&options).into_iter().map(|e| e.field).collect()
}

/// One attempt with `events` accepted at `accepted_unix_ms`.
pub(crate) async fn send(sink: &dyn Sink, events: &[&str], accepted_unix_ms: u64) -> SendReport {
    let events: Vec<OutEvent<'_>> = events
        .iter()
        .enumerate()
        .map(|(i, json)| OutEvent { json: json.as_bytes(), id: i as u64, origin: None })
        .collect();
    sink.send(SinkBatch { events: &events, accepted_unix_ms, id_scope: 0 }).await
}
