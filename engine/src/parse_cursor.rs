//! The scanner under the fast parser (`parse_fast.rs`): a cursor over
//! the batch's bytes that checks JSON grammar as it steps (strings, numbers,
//! literals, nested values) and reads a number's value while it scans it.
//!
//! Why its own file: this is the part that decides how fast a byte is
//! looked at (the SWAR string scan, whitespace, digits), and it knows
//! nothing of records, fields or events; `parse_fast.rs` walks records with
//! it. Everything here answers `None` on anything it does not accept, and
//! the caller then hands the bytes to the serde path.

/// Nesting followed inside a record before handing over (serde_json
/// refuses 128 levels where it counts them).
const MAX_DEPTH: u32 = 100;

/// A position in the batch's source text (positions are absolute, so spans
/// into it need no rebasing). `end` bounds what may be read: a record's end
/// for NDJSON lines.
pub(super) struct Cursor<'a> {
    pub(super) s: &'a str,
    pub(super) b: &'a [u8],
    pub(super) at: usize,
}

/// A JSON number as written: where, and what it looks like.
pub(super) struct Num {
    start: usize,
    end: usize,
    negative: bool,
    /// No fraction and no exponent.
    integer: bool,
    exponent: bool,
    /// Digits before the point.
    int_digits: usize,
    /// Digits after the point.
    frac_digits: usize,
    /// The digits before the exponent as one integer, the point left out,
    /// accumulated while scanning (wrapping: only read where at most 19
    /// digits make it exact).
    mantissa: u64,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The bytes of `w` that are `"`, `\` or a control character (< 0x20),
/// the bytes that end the plain part of a string, as their high bits (the
/// usual has-zero-byte / has-less-than tricks). A borrow can set a false
/// bit only above a true one, so the lowest bit set is exact: it is the
/// first such byte of the (little-endian) word.
#[inline]
fn specials(w: u64) -> u64 {
    let quote = w ^ (ONES * b'"' as u64);
    let backslash = w ^ (ONES * b'\\' as u64);
    let zero_in = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    zero_in(quote) | zero_in(backslash) | control
}

impl<'a> Cursor<'a> {
    pub(super) fn new(s: &'a str, at: usize, end: usize) -> Self {
        Cursor { s: &s[..end], b: &s.as_bytes()[..end], at }
    }

    #[inline]
    pub(super) fn ws(&mut self) {
        // Compact JSON (what collectors send) has none: one compare.
        if self.b.get(self.at).is_none_or(|&c| c > b' ') {
            return;
        }
        while let Some(&c) = self.b.get(self.at) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.at += 1;
        }
    }

    /// Eats `c` after optional whitespace: one compare when the JSON is
    /// compact, which is what collectors send.
    #[inline(always)]
    pub(super) fn eat_after_ws(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.at += 1;
            return true;
        }
        self.ws();
        self.eat(c)
    }

    /// After an array element or an object member: `Some(true)` past a
    /// comma and the whitespace after it (another one follows),
    /// `Some(false)` past the closing `close`, `None` on anything else.
    #[inline(always)]
    pub(super) fn after_item(&mut self, close: u8) -> Option<bool> {
        if self.eat_after_ws(b',') {
            self.ws();
            Some(true)
        } else if self.eat(close) {
            Some(false)
        } else {
            None
        }
    }

    #[inline]
    pub(super) fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    #[inline]
    pub(super) fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.at += hit as usize;
        hit
    }

    #[inline]
    pub(super) fn literal(&mut self, word: &[u8]) -> Option<()> {
        let hit = self.b.get(self.at..self.at + word.len())? == word;
        self.at += word.len();
        hit.then_some(())
    }

    /// The string at the cursor (which is on its opening quote): the range
    /// of its content and whether it has escapes. Escapes are checked for
    /// form only, as serde_json does for a string it skips.
    #[inline]
    pub(super) fn string(&mut self) -> Option<(usize, usize, bool)> {
        let b = self.b;
        let start = self.at + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            while let Some(chunk) = b.get(i..i + 8) {
                let found = specials(u64::from_le_bytes(chunk.try_into().unwrap()));
                if found != 0 {
                    i += (found.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            match *b.get(i)? {
                b'"' => {
                    self.at = i + 1;
                    return Some((start, i, escaped));
                }
                b'\\' => {
                    escaped = true;
                    match *b.get(i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                        b'u' => {
                            if !b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            i += 6;
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                _ => i += 1,
            }
        }
    }

    /// Steps over decimal digits, folding them into `acc`; how many.
    #[inline]
    pub(super) fn digits(&mut self, acc: &mut u64) -> usize {
        let from = self.at;
        while let Some(&d @ b'0'..=b'9') = self.b.get(self.at) {
            *acc = acc.wrapping_mul(10).wrapping_add((d - b'0') as u64);
            self.at += 1;
        }
        self.at - from
    }

    /// The number at the cursor, its grammar checked. Inlined: returned
    /// through memory, the `Num` was read back before its stores had
    /// landed (a store-forwarding stall the profile showed per number).
    #[inline(always)]
    pub(super) fn number(&mut self) -> Option<Num> {
        let start = self.at;
        let negative = self.eat(b'-');
        let mut mantissa = 0u64;
        let int_digits = match self.peek()? {
            b'0' => {
                self.at += 1;
                1
            }
            b'1'..=b'9' => self.digits(&mut mantissa),
            _ => return None,
        };
        let mut integer = true;
        let mut frac_digits = 0;
        if self.eat(b'.') {
            integer = false;
            frac_digits = self.digits(&mut mantissa);
            if frac_digits == 0 {
                return None;
            }
        }
        let exponent = matches!(self.peek(), Some(b'e' | b'E'));
        if exponent {
            integer = false;
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits(&mut 0) == 0 {
                return None;
            }
        }
        Some(Num { start, end: self.at, negative, integer, exponent, int_digits, frac_digits, mantissa })
    }

    /// Steps over one value, checking it.
    pub(super) fn skip_value(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.string()?;
            }
            b'{' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                self.at += 1;
                if self.eat_after_ws(b'}') {
                    return Some(());
                }
                loop {
                    if self.peek() != Some(b'"') {
                        return None;
                    }
                    // serde_json reads the keys of an ignored object as
                    // strings, strictly (a lone surrogate is an error),
                    // where an ignored string value passes: an escaped key
                    // at any depth goes to the serde path, as at the top.
                    if self.string()?.2 {
                        return None;
                    }
                    if !self.eat_after_ws(b':') {
                        return None;
                    }
                    self.ws();
                    self.skip_value(depth + 1)?;
                    if !self.after_item(b'}')? {
                        return Some(());
                    }
                }
            }
            b'[' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                self.at += 1;
                if self.eat_after_ws(b']') {
                    return Some(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    if !self.after_item(b']')? {
                        return Some(());
                    }
                }
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            b'-' | b'0'..=b'9' => {
                self.number()?;
            }
            _ => return None,
        }
        Some(())
    }
}

impl Num {
    /// A non-negative integer of at most 19 digits (always fits a `u64`);
    /// anything else is left to the serde path (fractions such as `1024.0`
    /// and negative values have their own rules there).
    #[inline]
    pub(super) fn small_u64(&self) -> Option<u64> {
        if !self.integer || self.negative || self.int_digits > 19 {
            return None;
        }
        Some(self.mantissa)
    }

    /// The value as serde_json's `f64` reads it. The plain decimal case is
    /// done here: with the digits as an integer `m < 2^53` and `k <= 22`
    /// fraction digits, `m / 10^k` is one correctly rounded division, which
    /// is what serde_json computes too. Other forms go to serde_json.
    pub(super) fn f64(&self, s: &str) -> Option<f64> {
        if self.integer {
            if let Some(n) = self.small_u64() {
                return Some(n as f64);
            }
        } else if !self.exponent {
            // Up to 19 digits: the mantissa is exact.
            let frac = self.frac_digits;
            if frac <= 22 && self.int_digits + frac <= 19 && self.mantissa < 1 << 53 {
                let v = self.mantissa as f64 / POW10[frac];
                return Some(if self.negative { -v } else { v });
            }
        }
        serde_json::from_str::<f64>(&s[self.start..self.end]).ok()
    }
}

const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];
