//! Writing results: a verdict (score, reasons, tags) and fields.

use crate::abi::{kind, ENTRY_HEADER, MAX_TEXT};

/// Results of the current event, appended to the exchange area.
pub struct Output<'o> {
    buf: &'o mut [u8],
    len: usize,
    event: u16,
    overflow: bool,
}

impl<'o> Output<'o> {
    pub fn new(buf: &'o mut [u8]) -> Self {
        Output { buf, len: 0, event: 0, overflow: false }
    }

    #[doc(hidden)]
    pub fn start_event(&mut self, event: u16) {
        self.event = event;
    }

    #[doc(hidden)]
    pub fn len(&self) -> usize {
        self.len
    }

    #[doc(hidden)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[doc(hidden)]
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Sets the event's score (the host clamps it to 0..=100).
    pub fn score(&mut self, score: i32) {
        self.entry(kind::SCORE, &[&score.to_le_bytes()]);
    }

    /// Adds a human-readable reason for the score.
    pub fn reason(&mut self, reason: &str) {
        self.entry(kind::REASON, &[reason.as_bytes()]);
    }

    /// Adds a tag.
    pub fn tag(&mut self, tag: &str) {
        self.entry(kind::TAG, &[tag.as_bytes()]);
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

    fn entry(&mut self, kind: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > u16::MAX as usize || self.len + ENTRY_HEADER + len > self.buf.len() {
            self.overflow = true;
            return;
        }
        let at = self.len;
        self.buf[at..at + 2].copy_from_slice(&self.event.to_le_bytes());
        self.buf[at + 2] = kind;
        self.buf[at + 3..at + 5].copy_from_slice(&(len as u16).to_le_bytes());
        let mut pos = at + ENTRY_HEADER;
        for p in parts {
            self.buf[pos..pos + p.len()].copy_from_slice(p);
            pos += p.len();
        }
        self.len = pos;
    }
}
