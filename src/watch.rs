//! File watching for hot reload.
//!
//! Directories are watched, not files: the editing patterns real tools use
//! (rename over, delete then create, editors' swap files) replace the
//! file's inode, and a watch on the old inode would go quiet. A watched
//! directory can be replaced too (a rename, a swapped symlink: see
//! [`Watches`]), so each watch remembers the inode it is on and is placed
//! again when the path leads elsewhere. Events are
//! debounced (a quiet period after the last one, capped so a file written
//! continuously still reloads), then handed to `reload::reload_changed`,
//! which reloads only the stages they concern. The watch set is refreshed
//! after every reload, since the chain and its files may have changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::reload;
use crate::service::AppState;

/// Longest a burst of events may postpone a reload.
const MAX_DELAY: Duration = Duration::from_millis(1000);

/// Starts the watcher thread. Failing to watch is logged and shown in the
/// reload status; the service keeps running (SIGHUP and `POST /v1/reload`
/// still work).
pub(crate) fn spawn(state: Arc<AppState>) {
    let (tx, rx) = mpsc::channel();
    let watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch files; use SIGHUP or POST /v1/reload to reload");
            state.reload.update(|s| s.watch_error = Some(e.to_string()));
            return;
        }
    };
    // The watches are in place before this returns (before the server says
    // it listens): a change made right after start must not be missed
    // while the watcher thread, at its lower priority, waits for a core.
    let mut watched = Watches::default();
    sync_watches(&state, &mut watcher, &mut watched);
    let spawned =
        std::thread::Builder::new().name("enrichd-watch".into()).spawn(move || run(state, watcher, watched, rx));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the file watcher thread");
    }
}

fn run(
    state: Arc<AppState>,
    mut watcher: RecommendedWatcher,
    mut watched: Watches,
    rx: mpsc::Receiver<notify::Result<Event>>,
) {
    lower_priority();
    let debounce = Duration::from_millis(state.config.reload.debounce_ms);
    while let Ok(first) = rx.recv() {
        let mut changed = BTreeSet::new();
        collect(first, &mut changed);
        let deadline = Instant::now() + MAX_DELAY.max(debounce);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match rx.recv_timeout(debounce.min(left)) {
                Ok(event) => collect(event, &mut changed),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        // Before the reload reads anything: a replacement made while it
        // runs is then a difference the next round sees.
        watched.resolve(&mut changed);
        if changed.is_empty() {
            continue;
        }
        let changed: Vec<PathBuf> = changed.into_iter().collect();
        tracing::debug!(paths = ?changed, "files changed");
        let report = reload::reload_changed(&state, &changed);
        tracing::debug!(%report, "reload after file change");
        sync_watches(&state, &mut watcher, &mut watched);
    }
}

/// Adds an event's paths, skipping pure reads (our own reloads read the
/// files and must not trigger more reloads).
fn collect(event: notify::Result<Event>, into: &mut BTreeSet<PathBuf>) {
    let event = match event {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "file watch error");
            return;
        }
    };
    let read_only = matches!(
        event.kind,
        EventKind::Access(AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read))
    );
    if !read_only {
        into.extend(event.paths);
    }
}

/// What a path is now: the file or directory its symlinks lead to, by
/// device and inode; `None` when it does not exist (or, off Unix, always).
type Identity = Option<(u64, u64)>;

fn identity(path: &Path) -> Identity {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// A path a reload depends on, as it was when last looked at.
#[derive(Clone, PartialEq, Eq)]
struct Target {
    /// Where its symlinks lead (`None`: it does not resolve).
    real: Option<PathBuf>,
    identity: Identity,
}

impl Target {
    fn of(path: &Path) -> Target {
        Target { real: std::fs::canonicalize(path).ok(), identity: identity(path) }
    }
}

/// The watcher's state. Watches are kept by path *and* by the identity of
/// the directory they were placed on, because inotify watches an inode, not
/// a path: a watched directory replaced by a rename, or reached through a
/// symlink that is swapped (Kubernetes mounts a ConfigMap as `..data`, a
/// symlink to a timestamped directory, swapped atomically on every update)
/// leaves the watch on the old inode, and a watch kept by path alone was
/// never placed again: every later change went unnoticed.
#[derive(Default)]
struct Watches {
    /// Watched directories, with the identity each had when watched.
    dirs: BTreeMap<PathBuf, Identity>,
    /// The paths reloads depend on (configuration, chain file, what the
    /// stages watch), with where they led when last looked at. A swap of a
    /// symlink on their way (`..data`) makes events only about the symlink,
    /// which names no stage's path: a changed target is what says the
    /// stage's files changed.
    targets: BTreeMap<PathBuf, Target>,
}

impl Watches {
    /// Adds to `changed` the paths of interest whose target moved since
    /// last looked at, and those a change to their resolved location (a
    /// directory watched through a symlink, or beside its target) concerns;
    /// records where each leads now.
    fn resolve(&mut self, changed: &mut BTreeSet<PathBuf>) {
        let events: Vec<PathBuf> = changed.iter().cloned().collect();
        for (path, last) in self.targets.iter_mut() {
            let now = Target::of(path);
            let moved = now != *last;
            let concerned =
                now.real.as_deref().is_some_and(|real| events.iter().any(|e| enrichd_engine::live::affects(e, real)));
            if moved || concerned {
                changed.insert(path.clone());
            }
            *last = now;
        }
    }
}

/// The paths reloads depend on: the configuration file (and its chain
/// file), and every path a stage reloads on.
fn targets(state: &AppState) -> BTreeSet<PathBuf> {
    let mut paths = vec![state.config.path().to_path_buf()];
    paths.extend(state.config.engine.chain_file.as_ref().map(|f| f.path.clone()));
    paths.extend(state.engine.chain().watched_paths().into_iter().map(|(p, _)| p));
    paths.iter().map(|p| enrichd_engine::live::absolute(p)).collect()
}

/// The directories to watch, each with its identity now: for every target,
/// its directory (and the target itself if it is one), then the same for
/// where its symlinks lead (an edit there names no path of ours, and a
/// symlink outside the directory would otherwise hide it). A directory
/// reached twice (through a symlink and as itself) is watched once: inotify
/// has one watch per inode.
fn wanted_dirs(targets: &BTreeSet<PathBuf>) -> BTreeMap<PathBuf, Identity> {
    let mut candidates = Vec::new();
    for path in targets {
        let real = std::fs::canonicalize(path).ok();
        for p in std::iter::once(path.clone()).chain(real) {
            if p.is_dir() {
                candidates.push(p.clone());
            }
            candidates.extend(p.parent().filter(|p| p.is_dir()).map(Path::to_path_buf));
        }
    }
    let mut dirs = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for dir in candidates {
        let id = identity(&dir);
        if dirs.contains_key(&dir) || id.is_some_and(|id| !seen.insert(id)) {
            continue;
        }
        dirs.insert(dir, id);
    }
    dirs
}

fn sync_watches(state: &AppState, watcher: &mut RecommendedWatcher, watched: &mut Watches) {
    let targets = targets(state);
    watched.targets.retain(|p, _| targets.contains(p));
    for path in targets {
        // A new target is taken as it is now: the reload that added it
        // loaded it as it is now.
        watched.targets.entry(path).or_insert_with_key(|p| Target::of(p));
    }
    let wanted = wanted_dirs(&watched.targets.keys().cloned().collect());
    // Gone, or no longer the directory the watch was placed on: the watch
    // is on an inode that is not there any more (or soon will not be).
    let stale: Vec<PathBuf> =
        watched.dirs.iter().filter(|(dir, id)| wanted.get(*dir) != Some(*id)).map(|(dir, _)| dir.clone()).collect();
    for dir in stale {
        let _ = watcher.unwatch(&dir);
        watched.dirs.remove(&dir);
    }
    for (dir, id) in wanted {
        if watched.dirs.contains_key(&dir) {
            continue;
        }
        match watcher.watch(Path::new(&dir), RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.dirs.insert(dir, id);
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory"),
        }
    }
    let active = !watched.dirs.is_empty();
    state.reload.update(|s| s.watching = active);
}

/// Reloads from file changes run on this thread: give it a lower CPU
/// priority than the ingest threads, so rebuilding a million indicators
/// yields to requests instead of delaying them (Linux: the nice value of
/// this thread only).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the current thread's id.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, RELOAD_NICE)
        };
        if rc != 0 {
            tracing::debug!("could not lower the reload thread's priority");
        }
    }
}

/// Nice value of the watcher thread (0 is the default, 19 the lowest).
#[cfg(target_os = "linux")]
const RELOAD_NICE: libc::c_int = 5;
