//! `POST /v1/ingest`: read the body within limits, parse, enrich, answer.
//!
//! Order of checks: API key, the body's size, pace and encoding (see
//! `body.rs`), then the JSON checks of the engine's parser. A refused batch is refused whole:
//! the client gets a 4xx naming the problem and can resend it fixed.

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
/// key's in `[output] key_profiles`, else `[output] profile`).
#[derive(serde::Deserialize)]
pub(super) struct IngestQuery {
    profile: Option<String>,
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
    // The request's own choice, else its key's (`[output] key_profiles`),
    // else the default.
    let key_profile = state.key_profiles.iter().find(|(digest, _)| *digest == key.0).map(|(_, p)| p.clone());
    let encoding = match query.0.profile {
        None => Encoding::INGEST_RESPONSE.with_profile(key_profile.unwrap_or_else(|| state.profiles.1.clone())),
        Some(name) => Encoding::INGEST_RESPONSE
            .with_profile(state.profiles.0.get(&name).map_err(|e| ApiError::bad_request("unknown_profile", e))?),
    };
    let result = read_and_enrich(&state, &headers, body, arrived, encoding).await;
    if result.is_err() {
        state.metrics.record_rejected_batch();
    }
    result
}

async fn read_and_enrich(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
    arrived: Instant,
    encoding: Encoding,
) -> Result<Response, ApiError> {
    let body = super::body::read(state, headers, body).await?;

    let worker = state.clone();
    // Counted until enriched: waiting for a blocking thread, then running.
    let _queued = state.metrics.batch_in_flight();
    // Parsing and enrichment are CPU work: keep them off the I/O threads.
    let response = tokio::task::spawn_blocking(move || {
        let chain = worker.engine.chain();
        // Enrichment roughly doubles a typical record; one growth at most.
        let mut out = Vec::with_capacity(body.len() * 2 + 4096);
        worker.pipeline.run(&chain, Input::Envelope(body), encoding, arrived, &mut out)?;
        Ok::<_, ApiError>(out)
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
    Ok(([(header::CONTENT_TYPE, "application/json")], response).into_response())
}
