//! Administrative endpoints: `POST /v1/reload` and the plugins' admin
//! resources (`GET`/`PUT /v1/{name}`, `DELETE /v1/{name}/{id}`, e.g. the
//! API indicator store at `/v1/indicators`), mounted generically from every
//! registered factory's [`enrichd_engine::AdminResource`]s.
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
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use enrichd_engine::{AdminHandler, AdminMethod, AdminRequest, AdminResponse};
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::audit::AuditEntry;
use crate::reload;
use crate::service::auth::KeyDigest;

pub(super) fn check_admin(state: &AppState, headers: &HeaderMap) -> Result<KeyDigest, ApiError> {
    if !state.keys.load().any_with(crate::service::Scope::Admin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "administrative endpoints are disabled: configure a key with the admin scope \
             (auth.admin_keys, ADMIN_API_KEY or [[auth.keys]])",
        ));
    }
    // 403 for a valid key without the scope (the caller is known, the
    // action is not theirs), 401 for no or an unknown key.
    Ok(state.require(headers, crate::service::Scope::Admin)?)
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
    let key = check_admin(&state, &headers)?;
    tracing::info!(key_id = %key.id(), "reload requested through the API");
    let worker = state.clone();
    let key_id = Some(key.id());
    Ok(Json(blocking(move || reload::reload_everything(&worker, reload::Actor::API, key_id)).await?))
}

/// `GET /v1/audit?limit=N`: the newest audit entries (admin key), newest
/// first; `limit` 1 to 1000, default 100.
pub(super) async fn audit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Json<Value>, ApiError> {
    check_admin(&state, &headers)?;
    let limit = match query.as_deref().and_then(|q| q.strip_prefix("limit=")) {
        None if query.as_deref().is_none_or(str::is_empty) => 100,
        Some(n) => n.parse::<usize>().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| {
            ApiError::bad_request("invalid_query", "`limit` is a number from 1 to 1000").with(json!({"param": "limit"}))
        })?,
        None => {
            return Err(ApiError::bad_request("invalid_query", "the only parameter is `limit`")
                .with(json!({"param": query.unwrap_or_default()})))
        }
    };
    let worker = state.clone();
    let (entries, unwritten) = blocking(move || worker.audit.read_newest(limit)).await?;
    Ok(Json(json!({ "entries": entries, "unwritten": unwritten })))
}

/// The paths of every plugin admin resource (`/v1/{name}`), for `GET /v1`.
pub(super) fn resource_paths(state: &AppState) -> Vec<String> {
    let registry = state.engine.registry();
    registry.factories().flat_map(|f| f.admin_resources()).map(|r| format!("/v1/{}", r.name)).collect()
}

/// `GET`/`PUT /v1/{name}` and `DELETE /v1/{name}/{id}` for every admin
/// resource of the registered plugins. A name that is not one path segment,
/// or that clashes with another route, is a programming error (panics at
/// start, like a plugin kind registered twice).
pub(super) fn routes(state: &AppState) -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for factory in state.engine.registry().factories() {
        for resource in factory.admin_resources() {
            let name = resource.name;
            assert!(
                !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b)),
                "plugin {:?}: admin resource name {name:?} is not a plain path segment",
                factory.kind()
            );
            let (on_list, on_put, on_delete) = (resource.handler.clone(), resource.handler.clone(), resource.handler);
            router = router
                .route(
                    &format!("/v1/{name}"),
                    get(move |State(state): State<Arc<AppState>>, headers: HeaderMap| {
                        call(state, headers, (name, on_list), AdminMethod::List, None, None)
                    })
                    .put(
                        move |State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body| {
                            call(state, headers, (name, on_put), AdminMethod::Put, None, Some(body))
                        },
                    ),
                )
                .route(
                    &format!("/v1/{name}/{{id}}"),
                    delete(move |State(state): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>| {
                        call(state, headers, (name, on_delete), AdminMethod::Delete, Some(id), None)
                    }),
                );
        }
    }
    router
}

/// One call on an admin resource: admin key, body limits, the handler off
/// the async threads (mutating calls one at a time), then, after a
/// successful change, the reload of the stages watching the changed files,
/// so the change is live when the call returns.
async fn call(
    state: Arc<AppState>,
    headers: HeaderMap,
    (resource, handler): (&'static str, Arc<dyn AdminHandler>),
    method: AdminMethod,
    id: Option<String>,
    body: Option<Body>,
) -> Result<Response, ApiError> {
    let target = id.clone();
    let key = check_admin(&state, &headers)?;
    let body = match body {
        Some(body) => super::body::read(&state, &headers, body).await?,
        None => Vec::new(),
    };
    let before = method.mutates().then(|| reload::chain_hash(&state));
    let answer = run_change(&state, method.mutates(), move |state_dir| {
        Some(handler.handle(AdminRequest { method, id: id.as_deref(), body: &body, state_dir }))
    })
    .await?
    .expect("a resource handler always answers");
    if method.mutates() {
        let (status, target) = (answer.status, target.as_deref().unwrap_or(""));
        tracing::info!(key_id = %key.id(), resource, method = ?method, id = target, status, "admin change");
        let action = if method == AdminMethod::Put { "resource_put" } else { "resource_delete" };
        let target = format!("/v1/{resource}{}{target}", if target.is_empty() { "" } else { "/" });
        audit_change(&state, &key, action, target, before, status);
    }
    Ok(respond(answer))
}

/// Runs an admin-side change (`change`, given the state directory) off the
/// async threads: mutating calls one at a time, and after a successful
/// change the reload of the stages watching the changed files, reported as
/// `live` in the answer, so the change is live when the call returns.
/// `None` from `change`: nobody answers the call.
pub(super) async fn run_change(
    state: &Arc<AppState>,
    mutates: bool,
    change: impl FnOnce(&std::path::Path) -> Option<AdminResponse> + Send + 'static,
) -> Result<Option<AdminResponse>, ApiError> {
    let worker = state.clone();
    blocking(move || {
        let _guard = mutates.then(|| worker.admin_changes.lock().unwrap_or_else(|e| e.into_inner()));
        let state_dir = worker.config.state_dir();
        let mut answer = change(&state_dir)?;
        if (200..300).contains(&answer.status) && !answer.changed.is_empty() {
            let live = live_after_change(&worker, &answer.changed);
            if let Some(obj) = answer.body.as_object_mut() {
                obj.insert("live".into(), live);
            }
        }
        Some(answer)
    })
    .await
}

/// The audit entry of a change made through the API: who (key id), what,
/// the chain's hash before and after, and the answer's status.
pub(super) fn audit_change(
    state: &AppState,
    key: &KeyDigest,
    action: &'static str,
    target: String,
    before: Option<String>,
    status: u16,
) {
    let mut entry = AuditEntry::new("api", action, target);
    entry.key_id = Some(key.id());
    entry.before_sha256 = before;
    entry.after_sha256 = Some(reload::chain_hash(state));
    entry.result = status.to_string();
    state.audit.record(entry);
}

pub(super) fn respond(answer: AdminResponse) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or_else(|_| {
        tracing::error!(status = answer.status, "admin resource answered with an invalid status code");
        StatusCode::INTERNAL_SERVER_ERROR
    });
    (status, Json(answer.body)).into_response()
}

/// Reloads the stages that watch `changed`, so the change is live when the
/// call returns; says so when no enabled stage loads those files.
pub(super) fn live_after_change(state: &AppState, changed: &[PathBuf]) -> Value {
    let report = state.engine.reload_paths(changed);
    if report.stages.is_empty() {
        let files: Vec<String> = changed.iter().map(|p| p.display().to_string()).collect();
        return json!({ "warning": format!("no enabled stage loads {}: the change is stored but not in use", files.join(", ")) });
    }
    json!({ "chain_generation": report.chain_generation, "stages": report.stages })
}
