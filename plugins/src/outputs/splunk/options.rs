//! Options of a `splunk` output, and the checks serde cannot express.

use enrichd_engine::output::{check_http_url, FieldError};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::outputs::HttpOptions;

/// Longest accepted `ack_timeout_ms` (ten minutes).
const MAX_ACK_TIMEOUT_MS: u64 = 600_000;

/// `[[output]] type = "splunk"`: events sent to a Splunk HTTP Event
/// Collector (`/services/collector/event`), one request per batch.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SplunkOptions {
    /// The collector's URL, e.g. `https://splunk.example:8088`. A
    /// `/services/collector` or `/services/collector/event` suffix is
    /// accepted and normalised.
    #[serde(alias = "url")]
    pub hec_url: Option<String>,
    /// The HEC token (sent as `Authorization: Splunk <token>`). Secret:
    /// stored, never shown. Required.
    pub token: Option<String>,
    /// The Splunk index of the events; unset, the token's default index.
    pub index: Option<String>,
    /// The events' sourcetype (default `enrichd:event`).
    pub sourcetype: String,
    /// The events' source (default `enrichd`).
    pub source: String,
    /// The events' host field; unset, Splunk uses the sender's address.
    pub host: Option<String>,
    /// Wait for indexer acknowledgement (the token must have it enabled):
    /// a batch counts as delivered only once Splunk says it is indexed, not
    /// merely received. Slower, and stronger against indexer loss.
    pub indexer_ack: bool,
    /// With `indexer_ack`: how long to wait for the acknowledgement, in
    /// milliseconds (default 60000); then the batch is retried.
    pub ack_timeout_ms: u64,
    /// With `indexer_ack`: how often to ask, in milliseconds (default 500).
    pub ack_poll_ms: u64,
    /// TLS, timeout and compression.
    #[serde(flatten)]
    pub http: HttpOptions,
}

impl Default for SplunkOptions {
    fn default() -> Self {
        SplunkOptions {
            hec_url: None,
            token: None,
            index: None,
            sourcetype: "enrichd:event".into(),
            source: "enrichd".into(),
            host: None,
            indexer_ack: false,
            ack_timeout_ms: 60_000,
            ack_poll_ms: 500,
            http: HttpOptions::default(),
        }
    }
}

impl SplunkOptions {
    /// Every problem the types do not catch.
    pub(crate) fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match &self.hec_url {
            None => errors.push(FieldError::new("hec_url", "is required")),
            Some(url) => errors.extend(check_http_url("hec_url", url).err()),
        }
        match &self.token {
            None => errors.push(FieldError::new("token", "is required")),
            Some(token) if token.trim().is_empty() => errors.push(FieldError::new("token", "must not be empty")),
            Some(token) if token.chars().any(|c| c.is_control() || c == ' ') => {
                errors.push(FieldError::new("token", "must not contain spaces or control characters"))
            }
            Some(_) => {}
        }
        for (field, value) in [("index", &self.index), ("host", &self.host)] {
            if value.as_ref().is_some_and(|v| v.is_empty()) {
                errors.push(FieldError::new(field, "must not be empty"));
            }
        }
        for (field, value) in [("sourcetype", &self.sourcetype), ("source", &self.source)] {
            if value.is_empty() {
                errors.push(FieldError::new(field, "must not be empty"));
            }
        }
        if self.ack_poll_ms == 0 {
            errors.push(FieldError::new("ack_poll_ms", "must be at least 1"));
        }
        if self.ack_timeout_ms == 0 || self.ack_timeout_ms > MAX_ACK_TIMEOUT_MS {
            errors.push(FieldError::new("ack_timeout_ms", format!("must be between 1 and {MAX_ACK_TIMEOUT_MS}")));
        }
        self.http.validate(&mut errors);
        errors
    }
}

/// The collector's base URL (scheme, authority and any path prefix) from
/// `hec_url`, without a `/services/collector[/event]` suffix, a trailing
/// slash, a query or a fragment.
pub(crate) fn collector_base(hec_url: &str) -> &str {
    let end = hec_url.find(['?', '#']).unwrap_or(hec_url.len());
    let mut base = hec_url[..end].trim_end_matches('/');
    for suffix in ["/services/collector/event/1.0", "/services/collector/event", "/services/collector"] {
        if let Some(stripped) = base.strip_suffix(suffix) {
            base = stripped;
            break;
        }
    }
    base.trim_end_matches('/')
}
