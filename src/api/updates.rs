//! `GET /v1/updates`: each `[[update]]` entry's state (last check, last
//! success and change, next run, validators, errors, what the reload made
//! of the last change) and counters; `POST /v1/updates/{name}/run` (admin
//! key): one check now, answered when it is done (and, when it brought a
//! new file, once the stages reading it have been reloaded).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState};

pub(super) async fn list(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    state.require(&headers, crate::service::Scope::Read)?;
    let kinds: Vec<Value> =
        state.engine.registry().updaters().map(|f| json!({"type": f.kind(), "description": f.description()})).collect();
    Ok(Json(json!({ "updates": state.updates.views(), "types": kinds })))
}

pub(super) async fn run(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let key = super::admin::check_admin(&state, &headers)?;
    tracing::info!(key_id = %key.id(), updater = %name, "update run requested through the API");
    match state.updates.run_now(&state, &name).await {
        Some(view) => Ok(Json(view)),
        None => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_update", format!("no [[update]] entry named {name:?}")))
        }
    }
}
