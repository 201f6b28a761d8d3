//! Reading entries for the worker: from the recent ones kept in memory
//! where possible, else from their segment files (checked by CRC).

use std::fs::File;
use std::sync::Arc;

use super::disk::{self, EntryMeta};
use super::{lock, Entry, Spool};

/// An entry a read will return: kept in memory, or where it is on disk.
enum Planned {
    Kept(Entry),
    OnDisk(Arc<File>, u64, EntryMeta),
}

impl Spool {
    /// Durable entries from `from_seq` on (or from the first unacked one,
    /// if later): at most `max_entries`, and no more than `max_bytes` of
    /// payload, except that the first entry is always returned.
    #[cfg_attr(not(test), allow(dead_code))] // the runtime uses read_bounded
    pub(crate) fn read(&self, from_seq: u64, max_entries: usize, max_bytes: u64) -> anyhow::Result<Vec<Entry>> {
        self.read_bounded(from_seq, max_entries, u64::MAX, max_bytes)
    }

    /// [`Spool::read`] that also stops before `max_events` events (still
    /// returning at least one entry): the delivery worker reads one batch's
    /// worth, not every entry that fits in `max_bytes`.
    pub(crate) fn read_bounded(
        &self,
        from_seq: u64,
        max_entries: usize,
        max_events: u64,
        max_bytes: u64,
    ) -> anyhow::Result<Vec<Entry>> {
        // Outside the lock: an open descriptor stays readable even if an
        // ack deletes the segment meanwhile.
        self.plan_read(from_seq, max_entries, max_events, max_bytes)
            .into_iter()
            .map(|planned| {
                let (file, seq, meta) = match planned {
                    Planned::Kept(entry) => return Ok(entry),
                    Planned::OnDisk(file, seq, meta) => (file, seq, meta),
                };
                let (origin, payload) = disk::read_entry(&file, seq, &meta)?;
                Ok(Entry {
                    seq,
                    events: meta.events,
                    accepted_unix_ms: meta.accepted_unix_ms,
                    origin,
                    payload: payload.into(),
                })
            })
            .collect()
    }

    /// [`Spool::read_bounded`] (any number of entries) when every entry is
    /// still among the recent ones kept in memory; `None` when one would
    /// have to be read from its file.
    pub(crate) fn read_recent(&self, from_seq: u64, max_events: u64, max_bytes: u64) -> Option<Vec<Entry>> {
        self.plan_read(from_seq, usize::MAX, max_events, max_bytes)
            .into_iter()
            .map(|planned| match planned {
                Planned::Kept(entry) => Some(entry),
                Planned::OnDisk(..) => None,
            })
            .collect()
    }

    /// Where each entry of a read is: kept in memory, or in its file.
    fn plan_read(&self, from_seq: u64, max_entries: usize, max_events: u64, max_bytes: u64) -> Vec<Planned> {
        let durable = lock(&self.sync).synced_next;
        let mut plan: Vec<Planned> = Vec::new();
        let st = lock(&self.state);
        let from = from_seq.max(st.first_unacked);
        let start = st.segments.partition_point(|s| s.end_seq() <= from);
        let mut bytes = 0u64;
        let mut events = 0u64;
        'segments: for segment in st.segments.range(start..) {
            let skip = from.saturating_sub(segment.first_seq) as usize;
            for (i, meta) in segment.entries.iter().enumerate().skip(skip) {
                let seq = segment.first_seq + i as u64;
                let full = plan.len() >= max_entries
                    || bytes + u64::from(meta.len) > max_bytes
                    || events + u64::from(meta.events) > max_events;
                if seq >= durable || (!plan.is_empty() && full) {
                    break 'segments;
                }
                bytes += u64::from(meta.len);
                events += u64::from(meta.events);
                plan.push(match st.recent.get(seq) {
                    Some(kept) => Planned::Kept(kept.clone()),
                    None => Planned::OnDisk(Arc::clone(&segment.file), seq, *meta),
                });
            }
        }
        plan
    }
}
