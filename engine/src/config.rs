//! `config.toml`: loading, environment overrides and error reporting with
//! file and line.

use std::fmt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

use crate::registry::Registry;

/// Largest configuration file read (4 MiB; a real one is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP server settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// API keys.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Hot reload of data files, modules and the chain.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// Output layout (profiles).
    #[serde(default)]
    pub output: crate::profile::OutputConfig,
    /// The enricher chain, in order. Each entry: `plugin` (the kind),
    /// optional `name` (defaults to the plugin), `enabled` (default true),
    /// and the plugin's own options.
    #[serde(default)]
    #[schemars(with = "Vec<serde_json::Value>")]
    pub chain: Vec<ChainEntryConfig>,
    /// Whether the file names the chain at all (`[[chain]]` entries, or
    /// `chain = []` written out). A file without it (empty, or cut before
    /// its first `[[chain]]`) does not empty a running chain on reload.
    #[serde(skip)]
    pub chain_declared: bool,
    /// Where the file was read from (for messages) and the directory that
    /// relative paths in it are resolved against.
    #[serde(skip)]
    pub path: PathBuf,
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on (`--listen` overrides).
    pub listen: String,
    /// Largest accepted request body in bytes, counted on the bytes actually
    /// received and again after gzip decompression.
    pub max_body_bytes: usize,
    /// Most records accepted in one `/v1/ingest` batch.
    pub max_records: usize,
    /// Require an API key for `GET /v1/metrics` (public by default, like
    /// health and version).
    pub metrics_require_key: bool,
    /// Value of the `X-API-Version` header on `/v1` responses.
    pub api_version: String,
    /// Writable directory for state kept across restarts (indicators added
    /// through the API). Relative to the configuration file; created on
    /// start.
    pub state_dir: PathBuf,
    /// Most client connections open at once. At the cap, a new connection
    /// evicts the connection that has waited longest for a request (idle
    /// keep-alive or unfinished request head); when every connection is in
    /// a request, it gets a 503 and is closed. Lowered at start to fit the
    /// process's file-descriptor limit.
    pub max_connections: usize,
    /// Seconds a client has to send a complete request head: on a new
    /// connection counted from accept, on a kept-alive one from its first
    /// byte. Then the connection is closed.
    pub header_timeout_s: u64,
    /// Seconds a kept-alive connection may stay idle between requests.
    pub keepalive_timeout_s: u64,
    /// Seconds the server waits for the next piece of a request body; a
    /// stalled body gets 408 and the connection is closed.
    pub body_timeout_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 5 * 1024 * 1024,
            max_records: 10_000,
            metrics_require_key: false,
            api_version: "1.0.0".into(),
            state_dir: PathBuf::from("state"),
            // Reverse-proxy defaults (nginx: client_header_timeout 60s,
            // keepalive_timeout 75s, client_body_timeout 60s).
            max_connections: 4096,
            header_timeout_s: 60,
            keepalive_timeout_s: 75,
            body_timeout_s: 60,
        }
    }
}

/// `[reload]`
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Watch the chain's data files, modules and this configuration file,
    /// and reload on change. `POST /v1/reload` and SIGHUP work either way.
    pub watch: bool,
    /// Quiet time after the last file event before reloading, so a file
    /// being written is read once it is complete.
    pub debounce_ms: u64,
    /// When set, every enriched event gets this field: the chain generation
    /// and each stage's generation that produced it (`{"chain": 3, "ti": 2,
    /// ...}`), so any verdict can be traced to the data it was made with.
    pub generation_field: Option<String>,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig { watch: true, debounce_ms: 100, generation_field: None }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Bearer tokens accepted on protected endpoints. The `API_KEY`
    /// environment variable adds one. With no key at all, protected endpoints
    /// refuse every request (fail closed).
    pub api_keys: Vec<String>,
    /// Bearer tokens accepted on administrative endpoints (`POST
    /// /v1/reload`, `PUT`/`DELETE /v1/indicators`). The `ADMIN_API_KEY`
    /// environment variable adds one. Ordinary keys are not admin keys.
    pub admin_keys: Vec<String>,
}

/// One `[[chain]]` entry.
#[derive(Debug, Clone)]
pub struct ChainEntryConfig {
    pub plugin: String,
    pub name: Option<String>,
    pub enabled: bool,
    /// Everything else in the entry: the plugin's options.
    pub options: toml::Table,
    /// Where the entry starts, for error messages.
    pub location: Location,
}

/// A place in the configuration file.
#[derive(Debug, Clone, Default)]
pub struct Location {
    pub path: PathBuf,
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}", self.path.display(), line),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

/// A configuration problem, located in the file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ConfigError {
    pub location: Location,
    pub message: String,
}

/// `path` as written in a configuration file whose directory is `base_dir`:
/// absolute paths are kept, relative ones are resolved against the file.
pub(crate) fn resolve_relative(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() || base_dir == Path::new(".") {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

impl ChainEntryConfig {
    /// The stage's name: `name`, or the plugin kind.
    pub fn stage_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.plugin.clone())
    }

    /// The error for a second entry named `name`.
    pub(crate) fn duplicate_name(&self, name: &str) -> ConfigError {
        self.error(format!("duplicate chain entry name {name:?}; set `name` to tell them apart"))
    }

    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError { location: self.location.clone(), message: message.into() }
    }
}

impl<'de> Deserialize<'de> for ChainEntryConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let spanned = toml::Spanned::<toml::Table>::deserialize(d)?;
        let start = spanned.span().start;
        let mut options = spanned.into_inner();
        let plugin = match options.remove("plugin") {
            Some(toml::Value::String(s)) => s,
            Some(_) => return Err(D::Error::custom("chain entry: `plugin` must be a string")),
            None => return Err(D::Error::custom("chain entry: `plugin` is required (e.g. plugin = \"geoip\")")),
        };
        let name = match options.remove("name") {
            Some(toml::Value::String(s)) => Some(s),
            Some(_) => return Err(D::Error::custom("chain entry: `name` must be a string")),
            None => None,
        };
        let enabled = match options.remove("enabled") {
            Some(toml::Value::Boolean(b)) => b,
            Some(_) => return Err(D::Error::custom("chain entry: `enabled` must be true or false")),
            None => true,
        };
        // The byte offset is turned into a line once the file text is known.
        Ok(ChainEntryConfig {
            plugin,
            name,
            enabled,
            options,
            location: Location { path: PathBuf::new(), line: Some(start) },
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

impl Config {
    /// Reads and parses `path`; does not apply environment overrides. A
    /// file over [`MAX_CONFIG_BYTES`] is refused unread.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let error =
            |message: String| ConfigError { location: Location { path: path.to_path_buf(), line: None }, message };
        let bytes = crate::limits::read_capped(path, MAX_CONFIG_BYTES)
            .map_err(|e| error(format!("cannot read configuration: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            error(format!("cannot read configuration: not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()))
        })?;
        Config::parse(&text, path)
    }

    /// Parses configuration text; `path` is used for messages and to resolve
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError {
            location: Location { path: path.to_path_buf(), line: e.span().map(|s| line_of(text, s.start)) },
            message: e.message().to_string(),
        })?;
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

    /// Applies the environment variables teams already use: `API_KEY`,
    /// `ENRICH_ENABLE_<PLUGIN>` and each plugin's own (`GEOIP_CITY_DB`, ...).
    pub fn apply_env(&mut self, registry: &Registry, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(key) = env("API_KEY").filter(|k| !k.is_empty()) {
            self.auth.api_keys.push(key);
        }
        if let Some(key) = env("ADMIN_API_KEY").filter(|k| !k.is_empty()) {
            self.auth.admin_keys.push(key);
        }
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

    /// The environment chain stages are built in.
    pub fn build_env(&self) -> crate::chain::BuildEnv {
        crate::chain::BuildEnv {
            base_dir: self.base_dir.clone(),
            state_dir: Some(self.state_dir()),
            generation_field: self.reload.generation_field.clone(),
        }
    }

    /// `server.state_dir`, resolved against the file's directory.
    pub fn state_dir(&self) -> PathBuf {
        resolve_relative(&self.base_dir, &self.server.state_dir)
    }

    /// The JSON Schema of the file, with each registered plugin's options.
    pub fn json_schema(registry: &Registry) -> serde_json::Value {
        let mut schema = serde_json::to_value(schemars::schema_for!(Config)).expect("schema serializes");
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
        schema["properties"]["chain"] = serde_json::json!({
            "description": "The enricher chain, in order.",
            "type": "array",
            "items": { "oneOf": entries },
        });
        schema
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}
