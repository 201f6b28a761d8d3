//! The audit log: who changed what the engine runs, and with what result.
//!
//! Every administrative change (reloads, rule and data swaps, indicator
//! edits through the API, output settings, dead-letter replays) appends one
//! JSON line to `state/audit.jsonl`: time, actor (`api` with the key's id,
//! `watcher`, `signal`), action, target, content hashes before and after
//! where there is content, and the result. Append-only from the service's
//! side (the file is opened for appending, never rewritten); bounded by
//! rotating to `audit.jsonl.1` at [`MAX_BYTES`], so one old generation is
//! kept. `GET /v1/audit` (admin key) reads the newest entries.
//!
//! A failure to write is logged and counted, never a reason to refuse the
//! change itself: the change already happened by the time it is recorded.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use serde_json::Value;

/// Size at which the log rotates (one old generation kept).
pub(crate) const MAX_BYTES: u64 = 16 << 20;
const FILE: &str = "audit.jsonl";

/// One recorded change.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AuditEntry {
    pub actor: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub action: &'static str,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_sha256: Option<String>,
    /// `ok`, `rejected`, or an HTTP status for API calls.
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditEntry {
    pub(crate) fn new(actor: &'static str, action: &'static str, target: impl Into<String>) -> Self {
        AuditEntry {
            actor,
            key_id: None,
            action,
            target: target.into(),
            before_sha256: None,
            after_sha256: None,
            result: "ok".into(),
            detail: None,
        }
    }
}

pub(crate) struct Audit {
    dir: PathBuf,
    file: Mutex<Option<File>>,
    failures: AtomicU64,
}

impl Audit {
    pub(crate) fn new(state_dir: &Path) -> Self {
        Audit { dir: state_dir.to_path_buf(), file: Mutex::new(None), failures: AtomicU64::new(0) }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Appends `entry`, stamped with the current time.
    pub(crate) fn record(&self, entry: AuditEntry) {
        let mut line = serde_json::to_value(&entry).expect("entries serialize");
        line["time"] = enrichd_engine::rfc3339(std::time::SystemTime::now()).into();
        let mut text = line.to_string();
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = self.append(&mut file, text.as_bytes()) {
            *file = None;
            self.failures.fetch_add(1, Relaxed);
            tracing::error!(error = %e, action = entry.action, target = %entry.target, "audit log not written");
        }
    }

    fn append(&self, file: &mut Option<File>, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.path();
        if file.as_ref().is_some_and(|f| f.metadata().is_ok_and(|m| m.len() + bytes.len() as u64 > MAX_BYTES)) {
            *file = None;
            std::fs::rename(&path, self.dir.join(format!("{FILE}.1")))?;
        }
        if file.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            *file = Some(OpenOptions::new().create(true).append(true).mode(0o600).open(&path)?);
        }
        let f = file.as_mut().expect("just opened");
        f.write_all(bytes)?;
        f.sync_data()
    }

    /// The newest `limit` entries, newest first (the current file, then
    /// the rotated one), and the count of entries that could not be written.
    pub(crate) fn read_newest(&self, limit: usize) -> (Vec<Value>, u64) {
        let mut entries = Vec::new();
        for path in [self.path(), self.dir.join(format!("{FILE}.1"))] {
            let Ok(file) = File::open(&path) else { continue };
            let mut lines: Vec<Value> = BufReader::new(file)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| serde_json::from_str(&l).ok())
                .collect();
            lines.reverse();
            entries.extend(lines);
            if entries.len() >= limit {
                break;
            }
        }
        entries.truncate(limit);
        (entries, self.failures.load(Relaxed))
    }
}

/// Hex SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    enrichd_engine::to_hex(&sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_appended_read_newest_first_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::new(dir.path());
        for i in 0..3 {
            let mut e = AuditEntry::new("api", "reload", format!("t{i}"));
            e.key_id = Some("abc".into());
            audit.record(e);
        }
        let (newest, failures) = audit.read_newest(2);
        assert_eq!(failures, 0);
        assert_eq!(newest.iter().map(|e| e["target"].as_str().unwrap()).collect::<Vec<_>>(), ["t2", "t1"]);
        assert!(newest[0]["time"].as_str().unwrap().ends_with('Z'));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Past the bound the file rotates; the old entries stay readable.
        let big = "x".repeat(1 << 20);
        for _ in 0..17 {
            let mut e = AuditEntry::new("watcher", "swap", "ti");
            e.detail = Some(big.clone());
            audit.record(e);
        }
        assert!(dir.path().join(format!("{FILE}.1")).exists());
        assert!(std::fs::metadata(dir.path().join(FILE)).unwrap().len() <= MAX_BYTES);
        assert_eq!(audit.read_newest(100).0.len(), 20);
    }
}
