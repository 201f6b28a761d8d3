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
    /// Set when the entries came from the file `chain_file` names rather
    /// than from this one.
    pub chain_file: Option<ChainFileInfo>,
}

/// The separate file the `[[chain]]` entries were read from (`chain_file =
/// "chain.toml"`): a file a fleet can be sent as a whole (an `[[update]]`
/// entry mirrors it from a bucket) without also sending each instance's
/// server settings and keys, which stay in `config.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainFileInfo {
    /// Resolved against `config.toml`'s directory.
    pub path: PathBuf,
    /// SHA-256 of the bytes the entries were parsed from: the content's
    /// identity for reports and origins.
    pub sha256: String,
}

/// The top level as the engine sees it: other keys are the service's.
#[derive(Deserialize)]
struct TopLevel {
    #[serde(default)]
    chain: Vec<ChainEntryConfig>,
    chain_file: Option<PathBuf>,
}

/// A chain file holds `[[chain]]` entries and nothing else: a published
/// file cannot carry server settings or keys into an instance.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainOnly {
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

    /// Parses a chain file (`chain_file = ...`): `[[chain]]` entries and
    /// nothing else, each located in that file. Also what `enrichd publish
    /// chain` checks before a fleet is sent the file.
    pub fn parse_chain_file(text: &str, path: &Path) -> Result<Vec<ChainEntryConfig>, ConfigError> {
        let only: ChainOnly = Config::parse_sections(text, path)?;
        Ok(located(only.chain, text, path))
    }

    /// Parses configuration text; `path` is used for messages and to resolve
    /// relative paths.
    ///
    /// With `chain_file = "..."` the entries are read from that file
    /// instead (relative to this file's directory; every path inside it is
    /// too, so one published chain file means the same on every instance).
    /// Setting both is refused: which one wins would be a guess.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let top: TopLevel = Config::parse_sections(text, path)?;
        let mut base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if base_dir.as_os_str().is_empty() {
            base_dir = PathBuf::from(".");
        }
        let mut config = Config { path: path.to_path_buf(), ..Config::default() };
        let declared_here = declares_chain(&top.chain, text);
        match top.chain_file {
            None => {
                config.chain = located(top.chain, text, path);
                config.chain_declared = declared_here;
            }
            Some(_) if declared_here => {
                let offset = text.find("chain_file").unwrap_or(0);
                return Err(ConfigError {
                    location: Location { path: path.to_path_buf(), line: Some(line_of(text, offset)) },
                    message: "chain_file: set either `chain_file` or [[chain]] entries in this file, not both".into(),
                });
            }
            Some(file) => {
                let chain_path = resolve_relative(&base_dir, &file);
                let chain_text = Config::read(&chain_path)?;
                config.chain = Config::parse_chain_file(&chain_text, &chain_path)?;
                config.chain_declared = declares_chain(&config.chain, &chain_text);
                use sha2::{Digest, Sha256};
                let sha256 = crate::plugin::to_hex(&Sha256::digest(chain_text.as_bytes()));
                config.chain_file = Some(ChainFileInfo { path: chain_path, sha256 });
            }
        }
        config.base_dir = base_dir;
        Ok(config)
    }

    /// Parses `text` (the file at `path`) as `T`, with errors naming the
    /// file and line: how the service reads its own sections from the same
    /// file.
    pub fn parse_sections<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let key = e.span().and_then(|s| key_at(text, s.start));
            // serde quotes the value it refused (`invalid type: string
            // "…"`); in a secret setting that value is the secret, and
            // these errors reach logs and read-only API keys.
            let secret = e.span().is_some_and(|s| in_secret_setting(text, s.start, key.as_deref()));
            let said = if secret { unquote(e.message()) } else { e.message().to_string() };
            ConfigError {
                location: Location { path: path.to_path_buf(), line: e.span().map(|s| line_of(text, s.start)) },
                // serde's type errors name the expected type, not the key:
                // `expected u64` alone does not say which setting.
                message: match key {
                    Some(key) if !said.contains(&format!("`{key}`")) => format!("{key}: {said}"),
                    _ => said,
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

/// Whether a file names the chain at all: entries, or `chain = []` written
/// out (a second parse of a small file tells that from no chain).
pub fn declares_chain(entries: &[ChainEntryConfig], text: &str) -> bool {
    !entries.is_empty() || toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("chain"))
}

/// The entries with their lines in the file they were read from.
fn located(mut entries: Vec<ChainEntryConfig>, text: &str, path: &Path) -> Vec<ChainEntryConfig> {
    for entry in &mut entries {
        entry.location = Location { path: path.to_path_buf(), line: entry.location.line.map(|o| line_of(text, o)) };
    }
    entries
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
    Some(match table_at(text, line_start) {
        Some(table) => format!("{table} {key}"),
        None => key.to_string(),
    })
}

/// The last table header (`[server]`, `[[auth.keys]]`) before `end`,
/// without a trailing comment.
fn table_at(text: &str, end: usize) -> Option<&str> {
    let header = text[..end].lines().rev().map(str::trim).find(|l| l.starts_with('['))?;
    Some(header.split('#').next().unwrap_or(header).trim())
}

/// Whether the error at `offset` concerns a setting that may hold a
/// secret: anything in `[auth]` (keys, digests), or a key named like one.
fn in_secret_setting(text: &str, offset: usize, key: Option<&str>) -> bool {
    let in_auth = table_at(text, offset.min(text.len())).is_some_and(|t| t.trim_start_matches('[').starts_with("auth"));
    let named = key.and_then(|k| k.rsplit([' ', '.']).next()).is_some_and(|name| {
        let name = name.to_ascii_lowercase();
        ["key", "keys", "password", "token", "secret", "sha256"].iter().any(|s| name.ends_with(s))
    });
    in_auth || named
}

/// `message` with everything from its first double quote to its last
/// replaced by `"…"`: serde quotes the refused value with Rust's escapes,
/// so a quote inside it (`\"`) must not end the part that is hidden.
fn unquote(message: &str) -> String {
    match (message.find('"'), message.rfind('"')) {
        (Some(first), Some(last)) if first < last => {
            format!("{}\"…\"{}", &message[..first], &message[last + 1..])
        }
        _ => message.to_string(),
    }
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

    /// A secret given with the wrong type is not quoted back: these errors
    /// go to logs and to read-only API keys (`last_config_error`).
    #[test]
    fn errors_in_secret_settings_do_not_quote_the_value() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Auth {
            auth: Keys,
            output: Option<Vec<Creds>>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Keys {
            admin_keys: Vec<String>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Creds {
            batch_max: Option<u32>,
            password: Option<Vec<String>>,
        }
        let error = |text: &str| Config::parse_sections::<Auth>(text, Path::new("c.toml")).unwrap_err().message;
        let e = error("[auth]\nadmin_keys = \"s3cr3t-admin\"\n");
        assert!(!e.contains("s3cr3t"), "{e}");
        assert!(e.contains("admin_keys") && e.contains("expected a sequence"), "{e}");
        let e = error("[auth]\nadmin_keys = [\n  \"fine\",\n  \"s3cr3t\" \"\n]\n");
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = error("[auth]\nadmin_keys = []\n[[output]]\npassword = \"hunter2\"\n");
        assert!(!e.contains("hunter2"), "{e}");
        // Other settings still say what they refused.
        let e = error("[auth]\nadmin_keys = []\n[[output]]\nbatch_max = \"lots\"\n");
        assert!(e.contains("\"lots\""), "{e}");
        assert_eq!(unquote(r#"a "b" c "d" e"#), r#"a "…" e"#);
        // serde's escapes: a quote inside the value does not end the cut.
        let e = error("[auth]\nadmin_keys = \"ab\\\"cd-secret\"\n");
        assert!(!e.contains("cd-secret"), "{e}");
    }

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

    #[test]
    fn a_chain_file_holds_the_entries_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let chain = dir.path().join("chain.toml");
        std::fs::write(&chain, "# published\n[[chain]]\nplugin = \"geoip\"\n\n[[chain]]\nplugin = \"ti\"\n").unwrap();
        let c = Config::parse("chain_file = \"chain.toml\"\n[reload]\nwatch = true\n", &config).unwrap();
        assert_eq!(c.chain.iter().map(|e| e.plugin.as_str()).collect::<Vec<_>>(), ["geoip", "ti"]);
        assert!(c.chain_declared);
        // Lines and messages name the chain file; paths resolve against
        // config.toml's directory.
        assert_eq!(c.chain[1].location.path, chain);
        assert_eq!(c.chain[1].location.line, Some(5));
        assert_eq!(c.base_dir, dir.path());
        let info = c.chain_file.unwrap();
        assert_eq!(info.path, chain);
        assert_eq!(info.sha256.len(), 64);

        // A chain file cannot carry other sections.
        std::fs::write(&chain, "[[chain]]\nplugin = \"geoip\"\n\n[server]\nlisten = \"0.0.0.0:1\"\n").unwrap();
        let e = Config::parse("chain_file = \"chain.toml\"\n", &config).unwrap_err();
        assert_eq!(e.location.path, chain);
        assert!(e.message.contains("unknown field `server`"), "{}", e.message);

        // Both at once is refused, naming the line of `chain_file`.
        let e = Config::parse("\nchain_file = \"chain.toml\"\n[[chain]]\nplugin = \"ti\"\n", &config).unwrap_err();
        assert_eq!(e.location.line, Some(2));
        assert!(e.message.contains("not both"), "{}", e.message);

        // A missing file is an error naming it; an empty one declares no chain.
        let e = Config::parse("chain_file = \"gone.toml\"\n", &config).unwrap_err();
        assert!(e.to_string().contains("gone.toml"), "{e}");
        std::fs::write(&chain, "").unwrap();
        assert!(!Config::parse("chain_file = \"chain.toml\"\n", &config).unwrap().chain_declared);
    }
}
