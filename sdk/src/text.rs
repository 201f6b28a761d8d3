//! A fixed-capacity string buffer: reasons with numbers in them, without an
//! allocator.

/// Up to `N` bytes of UTF-8; pushes past the capacity are cut off.
pub struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Text<N> {
    pub fn new() -> Self {
        Text { buf: [0; N], len: 0 }
    }

    pub fn push_str(&mut self, s: &str) -> &mut Self {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        self
    }

    pub fn push_u64(&mut self, mut v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for &d in &digits[i..] {
            if self.len == N {
                break;
            }
            self.buf[self.len] = d;
            self.len += 1;
        }
        self
    }

    pub fn as_str(&self) -> &str {
        // Cutting may split a multi-byte character: keep the valid prefix.
        match core::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Text::new()
    }
}
