//! Indicator metadata and lifecycle: what a listing carries besides its
//! key (feed, confidence, severity, tags, first/last seen, valid until),
//! and whether it is live at a given time.
//!
//! Why it is shaped like this:
//!
//! - **Stored once, shared.** The JSON a match writes for a listing's
//!   metadata is pre-serialized and interned (`IndexBuilder::tail`); the
//!   few numbers the hot path needs ([`Meta`]: 16 bytes) sit beside it
//!   under the same id. Listings of one plain list all share one.
//! - **Expiry and decay need no reload.** Both are decided per match
//!   against the batch's "now" (one clock read per batch): an indicator past
//!   `valid_until` stops matching the moment it expires. Decay is per feed
//!   ([`Feed::half_life_s`]): effective confidence = confidence (100 when
//!   the indicator has none) × 2^(−age / half-life), age counted from
//!   `last_seen`; below the feed's `decay_floor` the indicator stops
//!   matching. Most events match nothing and never get here.
//! - **Without metadata nothing changes**: no `valid_until`, no decay, no
//!   confidence: such a listing is always live and its match is written as
//!   before, so rules keep their verdicts.

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// No confidence given.
pub const NO_CONFIDENCE: u8 = u8::MAX;
/// No `last_seen` / `first_seen`.
pub const NO_TIME: i64 = i64::MIN;
/// No `valid_until`.
pub const FOREVER: i64 = i64::MAX;
/// Most tags kept per indicator, and longest tag: a match's size stays
/// bounded whatever a feed writes.
pub const MAX_TAGS: usize = 8;
pub const MAX_TAG_BYTES: usize = 64;

/// Indicator severity, lowest first (the `ti_severity` fact's labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info = 1,
    Low = 2,
    Medium = 3,
    High = 4,
    Critical = 5,
}

/// The `ti_severity` fact's labels, by scalar value (0 unused).
pub const SEVERITY_LABELS: [&str; 6] = ["none", "info", "low", "medium", "high", "critical"];

impl Severity {
    pub fn name(self) -> &'static str {
        SEVERITY_LABELS[self as usize]
    }

    /// `info|low|medium|high|critical` (any case), or 1-5.
    pub fn parse(s: &str) -> Option<Severity> {
        let s = s.trim();
        Some(match s.to_ascii_lowercase().as_str() {
            "info" | "informational" | "1" => Severity::Info,
            "low" | "2" => Severity::Low,
            "medium" | "moderate" | "3" => Severity::Medium,
            "high" | "4" => Severity::High,
            "critical" | "5" => Severity::Critical,
            _ => return None,
        })
    }
}

/// What the hot path needs of a listing's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Meta {
    /// Index into the index's feeds.
    pub feed: u16,
    /// 0-100, or [`NO_CONFIDENCE`].
    pub confidence: u8,
    /// `Severity as u8`, 0 when none.
    pub severity: u8,
    /// Unix seconds, or [`NO_TIME`].
    pub last_seen: i64,
    /// Unix seconds, or [`FOREVER`].
    pub valid_until: i64,
}

impl Default for Meta {
    /// No metadata, feed 0: always live.
    fn default() -> Self {
        Meta { feed: 0, confidence: NO_CONFIDENCE, severity: 0, last_seen: NO_TIME, valid_until: FOREVER }
    }
}

/// A feed: the indicators of one file (or the API store), with its decay.
#[derive(Clone, Debug, PartialEq)]
pub struct Feed {
    /// The `source` of its matches and the `feed` label of its metrics.
    pub name: String,
    /// Seconds for the effective confidence to halve; 0: no decay.
    pub half_life_s: f64,
    /// Effective confidence below which an indicator stops matching.
    pub floor: u8,
}

/// The feed of listings whose feed is not in the index (built by hand in
/// tests): no decay.
pub static NO_FEED: Feed = Feed { name: String::new(), half_life_s: 0.0, floor: 0 };

/// A listing's state at one time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// Matches; with its effective confidence when it has one (or decays).
    Live(Option<u8>),
    Expired,
    Decayed,
}

impl Meta {
    /// Whether the listing matches at `now` (Unix seconds).
    #[inline]
    pub fn life(&self, feed: &Feed, now: i64) -> Life {
        if now >= self.valid_until {
            return Life::Expired;
        }
        let confidence = (self.confidence != NO_CONFIDENCE).then_some(self.confidence);
        if feed.half_life_s <= 0.0 || self.last_seen == NO_TIME {
            return Life::Live(confidence);
        }
        let age = (now - self.last_seen).max(0) as f64;
        let base = f64::from(confidence.unwrap_or(100));
        let effective = (base * (-age / feed.half_life_s).exp2()).round() as u8;
        if effective < feed.floor {
            Life::Decayed
        } else {
            Life::Live(Some(effective))
        }
    }
}

/// Metadata of one indicator as a source gives it (borrowed), before it is
/// serialized and interned.
#[derive(Clone, Debug, Default)]
pub struct Attrs<'a> {
    pub category: Option<&'a str>,
    pub confidence: Option<u8>,
    pub severity: Option<Severity>,
    /// Comma-, `;`- or `|`-separated, or already split.
    pub tags: Vec<&'a str>,
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    pub valid_until: Option<i64>,
    /// Zeek intel `meta.source`, CSV `feed`: the upstream the file's
    /// publisher names (not the feed metrics count by, which is the file).
    pub feed: Option<&'a str>,
    pub description: Option<&'a str>,
    pub url: Option<&'a str>,
}

impl<'a> Attrs<'a> {
    /// Adds tags from a separated list, bounded by [`MAX_TAGS`] /
    /// [`MAX_TAG_BYTES`] (longer tags are dropped, not cut).
    pub fn add_tags(&mut self, list: &'a str) {
        for tag in list.split([',', ';', '|']).map(str::trim) {
            if !tag.is_empty() && tag.len() <= MAX_TAG_BYTES && self.tags.len() < MAX_TAGS && !self.tags.contains(&tag)
            {
                self.tags.push(tag);
            }
        }
    }

    /// Fills what the indicator does not say from its feed's defaults.
    pub fn with_defaults(mut self, d: &'a FeedDefaults, loaded_at: i64) -> Self {
        self.confidence = self.confidence.or(d.confidence);
        self.severity = self.severity.or(d.severity);
        if self.tags.is_empty() {
            for tag in &d.tags {
                self.add_tags(tag);
            }
        }
        if self.valid_until.is_none() {
            // A lifetime counts from when the indicator was last seen; for a
            // plain list, from the file's modification time: a list nobody
            // refreshes expires.
            let from = self.last_seen.unwrap_or(loaded_at);
            self.valid_until = d.valid_for_s.map(|s| from.saturating_add(s as i64));
        }
        if self.last_seen.is_none() && (d.half_life_s.is_some() || d.valid_for_s.is_some()) {
            self.last_seen = Some(loaded_at);
        }
        self
    }

    /// The hot-path part, for feed `feed`.
    pub fn meta(&self, feed: u16) -> Meta {
        Meta {
            feed,
            confidence: self.confidence.unwrap_or(NO_CONFIDENCE),
            severity: self.severity.map_or(0, |s| s as u8),
            last_seen: self.last_seen.unwrap_or(NO_TIME),
            valid_until: self.valid_until.unwrap_or(FOREVER),
        }
    }

    /// Serializes the constant part of a match after `value`:
    /// `,"source":"...","category":...,"confidence":N,...}`. Keys are only
    /// written when set, so a listing without metadata writes what it
    /// always did.
    pub fn write_tail(&self, out: &mut String, source: &str) {
        out.clear();
        out.push_str(",\"source\":");
        push_json_str(out, source);
        if let Some(c) = self.category {
            out.push_str(",\"category\":");
            push_json_str(out, c);
        }
        if let Some(c) = self.confidence {
            let _ = write!(out, ",\"confidence\":{c}");
        }
        if let Some(s) = self.severity {
            let _ = write!(out, ",\"severity\":\"{}\"", s.name());
        }
        if !self.tags.is_empty() {
            out.push_str(",\"tags\":[");
            for (i, t) in self.tags.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_str(out, t);
            }
            out.push(']');
        }
        for (key, t) in
            [("first_seen", self.first_seen), ("last_seen", self.last_seen), ("valid_until", self.valid_until)]
        {
            if let Some(t) = t {
                let _ = write!(out, ",\"{key}\":\"{}\"", format_time(t));
            }
        }
        for (key, v) in [("feed", self.feed), ("description", self.description), ("url", self.url)] {
            if let Some(v) = v {
                let _ = write!(out, ",\"{key}\":");
                // Every match carries these texts, and an index holds one
                // per distinct metadata: a feed's 8 KiB lines of control
                // characters (6 bytes each, escaped) must not make each a
                // 48 KiB tail.
                push_json_str(out, &v[..v.floor_char_boundary(MAX_TEXT_BYTES)]);
            }
        }
        out.push('}');
    }
}

/// Defaults and lifecycle of one indicator file (a `[[chain.feeds]]` entry
/// of a `ti` stage).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FeedDefaults {
    /// The indicator file these settings apply to: a path as listed in
    /// `paths`, or a file inside a listed directory (`dir/name`), relative
    /// to the config file like `paths`.
    pub path: String,
    /// The feed's name: the `source` of its matches, the `feed` label of its
    /// metrics and hit statistics (default: the path as configured).
    pub name: Option<String>,
    /// Confidence 0-100 of indicators that do not give one (plain lists).
    pub confidence: Option<u8>,
    /// Severity of indicators that do not give one: `info`, `low`,
    /// `medium`, `high` or `critical`.
    pub severity: Option<Severity>,
    /// Tags of indicators that give none (at most 8 kept, each up to 64
    /// bytes).
    pub tags: Vec<String>,
    /// Lifetime, in seconds, of indicators without a `valid_until`,
    /// counted from their `last_seen` (for a plain list: the file's
    /// modification time). Past it they stop matching, without a reload.
    pub valid_for_s: Option<u64>,
    /// Decay: seconds for an indicator's effective confidence (its
    /// confidence, or 100) to halve, counted from its `last_seen` (a plain
    /// list: the file's modification time). Unset: no decay.
    pub half_life_s: Option<u64>,
    /// With `half_life_s`: effective confidence below which an indicator
    /// stops matching (default 0: never).
    pub decay_floor: u8,
}

impl FeedDefaults {
    pub fn validate(&self) -> Result<(), String> {
        if self.path.trim().is_empty() {
            return Err("`feeds` entries need a `path`".into());
        }
        if self.confidence.is_some_and(|c| c > 100) || self.decay_floor > 100 {
            return Err(format!("feed {}: `confidence` and `decay_floor` are from 0 to 100", self.path));
        }
        if self.half_life_s == Some(0) || self.valid_for_s == Some(0) {
            return Err(format!("feed {}: `half_life_s` and `valid_for_s` must be positive", self.path));
        }
        if self.name.as_deref().is_some_and(|n| n.trim().is_empty() || n.len() > 128) {
            return Err(format!("feed {}: `name` must be 1 to 128 bytes", self.path));
        }
        if self.tags.iter().any(|t| t.trim().is_empty() || t.len() > MAX_TAG_BYTES) {
            return Err(format!("feed {}: `tags` entries must be 1 to {MAX_TAG_BYTES} bytes", self.path));
        }
        Ok(())
    }

    /// The feed's decay parameters under `name`.
    pub fn feed(&self, name: &str) -> Feed {
        Feed {
            name: name.into(),
            half_life_s: self.half_life_s.map_or(0.0, |s| s as f64),
            floor: if self.half_life_s.is_some() { self.decay_floor } else { 0 },
        }
    }
}

/// Parses a time: Unix seconds (Zeek writes `1723351200.4`), an RFC 3339
/// date-time (`2026-01-02T03:04:05Z`, offsets and fractions allowed) or a
/// date (`2026-01-02`, midnight UTC).
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs = s.split('.').next()?;
        return secs.parse::<i64>().ok().filter(|&t| t < 1 << 40);
    }
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())?
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = crate::civil::days_from_civil(y, m, d);
    if b.len() == 10 {
        return Some(days * 86_400);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" | "" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = rest[1..].split_once(':')?;
            if oh.len() != 2 || om.len() != 2 {
                return None;
            }
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss - offset)
}

/// Unix seconds as RFC 3339 UTC.
pub fn format_time(t: i64) -> String {
    let secs = u64::try_from(t).unwrap_or(0);
    enrichd_engine::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// Longest description, feed name or URL kept with an indicator, bytes.
pub const MAX_TEXT_BYTES: usize = 1024;

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_the_forms_feeds_write() {
        assert_eq!(parse_time("1723351200"), Some(1_723_351_200));
        assert_eq!(parse_time("1723351200.4"), Some(1_723_351_200));
        assert_eq!(parse_time("1970-01-02"), Some(86_400));
        assert_eq!(parse_time("2024-08-11T04:40:00Z"), Some(1_723_351_200));
        assert_eq!(parse_time("2024-08-11T06:40:00.250+02:00"), Some(1_723_351_200));
        assert_eq!(parse_time("2000-03-01T00:00:00Z"), Some(951_868_800));
        for bad in ["", "yesterday", "2024-13-01", "2024-08-11T25:00:00Z", "2024-08-11T04:40:00X", "2024-8-1"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        assert_eq!(parse_time(&format_time(1_723_351_200)), Some(1_723_351_200));
    }

    #[test]
    fn expiry_and_decay() {
        let no_decay = Feed { name: "f".into(), half_life_s: 0.0, floor: 0 };
        let plain = Attrs::default().meta(0);
        assert_eq!(plain.life(&no_decay, i64::MAX - 1), Life::Live(None), "no metadata: always live");
        let expiring = Attrs { valid_until: Some(100), confidence: Some(70), ..Attrs::default() }.meta(0);
        assert_eq!(expiring.life(&no_decay, 99), Life::Live(Some(70)));
        assert_eq!(expiring.life(&no_decay, 100), Life::Expired);
        let decaying = Feed { name: "d".into(), half_life_s: 100.0, floor: 30 };
        let seen = Attrs { last_seen: Some(1000), confidence: Some(80), ..Attrs::default() }.meta(0);
        assert_eq!(seen.life(&decaying, 1000), Life::Live(Some(80)));
        assert_eq!(seen.life(&decaying, 1100), Life::Live(Some(40)));
        assert_eq!(seen.life(&decaying, 1200), Life::Decayed, "20 < floor 30");
        let unrated = Attrs { last_seen: Some(0), ..Attrs::default() }.meta(0);
        assert_eq!(unrated.life(&decaying, 100), Life::Live(Some(50)), "no confidence decays from 100");
    }

    #[test]
    fn tails_carry_only_what_is_set() {
        let mut out = String::new();
        Attrs::default().write_tail(&mut out, "ti/x.txt");
        assert_eq!(out, r#","source":"ti/x.txt"}"#);
        let mut a = Attrs { confidence: Some(5), severity: Some(Severity::High), ..Attrs::default() };
        a.add_tags("scanner; tor,scanner|");
        a.valid_until = Some(86_400);
        a.write_tail(&mut out, "f");
        assert_eq!(
            out,
            r#","source":"f","confidence":5,"severity":"high","tags":["scanner","tor"],"valid_until":"1970-01-02T00:00:00Z"}"#
        );
    }
}
