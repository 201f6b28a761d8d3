//! Promoted rule versions and their history, kept in the state directory
//! so that a promotion survives a restart:
//!
//! ```text
//! <state_dir>/rules/<stage>/state.json       base, live stack, history
//! <state_dir>/rules/<stage>/<sha256>.wasm    the module of each version kept
//! <state_dir>/rules/<stage>/<sha256>.wasm.sig  its signature, if it had one
//! ```
//!
//! Why: the configuration may be read-only (a mounted volume), so a
//! promotion never writes over the configured file. Instead the stage loads
//! the version on top of the stack ([`active`]) **while the configured file
//! is the one the promotions were made on** (`base_sha256`): an operator
//! who deploys a new configured module later wins, and the promoted
//! versions stop applying (the history says what they were). The stack's
//! bottom is the configured file's version, so rolling all the way back
//! loads the configured file again.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// Versions kept in the history (and on the live stack).
pub(crate) const KEEP: usize = 10;

/// Held by every change to the kept versions (a shadow deployed or
/// removed, a promotion, a rollback): a prune must not delete a file that
/// another change has just stored and is about to use. (The service also
/// runs admin changes one at a time; this crate does not rely on it.)
static CHANGES: Mutex<()> = Mutex::new(());

/// Serializes changes to the kept versions (admin actions: rare).
pub(crate) fn lock_changes() -> MutexGuard<'static, ()> {
    CHANGES.lock().unwrap_or_else(|e| e.into_inner())
}

/// `state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct State {
    /// SHA-256 of the configured module when these versions were promoted.
    pub(crate) base_sha256: Option<String>,
    /// Versions made live, oldest first: the last is live, the first the
    /// configured file's.
    pub(crate) stack: Vec<String>,
    /// What happened, oldest first, at most [`KEEP`].
    pub(crate) history: Vec<Entry>,
}

/// One version made live.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) sha256: String,
    pub(crate) size_bytes: usize,
    /// `promoted` or `rolled_back` (to this version).
    pub(crate) action: String,
    /// RFC 3339.
    pub(crate) at: String,
    /// The key id of the caller.
    pub(crate) by: Option<String>,
    /// The version it replaced.
    pub(crate) replaced: Option<String>,
}

/// The directory of a stage's versions. Stage names are the config's, so
/// anything outside `[A-Za-z0-9_-]` is replaced (and the name's hash added
/// to keep two such names apart).
pub(crate) fn dir(state_dir: &Path, stage: &str) -> PathBuf {
    let clean: String =
        stage.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    let name = if clean == stage && !clean.is_empty() {
        clean
    } else {
        use sha2::Digest;
        format!("{clean}-{}", &enrichd_engine::to_hex(&sha2::Sha256::digest(stage.as_bytes()))[..8])
    };
    state_dir.join("rules").join(name)
}

pub(crate) fn state_path(state_dir: &Path, stage: &str) -> PathBuf {
    dir(state_dir, stage).join("state.json")
}

pub(crate) fn version_path(state_dir: &Path, stage: &str, sha256: &str) -> PathBuf {
    dir(state_dir, stage).join(format!("{sha256}.wasm"))
}

pub(crate) fn load(state_dir: &Path, stage: &str) -> std::io::Result<State> {
    match std::fs::read(state_path(state_dir, stage)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("inside the stage directory");
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn save(state_dir: &Path, stage: &str, state: &State) -> std::io::Result<PathBuf> {
    let path = state_path(state_dir, stage);
    write_atomic(&path, &serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
    Ok(path)
}

/// Stores a version's module (and signature) under its hash; an existing
/// file of that hash is kept.
pub(crate) fn store(
    state_dir: &Path,
    stage: &str,
    sha256: &str,
    bytes: &[u8],
    signature: Option<&[u8]>,
) -> std::io::Result<PathBuf> {
    let path = version_path(state_dir, stage, sha256);
    if path.exists() {
        // A kept version keeps its signature: a second upload of the same
        // bytes with another (possibly bad) signature must not replace
        // the one the live stage was verified with.
        return Ok(path);
    }
    if let Some(sig) = signature {
        write_atomic(&crate::signature::signature_path(&path), sig)?;
    }
    write_atomic(&path, bytes)?;
    Ok(path)
}

/// The promoted module to load instead of the configured one, if any: the
/// top of the stack while the configured file still has the hash the
/// promotions were made on.
pub(crate) fn active(state_dir: &Path, stage: &str, configured_sha256: &str) -> Option<PathBuf> {
    let state = load(state_dir, stage)
        .map_err(|e| tracing::warn!(stage, error = %e, "rule versions unreadable; loading the configured module"))
        .ok()?;
    if state.base_sha256.as_deref() != Some(configured_sha256) || state.stack.len() < 2 {
        return None;
    }
    Some(version_path(state_dir, stage, state.stack.last()?))
}

/// A version being made live.
pub(crate) struct Version<'a> {
    pub(crate) sha256: &'a str,
    pub(crate) size_bytes: usize,
}

/// Makes `next` (already stored) the live version over `live`, the
/// configured file being `configured_sha256`. `live_store` stores the live
/// module when it is not kept yet (it becomes the rollback target).
/// Returns the state file (the changed path the stage watches).
pub(crate) fn promote(
    state_dir: &Path,
    stage: &str,
    configured_sha256: &str,
    live: Version<'_>,
    next: Version<'_>,
    by: Option<&str>,
    live_store: impl FnOnce() -> std::io::Result<()>,
) -> std::io::Result<PathBuf> {
    let mut state = load(state_dir, stage)?;
    if state.base_sha256.as_deref() != Some(configured_sha256) {
        // The configured file changed since the last promotion (or there
        // was none): start a new stack on it, keep the history.
        state.base_sha256 = Some(configured_sha256.to_string());
        state.stack = vec![configured_sha256.to_string()];
    }
    if state.stack.last().map(String::as_str) != Some(live.sha256) {
        state.stack.push(live.sha256.to_string());
    }
    if !version_path(state_dir, stage, live.sha256).exists() {
        live_store()?;
    }
    state.stack.push(next.sha256.to_string());
    if state.stack.len() > KEEP {
        // The oldest promotions go; the base (the configured module, the
        // stack's first entry) stays, so rolling all the way back always
        // ends on it and `active` reads the stack as it is meant.
        state.stack.drain(1..state.stack.len() - KEEP + 1);
    }
    record(&mut state, next, "promoted", by, Some(live.sha256));
    let path = save(state_dir, stage, &state)?;
    prune(state_dir, stage, &state, None);
    Ok(path)
}

/// Restores the version live before the current one. `Ok(None)`: nothing
/// to roll back to.
pub(crate) fn rollback(
    state_dir: &Path,
    stage: &str,
    configured_sha256: &str,
    by: Option<&str>,
) -> std::io::Result<Option<(PathBuf, String, String)>> {
    let mut state = load(state_dir, stage)?;
    if state.base_sha256.as_deref() != Some(configured_sha256) || state.stack.len() < 2 {
        return Ok(None);
    }
    let from = state.stack.pop().expect("two or more");
    let to = state.stack.last().expect("one left").clone();
    let size = std::fs::metadata(version_path(state_dir, stage, &to)).map_or(0, |m| m.len() as usize);
    record(&mut state, Version { sha256: &to, size_bytes: size }, "rolled_back", by, Some(&from));
    let path = save(state_dir, stage, &state)?;
    Ok(Some((path, from, to)))
}

fn record(state: &mut State, version: Version<'_>, action: &str, by: Option<&str>, replaced: Option<&str>) {
    state.history.push(Entry {
        sha256: version.sha256.to_string(),
        size_bytes: version.size_bytes,
        action: action.to_string(),
        at: enrichd_engine::rfc3339(std::time::SystemTime::now()),
        by: by.map(str::to_string),
        replaced: replaced.map(str::to_string),
    });
    if state.history.len() > KEEP {
        state.history.drain(..state.history.len() - KEEP);
    }
}

/// Deletes the uploaded modules that are no longer of use: a shadow
/// replaced or removed before it was promoted. Kept: what the stack or the
/// history names, and `shadow` (the one running now). Without this, every
/// upload stayed in the state directory for good.
pub(crate) fn prune_unused(state_dir: &Path, stage: &str, shadow: Option<&str>) {
    match load(state_dir, stage) {
        Ok(state) => prune(state_dir, stage, &state, shadow),
        // Unreadable: what it names is unknown, so nothing is deleted.
        Err(e) => tracing::warn!(stage, error = %e, "rule versions unreadable; nothing pruned"),
    }
}

/// Deletes kept modules neither the stack, the history nor `shadow` names.
fn prune(state_dir: &Path, stage: &str, state: &State, shadow: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir(state_dir, stage)) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(sha) = name.strip_suffix(".wasm.sig").or_else(|| name.strip_suffix(".wasm")) else { continue };
        let named =
            state.stack.iter().chain(state.history.iter().map(|e| &e.sha256)).any(|s| s == sha) || shadow == Some(sha);
        if !named {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(sha: &str) -> Version<'_> {
        Version { sha256: sha, size_bytes: 1 }
    }

    #[test]
    fn promote_rollback_and_a_new_configured_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(active(d, "risk", "c0"), None);
        for sha in ["c0", "n1", "n2"] {
            store(d, "risk", sha, sha.as_bytes(), None).unwrap();
        }
        promote(d, "risk", "c0", v("c0"), v("n1"), Some("k1"), || Ok(())).unwrap();
        assert_eq!(active(d, "risk", "c0"), Some(version_path(d, "risk", "n1")));
        promote(d, "risk", "c0", v("n1"), v("n2"), Some("k2"), || Ok(())).unwrap();
        assert_eq!(active(d, "risk", "c0"), Some(version_path(d, "risk", "n2")));
        let (_, from, to) = rollback(d, "risk", "c0", Some("k3")).unwrap().unwrap();
        assert_eq!((from.as_str(), to.as_str()), ("n2", "n1"));
        rollback(d, "risk", "c0", None).unwrap().unwrap();
        assert_eq!(active(d, "risk", "c0"), None, "back to the configured file");
        assert!(rollback(d, "risk", "c0", None).unwrap().is_none(), "nothing left");
        let state = load(d, "risk").unwrap();
        let actions: Vec<&str> = state.history.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["promoted", "promoted", "rolled_back", "rolled_back"]);
        assert_eq!(state.history[1].by.as_deref(), Some("k2"));

        // Promoted again, then the operator deploys another configured file.
        promote(d, "risk", "c0", v("c0"), v("n2"), None, || Ok(())).unwrap();
        assert_eq!(active(d, "risk", "c9"), None, "a newer configured module wins");
        assert!(rollback(d, "risk", "c9", None).unwrap().is_none());
    }

    #[test]
    fn history_and_files_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        store(d, "r", "c0", b"c", None).unwrap();
        let mut live = "c0".to_string();
        for i in 0..(KEEP + 5) {
            let sha = format!("n{i}");
            store(d, "r", &sha, b"x", Some(b"sig")).unwrap();
            promote(d, "r", "c0", v(&live), v(&sha), None, || Ok(())).unwrap();
            live = sha;
        }
        let state = load(d, "r").unwrap();
        assert_eq!((state.stack.len(), state.history.len()), (KEEP, KEEP));
        let files = std::fs::read_dir(super::dir(d, "r")).unwrap().count();
        assert!(files <= 2 * (KEEP + 1) + 1, "{files} files");
        assert!(!version_path(d, "r", "n0").exists(), "pruned");
        assert_eq!(state.stack[0], "c0", "the configured module stays the base");
        // Rolling all the way back: every step names the version loaded,
        // and the last one is the configured module (not a pruned one).
        let mut restored = Vec::new();
        while let Some((_, _, to)) = rollback(d, "r", "c0", None).unwrap() {
            restored.push(to.clone());
            let loaded = active(d, "r", "c0");
            if to == "c0" {
                assert_eq!(loaded, None, "the configured file is loaded");
            } else {
                assert_eq!(loaded, Some(version_path(d, "r", &to)));
            }
        }
        assert_eq!(restored.last().map(String::as_str), Some("c0"));
        assert_eq!(restored.len(), KEEP - 1);
    }

    #[test]
    fn uploads_no_longer_of_use_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sha in ["base", "live"] {
            store(d, "r", sha, sha.as_bytes(), Some(b"sig")).unwrap();
        }
        promote(d, "r", "base", v("base"), v("live"), None, || Ok(())).unwrap();
        // Shadows uploaded since, one after the other.
        for sha in ["old", "replaced", "running"] {
            store(d, "r", sha, sha.as_bytes(), Some(b"sig")).unwrap();
        }
        prune_unused(d, "r", Some("running"));
        for (sha, kept) in [("base", true), ("live", true), ("running", true), ("old", false), ("replaced", false)] {
            assert_eq!(version_path(d, "r", sha).exists(), kept, "{sha}");
            let sig = crate::signature::signature_path(&version_path(d, "r", sha));
            assert_eq!(sig.exists(), kept, "{sha}'s signature");
        }
        prune_unused(d, "r", None);
        assert!(!version_path(d, "r", "running").exists(), "removed, so no longer kept");
        assert!(version_path(d, "r", "live").exists());
    }

    #[test]
    fn a_kept_version_keeps_its_signature() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let path = store(d, "r", "aa", b"module", Some(b"good")).unwrap();
        store(d, "r", "aa", b"module", Some(b"forged")).unwrap();
        assert_eq!(std::fs::read(crate::signature::signature_path(&path)).unwrap(), b"good");
    }

    #[test]
    fn stage_names_become_safe_directories() {
        let d = Path::new("/s");
        assert_eq!(dir(d, "risk"), Path::new("/s/rules/risk"));
        let odd = dir(d, "../x y");
        assert!(odd.starts_with("/s/rules") && !odd.to_string_lossy().contains(".."), "{odd:?}");
        assert_ne!(dir(d, "a b"), dir(d, "a_b"));
    }
}
