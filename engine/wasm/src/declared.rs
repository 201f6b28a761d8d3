//! Texts a module declares once (ABI 1.1, `enrichd_texts`): its fixed
//! reasons and tags, which its results then name by a one-byte id.
//!
//! Why: a rule that writes the same reason texts event after event made the
//! host copy, check, hash and compare those bytes per event (on random
//! traffic most of the stage's time). Declared texts are read, checked and
//! JSON-encoded once when the module loads; a list of ids then maps to its
//! JSON through a small per-thread cache keyed by the packed ids.
//!
//! The table is read from the module's memory once, by the load-time probe
//! instance, and kept by the host: what a module later does to its own
//! memory cannot change a text the host applies.

use enrichd_sdk::abi::{MAX_DECLARED_BYTES, MAX_DECLARED_TEXTS, MAX_TEXT, TEXT_REF_SIZE};

/// A loaded module's declared texts, by id.
#[derive(Debug)]
pub struct DeclaredTexts {
    /// Unique per table made (never 0), so that per-thread caches keyed by
    /// ids know whose ids they hold.
    generation: u64,
    texts: Vec<Box<str>>,
    /// Each text as a JSON string literal (quoted, escaped).
    json: Vec<Box<str>>,
}

impl DeclaredTexts {
    /// Reads the table at `table` in the module's `memory`: `count: u32`,
    /// then `count` pairs `(ptr: u32, len: u32)` of UTF-8 texts. Every
    /// text is checked; the error names the first that is not acceptable.
    pub fn read(memory: &[u8], table: usize) -> anyhow::Result<Self> {
        let u32_at = |at: usize| -> anyhow::Result<u32> {
            let bytes = at.checked_add(4).and_then(|end| memory.get(at..end));
            let bytes = bytes.ok_or_else(|| anyhow::anyhow!("reads outside memory at {at:#x}"))?;
            Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
        };
        let count = u32_at(table).map_err(|e| anyhow::anyhow!("the text table's count {e}"))? as usize;
        anyhow::ensure!(
            count <= MAX_DECLARED_TEXTS,
            "declares {count} texts; at most {MAX_DECLARED_TEXTS} (ids are one byte)"
        );
        let mut texts = Vec::with_capacity(count);
        // Each id a result names expands to its text: the table's total
        // bounds what a one-byte entry can become.
        let mut total = 0;
        for i in 0..count {
            let entry = table + 4 + i * TEXT_REF_SIZE;
            let text = u32_at(entry)
                .and_then(|ptr| Ok((ptr as usize, u32_at(entry + 4)? as usize)))
                .and_then(|(ptr, len)| {
                    anyhow::ensure!(len <= MAX_TEXT, "is {len} bytes; at most {MAX_TEXT}");
                    let bytes = ptr.checked_add(len).and_then(|end| memory.get(ptr..end));
                    let bytes = bytes.ok_or_else(|| anyhow::anyhow!("lies outside memory ({ptr:#x}, {len} bytes)"))?;
                    let text = std::str::from_utf8(bytes).map_err(|_| anyhow::anyhow!("is not UTF-8"))?;
                    Ok(Box::<str>::from(text))
                })
                .map_err(|e| anyhow::anyhow!("declared text {i} {e}"))?;
            total += text.len();
            anyhow::ensure!(
                total <= MAX_DECLARED_BYTES,
                "declared text {i} brings the texts to {total} bytes; at most {MAX_DECLARED_BYTES} in all"
            );
            texts.push(text);
        }
        Ok(DeclaredTexts::from_texts(texts))
    }

    /// No texts: a module of ABI 1.0, or one without `enrichd_texts`.
    pub fn none() -> Self {
        DeclaredTexts::of(&[])
    }

    /// Texts given directly (tests, the fuzz harness).
    pub fn of(texts: &[&str]) -> Self {
        assert!(texts.len() <= MAX_DECLARED_TEXTS);
        assert!(texts.iter().map(|t| t.len()).sum::<usize>() <= MAX_DECLARED_BYTES);
        DeclaredTexts::from_texts(texts.iter().map(|&t| t.into()).collect())
    }

    /// Checked texts, JSON-encoded once.
    fn from_texts(texts: Vec<Box<str>>) -> Self {
        let json = texts.iter().map(|t| serde_json::to_string(&**t).expect("strings serialize").into()).collect();
        DeclaredTexts { generation: next_generation(), texts, json }
    }

    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Text `id` (checked by the caller to be declared).
    #[inline]
    pub fn text(&self, id: u8) -> &str {
        &self.texts[id as usize]
    }

    /// Text `id` as a JSON string literal.
    #[inline]
    pub fn json(&self, id: u8) -> &str {
        &self.json[id as usize]
    }
}

fn next_generation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(texts: &[(u32, u32)], count: u32) -> Vec<u8> {
        let mut memory = vec![0u8; 64];
        memory.extend_from_slice(&count.to_le_bytes());
        for (ptr, len) in texts {
            memory.extend_from_slice(&ptr.to_le_bytes());
            memory.extend_from_slice(&len.to_le_bytes());
        }
        memory
    }

    #[test]
    fn a_table_is_read_checked_and_encoded_once() {
        let mut memory = table(&[(0, 3), (3, 7)], 2);
        memory[..10].copy_from_slice(b"ssh\"quo\\e\"");
        let texts = DeclaredTexts::read(&memory, 64).unwrap();
        assert_eq!((texts.len(), texts.text(0), texts.text(1)), (2, "ssh", "\"quo\\e\""));
        assert_eq!(texts.json(1), r#""\"quo\\e\"""#);
    }

    #[test]
    fn a_hostile_table_is_a_load_error_naming_the_text() {
        let err = |memory: &[u8], at: usize| DeclaredTexts::read(memory, at).unwrap_err().to_string();
        // Count outside memory, too many texts, a table running off the end.
        assert!(err(&[0; 8], 6).contains("count reads outside memory"), "{}", err(&[0; 8], 6));
        assert!(err(&table(&[], 256), 64).contains("declares 256 texts"));
        assert!(err(&table(&[(0, 1)], 2), 64).contains("declared text 1 reads outside memory"));
        // A text outside memory (also where ptr + len overflows), too long, not UTF-8.
        assert!(err(&table(&[(60, 100)], 1), 64).contains("declared text 0 lies outside memory"));
        assert!(err(&table(&[(u32::MAX, 2)], 1), 64).contains("lies outside memory"));
        assert!(err(&table(&[(0, 1025)], 1), 64).contains("is 1025 bytes"));
        let mut bad = table(&[(0, 2)], 1);
        bad[..2].copy_from_slice(&[0xc3, 0x28]);
        assert!(err(&bad, 64).contains("declared text 0 is not UTF-8"));
        // Seventeen texts of 1,024 bytes: each fits, together they do not.
        let mut big = table(&[(0, 1024); 17], 17);
        big.splice(..0, vec![b'a'; 1024]);
        let at = big.len() - 4 - 17 * 8;
        assert!(
            err(&big, at).contains("declared text 16 brings the texts to 17408 bytes; at most 16384 in all"),
            "{}",
            err(&big, at)
        );
        // An empty table is fine: the module names no text by id.
        assert!(DeclaredTexts::read(&table(&[], 0), 64).unwrap().is_empty());
    }
}
