use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::*;
use crate::delivery::backlog::Backlog;

mod damage;

/// Fault injection for the fsync path.
#[derive(Default)]
pub(super) struct Hooks {
    sync_delay_ms: AtomicU64,
    fail_next_sync: AtomicBool,
}

impl Hooks {
    pub(super) fn before_sync(&self) -> io::Result<()> {
        let delay = self.sync_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if self.fail_next_sync.swap(false, Ordering::Relaxed) {
            return Err(io::Error::other("injected fsync failure"));
        }
        Ok(())
    }
}

const MB: u64 = 1 << 20;

fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> (Spool, Recovery) {
    Spool::open(SpoolConfig { dir: dir.to_path_buf(), max_bytes, segment_bytes }).expect("open")
}

fn payload(i: u64) -> Vec<u8> {
    format!("{{\"event\":{i}}}\n").repeat(3).into_bytes()
}

fn append_n(spool: &Spool, n: u64) {
    for _ in 0..n {
        let seq = spool.next_seq();
        assert_eq!(spool.append(&payload(seq), 3, 1_000 + seq).expect("append"), seq);
    }
}

fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

fn read_all(spool: &Spool) -> Vec<Entry> {
    spool.read(0, usize::MAX, u64::MAX).expect("read")
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    disk::list_segments(dir).expect("list").into_iter().map(|(_, p)| p).collect()
}

/// Bytes on disk of one entry made by `payload(i)` for a one-digit `i`.
fn entry_len() -> u64 {
    HEADER_LEN as u64 + payload(0).len() as u64
}

#[test]
fn round_trip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, recovery) = open(dir.path(), MB, MB);
    assert_eq!(recovery, Recovery::default());
    assert_eq!(spool.stats(), SpoolStats::default());
    append_n(&spool, 3);
    let entries = read_all(&spool);
    assert_eq!(seqs(&entries), [0, 1, 2]);
    for e in &entries {
        assert_eq!((e.events, e.accepted_unix_ms, &e.payload.bytes[..]), (3, 1_000 + e.seq, &payload(e.seq)[..]));
    }
    let stats = spool.stats();
    assert_eq!((stats.entries, stats.events, stats.bytes), (3, 9, 3 * entry_len()));
    assert_eq!(stats.oldest_accepted_unix_ms, Some(1_000));
    drop(spool);

    let (spool, recovery) = open(dir.path(), MB, MB);
    assert_eq!((recovery.entries, recovery.events, recovery.bytes), (3, 9, 3 * entry_len()));
    assert_eq!((recovery.corrupt_entries, recovery.problems.len()), (0, 0));
    assert_eq!(read_all(&spool), entries);
    assert_eq!(spool.next_seq(), 3);
}

#[test]
fn read_limits_always_return_the_first_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), MB, 2 * entry_len());
    append_n(&spool, 5);
    assert_eq!(seqs(&spool.read(1, 2, u64::MAX).unwrap()), [1, 2]);
    let len = payload(0).len() as u64;
    assert_eq!(seqs(&spool.read(1, 10, 2 * len).unwrap()), [1, 2]);
    assert_eq!(seqs(&spool.read(3, 10, 1).unwrap()), [3], "first entry even over max_bytes");
    assert_eq!(seqs(&spool.read(4, 0, 0).unwrap()), [4]);
    assert!(spool.read(5, 10, u64::MAX).unwrap().is_empty());
    spool.ack_through(2).unwrap();
    assert_eq!(seqs(&spool.read(0, 10, u64::MAX).unwrap()), [3, 4], "acked entries are not read again");
}

#[test]
fn restart_resumes_after_ack() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), MB, MB);
    append_n(&spool, 5);
    spool.ack_through(2).unwrap();
    assert_eq!(spool.first_unacked(), 3);
    assert_eq!(spool.stats().entries, 2);
    assert_eq!(spool.stats().oldest_accepted_unix_ms, Some(1_003));
    spool.ack_through(1).unwrap(); // going back is a no-op
    assert!(spool.ack_through(5).is_err(), "seq 5 was never appended");
    drop(spool);

    let (spool, recovery) = open(dir.path(), MB, MB);
    assert_eq!((recovery.entries, recovery.events), (2, 6));
    assert_eq!(spool.first_unacked(), 3);
    assert_eq!(seqs(&read_all(&spool)), [3, 4]);
    assert_eq!(spool.append(b"x", 1, 0).unwrap(), 5);
}

#[test]
fn acked_segments_are_deleted_and_seqs_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), MB, 3 * entry_len());
    append_n(&spool, 8); // segments 0..3, 3..6, 6..8
    assert_eq!(segments(dir.path()).len(), 3);
    spool.ack_through(4).unwrap();
    let names: Vec<_> = segments(dir.path()).iter().map(|p| p.file_name().unwrap().to_owned()).collect();
    assert_eq!(names, ["00000000000000000003.seg", "00000000000000000006.seg"]);
    spool.ack_through(7).unwrap();
    assert!(segments(dir.path()).is_empty(), "the last segment goes too once fully acked");
    assert_eq!(spool.stats(), SpoolStats::default());
    drop(spool);

    let (spool, recovery) = open(dir.path(), MB, 3 * entry_len());
    assert_eq!(recovery.entries, 0);
    assert_eq!(spool.next_seq(), 8, "the ack file remembers where seqs were");
    assert_eq!(spool.append(b"x", 1, 0).unwrap(), 8);
    assert_eq!(segments(dir.path())[0].file_name().unwrap(), "00000000000000000008.seg");
}

#[test]
fn full_at_the_bound_and_room_again_after_ack() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), 4 * entry_len(), 2 * entry_len());
    let len = payload(0).len() as u64;
    append_n(&spool, 4);
    assert!(!spool.has_room(len));
    assert!(!spool.has_room(0), "even an empty entry needs a header");
    match spool.append(&payload(4), 1, 0) {
        Err(AppendError::Full { used, max }) => assert_eq!((used, max), (4 * entry_len(), 4 * entry_len())),
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(spool.next_seq(), 4, "a refused append takes no seq");
    spool.ack_through(0).unwrap();
    assert!(!spool.has_room(len), "segment 0..2 is half acked: not deleted yet");
    spool.ack_through(1).unwrap();
    assert!(spool.has_room(len));
    assert!(!spool.has_room(3 * len));
    append_n(&spool, 2);
    assert_eq!(seqs(&read_all(&spool)), [2, 3, 4, 5]);
}

#[test]
fn concurrent_appends_are_all_durable_with_unique_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), 64 * MB, 4096);
    let per_thread = 50u64;
    let mut all: Vec<(u64, Vec<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                let spool = &spool;
                s.spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let body = format!("thread {t} entry {i}").into_bytes();
                            (spool.append(&body, 1, t).expect("append"), body)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    all.sort();
    assert_eq!(all.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), (0..8 * per_thread).collect::<Vec<_>>());
    drop(spool);
    let (spool, recovery) = open(dir.path(), 64 * MB, 4096);
    assert_eq!((recovery.entries, recovery.corrupt_entries), (8 * per_thread, 0));
    let read: Vec<_> = read_all(&spool).into_iter().map(|e| (e.seq, e.payload.bytes.to_vec())).collect();
    assert_eq!(read, all);
}

#[test]
fn group_commit_shares_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), 64 * MB, 64 * MB);
    spool.test_hooks.sync_delay_ms.store(2, Ordering::Relaxed);
    let appends = 8 * 20;
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..appends / 8 {
                    spool.append(b"{}", 1, 0).expect("append");
                }
            });
        }
    });
    assert_eq!(spool.next_seq(), appends);
    let fsyncs = spool.fsync_count();
    // One fsync per append, plus one for the directory, without sharing.
    assert!(fsyncs < appends / 2, "{fsyncs} fsyncs for {appends} appends");
}

#[test]
fn a_failed_fsync_refuses_all_later_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), MB, MB);
    append_n(&spool, 2);
    spool.test_hooks.fail_next_sync.store(true, Ordering::Relaxed);
    let err = spool.append(b"lost?", 1, 0).unwrap_err();
    assert!(matches!(&err, AppendError::Io(e) if e.to_string().contains("injected")), "{err}");
    for _ in 0..2 {
        let err = spool.append(b"later", 1, 0).unwrap_err();
        assert!(matches!(&err, AppendError::Io(e) if e.to_string().contains("refused")), "{err}");
    }
    assert_eq!(seqs(&read_all(&spool)), [0, 1], "the unsynced entry is not handed out");
    drop(spool);
    let (spool, _) = open(dir.path(), MB, MB);
    assert!(spool.append(b"after restart", 1, 0).is_ok());
}

#[test]
fn unreadable_ack_file_redelivers_rather_than_loses() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), MB, MB);
    append_n(&spool, 3);
    spool.ack_through(0).unwrap();
    drop(spool);
    fs::write(dir.path().join("ack"), "garbage").unwrap();
    let (spool, recovery) = open(dir.path(), MB, MB);
    assert_eq!(recovery.problems.len(), 1, "{:?}", recovery.problems);
    assert_eq!(seqs(&read_all(&spool)), [0, 1, 2]);
}

/// Acks inside [`ACK_PERSIST_INTERVAL`] move the position in memory only:
/// a crash then delivers those entries again (never loses one), a drop
/// persists the position.
#[test]
fn acks_are_persisted_at_most_every_interval_and_at_drop() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), MB, 2 * entry_len());
    append_n(&spool, 6); // segments 0..2, 2..4, 4..6
    spool.ack_through(0).unwrap(); // the first ack is persisted at once
    spool.ack_through(3).unwrap(); // inside the interval: memory only
    assert_eq!((spool.first_unacked(), spool.stats().entries), (4, 2));
    assert_eq!(spool.stats().oldest_accepted_unix_ms, Some(1_004));
    assert_eq!(segments(dir.path()).len(), 3, "nothing deleted ahead of the ack file");
    std::mem::forget(spool); // a crash: no drop
    let (spool, recovery) = open(dir.path(), MB, 2 * entry_len());
    assert_eq!(recovery.entries, 5, "seqs 1..=5 come again: at least once");
    assert_eq!(seqs(&read_all(&spool)), [1, 2, 3, 4, 5]);

    spool.ack_through(1).unwrap();
    spool.ack_through(3).unwrap();
    drop(spool);
    let (spool, recovery) = open(dir.path(), MB, 2 * entry_len());
    assert_eq!((recovery.entries, spool.first_unacked()), (2, 4), "the drop persisted the position");
    assert_eq!(segments(dir.path()).len(), 1);
    append_n(&spool, 2);
    spool.ack_through(4).unwrap(); // persisted: this instance's first
    std::thread::sleep(ACK_PERSIST_INTERVAL);
    spool.ack_through(5).unwrap(); // persisted: the interval has passed
    std::mem::forget(spool);
    let (spool, _) = open(dir.path(), MB, 2 * entry_len());
    assert_eq!(seqs(&read_all(&spool)), [6, 7]);
}

/// An ack left in memory (not yet due, or its persist failed) is asked
/// for again without a new ack: `persist_due` says when, and hands out one
/// turn per interval. Entry sizes come from the metadata, without I/O.
#[test]
fn a_pending_position_is_due_later_without_another_ack() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), MB, MB);
    append_n(&spool, 4);
    assert_eq!(spool.persist_due(), PersistDue::Nothing);
    assert_eq!(spool.entry_events(2), Some(3));
    assert_eq!(spool.entry_events(9), None, "never appended");
    assert!(spool.ack_in_memory(0).unwrap(), "the first ack is due");
    spool.persist().unwrap();
    assert!(!spool.ack_in_memory(1).unwrap(), "inside the interval");
    assert_eq!(spool.entry_events(1), None, "acknowledged");
    match spool.persist_due() {
        PersistDue::In(wait) => assert!(wait <= ACK_PERSIST_INTERVAL),
        other => panic!("pending, not yet due: {other:?}"),
    }
    std::thread::sleep(ACK_PERSIST_INTERVAL);
    assert_eq!(spool.persist_due(), PersistDue::Now);
    assert!(matches!(spool.persist_due(), PersistDue::In(_)), "one turn per interval");
    spool.persist().unwrap();
    assert_eq!(spool.persist_due(), PersistDue::Nothing);
    std::mem::forget(spool); // a crash: the position was persisted all the same
    let (spool, _) = open(dir.path(), MB, MB);
    assert_eq!(seqs(&read_all(&spool)), [2, 3]);
}

/// The worker's split acknowledgement: in memory, then a persist only
/// when it says one is due; a crash in between re-delivers, never skips.
#[test]
fn an_ack_in_memory_says_when_to_persist() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), MB, 2 * entry_len());
    append_n(&spool, 6);
    assert!(spool.ack_in_memory(0).unwrap(), "the first ack is due at once");
    spool.persist().unwrap();
    assert!(!spool.ack_in_memory(2).unwrap(), "inside the interval, entries left: not due");
    assert!(!spool.ack_in_memory(1).unwrap(), "an older ack changes nothing");
    assert_eq!(spool.first_unacked(), 3);
    assert!(spool.ack_in_memory(9).is_err(), "beyond the last entry");
    assert!(spool.ack_in_memory(5).unwrap(), "the backlog is empty: due");
    std::mem::forget(spool); // a crash before the persist
    let (spool, _) = open(dir.path(), MB, 2 * entry_len());
    assert_eq!(seqs(&read_all(&spool)), [1, 2, 3, 4, 5], "from the last persisted position");
    assert!(spool.ack_in_memory(5).unwrap());
    spool.persist().unwrap();
    std::mem::forget(spool);
    let (spool, _) = open(dir.path(), MB, 2 * entry_len());
    assert!(read_all(&spool).is_empty());
}

/// An entry's origin key survives a restart beside keyless entries (the
/// format before keys), and a damaged key is caught by the CRC like a
/// damaged payload.
#[test]
fn origin_keys_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (spool, _) = open(dir.path(), 64 * MB, MB);
        spool.append(&payload(0), 3, 1).unwrap();
        Backlog::append(&spool, &bytes::Bytes::from(payload(1)).into(), 3, 2, Some("RAW:42")).unwrap();
        Backlog::append(&spool, &bytes::Bytes::from(payload(2)).into(), 3, 3, Some("")).unwrap();
        let long = "k".repeat(disk::MAX_ORIGIN_LEN + 1);
        assert!(
            Backlog::append(&spool, &bytes::Bytes::from_static(b"x").into(), 1, 4, Some(&long)).is_err(),
            "keys are bounded"
        );
    }
    let (spool, recovery) = open(dir.path(), 64 * MB, MB);
    assert_eq!((recovery.entries, recovery.corrupt_entries), (3, 0));
    let entries = read_all(&spool);
    let origins: Vec<Option<&str>> = entries.iter().map(|e| e.origin.as_deref()).collect();
    assert_eq!(origins, [None, Some("RAW:42"), Some("")]);
    assert_eq!(entries[1].payload.bytes, payload(1), "the key is not part of the payload");
    assert_eq!(entries[1].events, 3);
    drop(spool);
    // Flip a byte of the key: the entry (and what follows it) is cut off.
    let seg = &segments(dir.path())[0];
    let mut bytes = fs::read(seg).unwrap();
    let at = entry_len() as usize + HEADER_LEN + 3;
    assert_eq!(bytes[at], b'A');
    bytes[at] = b'B';
    fs::write(seg, bytes).unwrap();
    let (_spool, recovery) = open(dir.path(), 64 * MB, MB);
    assert_eq!((recovery.entries, recovery.corrupt_entries), (1, 1), "{recovery:?}");
}

fn spares(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "spare")).count()
}

/// Delivered segments' files are written over by later segments; entries
/// shorter than the older ones leave older bytes behind them, which a
/// restart must neither read back nor count as damage.
#[test]
fn reused_segment_files_read_back_only_their_own_entries() {
    let dir = tempfile::tempdir().unwrap();
    let big = |i: u64| format!("{{\"event\":{i:03},\"pad\":\"{}\"}}\n", "x".repeat(200)).into_bytes();
    let segment = 4 * (HEADER_LEN as u64 + big(0).len() as u64);
    let (spool, _) = open(dir.path(), MB, segment);
    for i in 0..12 {
        spool.append(&big(i), 1, i).unwrap();
    }
    spool.ack_through(11).unwrap(); // all delivered: persisted at once
    assert!(segments(dir.path()).is_empty());
    assert_eq!(spares(dir.path()), 3, "the three delivered files are kept");
    // Short entries: each lands on older, longer bytes.
    append_n(&spool, 5);
    assert_eq!(spares(dir.path()), 2, "a new segment took a kept file");
    assert_eq!(seqs(&read_all(&spool)), [12, 13, 14, 15, 16]);
    std::mem::forget(spool); // a crash
    let (spool, recovery) = open(dir.path(), MB, segment);
    assert_eq!((recovery.entries, recovery.corrupt_entries), (5, 0), "{:?}", recovery.problems);
    let entries = read_all(&spool);
    assert_eq!(seqs(&entries), [12, 13, 14, 15, 16]);
    assert!(entries.iter().all(|e| e.payload.bytes == payload(e.seq)), "only the new entries' bytes");
    // Appends go on after the restart, and a second restart agrees.
    append_n(&spool, 2);
    drop(spool);
    let (spool, recovery) = open(dir.path(), MB, segment);
    assert_eq!((recovery.entries, recovery.corrupt_entries), (7, 0), "{:?}", recovery.problems);
    assert_eq!(seqs(&read_all(&spool)), (12..19).collect::<Vec<_>>());
}

/// A crash right after a kept file became a segment, before its first
/// entry was durable: the file holds only an older segment's entries,
/// which is no damage and no data.
#[test]
fn a_reused_file_with_none_of_its_own_entries_is_empty_not_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), MB, 2 * entry_len());
    append_n(&spool, 4);
    spool.ack_through(3).unwrap();
    drop(spool);
    let spare =
        fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().unwrap() == "spare");
    fs::rename(spare.unwrap(), disk::segment_path(dir.path(), 4)).unwrap();
    let (spool, recovery) = open(dir.path(), MB, 2 * entry_len());
    assert_eq!((recovery.entries, recovery.corrupt_entries), (0, 0), "{:?}", recovery.problems);
    assert_eq!(spool.append(b"x", 1, 0).unwrap(), 4);
}

/// Damage is still damage in a reused file: a flipped byte in an end
/// marker is reported and cut off like any other.
#[test]
fn a_damaged_end_marker_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let big = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(100)).into_bytes();
    let (spool, _) = open(dir.path(), MB, 2 * (HEADER_LEN as u64 + big.len() as u64));
    spool.append(&big, 1, 0).unwrap();
    spool.append(&big, 1, 0).unwrap();
    spool.ack_through(1).unwrap();
    spool.append(b"{}\n", 1, 0).unwrap(); // seq 2 over the kept file, then a marker
    drop(spool);
    let seg = disk::segment_path(dir.path(), 2);
    let mut bytes = fs::read(&seg).unwrap();
    let marker = HEADER_LEN + 3;
    assert_eq!(&bytes[marker..marker + 2], b"Sp", "an end marker follows the entry");
    bytes[marker + 14] ^= 1; // its seq
    fs::write(&seg, bytes).unwrap();
    let (_spool, recovery) = open(dir.path(), MB, 2 * (HEADER_LEN as u64 + big.len() as u64));
    assert_eq!((recovery.entries, recovery.corrupt_entries), (1, 1), "{recovery:?}");
    assert!(recovery.problems[0].contains("end marker"), "{:?}", recovery.problems);
}

/// Kept files count against the bound and give way before an append is
/// refused.
#[test]
fn kept_files_give_way_to_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), 4 * entry_len(), 2 * entry_len());
    append_n(&spool, 4);
    spool.ack_through(1).unwrap();
    assert_eq!(spares(dir.path()), 1);
    append_n(&spool, 2); // needs the kept file's room (or the file itself)
    assert_eq!(seqs(&read_all(&spool)), [2, 3, 4, 5]);
    let on_disk: u64 = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum::<u64>()
        - fs::metadata(dir.path().join("ack")).map_or(0, |m| m.len());
    assert!(on_disk <= 4 * entry_len(), "{on_disk} bytes on disk");
}

/// Entries appended through the backlog interface are read back from memory while
/// recent (a byte changed on disk afterwards does not show), from the
/// file once pushed out of the recent window, and from the file after a
/// restart.
#[test]
fn recent_entries_are_read_from_memory_and_older_ones_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), 256 * MB, 64 * MB);
    let big = bytes::Bytes::from(vec![b'x'; MB as usize]);
    let ends: std::sync::Arc<[usize]> = vec![MB as usize - 1].into();
    let payload = Payload { bytes: big.clone(), line_ends: Some(ends.clone()) };
    let count = RECENT_MAX_BYTES / MB + 2; // the first two fall out of memory
    for i in 0..count {
        assert_eq!(Backlog::append(&spool, &payload, 1, i, Some("RAW:1")).unwrap(), i);
    }
    // Damage every entry's first payload byte on disk.
    let seg = &segments(dir.path())[0];
    let mut bytes = fs::read(seg).unwrap();
    let key = 2 + "RAW:1".len();
    for i in 0..count as usize {
        bytes[i * (HEADER_LEN + key + MB as usize) + HEADER_LEN + key] = b'y';
    }
    fs::write(seg, bytes).unwrap();
    let err = spool.read(0, 1, u64::MAX).unwrap_err();
    assert!(format!("{err:#}").contains("damaged"), "seq 0 is read from the file: {err:#}");
    let recent = spool.read(2, usize::MAX, u64::MAX).unwrap();
    assert_eq!(seqs(&recent), (2..count).collect::<Vec<_>>());
    assert!(recent.iter().all(|e| e.payload.bytes == big && e.origin.as_deref() == Some("RAW:1")), "from memory");
    assert!(recent.iter().all(|e| e.payload.line_ends.as_ref() == Some(&ends)), "with the recorded line ends");
    // The worker's read without I/O: only where every entry is in memory.
    assert!(spool.read_recent(0, u64::MAX, u64::MAX).is_none(), "seq 0 needs the file");
    assert!(spool.read_recent(1, u64::MAX, u64::MAX).is_none(), "seq 1 needs the file");
    assert_eq!(seqs(&spool.read_recent(2, u64::MAX, u64::MAX).expect("in memory")), seqs(&recent));
    assert_eq!(seqs(&spool.read_recent(2, 1, u64::MAX).expect("in memory")), [2], "bounded like a read");
    assert_eq!(spool.read_recent(count, u64::MAX, u64::MAX).map(|e| e.len()), Some(0), "nothing new: no I/O");
    // Acked entries leave memory; after a restart everything is on disk.
    spool.ack_through(count - 2).unwrap();
    assert_eq!(seqs(&spool.read(0, usize::MAX, u64::MAX).unwrap()), [count - 1]);
    drop(spool);
    let (spool, recovery) = open(dir.path(), 256 * MB, 64 * MB);
    assert_eq!(recovery.corrupt_entries, 1, "the damage is found on disk: {recovery:?}");
    assert!(read_all(&spool).is_empty());
}

/// Entries read back from the file carry no line ends (the worker then
/// searches for the lines): the ends live in memory only.
#[test]
fn entries_from_the_file_have_no_line_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), 256 * MB, 64 * MB);
    let payload =
        Payload { bytes: bytes::Bytes::from_static(b"{\"a\":1}\n{\"b\":2}\n"), line_ends: Some(vec![7, 15].into()) };
    Backlog::append(&spool, &payload, 2, 0, None).unwrap();
    assert_eq!(spool.read(0, usize::MAX, u64::MAX).unwrap()[0].payload.line_ends.as_deref(), Some(&[7, 15][..]));
    drop(spool);
    let (spool, _) = open(dir.path(), 256 * MB, 64 * MB);
    let entries = spool.read(0, usize::MAX, u64::MAX).unwrap();
    assert_eq!(
        (entries[0].payload.bytes.as_ref(), entries[0].payload.line_ends.as_deref()),
        (&payload.bytes[..], None)
    );
}
