//! Delivery: every enriched event to every enabled output, or accounted
//! for in a dead-letter with its reason.
//!
//! The pieces, each in its own file:
//! - [`options`]: an output's settings (the runtime's keys + the kind's
//!   own), checked into an [`options::OutputSpec`];
//! - [`backlog`]: where accepted events wait — the disk [`spool`] or a
//!   bounded memory queue — and admission against its bounds;
//! - [`worker`]: the drain loop (batching, retries, dead-letter, acks);
//! - [`deadletter`], [`stats`], [`store`] (API-set settings on disk).
//!
//! This module ties them together: [`Delivery`] holds the running outputs,
//! applies a new set of settings (start, API change, hot reload) without
//! losing a queued event, admits and appends each ingested batch, and stops
//! everything at shutdown within a deadline. The core of enrichd knows no
//! concrete output: kinds come from the registry.

pub(crate) mod backlog;
mod control;
pub(crate) mod deadletter;
mod durable;
mod entry;
pub(crate) mod options;
mod reconcile;
mod retire;
pub(crate) mod settled;
pub(crate) mod spool;
pub(crate) mod stats;
pub(crate) mod store;
mod submit;
mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use enrichd_engine::output::{OutputContext, Sink};
use enrichd_engine::{Profile, Profiles, Registry};
use serde_json::Value;
use tokio::sync::{watch, Notify};

use backlog::{Backlog, Bounds, MemoryQueue};
use deadletter::DeadLetter;
use options::{Durability, OutputSpec};
use stats::{LostReason, OutputStats};

pub(crate) use control::{metrics_document, readings, replay, views};
pub(crate) use entry::Payload;
pub(crate) use submit::{submit, Admitted, Refused};

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// One output's lasting parts: its backlog, dead-letter and counters. A
/// lane outlives reconfigurations of its output (a new worker and sink
/// take over the same backlog), so nothing queued is dropped by a `PUT`.
pub(crate) struct Lane {
    pub name: String,
    pub durability: Durability,
    pub backlog: Arc<dyn Backlog>,
    pub bounds: Bounds,
    pub deadletter: DeadLetter,
    pub stats: Arc<OutputStats>,
    /// Told when a batch is appended.
    pub wake: Notify,
    /// Everything below this sequence number is delivered or dead-lettered
    /// (`ack` mode waits on it).
    pub acked: watch::Sender<u64>,
    /// Secret values of the current settings, masked in every kept text.
    secrets: Mutex<Vec<String>>,
    /// See [`enrichd_engine::output::SinkBatch::id_scope`].
    pub id_scope: u64,
    /// Events an interrupted round already settled (see [`settled`]).
    pub settled: settled::Settled,
}

impl Lane {
    pub(crate) fn mask(&self, text: &str) -> String {
        stats::mask(text, &self.secrets.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records an error (masked) as the output's last error and logs it.
    pub(crate) fn error(&self, text: impl AsRef<str>) {
        let text = self.mask(text.as_ref());
        tracing::warn!(output = %self.name, error = %text, "output");
        self.stats.set_error(text);
    }
}

/// Where a running output's settings came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Source {
    Config,
    Api,
}

/// An enabled output, as ingest sees it.
pub(crate) struct Active {
    pub lane: Arc<Lane>,
    pub profile: Option<Arc<Profile>>,
    pub ack_timeout: Duration,
}

/// An output about to run: its settings, its sink (`None`: disabled), its
/// lane and its layout.
type Fresh = (Desired, Option<Arc<dyn Sink>>, Arc<Lane>, Option<Arc<Profile>>);

/// A configured output, as readers see it.
pub(crate) struct Summary {
    pub spec: OutputSpec,
    pub source: Source,
    pub lane: Arc<Lane>,
    /// `None`: disabled.
    pub sink: Option<Arc<dyn Sink>>,
}

struct Running {
    spec: OutputSpec,
    source: Source,
    lane: Arc<Lane>,
    sink: Option<Arc<dyn Sink>>,
    stop: watch::Sender<Option<Instant>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What [`Delivery::lane_kept`] found for an output's name.
struct LaneKept {
    /// The lane the output goes on with (`None`: a new one is opened).
    kept: Option<Arc<Lane>>,
    /// The lane the name has now, if any.
    current: Option<Arc<Lane>>,
}

/// The running outputs.
pub(crate) struct Delivery {
    state_dir: PathBuf,
    base_dir: PathBuf,
    /// What ingest appends to: the enabled outputs.
    active: ArcSwap<Vec<Active>>,
    running: tokio::sync::Mutex<Vec<Running>>,
    /// What is running, for readers that must not wait (metrics, views).
    summary: ArcSwap<Vec<Summary>>,
    /// Every lane ever opened, by name (kept for the process's life).
    lanes: Mutex<BTreeMap<String, Arc<Lane>>>,
    /// Counters by name, kept across durability changes.
    counters: Mutex<BTreeMap<String, Arc<OutputStats>>>,
    /// The file's `[[output]]` entries as last loaded (start, reload).
    config_entries: Mutex<Vec<options::OutputEntry>>,
    pub store: store::SettingsStore,
    /// The runtime the workers run on, for callers on plain threads (the
    /// file watcher's reloads).
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
}

/// An output's desired settings.
pub(crate) struct Desired {
    pub spec: OutputSpec,
    pub source: Source,
}

impl Delivery {
    pub(crate) fn new(state_dir: &Path, base_dir: &Path) -> Self {
        Delivery {
            state_dir: state_dir.to_path_buf(),
            base_dir: base_dir.to_path_buf(),
            active: ArcSwap::from_pointee(Vec::new()),
            running: tokio::sync::Mutex::new(Vec::new()),
            summary: ArcSwap::from_pointee(Vec::new()),
            lanes: Mutex::new(BTreeMap::new()),
            counters: Mutex::new(BTreeMap::new()),
            config_entries: Mutex::new(Vec::new()),
            runtime: std::sync::OnceLock::new(),
            store: store::SettingsStore::new(state_dir),
        }
    }

    /// What output `name`'s sink is built with (its own state directory,
    /// created here). Relative paths of the API's settings resolve in the
    /// state directory's [`options::API_FILES_DIR`], those of `config.toml`
    /// next to the file.
    pub(crate) fn context(&self, name: &str, batch_max: usize, source: Source) -> OutputContext {
        let base_dir = match source {
            Source::Config => self.base_dir.clone(),
            Source::Api => {
                let dir = self.state_dir.join(options::API_FILES_DIR);
                std::fs::create_dir_all(&dir).ok();
                dir
            }
        };
        let ctx = OutputContext {
            name: name.to_string(),
            base_dir,
            state_dir: self.state_dir.join("output-state").join(name),
            batch_max,
            errors: Default::default(),
        };
        std::fs::create_dir_all(&ctx.state_dir).ok();
        ctx
    }

    /// Where output `name`'s sink reports errors outside its sends: its
    /// counters' last error (masked with `secrets`, the sink's own), and
    /// the log. Its counters, not its lane: they are the output's whatever
    /// lane it runs on, and exist before a new lane is opened.
    fn error_report(&self, name: &str, secrets: Vec<String>) -> enrichd_engine::output::ErrorReport {
        let stats = self.stats_of(name);
        let name = name.to_string();
        enrichd_engine::output::ErrorReport::new(move |error| {
            let text = enrichd_engine::limits::cap_message(stats::mask(&error, &secrets));
            tracing::warn!(output = %name, error = %text, "output");
            stats.set_error(text);
        })
    }

    /// Output `name`'s counters (kept for the process's life).
    fn stats_of(&self, name: &str) -> Arc<OutputStats> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).entry(name.to_string()).or_default().clone()
    }

    /// Records the runtime workers run on (called once at start).
    pub(crate) fn set_runtime(&self, handle: tokio::runtime::Handle) {
        let _ = self.runtime.set(handle);
    }

    /// The runtime workers run on, once serving.
    pub(crate) fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.get()
    }

    pub(crate) fn set_config_entries(&self, entries: Vec<options::OutputEntry>) {
        *self.config_entries.lock().unwrap_or_else(|e| e.into_inner()) = entries;
    }

    pub(crate) fn config_entries(&self) -> Vec<options::OutputEntry> {
        self.config_entries.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the file has an entry named `name` (its `name`, else `type`).
    pub(crate) fn config_entry_named(&self, name: &str) -> bool {
        self.config_entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|e| e.options.get("name").or_else(|| e.options.get("type")).and_then(Value::as_str) == Some(name))
    }

    /// The enabled outputs (a snapshot; cheap).
    pub(crate) fn active(&self) -> Arc<Vec<Active>> {
        self.active.load_full()
    }

    /// Makes `desired` the running set: unchanged outputs keep running,
    /// changed ones get a new sink and worker on the same backlog, removed
    /// ones stop (their backlog is kept for a return). Every new sink is
    /// built before anything changes, so a bad setting leaves the running
    /// set as it was (keep-last-good). The service goes through
    /// [`Delivery::reconcile`], which reads the desired set under the same
    /// lock; tests hand a set over directly.
    #[cfg(test)]
    pub(crate) async fn apply(
        &self,
        registry: &Registry,
        desired: Vec<Desired>,
        profiles: &(Profiles, Option<Arc<Profile>>),
    ) -> anyhow::Result<()> {
        let mut running = self.running.lock().await;
        self.apply_locked(&mut running, registry, desired, profiles).await
    }

    /// [`Delivery::apply`] with the running set already locked: the one
    /// serialization every change of outputs goes through.
    async fn apply_locked(
        &self,
        running: &mut Vec<Running>,
        registry: &Registry,
        desired: Vec<Desired>,
        profiles: &(Profiles, Option<Arc<Profile>>),
    ) -> anyhow::Result<()> {
        // Build what is new or changed first.
        let mut fresh: Vec<Fresh> = Vec::new();
        for d in desired {
            let name = d.spec.runtime.name.clone();
            let profile = match &d.spec.runtime.profile {
                None => profiles.1.clone(),
                Some(p) => profiles.0.get(p).map_err(|e| anyhow::anyhow!("output {name:?}: profile: {e}"))?,
            };
            let same = running.iter().find(|r| r.spec.runtime.name == name && r.spec == d.spec);
            if let Some(r) = same {
                fresh.push((d, r.sink.clone(), r.lane.clone(), profile));
                continue;
            }
            let current = running.iter().find(|r| r.spec.runtime.name == name).map(|r| &r.lane);
            let LaneKept { kept: kept_lane, current } = self.lane_kept(&d.spec, current)?;
            // The sink before a new lane: a build that fails must not
            // leave a lane of the new durability behind.
            let sink = if d.spec.runtime.enabled {
                let factory = registry.output(&d.spec.runtime.kind).context("unknown output type")?;
                let mut ctx = self.context(&name, d.spec.runtime.batch_max, d.source);
                ctx.errors = self.error_report(&name, d.spec.secrets(registry));
                let sink = factory.build(&d.spec.options, &ctx).map_err(|e| {
                    // Masked with the new secrets and the running ones.
                    let text = format!("{e:#}");
                    let text = current.as_ref().map_or(text.clone(), |lane| lane.mask(&text));
                    anyhow::anyhow!("output {name:?}: {}", stats::mask(&text, &d.spec.secrets(registry)))
                })?;
                Some(sink)
            } else {
                None
            };
            let lane = match kept_lane {
                Some(lane) => lane,
                None => self.open_lane(&d.spec)?,
            };
            fresh.push((d, sink, lane, profile));
        }
        // Every sink built and lane opened: only now are new lanes
        // registered (what views, the dead-letter calls and the shutdown
        // find by name), and the lanes take the new secrets and bounds (a
        // refused change leaves the running outputs as they were).
        {
            let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
            for (d, _, lane, _) in &fresh {
                lanes.insert(lane.name.clone(), lane.clone());
                *lane.secrets.lock().unwrap_or_else(|e| e.into_inner()) = d.spec.secrets(registry);
                lane.bounds.set(bounds_of(&d.spec));
            }
        }
        // Lanes a change of durability replaces: what ingest appended to
        // them meanwhile is handed over once the new set is live.
        let replaced: Vec<(Arc<Lane>, Arc<Lane>)> = running
            .iter()
            .filter_map(|r| {
                let (_, _, lane, _) = fresh.iter().find(|(d, ..)| d.spec.runtime.name == r.spec.runtime.name)?;
                (!Arc::ptr_eq(lane, &r.lane)).then(|| (r.lane.clone(), lane.clone()))
            })
            .collect();
        // Stop what is removed or changed, then start the new set.
        let old: Vec<Running> = std::mem::take(running);
        let mut kept = Vec::new();
        for r in old {
            let stays = fresh.iter().any(|(d, _, _, _)| d.spec == r.spec && d.source == r.source);
            if stays {
                kept.push(r);
            } else {
                stop_running(r, Instant::now()).await;
            }
        }
        let mut active = Vec::new();
        for (d, sink, lane, profile) in fresh {
            let r = match kept.iter().position(|r| r.spec == d.spec) {
                Some(i) => kept.swap_remove(i),
                None => start(d, sink, lane),
            };
            if r.spec.runtime.enabled {
                active.push(Active {
                    lane: r.lane.clone(),
                    profile,
                    ack_timeout: Duration::from_millis(r.spec.runtime.ack_mode_timeout_ms),
                });
            }
            running.push(r);
        }
        self.active.store(Arc::new(active));
        self.summary.store(Arc::new(
            running
                .iter()
                .map(|r| Summary { spec: r.spec.clone(), source: r.source, lane: r.lane.clone(), sink: r.sink.clone() })
                .collect(),
        ));
        for (old, new) in replaced {
            // Off the runtime, as the shutdown's dead-lettering: a spool
            // append fsyncs.
            let _ = tokio::task::spawn_blocking(move || retire::hand_over(&old, &new)).await;
        }
        Ok(())
    }

    /// The lane `spec` keeps, if its name has one of the same kind of
    /// durability, and the lane its name has now, if any (what errors are
    /// masked with). No lane kept: a new one is needed
    /// ([`Delivery::open_lane`]). Changing an output's durability needs its
    /// backlog drained first (the events would otherwise change guarantee
    /// behind the client's back).
    fn lane_kept(&self, spec: &OutputSpec, current: Option<&Arc<Lane>>) -> anyhow::Result<LaneKept> {
        let name = &spec.runtime.name;
        let existing = current.cloned().or_else(|| self.lane_named(name));
        let Some(lane) = existing else { return Ok(LaneKept { kept: None, current: None }) };
        let durable = |d: Durability| d == Durability::Spool;
        if durable(lane.durability) == durable(spec.runtime.durability) {
            // Its bounds change once every sink is built (`apply_locked`).
            return Ok(LaneKept { kept: Some(lane.clone()), current: Some(lane) });
        }
        let queued = lane.backlog.stats().events;
        if queued > 0 {
            anyhow::bail!(
                "output {name:?}: durability cannot change while {queued} events are queued; \
                 wait for them to drain (or disable the output first)"
            );
        }
        Ok(LaneKept { kept: None, current: Some(lane) })
    }

    /// A new lane for `spec`, opened on the state directory; registered by
    /// the caller once the whole change is sure to go live.
    fn open_lane(&self, spec: &OutputSpec) -> anyhow::Result<Arc<Lane>> {
        let name = &spec.runtime.name;
        let stats = self.stats_of(name);
        // A memory queue numbers from 0 again on every start.
        let mut id_scope = random_u64();
        let (backlog, first): (Arc<dyn Backlog>, u64) = match spec.runtime.durability {
            Durability::Spool => {
                let segment_bytes = (spec.runtime.spool_max_bytes / 16).clamp(1 << 20, 64 << 20);
                // Admission bounds the unacknowledged bytes; the spool's
                // own bound also counts the acknowledged head of the
                // oldest segment (deleted once wholly acknowledged), hence
                // the slack.
                let config = spool::SpoolConfig {
                    dir: self.state_dir.join("spool").join(name),
                    max_bytes: spec.runtime.spool_max_bytes + 2 * segment_bytes,
                    segment_bytes,
                };
                let (spool, recovery) =
                    spool::Spool::open(config).with_context(|| format!("opening the spool of output {name:?}"))?;
                if recovery.corrupt_entries > 0 {
                    tracing::error!(output = %name, entries = recovery.corrupt_entries, bytes = recovery.corrupt_bytes,
                        problems = ?recovery.problems, "spool: corrupt entries skipped");
                    stats.lose(LostReason::SpoolCorrupt, recovery.corrupt_entries);
                }
                if recovery.events > 0 {
                    tracing::info!(output = %name, events = recovery.events, "spool: resuming delivery");
                }
                let first = spool.first_unacked();
                id_scope = spool_id_scope(&self.state_dir.join("spool").join(name))?;
                (Arc::new(spool), first)
            }
            Durability::Memory | Durability::Ack => (Arc::new(MemoryQueue::default()), 0),
        };
        let deadletter =
            DeadLetter::open(&self.state_dir.join("deadletter").join(name), name, spec.runtime.deadletter_max_bytes)
                .with_context(|| format!("opening the dead-letter of output {name:?}"))?;
        let lane = Arc::new(Lane {
            name: name.clone(),
            durability: spec.runtime.durability,
            backlog,
            bounds: Bounds::new(0, None),
            deadletter,
            stats,
            wake: Notify::new(),
            acked: watch::Sender::new(first),
            secrets: Mutex::new(Vec::new()),
            id_scope,
            settled: settled::Settled::default(),
        });
        lane.bounds.set(bounds_of(spec));
        Ok(lane)
    }

    /// Stops every worker: they drain until `deadline`; then what is left
    /// stays in the spool, or (memory queues) goes to the dead-letter.
    pub(crate) async fn shutdown(&self, deadline: Instant) {
        self.active.store(Arc::new(Vec::new()));
        let running = std::mem::take(&mut *self.running.lock().await);
        self.summary.store(Arc::new(Vec::new()));
        let stops: Vec<_> = running.into_iter().map(|r| stop_running(r, deadline)).collect();
        futures_util::future::join_all(stops).await;
        let lanes: Vec<Arc<Lane>> = self.lanes.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for lane in lanes {
            let lane2 = lane.clone();
            if lane.backlog.durable() {
                // The workers persist as they stop; this covers one that
                // did not get to (a panic), and lanes no longer configured.
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || lane2.backlog.persist()).await {
                    lane.error(format!("persisting the backlog's position at shutdown: {e:#}"));
                }
            } else {
                let _ = tokio::task::spawn_blocking(move || dead_letter_rest(&lane2, "shutdown")).await;
            }
        }
    }

    /// Lanes by name (for views, dead-letter calls, probes).
    pub(crate) fn lane_named(&self, name: &str) -> Option<Arc<Lane>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// The configured outputs, as last applied.
    pub(crate) fn snapshot(&self) -> Arc<Vec<Summary>> {
        self.summary.load_full()
    }

    /// Every lane's counters, for the metrics endpoints (not async).
    pub(crate) fn lanes(&self) -> Vec<Arc<Lane>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}

fn random_u64() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

/// The id scope of the spool in `dir` (see `SinkBatch::id_scope`): read
/// from its `id-scope` file, or drawn and written (fsync'd) on first use.
/// It lives in the spool's directory, so a spool deleted by hand starts a
/// new scope with its new positions.
fn spool_id_scope(dir: &Path) -> anyhow::Result<u64> {
    let path = dir.join("id-scope");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(scope) = u64::from_str_radix(text.trim(), 16) {
            return Ok(scope);
        }
    }
    let scope = random_u64();
    let tmp = dir.join("id-scope.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        writeln!(f, "{scope:016x}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    durable::sync_dir(dir).ok();
    Ok(scope)
}

fn bounds_of(spec: &OutputSpec) -> (u64, Option<u64>) {
    match spec.runtime.durability {
        Durability::Spool => (spec.runtime.spool_max_bytes, None),
        Durability::Memory | Durability::Ack => (spec.runtime.queue_max_bytes, Some(spec.runtime.queue_max_events)),
    }
}

fn start(d: Desired, sink: Option<Arc<dyn Sink>>, lane: Arc<Lane>) -> Running {
    let (stop, stop_rx) = watch::channel(None);
    let task = sink.clone().map(|sink| tokio::spawn(worker::run(lane.clone(), sink, d.spec.runtime.clone(), stop_rx)));
    Running { spec: d.spec, source: d.source, lane, sink, stop, task }
}

async fn stop_running(r: Running, deadline: Instant) {
    r.stop.send_replace(Some(deadline));
    if let Some(task) = r.task {
        let _ = task.await;
    }
    if let Some(sink) = r.sink {
        sink.close().await;
    }
}

/// Moves what is left in a memory queue to the dead-letter (`reason`); what
/// the dead-letter cannot take is counted as lost.
fn dead_letter_rest(lane: &Lane, reason: &str) {
    let first = lane.backlog.first_unacked();
    let Ok(entries) = lane.backlog.read(first, u64::MAX, u64::MAX) else { return };
    dead_letter_entries(lane, &entries, reason);
}

/// [`dead_letter_rest`] for `entries` already read: the unsettled events
/// of each go to the dead-letter, and the backlog is acknowledged through
/// the last.
fn dead_letter_entries(lane: &Lane, entries: &[entry::Entry], reason: &str) {
    let Some(last) = entries.last().map(|e| e.seq) else { return };
    let now = unix_ms();
    let error = format!("{reason}: not delivered before the flush deadline");
    let mut events = 0u64;
    // Events an interrupted round delivered or dead-lettered are done.
    let settled = lane.settled.snapshot().unwrap_or_default();
    let records: Vec<deadletter::DeadRecord<'_>> = entries
        .iter()
        .flat_map(|e| {
            let lines = e.payload.bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
            lines.enumerate().filter(|(i, _)| !settled.contains(&(e.seq, *i as u32))).map(|(_, line)| line)
        })
        .map(|event| {
            events += 1;
            deadletter::DeadRecord { event, error: &error, attempts: 0, unix_ms: now }
        })
        .collect();
    match lane.deadletter.append(&records) {
        Ok(evicted) => {
            lane.stats.dead_lettered.fetch_add(events, std::sync::atomic::Ordering::Relaxed);
            lane.stats.lose(LostReason::DeadLetterEvicted, evicted);
        }
        Err(e) => {
            lane.error(format!("writing the dead-letter at shutdown: {e}"));
            lane.stats.lose(LostReason::DeadLetterEvicted, e.evicted);
            lane.stats.lose(LostReason::Shutdown, events);
        }
    }
    let _ = lane.backlog.ack_through(last);
    lane.settled.forget_through(last);
}

#[cfg(test)]
mod tests;
