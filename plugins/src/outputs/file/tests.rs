//! The `file` output: lines written, rotation by size, IO errors retried.

use std::path::Path;

use enrichd_engine::output::Outcome;
use serde_json::json;

use super::FileOutput;
use crate::outputs::test_server::{build, error_fields, send};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn check_lists_every_error() {
    assert_eq!(error_fields(&FileOutput, json!({})), ["path"]);
    assert_eq!(error_fields(&FileOutput, json!({ "path": "", "max_files": 0 })), ["path", "max_files"]);
    assert_eq!(
        error_fields(&FileOutput, json!({ "path": 3, "fsync": "no", "rotate": true })),
        ["fsync", "path", "rotate"]
    );
    assert!(error_fields(&FileOutput, json!({ "path": "out/events.ndjson", "max_bytes": 0 })).is_empty());
}

#[tokio::test]
async fn appends_one_line_per_event_relative_to_the_base_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out/events.ndjson");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "{\"old\":true}\n").unwrap();
    let sink = build(&FileOutput, json!({ "path": "out/events.ndjson", "fsync": true }), dir.path());
    let report = send(&*sink, &[r#"{"a":1}"#, r#"{  "b": 2 }"#], 0).await;
    assert_eq!(report.outcomes, [Outcome::Delivered, Outcome::Delivered]);
    assert_eq!(report.http_status, None);
    // Delivered means written: readable before close.
    assert_eq!(read(&path), "{\"old\":true}\n{\"a\":1}\n{  \"b\": 2 }\n");
    send(&*sink, &["{}"], 0).await;
    sink.close().await;
    assert_eq!(read(&path).lines().count(), 4);
}

#[tokio::test]
async fn rotates_by_size_and_keeps_max_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.ndjson");
    // Lines of 10 bytes; at most 2 per file.
    let sink = build(&FileOutput, json!({ "path": "e.ndjson", "max_bytes": 25, "max_files": 2 }), dir.path());
    let events: Vec<String> = (0..7).map(|i| format!("{{\"n\":{i:03}}}")).collect();
    assert_eq!(events[0].len() + 1, 10);
    let refs: Vec<&str> = events.iter().map(|s| s.as_str()).collect();
    assert_eq!(send(&*sink, &refs[..3], 0).await.outcomes, vec![Outcome::Delivered; 3]);
    assert_eq!(send(&*sink, &refs[3..], 0).await.outcomes, vec![Outcome::Delivered; 4]);
    sink.close().await;
    let numbered = |k: u32| dir.path().join(format!("e.ndjson.{k}"));
    assert_eq!(read(&path), "{\"n\":006}\n");
    assert_eq!(read(&numbered(1)), "{\"n\":004}\n{\"n\":005}\n");
    assert_eq!(read(&numbered(2)), "{\"n\":002}\n{\"n\":003}\n");
    assert!(!numbered(3).exists(), "only max_files rotated files are kept");
}

#[tokio::test]
async fn an_event_larger_than_max_bytes_gets_a_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let sink = build(&FileOutput, json!({ "path": "e.ndjson", "max_bytes": 8 }), dir.path());
    let report = send(&*sink, &["{}", r#"{"big":"0123456789"}"#, "{}"], 0).await;
    assert_eq!(report.outcomes, vec![Outcome::Delivered; 3]);
    assert_eq!(read(&dir.path().join("e.ndjson")), "{}\n");
    assert_eq!(read(&dir.path().join("e.ndjson.1")), "{\"big\":\"0123456789\"}\n");
    assert_eq!(read(&dir.path().join("e.ndjson.2")), "{}\n");
}

#[tokio::test]
async fn io_errors_are_retried_and_the_file_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.ndjson");
    let sink = build(&FileOutput, json!({ "path": "e.ndjson", "max_bytes": 20, "max_files": 1 }), dir.path());
    assert_eq!(send(&*sink, &["{\"n\":1}"], 0).await.outcomes, [Outcome::Delivered]);
    // Make rotation fail: `e.ndjson.1` is a non-empty directory, which a
    // rename cannot replace. The first event fits, the second rotates.
    std::fs::create_dir_all(dir.path().join("e.ndjson.1/blocker")).unwrap();
    let report = send(&*sink, &["{\"n\":2}", "{\"n\":3}"], 0).await;
    assert_eq!(report.outcomes[0], Outcome::Delivered, "{report:?}");
    let Outcome::Retry(message) = &report.outcomes[1] else { panic!("{report:?}") };
    assert!(message.contains("e.ndjson"), "{message}");
    assert_eq!(read(&path), "{\"n\":1}\n{\"n\":2}\n");
    // Fixed: the retry goes through (the file is reopened and rotated).
    std::fs::remove_dir_all(dir.path().join("e.ndjson.1")).unwrap();
    assert_eq!(send(&*sink, &["{\"n\":3}"], 0).await.outcomes, [Outcome::Delivered]);
    assert_eq!(read(&path), "{\"n\":3}\n");
    assert_eq!(read(&dir.path().join("e.ndjson.1")), "{\"n\":1}\n{\"n\":2}\n");
}

#[test]
fn an_unwritable_path_fails_the_build() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    let options = serde_json::from_value(json!({ "path": "taken" })).unwrap();
    let error = enrichd_engine::component::Factory::build(
        &FileOutput,
        &options,
        &crate::outputs::test_server::context(dir.path()),
    )
    .err()
    .expect("a directory is not a file");
    assert!(error.to_string().contains("taken"), "{error:#}");
}
