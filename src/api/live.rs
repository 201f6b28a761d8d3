//! Live metrics endpoints: `GET /v1/metrics` (JSON), `GET /v1/stream`
//! (the same JSON as Server-Sent Events, every second) and `GET /metrics`
//! (Prometheus text). All three follow `server.metrics_require_key`, with
//! the key in the `Authorization: Bearer` header only: a key in a URL ends
//! up in logs and browser history.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use futures_util::Stream;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::metrics::{prometheus, report};

/// Checks the key when metrics need one; answers whether the caller holds a
/// valid key (output settings are shown only then, even on public metrics).
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<bool, ApiError> {
    if state.config.server.metrics_require_key {
        state.require(headers, crate::service::Scope::Read)?;
        return Ok(true);
    }
    Ok(state.require(headers, crate::service::Scope::Read).is_ok())
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let with_key = authorize(&state, &headers)?;
    Ok(Json(document(&state, with_key)))
}

/// Most `GET /v1/stream` responses open at once. Each holds a connection
/// for as long as its client likes, and the stream is public unless
/// `metrics_require_key`: without a bound, a few thousand of them would
/// take every connection slot (health checks included).
const MAX_LIVE_STREAMS: usize = 64;

/// One `metrics` event per second, the first at once; keep-alive comments
/// in between. Ends when the server shuts down, or when the key it was
/// opened with is no longer valid where a key is required (a key removed
/// by a reload stops seeing what it saw).
pub(super) async fn stream(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    authorize(&state, &headers)?;
    let open = LiveStream::open(state.clone()).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!("at most {MAX_LIVE_STREAMS} metrics streams at once; close one or poll /v1/metrics"),
        )
        .retry_after(5)
    })?;
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = state.shutdown.subscribe();
    let events = futures_util::stream::unfold(
        (open, headers, ticks, shutdown),
        move |(open, headers, mut ticks, mut shutdown)| async move {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.wait_for(|stopping| *stopping) => return None,
            }
            // Checked again each time: what a key may see follows the
            // keys live now, not the ones the stream was opened with.
            let with_key = authorize(&open.0, &headers).ok()?;
            let event = Event::default().event("metrics").data(document(&open.0, with_key).to_string());
            Some((Ok(event), (open, headers, ticks, shutdown)))
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// One open `/v1/stream` response, counted in `AppState::live_streams`
/// until dropped.
struct LiveStream(Arc<AppState>);

impl LiveStream {
    fn open(state: Arc<AppState>) -> Option<LiveStream> {
        use std::sync::atomic::Ordering::Relaxed;
        state.live_streams.fetch_update(Relaxed, Relaxed, |n| (n < MAX_LIVE_STREAMS).then_some(n + 1)).ok()?;
        Some(LiveStream(state))
    }
}

impl Drop for LiveStream {
    fn drop(&mut self) {
        self.0.live_streams.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pub(super) async fn prometheus(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers)?;
    let reading = state.metrics.read();
    let stages = state.engine.chain().reports();
    let outputs = crate::delivery::readings(&state.delivery);
    let env_or = |name: &str, fallback: &str| std::env::var(name).unwrap_or_else(|_| fallback.to_string());
    let build = [
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        ("git_sha", env_or("GIT_SHA", env!("ENRICHD_GIT_SHA"))),
        ("git_tag", env_or("GIT_TAG", env!("ENRICHD_GIT_TAG"))),
    ];
    let rate_limited = state.rate_limits.refused().map(|(by, n)| (by.label(), n));
    let sources = state.sources.readings();
    let updates = state.updates.readings();
    let origins: Vec<prometheus::OriginReading> = stages
        .iter()
        .flat_map(|stage| {
            stage.status.sources.iter().map(|s| {
                let view = state.updates.origin_view(&s.path, s.sha256.as_deref(), false);
                let text = |key: &str| view.get(key).and_then(Value::as_str).unwrap_or("").to_string();
                prometheus::OriginReading {
                    stage: stage.name.clone(),
                    from: text("from"),
                    update: text("update"),
                    revision: text("revision"),
                }
            })
        })
        .collect();
    let ctx = prometheus::Context {
        origins: &origins,
        stages: &stages,
        outputs: &outputs,
        sources: &sources,
        updates: &updates,
        build: &build,
        rate_limited,
    };
    let text = prometheus::render(&state.metrics, &reading, &ctx);
    Ok(([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], text))
}

/// The full `/v1/metrics` document; output settings (hosts, user names,
/// indices) only for a caller with a valid API key.
pub(super) fn document(state: &AppState, with_key: bool) -> Value {
    let reading = state.metrics.read();
    let mut doc = report::document(&state.metrics, &reading);
    doc["enrichers"] = enrichers(state, with_key);
    doc["outputs"] = outputs(state, with_key);
    doc["tap"] = state.tap.state();
    doc["rate_limited"] = Value::Object(
        state.rate_limits.refused().iter().map(|(by, n)| (by.label().to_string(), Value::from(*n))).collect(),
    );
    doc["sources"] = sources(state, with_key);
    let mut updates = state.updates.views();
    if !with_key {
        for v in updates.iter_mut().filter_map(|v| v.as_object_mut()) {
            // `last_detail` names buckets, objects and collections.
            for k in ["settings", "last_error", "last_detail", "validators", "last_apply", "path"] {
                v.remove(k);
            }
        }
    }
    doc["updates"] = Value::Array(updates);
    doc["forward"] = state.forward.get().and_then(Option::as_ref).map_or(Value::Null, |f| f.view());
    let detail = with_key || state.config.server.metrics_public_detail;
    doc["withheld"] = if detail { json!([]) } else { withhold_detail(&mut doc) };
    doc
}

/// What [`withhold_detail`] empties in each window of `top` and in each
/// event of `recent_high_risk`, and what it leaves there: one table for
/// both the emptying and the `withheld` list clients read.
const TOP_DETAIL: [(&str, Emptied); 3] =
    [("sources", Emptied::List), ("indicators", Emptied::List), ("facts", Emptied::Map)];
const EVENT_DETAIL: [(&str, Emptied); 3] =
    [("src_ip", Emptied::Null), ("dst_ip", Emptied::Null), ("indicators", Emptied::List)];

#[derive(Clone, Copy)]
enum Emptied {
    List,
    Map,
    Null,
}

impl Emptied {
    fn value(self) -> Value {
        match self {
            Emptied::List => json!([]),
            Emptied::Map => json!({}),
            Emptied::Null => Value::Null,
        }
    }
}

/// Empties what names hosts of the monitored network or what threat intel
/// flagged (`server.metrics_public_detail`): the top sources, matched
/// indicators and declared facts' top values (a fact can be a domain),
/// and the high-risk events' addresses and indicators. The events stay,
/// with their score, ports, country, AS and reasons, so a wall screen
/// without a key still shows that something happens and how bad it is.
/// Returns the list of paths emptied, for clients to say so.
fn withhold_detail(doc: &mut Value) -> Value {
    if let Some(windows) = doc.get_mut("top").and_then(Value::as_object_mut) {
        for top in windows.values_mut() {
            for (key, emptied) in TOP_DETAIL {
                top[key] = emptied.value();
            }
        }
    }
    if let Some(events) = doc.get_mut("recent_high_risk").and_then(Value::as_array_mut) {
        for e in events.iter_mut().filter_map(Value::as_object_mut) {
            for (key, emptied) in EVENT_DETAIL {
                e.insert(key.into(), emptied.value());
            }
        }
    }
    let top = TOP_DETAIL.iter().map(|(key, _)| format!("top.{key}"));
    let events = EVENT_DETAIL.iter().map(|(key, _)| format!("recent_high_risk.{key}"));
    Value::Array(top.chain(events).map(Value::String).collect())
}

/// Each source's state and counters; settings (servers, stream names)
/// only for a caller with a valid API key, as for outputs.
fn sources(state: &AppState, with_key: bool) -> Value {
    let mut views = state.sources.views(state.engine.registry());
    if !with_key {
        for v in &mut views {
            if let Some(o) = v.as_object_mut() {
                o.remove("settings");
                o.remove("last_error");
            }
        }
    }
    Value::Array(views)
}

/// Each chain stage's state and counters. No file paths or digests: this
/// document may be public (`metrics_require_key = false`); then error texts
/// (which can name files, hosts or indicator lines) are withheld too, and
/// only say that there is an error.
fn enrichers(state: &AppState, with_key: bool) -> Value {
    let shown = |text: Option<String>| {
        text.map(|t| if with_key { t } else { "withheld: details need an API key (GET /v1/enrichers)".to_string() })
    };
    state
        .engine
        .chain()
        .reports()
        .into_iter()
        .map(|r| {
            let mut origins: Vec<Value> = r
                .status
                .sources
                .iter()
                .map(|s| state.updates.origin_view(&s.path, s.sha256.as_deref(), false))
                .collect();
            let mut details = r.status.details;
            if let Some(d) = details.as_object_mut() {
                d.remove("files"); // per-file reports name paths
            }
            if !with_key {
                withhold_private(&mut details);
                origins.iter_mut().for_each(withhold_private);
            }
            json!({
                "name": r.name, "plugin": r.plugin, "enabled": r.enabled, "state": r.status.state,
                "version": r.status.version, "error": shown(r.status.error),
                "generation": r.generation, "loaded_at": r.generation_loaded_at,
                "reloads": r.reloads, "reload_failures": r.reload_failures,
                "last_reload_error": shown(r.last_reload_error),
                "batches": r.batches, "events": r.events, "mean_ns_per_event": r.mean_ns_per_event,
                "details": details, "tables": r.status.tables, "origins": origins,
            })
        })
        .collect()
}

/// Drops from a plugin's details what a public document must not show,
/// whatever the plugin: error texts (keys `error`, `*_error`), paths and
/// digests (string values with a path separator, or 32+ hex digits).
/// Figures, states and names stay.
fn withhold_private(value: &mut Value) {
    let private_text = |t: &str| t.contains(['/', '\\']) || (t.len() >= 32 && t.bytes().all(|b| b.is_ascii_hexdigit()));
    match value {
        Value::Object(map) => {
            map.retain(|k, v| {
                let error_key = k == "error" || k.ends_with("_error");
                !error_key && !matches!(v, Value::String(t) if private_text(t))
            });
            map.values_mut().for_each(withhold_private);
        }
        Value::Array(items) => {
            items.retain(|v| !matches!(v, Value::String(t) if private_text(t)));
            items.iter_mut().for_each(withhold_private);
        }
        _ => {}
    }
}

/// Each output's delivery counters and backlog. Settings (hosts, user
/// names, indices; never secrets) only for a caller with a valid API key.
fn outputs(state: &AppState, with_key: bool) -> Value {
    crate::delivery::metrics_document(&state.delivery, state.engine.registry(), with_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_details_keep_figures_and_names_only() {
        let mut details = json!({
            "events": 12, "state": "loaded", "feed": "blocklist",
            "configured_module": "/etc/enrichd/rules/risk.wasm",
            "shadow": {"sha256": "ab".repeat(32), "events_compared": 3},
            "shadow_error": "shadow module missing.wasm: not found",
            "files": ["C:\\rules\\x.wasm", "name"],
            "error": "anything",
        });
        withhold_private(&mut details);
        assert_eq!(
            details,
            json!({"events": 12, "state": "loaded", "feed": "blocklist", "shadow": {"events_compared": 3}, "files": ["name"]})
        );
    }
}
