//! `GET /v1/sources`: each `[[source]]` entry's state (running, last
//! error) and counters (messages, events, acked, termed, nacked,
//! redelivered, dead-lettered); `GET /v1/sources/{name}/deadletter`: the
//! messages it refused for good, with where they came from and why.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::page::Page;
use super::{ApiError, AppState};

pub(super) async fn list(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    state.require(&headers, crate::service::Scope::Read)?;
    let registry = state.engine.registry();
    let kinds: Vec<Value> =
        registry.sources().map(|f| json!({"type": f.kind(), "description": f.description()})).collect();
    Ok(Json(json!({ "sources": state.sources.views(registry), "types": kinds })))
}

pub(super) async fn deadletter(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    query: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.require(&headers, crate::service::Scope::Read)?;
    let page = Page::from_query(query)?;
    let lane = state
        .sources
        .lane_named(&name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown_source", format!("no source named {name:?}")))?;
    let failed = |e: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", e);
    let (total, records) = tokio::task::spawn_blocking(move || lane.deadletter.list(page.offset, page.limit))
        .await
        .map_err(|_| failed("dead-letter reader failed".into()))?
        .map_err(|e| failed(format!("{e:#}")))?;
    Ok(Json(json!({ "source": name, "total": total, "offset": page.offset, "records": records })))
}
