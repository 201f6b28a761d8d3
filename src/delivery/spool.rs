//! The durable spool: accepted events wait here, on disk, until an output
//! has delivered them.
//!
//! # Why a log of our own
//!
//! No embedded-queue crate fits. We need all of: an fsync before the ingest
//! request is answered, shared by concurrent requests (group commit); a CRC
//! per entry so a torn tail or bit rot is found and counted, never replayed
//! as garbage nor a panic; a bound in bytes that admission can check before
//! accepting a request; and ack-through semantics (the output acks a prefix
//! of seqs; reading ahead is allowed). `sled` is unmaintained and a general
//! key-value store; `yaque` and similar queues are unmaintained, have no
//! byte bound and do not fsync per commit. The log below is ~600 lines.
//!
//! # Layout
//!
//! A directory of segment files, each named by the seq of its first entry
//! (`00000000000000000042.seg`) and rolled at `segment_bytes`, plus an `ack`
//! file holding the first unacked seq. The entry format is in
//! [`disk`]. Seqs are consecutive within a segment; there may be gaps between
//! segments (after a damaged segment was cut short).
//!
//! # Durability
//!
//! `append` returns only once the entry is fsynced (and the directory, if
//! the entry opened a new segment): only then may ingest answer 200. Writes
//! happen under the state lock; the fsync does not. The first appender to
//! find nobody syncing becomes the leader, fsyncs everything written so far
//! and publishes "synced up to seq N"; appenders whose entry is below N
//! return without an fsync of their own. `read` only returns synced entries.
//!
//! After an fsync fails, every later append fails: Linux may drop the dirty
//! pages and report the error once, so a later fsync can succeed although
//! the data never reached the disk (PostgreSQL's "fsyncgate", 2018: they
//! chose to crash rather than retry). Only a restart, which rescans what is
//! really on disk, clears it.
//! An entry whose fsync failed may still be found on disk at that restart
//! and delivered, though its append returned an error: the client retries,
//! the output sees it twice (at-least-once, below).
//!
//! # Acks and delivery guarantee
//!
//! `ack_in_memory(seq)` moves the position in memory at once; persisting it
//! (atomic rename, two fsyncs) and deleting the segments whose entries are
//! all acked happen at most every [`ACK_PERSIST_INTERVAL`], and at once
//! when the backlog is empty, when the spool is over half full, and when
//! the spool is dropped. A position left pending (not yet due, or its
//! persist failed) is persisted once due without waiting for another ack:
//! the worker asks `persist_due` while idle or while rounds are in flight,
//! and persists as it stops. Persisting every ack put two fsyncs on the
//! delivery path of every batch and halved the drain rate. Segments are
//! deleted only behind the persisted position, so a crash never leaves
//! the ack file pointing before a deleted entry it would then miss.
//! Delivery is at-least-once: a crash after an output accepted a batch but
//! before its position was persisted delivers that batch again after
//! restart (at most one interval's worth of batches).
//!
//! # Memory and time
//!
//! Per entry 24 bytes of metadata stay in memory (an entry is one ingest
//! request, not one event), so `stats` and locating a seq cost no I/O.
//! The latest entries' payloads (at most [`recent::RECENT_MAX_BYTES`], shared with
//! the request that wrote them, not copied) stay too until acknowledged, so
//! an output that keeps up never reads its spool back; the file is read for
//! older entries and after a restart.
//! `open` reads every segment once to check it.
//!
//! # Reused files
//!
//! A delivered segment's file is kept (up to a few, within the byte
//! bound) and written over by a later segment instead of deleted and
//! created anew: see [`spares`] for why and `disk` for how old bytes in
//! such a file are told apart from damage.

mod as_backlog;
mod commit;
mod disk;
mod open;
mod read;
mod recent;
mod spares;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use std::time::Instant;

use anyhow::{bail, Context};

pub(crate) use super::backlog::{AppendError, PersistDue, ACK_PERSIST_INTERVAL};
use super::entry::{Entry, Payload};
use disk::EntryMeta;
pub(crate) use disk::HEADER_LEN;
use recent::Recent;
#[cfg(test)]
use recent::RECENT_MAX_BYTES;

/// Where the spool lives and how large it may grow.
#[derive(Clone, Debug)]
pub(crate) struct SpoolConfig {
    pub(crate) dir: PathBuf,
    /// Bound on the segment bytes on disk (unacked entries and acked ones
    /// whose segment is not deleted yet).
    pub(crate) max_bytes: u64,
    /// A segment is rolled when the next entry would take it past this.
    pub(crate) segment_bytes: u64,
}

/// What `open` found on disk. `entries`, `events` and `bytes` are the
/// unacked intact entries; `corrupt_entries` counts damaged regions (each
/// one cut off the rest of its segment) and `corrupt_bytes` their size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Recovery {
    pub(crate) entries: u64,
    pub(crate) events: u64,
    pub(crate) bytes: u64,
    pub(crate) corrupt_entries: u64,
    pub(crate) corrupt_bytes: u64,
    /// One sentence per damaged segment or unreadable file.
    pub(crate) problems: Vec<String>,
}

/// The unacked data: bytes on disk (headers included), entries, events,
/// and when the oldest of them was accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SpoolStats {
    pub(crate) bytes: u64,
    pub(crate) entries: u64,
    pub(crate) events: u64,
    pub(crate) oldest_accepted_unix_ms: Option<u64>,
}

pub(crate) struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    state: Mutex<State>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    /// Set for good when an fsync failed (or a failed write could not be
    /// undone); read under the state lock by every append.
    poisoned: AtomicBool,
    /// Serialises acks and persists without holding the state lock over its
    /// fsyncs; holds when the position was last persisted (`None`: not yet).
    ack_lock: Mutex<Option<Instant>>,
    /// fsync calls on segments and the directory, for tests and metrics.
    fsyncs: AtomicU64,
    #[cfg(test)]
    test_hooks: tests::Hooks,
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Bytes of this segment's entries.
    disk_bytes: u64,
    /// The file's length: more than `disk_bytes` while a reused file
    /// still holds an older segment's bytes past the entries.
    file_len: u64,
    entries: Vec<EntryMeta>,
}

impl Segment {
    fn end_seq(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }
}

#[derive(Default)]
struct State {
    segments: VecDeque<Segment>,
    next_seq: u64,
    first_unacked: u64,
    /// The position in the `ack` file; segments wholly below it are deleted.
    persisted_first_unacked: u64,
    /// Sum of the segments' `disk_bytes`: what `max_bytes` bounds.
    used_bytes: u64,
    unacked_bytes: u64,
    unacked_entries: u64,
    unacked_events: u64,
    /// Rolled segments written since the last fsync round.
    unsynced: Vec<Arc<File>>,
    /// A segment was created since the last fsync round.
    dir_dirty: bool,
    /// Delivered segments' files kept for reuse.
    spares: spares::Spares,
    /// The latest entries appended through the backlog interface, in seq
    /// order, at most [`recent::RECENT_MAX_BYTES`] of payload: the worker reads
    /// them from here, not back from the file.
    recent: Recent,
}

impl State {
    /// Bytes on disk the bound counts: the entries, the older bytes a
    /// reused last segment still holds past them, and the spares.
    fn bytes_on_disk(&self) -> u64 {
        let stale = self.segments.back().map_or(0, |s| s.file_len.saturating_sub(s.disk_bytes));
        self.used_bytes + stale + self.spares.bytes
    }
}

struct SyncState {
    /// Every entry below this seq is durable.
    synced_next: u64,
    /// A leader is fsyncing right now.
    syncing: bool,
    failed: bool,
}

/// Whether persisting the position is due now (`forced`, or an interval
/// since the last turn); a turn given is taken at once, so callers until
/// the persist are not given it again.
fn take_turn(last_persist: &mut Option<Instant>, forced: bool) -> PersistDue {
    match last_persist.map(|at| at.elapsed()) {
        Some(since) if !forced && since < ACK_PERSIST_INTERVAL => PersistDue::In(ACK_PERSIST_INTERVAL - since),
        _ => {
            *last_persist = Some(Instant::now());
            PersistDue::Now
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn poisoned_error() -> io::Error {
    io::Error::other("an earlier fsync of the spool failed; appends are refused until restart")
}

impl Spool {
    /// Whether an entry with this many payload bytes would be accepted now.
    #[cfg_attr(not(test), allow(dead_code))] // tests and future metrics
    pub(crate) fn has_room(&self, payload_bytes: u64) -> bool {
        lock(&self.state).used_bytes.saturating_add(HEADER_LEN as u64 + payload_bytes) <= self.max_bytes
    }

    /// Appends one entry (no origin key, not kept in memory) and returns
    /// its seq once it is durable. The runtime appends through
    /// [`Backlog::append`](crate::delivery::backlog::Backlog::append).
    #[cfg(test)]
    pub(crate) fn append(&self, payload: &[u8], events: u32, accepted_unix_ms: u64) -> Result<u64, AppendError> {
        self.append_inner(payload, None, events, accepted_unix_ms, None)
    }

    /// Appends one entry with its input's origin key (see
    /// [`Entry::origin`]) and returns its seq once it is durable. With
    /// `keep`, the payload (shared, not copied) also stays for the worker's
    /// next read while it is recent.
    fn append_inner(
        &self,
        payload: &[u8],
        keep: Option<&Payload>,
        events: u32,
        accepted_unix_ms: u64,
        origin: Option<&str>,
    ) -> Result<u64, AppendError> {
        if origin.is_some_and(|k| k.len() > disk::MAX_ORIGIN_LEN) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "origin keys are limited to 64 KiB").into());
        }
        let prefix = disk::origin_prefix(origin);
        if u32::try_from(prefix.len() + payload.len()).is_err() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "spool entries are limited to 4 GiB").into());
        }
        let kept = keep.map(|payload| Entry {
            seq: 0,
            events,
            accepted_unix_ms,
            origin: origin.map(str::to_string),
            payload: payload.clone(),
        });
        let seq = self.write(&prefix, payload, events, accepted_unix_ms, kept)?;
        self.wait_durable(seq)?;
        Ok(seq)
    }

    /// Writes the entry (not synced) under the state lock; `kept` (its seq
    /// filled in here) joins the recent entries.
    fn write(
        &self,
        prefix: &[u8],
        payload: &[u8],
        events: u32,
        accepted_unix_ms: u64,
        kept: Option<Entry>,
    ) -> Result<u64, AppendError> {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        if self.poisoned.load(Ordering::Acquire) {
            return Err(poisoned_error().into());
        }
        let region_len = prefix.len() + payload.len();
        let disk_len = HEADER_LEN as u64 + region_len as u64;
        // Room is made by giving up spares before refusing.
        while st.bytes_on_disk() + disk_len > self.max_bytes {
            if !st.spares.give_up_one() {
                return Err(AppendError::Full { used: st.bytes_on_disk(), max: self.max_bytes });
            }
        }
        let seq = st.next_seq;
        let roll = match st.segments.back() {
            None => true,
            Some(last) => {
                last.end_seq() != seq || (last.disk_bytes > 0 && last.disk_bytes + disk_len > self.segment_bytes)
            }
        };
        if roll {
            self.open_segment(st, seq)?;
        }
        let segment = st.segments.back_mut().expect("a segment was just ensured");
        let header = disk::encode_header(prefix, payload, events, seq, accepted_unix_ms);
        let offset = segment.disk_bytes;
        let start = offset + HEADER_LEN as u64;
        let end = offset + disk_len;
        // Over a reused file's older bytes the entry is followed by an end
        // marker, so a restart does not read those bytes as damage.
        let marked = segment.file_len > end;
        let written = segment
            .file
            .write_all_at(&header, offset)
            .and_then(|()| segment.file.write_all_at(prefix, start))
            .and_then(|()| segment.file.write_all_at(payload, start + prefix.len() as u64))
            .and_then(|()| if marked { segment.file.write_all_at(&disk::end_marker(seq + 1), end) } else { Ok(()) });
        if let Err(e) = written {
            // Cut the partial entry off so the next one starts on a boundary;
            // if even that fails, the segment's tail is unknown: stop.
            match segment.file.set_len(offset) {
                Ok(()) => segment.file_len = offset,
                Err(_) => self.poisoned.store(true, Ordering::Release),
            }
            return Err(e.into());
        }
        let meta = EntryMeta { offset, len: region_len as u32, events, accepted_unix_ms };
        segment.entries.push(meta);
        segment.disk_bytes += disk_len;
        segment.file_len = segment.file_len.max(if marked { end + HEADER_LEN as u64 } else { end });
        st.used_bytes += disk_len;
        st.unacked_bytes += disk_len;
        st.unacked_entries += 1;
        st.unacked_events += u64::from(events);
        st.next_seq += 1;
        if let Some(entry) = kept {
            st.recent.keep(Entry { seq, ..entry });
        }
        Ok(seq)
    }

    /// Starts the segment whose first entry is `seq`, in a spare file when
    /// there is one. The previous segment is cut to its entries (a reused
    /// file's older bytes after them dropped) and queued for the next fsync.
    fn open_segment(&self, st: &mut State, seq: u64) -> Result<(), AppendError> {
        if let Some(last) = st.segments.back_mut() {
            if last.file_len > last.disk_bytes {
                last.file.set_len(last.disk_bytes)?;
                last.file_len = last.disk_bytes;
            }
            st.unsynced.push(Arc::clone(&last.file));
        }
        let path = disk::segment_path(&self.dir, seq);
        // Never over an existing file (create_new below refuses that too);
        // a spare that cannot become the segment is given up.
        let reused = st.spares.take().and_then(|spare| {
            let renamed = !path.exists() && fs::rename(&spare.path, &path).is_ok();
            if !renamed {
                let _ = fs::remove_file(&spare.path);
            }
            renamed.then_some((spare.file, spare.len))
        });
        let (file, file_len) = match reused {
            Some(found) => found,
            None => (Arc::new(OpenOptions::new().read(true).write(true).create_new(true).open(&path)?), 0),
        };
        st.dir_dirty = true;
        st.segments.push_back(Segment { first_seq: seq, path, file, disk_bytes: 0, file_len, entries: Vec::new() });
        Ok(())
    }

    pub(crate) fn first_unacked(&self) -> u64 {
        lock(&self.state).first_unacked
    }

    /// The seq the next append will get.
    #[cfg_attr(not(test), allow(dead_code))] // tests and future metrics
    pub(crate) fn next_seq(&self) -> u64 {
        lock(&self.state).next_seq
    }

    /// Marks every entry up to and including `seq` delivered, in memory:
    /// `true` when the position is due to be persisted ([`Spool::persist`],
    /// which also deletes the segments left with no unacked entry; see the
    /// module docs). `Backlog::ack_through` does both.
    pub(crate) fn ack_in_memory(&self, seq: u64) -> anyhow::Result<bool> {
        let mut last_persist = lock(&self.ack_lock);
        let new_first = seq.saturating_add(1);
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        if new_first <= st.first_unacked {
            return Ok(false);
        }
        if seq >= st.next_seq {
            bail!("cannot ack seq {seq}: the spool's next seq is {}", st.next_seq);
        }
        let old_first = st.first_unacked;
        let start = st.segments.partition_point(|s| s.end_seq() <= old_first);
        for segment in st.segments.range(start..) {
            let from = old_first.max(segment.first_seq);
            let to = new_first.min(segment.end_seq());
            if from >= to {
                break;
            }
            for meta in &segment.entries[(from - segment.first_seq) as usize..(to - segment.first_seq) as usize] {
                st.unacked_bytes -= meta.disk_len();
                st.unacked_entries -= 1;
                st.unacked_events -= u64::from(meta.events);
            }
        }
        st.first_unacked = new_first;
        st.recent.forget_below(new_first);
        let forced = new_first == st.next_seq || st.used_bytes > self.max_bytes / 2;
        Ok(take_turn(&mut last_persist, forced) == PersistDue::Now)
    }

    /// See [`Backlog::persist_due`](super::backlog::Backlog::persist_due).
    pub(crate) fn persist_due(&self) -> PersistDue {
        let mut last_persist = lock(&self.ack_lock);
        {
            let st = lock(&self.state);
            if st.first_unacked == st.persisted_first_unacked {
                return PersistDue::Nothing;
            }
        }
        take_turn(&mut last_persist, false)
    }

    /// Events of the unacknowledged entry `seq`, from its metadata.
    pub(crate) fn entry_events(&self, seq: u64) -> Option<u32> {
        let st = lock(&self.state);
        if seq < st.first_unacked {
            return None;
        }
        let at = st.segments.partition_point(|s| s.end_seq() <= seq);
        let segment = st.segments.get(at)?;
        segment.entries.get(usize::try_from(seq.checked_sub(segment.first_seq)?).ok()?).map(|m| m.events)
    }

    /// Persists the acknowledged position (see [`Spool::persist_ack`]).
    pub(crate) fn persist(&self) -> anyhow::Result<()> {
        let _serialized = lock(&self.ack_lock);
        self.persist_ack()
    }

    /// Writes the in-memory position to the `ack` file and deletes the
    /// segments wholly below it. Call with `ack_lock` held.
    fn persist_ack(&self) -> anyhow::Result<()> {
        let position = {
            let st = lock(&self.state);
            if st.first_unacked == st.persisted_first_unacked {
                return Ok(());
            }
            st.first_unacked
        };
        disk::write_ack(&self.dir, position).context("writing the spool's ack position")?;
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        st.persisted_first_unacked = position;
        let mut first_error = None;
        while st.segments.front().is_some_and(|s| s.end_seq() <= position) {
            let segment = st.segments.pop_front().expect("front exists");
            st.used_bytes -= segment.disk_bytes;
            // Under the state lock, so a new segment of the same name
            // (the last one, emptied) cannot be created in between. Kept
            // as a spare only when the bound leaves room for it.
            let len = segment.file_len;
            let retired = if st.bytes_on_disk() + len <= self.max_bytes {
                st.spares.retire(&self.dir, segment.first_seq, &segment.path, segment.file, len, self.segment_bytes)
            } else {
                fs::remove_file(&segment.path)
            };
            if let Err(e) = retired {
                first_error.get_or_insert(anyhow::anyhow!(
                    "removing the delivered spool segment {}: {e}",
                    segment.path.display()
                ));
            }
        }
        // The position is saved either way; a segment left behind is
        // deleted at the next open.
        first_error.map_or(Ok(()), Err)
    }

    /// Totals of the unacked entries; no I/O.
    pub(crate) fn stats(&self) -> SpoolStats {
        let st = lock(&self.state);
        // Acked segments may not be deleted yet: find the first unacked entry.
        let at = st.segments.partition_point(|s| s.end_seq() <= st.first_unacked);
        let oldest = st.segments.get(at).and_then(|s| {
            let i = st.first_unacked.saturating_sub(s.first_seq) as usize;
            s.entries.get(i).map(|m| m.accepted_unix_ms)
        });
        SpoolStats {
            bytes: st.unacked_bytes,
            entries: st.unacked_entries,
            events: st.unacked_events,
            oldest_accepted_unix_ms: oldest,
        }
    }

    /// fsync calls made so far (segments and directory).
    #[cfg_attr(not(test), allow(dead_code))] // tests and future metrics
    pub(crate) fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }
}

impl Drop for Spool {
    /// A graceful stop persists the last position, so a restart does not
    /// deliver again what was delivered.
    fn drop(&mut self) {
        let _serial = lock(&self.ack_lock);
        if let Err(e) = self.persist_ack() {
            tracing::warn!(error = %format!("{e:#}"), "persisting the spool's ack position at shutdown");
        }
    }
}
