//! Output connector settings (`POST /v1/outputs/{elastic,splunk}`), kept
//! in memory. The HTTP handlers validate; this holds the settings and says
//! how they are shown: secrets (passwords, tokens) are stored but never
//! echoed, and URLs are shown with their credentials masked.

use std::sync::RwLock;

use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Default)]
pub(crate) struct OutputSettings {
    pub elastic: RwLock<Option<ElasticSettings>>,
    pub splunk: RwLock<Option<SplunkSettings>>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ElasticSettings {
    pub url: Option<String>,
    #[serde(default)]
    pub urls: Vec<String>,
    pub index: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub api_key: Option<String>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SplunkSettings {
    pub hec_url: Option<String>,
    pub url: Option<String>,
    pub token: Option<String>,
    pub index: Option<String>,
    pub sourcetype: Option<String>,
}

impl OutputSettings {
    /// The stored settings as shown to clients (secrets masked), `None`
    /// for a connector without settings.
    pub(crate) fn views(&self) -> (Option<Value>, Option<Value>) {
        let elastic = self.elastic.read().expect("settings lock").as_ref().map(elastic_view);
        let splunk = self.splunk.read().expect("settings lock").as_ref().map(splunk_view);
        (elastic, splunk)
    }
}

/// A URL with the parts that carry secrets masked: `user:password@`, the
/// query string (`?token=...`, `?api_key=...`) and the fragment. Scheme,
/// host, port and path stay, so the setting can still be recognised.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    if !scheme.is_empty() {
        out.push_str(scheme);
        out.push_str("://");
    }
    match authority.rfind('@') {
        Some(at) => {
            out.push_str("***@");
            out.push_str(&authority[at + 1..]);
        }
        None => out.push_str(authority),
    }
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    out.push_str(&tail[..path_end]);
    if tail[path_end..].starts_with('?') {
        out.push_str("?***");
    }
    if tail[path_end..].contains('#') {
        out.push_str("#***");
    }
    out
}

pub(crate) fn elastic_view(s: &ElasticSettings) -> Value {
    let urls: Vec<String> = s.urls.iter().map(|u| redact(u)).collect();
    json!({
        "url": urls.first(),
        "urls": urls,
        "index": s.index.as_deref().unwrap_or("telemetry-events"),
        "username": s.username,
        "password_set": s.password.is_some(),
        "api_key_set": s.api_key.is_some(),
    })
}

pub(crate) fn splunk_view(s: &SplunkSettings) -> Value {
    json!({
        "hec_url": s.hec_url.as_deref().map(redact),
        "index": s.index,
        "sourcetype": s.sourcetype.as_deref().unwrap_or("enrichd:event"),
        "token_set": s.token.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_in_urls_are_masked() {
        assert_eq!(redact("https://elastic:s3cret@es.example:9200/x"), "https://***@es.example:9200/x");
        assert_eq!(redact("https://es.example:9200/a@b"), "https://es.example:9200/a@b");
        assert_eq!(redact("http://h"), "http://h");
        assert_eq!(redact("https://h:8088/services/collector?token=abc"), "https://h:8088/services/collector?***");
        assert_eq!(redact("https://h?api_key=k#frag"), "https://h?***#***");
        assert_eq!(redact("https://u:p@h/x#a?b"), "https://***@h/x#***");
        assert_eq!(redact("https://h/p?q=a@b"), "https://h/p?***");
        assert_eq!(redact("https://u:p@h#x@y"), "https://***@h#***");
    }
}
