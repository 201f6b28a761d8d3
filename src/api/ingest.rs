//! `POST /v1/ingest`: read the body within limits, then the service's one
//! ingest step (`service::ingest`: parse, enrich, queue for every enabled
//! output, the same one `[[source]]` entries use), answer.
//!
//! Order of checks: API key, the body's size, pace and encoding (see
//! `body.rs`), then the JSON checks of the engine's parser, then admission
//! to the outputs. A refused batch is refused whole: the client gets a 4xx
//! naming the problem (or a 503 with `Retry-After` when an output's
//! backlog is full) and can resend it; nothing of it was queued.
//!
//! The answer comes once the batch is as safe as each output's durability
//! says: in its spool (fsync'd), in its memory queue, or — `ack` outputs —
//! delivered. `?mode=async` or `Prefer: respond-async` answers 202 with
//! counts instead of the enriched records.
//!
//! With `[ingest] forward` the batch is checked the same way and then
//! published raw to the forwarding target (`service::forward`) instead of
//! enriched; the answer waits for the queue's acknowledgement.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use enrichd_engine::{Encoding, Input};

use super::{ApiError, AppState};
use crate::service::ingest::{self as core, IngestError};

/// `?profile=<name>`: the output profile for this request (default: the
/// key's in `[profiles] key_profiles`, else `[profiles] default`).
#[derive(serde::Deserialize)]
pub(super) struct IngestQuery {
    profile: Option<String>,
    /// `async`: answer 202 without the records.
    mode: Option<String>,
}

pub(super) async fn ingest(
    State(state): State<Arc<AppState>>,
    query: Result<Query<IngestQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Lag is measured from here: before the body is read.
    let arrived = Instant::now();
    let key = state.require(&headers, crate::service::Scope::Ingest)?;
    let query = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    // The request's own choice, else its key's (`[profiles] key_profiles`),
    // else the default.
    let key_profile = state.key_profiles.iter().find(|(digest, _)| *digest == key.0).map(|(_, p)| p.clone());
    let encoding = match query.0.profile {
        None => Encoding::INGEST_RESPONSE.with_profile(key_profile.unwrap_or_else(|| state.profiles.1.clone())),
        Some(name) => Encoding::INGEST_RESPONSE
            .with_profile(state.profiles.0.get(&name).map_err(|e| ApiError::bad_request("unknown_profile", e))?),
    };
    let respond_async = match query.0.mode.as_deref() {
        None | Some("sync") => prefers_async(&headers),
        Some("async") => true,
        Some(other) => {
            return Err(ApiError::bad_request("invalid_query", format!("mode={other:?}: use `sync` or `async`")))
        }
    };
    let result = read_and_enrich(&state, &headers, body, arrived, encoding, respond_async).await;
    if result.is_err() {
        state.metrics.record_rejected_batch();
    }
    result
}

/// `Prefer: respond-async` (RFC 7240), in any of the header's values.
fn prefers_async(headers: &HeaderMap) -> bool {
    headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').any(|p| p.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("respond-async")))
    })
}

async fn read_and_enrich(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
    arrived: Instant,
    encoding: Encoding,
    respond_async: bool,
) -> Result<Response, ApiError> {
    let body = super::body::read(state, headers, body).await?;
    if let Some(forwarding) = state.forward.get().and_then(Option::as_ref) {
        return forward(state, forwarding, body).await;
    }
    let respond = (!respond_async).then_some(encoding);
    let done = core::ingest(state, Input::Envelope(body), arrived, respond, None, core::AckWait::Timeout)
        .await
        .map_err(|e| match e {
            IngestError::BadInput(e) => ApiError::from(e),
            IngestError::Backpressure(r) => refused(r),
            IngestError::AckTimeout { output, timeout } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "delivery_timeout",
                format!(
                    "output {output:?} did not confirm delivery within {} ms; the events stay queued and will \
                 still be delivered (resending duplicates them)",
                    timeout.as_millis()
                ),
            ),
            IngestError::Internal => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "enrichment failed; the batch was not processed",
            ),
        })?;
    if respond_async {
        let body = serde_json::json!({ "accepted": done.events, "outputs": done.outputs });
        return Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response());
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], done.response).into_response())
}

/// `[ingest] forward`: the batch is decoded with the chain's parser (the
/// same 4xx as enriching would give, here at the edge), then published raw;
/// 200 only once the queue acknowledged it.
async fn forward(
    state: &Arc<AppState>,
    forwarding: &crate::service::forward::Forwarding,
    body: Vec<u8>,
) -> Result<Response, ApiError> {
    use enrichd_engine::forward::{ForwardError, RawBatch};
    use std::sync::atomic::Ordering::Relaxed;
    let worker = state.clone();
    // Parsing is CPU work: off the I/O threads, like enrichment.
    let (body, events) = tokio::task::spawn_blocking(move || {
        let chain = worker.engine.chain();
        let batch = worker.pipeline.decode(&chain, Input::Envelope(body.clone()))?;
        Ok::<_, enrichd_engine::InputError>((body, batch.len()))
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "decoding the batch failed"))?
    .map_err(ApiError::from)?;
    match forwarding.forwarder.forward(RawBatch { body: &body, events }).await {
        Ok(()) => {
            forwarding.batches.fetch_add(1, Relaxed);
            forwarding.events.fetch_add(events as u64, Relaxed);
            let answer = serde_json::json!({ "accepted": events, "forwarded": forwarding.name });
            Ok((StatusCode::OK, axum::Json(answer)).into_response())
        }
        Err(e) => {
            forwarding.failed.fetch_add(1, Relaxed);
            Err(match e {
                ForwardError::TooLarge(message) => {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "forward_too_large", message)
                        .with(serde_json::json!({ "forward": forwarding.name }))
                }
                ForwardError::Unavailable(message) => {
                    tracing::warn!(forward = %forwarding.name, error = %message, "forwarding a batch");
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "forward_unavailable", message)
                        .with(serde_json::json!({ "forward": forwarding.name, "retry_after_s": 1 }))
                        .retry_after(1)
                }
            })
        }
    }
}

/// A full backlog, or an output that could not queue: 503 with
/// `Retry-After`, naming the output (and, when others took the batch
/// anyway, those: a resend reaches them twice).
fn refused(r: crate::delivery::Refused) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, r.code, r.message)
        .with(
            serde_json::json!({ "output": r.output, "retry_after_s": r.retry_after_secs, "queued_for": r.queued_for }),
        )
        .retry_after(r.retry_after_secs)
}
