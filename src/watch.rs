//! File watching for hot reload.
//!
//! Directories are watched, not files: the editing patterns real tools use
//! (rename over, delete then create, editors' swap files) replace the
//! file's inode, and a watch on the old inode would go quiet. Events are
//! debounced (a quiet period after the last one, capped so a file written
//! continuously still reloads), then handed to `reload::reload_changed`,
//! which reloads only the stages they concern. The watch set is refreshed
//! after every reload, since the chain and its files may have changed.

use std::collections::BTreeSet;
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
    let mut watched = BTreeSet::new();
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
    mut watched: BTreeSet<PathBuf>,
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

/// The directories to watch: the configuration file's (and its chain
/// file's), and for every path
/// a stage reloads on, its directory (and the path itself if it is one).
fn wanted_dirs(state: &AppState) -> BTreeSet<PathBuf> {
    let mut paths = vec![state.config.path().to_path_buf()];
    paths.extend(state.config.engine.chain_file.as_ref().map(|f| f.path.clone()));
    paths.extend(state.engine.chain().watched_paths().into_iter().map(|(p, _)| p));
    let mut dirs = BTreeSet::new();
    for path in paths {
        let path = enrichd_engine::live::absolute(&path);
        if path.is_dir() {
            dirs.insert(path.clone());
        }
        if let Some(parent) = path.parent().filter(|p| p.is_dir()) {
            dirs.insert(parent.to_path_buf());
        }
    }
    dirs
}

fn sync_watches(state: &AppState, watcher: &mut RecommendedWatcher, watched: &mut BTreeSet<PathBuf>) {
    let wanted = wanted_dirs(state);
    for gone in watched.difference(&wanted).cloned().collect::<Vec<_>>() {
        let _ = watcher.unwatch(&gone);
        watched.remove(&gone);
    }
    for dir in wanted.difference(&watched.clone()) {
        match watcher.watch(Path::new(dir), RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(dir.clone());
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory"),
        }
    }
    let active = !watched.is_empty();
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
