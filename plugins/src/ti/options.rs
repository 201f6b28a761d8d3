//! Options of a `plugin = "ti"` chain entry.
//!
//! Kept apart from the enricher so the schema (`enrichd config-schema`), the
//! defaults and the validation live in one readable place. Unknown keys are
//! refused: a misspelt `path = ...` must not silently fall back to the
//! default indicator file.

use enrichd_engine::AddressSelector;
use schemars::JsonSchema;
use serde::Deserialize;

/// Threat-intel indicators (IP addresses, CIDR networks, domains) from files,
/// matched against each event's addresses and domain fields.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TiOptions {
    /// Indicator files, or directories whose regular files are all loaded
    /// (non-recursive; hidden files and editor leftovers `.*`, `*~`, `*.swp`,
    /// `*.tmp` are skipped). Relative paths are resolved against the config
    /// file's directory. Each file's format is detected on its own: plain
    /// lines (IP, CIDR, `domain:NAME`, bare domain, hosts-file lines), CSV
    /// with an `ip_or_cidr,category,confidence` header, or Zeek intel
    /// (`#fields indicator indicator_type ...`). `TI_PATH` (comma-separated)
    /// overrides this list.
    pub paths: Vec<String>,
    /// Which event addresses are checked against IP/CIDR indicators.
    pub addresses: Vec<AddressSelector>,
    /// Record string fields checked against domain indicators (exact name or
    /// any parent domain, case-insensitive, trailing dot ignored).
    pub domain_fields: Vec<String>,
    /// Output key of the result, `{"matches": [...]}`.
    pub output: String,
    /// Also write `"matched": true|false` next to `matches` (the stage-3
    /// layout `threat: {"matches": [...], "matched": bool}`).
    pub matched_flag: bool,
    /// Also match the indicators added through `PUT /v1/indicators` (kept
    /// in the server's state directory, source `"api"`).
    pub api_indicators: bool,
    /// Largest indicator file read, in bytes (default 128 MiB). A larger
    /// file is refused without being read (by its size on disk, and again
    /// by the bytes actually read, should it grow) and reported as that
    /// file's error; a reload then keeps the last good indicators.
    pub max_file_bytes: u64,
    /// Longest line, in bytes (default 8 KiB). A longer line is skipped
    /// like any bad line, reported by its length, never quoted whole.
    pub max_line_bytes: usize,
    /// Keep-last-good for shrinking files: a reload in which an indicator
    /// file that had at least 100 indicators lost more than this fraction
    /// of them is held back (default 0.5; 1 disables the check). A file
    /// that became empty is held back whatever its size, unless it holds a
    /// comment line (`# empty`): that is how a feed is emptied on purpose.
    pub max_shrink: f64,
    /// Per indicator file: its feed name, the defaults its indicators get
    /// when they do not say (plain lists say nothing), and its lifecycle
    /// (`valid_for_s`, decay with `half_life_s` / `decay_floor`). Files
    /// without an entry keep today's behaviour: source = the path, no
    /// metadata, never expire.
    pub feeds: Vec<super::meta::FeedDefaults>,
}

impl Default for TiOptions {
    fn default() -> Self {
        TiOptions {
            paths: vec!["ti/indicators.txt".into()],
            addresses: vec![AddressSelector::Source, AddressSelector::Destination],
            domain_fields: ["domain", "query", "server_name", "host"].map(String::from).to_vec(),
            output: "ti".into(),
            matched_flag: false,
            api_indicators: true,
            max_file_bytes: super::loader::DEFAULT_MAX_FILE_BYTES,
            max_line_bytes: super::loader::DEFAULT_MAX_LINE_BYTES,
            max_shrink: 0.5,
            feeds: Vec::new(),
        }
    }
}

impl TiOptions {
    /// Deserializes and validates a chain entry's options.
    /// The file and line caps.
    pub fn limits(&self) -> super::loader::FileLimits {
        super::loader::FileLimits { max_file_bytes: self.max_file_bytes, max_line_bytes: self.max_line_bytes }
    }

    /// Checks what the type cannot express and drops repeated entries.
    pub fn validated(self) -> anyhow::Result<TiOptions> {
        let mut opts = self;
        if opts.paths.iter().any(|p| p.trim().is_empty()) {
            anyhow::bail!("`paths` entries must not be empty");
        }
        if opts.paths.is_empty() {
            anyhow::bail!("`paths` must list at least one indicator file or directory");
        }
        if opts.output.trim().is_empty() {
            anyhow::bail!("`output` must not be empty");
        }
        if opts.domain_fields.iter().any(|f| f.trim().is_empty()) {
            anyhow::bail!("`domain_fields` entries must not be empty");
        }
        if opts.max_file_bytes == 0 || opts.max_line_bytes == 0 {
            anyhow::bail!("`max_file_bytes` and `max_line_bytes` must be positive");
        }
        if !(0.0..=1.0).contains(&opts.max_shrink) {
            anyhow::bail!("`max_shrink` must be a fraction from 0 to 1 (1 disables the check)");
        }
        for (i, feed) in opts.feeds.iter().enumerate() {
            feed.validate().map_err(|e| anyhow::anyhow!("`feeds[{i}]`: {e}"))?;
            if opts.feeds[..i].iter().any(|f| f.path == feed.path) {
                anyhow::bail!("`feeds[{i}]`: {} has another entry", feed.path);
            }
            if feed.name.as_deref() == Some(super::api_store::SOURCE) {
                anyhow::bail!("`feeds[{i}]`: the name \"api\" is the API indicators' own");
            }
        }
        dedup_keep_order(&mut opts.addresses);
        dedup_keep_order(&mut opts.domain_fields);
        Ok(opts)
    }
}

fn dedup_keep_order<T: PartialEq + Clone>(items: &mut Vec<T>) {
    let mut seen: Vec<T> = Vec::with_capacity(items.len());
    items.retain(|x| {
        if seen.contains(x) {
            false
        } else {
            seen.push(x.clone());
            true
        }
    });
}
