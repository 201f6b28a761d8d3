//! The live dashboard served at `/`.
//!
//! Three small files (HTML, JS, CSS) and an icon, embedded in the binary so
//! the dashboard works offline, behind an air gap and from the binary alone:
//! no CDN, no build step, no framework. The page reads the same public API
//! as any client (`/v1/stream`, falling back to `/v1/metrics`), so it has
//! no privileged path into the server.
//!
//! Every response carries a strict Content-Security-Policy: scripts and
//! styles only from this origin (no inline code, no `eval`), connections
//! only back to this origin, no framing. Untrusted strings from events
//! (addresses, reasons, indicators) are written with `textContent`, and the
//! CSP is the second line of defence if that ever slips.
//!
//! Caching: `no-cache` plus a content-hash `ETag`, so a browser revalidates
//! with a cheap 304 and never runs a stale script after an upgrade.

use std::sync::LazyLock;

use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// `default-src 'none'` denies everything not listed. `connect-src 'self'`
/// lets the page reach only its own server.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    etag: LazyLock<HeaderValue>,
}

macro_rules! asset {
    ($file:literal, $type:literal) => {
        Asset {
            body: include_bytes!(concat!("assets/", $file)),
            content_type: $type,
            etag: LazyLock::new(|| etag(include_bytes!(concat!("assets/", $file)))),
        }
    };
}

static INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");
static APP_JS: Asset = asset!("app.js", "text/javascript; charset=utf-8");
static APP_CSS: Asset = asset!("app.css", "text/css; charset=utf-8");
static ICON: Asset = asset!("icon.svg", "image/svg+xml");

/// The dashboard's routes; merged into the API router, state-agnostic.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|h: HeaderMap| async move { serve(&INDEX, &h) }))
        .route("/assets/app.js", get(|h: HeaderMap| async move { serve(&APP_JS, &h) }))
        .route("/assets/app.css", get(|h: HeaderMap| async move { serve(&APP_CSS, &h) }))
        .route("/assets/icon.svg", get(|h: HeaderMap| async move { serve(&ICON, &h) }))
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = &*asset.etag;
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag.to_str().unwrap_or_default()));
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, etag.clone()),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    if fresh {
        (StatusCode::NOT_MODIFIED, headers).into_response()
    } else {
        (headers, asset.body).into_response()
    }
}

/// A strong validator from the content (FNV-1a 64; collisions would only
/// cost a stale cache entry, and the content is ours, not an attacker's).
fn etag(body: &[u8]) -> HeaderValue {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    HeaderValue::from_str(&format!("\"{hash:016x}\"")).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_changes_with_content() {
        assert_ne!(etag(b"a"), etag(b"b"));
        assert_eq!(etag(b"a"), etag(b"a"));
    }

    #[test]
    fn index_references_only_embedded_assets() {
        let html = std::str::from_utf8(INDEX.body).unwrap();
        for path in ["/assets/app.js", "/assets/app.css", "/assets/icon.svg"] {
            assert!(html.contains(path), "index.html should load {path}");
        }
        // Nothing from another origin, nothing inline the CSP would block.
        assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"));
        assert!(!html.contains("<script>") && !html.contains("style="));
    }
}
