//! ABI v1.1: the byte layout shared by the host and guests (see `ABI.md`).
//!
//! Everything is little-endian and pointer-free, so the same `#[repr(C)]`
//! structs describe guest memory on wasm32 and the host's view of it on
//! x86_64: the host compiles this module natively and writes these very
//! structs.

/// `major << 16 | minor`. The host accepts modules of the same major
/// version whose minor is not newer than its own.
pub const ABI_VERSION: u32 = (1 << 16) | 1;
pub const ABI_MAJOR: u32 = ABI_VERSION >> 16;
pub const ABI_MINOR: u32 = ABI_VERSION & 0xffff;

/// Import module name of the host functions.
pub const IMPORT_MODULE: &str = "enrichd_v1";

/// Most events per `enrichd_process` call.
pub const MAX_BATCH: usize = 256;
/// Size of the result buffer.
pub const OUT_CAPACITY: usize = 65536;
/// Longest reason / tag / field key or value the host accepts.
pub const MAX_TEXT: usize = 1024;
/// Most reasons and tags of one event, by text and by id together.
pub const MAX_LIST_ENTRIES: usize = 32;
/// Longest `FIELD` payload: the key's length byte, the key and the JSON
/// value together.
pub const MAX_FIELD_PAYLOAD: usize = 4 * MAX_TEXT;
/// Most texts a module declares (ABI 1.1): ids are one byte.
pub const MAX_DECLARED_TEXTS: usize = 255;
/// Most bytes of declared texts in all (ABI 1.1): each id a module writes
/// expands to its text, so the table's size bounds what a one-byte entry
/// can become (see also [`MAX_LISTS_JSON`]).
pub const MAX_DECLARED_BYTES: usize = 16 * 1024;
/// Most bytes the reasons and tags of one call may take as JSON (declared
/// texts counted as their JSON each time named): 16 times the result
/// buffer, so a call of texts written out (at most 6 bytes of JSON per
/// byte) never reaches it, while ids cannot turn a small buffer into
/// tens of megabytes.
pub const MAX_LISTS_JSON: usize = 16 * OUT_CAPACITY;

/// Presence bits of [`EventRecord::present`].
pub mod present {
    pub const SRC_IP: u32 = 1 << 0;
    pub const DST_IP: u32 = 1 << 1;
    pub const TS: u32 = 1 << 2;
    pub const BYTES: u32 = 1 << 3;
    pub const ORIG_BYTES: u32 = 1 << 4;
    pub const RESP_BYTES: u32 = 1 << 5;
    pub const PACKETS: u32 = 1 << 6;
    pub const DURATION: u32 = 1 << 7;
    pub const SRC_PORT: u32 = 1 << 8;
    pub const DST_PORT: u32 = 1 << 9;
    pub const PROTO: u32 = 1 << 10;
    pub const SRC_COUNTRY: u32 = 1 << 11;
    pub const DST_COUNTRY: u32 = 1 << 12;
    pub const SRC_ASN: u32 = 1 << 13;
    pub const DST_ASN: u32 = 1 << 14;
    /// The source address is IPv4 (stored IPv4-mapped, `::ffff:a.b.c.d`).
    pub const SRC_IPV4: u32 = 1 << 15;
    pub const DST_IPV4: u32 = 1 << 16;
}

/// One event's well-known fields: 112 bytes, fixed offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EventRecord {
    /// Offset 0: source address, IPv6 or IPv4-mapped.
    pub src_ip: [u8; 16],
    /// Offset 16.
    pub dst_ip: [u8; 16],
    /// Offset 32: epoch seconds.
    pub ts: f64,
    /// Offset 40: flow `bytes`.
    pub bytes: u64,
    /// Offset 48: Zeek `orig_bytes`.
    pub orig_bytes: u64,
    /// Offset 56: Zeek `resp_bytes`.
    pub resp_bytes: u64,
    /// Offset 64.
    pub packets: u64,
    /// Offset 72: seconds.
    pub duration: f64,
    /// Offset 80: which fields are set ([`present`]).
    pub present: u32,
    /// Offset 84.
    pub src_asn: u32,
    /// Offset 88.
    pub dst_asn: u32,
    /// Offset 92: threat-intel matches found by earlier chain stages.
    pub ti_matches: u32,
    /// Offset 96.
    pub src_port: u16,
    /// Offset 98.
    pub dst_port: u16,
    /// Offset 100: ISO 3166 alpha-2, ASCII.
    pub src_country: [u8; 2],
    /// Offset 102.
    pub dst_country: [u8; 2],
    /// Offset 104: IANA protocol number.
    pub proto: u8,
    /// Offset 105..112: zero.
    pub reserved: [u8; 7],
}

pub const EVENT_RECORD_SIZE: usize = 112;

impl EventRecord {
    pub const EMPTY: EventRecord = EventRecord {
        src_ip: [0; 16],
        dst_ip: [0; 16],
        ts: 0.0,
        bytes: 0,
        orig_bytes: 0,
        resp_bytes: 0,
        packets: 0,
        duration: 0.0,
        present: 0,
        src_asn: 0,
        dst_asn: 0,
        ti_matches: 0,
        src_port: 0,
        dst_port: 0,
        src_country: [0; 2],
        dst_country: [0; 2],
        proto: 0,
        reserved: [0; 7],
    };
}

/// The guest-owned exchange area; `enrichd_io()` returns its address.
#[repr(C)]
pub struct IoArea {
    /// Offset 0: input records, `n` of them valid per call.
    pub events: [EventRecord; MAX_BATCH],
    /// Offset 28672: bytes of `out` the guest wrote.
    pub out_len: u32,
    /// Offset 28676: zero.
    pub reserved: u32,
    /// Offset 28680: result entries.
    pub out: [u8; OUT_CAPACITY],
}

pub const IO_EVENTS_OFFSET: usize = 0;
pub const IO_OUT_LEN_OFFSET: usize = MAX_BATCH * EVENT_RECORD_SIZE;
pub const IO_OUT_OFFSET: usize = IO_OUT_LEN_OFFSET + 8;
pub const IO_AREA_SIZE: usize = IO_OUT_OFFSET + OUT_CAPACITY;

/// Kinds of result entries.
pub mod kind {
    /// `i32` little-endian: the event's score (0-100 after clamping by the host).
    pub const SCORE: u8 = 1;
    /// UTF-8: one reason.
    pub const REASON: u8 = 2;
    /// UTF-8: one tag.
    pub const TAG: u8 = 3;
    /// `key_len: u8`, key (UTF-8), then a JSON value (UTF-8): set a field.
    pub const FIELD: u8 = 4;
    /// ABI 1.1, `u8`: one reason, by the id of a text the module declared.
    pub const REASON_ID: u8 = 5;
    /// ABI 1.1, `u8`: one tag, by the id of a declared text.
    pub const TAG_ID: u8 = 6;
    /// The highest kind this version knows.
    pub const LAST: u8 = TAG_ID;
}

/// One declared text in the table `enrichd_texts()` points at (ABI 1.1):
/// the address and length of UTF-8 bytes in the module's memory. 8 bytes
/// on wasm32, where the table exists; the host reads it as two `u32`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TextRef {
    pub ptr: *const u8,
    pub len: u32,
}

impl TextRef {
    pub const fn new(text: &'static str) -> Self {
        TextRef { ptr: text.as_ptr(), len: text.len() as u32 }
    }
}

/// The table of declared texts: `count: u32`, then `count` [`TextRef`]s;
/// text `i` has id `i`. Made by [`crate::texts!`].
#[repr(C)]
pub struct TextTable<const N: usize> {
    pub count: u32,
    pub texts: [TextRef; N],
}

// SAFETY: the table is immutable and points at `'static` string data.
unsafe impl<const N: usize> Sync for TextTable<N> {}

/// Bytes of one table entry as the host reads it (wasm32 layout).
pub const TEXT_REF_SIZE: usize = 8;

/// Header of one result entry: `event: u16, kind: u8, len: u16`, then `len`
/// payload bytes.
pub const ENTRY_HEADER: usize = 5;

/// One decoded result entry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry<'a> {
    pub event: u16,
    pub kind: u8,
    pub payload: &'a [u8],
}

/// Why a result buffer is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Truncated { offset: usize },
    UnknownKind { offset: usize, kind: u8 },
}

/// Iterates over the entries of a result buffer.
pub struct Entries<'a> {
    buf: &'a [u8],
    pos: usize,
}

pub fn entries(buf: &[u8]) -> Entries<'_> {
    Entries { buf, pos: 0 }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let at = self.pos;
        let rest = &self.buf[at..];
        if rest.len() < ENTRY_HEADER {
            self.pos = self.buf.len();
            return Some(Err(DecodeError::Truncated { offset: at }));
        }
        let event = u16::from_le_bytes([rest[0], rest[1]]);
        let kind = rest[2];
        let len = u16::from_le_bytes([rest[3], rest[4]]) as usize;
        if rest.len() < ENTRY_HEADER + len {
            self.pos = self.buf.len();
            return Some(Err(DecodeError::Truncated { offset: at }));
        }
        if !(kind::SCORE..=kind::LAST).contains(&kind) {
            self.pos = self.buf.len();
            return Some(Err(DecodeError::UnknownKind { offset: at, kind }));
        }
        self.pos = at + ENTRY_HEADER + len;
        Some(Ok(Entry { event, kind, payload: &rest[ENTRY_HEADER..ENTRY_HEADER + len] }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn layout_matches_the_documented_offsets() {
        assert_eq!(size_of::<EventRecord>(), EVENT_RECORD_SIZE);
        assert_eq!(align_of::<EventRecord>(), 8);
        let r = EventRecord::EMPTY;
        let base = &r as *const _ as usize;
        let off = |p: *const u8| p as usize - base;
        assert_eq!(off(r.dst_ip.as_ptr()), 16);
        assert_eq!(off(&r.ts as *const f64 as *const u8), 32);
        assert_eq!(off(&r.duration as *const f64 as *const u8), 72);
        assert_eq!(off(&r.present as *const u32 as *const u8), 80);
        assert_eq!(off(&r.ti_matches as *const u32 as *const u8), 92);
        assert_eq!(off(&r.src_port as *const u16 as *const u8), 96);
        assert_eq!(off(r.src_country.as_ptr()), 100);
        assert_eq!(off(&r.proto as *const u8), 104);
        assert_eq!(size_of::<IoArea>(), IO_AREA_SIZE);
    }

    #[test]
    fn entries_decode_and_reject_garbage() {
        let buf = [0u8, 0, kind::SCORE, 4, 0, 42, 0, 0, 0, 1, 0, kind::TAG, 1, 0, b'x'];
        let got: Vec<_> = entries(&buf).collect();
        assert_eq!(got[0], Ok(Entry { event: 0, kind: kind::SCORE, payload: &[42, 0, 0, 0] }));
        assert_eq!(got[1], Ok(Entry { event: 1, kind: kind::TAG, payload: b"x" }));
        assert!(matches!(entries(&buf[..7]).next(), Some(Err(DecodeError::Truncated { offset: 0 }))));
        assert!(matches!(entries(&[0, 0, 9, 0, 0]).next(), Some(Err(DecodeError::UnknownKind { kind: 9, .. }))));
    }
}
