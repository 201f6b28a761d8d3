//! The spool behind the [`Backlog`] interface the worker and admission use.
//! It lives here, not in `backlog`, so the interface knows no backlog kind.

use super::Spool;
use crate::delivery::backlog::{AppendError, Backlog, BacklogStats, PersistDue};
use crate::delivery::entry::{Entry, Payload};

impl Backlog for Spool {
    fn durable(&self) -> bool {
        true
    }
    fn append(
        &self,
        payload: &Payload,
        events: u32,
        accepted_unix_ms: u64,
        origin: Option<&str>,
    ) -> Result<u64, AppendError> {
        self.append_inner(&payload.bytes, Some(payload), events, accepted_unix_ms, origin)
    }
    fn read(&self, from_seq: u64, max_events: u64, max_bytes: u64) -> anyhow::Result<Vec<Entry>> {
        Spool::read_bounded(self, from_seq, usize::MAX, max_events, max_bytes)
    }
    fn read_in_memory(&self, from_seq: u64, max_events: u64, max_bytes: u64) -> Option<Vec<Entry>> {
        Spool::read_recent(self, from_seq, max_events, max_bytes)
    }
    fn ack_in_memory(&self, seq: u64) -> anyhow::Result<bool> {
        Spool::ack_in_memory(self, seq)
    }
    fn persist(&self) -> anyhow::Result<()> {
        Spool::persist(self)
    }
    fn persist_due(&self) -> PersistDue {
        Spool::persist_due(self)
    }
    fn entry_events(&self, seq: u64) -> Option<u32> {
        Spool::entry_events(self, seq)
    }
    fn first_unacked(&self) -> u64 {
        Spool::first_unacked(self)
    }
    fn stats(&self) -> BacklogStats {
        let s = Spool::stats(self);
        BacklogStats {
            bytes: s.bytes,
            entries: s.entries,
            events: s.events,
            oldest_accepted_unix_ms: s.oldest_accepted_unix_ms,
        }
    }
}
