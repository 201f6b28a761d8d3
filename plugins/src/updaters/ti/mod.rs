//! Updaters of the `ti` stage's indicator files, for `[[update]]` entries:
//!
//! - `ti_feed`: any HTTP(S) URL serving a plain list, a CSV file (its
//!   columns renamed by `csv_columns` when the feed names them otherwise),
//!   a Zeek intel file or a STIX 2.1 bundle; asked conditionally
//!   (`If-None-Match` / `If-Modified-Since`), with an optional published
//!   SHA-256 (`sha256_url`).
//! - `taxii`: a TAXII 2.1 collection (discovery, API root, collection,
//!   `objects` with `added_after` and `next` paging, basic auth), see
//!   [`taxii`].
//!
//! Both stage a file the stage's own loader reads (STIX is converted into
//! its CSV form, [`stix`]), so the core's swap and the stage's ordinary
//! keep-last-good reload apply it. Before answering `Staged` they parse
//! the staged file with that same loader (a file without one indicator is
//! refused) and apply the **shrink guard**: a new file with fewer than
//! `(1 - max_shrink)` times the indicators of the file it replaces is held
//! back and reported as an error (a feed publishing half a list by
//! mistake must not silently unlist the other half); `max_shrink = 1`
//! turns it off.

mod stix;
mod taxii;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use enrichd_engine::component::Component;
use enrichd_engine::output::{BoxFuture, FieldError};
use enrichd_engine::updater::{Fetched, UpdateContext, UpdateRunner, UpdaterFamily, Validators};
use schemars::JsonSchema;
use serde::Deserialize;

use super::http::{Fetcher, Got, MAX_TIMEOUT_S};
use crate::ti::index::IndexBuilder;
use crate::ti::loader::{parse_text, FileReport, DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_LINE_BYTES};
pub use taxii::{TaxiiOptions, TaxiiUpdater};

/// Default `timeout_s` of the feed updaters: two minutes per request.
const DEFAULT_TIMEOUT_S: u64 = 120;
/// Default `max_shrink`: a feed may lose half its indicators at once.
const DEFAULT_MAX_SHRINK: f64 = 0.5;
/// Unsupported STIX patterns named in a report (the rest are counted).
const LISTED_UNSUPPORTED: usize = 5;

/// The file format a `ti_feed` serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeedFormat {
    /// Told apart by content, as the stage does; a body starting with `{`
    /// is a STIX bundle.
    #[default]
    Auto,
    Plain,
    Csv,
    Zeek,
    Stix,
}

/// `[[update]] type = "ti_feed"`: an indicator feed from an HTTP(S) URL.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TiFeedOptions {
    /// The feed's URL. Asked with `If-None-Match` / `If-Modified-Since`
    /// after the first download; a 304 changes nothing.
    pub url: String,
    /// `auto` (default), `plain`, `csv`, `zeek` or `stix` (a STIX 2.1
    /// bundle, converted to the stage's CSV form with its metadata).
    pub format: FeedFormat,
    /// CSV only: the stage's column names mapped to the feed's own header
    /// names, e.g. `{ indicator = "ioc", confidence = "score" }`. Known
    /// columns: indicator, category, confidence, description, severity,
    /// tags, first_seen, last_seen, valid_until.
    pub csv_columns: BTreeMap<String, String>,
    /// A URL serving the feed's SHA-256 (`sha256sum` format): a download
    /// that differs is refused; a published value equal to the last
    /// download's skips the download.
    pub sha256_url: Option<String>,
    /// Largest download in bytes (default 128 MiB, the stage's
    /// `max_file_bytes` default).
    pub max_download_bytes: u64,
    /// Time allowed for each request, the whole body included, in seconds
    /// (default 120, at most 3600).
    pub timeout_s: u64,
    /// Largest fraction of the current file's indicators a new version may
    /// lose (default 0.5); a version shrinking more is held back and
    /// reported. 1 turns the guard off.
    pub max_shrink: f64,
}

impl Default for TiFeedOptions {
    fn default() -> Self {
        TiFeedOptions {
            url: String::new(),
            format: FeedFormat::Auto,
            csv_columns: BTreeMap::new(),
            sha256_url: None,
            max_download_bytes: DEFAULT_MAX_FILE_BYTES,
            timeout_s: DEFAULT_TIMEOUT_S,
            max_shrink: DEFAULT_MAX_SHRINK,
        }
    }
}

/// Columns the stage's CSV reader knows (`csv_columns` keys).
const CSV_COLUMNS: &[&str] = &[
    "indicator",
    "category",
    "confidence",
    "description",
    "severity",
    "tags",
    "first_seen",
    "last_seen",
    "valid_until",
];

/// An absolute http(s) URL without credentials in it: user and password
/// in a URL would show wherever the URL does (errors, the log, the
/// settings view). The URL itself is not quoted: it may hold a key.
pub(crate) fn check_http_url(field: &str, url: &str, errors: &mut Vec<FieldError>) {
    match reqwest::Url::parse(url) {
        Ok(u) if !u.username().is_empty() || u.password().is_some() => errors.push(FieldError::new(
            field,
            "must not carry credentials (user:password@): they would be shown with the URL",
        )),
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => errors.push(FieldError::new(field, "is not an absolute http(s) URL")),
    }
}

pub(crate) fn check_common(max_bytes: u64, timeout_s: u64, max_shrink: f64, errors: &mut Vec<FieldError>) {
    if max_bytes == 0 {
        errors.push(FieldError::new("max_download_bytes", "must be at least 1"));
    }
    if !(1..=MAX_TIMEOUT_S).contains(&timeout_s) {
        errors.push(FieldError::new("timeout_s", format!("must be between 1 and {MAX_TIMEOUT_S}")));
    }
    if !(0.0..=1.0).contains(&max_shrink) {
        errors.push(FieldError::new("max_shrink", "must be a fraction from 0 to 1"));
    }
}

/// The `ti_feed` updater kind.
pub struct TiFeedUpdater;

impl Component for TiFeedUpdater {
    type Family = UpdaterFamily;
    type Options = TiFeedOptions;

    fn kind(&self) -> &'static str {
        "ti_feed"
    }

    fn description(&self) -> &'static str {
        "A threat-intel indicator feed (plain, CSV, Zeek intel or STIX 2.1 bundle) from an HTTP(S) URL, for the ti stage"
    }

    fn validate(&self, o: &TiFeedOptions) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_http_url("url", &o.url, &mut errors);
        if let Some(u) = &o.sha256_url {
            check_http_url("sha256_url", u, &mut errors);
        }
        for (ours, theirs) in &o.csv_columns {
            if !CSV_COLUMNS.contains(&ours.as_str()) {
                errors.push(FieldError::new(
                    "csv_columns",
                    format!("{ours:?} is not a column; known: {}", CSV_COLUMNS.join(", ")),
                ));
            }
            if theirs.trim().is_empty() || theirs.contains([',', '"', '\n']) {
                errors.push(FieldError::new("csv_columns", format!("{theirs:?} is not a header name")));
            }
        }
        if !o.csv_columns.is_empty() && !matches!(o.format, FeedFormat::Csv) {
            errors.push(FieldError::new("csv_columns", "needs format = \"csv\""));
        }
        check_common(o.max_download_bytes, o.timeout_s, o.max_shrink, &mut errors);
        errors
    }

    fn build(&self, o: TiFeedOptions, ctx: &UpdateContext) -> anyhow::Result<Arc<dyn UpdateRunner>> {
        let fetcher = Fetcher::new(None, o.max_download_bytes, o.max_download_bytes, o.timeout_s)?;
        Ok(Arc::new(TiFeedRunner { fetcher, options: o, target: ctx.target.clone() }))
    }
}

struct TiFeedRunner {
    fetcher: Fetcher,
    options: TiFeedOptions,
    target: PathBuf,
}

impl UpdateRunner for TiFeedRunner {
    fn fetch<'a>(&'a self, known: &'a Validators, staging: &'a Path) -> BoxFuture<'a, Result<Fetched, String>> {
        Box::pin(async move { self.run(known, staging).await.map_err(|e| self.redact(e)) })
    }
}

impl TiFeedRunner {
    /// Feed URLs often carry an API key in their query string: messages
    /// (the log, `GET /v1/updates`) name the URLs without it.
    fn redact(&self, mut message: String) -> String {
        for url in std::iter::once(&self.options.url).chain(&self.options.sha256_url) {
            if let Some((bare, _)) = url.split_once('?') {
                message = message.replace(url.as_str(), &format!("{bare}?***"));
            }
        }
        message
    }

    async fn run(&self, known: &Validators, staging: &Path) -> Result<Fetched, String> {
        {
            let o = &self.options;
            // With no file in place, download whatever the validators say.
            let have_file = self.target.is_file();
            let published = match &o.sha256_url {
                Some(u) => Some(self.fetcher.checksum(u).await?),
                None => None,
            };
            if have_file && published.is_some() && published == known.digest {
                return Ok(Fetched::Unchanged);
            }
            let conditional = have_file.then_some((&known.etag, &known.last_modified));
            let (mut file, sha256, etag, last_modified) =
                match self.fetcher.download(&o.url, conditional, staging).await? {
                    Got::NotModified => return Ok(Fetched::Unchanged),
                    Got::Body { file, sha256, etag, last_modified } => (file, sha256, etag, last_modified),
                };
            if let Some(want) = &published {
                if *want != sha256 {
                    return Err(format!("{}: SHA-256 {sha256} is not the published {want}; not used", o.url));
                }
            }
            // Reading, converting and the loader's checks are CPU work on
            // up to max_download_bytes: off the async threads.
            let (options, target, staging) = (o.clone(), self.target.clone(), staging.to_path_buf());
            let (report, note) = tokio::task::spawn_blocking(move || {
                let mut bytes = Vec::new();
                file.rewind()
                    .and_then(|()| file.read_to_end(&mut bytes))
                    .map_err(|e| format!("reading the download: {e}"))?;
                let text = String::from_utf8(bytes).map_err(|e| {
                    format!("{}: not UTF-8 text (at byte {})", options.url, e.utf8_error().valid_up_to())
                })?;
                let (content, note) = convert(&options, text)?;
                let report = stage(&content, &target, &staging, options.max_shrink)?;
                Ok::<_, String>((report, note))
            })
            .await
            .map_err(|e| format!("converting the feed: {e}"))??;
            let validators = Validators { etag, last_modified, digest: Some(published.unwrap_or(sha256)) };
            Ok(Fetched::Staged { validators, detail: format!("{}{note}", summary(&report)) })
        }
    }
}

/// The feed's body as the stage's file, and a note for the report.
fn convert(o: &TiFeedOptions, text: String) -> Result<(String, String), String> {
    let stix = match o.format {
        FeedFormat::Stix => true,
        FeedFormat::Auto => text.trim_start_matches('\u{feff}').trim_start().starts_with('{'),
        _ => false,
    };
    if stix {
        return bundle_to_csv(&text);
    }
    if o.format == FeedFormat::Csv && !o.csv_columns.is_empty() {
        return Ok((rename_csv_header(&text, &o.csv_columns)?, String::new()));
    }
    // The loader tells the formats apart; a declared format that the
    // content contradicts is refused rather than misread.
    let mut report = FileReport::default();
    parse_text(&text, &mut report, &mut IndexBuilder::default(), DEFAULT_MAX_LINE_BYTES);
    match (o.format, report.format) {
        (FeedFormat::Auto, _) | (FeedFormat::Plain, Some("plain")) => {}
        (FeedFormat::Csv, Some("csv")) | (FeedFormat::Zeek, Some("zeek")) => {}
        (want, got) => return Err(format!("format = {want:?} but the body reads as {}", got.unwrap_or("nothing"))),
    }
    Ok((text, String::new()))
}

/// The header line renamed: `theirs` → `ours`.
fn rename_csv_header(text: &str, columns: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len() + 64);
    let mut done = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if done || t.is_empty() || t.starts_with('#') {
            out.push_str(line);
            continue;
        }
        done = true;
        let names: Vec<String> = t
            .split(',')
            .map(|c| {
                let c = c.trim().trim_matches('"');
                columns
                    .iter()
                    .find(|(_, theirs)| theirs.eq_ignore_ascii_case(c))
                    .map_or_else(|| c.to_string(), |(ours, _)| ours.clone())
            })
            .collect();
        if !names.iter().any(|n| n == "indicator") {
            return Err(format!("the CSV header names no indicator column after csv_columns: {}", stix::clean(t, 200)));
        }
        out.push_str(&names.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// Most bytes converted STIX rows may take: the ti stage's default
/// `max_file_bytes` (it would refuse a larger file anyway). Checked while
/// converting, object by object: one object may expand to many rows.
pub(crate) const MAX_RENDERED_BYTES: u64 = 128 << 20;

/// A STIX 2.1 bundle as the stage's CSV form; the note counts and lists
/// the unsupported patterns.
fn bundle_to_csv(text: &str) -> Result<(String, String), String> {
    let bundle: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not a STIX bundle: {e}"))?;
    let objects = bundle
        .get("objects")
        .and_then(|o| o.as_array())
        .filter(|_| bundle.get("type").and_then(|t| t.as_str()) == Some("bundle"))
        .ok_or("not a STIX bundle (type \"bundle\" with objects)")?;
    let mut file = ConvertedFile::default();
    for object in stix::oldest_first(objects) {
        file.apply(stix::convert(object));
        if file.row_bytes() as u64 > MAX_RENDERED_BYTES {
            return Err(format!("the bundle's indicators render to over {} MiB; not used", MAX_RENDERED_BYTES >> 20));
        }
    }
    Ok((file.render(&[]), file.note()))
}

/// The `valid_until` of a converted row: the field before the STIX id,
/// both last and never quoted (a timestamp and an id hold no comma).
fn valid_until(row: &str) -> Option<i64> {
    let mut fields = row.rsplitn(3, ',');
    fields.next()?; // the id
    crate::ti::meta::parse_time(fields.next()?)
}

/// Converted STIX indicators by id: rows, and the unsupported ones with
/// why. A TAXII update starts from the current file's and applies the new
/// objects over it.
#[derive(Default)]
pub(crate) struct ConvertedFile {
    pub(crate) rows: BTreeMap<String, Vec<String>>,
    pub(crate) unsupported: BTreeMap<String, String>,
    pub(crate) revoked: usize,
    /// Bytes the rows render to (kept as rows come and go): what a
    /// collection would make the stage read, checked while it is read.
    row_bytes: usize,
}

/// Bytes of rows as rendered (one line each).
fn rendered(rows: &[String]) -> usize {
    rows.iter().map(|r| r.len() + 1).sum()
}

impl ConvertedFile {
    pub(crate) fn apply(&mut self, c: stix::Converted) {
        match c {
            stix::Converted::Other => {}
            stix::Converted::Revoked { id } => {
                self.revoked += 1;
                self.remove_rows(&id);
                self.unsupported.remove(&id);
            }
            stix::Converted::Rows { id, rows } => {
                self.unsupported.remove(&id);
                self.remove_rows(&id);
                self.row_bytes += rendered(&rows);
                self.rows.insert(id, rows);
            }
            stix::Converted::Unsupported { id, reason } => {
                self.remove_rows(&id);
                self.unsupported.insert(id, reason);
            }
        }
    }

    /// Adds one row read back from a converted file.
    pub(crate) fn push_row(&mut self, id: &str, row: &str) {
        self.row_bytes += row.len() + 1;
        self.rows.entry(id.to_string()).or_default().push(row.to_string());
    }

    /// Drops the indicators whose `valid_until` is before `now` (Unix
    /// seconds); returns how many. A TAXII collection read incrementally
    /// keeps its rows across runs: without this, expired ones would stay in
    /// the file, count toward `max_objects` and the size bound, and in the
    /// end stop every run.
    pub(crate) fn drop_expired(&mut self, now: i64) -> usize {
        let expired: Vec<String> = self
            .rows
            .iter()
            .filter(|(_, rows)| rows.first().and_then(|row| valid_until(row)).is_some_and(|t| t < now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.remove_rows(id);
        }
        expired.len()
    }

    fn remove_rows(&mut self, id: &str) {
        if let Some(old) = self.rows.remove(id) {
            self.row_bytes = self.row_bytes.saturating_sub(rendered(&old));
        }
    }

    /// Bytes the rows render to.
    pub(crate) fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// The file: `headers` as comments, the CSV, then one comment per
    /// unsupported indicator (so the count survives incremental updates).
    pub(crate) fn render(&self, headers: &[String]) -> String {
        let mut out = String::new();
        out.push_str("# Converted from STIX 2.1 by enrichd; rows carry their stix_id.\n");
        for h in headers {
            out.push_str(&format!("# {h}\n"));
        }
        out.push_str(stix::CSV_HEADER);
        out.push('\n');
        for row in self.rows.values().flatten() {
            out.push_str(row);
            out.push('\n');
        }
        for (id, reason) in &self.unsupported {
            out.push_str(&format!("# unsupported\t{id}\t{reason}\n"));
        }
        out
    }

    /// `; 2 unsupported STIX patterns (indicator--…: AND is not supported: […])`.
    pub(crate) fn note(&self) -> String {
        let mut note = String::new();
        if self.revoked > 0 {
            note.push_str(&format!("; {} revoked", self.revoked));
        }
        if !self.unsupported.is_empty() {
            let listed: Vec<String> =
                self.unsupported.iter().take(LISTED_UNSUPPORTED).map(|(id, why)| format!("{id}: {why}")).collect();
            let more = self.unsupported.len().saturating_sub(LISTED_UNSUPPORTED);
            note.push_str(&format!(
                "; {} unsupported STIX pattern(s): {}{}",
                self.unsupported.len(),
                listed.join("; "),
                if more > 0 { format!("; and {more} more") } else { String::new() }
            ));
        }
        note
    }
}

/// Parses `content` as the stage will, applies the shrink guard against
/// the file at `target`, and writes `staging` (synced).
pub(crate) fn stage(content: &str, target: &Path, staging: &Path, max_shrink: f64) -> Result<FileReport, String> {
    let report = count(content, target);
    if let Some(e) = &report.error {
        return Err(format!("the new file is refused by the ti loader: {e}"));
    }
    if report.indicators == 0 && !report.declared_empty {
        return Err("the new file holds no indicator; not used".into());
    }
    if let Some(current) = std::fs::read_to_string(target).ok().map(|t| count(&t, target)) {
        let floor = current.indicators as f64 * (1.0 - max_shrink);
        if (report.indicators as f64) < floor {
            return Err(format!(
                "held back: the new version has {} indicators, the current file {} (a loss over max_shrink = {max_shrink}); not applied",
                report.indicators, current.indicators
            ));
        }
    }
    super::write_staged(staging, content.as_bytes())?;
    Ok(report)
}

/// The loader's report on `content` (nothing is kept).
fn count(content: &str, path: &Path) -> FileReport {
    let mut report = FileReport { source: "update".into(), path: path.to_path_buf(), ..FileReport::default() };
    parse_text(content, &mut report, &mut IndexBuilder::default(), DEFAULT_MAX_LINE_BYTES);
    report.declared_empty = report.indicators == 0
        && report.duplicates == 0
        && report.skipped_lines == 0
        && content.lines().any(|l| l.trim_start().starts_with('#'));
    if report.indicators == 0 && report.skipped_lines > 0 && report.error.is_none() {
        report.error = Some(format!("no valid indicator: {} line(s) skipped", report.skipped_lines));
    }
    report
}

/// `csv: 1234 indicators (3 bad lines skipped)`.
pub(crate) fn summary(r: &FileReport) -> String {
    let mut s = format!("{}: {} indicators", r.format.unwrap_or("plain"), r.indicators);
    if r.skipped_lines > 0 {
        s.push_str(&format!(" ({} bad lines skipped)", r.skipped_lines));
    }
    s
}
