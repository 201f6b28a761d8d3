//! Writing results: a verdict (score, reasons, tags) and fields.

use crate::abi::{kind, ENTRY_HEADER, MAX_FIELD_PAYLOAD, MAX_LISTS_JSON, MAX_LIST_ENTRIES, MAX_TEXT};

/// A reason or tag text declared once per module by [`crate::texts!`]
/// (ABI 1.1), written by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeclaredText {
    id: u8,
    text: &'static str,
    /// Bytes of its JSON string, as the host counts it against
    /// [`MAX_LISTS_JSON`] each time the id is written.
    json_len: usize,
}

impl DeclaredText {
    #[doc(hidden)]
    pub const fn new(id: u8, text: &'static str) -> Self {
        DeclaredText { id, text, json_len: json_len(text.as_bytes()) }
    }

    /// The id the host knows this text by (its place in the declaration).
    pub const fn id(self) -> u8 {
        self.id
    }

    pub const fn text(self) -> &'static str {
        self.text
    }
}

/// The length of `text` as a JSON string, escaped the way the host
/// (serde_json) escapes it: quotes and backslashes take two bytes, control
/// characters two (`\n`, ...) or six (`\u001b`).
const fn json_len(text: &[u8]) -> usize {
    let mut len = 2;
    let mut i = 0;
    while i < text.len() {
        len += match text[i] {
            b'"' | b'\\' | 0x08 | 0x0c | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1f => 6,
            _ => 1,
        };
        i += 1;
    }
    len
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    // `get`, not indexing: a str index that could panic pulls the panic
    // message's formatting into every module (it doubled risk.wasm).
    text.get(..end).unwrap_or("")
}

/// Results of the current event, appended to the exchange area.
///
/// The host refuses a whole call (every event of it gets the fallback) for
/// one entry over its per-event limits (`ABI.md` section 4). So the limits
/// are kept here, where the module can know: a reason or tag over
/// [`MAX_TEXT`] bytes is cut (at a character boundary), reasons and tags
/// past [`MAX_LIST_ENTRIES`] for an event, or past [`MAX_LISTS_JSON`] for
/// the call, and a field over [`MAX_FIELD_PAYLOAD`] are left out, and
/// [`Output::truncated`] says so.
pub struct Output<'o> {
    buf: &'o mut [u8],
    len: usize,
    event: u16,
    overflow: bool,
    /// Reasons and tags of the current event.
    lists: usize,
    /// JSON bytes of the call's reasons and tags, as the host counts them.
    lists_json: usize,
    truncated: bool,
}

impl<'o> Output<'o> {
    #[inline]
    pub fn new(buf: &'o mut [u8]) -> Self {
        Output { buf, len: 0, event: 0, overflow: false, lists: 0, lists_json: 0, truncated: false }
    }

    #[doc(hidden)]
    #[inline]
    pub fn start_event(&mut self, event: u16) {
        self.event = event;
        self.lists = 0;
    }

    /// Whether something written in this call was cut or left out to stay
    /// within the host's per-event limits (see [`Output`]); the call's
    /// other results stand.
    #[inline]
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    #[doc(hidden)]
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[doc(hidden)]
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[doc(hidden)]
    #[inline]
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Sets the event's score (the host clamps it to 0..=100).
    #[inline]
    pub fn score(&mut self, score: i32) {
        self.entry(kind::SCORE, &[&score.to_le_bytes()]);
    }

    /// Adds a human-readable reason for the score.
    #[inline]
    pub fn reason(&mut self, reason: &str) {
        self.text(kind::REASON, reason);
    }

    /// Adds a tag.
    #[inline]
    pub fn tag(&mut self, tag: &str) {
        self.text(kind::TAG, tag);
    }

    #[inline]
    fn text(&mut self, kind: u8, text: &str) {
        let text = if text.len() > MAX_TEXT {
            self.truncated = true;
            cut(text, MAX_TEXT)
        } else {
            text
        };
        // The host counts a text written out as its bytes and quotes.
        self.list_entry(kind, text.as_bytes(), text.len() + 3);
    }

    /// Writes a reason or tag entry unless the event has its
    /// [`MAX_LIST_ENTRIES`] or the call would pass [`MAX_LISTS_JSON`].
    #[inline]
    fn list_entry(&mut self, kind: u8, payload: &[u8], json: usize) {
        if self.lists >= MAX_LIST_ENTRIES || self.lists_json + json > MAX_LISTS_JSON {
            self.truncated = true;
            return;
        }
        let before = self.len;
        self.entry(kind, &[payload]);
        if self.len != before {
            self.lists += 1;
            self.lists_json += json;
        }
    }

    /// Adds a reason the module declared with [`crate::texts!`]: one byte
    /// in the result buffer instead of the text, and the host reuses the
    /// JSON it made for the same list of declared texts. Natively (tests)
    /// the text itself is written, which is what the host turns the id into.
    #[inline]
    pub fn declared_reason(&mut self, reason: DeclaredText) {
        self.declared(kind::REASON_ID, kind::REASON, reason);
    }

    /// Adds a tag the module declared with [`crate::texts!`] (see
    /// [`Output::declared_reason`]).
    #[inline]
    pub fn declared_tag(&mut self, tag: DeclaredText) {
        self.declared(kind::TAG_ID, kind::TAG, tag);
    }

    #[inline]
    fn declared(&mut self, by_id: u8, by_text: u8, text: DeclaredText) {
        // Counted as the host counts the id (its text's JSON and a comma)
        // natively too, so native tests see what the module will do.
        let json = text.json_len + 1;
        if cfg!(target_arch = "wasm32") {
            self.list_entry(by_id, &[text.id], json);
        } else {
            self.list_entry(by_text, text.text.as_bytes(), json);
        }
    }

    /// Sets field `key` to a JSON value given as text (`"\"inbound\""`,
    /// `42`, `{"a":1}`); the host checks it is valid JSON. A key and value
    /// over [`MAX_FIELD_PAYLOAD`] bytes together are left out (JSON cannot
    /// be cut): see [`Output::truncated`].
    pub fn field_json(&mut self, key: &str, json: &str) {
        if key.is_empty() || key.len() > 255 {
            self.overflow = true;
            return;
        }
        if 1 + key.len() + json.len() > MAX_FIELD_PAYLOAD {
            self.truncated = true;
            return;
        }
        self.entry(kind::FIELD, &[&[key.len() as u8], key.as_bytes(), json.as_bytes()]);
    }

    /// Sets field `key` to a string (quoted and escaped here).
    pub fn field_str(&mut self, key: &str, value: &str) {
        let mut quoted = crate::Text::<{ MAX_TEXT }>::new();
        quoted.push_str("\"");
        for c in value.chars() {
            match c {
                '"' => quoted.push_str("\\\""),
                '\\' => quoted.push_str("\\\\"),
                c if (c as u32) < 0x20 => quoted.push_str(" "),
                c => {
                    let mut b = [0u8; 4];
                    quoted.push_str(c.encode_utf8(&mut b))
                }
            };
        }
        quoted.push_str("\"");
        self.field_json(key, quoted.as_str());
    }

    /// Sets field `key` to a number.
    pub fn field_u64(&mut self, key: &str, value: u64) {
        let mut t = crate::Text::<20>::new();
        t.push_u64(value);
        self.field_json(key, t.as_str());
    }

    #[inline]
    fn entry(&mut self, kind: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let at = match self.header(kind, len) {
            Some(at) => at,
            None => return,
        };
        let mut pos = at + ENTRY_HEADER;
        for p in parts {
            self.buf[pos..pos + p.len()].copy_from_slice(p);
            pos += p.len();
        }
        self.len = pos;
    }

    /// Writes an entry header for a `len`-byte payload; the payload's
    /// offset is the returned one plus `ENTRY_HEADER`. `None` (and the
    /// overflow flag) when it does not fit.
    #[inline]
    fn header(&mut self, kind: u8, len: usize) -> Option<usize> {
        let at = self.len;
        if len > u16::MAX as usize || at + ENTRY_HEADER + len > self.buf.len() {
            self.overflow = true;
            return None;
        }
        let h = &mut self.buf[at..at + ENTRY_HEADER];
        let [e0, e1] = self.event.to_le_bytes();
        let [l0, l1] = (len as u16).to_le_bytes();
        h[0] = e0;
        h[1] = e1;
        h[2] = kind;
        h[3] = l0;
        h[4] = l1;
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{entries, OUT_CAPACITY};

    /// (event, kind, payload) of every entry written.
    fn written(buf: &[u8], len: usize) -> Vec<(u16, u8, Vec<u8>)> {
        entries(&buf[..len]).map(|e| e.unwrap()).map(|e| (e.event, e.kind, e.payload.to_vec())).collect()
    }

    /// Before, these were written as asked and the host refused the whole
    /// call (`malformed_result`: every event of the call got the fallback).
    #[test]
    fn the_hosts_per_event_limits_are_kept_on_the_guests_side() {
        let mut buf = vec![0u8; OUT_CAPACITY];
        let mut out = Output::new(&mut buf);
        out.start_event(0);
        for i in 0..40 {
            if i % 2 == 0 {
                out.reason("r");
            } else {
                out.tag("t");
            }
        }
        assert!(out.truncated(), "reasons and tags past 32 are left out, and it says so");
        out.start_event(1);
        // 1,023 bytes, then a two-byte character across the limit.
        let long = format!("{}é and more", "x".repeat(MAX_TEXT - 1));
        out.reason(&long);
        out.field_json("k", &format!("\"{}\"", "v".repeat(MAX_FIELD_PAYLOAD)));
        out.field_json("ok", "1");
        let len = out.len();
        let entries = written(&buf, len);
        let lists =
            |event: u16| entries.iter().filter(move |(e, k, _)| *e == event && (*k == kind::REASON || *k == kind::TAG));
        assert_eq!(lists(0).count(), MAX_LIST_ENTRIES);
        let cut: Vec<&Vec<u8>> = lists(1).map(|(_, _, p)| p).collect();
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].len(), MAX_TEXT - 1, "cut before the character that does not fit");
        assert!(std::str::from_utf8(cut[0]).is_ok());
        let fields: Vec<&Vec<u8>> = entries.iter().filter(|(_, k, _)| *k == kind::FIELD).map(|(_, _, p)| p).collect();
        assert_eq!(fields, [&b"\x02ok1".to_vec()], "the oversized field is left out, the next one written");
    }

    #[test]
    fn declared_texts_count_as_their_json_against_the_calls_bound() {
        assert_eq!(json_len(b"telnet"), 8);
        assert_eq!(json_len(b"a\"b\n\x1b"), 2 + 1 + 2 + 1 + 2 + 6);
        let long: &'static str = Box::leak("y".repeat(MAX_TEXT).into_boxed_str());
        let text = DeclaredText::new(0, long);
        let mut buf = vec![0u8; 2 * MAX_LISTS_JSON];
        let mut out = Output::new(&mut buf);
        let mut written_ids = 0;
        for event in 0..256u16 {
            out.start_event(event);
            for _ in 0..MAX_LIST_ENTRIES {
                let before = out.len();
                out.declared_reason(text);
                written_ids += usize::from(out.len() != before);
            }
        }
        assert!(out.truncated());
        assert_eq!(written_ids, MAX_LISTS_JSON / (MAX_TEXT + 3), "as many as the host takes, no more");
    }
}
