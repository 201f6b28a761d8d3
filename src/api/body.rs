//! Reading request bodies, the same way for every endpoint that takes one:
//! `server.max_body_bytes` on the declared length, on the bytes actually
//! received (chunked bodies too) and again after gzip decompression (against
//! bombs); `server.body_timeout_s` between two pieces of body (a stalled
//! upload gets 408 and the connection is closed). Every refusal is JSON.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

use super::{ApiError, AppState};

/// The request body, decoded (`Content-Encoding: gzip` or identity).
pub(super) async fn read(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
    let server = &state.config.server;
    let max = server.max_body_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max, "request body", declared));
    }
    let raw = read_limited(body, max, declared, Duration::from_secs(server.body_timeout_s)).await?;
    decode_content(headers, raw, max)
}

/// Reads at most `max` bytes of body, counting what actually arrives and
/// waiting at most `timeout` for each piece.
async fn read_limited(
    mut body: Body,
    max: usize,
    declared: Option<u64>,
    timeout: Duration,
) -> Result<Vec<u8>, ApiError> {
    let mut buf = Vec::with_capacity(declared.map_or(64 * 1024, |n| n as usize).min(max));
    loop {
        let frame = match tokio::time::timeout(timeout, body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "no request body data for {} s (server.body_timeout_s) after {} bytes; closing the connection",
                        timeout.as_secs(),
                        buf.len()
                    ),
                )
                .with(json!({ "limit_s": timeout.as_secs(), "received_bytes": buf.len() })))
            }
        };
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
        Some("gzip") | Some("x-gzip") => enrichd_engine::limits::gunzip_capped(&raw, max).map_err(|e| match e {
            Some(e) => ApiError::bad_request("decompress_failed", format!("gzip body could not be decompressed: {e}")),
            None => too_large(max, "decompressed request body", None),
        }),
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
