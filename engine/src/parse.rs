//! Turning request bodies into batches: the `/v1/ingest` envelope, NDJSON
//! lines, and the per-record field extraction.
//!
//! Each record is read with a streaming serde visitor that recognises the
//! well-known fields of both input formats (flows: `src_ip`, ...; Zeek:
//! `id.orig_h` and `id_orig_h`, ...), captures the string fields enrichers
//! asked for, and skips everything else without building a tree. The record's
//! own text is kept, so unknown fields pass through exactly as sent.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use smallvec::SmallVec;

use crate::batch::Batch;
use crate::event::{Event, Span, Text, TextFieldId};
use crate::format::Format;

#[path = "parse_fast.rs"]
mod fast;
#[path = "parse_locate.rs"]
mod locate;
#[path = "parse_ndjson.rs"]
mod ndjson;
#[path = "parse_values.rs"]
mod values;

use values::{AnyText, Count, Port, Protocol, Str, Timestamp};

pub use ndjson::{parse_ndjson, parse_ndjson_in_parts};

/// What the parser must look for beyond the well-known fields; derived from
/// the chain (see [`crate::Chain::parse_spec`]).
#[derive(Clone, Debug, Default)]
pub struct ParseSpec {
    /// String fields to capture, indexed by [`TextFieldId`].
    pub text_fields: Vec<Box<str>>,
    /// Keys the chain writes; a record carrying one of them has it replaced.
    pub output_keys: Vec<Box<str>>,
}

/// Limits applied while parsing a batch.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_records: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_records: 10_000 }
    }
}

/// Why a request body was refused. Every variant is the client's fault and
/// maps to a 4xx answer; the message says what and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("request body is not valid UTF-8 (at byte {0})")]
    InvalidUtf8(usize),
    #[error("request body must be a JSON object with `collector_id`, `format` and `records`")]
    NotAnObject,
    #[error("field `{field}`: {message}")]
    Field { field: &'static str, message: String },
    #[error("field `format` is required (one of: zeek.conn.v1, flows.v1)")]
    MissingFormat,
    /// The name as given, quoted and cut short ([`crate::limits::quote`]).
    #[error("unsupported format {0}: expected zeek.conn.v1 (aliases zeek, zeek.conn) or flows.v1")]
    UnknownFormat(String),
    /// `count` is a lower bound: neither an envelope's records nor NDJSON
    /// lines are read further than record `max + 1` (counting the rest
    /// would mean holding or reading them), so it is `max + 1` however many
    /// follow.
    #[error("too many records: at least {count} (max {max})")]
    TooManyRecords { count: usize, max: usize },
    #[error("record {index}{}: {message}", field.as_ref().map(|f| format!(", field `{f}`")).unwrap_or_default())]
    Record { index: usize, field: Option<String>, message: String },
}

impl InputError {
    /// Stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            InputError::InvalidJson(_) => "invalid_json",
            InputError::InvalidUtf8(_) => "invalid_encoding",
            InputError::NotAnObject => "bad_batch_shape",
            InputError::Field { .. } => "invalid_field",
            InputError::MissingFormat => "missing_format",
            InputError::UnknownFormat(_) => "unsupported_format",
            InputError::TooManyRecords { .. } => "too_many_records",
            InputError::Record { .. } => "invalid_record",
        }
    }
}

/// serde_json appends " at line L column C" to its messages; inside a record
/// those positions are relative to the record, which only confuses. The
/// message is capped ([`crate::limits::cap_message`]): serde quotes a value
/// of the wrong type whole (`invalid type: string "…"` for a port, a count,
/// a duration), and a client's 4 MB string is not sent back in the 400
/// answer, nor kept in a source's dead-letter reason or a log line.
fn bare_message(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    crate::limits::cap_message(text.strip_suffix(&suffix).map(str::to_owned).unwrap_or(text))
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    collector_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    format: Option<&'a RawValue>,
    #[serde(borrow, default)]
    records: Option<&'a RawValue>,
}

/// Parses a `/v1/ingest` body: `{"collector_id", "format", "records": [...]}`.
pub fn parse_envelope(body: Vec<u8>, spec: &ParseSpec, limits: Limits) -> Result<Batch, InputError> {
    parse_envelope_in_parts(body, spec, limits, 1)
}

/// [`parse_envelope`] reading the records on up to `parts` threads (the
/// same batch; see `parse_split.rs`).
pub fn parse_envelope_in_parts(
    body: Vec<u8>,
    spec: &ParseSpec,
    limits: Limits,
    parts: usize,
) -> Result<Batch, InputError> {
    let source = String::from_utf8(body).map_err(|e| InputError::InvalidUtf8(e.utf8_error().valid_up_to()))?;
    let trimmed = source.trim_start();
    if !trimmed.starts_with('{') {
        return Err(if trimmed.is_empty() || trimmed.starts_with('[') {
            InputError::NotAnObject
        } else {
            match serde_json::from_str::<IgnoredAny>(&source) {
                Err(e) => InputError::InvalidJson(e.to_string()),
                Ok(_) => InputError::NotAnObject,
            }
        });
    }
    let filter = fast::KeyFilter::new(spec);
    if let Some(fast::Envelope { collector_id, format, events }) = fast::envelope(&source, &filter, limits, parts) {
        let collector_id = collector_id.map(str::to_owned);
        return Ok(Batch::new(source, format, collector_id, events));
    }
    envelope_serde(source, &filter, limits)
}

/// The serde path of [`parse_envelope`]: slower, and the one that says what
/// is wrong.
fn envelope_serde(source: String, filter: &fast::KeyFilter, limits: Limits) -> Result<Batch, InputError> {
    let envelope: Envelope<'_> = serde_json::from_str(&source)
        .map_err(|e| locate::record_of_error(&source, &e).unwrap_or_else(|| InputError::InvalidJson(e.to_string())))?;

    let collector_id = match envelope.collector_id.map(|r| serde_json::from_str::<Option<String>>(r.get())) {
        None => None,
        Some(Ok(id)) => id,
        Some(Err(_)) => return Err(InputError::Field { field: "collector_id", message: "must be a string".into() }),
    };
    let format_name = match envelope.format.map(|r| serde_json::from_str::<Option<String>>(r.get())) {
        None | Some(Ok(None)) => return Err(InputError::MissingFormat),
        Some(Ok(Some(name))) => name,
        Some(Err(_)) => return Err(InputError::Field { field: "format", message: "must be a string".into() }),
    };
    let format =
        Format::from_name(&format_name).ok_or_else(|| InputError::UnknownFormat(crate::limits::quote(&format_name)))?;
    let records = envelope
        .records
        .ok_or(InputError::Field { field: "records", message: "is required (an array of record objects)".into() })?;
    let records = raw_records(records.get(), limits.max_records)?;

    let base = source.as_ptr() as usize;
    let mut events = Vec::with_capacity(records.len());
    for (index, raw) in records.iter().enumerate() {
        let start = raw.get().as_ptr() as usize - base;
        parse_record(&source, start, raw.get().len(), index, filter, &mut events)?;
    }
    drop(records);
    Ok(Batch::new(source, format, collector_id, events))
}

/// The elements of the `records` array (`text`, already checked to be valid
/// JSON), each as its raw text; [`InputError::TooManyRecords`] as soon as
/// there are more than `max`. Collecting the whole array first held one
/// 16-byte slice per record before refusing: a 5 MB body of `{}` cost
/// ~28 MB of slices and built no event. So, as NDJSON does, reading stops
/// at element `max + 1` and the error says "at least `max + 1`". Records
/// past it were only checked for syntax (by the envelope's parse), so a
/// bad record beyond the limit is still reported as too many records.
fn raw_records(text: &str, max: usize) -> Result<Vec<&RawValue>, InputError> {
    /// Collects into `records`; at element `max + 1` (kept, so the count
    /// says it) stops with an error (a visitor has no other way to stop a
    /// sequence early).
    struct UpTo<'a, 'r> {
        max: usize,
        records: &'r mut Vec<&'a RawValue>,
    }
    impl<'a> Visitor<'a> for UpTo<'a, '_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of record objects")
        }
        fn visit_seq<A: de::SeqAccess<'a>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(raw) = seq.next_element::<&'a RawValue>()? {
                self.records.push(raw);
                if self.records.len() > self.max {
                    return Err(de::Error::custom("too many records"));
                }
            }
            Ok(())
        }
    }
    let mut records = Vec::new();
    let mut de = serde_json::Deserializer::from_str(text);
    let read = de::Deserializer::deserialize_seq(&mut de, UpTo { max, records: &mut records }).and_then(|()| de.end());
    match read {
        _ if records.len() > max => Err(InputError::TooManyRecords { count: max + 1, max }),
        Err(_) => Err(InputError::Field { field: "records", message: "must be an array of record objects".into() }),
        Ok(()) => Ok(records),
    }
}

/// Parses the record whose JSON text is `source[start..start+len]` onto the
/// end of `events`: the fast path when it can, else the serde path (which
/// also words the error).
fn parse_record(
    source: &str,
    start: usize,
    len: usize,
    index: usize,
    filter: &fast::KeyFilter,
    events: &mut Vec<Event>,
) -> Result<(), InputError> {
    events.push(Event::default());
    let event = events.last_mut().expect("just pushed");
    if fast::record(source, start, len, filter, event).is_none() {
        match parse_record_serde(source, start, len, index, filter.spec()) {
            Ok(parsed) => *event = parsed,
            Err(e) => {
                events.pop();
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The serde path of [`parse_record`].
fn parse_record_serde(
    source: &str,
    start: usize,
    len: usize,
    index: usize,
    spec: &ParseSpec,
) -> Result<Event, InputError> {
    let text = &source[start..start + len];
    let kind = match text.as_bytes().first() {
        Some(b'{') => None,
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'n') => Some("null"),
        _ => Some("a number"),
    };
    if let Some(kind) = kind {
        return Err(InputError::Record { index, field: None, message: format!("expected a JSON object, got {kind}") });
    }
    let mut event = Event { raw: Span { start: start as u32, len: len as u32 }, ..Event::default() };
    let mut current_field: Option<String> = None;
    let seed =
        RecordSeed { spec, event: &mut event, base: source.as_ptr() as usize, current_field: &mut current_field };
    let mut de = serde_json::Deserializer::from_str(text);
    seed.deserialize(&mut de).and_then(|()| de.end()).map_err(|e| InputError::Record {
        index,
        field: current_field.take(),
        message: bare_message(&e),
    })?;
    Ok(event)
}

struct RecordSeed<'s> {
    spec: &'s ParseSpec,
    event: &'s mut Event,
    base: usize,
    current_field: &'s mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a record object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ev = self.event;
        // Duplicate keys are refused: which value would count is a guess, and
        // whoever reads the record downstream may guess differently. Known
        // fields (and their aliases: `src_ip` / `id.orig_h` / `id_orig_h`,
        // `protocol` / `proto`) are one bit each; other keys go in a
        // [`KeySet`] (mostly borrowed slices of the input, so no allocation
        // for typical records, and linear time for a record of many keys).
        let mut seen_known = 0u16;
        let mut seen_other: KeySet<Cow<'de, str>> = KeySet::default();
        while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
            ev.raw_has_fields = true;
            // serde_json hands out an owned key only when it had to unescape it.
            ev.raw_key_escaped |= matches!(key, Cow::Owned(_));
            let known = Known::of(key.as_bytes());
            let duplicate = match known {
                Some(k) => {
                    let seen = seen_known & k.bit() != 0;
                    seen_known |= k.bit();
                    seen
                }
                None => seen_other.contains(&key),
            };
            if duplicate {
                let message = match known {
                    Some(k) if k.names().len() > 1 => {
                        format!("duplicate key: this field was already given (as one of {})", k.names().join(", "))
                    }
                    _ => "duplicate key: this field was already given".to_string(),
                };
                *self.current_field = Some(field_name(&key));
                return Err(de::Error::custom(message));
            }
            // The field name is only copied when its value is refused.
            if let Err(e) = read_field(known, &key, &mut map, ev, self.spec, self.base) {
                *self.current_field = Some(field_name(&key));
                return Err(e);
            }
            if known.is_none() {
                seen_other.insert_new(key);
            }
        }
        Ok(())
    }
}

/// Keys a [`KeySet`] keeps and compares on the stack before it builds its
/// hash set.
const FEW_KEYS: usize = 32;

/// The keys of a record seen so far, for the duplicate check (both paths).
///
/// Records have a few dozen keys at most, compared on the stack without
/// allocating; past [`FEW_KEYS`] the keys move to a hash set, since a
/// linear search per key would make one record of a few hundred thousand
/// keys (a 5 MB body holds that many) cost ~10^11 comparisons and hold a
/// worker for minutes. The set uses the standard library's keyed SipHash,
/// not a faster fixed-seed hash: the keys are the client's choice, and a
/// hash a client can predict lets it send keys that all collide, which
/// would bring the quadratic cost back through the set.
pub(super) struct KeySet<K> {
    few: SmallVec<[K; FEW_KEYS]>,
    many: Option<HashSet<K>>,
}

impl<K> Default for KeySet<K> {
    fn default() -> Self {
        KeySet { few: SmallVec::new(), many: None }
    }
}

impl<K: Eq + Hash> KeySet<K> {
    pub(super) fn contains(&self, key: &K) -> bool {
        match &self.many {
            Some(many) => many.contains(key),
            None => self.few.contains(key),
        }
    }

    /// Adds `key`, which the caller checked is not in the set yet.
    pub(super) fn insert_new(&mut self, key: K) {
        if let Some(many) = &mut self.many {
            many.insert(key);
        } else if self.few.len() < FEW_KEYS {
            self.few.push(key);
        } else {
            let mut many = HashSet::with_capacity(4 * FEW_KEYS);
            many.extend(self.few.drain(..));
            many.insert(key);
            self.many = Some(many);
        }
    }
}

/// The fields the engine reads, each under all its names.
#[derive(Clone, Copy)]
enum Known {
    Ts,
    SrcIp,
    DstIp,
    SrcPort,
    DstPort,
    Proto,
    Bytes,
    OrigBytes,
    RespBytes,
    Packets,
    Duration,
}

impl Known {
    fn of(key: &[u8]) -> Option<Known> {
        Some(match key {
            b"ts" => Known::Ts,
            b"src_ip" | b"id.orig_h" | b"id_orig_h" => Known::SrcIp,
            b"dst_ip" | b"id.resp_h" | b"id_resp_h" => Known::DstIp,
            b"src_port" | b"id.orig_p" | b"id_orig_p" => Known::SrcPort,
            b"dst_port" | b"id.resp_p" | b"id_resp_p" => Known::DstPort,
            b"protocol" | b"proto" => Known::Proto,
            b"bytes" => Known::Bytes,
            b"orig_bytes" => Known::OrigBytes,
            b"resp_bytes" => Known::RespBytes,
            b"packets" => Known::Packets,
            b"duration" => Known::Duration,
            _ => return None,
        })
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            Known::SrcIp => &["src_ip", "id.orig_h", "id_orig_h"],
            Known::DstIp => &["dst_ip", "id.resp_h", "id_resp_h"],
            Known::SrcPort => &["src_port", "id.orig_p", "id_orig_p"],
            Known::DstPort => &["dst_port", "id.resp_p", "id_resp_p"],
            Known::Proto => &["protocol", "proto"],
            _ => &[],
        }
    }
}

/// Reads the value of field `key` into the event (or skips it).
fn read_field<'de, A: MapAccess<'de>>(
    known: Option<Known>,
    key: &str,
    map: &mut A,
    ev: &mut Event,
    spec: &ParseSpec,
    base: usize,
) -> Result<(), A::Error> {
    let Some(known) = known else {
        if spec.output_keys.iter().any(|k| &**k == key) {
            ev.shadows_output = true;
        }
        match spec.text_fields.iter().position(|k| &**k == key) {
            Some(i) => {
                if let Some(text) = map.next_value::<AnyText<'de>>()?.0 {
                    let text = match text {
                        Cow::Borrowed(s) => {
                            Text::Span(Span { start: (s.as_ptr() as usize - base) as u32, len: s.len() as u32 })
                        }
                        Cow::Owned(s) => Text::Owned(s.into_boxed_str()),
                    };
                    // Each key appears once (duplicates are refused).
                    ev.texts.push((TextFieldId(i as u16), text));
                }
            }
            None => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        return Ok(());
    };
    match known {
        Known::Ts => ev.ts = map.next_value::<Timestamp>()?.0,
        Known::SrcIp => set_ip(ev, key, map.next_value()?, true),
        Known::DstIp => set_ip(ev, key, map.next_value()?, false),
        Known::SrcPort => ev.src_port = map.next_value::<Port>()?.0,
        Known::DstPort => ev.dst_port = map.next_value::<Port>()?.0,
        Known::Proto => {
            if let Some(p) = map.next_value::<Protocol>()?.0 {
                ev.proto = Some(p);
            }
        }
        Known::Bytes => ev.bytes = map.next_value::<Count>()?.0,
        Known::OrigBytes => ev.orig_bytes = map.next_value::<Count>()?.0,
        Known::RespBytes => ev.resp_bytes = map.next_value::<Count>()?.0,
        Known::Packets => ev.packets = map.next_value::<Count>()?.0,
        Known::Duration => ev.duration = map.next_value::<Option<f64>>()?,
    }
    Ok(())
}

enum IpValue {
    Absent,
    Valid(IpAddr),
    Invalid(String),
}

fn set_ip(ev: &mut Event, field: &str, value: IpValue, source: bool) {
    let slot = if source { &mut ev.src_ip } else { &mut ev.dst_ip };
    match value {
        IpValue::Absent => {}
        IpValue::Valid(ip) => *slot = Some(ip),
        IpValue::Invalid(text) => {
            *slot = None;
            let shown: String = text.chars().take(64).collect();
            ev.warn(format!("{field}: {shown:?} is not a valid IP address; enrichment of this field skipped"));
        }
    }
}

/// Both paths on one record (`text` is the whole source): what the fast
/// path read, if it was sure, and the serde path's answer.
#[cfg(test)]
pub(crate) fn record_both_ways(text: &str, spec: &ParseSpec) -> (Option<Event>, Result<Event, InputError>) {
    let filter = fast::KeyFilter::new(spec);
    let mut fast_event = Event::default();
    let fast = fast::record(text, 0, text.len(), &filter, &mut fast_event).map(|()| fast_event);
    (fast, parse_record_serde(text, 0, text.len(), 0, spec))
}

/// The fast path's address reader (checked against `IpAddr::from_str`).
#[cfg(test)]
pub(crate) fn fast_ip(text: &str) -> Option<std::net::IpAddr> {
    fast::parse_ip(text)
}

/// Both paths on one envelope: the fast one (if it was sure) and the
/// serde one.
#[cfg(test)]
pub(crate) fn envelope_both_ways(
    body: &str,
    spec: &ParseSpec,
    limits: Limits,
) -> (Option<Batch>, Result<Batch, InputError>) {
    let filter = fast::KeyFilter::new(spec);
    let fast = fast::envelope(body, &filter, limits, 1)
        .map(|e| Batch::new(body.to_owned(), e.format, e.collector_id.map(str::to_owned), e.events));
    (fast, envelope_serde(body.to_owned(), &filter, limits))
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;

/// A field name for an error: as given, but never more than
/// [`crate::limits::EXCERPT_BYTES`] of it (a client's megabyte-long key is
/// not echoed back whole).
fn field_name(key: &str) -> String {
    crate::limits::excerpt(key, crate::limits::EXCERPT_BYTES).into_owned()
}
