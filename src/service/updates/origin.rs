//! What each staged file was: kept by hash so a stage's loaded source can
//! be traced to the update (and revision) that put it there, and an
//! instance that refused a newer version still names the one it serves.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What one staged file was, as its updater described it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Origin {
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// The updater's name for this version (its `etag`, else its digest).
    pub revision: Option<String>,
    /// The updater's words (e.g. `nats object enrichd/risk.wasm revision
    /// ... (N bytes)`).
    pub detail: String,
    /// Unix seconds it was put in place.
    pub at: u64,
}

/// How many staged files' origins an entry remembers: enough for the live
/// one plus several refused or rolled-back versions, small in the state file.
const ORIGINS_KEPT: usize = 8;

/// Adds `origin` as the newest (once per hash), forgetting the oldest.
pub(super) fn remember(origins: &mut Vec<Origin>, origin: Origin) {
    origins.retain(|o| o.sha256 != origin.sha256);
    origins.push(origin);
    let excess = origins.len().saturating_sub(ORIGINS_KEPT);
    origins.drain(..excess);
}

/// Hex SHA-256, as stages report their sources.
/// The SHA-256 of a file, read in a stream (staged databases may be
/// up to a GiB).
pub(super) fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(enrichd_engine::to_hex(&hasher.finalize()))
}

/// The same file, by path or (both existing) by canonical path.
pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_kept_once_per_hash_newest_last_and_bounded() {
        let mut origins = Vec::new();
        let origin = |sha: &str, at| Origin { sha256: sha.into(), at, ..Origin::default() };
        for i in 0..10 {
            remember(&mut origins, origin(&format!("h{i}"), i));
        }
        remember(&mut origins, origin("h5", 99));
        assert_eq!(origins.len(), ORIGINS_KEPT);
        assert_eq!(origins.last().map(|o| (o.sha256.as_str(), o.at)), Some(("h5", 99)));
        assert_eq!(origins.iter().filter(|o| o.sha256 == "h5").count(), 1);
        assert!(!origins.iter().any(|o| o.sha256 == "h0" || o.sha256 == "h1"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("abc"), b"abc").unwrap();
        assert_eq!(
            sha256_file(&dir.path().join("abc")).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
