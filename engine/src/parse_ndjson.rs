//! NDJSON bodies: one record per line, on one thread or several.
//!
//! Unlike an envelope's array, NDJSON's record boundaries are known
//! without reading the records (a record is one line, and a line break
//! cannot occur inside a JSON string), so a large body is cut at line
//! breaks and its parts read on threads outright. Errors
//! name a record by its index in the whole body, which a part does not
//! know; a body with an error is read again on one thread for the message.

use std::ops::Range;

use super::{fast, parse_record, InputError, Limits, ParseSpec};
use crate::batch::Batch;
use crate::event::Event;
use crate::format::Format;

/// Parses newline-delimited JSON records (one object per line; blank lines
/// are skipped). `first_index` numbers records in error messages, so a caller
/// reading a long stream in chunks reports absolute positions. No record
/// limit: for text the caller trusts (tools, tests); the pipeline reads
/// with [`parse_ndjson_in_parts`] and its [`Limits`].
pub fn parse_ndjson(text: String, format: Format, spec: &ParseSpec, first_index: usize) -> Result<Batch, InputError> {
    whole(text, format, spec, first_index, usize::MAX)
}

/// [`parse_ndjson`] on one thread with at most `max` records.
fn whole(text: String, format: Format, spec: &ParseSpec, first_index: usize, max: usize) -> Result<Batch, InputError> {
    let filter = fast::KeyFilter::new(spec);
    let mut events = Vec::new();
    lines(&text, 0..text.len(), first_index, max, &filter, &mut events)?;
    Ok(Batch::new(text, format, None, events))
}

/// [`parse_ndjson`] held to `limits` (more records than
/// `limits.max_records` is [`InputError::TooManyRecords`]), reading the
/// lines in up to `parts` runs on threads: the same batch, or the same
/// error, as one thread.
pub fn parse_ndjson_in_parts(
    text: String,
    format: Format,
    spec: &ParseSpec,
    first_index: usize,
    limits: Limits,
    parts: usize,
) -> Result<Batch, InputError> {
    let max = limits.max_records;
    let ranges = cut(&text, parts);
    if ranges.len() < 2 {
        return whole(text, format, spec, first_index, max);
    }
    let filter = fast::KeyFilter::new(spec);
    // Each part stops past `max` records of its own, so the parts hold at
    // most `parts * max` events between them before the total is judged.
    let read = |range: &Range<usize>| -> Option<Vec<Event>> {
        let mut events = Vec::new();
        lines(&text, range.clone(), 0, max, &filter, &mut events).ok().map(|_| events)
    };
    let parts: Option<Vec<Vec<Event>>> = std::thread::scope(|scope| {
        let others: Vec<_> = ranges[1..]
            .iter()
            .map(|r| std::thread::Builder::new().spawn_scoped(scope, move || read(r)).map_err(|_| r))
            .collect();
        let first = read(&ranges[0]);
        let rest = others.into_iter().map(|spawned| match spawned {
            Ok(handle) => handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            // A part whose thread cannot start is read here.
            Err(range) => read(range),
        });
        std::iter::once(first).chain(rest).collect()
    });
    match parts {
        Some(parts) if parts.iter().map(Vec::len).sum::<usize>() <= max => {
            // The first part's events stay where they are; the others are
            // moved after them.
            let total = parts.iter().map(Vec::len).sum::<usize>();
            let mut parts = parts.into_iter();
            let mut events = parts.next().unwrap_or_default();
            events.reserve_exact(total - events.len());
            for mut part in parts {
                events.append(&mut part);
            }
            Ok(Batch::new(text, format, None, events))
        }
        // An error, or too many records in all: read again on one thread,
        // which words the error as it would have alone (a bad record
        // before the limit is reported as such) and stops past the limit.
        _ => whole(text, format, spec, first_index, max),
    }
}

/// `text` cut into up to `parts` ranges of whole lines, near evenly.
fn cut(text: &str, parts: usize) -> Vec<Range<usize>> {
    let b = text.as_bytes();
    let mut ranges = Vec::with_capacity(parts);
    let mut from = 0;
    for i in 1..parts {
        let target = (b.len() / parts * i).max(from);
        let Some(nl) = memchr::memchr(b'\n', &b[target..]) else { break };
        let end = target + nl + 1;
        if end < b.len() {
            ranges.push(from..end);
            from = end;
        }
    }
    ranges.push(from..b.len());
    ranges
}

/// Reads the lines of `text[range]` (whole lines) onto `events`; records
/// are numbered from `first_index` in errors. A record past the `max`th is
/// [`InputError::TooManyRecords`], found before it is read: a body of
/// millions of `{}` lines costs `max` events, not millions (checked only
/// after reading, a 5 MB body of them built ~1 GB of events first).
fn lines(
    text: &str,
    range: Range<usize>,
    first_index: usize,
    max: usize,
    filter: &fast::KeyFilter,
    events: &mut Vec<Event>,
) -> Result<(), InputError> {
    let mut index = first_index;
    let mut from = range.start;
    let first = events.len();
    while from < range.end {
        // Each line with its newline, as `split_inclusive('\n')` gives it,
        // found with the memchr crate's vectorised search (the standard
        // library's byte search showed up in profiles).
        let end = memchr::memchr(b'\n', &text.as_bytes()[from..range.end]).map_or(range.end, |i| from + i + 1);
        let line = &text[from..end];
        // JSON's own whitespace only: `str::trim` would also take Unicode
        // spaces (U+00A0, U+2028, VT, FF), which JSON does not allow
        // around a value, and accept or skip such lines.
        let content = line.trim_end_matches(['\n', '\r']);
        let body = content.trim_start_matches(JSON_SPACE);
        let lead = content.len() - body.len();
        let body = body.trim_end_matches(JSON_SPACE);
        if !body.is_empty() {
            if events.len() - first == max {
                // The lines after this one are not counted: the count says
                // "at least", as the error's message does.
                return Err(InputError::TooManyRecords { count: max + 1, max });
            }
            if events.len() == first {
                // Room for as many records as there would be of the first
                // one's size (growing by doubling copied every event
                // several times), capped so a tiny first line cannot ask
                // for a huge allocation.
                events.reserve(((range.end - range.start) / line.len()).min(RESERVE_MAX).min(max));
            }
            parse_record(text, from + lead, body.len(), index, filter, events)?;
            index += 1;
        }
        from = end;
    }
    Ok(())
}

/// What JSON counts as whitespace (RFC 8259, section 2).
const JSON_SPACE: [char; 4] = [' ', '\t', '\n', '\r'];

/// The most events a run of lines makes room for before it has read them.
const RESERVE_MAX: usize = 8192;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_cut_in_parts_reads_as_one_and_errors_name_the_whole_body_index() {
        let spec = ParseSpec::default();
        let records: Vec<String> = (0..1000)
            .map(|i| format!(r#"{{"src_ip":"10.0.{}.{}","n":"{}"}}"#, i / 256, i % 256, "x".repeat(i % 7)))
            .collect();
        // Blank lines and CRLF too.
        let text = records.join("\n\r\n") + "\n";
        let whole = parse_ndjson(text.clone(), Format::FlowsV1, &spec, 0).unwrap();
        for parts in [2, 3, 4, 7] {
            let split =
                parse_ndjson_in_parts(text.clone(), Format::FlowsV1, &spec, 0, Limits::default(), parts).unwrap();
            assert_eq!(split.len(), whole.len(), "{parts}");
            let ours: Vec<_> = split.events().iter().map(|e| (e.raw.start, e.raw.len, e.src_ip)).collect();
            let theirs: Vec<_> = whole.events().iter().map(|e| (e.raw.start, e.raw.len, e.src_ip)).collect();
            assert_eq!(ours, theirs, "{parts}");
        }
        // Record 900 is broken: every cut reports it by its index in the body.
        let bad = text.replacen(&records[900], r#"{"src_ip":"10.0.3.132""#, 1);
        for parts in [1, 2, 4] {
            let err =
                parse_ndjson_in_parts(bad.clone(), Format::FlowsV1, &spec, 5, Limits::default(), parts).err().unwrap();
            assert!(matches!(err, InputError::Record { index: 905, .. }), "{parts}: {err}");
        }
    }

    /// Around a record, only JSON's whitespace: a no-break space, a line
    /// separator, a vertical tab or a form feed makes the line a bad
    /// record (it was accepted, or skipped as blank).
    #[test]
    fn only_json_whitespace_surrounds_a_record() {
        let spec = ParseSpec::default();
        let read = |text: &str| parse_ndjson(text.to_string(), Format::FlowsV1, &spec, 1).map(|b| b.len());
        assert_eq!(read(" \t{\"src_ip\":\"10.0.0.1\"} \r\n\n  \t\n").unwrap(), 1);
        for space in ['\u{a0}', '\u{2028}', '\u{b}', '\u{c}'] {
            let before = format!("{{}}\n{space}{{\"src_ip\":\"10.0.0.1\"}}\n");
            assert!(matches!(read(&before), Err(InputError::Record { index: 2, .. })), "{space:?} before");
            let alone = format!("{{}}\n{space}\n");
            assert!(matches!(read(&alone), Err(InputError::Record { index: 2, .. })), "{space:?} alone");
        }
    }

    #[test]
    fn cuts_are_whole_lines_covering_the_text() {
        for text in ["", "a", "a\n", "a\nb", "aaaa\nb\nc\n", "\n\n\n"] {
            for parts in 1..5 {
                let ranges = cut(text, parts);
                assert_eq!(ranges.first().map(|r| r.start), Some(0), "{text:?}");
                assert_eq!(ranges.last().map(|r| r.end), Some(text.len()), "{text:?}");
                assert!(ranges.windows(2).all(|w| w[0].end == w[1].start && text.as_bytes()[w[0].end - 1] == b'\n'));
            }
        }
    }
}
