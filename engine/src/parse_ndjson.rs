//! NDJSON bodies: one record per line, on one thread or several.
//!
//! Unlike an envelope's array, NDJSON's record boundaries are known
//! without reading the records (a record is one line, and a line break
//! cannot occur inside a JSON string), so a large body is cut at line
//! breaks and its parts read on threads outright. Errors
//! name a record by its index in the whole body, which a part does not
//! know; a body with an error is read again on one thread for the message.

use std::ops::Range;

use super::{fast, parse_record, InputError, ParseSpec};
use crate::batch::Batch;
use crate::event::Event;
use crate::format::Format;

/// Parses newline-delimited JSON records (one object per line; blank lines
/// are skipped). `first_index` numbers records in error messages, so a caller
/// reading a long stream in chunks reports absolute positions.
pub fn parse_ndjson(text: String, format: Format, spec: &ParseSpec, first_index: usize) -> Result<Batch, InputError> {
    let filter = fast::KeyFilter::new(spec);
    let mut events = Vec::new();
    lines(&text, 0..text.len(), first_index, &filter, &mut events)?;
    Ok(Batch::new(text, format, None, events))
}

/// [`parse_ndjson`] reading the lines in up to `parts` runs on threads:
/// the same batch, or the same error.
pub fn parse_ndjson_in_parts(
    text: String,
    format: Format,
    spec: &ParseSpec,
    first_index: usize,
    parts: usize,
) -> Result<Batch, InputError> {
    let ranges = cut(&text, parts);
    if ranges.len() < 2 {
        return parse_ndjson(text, format, spec, first_index);
    }
    let filter = fast::KeyFilter::new(spec);
    let read = |range: &Range<usize>| -> Option<Vec<Event>> {
        let mut events = Vec::new();
        lines(&text, range.clone(), 0, &filter, &mut events).ok().map(|_| events)
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
        Some(parts) => {
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
        None => parse_ndjson(text, format, spec, first_index),
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
/// are numbered from `first_index` in errors.
fn lines(
    text: &str,
    range: Range<usize>,
    first_index: usize,
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
        let content = line.trim_end_matches(['\n', '\r']);
        let lead = content.len() - content.trim_start().len();
        let body = content.trim();
        if !body.is_empty() {
            if events.len() == first {
                // Room for as many records as there would be of the first
                // one's size (growing by doubling copied every event
                // several times), capped so a tiny first line cannot ask
                // for a huge allocation.
                events.reserve(((range.end - range.start) / line.len()).min(RESERVE_MAX));
            }
            parse_record(text, from + lead, body.len(), index, filter, events)?;
            index += 1;
        }
        from = end;
    }
    Ok(())
}

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
            let split = parse_ndjson_in_parts(text.clone(), Format::FlowsV1, &spec, 0, parts).unwrap();
            assert_eq!(split.len(), whole.len(), "{parts}");
            let ours: Vec<_> = split.events().iter().map(|e| (e.raw.start, e.raw.len, e.src_ip)).collect();
            let theirs: Vec<_> = whole.events().iter().map(|e| (e.raw.start, e.raw.len, e.src_ip)).collect();
            assert_eq!(ours, theirs, "{parts}");
        }
        // Record 900 is broken: every cut reports it by its index in the body.
        let bad = text.replacen(&records[900], r#"{"src_ip":"10.0.3.132""#, 1);
        for parts in [1, 2, 4] {
            let err = parse_ndjson_in_parts(bad.clone(), Format::FlowsV1, &spec, 5, parts).err().unwrap();
            assert!(matches!(err, InputError::Record { index: 905, .. }), "{parts}: {err}");
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
