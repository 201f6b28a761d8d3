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
    pub(crate) payload: bytes::Bytes,
    /// Where the payload's lines end, when its writer recorded them (see
    /// [`Payload::line_ends`]); `None` for entries read back from disk.
    pub(crate) line_ends: Option<Arc<[usize]>>,
}

/// One batch's NDJSON as the pipeline wrote it for an output.
#[derive(Clone, Debug)]
pub(crate) struct Payload {
    pub(crate) bytes: bytes::Bytes,
    /// The position of each line's line feed in `bytes`, one per event:
    /// recorded while writing, so the worker does not search a backlog
    /// entry for its events (that search was a twentieth of enrichd's CPU
    /// with an output enabled). Kept in memory only: an entry read back
    /// from the spool file is split by searching.
    pub(crate) line_ends: Option<Arc<[usize]>>,
}

impl From<bytes::Bytes> for Payload {
    fn from(bytes: bytes::Bytes) -> Self {
        Payload { bytes, line_ends: None }
    }
}
