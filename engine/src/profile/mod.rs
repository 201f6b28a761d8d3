//! Output profiles: which JSON layout enriched records are written in.
//!
//! Decisions:
//!
//! - **A profile is data.** A TOML mapping from the declared facts
//!   ([`crate::fact`]) to output paths: for each field, the dotted path it
//!   is written at (`source.geo` nests under `source`), what it is taken
//!   from (a fact's output fragment found by kind / side / name, the fact's
//!   scalar, whether it is non-zero, or a well-known input field) and
//!   optional renames of the fragment's members. The core applies it
//!   generically; it never names a plugin. Profiles `stage3` and `ecs` are
//!   embedded ([`Profiles::embedded`]); users add their own files.
//! - **The default (`v1`) is no profile.** The v1.4 layout is each stage's
//!   output under its own key, which is what [`crate::Batch::write_event`]
//!   writes: selecting `v1` selects that path unchanged (record bytes, then
//!   the shared fragments), so the hot path pays nothing for profiles.
//! - **Re-encoding is cached per fragment.** A field with renames re-encodes
//!   the fragment it maps once per distinct fragment and thread: the cache
//!   is keyed by the fragment's `Arc` pointer and holds a clone of the
//!   `Arc`, so the pointer cannot be reused for other text while cached. It
//!   is bounded (cleared when full). Repeated answers (the same GeoIP city,
//!   the same AS) cost a hash lookup per event.
//! - **A profile resolves against the chain per batch.** Which output key
//!   holds the fragment of "the source's country-code fact" depends on the
//!   chain; the few fields are resolved once per batch ([`Plan`]). A field
//!   whose fact no active stage declares is left out.
//! - **Sides.** A field with a `side` takes the fragment of a fact declared
//!   for that side. When the same output key serves both sides (a
//!   `destination_or_source` target), the fragment is written only for
//!   events whose fact of that side is set, i.e. whose answer was about
//!   that side.
//! - **Never a duplicate key.** The profile's top-level keys are merged
//!   (`source.geo` and `source.as` make one `source` object). When the
//!   record itself already carries one of them, the record's value is kept
//!   as sent and the profile's value goes under `enrichment.<key>`; if the
//!   record also has `enrichment`, the profile's value is dropped and the
//!   record gets a warning. Downstream parsers never see a key twice.
//!   Records are checked for such keys with a substring test first (or,
//!   for a record with an escaped key, which the parser flags, always), so
//!   only records that may carry one have their keys read, decoded. Even
//!   then the record is copied as text, never re-encoded: its key order,
//!   number text (`1e400`) and escapes stay as sent.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;

use crate::event::Side;
use crate::fact::FactKind;

/// Name of the default profile: the v1.4 layout (each stage's own keys).
pub const DEFAULT_PROFILE: &str = "v1";

/// Where a profile's values go when the record already has the top-level key.
pub const CONFLICT_KEY: &str = "enrichment";

/// Re-encoded fragments kept per thread before the cache is cleared.
const CACHE_CAPACITY: usize = 4096;

/// A parsed output profile (see the module docs).
#[derive(Debug)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Leave out fields whose value is `null` (and members that are `null`
    /// after renaming).
    pub omit_nulls: bool,
    fields: Vec<FieldSpec>,
    /// Unique per loaded profile: part of the fragment cache key.
    uid: u64,
}

/// One field of a profile file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Dotted output path (`source.geo`).
    pub path: String,
    /// The fact's kind (`country_code`, `as_number`, `indicator_matches`, ...).
    #[serde(default)]
    pub kind: Option<FactKind>,
    /// `source` or `destination`: only facts about that side.
    #[serde(default)]
    pub side: Option<SideSpec>,
    /// Only the fact with this declared name.
    #[serde(default)]
    pub fact: Option<String>,
    /// What is written (default `output`).
    #[serde(default)]
    pub value: ValueSpec,
    /// A well-known input field instead of a fact.
    #[serde(default)]
    pub input: Option<InputField>,
    /// Renames of the output fragment's members (see [`Rename`]).
    #[serde(default)]
    pub rename: BTreeMap<String, Rename>,
    /// Keep members not named in `rename` (default true; false keeps only
    /// the renamed ones).
    #[serde(default = "yes")]
    pub keep_others: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SideSpec {
    Source,
    Destination,
}

impl SideSpec {
    fn side(self) -> Side {
        match self {
            SideSpec::Source => Side::Source,
            SideSpec::Destination => Side::Destination,
        }
    }
}

/// What a fact field writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueSpec {
    /// The fact's output fragment (after `rename`).
    #[default]
    Output,
    /// The fact's scalar (a country code as text, a number, a label);
    /// absent when the fact is not set.
    Scalar,
    /// `true` when the fact is set and non-zero, else `false` (written
    /// whenever the fact's output is).
    Nonzero,
}

/// A well-known input field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputField {
    SrcIp,
    DstIp,
    SrcPort,
    DstPort,
    /// The protocol's name (`tcp`, `udp`, `icmp`, `ipv6-icmp`; the number
    /// as text otherwise).
    Transport,
    /// The IANA protocol number, as text.
    IanaNumber,
}

/// A member rename: the new dotted path, or a table with `to` (default:
/// same name), `each` (renames applied to each element of an array) and
/// `rename` (renames applied to an object value), and `keep_others`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Rename {
    To(String),
    Nested(NestedRename),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NestedRename {
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub each: Option<BTreeMap<String, Rename>>,
    #[serde(default)]
    pub rename: Option<BTreeMap<String, Rename>>,
    #[serde(default = "yes")]
    pub keep_others: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    omit_nulls: bool,
    #[serde(default, rename = "field")]
    fields: Vec<FieldSpec>,
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

impl Profile {
    /// Parses and checks a profile file's text.
    pub fn parse(text: &str) -> Result<Profile, String> {
        let file: ProfileFile = toml::from_str(text).map_err(|e| e.to_string())?;
        check_name(&file.name)?;
        if file.name == DEFAULT_PROFILE {
            return Err(format!("profile name {DEFAULT_PROFILE:?} is the built-in default layout"));
        }
        let mut seen: Vec<&str> = Vec::new();
        for (i, f) in file.fields.iter().enumerate() {
            let at = |m: String| format!("field[{i}] ({:?}): {m}", f.path);
            if f.path.is_empty() || f.path.split('.').any(str::is_empty) {
                return Err(at("`path` must be dotted non-empty names".into()));
            }
            if f.path.split('.').next() == Some(crate::batch::WARNINGS_KEY) || f.path == CONFLICT_KEY {
                return Err(at("this key is reserved".into()));
            }
            match (f.input, f.kind.is_some() || f.fact.is_some()) {
                (Some(_), true) => return Err(at("`input` and `kind`/`fact` exclude each other".into())),
                (None, false) => return Err(at("needs `kind` and/or `fact`, or `input`".into())),
                _ => {}
            }
            if !f.rename.is_empty() && (f.input.is_some() || f.value != ValueSpec::Output) {
                return Err(at("`rename` applies to `value = \"output\"` only".into()));
            }
            if seen.contains(&f.path.as_str()) {
                return Err(at("path written twice".into()));
            }
            seen.push(&f.path);
        }
        Ok(Profile {
            name: file.name,
            description: file.description,
            omit_nulls: file.omit_nulls,
            fields: file.fields,
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Reads a profile file.
    pub fn load(path: &Path) -> Result<Profile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Profile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn fields(&self) -> &[FieldSpec] {
        &self.fields
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(format!("profile name {name:?}: use letters, digits, `_` and `-`"));
    }
    Ok(())
}

/// The embedded profile files, by name.
pub const EMBEDDED: [(&str, &str); 2] =
    [("stage3", include_str!("../../profiles/stage3.toml")), ("ecs", include_str!("../../profiles/ecs.toml"))];

/// `[profiles]`: the layouts enriched events are written in. (Named
/// `[output]` before `[[output]]` came to mean a delivery destination.)
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilesConfig {
    /// The output profile records are written in when the request names
    /// none (`/v1/ingest?profile=` overrides it per request): `v1` (each
    /// stage's own output keys, the default), `stage3`, `ecs`, or the
    /// `name` of a profile file. Read at start.
    #[serde(alias = "profile")]
    pub default: String,
    /// Profile files (TOML: `name`, `description`, `omit_nulls`,
    /// `[[field]]` mappings; see README "Output profiles"), relative to the
    /// configuration file. A file may reuse an embedded profile's name to
    /// replace it.
    #[serde(alias = "profile_files")]
    pub files: Vec<std::path::PathBuf>,
    /// The profile per API key, keyed by the key's SHA-256 in lowercase hex
    /// (`printf %s "$KEY" | sha256sum`), so keys never appear here: a
    /// request made with that key gets this profile unless it names one
    /// (`?profile=`). Read at start.
    pub key_profiles: BTreeMap<String, String>,
}

impl Default for ProfilesConfig {
    fn default() -> Self {
        ProfilesConfig { default: DEFAULT_PROFILE.into(), files: Vec::new(), key_profiles: BTreeMap::new() }
    }
}

/// One `[profiles] key_profiles` entry, resolved: an API key's SHA-256 and
/// its profile (`None`: the v1 layout).
pub type KeyProfile = ([u8; 32], Option<Arc<Profile>>);

/// `[profiles] key_profiles`, resolved. Refuses a malformed digest or an
/// unknown profile name.
pub fn key_profiles(config: &ProfilesConfig, profiles: &Profiles) -> Result<Vec<KeyProfile>, String> {
    config
        .key_profiles
        .iter()
        .map(|(hex, name)| {
            let digest = parse_digest(hex).ok_or_else(|| {
                format!(
                    "[profiles] key_profiles: {:?} is not a SHA-256 in hex (64 characters)",
                    crate::limits::excerpt(hex, 80)
                )
            })?;
            let profile = profiles.get(name).map_err(|e| format!("[profiles] key_profiles: {e}"))?;
            Ok((digest, profile))
        })
        .collect()
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// The profiles a service knows, by name; `v1` (the default layout) is
/// always known and maps to no profile.
#[derive(Clone, Debug, Default)]
pub struct Profiles {
    by_name: BTreeMap<String, Arc<Profile>>,
}

impl Profiles {
    /// The embedded profiles (`stage3`, `ecs`).
    pub fn embedded() -> Profiles {
        let mut p = Profiles::default();
        for (name, text) in EMBEDDED {
            let profile = Profile::parse(text).unwrap_or_else(|e| panic!("embedded profile {name}: {e}"));
            p.by_name.insert(profile.name.clone(), Arc::new(profile));
        }
        p
    }

    /// The embedded profiles plus `[profiles] files` (resolved
    /// against `base_dir`); checks that `[profiles] default` names one and
    /// returns it as the default (`None`: the v1 layout).
    pub fn from_config(config: &ProfilesConfig, base_dir: &Path) -> Result<(Profiles, Option<Arc<Profile>>), String> {
        let mut profiles = Profiles::embedded();
        for file in &config.files {
            profiles.insert(Profile::load(&crate::entry::resolve_relative(base_dir, file))?);
        }
        let default = profiles.get(&config.default).map_err(|e| format!("[profiles] default: {e}"))?;
        Ok((profiles, default))
    }

    /// Adds (or replaces, for an embedded name) a profile.
    pub fn insert(&mut self, profile: Profile) {
        self.by_name.insert(profile.name.clone(), Arc::new(profile));
    }

    /// `Ok(None)` for the default layout, `Err` for an unknown name.
    pub fn get(&self, name: &str) -> Result<Option<Arc<Profile>>, String> {
        if name == DEFAULT_PROFILE {
            return Ok(None);
        }
        self.by_name.get(name).cloned().map(Some).ok_or_else(|| {
            format!("unknown output profile {name:?}; known: {}", self.names().collect::<Vec<_>>().join(", "))
        })
    }

    /// Every known name, `v1` first.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        std::iter::once(DEFAULT_PROFILE).chain(self.by_name.keys().map(String::as_str))
    }
}

mod write;

pub use write::Plan;

#[cfg(test)]
mod tests;
