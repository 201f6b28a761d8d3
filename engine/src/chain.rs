//! The enricher chain: the ordered, configured stages a batch goes through.
//!
//! A [`Chain`] is immutable once built. The server holds it in an
//! [`Engine`](crate::Engine) behind an `ArcSwap`: each batch takes one
//! snapshot and runs entirely on it, so a chain swapped in later (hot
//! reload) never mixes with one in flight, and readers never wait on a lock.
//!
//! Stages are shared (`Arc`) between successive chains: reloading one
//! stage's data builds a new chain that reuses every other stage as is.
//! What must survive a stage's own replacement (counters, reload history)
//! lives in its [`StageHistory`], shared by all its generations.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::batch::{Batch, BatchView};
use crate::entry::{ChainEntryConfig, ConfigError};
use crate::event::{Event, JsonFragment, KeyId};
use crate::fact::FactInfo;
use crate::format::Format;
use crate::limits::cap_message;
use crate::parse::ParseSpec;
use crate::plugin::{rfc3339, BuildContext, Enricher, LookupAnswer, LookupTarget, PluginState, PluginStatus};
use crate::registry::Registry;

/// Where and how chain entries are built.
#[derive(Clone, Debug)]
pub struct BuildEnv {
    /// Relative paths in options are resolved against this directory.
    pub base_dir: PathBuf,
    /// Writable directory for state that outlives the process (e.g.
    /// indicators added through the API); `None` for offline tools.
    pub state_dir: Option<PathBuf>,
    /// Name of the optional per-event field recording the generations that
    /// enriched the event (`None`: not written).
    pub generation_field: Option<String>,
}

impl BuildEnv {
    pub fn new(base_dir: impl Into<PathBuf>) -> Self {
        BuildEnv { base_dir: base_dir.into(), state_dir: None, generation_field: None }
    }
}

/// One configured entry of the chain, at one generation of its data.
pub struct Stage {
    pub(crate) name: String,
    pub(crate) entry: ChainEntryConfig,
    pub(crate) enricher: Option<Box<dyn Enricher>>,
    pub(crate) generation: u64,
    pub(crate) loaded_at: SystemTime,
    pub(crate) history: Arc<StageHistory>,
    /// The output keys this generation declared: a later stage's
    /// [`BuildContext::earlier_keys`] (`BuildContext::output_key` records
    /// them).
    pub(crate) keys: Vec<KeyId>,
}

/// Upper bounds (nanoseconds) of the per-event time histogram of a stage:
/// 25 ns (a cached lookup) to 1 ms (a slow rule), then +Inf.
pub const EVENT_DURATION_BOUNDS_NS: [u64; 13] =
    [25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000];

/// What a stage keeps across its generations.
#[derive(Default)]
pub(crate) struct StageHistory {
    batches: AtomicU64,
    events: AtomicU64,
    nanos: AtomicU64,
    /// Events by the mean per-event time of their batch (per bucket, +Inf
    /// last): one add per batch, so a histogram costs nothing per event.
    event_buckets: [AtomicU64; EVENT_DURATION_BOUNDS_NS.len() + 1],
    pub(crate) reloads: AtomicU64,
    pub(crate) reload_failures: AtomicU64,
    /// The last rejected reload: time and reason. Cleared by a good one.
    pub(crate) last_error: Mutex<Option<(SystemTime, String)>>,
    /// What the plugin keeps across generations (`BuildContext::carried`).
    pub(crate) carried: crate::plugin::Carried,
}

/// A stage's state and counters, as shown by `/v1/enrichers`.
#[derive(Debug, Serialize)]
pub struct StageReport {
    pub name: String,
    pub plugin: String,
    pub enabled: bool,
    #[serde(flatten)]
    pub status: PluginStatus,
    /// 1 for the data loaded at start, +1 per reload that was swapped in.
    pub generation: u64,
    /// Seconds since the loaded data was built by its publisher (from the
    /// status's `data_built_at`), when the plugin says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_age_s: Option<u64>,
    /// RFC 3339 time this generation was built.
    pub generation_loaded_at: String,
    pub reloads: u64,
    pub reload_failures: u64,
    /// Why the last reload was refused (the previous data stays live).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reload_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reload_error_at: Option<String>,
    /// Paths whose changes reload this stage.
    pub watched: Vec<PathBuf>,
    pub batches: u64,
    pub events: u64,
    /// Mean time per event spent in this stage, nanoseconds.
    pub mean_ns_per_event: f64,
    /// Total time spent in this stage, nanoseconds.
    #[serde(skip)]
    pub total_ns: u64,
    /// Events per bucket of [`EVENT_DURATION_BOUNDS_NS`] (+Inf last), each
    /// counted at its batch's mean per-event time.
    #[serde(skip)]
    pub event_duration_buckets: Vec<u64>,
}

pub struct Chain {
    pub(crate) stages: Vec<Arc<Stage>>,
    pub(crate) keys: Vec<Box<str>>,
    /// Every fact declared (append-only across reloads; see [`crate::fact`]).
    pub(crate) facts: Arc<[FactInfo]>,
    pub(crate) spec: ParseSpec,
    pub(crate) env: BuildEnv,
    /// Increases by one with every swap of any stage or of the entries.
    pub(crate) generation: u64,
    /// The per-event generation record, when enabled.
    stamp: Option<(KeyId, JsonFragment)>,
}

impl Chain {
    /// Builds every enabled entry with its plugin's factory.
    pub fn build(entries: &[ChainEntryConfig], registry: &Registry, base_dir: &Path) -> Result<Chain, ConfigError> {
        Chain::build_in(entries, registry, &BuildEnv::new(base_dir))
    }

    /// [`Chain::build`] with a full build environment.
    pub fn build_in(entries: &[ChainEntryConfig], registry: &Registry, env: &BuildEnv) -> Result<Chain, ConfigError> {
        let mut tables = KeyTables::default();
        let mut stages = Vec::with_capacity(entries.len());
        for entry in entries {
            let stage = build_stage(entry, registry, env, &mut tables, 1, Arc::default(), &stages)?;
            if stages.iter().any(|s: &Arc<Stage>| s.name == stage.name) {
                return Err(entry.duplicate_name(&stage.name));
            }
            stages.push(Arc::new(stage));
        }
        let chain = Chain::assemble(stages, tables, env.clone(), 1);
        // A first build has no live chain to keep: it is live once built.
        for enricher in chain.stages.iter().filter_map(|s| s.enricher.as_deref()) {
            enricher.went_live();
        }
        Ok(chain)
    }

    /// Puts built stages together; the generation stamp is computed here,
    /// once per chain, so writing it costs one `Arc` clone per event.
    pub(crate) fn assemble(stages: Vec<Arc<Stage>>, mut tables: KeyTables, env: BuildEnv, generation: u64) -> Chain {
        let stamp = env.generation_field.as_deref().filter(|f| !f.is_empty()).map(|field| {
            let key = KeyId(crate::plugin::intern(&mut tables.keys, field));
            let mut map = serde_json::Map::new();
            map.insert("chain".into(), generation.into());
            for s in stages.iter().filter(|s| s.enricher.is_some()) {
                map.insert(s.name.clone(), s.generation.into());
            }
            (key, JsonFragment::from(serde_json::Value::Object(map).to_string()))
        });
        // A record's own `enrichment_warnings` is a key the writer may add
        // too (when the chain warns): the parser flags it like the chain's.
        let mut output_keys = tables.keys.clone();
        output_keys.push(crate::WARNINGS_KEY.into());
        let spec = ParseSpec { text_fields: tables.text_fields.clone(), output_keys };
        Chain { stages, keys: tables.keys, facts: tables.facts.into(), spec, env, generation, stamp }
    }

    /// Runs every enabled stage over the batch, in order.
    pub fn run(&self, batch: &mut Batch) {
        self.run_part(batch.view(), true);
    }

    /// [`Chain::run`] over the batch cut into `parts` runs of consecutive
    /// events, each on its own scoped thread (this one takes the first):
    /// stages see smaller batches, and the events come out as if run
    /// whole. Stage statistics count the batch once and its events once;
    /// their time is the sum over the threads (CPU time per event).
    pub fn run_split(&self, batch: &mut Batch, parts: usize) {
        let view = batch.view();
        let len = view.events.len();
        if parts <= 1 || len < 2 {
            return self.run_part(view, true);
        }
        let source = view.source;
        let mut chunks = view.events.chunks_mut(len.div_ceil(parts));
        let first = chunks.next().expect("a non-empty batch has a first part");
        std::thread::scope(|scope| {
            let mut here = Vec::new();
            for chunk in chunks {
                // A thread that cannot start (limits, memory): its part
                // runs here, after the first.
                let part = Arc::new(Mutex::new(Some(chunk)));
                let theirs = part.clone();
                let spawned = std::thread::Builder::new().spawn_scoped(scope, move || {
                    if let Some(events) = theirs.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        self.run_part(BatchView { source, events }, false)
                    }
                });
                if spawned.is_err() {
                    here.extend(part.lock().unwrap_or_else(|e| e.into_inner()).take());
                }
            }
            self.run_part(BatchView { source, events: first }, true);
            for events in here {
                self.run_part(BatchView { source, events }, false);
            }
        });
    }

    /// Every enabled stage over one part of a batch; `whole_batch`: this
    /// part counts the batch in the stage statistics.
    fn run_part(&self, mut view: BatchView<'_>, whole_batch: bool) {
        let n = view.events.len() as u64;
        for stage in &self.stages {
            let Some(enricher) = &stage.enricher else { continue };
            let started = Instant::now();
            enricher.enrich(&mut view);
            let nanos = started.elapsed().as_nanos() as u64;
            let h = &stage.history;
            if whole_batch {
                h.batches.fetch_add(1, Ordering::Relaxed);
            }
            h.events.fetch_add(n, Ordering::Relaxed);
            h.nanos.fetch_add(nanos, Ordering::Relaxed);
            if n > 0 {
                let bucket = EVENT_DURATION_BOUNDS_NS.partition_point(|b| *b < nanos / n);
                h.event_buckets[bucket].fetch_add(n, Ordering::Relaxed);
            }
        }
        if let Some((key, stamp)) = &self.stamp {
            for event in view.events.iter_mut() {
                event.set_output(*key, stamp.clone());
            }
        }
    }

    /// The key of the per-event generation stamp (`reload.generation_field`),
    /// when enabled: output profiles keep it under its configured name.
    pub fn stamp_key(&self) -> Option<KeyId> {
        self.stamp.as_ref().map(|(k, _)| *k)
    }

    /// The output key table: serialization needs it to name results.
    pub fn keys(&self) -> &[Box<str>] {
        &self.keys
    }

    /// The fact table, indexed by [`crate::FactId::index`]; it may hold facts of
    /// stages no longer in the chain (see [`Chain::active_facts`]).
    pub fn facts(&self) -> &Arc<[FactInfo]> {
        &self.facts
    }

    /// The facts declared by the chain's enabled stages, in chain order.
    pub fn active_facts(&self) -> impl Iterator<Item = &FactInfo> + '_ {
        self.stages
            .iter()
            .filter(|s| s.enricher.is_some())
            .flat_map(move |s| self.facts.iter().filter(move |f| *f.stage == *s.name))
    }

    /// The declared fact named `name` of the latest stage declaring it.
    pub fn fact_named(&self, name: &str) -> Option<&FactInfo> {
        self.active_facts().filter(|f| f.decl.name == name).last()
    }

    /// What the parser must capture and watch for, for this chain.
    pub fn parse_spec(&self) -> &ParseSpec {
        &self.spec
    }

    /// This chain's generation (1 at start, +1 per swap).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every path some enabled stage reloads on, with the stage names.
    pub fn watched_paths(&self) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        for s in &self.stages {
            if let Some(e) = &s.enricher {
                out.extend(e.watch_paths().into_iter().map(|p| (p, s.name.clone())));
            }
        }
        out
    }

    /// Every stage's state, in chain order.
    pub fn reports(&self) -> Vec<StageReport> {
        self.stages.iter().map(|s| s.report()).collect()
    }

    /// Everything the chain knows about one address: each enabled stage
    /// contributes its answer under its own output key(s).
    /// [`Chain::lookup`] of an address: its fields (no aliases).
    pub fn lookup_ip(&self, ip: IpAddr) -> serde_json::Map<String, serde_json::Value> {
        self.lookup(LookupTarget::Ip(ip)).fields
    }

    pub fn lookup(&self, target: LookupTarget<'_>) -> LookupAnswer {
        let mut out = LookupAnswer::default();
        match target {
            LookupTarget::Ip(ip) => out.fields.insert("ip".into(), ip.to_string().into()),
            LookupTarget::Domain(name) => out.fields.insert("domain".into(), name.into()),
        };
        for stage in &self.stages {
            if let Some(e) = &stage.enricher {
                e.lookup(target, &mut out);
            }
        }
        out
    }

    /// Every enabled stage's answer to the read-only view `view` (see
    /// [`crate::PluginFactory::views`]), by stage name; the first refusal
    /// (a bad query) wins.
    pub fn view(&self, view: &str, query: &str) -> Result<Vec<(String, serde_json::Value)>, String> {
        let mut out = Vec::new();
        for stage in &self.stages {
            if let Some(answer) = stage.enricher.as_ref().and_then(|e| e.view(view, query)) {
                out.push((stage.name.clone(), answer?));
            }
        }
        Ok(out)
    }

    /// Calls the stage action `request` on the enabled stage `name` built
    /// by the plugin `kind` (see [`crate::admin::StageRequest`]). `None`
    /// when there is no such stage or it has no such action.
    pub fn stage_action(
        &self,
        kind: &str,
        name: &str,
        request: crate::admin::StageRequest<'_>,
    ) -> Option<crate::admin::AdminResponse> {
        let stage = self.stages.iter().find(|s| s.name == name && s.entry.plugin == kind)?;
        stage.enricher.as_ref()?.stage_action(request)
    }

    /// Enriches a single synthetic event with `ip` as its destination (and
    /// source), returning it serialized: the offline `enrichd lookup` view of
    /// what an event would get.
    pub fn enrich_address(&self, ip: IpAddr) -> Vec<u8> {
        let mut batch = Batch::synthetic(Format::FlowsV1, vec![Event { dst_ip: Some(ip), ..Event::synthetic() }]);
        self.run(&mut batch);
        let mut out = Vec::new();
        batch.write_event(&batch.events()[0], &self.keys, &mut out);
        out
    }
}

/// Seconds from `built_at` (Unix seconds) to now; 0 for a time in the
/// future (a clock behind the publisher's).
pub fn data_age_s(built_at: u64) -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    now.saturating_sub(built_at)
}

impl Stage {
    pub(crate) fn status(&self) -> PluginStatus {
        match &self.enricher {
            Some(e) => e.status(),
            None => PluginStatus::new(PluginState::Disabled),
        }
    }

    fn report(&self) -> StageReport {
        let h = &self.history;
        let events = h.events.load(Ordering::Relaxed);
        let nanos = h.nanos.load(Ordering::Relaxed);
        let last_error = h.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Plugins keep their messages short; this is the backstop for the
        // texts every report, log reader and the public metrics show.
        let mut status = self.status();
        status.error = status.error.map(cap_message);
        for source in &mut status.sources {
            source.error = source.error.take().map(cap_message);
        }
        StageReport {
            name: self.name.clone(),
            plugin: self.entry.plugin.clone(),
            enabled: self.enricher.is_some(),
            data_age_s: status.data_built_at.map(data_age_s),
            status,
            generation: self.generation,
            generation_loaded_at: rfc3339(self.loaded_at),
            reloads: h.reloads.load(Ordering::Relaxed),
            reload_failures: h.reload_failures.load(Ordering::Relaxed),
            last_reload_error_at: last_error.as_ref().map(|(at, _)| rfc3339(*at)),
            last_reload_error: last_error.map(|(_, e)| cap_message(e)),
            watched: self.enricher.as_ref().map(|e| e.watch_paths()).unwrap_or_default(),
            batches: h.batches.load(Ordering::Relaxed),
            events,
            mean_ns_per_event: if events == 0 { 0.0 } else { nanos as f64 / events as f64 },
            total_ns: nanos,
            event_duration_buckets: h.event_buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
        }
    }
}

/// The output-key, captured-field and fact tables a chain's stages index
/// into. Only ever appended to, so ids handed to a stage stay valid in
/// every later chain that reuses it.
#[derive(Clone, Default)]
pub(crate) struct KeyTables {
    pub keys: Vec<Box<str>>,
    pub text_fields: Vec<Box<str>>,
    pub facts: Vec<FactInfo>,
}

impl KeyTables {
    pub(crate) fn of(chain: &Chain) -> Self {
        KeyTables { keys: chain.keys.clone(), text_fields: chain.spec.text_fields.clone(), facts: chain.facts.to_vec() }
    }
}

/// Builds one entry (a disabled entry is a stage without an enricher).
pub(crate) fn build_stage(
    entry: &ChainEntryConfig,
    registry: &Registry,
    env: &BuildEnv,
    tables: &mut KeyTables,
    generation: u64,
    history: Arc<StageHistory>,
    earlier: &[Arc<Stage>],
) -> Result<Stage, ConfigError> {
    let factory = registry.get(&entry.plugin).ok_or_else(|| {
        entry.error(format!("unknown plugin {:?} (known: {})", entry.plugin, registry.kinds().join(", ")))
    })?;
    let name = entry.stage_name();
    let mut keys = Vec::new();
    let enricher = if entry.enabled {
        let mut ctx = BuildContext {
            base_dir: &env.base_dir,
            state_dir: env.state_dir.as_deref(),
            keys: &mut tables.keys,
            text_fields: &mut tables.text_fields,
            facts: &mut tables.facts,
            stage: Arc::from(name.as_str()),
            carried: &history.carried,
            earlier: crate::plugin::Earlier {
                stages: earlier.iter().map(|s| s.name.clone()).collect(),
                keys: earlier.iter().flat_map(|s| s.keys.iter().copied()).collect(),
            },
            declared: Vec::new(),
        };
        let built = factory.build(&entry.options, &mut ctx);
        keys = ctx.declared;
        Some(built.map_err(|e| entry.error(cap_message(format!("{name}: {e:#}"))))?)
    } else {
        None
    };
    Ok(Stage { name, entry: entry.clone(), enricher, generation, loaded_at: SystemTime::now(), history, keys })
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stages: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("Chain").field("stages", &stages).field("keys", &self.keys).finish()
    }
}
