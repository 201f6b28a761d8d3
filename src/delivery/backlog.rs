//! Where an output's accepted events wait: the disk spool or a bounded
//! memory queue, behind one interface so the worker, admission and the
//! counters do not care which.
//!
//! Both number entries (one per ingested batch) with increasing sequence
//! numbers; the worker reads from its position and acknowledges a prefix
//! once every event in it is delivered or dead-lettered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use super::entry::{Entry, Payload};

/// Why an append failed; both backlogs answer with it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppendError {
    /// Admission should have said no: answer 503 / 429, nothing written.
    #[error("spool full: {used} of {max} bytes in use")]
    Full { used: u64, max: u64 },
    #[error("spool I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Longest time an acknowledged position stays only in memory while
/// deliveries go on: what a crash can make the output receive twice (see
/// the spool's module docs, "Acks and delivery guarantee").
pub(crate) const ACK_PERSIST_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Whether an acknowledged position still has to be made durable
/// ([`Backlog::persist_due`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PersistDue {
    /// Persisted (or nothing is ever persisted).
    Nothing,
    /// Persist now: the caller has the turn.
    Now,
    /// Pending, and due after this long.
    In(std::time::Duration),
}

/// The unacknowledged part of a backlog.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BacklogStats {
    pub bytes: u64,
    pub entries: u64,
    pub events: u64,
    pub oldest_accepted_unix_ms: Option<u64>,
}

pub(crate) trait Backlog: Send + Sync {
    /// Survives a crash once `append` returned.
    fn durable(&self) -> bool;
    /// Appends one batch (NDJSON, `events` lines) with its input's origin
    /// key (see [`Entry::origin`]); returns its sequence number. Bounds are
    /// enforced by admission ([`Bounds`]) before this.
    /// `payload` is shared, not copied (the spool also keeps it for the
    /// worker while it is recent).
    fn append(
        &self,
        payload: &Payload,
        events: u32,
        accepted_unix_ms: u64,
        origin: Option<&str>,
    ) -> Result<u64, AppendError>;
    /// Entries from `from_seq` on, stopping before `max_events` events or
    /// `max_bytes` bytes: at least one if there is one.
    fn read(&self, from_seq: u64, max_events: u64, max_bytes: u64) -> anyhow::Result<Vec<Entry>>;
    /// [`Backlog::read`] when it needs no I/O, else `None` (nothing read).
    /// The worker tries this on its own thread first: a hop to the
    /// blocking pool and back costs two thread wake-ups, which on a VM are
    /// IPIs and cost more than the read (docs/PERFORMANCE.md). It may wait
    /// on a lock an appender holds for one write, never on disk I/O.
    fn read_in_memory(&self, from_seq: u64, max_events: u64, max_bytes: u64) -> Option<Vec<Entry>>;
    /// Everything up to `seq` is done with: [`Backlog::ack_in_memory`],
    /// then [`Backlog::persist`] when that says so. Blocking.
    fn ack_through(&self, seq: u64) -> anyhow::Result<()> {
        if self.ack_in_memory(seq)? {
            self.persist()?;
        }
        Ok(())
    }
    /// Marks everything up to `seq` done, without I/O. `true`: the
    /// position is due to be made durable now ([`Backlog::persist`]).
    fn ack_in_memory(&self, seq: u64) -> anyhow::Result<bool>;
    /// Makes the acknowledged position durable (a no-op where nothing is).
    /// Blocking.
    fn persist(&self) -> anyhow::Result<()>;
    /// Whether a position acknowledged in memory is still to be persisted,
    /// and when, without I/O: the worker asks when it has no ack to make
    /// (idle, or every round in flight), so a persist that was not yet due
    /// or that failed is done later, not left in memory until the next
    /// ack. `Now` hands the caller the turn (the next one is an interval
    /// later).
    fn persist_due(&self) -> PersistDue {
        PersistDue::Nothing
    }
    /// Events of the entry `seq` if it is unacknowledged, without I/O
    /// (what skipping it loses).
    fn entry_events(&self, seq: u64) -> Option<u32>;
    fn first_unacked(&self) -> u64;
    fn stats(&self) -> BacklogStats;
    /// What `payload` counts against this backlog's byte bound (see
    /// [`Bounds`]): its NDJSON here; the memory queue adds what else it
    /// keeps in memory.
    fn cost(&self, payload: &Payload) -> u64 {
        payload.bytes.len() as u64
    }
}

/// The `memory` and `ack` modes' queue.
#[derive(Default)]
pub(crate) struct MemoryQueue {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    entries: VecDeque<Entry>,
    next_seq: u64,
    stats: BacklogStats,
}

impl MemoryQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backlog for MemoryQueue {
    fn cost(&self, payload: &Payload) -> u64 {
        payload.memory_bytes()
    }

    fn entry_events(&self, seq: u64) -> Option<u32> {
        self.lock().entries.iter().find(|e| e.seq == seq).map(|e| e.events)
    }

    fn durable(&self) -> bool {
        false
    }

    fn append(
        &self,
        payload: &Payload,
        events: u32,
        accepted_unix_ms: u64,
        origin: Option<&str>,
    ) -> Result<u64, AppendError> {
        let mut q = self.lock();
        let seq = q.next_seq;
        q.next_seq += 1;
        q.stats.bytes += payload.memory_bytes();
        q.stats.entries += 1;
        q.stats.events += u64::from(events);
        q.stats.oldest_accepted_unix_ms.get_or_insert(accepted_unix_ms);
        let origin = origin.map(str::to_string);
        q.entries.push_back(Entry { seq, events, accepted_unix_ms, origin, payload: payload.clone() });
        Ok(seq)
    }

    fn read(&self, from_seq: u64, max_events: u64, max_bytes: u64) -> anyhow::Result<Vec<Entry>> {
        Ok(self.read_in_memory(from_seq, max_events, max_bytes).unwrap_or_default())
    }

    fn read_in_memory(&self, from_seq: u64, max_events: u64, max_bytes: u64) -> Option<Vec<Entry>> {
        let q = self.lock();
        let mut out = Vec::new();
        let (mut bytes, mut events) = (0, 0);
        // Entries are in sequence order: skip to `from_seq` by position.
        let start = q.entries.partition_point(|e| e.seq < from_seq);
        for e in q.entries.range(start..) {
            let full = bytes + e.payload.bytes.len() as u64 > max_bytes || events + u64::from(e.events) > max_events;
            if !out.is_empty() && full {
                break;
            }
            bytes += e.payload.bytes.len() as u64;
            events += u64::from(e.events);
            out.push(e.clone());
        }
        Some(out)
    }

    fn ack_in_memory(&self, seq: u64) -> anyhow::Result<bool> {
        let mut q = self.lock();
        while q.entries.front().is_some_and(|e| e.seq <= seq) {
            let e = q.entries.pop_front().expect("front exists");
            q.stats.bytes -= e.payload.memory_bytes();
            q.stats.entries -= 1;
            q.stats.events -= u64::from(e.events);
        }
        q.stats.oldest_accepted_unix_ms = q.entries.front().map(|e| e.accepted_unix_ms);
        Ok(false)
    }

    fn persist(&self) -> anyhow::Result<()> {
        Ok(())
    }

    fn first_unacked(&self) -> u64 {
        let q = self.lock();
        q.entries.front().map_or(q.next_seq, |e| e.seq)
    }

    fn stats(&self) -> BacklogStats {
        self.lock().stats
    }
}

/// Admission against a backlog's bounds. Space is reserved before the
/// batch is appended anywhere, so a request is either admitted to every
/// output or to none (a 503 then), even with concurrent requests.
pub(crate) struct Bounds {
    max_bytes: AtomicU64,
    /// `u64::MAX`: bytes only (the spool).
    max_events: AtomicU64,
    reserved_bytes: AtomicU64,
    reserved_events: AtomicU64,
    admission: Mutex<()>,
}

/// Bytes a spool entry takes besides its payload (header and slack).
pub(crate) const ENTRY_OVERHEAD: u64 = 64;

impl Bounds {
    pub(crate) fn new(max_bytes: u64, max_events: Option<u64>) -> Self {
        Bounds {
            max_bytes: AtomicU64::new(max_bytes),
            max_events: AtomicU64::new(max_events.unwrap_or(u64::MAX)),
            reserved_bytes: AtomicU64::new(0),
            reserved_events: AtomicU64::new(0),
            admission: Mutex::new(()),
        }
    }

    /// New bounds (settings changed); reservations stay.
    pub(crate) fn set(&self, (max_bytes, max_events): (u64, Option<u64>)) {
        self.max_bytes.store(max_bytes, Relaxed);
        self.max_events.store(max_events.unwrap_or(u64::MAX), Relaxed);
    }

    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes.load(Relaxed)
    }

    /// Reserves room for `bytes`/`events` if the backlog has it.
    pub(crate) fn reserve(&self, backlog: &dyn Backlog, bytes: u64, events: u64) -> bool {
        let _one_at_a_time = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        let stats = backlog.stats();
        let bytes = bytes + ENTRY_OVERHEAD;
        let used = stats.bytes + stats.entries * ENTRY_OVERHEAD + self.reserved_bytes.load(Relaxed);
        if used + bytes > self.max_bytes.load(Relaxed) {
            return false;
        }
        if stats.events + self.reserved_events.load(Relaxed) + events > self.max_events.load(Relaxed) {
            return false;
        }
        self.reserved_bytes.fetch_add(bytes, Relaxed);
        self.reserved_events.fetch_add(events, Relaxed);
        true
    }

    /// Gives back a reservation (after the append, or when the request is
    /// refused elsewhere).
    pub(crate) fn release(&self, bytes: u64, events: u64) {
        self.reserved_bytes.fetch_sub(bytes + ENTRY_OVERHEAD, Relaxed);
        self.reserved_events.fetch_sub(events, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_queue_acks_a_prefix() {
        let q = MemoryQueue::default();
        for i in 0..5u64 {
            assert_eq!(q.append(&bytes::Bytes::from(format!("{{\"n\":{i}}}\n")).into(), 1, 1000 + i, None).unwrap(), i);
        }
        assert_eq!(q.stats().events, 5);
        let read = q.read(2, 2, u64::MAX).unwrap(); // two events, one each
        assert_eq!(read.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        q.ack_through(2).unwrap();
        assert_eq!(q.first_unacked(), 3);
        assert_eq!(q.stats().events, 2);
        assert_eq!(q.stats().oldest_accepted_unix_ms, Some(1003));
        // A huge first entry still comes back alone.
        assert_eq!(q.read(3, 10, 1).unwrap().len(), 1);
        // The bound counts what the queue holds in memory: line ends too.
        let with_ends = Payload { bytes: bytes::Bytes::from_static(b"{}\n{}\n"), line_ends: Some(vec![2, 5].into()) };
        assert_eq!(q.cost(&with_ends), 6 + 2 * std::mem::size_of::<usize>() as u64);
        let before = q.stats().bytes;
        let seq = q.append(&with_ends, 2, 1005, None).unwrap();
        assert_eq!(q.stats().bytes - before, q.cost(&with_ends));
        q.ack_through(seq).unwrap();
        assert_eq!(q.stats().bytes, 0, "acked back to nothing");
        let q = MemoryQueue::default();
        for i in 0..5u64 {
            q.append(&bytes::Bytes::from(format!("{{\"n\":{i}}}\n")).into(), 1, 1000 + i, None).unwrap();
        }
        q.ack_through(2).unwrap();
        // Every read is in memory; nothing is ever due to persist.
        assert_eq!(q.read_in_memory(3, 10, u64::MAX).map(|e| e.len()), Some(2));
        assert!(!q.ack_in_memory(3).unwrap());
        assert_eq!(q.first_unacked(), 4);
    }

    #[test]
    fn bounds_refuse_past_the_limit_and_count_reservations() {
        let q = MemoryQueue::default();
        let b = Bounds::new(1000, Some(10));
        assert!(b.reserve(&q, 400, 4));
        assert!(b.reserve(&q, 400, 4));
        // Reserved, not yet appended: still counts.
        assert!(!b.reserve(&q, 400, 1), "bytes bound");
        b.release(400, 4);
        assert!(!b.reserve(&q, 10, 7), "events bound");
        assert!(b.reserve(&q, 10, 6));
    }
}
