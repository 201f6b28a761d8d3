//! Output settings set through the API, persisted in the state directory
//! (`outputs/<name>.json`, mode 0600: they hold secrets) so they survive a
//! restart.
//!
//! Precedence, decided: an output set by `PUT /v1/outputs/{name}` replaces
//! the `[[output]]` entry of the same name until `DELETE` removes the API
//! settings (the file's entry, if any, applies again). The API is how a
//! team changes a running tier; the file is how it is deployed.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Map, Value};

use super::options::valid_name;

/// Stored settings by output name.
pub(crate) type Stored = Vec<(String, Map<String, Value>)>;

pub(crate) struct SettingsStore {
    dir: PathBuf,
    /// Held by an API change across save, apply and (on failure) undo, so
    /// two changes cannot interleave and one's undo cannot overwrite the
    /// other's accepted settings.
    pub(crate) changing: tokio::sync::Mutex<()>,
}

/// Makes each write's temporary file name unique within the process.
static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl SettingsStore {
    pub(crate) fn new(state_dir: &Path) -> Self {
        SettingsStore { dir: state_dir.join("outputs"), changing: tokio::sync::Mutex::new(()) }
    }

    /// Every stored entry by name. An unreadable file is reported and
    /// skipped (the others still apply).
    pub(crate) fn load(&self) -> (Stored, Vec<String>) {
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return (entries, problems) };
        for item in dir.flatten() {
            let path = item.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if !valid_name(name) {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| serde_json::from_slice::<Map<String, Value>>(&bytes).map_err(anyhow::Error::from));
            match parsed {
                Ok(map) => entries.push((name.to_string(), map)),
                // The name only: the file may hold secrets.
                Err(e) => problems.push(format!("stored settings of output {name:?}: {e}")),
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        (entries, problems)
    }

    /// Writes `name`'s settings atomically (temporary file, fsync, rename).
    pub(crate) fn save(&self, name: &str, entry: &Map<String, Value>) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).context("creating the output settings directory")?;
        let path = self.dir.join(format!("{name}.json"));
        // A name of its own per write: two writers never share a file.
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!(".{name}.json.{}.{n}.tmp", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .context("writing output settings")?;
        let written = file
            .write_all(&serde_json::to_vec_pretty(entry).map_err(std::io::Error::other)?)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(anyhow::Error::from(e).context("replacing output settings"));
        }
        let _ = super::durable::sync_dir(&self.dir);
        Ok(())
    }

    /// Removes `name`'s settings; `false` if there were none.
    pub(crate) fn remove(&self, name: &str) -> anyhow::Result<bool> {
        match std::fs::remove_file(self.dir.join(format!("{name}.json"))) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).context("removing output settings"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn settings_round_trip_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = SettingsStore::new(dir.path());
        let entry: Map<String, Value> = serde_json::from_str(r#"{"url":"http://h","password":"p"}"#).unwrap();
        store.save("elastic", &entry).unwrap();
        let mode = std::fs::metadata(dir.path().join("outputs/elastic.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("outputs/broken.json"), "{not json").unwrap();
        let (entries, problems) = store.load();
        assert_eq!(entries, vec![("elastic".to_string(), entry)]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(store.remove("elastic").unwrap());
        assert!(!store.remove("elastic").unwrap());
    }
}
