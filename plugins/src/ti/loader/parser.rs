//! The per-file parser every format drives: bad-line accounting, tail
//! interning with the feed's defaults, and the networks collected per file
//! (sorted once in [`Parser::flush`]); plus the lifecycle columns CSV and
//! Zeek intel share.

use enrichd_engine::limits::quote;

use super::super::index::{IndexBuilder, Net};
use super::super::meta::{parse_time, Attrs, FeedDefaults, Severity};
use super::super::Kind;
use super::FileReport;

/// Bad lines logged individually per file; the rest are only counted.
const LOGGED_BAD_LINES: usize = 10;

pub(super) enum Parsed {
    Net(Net, Kind, bool),
    /// Lowercase name in the parser's `name` buffer.
    Domain,
    /// Not an indicator, not an error (`0.0.0.0 localhost` in a hosts file).
    Ignore,
}

pub(super) struct Parser<'a> {
    pub(super) report: &'a mut FileReport,
    pub(super) builder: &'a mut IndexBuilder,
    /// Longer lines are skipped unparsed.
    pub(super) max_line: usize,
    pub(super) logged: usize,
    /// Reused buffers: lowercased domain and serialized tail.
    pub(super) name: String,
    pub(super) tail: String,
    /// This file's networks, added to the builder by `flush` once the
    /// file's own exact repeats are counted (sorting beats a lookup per
    /// line on million-line files).
    pub(super) nets: Vec<(Net, Kind, u32)>,
    pub(super) defaults: &'a FeedDefaults,
    pub(super) loaded_at: i64,
    /// The feed's id in the builder and its name (the matches' `source`).
    pub(super) feed: u16,
    pub(super) source: String,
}

impl<'a> Parser<'a> {
    pub(super) fn new(
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
    pub(super) fn tail_of(&mut self, attrs: Attrs<'_>) -> u32 {
        let attrs = attrs.with_defaults(self.defaults, self.loaded_at);
        attrs.write_tail(&mut self.tail, &self.source);
        self.builder.tail(&self.tail, attrs.meta(self.feed))
    }

    /// Skips (as a bad line) a line over `max_line` bytes: `true` when it
    /// was one. Its content is not quoted, only its length.
    pub(super) fn too_long(&mut self, line_no: usize, line: &str) -> bool {
        if line.len() <= self.max_line {
            return false;
        }
        let message = format!("line is {} bytes, over `max_line_bytes` ({})", line.len(), self.max_line);
        self.bad(line_no, &message);
        true
    }

    pub(super) fn bad(&mut self, line_no: usize, message: &str) {
        self.report.skipped_lines += 1;
        if self.logged < LOGGED_BAD_LINES {
            self.logged += 1;
            tracing::warn!("{}:{line_no}: {message}; line skipped", self.report.path.display());
            self.report.bad_lines.push(format!("{line_no}: {message}"));
        }
    }

    pub(super) fn add(&mut self, parsed: Parsed, tail: u32) {
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
    pub(super) fn flush(&mut self) {
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
}

/// Columns of the lifecycle attributes (CSV and Zeek intel alike).
pub(super) struct LifecycleColumns {
    /// Zeek only (CSV reads `confidence` with its own check).
    pub(super) confidence: Option<usize>,
    pub(super) severity: Option<usize>,
    pub(super) tags: Option<usize>,
    pub(super) first_seen: Option<usize>,
    pub(super) last_seen: Option<usize>,
    pub(super) valid_until: Option<usize>,
}

/// Reads the lifecycle columns of one line into `attrs`; the error names
/// the column.
pub(super) fn lifecycle<'a>(
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
