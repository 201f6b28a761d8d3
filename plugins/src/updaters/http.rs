//! The HTTP side every updater shares: a client with one entry's bounds
//! (bytes, time), basic auth whose secret is masked in every message,
//! conditional downloads (`If-None-Match` / `If-Modified-Since`) into an
//! unnamed temporary file with the SHA-256 taken on the way, published
//! checksums, and small capped JSON reads (TAXII). It lived in the `.mmdb`
//! folder until the `ti` updaters needed the same bounds.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use enrichd_engine::output::redact_url;
use enrichd_engine::to_hex;
use reqwest::header::{
    HeaderMap, AUTHORIZATION, CONTENT_LENGTH, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

/// Default `max_download_bytes` and `max_database_bytes`: 1 GiB (the
/// largest commercial editions are a few hundred MB).
pub(crate) const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Default `timeout_s`: a whole download, ten minutes.
pub(crate) const DEFAULT_TIMEOUT_S: u64 = 600;
/// Longest accepted `timeout_s`: one hour.
pub(crate) const MAX_TIMEOUT_S: u64 = 3600;
/// Bytes read of a checksum file (`<hex>  <file name>`).
const MAX_CHECKSUM_BYTES: u64 = 4096;

/// An HTTP client with one updater's bounds, masking its secrets in every
/// message.
pub(crate) struct Fetcher {
    client: reqwest::Client,
    /// Basic-auth credentials, sent to every request of this updater.
    auth: Option<(String, String)>,
    max_download_bytes: u64,
    pub(crate) max_database_bytes: u64,
}

/// What a download brought.
pub(crate) enum Got {
    /// 304: what `If-None-Match` / `If-Modified-Since` described is current.
    NotModified,
    Body {
        file: File,
        sha256: String,
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

impl Fetcher {
    pub(crate) fn new(
        auth: Option<(String, String)>,
        max_download_bytes: u64,
        max_database_bytes: u64,
        timeout_s: u64,
    ) -> anyhow::Result<Fetcher> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(timeout_s))
            .connect_timeout(Duration::from_secs(timeout_s.min(30)))
            // MaxMind answers with a redirect to its storage; reqwest drops
            // the Authorization header when a redirect leaves the host.
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("enrichd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Fetcher { client, auth, max_download_bytes, max_database_bytes })
    }

    /// Replaces every secret in `text` (the licence key) with `***`.
    pub(crate) fn mask(&self, text: String) -> String {
        match &self.auth {
            Some((_, key)) if !key.is_empty() => text.replace(key.as_str(), "***"),
            _ => text,
        }
    }

    fn request(&self, url: &str, headers: HeaderMap) -> reqwest::RequestBuilder {
        let request = self.client.get(url).headers(headers);
        match &self.auth {
            Some((user, key)) => request.basic_auth(user, Some(key)),
            None => request,
        }
    }

    /// A published checksum: the first word of a small text file, 64 hex
    /// digits (the `sha256sum` format MaxMind serves).
    pub(crate) async fn checksum(&self, url: &str) -> Result<String, String> {
        // In messages only: user:password@ and query strings (API keys) are not.
        let shown = redact_url(url);
        let mut response = self.request(url, HeaderMap::new()).send().await.map_err(|e| self.describe(&shown, e))?;
        check_status(&shown, response.status())?;
        let mut text = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.describe(&shown, e))? {
            text.extend_from_slice(&chunk);
            if text.len() as u64 > MAX_CHECKSUM_BYTES {
                return Err(format!("{shown}: checksum file over {MAX_CHECKSUM_BYTES} bytes"));
            }
        }
        let text = String::from_utf8_lossy(&text);
        let word = text.split_whitespace().next().unwrap_or("");
        if word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(word.to_ascii_lowercase())
        } else {
            Err(format!("{shown}: not a SHA-256 checksum file (expected 64 hex digits first)"))
        }
    }

    /// Downloads `url` into an unnamed file next to `staging` (same file
    /// system, never reachable by name), within `max_download_bytes`.
    /// With `conditional`, asks for the body only if it changed.
    pub(crate) async fn download(
        &self,
        url: &str,
        conditional: Option<(&Option<String>, &Option<String>)>,
        staging: &Path,
    ) -> Result<Got, String> {
        // In messages only: user:password@ and query strings (API keys) are not.
        let shown = redact_url(url);
        let mut headers = HeaderMap::new();
        if let Some((etag, last_modified)) = conditional {
            if let Some(v) = etag.as_deref().and_then(|v| v.parse().ok()) {
                headers.insert(IF_NONE_MATCH, v);
            }
            if let Some(v) = last_modified.as_deref().and_then(|v| v.parse().ok()) {
                headers.insert(IF_MODIFIED_SINCE, v);
            }
        }
        debug_assert!(!headers.contains_key(AUTHORIZATION));
        let mut response = self.request(url, headers).send().await.map_err(|e| self.describe(&shown, e))?;
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(Got::NotModified);
        }
        check_status(&shown, response.status())?;
        let header = |name| response.headers().get(name).and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok());
        let (etag, last_modified) = (header(ETAG).map(String::from), header(LAST_MODIFIED).map(String::from));
        let announced: Option<u64> = header(CONTENT_LENGTH).and_then(|v| v.parse().ok());
        if announced.is_some_and(|n| n > self.max_download_bytes) {
            return Err(format!(
                "{shown}: {} bytes announced, over max_download_bytes = {}; not downloaded",
                announced.unwrap_or(0),
                self.max_download_bytes
            ));
        }
        let dir = staging.parent().unwrap_or(Path::new("."));
        let mut file =
            tempfile::tempfile_in(dir).map_err(|e| format!("creating a download file in {}: {e}", dir.display()))?;
        let mut hash = Sha256::new();
        let mut total = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| self.describe(&shown, e))? {
            total += chunk.len() as u64;
            if total > self.max_download_bytes {
                return Err(format!(
                    "{shown}: over max_download_bytes = {}; download abandoned",
                    self.max_download_bytes
                ));
            }
            hash.update(&chunk);
            file.write_all(&chunk).map_err(|e| format!("writing the download: {e}"))?;
        }
        if let Some(n) = announced.filter(|&n| n != total) {
            return Err(format!("{shown}: truncated download ({total} of {n} bytes); not used"));
        }
        Ok(Got::Body { file, sha256: to_hex(&hash.finalize()), etag, last_modified })
    }

    /// A small document (a TAXII envelope) read whole, at most `max_bytes`,
    /// with its headers; `accept` is the media type asked for.
    pub(crate) async fn get_capped(
        &self,
        url: &str,
        accept: &str,
        max_bytes: u64,
    ) -> Result<(Vec<u8>, HeaderMap), String> {
        // In messages only: user:password@ and query strings (API keys) are not.
        let shown = redact_url(url);
        let mut headers = HeaderMap::new();
        if let Ok(v) = accept.parse() {
            headers.insert(reqwest::header::ACCEPT, v);
        }
        let mut response = self.request(url, headers).send().await.map_err(|e| self.describe(&shown, e))?;
        check_status(&shown, response.status())?;
        let headers = response.headers().clone();
        let announced: Option<u64> =
            headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        if announced.is_some_and(|n| n > max_bytes) {
            return Err(format!("{shown}: {} bytes announced, over {max_bytes}; not read", announced.unwrap_or(0)));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.describe(&shown, e))? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > max_bytes {
                return Err(format!("{shown}: answer over {max_bytes} bytes; abandoned"));
            }
        }
        if let Some(n) = announced.filter(|&n| n != body.len() as u64) {
            return Err(format!("{shown}: truncated answer ({} of {n} bytes); not used", body.len()));
        }
        Ok((body, headers))
    }

    /// A transport error in words, with no secret in it (`url` as shown).
    fn describe(&self, url: &str, error: reqwest::Error) -> String {
        let what = if error.is_timeout() {
            "timed out".to_string()
        } else if error.is_connect() {
            "could not connect".to_string()
        } else if error.is_body() || error.is_decode() {
            "the body was cut off".to_string()
        } else {
            "request failed".to_string()
        };
        // The chain of sources without the URL (said once, first).
        let mut detail = String::new();
        let mut source = std::error::Error::source(&error);
        while let Some(e) = source {
            detail = format!("{detail}: {e}");
            source = e.source();
        }
        self.mask(format!("{url}: {what}{detail}"))
    }
}

/// Refusals by status, with what to check.
fn check_status(url: &str, status: StatusCode) -> Result<(), String> {
    match status.as_u16() {
        200..=299 => Ok(()),
        401 | 403 => Err(format!(
            "{url}: HTTP {status}: refused; check the credentials (account id and licence key, user and password)"
        )),
        404 => Err(format!("{url}: HTTP {status}: not found (check the URL, edition id or collection id)")),
        _ => Err(format!("{url}: HTTP {status}")),
    }
}
