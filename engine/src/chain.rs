//! The enricher chain: the ordered, configured stages a batch goes through.
//!
//! A [`Chain`] is immutable once built. The server holds it in an
//! [`Engine`] behind an `ArcSwap`: each batch takes one snapshot and runs
//! entirely on it, so a chain swapped in later (hot reload) never mixes with
//! one in flight, and readers never wait on a lock.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::batch::Batch;
use crate::config::{ChainEntryConfig, ConfigError};
use crate::event::Event;
use crate::format::Format;
use crate::parse::ParseSpec;
use crate::plugin::{BuildContext, Enricher, PluginState, PluginStatus};
use crate::registry::Registry;

/// One configured entry of the chain.
pub struct Stage {
    name: String,
    kind: String,
    enricher: Option<Box<dyn Enricher>>,
    stats: StageStats,
}

#[derive(Default)]
struct StageStats {
    batches: AtomicU64,
    events: AtomicU64,
    nanos: AtomicU64,
}

/// A stage's state and counters, as shown by `/v1/enrichers`.
#[derive(Debug, Serialize)]
pub struct StageReport {
    pub name: String,
    pub plugin: String,
    pub enabled: bool,
    #[serde(flatten)]
    pub status: PluginStatus,
    pub batches: u64,
    pub events: u64,
    /// Mean time per event spent in this stage, nanoseconds.
    pub mean_ns_per_event: f64,
}

pub struct Chain {
    stages: Vec<Stage>,
    keys: Vec<Box<str>>,
    spec: ParseSpec,
}

impl Chain {
    /// Builds every enabled entry with its plugin's factory.
    pub fn build(entries: &[ChainEntryConfig], registry: &Registry, base_dir: &Path) -> Result<Chain, ConfigError> {
        let mut keys = Vec::new();
        let mut text_fields = Vec::new();
        let mut stages = Vec::with_capacity(entries.len());
        for entry in entries {
            let factory = registry.get(&entry.plugin).ok_or_else(|| {
                entry.error(format!("unknown plugin {:?} (known: {})", entry.plugin, registry.kinds().join(", ")))
            })?;
            let name = entry.name.clone().unwrap_or_else(|| entry.plugin.clone());
            if stages.iter().any(|s: &Stage| s.name == name) {
                return Err(entry.error(format!("duplicate chain entry name {name:?}; set `name` to tell them apart")));
            }
            let enricher = if entry.enabled {
                let mut ctx = BuildContext { base_dir, keys: &mut keys, text_fields: &mut text_fields };
                Some(factory.build(&entry.options, &mut ctx).map_err(|e| entry.error(format!("{name}: {e:#}")))?)
            } else {
                None
            };
            stages.push(Stage { name, kind: entry.plugin.clone(), enricher, stats: StageStats::default() });
        }
        let spec = ParseSpec { text_fields, output_keys: keys.clone() };
        Ok(Chain { stages, keys, spec })
    }

    /// Runs every enabled stage over the batch, in order.
    pub fn run(&self, batch: &mut Batch) {
        let n = batch.len() as u64;
        for stage in &self.stages {
            let Some(enricher) = &stage.enricher else { continue };
            let started = Instant::now();
            enricher.enrich(&mut batch.view());
            let nanos = started.elapsed().as_nanos() as u64;
            stage.stats.batches.fetch_add(1, Ordering::Relaxed);
            stage.stats.events.fetch_add(n, Ordering::Relaxed);
            stage.stats.nanos.fetch_add(nanos, Ordering::Relaxed);
        }
    }

    /// The output key table: serialization needs it to name results.
    pub fn keys(&self) -> &[Box<str>] {
        &self.keys
    }

    /// What the parser must capture and watch for, for this chain.
    pub fn parse_spec(&self) -> &ParseSpec {
        &self.spec
    }

    /// Every stage's state, in chain order.
    pub fn reports(&self) -> Vec<StageReport> {
        self.stages
            .iter()
            .map(|s| {
                let status = match &s.enricher {
                    Some(e) => e.status(),
                    None => PluginStatus::new(PluginState::Disabled),
                };
                let events = s.stats.events.load(Ordering::Relaxed);
                let nanos = s.stats.nanos.load(Ordering::Relaxed);
                StageReport {
                    name: s.name.clone(),
                    plugin: s.kind.clone(),
                    enabled: s.enricher.is_some(),
                    status,
                    batches: s.stats.batches.load(Ordering::Relaxed),
                    events,
                    mean_ns_per_event: if events == 0 { 0.0 } else { nanos as f64 / events as f64 },
                }
            })
            .collect()
    }

    /// Everything the chain knows about one address: each stage contributes
    /// its section (`geo`, `asn`, `ti`, ...).
    pub fn lookup(&self, ip: IpAddr) -> serde_json::Map<String, serde_json::Value> {
        let mut out = serde_json::Map::new();
        out.insert("ip".into(), ip.to_string().into());
        for stage in &self.stages {
            if let Some(e) = &stage.enricher {
                e.lookup(ip, &mut out);
            }
        }
        out
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

/// The live chain, swappable without stopping traffic.
pub struct Engine {
    chain: ArcSwap<Chain>,
}

impl Engine {
    pub fn new(chain: Chain) -> Self {
        Engine { chain: ArcSwap::from_pointee(chain) }
    }

    /// The current chain. Hold the returned `Arc` for the whole batch.
    pub fn chain(&self) -> Arc<Chain> {
        self.chain.load_full()
    }

    /// Replaces the chain; batches already running finish on the old one.
    pub fn swap(&self, chain: Chain) {
        self.chain.store(Arc::new(chain));
    }
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stages: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("Chain").field("stages", &stages).field("keys", &self.keys).finish()
    }
}
