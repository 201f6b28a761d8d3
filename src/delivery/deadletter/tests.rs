use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;

fn record(event: &[u8], unix_ms: u64) -> DeadRecord<'_> {
    DeadRecord { event, error: "mapper_parsing_exception", attempts: 3, unix_ms }
}

fn event(i: u64) -> Vec<u8> {
    format!(r#"{{"i":{i},"src_ip":"10.0.0.1"}}"#).into_bytes()
}

fn prefix(dir: &Path) -> PathBuf {
    dir.join("deadletter").join("es")
}

/// Bytes of one line for `event(i)` with a one-digit `i` and a 4-digit time.
fn line_len() -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let dl = DeadLetter::open(&prefix(dir.path()), "es", 1 << 20).unwrap();
    dl.append(&[record(&event(0), 1000)]).unwrap();
    dl.stats().bytes
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn lines_embed_the_event_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let dl = DeadLetter::open(&prefix(dir.path()), "es", 1 << 20).unwrap();
    let pretty = b"{\n  \"a\": [1, 2],\r\n  \"s\": \"x y\"\n}\n";
    assert_eq!(dl.append(&[record(&event(1), 1001), record(pretty, 1002)]).unwrap(), 0);
    let text = fs::read_to_string(dir.path().join("deadletter/es.ndjson")).unwrap();
    assert_eq!(text.lines().count(), 2, "one line per event: {text}");
    let (total, page) = dl.list(0, 10).unwrap();
    assert_eq!(total, 2);
    assert_eq!(
        page[0],
        json!({"output": "es", "error": "mapper_parsing_exception", "attempts": 3, "unix_ms": 1001,
               "event": {"i": 1, "src_ip": "10.0.0.1"}})
    );
    assert_eq!(page[1]["event"], json!({"a": [1, 2], "s": "x y"}));
    assert_eq!(dl.stats(), DeadLetterStats { events: 2, bytes: text.len() as u64 });
}

#[test]
fn non_json_event_is_kept_as_a_string() {
    let dir = tempfile::tempdir().unwrap();
    let dl = DeadLetter::open(&prefix(dir.path()), "splunk", 1 << 20).unwrap();
    dl.append(&[record(b"not json {", 5)]).unwrap();
    let (_, page) = dl.list(0, 1).unwrap();
    assert_eq!(page[0]["event_raw"], "not json {");
    assert!(page[0].get("event").is_none());
    let taken = dl.take_all().unwrap();
    assert_eq!(taken[0].event, b"not json {");
}

#[test]
fn files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = prefix(dir.path());
    fs::create_dir_all(prefix.parent().unwrap()).unwrap();
    let current = dir.path().join("deadletter/es.ndjson");
    fs::write(&current, "").unwrap();
    fs::set_permissions(&current, fs::Permissions::from_mode(0o644)).unwrap();
    let dl = DeadLetter::open(&prefix, "es", 2 * line_len()).unwrap();
    assert_eq!(mode(&current), 0o600, "an existing file is tightened");
    for i in 0..3 {
        dl.append(&[record(&event(i), 1000 + i)]).unwrap();
    }
    assert_eq!(mode(&current), 0o600, "the new current file after rotation");
    assert_eq!(mode(&dir.path().join("deadletter/es.1.ndjson")), 0o600);
}

#[test]
fn bounded_with_evictions_counted_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let max = 4 * line_len();
    let dl = DeadLetter::open(&prefix(dir.path()), "es", max).unwrap();
    let mut evicted = 0;
    for i in 0..9 {
        evicted += dl.append(&[record(&event(i), 1000 + i)]).unwrap();
        let stats = dl.stats();
        assert!(stats.bytes <= max, "{} > {max}", stats.bytes);
        assert_eq!(stats.events + evicted, i + 1, "every event is kept or counted as evicted");
    }
    assert!(evicted > 0);
    let (total, page) = dl.list(0, 100).unwrap();
    let kept: Vec<u64> = page.iter().map(|v| v["event"]["i"].as_u64().unwrap()).collect();
    assert_eq!(kept, ((9 - total)..9).collect::<Vec<_>>(), "the newest survive, in order");

    // A batch at once, and a record too large for the bound.
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(max as usize));
    let batch: Vec<_> = (0..6).map(|i| record(b"{}", i)).chain([record(big.as_bytes(), 9)]).collect();
    let before = dl.stats().events;
    let evicted = dl.append(&batch).unwrap();
    assert_eq!(dl.stats().events + evicted, before + 7);
    assert!(dl.stats().bytes <= max);
}

#[test]
fn list_pages_oldest_first_across_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let dl = DeadLetter::open(&prefix(dir.path()), "es", 8 * line_len()).unwrap();
    for i in 0..6 {
        assert_eq!(dl.append(&[record(&event(i), 1000 + i)]).unwrap(), 0);
    }
    assert!(dir.path().join("deadletter/es.1.ndjson").exists(), "a rotation happened");
    let times = |page: Vec<serde_json::Value>| page.iter().map(|v| v["unix_ms"].as_u64().unwrap()).collect::<Vec<_>>();
    let (total, page) = dl.list(0, 4).unwrap();
    assert_eq!((total, times(page)), (6, vec![1000, 1001, 1002, 1003]));
    assert_eq!(times(dl.list(4, 4).unwrap().1), [1004, 1005]);
    assert!(dl.list(6, 4).unwrap().1.is_empty());
}

#[test]
fn counted_again_at_open_and_take_all_empties() {
    let dir = tempfile::tempdir().unwrap();
    let dl = DeadLetter::open(&prefix(dir.path()), "es", 8 * line_len()).unwrap();
    for i in 0..6 {
        dl.append(&[record(&event(i), 1000 + i)]).unwrap();
    }
    let stats = dl.stats();
    drop(dl);
    let dl = DeadLetter::open(&prefix(dir.path()), "es", 8 * line_len()).unwrap();
    assert_eq!(dl.stats(), stats);
    let taken = dl.take_all().unwrap();
    assert_eq!(taken.len(), 6);
    assert_eq!(
        taken[2],
        OwnedDeadRecord { event: event(2), error: "mapper_parsing_exception".into(), attempts: 3, unix_ms: 1002 }
    );
    assert_eq!(dl.stats(), DeadLetterStats::default());
    assert_eq!(dl.list(0, 10).unwrap().0, 0);
    dl.append(&[record(&event(7), 7)]).unwrap();
    drop(dl);
    let dl = DeadLetter::open(&prefix(dir.path()), "es", 8 * line_len()).unwrap();
    assert_eq!(dl.stats().events, 1);
    assert_eq!(dl.take_all().unwrap()[0].unix_ms, 7);
}

#[test]
fn a_torn_last_line_is_ended_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let dl = DeadLetter::open(&prefix(dir.path()), "es", 1 << 20).unwrap();
    dl.append(&[record(&event(1), 1)]).unwrap();
    drop(dl);
    let current = dir.path().join("deadletter/es.ndjson");
    let mut bytes = fs::read(&current).unwrap();
    bytes.extend_from_slice(br#"{"output":"es","err"#);
    fs::write(&current, bytes).unwrap();
    let dl = DeadLetter::open(&prefix(dir.path()), "es", 1 << 20).unwrap();
    dl.append(&[record(&event(2), 2)]).unwrap();
    let (total, page) = dl.list(0, 10).unwrap();
    assert_eq!(total, 3);
    assert_eq!(page[1]["error"], UNPARSEABLE);
    assert_eq!(page[2]["event"]["i"], 2);
    let taken = dl.take_all().unwrap();
    assert_eq!(taken[1].event, br#"{"output":"es","err"#);
}

/// A rotation evicts the oldest file as soon as it renames; an append that
/// fails after that (the new file cannot be created) still reports what it
/// evicted, and the next append creates the file and goes on.
#[test]
fn evictions_are_reported_when_the_append_fails_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let dl = DeadLetter::open(&prefix(dir.path()), "es", 4 * line_len()).unwrap();
    let (mut written, mut evicted) = (0, 0);
    for i in 0..9 {
        evicted += dl.append(&[record(&event(i), 1000 + i)]).unwrap();
        written += 1;
    }
    assert!(evicted > 0, "a rotated file with lines exists");
    dl.fail_next_create.store(true, std::sync::atomic::Ordering::Relaxed);
    let failed = (0..10).find_map(|i| match dl.append(&[record(&event(i % 10), 2000 + i)]) {
        Ok(n) => {
            evicted += n;
            written += 1;
            None
        }
        Err(e) => Some(e),
    });
    let failed = failed.expect("a rotation within a few appends");
    assert!(failed.evicted > 0, "the rename dropped the oldest lines: {failed}");
    evicted += failed.evicted;
    assert_eq!(dl.stats().events + evicted, written, "kept or counted, nothing else");
    evicted += dl.append(&[record(&event(1), 3000)]).expect("the file is created again");
    written += 1;
    assert_eq!(dl.stats().events + evicted, written);
    let (_, page) = dl.list(0, 100).unwrap();
    assert_eq!(page.last().unwrap()["unix_ms"], 3000, "written to the new current file, newest last");
}
