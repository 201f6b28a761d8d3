//! A batch of events and its serialization back to JSON.

use std::io::Write;

use crate::event::{Event, Text, TextFieldId};
use crate::format::Format;

/// Name of the per-record list of non-fatal problems in the output.
pub const WARNINGS_KEY: &str = "enrichment_warnings";

/// Events parsed from one request (or one chunk of a stream), together with
/// the text they were parsed from.
#[derive(Debug)]
pub struct Batch {
    source: String,
    format: Format,
    collector_id: Option<String>,
    events: Vec<Event>,
}

/// What an enricher sees of a batch: the events, mutable, and read access to
/// captured text fields.
pub struct BatchView<'a> {
    pub source: SourceText<'a>,
    pub events: &'a mut [Event],
}

/// Read access to the text a batch was parsed from.
#[derive(Clone, Copy)]
pub struct SourceText<'a>(&'a str);

impl<'a> SourceText<'a> {
    /// The captured value of text field `field` of `event` (see
    /// [`crate::BuildContext::text_field`]).
    pub fn text<'e>(&self, event: &'e Event, field: TextFieldId) -> Option<&'e str>
    where
        'a: 'e,
    {
        event.texts.iter().find(|(f, _)| *f == field).map(|(_, t)| match t {
            Text::Span(span) => &self.0[span.range()],
            Text::Owned(s) => &**s,
        })
    }

    /// The record's own JSON object text, exactly as the client sent it
    /// (empty for synthetic events).
    pub fn raw_record<'e>(&self, event: &'e Event) -> &'e str
    where
        'a: 'e,
    {
        &self.0[event.raw.range()]
    }
}

impl Batch {
    pub fn new(source: String, format: Format, collector_id: Option<String>, events: Vec<Event>) -> Self {
        Batch { source, format, collector_id, events }
    }

    /// A batch of events built in code (lookups, tests, benchmarks).
    pub fn synthetic(format: Format, events: Vec<Event>) -> Self {
        Batch::new(String::new(), format, None, events)
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn collector_id(&self) -> Option<&str> {
        self.collector_id.as_deref()
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn source(&self) -> SourceText<'_> {
        SourceText(&self.source)
    }

    pub fn view(&mut self) -> BatchView<'_> {
        BatchView { source: SourceText(&self.source), events: &mut self.events }
    }

    /// Writes one enriched event as a JSON object: the record's own fields as
    /// sent, then the enrichment results in chain order, then warnings.
    pub fn write_event(&self, event: &Event, keys: &[Box<str>], out: &mut Vec<u8>) {
        self.write_event_keyed(event, &EncodedKeys::new(keys), out);
    }

    /// [`Batch::write_event`] with the keys encoded once for the batch.
    fn write_event_keyed(&self, event: &Event, encoded: &EncodedKeys, out: &mut Vec<u8>) {
        let keys = encoded.keys;
        let raw = &self.source[event.raw.range()];
        let mut has_fields = event.raw_has_fields;
        if event.shadows_output {
            // Slow path, only for records that already carry a key the chain
            // writes: drop those keys so the output has each key once.
            // Each kept field is copied as sent: its key's text and its
            // value's bytes (a `serde_json::Value` would reorder keys,
            // rewrite numbers and escapes, and refuse `1e400`, which the
            // parser accepts).
            has_fields = write_members_but(raw, out, |key| {
                // The record's own warnings give way only to the chain's:
                // with none, they are a field like any other.
                if key == WARNINGS_KEY {
                    !event.warnings.is_empty()
                } else {
                    keys.iter().any(|k| **k == *key)
                }
            });
        } else if raw.is_empty() {
            out.push(b'{');
        } else {
            // `raw` is a JSON object; drop its closing brace (and any
            // whitespace before it) so fields can be appended.
            let body = raw.trim_end();
            out.extend_from_slice(body[..body.len() - 1].trim_end().as_bytes());
        }
        // Each result is `,"key":` (encoded once per batch) then the shared
        // fragment's bytes: two copies, no formatting.
        for (key, value) in &event.outputs {
            let entry = &encoded.entries[key.0 as usize][!has_fields as usize..];
            has_fields = true;
            out.extend_from_slice(entry);
            out.extend_from_slice(value.as_bytes());
        }
        if !event.warnings.is_empty() {
            if has_fields {
                out.push(b',');
            }
            write_json_string(out, WARNINGS_KEY);
            out.push(b':');
            serde_json::to_writer(&mut *out, &event.warnings).expect("strings serialize");
        }
        out.push(b'}');
    }

    /// Writes all events as a JSON array.
    pub fn write_events_array(&self, keys: &[Box<str>], out: &mut Vec<u8>) {
        let encoded = EncodedKeys::new(keys);
        out.push(b'[');
        for (i, event) in self.events.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            self.write_event_keyed(event, &encoded, out);
        }
        out.push(b']');
    }

    /// Writes all events as NDJSON (one object per line).
    pub fn write_ndjson(&self, keys: &[Box<str>], out: &mut Vec<u8>) {
        self.write_ndjson_part(keys, 0..self.events.len(), out, &mut Vec::new());
    }

    /// [`Batch::write_ndjson`] of the events in `range` only (one part of
    /// a batch encoded on several threads), pushing where each line ends
    /// to `line_ends` (see [`write_lines`]).
    pub fn write_ndjson_part(
        &self,
        keys: &[Box<str>],
        range: std::ops::Range<usize>,
        out: &mut Vec<u8>,
        line_ends: &mut Vec<usize>,
    ) {
        let encoded = EncodedKeys::new(keys);
        write_lines(&self.events[range], out, line_ends, |event, out| self.write_event_keyed(event, &encoded, out));
    }

    /// Writes the `/v1/ingest` response:
    /// `{"collector_id", "format", "count", "records": [...]}`.
    pub fn write_ingest_response(&self, keys: &[Box<str>], out: &mut Vec<u8>) {
        let encoded = EncodedKeys::new(keys);
        reserve_room(out, self.source.len() + 64 * self.events.len());
        self.write_ingest_response_with(out, |event, out| self.write_event_keyed(event, &encoded, out));
    }

    /// [`Batch::write_ingest_response`] with each record written by `write`
    /// (output profiles).
    pub fn write_ingest_response_with(&self, out: &mut Vec<u8>, mut write: impl FnMut(&Event, &mut Vec<u8>)) {
        out.extend_from_slice(b"{\"collector_id\":");
        serde_json::to_writer(&mut *out, &self.collector_id).expect("string serializes");
        let _ = write!(out, ",\"format\":\"{}\",\"count\":{},\"records\":", self.format.name(), self.events.len());
        out.push(b'[');
        for (i, event) in self.events.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let start = out.len();
            write(event, out);
            if i == 0 {
                sized_after_first(out, out.len() - start + 1, self.events.len());
            }
        }
        out.push(b']');
        out.push(b'}');
    }

    /// The `/v1/ingest` response (default layout) into `answer` and the same records as
    /// NDJSON lines into `lines` (with their ends, see [`write_lines`]), in
    /// one pass: each record is written once, with `write`, as a line, and
    /// copied into the answer at once, while it is still in cache. Copying
    /// the lines afterwards read them back from memory (a batch's lines
    /// outgrow the caches), a measured ~4 % of enrichd's CPU with an output.
    pub fn write_ingest_response_and_ndjson(
        &self,
        keys: &[Box<str>],
        answer: &mut Vec<u8>,
        lines: &mut Vec<u8>,
        line_ends: &mut Vec<usize>,
    ) {
        let encoded = EncodedKeys::new(keys);
        self.write_ingest_response_and_lines(answer, lines, line_ends, |event, out| {
            self.write_event_keyed(event, &encoded, out)
        });
    }

    /// [`Batch::write_ingest_response_and_ndjson`] with each record written
    /// by `write` (output profiles).
    pub fn write_ingest_response_and_lines(
        &self,
        answer: &mut Vec<u8>,
        lines: &mut Vec<u8>,
        line_ends: &mut Vec<usize>,
        mut write: impl FnMut(&Event, &mut Vec<u8>),
    ) {
        let mut writer = LineWriter::new(lines, line_ends, self.events.len());
        self.write_ingest_response_with(answer, |event, answer| {
            let line = writer.line(lines, line_ends, |out| write(event, out));
            answer.extend_from_slice(&lines[line]);
        });
    }

    /// [`Batch::write_ingest_response`] from this batch's events already
    /// encoded as NDJSON lines, in order, in one or more parts (encoded on
    /// several threads): `(bytes, line ends)` as [`write_lines`] wrote
    /// them. Each line is copied, not written again, and found from its
    /// recorded end rather than searched for. The records differ from a
    /// direct encoding only where [`one_line`] turned a line break between
    /// tokens into a space.
    pub fn write_ingest_response_from_lines(&self, parts: &[(&[u8], &[usize])], out: &mut Vec<u8>) {
        reserve_room(out, parts.iter().map(|(p, _)| p.len()).sum::<usize>() + 128);
        let mut lines = parts.iter().flat_map(|&(part, ends)| split_lines(part, ends));
        self.write_ingest_response_with(out, |_, out| {
            out.extend_from_slice(lines.next().expect("one NDJSON line per event"));
        });
    }
}

/// The lines of `bytes` whose ends (positions of their line feeds) are
/// `ends`, as [`write_lines`] records them.
pub fn split_lines<'b>(bytes: &'b [u8], ends: &'b [usize]) -> impl Iterator<Item = &'b [u8]> + 'b {
    let mut start = 0;
    ends.iter().map(move |&end| {
        let line = &bytes[start..end];
        start = end + 1;
        line
    })
}

/// Writes `events` as NDJSON lines (each made one line, see [`one_line`])
/// with `write` encoding one event, and pushes where each line ends (the
/// position of its line feed, counted from where this call began writing
/// in `out`) to `line_ends`: whoever reads the lines again (the answer
/// built from them, an output's worker) need not search for them.
pub fn write_lines<'e>(
    events: impl IntoIterator<Item = &'e Event>,
    out: &mut Vec<u8>,
    line_ends: &mut Vec<usize>,
    mut write: impl FnMut(&Event, &mut Vec<u8>),
) {
    let events = events.into_iter();
    let mut lines = LineWriter::new(out, line_ends, events.size_hint().0);
    for event in events {
        lines.line(out, line_ends, |out| write(event, out));
    }
}

/// [`write_lines`] one line at a time, for callers that do something with
/// each line while it is still in cache.
struct LineWriter {
    /// Where the first line starts in the buffer.
    base: usize,
    /// How many line ends the caller's list held before the first line.
    ends_before: usize,
    /// Lines expected (for sizing the buffer after the first).
    count: usize,
}

impl LineWriter {
    fn new(out: &[u8], line_ends: &mut Vec<usize>, count: usize) -> Self {
        line_ends.reserve(count);
        LineWriter { base: out.len(), ends_before: line_ends.len(), count }
    }

    /// Writes one line with `write` and returns where its text is in `out`
    /// (without the line feed).
    fn line(
        &mut self,
        out: &mut Vec<u8>,
        line_ends: &mut Vec<usize>,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> std::ops::Range<usize> {
        let start = out.len();
        write(out);
        one_line(&mut out[start..]);
        let end = out.len();
        line_ends.push(end - self.base);
        out.push(b'\n');
        if line_ends.len() == self.ends_before + 1 {
            sized_after_first(out, end + 1 - start, self.count);
        }
        start..end
    }
}

/// After the first of `count` items (`first` bytes) is written: room for
/// the rest, guessed from the first (enrichment can triple a small
/// record). One allocation instead of growths that copy what was written.
fn sized_after_first(out: &mut Vec<u8>, first: usize, count: usize) {
    reserve_room(out, (first + first / 4).saturating_mul(count.saturating_sub(1)) + 2);
}

/// Makes room for `additional` more bytes in `out`. A buffer too small is
/// replaced by a new one holding a copy of its bytes, not grown in place:
/// `realloc` copies the whole old allocation, and callers hand in buffers
/// sized by a guess that may hold little of it (measured: a fifth of the
/// copying on the delivery path).
pub fn reserve_room(out: &mut Vec<u8>, additional: usize) {
    if out.capacity() - out.len() >= additional {
        return;
    }
    let mut fresh = Vec::with_capacity((out.len() + additional).max(2 * out.len()));
    fresh.extend_from_slice(out);
    *out = fresh;
}

/// The chain's output keys as written before a value: `,"key":`, encoded
/// once per batch (an entry without its comma is the slice from 1).
struct EncodedKeys<'k> {
    keys: &'k [Box<str>],
    entries: Vec<Vec<u8>>,
}

impl<'k> EncodedKeys<'k> {
    fn new(keys: &'k [Box<str>]) -> Self {
        let entries = keys
            .iter()
            .map(|k| {
                let mut entry = vec![b','];
                write_json_string(&mut entry, k);
                entry.push(b':');
                entry
            })
            .collect();
        EncodedKeys { keys, entries }
    }
}

/// Makes one encoded event a single line. Records are copied as sent, and
/// a record sent pretty-printed inside an envelope keeps its line breaks;
/// in valid JSON a raw CR or LF can only be whitespace between tokens
/// (inside strings they are escaped), so a space is an exact substitute.
/// NDJSON consumers (outputs, spools, files) split on LF.
pub fn one_line(event: &mut [u8]) {
    let mut at = 0;
    while let Some(i) = memchr::memchr2(b'\n', b'\r', &event[at..]) {
        event[at + i] = b' ';
        at += i + 1;
    }
}

/// Writes `{` and each member of the record `raw` whose (decoded) key
/// `drop` does not claim, as sent: its key's text and its value's bytes.
/// Returns whether any member was written (the next needs a comma).
pub(crate) fn write_members_but(raw: &str, out: &mut Vec<u8>, mut drop: impl FnMut(&str) -> bool) -> bool {
    out.push(b'{');
    let mut has_fields = false;
    let read = for_each_field(raw, |key, key_text, value| {
        if drop(key) {
            return;
        }
        if has_fields {
            out.push(b',');
        }
        has_fields = true;
        out.extend_from_slice(key_text.as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    });
    debug_assert!(read.is_ok(), "record text was validated by the parser");
    has_fields
}

/// Calls `f(key, key as written, value as written)` for each field of the
/// JSON object `raw`, in order. Keys are read twice (once unescaped, once
/// as text) so that both comparing and copying are exact.
pub(crate) fn for_each_field<'a>(
    raw: &'a str,
    mut f: impl FnMut(&str, &'a str, &'a str),
) -> Result<(), serde_json::Error> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    use serde_json::value::RawValue;

    struct Fields<F>(F);
    impl<'de, F: FnMut(&str, &'de str, &'de str)> Visitor<'de> for Fields<F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<&'de RawValue>()? {
                let value = map.next_value::<&'de RawValue>()?;
                let name: std::borrow::Cow<'_, str> =
                    serde_json::from_str(key.get()).map_err(serde::de::Error::custom)?;
                (self.0)(&name, key.get(), value.get());
            }
            Ok(())
        }
    }
    serde_json::Deserializer::from_str(raw).deserialize_map(Fields(&mut f))
}

fn write_json_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("strings serialize");
}
