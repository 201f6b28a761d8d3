//! `POST /v1/outputs/{elastic,splunk}`: store connector settings.
//!
//! Sending is the outputs work; here the settings are validated and kept in
//! memory. Secrets (passwords, tokens) are stored but never echoed: answers
//! and `GET /v1/outputs` say only whether one is set.

use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState};

#[derive(Default)]
pub struct OutputSettings {
    elastic: RwLock<Option<ElasticSettings>>,
    splunk: RwLock<Option<SplunkSettings>>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticSettings {
    url: Option<String>,
    #[serde(default)]
    urls: Vec<String>,
    index: Option<String>,
    username: Option<String>,
    password: Option<String>,
    api_key: Option<String>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplunkSettings {
    hec_url: Option<String>,
    url: Option<String>,
    token: Option<String>,
    index: Option<String>,
    sourcetype: Option<String>,
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_settings", format!("invalid settings: {e}")))
}

fn check_url(field: &'static str, url: &str) -> Result<(), ApiError> {
    let ok = (url.starts_with("http://") || url.starts_with("https://")) && url.len() > "https://".len();
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request("invalid_settings", format!("`{field}` must be an http:// or https:// URL"))
            .with(json!({"field": field})))
    }
}

pub async fn configure_elastic(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    state.keys.check(&headers)?;
    let body = super::body::read(&state, &headers, body).await?;
    let mut s: ElasticSettings = parse(&body)?;
    if let Some(url) = s.url.take() {
        s.urls.insert(0, url);
    }
    if s.urls.is_empty() {
        return Err(
            ApiError::bad_request("invalid_settings", "`url` (or `urls`) is required").with(json!({"field": "url"}))
        );
    }
    for url in &s.urls {
        check_url("url", url)?;
    }
    if s.username.is_some() != s.password.is_some() {
        return Err(ApiError::bad_request("invalid_settings", "`username` and `password` go together")
            .with(json!({"field": "password"})));
    }
    let shown = elastic_view(&s);
    *state.outputs.elastic.write().expect("settings lock") = Some(s);
    Ok(Json(with_status(shown)))
}

pub async fn configure_splunk(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    state.keys.check(&headers)?;
    let body = super::body::read(&state, &headers, body).await?;
    let mut s: SplunkSettings = parse(&body)?;
    s.hec_url = s.hec_url.take().or(s.url.take());
    let Some(url) = &s.hec_url else {
        return Err(
            ApiError::bad_request("invalid_settings", "`hec_url` is required").with(json!({"field": "hec_url"}))
        );
    };
    check_url("hec_url", url)?;
    if s.token.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request("invalid_settings", "`token` is required").with(json!({"field": "token"})));
    }
    let shown = splunk_view(&s);
    *state.outputs.splunk.write().expect("settings lock") = Some(s);
    Ok(Json(with_status(shown)))
}

pub async fn show(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    state.keys.check(&headers)?;
    let (elastic, splunk) = state.outputs.views();
    Ok(Json(json!({ "elastic": elastic, "splunk": splunk })))
}

impl OutputSettings {
    /// The stored settings as shown to clients (secrets masked), `None`
    /// for a connector without settings.
    pub fn views(&self) -> (Option<Value>, Option<Value>) {
        let elastic = self.elastic.read().expect("settings lock").as_ref().map(elastic_view);
        let splunk = self.splunk.read().expect("settings lock").as_ref().map(splunk_view);
        (elastic, splunk)
    }
}

fn with_status(mut v: Value) -> Value {
    v["status"] = "configured".into();
    v
}

/// A URL with the parts that carry secrets masked: `user:password@`, the
/// query string (`?token=...`, `?api_key=...`) and the fragment. Scheme,
/// host, port and path stay, so the setting can still be recognised.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    if !scheme.is_empty() {
        out.push_str(scheme);
        out.push_str("://");
    }
    match authority.rfind('@') {
        Some(at) => {
            out.push_str("***@");
            out.push_str(&authority[at + 1..]);
        }
        None => out.push_str(authority),
    }
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    out.push_str(&tail[..path_end]);
    if tail[path_end..].starts_with('?') {
        out.push_str("?***");
    }
    if tail[path_end..].contains('#') {
        out.push_str("#***");
    }
    out
}

fn elastic_view(s: &ElasticSettings) -> Value {
    let urls: Vec<String> = s.urls.iter().map(|u| redact(u)).collect();
    json!({
        "url": urls.first(),
        "urls": urls,
        "index": s.index.as_deref().unwrap_or("telemetry-events"),
        "username": s.username,
        "password_set": s.password.is_some(),
        "api_key_set": s.api_key.is_some(),
    })
}

fn splunk_view(s: &SplunkSettings) -> Value {
    json!({
        "hec_url": s.hec_url.as_deref().map(redact),
        "index": s.index,
        "sourcetype": s.sourcetype.as_deref().unwrap_or("enrichd:event"),
        "token_set": s.token.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_in_urls_are_masked() {
        assert_eq!(redact("https://elastic:s3cret@es.example:9200/x"), "https://***@es.example:9200/x");
        assert_eq!(redact("https://es.example:9200/a@b"), "https://es.example:9200/a@b");
        assert_eq!(redact("http://h"), "http://h");
        assert_eq!(redact("https://h:8088/services/collector?token=abc"), "https://h:8088/services/collector?***");
        assert_eq!(redact("https://h?api_key=k#frag"), "https://h?***#***");
        assert_eq!(redact("https://u:p@h/x#a?b"), "https://***@h/x#***");
        assert_eq!(redact("https://h/p?q=a@b"), "https://h/p?***");
        assert_eq!(redact("https://u:p@h#x@y"), "https://***@h#***");
    }
}
