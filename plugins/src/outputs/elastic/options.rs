//! Options of an `elastic` output, and the checks serde cannot express.

use enrichd_engine::output::{check_http_url, FieldError};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::outputs::HttpOptions;

/// `[[output]] type = "elastic"`: events indexed into Elasticsearch (or
/// OpenSearch) with the `_bulk` API, one request per batch, into a daily
/// index `{index_prefix}-YYYY.MM.DD` or a data stream.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticOptions {
    /// The cluster's URL, e.g. `https://es.example:9200` (a path prefix is
    /// kept: `https://proxy/es` posts to `https://proxy/es/_bulk`). This,
    /// `urls`, or both (this is then the first node).
    pub url: Option<String>,
    /// Several nodes of the cluster: batches go to them in turn, and a
    /// batch whose node cannot be connected to is sent to the next one in
    /// the same attempt.
    pub urls: Vec<String>,
    /// Daily indices are named `{index_prefix}-YYYY.MM.DD` (UTC date the
    /// events were accepted). Lowercase; default `enrichd`. Unused with
    /// `data_stream`.
    #[serde(alias = "index")]
    pub index_prefix: String,
    /// Write to this data stream (`create` operations, no daily index)
    /// instead. Its index template must exist on the cluster.
    pub data_stream: Option<String>,
    /// User for HTTP basic authentication (with `password`).
    pub username: Option<String>,
    /// Password of `username`. Secret: stored, never shown.
    pub password: Option<String>,
    /// An Elasticsearch API key, sent as `Authorization: ApiKey <api_key>`:
    /// the base64 `encoded` value Elasticsearch returns when the key is
    /// created. Secret. Not together with `password`.
    pub api_key: Option<String>,
    /// Document ids: `none` lets Elasticsearch choose (a batch retried after
    /// a timeout may then be indexed twice); `hash` sets `_id` to a 128-bit
    /// hash of the event's bytes and uses `create`, so a retried event that
    /// was already indexed is answered 409 and counted as sent and as a
    /// duplicate (byte-identical events are then stored once).
    pub id_mode: IdMode,
    /// An ingest pipeline to run on every event (`?pipeline=`).
    pub pipeline: Option<String>,
    /// TLS, timeout and compression.
    #[serde(flatten)]
    pub http: HttpOptions,
}

/// How document ids are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IdMode {
    /// Elasticsearch assigns ids.
    #[default]
    None,
    /// `_id` is a hash of the event: retries never index twice.
    Hash,
}

impl Default for ElasticOptions {
    fn default() -> Self {
        ElasticOptions {
            url: None,
            urls: Vec::new(),
            index_prefix: "enrichd".into(),
            data_stream: None,
            username: None,
            password: None,
            api_key: None,
            id_mode: IdMode::None,
            pipeline: None,
            http: HttpOptions::default(),
        }
    }
}

impl ElasticOptions {
    /// The nodes to send to, `url` first.
    pub(crate) fn endpoints(&self) -> Vec<&str> {
        self.url.iter().chain(&self.urls).map(|s| s.as_str()).collect()
    }

    /// Every problem the types do not catch.
    pub(crate) fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        // Both may be given (the reference API's clients send `url` and
        // sometimes `urls`): `url` is then the first node.
        if self.url.is_none() && self.urls.is_empty() {
            errors.push(FieldError::new("url", "is required (or urls)"));
        }
        if let Some(url) = &self.url {
            errors.extend(check_http_url("url", url).err());
        }
        for (i, url) in self.urls.iter().enumerate() {
            errors.extend(check_http_url(&format!("urls[{i}]"), url).err());
        }
        match &self.data_stream {
            Some(name) => errors.extend(index_name_error(name).map(|m| FieldError::new("data_stream", m))),
            None => errors.extend(index_name_error(&self.index_prefix).map(|m| FieldError::new("index_prefix", m))),
        }
        let blank = |v: &Option<String>| v.as_ref().is_some_and(|s| s.is_empty());
        for (field, value) in [
            ("username", &self.username),
            ("password", &self.password),
            ("api_key", &self.api_key),
            ("pipeline", &self.pipeline),
        ] {
            if blank(value) {
                errors.push(FieldError::new(field, "must not be empty"));
            }
        }
        match (&self.username, &self.password) {
            (None, Some(_)) => errors.push(FieldError::new("password", "needs username")),
            (Some(_), None) => errors.push(FieldError::new("username", "needs password")),
            _ => {}
        }
        if self.password.is_some() && self.api_key.is_some() {
            errors.push(FieldError::new("api_key", "set password or api_key, not both"));
        }
        if let Some(user) = &self.username {
            if user.contains(':') {
                errors.push(FieldError::new("username", "must not contain ':'"));
            }
        }
        self.http.validate(&mut errors);
        errors
    }
}

/// Why `name` cannot be an Elasticsearch index or data stream name (or a
/// prefix of one), if it cannot.
fn index_name_error(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > 200 {
        Some("must be at most 200 bytes")
    } else if name.chars().any(|c| c.is_uppercase()) {
        Some("must be lowercase")
    } else if name.starts_with(['-', '_', '+', '.']) {
        Some("must not start with '-', '_', '+' or '.'")
    } else if name.chars().any(|c| matches!(c, '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ' ' | ',' | '#' | ':'))
    {
        Some("must not contain \\ / * ? \" < > | space , # or :")
    } else {
        None
    }
}
