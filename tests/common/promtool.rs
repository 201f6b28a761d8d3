//! `promtool check metrics` (Prometheus's own linter: names, units, types,
//! help, histogram buckets) on a `/metrics` exposition. Included with
//! `#[path]` next to `common/browser.rs`, whose program lookup it uses.

use std::io::Write;

use crate::browser;

/// Fails the test on any finding; skips (fails under `CI=true`) without
/// promtool.
pub(crate) fn check(text: &str) {
    let Some(promtool) = browser::find_program("PROMTOOL", &["promtool"]) else {
        browser::skip_or_fail("promtool check metrics", "promtool not found", "apt-get install prometheus");
        return;
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{text}");
}
