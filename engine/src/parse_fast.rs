//! The fast path of the parser: one pass over the bytes of the envelope and
//! its records that validates the JSON, reads the well-known fields straight
//! from the record text and steps over everything else.
//!
//! Why two parsers: the serde path (the parent module) builds every error
//! message the 4xx contract promises (record index, field, what is wrong),
//! but it costs three passes over an envelope (the envelope, the records
//! array, each record) and a serde visitor per field. This path only ever
//! answers "here is the batch" or "not sure": on anything it does not
//! handle itself (an error of any kind, escapes in a key at any depth or
//! in a value the chain reads, a number written in an unusual form for a known field,
//! duplicate envelope keys, deep nesting) it gives up and the caller runs
//! the serde path on the same bytes, which then accepts or refuses with
//! its usual message. So the contract is the serde path's by construction,
//! provided this path never accepts what that path refuses and reads the
//! same values where both accept; `proptests.rs` checks both on generated
//! good and bad records.
//!
//! What it must agree with serde_json on: JSON grammar (RFC 8259: no
//! control characters in strings, the eight escapes and `\uXXXX`, numbers
//! without leading zeros or `+`, the four whitespace bytes), that skipped
//! values are checked but not decoded (so `1e400` or a lone surrogate in an
//! ignored string pass, as they do there), and how a known field's value
//! converts (the same rules as the visitors in the parent module; where a
//! case is not plainly the same, the value is handed to serde_json itself,
//! or this path gives up).

use std::net::{IpAddr, Ipv4Addr};

use super::{set_ip, IpValue, KeySet, Known, Limits, ParseSpec};
use crate::event::{Event, Span, Text, TextFieldId};
use crate::format::{protocol_number, Format};

#[path = "parse_cursor.rs"]
mod cursor;
#[path = "parse_split.rs"]
mod split;

use cursor::Cursor;

/// The keys of a [`ParseSpec`] as a 128-bit filter over [`key_hash`], built
/// once per batch: most record keys are neither captured text fields nor
/// output keys, and the filter answers that without comparing strings.
pub(super) struct KeyFilter<'s> {
    spec: &'s ParseSpec,
    bits: u128,
}

impl<'s> KeyFilter<'s> {
    pub(super) fn new(spec: &'s ParseSpec) -> Self {
        let bits = spec
            .text_fields
            .iter()
            .chain(&spec.output_keys)
            .fold(0u128, |bits, k| bits | 1u128 << key_hash(k.as_bytes()));
        KeyFilter { spec, bits }
    }

    pub(super) fn spec(&self) -> &'s ParseSpec {
        self.spec
    }
}

/// A 7-bit hash of a key from its length and its first and last bytes.
#[inline]
fn key_hash(k: &[u8]) -> u32 {
    let n = k.len();
    let (a, b) = if n >= 8 {
        (u64::from_le_bytes(k[..8].try_into().unwrap()), u64::from_le_bytes(k[n - 8..].try_into().unwrap()))
    } else if n >= 4 {
        (
            u32::from_le_bytes(k[..4].try_into().unwrap()) as u64,
            u32::from_le_bytes(k[n - 4..].try_into().unwrap()) as u64,
        )
    } else if n > 0 {
        (k[0] as u64 | (k[n / 2] as u64) << 8 | (k[n - 1] as u64) << 16, 0)
    } else {
        (0, 0)
    };
    let h = (a ^ b.rotate_left(29) ^ n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 57) as u32
}

/// Reads the record whose text is `source[start..start + len]` into
/// `event`, a default one where it lies in the batch (an event is a few
/// hundred bytes: building it on the stack and moving it into the batch
/// cost a copy per record); `None` when the serde path must decide.
pub(super) fn record(source: &str, start: usize, len: usize, filter: &KeyFilter, event: &mut Event) -> Option<()> {
    let mut c = Cursor::new(source, start, start + len);
    if c.peek() != Some(b'{') {
        return None;
    }
    event.raw = Span { start: start as u32, len: len as u32 };
    fields(&mut c, filter, event)?;
    c.ws();
    (c.at == start + len).then_some(())
}

/// The keys of a record seen so far that are not well-known, for the
/// duplicate check: a 128-bit filter first (most new keys miss it, and are
/// added without a lookup), the [`KeySet`] only on a hit.
#[derive(Default)]
struct SeenKeys<'a> {
    bits: u128,
    keys: KeySet<&'a [u8]>,
}

impl<'a> SeenKeys<'a> {
    /// Adds `key`; whether it was there already.
    #[inline]
    fn repeat(&mut self, key: &'a [u8], hash: u32) -> bool {
        let bit = 1u128 << hash;
        if self.bits & bit != 0 && self.keys.contains(&key) {
            return true;
        }
        self.bits |= bit;
        self.keys.insert_new(key);
        false
    }
}

/// The fields of the object at the cursor (on its `{`), into `ev`.
fn fields<'a>(c: &mut Cursor<'a>, filter: &KeyFilter, ev: &mut Event) -> Option<()> {
    c.at += 1;
    if c.eat_after_ws(b'}') {
        return Some(());
    }
    let mut seen_known = 0u16;
    let mut seen = SeenKeys::default();
    let bytes = c.b;
    loop {
        if c.peek() != Some(b'"') {
            return None;
        }
        let (ks, ke, escaped) = c.string()?;
        if escaped {
            // The serde path decodes the key before comparing it.
            return None;
        }
        if !c.eat_after_ws(b':') {
            return None;
        }
        c.ws();
        ev.raw_has_fields = true;
        // As bytes: slicing the text would check char boundaries, and
        // both ends are next to a quote anyway.
        let key = &bytes[ks..ke];
        match Known::of(key) {
            Some(known) => {
                if seen_known & known.bit() != 0 {
                    return None;
                }
                seen_known |= known.bit();
                known_value(c, known, key, ev)?;
            }
            None => {
                let hash = key_hash(key);
                if seen.repeat(key, hash) {
                    return None;
                }
                other_value(c, key, hash, filter, ev)?;
            }
        }
        if !c.after_item(b'}')? {
            return Some(());
        }
    }
}

/// A field that is not well-known: captured when the chain reads it as
/// text, otherwise checked and stepped over.
#[inline]
fn other_value(c: &mut Cursor, key: &[u8], hash: u32, filter: &KeyFilter, ev: &mut Event) -> Option<()> {
    if filter.bits & (1u128 << hash) != 0 {
        let spec = filter.spec;
        if spec.output_keys.iter().any(|k| k.as_bytes() == key) {
            ev.shadows_output = true;
        }
        if let Some(i) = spec.text_fields.iter().position(|k| k.as_bytes() == key) {
            if c.peek() == Some(b'"') {
                let (s, e, escaped) = c.string()?;
                if escaped {
                    return None;
                }
                ev.texts.push((TextFieldId(i as u16), Text::Span(Span { start: s as u32, len: (e - s) as u32 })));
                return Some(());
            }
        }
    }
    c.skip_value(1)
}

/// A well-known field's value, converted as the serde path's visitors do.
fn known_value(c: &mut Cursor, known: Known, key: &[u8], ev: &mut Event) -> Option<()> {
    match c.peek()? {
        b'"' => {
            let (s, e, escaped) = c.string()?;
            if escaped {
                return None;
            }
            let text = &c.s[s..e];
            let text: &str = text;
            match known {
                Known::SrcIp | Known::DstIp => {
                    let source = matches!(known, Known::SrcIp);
                    match parse_ip(text) {
                        Some(ip) => *(if source { &mut ev.src_ip } else { &mut ev.dst_ip }) = Some(ip),
                        None => {
                            // The key is text between quotes of a `str`: UTF-8.
                            let field = std::str::from_utf8(key).unwrap_or_default();
                            set_ip(ev, field, IpValue::Invalid(text.to_owned()), source)
                        }
                    }
                }
                Known::Proto => {
                    if let Some(p) = protocol_number(text).or_else(|| text.parse().ok()) {
                        ev.proto = Some(p);
                    }
                }
                Known::Ts => ev.ts = text.trim().parse().ok(),
                // A string where a number belongs: the serde path's error.
                _ => return None,
            }
        }
        b'n' => {
            c.literal(b"null")?;
            match known {
                Known::Ts => ev.ts = None,
                Known::SrcPort => ev.src_port = None,
                Known::DstPort => ev.dst_port = None,
                Known::Bytes => ev.bytes = None,
                Known::OrigBytes => ev.orig_bytes = None,
                Known::RespBytes => ev.resp_bytes = None,
                Known::Packets => ev.packets = None,
                Known::Duration => ev.duration = None,
                Known::SrcIp | Known::DstIp | Known::Proto => {}
            }
        }
        b'-' | b'0'..=b'9' => {
            let n = c.number()?;
            let count = || n.small_u64();
            match known {
                Known::SrcIp | Known::DstIp => return None,
                Known::Ts => ev.ts = Some(n.f64(c.s)?),
                Known::Duration => ev.duration = Some(n.f64(c.s)?),
                Known::Proto => ev.proto = Some(u8::try_from(count()?).ok()?),
                Known::SrcPort => ev.src_port = Some(u16::try_from(count()?).ok()?),
                Known::DstPort => ev.dst_port = Some(u16::try_from(count()?).ok()?),
                Known::Bytes => ev.bytes = Some(count()?),
                Known::OrigBytes => ev.orig_bytes = Some(count()?),
                Known::RespBytes => ev.resp_bytes = Some(count()?),
                Known::Packets => ev.packets = Some(count()?),
            }
        }
        _ => return None,
    }
    Some(())
}

/// An address as `IpAddr::from_str` reads it. Dotted-quad IPv4, nearly
/// every address in telemetry, is read here in one pass; anything else
/// (IPv6, and any IPv4 text not in the plain form) goes to the standard
/// parser, which then decides. Plain form: four decimal octets of one to
/// three digits, no leading zero, each at most 255 — exactly the texts the
/// standard parser accepts as IPv4 (`proptests.rs` checks the two agree).
#[inline]
pub(super) fn parse_ip(text: &str) -> Option<IpAddr> {
    parse_ipv4(text.as_bytes()).map(IpAddr::V4).or_else(|| text.parse().ok())
}

#[inline]
fn parse_ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    if !(7..=15).contains(&b.len()) {
        return None;
    }
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (n, octet) in octets.iter_mut().enumerate() {
        let from = i;
        let mut value = 0u32;
        while let Some(&d) = b.get(i) {
            if !d.is_ascii_digit() {
                break;
            }
            if i - from == 3 {
                // A fourth digit: no octet (and `value` stays small).
                return None;
            }
            value = value * 10 + (d - b'0') as u32;
            i += 1;
        }
        let digits = i - from;
        if digits == 0 || (digits > 1 && b[from] == b'0') || value > 255 {
            return None;
        }
        *octet = value as u8;
        if n < 3 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
    }
    (i == b.len()).then(|| Ipv4Addr::from(octets))
}

/// What [`envelope`] read.
pub(super) struct Envelope<'a> {
    pub collector_id: Option<&'a str>,
    pub format: Format,
    pub events: Vec<Event>,
}

/// A `/v1/ingest` envelope read in one pass, its records included (on up
/// to `parts` threads); `None` when the serde path must decide (any error,
/// an unknown format, too many records, a repeated envelope key, escapes in
/// a key or a name).
pub(super) fn envelope<'a>(source: &'a str, filter: &KeyFilter, limits: Limits, parts: usize) -> Option<Envelope<'a>> {
    let mut c = Cursor::new(source, 0, source.len());
    if !c.eat_after_ws(b'{') {
        return None;
    }
    let (mut collector_id, mut format, mut events) = (None, None, None);
    if !c.eat_after_ws(b'}') {
        loop {
            if c.peek() != Some(b'"') {
                return None;
            }
            let (ks, ke, escaped) = c.string()?;
            if escaped {
                return None;
            }
            if !c.eat_after_ws(b':') {
                return None;
            }
            c.ws();
            match &source[ks..ke] {
                "collector_id" if collector_id.is_none() => {
                    collector_id = Some(match c.peek()? {
                        b'"' => match c.string()? {
                            (s, e, false) => Some(&source[s..e]),
                            _ => return None,
                        },
                        b'n' => {
                            c.literal(b"null")?;
                            None
                        }
                        _ => return None,
                    })
                }
                "format" if format.is_none() => match c.peek()? {
                    b'"' => match c.string()? {
                        (s, e, false) => format = Some(Format::from_name(&source[s..e])?),
                        _ => return None,
                    },
                    _ => return None,
                },
                "records" if events.is_none() => events = Some(records(&mut c, filter, limits, parts)?),
                "collector_id" | "format" | "records" => return None,
                _ => c.skip_value(1)?,
            }
            if !c.after_item(b'}')? {
                break;
            }
        }
    }
    c.ws();
    if c.at != source.len() {
        return None;
    }
    Some(Envelope { collector_id: collector_id.flatten(), format: format?, events: events? })
}

/// The records array at the cursor, read in up to `parts` runs on threads
/// (see [`split`]) when `parts` > 1.
fn records(c: &mut Cursor, filter: &KeyFilter, limits: Limits, parts: usize) -> Option<Vec<Event>> {
    if !c.eat(b'[') {
        return None;
    }
    if c.eat_after_ws(b']') {
        return Some(Vec::new());
    }
    if parts > 1 {
        return split::records(c, filter, limits, parts);
    }
    let mut events = Vec::new();
    match run(c, filter, limits.max_records, usize::MAX, &mut events)? {
        Stop::End => Some(events),
        Stop::Landed => unreachable!("no run stops at usize::MAX"),
    }
}

/// Where a [`run`] of records stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// After the array's `]`.
    End,
    /// On the `until` it was given, a record's first byte.
    Landed,
}

/// Reads records of an array from the cursor (on a record's first byte,
/// after the `[` or a comma) onto `events`, until the array's `]`
/// ([`Stop::End`], the `]` consumed) or until the cursor lands exactly on
/// `until` after a comma ([`Stop::Landed`]); a run that passes `until`
/// without landing on it reads on to the end. `None`: a record is not an
/// object, not valid, needs the serde path, or `events` would exceed `max`.
fn run(c: &mut Cursor, filter: &KeyFilter, max: usize, mut until: usize, events: &mut Vec<Event>) -> Option<Stop> {
    let first = events.len();
    loop {
        if c.peek() != Some(b'{') || events.len() == max {
            return None;
        }
        let start = c.at;
        // Filled where it lies, as in `record` (on any failure the whole
        // envelope goes to the serde path, so a half-filled event is dropped).
        events.push(Event::default());
        let event = events.last_mut().expect("just pushed");
        fields(c, filter, event)?;
        event.raw = Span { start: start as u32, len: (c.at - start) as u32 };
        if events.len() == first + 1 {
            // Room for as many records as there would be of the first one's
            // size in the bytes this run reads.
            let guess = until.min(c.b.len()).saturating_sub(start) / (c.at - start + 1) + 1;
            events.reserve(guess.min(max));
        }
        if !c.after_item(b']')? {
            return Some(Stop::End);
        }
        if c.at >= until {
            if c.at == until {
                return Some(Stop::Landed);
            }
            until = usize::MAX;
        }
    }
}
