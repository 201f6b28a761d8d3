//! JSON error answers: `{"error": "<code>", "detail": "<what and where>", ...}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use enrichd_engine::InputError;
use serde_json::{json, Value};

#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Extra members merged into the body (record index, field, limits).
    pub extra: Value,
    /// `Retry-After` seconds (503s).
    pub retry_after: Option<u64>,
}

impl From<crate::service::KeyRefusal> for ApiError {
    fn from(refusal: crate::service::KeyRefusal) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", refusal.0)
    }
}

impl From<crate::service::auth::Refusal> for ApiError {
    fn from(refusal: crate::service::auth::Refusal) -> Self {
        use crate::service::auth::{Refusal, Scope};
        match refusal {
            Refusal::Key(refusal) => refusal.into(),
            Refusal::Scope(s) => {
                let scope = s.0;
                let (code, detail) = match scope {
                    Scope::Admin => (
                        "admin_key_required",
                        "this API key may not change configuration: use a key with the admin scope \
                         (auth.admin_keys, ADMIN_API_KEY or [[auth.keys]])",
                    ),
                    Scope::Ingest => ("scope_required", "this API key may not send events: it lacks the ingest scope"),
                    Scope::Read => ("scope_required", "this API key may not read this: it lacks the read scope"),
                };
                ApiError::new(StatusCode::FORBIDDEN, code, detail).with(json!({ "required_scope": scope.label() }))
            }
        }
    }
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError { status, code, detail: detail.into(), extra: Value::Null, retry_after: None }
    }

    pub(crate) fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub(crate) fn with(mut self, extra: Value) -> Self {
        self.extra = extra;
        self
    }

    pub(crate) fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        let status = match e {
            InputError::TooManyRecords { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        let extra = match &e {
            InputError::Record { index, field, .. } => json!({ "record_index": index, "field": field }),
            InputError::Field { field, .. } => json!({ "field": field }),
            InputError::TooManyRecords { count, max } => json!({ "limit": max, "observed": count }),
            _ => Value::Null,
        };
        ApiError { status, code: e.code(), detail: e.to_string(), extra, retry_after: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.code, "detail": self.detail });
        if let (Some(obj), Value::Object(extra)) = (body.as_object_mut(), self.extra) {
            obj.extend(extra);
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a stalled body is not worth waiting for.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
