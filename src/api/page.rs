//! The paging query of the dead-letter listings (`GET
//! /v1/outputs/{name}/deadletter`, `GET /v1/sources/{name}/deadletter`):
//! one shape for both, unknown keys refused (a misspelt `limt=` would
//! otherwise silently answer the default page).

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use serde_json::{json, Value};

use super::ApiError;

/// Most records one page answers with.
pub(super) const MAX_LIMIT: usize = 1000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Page {
    #[serde(default)]
    pub offset: usize,
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_limit() -> usize {
    100
}

impl Page {
    /// The query, or a 400 naming what is wrong with it; `limit` clamped to
    /// 1..=[`MAX_LIMIT`].
    pub(super) fn from_query(query: Result<Query<Page>, QueryRejection>) -> Result<Page, ApiError> {
        let Query(page) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
        Ok(Page { limit: page.limit.clamp(1, MAX_LIMIT), ..page })
    }

    /// The query parameters as OpenAPI describes them.
    pub(super) fn parameters() -> Vec<Value> {
        vec![
            json!({ "name": "offset", "in": "query", "required": false,
                    "schema": { "type": "integer", "minimum": 0, "default": 0 } }),
            json!({ "name": "limit", "in": "query", "required": false,
                    "schema": { "type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100 } }),
        ]
    }
}
