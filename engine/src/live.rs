//! The live chain and its reloads.
//!
//! [`Engine`] holds the current [`Chain`] behind an `ArcSwap`. A reload
//! builds new stages off the hot path (the caller's thread: the file
//! watcher, `POST /v1/reload`, SIGHUP), validates them, and swaps in a new
//! chain that reuses every untouched stage. Batches already running keep
//! the `Arc<Chain>` they started with, so no batch ever sees two versions.
//!
//! Keep-last-good: a rebuilt stage replaces the live one only if it is at
//! least as healthy (see [`Health`]). A broken, truncated or vanished file
//! is refused; the refusal is logged, counted and shown in the stage's
//! report, and the next good write is picked up by the next reload.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::chain::{build_stage, Chain, KeyTables, Stage};
use crate::entry::{ChainEntryConfig, ConfigError};
use crate::plugin::{PluginState, PluginStatus};
use crate::registry::Registry;

/// The live chain, swappable without stopping traffic.
pub struct Engine {
    chain: ArcSwap<Chain>,
    registry: Registry,
    /// Reloads are rare and must not interleave (two builds of one stage
    /// racing to be swapped in); the hot path never takes this lock.
    reload_lock: Mutex<()>,
}

/// A chain built from configuration entries, not yet live (see
/// [`Engine::prepare_entries`]).
pub struct PreparedChain {
    /// The live chain it was built from.
    base: Arc<Chain>,
    stages: Vec<Arc<Stage>>,
    tables: KeyTables,
    results: Vec<StageReload>,
}

/// What a reload did, stage by stage.
#[derive(Debug, Serialize)]
pub struct ReloadReport {
    /// The chain generation live after the reload.
    pub chain_generation: u64,
    /// Whether a new chain was swapped in.
    pub swapped: bool,
    pub stages: Vec<StageReload>,
}

#[derive(Debug, Serialize)]
pub struct StageReload {
    pub name: String,
    pub outcome: Outcome,
    /// The stage's live generation after the reload.
    pub generation: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Rebuilt and swapped in.
    Reloaded,
    /// Rebuilt, same content as live: nothing swapped.
    Unchanged,
    /// Rebuilt but refused; the previous generation stays live.
    Rejected,
    /// Rebuilt and healthy, but held back by the live stage's plugin (e.g.
    /// an indicator file that became empty); the previous generation stays.
    HeldBack,
    /// A new chain entry (configuration change).
    Added,
    /// Kept as is by a configuration change.
    Kept,
}

/// How usable a stage's data is; a reload may not make it worse.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Health {
    Disabled,
    /// Missing or unloadable data.
    Absent,
    /// Loaded, with problems (e.g. one of several files unreadable).
    Degraded,
    Clean,
}

fn health(s: &PluginStatus) -> Health {
    match (s.state, &s.error) {
        (PluginState::Disabled, _) => Health::Disabled,
        (PluginState::Loaded, None) => Health::Clean,
        (PluginState::Loaded, Some(_)) => Health::Degraded,
        _ => Health::Absent,
    }
}

fn same_content(a: &PluginStatus, b: &PluginStatus) -> bool {
    a.state == b.state
        && a.version == b.version
        && a.sources.len() == b.sources.len()
        && a.sources.iter().zip(&b.sources).all(|(x, y)| x.path == y.path && x.sha256 == y.sha256)
}

/// True when every file `enricher` watches is, byte for byte, what it
/// loaded (the size and SHA-256 its status reports): rebuilding it from
/// those files would give the live stage again.
///
/// Why: one write is often seen twice. An updater that publishes a file
/// reloads its stage, then the file watcher reports the same write; an
/// editor may save twice. Rebuilding a full-size GeoIP database costs
/// seconds (snapshot copy, validation, tables) only to find nothing new.
/// A size that differs answers without reading the file; a watched path
/// the status does not describe (a directory, a signature) means "build".
fn files_as_loaded(enricher: &dyn crate::plugin::Enricher) -> bool {
    use sha2::{Digest, Sha256};
    let status = enricher.status();
    let watched = enricher.watch_paths();
    !watched.is_empty()
        && watched.iter().all(|path| {
            let Some(loaded) = status.sources.iter().find(|s| s.path == *path) else { return false };
            let (Some(sha256), Some(size)) = (loaded.sha256.as_deref(), loaded.size_bytes) else { return false };
            match std::fs::metadata(path) {
                Ok(m) if m.is_file() && m.len() == size => {}
                _ => return false,
            }
            std::fs::read(path).is_ok_and(|bytes| crate::plugin::to_hex(&Sha256::digest(&bytes)) == sha256)
        })
}

impl Engine {
    pub fn new(chain: Chain, registry: Registry) -> Self {
        Engine { chain: ArcSwap::from_pointee(chain), registry, reload_lock: Mutex::new(()) }
    }

    /// The current chain. Hold the returned `Arc` for the whole batch.
    pub fn chain(&self) -> Arc<Chain> {
        self.chain.load_full()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Reloads the stages that watch any of `changed` (files, or
    /// directories they live in).
    pub fn reload_paths(&self, changed: &[PathBuf]) -> ReloadReport {
        let changed: Vec<PathBuf> = changed.iter().map(|p| absolute(p)).collect();
        let wanted = |stage: &Stage| {
            let Some(e) = &stage.enricher else { return false };
            e.watch_paths().iter().map(|w| absolute(w)).any(|w| changed.iter().any(|c| affects(c, &w)))
        };
        self.reload_where(wanted, true)
    }

    /// Reloads every enabled stage (`POST /v1/reload`, SIGHUP): each is
    /// rebuilt, even from the files it runs (an explicit reload).
    pub fn reload_all(&self) -> ReloadReport {
        self.reload_where(|stage| stage.enricher.is_some(), false)
    }

    /// `skip_as_loaded`: a stage whose files are what it loaded is
    /// reported unchanged without a rebuild ([`files_as_loaded`]).
    fn reload_where(&self, wanted: impl Fn(&Stage) -> bool, skip_as_loaded: bool) -> ReloadReport {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.chain.load_full();
        let mut tables = KeyTables::of(&current);
        let mut stages = current.stages.clone();
        let mut results = Vec::new();
        let mut swapped = false;
        for i in 0..stages.len() {
            // The stages before it, as this chain will have them (those
            // rebuilt already included): what the stage reads from.
            let (earlier, rest) = stages.split_at_mut(i);
            let slot = &mut rest[0];
            if !wanted(slot) {
                continue;
            }
            let as_loaded = skip_as_loaded && slot.enricher.as_deref().is_some_and(files_as_loaded);
            let rebuilt = if as_loaded {
                // As for a rebuild with the same content (below): an
                // earlier refusal no longer describes the files.
                *slot.history.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(None)
            } else {
                self.rebuild(slot, earlier, &current, &mut tables)
            };
            let (outcome, error) = match rebuilt {
                Ok(Some(stage)) => {
                    *slot = Arc::new(stage);
                    swapped = true;
                    (Outcome::Reloaded, None)
                }
                Ok(None) => (Outcome::Unchanged, None),
                Err((outcome, e)) => (outcome, Some(e)),
            };
            results.push(StageReload { name: slot.name.clone(), outcome, generation: slot.generation, error });
        }
        let generation = if swapped { self.swap(stages, tables, &current) } else { current.generation };
        ReloadReport { chain_generation: generation, swapped, stages: results }
    }

    /// Builds the next generation of `stage`. `Ok(None)`: same content as
    /// live; `Err`: refused or held back (recorded in the stage's history).
    fn rebuild(
        &self,
        stage: &Stage,
        earlier: &[Arc<Stage>],
        chain: &Chain,
        tables: &mut KeyTables,
    ) -> Result<Option<Stage>, (Outcome, String)> {
        let history = Arc::clone(&stage.history);
        let started = std::time::Instant::now();
        let mut trial = tables.clone();
        let generation = stage.generation + 1;
        let built = build_stage(&stage.entry, &self.registry, &chain.env, &mut trial, generation, history, earlier);
        let old = stage.status();
        let verdict = match built {
            Err(e) => Err((Outcome::Rejected, crate::limits::cap_message(e.message))),
            Ok(new) => {
                let status = new.status();
                if same_content(&old, &status) {
                    // The files are back to what is live: an earlier
                    // refusal no longer describes them.
                    *stage.history.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    return Ok(None);
                }
                if health(&status) < health(&old) {
                    let why = status.error.map(crate::limits::cap_message);
                    let why = why.unwrap_or_else(|| format!("state {:?}", status.state));
                    Err((Outcome::Rejected, format!("{why}; keeping generation {} (last good)", stage.generation)))
                } else if let Err(why) = stage.enricher.as_ref().map_or(Ok(()), |live| live.vet_successor(&status)) {
                    let why = crate::limits::cap_message(why);
                    Err((Outcome::HeldBack, format!("held back: {why}; keeping generation {}", stage.generation)))
                } else {
                    Ok(new)
                }
            }
        };
        let h = &stage.history;
        match verdict {
            Ok(new) => {
                *tables = trial;
                h.reloads.fetch_add(1, Ordering::Relaxed);
                *h.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let ms = started.elapsed().as_secs_f64() * 1e3;
                tracing::info!(stage = %stage.name, generation = new.generation, build_ms = format!("{ms:.1}"), "reloaded");
                Ok(Some(new))
            }
            Err((outcome, why)) => {
                h.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(stage = %stage.name, error = %why, "reload refused");
                *h.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some((SystemTime::now(), why.clone()));
                Err((outcome, why))
            }
        }
    }

    /// Applies changed chain entries from a reloaded configuration. Entries
    /// whose plugin, options and `enabled` are unchanged keep their live
    /// stage (data, generation, counters); the others are built anew. Any
    /// error refuses the whole change: the running chain stays.
    pub fn apply_entries(&self, entries: &[ChainEntryConfig]) -> Result<ReloadReport, ConfigError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let prepared = self.build_entries(entries)?;
        Ok(self.swap_prepared(prepared))
    }

    /// [`Engine::apply_entries`] in two steps, for a caller that must know
    /// the chain builds before it changes anything else (outputs,
    /// sources), and swap it only after: builds the changed stages
    /// without swapping anything in.
    pub fn prepare_entries(&self, entries: &[ChainEntryConfig]) -> Result<PreparedChain, ConfigError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.build_entries(entries)
    }

    /// Swaps in a chain [`Engine::prepare_entries`] built. When another
    /// reload swapped a stage in meanwhile (a watched file), the prepared
    /// chain is stale: the entries are built again from the live chain.
    pub fn commit_entries(
        &self,
        prepared: PreparedChain,
        entries: &[ChainEntryConfig],
    ) -> Result<ReloadReport, ConfigError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::ptr_eq(&prepared.base, &self.chain.load_full()) {
            return Ok(self.swap_prepared(prepared));
        }
        let prepared = self.build_entries(entries)?;
        Ok(self.swap_prepared(prepared))
    }

    /// Builds the chain `entries` describe from the live one (under
    /// `reload_lock`).
    fn build_entries(&self, entries: &[ChainEntryConfig]) -> Result<PreparedChain, ConfigError> {
        let current = self.chain.load_full();
        let mut tables = KeyTables::of(&current);
        let mut stages: Vec<Arc<Stage>> = Vec::with_capacity(entries.len());
        let mut results = Vec::new();
        for entry in entries {
            let name = entry.stage_name();
            if stages.iter().any(|s| s.name == name) {
                return Err(entry.duplicate_name(&name));
            }
            let old = current.stages.iter().find(|s| s.name == name);
            let stage = match old {
                Some(old)
                    if old.entry.plugin == entry.plugin
                        && old.entry.enabled == entry.enabled
                        && old.entry.options == entry.options =>
                {
                    results.push(StageReload { name, outcome: Outcome::Kept, generation: old.generation, error: None });
                    Arc::clone(old)
                }
                _ => {
                    let (generation, history) =
                        old.map_or((1, Arc::default()), |o| (o.generation + 1, Arc::clone(&o.history)));
                    let stage =
                        build_stage(entry, &self.registry, &current.env, &mut tables, generation, history, &stages)?;
                    let outcome = if old.is_some() { Outcome::Reloaded } else { Outcome::Added };
                    results.push(StageReload { name, outcome, generation, error: None });
                    Arc::new(stage)
                }
            };
            stages.push(stage);
        }
        Ok(PreparedChain { base: current, stages, tables, results })
    }

    /// Swaps the prepared chain in, unless it is the live one's stages
    /// (under `reload_lock`).
    fn swap_prepared(&self, prepared: PreparedChain) -> ReloadReport {
        let PreparedChain { base, stages, tables, results } = prepared;
        let same = stages.len() == base.stages.len() && stages.iter().zip(&base.stages).all(|(a, b)| Arc::ptr_eq(a, b));
        if same {
            return ReloadReport { chain_generation: base.generation, swapped: false, stages: results };
        }
        let generation = self.swap(stages, tables, &base);
        ReloadReport { chain_generation: generation, swapped: true, stages: results }
    }

    fn swap(&self, stages: Vec<Arc<Stage>>, tables: KeyTables, current: &Chain) -> u64 {
        let generation = current.generation + 1;
        let chain = Chain::assemble(stages, tables, current.env.clone(), generation);
        let chain = Arc::new(chain);
        self.chain.store(Arc::clone(&chain));
        // Only the stages this swap made live: a kept stage went live with
        // an earlier chain, and a candidate never swapped in is never told.
        let fresh = chain.stages.iter().filter(|s| !current.stages.iter().any(|c| Arc::ptr_eq(c, s)));
        for enricher in fresh.filter_map(|s| s.enricher.as_deref()) {
            enricher.went_live();
        }
        tracing::info!(generation, "chain swapped");
        generation
    }
}

/// Whether a change at `changed` concerns the watched path `watched`: the
/// path itself, a file inside a watched directory, or a directory being
/// replaced that holds the watched path.
pub fn affects(changed: &Path, watched: &Path) -> bool {
    changed == watched || changed.parent() == Some(watched) || watched.starts_with(changed)
}

/// An absolute path without touching the filesystem (a file being replaced
/// may not exist at this instant, so no canonicalization).
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
#[path = "live_tests.rs"]
mod tests;
