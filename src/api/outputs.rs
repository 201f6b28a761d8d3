//! `POST /v1/outputs/{elastic,splunk}`: store connector settings.
//!
//! Sending is the outputs work; here the settings are validated and kept in
//! memory ([`crate::service::outputs`]). Secrets (passwords, tokens) are stored but never echoed: answers
//! and `GET /v1/outputs` say only whether one is set.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::service::outputs::{elastic_view, splunk_view, ElasticSettings, SplunkSettings};

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

pub(super) async fn configure_elastic(
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

pub(super) async fn configure_splunk(
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

pub(super) async fn show(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    state.keys.check(&headers)?;
    let (elastic, splunk) = state.outputs.views();
    Ok(Json(json!({ "elastic": elastic, "splunk": splunk })))
}

fn with_status(mut v: Value) -> Value {
    v["status"] = "configured".into();
    v
}
