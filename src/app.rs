//! Assembling the service from configuration: registry, config with
//! environment overrides, the chain.

use std::path::Path;

use anyhow::Context;
use enrichd_engine::{Chain, Profiles, Registry};

use crate::service::ServiceConfig;

/// The plugin registry of this binary: every native plugin and the
/// WebAssembly host.
pub(crate) fn registry() -> Registry {
    let mut registry = Registry::new();
    enrichd_plugins::register_all(&mut registry);
    registry.register(Box::new(enrichd_plugins::asn_class::AsnClassFactory));
    registry.register(Box::new(enrichd_wasm::WasmFactory));
    registry
}

/// Loads `path`, applies environment overrides and builds the chain.
pub(crate) fn load(path: &Path, registry: &Registry) -> anyhow::Result<(ServiceConfig, Chain)> {
    let mut config = ServiceConfig::load(path)?;
    config.apply_env(registry, |name| std::env::var(name).ok())?;
    // Refuse a bad `[profiles]` (unknown profile, unreadable file) up front.
    let (profiles, _) = Profiles::from_config(&config.profiles, &config.engine.base_dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    enrichd_engine::profile::key_profiles(&config.profiles, &profiles)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let chain = Chain::build_in(&config.engine.chain, registry, &config.build_env())
        .with_context(|| format!("building the enricher chain from {}", path.display()))?;
    Ok((config, chain))
}
