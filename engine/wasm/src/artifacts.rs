//! Precompiled modules kept in `<state dir>/wasm-cache`, so that a restart
//! does not recompile.
//!
//! # Why the checks
//!
//! An artifact is native code: wasmtime runs what it deserializes without
//! verifying it (`Module::deserialize_*` is `unsafe` for that reason), so
//! whoever can put a file under an artifact's name runs code in the server,
//! past `require_signature`. The name binds it to a module's content hash,
//! not its content to anything. So an artifact is only used if nobody but
//! this user could have written it: the directory and the file are owned by
//! our effective uid and writable by nobody else, the file is a regular
//! file with one link (not a symlink or a hard link to another artifact),
//! and it is read through the descriptor that was checked. The directory is
//! made 0700 and the files 0600. A directory others could write is locked
//! down and emptied; one owned by someone else is not used at all. A stage
//! that checks signatures does not use this cache (see `runtime::compile`).

use std::fs::{DirBuilder, File, Metadata, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::anyhow;
use wasmtime::{Engine, Module};

/// The cache's directory in the state directory.
pub(crate) fn cache_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("wasm-cache")
}

/// `<content sha256>-<engine compatibility hash>.cwasm`: an artifact is
/// only ever loaded by an engine that could have produced it.
pub(crate) fn artifact_name(sha256: &[u8; 32], engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{}-{:016x}.cwasm", enrichd_engine::to_hex(sha256), h.finish())
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Ours, and writable by no one else.
fn private(meta: &Metadata) -> bool {
    meta.uid() == euid() && meta.mode() & 0o022 == 0
}

/// An artifact or directory refused: a warning the first time (it may be
/// tampering, or a state directory restored with other owners), then
/// quietly, since every load would repeat it.
fn refuse(path: &Path, why: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if WARNED.swap(true, Ordering::Relaxed) {
        tracing::debug!(path = %path.display(), why, "precompiled module cache entry not trusted; compiling");
    } else {
        tracing::warn!(
            path = %path.display(), why,
            "precompiled module cache entry not trusted; compiling instead (further ones are logged at debug)"
        );
    }
}

/// Whether `dir` can hold artifacts we trust, making it (0700) if `create`.
/// A directory of ours that others could write is made private and its
/// artifacts removed: any could have been planted before.
fn usable_dir(dir: &Path, create: bool) -> bool {
    let meta = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            if let Err(e) = DirBuilder::new().recursive(true).mode(0o700).create(dir) {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot make the precompiled module cache");
                return false;
            }
            match std::fs::symlink_metadata(dir) {
                Ok(meta) => meta,
                Err(_) => return false,
            }
        }
        Err(_) => return false,
        Ok(meta) => meta,
    };
    if !meta.is_dir() || meta.uid() != euid() {
        refuse(dir, "the cache directory is not a directory owned by this user");
        return false;
    }
    if meta.mode() & 0o077 != 0 {
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            refuse(dir, "the cache directory is open to others and cannot be made private");
            tracing::debug!(dir = %dir.display(), error = %e, "chmod 0700");
            return false;
        }
        if meta.mode() & 0o022 != 0 {
            // Now that no one else can add entries, drop what is there.
            refuse(dir, "the cache directory was writable by others; emptied");
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    true
}

/// The artifact `name` in `dir`, if present and trusted (see the module
/// documentation). An artifact wasmtime refuses is removed.
pub(crate) fn load(dir: &Path, name: &str, engine: &Engine) -> Option<Module> {
    let path = dir.join(name);
    if !path.exists() || !usable_dir(dir, false) {
        return None;
    }
    // No symlink followed; the checks and the read use this descriptor,
    // so the file cannot be swapped between them.
    let file = match File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
        Ok(file) => file,
        Err(e) => {
            refuse(&path, &format!("cannot be opened without following a link: {e}"));
            return None;
        }
    };
    match file.metadata() {
        Ok(meta) if meta.is_file() && meta.nlink() == 1 && private(&meta) => {}
        _ => {
            refuse(&path, "not a regular, singly linked file owned by this user and writable only by it");
            return None;
        }
    }
    // SAFETY: `deserialize_open_file` trusts the artifact to be wasmtime's
    // own output. It is ours: the file and its directory belong to this
    // user and no one else can write them (checked above, on the open
    // descriptor), it was written whole by `store` (temporary file, then
    // rename), under a name binding it to the module's content hash and to
    // this engine's configuration; wasmtime also checks the version and
    // settings header.
    match unsafe { Module::deserialize_open_file(engine, file) } {
        Ok(module) => {
            // Recently used artifacts are the last evicted (see `evict`).
            touch(&path);
            Some(module)
        }
        Err(e) => {
            tracing::warn!(artifact = %path.display(), error = %e, "ignoring an unusable precompiled module");
            let _ = std::fs::remove_file(&path);
            None
        }
    }
}

/// Writes `module` as the artifact `name` in `dir` (0600, in a 0700
/// directory), replacing any untrusted file of that name. Best effort: a
/// cache that cannot be written only costs a compilation.
pub(crate) fn store(dir: &Path, name: &str, module: &Module) {
    if !usable_dir(dir, true) {
        return;
    }
    let path = dir.join(name);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> anyhow::Result<()> {
        let bytes = module.serialize().map_err(|e| anyhow!("{e:#}"))?;
        // A leftover of an earlier process with our pid.
        let _ = std::fs::remove_file(&tmp);
        let mut file =
            OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&tmp)?;
        file.write_all(&bytes)?;
        drop(file);
        std::fs::rename(&tmp, &path)?;
        evict(dir, &path, MAX_CACHED_ARTIFACTS, MAX_CACHE_BYTES)?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!(artifact = %path.display(), error = %e, "precompiled module not cached");
    }
}

/// Most precompiled artifacts kept in `wasm-cache`: every distinct module
/// content (each edit of a rule) leaves one, so without a bound the
/// directory grows for as long as the server's state directory lives.
const MAX_CACHED_ARTIFACTS: usize = 32;
/// Most bytes of precompiled artifacts kept (a compiled rule is typically
/// a few hundred KiB to a few MiB).
const MAX_CACHE_BYTES: u64 = 256 << 20;
/// Age after which a temporary file is a leftover of a process that died
/// writing it (a write takes milliseconds), not one being written.
const STALE_TMP: Duration = Duration::from_secs(600);

/// Marks an artifact as used now (its modification time), best effort.
fn touch(path: &Path) {
    let now = std::time::SystemTime::now();
    if let Err(e) = std::fs::File::options().append(true).open(path).and_then(|f| f.set_modified(now)) {
        tracing::debug!(artifact = %path.display(), error = %e, "cannot mark a precompiled module as used");
    }
}

/// Keeps the cache directory within `max_files` artifacts and `max_bytes`:
/// the least recently used (oldest modification time: written or loaded)
/// go first; `keep`, just written, always stays. Only `.cwasm` files are
/// counted or removed, and `.tmp<pid>` files left by a writer that died.
fn evict(dir: &Path, keep: &Path, max_files: usize, max_bytes: u64) -> std::io::Result<()> {
    let mut artifacts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        let used = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext.strip_prefix("tmp").is_some_and(|pid| pid.parse::<u32>().is_ok()) {
            if used.elapsed().is_ok_and(|age| age > STALE_TMP) {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        if ext != "cwasm" || path == keep {
            continue;
        }
        artifacts.push((used, meta.len(), path));
    }
    // Newest first; what no longer fits after the newest is removed.
    artifacts.sort_by_key(|a| std::cmp::Reverse(a.0));
    let mut files = 1;
    let mut bytes = std::fs::metadata(keep).map_or(0, |m| m.len());
    for (_, len, path) in artifacts {
        files += 1;
        bytes += len;
        if files > max_files || bytes > max_bytes {
            tracing::debug!(artifact = %path.display(), "evicting a precompiled module from the cache");
            let _ = std::fs::remove_file(&path);
            bytes -= len;
            files -= 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    use super::*;

    fn artifact(dir: &Path, name: &str, len: usize, age_s: u64) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; len]).unwrap();
        let file = std::fs::File::options().append(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(age_s)).unwrap();
        path
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn the_artifact_cache_keeps_the_most_recently_used_within_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        artifact(d, "a.cwasm", 100, 50);
        artifact(d, "b.cwasm", 100, 40);
        let c = artifact(d, "c.cwasm", 100, 30);
        artifact(d, "d.cwasm", 100, 20);
        artifact(d, "notes.txt", 10_000, 60);
        // Loading `c` makes it the most recently used.
        touch(&c);
        let new = artifact(d, "new.cwasm", 100, 0);
        // By count: the new one and the two most recent others.
        evict(d, &new, 3, u64::MAX).unwrap();
        assert_eq!(names(d), ["c.cwasm", "d.cwasm", "new.cwasm", "notes.txt"]);
        // By bytes: 250 leaves room for the new one and one more.
        evict(d, &new, 10, 250).unwrap();
        assert_eq!(names(d), ["c.cwasm", "new.cwasm", "notes.txt"]);
        // The artifact just written stays even when it alone is too big.
        evict(d, &new, 1, 10).unwrap();
        assert_eq!(names(d), ["new.cwasm", "notes.txt"]);
        // A temporary file left by a writer that died goes; one being
        // written (recent) stays.
        artifact(d, "x.tmp4242", 100, 3600);
        artifact(d, "y.tmp4243", 100, 1);
        evict(d, &new, 10, u64::MAX).unwrap();
        assert_eq!(names(d), ["new.cwasm", "notes.txt", "y.tmp4243"]);
    }
}
