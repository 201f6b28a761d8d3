//! Indicators added through the API (`PUT /v1/indicators`), persisted in
//! the server's state directory so they survive restarts, and merged by
//! every `ti` stage with its files (source `"api"`).
//!
//! The store is one small JSON file, rewritten whole on each change
//! (write to a temporary file, fsync, rename): automation adds indicators
//! by the handful, and a reader never sees a half-written file. Ids are
//! derived from the normalized indicator, so putting the same indicator
//! twice updates it instead of duplicating it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::index::IndexBuilder;
use super::loader::{self, FileReport};
use super::meta::{self, Attrs, Severity};

/// The store's file name inside the state directory.
pub const FILE_NAME: &str = "ti-api-indicators.json";

/// The source name API indicators carry in matches.
pub const SOURCE: &str = "api";

pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// An indicator as stored and listed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApiIndicator {
    pub id: String,
    /// Normalized: `1.2.3.4`, `10.0.0.0/8`, `evil.example`.
    pub indicator: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// RFC 3339; past it the indicator stops matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
    pub added_at: String,
}

/// A request to add an indicator.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewIndicator {
    /// An IP address, a CIDR network, or a domain (bare or `domain:NAME`).
    pub indicator: String,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub confidence: Option<u8>,
    #[serde(default)]
    pub description: Option<String>,
    /// `info`, `low`, `medium`, `high` or `critical`.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// At most 8, each 1 to 64 bytes.
    #[serde(default)]
    pub tags: Vec<String>,
    /// RFC 3339 time (or a date) after which the indicator stops matching.
    #[serde(default)]
    pub valid_until: Option<String>,
}

impl NewIndicator {
    /// Validates and normalizes; the error says what is wrong.
    pub fn normalize(&self, added_at: String) -> Result<ApiIndicator, String> {
        if self.confidence.is_some_and(|c| c > 100) {
            return Err("confidence must be from 0 to 100".into());
        }
        for (field, value) in [("category", &self.category), ("description", &self.description)] {
            if value.as_ref().is_some_and(|v| v.len() > 1024) {
                return Err(format!("{field} is longer than 1024 bytes"));
            }
        }
        if self.tags.len() > meta::MAX_TAGS
            || self
                .tags
                .iter()
                .any(|t| t.trim().is_empty() || t.len() > meta::MAX_TAG_BYTES || t.contains([',', ';', '|']))
        {
            return Err(format!(
                "tags: at most {} tags, each 1 to {} bytes without `,`, `;` or `|`",
                meta::MAX_TAGS,
                meta::MAX_TAG_BYTES
            ));
        }
        let valid_until = match self.valid_until.as_deref() {
            None => None,
            Some(t) => Some(
                meta::parse_time(t)
                    .map(meta::format_time)
                    .ok_or("valid_until must be an RFC 3339 time, a date or Unix seconds")?,
            ),
        };
        let (indicator, kind) = loader::normalize_indicator(self.indicator.trim())?;
        let id = id_of(kind, &indicator);
        Ok(ApiIndicator {
            id,
            indicator,
            kind: kind.to_string(),
            category: self.category.clone().filter(|c| !c.is_empty()),
            confidence: self.confidence,
            description: self.description.clone().filter(|d| !d.is_empty()),
            severity: self.severity,
            tags: self.tags.iter().map(|t| t.trim().to_string()).collect(),
            valid_until,
            added_at,
        })
    }
}

fn id_of(kind: &str, indicator: &str) -> String {
    enrichd_engine::to_hex(&Sha256::digest(format!("{kind}:{indicator}").as_bytes())[..8])
}

/// Reads the store; a missing file is an empty store.
pub fn load(path: &Path) -> io::Result<Vec<ApiIndicator>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Replaces the store atomically.
pub fn save(path: &Path, items: &[ApiIndicator]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    // Unique per write (callers may save concurrently); 0600 like the
    // other state files: indicator metadata can be sensitive.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{FILE_NAME}.{}.{n}.tmp", std::process::id()));
    let written = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        serde_json::to_writer_pretty(&mut file, items).map_err(io::Error::other)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // The rename is durable once the directory is.
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Adds or updates `item` (same id); returns whether it was new.
pub fn upsert(items: &mut Vec<ApiIndicator>, item: ApiIndicator) -> bool {
    match items.iter_mut().find(|i| i.id == item.id) {
        Some(existing) => {
            *existing = item;
            false
        }
        None => {
            items.push(item);
            true
        }
    }
}

/// Loads the store into `builder`; the report is the `"api"` source's.
pub fn load_into(path: &Path, builder: &mut IndexBuilder) -> FileReport {
    match load(path) {
        Ok(items) => {
            let entries = items.iter().map(|i| loader::Entry {
                indicator: &i.indicator,
                attrs: Attrs {
                    category: i.category.as_deref(),
                    confidence: i.confidence,
                    severity: i.severity,
                    tags: i.tags.iter().map(String::as_str).collect(),
                    valid_until: i.valid_until.as_deref().and_then(meta::parse_time),
                    description: i.description.as_deref(),
                    ..Attrs::default()
                },
            });
            loader::load_entries(SOURCE, path, entries, builder)
        }
        Err(e) => FileReport::failed_at(SOURCE, path, format!("cannot read API indicators: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(indicator: &str) -> NewIndicator {
        NewIndicator {
            indicator: indicator.into(),
            category: None,
            confidence: Some(80),
            description: None,
            severity: None,
            tags: Vec::new(),
            valid_until: None,
        }
    }

    #[test]
    fn normalizes_and_derives_stable_ids() {
        let a = new("10.1.2.3/24").normalize("t".into()).unwrap();
        assert_eq!((a.indicator.as_str(), a.kind.as_str()), ("10.1.2.0/24", "subnet"));
        let b = new("10.1.2.0/24").normalize("t".into()).unwrap();
        assert_eq!(a.id, b.id);
        let d = new("domain:Evil.Example.").normalize("t".into()).unwrap();
        assert_eq!((d.indicator.as_str(), d.kind.as_str()), ("evil.example", "domain"));
        assert_eq!(new("2001:db8::1").normalize("t".into()).unwrap().kind, "addr");
        assert!(new("not an indicator").normalize("t".into()).is_err());
        assert!(new("").normalize("t".into()).is_err());
        let mut bad = new("1.2.3.4");
        bad.confidence = Some(101);
        assert!(bad.normalize("t".into()).is_err());
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = std::env::temp_dir().join(format!("enrichd-api-store-{}", std::process::id()));
        let path = path_in(&dir);
        assert!(load(&path).unwrap().is_empty());
        let mut items = Vec::new();
        assert!(upsert(&mut items, new("45.149.3.7").normalize("t".into()).unwrap()));
        assert!(!upsert(&mut items, new("45.149.3.7").normalize("t2".into()).unwrap()));
        save(&path, &items).unwrap();
        assert_eq!(load(&path).unwrap(), items);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "owner only");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        let mut builder = IndexBuilder::default();
        let report = load_into(&path, &mut builder);
        assert_eq!((report.indicators, report.addr), (1, 1));
        fs::remove_dir_all(dir).unwrap();
    }
}
