//! One `[[chain]]` entry of `config.toml` and the errors that point into the
//! file: the vocabulary shared by the configuration loader (`config`), the
//! chain builder (`chain`, `live`) and the plugin interface (`plugin`).
//!
//! It depends on no other module of the crate, so every module above it can
//! use it without forming an import cycle.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}
