//! The `indicators` admin resource (`GET`/`PUT /v1/indicators`,
//! `DELETE /v1/indicators/{id}`): the API side of [`super::api_store`].
//!
//! Everything is validated before anything is stored (a refused `PUT`
//! stores nothing); the store file is reported as changed, so the server
//! reloads the `ti` stages that load it before answering.

use std::path::PathBuf;

use enrichd_engine::{AdminHandler, AdminMethod, AdminRequest, AdminResponse};
use serde_json::{json, Value};

use super::api_store::{self, ApiIndicator, NewIndicator};

/// Most indicators accepted in one `PUT`.
const MAX_INDICATORS_PER_PUT: usize = 10_000;

/// The handler of the `indicators` resource.
pub(crate) struct Indicators;

impl AdminHandler for Indicators {
    fn handle(&self, request: AdminRequest<'_>) -> AdminResponse {
        let path = api_store::path_in(request.state_dir);
        let answer = match (request.method, request.id) {
            (AdminMethod::List, _) => list(&path),
            (AdminMethod::Put, _) => put(path, request.body),
            (AdminMethod::Delete, Some(id)) => delete(path, id),
            (AdminMethod::Delete, None) => Err(AdminResponse::error(400, "missing_id", "no indicator id given")),
        };
        answer.unwrap_or_else(|refusal| refusal)
    }
}

fn store_error(e: std::io::Error) -> AdminResponse {
    tracing::error!(error = %e, "API indicator store");
    AdminResponse::error(500, "store_failed", "the indicator store could not be read or written")
}

fn list(path: &std::path::Path) -> Result<AdminResponse, AdminResponse> {
    let items = api_store::load(path).map_err(store_error)?;
    Ok(AdminResponse::ok(json!({ "count": items.len(), "indicators": items })))
}

/// Body: one indicator object, an array of them, or `{"indicators": [...]}`;
/// each is `{"indicator", "category"?, "confidence"?, "description"?}`.
fn put(path: PathBuf, body: &[u8]) -> Result<AdminResponse, AdminResponse> {
    let items = parse_new_indicators(body)?;
    let mut stored = api_store::load(&path).map_err(store_error)?;
    let (mut added, mut updated) = (0, 0);
    for item in &items {
        if api_store::upsert(&mut stored, item.clone()) {
            added += 1;
        } else {
            updated += 1;
        }
    }
    api_store::save(&path, &stored).map_err(store_error)?;
    let ids: Vec<Value> =
        items.iter().map(|i| json!({ "id": i.id, "indicator": i.indicator, "type": i.kind })).collect();
    Ok(AdminResponse::ok(json!({ "added": added, "updated": updated, "indicators": ids })).changed([path]))
}

fn delete(path: PathBuf, id: &str) -> Result<AdminResponse, AdminResponse> {
    let mut stored = api_store::load(&path).map_err(store_error)?;
    let Some(pos) = stored.iter().position(|i| i.id == id) else {
        return Err(AdminResponse::error(404, "not_found", format!("no API indicator with id {id:?}")));
    };
    let removed = stored.remove(pos);
    api_store::save(&path, &stored).map_err(store_error)?;
    Ok(AdminResponse::ok(json!({ "deleted": removed })).changed([path]))
}

fn parse_new_indicators(body: &[u8]) -> Result<Vec<ApiIndicator>, AdminResponse> {
    let bad_request = |code: &str, detail: String| AdminResponse::error(400, code, detail);
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request("invalid_json", format!("body is not valid JSON: {e}")))?;
    let list = match value {
        Value::Object(mut obj) if obj.contains_key("indicators") => match obj.remove("indicators") {
            Some(Value::Array(list)) => list,
            _ => return Err(bad_request("invalid_field", "`indicators` must be an array".into())),
        },
        Value::Array(list) => list,
        obj @ Value::Object(_) => vec![obj],
        _ => {
            return Err(bad_request(
                "invalid_body",
                "expected an indicator object, an array of them, or {\"indicators\": [...]}".into(),
            ))
        }
    };
    if list.is_empty() {
        return Err(bad_request("empty", "no indicator given".into()));
    }
    if list.len() > MAX_INDICATORS_PER_PUT {
        return Err(AdminResponse::error(
            413,
            "too_many_indicators",
            format!("{} indicators in one request; at most {MAX_INDICATORS_PER_PUT}", list.len()),
        ));
    }
    let now = enrichd_engine::rfc3339(std::time::SystemTime::now());
    list.into_iter()
        .enumerate()
        .map(|(index, item)| {
            let new: NewIndicator = serde_json::from_value(item).map_err(|e| {
                bad_request("invalid_indicator", format!("indicators[{index}]: {e}")).with(json!({ "index": index }))
            })?;
            new.normalize(now.clone()).map_err(|e| {
                bad_request("invalid_indicator", format!("indicators[{index}]: {e}"))
                    .with(json!({ "index": index, "field": "indicator" }))
            })
        })
        .collect()
}

/// `feed=NAME&top=N` (both optional; `top` 1 to 1000, default 20).
pub(super) fn hits_query(query: &str) -> Result<(Option<String>, usize), String> {
    let (mut feed, mut top) = (None, 20);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).ok_or_else(|| format!("`{key}` is not valid percent-encoded UTF-8"))?;
        match key {
            "feed" if !value.is_empty() => feed = Some(value),
            "feed" => {}
            "top" => {
                top = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or("`top` is a number from 1 to 1000")?
            }
            _ => return Err(format!("unknown parameter `{key}` (known: feed, top)")),
        }
    }
    Ok((feed, top))
}

/// `%XX` and `+` decoding of a query value.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(dir: &std::path::Path, method: AdminMethod, id: Option<&str>, body: &Value) -> AdminResponse {
        let body = serde_json::to_vec(body).unwrap();
        Indicators.handle(AdminRequest { method, id, body: &body, state_dir: dir })
    }

    #[test]
    fn put_list_delete_with_the_documented_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let bad =
            call(dir.path(), AdminMethod::Put, None, &json!([{"indicator": "1.2.3.4"}, {"indicator": "999.1.1.1"}]));
        assert_eq!((bad.status, &bad.body["index"], &bad.body["field"]), (400, &json!(1), &json!("indicator")));
        assert!(bad.changed.is_empty());
        let many: Vec<Value> = (0..=MAX_INDICATORS_PER_PUT).map(|_| json!({"indicator": "1.2.3.4"})).collect();
        assert_eq!(call(dir.path(), AdminMethod::Put, None, &json!(many)).status, 413);
        assert_eq!(call(dir.path(), AdminMethod::List, None, &Value::Null).body["count"], 0);

        let put = call(dir.path(), AdminMethod::Put, None, &json!({"indicators": [{"indicator": "10.0.0.1/8"}]}));
        assert_eq!((put.status, &put.body["added"]), (200, &json!(1)));
        assert_eq!(put.changed, vec![api_store::path_in(dir.path())]);
        let id = put.body["indicators"][0]["id"].as_str().unwrap().to_string();
        assert_eq!(
            call(dir.path(), AdminMethod::List, None, &Value::Null).body["indicators"][0]["indicator"],
            "10.0.0.0/8"
        );

        assert_eq!(call(dir.path(), AdminMethod::Delete, Some(&id), &Value::Null).status, 200);
        let gone = call(dir.path(), AdminMethod::Delete, Some(&id), &Value::Null);
        assert_eq!((gone.status, &gone.body["error"]), (404, &json!("not_found")));
    }
}
