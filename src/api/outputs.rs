//! `/v1/outputs`: the delivery destinations — list, show, set, remove,
//! probe, and each output's dead-letter.
//!
//! - `GET /v1/outputs`, `GET /v1/outputs/{name}`: settings (secrets only as
//!   `<field>_set`), state, backlog, dead-letter and counters.
//! - `PUT /v1/outputs/{name}` (and `POST`, as the reference API's clients
//!   send it): settings, checked whole (422 listing every field error),
//!   persisted in the state directory and applied at once. 201 when the
//!   output is new, 200 when it changed.
//! - `DELETE /v1/outputs/{name}`: drops the API's settings; the
//!   `config.toml` entry of that name, if any, applies again.
//! - `POST /v1/outputs/test {"target"}`: one probe event.
//! - `GET /v1/outputs/{name}/deadletter`, `POST .../deadletter/replay`.
//!
//! Reading needs an API key. Changing needs an admin key, or, where no
//! admin key is configured, an API key (the single-key deployments the
//! reference API's clients come from).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use enrichd_engine::output::{OutEvent, SinkBatch};
use serde_json::{json, Map, Value};

use super::page::Page;
use super::{ApiError, AppState};
use crate::delivery::options::{valid_name, OutputSpec};

/// Changing outputs takes an admin key; in a single-key deployment (one
/// key in all that both ingests and reads, as the reference project's
/// `API_KEY`) that key. With several keys and none of them admin, or a
/// lone key that may only read (a dashboard's), a collector's or a
/// viewer's key must not be able to send every enriched event elsewhere:
/// changes are refused until an admin key is configured. Returns the
/// key's id, for the log of the change.
fn check_write(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    use crate::service::Scope;
    let keys = state.keys.load();
    if keys.len() == 1 && !keys.any_with(Scope::Admin) && keys.any_with(Scope::Ingest) {
        state.require(headers, Scope::Ingest)?;
        return Ok(state.require(headers, Scope::Read)?.id());
    }
    Ok(super::admin::check_admin(state, headers)?.id())
}

fn checked_name(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request("invalid_name", "output names are 1-64 letters, digits, `_` and `-`"))
    }
}

pub(super) async fn list(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    state.require(&headers, crate::service::Scope::Read)?;
    let registry = state.engine.registry();
    let outputs = crate::delivery::views(&state.delivery, registry);
    let kinds: Vec<Value> = registry
        .outputs()
        .map(|f| json!({"type": f.kind(), "description": f.description(), "secret_fields": f.secret_fields()}))
        .collect();
    Ok(Json(json!({ "outputs": outputs, "types": kinds })))
}

pub(super) async fn show(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.require(&headers, crate::service::Scope::Read)?;
    checked_name(&name)?;
    let outputs = crate::delivery::views(&state.delivery, state.engine.registry());
    outputs
        .into_iter()
        .find(|o| o["name"] == name.as_str())
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown_output", format!("no output named {name:?}")))
}

pub(super) async fn set(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key_id = check_write(&state, &headers)?;
    checked_name(&name)?;
    let body = super::body::read(&state, &headers, body).await?;
    let entry: Map<String, Value> = serde_json::from_slice(&body).map_err(|e| {
        // serde_json's message names the position, never the value.
        ApiError::bad_request("invalid_json", format!("the settings must be one JSON object: {e}"))
    })?;
    let registry = state.engine.registry();
    let spec = OutputSpec::check(registry, &entry, Some(&name)).map_err(|errors| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_settings", format!("{} field error(s)", errors.len()))
            .with(json!({ "errors": errors }))
    })?;
    let store = &state.delivery.store;
    let _one_change_at_a_time = store.changing.lock().await;
    let existed = state.delivery.snapshot().iter().any(|o| o.spec.runtime.name == name);
    let before = settings_hash(&state, &name);
    let previous = store.load().0.into_iter().find(|(n, _)| *n == name).map(|(_, m)| m);
    store.save(&name, &entry).map_err(|e| storage_error(&e))?;
    if let Err(e) = crate::service::reconcile_outputs(&state).await {
        undo(&state, &name, previous.as_ref()).await;
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "output_not_started", e).with(
            json!({"errors": [{"field": "", "message": "the output could not be started with these settings"}]}),
        ));
    }
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    tracing::info!(key_id, output = %name, created = !existed, "output settings changed through the API");

    let after = Some(crate::audit::sha256(spec.view(registry).to_string().as_bytes()));
    audit(&state, "output_set", &name, key_id, before, after, None);
    let mut view = spec.view(registry);
    view["status"] = "configured".into();
    view["source"] = "api".into();
    Ok((status, Json(view)).into_response())
}

pub(super) async fn remove(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let key_id = check_write(&state, &headers)?;
    checked_name(&name)?;
    let store = &state.delivery.store;
    let _one_change_at_a_time = store.changing.lock().await;
    let before = settings_hash(&state, &name);
    let previous = store.load().0.into_iter().find(|(n, _)| *n == name).map(|(_, m)| m);
    let removed = store.remove(&name).map_err(|e| storage_error(&e))?;
    let in_config = state.delivery.config_entry_named(&name);
    if !removed {
        return Err(if in_config {
            ApiError::new(
                StatusCode::CONFLICT,
                "configured_in_file",
                format!("output {name:?} comes from config.toml: change or remove it there"),
            )
        } else {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_output", format!("no output named {name:?}"))
        });
    }
    if let Err(e) = crate::service::reconcile_outputs(&state).await {
        // As for a refused `PUT`: what runs is what is stored (the output
        // kept running with the API's settings, while a restart would have
        // applied the file's entry and the next `DELETE` answered 409).
        undo(&state, &name, previous.as_ref()).await;
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "output_not_started", e));
    }
    tracing::info!(key_id, output = %name, "output settings removed through the API");
    let after = settings_hash(&state, &name);
    audit(&state, "output_removed", &name, key_id, before, after, None);
    Ok(Json(json!({ "name": name, "removed": true, "now_from": if in_config { "config" } else { "nothing" } })))
}

/// Keep-last-good after a refused `PUT` or `DELETE`: the API's previous
/// settings of `name` go back (none before: none now), and the running set
/// follows, since a reload's reconcile may have applied the refused change
/// between the save and the undo (a no-op otherwise).
async fn undo(state: &AppState, name: &str, previous: Option<&Map<String, Value>>) {
    let store = &state.delivery.store;
    let restored = match previous {
        Some(p) => store.save(name, p),
        None => store.remove(name).map(|_| ()),
    };
    if let Err(e) = restored {
        tracing::error!(output = %name, error = %e, "putting the API's settings back after a refused change");
    }
    if let Err(e) = crate::service::reconcile_outputs(state).await {
        tracing::warn!(output = %name, error = %e, "outputs after undoing a refused change");
    }
}

/// Hash of an output's settings as shown (secrets masked), if it runs.
fn settings_hash(state: &AppState, name: &str) -> Option<String> {
    let registry = state.engine.registry();
    let snapshot = state.delivery.snapshot();
    let output = snapshot.iter().find(|o| o.spec.runtime.name == name)?;
    Some(crate::audit::sha256(output.spec.view(registry).to_string().as_bytes()))
}

fn audit(
    state: &AppState,
    action: &'static str,
    name: &str,
    key_id: String,
    before: Option<String>,
    after: Option<String>,
    detail: Option<String>,
) {
    let mut entry = crate::audit::AuditEntry::new("api", action, format!("output {name}"));
    (entry.key_id, entry.before_sha256, entry.after_sha256, entry.detail) = (Some(key_id), before, after, detail);
    state.audit.record(entry);
}

fn storage_error(e: &anyhow::Error) -> ApiError {
    tracing::error!(error = %e, "output settings could not be stored");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", "the settings could not be stored; retry")
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TestRequest {
    target: String,
}

/// `POST /v1/outputs/test`: builds the target's sink from its current
/// settings (also when disabled) and sends one probe event.
pub(super) async fn test(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    check_write(&state, &headers)?;
    let body = super::body::read(&state, &headers, body).await?;
    let request: TestRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("expected {{\"target\": \"<output name>\"}}: {e}"))
    })?;
    let registry = state.engine.registry();
    let snapshot = state.delivery.snapshot();
    let Some(crate::delivery::Summary { spec, lane, source, .. }) =
        snapshot.iter().find(|s| s.spec.runtime.name == request.target)
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_output",
            format!("no output named {:?} is configured", request.target),
        ));
    };
    let factory = registry.output(&spec.runtime.kind).expect("checked specs have a known kind");
    let ctx = state.delivery.context(&spec.runtime.name, 1, *source);
    let started = Instant::now();
    let (ok, http_status, error) = match factory.build(&spec.options, &ctx) {
        Err(e) => (false, None, Some(lane.mask(&format!("{e:#}")))),
        Ok(sink) => {
            let now = crate::delivery::unix_ms();
            let event = json!({
                "message": "enrichd output test",
                "event": {"kind": "enrichd_probe", "created_unix_ms": now},
            })
            .to_string();
            let events = [OutEvent { json: event.as_bytes(), id: now, origin: None }];
            let report = sink.send(SinkBatch { events: &events, accepted_unix_ms: now, id_scope: now }).await;
            sink.close().await;
            match report.outcomes.first() {
                Some(enrichd_engine::output::Outcome::Delivered | enrichd_engine::output::Outcome::Duplicate) => {
                    (true, report.http_status, None)
                }
                Some(enrichd_engine::output::Outcome::Retry(e) | enrichd_engine::output::Outcome::Reject(e)) => {
                    (false, report.http_status, Some(lane.mask(e)))
                }
                None => (false, report.http_status, Some("the output answered nothing".into())),
            }
        }
    };
    Ok(Json(json!({
        "target": request.target,
        "ok": ok,
        "http_status": http_status,
        "error": error,
        "duration_ms": started.elapsed().as_secs_f64() * 1000.0,
    })))
}

pub(super) async fn deadletter(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    query: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.require(&headers, crate::service::Scope::Read)?;
    checked_name(&name)?;
    let page = Page::from_query(query)?;
    let lane = lane(&state, &name)?;
    let (total, records) = tokio::task::spawn_blocking(move || lane.deadletter.list(page.offset, page.limit))
        .await
        .map_err(|_| storage_error(&anyhow::anyhow!("dead-letter reader failed")))?
        .map_err(|e| storage_error(&e))?;
    Ok(Json(json!({ "output": name, "total": total, "offset": page.offset, "records": records })))
}

/// Re-queues every dead-lettered event of the output (through its backlog,
/// so the normal retries and bounds apply); 503 when the backlog has no
/// room for them.
pub(super) async fn replay(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let key_id = check_write(&state, &headers)?;
    checked_name(&name)?;
    let lane = lane(&state, &name)?;
    let replayed = tokio::task::spawn_blocking(move || crate::delivery::replay(&lane))
        .await
        .map_err(|_| storage_error(&anyhow::anyhow!("replay failed")))?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "replay_refused", e))?;
    tracing::info!(key_id, output = %name, replayed, "dead-letter replayed through the API");
    audit(&state, "deadletter_replayed", &name, key_id, None, None, Some(format!("{replayed} events")));
    Ok(Json(json!({ "output": name, "replayed": replayed })))
}

fn lane(state: &AppState, name: &str) -> Result<Arc<crate::delivery::Lane>, ApiError> {
    state
        .delivery
        .lane_named(name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown_output", format!("no output named {name:?}")))
}
