//! The spool's in-memory window of recent entries: an output that keeps up
//! is served from here, not from the file.

use std::collections::VecDeque;

use super::Entry;

/// Payload bytes of recent entries kept in memory for the worker. An output
/// that keeps up reads every entry from here (no read back, no CRC pass:
/// ~4 % of the CPU on the delivery path); one that falls behind reads the
/// older entries from the file, as after a restart.
pub(super) const RECENT_MAX_BYTES: u64 = 32 << 20;

/// The latest appended entries, kept for the worker (see the spool's
/// `State::recent`).
#[derive(Default)]
pub(super) struct Recent {
    entries: VecDeque<Entry>,
    bytes: u64,
}

impl Recent {
    /// Keeps `entry` (the newest), forgetting the oldest past the bound.
    pub(super) fn keep(&mut self, entry: Entry) {
        if entry.payload.bytes.len() as u64 > RECENT_MAX_BYTES {
            return;
        }
        self.bytes += entry.payload.bytes.len() as u64;
        self.entries.push_back(entry);
        while self.bytes > RECENT_MAX_BYTES {
            self.forget_oldest();
        }
    }

    /// Forgets the entries below `seq` (acknowledged).
    pub(super) fn forget_below(&mut self, seq: u64) {
        while self.entries.front().is_some_and(|e| e.seq < seq) {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some(old) = self.entries.pop_front() {
            self.bytes -= old.payload.bytes.len() as u64;
        }
    }

    pub(super) fn get(&self, seq: u64) -> Option<&Entry> {
        let at = self.entries.partition_point(|e| e.seq < seq);
        self.entries.get(at).filter(|e| e.seq == seq)
    }
}
