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

#[cfg(test)]
mod tests {
    /// The runtime takes its keys out of an entry before the output sees it:
    /// a runtime key named like an output's option would silently swallow it
    /// (it happened: both had an `ack_timeout_ms`).
    #[test]
    fn runtime_keys_never_shadow_an_output_option() {
        let registry = super::registry();
        let mut clashes = Vec::new();
        for factory in registry.outputs() {
            let schema = serde_json::to_value(factory.options_schema()).unwrap();
            for key in schema["properties"].as_object().into_iter().flatten().map(|(k, _)| k) {
                if crate::delivery::options::RUNTIME_KEYS.contains(&key.as_str()) {
                    clashes.push(format!("{}: {key}", factory.kind()));
                }
            }
        }
        assert!(registry.outputs().count() >= 3, "elastic, splunk, file registered");
        assert!(clashes.is_empty(), "output options shadowed by runtime keys: {clashes:?}");
    }
}
