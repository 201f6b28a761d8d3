//! Options of a `wasm` chain entry.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

/// What the module's results become.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Score, reasons and tags: written as `score_field`, `reasons_field`,
    /// `tags_field`.
    #[default]
    Rule,
    /// Fields: the module may set the keys listed in `fields`.
    Enricher,
}

/// A WebAssembly rule or custom enricher.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WasmOptions {
    /// Path of the `.wasm` module (relative to the config file).
    pub module: PathBuf,
    /// `rule`: the module scores events (score, reasons, tags); `enricher`:
    /// it sets the keys listed in `fields`.
    #[serde(default)]
    pub role: Role,
    /// Keys an enricher may set; anything else it writes is refused.
    #[serde(default)]
    pub fields: Vec<String>,
    /// Values handed to the module (read with the SDK's `config_value`).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub config: BTreeMap<String, toml::Value>,
    /// Per-call deadline in milliseconds of CPU time of the calling thread
    /// (time waiting for a core on a busy host does not count): the guest
    /// is interrupted at it (epoch interruption, then the thread's CPU
    /// clock), and a call that used more anyway (time spent in one
    /// host-side operation) is a `timeout` failure too; its results are
    /// not applied.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Linear-memory cap per instance, MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_limit_mib: u64,
    /// Elements per table cap (each of at most 4 tables per instance);
    /// growing past it fails the call (`table`).
    #[serde(default = "default_table_elements")]
    pub table_limit_elements: u32,
    /// Largest `.wasm` (or `.wat`) file accepted, MiB; a bigger file is
    /// refused before it is read.
    #[serde(default = "default_module_size_mib")]
    pub module_size_limit_mib: u64,
    /// Output key of a rule's score (0-100).
    #[serde(default = "default_score_field")]
    pub score_field: String,
    /// Output key of a rule's list of reasons.
    #[serde(default = "default_reasons_field")]
    pub reasons_field: String,
    /// Output key of a rule's list of tags.
    #[serde(default = "default_tags_field")]
    pub tags_field: String,
    /// Score given to events of a failed batch (`null` when unset).
    #[serde(default)]
    pub fallback_score: Option<u8>,
    /// Failures within `breaker_window_s` that open the circuit breaker.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: usize,
    /// Window of the circuit breaker, seconds: failures older than this no
    /// longer count.
    #[serde(default = "default_breaker_window_s")]
    pub breaker_window_s: u64,
    /// Seconds the open breaker waits before letting one call through as a
    /// trial: success closes it, failure opens it again for twice as long
    /// (at most 600 s; a larger value is taken as 600). `0`: it stays open
    /// until the module is replaced.
    #[serde(default = "default_breaker_cooldown_s")]
    pub breaker_cooldown_s: u64,
    /// Load the module only with a valid Ed25519 signature by one of
    /// `trusted_keys` in `<module>.sig` (raw 64 bytes or base64, as
    /// `openssl pkeyutl -sign -rawin` or `enrichd rule sign` write it).
    /// Unsigned or tampered modules are refused; the stage keeps its last
    /// good module.
    #[serde(default)]
    pub require_signature: bool,
    /// Ed25519 public keys (PEM, as `openssl pkey -pubout` or `enrichd rule
    /// keygen` write them) whose signatures this stage accepts. With keys
    /// set, a `.sig` that is present must verify even when signatures are
    /// not required.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// A candidate rule run in shadow next to this one: on the same
    /// batches, its verdicts compared with the live ones and summarised at
    /// `GET /v1/rules/{name}/shadow`, never written (see README "Shadow
    /// rules"). Loaded with this stage's limits and signing policy; a
    /// shadow deployed through the API takes its place until removed.
    #[serde(default)]
    pub shadow_module: Option<PathBuf>,
}

fn default_deadline_ms() -> u64 {
    10
}
fn default_memory_mib() -> u64 {
    16
}
/// Rust and C rules have tables of tens to hundreds of entries (one per
/// function whose address is taken); 10,000 is ~80 KiB per table.
pub(crate) const DEFAULT_TABLE_ELEMENTS: u32 = 10_000;
fn default_table_elements() -> u32 {
    DEFAULT_TABLE_ELEMENTS
}
/// The committed modules are 1-23 KiB, so 16 MiB leaves room for big
/// generated code; a load peaks at ~5x the file size (bytes, compilation),
/// so this bounds it to ~100 MiB.
pub(crate) const DEFAULT_MODULE_SIZE_MIB: u64 = 16;
fn default_module_size_mib() -> u64 {
    DEFAULT_MODULE_SIZE_MIB
}
fn default_score_field() -> String {
    "risk_score".into()
}
fn default_reasons_field() -> String {
    "reasons".into()
}
fn default_tags_field() -> String {
    "tags".into()
}
fn default_breaker_failures() -> usize {
    5
}
fn default_breaker_window_s() -> u64 {
    60
}
fn default_breaker_cooldown_s() -> u64 {
    30
}

impl WasmOptions {
    /// `config` as strings (numbers and booleans are written as text).
    pub fn config_strings(&self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Array(items) => items
                        .iter()
                        .map(|i| i.as_str().map(str::to_owned).unwrap_or_else(|| i.to_string()))
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect()
    }
}
