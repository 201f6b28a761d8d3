//! Plugins' read-only views: `GET /v1/{view}` (read scope) for every view a
//! registered factory declares (`PluginFactory::views`, e.g. the `ti`
//! plugin's `indicators/hits`), answered by the live chain's stages of that
//! plugin. Mounted generically, like the admin resources: the service names
//! no plugin.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{ApiError, AppState};

/// Every declared view's path (`/v1/{view}`), for `GET /v1` and OpenAPI.
pub(super) fn paths(state: &AppState) -> Vec<String> {
    state.engine.registry().factories().flat_map(|f| f.views().iter()).map(|v| format!("/v1/{v}")).collect()
}

pub(super) fn routes(state: &AppState) -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for factory in state.engine.registry().factories() {
        for &view in factory.views() {
            assert!(
                view.split('/').all(|seg| !seg.is_empty()
                    && seg.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b))),
                "plugin {:?}: view {view:?} is not a plain path",
                factory.kind()
            );
            router = router.route(
                &format!("/v1/{view}"),
                get(move |State(state): State<Arc<AppState>>, headers: HeaderMap, RawQuery(query): RawQuery| {
                    answer(state, headers, view, query)
                }),
            );
        }
    }
    router
}

/// `{"stages": [{"stage": NAME, ...the stage's answer}]}`; a refused query
/// is a 400 naming it.
async fn answer(
    state: Arc<AppState>,
    headers: HeaderMap,
    view: &'static str,
    query: Option<String>,
) -> Result<Json<Value>, ApiError> {
    state.require(&headers, crate::service::Scope::Read)?;
    let chain = state.engine.chain();
    let query = query.unwrap_or_default();
    let answers = chain
        .view(view, &query)
        .map_err(|detail| ApiError::bad_request("invalid_query", detail).with(json!({"query": query})))?;
    let stages: Vec<Value> = answers
        .into_iter()
        .map(|(stage, mut value)| {
            if let Some(obj) = value.as_object_mut() {
                obj.insert("stage".into(), stage.into());
            }
            value
        })
        .collect();
    Ok(Json(json!({ "stages": stages })))
}
