//! `[[update]] type = "taxii"`: a TAXII 2.1 collection kept as a file of
//! the `ti` stage.
//!
//! The walk: the discovery document (`url`) names the API roots; the
//! chosen one (`api_root`, else the server's `default`, else the first)
//! lists its collections; the collection (`collection`, id or title) is
//! read through `objects/?match[type]=indicator&limit=N`, following
//! `next` while `more` is true. Every request sends
//! `Accept: application/taxii+json;version=2.1` and the basic-auth
//! credentials; the password (`password`, or the variable named by
//! `password_env`) is masked in every message.
//!
//! Incremental: the staged file keeps, as a comment, the
//! `X-TAXII-Date-Added-Last` of the last page read; the next run asks
//! only for objects `added_after` it and applies them over the rows of
//! the current file (by STIX id: a new version replaces its rows, a
//! revoked one removes them). Keeping the position in the file rather
//! than in the core's state means the two can never disagree: a deleted
//! or replaced file is simply fetched whole again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use enrichd_engine::component::Component;
use enrichd_engine::output::{redact_url, BoxFuture, FieldError};
use enrichd_engine::updater::{Fetched, UpdateContext, UpdateRunner, UpdaterFamily, Validators};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::super::http::Fetcher;
use super::{
    check_common, check_http_url, stage, stix, summary, ConvertedFile, DEFAULT_MAX_SHRINK, DEFAULT_TIMEOUT_S,
    MAX_RENDERED_BYTES,
};

const TAXII: &str = "application/taxii+json;version=2.1";
/// The comment naming the resume position in a converted file.
const CURSOR: &str = "taxii added_after: ";
/// Largest discovery / collections document read.
const MAX_SMALL_BYTES: u64 = 1 << 20;
/// Default and largest `max_run_s`.
const DEFAULT_MAX_RUN_S: u64 = 1800;
const MAX_RUN_S: u64 = 86_400;

/// `[[update]] type = "taxii"`: indicators of a TAXII 2.1 collection.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TaxiiOptions {
    /// The server's discovery URL, e.g. `https://taxii.example/taxii2/`.
    pub url: String,
    /// The API root to read: its URL or its last path segment (e.g.
    /// `api1`); default the discovery's `default`, else its first.
    pub api_root: Option<String>,
    /// The collection: its id or its title.
    pub collection: String,
    /// Basic-auth user (none: no credentials sent).
    pub user: Option<String>,
    /// Basic-auth password. Better left out of the file: see
    /// `password_env`.
    pub password: Option<String>,
    /// Environment variable holding the password when `password` is not
    /// set.
    pub password_env: Option<String>,
    /// Objects asked for per page (`limit`; the server may send fewer).
    pub page_size: u32,
    /// Most pages read in one run (the rest waits for the next run).
    pub max_pages: u32,
    /// Most indicator objects kept; a collection over it is refused.
    pub max_objects: usize,
    /// Largest page (one answer) in bytes (default 32 MiB).
    pub max_download_bytes: u64,
    /// Time allowed for each request in seconds (default 120, at most 3600).
    pub timeout_s: u64,
    /// Time one run may spend reading pages, in seconds (default 1800, at
    /// most 86400). When it has passed, what was read is kept with the
    /// position it was read to and the rest waits for the next run, as
    /// with `max_pages`; a request already under way still has its
    /// `timeout_s`. Without it, a server answering each page just inside
    /// `timeout_s` could hold a run for `max_pages` x `timeout_s`.
    pub max_run_s: u64,
    /// Largest fraction of the current indicators one update may remove
    /// (default 0.5); an update removing more is held back and reported.
    pub max_shrink: f64,
}

impl Default for TaxiiOptions {
    fn default() -> Self {
        TaxiiOptions {
            url: String::new(),
            api_root: None,
            collection: String::new(),
            user: None,
            password: None,
            password_env: None,
            page_size: 1000,
            max_pages: 1000,
            max_objects: 1_000_000,
            max_download_bytes: 32 << 20,
            timeout_s: DEFAULT_TIMEOUT_S,
            max_run_s: DEFAULT_MAX_RUN_S,
            max_shrink: DEFAULT_MAX_SHRINK,
        }
    }
}

/// The `taxii` updater kind.
pub struct TaxiiUpdater;

impl Component for TaxiiUpdater {
    type Family = UpdaterFamily;
    type Options = TaxiiOptions;

    fn kind(&self) -> &'static str {
        "taxii"
    }

    fn description(&self) -> &'static str {
        "STIX 2.1 indicators of a TAXII 2.1 collection (added_after paging, basic auth), for the ti stage"
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        &["password"]
    }

    fn validate(&self, o: &TaxiiOptions) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_http_url("url", &o.url, &mut errors);
        if o.collection.trim().is_empty() {
            errors.push(FieldError::new("collection", "required: the collection's id or title"));
        }
        if o.password.as_deref() == Some("") {
            errors.push(FieldError::new("password", "empty; leave it out to read password_env"));
        }
        if (o.password.is_some() || o.password_env.is_some()) && o.user.is_none() {
            errors.push(FieldError::new("user", "a password needs a user"));
        }
        if o.user.is_some() && !credentials_safe_over(&o.url) {
            errors.push(FieldError::new("url", "credentials would cross the network in clear text: use https"));
        }
        if !(1..=10_000).contains(&o.page_size) {
            errors.push(FieldError::new("page_size", "must be between 1 and 10000"));
        }
        if !(1..=MAX_RUN_S).contains(&o.max_run_s) {
            errors.push(FieldError::new("max_run_s", format!("must be between 1 and {MAX_RUN_S}")));
        }
        if o.max_pages == 0 {
            errors.push(FieldError::new("max_pages", "must be at least 1"));
        }
        if o.max_objects == 0 {
            errors.push(FieldError::new("max_objects", "must be at least 1"));
        }
        check_common(o.max_download_bytes, o.timeout_s, o.max_shrink, &mut errors);
        errors
    }

    fn build(&self, o: TaxiiOptions, ctx: &UpdateContext) -> anyhow::Result<Arc<dyn UpdateRunner>> {
        let auth = match &o.user {
            None => None,
            Some(user) => {
                let password = match (&o.password, &o.password_env) {
                    (Some(p), _) => p.clone(),
                    (None, Some(var)) => std::env::var(var)
                        .ok()
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| anyhow::anyhow!("no password: the {var} environment variable is not set"))?,
                    (None, None) => String::new(),
                };
                Some((user.clone(), password))
            }
        };
        let fetcher = Fetcher::new(auth, o.max_download_bytes, o.max_download_bytes, o.timeout_s)?;
        Ok(Arc::new(TaxiiRunner { fetcher, options: o, target: ctx.target.clone() }))
    }
}

struct TaxiiRunner {
    fetcher: Fetcher,
    options: TaxiiOptions,
    target: PathBuf,
}

impl UpdateRunner for TaxiiRunner {
    fn fetch<'a>(&'a self, _known: &'a Validators, staging: &'a Path) -> BoxFuture<'a, Result<Fetched, String>> {
        Box::pin(async move { self.run(staging).await.map_err(|e| self.fetcher.mask(e)) })
    }
}

impl TaxiiRunner {
    async fn get(&self, url: &str, max: u64) -> Result<(Value, reqwest::header::HeaderMap), String> {
        let (body, headers) = self.fetcher.get_capped(url, TAXII, max).await?;
        let value = serde_json::from_slice(&body).map_err(|e| format!("{}: not JSON: {e}", redact_url(url)))?;
        Ok((value, headers))
    }

    /// The collection's `objects/` URL.
    async fn objects_url(&self) -> Result<String, String> {
        let o = &self.options;
        // Errors name the URL without what may be secret in it (a query
        // string's API key).
        let shown = redact_url(&o.url);
        let (discovery, _) = self.get(&o.url, MAX_SMALL_BYTES).await?;
        let roots: Vec<&str> = discovery
            .get("api_roots")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let default = discovery.get("default").and_then(Value::as_str);
        let root = match &o.api_root {
            Some(want) => roots
                .iter()
                .copied()
                .find(|r| *r == want || r.trim_end_matches('/').rsplit('/').next() == Some(want.trim_matches('/')))
                .ok_or_else(|| format!("{shown}: the discovery lists no API root {want:?}"))?,
            None => default.or(roots.first().copied()).ok_or_else(|| format!("{shown}: no API root listed"))?,
        };
        // API roots may be relative to the discovery URL.
        let base = reqwest::Url::parse(&o.url).map_err(|e| format!("{shown}: {e}"))?;
        let mut root = base.join(root).map_err(|e| format!("API root {root:?}: {e}"))?;
        // Credentials go to the discovery URL's origin only: a discovery
        // answer (hostile, or tampered with) naming a root elsewhere must
        // not collect the password or aim requests at other hosts.
        if o.user.is_some() && root.origin() != base.origin() {
            return Err(format!(
                "API root {} is not on the discovery URL's origin; credentials are only sent there",
                stix::clean(root.as_str(), 128)
            ));
        }
        if !root.path().ends_with('/') {
            root.set_path(&format!("{}/", root.path()));
        }
        let collections_url = format!("{root}collections/");
        let (collections, _) = self.get(&collections_url, MAX_SMALL_BYTES).await?;
        let found = collections
            .get("collections")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| {
                let field = |k: &str| c.get(k).and_then(Value::as_str);
                field("id") == Some(o.collection.as_str()) || field("title") == Some(o.collection.as_str())
            })
            .ok_or_else(|| format!("{collections_url}: no collection {:?}", o.collection))?;
        if found.get("can_read").and_then(Value::as_bool) == Some(false) {
            return Err(format!("collection {:?}: can_read is false for this user", o.collection));
        }
        let id = found.get("id").and_then(Value::as_str).unwrap_or_default();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("collection {:?}: unusable id", o.collection));
        }
        Ok(format!("{collections_url}{id}/objects/"))
    }

    async fn run(&self, staging: &Path) -> Result<Fetched, String> {
        let o = &self.options;
        let objects_url = self.objects_url().await?;
        let (mut file, cursor) = match std::fs::read_to_string(&self.target) {
            Ok(text) => read_converted(&text),
            Err(_) => (ConvertedFile::default(), None),
        };
        if cursor.is_none() {
            // A full read (no position: first run, or a server that sends
            // no X-TAXII-Date-Added-Last) replaces the file: objects the
            // collection no longer holds must not linger.
            file = ConvertedFile::default();
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let expired = file.drop_expired(now);
        let mut added_last = cursor.clone();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(o.max_run_s);
        let mut next: Option<String> = None;
        let (mut pages, mut objects) = (0u32, 0usize);
        loop {
            let mut url = reqwest::Url::parse(&objects_url).map_err(|e| format!("{objects_url}: {e}"))?;
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("match[type]", "indicator");
                q.append_pair("limit", &o.page_size.to_string());
                if let Some(c) = &cursor {
                    q.append_pair("added_after", c);
                }
                if let Some(n) = &next {
                    q.append_pair("next", n);
                }
            }
            let (page, headers) = self.get(url.as_str(), o.max_download_bytes).await?;
            pages += 1;
            // Pages come in the order objects were added (TAXII 2.1 §3.4),
            // so the latest page's header is the position read to. (Not a
            // string maximum: `…00.1Z` sorts after `…00.123Z`.)
            if let Some(last) = headers.get("x-taxii-date-added-last").and_then(|v| v.to_str().ok()) {
                added_last = Some(stix::clean(last, 40));
            }
            let page_objects = page.get("objects").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            for object in stix::oldest_first(page_objects) {
                objects += 1;
                file.apply(stix::convert(object));
                if file.rows.len() + file.unsupported.len() > o.max_objects {
                    return Err(format!(
                        "the collection holds over max_objects = {} indicators; not used",
                        o.max_objects
                    ));
                }
                // One object may expand to many rows (an OR of values):
                // the rendered size is bounded too, while reading.
                if file.row_bytes() as u64 > MAX_RENDERED_BYTES {
                    return Err(format!(
                        "the collection's indicators render to over {} MiB; not used",
                        MAX_RENDERED_BYTES >> 20
                    ));
                }
            }
            let more = page.get("more").and_then(Value::as_bool).unwrap_or(false);
            next = page.get("next").and_then(Value::as_str).map(|n| stix::clean(n, 256));
            if !more || next.is_none() {
                break;
            }
            // At either bound, what was read is kept with the position it
            // was read to: the next run asks `added_after` it and reads on
            // (a collection larger than one run's reach fills in over
            // several runs instead of stopping at the same page).
            let bound = if pages >= o.max_pages {
                Some("max_pages reached")
            } else {
                (tokio::time::Instant::now() >= deadline).then_some("max_run_s passed")
            };
            if let Some(bound) = bound {
                tracing::warn!(pages, "TAXII: {bound}; the rest waits for the next run");
                // `added_after` is exclusive, and objects of a bulk import
                // share one `date_added`: resuming right after the last
                // page's would skip those of that instant not read yet.
                // One second back re-reads a few (rows are kept by STIX
                // id, so twice is once) and skips none.
                added_last = added_last.map(|last| match crate::ti::meta::parse_time(&last) {
                    Some(t) => crate::ti::meta::format_time(t - 1),
                    None => last,
                });
                break;
            }
        }
        if objects == 0 && expired == 0 && self.target.is_file() {
            return Ok(Fetched::Unchanged);
        }
        let mut headers = vec![format!("collection: {}", stix::clean(&o.collection, 128))];
        if let Some(c) = &added_last {
            headers.push(format!("{CURSOR}{c}"));
        }
        // Rendering and the loader's checks (a full parse, twice with the
        // shrink guard) are CPU work: off the async threads.
        let (target, staging_path, max_shrink) = (self.target.clone(), staging.to_path_buf(), o.max_shrink);
        let (report, file) = tokio::task::spawn_blocking(move || {
            let content = file.render(&headers);
            stage(&content, &target, &staging_path, max_shrink).map(|report| (report, file))
        })
        .await
        .map_err(|e| format!("converting the collection: {e}"))??;
        let detail = format!(
            "collection {}: {} ({objects} objects in {pages} page(s)){}",
            stix::clean(&o.collection, 64),
            summary(&report),
            file.note()
        );
        let validators = Validators { last_modified: added_last, ..Validators::default() };
        Ok(Fetched::Staged { validators, detail })
    }
}

/// A file this updater wrote, back into rows by STIX id and the resume
/// position. Lines it does not recognise are dropped (the file is ours).
pub(super) fn read_converted(text: &str) -> (ConvertedFile, Option<String>) {
    let mut file = ConvertedFile::default();
    let mut cursor = None;
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("# ").and_then(|l| l.strip_prefix(CURSOR)) {
            cursor = Some(c.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("# unsupported\t") {
            if let Some((id, reason)) = rest.split_once('\t') {
                file.unsupported.insert(id.to_string(), reason.to_string());
            }
        } else if !line.starts_with('#') && line != stix::CSV_HEADER && !line.trim().is_empty() {
            // The id is the last field, never quoted (STIX ids have no
            // comma or quote).
            if let Some((_, id)) = line.rsplit_once(',') {
                file.push_row(id, line);
            }
        }
    }
    (file, cursor)
}

/// Whether basic-auth credentials may be sent to `url`: over https, or
/// over plain http to this machine only (tests, a local proxy).
fn credentials_safe_over(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else { return true }; // the URL's own error is reported
    match url.scheme() {
        "https" => true,
        _ => {
            let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
            host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
        }
    }
}
