//! The plugin interface: how the engine core talks to enrichers without
//! knowing any of them.
//!
//! A plugin is a [`PluginFactory`] registered under a kind name (`geoip`,
//! `ti`, ...). For each enabled chain entry of that kind the engine calls
//! [`PluginFactory::build`] with the entry's options and gets an
//! [`Enricher`], which is then called once per batch. Adding an enricher is
//! adding a factory to the registry; nothing in the core changes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::admin::{AdminResource, AdminResponse, StageRequest};
use crate::batch::BatchView;
use crate::event::{Event, KeyId, TextFieldId};
use crate::fact::{FactDecl, FactId, FactInfo};

/// Builds enrichers of one kind from chain-entry options.
pub trait PluginFactory: Send + Sync {
    /// The `plugin = "..."` name used in `config.toml`.
    fn kind(&self) -> &'static str;

    /// One line for `enrichd plugins` / docs.
    fn description(&self) -> &'static str;

    /// JSON Schema of this plugin's options (generated with `schemars`).
    fn options_schema(&self) -> schemars::Schema;

    /// Environment variables that override options of every chain entry of
    /// this kind (e.g. `GEOIP_CITY_DB` sets the geoip `database`).
    fn env_overrides(&self) -> &'static [EnvOverride] {
        &[]
    }

    /// Administrative resources this plugin serves on the server
    /// (`GET`/`PUT /v1/{name}`, `DELETE /v1/{name}/{id}`; see
    /// [`crate::admin`]). None by default.
    fn admin_resources(&self) -> Vec<AdminResource> {
        Vec::new()
    }

    /// Read-only views this plugin's stages answer at `GET /v1/{view}`
    /// (read scope), each a path under `/v1` such as `indicators/hits`;
    /// see [`Enricher::view`]. None by default.
    fn views(&self) -> &'static [&'static str] {
        &[]
    }

    /// The collection under which this plugin's stages answer actions at
    /// `/v1/{collection}/{stage}/{action}` (see [`crate::admin::StageRequest`]
    /// and [`Enricher::stage_action`]). None by default.
    fn stage_collection(&self) -> Option<&'static str> {
        None
    }

    /// Validates `options` and builds the enricher. A missing data file is
    /// not an error (the enricher reports itself `missing`); unreadable or
    /// corrupt data and invalid options are.
    fn build(&self, options: &toml::Table, ctx: &mut BuildContext<'_>) -> anyhow::Result<Box<dyn Enricher>>;
}

/// The one way a plugin reads its options: implement `Plugin` with a typed
/// `Options` (serde + schemars, doc comments on every field: they become
/// the schema and the README's configuration reference), and the blanket
/// implementation makes it a [`PluginFactory`]: the schema comes from the
/// type, and a chain entry's table is deserialized into it in one place,
/// with one error wording. Only the engine's own tests implement
/// `PluginFactory` by hand.
pub trait Plugin: Send + Sync {
    /// The options of one chain entry (`deny_unknown_fields` recommended).
    type Options: serde::de::DeserializeOwned + schemars::JsonSchema;

    /// The `plugin = "..."` name used in `config.toml`.
    fn kind(&self) -> &'static str;

    /// One line for `enrichd plugins` / docs.
    fn description(&self) -> &'static str;

    /// See [`PluginFactory::env_overrides`].
    fn env_overrides(&self) -> &'static [EnvOverride] {
        &[]
    }

    /// See [`PluginFactory::admin_resources`].
    fn admin_resources(&self) -> Vec<AdminResource> {
        Vec::new()
    }

    /// See [`PluginFactory::views`].
    fn views(&self) -> &'static [&'static str] {
        &[]
    }

    /// See [`PluginFactory::stage_collection`].
    fn stage_collection(&self) -> Option<&'static str> {
        None
    }

    /// Builds the enricher from parsed options (checks that a type cannot
    /// express, such as "not empty", belong here).
    fn build(&self, options: Self::Options, ctx: &mut BuildContext<'_>) -> anyhow::Result<Box<dyn Enricher>>;
}

impl<P: Plugin> PluginFactory for P {
    fn kind(&self) -> &'static str {
        Plugin::kind(self)
    }

    fn description(&self) -> &'static str {
        Plugin::description(self)
    }

    fn options_schema(&self) -> schemars::Schema {
        schemars::schema_for!(P::Options)
    }

    fn env_overrides(&self) -> &'static [EnvOverride] {
        Plugin::env_overrides(self)
    }

    fn admin_resources(&self) -> Vec<AdminResource> {
        Plugin::admin_resources(self)
    }

    fn views(&self) -> &'static [&'static str] {
        Plugin::views(self)
    }

    fn stage_collection(&self) -> Option<&'static str> {
        Plugin::stage_collection(self)
    }

    fn build(&self, options: &toml::Table, ctx: &mut BuildContext<'_>) -> anyhow::Result<Box<dyn Enricher>> {
        let options = P::Options::deserialize(toml::Value::Table(options.clone()))
            .map_err(|e| anyhow::anyhow!("invalid options: {e}"))?;
        Plugin::build(self, options, ctx)
    }
}

/// An environment variable that overrides a plugin option.
#[derive(Clone, Copy, Debug)]
pub struct EnvOverride {
    pub var: &'static str,
    pub option: &'static str,
    /// The option is a list: the value is split on commas.
    pub list: bool,
}

/// One stage of the chain.
///
/// Implementations must be cheap to call concurrently from several threads
/// (`&self`): keep data immutable or behind lock-free swaps.
pub trait Enricher: Send + Sync {
    /// Enriches every event of the batch in place.
    ///
    /// Per-event problems are recorded with [`Event::warn`], never returned:
    /// one bad record must not fail the others.
    fn enrich(&self, batch: &mut BatchView<'_>);

    /// Current state for `/v1/enrichers` and the metrics.
    fn status(&self) -> PluginStatus;

    /// Files and directories whose changes should reload this enricher
    /// (hot reload watches them). By default the paths of its sources.
    fn watch_paths(&self) -> Vec<PathBuf> {
        self.status().sources.into_iter().map(|s| s.path).collect()
    }

    /// Called on the live enricher before a rebuilt one (whose status is
    /// `next`, already judged at least as healthy) replaces it: `Err(why)`
    /// holds the rebuild back and the live data stays. For checks only the
    /// plugin can make, such as a feed that lost most of its entries. The
    /// message should say how to make the change go through on purpose.
    fn vet_successor(&self, _next: &PluginStatus) -> Result<(), String> {
        Ok(())
    }

    /// Called once when this enricher becomes live: its chain was built at
    /// start (or offline), or a reload swapped it in. Never called on a
    /// build that is refused or dropped (a reload refused by keep-last-good,
    /// a configuration refused by another entry, an output or a source).
    ///
    /// Why: `build` must not change anything a live stage sees, because a
    /// build is only a candidate. State shared with the live generation
    /// (`BuildContext::carried`) that a build wants to change is changed
    /// here instead, so a refused candidate leaves it as it was.
    fn went_live(&self) {}

    /// Contributes this enricher's answer for one address or domain to
    /// `POST /v1/lookup` / `enrichd lookup`, under the output key(s) the
    /// stage writes events' answers under. Enrichers that know nothing of
    /// a kind of target leave it alone.
    fn lookup(&self, _target: LookupTarget<'_>, _out: &mut LookupAnswer) {}

    /// Answers `GET /v1/{view}` for a view its factory declares
    /// ([`PluginFactory::views`]); `query` is the raw query string. `None`
    /// when the view is not this enricher's; `Err` refuses the query (a 400
    /// naming what is wrong).
    fn view(&self, _view: &str, _query: &str) -> Option<Result<serde_json::Value, String>> {
        None
    }

    /// Answers a stage action (`/v1/{collection}/{stage}/{action}`, for a
    /// factory with a [`PluginFactory::stage_collection`]); `None` when the
    /// action is not one this stage has (a 404). Called off the async
    /// threads: blocking file I/O is fine.
    fn stage_action(&self, _request: StageRequest<'_>) -> Option<AdminResponse> {
        None
    }
}

/// What a lookup asks about.
#[derive(Clone, Copy, Debug)]
pub enum LookupTarget<'a> {
    Ip(IpAddr),
    /// A host name, lowercase, without a trailing dot.
    Domain(&'a str),
}

/// A lookup's answer as the stages build it: `fields` under their output
/// keys, and `aliases`, extra keys that repeat a field under a name a
/// reference API used (`POST /v1/lookup` adds them for compatibility; the
/// command line, read by people, leaves them out).
#[derive(Debug, Default)]
pub struct LookupAnswer {
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub aliases: serde_json::Map<String, serde_json::Value>,
}

/// Handed to [`PluginFactory::build`]: where relative paths are resolved and
/// how a plugin declares the output keys it writes and the record fields it
/// reads beyond the well-known ones.
pub struct BuildContext<'a> {
    pub(crate) base_dir: &'a Path,
    pub(crate) state_dir: Option<&'a Path>,
    pub(crate) keys: &'a mut Vec<Box<str>>,
    pub(crate) text_fields: &'a mut Vec<Box<str>>,
    pub(crate) facts: &'a mut Vec<FactInfo>,
    /// The stage being built (facts are interned under it).
    pub(crate) stage: Arc<str>,
    /// The stage's carried state, shared by its generations.
    pub(crate) carried: &'a Carried,
    /// The stages before this one in the chain being built: what
    /// [`BuildContext::earlier_keys`] and [`BuildContext::earlier_facts`]
    /// describe.
    pub(crate) earlier: Earlier,
    /// The output keys this build declared (kept with the built stage as its
    /// `keys`, for the stages after it).
    pub(crate) declared: Vec<KeyId>,
}

/// What the stages before the one being built declared: their names (for
/// their facts) and their output keys.
#[derive(Default)]
pub(crate) struct Earlier {
    pub(crate) stages: Vec<String>,
    pub(crate) keys: Vec<KeyId>,
}

/// A stage's state kept across rebuilds ([`BuildContext::carried`]).
pub(crate) type Carried = std::sync::Mutex<Option<Arc<dyn std::any::Any + Send + Sync>>>;

impl<'a> BuildContext<'a> {
    /// Resolves a path from the configuration relative to the config file's
    /// directory (absolute paths are kept).
    pub fn resolve_path(&self, path: impl AsRef<Path>) -> PathBuf {
        crate::entry::resolve_relative(self.base_dir, path.as_ref())
    }

    /// The server's writable state directory (`server.state_dir`), where a
    /// plugin may keep data that outlives the process; `None` in offline
    /// tools.
    pub fn state_dir(&self) -> Option<&Path> {
        self.state_dir
    }

    /// State this stage keeps across rebuilds (counters a reload must not
    /// reset, such as hit statistics): every generation of the stage gets
    /// the same `T`, created with `Default` on first use (or when the stage
    /// was last built by a plugin keeping another type).
    pub fn carried<T: std::any::Any + Send + Sync + Default>(&mut self) -> Arc<T> {
        let mut slot = self.carried.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = slot.clone().and_then(|any| any.downcast::<T>().ok()) {
            return found;
        }
        let fresh = Arc::new(T::default());
        *slot = Some(fresh.clone());
        fresh
    }

    /// Declares an output key this enricher writes and returns its id.
    pub fn output_key(&mut self, name: &str) -> KeyId {
        let id = KeyId(intern(self.keys, name));
        if !self.declared.contains(&id) {
            self.declared.push(id);
        }
        id
    }

    /// The id of an output key declared by an earlier chain stage, if any
    /// (a later stage reading what an earlier one wrote, e.g. `geo`).
    pub fn existing_key(&self, name: &str) -> Option<KeyId> {
        self.keys.iter().position(|k| &**k == name).map(|i| KeyId(i as u16))
    }

    /// All output keys declared so far, by id.
    pub fn declared_keys(&self) -> Vec<(String, KeyId)> {
        self.keys.iter().enumerate().map(|(i, k)| (k.to_string(), KeyId(i as u16))).collect()
    }

    /// The output keys declared by the stages before this one in the chain,
    /// by id: what they may have written on an event by the time this stage
    /// runs.
    ///
    /// Why not [`BuildContext::declared_keys`]: the tables are append-only,
    /// so when a stage is rebuilt (a reload) they also hold its own keys and
    /// those of the stages after it; a stage that reads the keys before it
    /// must see the same ones at every build.
    pub fn earlier_keys(&self) -> Vec<(String, KeyId)> {
        let earlier = |id: KeyId| self.earlier.keys.contains(&id);
        self.declared_keys().into_iter().filter(|(_, id)| earlier(*id)).collect()
    }

    /// The facts declared by the stages before this one in the chain (in
    /// id order), for the same reason as [`BuildContext::earlier_keys`].
    pub fn earlier_facts(&self) -> Vec<FactInfo> {
        self.facts.iter().filter(|f| self.earlier.stages.iter().any(|s| **s == *f.stage)).cloned().collect()
    }

    /// Declares a fact this enricher sets on events (see [`crate::fact`])
    /// and returns its id; the same stage declaring the same name again (a
    /// rebuild) gets the same id.
    pub fn fact(&mut self, decl: FactDecl) -> FactId {
        crate::fact::intern(self.facts, &self.stage, decl)
    }

    /// Every fact declared so far (by this and earlier stages, and by
    /// stages of earlier chains), by id. A stage reading what earlier ones
    /// established looks facts up here by kind, side or name.
    pub fn declared_facts(&self) -> &[FactInfo] {
        self.facts
    }

    /// The name of the stage being built.
    pub fn stage_name(&self) -> &str {
        &self.stage
    }

    /// Asks the parser to capture the string field `name` of every record
    /// (e.g. `query` for domain indicators) and returns its id.
    pub fn text_field(&mut self, name: &str) -> TextFieldId {
        TextFieldId(intern(self.text_fields, name))
    }
}

pub(crate) fn intern(table: &mut Vec<Box<str>>, name: &str) -> u16 {
    if let Some(i) = table.iter().position(|k| &**k == name) {
        return i as u16;
    }
    table.push(name.into());
    (table.len() - 1) as u16
}

/// Lifecycle state of an enricher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// Data loaded, enriching.
    Loaded,
    /// A configured data file does not exist; the enricher passes events
    /// through unchanged until it appears.
    Missing,
    /// Data could not be loaded; see `error`.
    Error,
    /// `enabled = false` in the chain.
    Disabled,
}

impl PluginState {
    /// The state as the API spells it (`loaded`, `missing`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Loaded => "loaded",
            PluginState::Missing => "missing",
            PluginState::Error => "error",
            PluginState::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A data file an enricher loaded.
#[derive(Clone, Debug, Serialize)]
pub struct SourceInfo {
    pub path: PathBuf,
    /// Hex SHA-256 of the file content, when it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// RFC 3339 time the content was loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What an enricher reports about itself.
#[derive(Clone, Debug, Serialize)]
pub struct PluginStatus {
    pub state: PluginState,
    /// A short description of the loaded data (database type and build date,
    /// indicator count, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub sources: Vec<SourceInfo>,
    /// Plugin-specific figures (e.g. indicators by type, skipped lines).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the loaded data was built by its publisher (Unix seconds), for
    /// data that says so (a database's build time): the API shows its age
    /// (`data_age_s`) and the metrics export it, whatever the plugin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_built_at: Option<u64>,
    /// Plugin-specific figures for Prometheus, exported as
    /// `telemetry_enricher_<name>{enricher="<stage>", <labels>}` (the
    /// figures are also in `details` for the API). Labels must come from a
    /// bounded set (feeds, never indicators).
    #[serde(skip)]
    pub series: Vec<StatusSeries>,
    /// Small tables of plugin-specific figures (per feed, per database,
    /// ...) that the API shows and the dashboard draws as a panel each,
    /// without knowing the plugin. Public where `/v1/metrics` is public:
    /// no paths, no error texts, a bounded number of rows.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<StatusTable>,
}

/// One of [`PluginStatus::tables`]: a title, typed columns and rows of
/// values in column order.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct StatusTable {
    /// Short heading ("Feeds").
    pub title: String,
    pub columns: Vec<StatusColumn>,
    /// At most [`StatusTable::MAX_ROWS`]; each row has one value per column
    /// (`null` for none).
    pub rows: Vec<Vec<serde_json::Value>>,
}

impl StatusTable {
    /// Rows beyond this are dropped by [`StatusTable::push_row`]: the table
    /// travels in every `/v1/metrics` document and stream event.
    pub const MAX_ROWS: usize = 50;

    pub fn new(title: impl Into<String>, columns: Vec<StatusColumn>) -> Self {
        StatusTable { title: title.into(), columns, rows: Vec::new() }
    }

    /// Appends a row unless the table is full (returns whether it was kept).
    pub fn push_row(&mut self, row: Vec<serde_json::Value>) -> bool {
        debug_assert_eq!(row.len(), self.columns.len(), "one value per column");
        if self.rows.len() >= Self::MAX_ROWS {
            return false;
        }
        self.rows.push(row);
        true
    }
}

/// A column of a [`StatusTable`]: the label shown and how values read.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StatusColumn {
    pub label: String,
    pub kind: ColumnKind,
}

impl StatusColumn {
    pub fn new(label: impl Into<String>, kind: ColumnKind) -> Self {
        StatusColumn { label: label.into(), kind }
    }
}

/// How a column's values are meant: the dashboard formats and aligns by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    /// A string (or `null`).
    Text,
    /// A non-negative integer.
    Count,
    /// An RFC 3339 time (or `null` for never).
    Time,
}

/// One sample of [`PluginStatus::series`].
#[derive(Clone, Debug, PartialEq)]
pub struct StatusSeries {
    /// Appended to `telemetry_enricher_` (lowercase, digits, `_`).
    pub name: &'static str,
    pub help: &'static str,
    /// A counter (only grows) rather than a gauge.
    pub counter: bool,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl PluginStatus {
    pub fn new(state: PluginState) -> Self {
        PluginStatus {
            state,
            version: None,
            sources: Vec::new(),
            details: serde_json::Value::Null,
            error: None,
            data_built_at: None,
            series: Vec::new(),
            tables: Vec::new(),
        }
    }
}

/// File facts for [`SourceInfo`]: size and SHA-256 of `bytes`, loaded now.
pub fn source_info(path: &Path, bytes: &[u8]) -> SourceInfo {
    use sha2::{Digest, Sha256};
    SourceInfo {
        path: path.to_path_buf(),
        sha256: Some(to_hex(&Sha256::digest(bytes))),
        size_bytes: Some(bytes.len() as u64),
        loaded_at: Some(rfc3339(std::time::SystemTime::now())),
        error: None,
    }
}

/// Lowercase hex of `bytes` (digests in reports, ids, file names).
pub fn to_hex(bytes: &[u8]) -> String {
    let mut hex = Vec::with_capacity(bytes.len() * 2);
    write_hex(bytes, &mut hex);
    String::from_utf8(hex).expect("hex digits are ASCII")
}

/// [`to_hex`] appended to `out`, without a formatter or an allocation per
/// call: the Elasticsearch output's `_id` of every event (id_mode =
/// "hash") is written this way.
pub fn write_hex(bytes: &[u8], out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
}

/// RFC 3339 UTC time to the second, as every report shows times.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Convenience for enrichers that handle events one at a time.
pub fn for_each_event(batch: &mut BatchView<'_>, mut f: impl FnMut(&mut Event)) {
    for event in batch.events.iter_mut() {
        f(event);
    }
}
