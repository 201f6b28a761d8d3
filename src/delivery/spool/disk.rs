//! The bytes on disk: the entry format, scanning a segment on open, reading
//! one entry back, and the `ack` file beside the segments.
//!
//! An entry is a 32-byte header followed by the payload. All integers are
//! little-endian:
//!
//! | offset | size | field                                   |
//! |--------|------|-----------------------------------------|
//! | 0      | 2    | magic `b"Sp"`                           |
//! | 2      | 1    | format version (1)                      |
//! | 3      | 1    | flags: bit 0 = the entry has an origin key; bit 1 = end marker |
//! | 4      | 4    | payload length                          |
//! | 8      | 4    | events in the payload                   |
//! | 12     | 8    | seq                                     |
//! | 20     | 8    | accepted, Unix milliseconds             |
//! | 28     | 4    | CRC-32 of bytes 0..28 and the payload   |
//!
//! With flag bit 0 the payload region starts with the entry's origin key
//! (see `Entry::origin`): a 2-byte length and the key's UTF-8 bytes, then
//! the NDJSON. The length field counts the whole region. Version-1 entries
//! written before keys existed have the flags 0 and read as before; a
//! binary older than the flag refuses a keyed entry as damaged, so a
//! downgrade with keyed entries queued loses them (drain first).
//!
//! The CRC covers the header too, so a torn or bit-flipped length or seq is
//! caught, not only a damaged payload. The seq is checked against its
//! position (segment's first seq + index), which catches a stale entry left
//! behind by an earlier, longer file.
//!
//! # Reused segment files
//!
//! A delivered segment's file is kept as a spare and written over by a
//! later segment (see `spares`), so the bytes after the last entry may be
//! an older segment's. Two rules keep that from reading as damage:
//! - an entry written where older bytes follow is followed by an **end
//!   marker**: a header alone, flag bit 1, length 0, the seq the next
//!   entry will have, CRC over the header. The next entry overwrites it.
//! - an intact entry or marker (CRC holds) whose seq is *below* the one
//!   expected is an older segment's: the data ends there. A CRC cannot
//!   hold by accident, so damage is still told apart from old data.
//!
//! A binary from before markers existed reads a marker as damage (cut off,
//! counted); nothing delivered is lost by that.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub(super) use crate::delivery::durable::sync_dir;

/// Size of an entry's header.
pub(crate) const HEADER_LEN: usize = 32;
const MAGIC: [u8; 2] = *b"Sp";
const VERSION: u8 = 1;
/// Flag: the region starts with an origin key.
const FLAG_ORIGIN: u8 = 1;
/// Flag: an end marker, not an entry (see the module docs).
const FLAG_END: u8 = 2;
/// Longest origin key kept (longer keys are refused by the caller).
pub(crate) const MAX_ORIGIN_LEN: usize = u16::MAX as usize;
const SEGMENT_SUFFIX: &str = ".seg";
const ACK_FILE: &str = "ack";
const ACK_TMP: &str = "ack.tmp";

/// Where one entry lies in its segment (its seq is the segment's first seq
/// plus its index, so it is not stored): 24 bytes of memory per entry.
#[derive(Clone, Copy, Debug)]
pub(super) struct EntryMeta {
    pub(super) offset: u64,
    pub(super) len: u32,
    pub(super) events: u32,
    pub(super) accepted_unix_ms: u64,
}

impl EntryMeta {
    /// Bytes the entry takes on disk, header included.
    pub(super) fn disk_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.len)
    }
}

/// The origin prefix of a region (empty without a key).
pub(super) fn origin_prefix(origin: Option<&str>) -> Vec<u8> {
    match origin {
        None => Vec::new(),
        Some(key) => {
            let len = u16::try_from(key.len()).expect("caller checks the key length");
            let mut prefix = Vec::with_capacity(2 + key.len());
            prefix.extend_from_slice(&len.to_le_bytes());
            prefix.extend_from_slice(key.as_bytes());
            prefix
        }
    }
}

/// The header of an entry about to be written: its region is `prefix`
/// (the origin key, [`origin_prefix`]; empty for none) then `payload`.
pub(super) fn encode_header(
    prefix: &[u8],
    payload: &[u8],
    events: u32,
    seq: u64,
    accepted_unix_ms: u64,
) -> [u8; HEADER_LEN] {
    let len = u32::try_from(prefix.len() + payload.len()).expect("caller checks the payload fits in u32");
    let flags = if prefix.is_empty() { 0 } else { FLAG_ORIGIN };
    header(flags, len, events, seq, accepted_unix_ms, &[prefix, payload])
}

/// A header with its CRC over itself and `region` (the bytes it describes).
fn header(flags: u8, len: u32, events: u32, seq: u64, accepted_unix_ms: u64, region: &[&[u8]]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..2].copy_from_slice(&MAGIC);
    h[2] = VERSION;
    h[3] = flags;
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..12].copy_from_slice(&events.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    h[20..28].copy_from_slice(&accepted_unix_ms.to_le_bytes());
    let crc = crc(&h, region);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The end marker written after an entry when older bytes follow it:
/// says the data ends here and the next entry will be `next_seq`.
pub(super) fn end_marker(next_seq: u64) -> [u8; HEADER_LEN] {
    header(FLAG_END, 0, 0, next_seq, 0, &[])
}

fn crc(header: &[u8; HEADER_LEN], region: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..28]);
    for part in region {
        hasher.update(part);
    }
    hasher.finalize()
}

struct Header {
    flags: u8,
    len: u32,
    events: u32,
    seq: u64,
    accepted_unix_ms: u64,
    crc: u32,
}

fn decode_header(h: &[u8; HEADER_LEN]) -> Result<Header, String> {
    if h[0..2] != MAGIC {
        return Err(format!("bad magic {:02x}{:02x}", h[0], h[1]));
    }
    if h[2] != VERSION || h[3] & !(FLAG_ORIGIN | FLAG_END) != 0 || h[3] == FLAG_ORIGIN | FLAG_END {
        return Err(format!("unknown version {} (flags {})", h[2], h[3]));
    }
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
    Ok(Header {
        flags: h[3],
        len: u32_at(4),
        events: u32_at(8),
        seq: u64_at(12),
        accepted_unix_ms: u64_at(20),
        crc: u32_at(28),
    })
}

/// What scanning a segment found: the intact entries from its start, and
/// where (and why) it stopped early, if it did.
pub(super) struct Scan {
    pub(super) entries: Vec<EntryMeta>,
    /// Bytes of intact entries from the start of the file.
    pub(super) valid_len: u64,
    pub(super) file_len: u64,
    /// Why the data stopped before `file_len`, when that is damage. `None`
    /// with `valid_len < file_len`: an end marker or an older segment's
    /// bytes follow (a reused file), which is no damage.
    pub(super) problem: Option<String>,
}

/// Reads a segment from the start, checking every entry (header, seq,
/// length against the file, CRC); stops at the first one that fails, or
/// cleanly at an end marker or an older segment's intact entry.
pub(super) fn scan_segment(file: &File, first_seq: u64) -> io::Result<Scan> {
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut entries = Vec::new();
    let mut payload = Vec::new();
    let mut offset = 0u64;
    let problem = loop {
        let remaining = file_len - offset;
        if remaining == 0 {
            break None;
        }
        if remaining < HEADER_LEN as u64 {
            break Some(format!("truncated header at offset {offset} ({remaining} bytes)"));
        }
        let mut h = [0u8; HEADER_LEN];
        reader.read_exact(&mut h)?;
        let header = match decode_header(&h) {
            Ok(header) => header,
            Err(e) => break Some(format!("{e} at offset {offset}")),
        };
        let expected = first_seq + entries.len() as u64;
        if header.flags & FLAG_END != 0 {
            if header.len == 0 && crc(&h, &[]) == header.crc && header.seq <= expected {
                break None; // ours (seq == expected) or an older segment's
            }
            break Some(format!("damaged end marker at offset {offset}"));
        }
        if u64::from(header.len) > remaining - HEADER_LEN as u64 {
            break Some(format!("payload length {} runs past the end of the file, at offset {offset}", header.len));
        }
        payload.resize(header.len as usize, 0);
        reader.read_exact(&mut payload)?;
        let intact = crc(&h, &[&payload]) == header.crc;
        if intact && header.seq < expected {
            break None; // an older segment's entry: this file was reused
        }
        if header.seq != expected {
            break Some(format!("seq {} where {expected} was expected, at offset {offset}", header.seq));
        }
        if !intact {
            break Some(format!("CRC mismatch at offset {offset} (seq {expected})"));
        }
        let meta =
            EntryMeta { offset, len: header.len, events: header.events, accepted_unix_ms: header.accepted_unix_ms };
        offset += meta.disk_len();
        entries.push(meta);
    };
    Ok(Scan { entries, valid_len: offset, file_len, problem })
}

/// Reads one entry back, checking it is still what was written: its
/// origin key (if it has one) and its payload.
pub(super) fn read_entry(file: &File, seq: u64, meta: &EntryMeta) -> io::Result<(Option<String>, bytes::Bytes)> {
    let mut h = [0u8; HEADER_LEN];
    file.read_exact_at(&mut h, meta.offset)?;
    let mut region = vec![0u8; meta.len as usize];
    file.read_exact_at(&mut region, meta.offset + HEADER_LEN as u64)?;
    let header = decode_header(&h).map_err(|e| corrupt(seq, &e))?;
    if header.seq != seq || header.len != meta.len || crc(&h, &[&region]) != header.crc {
        return Err(corrupt(seq, "header or CRC no longer matches what was written"));
    }
    if header.flags & FLAG_ORIGIN == 0 {
        return Ok((None, region.into()));
    }
    let key_len = match region.get(..2) {
        Some(b) => usize::from(u16::from_le_bytes([b[0], b[1]])),
        None => return Err(corrupt(seq, "origin key flagged but missing")),
    };
    let key = region
        .get(2..2 + key_len)
        .and_then(|k| std::str::from_utf8(k).ok())
        .map(str::to_string)
        .ok_or_else(|| corrupt(seq, "origin key runs past the entry or is not UTF-8"))?;
    // The payload is the region after the key: a view, not a copy.
    Ok((Some(key), bytes::Bytes::from(region).slice(2 + key_len..)))
}

fn corrupt(seq: u64, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("spool entry {seq} is damaged on disk: {what}"))
}

/// `00000000000000000042.seg`: zero-padded so names sort as numbers.
pub(super) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"))
}

/// The segments in `dir`, sorted by first seq; other files are ignored.
pub(super) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)) else { continue };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(first_seq) = stem.parse::<u64>() {
                segments.push((first_seq, entry.path()));
            }
        }
    }
    segments.sort_unstable_by_key(|(first_seq, _)| *first_seq);
    Ok(segments)
}

/// The first unacked seq from the `ack` file: `Ok(None)` when there is
/// none, `Err(text)` when its content is not a number.
pub(super) fn read_ack(dir: &Path) -> io::Result<Option<Result<u64, String>>> {
    let _ = fs::remove_file(dir.join(ACK_TMP)); // a write that never got renamed
    match fs::read_to_string(dir.join(ACK_FILE)) {
        Ok(text) => Ok(Some(text.trim().parse::<u64>().map_err(|_| text))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces the `ack` file atomically: write a temporary file, fsync it,
/// rename it over the old one, fsync the directory. A crash leaves either
/// the old or the new position, never a torn one.
pub(super) fn write_ack(dir: &Path, first_unacked: u64) -> io::Result<()> {
    let tmp = dir.join(ACK_TMP);
    let mut file = File::create(&tmp)?;
    file.write_all(format!("{first_unacked}\n").as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(ACK_FILE))?;
    sync_dir(dir)
}
