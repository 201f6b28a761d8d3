//! `POST /v1/ingest`: read the body within limits, parse, enrich, queue
//! for every enabled output, answer.
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

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use enrichd_engine::{Encoding, Input};

use super::{ApiError, AppState};

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
    let key = state.keys.check(&headers)?;
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

    let worker = state.clone();
    let outputs = state.delivery.active();
    // Counted until enriched: waiting for a blocking thread, then running.
    let _queued = state.metrics.batch_in_flight();
    // Parsing, enrichment and spool appends are CPU and disk work: keep
    // them off the I/O threads.
    let (response, events, admitted) = tokio::task::spawn_blocking(move || {
        let chain = worker.engine.chain();
        // The client's answer (unless async), then one NDJSON layout per
        // distinct output profile.
        let mut encodings = Vec::with_capacity(1 + outputs.len());
        if !respond_async {
            encodings.push(encoding);
        }
        let first_output = encodings.len();
        let mut layout_of = Vec::with_capacity(outputs.len());
        for o in outputs.iter() {
            let same = encodings[first_output..].iter().position(|e| same_profile(&e.profile, &o.profile));
            layout_of.push(
                first_output
                    + same.unwrap_or_else(|| {
                        encodings.push(Encoding::NDJSON.with_profile(o.profile.clone()));
                        encodings.len() - first_output - 1
                    }),
            );
        }
        // Enrichment roughly doubles a typical record; one growth at most.
        let mut outs: Vec<Vec<u8>> = encodings.iter().map(|_| Vec::with_capacity(body.len() * 2 + 4096)).collect();
        let processed = worker.pipeline.run_many(&chain, Input::Envelope(body), &encodings, arrived, &mut outs)?;
        let admitted = if outputs.is_empty() || processed.events == 0 {
            None
        } else {
            let payloads: Vec<&[u8]> = layout_of.iter().map(|&i| outs[i].as_slice()).collect();
            let events = u32::try_from(processed.events).unwrap_or(u32::MAX);
            Some(crate::delivery::submit(outputs.clone(), &payloads, events).map_err(refused)?)
        };
        let response = if respond_async { Vec::new() } else { outs.swap_remove(0) };
        Ok::<_, ApiError>((response, processed.events, admitted))
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "ingest worker failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "enrichment failed; the batch was not processed",
        )
    })??;
    if let Some(admitted) = &admitted {
        admitted.wait_acks().await.map_err(|output| {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "delivery_timeout",
                format!(
                    "output {output:?} did not confirm delivery within {} ms; the events stay queued and will \
                     still be delivered (resending duplicates them)",
                    admitted.ack_timeout().as_millis()
                ),
            )
        })?;
    }
    if respond_async {
        let names: Vec<&str> =
            admitted.as_ref().map_or(Vec::new(), |a| a.active.iter().map(|o| o.lane.name.as_str()).collect());
        let body = serde_json::json!({ "accepted": events, "outputs": names });
        return Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response());
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], response).into_response())
}

fn same_profile(a: &Option<Arc<enrichd_engine::Profile>>, b: &Option<Arc<enrichd_engine::Profile>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// A full backlog: 503 with `Retry-After`, naming the output.
fn refused(r: crate::delivery::Refused) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "output_backlog_full", r.message)
        .with(serde_json::json!({ "output": r.output, "retry_after_s": r.retry_after_secs }))
        .retry_after(r.retry_after_secs)
}
