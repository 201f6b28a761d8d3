//! Administrative endpoints: `POST /v1/reload` and the API indicator store
//! (`GET`/`PUT /v1/indicators`, `DELETE /v1/indicators/{id}`).
//!
//! They need an admin key (`auth.admin_keys` / `ADMIN_API_KEY`), distinct
//! from ingest keys: a collector that can send telemetry must not be able
//! to whitelist itself by deleting indicators. Without an admin key these
//! endpoints are disabled (403), not open.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use enrichd_plugins::ti::api_store::{self, ApiIndicator, NewIndicator};
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::reload;

/// Most indicators accepted in one `PUT`.
const MAX_INDICATORS_PER_PUT: usize = 10_000;

fn check_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.admin_keys.is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "administrative endpoints are disabled: configure auth.admin_keys or ADMIN_API_KEY",
        ));
    }
    Ok(state.admin_keys.check(headers)?)
}

/// Runs blocking reload work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "reload worker failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "the reload could not be completed")
    })
}

/// `POST /v1/reload`: re-reads the configuration and every stage's data.
pub(super) async fn reload(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    check_admin(&state, &headers)?;
    let worker = state.clone();
    Ok(Json(blocking(move || reload::reload_everything(&worker)).await?))
}

fn store_path(state: &AppState) -> PathBuf {
    api_store::path_in(&state.config.state_dir())
}

fn store_error(e: std::io::Error) -> ApiError {
    tracing::error!(error = %e, "API indicator store");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store_failed", "the indicator store could not be read or written")
}

/// `GET /v1/indicators`: the indicators added through the API.
pub(super) async fn list_indicators(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_admin(&state, &headers)?;
    let items = api_store::load(&store_path(&state)).map_err(store_error)?;
    Ok(Json(json!({ "count": items.len(), "indicators": items })))
}

/// `PUT /v1/indicators`: adds or updates indicators. Body: one indicator
/// object, an array of them, or `{"indicators": [...]}`; each is
/// `{"indicator", "category"?, "confidence"?, "description"?}`. All are
/// validated before anything is stored; the answer comes once they are live.
pub(super) async fn put_indicators(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    check_admin(&state, &headers)?;
    let body = super::body::read(&state, &headers, body).await?;
    let items = parse_new_indicators(&body)?;
    let worker = state.clone();
    blocking(move || {
        let path = store_path(&worker);
        let _guard = worker.indicator_store.lock().unwrap_or_else(|e| e.into_inner());
        let mut stored = api_store::load(&path).map_err(store_error)?;
        let (mut added, mut updated) = (0, 0);
        for item in &items {
            if api_store::upsert(&mut stored, item.clone()) {
                added += 1;
            } else {
                updated += 1;
            }
        }
        api_store::save(&path, &stored).map_err(store_error)?;
        let live = live_after_change(&worker, path);
        let ids: Vec<Value> =
            items.iter().map(|i| json!({ "id": i.id, "indicator": i.indicator, "type": i.kind })).collect();
        Ok(Json(json!({ "added": added, "updated": updated, "indicators": ids, "live": live })))
    })
    .await?
}

/// `DELETE /v1/indicators/{id}`.
pub(super) async fn delete_indicator(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_admin(&state, &headers)?;
    let worker = state.clone();
    blocking(move || {
        let path = store_path(&worker);
        let _guard = worker.indicator_store.lock().unwrap_or_else(|e| e.into_inner());
        let mut stored = api_store::load(&path).map_err(store_error)?;
        let Some(pos) = stored.iter().position(|i| i.id == id) else {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no API indicator with id {id:?}")));
        };
        let removed = stored.remove(pos);
        api_store::save(&path, &stored).map_err(store_error)?;
        let live = live_after_change(&worker, path);
        Ok(Json(json!({ "deleted": removed, "live": live })))
    })
    .await?
}

/// Reloads the stages that load the store, so the change is live when the
/// call returns; says so when no stage uses API indicators.
fn live_after_change(state: &AppState, path: PathBuf) -> Value {
    let report = state.engine.reload_paths(&[path]);
    if report.stages.is_empty() {
        return json!({ "warning": "no enabled ti stage loads API indicators (api_indicators = false or no ti stage)" });
    }
    json!({ "chain_generation": report.chain_generation, "stages": report.stages })
}

fn parse_new_indicators(body: &[u8]) -> Result<Vec<ApiIndicator>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}")))?;
    let list = match value {
        Value::Object(mut obj) if obj.contains_key("indicators") => match obj.remove("indicators") {
            Some(Value::Array(list)) => list,
            _ => return Err(ApiError::bad_request("invalid_field", "`indicators` must be an array")),
        },
        Value::Array(list) => list,
        obj @ Value::Object(_) => vec![obj],
        _ => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "expected an indicator object, an array of them, or {\"indicators\": [...]}",
            ))
        }
    };
    if list.is_empty() {
        return Err(ApiError::bad_request("empty", "no indicator given"));
    }
    if list.len() > MAX_INDICATORS_PER_PUT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_indicators",
            format!("{} indicators in one request; at most {MAX_INDICATORS_PER_PUT}", list.len()),
        ));
    }
    let now = enrichd_engine::rfc3339(std::time::SystemTime::now());
    list.into_iter()
        .enumerate()
        .map(|(index, item)| {
            let new: NewIndicator = serde_json::from_value(item).map_err(|e| {
                ApiError::bad_request("invalid_indicator", format!("indicators[{index}]: {e}"))
                    .with(json!({ "index": index }))
            })?;
            new.normalize(now.clone()).map_err(|e| {
                ApiError::bad_request("invalid_indicator", format!("indicators[{index}]: {e}"))
                    .with(json!({ "index": index, "field": "indicator" }))
            })
        })
        .collect()
}
