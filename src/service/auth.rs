//! API-key checks.
//!
//! Kept out of the HTTP layer: a refusal is a [`KeyRefusal`], which the API
//! turns into its 401 answer (`From<KeyRefusal> for ApiError`).
//!
//! Keys are compared as SHA-256 digests with a constant-time equality, and
//! every configured key is compared on every request (no early exit), so
//! neither the key's content nor its length leaks through timing. Keys are
//! never logged or echoed.

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why a request's key was refused (a fixed message, never the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyRefusal(pub &'static str);

/// The SHA-256 of an accepted API key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    /// What logs name a key by: the first 12 hex digits of its SHA-256
    /// (`printf %s "$KEY" | sha256sum` on the operator's side), never the
    /// key.
    pub(crate) fn id(&self) -> String {
        self.0[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

pub(crate) struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    pub(crate) fn new(keys: &[String]) -> Self {
        ApiKeys { digests: keys.iter().filter(|k| !k.is_empty()).map(|k| digest(k.as_bytes())).collect() }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Accepts `Authorization: Bearer <key>` (scheme case-insensitive) or
    /// `X-API-Key: <key>`; returns the accepted key's SHA-256 (what
    /// per-key settings are keyed by, never the key).
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<KeyDigest, KeyRefusal> {
        let presented = bearer(headers).or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
        let Some(presented) = presented.map(str::trim).filter(|k| !k.is_empty()) else {
            return Err(unauthorized("missing API key: send `Authorization: Bearer <key>`"));
        };
        let presented = digest(presented.as_bytes());
        let mut ok = subtle::Choice::from(0u8);
        for d in &self.digests {
            ok |= d.ct_eq(&presented);
        }
        if bool::from(ok) {
            Ok(KeyDigest(presented))
        } else {
            Err(unauthorized("invalid API key"))
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn unauthorized(detail: &'static str) -> KeyRefusal {
    KeyRefusal(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    #[test]
    fn accepts_only_configured_keys() {
        let keys = ApiKeys::new(&["alpha".into(), "beta".into()]);
        assert!(keys.check(&headers("authorization", "Bearer beta")).is_ok());
        assert!(keys.check(&headers("authorization", "bearer alpha")).is_ok());
        assert!(keys.check(&headers("x-api-key", "alpha")).is_ok());
        assert!(keys.check(&headers("authorization", "Bearer alph")).is_err());
        assert!(keys.check(&headers("authorization", "Bearer alphaa")).is_err());
        assert!(keys.check(&headers("authorization", "Basic alpha")).is_err());
        assert!(keys.check(&HeaderMap::new()).is_err());
    }

    #[test]
    fn no_configured_key_refuses_everyone() {
        let keys = ApiKeys::new(&[String::new()]);
        assert!(keys.is_empty());
        assert!(keys.check(&headers("authorization", "Bearer ")).is_err());
        assert!(keys.check(&headers("authorization", "Bearer anything")).is_err());
    }
}
