// TEMP stub (not committed): replaced by the helper's implementation.
#![allow(dead_code, unused)]
use std::path::Path;
pub(crate) struct DeadRecord<'a> { pub event: &'a [u8], pub error: &'a str, pub attempts: u32, pub unix_ms: u64 }
pub(crate) struct OwnedDeadRecord { pub event: Vec<u8>, pub error: String, pub attempts: u32, pub unix_ms: u64 }
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DeadLetterStats { pub events: u64, pub bytes: u64 }
pub(crate) struct DeadLetter;
impl DeadLetter {
    pub(crate) fn open(path: &Path, output: &str, max_bytes: u64) -> anyhow::Result<DeadLetter> { todo!() }
    pub(crate) fn append(&self, records: &[DeadRecord<'_>]) -> anyhow::Result<u64> { todo!() }
    pub(crate) fn list(&self, offset: usize, limit: usize) -> anyhow::Result<(u64, Vec<serde_json::Value>)> { todo!() }
    pub(crate) fn take_all(&self) -> anyhow::Result<Vec<OwnedDeadRecord>> { todo!() }
    pub(crate) fn stats(&self) -> DeadLetterStats { todo!() }
}
