//! API keys and what each may do.
//!
//! Kept out of the HTTP layer: a refusal is a [`KeyRefusal`] (401) or a
//! [`ScopeRefusal`] (403), which the API turns into its answers.
//!
//! Every key is held as its SHA-256 digest only: keys given in the file or
//! the environment are hashed at load, and `[[auth.keys]]` entries can hold
//! just the digest (`sha256`), so `config.toml` need not contain a secret.
//! Presented keys are hashed and compared in constant time against every
//! configured digest (no early exit), so neither a key's content nor its
//! length leaks through timing. Keys are never logged or echoed; logs,
//! metrics and the audit log name a key by its id (the first 12 hex digits
//! of the digest).
//!
//! Scopes: `ingest` (send events), `read` (look: enrichers, outputs, tap,
//! lookup, metrics details), `admin` (change: reload, indicators, output
//! settings, replays, the audit log). `api_keys` are `ingest` + `read`,
//! `admin_keys` are `admin` + `read`; `[[auth.keys]]` entries say theirs.
//! The keyring is rebuilt on reload, so keys rotate without a restart.

use axum::http::{header, HeaderMap};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// `[auth]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AuthConfig {
    /// Bearer tokens with the `ingest` and `read` scopes (and, when it is
    /// the only key configured, output settings: the single-key
    /// deployments). The
    /// `API_KEY` environment variable adds one. With no key at all,
    /// protected endpoints refuse every request (fail closed).
    pub api_keys: Vec<String>,
    /// Bearer tokens with the `admin` and `read` scopes (`POST
    /// /v1/reload`, `PUT`/`DELETE /v1/indicators`, output settings, the
    /// audit log). The `ADMIN_API_KEY` environment variable adds one.
    pub admin_keys: Vec<String>,
    /// Keys with explicit scopes, stored as digests: `[[auth.keys]]` with
    /// `name`, `sha256` (or `key_env`) and `scopes`.
    pub keys: Vec<ScopedKey>,
}

/// One `[[auth.keys]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScopedKey {
    /// What the key is for (a collector, a dashboard, a team); shown next
    /// to the key's id in the audit log.
    pub name: String,
    /// The key's SHA-256 as 64 hex digits (`printf %s "$KEY" | sha256sum`,
    /// or `enrichd key new`): the file holds no secret.
    pub sha256: Option<String>,
    /// Or: the name of an environment variable that holds the key itself.
    pub key_env: Option<String>,
    /// What the key may do: any of `ingest`, `read`, `admin`.
    pub scopes: Vec<Scope>,
}

/// A permission a key can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scope {
    /// `POST /v1/ingest`.
    Ingest,
    /// Read-only API: enrichers, outputs, sources, lookup, tap, detailed
    /// metrics and health.
    Read,
    /// Changes: reload, indicators, output settings, replays; the audit log.
    Admin,
}

impl Scope {
    fn bit(self) -> u8 {
        match self {
            Scope::Ingest => 1,
            Scope::Read => 2,
            Scope::Admin => 4,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

impl AuthConfig {
    /// Problems with the `[[auth.keys]]` entries, each naming its entry;
    /// `env` reads `key_env` variables.
    pub(crate) fn check(&self, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
        let mut problems = Vec::new();
        for (i, k) in self.keys.iter().enumerate() {
            let at = format!("[[auth.keys]] #{} ({:?})", i + 1, k.name);
            match (&k.sha256, &k.key_env) {
                (Some(hex), None) => {
                    if parse_hex(hex).is_none() {
                        problems.push(format!("{at}: sha256 must be 64 hex digits"));
                    }
                }
                (None, Some(var)) => {
                    // A key pasted where its variable's name belongs must
                    // not be echoed into logs and `last_config_error`: the
                    // name is shown only when it looks like one (upper case,
                    // as variables are named; generated keys are lower-case
                    // hex).
                    let shown = var.len() <= 64
                        && var.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
                        && var.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                    if env(var).is_none_or(|v| v.trim().is_empty()) {
                        problems.push(if shown {
                            format!("{at}: key_env names {var}, which is not set")
                        } else {
                            format!(
                                "{at}: key_env names a variable that is not set (its name is not shown: it does not \
                                 look like a variable's name, and may be the key itself)"
                            )
                        });
                    }
                }
                _ => problems.push(format!("{at}: set exactly one of sha256 and key_env")),
            }
            if k.scopes.is_empty() {
                problems.push(format!("{at}: scopes is empty (any of ingest, read, admin)"));
            }
        }
        problems
    }
}

/// Why a request's key was refused (a fixed message, never the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyRefusal(pub &'static str);

/// A valid key without the scope an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScopeRefusal(pub Scope);

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

/// Every configured key as a digest with its scopes.
#[derive(Default)]
pub(crate) struct Keyring {
    keys: Vec<([u8; 32], u8)>,
}

impl Keyring {
    /// Builds the keyring; entries [`AuthConfig::check`] would refuse are
    /// left out.
    pub(crate) fn new(auth: &AuthConfig, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let plain = |keys: &[String], scopes: &[Scope]| {
            let bits = scopes.iter().fold(0, |b, s| b | s.bit());
            // Trimmed as presented keys are: a key read from a secret file
            // or an EnvironmentFile often ends in a newline, and would
            // otherwise match no request, silently.
            let keys = keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty());
            keys.map(move |k| (digest(k.as_bytes()), bits)).collect::<Vec<_>>()
        };
        let mut keys = plain(&auth.api_keys, &[Scope::Ingest, Scope::Read]);
        keys.extend(plain(&auth.admin_keys, &[Scope::Admin, Scope::Read]));
        for k in &auth.keys {
            let bits = k.scopes.iter().fold(0, |b, s| b | s.bit());
            let digest = match (&k.sha256, &k.key_env) {
                (Some(hex), None) => parse_hex(hex),
                (None, Some(var)) => env(var).filter(|v| !v.trim().is_empty()).map(|v| digest(v.trim().as_bytes())),
                _ => None,
            };
            keys.extend(digest.map(|d| (d, bits)));
        }
        Keyring { keys }
    }

    /// A keyring of plain keys with the given scopes (tests).
    #[cfg(test)]
    fn plain(keys: &[&str], scopes: &[Scope]) -> Self {
        let bits = scopes.iter().fold(0, |b, s| b | s.bit());
        Keyring { keys: keys.iter().map(|k| (digest(k.as_bytes()), bits)).collect() }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// SHA-256 over the sorted (digest, scopes) pairs: tells two keyrings
    /// apart in the audit log without naming a key.
    pub(crate) fn fingerprint(&self) -> String {
        let mut keys = self.keys.clone();
        keys.sort_unstable();
        let mut hasher = Sha256::new();
        for (digest, scopes) in &keys {
            hasher.update(digest);
            hasher.update([*scopes]);
        }
        hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether some key holds `scope`.
    pub(crate) fn any_with(&self, scope: Scope) -> bool {
        self.keys.iter().any(|(_, bits)| bits & scope.bit() != 0)
    }

    /// The presented key (`Authorization: Bearer <key>`, scheme
    /// case-insensitive, or `X-API-Key: <key>`) if it is configured, with
    /// its scopes; the digest is what per-key settings are keyed by.
    fn identify(&self, headers: &HeaderMap) -> Result<(KeyDigest, u8), KeyRefusal> {
        let presented = bearer(headers).or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
        let Some(presented) = presented.map(str::trim).filter(|k| !k.is_empty()) else {
            return Err(KeyRefusal("missing API key: send `Authorization: Bearer <key>`"));
        };
        let presented = digest(presented.as_bytes());
        // Every entry is compared; a key listed twice gets the union.
        let mut found = subtle::Choice::from(0u8);
        let mut bits = 0u8;
        for (d, scopes) in &self.keys {
            let equal = d.ct_eq(&presented);
            found |= equal;
            bits |= u8::conditional_select(&0, scopes, equal);
        }
        if bool::from(found) {
            Ok((KeyDigest(presented), bits))
        } else {
            Err(KeyRefusal("invalid API key"))
        }
    }

    /// A valid key, whatever its scopes (rate limits, the access log).
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<KeyDigest, KeyRefusal> {
        self.identify(headers).map(|(key, _)| key)
    }

    /// A valid key holding `scope`; refused with [`Refusal::Key`] (401)
    /// for no or an unknown key, [`Refusal::Scope`] (403) for a known key
    /// without it.
    pub(crate) fn require(&self, headers: &HeaderMap, scope: Scope) -> Result<KeyDigest, Refusal> {
        let (key, bits) = self.identify(headers).map_err(Refusal::Key)?;
        if bits & scope.bit() == 0 {
            return Err(Refusal::Scope(ScopeRefusal(scope)));
        }
        Ok(key)
    }
}

/// Why [`Keyring::require`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Key(KeyRefusal),
    Scope(ScopeRefusal),
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The SHA-256 of a key as lowercase hex (`enrichd key new`).
pub(crate) fn sha256_hex(key: &str) -> String {
    digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    /// A configured key with a trailing newline (a secret file, an
    /// EnvironmentFile) matches the key presented without it.
    #[test]
    fn configured_keys_are_trimmed_like_presented_ones() {
        let auth = AuthConfig { api_keys: vec!["abc\n".into(), " \n".into()], ..Default::default() };
        let keys = Keyring::new(&auth, &|_| None);
        assert_eq!(keys.len(), 1, "a blank key is no key");
        assert!(keys.check(&headers("authorization", "Bearer abc")).is_ok());
    }

    /// A key pasted into `key_env` is not echoed; a variable's name is.
    #[test]
    fn key_env_problems_do_not_echo_a_pasted_key() {
        let entry = |var: &str| AuthConfig {
            keys: vec![ScopedKey {
                name: "c".into(),
                sha256: None,
                key_env: Some(var.into()),
                scopes: vec![Scope::Ingest],
            }],
            ..Default::default()
        };
        let pasted = "enr_9f86d081884c7d659a2feaa0c55ad015";
        let problems = entry(pasted).check(&|_| None);
        assert_eq!(problems.len(), 1);
        assert!(!problems[0].contains("9f86d081"), "{problems:?}");
        assert!(problems[0].contains("not set"), "{problems:?}");
        let problems = entry("COLLECTOR_KEY").check(&|_| None);
        assert!(problems[0].contains("COLLECTOR_KEY, which is not set"), "{problems:?}");
        assert!(entry(pasted).check(&|_| Some("x".into())).is_empty(), "a set variable is fine whatever its name");
    }

    #[test]
    fn accepts_only_configured_keys() {
        let keys = Keyring::plain(&["alpha", "beta"], &[Scope::Read]);
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
        let keys = Keyring::new(&AuthConfig { api_keys: vec![String::new()], ..Default::default() }, &|_| None);
        assert!(keys.is_empty());
        assert!(keys.check(&headers("authorization", "Bearer ")).is_err());
        assert!(keys.check(&headers("authorization", "Bearer anything")).is_err());
    }

    #[test]
    fn scopes_come_from_the_kind_of_key_or_the_entry() {
        let auth = AuthConfig {
            api_keys: vec!["collector".into()],
            admin_keys: vec!["operator".into()],
            keys: vec![
                ScopedKey {
                    name: "sensor".into(),
                    sha256: Some(sha256_hex("sensor-only")),
                    key_env: None,
                    scopes: vec![Scope::Ingest],
                },
                ScopedKey {
                    name: "viewer".into(),
                    sha256: None,
                    key_env: Some("VIEWER_KEY".into()),
                    scopes: vec![Scope::Read],
                },
            ],
        };
        let env = |name: &str| (name == "VIEWER_KEY").then(|| "look-only".to_string());
        assert!(auth.check(&env).is_empty());
        let ring = Keyring::new(&auth, &env);
        let allowed = |key: &str, scope| ring.require(&headers("x-api-key", key), scope).is_ok();
        assert!(allowed("collector", Scope::Ingest) && allowed("collector", Scope::Read));
        assert!(!allowed("collector", Scope::Admin));
        assert!(allowed("operator", Scope::Admin) && allowed("operator", Scope::Read));
        assert!(!allowed("operator", Scope::Ingest));
        assert!(allowed("sensor-only", Scope::Ingest) && !allowed("sensor-only", Scope::Read));
        assert!(allowed("look-only", Scope::Read) && !allowed("look-only", Scope::Ingest));
        assert!(matches!(
            ring.require(&headers("x-api-key", "sensor-only"), Scope::Admin),
            Err(Refusal::Scope(ScopeRefusal(Scope::Admin)))
        ));
        assert!(matches!(ring.require(&headers("x-api-key", "nobody"), Scope::Read), Err(Refusal::Key(_))));
    }

    #[test]
    fn bad_entries_are_named() {
        let entry = |sha256: Option<&str>, key_env: Option<&str>, scopes: Vec<Scope>| ScopedKey {
            name: "k".into(),
            sha256: sha256.map(Into::into),
            key_env: key_env.map(Into::into),
            scopes,
        };
        let auth = AuthConfig {
            keys: vec![
                entry(Some("abc"), None, vec![Scope::Read]),
                entry(None, None, vec![Scope::Read]),
                entry(None, Some("UNSET_VAR"), vec![Scope::Read]),
                entry(Some(&sha256_hex("x")), None, vec![]),
            ],
            ..Default::default()
        };
        let problems = auth.check(&|_| None);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("#1") && problems[0].contains("64 hex"));
        assert!(problems[1].contains("exactly one"));
        assert!(problems[2].contains("UNSET_VAR"));
        assert!(problems[3].contains("scopes is empty"));
    }
}
