//! Stage actions: `GET`/`POST`/`DELETE /v1/{collection}/{stage}/{action}`
//! for every plugin that names a collection
//! (`PluginFactory::stage_collection`, e.g. the `wasm` plugin's `rules`,
//! whose stages answer `shadow`, `promote`, `rollback`, `history`).
//!
//! Mounted generically, like the admin resources and views: the service
//! names no plugin and no action. It checks the scope (`GET`: read; `POST`
//! and `DELETE`: admin), reads the body within the server's limits, calls
//! the live stage off the async threads (changes one at a time, with the
//! admin resources' lock), reloads the stages watching the files a change
//! reports before answering, and audits every change with the caller's key
//! id.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use enrichd_engine::{StageMethod, StageRequest};

use super::{ApiError, AppState};
use crate::reload;

/// Every collection's action path (`/v1/{collection}/{stage}/{action}`),
/// for `GET /v1`.
pub(super) fn paths(state: &AppState) -> Vec<String> {
    collections(state).map(|(c, _)| format!("/v1/{c}/{{stage}}/{{action}}")).collect()
}

/// `(collection, plugin kind)` of every plugin that names a collection.
pub(super) fn collections(state: &AppState) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
    state.engine.registry().factories().filter_map(|f| f.stage_collection().map(|c| (c, f.kind())))
}

/// A collection that is not one path segment is a programming error
/// (panics at start, like an admin resource's name).
pub(super) fn routes(state: &AppState) -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for (collection, kind) in collections(state) {
        assert!(
            !collection.is_empty()
                && collection.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b)),
            "plugin {kind:?}: stage collection {collection:?} is not a plain path segment"
        );
        let handler = move |method: StageMethod| {
            move |State(state): State<Arc<AppState>>,
                  headers: HeaderMap,
                  Path((stage, action)): Path<(String, String)>,
                  RawQuery(query): RawQuery,
                  body: Body| {
                call(state, headers, (collection, kind), method, (stage, action), query, body)
            }
        };
        router = router.route(
            &format!("/v1/{collection}/{{stage}}/{{action}}"),
            get(handler(StageMethod::Get)).post(handler(StageMethod::Post)).delete(handler(StageMethod::Delete)),
        );
    }
    router
}

async fn call(
    state: Arc<AppState>,
    headers: HeaderMap,
    (collection, kind): (&'static str, &'static str),
    method: StageMethod,
    (stage, action): (String, String),
    query: Option<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let key = if method.mutates() {
        super::admin::check_admin(&state, &headers)?
    } else {
        state.require(&headers, crate::service::Scope::Read)?
    };
    let body = match method {
        StageMethod::Get => Vec::new(),
        _ => super::body::read(&state, &headers, body).await?,
    };
    let target = format!("/v1/{collection}/{stage}/{action}");
    let key_id = key.id();
    let before = method.mutates().then(|| reload::chain_hash(&state));
    let (stage_name, action_name) = (stage.clone(), action.clone());
    let worker = state.clone();
    let answer = super::admin::run_change(&state, method.mutates(), move |state_dir| {
        let request = StageRequest {
            method,
            action: &action_name,
            query: query.as_deref().unwrap_or(""),
            body: &body,
            state_dir,
            actor: Some(&key_id),
        };
        worker.engine.chain().stage_action(kind, &stage_name, request)
    })
    .await?;
    let Some(answer) = answer else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no enabled {kind} stage {stage:?} with an action {action:?} ({method:?}) in the live chain"),
        )
        .with(serde_json::json!({"stage": stage, "action": action})));
    };
    if method.mutates() {
        tracing::info!(key_id = %key.id(), target, status = answer.status, "stage action");
        let action = if method == StageMethod::Post { "stage_post" } else { "stage_delete" };
        super::admin::audit_change(&state, &key, action, target, before, answer.status);
    }
    Ok(super::admin::respond(answer))
}
