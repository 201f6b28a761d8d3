//! Torn writes and bit rot found at open: what is intact is kept, the
//! rest reported and cut, never a panic.

use super::*;

/// Writes five entries in one segment, damages it with `damage`, reopens,
/// and returns the spool, what recovery said, and the segment's path.
fn damaged(damage: impl FnOnce(&Path)) -> (tempfile::TempDir, Spool, Recovery) {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), MB, MB);
    append_n(&spool, 5);
    drop(spool);
    damage(&segments(dir.path())[0]);
    let (spool, recovery) = open(dir.path(), MB, MB);
    (dir, spool, recovery)
}

fn assert_recovers(dir: &Path, spool: Spool, intact: u64) {
    assert_eq!(seqs(&read_all(&spool)), (0..intact).collect::<Vec<_>>());
    assert_eq!(spool.append(b"after", 1, 0).unwrap(), intact);
    drop(spool);
    let (spool, recovery) = open(dir, MB, MB);
    assert_eq!((recovery.corrupt_entries, recovery.entries), (0, intact + 1), "{:?}", recovery.problems);
    let entries = read_all(&spool);
    assert_eq!(seqs(&entries), (0..=intact).collect::<Vec<_>>());
    assert_eq!(entries.last().unwrap().payload.bytes, &b"after"[..]);
}

#[test]
fn torn_tail_mid_entry() {
    let cut = entry_len() / 2;
    let (dir, spool, recovery) = damaged(|seg| {
        let file = OpenOptions::new().write(true).open(seg).unwrap();
        file.set_len(5 * entry_len() - cut).unwrap();
    });
    assert_eq!((recovery.corrupt_entries, recovery.corrupt_bytes), (1, entry_len() - cut));
    assert_eq!(recovery.entries, 4);
    assert!(recovery.problems[0].contains("runs past the end"), "{:?}", recovery.problems);
    assert_recovers(dir.path(), spool, 4);
}

#[test]
fn torn_header() {
    let (dir, spool, recovery) = damaged(|seg| {
        let file = OpenOptions::new().write(true).open(seg).unwrap();
        file.set_len(4 * entry_len() + 10).unwrap();
    });
    assert_eq!((recovery.corrupt_entries, recovery.corrupt_bytes), (1, 10));
    assert!(recovery.problems[0].contains("truncated header"), "{:?}", recovery.problems);
    assert_recovers(dir.path(), spool, 4);
}

#[test]
fn garbage_after_the_last_entry() {
    let (dir, spool, recovery) = damaged(|seg| {
        let mut file = OpenOptions::new().append(true).open(seg).unwrap();
        file.write_all(&[0xAB; 100]).unwrap();
    });
    assert_eq!((recovery.corrupt_entries, recovery.corrupt_bytes), (1, 100));
    assert!(recovery.problems[0].contains("bad magic"), "{:?}", recovery.problems);
    assert_recovers(dir.path(), spool, 5);
}

#[test]
fn flipped_payload_byte_cuts_the_rest_of_the_segment() {
    let (dir, spool, recovery) = damaged(|seg| {
        let mut bytes = fs::read(seg).unwrap();
        bytes[(2 * entry_len() + HEADER_LEN as u64 + 3) as usize] ^= 0x01;
        fs::write(seg, bytes).unwrap();
    });
    assert_eq!((recovery.corrupt_entries, recovery.corrupt_bytes), (1, 3 * entry_len()));
    assert!(recovery.problems[0].contains("CRC mismatch at offset"), "{:?}", recovery.problems);
    assert_eq!(recovery.entries, 2);
    assert_recovers(dir.path(), spool, 2);
}

#[test]
fn damage_in_an_older_segment_keeps_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = open(dir.path(), MB, 2 * entry_len());
    append_n(&spool, 6); // 0..2, 2..4, 4..6
    drop(spool);
    let middle = &segments(dir.path())[1];
    let mut bytes = fs::read(middle).unwrap();
    bytes[entry_len() as usize + 5] ^= 0xFF; // seq field of entry 3
    fs::write(middle, bytes).unwrap();
    let (spool, recovery) = open(dir.path(), MB, 2 * entry_len());
    assert_eq!((recovery.corrupt_entries, recovery.corrupt_bytes, recovery.entries), (1, entry_len(), 5));
    assert_eq!(seqs(&read_all(&spool)), [0, 1, 2, 4, 5]);
    assert_eq!(spool.read(3, 1, u64::MAX).unwrap()[0].seq, 4, "a gap is skipped");
    assert_eq!(spool.append(b"x", 1, 0).unwrap(), 6);
}
