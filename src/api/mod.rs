//! The `/v1` HTTP API: thin axum handlers over the engine.
//!
//! State is passed explicitly ([`AppState`], which lives in
//! [`crate::service`]: reload and the watcher use it too); the handlers parse, call the
//! engine and write the answer. Cross-cutting rules live in one middleware:
//! every response gets `X-Request-ID` (the client's, when it sent a sane
//! one), every `/v1` response gets `X-API-Version`, and every request is
//! counted by status class.

mod admin;
mod body;
mod error;
mod info;
mod ingest;
mod live;
mod openapi;
mod outputs;
mod page;
mod sources;
mod stages;
mod tap;
mod updates;
mod views;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

pub(crate) use crate::service::AppState;
pub(crate) use error::ApiError;

use crate::metrics::RouteGroup;

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const API_VERSION: HeaderName = HeaderName::from_static("x-api-version");

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1", get(info::index))
        .merge(crate::dashboard::routes())
        .route("/v1/health", get(info::health))
        .route("/v1/health/details", get(info::health_details))
        .route("/v1/enrichers", get(info::enrichers))
        .route("/v1/version", get(info::version))
        .route("/v1/schema", get(info::schema_index))
        .route("/v1/schema/{name}", get(info::schema_document))
        .route(
            "/v1/openapi.json",
            get(|State(state): State<Arc<AppState>>| async move { Json(openapi::document(&state)) }),
        )
        .route("/v1/metrics", get(live::metrics))
        .route("/v1/stream", get(live::stream))
        .route("/v1/tap", get(tap::tap))
        .route("/metrics", get(live::prometheus))
        .route("/v1/lookup", post(info::lookup))
        .route("/v1/ingest", post(ingest::ingest))
        .route("/v1/outputs", get(outputs::list))
        .route("/v1/outputs/test", post(outputs::test))
        .route("/v1/outputs/{name}", get(outputs::show).put(outputs::set).post(outputs::set).delete(outputs::remove))
        .route("/v1/outputs/{name}/deadletter", get(outputs::deadletter))
        .route("/v1/outputs/{name}/deadletter/replay", post(outputs::replay))
        .route("/v1/sources", get(sources::list))
        .route("/v1/sources/{name}/deadletter", get(sources::deadletter))
        .route("/v1/updates", get(updates::list))
        .route("/v1/updates/{name}/run", post(updates::run))
        .route("/v1/reload", post(admin::reload))
        .route("/v1/audit", get(admin::audit))
        .merge(admin::routes(&state))
        .merge(views::routes(&state))
        .merge(stages::routes(&state))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), common_headers))
        .with_state(state)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

async fn common_headers(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| is_sane_request_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(new_request_id);
    let is_v1 = request.uri().path().starts_with("/v1/");
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = std::time::Instant::now();
    // Only a key that is valid is named in the access log (by its id).
    let key_id = state.config.server.access_log.then(|| state.caller(request.headers())).flatten();
    let group = route_group(&path);
    let response = match rate_limited(&state, &request, group) {
        Some(refusal) => refusal.into_response(),
        None => next.run(request).await.into_response(),
    };
    let mut response = json_refusal(response, &method, &path).await;
    state.metrics.record_request(group, response.status().as_u16());
    if state.config.server.access_log {
        tracing::info!(
            target: "enrichd::access",
            method = %method,
            path = %path,
            route = group.label(),
            status = response.status().as_u16(),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            request_id = request_id.to_str().unwrap_or(""),
            key_id = key_id.map(|k| k.id()).unwrap_or_default(),
            "request"
        );
    }
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID, request_id);
    if is_v1 {
        headers.insert(API_VERSION, state.api_version.clone());
    }
    response
}

/// Every refusal is JSON: answers that axum makes itself (405 with an
/// empty body, a path parameter it cannot parse, ...) are rewritten in the
/// `{"error", "detail"}` shape, keeping their headers (`Allow`, ...).
async fn json_refusal(response: Response, method: &axum::http::Method, path: &str) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal_error",
        _ => "refused",
    };
    let detail = match (status, text.is_empty()) {
        // axum adds the `Allow` header after this layer has run.
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            format!("method {method} is not allowed on {path}; the Allow header lists those that are")
        }
        (_, false) => text,
        (_, true) => status.canonical_reason().unwrap_or("refused").to_string(),
    };
    let mut answer = ApiError::new(status, code, detail).into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            answer.headers_mut().append(name, value.clone());
        }
    }
    answer
}

/// A 429 for a request over its key's or address's rate, if limits are set.
fn rate_limited(state: &AppState, request: &Request, group: RouteGroup) -> Option<ApiError> {
    if !state.rate_limits.enabled() {
        return None;
    }
    let headers = request.headers();
    let key = state.caller(headers);
    // Probes and scrapers are not held to an address's budget, unless
    // they present a key that is not one: `/v1/health/details` and the
    // metrics check keys, and wrong ones must not be guessed at full speed.
    // (Plain `/v1/health` checks no key: a header an ingress adds there,
    // Basic auth say, is not a guess.)
    let presented = headers.contains_key(axum::http::header::AUTHORIZATION) || headers.contains_key("x-api-key");
    let checks_keys = request.uri().path() != "/v1/health";
    let probe =
        matches!(group, RouteGroup::Health | RouteGroup::Metrics) && (key.is_some() || !presented || !checks_keys);
    let address = (!probe).then(|| client_address(state, request)).flatten();
    let (by, wait) = state.rate_limits.check(key.as_ref().map(|k| &k.0), address).err()?;
    let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
    Some(
        ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests for this {}: retry in {retry_after} s", by.label()),
        )
        .with(serde_json::json!({ "limited_by": by.label(), "retry_after_s": retry_after }))
        .retry_after(retry_after),
    )
}

/// The client's address: the TCP peer's, or the one a trusted proxy's
/// forwarding header names (`[server] trusted_proxies`). The only place the
/// API reads the peer, so a limit or a log line keyed by the client cannot
/// be keyed by the proxy by mistake.
pub(crate) fn client_address(state: &AppState, request: &Request) -> Option<std::net::IpAddr> {
    let peer = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()?.0.ip();
    Some(state.config.server.trusted_proxies.client(peer, request.headers()))
}

/// The group a path's requests are counted in (`telemetry_requests_total`).
fn route_group(path: &str) -> RouteGroup {
    let under = |prefix: &str| path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'));
    match path {
        "/v1/ingest" => RouteGroup::Ingest,
        "/metrics" | "/v1/metrics" | "/v1/stream" => RouteGroup::Metrics,
        "/" => RouteGroup::Dashboard,
        _ if under("/v1/health") => RouteGroup::Health,
        _ if under("/v1/outputs") => RouteGroup::Outputs,
        _ if under("/assets") => RouteGroup::Dashboard,
        _ if under("/v1") => RouteGroup::Api,
        _ => RouteGroup::Other,
    }
}

/// Echo only IDs that are short and printable: a log-correlation ID, not a
/// place to smuggle arbitrary bytes into our logs.
fn is_sane_request_id(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
}

fn new_request_id() -> HeaderValue {
    HeaderValue::from_str(&uuid::Uuid::new_v4().simple().to_string()).expect("hex is a valid header value")
}
