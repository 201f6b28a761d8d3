//! What a backlog holds: one entry per accepted batch, and the payload
//! ingest hands over for it. Shared by the spool, the memory queue and the
//! worker.

use std::sync::Arc;

/// One entry as appended (to a spool or a memory queue).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) seq: u64,
    pub(crate) events: u32,
    pub(crate) accepted_unix_ms: u64,
    /// The input's idempotency key (`enrichd_engine::source::Payload::origin`),
    /// kept so a retry after a restart derives the same destination ids.
    pub(crate) origin: Option<String>,
    /// Shared, not copied, between the backlog and the worker's rounds.
    /// Its line ends are known when ingest recorded them and the entry was
    /// kept in memory; `None` when it was read back from a spool file.
    pub(crate) payload: Payload,
}

/// One batch's NDJSON as the pipeline wrote it for an output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Payload {
    pub(crate) bytes: bytes::Bytes,
    /// The position of each line's line feed in `bytes`, one per event:
    /// recorded while writing, so the worker does not search a backlog
    /// entry for its events. (Measured alone this saved little: the search
    /// was the first touch of cold lines, and the next copy pays for that
    /// touch instead; docs/PERFORMANCE.md.) Kept in memory only: an entry
    /// read back from the spool file is split by searching.
    pub(crate) line_ends: Option<Arc<[usize]>>,
}

impl Payload {
    /// Bytes it holds in memory: the NDJSON and its recorded line ends
    /// (8 bytes per event, ~1.3 % of a typical line). What a memory
    /// queue's bound counts, so the bound is on real memory.
    pub(crate) fn memory_bytes(&self) -> u64 {
        let ends = self.line_ends.as_deref().map_or(0, std::mem::size_of_val);
        (self.bytes.len() + ends) as u64
    }
}

impl From<bytes::Bytes> for Payload {
    fn from(bytes: bytes::Bytes) -> Self {
        Payload { bytes, line_ends: None }
    }
}
