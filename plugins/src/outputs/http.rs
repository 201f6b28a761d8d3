//! What the HTTP outputs share: the client options flattened into their
//! options (TLS, CA file, timeout, gzip), the client built from them, and
//! one way to post a body and describe a failure.
//!
//! Failures are described for an operator and never carry a secret: URLs go
//! through [`redact_url`], request headers (where the credentials are) are
//! never printed, and reqwest's own error text is taken without its URL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use enrichd_engine::output::{redact_url, FieldError};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use schemars::JsonSchema;
use serde::Deserialize;

/// The longest response body read (bulk responses list every item; more
/// than this is not a response we can use).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Longest accepted `timeout_ms` (ten minutes).
const MAX_TIMEOUT_MS: u64 = 600_000;

/// The options of [`HttpOptions`] that name files.
pub(crate) const PATH_FIELDS: &[&str] = &["ca_file"];

/// HTTP client options, shared by the `elastic` and `splunk` outputs.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(default)]
pub struct HttpOptions {
    /// Check the server's TLS certificate and host name (default true).
    /// Turn off only for a test cluster with a self-signed certificate;
    /// `ca_file` is the better fix.
    pub tls_verify: bool,
    /// A PEM file of CA certificates trusted besides the built-in web
    /// roots (a private CA), relative to the config file's directory; set
    /// through the API, relative to `<state_dir>/output-files/` and inside it.
    pub ca_file: Option<PathBuf>,
    /// Time limit of one request, from connecting to the last byte of the
    /// response, in milliseconds (default 10000, at most 600000). A request
    /// that takes longer is retried.
    pub timeout_ms: u64,
    /// Gzip request bodies (default true): bulk NDJSON shrinks about
    /// tenfold. It costs about 1-2 us of CPU per event, as much as the
    /// whole enrichment (docs/PERFORMANCE.md, "gzip"): on a fast link to
    /// the destination, `false` delivers two to three times the events
    /// per core.
    pub gzip: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions { tls_verify: true, ca_file: None, timeout_ms: 10_000, gzip: true }
    }
}

impl HttpOptions {
    /// Adds every problem with these options to `errors`.
    pub(crate) fn validate(&self, errors: &mut Vec<FieldError>) {
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            errors.push(FieldError::new("timeout_ms", format!("must be between 1 and {MAX_TIMEOUT_MS}")));
        }
        if self.ca_file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            errors.push(FieldError::new("ca_file", "must not be empty"));
        }
    }

    /// The client: rustls with the web roots (plus `ca_file`), the
    /// timeout, no redirects (a redirected POST would lose its body; the
    /// URL should be fixed instead), no proxy from the environment.
    pub(crate) fn client(&self, base_dir: &Path) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(self.timeout_ms))
            .connect_timeout(Duration::from_millis(self.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            // Requests are written as head + body: without TCP_NODELAY,
            // Nagle's algorithm meets the peer's delayed ACK (~40 ms).
            .tcp_nodelay(true)
            .no_proxy()
            .user_agent(concat!("enrichd/", env!("CARGO_PKG_VERSION")));
        if let Some(ca_file) = &self.ca_file {
            let path = base_dir.join(ca_file);
            let pem = std::fs::read(&path).with_context(|| format!("ca_file {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("ca_file {}: not PEM certificates", path.display()))?;
            anyhow::ensure!(!certs.is_empty(), "ca_file {}: no certificate in it", path.display());
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if !self.tls_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        builder.build().context("building the HTTP client")
    }

    /// `body`, gzipped when `gzip` is on, and the headers saying so.
    pub(crate) fn encode(&self, body: Vec<u8>, content_type: &'static str) -> (Vec<u8>, HeaderMap) {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if !self.gzip {
            return (body, headers);
        }
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        (crate::gzip::gzip(&body), headers)
    }
}

/// A response: status and (bounded) body.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

/// Why a request got no response.
pub(crate) struct Failed {
    /// The request never reached the server (connect or TLS failure):
    /// safe to try another node without risk of a duplicate.
    pub(crate) before_sending: bool,
    /// Operator-facing, secret-free description.
    pub(crate) message: String,
}

/// Sends `request` and reads the reply, at most [`MAX_RESPONSE_BYTES`].
/// `url` is only used in the failure text (redacted).
pub(crate) async fn execute(request: reqwest::RequestBuilder, url: &str) -> Result<Reply, Failed> {
    let mut response = request.send().await.map_err(|e| failed(url, e))?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(url, e))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(Failed {
                before_sending: false,
                message: format!("{}: HTTP {status} response larger than {MAX_RESPONSE_BYTES} bytes", redact_url(url)),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Reply { status, body })
}

/// A secret-free description of a reqwest error: what failed and the chain
/// of causes, without the URL reqwest would print (it may carry a
/// `user:password@`).
pub(crate) fn failed(url: &str, error: reqwest::Error) -> Failed {
    let before_sending = error.is_connect();
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    let error = error.without_url();
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !causes.contains(&text) {
            causes.push(text);
        }
        source = cause.source();
    }
    let mut message = format!("{}: {what}", redact_url(url));
    for cause in causes {
        message.push_str(": ");
        message.push_str(&cause);
    }
    Failed { before_sending, message }
}

/// At most `max` characters of a server's text, on one line.
pub(crate) fn snippet(text: &str, max: usize) -> String {
    let one_line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(max).collect();
    if text.chars().count() > max {
        format!("{}...", one_line.trim_end())
    } else {
        one_line.trim().to_string()
    }
}

/// A header value that is never printed (reqwest's and hyper's debug
/// output skip sensitive values).
pub(crate) fn secret_header(value: &str) -> anyhow::Result<HeaderValue> {
    let mut value = HeaderValue::from_str(value).map_err(|_| anyhow::anyhow!("credential has invalid characters"))?;
    value.set_sensitive(true);
    Ok(value)
}
