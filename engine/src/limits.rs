//! Bounds on what data files may cost: reading a file with a size cap, and
//! keeping error texts short wherever they are stored, logged or served.
//!
//! Every plugin that reads a file users can drop in place (indicator lists,
//! databases, modules) reads it through [`read_capped`] or [`copy_capped`]:
//! the size is checked on the metadata first (a sparse 1 GiB file is
//! refused before a byte is read) and again on what is actually read, since
//! a file can grow while it is being read. Error texts that quote input go
//! through [`excerpt`] / [`quote`], and whole messages through
//! [`cap_message`], so a hostile line cannot end up in a log line, a status
//! report or the public metrics document at full length.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

/// Bytes of input quoted in an error message.
pub const EXCERPT_BYTES: usize = 200;

/// Longest error message kept in a status report, `last_reload_error` or a
/// log line (a path, a reason and an excerpt fit comfortably).
pub const MESSAGE_BYTES: usize = 1024;

/// At most `max` bytes of `s`, cut on a character boundary, with
/// `… (N bytes in all)` appended when something was cut.
pub fn excerpt(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    Cow::Owned(format!("{}… ({} bytes in all)", &s[..s.floor_char_boundary(max)], s.len()))
}

/// `s` quoted and escaped like `{:?}`, at most [`EXCERPT_BYTES`] of it,
/// with the truncation marked after the closing quote.
pub fn quote(s: &str) -> String {
    if s.len() <= EXCERPT_BYTES {
        return format!("{s:?}");
    }
    format!("{:?}… ({} bytes in all)", &s[..s.floor_char_boundary(EXCERPT_BYTES)], s.len())
}

/// An error message capped at [`MESSAGE_BYTES`] (see [`excerpt`]).
pub fn cap_message(message: String) -> String {
    match excerpt(&message, MESSAGE_BYTES) {
        Cow::Borrowed(_) => message,
        Cow::Owned(short) => short,
    }
}

/// Inflates a gzip body (several concatenated members too, as `cat a.gz
/// b.gz` makes) into at most `max` bytes: a decompression bomb costs at
/// most `max + 1` bytes of memory before it is refused. `Err(None)`: the
/// inflated body is larger than `max`; `Err(Some(e))`: not valid gzip.
/// The one gzip path of every entry point (`/v1/ingest`, `[[source]]`).
pub fn gunzip_capped(raw: &[u8], max: usize) -> Result<Vec<u8>, Option<io::Error>> {
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(max));
    flate2::read::MultiGzDecoder::new(raw).take(max as u64 + 1).read_to_end(&mut out).map_err(Some)?;
    if out.len() > max {
        return Err(None);
    }
    Ok(out)
}

/// The error for a file over `limit` bytes (`io::ErrorKind::FileTooLarge`).
pub fn too_large(size: u64, limit: u64) -> io::Error {
    io::Error::new(io::ErrorKind::FileTooLarge, format!("file is {size} bytes, over the limit of {limit} bytes"))
}

/// Copies the file at `path` into `out`, refusing it when it is larger
/// than `limit` bytes: by its metadata before reading, and by the bytes
/// actually read (a file growing while read). Returns the bytes copied.
/// A refused file gives an error of kind `FileTooLarge`; `out` may then
/// hold a partial copy.
pub fn copy_capped(path: &Path, out: &mut dyn Write, limit: u64) -> io::Result<u64> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    if size > limit {
        return Err(too_large(size, limit));
    }
    let copied = io::copy(&mut file.take(limit.saturating_add(1)), out)?;
    if copied > limit {
        return Err(too_large(copied, limit));
    }
    Ok(copied)
}

/// Reads the whole file at `path`, refused (kind `FileTooLarge`) when it is
/// larger than `limit` bytes; see [`copy_capped`]. Memory used is bounded
/// by `limit`, whatever the file does.
pub fn read_capped(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    if size > limit {
        return Err(too_large(size, limit));
    }
    // The metadata size is a hint only (the file may change): never
    // reserve more than the limit allows.
    let mut bytes = Vec::with_capacity(size.min(limit) as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64, limit));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_cut_on_char_boundaries_and_say_so() {
        assert_eq!(excerpt("short", 10), "short");
        let s = "é".repeat(150); // 300 bytes
        let e = excerpt(&s, 201);
        assert!(e.starts_with(&"é".repeat(100)) && e.ends_with("… (300 bytes in all)"), "{e}");
        let q = quote(&"\0".repeat(1 << 20));
        assert!(q.len() < 2 * EXCERPT_BYTES + 40, "{}", q.len());
        assert!(q.ends_with("(1048576 bytes in all)"));
        assert_eq!(quote("a\"b"), r#""a\"b""#);
        assert!(cap_message("x".repeat(10 * MESSAGE_BYTES)).len() < MESSAGE_BYTES + 40);
    }

    #[test]
    fn reads_are_capped_by_metadata_and_by_bytes_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        // A sparse 1 GiB file costs nothing to make and must cost nothing
        // to refuse.
        File::create(&path).unwrap().set_len(1 << 30).unwrap();
        let err = read_capped(&path, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert!(err.to_string().contains("1073741824 bytes"), "{err}");
        let mut sink = Vec::new();
        assert_eq!(copy_capped(&path, &mut sink, 1 << 20).unwrap_err().kind(), io::ErrorKind::FileTooLarge);
        assert!(sink.is_empty(), "refused before reading");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_capped(&path, 5).unwrap(), b"12345");
        assert_eq!(read_capped(&path, 4).unwrap_err().kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(read_capped(&dir.path().join("none"), 4).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
