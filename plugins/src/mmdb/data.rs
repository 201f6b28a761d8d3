//! A minimal reader for records in an MMDB data section: it follows exactly
//! the keys a plugin asks for and steps over everything else.
//!
//! Why not `LookupResult::decode` with borrowed serde structs: the serde
//! path still visits every entry of every map it enters (names in eight
//! languages, ...) through generic visitor calls. Measured on GeoLite2-City,
//! decoding plus writing the geoip answer took 1.1-1.6 us per record that
//! way and 0.45-0.9 us with this reader (one record, in cache; random
//! records 1.2-1.9 vs 0.85-1.4 us), with identical output on 250,000 sampled
//! addresses (`examples/mmdb_bench.rs`). Here a key that is not wanted
//! costs a header read, pointers are only followed when wanted, a lookup
//! stops at the first match, and strings are checked for UTF-8 only when
//! used. [`Value`] is a small `Copy` handle decoded on demand so that it stays
//! in registers.
//!
//! Format: <https://maxmind.github.io/MaxMind-DB/>. Every read is bounds
//! checked and nesting is capped, so a corrupt file yields [`DataError`],
//! never a panic or a runaway loop.

use std::fmt;
use std::num::NonZeroU64;

/// Containers nested deeper than this are refused (the format needs ~5).
const MAX_DEPTH: u32 = 64;

/// Values [`DataSection::validate`] visits in one record at most (a City
/// record, shared maps included, has a few hundred).
const MAX_VALUES: u32 = 100_000;

/// Entries of one map or array at most (real ones: a handful of languages,
/// a few subdivisions). Larger ones make the record malformed.
const MAX_CONTAINER_ENTRIES: usize = 4096;

/// Bytes of one string or byte value at most. Larger ones make the record
/// malformed (the format allows 16 MiB).
const MAX_STRING_BYTES: usize = 16 << 10;

const POINTER: u8 = 1;
const STRING: u8 = 2;
const DOUBLE: u8 = 3;
const BYTES: u8 = 4;
const UINT16: u8 = 5;
const UINT32: u8 = 6;
const MAP: u8 = 7;
const INT32: u8 = 8;
const UINT64: u8 = 9;
const UINT128: u8 = 10;
const ARRAY: u8 = 11;
const BOOLEAN: u8 = 14;
const FLOAT: u8 = 15;

/// A malformed or truncated record (bad type, size, pointer or nesting).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DataError {
    /// Data-section offset of the map whose reading failed.
    pub offset: usize,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed record data in the map at data-section offset {}", self.offset)
    }
}

impl std::error::Error for DataError {}

type Result<T> = std::result::Result<T, DataError>;

/// A map: `len` key/value pairs starting at `pos`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Map {
    len: usize,
    pos: usize,
}

/// A value whose header was read and payload bounds-checked: type and size
/// packed together, plus where the payload starts. Read it with
/// [`DataSection::str`], [`DataSection::f64`], [`DataSection::u64`] or
/// [`Value::as_map`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Value {
    /// `type | size << 8`; never zero since types start at 1.
    head: NonZeroU64,
    pos: usize,
}

impl Value {
    fn kind(self) -> u8 {
        self.head.get() as u8
    }
    fn size(self) -> usize {
        (self.head.get() >> 8) as usize
    }
    pub(crate) fn as_map(self) -> Option<Map> {
        (self.kind() == MAP).then_some(Map { len: self.size(), pos: self.pos })
    }
}

/// The data section of a database: the bytes between the search tree's
/// 16-byte separator and the metadata marker. Offsets (pointers and
/// `LookupResult::offset`) count from its start.
#[derive(Clone, Copy)]
pub(crate) struct DataSection<'a> {
    bytes: &'a [u8],
}

impl<'a> DataSection<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        DataSection { bytes }
    }

    /// The control byte(s) at `pos`: `(type | size << 8, payload start)`.
    /// For a pointer, `size` is the target offset.
    #[inline(always)]
    fn header(&self, pos: usize) -> Option<(NonZeroU64, usize)> {
        let ctrl = *self.bytes.get(pos)?;
        let mut p = pos + 1;
        let mut kind = ctrl >> 5;
        if kind == POINTER {
            let n = usize::from((ctrl >> 3) & 3) + 1;
            let v = be(self.bytes.get(p..p + n)?) as usize;
            let high = usize::from(ctrl & 7);
            let target = match n {
                1 => (high << 8) | v,
                2 => ((high << 16) | v) + 2048,
                3 => ((high << 24) | v) + 526_336,
                _ => v,
            };
            return Some((pack(POINTER, target)?, p + n));
        }
        if kind == 0 {
            let ext = *self.bytes.get(p)?;
            p += 1;
            if ext == 0 || ext > 8 {
                return None; // unknown extended type
            }
            kind = 7 + ext;
        }
        let mut size = usize::from(ctrl & 0x1f);
        if size >= 29 {
            let n = size - 28;
            let b = self.bytes.get(p..p + n)?;
            p += n;
            size = [29, 285, 65_821][n - 1] + be(b) as usize;
        }
        Some((pack(kind, size)?, p))
    }

    /// Checks a non-pointer value's size and bounds.
    #[inline(always)]
    fn checked(&self, head: NonZeroU64, pos: usize) -> Option<Value> {
        let value = Value { head, pos };
        let size = value.size();
        let ok = match value.kind() {
            // Entries are checked as they are read. A container larger
            // than any real database has is refused here, before a lookup
            // steps through millions of declared entries to find a key.
            MAP | ARRAY => size <= MAX_CONTAINER_ENTRIES,
            // Likewise a string no answer could carry (real ones are names
            // and codes, a few hundred bytes at most).
            STRING | BYTES => size <= MAX_STRING_BYTES,
            DOUBLE => size == 8,
            FLOAT => size == 4,
            UINT16 => size <= 2,
            UINT32 | INT32 => size <= 4,
            UINT64 => size <= 8,
            UINT128 => size <= 16,
            BOOLEAN => return (size <= 1).then_some(value), // no payload
            _ => false,
        };
        let payload = if value.as_map().is_some() || value.kind() == ARRAY { 0 } else { size };
        (ok && pos.checked_add(payload)? <= self.bytes.len()).then_some(value)
    }

    /// The value at `pos`, a pointer followed, and the position after the
    /// entry (`usize::MAX` for a container stored in place: its end is only
    /// found by walking it).
    #[inline(always)]
    fn read(&self, pos: usize) -> Option<(Value, usize)> {
        let (head, p) = self.header(pos)?;
        if head.get() as u8 != POINTER {
            let value = self.checked(head, p)?;
            let end = match value.kind() {
                MAP | ARRAY => usize::MAX,
                BOOLEAN => p, // the size is the value; no payload
                _ => p + value.size(),
            };
            return Some((value, end));
        }
        let (target, q) = self.header((head.get() >> 8) as usize)?;
        if target.get() as u8 == POINTER {
            return None; // a pointer to a pointer is invalid
        }
        Some((self.checked(target, q)?, p))
    }

    /// The position just after the value at `pos` (a pointer is skipped,
    /// not followed).
    fn skip(&self, pos: usize, depth: u32) -> Option<usize> {
        let (head, p) = self.header(pos)?;
        if head.get() as u8 == POINTER {
            return Some(p);
        }
        let value = self.checked(head, p)?;
        let items = match value.kind() {
            MAP => value.size().checked_mul(2)?,
            ARRAY => value.size(),
            BOOLEAN => return Some(p),
            _ => return Some(p + value.size()),
        };
        if depth >= MAX_DEPTH {
            return None;
        }
        let mut q = p;
        for _ in 0..items {
            q = self.skip(q, depth + 1)?;
        }
        Some(q)
    }

    /// Checks the whole value at `offset`, every nested value and pointer
    /// target included: types, sizes, bounds, UTF-8 of strings and map
    /// keys, nesting depth, and at most `MAX_VALUES` values in all (shared
    /// maps reached through pointers count each time). For validating a
    /// database before it goes live; lookups read lazily instead.
    #[cfg(test)]
    pub(crate) fn validate(&self, offset: usize) -> Result<()> {
        let mut budget = MAX_VALUES;
        self.walk(offset, 0, &mut budget).map(drop).ok_or(DataError { offset })
    }

    /// [`DataSection::validate`], the values visited also taken from
    /// `total` (a sample's budget across its records): `None` when `total`
    /// ran out before the record was checked whole.
    pub(crate) fn validate_within(&self, offset: usize, total: &mut u64) -> Option<Result<()>> {
        let mut budget = MAX_VALUES.min(u32::try_from(*total).unwrap_or(u32::MAX));
        let start = budget;
        let walked = self.walk(offset, 0, &mut budget);
        *total -= u64::from(start - budget);
        match walked {
            Some(_) => Some(Ok(())),
            None if *total == 0 => None,
            None => Some(Err(DataError { offset })),
        }
    }

    /// [`DataSection::validate`]'s walk: the position after the value at
    /// `pos` (after the pointer, for a pointer).
    fn walk(&self, pos: usize, depth: u32, budget: &mut u32) -> Option<usize> {
        *budget = budget.checked_sub(1)?;
        if depth >= MAX_DEPTH {
            return None;
        }
        let (head, p) = self.header(pos)?;
        if head.get() as u8 == POINTER {
            let target = (head.get() >> 8) as usize;
            if self.header(target)?.0.get() as u8 == POINTER {
                return None; // a pointer to a pointer is invalid
            }
            self.walk(target, depth + 1, budget)?;
            return Some(p);
        }
        let value = self.checked(head, p)?;
        match value.kind() {
            MAP => {
                let mut q = p;
                for _ in 0..value.size() {
                    let (key, _) = self.read(q)?;
                    if key.kind() != STRING {
                        return None;
                    }
                    q = self.walk(q, depth + 1, budget)?;
                    q = self.walk(q, depth + 1, budget)?;
                }
                Some(q)
            }
            ARRAY => {
                let mut q = p;
                for _ in 0..value.size() {
                    q = self.walk(q, depth + 1, budget)?;
                }
                Some(q)
            }
            STRING => std::str::from_utf8(self.bytes.get(p..p + value.size())?).ok().map(|_| p + value.size()),
            BOOLEAN => Some(p),
            _ => Some(p + value.size()),
        }
    }

    /// The record at `offset`, when it is a map.
    #[inline(always)]
    pub(crate) fn record(&self, offset: usize) -> Result<Option<Map>> {
        match self.read(offset) {
            Some((value, _)) => Ok(value.as_map()),
            None => Err(DataError { offset }),
        }
    }

    /// Calls `f(key, value)` for each entry of `map`, in order, until it
    /// returns `false`. Keys are compared as bytes, unvalidated.
    #[inline(always)]
    pub(crate) fn each(&self, map: Map, mut f: impl FnMut(&'a [u8], Value) -> Result<bool>) -> Result<()> {
        let fail = DataError { offset: map.pos };
        let mut pos = map.pos;
        for _ in 0..map.len {
            let (key, value_pos) = self.read(pos).ok_or(DataError { offset: map.pos })?;
            if key.kind() != STRING {
                return Err(fail);
            }
            let key = &self.bytes[key.pos..key.pos + key.size()]; // checked by `read`
            let (value, end) = self.read(value_pos).ok_or(DataError { offset: map.pos })?;
            if !f(key, value)? {
                return Ok(());
            }
            pos = if end == usize::MAX { self.skip(value_pos, 0).ok_or(DataError { offset: map.pos })? } else { end };
        }
        Ok(())
    }

    /// The value under `key` in `map`, stopping at the first match.
    #[inline(always)]
    pub(crate) fn get(&self, map: Map, key: &str) -> Result<Option<Value>> {
        let mut found = None;
        self.each(map, |k, value| {
            if k == key.as_bytes() {
                found = Some(value);
            }
            Ok(found.is_none())
        })?;
        Ok(found)
    }

    /// Follows `path` through nested maps; `None` when a step is missing or
    /// not a map.
    #[inline(always)]
    pub(crate) fn path(&self, map: Map, path: &[&str]) -> Result<Option<Value>> {
        let (last, steps) = path.split_last().expect("non-empty path");
        let mut map = map;
        for step in steps {
            match self.get(map, step)?.and_then(Value::as_map) {
                Some(inner) => map = inner,
                None => return Ok(None),
            }
        }
        self.get(map, last)
    }

    /// The string, when `value` is one and is valid UTF-8 (checked here,
    /// for the few strings used; a corrupt one reads as absent).
    pub(crate) fn str(&self, value: Option<Value>) -> Option<&'a str> {
        let v = value.filter(|v| v.kind() == STRING)?;
        std::str::from_utf8(self.bytes.get(v.pos..v.pos + v.size())?).ok()
    }

    /// A `double`, or a `float` widened through its shortest decimal form
    /// (so `51.5` stays `51.5`, not `51.5000000001`).
    pub(crate) fn f64(&self, value: Option<Value>) -> Option<f64> {
        let v = value?;
        match v.kind() {
            DOUBLE => Some(f64::from_be_bytes(self.bytes.get(v.pos..v.pos + 8)?.try_into().ok()?)),
            FLOAT => {
                let f = f32::from_be_bytes(self.bytes.get(v.pos..v.pos + 4)?.try_into().ok()?);
                f.to_string().parse().ok()
            }
            _ => None,
        }
    }

    /// An unsigned integer of up to 64 bits, or a non-negative `int32`.
    pub(crate) fn u64(&self, value: Option<Value>) -> Option<u64> {
        let v = value?;
        let bytes = self.bytes.get(v.pos..v.pos + v.size())?;
        match v.kind() {
            UINT16 | UINT32 | UINT64 => Some(be(bytes)),
            UINT128 if bytes.len() <= 8 || bytes[..bytes.len() - 8].iter().all(|&b| b == 0) => {
                Some(be(&bytes[bytes.len().saturating_sub(8)..]))
            }
            INT32 if bytes.len() < 4 || bytes[0] < 0x80 => Some(be(bytes)),
            _ => None,
        }
    }
}

#[inline(always)]
fn pack(kind: u8, size: usize) -> Option<NonZeroU64> {
    NonZeroU64::new(u64::from(kind) | (size as u64) << 8)
}

/// Big-endian unsigned integer of up to 8 bytes.
#[inline(always)]
fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"a": 1(u16), "b": ptr->"xy", "c": {"en": "London"}, "d": 2.5}` plus
    /// the pointed-to string at the end.
    fn sample() -> Vec<u8> {
        let mut d = vec![0xe4]; // map, 4 pairs
        d.extend([0x41, b'a', 0xa1, 0x01]); // "a": uint16 1
        d.extend([0x41, b'b', 0x20, 0x00]); // "b": pointer (filled below)
        d.extend([0x41, b'c', 0xe1, 0x42, b'e', b'n', 0x46]); // "c": {"en": "London"}
        d.extend(b"London");
        d.extend([0x41, b'd', 0x68]);
        d.extend(2.5f64.to_be_bytes()); // "d": double 2.5
        let target = d.len();
        d[8] = target as u8; // pointer of size 0: its one byte is the target
        d.extend([0x42, b'x', b'y']);
        d
    }

    #[test]
    fn reads_wanted_keys_through_pointers_and_nesting() {
        let bytes = sample();
        let data = DataSection::new(&bytes);
        let map = data.record(0).unwrap().unwrap();
        assert_eq!(data.u64(data.get(map, "a").unwrap()), Some(1));
        assert_eq!(data.str(data.get(map, "b").unwrap()), Some("xy"));
        assert_eq!(data.str(data.path(map, &["c", "en"]).unwrap()), Some("London"));
        assert_eq!(data.f64(data.get(map, "d").unwrap()), Some(2.5));
        assert_eq!(data.str(data.get(map, "a").unwrap()), None, "a is a number");
        assert!(data.get(map, "zz").unwrap().is_none());
        assert!(data.path(map, &["a", "en"]).unwrap().is_none(), "a is not a map");
    }

    #[test]
    fn truncated_or_malformed_data_is_an_error() {
        let bytes = sample();
        for cut in 1..bytes.len() {
            let data = DataSection::new(&bytes[..cut]);
            let all = data.record(0).and_then(|m| {
                let m = m.unwrap();
                data.each(m, |_, _| Ok(true))
            });
            assert!(all.is_err(), "cut at {cut} went unnoticed");
        }
        let mut bad_double = sample();
        let at = bad_double.iter().position(|&b| b == 0x68).unwrap();
        bad_double[at] = 0x67; // double of size 7
        let data = DataSection::new(&bad_double);
        assert!(data.get(data.record(0).unwrap().unwrap(), "d").is_err());
        // Maps nested 100 deep: refused before the stack is at risk.
        let deep = [0xe1, 0x41, b'k'].repeat(100);
        let data = DataSection::new(&deep);
        assert!(data.get(data.record(0).unwrap().unwrap(), "x").is_err());
        let mut ok = [0xe1, 0x41, b'k'].repeat(60);
        ok.extend([0xa1, 0x07]); // uint16 7 at the bottom: 60 levels are fine
        let data = DataSection::new(&ok);
        assert!(data.get(data.record(0).unwrap().unwrap(), "x").unwrap().is_none());
    }

    /// A sample's budget is shared by its records: each takes what it
    /// visits, and a record met when the budget is gone is left unchecked
    /// rather than walked (distinct records pointing at one large shared
    /// structure cost one budget, not one per record).
    #[test]
    fn validation_draws_on_a_shared_budget() {
        let bytes = sample();
        let data = DataSection::new(&bytes);
        let mut total = 1_000;
        assert_eq!(data.validate_within(0, &mut total), Some(Ok(())));
        let used = 1_000 - total;
        assert!(used >= 9, "the map, 4 keys, 4 values and the pointed string: {used}");
        let mut short = used - 1;
        assert_eq!(data.validate_within(0, &mut short), None, "ran out: unchecked, not refused");
        assert_eq!(short, 0);
        let mut bad = sample();
        let at = bad.len() - 3;
        bad[at] = 0x45; // the pointed string claims 5 bytes of 2
        let data = DataSection::new(&bad);
        assert!(matches!(data.validate_within(0, &mut 1_000), Some(Err(_))));
    }

    /// A map declaring 16 million entries, and a 1 MiB string: sizes the
    /// format allows and no real database uses. Both are refused from their
    /// header, before a lookup steps through millions of entries or an
    /// answer carries a megabyte.
    #[test]
    fn oversized_containers_and_strings_are_refused_from_their_header() {
        // map of 29 + 65,821 + 0xffffff entries (the 3-byte size form).
        let mut huge_map = vec![0xff, 0xff, 0xff, 0xff];
        huge_map.extend([0x41, b'k', 0xa1, 0x01]);
        let data = DataSection::new(&huge_map);
        assert!(data.record(0).is_err());
        // {"k": "<1 MiB>"}: the string's header is refused.
        let mut long = vec![0xe1, 0x41, b'k', 0x5f];
        let size = (1usize << 20) - 65_821;
        long.extend(&(size as u32).to_be_bytes()[1..]);
        long.extend(std::iter::repeat_n(b'x', 1 << 20));
        let data = DataSection::new(&long);
        let map = data.record(0).unwrap().unwrap();
        assert!(data.get(map, "k").is_err() || data.str(data.get(map, "k").unwrap()).is_none());
        assert!(data.validate(0).is_err());
        // Sizes up to the bounds still read.
        let mut fine = vec![0xe1, 0x41, b'k', 0x5d, 0x00];
        fine.extend(std::iter::repeat_n(b'y', 29));
        let data = DataSection::new(&fine);
        assert_eq!(data.str(data.get(data.record(0).unwrap().unwrap(), "k").unwrap()).map(str::len), Some(29));
    }
}
