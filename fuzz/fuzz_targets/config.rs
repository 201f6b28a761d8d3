//! `config.toml` as the engine reads it: the `[[chain]]` entries (with
//! line numbers for messages), environment overrides against the real
//! plugin registry, and the error texts. Any text must parse or give a
//! `ConfigError`, never a panic.
#![no_main]

use std::path::Path;

use enrichd_engine::{Config, Registry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/etc/enrichd/config.toml");
    let mut config = match Config::parse(text, path) {
        Ok(config) => config,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let mut registry = Registry::default();
    enrichd_plugins::register_all(&mut registry);
    let env = |var: &str| match var {
        v if v.starts_with("ENRICH_ENABLE_") => Some(if text.len() % 2 == 0 { "yes" } else { "maybe" }.to_string()),
        _ => Some("a.mmdb, b.txt,,".to_string()),
    };
    if let Err(e) = config.apply_env(&registry, env) {
        let _ = e.to_string();
    }
    for entry in &config.chain {
        let _ = entry.stage_name();
        let _ = entry.error("checked").to_string();
        let _ = config.resolve(Path::new(&entry.plugin));
    }
    let _ = Config::parse_sections::<serde_json::Value>(text, path).map_err(|e| e.to_string());
});
