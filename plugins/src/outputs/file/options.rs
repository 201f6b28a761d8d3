//! Options of a `file` output, and the checks serde cannot express.

use std::path::PathBuf;

use enrichd_engine::output::FieldError;
use schemars::JsonSchema;
use serde::Deserialize;

/// Most rotated files kept.
const MAX_FILES: u32 = 1000;

/// `[[output]] type = "file"`: events appended to a local NDJSON file (one
/// event per line), rotated by size.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FileOptions {
    /// The file, relative to the config file's directory; created (with its
    /// directory) if missing, appended to if present. Required. Set through
    /// the API, it is relative to `<state_dir>/output-files/` and must stay
    /// inside it (no absolute path, no `..`).
    pub path: Option<PathBuf>,
    /// Rotate when the file would grow past this many bytes (default
    /// 104857600, 100 MiB): it becomes `path.1`, `path.1` becomes `path.2`,
    /// and so on. An event larger than this gets a file of its own. 0 never
    /// rotates.
    pub max_bytes: u64,
    /// Rotated files kept, `path.1` (newest) to `path.N` (default 5, 1 to
    /// 1000); the oldest is overwritten.
    pub max_files: u32,
    /// `fsync` after each batch (and before each rotation), so delivered
    /// means on disk, not just handed to the kernel (default false: slower).
    pub fsync: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions { path: None, max_bytes: 100 << 20, max_files: 5, fsync: false }
    }
}

impl FileOptions {
    /// Every problem the types do not catch.
    pub(crate) fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match &self.path {
            None => errors.push(FieldError::new("path", "is required")),
            Some(path) if path.as_os_str().is_empty() => errors.push(FieldError::new("path", "must not be empty")),
            Some(path) if path.file_name().is_none() => errors.push(FieldError::new("path", "must name a file")),
            Some(_) => {}
        }
        if self.max_files == 0 || self.max_files > MAX_FILES {
            errors.push(FieldError::new("max_files", format!("must be between 1 and {MAX_FILES}")));
        }
        errors
    }
}
