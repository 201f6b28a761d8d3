//! CSV indicator files: a header names the columns, in any order.

use super::super::meta::Attrs;
use super::parser::{lifecycle, LifecycleColumns, Parser};
use super::plain::parse_plain;

impl Parser<'_> {
    /// CSV with a header naming the columns (`ip_or_cidr,category,confidence`
    /// in any order, optionally `description` and `feed`).
    pub(super) fn csv(&mut self, text: &str, columns: CsvColumns) {
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
}

/// Column positions of a CSV indicator file.
pub(super) struct CsvColumns {
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
    pub(super) fn from_header(line: &str) -> Option<CsvColumns> {
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
