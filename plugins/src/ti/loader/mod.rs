//! Reading indicator files: locating them, detecting each file's format and
//! parsing it into the [`IndexBuilder`].
//!
//! Why auto-detection per file: teams drop whatever their feeds publish into
//! one directory (an IPsum dump, a hosts-style domain list, a Zeek intel
//! file, a hand-written CSV). Requiring a format option per file would make
//! a directory source useless, and the formats are easy to tell apart from
//! their first meaningful line. Bad lines never fail a load: one malformed
//! line in a 100k-line feed must not drop the other 99,999, so they are
//! skipped, counted and logged with `file:line` (the first few per file).

//!
//! Layout: this file holds what every format shares (limits, the per-file
//! report, locating files, format detection); [`parser`] the per-file
//! parser state and the lifecycle columns CSV and Zeek intel share, and
//! one module per format: [`plain`], [`csv`], [`zeek`].

mod csv;
mod parser;
mod plain;
mod zeek;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use enrichd_engine::limits::{quote, read_capped};
use enrichd_engine::{source_info, SourceInfo};
use serde::Serialize;

use super::index::{IndexBuilder, Net};
use super::meta::{Attrs, FeedDefaults};
use super::{Indicator, Kind};
use csv::CsvColumns;
use parser::{Parsed, Parser};
use plain::parse_plain;
pub use plain::{normalize_domain, parse_net};

/// What one indicator file may cost (the `ti` options of the same names).
#[derive(Clone, Copy, Debug)]
pub struct FileLimits {
    /// Larger files are refused unread (metadata) or when the bytes read
    /// exceed it (a file growing while read).
    pub max_file_bytes: u64,
    /// Longer lines are skipped as bad lines, quoted only by their length.
    pub max_line_bytes: usize,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits { max_file_bytes: DEFAULT_MAX_FILE_BYTES, max_line_bytes: DEFAULT_MAX_LINE_BYTES }
    }
}

/// 128 MiB: several million indicators (a million-line list is 15-40 MB),
/// while a file being read whole stays a bounded cost.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 128 << 20;
/// 8 KiB: far above any indicator line, Zeek intel lines with long
/// descriptions included.
pub const DEFAULT_MAX_LINE_BYTES: usize = 8 << 10;

/// What happened to one indicator file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileReport {
    /// The path as configured (a directory's files: `dir/name`); the
    /// `source` of the file's matches unless its feed is named.
    pub source: String,
    /// The feed's name when configured (`feeds`): then the `source` of the
    /// file's matches and the `feed` of its statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<String>,
    /// Where it was read from.
    pub path: PathBuf,
    /// `plain`, `csv` or `zeek`; absent when the file was not read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<&'static str>,
    /// Distinct indicators loaded from this file.
    pub indicators: usize,
    pub addr: usize,
    pub subnet: usize,
    pub domain: usize,
    /// Exact repeats of an earlier line of the same file (counted once).
    pub duplicates: usize,
    /// Lines that are not an indicator (logged with their line number).
    pub skipped_lines: usize,
    /// Zeek intel items of types this plugin does not match (URL, hashes...).
    pub unsupported: usize,
    /// CIDR networks written with host bits set (`10.1.2.3/24`); loaded as
    /// their network (`10.1.2.0/24`).
    pub normalized: usize,
    /// The first skipped lines, `"LINE: why"` (the rest are only counted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bad_lines: Vec<String>,
    /// No indicator, but a comment line (`# empty`): a feed emptied on
    /// purpose, which a reload accepts (an empty file it holds back).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub declared_empty: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The file was not there (as opposed to unreadable or not UTF-8).
    #[serde(skip)]
    pub missing: bool,
    #[serde(skip)]
    pub info: Option<SourceInfo>,
}

impl FileReport {
    fn new(source: String, path: PathBuf) -> Self {
        FileReport { source, path, ..FileReport::default() }
    }

    /// A report for a source that could not be read at all.
    pub fn failed_at(source: &str, path: &Path, error: String) -> Self {
        FileReport::new(source.to_string(), path.to_path_buf()).failed(error, false)
    }

    fn failed(mut self, error: String, missing: bool) -> Self {
        self.error = Some(error);
        self.missing = missing;
        self
    }

    /// The status `sources` entry for this file.
    pub fn source_info(&self) -> SourceInfo {
        self.info.clone().unwrap_or_else(|| SourceInfo {
            path: self.path.clone(),
            sha256: None,
            size_bytes: None,
            loaded_at: None,
            error: self.error.clone(),
        })
    }

    fn record(&mut self, kind: Kind, added: bool) {
        if !added {
            self.duplicates += 1;
            return;
        }
        self.indicators += 1;
        match kind {
            Kind::Addr => self.addr += 1,
            Kind::Subnet => self.subnet += 1,
            Kind::Domain => self.domain += 1,
        }
    }
}

/// Expands the configured paths (directories into their files) and loads
/// every file into `builder`, one report per file (or per missing path);
/// each file with the `feeds` entry naming it, if any.
pub fn load_all(
    paths: &[String],
    resolve: impl Fn(&str) -> PathBuf,
    builder: &mut IndexBuilder,
    limits: &FileLimits,
    feeds: &[FeedDefaults],
) -> Vec<FileReport> {
    let none = FeedDefaults::default();
    let mut reports = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    for configured in paths {
        let path = resolve(configured);
        for (label, file) in expand(configured, &path, &mut reports) {
            // The same file reached twice (listed and inside a listed
            // directory) would double every match: load it once.
            let canonical = fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if seen.contains(&canonical) {
                tracing::warn!("{}: listed more than once in `paths`; loaded once", file.display());
                continue;
            }
            seen.push(canonical);
            let defaults = feeds
                .iter()
                .find(|d| d.path == label || resolve(&d.path) == file || Path::new(&d.path) == Path::new(&label))
                .unwrap_or(&none);
            reports.push(load_file(label, file, builder, limits, defaults));
        }
    }
    reports
}

/// A configured path as the files to load; a missing path or an empty
/// directory is reported into `reports` instead.
fn expand(configured: &str, path: &Path, reports: &mut Vec<FileReport>) -> Vec<(String, PathBuf)> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            let report = FileReport::new(configured.to_string(), path.to_path_buf());
            reports.push(match e.kind() {
                io::ErrorKind::NotFound => report.failed("file not found".into(), true),
                _ => report.failed(format!("cannot read: {e}"), false),
            });
            return Vec::new();
        }
    };
    if meta.is_file() {
        return vec![(configured.to_string(), path.to_path_buf())];
    }
    if !meta.is_dir() {
        let report = FileReport::new(configured.to_string(), path.to_path_buf());
        reports.push(report.failed("not a regular file or directory".into(), false));
        return Vec::new();
    }
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) => {
            let report = FileReport::new(configured.to_string(), path.to_path_buf());
            reports.push(report.failed(format!("cannot list directory: {e}"), false));
            return Vec::new();
        }
    };
    let mut files: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let skip = name.starts_with('.') || name.ends_with('~') || name.ends_with(".swp") || name.ends_with(".tmp");
            // `fs::metadata` follows symlinks: a link to a file counts.
            let is_file = fs::metadata(entry.path()).map(|m| m.is_file()).unwrap_or(false);
            (!skip && is_file).then(|| (Path::new(configured).join(&name).display().to_string(), entry.path()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        let report = FileReport::new(configured.to_string(), path.to_path_buf());
        reports.push(report.failed("directory contains no indicator files".into(), true));
    }
    files
}

/// Reads and parses one file: refused unread when larger than
/// `limits.max_file_bytes`, lines longer than `limits.max_line_bytes`
/// skipped; indicators without metadata get the feed's `defaults`.
pub fn load_file(
    source: String,
    path: PathBuf,
    builder: &mut IndexBuilder,
    limits: &FileLimits,
    defaults: &FeedDefaults,
) -> FileReport {
    let mut report = FileReport::new(source, path);
    report.feed = defaults.name.clone();
    // Plain lists' lifetimes and decay count from the file's modification
    // time: when its publisher last vouched for it.
    let modified = fs::metadata(&report.path).and_then(|m| m.modified()).ok();
    let loaded_at = modified
        .unwrap_or_else(std::time::SystemTime::now)
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let bytes = match read_capped(&report.path, limits.max_file_bytes) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return report.failed("file not found".into(), true),
        Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
            return report.failed(format!("{e} (`max_file_bytes`); not read"), false)
        }
        Err(e) => return report.failed(format!("cannot read: {e}"), false),
    };
    let mut info = source_info(&report.path, &bytes);
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let error = format!("not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to());
            info.error = Some(error.clone());
            report.info = Some(info);
            return report.failed(error, false);
        }
    };
    report.info = Some(info);
    parse_text_with(&text, &mut report, builder, limits.max_line_bytes, defaults, loaded_at);
    report.declared_empty = report.indicators == 0
        && report.duplicates == 0
        && report.skipped_lines == 0
        && report.unsupported == 0
        && text.lines().any(|l| l.trim_start().starts_with('#'));
    // A file with lines but not one indicator is garbage or a write caught
    // half-way, not an empty feed: report it, so a reload keeps the last
    // good version instead of silently dropping the file's indicators.
    if report.indicators == 0 && report.duplicates == 0 && report.skipped_lines > 0 && report.error.is_none() {
        let first = report.bad_lines.first().cloned().unwrap_or_default();
        report.error =
            Some(format!("no valid indicator: {} line(s) skipped (first: line {first})", report.skipped_lines));
    }
    report
}

/// Normalizes one indicator as the API accepts it: an IP address, a CIDR
/// network (host bits cleared) or a domain (bare or `domain:NAME`).
/// Returns the canonical text and its type name.
pub fn normalize_indicator(s: &str) -> Result<(String, &'static str), String> {
    let mut name = String::new();
    match parse_plain(s, None, &mut name)? {
        Parsed::Net(net, kind, _) => {
            let text = match net {
                Net::V4(a, len) => Indicator::Net { ip: std::net::Ipv4Addr::from(a).into(), len, host: len == 32 },
                Net::V6(a, len) => Indicator::Net { ip: std::net::Ipv6Addr::from(a).into(), len, host: len == 128 },
            };
            let kind = if matches!(text, Indicator::Net { host: true, .. }) { Kind::Addr } else { kind };
            Ok((text.to_string(), kind.name()))
        }
        Parsed::Domain => Ok((name, Kind::Domain.name())),
        Parsed::Ignore => Err(format!("{} is not an indicator", quote(s))),
    }
}

/// One indicator with its attributes, as a structured source (the API
/// store) hands it over. Borrowed, so the loader needs no knowledge of the
/// source's own types.
pub struct Entry<'a> {
    pub indicator: &'a str,
    pub attrs: Attrs<'a>,
}

/// Loads structured indicators (already validated) into `builder`.
pub fn load_entries<'a>(
    source: &str,
    path: &Path,
    items: impl IntoIterator<Item = Entry<'a>>,
    builder: &mut IndexBuilder,
) -> FileReport {
    let mut report = FileReport::new(source.to_string(), path.to_path_buf());
    report.format = Some("api");
    let defaults = FeedDefaults::default();
    let mut parser = Parser::new(&mut report, builder, usize::MAX, &defaults, 0);
    for (i, item) in items.into_iter().enumerate() {
        match parse_plain(item.indicator, None, &mut parser.name) {
            Ok(parsed) => {
                let tail = parser.tail_of(item.attrs);
                parser.add(parsed, tail);
            }
            Err(message) => parser.bad(i + 1, &message),
        }
    }
    parser.flush();
    report
}

/// Parses file content (format auto-detected) into `builder`; lines longer
/// than `max_line` bytes are skipped as bad lines.
pub fn parse_text(text: &str, report: &mut FileReport, builder: &mut IndexBuilder, max_line: usize) {
    parse_text_with(text, report, builder, max_line, &FeedDefaults::default(), 0)
}

/// [`parse_text`] with the feed's defaults; `loaded_at` (Unix seconds) is
/// when the file was written, the `last_seen` of indicators that need one.
pub fn parse_text_with(
    text: &str,
    report: &mut FileReport,
    builder: &mut IndexBuilder,
    max_line: usize,
    defaults: &FeedDefaults,
    loaded_at: i64,
) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.len() > 1 << 20 {
        // A guess from the line count, capped: a file of newlines must not
        // reserve gigabytes (the vector still grows as lines come).
        builder.reserve_nets(text.bytes().filter(|&b| b == b'\n').count().min(1 << 20));
    }
    let mut parser = Parser::new(report, builder, max_line, defaults, loaded_at);
    for line in text.lines() {
        if line.len() > max_line {
            // Not a header of any format: plain lines, which skips it.
            parser.report.format = Some("plain");
            parser.plain(text);
            break;
        }
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if t.starts_with("#fields") && t.split_whitespace().any(|c| c == "indicator") {
            parser.report.format = Some("zeek");
            parser.zeek(text);
            break;
        }
        if t.starts_with('#') {
            continue;
        }
        if let Some(columns) = CsvColumns::from_header(t) {
            parser.report.format = Some("csv");
            parser.csv(text, columns);
        } else {
            parser.report.format = Some("plain");
            parser.plain(text);
        }
        break;
    }
    parser.flush();
    if parser.report.format.is_none() {
        parser.report.format = Some("plain");
    }
    let hidden = parser.report.skipped_lines.saturating_sub(parser.logged);
    if hidden > 0 {
        tracing::warn!(
            "{}: {} bad lines skipped in total ({hidden} not shown)",
            parser.report.path.display(),
            parser.report.skipped_lines
        );
    }
}
