//! The engine's part of `config.toml`: the `[[chain]]` entries, where the
//! file lives (relative paths in options are resolved against its
//! directory), the environment overrides of chain entries, and the JSON
//! Schema of the entries.
//!
//! The rest of the file (`[server]`, `[auth]`, `[reload]`) belongs to the
//! service, which parses its sections from the same text with
//! [`Config::parse_sections`] (same error reporting, with file and line) and
//! refuses unknown keys there: this parse reads only `chain` and ignores
//! every other top-level key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::entry::{line_of, resolve_relative};
pub use crate::entry::{ChainEntryConfig, ConfigError, Location};
use crate::registry::Registry;

/// Largest configuration file read (4 MiB; a real one is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// What the engine reads from the configuration file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The enricher chain, in order.
    pub chain: Vec<ChainEntryConfig>,
    /// Whether the file names the chain at all (`[[chain]]` entries, or
    /// `chain = []` written out). A file without it (empty, or cut before
    /// its first `[[chain]]`) does not empty a running chain on reload.
    pub chain_declared: bool,
    /// Where the file was read from (for messages) and the directory that
    /// relative paths in it are resolved against.
    pub path: PathBuf,
    pub base_dir: PathBuf,
}

/// The top level as the engine sees it: other keys are the service's.
#[derive(Deserialize)]
struct ChainFile {
    #[serde(default)]
    chain: Vec<ChainEntryConfig>,
}

impl Config {
    /// Reads `path` as text, refusing a file over [`MAX_CONFIG_BYTES`]
    /// unread.
    pub fn read(path: &Path) -> Result<String, ConfigError> {
        let error =
            |message: String| ConfigError { location: Location { path: path.to_path_buf(), line: None }, message };
        let bytes = crate::limits::read_capped(path, MAX_CONFIG_BYTES)
            .map_err(|e| error(format!("cannot read configuration: {e}")))?;
        String::from_utf8(bytes).map_err(|e| {
            error(format!("cannot read configuration: not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()))
        })
    }

    /// Reads and parses `path`; does not apply environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::parse(&Config::read(path)?, path)
    }

    /// Parses configuration text; `path` is used for messages and to resolve
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: ChainFile = Config::parse_sections(text, path)?;
        let mut config = Config { chain: file.chain, ..Config::default() };
        // A second parse of a small file, to tell `chain = []` from no chain.
        config.chain_declared =
            !config.chain.is_empty() || toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("chain"));
        for entry in &mut config.chain {
            entry.location = Location { path: path.to_path_buf(), line: entry.location.line.map(|o| line_of(text, o)) };
        }
        config.path = path.to_path_buf();
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if config.base_dir.as_os_str().is_empty() {
            config.base_dir = PathBuf::from(".");
        }
        Ok(config)
    }

    /// Parses `text` (the file at `path`) as `T`, with errors naming the
    /// file and line: how the service reads its own sections from the same
    /// file.
    pub fn parse_sections<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let key = e.span().and_then(|s| key_at(text, s.start));
            ConfigError {
                location: Location { path: path.to_path_buf(), line: e.span().map(|s| line_of(text, s.start)) },
                // serde's type errors name the expected type, not the key:
                // `expected u64` alone does not say which setting.
                message: match key {
                    Some(key) if !e.message().contains(&format!("`{key}`")) => format!("{key}: {}", e.message()),
                    _ => e.message().to_string(),
                },
            }
        })
    }

    /// `path` as written in this file: absolute paths are kept, relative
    /// ones are resolved against the file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        resolve_relative(&self.base_dir, path)
    }

    /// Applies the environment variables that concern chain entries:
    /// `ENRICH_ENABLE_<PLUGIN>` and each plugin's own (`GEOIP_CITY_DB`, ...).
    pub fn apply_env(&mut self, registry: &Registry, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for entry in &mut self.chain {
            let var = format!("ENRICH_ENABLE_{}", entry.plugin.to_ascii_uppercase().replace('-', "_"));
            if let Some(value) = env(&var) {
                entry.enabled = parse_bool(&value).ok_or_else(|| {
                    entry.error(format!("{var}={value:?} is not a boolean (true/false, 1/0, yes/no, on/off)"))
                })?;
            }
            let Some(factory) = registry.get(&entry.plugin) else { continue };
            for o in factory.env_overrides() {
                if let Some(value) = env(o.var) {
                    let value = if o.list {
                        toml::Value::Array(
                            value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.into()).collect(),
                        )
                    } else {
                        toml::Value::String(value)
                    };
                    entry.options.insert(o.option.to_string(), value);
                }
            }
        }
        Ok(())
    }

    /// The JSON Schema of the `chain` key, with each registered plugin's
    /// options: the service puts it into the schema of the whole file.
    pub fn chain_schema(registry: &Registry) -> serde_json::Value {
        let entries: Vec<serde_json::Value> = registry
            .factories()
            .map(|f| {
                let mut s = serde_json::to_value(f.options_schema()).expect("schema serializes");
                if let Some(obj) = s.as_object_mut() {
                    let props = obj.entry("properties").or_insert_with(|| serde_json::json!({}));
                    props["plugin"] = serde_json::json!({ "const": f.kind(), "description": f.description() });
                    props["name"] = serde_json::json!({ "type": "string", "description": "Entry name; defaults to the plugin kind." });
                    props["enabled"] = serde_json::json!({ "type": "boolean", "default": true });
                    let required = obj.entry("required").or_insert_with(|| serde_json::json!([]));
                    if let Some(r) = required.as_array_mut() {
                        r.push("plugin".into());
                    }
                }
                s
            })
            .collect();
        serde_json::json!({
            "description": "The enricher chain, in order.",
            "type": "array",
            "items": { "oneOf": entries },
        })
    }
}

/// The setting whose value starts at `offset`: `[table] key` when the
/// line reads `key = value`, `None` for anything else (a header, a value
/// spread over lines).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let (key, _) = text[line_start..offset].split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let table = text[..line_start].lines().rev().map(str::trim).find(|l| l.starts_with('['));
    let table = table.map(|t| t.split('#').next().unwrap_or(t).trim());
    Some(match table {
        Some(table) => format!("{table} {key}"),
        None => key.to_string(),
    })
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Sections {
        reload: Option<Reload>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Reload {
        debounce_ms: u64,
    }

    #[test]
    fn type_errors_name_the_table_and_key() {
        let text = "# comment\n[reload] # the reload section\ndebounce_ms = \"x\"\n";
        let e = Config::parse_sections::<Sections>(text, Path::new("c.toml")).unwrap_err();
        assert_eq!(e.location.line, Some(3));
        assert!(e.message.starts_with("[reload] debounce_ms: invalid type: string \"x\""), "{}", e.message);
        assert_eq!(key_at("a = 1\n", 4).as_deref(), Some("a"));
        assert_eq!(key_at("[t]\n", 1), None);
    }
}
