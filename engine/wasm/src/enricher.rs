//! The `wasm` enricher: runs a module over each batch in chunks of up to
//! 256 events, applies its results, and isolates its failures.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use enrichd_engine::{
    source_info, to_hex, BatchView, BuildContext, Enricher, Event, FactInfo, KeyId, PluginState, PluginStatus,
    SourceInfo, SourceText,
};
use enrichd_sdk::abi::{self, EventRecord};
use sha2::{Digest, Sha256};
use thread_local::ThreadLocal;
use wasmtime::Trap;

use crate::host::{CallContext, HostState, LogBudget};
use crate::limits::{thread_cpu_time, CpuBudget};
use crate::module_file::{limits_of, module_size_limit, read_module};
use crate::options::WasmOptions;
use crate::record::{fill_record, RecordSlots};
use crate::results::{ResultWriter, Scratch, Verdict};
use crate::runtime::{self, LimitHit, Limits, LoadedModule, Worker};
use crate::shadow::ShadowCell;
use crate::stats::{FailureKind, HealthKey, ModuleHealth, ModuleStats, Transition};
use crate::text;

// Running the shadow: a child module, for the size of this file.
#[path = "enricher_shadow.rs"]
mod shadow_run;

/// Per-thread scratch: the instances and reusable buffers.
#[derive(Default)]
struct ThreadSlot {
    worker: Option<Worker>,
    records: Vec<EventRecord>,
    scratch: Scratch,
    /// The shadow's results and both sides' verdicts (used only while the
    /// stage has a shadow; its instances are the shadow's own, see
    /// [`crate::shadow::Shadow::instances`]).
    shadow_scratch: Scratch,
    live_verdicts: Vec<Verdict>,
    shadow_verdicts: Vec<Verdict>,
}

/// One module to call: the live one or the shadow.
struct Target<'a> {
    name: &'a Arc<str>,
    module: &'a LoadedModule,
    stats: &'a ModuleStats,
}

pub struct WasmEnricher {
    name: Arc<str>,
    path: PathBuf,
    source: Option<SourceInfo>,
    module: Option<Arc<LoadedModule>>,
    load_error: Option<String>,
    limits: Limits,
    logs: Arc<LogBudget>,
    config: Arc<Vec<(String, String)>>,
    earlier_keys: Arc<Vec<(String, KeyId)>>,
    /// Facts declared before this stage: the event record's ASN, country
    /// and match slots are filled from them by kind and side.
    earlier_facts: Arc<[FactInfo]>,
    /// The record slot each earlier fact fills (from `earlier_facts`).
    record_slots: RecordSlots,
    /// Checks the module's result buffer and writes it into the events.
    results: ResultWriter,
    /// Counters and breaker: carried across rebuilds while the module and
    /// its limits are unchanged ([`HealthKey`]).
    health: Arc<ModuleHealth>,
    slots: ThreadLocal<RefCell<ThreadSlot>>,
    /// The signing policy and who signed the module (`None`: no policy).
    signing: Option<crate::signature::Signing>,
    /// The stage's shadow (carried across generations) and what building
    /// or promoting one needs.
    pub(crate) shadow: Arc<ShadowCell>,
    pub(crate) stage: Arc<str>,
    pub(crate) options: WasmOptions,
    /// The configured module file's SHA-256 (hex) and the live module's
    /// bytes and SHA-256: a promotion keeps the live version for rollback.
    pub(crate) configured_sha256: Option<String>,
    pub(crate) live_bytes: Option<Arc<[u8]>>,
    pub(crate) live_sha256: Option<String>,
    /// The configured module path (the live module may be a promoted
    /// version in the state directory instead).
    pub(crate) configured_path: PathBuf,
    /// The stage's versions state file, watched: a promotion or rollback
    /// reloads the stage.
    versions_file: Option<PathBuf>,
    /// `trusted_keys`, resolved.
    key_paths: Vec<PathBuf>,
}

impl WasmEnricher {
    pub fn build(options: WasmOptions, ctx: &mut BuildContext<'_>) -> anyhow::Result<WasmEnricher> {
        let configured_path = ctx.resolve_path(&options.module);
        let mut path = configured_path.clone();
        let name: Arc<str> = path.file_name().map(|n| n.to_string_lossy().into()).unwrap_or_else(|| "module".into());
        // Only the stages before this one: a rebuild (a reload) sees the
        // whole, append-only tables, this stage's own keys and facts and
        // later stages' among them, and must read what the first build did.
        let earlier_keys = Arc::new(ctx.earlier_keys());
        let earlier_facts: Arc<[FactInfo]> = ctx.earlier_facts().into();
        let results = ResultWriter::declare(name.clone(), &options, ctx)?;
        let mut enricher = WasmEnricher {
            name: name.clone(),
            path: path.clone(),
            source: None,
            module: None,
            load_error: None,
            limits: limits_of(&options),
            logs: Default::default(),
            config: Arc::new(options.config_strings()),
            earlier_keys,
            record_slots: RecordSlots::of(&earlier_facts),
            earlier_facts,
            results,
            health: Arc::new(new_health(&options)),
            slots: ThreadLocal::new(),
            signing: None,
            shadow: ctx.carried::<ShadowCell>(),
            stage: ctx.stage_name().into(),
            options: options.clone(),
            configured_sha256: None,
            live_bytes: None,
            live_sha256: None,
            configured_path: configured_path.clone(),
            versions_file: ctx.state_dir().map(|d| crate::versions::state_path(d, ctx.stage_name())),
            key_paths: options.trusted_keys.iter().map(|p| ctx.resolve_path(p)).collect(),
        };
        let mut bytes = match read_module(&path, module_size_limit(&options)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(module = %path.display(), "WASM module not found; its events get the fallback");
                enricher.load_error = Some("file not found".into());
                return Ok(enricher);
            }
            Err(e) => return Err(e).with_context(|| format!("reading WASM module {}", path.display())),
        };
        let configured_sha = to_hex(&Sha256::digest(&bytes));
        // A promoted version applies while the configured file is the one
        // it was promoted over (see `versions`). One that cannot be read,
        // or no longer passes the stage's checks (its signing key was
        // rotated out, say), falls back to the configured module rather
        // than leaving the stage without a rule, or the service unable to
        // start.
        let promoted = ctx.state_dir().and_then(|d| crate::versions::active(d, ctx.stage_name(), &configured_sha));
        let promoted = promoted.and_then(|promoted| {
            let loaded =
                read_module(&promoted, module_size_limit(&options)).map_err(anyhow::Error::from).and_then(|bytes| {
                    Ok((enricher.load_checked(name.clone(), &promoted, &bytes, ctx.state_dir())?, bytes))
                });
            match loaded {
                Ok((checked, bytes)) => Some((promoted, bytes, checked)),
                Err(e) => {
                    tracing::warn!(
                        module = %promoted.display(), error = %format!("{e:#}"),
                        "promoted rule version does not load; loading the configured module"
                    );
                    None
                }
            }
        });
        enricher.configured_sha256 = Some(configured_sha);
        let (signing, loaded, sha) = match promoted {
            Some((promoted, promoted_bytes, checked)) => {
                bytes = promoted_bytes;
                path = promoted;
                checked
            }
            None => enricher
                .load_checked(name.clone(), &path, &bytes, ctx.state_dir())
                .with_context(|| format!("WASM module {}", path.display()))?,
        };
        enricher.signing = signing;
        // Only now, with the module loaded: a generation that failed to
        // load must not keep (or create) the entry a live one shares.
        let key = HealthKey {
            sha256: sha,
            memory_bytes: enricher.limits.memory_bytes,
            table_elements: enricher.limits.table_elements,
            deadline: enricher.limits.deadline,
            breaker: (
                options.breaker_failures,
                Duration::from_secs(options.breaker_window_s),
                Duration::from_secs(options.breaker_cooldown_s),
            ),
            options: options_digest(&options),
        };
        enricher.health = enricher.shadow.health.get_or(key, || new_health(&options));
        enricher.source = Some(source_info(&path, &bytes));
        enricher.module = Some(Arc::new(loaded));
        enricher.live_sha256 = Some(to_hex(&sha));
        enricher.live_bytes = Some(bytes.into());
        enricher.path = path;
        Ok(enricher)
    }

    /// Compiles and probes a candidate module the way `build` does the live
    /// one (signature checked first, with the stage's policy, on `path` and
    /// its `.sig`), for a shadow.
    pub(crate) fn load_candidate(
        &self,
        path: &Path,
        bytes: &[u8],
        cache_dir: Option<&Path>,
    ) -> anyhow::Result<(Arc<LoadedModule>, Option<String>)> {
        let (signing, loaded, _) = self.load_checked(self.name.clone(), path, bytes, cache_dir)?;
        let signed_by = signing.and_then(|s| s.signed_by().map(str::to_string));
        Ok((Arc::new(loaded), signed_by))
    }

    /// The stage's checks on a module, in order: its signature (before
    /// anything reaches wasmtime), compiling, and a probe instance under
    /// the stage's limits.
    fn load_checked(
        &self,
        name: Arc<str>,
        path: &Path,
        bytes: &[u8],
        cache_dir: Option<&Path>,
    ) -> anyhow::Result<(Option<crate::signature::Signing>, LoadedModule, [u8; 32])> {
        let signing =
            crate::signature::Signing::check(self.options.require_signature, self.key_paths.clone(), path, bytes)?;
        let sha: [u8; 32] = Sha256::digest(bytes).into();
        let module = runtime::compile(bytes, sha, artifact_cache(&signing, cache_dir))?;
        let loaded = module.load(self.host_state(name), self.limits)?;
        Ok((signing, loaded, sha))
    }

    fn host_state(&self, name: Arc<str>) -> HostState {
        HostState::new(
            name,
            self.config.clone(),
            self.earlier_keys.clone(),
            self.earlier_facts.clone(),
            self.logs.clone(),
        )
    }

    pub(crate) fn module_size_limit(&self) -> u64 {
        module_size_limit(&self.options)
    }

    /// The file the live module was loaded from.
    pub(crate) fn live_path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn results(&self) -> &ResultWriter {
        &self.results
    }

    /// Calls `target` over one chunk whose records are in `records`; the
    /// guest's result buffer on success. A failed instance is recycled.
    fn call_guest<'w>(
        &self,
        target: &Target<'_>,
        source: SourceText<'_>,
        events: &[Event],
        records: &[EventRecord],
        slot: &'w mut Option<Worker>,
    ) -> Result<&'w [u8], FailureKind> {
        let module = target.module;
        if slot.as_ref().is_none_or(|w| w.generation != module.generation) {
            match runtime::instantiate(
                &module.pre,
                self.host_state(target.name.clone()),
                self.limits,
                module.generation,
                runtime::Setup::Call,
            ) {
                Ok(w) => *slot = Some(w),
                Err(e) => {
                    tracing::warn!(module = %target.name, error = %text::error_text(&e), "WASM instantiation failed");
                    return Err(FailureKind::Instantiation);
                }
            }
        }
        let worker = slot.as_mut().expect("instantiated above");
        // SAFETY: EventRecord is repr(C), 112 bytes with explicit padding
        // fields, so every byte is initialised; the host is little-endian
        // like wasm.
        let bytes = unsafe {
            std::slice::from_raw_parts(records.as_ptr() as *const u8, records.len() * abi::EVENT_RECORD_SIZE)
        };
        let io = worker.io;
        worker.memory.data_mut(&mut worker.store)[io..io + bytes.len()].copy_from_slice(bytes);
        worker.memory.data_mut(&mut worker.store)[io + abi::IO_OUT_LEN_OFFSET..io + abi::IO_OUT_LEN_OFFSET + 4].fill(0);

        // SAFETY: a lifetime extension; see `CallContext`. Cleared below
        // before `events` is touched again.
        let source_static: SourceText<'static> = unsafe { std::mem::transmute(source) };
        worker.store.data_mut().call =
            Some(CallContext { source: source_static, events: events.as_ptr(), len: events.len() });
        worker.store.data_mut().limits.hit = None;
        let cpu_started = thread_cpu_time();
        worker.store.data_mut().limits.cpu = CpuBudget { started: cpu_started, budget: self.limits.deadline };
        worker.store.set_epoch_deadline(self.limits.deadline_ticks);
        let started = Instant::now();
        let result = worker.process.call(&mut worker.store, events.len() as i32);
        let elapsed = started.elapsed();
        let cpu_used = thread_cpu_time().saturating_sub(cpu_started);
        worker.store.data_mut().call = None;
        target.stats.record_call(events.len(), elapsed);

        let failure = match result {
            Err(e) => Some(classify(&e, worker.store.data().limits.hit)),
            // The epoch is checked at function entries, loop headers and
            // before bulk operations, not inside or after a host-side
            // operation (a grow, a bulk fill, a host call): a call can
            // return having used more CPU than its deadline. Such a call
            // failed: its verdicts came later than promised, so they are
            // not applied (the events get the fallback like any timeout),
            // and the breaker counts it. The instance is recycled, with
            // whatever it had grown.
            Ok(_) if cpu_used > self.limits.deadline => Some(FailureKind::Timeout),
            Ok(0) => None,
            Ok(_) => Some(FailureKind::GuestError),
        };
        if let Some(kind) = failure {
            *slot = None; // a failed instance may be half-updated: recycle it
            return Err(kind);
        }
        let out_len = {
            let worker = slot.as_ref().expect("kept on success");
            let data = worker.memory.data(&worker.store);
            u32::from_le_bytes(
                data[io + abi::IO_OUT_LEN_OFFSET..io + abi::IO_OUT_LEN_OFFSET + 4].try_into().expect("4 bytes"),
            ) as usize
        };
        if out_len > abi::OUT_CAPACITY {
            *slot = None;
            return Err(FailureKind::MalformedResult);
        }
        let worker = slot.as_ref().expect("kept on success");
        let data = worker.memory.data(&worker.store);
        // Read in place: the guest is not running, and `events` and the
        // scratch buffers are disjoint from the store.
        Ok(&data[io + abi::IO_OUT_OFFSET..io + abi::IO_OUT_OFFSET + out_len])
    }

    /// Runs the live module over one chunk (records already built); on
    /// failure nothing of it is applied. With `verdicts`, the applied
    /// verdicts are also reduced into `slot.live_verdicts` for a shadow.
    fn run_chunk(
        &self,
        source: SourceText<'_>,
        events: &mut [Event],
        slot: &mut ThreadSlot,
        verdicts: bool,
    ) -> Result<(), FailureKind> {
        let module = self.module.as_deref().ok_or(FailureKind::Unavailable)?;
        let target = Target { name: &self.name, module, stats: &self.health.stats };
        let ThreadSlot { worker, records, scratch, live_verdicts, .. } = slot;
        let out = self.call_guest(&target, source, events, records, worker)?;
        let applied = self.results.apply(events, out, &module.texts, scratch);
        if applied.is_ok() && verdicts {
            self.results.verdicts(events.len(), out, &module.texts, scratch, live_verdicts);
        }
        if applied.is_err() {
            *worker = None;
        }
        applied
    }
}

/// Fresh counters and a closed breaker with the entry's settings.
fn new_health(options: &WasmOptions) -> ModuleHealth {
    ModuleHealth::new(
        options.breaker_failures,
        Duration::from_secs(options.breaker_window_s),
        Duration::from_secs(options.breaker_cooldown_s),
    )
}

/// Where precompiled artifacts may be read and written for a module
/// loaded under `signing`: nowhere when the stage checks signatures, so
/// that it runs code compiled from the bytes it verified, not whatever a
/// file in the state directory holds under their hash.
fn artifact_cache<'d>(signing: &Option<crate::signature::Signing>, state_dir: Option<&'d Path>) -> Option<&'d Path> {
    if signing.is_some() {
        None
    } else {
        state_dir
    }
}

/// Logs a change of a breaker's state (`what`: "" or "shadow ").
fn log_transition(module: &str, what: &str, transition: Transition) {
    match transition {
        Transition::None => {}
        Transition::Opened => {
            tracing::error!(%module, "{what}circuit breaker open after repeated failures: the module is not called")
        }
        Transition::Reopened(wait) => tracing::error!(
            %module, wait_s = wait.as_secs(), "{what}circuit breaker trial failed: open again"
        ),
        Transition::Closed => {
            tracing::warn!(%module, "{what}circuit breaker trial succeeded: closed, the module is called again")
        }
    }
}

/// A failed call's kind; `hit` is the cap the store's limiter refused
/// during the call, if any (a refused grow is what ended the call).
fn classify(e: &wasmtime::Error, hit: Option<LimitHit>) -> FailureKind {
    match (hit, e.downcast_ref::<Trap>()) {
        (_, Some(Trap::Interrupt)) => FailureKind::Timeout,
        (_, Some(Trap::StackOverflow)) => FailureKind::StackOverflow,
        (Some(LimitHit::Memory), _) => FailureKind::Memory,
        (Some(LimitHit::Table), _) => FailureKind::Table,
        _ => FailureKind::Trap,
    }
}

/// How many events ahead of the record being filled one is prefetched.
const PREFETCH_AHEAD: usize = 4;

impl Enricher for WasmEnricher {
    fn enrich(&self, batch: &mut BatchView<'_>) {
        let source = batch.source;
        let cell = self.slots.get_or(Default::default);
        let mut slot = cell.borrow_mut();
        // One load per batch; the guard keeps this shadow for the batch.
        let shadow = self.shadow.current.load();
        for chunk in batch.events.chunks_mut(abi::MAX_BATCH) {
            slot.records.resize(chunk.len(), EventRecord::EMPTY);
            for (i, (record, event)) in slot.records.iter_mut().zip(chunk.iter()).enumerate() {
                // The events are cold after the stages before: start the
                // loads of one a few ahead (it measured ~10 ns/event).
                if let Some(ahead) = chunk.get(i + PREFETCH_AHEAD) {
                    ahead.prefetch();
                }
                fill_record(record, event, &self.record_slots);
            }
            let live = match self.health.breaker.admit() {
                None => Err(FailureKind::CircuitOpen),
                Some(ticket) => {
                    let live = self.run_chunk(source, chunk, &mut slot, shadow.is_some());
                    log_transition(&self.name, "", ticket.settle(live));
                    live
                }
            };
            if let Err(kind) = live {
                self.health.stats.record_error(kind);
                self.results.fallback(chunk, kind);
            }
            // After the live verdicts are written: whatever the shadow
            // does, they stand.
            if let Some(shadow) = shadow.as_deref() {
                self.run_shadow(shadow, source, chunk, &mut slot, live);
            }
        }
    }

    fn status(&self) -> PluginStatus {
        let (state, error) = match (&self.module, &self.load_error) {
            (None, Some(e)) if e == "file not found" => (PluginState::Missing, Some(e.clone())),
            (None, e) => (PluginState::Error, e.clone()),
            (Some(_), _) if self.health.breaker.is_open() => {
                let next = match self.health.breaker.next_trial_in_s() {
                    Some(s) => format!("a trial call in {s} s"),
                    None => "replace the module".into(),
                };
                (PluginState::Error, Some(format!("circuit breaker open after repeated failures; {next}")))
            }
            (Some(_), _) => (PluginState::Loaded, None),
        };
        let mut status = PluginStatus::new(state);
        status.error = error;
        status.version = self.source.as_ref().zip(self.module.as_deref()).map(|(s, m)| {
            format!("{} (ABI {}.{}, {} bytes)", self.name, abi::ABI_MAJOR, m.abi_minor, s.size_bytes.unwrap_or(0))
        });
        status.sources = vec![self.source.clone().unwrap_or(SourceInfo {
            path: self.path.clone(),
            sha256: None,
            size_bytes: None,
            loaded_at: None,
            error: self.load_error.clone(),
        })];
        let breaker = &self.health.breaker;
        let mut details = self.health.stats.to_json();
        details["circuit_open"] = breaker.is_open().into();
        details["circuit_opened"] = breaker.opened().into();
        details["circuit_next_trial_s"] = breaker.next_trial_in_s().into();
        details["deadline_ms"] = (self.limits.deadline_ticks * runtime::TICK.as_millis() as u64).into();
        details["memory_limit_mib"] = (self.limits.memory_bytes >> 20).into();
        details["table_limit_elements"] = self.limits.table_elements.into();
        details["log_lines_dropped"] = self.logs.dropped.load(std::sync::atomic::Ordering::Relaxed).into();
        details["declared_texts"] = self.module.as_deref().map_or(0, |m| m.texts.len()).into();
        if let Some(signing) = &self.signing {
            details["signature"] = signing.to_json();
        }
        if self.path != self.configured_path {
            details["promoted"] = true.into();
            details["configured_module"] = self.configured_path.display().to_string().into();
        }
        if let Some(shadow) = self.shadow.current.load().as_deref() {
            let summary = &shadow.summary;
            details["shadow"] = serde_json::json!({
                "sha256": shadow.sha256,
                "events_compared": summary.compared(),
                "events_differing": summary.differing(),
                "events_failed": summary.shadow_failed(),
            });
            let series = |name, help, value: u64| enrichd_engine::StatusSeries {
                name,
                help,
                counter: true,
                labels: Vec::new(),
                value: value as f64,
            };
            status.series.extend([
                series("shadow_compared", "Events a shadow rule's verdict was compared on.", summary.compared()),
                series(
                    "shadow_differing",
                    "Events whose shadow verdict (score or reasons) differed from the live one.",
                    summary.differing(),
                ),
                series("shadow_failed", "Events the shadow rule failed on (not compared).", summary.shadow_failed()),
            ]);
        }
        status.details = details;
        status
    }

    fn watch_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.configured_path.clone()];
        if self.path != self.configured_path {
            paths.push(self.path.clone());
        }
        paths.extend(self.versions_file.clone());
        paths.extend(self.signing.iter().flat_map(|s| s.watch_paths()));
        paths
    }
}

/// A digest of the stage's options but its shadow (a shadow comes and goes
/// without changing what the live module runs with). `Debug` of the
/// options is deterministic: ordered maps, no hashed containers.
fn options_digest(options: &WasmOptions) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut options = options.clone();
    options.shadow_module = None;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{options:?}").hash(&mut h);
    h.finish()
}
