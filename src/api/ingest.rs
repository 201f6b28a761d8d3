//! `POST /v1/ingest`: read the body within limits, parse, enrich, answer.
//!
//! Order of checks: API key, declared size, received size (counted on the
//! bytes actually read, so chunked bodies are limited too), decompression
//! (the limit applies again to the inflated size, against gzip bombs), then
//! the JSON checks of the engine's parser. A refused batch is refused whole:
//! the client gets a 4xx naming the problem and can resend it fixed.

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use enrichd_engine::{Encoding, Input};
use http_body_util::BodyExt;
use serde_json::json;

use super::{ApiError, AppState};

pub async fn ingest(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    // Lag is measured from here: before the body is read.
    let arrived = Instant::now();
    state.keys.check(&headers)?;
    let result = read_and_enrich(&state, &headers, body, arrived).await;
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
) -> Result<Response, ApiError> {
    let max = state.config.server.max_body_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max, "request body", declared));
    }
    let raw = read_limited(body, max, declared).await?;
    let body = decode_content(headers, raw, max)?;

    let worker = state.clone();
    // Counted until enriched: waiting for a blocking thread, then running.
    let _queued = state.metrics.batch_in_flight();
    // Parsing and enrichment are CPU work: keep them off the I/O threads.
    let response = tokio::task::spawn_blocking(move || {
        let chain = worker.engine.chain();
        // Enrichment roughly doubles a typical record; one growth at most.
        let mut out = Vec::with_capacity(body.len() * 2 + 4096);
        worker.pipeline.run(&chain, Input::Envelope(body), Encoding::IngestResponse, arrived, &mut out)?;
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

/// Reads at most `max` bytes of body, counting what actually arrives.
async fn read_limited(mut body: Body, max: usize, declared: Option<u64>) -> Result<Vec<u8>, ApiError> {
    let mut buf = Vec::with_capacity(declared.map_or(64 * 1024, |n| n as usize).min(max));
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::bad_request("body_read_failed", format!("could not read request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(too_large(max, "request body", None));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// Undoes `Content-Encoding: gzip`, holding the inflated size to `max`.
fn decode_content(headers: &HeaderMap, raw: Vec<u8>, max: usize) -> Result<Vec<u8>, ApiError> {
    let encoding = headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(raw),
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::with_capacity((raw.len() * 4).min(max));
            flate2::read::MultiGzDecoder::new(&raw[..]).take(max as u64 + 1).read_to_end(&mut out).map_err(|e| {
                ApiError::bad_request("decompress_failed", format!("gzip body could not be decompressed: {e}"))
            })?;
            if out.len() > max {
                return Err(too_large(max, "decompressed request body", None));
            }
            Ok(out)
        }
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!("Content-Encoding {other:?} is not supported (use gzip or identity)"),
        )),
    }
}

fn too_large(max: usize, what: &str, declared: Option<u64>) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large", format!("{what} exceeds {max} bytes"))
        .with(json!({ "limit_bytes": max, "declared_bytes": declared }))
}
