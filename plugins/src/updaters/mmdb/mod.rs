//! Updaters of `.mmdb` databases (the files of the `geoip` and `asn`
//! stages), for `[[update]]` entries:
//!
//! - `maxmind`: MaxMind's download API, as geoipupdate and Elastic use it:
//!   `GET {base_url}/geoip/databases/{edition_id}/download?suffix=tar.gz`
//!   with HTTP basic auth (account id, licence key), after the published
//!   SHA-256 of that archive (`suffix=tar.gz.sha256`): when it equals the
//!   one of the last download nothing is downloaded; otherwise the archive
//!   is downloaded, its SHA-256 checked against the published one, and the
//!   `{edition_id}.mmdb` member unpacked.
//! - `mmdb_url`: any URL serving a `.mmdb` or a `.tar.gz` holding one (a
//!   mirror, DB-IP, an internal artifact store), asked conditionally
//!   (`If-None-Match` / `If-Modified-Since` from the last download), with an
//!   optional published SHA-256 (`sha256_url`).
//!
//! Both validate what they unpacked by opening it as the stages do
//! (`crate::mmdb::inspect`: metadata, layout, a sample of records) and
//! check its type (the edition, the `database_type` option, or the current
//! file's type) before telling the core it may swap it in. The licence key
//! may come from the environment (`license_key_env`, default
//! `MAXMIND_LICENSE_KEY`) and is masked in every message.

mod fetch;
#[cfg(test)]
mod tests;

use enrichd_engine::output::redact_url;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use enrichd_engine::component::Component;
use enrichd_engine::output::{BoxFuture, FieldError};
use enrichd_engine::updater::{Fetched, UpdateContext, UpdateRunner, UpdaterFamily, Validators};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use super::http::{Fetcher, Got, DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S};

/// `[[update]] type = "maxmind"`: a MaxMind GeoIP2 / GeoLite2 edition from
/// MaxMind's download service.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MaxMindOptions {
    /// MaxMind account id (a number; `MAXMIND_ACCOUNT_ID` when empty).
    #[serde(deserialize_with = "string_or_number")]
    #[schemars(with = "serde_json::Value")]
    pub account_id: String,
    /// MaxMind licence key. Better left out of the file: by default it is
    /// read from the environment variable named by `license_key_env`.
    pub license_key: Option<String>,
    /// Environment variable holding the licence key when `license_key` is
    /// not set (default `MAXMIND_LICENSE_KEY`).
    pub license_key_env: String,
    /// The edition to download, e.g. `GeoLite2-City`, `GeoLite2-ASN`,
    /// `GeoIP2-City`. The downloaded database's type must be this.
    pub edition_id: String,
    /// Where MaxMind's download service is (default
    /// `https://download.maxmind.com`; a mirror or a test server otherwise).
    pub base_url: String,
    /// Largest archive downloaded, in bytes (default 1 GiB); a larger one
    /// is abandoned.
    pub max_download_bytes: u64,
    /// Largest database unpacked, in bytes (default 1 GiB).
    pub max_database_bytes: u64,
    /// Time allowed for each request, the whole download included, in
    /// seconds (default 600, at most 3600).
    pub timeout_s: u64,
}

impl Default for MaxMindOptions {
    fn default() -> Self {
        MaxMindOptions {
            account_id: String::new(),
            license_key: None,
            license_key_env: "MAXMIND_LICENSE_KEY".into(),
            edition_id: String::new(),
            base_url: "https://download.maxmind.com".into(),
            max_download_bytes: DEFAULT_MAX_BYTES,
            max_database_bytes: DEFAULT_MAX_BYTES,
            timeout_s: DEFAULT_TIMEOUT_S,
        }
    }
}

/// `[[update]] type = "mmdb_url"`: a `.mmdb` (or a `.tar.gz` holding one)
/// from any HTTP(S) URL.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MmdbUrlOptions {
    /// The database's URL: a `.mmdb`, or a `.tar.gz` whose first `.mmdb`
    /// member is taken. Asked with `If-None-Match` / `If-Modified-Since`
    /// after the first download; a 304 changes nothing.
    pub url: String,
    /// A URL serving the download's SHA-256 (`sha256sum` format). When set,
    /// a download whose SHA-256 differs is refused, and a published value
    /// equal to the last download's skips the download.
    pub sha256_url: Option<String>,
    /// The database type the download must have (e.g. `DBIP-City-Lite`);
    /// by default the type of the file it replaces, when there is one.
    pub database_type: Option<String>,
    /// Largest download, in bytes (default 1 GiB).
    pub max_download_bytes: Option<u64>,
    /// Largest database unpacked, in bytes (default 1 GiB).
    pub max_database_bytes: Option<u64>,
    /// Time allowed for each request, in seconds (default 600, at most 3600).
    pub timeout_s: Option<u64>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        N(u64),
    }
    Ok(match Id::deserialize(d)? {
        Id::S(s) => s,
        Id::N(n) => n.to_string(),
    })
}

fn check_http_url(field: &str, url: &str, errors: &mut Vec<FieldError>) {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => errors.push(FieldError::new(field, format!("{:?} is not an http(s) URL", redact_url(url)))),
    }
}

fn check_bounds(max_download: u64, max_database: u64, timeout_s: u64, errors: &mut Vec<FieldError>) {
    if max_download == 0 {
        errors.push(FieldError::new("max_download_bytes", "must be at least 1"));
    }
    if max_database == 0 {
        errors.push(FieldError::new("max_database_bytes", "must be at least 1"));
    }
    if !(1..=MAX_TIMEOUT_S).contains(&timeout_s) {
        errors.push(FieldError::new("timeout_s", format!("must be between 1 and {MAX_TIMEOUT_S}")));
    }
}

/// The `maxmind` updater kind.
pub struct MaxMindUpdater;

impl Component for MaxMindUpdater {
    type Family = UpdaterFamily;
    type Options = MaxMindOptions;

    fn kind(&self) -> &'static str {
        "maxmind"
    }

    fn description(&self) -> &'static str {
        "A MaxMind GeoIP2/GeoLite2 edition from MaxMind's download service (account id + licence key, SHA-256 checked)"
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        &["license_key"]
    }

    fn validate(&self, o: &MaxMindOptions) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let edition_ok = !o.edition_id.is_empty()
            && o.edition_id.len() <= 64
            && o.edition_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !edition_ok {
            errors.push(FieldError::new("edition_id", "required: letters, digits and dashes, e.g. GeoLite2-City"));
        }
        if !o.account_id.is_empty() && !o.account_id.bytes().all(|b| b.is_ascii_digit()) {
            errors.push(FieldError::new("account_id", "a MaxMind account id is a number"));
        }
        if o.license_key.as_deref() == Some("") {
            errors.push(FieldError::new("license_key", "empty; leave it out to read license_key_env"));
        }
        check_http_url("base_url", &o.base_url, &mut errors);
        check_bounds(o.max_download_bytes, o.max_database_bytes, o.timeout_s, &mut errors);
        errors
    }

    fn build(&self, o: MaxMindOptions, ctx: &UpdateContext) -> anyhow::Result<Arc<dyn UpdateRunner>> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let account = match o.account_id.as_str() {
            "" => env("MAXMIND_ACCOUNT_ID")
                .ok_or_else(|| anyhow::anyhow!("no account_id (set it, or MAXMIND_ACCOUNT_ID in the environment)"))?,
            id => id.to_string(),
        };
        let key = match o.license_key {
            Some(key) => key,
            None => env(&o.license_key_env).ok_or_else(|| {
                anyhow::anyhow!("no licence key: set license_key or the {} environment variable", o.license_key_env)
            })?,
        };
        let fetcher = Fetcher::new(
            Some((account, key.trim().to_string())),
            o.max_download_bytes,
            o.max_database_bytes,
            o.timeout_s,
        )?;
        let base = format!("{}/geoip/databases/{}/download", o.base_url.trim_end_matches('/'), o.edition_id);
        Ok(Arc::new(MaxMindRunner {
            fetcher,
            archive_url: format!("{base}?suffix=tar.gz"),
            checksum_url: format!("{base}?suffix=tar.gz.sha256"),
            member: format!("{}.mmdb", o.edition_id),
            edition: o.edition_id,
            target: ctx.target.clone(),
        }))
    }
}

struct MaxMindRunner {
    fetcher: Fetcher,
    archive_url: String,
    checksum_url: String,
    /// The archive member holding the database (`GeoLite2-City.mmdb`).
    member: String,
    edition: String,
    target: PathBuf,
}

impl UpdateRunner for MaxMindRunner {
    fn fetch<'a>(&'a self, known: &'a Validators, staging: &'a Path) -> BoxFuture<'a, Result<Fetched, String>> {
        Box::pin(async move {
            let published = self.fetcher.checksum(&self.checksum_url).await?;
            if known.digest.as_deref() == Some(published.as_str()) && self.target.exists() {
                return Ok(Fetched::Unchanged);
            }
            let Got::Body { file, sha256, .. } = self.fetcher.download(&self.archive_url, None, staging).await? else {
                return Err(format!("{}: 304 to an unconditional request", redact_url(&self.archive_url)));
            };
            if sha256 != published {
                return Err(format!(
                    "{}: SHA-256 {sha256} differs from the published {published}; not used",
                    redact_url(&self.archive_url)
                ));
            }
            let facts = finish(self, file, staging, Some(&self.member), Some(&self.edition)).await?;
            Ok(Fetched::Staged {
                validators: Validators { digest: Some(published), ..Validators::default() },
                detail: facts,
            })
        })
    }
}

impl RunnerParts for MaxMindRunner {
    fn parts(&self) -> (&Fetcher, &Path) {
        (&self.fetcher, &self.target)
    }
}

/// The `mmdb_url` updater kind.
pub struct MmdbUrlUpdater;

impl Component for MmdbUrlUpdater {
    type Family = UpdaterFamily;
    type Options = MmdbUrlOptions;

    fn kind(&self) -> &'static str {
        "mmdb_url"
    }

    fn description(&self) -> &'static str {
        "A .mmdb (or a .tar.gz holding one) from an HTTP(S) URL, asked conditionally, optionally SHA-256 checked"
    }

    fn validate(&self, o: &MmdbUrlOptions) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_http_url("url", &o.url, &mut errors);
        if let Some(url) = &o.sha256_url {
            check_http_url("sha256_url", url, &mut errors);
        }
        check_bounds(
            o.max_download_bytes.unwrap_or(DEFAULT_MAX_BYTES),
            o.max_database_bytes.unwrap_or(DEFAULT_MAX_BYTES),
            o.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S),
            &mut errors,
        );
        errors
    }

    fn build(&self, o: MmdbUrlOptions, ctx: &UpdateContext) -> anyhow::Result<Arc<dyn UpdateRunner>> {
        let fetcher = Fetcher::new(
            None,
            o.max_download_bytes.unwrap_or(DEFAULT_MAX_BYTES),
            o.max_database_bytes.unwrap_or(DEFAULT_MAX_BYTES),
            o.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S),
        )?;
        Ok(Arc::new(UrlRunner { fetcher, options: o, target: ctx.target.clone() }))
    }
}

struct UrlRunner {
    fetcher: Fetcher,
    options: MmdbUrlOptions,
    target: PathBuf,
}

impl UpdateRunner for UrlRunner {
    fn fetch<'a>(&'a self, known: &'a Validators, staging: &'a Path) -> BoxFuture<'a, Result<Fetched, String>> {
        Box::pin(async move {
            let exists = self.target.exists();
            let published = match &self.options.sha256_url {
                Some(url) => Some(self.fetcher.checksum(url).await?),
                None => None,
            };
            if exists && published.is_some() && known.digest == published {
                return Ok(Fetched::Unchanged);
            }
            let conditional = exists.then_some((&known.etag, &known.last_modified));
            let (file, sha256, etag, last_modified) =
                match self.fetcher.download(&self.options.url, conditional, staging).await? {
                    Got::NotModified => return Ok(Fetched::Unchanged),
                    Got::Body { file, sha256, etag, last_modified } => (file, sha256, etag, last_modified),
                };
            if let Some(published) = published.as_deref().filter(|p| *p != sha256) {
                return Err(format!(
                    "{}: SHA-256 {sha256} differs from the published {published}; not used",
                    redact_url(&self.options.url)
                ));
            }
            if exists && known.digest.as_deref() == Some(sha256.as_str()) {
                return Ok(Fetched::Unchanged); // the same bytes again
            }
            let facts = finish(self, file, staging, None, self.options.database_type.as_deref()).await?;
            let validators = Validators { etag, last_modified, digest: Some(sha256) };
            Ok(Fetched::Staged { validators, detail: facts })
        })
    }
}

impl RunnerParts for UrlRunner {
    fn parts(&self) -> (&Fetcher, &Path) {
        (&self.fetcher, &self.target)
    }
}

trait RunnerParts {
    fn parts(&self) -> (&Fetcher, &Path);
}

/// Unpacks and validates off the async threads (a large archive takes
/// seconds to inflate and check); the answer's text is masked.
async fn finish(
    runner: &impl RunnerParts,
    file: std::fs::File,
    staging: &Path,
    member: Option<&str>,
    expected: Option<&str>,
) -> Result<String, String> {
    let (fetcher, target) = runner.parts();
    let max = fetcher.max_database_bytes;
    let (staging, target) = (staging.to_path_buf(), target.to_path_buf());
    let (member, expected) = (member.map(String::from), expected.map(String::from));
    let done = tokio::task::spawn_blocking(move || {
        fetch::unpack(file, &staging, member.as_deref(), max)?;
        fetch::validate(&staging, &target, expected.as_deref(), max)
    })
    .await
    .map_err(|_| "unpacking failed".to_string())?;
    done.map(|facts| fetch::describe_facts(&facts)).map_err(|e| fetcher.mask(e))
}
