//! `GET /v1/tap`: a sampled live stream of enriched events (see
//! [`crate::tap`]), as NDJSON or, with `Accept: text/event-stream` or
//! `?format=sse`, as server-sent events. Needs an API key: it shows event
//! content.
//!
//! Query: `has=PATH` (repeatable), `where=PATH=VALUE` (repeatable),
//! `min_risk=N`, `matched=true`, `rate=N` events/s (default 10, at most
//! 1000), `limit=N` events then the stream ends, `format=ndjson|sse`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};

use super::{ApiError, AppState};
use crate::tap::{Subscription, TapFilter, MAX_RATE, MAX_WATCHERS};

const DEFAULT_RATE: u32 = 10;

struct TapQuery {
    filter: TapFilter,
    rate: u32,
    limit: Option<u64>,
    sse: Option<bool>,
}

fn bad(param: &str, detail: String) -> ApiError {
    ApiError::bad_request("invalid_query", detail).with(serde_json::json!({ "param": param }))
}

fn parse_query(raw: Option<&str>) -> Result<TapQuery, ApiError> {
    let mut q = TapQuery { filter: TapFilter::default(), rate: DEFAULT_RATE, limit: None, sse: None };
    let pairs = url_pairs(raw.unwrap_or(""));
    for (key, value) in pairs {
        let number = |max: u64| {
            value.parse::<u64>().ok().filter(|n| *n <= max).ok_or_else(|| {
                bad(&key, format!("`{key}` must be a whole number from 0 to {max}, not {:?}", shorten(&value)))
            })
        };
        match key.as_str() {
            "has" if !value.is_empty() => q.filter.has.push(value.clone()),
            "where" => {
                let (path, want) = value
                    .split_once('=')
                    .filter(|(p, _)| !p.is_empty())
                    .ok_or_else(|| bad("where", "`where` takes PATH=VALUE, e.g. where=geo.country=SE".into()))?;
                q.filter.equals.push((path.to_string(), want.to_string()));
            }
            "min_risk" => q.filter.min_score = Some(number(100)? as u32),
            "matched" => {
                q.filter.matched = match value.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad("matched", "`matched` is true or false".into())),
                }
            }
            "rate" => q.rate = (number(u64::from(MAX_RATE))? as u32).max(1),
            "limit" => q.limit = Some(number(u64::MAX)?),
            "format" => {
                q.sse = Some(match value.as_str() {
                    "sse" => true,
                    "ndjson" => false,
                    _ => return Err(bad("format", "`format` is ndjson or sse".into())),
                })
            }
            _ => {
                return Err(bad(
                    &key,
                    format!(
                        "unknown parameter {:?}: has, where, min_risk, matched, rate, limit, format",
                        shorten(&key)
                    ),
                ))
            }
        }
    }
    Ok(q)
}

fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

/// `a=1&b=x%20y` into decoded pairs (`+` is a space, as in forms).
fn url_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| Some(hex(bytes[i + 1])? << 4 | hex(bytes[i + 2])?))
            .flatten();
        match (bytes[i], escaped) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How often an open tap checks that its key is still valid.
const KEY_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The subscription as a stream of lines, ending at `limit`, at shutdown,
/// or within [`KEY_RECHECK`] of its key being removed (a reload that
/// rotates a key must also stop what that key was watching).
fn lines(
    state: Arc<AppState>,
    headers: HeaderMap,
    sub: Subscription,
    limit: Option<u64>,
) -> impl Stream<Item = Vec<u8>> {
    let shutdown = state.shutdown.subscribe();
    let recheck = tokio::time::interval(KEY_RECHECK);
    let open = (state, headers, sub, shutdown, recheck, 0u64);
    stream::unfold(open, move |(state, headers, mut sub, mut shutdown, mut recheck, sent)| async move {
        if limit.is_some_and(|l| sent >= l) {
            return None;
        }
        let line = loop {
            tokio::select! {
                line = sub.events.recv() => break line?,
                _ = shutdown.wait_for(|stopping| *stopping) => return None,
                _ = recheck.tick() => {
                    if state.require(&headers, crate::service::Scope::Read).is_err() {
                        return None;
                    }
                }
            }
        };
        Some((line, (state, headers, sub, shutdown, recheck, sent + 1)))
    })
}

pub(super) async fn tap(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    state.require(&headers, crate::service::Scope::Read)?;
    let q = parse_query(raw.as_deref())?;
    let wants_sse = q.sse.unwrap_or_else(|| {
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/event-stream"))
    });
    let Some(sub) = state.tap.subscribe(q.filter, q.rate) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_watchers",
            format!("at most {MAX_WATCHERS} taps at once; close one and retry"),
        )
        .retry_after(5));
    };
    let lines = lines(state, headers, sub, q.limit);
    if wants_sse {
        let events =
            lines.map(|line| Ok::<_, Infallible>(Event::default().event("event").data(String::from_utf8_lossy(&line))));
        return Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response());
    }
    let body = lines.map(|mut line| {
        line.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(line))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded_and_checked() {
        let q = parse_query(Some("has=geo.country&where=ti.matches.0.type%3Dsubnet&min_risk=70&rate=5&limit=3"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(q.filter.has, ["geo.country"]);
        assert_eq!(q.filter.equals, [("ti.matches.0.type".to_string(), "subnet".to_string())]);
        assert_eq!((q.filter.min_score, q.rate, q.limit), (Some(70), 5, Some(3)));
        for bad in ["min_risk=101", "rate=5000", "where=novalue", "matched=maybe", "format=xml", "nope=1"] {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(decode("a%20b+c%zz%"), "a b c%zz%");
        assert_eq!(decode("%C3%A9t%C3%A9%2"), "été%2");
    }
}
