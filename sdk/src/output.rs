//! Writing results: a verdict (score, reasons, tags) and fields.

use crate::abi::{kind, ENTRY_HEADER, MAX_TEXT};

/// A reason or tag text declared once per module by [`crate::texts!`]
/// (ABI 1.1), written by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeclaredText {
    id: u8,
    text: &'static str,
}

impl DeclaredText {
    #[doc(hidden)]
    pub const fn new(id: u8, text: &'static str) -> Self {
        DeclaredText { id, text }
    }

    /// The id the host knows this text by (its place in the declaration).
    pub const fn id(self) -> u8 {
        self.id
    }

    pub const fn text(self) -> &'static str {
        self.text
    }
}

/// Results of the current event, appended to the exchange area.
pub struct Output<'o> {
    buf: &'o mut [u8],
    len: usize,
    event: u16,
    overflow: bool,
}

impl<'o> Output<'o> {
    #[inline]
    pub fn new(buf: &'o mut [u8]) -> Self {
        Output { buf, len: 0, event: 0, overflow: false }
    }

    #[doc(hidden)]
    #[inline]
    pub fn start_event(&mut self, event: u16) {
        self.event = event;
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
        self.entry(kind::REASON, &[reason.as_bytes()]);
    }

    /// Adds a tag.
    #[inline]
    pub fn tag(&mut self, tag: &str) {
        self.entry(kind::TAG, &[tag.as_bytes()]);
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
        if cfg!(target_arch = "wasm32") {
            self.entry(by_id, &[&[text.id]]);
        } else {
            self.entry(by_text, &[text.text.as_bytes()]);
        }
    }

    /// Sets field `key` to a JSON value given as text (`"\"inbound\""`,
    /// `42`, `{"a":1}`); the host checks it is valid JSON.
    pub fn field_json(&mut self, key: &str, json: &str) {
        if key.is_empty() || key.len() > 255 {
            self.overflow = true;
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
