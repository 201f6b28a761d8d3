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

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use enrichd_engine::limits::{quote, read_capped};
use enrichd_engine::{source_info, SourceInfo};
use serde::Serialize;

use super::index::{IndexBuilder, Net, MAX_NAME};
use super::meta::{parse_time, Attrs, FeedDefaults, Severity};
use super::{Indicator, Kind};

/// Bad lines logged individually per file; the rest are only counted.
const LOGGED_BAD_LINES: usize = 10;

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
        builder.reserve_nets(text.bytes().filter(|&b| b == b'\n').count());
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

/// An indicator parsed from one line, before metadata.
enum Parsed {
    Net(Net, Kind, bool),
    /// Lowercase name in the parser's `name` buffer.
    Domain,
    /// Not an indicator, not an error (`0.0.0.0 localhost` in a hosts file).
    Ignore,
}

struct Parser<'a> {
    report: &'a mut FileReport,
    builder: &'a mut IndexBuilder,
    /// Longer lines are skipped unparsed.
    max_line: usize,
    logged: usize,
    /// Reused buffers: lowercased domain and serialized tail.
    name: String,
    tail: String,
    /// This file's networks, added to the builder by `flush` once the
    /// file's own exact repeats are counted (sorting beats a lookup per
    /// line on million-line files).
    nets: Vec<(Net, Kind, u32)>,
    defaults: &'a FeedDefaults,
    loaded_at: i64,
    /// The feed's id in the builder and its name (the matches' `source`).
    feed: u16,
    source: String,
}

impl<'a> Parser<'a> {
    fn new(
        report: &'a mut FileReport,
        builder: &'a mut IndexBuilder,
        max_line: usize,
        defaults: &'a FeedDefaults,
        loaded_at: i64,
    ) -> Self {
        // Matches name their source as before (the configured path, or
        // the `feeds` entry's name). The feed, whose name becomes
        // Prometheus labels and public metrics, never carries a directory
        // path: an unnamed file's feed is its file stem.
        let source = report.feed.clone().unwrap_or_else(|| report.source.clone());
        let feed_name = report.feed.clone().unwrap_or_else(|| {
            report.path.file_stem().map_or_else(|| "file".to_string(), |s| s.to_string_lossy().into_owned())
        });
        let feed = builder.feed(defaults.feed(&feed_name));
        Parser {
            report,
            builder,
            max_line,
            logged: 0,
            name: String::new(),
            tail: String::new(),
            nets: Vec::new(),
            defaults,
            loaded_at,
            feed,
            source,
        }
    }

    /// Interns the tail and metadata of an indicator with `attrs` (the
    /// feed's defaults fill what it does not say).
    fn tail_of(&mut self, attrs: Attrs<'_>) -> u32 {
        let attrs = attrs.with_defaults(self.defaults, self.loaded_at);
        attrs.write_tail(&mut self.tail, &self.source);
        self.builder.tail(&self.tail, attrs.meta(self.feed))
    }

    /// Skips (as a bad line) a line over `max_line` bytes: `true` when it
    /// was one. Its content is not quoted, only its length.
    fn too_long(&mut self, line_no: usize, line: &str) -> bool {
        if line.len() <= self.max_line {
            return false;
        }
        let message = format!("line is {} bytes, over `max_line_bytes` ({})", line.len(), self.max_line);
        self.bad(line_no, &message);
        true
    }

    fn bad(&mut self, line_no: usize, message: &str) {
        self.report.skipped_lines += 1;
        if self.logged < LOGGED_BAD_LINES {
            self.logged += 1;
            tracing::warn!("{}:{line_no}: {message}; line skipped", self.report.path.display());
            self.report.bad_lines.push(format!("{line_no}: {message}"));
        }
    }

    fn add(&mut self, parsed: Parsed, tail: u32) {
        match parsed {
            Parsed::Net(net, kind, normalized) => {
                self.report.normalized += normalized as usize;
                self.nets.push((net, kind, tail));
            }
            Parsed::Domain => {
                let added = self.builder.add_domain(&self.name, tail);
                self.report.record(Kind::Domain, added);
            }
            Parsed::Ignore => {}
        }
    }

    /// Counts the file's repeated networks and hands the rest to the
    /// builder.
    fn flush(&mut self) {
        let mut nets = std::mem::take(&mut self.nets);
        nets.sort_unstable_by_key(|&(net, kind, tail)| (net, kind as u8, tail));
        let mut previous = None;
        for (net, kind, tail) in nets {
            let repeat = previous == Some((net, kind, tail));
            self.report.record(kind, !repeat);
            if !repeat {
                self.builder.add_net(net, kind, tail);
            }
            previous = Some((net, kind, tail));
        }
    }

    /// One indicator per line: the first whitespace-separated token (IPsum's
    /// `ip<TAB>count` keeps the IP), `domain:NAME`, a bare domain, or a hosts
    /// line `0.0.0.0 name`; `#` starts a comment.
    fn plain(&mut self, text: &str) {
        let tail = self.tail_of(Attrs::default());
        for (i, line) in text.lines().enumerate() {
            if self.too_long(i + 1, line) {
                continue;
            }
            let content = strip_comment(line);
            let mut tokens = content.split_whitespace();
            let Some(first) = tokens.next() else { continue };
            match parse_plain(first, tokens.next(), &mut self.name) {
                Ok(parsed) => self.add(parsed, tail),
                Err(message) => self.bad(i + 1, &message),
            }
        }
    }

    /// CSV with a header naming the columns (`ip_or_cidr,category,confidence`
    /// in any order, optionally `description` and `feed`).
    fn csv(&mut self, text: &str, columns: CsvColumns) {
        let mut header_seen = false;
        for (i, line) in text.lines().enumerate() {
            if self.too_long(i + 1, line) {
                continue;
            }
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            if !header_seen {
                header_seen = true;
                continue;
            }
            let owned: Vec<String>;
            let fields: Vec<&str> = if t.contains('"') {
                owned = split_quoted(t);
                owned.iter().map(String::as_str).collect()
            } else {
                t.split(',').map(str::trim).collect()
            };
            if fields.len() < columns.needed {
                self.bad(i + 1, &format!("expected {} columns, found {}", columns.needed, fields.len()));
                continue;
            }
            let get = |c: Option<usize>| c.map(|c| fields[c]).filter(|s| !s.is_empty());
            let confidence = match get(columns.confidence).map(|c| c.parse::<u8>()) {
                None => None,
                Some(Ok(c)) if c <= 100 => Some(c),
                Some(_) => {
                    self.bad(i + 1, "confidence must be an integer from 0 to 100");
                    continue;
                }
            };
            let parsed = match parse_plain(fields[columns.indicator], None, &mut self.name) {
                Ok(p) => p,
                Err(message) => {
                    self.bad(i + 1, &message);
                    continue;
                }
            };
            let mut attrs = Attrs {
                category: get(columns.category),
                confidence,
                description: get(columns.description),
                feed: get(columns.feed),
                ..Attrs::default()
            };
            if let Err(message) = lifecycle(&mut attrs, get, &columns.lifecycle) {
                self.bad(i + 1, &message);
                continue;
            }
            let tail = self.tail_of(attrs);
            self.add(parsed, tail);
        }
    }

    /// Zeek intel framework files: `#fields indicator indicator_type
    /// meta.source ...`, TAB-separated, `-` unset.
    fn zeek(&mut self, text: &str) {
        let mut sep = "\t".to_string();
        let mut columns: Option<ZeekColumns> = None;
        for (i, line) in text.lines().enumerate() {
            if self.too_long(i + 1, line) || line.trim().is_empty() {
                continue;
            }
            if let Some(value) = line.strip_prefix("#separator") {
                sep = unescape_separator(value.trim_start_matches([' ', '\t']));
                continue;
            }
            if line.starts_with("#fields") {
                let names: Vec<&str> = line.split(sep.as_str()).skip(1).collect();
                columns = ZeekColumns::from_names(&names);
                if columns.is_none() {
                    self.report.error = Some(format!("line {}: `#fields` lacks indicator or indicator_type", i + 1));
                    return;
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let Some(cols) = &columns else { continue };
            let fields: Vec<&str> = line.split(sep.as_str()).collect();
            if fields.len() != cols.count {
                self.bad(i + 1, &format!("expected {} fields, found {}", cols.count, fields.len()));
                continue;
            }
            let get = |c: Option<usize>| c.map(|c| fields[c]).filter(|s| !matches!(*s, "-" | "(empty)" | ""));
            let Some(indicator) = get(Some(cols.indicator)) else {
                self.bad(i + 1, "indicator is unset");
                continue;
            };
            let Some(kind) = get(Some(cols.indicator_type)) else {
                self.bad(i + 1, "indicator_type is unset");
                continue;
            };
            let parsed = match kind.strip_prefix("Intel::").unwrap_or(kind) {
                "ADDR" => match indicator.parse::<IpAddr>() {
                    Ok(ip) => Ok(Parsed::Net(Net::host(ip), Kind::Addr, false)),
                    Err(_) => Err(format!("{} is not an IP address", quote(indicator))),
                },
                "SUBNET" => parse_net(indicator)
                    .map(|(net, normalized)| Parsed::Net(net, Kind::Subnet, normalized))
                    .ok_or_else(|| format!("{} is not a CIDR network", quote(indicator))),
                "DOMAIN" => normalize_domain(indicator, false, &mut self.name)
                    .map(|()| Parsed::Domain)
                    .map_err(|e| format!("{}: {e}", quote(indicator))),
                _ => {
                    self.report.unsupported += 1;
                    continue;
                }
            };
            let parsed = parsed.and_then(|parsed| {
                let mut attrs = Attrs {
                    feed: get(cols.source),
                    description: get(cols.desc),
                    url: get(cols.url),
                    ..Attrs::default()
                };
                lifecycle(&mut attrs, get, &cols.lifecycle)?;
                Ok((parsed, attrs))
            });
            match parsed {
                Ok((parsed, attrs)) => {
                    let tail = self.tail_of(attrs);
                    self.add(parsed, tail);
                }
                Err(message) => self.bad(i + 1, &message),
            }
        }
    }
}

/// Column positions of a CSV indicator file.
struct CsvColumns {
    indicator: usize,
    category: Option<usize>,
    confidence: Option<usize>,
    description: Option<usize>,
    feed: Option<usize>,
    lifecycle: LifecycleColumns,
    /// Fields a data line must have to reach every known column.
    needed: usize,
}

impl CsvColumns {
    fn from_header(line: &str) -> Option<CsvColumns> {
        let names: Vec<String> = line.split(',').map(|c| c.trim().trim_matches('"').to_ascii_lowercase()).collect();
        let find = |wanted: &[&str]| names.iter().position(|n| wanted.contains(&n.as_str()));
        let indicator = find(&["ip_or_cidr", "indicator"])?;
        let mut cols = CsvColumns {
            indicator,
            category: find(&["category"]),
            confidence: find(&["confidence"]),
            description: find(&["description"]),
            feed: find(&["feed"]),
            lifecycle: LifecycleColumns {
                confidence: None,
                severity: find(&["severity"]),
                tags: find(&["tags"]),
                first_seen: find(&["first_seen"]),
                last_seen: find(&["last_seen"]),
                valid_until: find(&["valid_until", "expires"]),
            },
            needed: 0,
        };
        let l = &cols.lifecycle;
        cols.needed = [Some(cols.indicator), cols.category, cols.confidence, cols.description, cols.feed]
            .into_iter()
            .chain([l.severity, l.tags, l.first_seen, l.last_seen, l.valid_until])
            .flatten()
            .max()
            .unwrap_or(0)
            + 1;
        Some(cols)
    }
}

/// Column positions of a Zeek intel file.
struct ZeekColumns {
    indicator: usize,
    indicator_type: usize,
    source: Option<usize>,
    desc: Option<usize>,
    url: Option<usize>,
    lifecycle: LifecycleColumns,
    count: usize,
}

impl ZeekColumns {
    fn from_names(names: &[&str]) -> Option<ZeekColumns> {
        let find = |wanted: &str| names.iter().position(|n| n.trim() == wanted);
        Some(ZeekColumns {
            indicator: find("indicator")?,
            indicator_type: find("indicator_type")?,
            source: find("meta.source"),
            desc: find("meta.desc"),
            url: find("meta.url"),
            // Zeek's intel framework defines source, desc, url; the CIF
            // extension adds cif_confidence / cif_severity / cif_tags /
            // cif_firstseen / cif_lastseen, and teams add their own
            // meta.* columns under the plain names.
            lifecycle: LifecycleColumns {
                confidence: find("meta.confidence").or_else(|| find("meta.cif_confidence")),
                severity: find("meta.severity").or_else(|| find("meta.cif_severity")),
                tags: find("meta.tags").or_else(|| find("meta.cif_tags")),
                first_seen: find("meta.first_seen").or_else(|| find("meta.cif_firstseen")),
                last_seen: find("meta.last_seen").or_else(|| find("meta.cif_lastseen")),
                valid_until: find("meta.valid_until").or_else(|| find("meta.expires")),
            },
            count: names.len(),
        })
    }
}

/// Columns of the lifecycle attributes (CSV and Zeek intel alike).
struct LifecycleColumns {
    /// Zeek only (CSV reads `confidence` with its own check).
    confidence: Option<usize>,
    severity: Option<usize>,
    tags: Option<usize>,
    first_seen: Option<usize>,
    last_seen: Option<usize>,
    valid_until: Option<usize>,
}

/// Reads the lifecycle columns of one line into `attrs`; the error names
/// the column.
fn lifecycle<'a>(
    attrs: &mut Attrs<'a>,
    get: impl Fn(Option<usize>) -> Option<&'a str>,
    cols: &LifecycleColumns,
) -> Result<(), String> {
    if let Some(c) = get(cols.confidence) {
        // A number from 0 to 100 (Zeek's CIF extension writes a double).
        let value = c.parse::<f64>().ok().filter(|v| (0.0..=100.0).contains(v));
        attrs.confidence = Some(value.ok_or("confidence must be a number from 0 to 100")?.round() as u8);
    }
    if let Some(s) = get(cols.severity) {
        attrs.severity =
            Some(Severity::parse(s).ok_or("severity must be info, low, medium, high or critical (or 1-5)")?);
    }
    if let Some(t) = get(cols.tags) {
        attrs.add_tags(t);
    }
    for (col, slot, name) in [
        (cols.first_seen, &mut attrs.first_seen, "first_seen"),
        (cols.last_seen, &mut attrs.last_seen, "last_seen"),
        (cols.valid_until, &mut attrs.valid_until, "valid_until"),
    ] {
        if let Some(t) = get(col) {
            *slot = Some(
                parse_time(t)
                    .ok_or_else(|| format!("{name} {} is not a time (RFC 3339, a date or Unix seconds)", quote(t)))?,
            );
        }
    }
    Ok(())
}

/// `\x09` -> TAB (Zeek writes the separator escaped).
fn unescape_separator(value: &str) -> String {
    match value.strip_prefix("\\x").and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
        Some(b) => char::from(b).to_string(),
        None if value.is_empty() => "\t".into(),
        None => value.to_string(),
    }
}

/// Splits a CSV line with `"quoted, fields"` (and `""` escapes).
fn split_quoted(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().expect("non-empty").push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().expect("non-empty").push(c),
        }
    }
    fields.iter_mut().for_each(|f| *f = f.trim().to_string());
    fields
}

/// The line without a `#` comment (whole-line, or after whitespace).
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

/// Addresses hosts-format block lists point names at.
fn is_sink(ip: IpAddr) -> bool {
    ip.is_unspecified() || ip.is_loopback()
}

/// Names hosts files map for the system itself, not indicators.
fn is_hosts_boilerplate(name: &str) -> bool {
    matches!(name, "localhost" | "localhost.localdomain" | "local" | "broadcasthost" | "0.0.0.0")
        || name.starts_with("ip6-")
}

/// Parses one indicator token (with the next token, for hosts lines).
fn parse_plain(first: &str, second: Option<&str>, name: &mut String) -> Result<Parsed, String> {
    if let Some(domain) = first.strip_prefix("domain:") {
        return normalize_domain(domain, false, name)
            .map(|()| Parsed::Domain)
            .map_err(|e| format!("{}: {e}", quote(first)));
    }
    if let Some((net, normalized)) = parse_net(first) {
        if let (Net::V4(_, 32) | Net::V6(_, 128), Some(host)) = (net, second) {
            if !first.contains('/') && is_sink(first.parse().expect("parsed as a network")) {
                if is_hosts_boilerplate(host) {
                    return Ok(Parsed::Ignore);
                }
                return normalize_domain(host, false, name)
                    .map(|()| Parsed::Domain)
                    .map_err(|e| format!("hosts entry {}: {e}", quote(host)));
            }
        }
        let kind = if first.contains('/') { Kind::Subnet } else { Kind::Addr };
        return Ok(Parsed::Net(net, kind, normalized));
    }
    if first.contains(['/', ':']) || first.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{} is not a valid IP address or CIDR network", quote(first)));
    }
    normalize_domain(first, true, name)
        .map(|()| Parsed::Domain)
        .map_err(|e| format!("{} is not an IP address, CIDR network or domain ({e})", quote(first)))
}

/// `ip` or `ip/len`; host bits are cleared (the second value says whether
/// there were any).
pub fn parse_net(s: &str) -> Option<(Net, bool)> {
    match s.split_once('/') {
        None => s.parse::<IpAddr>().ok().map(|ip| (Net::host(ip), false)),
        Some((ip, len)) => {
            if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Net::new(ip.parse().ok()?, len.parse().ok()?)
        }
    }
}

/// Validates a domain name and writes it lowercased, without a trailing dot
/// or a leading `*.`, into `out`. `require_dot` refuses single labels (for
/// bare names, where `localhost` or a typo is likelier than a TLD).
pub fn normalize_domain(s: &str, require_dot: bool, out: &mut String) -> Result<(), &'static str> {
    let s = s.strip_prefix("*.").unwrap_or(s);
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return Err("empty domain name");
    }
    if s.len() > MAX_NAME {
        return Err("domain name longer than 253 bytes");
    }
    if require_dot && !s.contains('.') {
        return Err("a bare name needs at least one dot");
    }
    for label in s.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("empty label or label longer than 63 bytes");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err("invalid character in domain name");
        }
    }
    if s.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return Err("all-numeric top-level label");
    }
    out.clear();
    out.extend(s.chars().map(|c| c.to_ascii_lowercase()));
    Ok(())
}
