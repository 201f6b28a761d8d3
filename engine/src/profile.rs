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
//!   Records are checked for such keys with a substring test first, so the
//!   full parse runs only for records that may carry one.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::chain::Chain;
use crate::event::{Event, JsonFragment, KeyId, Side};
use crate::fact::{country_bytes, FactId, FactInfo, FactKind};

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
    [("stage3", include_str!("../profiles/stage3.toml")), ("ecs", include_str!("../profiles/ecs.toml"))];

/// `[output]`
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// The output profile records are written in when the request names
    /// none (`/v1/ingest?profile=` overrides it per request): `v1` (each
    /// stage's own output keys, the default), `stage3`, `ecs`, or the
    /// `name` of a profile file. Read at start.
    pub profile: String,
    /// Profile files (TOML: `name`, `description`, `omit_nulls`,
    /// `[[field]]` mappings; see README "Output profiles"), relative to the
    /// configuration file. A file may reuse an embedded profile's name to
    /// replace it.
    pub profile_files: Vec<std::path::PathBuf>,
    /// The profile per API key, keyed by the key's SHA-256 in lowercase hex
    /// (`printf %s "$KEY" | sha256sum`), so keys never appear here: a
    /// request made with that key gets this profile unless it names one
    /// (`?profile=`). Read at start.
    pub key_profiles: BTreeMap<String, String>,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig { profile: DEFAULT_PROFILE.into(), profile_files: Vec::new(), key_profiles: BTreeMap::new() }
    }
}

/// One `[output] key_profiles` entry, resolved: an API key's SHA-256 and
/// its profile (`None`: the v1 layout).
pub type KeyProfile = ([u8; 32], Option<Arc<Profile>>);

/// `[output] key_profiles`, resolved. Refuses a malformed digest or an
/// unknown profile name.
pub fn key_profiles(output: &OutputConfig, profiles: &Profiles) -> Result<Vec<KeyProfile>, String> {
    output
        .key_profiles
        .iter()
        .map(|(hex, name)| {
            let digest = parse_digest(hex).ok_or_else(|| {
                format!(
                    "[output] key_profiles: {:?} is not a SHA-256 in hex (64 characters)",
                    crate::limits::excerpt(hex, 80)
                )
            })?;
            let profile = profiles.get(name).map_err(|e| format!("[output] key_profiles: {e}"))?;
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

    /// The embedded profiles plus `[output] profile_files` (resolved
    /// against `base_dir`); checks that `[output] profile` names one and
    /// returns it as the default (`None`: the v1 layout).
    pub fn from_config(output: &OutputConfig, base_dir: &Path) -> Result<(Profiles, Option<Arc<Profile>>), String> {
        let mut profiles = Profiles::embedded();
        for file in &output.profile_files {
            profiles.insert(Profile::load(&crate::entry::resolve_relative(base_dir, file))?);
        }
        let default = profiles.get(&output.profile).map_err(|e| format!("[output] profile: {e}"))?;
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

// ---------------------------------------------------------------------
// Resolution against a chain and writing.

/// Where a field's value comes from, resolved against a chain.
#[derive(Debug)]
enum Source {
    /// Output key; with a gate, only when that fact is set on the event.
    Output {
        key: KeyId,
        gate: Option<FactId>,
        field: usize,
    },
    Scalar {
        fact: FactId,
        info: usize,
    },
    Nonzero {
        key: KeyId,
        fact: FactId,
    },
    Input(InputField),
}

#[derive(Debug)]
struct Node {
    name: Box<str>,
    source: Option<Source>,
    children: Vec<Node>,
}

/// A profile resolved against one chain: built once per batch.
pub struct Plan<'a> {
    profile: &'a Profile,
    facts: &'a [FactInfo],
    tops: Vec<Node>,
    /// The chain's generation stamp (`reload.generation_field`), kept at
    /// the top level under its configured name.
    stamp: Option<(KeyId, &'a str)>,
}

impl<'a> Plan<'a> {
    pub fn new(profile: &'a Profile, chain: &'a Chain) -> Plan<'a> {
        let active: Vec<&FactInfo> = chain.active_facts().collect();
        let mut tops: Vec<Node> = Vec::new();
        for (i, f) in profile.fields.iter().enumerate() {
            let Some(source) = resolve(f, i, &active) else { continue };
            let mut level = &mut tops;
            let parts: Vec<&str> = f.path.split('.').collect();
            for (depth, part) in parts.iter().enumerate() {
                let pos = match level.iter().position(|n| &*n.name == *part) {
                    Some(p) => p,
                    None => {
                        level.push(Node { name: (*part).into(), source: None, children: Vec::new() });
                        level.len() - 1
                    }
                };
                if depth + 1 == parts.len() {
                    level[pos].source = Some(source);
                    break;
                }
                level = &mut level[pos].children;
            }
        }
        let stamp = chain.stamp_key().map(|k| (k, &*chain.keys()[k.index()]));
        Plan { profile, facts: chain.facts(), tops, stamp }
    }

    fn top_keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.tops.iter().map(|n| &*n.name).chain(self.stamp.map(|(_, name)| name))
    }

    /// Writes one enriched event as a JSON object in this profile.
    pub fn write_event(&self, raw: &str, event: &Event, out: &mut Vec<u8>) {
        if self.may_conflict(raw, event) {
            if let Some(map) = self.conflicting_record(raw, event) {
                return self.write_merged(map, event, out);
            }
        }
        let mut has_fields = event.raw_has_fields;
        if raw.is_empty() {
            out.push(b'{');
        } else {
            let body = raw.trim_end();
            out.extend_from_slice(body[..body.len() - 1].trim_end().as_bytes());
        }
        self.write_members(event, &mut has_fields, out);
        write_warnings(&event.warnings, &[], has_fields, out);
        out.push(b'}');
    }

    /// The profile's own members (no braces), each preceded by a comma
    /// when `has_fields`.
    fn write_members(&self, event: &Event, has_fields: &mut bool, out: &mut Vec<u8>) {
        for node in &self.tops {
            self.write_node(node, event, has_fields, out);
        }
        if let Some((key, name)) = self.stamp {
            if let Some(v) = event.output(key) {
                member(name, has_fields, out);
                out.extend_from_slice(v.as_bytes());
            }
        }
    }

    /// Writes `"name":value` when the node has a value; returns whether it did.
    fn write_node(&self, node: &Node, event: &Event, has_fields: &mut bool, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        let had = *has_fields;
        let value = node.source.as_ref().and_then(|s| self.value(s, event));
        if node.children.is_empty() {
            let Some(value) = value else { return false };
            member(&node.name, has_fields, out);
            value.write(out);
            return true;
        }
        // An object: the source's members (when it is an object), then the children.
        member(&node.name, has_fields, out);
        out.push(b'{');
        let mut inner = false;
        if let Some(members) = value.as_ref().and_then(Written::object_members) {
            if !members.is_empty() {
                out.extend_from_slice(members.as_bytes());
                inner = true;
            }
        }
        for child in &node.children {
            self.write_node(child, event, &mut inner, out);
        }
        if !inner {
            let only_null = matches!(value, Some(Written::Text(ref t)) if &**t == "null");
            out.truncate(start);
            *has_fields = had;
            if only_null && !self.profile.omit_nulls {
                member(&node.name, has_fields, out);
                out.extend_from_slice(b"null");
                return true;
            }
            return false;
        }
        out.push(b'}');
        true
    }

    fn value(&self, source: &Source, event: &Event) -> Option<Written<'_>> {
        let v = match *source {
            Source::Output { key, gate, field } => {
                if gate.is_some_and(|g| event.fact(g).is_none()) {
                    return None;
                }
                let fragment = event.output(key)?;
                let spec = &self.profile.fields[field];
                if spec.rename.is_empty() && (!self.profile.omit_nulls || !fragment.contains("null")) {
                    Written::Text(fragment.clone())
                } else {
                    Written::Text(reencode(self.profile, field, fragment)?)
                }
            }
            Source::Scalar { fact, info } => Written::Scalar(&self.facts[info], event.fact(fact)?),
            Source::Nonzero { key, fact } => {
                event.output(key)?;
                Written::Bool(event.fact(fact).is_some_and(|v| v != 0))
            }
            Source::Input(field) => Written::Input(field, input(field, event)?),
        };
        if self.profile.omit_nulls && matches!(v, Written::Text(ref t) if &**t == "null") {
            return None;
        }
        Some(v)
    }

    /// Cheap test: can the record hold one of the profile's top-level keys
    /// (or the keys a conflict is resolved with)?
    fn may_conflict(&self, raw: &str, event: &Event) -> bool {
        if !event.raw_has_fields {
            return false;
        }
        let quoted = |k: &str| {
            let b = raw.as_bytes();
            raw.match_indices(k).any(|(at, _)| at > 0 && b[at - 1] == b'"' && b.get(at + k.len()) == Some(&b'"'))
        };
        self.top_keys().any(quoted) || quoted(crate::batch::WARNINGS_KEY)
    }

    /// The record as a map, when it really carries a conflicting key at its top.
    fn conflicting_record(&self, raw: &str, event: &Event) -> Option<Map<String, Value>> {
        let keys: HashMap<Cow<'_, str>, serde::de::IgnoredAny> = serde_json::from_str(raw).ok()?;
        let conflict = self.top_keys().any(|k| keys.contains_key(k))
            || (keys.contains_key(crate::batch::WARNINGS_KEY) && !event.warnings.is_empty());
        if !conflict {
            return None;
        }
        serde_json::from_str(raw).ok()
    }

    /// The slow path: the record's own keys win; see the module docs.
    fn write_merged(&self, mut record: Map<String, Value>, event: &Event, out: &mut Vec<u8>) {
        let mut mine = vec![b'{'];
        let mut any = false;
        self.write_members(event, &mut any, &mut mine);
        mine.push(b'}');
        let mine: Map<String, Value> = serde_json::from_slice(&mine).expect("the profile writes valid JSON");
        if !event.warnings.is_empty() {
            record.remove(crate::batch::WARNINGS_KEY);
        }
        let mut moved = Map::new();
        for (k, v) in mine {
            if record.contains_key(&k) {
                moved.insert(k, v);
            } else {
                record.insert(k, v);
            }
        }
        let mut extra = Vec::new();
        if !moved.is_empty() {
            if record.contains_key(CONFLICT_KEY) {
                let names: Vec<&str> = moved.keys().map(String::as_str).collect();
                extra.push(format!(
                    "output profile {}: the record already has {} and {CONFLICT_KEY:?}; the profile's values were left out",
                    self.profile.name,
                    names.join(", ")
                ));
            } else {
                record.insert(CONFLICT_KEY.into(), Value::Object(moved));
            }
        }
        if !extra.is_empty() {
            record.remove(crate::batch::WARNINGS_KEY);
        }
        let has_fields = !record.is_empty();
        let text = serde_json::to_vec(&record).expect("a JSON map serializes");
        out.extend_from_slice(&text[..text.len() - 1]);
        write_warnings(&event.warnings, &extra, has_fields, out);
        out.push(b'}');
    }
}

fn write_warnings(warnings: &[String], extra: &[String], has_fields: bool, out: &mut Vec<u8>) {
    if warnings.is_empty() && extra.is_empty() {
        return;
    }
    let mut has = has_fields;
    member(crate::batch::WARNINGS_KEY, &mut has, out);
    let all: Vec<&String> = warnings.iter().chain(extra).collect();
    serde_json::to_writer(&mut *out, &all).expect("strings serialize");
}

fn member(name: &str, has_fields: &mut bool, out: &mut Vec<u8>) {
    if *has_fields {
        out.push(b',');
    }
    *has_fields = true;
    serde_json::to_writer(&mut *out, name).expect("strings serialize");
    out.push(b':');
}

/// A value about to be written.
enum Written<'a> {
    Text(JsonFragment),
    Scalar(&'a FactInfo, u32),
    Bool(bool),
    Input(InputField, InputValue),
}

#[derive(Clone, Copy)]
enum InputValue {
    Ip(std::net::IpAddr),
    Num(u64),
}

impl Written<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Written::Text(t) => out.extend_from_slice(t.as_bytes()),
            Written::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Written::Scalar(info, v) => match info.decl.kind {
                FactKind::CountryCode => {
                    out.push(b'"');
                    out.extend_from_slice(&country_bytes(*v));
                    out.push(b'"');
                }
                FactKind::Label => match info.decl.labels.get(*v as usize) {
                    Some(l) => serde_json::to_writer(&mut *out, &**l).expect("strings serialize"),
                    None => out.extend_from_slice(b"null"),
                },
                _ => {
                    let _ = write!(out, "{v}");
                }
            },
            Written::Input(field, v) => match (field, v) {
                (_, InputValue::Ip(ip)) => {
                    let _ = write!(out, "\"{ip}\"");
                }
                (InputField::Transport, InputValue::Num(n)) => {
                    let name = match n {
                        1 => "icmp",
                        6 => "tcp",
                        17 => "udp",
                        58 => "ipv6-icmp",
                        132 => "sctp",
                        _ => "",
                    };
                    if name.is_empty() {
                        let _ = write!(out, "\"{n}\"");
                    } else {
                        let _ = write!(out, "\"{name}\"");
                    }
                }
                (InputField::IanaNumber, InputValue::Num(n)) => {
                    let _ = write!(out, "\"{n}\"");
                }
                (_, InputValue::Num(n)) => {
                    let _ = write!(out, "{n}");
                }
            },
        }
    }

    /// The members of an object value, without braces (`None` when not an object).
    fn object_members(&self) -> Option<&str> {
        match self {
            Written::Text(t) => {
                let t = t.trim();
                t.strip_prefix('{').and_then(|t| t.strip_suffix('}')).map(str::trim)
            }
            _ => None,
        }
    }
}

fn input(field: InputField, event: &Event) -> Option<InputValue> {
    Some(match field {
        InputField::SrcIp => InputValue::Ip(event.src_ip?),
        InputField::DstIp => InputValue::Ip(event.dst_ip?),
        InputField::SrcPort => InputValue::Num(event.src_port?.into()),
        InputField::DstPort => InputValue::Num(event.dst_port?.into()),
        InputField::Transport | InputField::IanaNumber => InputValue::Num(event.proto?.into()),
    })
}

/// Resolves one field against the chain's active facts.
fn resolve(f: &FieldSpec, field: usize, active: &[&FactInfo]) -> Option<Source> {
    if let Some(input) = f.input {
        return Some(Source::Input(input));
    }
    let side = f.side.map(SideSpec::side);
    let fits = |info: &&&FactInfo| {
        f.kind.is_none_or(|k| info.decl.kind == k)
            && f.fact.as_ref().is_none_or(|n| info.decl.name == *n)
            && side.is_none_or(|s| info.decl.side == Some(s))
    };
    let info = active.iter().rev().find(fits)?;
    Some(match f.value {
        ValueSpec::Output => {
            let key = info.decl.output?;
            // Another side's fact of the same kind on the same key: this
            // key's fragment is about our side only when our fact is set.
            let shared = side.is_some()
                && active.iter().any(|o| {
                    o.decl.output == Some(key) && o.decl.kind == info.decl.kind && o.decl.side != info.decl.side
                });
            Source::Output { key, gate: shared.then_some(info.id), field }
        }
        ValueSpec::Scalar => Source::Scalar { fact: info.id, info: info.id.index() },
        ValueSpec::Nonzero => Source::Nonzero { key: info.decl.output?, fact: info.id },
    })
}

// ---------------------------------------------------------------------
// Re-encoding fragments, cached per thread.

type CacheKey = (u64, usize, usize);

thread_local! {
    static CACHE: RefCell<HashMap<CacheKey, (JsonFragment, Option<JsonFragment>)>> = RefCell::new(HashMap::new());
}

/// The fragment after the field's renames (and null removal), `None` when
/// nothing is left. Cached per (profile, field, fragment).
fn reencode(profile: &Profile, field: usize, fragment: &JsonFragment) -> Option<JsonFragment> {
    let key = (profile.uid, field, Arc::as_ptr(fragment) as *const u8 as usize);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if let Some((_, encoded)) = c.get(&key) {
            return encoded.clone();
        }
        let encoded = transform_fragment(profile, field, fragment);
        if c.len() >= CACHE_CAPACITY {
            c.clear();
        }
        // The clone of `fragment` keeps its pointer from being reused while cached.
        c.insert(key, (fragment.clone(), encoded.clone()));
        encoded
    })
}

fn transform_fragment(profile: &Profile, field: usize, fragment: &str) -> Option<JsonFragment> {
    let spec = &profile.fields[field];
    let value: Value = serde_json::from_str(fragment).ok()?;
    let mut value = apply(value, &spec.rename, spec.keep_others);
    if profile.omit_nulls {
        strip_nulls(&mut value);
        if value.is_null() {
            return None;
        }
    }
    Some(JsonFragment::from(value.to_string()))
}

/// Applies renames to an object (arrays: to each element); other values pass.
fn apply(value: Value, renames: &BTreeMap<String, Rename>, keep_others: bool) -> Value {
    match value {
        Value::Object(map) if !renames.is_empty() || !keep_others => {
            let mut out = Map::new();
            for (k, v) in map {
                match renames.get(&k) {
                    Some(Rename::To(to)) => insert_path(&mut out, to, v),
                    Some(Rename::Nested(n)) => {
                        let v = match v {
                            Value::Array(items) if n.each.is_some() => Value::Array(
                                items
                                    .into_iter()
                                    .map(|i| apply(i, n.each.as_ref().expect("checked"), n.keep_others))
                                    .collect(),
                            ),
                            v => match &n.rename {
                                Some(r) => apply(v, r, n.keep_others),
                                None => v,
                            },
                        };
                        insert_path(&mut out, n.to.as_deref().unwrap_or(&k), v);
                    }
                    None if keep_others => {
                        out.insert(k, v);
                    }
                    None => {}
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(|i| apply(i, renames, keep_others)).collect()),
        v => v,
    }
}

fn insert_path(map: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            map.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let slot = map.entry(head.to_string()).or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            insert_path(slot.as_object_mut().expect("made an object"), rest, value);
        }
    }
}

/// Removes `null` members and the objects and arrays left empty; a value that is all
/// null becomes `null`.
fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for v in map.values_mut() {
                strip_nulls(v);
            }
            map.retain(|_, v| !v.is_null());
            if map.is_empty() {
                *value = Value::Null;
            }
        }
        Value::Array(items) => {
            for v in items.iter_mut() {
                strip_nulls(v);
            }
            items.retain(|v| !v.is_null());
            if items.is_empty() {
                *value = Value::Null;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[path = "profile_tests.rs"]
mod tests;
