//! Read-only endpoints: health, version, schemas, enrichers, lookup.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use enrichd_engine::PluginState;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::schema;

/// `GET /v1`: what this server offers (`/` is the dashboard).
pub(super) async fn index(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut api: Vec<String> = [
        "/v1/health",
        "/v1/health/details",
        "/v1/enrichers",
        "/v1/version",
        "/v1/schema",
        "/v1/metrics",
        "/v1/stream",
        "/metrics",
        "/v1/ingest",
        "/v1/lookup",
        "/v1/outputs",
        "/v1/outputs/test",
        "/v1/reload",
        "/v1/openapi.json",
    ]
    .map(String::from)
    .into();
    api.extend(super::admin::resource_paths(&state));
    api.extend(super::views::paths(&state));
    api.extend(super::stages::paths(&state));
    Json(json!({
        "service": "enrichd",
        "version": env!("CARGO_PKG_VERSION"),
        "dashboard": "/",
        "openapi": "/v1/openapi.json",
        "api": api,
    }))
}

pub(super) async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Health plus every chain stage's state. `degraded` when an enabled stage
/// is not loaded (missing or broken data).
pub(super) async fn health_details(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.require(&headers, crate::service::Scope::Read)?;
    let chain = state.engine.chain();
    let reports = chain.reports();
    let degraded = reports.iter().any(|r| r.enabled && r.status.state != PluginState::Loaded);
    let mut doc = chain_document(&state, &chain, reports);
    doc["status"] = (if degraded { "degraded" } else { "ok" }).into();
    doc["uptime_s"] = state.started.elapsed().as_secs_f64().into();
    if let Some(tls) = state.tls.get().cloned().flatten() {
        doc["tls"] = tls.status();
    }
    Ok(Json(doc))
}

pub(super) async fn enrichers(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    state.require(&headers, crate::service::Scope::Read)?;
    let chain = state.engine.chain();
    Ok(Json(chain_document(&state, &chain, chain.reports())))
}

/// The chain's generation, the reload status and every stage's report
/// (taken from one chain snapshot, so they agree).
fn chain_document(state: &AppState, chain: &enrichd_engine::Chain, reports: Vec<enrichd_engine::StageReport>) -> Value {
    let reload = state.reload.snapshot();
    let mut doc = json!({
        "chain_generation": chain.generation(),
        "enrichers": with_origins(state, reports),
        "instance": state.presence.view(),
    });
    // Where the entries came from when a chain file holds them: its
    // content hash and origin (a published revision, or the file as found).
    if let Some(file) = &reload.chain_file {
        doc["chain_file"] = json!({
            "path": file.path.display().to_string(),
            "sha256": file.sha256,
            "origin": state.updates.origin_view(&file.path, Some(&file.sha256), true),
        });
    }
    doc["reload"] = serde_json::to_value(reload).unwrap_or(Value::Null);
    doc
}

/// The stage reports, each source with its `origin` (an `[[update]]`
/// entry's revision, or the file as found).
fn with_origins(state: &AppState, reports: Vec<enrichd_engine::StageReport>) -> Value {
    let annotated = reports.iter().map(|report| {
        let mut view = serde_json::to_value(report).unwrap_or(Value::Null);
        if let Some(sources) = view.get_mut("sources").and_then(Value::as_array_mut) {
            for (view, source) in sources.iter_mut().zip(&report.status.sources) {
                view["origin"] = state.updates.origin_view(&source.path, source.sha256.as_deref(), true);
            }
        }
        view
    });
    Value::Array(annotated.collect())
}

pub(super) async fn version() -> Json<Value> {
    let env_or = |name: &str, fallback: &str| std::env::var(name).unwrap_or_else(|_| fallback.to_string());
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "git_tag": env_or("GIT_TAG", env!("ENRICHD_GIT_TAG")),
        "git_sha": env_or("GIT_SHA", env!("ENRICHD_GIT_SHA")),
        "image_digest": env_or("IMAGE_DIGEST", "unknown"),
    }))
}

pub(super) async fn schema_index() -> Json<Value> {
    Json(schema::index())
}

pub(super) async fn schema_document(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    schema::document(&name, &state.engine.chain()).map(Json).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "unknown_schema", format!("no schema named {name:?}"))
            .with(json!({ "available": schema::names() }))
    })
}

/// `POST /v1/lookup {"ip": "..."}`: everything the chain knows of one address.
pub(super) async fn lookup(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    state.require(&headers, crate::service::Scope::Read)?;
    let body = super::body::read(&state, &headers, body).await?;
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("request body is not valid JSON: {e}")))?;
    let ip = match request.get("ip") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request("missing_ip", "IP address required: {\"ip\": \"...\"}")
                .with(json!({"field": "ip"})))
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err(ApiError::bad_request("missing_ip", "IP address required: {\"ip\": \"...\"}")
                .with(json!({"field": "ip"})))
        }
        Some(Value::String(s)) => s.trim().parse::<IpAddr>().map_err(|_| {
            let shown: String = s.chars().take(64).collect();
            ApiError::bad_request("invalid_ip", format!("invalid IP address: {shown:?}")).with(json!({"field": "ip"}))
        })?,
        Some(_) => {
            return Err(ApiError::bad_request("invalid_ip", "field `ip` must be a string").with(json!({"field": "ip"})))
        }
    };
    // Each enabled stage answers under its own output key(s), plus the
    // names the reference API used for some of them.
    let mut answer = state.engine.chain().lookup(enrichd_engine::LookupTarget::Ip(ip));
    for (key, value) in answer.aliases {
        answer.fields.entry(key).or_insert(value);
    }
    Ok(Json(Value::Object(answer.fields)))
}
