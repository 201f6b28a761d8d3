//! Writing records in a profile: a [`Profile`] resolved against one
//! chain ([`Plan`], once per batch), then applied per event, with the
//! per-thread cache of re-encoded fragments (see the parent module's docs).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use serde_json::{Map, Value};
use smallvec::{smallvec, SmallVec};

use super::{FieldSpec, InputField, Profile, Rename, SideSpec, ValueSpec, CACHE_CAPACITY, CONFLICT_KEY};
use crate::batch::{for_each_field, WARNINGS_KEY};
use crate::chain::Chain;
use crate::event::{Event, JsonFragment, KeyId};
use crate::fact::{country_bytes, FactId, FactInfo, FactKind};

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
        if self.may_conflict(raw, event) && self.write_merged(raw, event, out) {
            return;
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
        for top in 0..self.top_count() {
            self.write_top(top, event, has_fields, out);
        }
    }

    /// How many top-level members the profile can write: its top nodes,
    /// then the generation stamp (the order of [`Plan::top_keys`]).
    fn top_count(&self) -> usize {
        self.tops.len() + usize::from(self.stamp.is_some())
    }

    /// Writes top-level member `top` (see [`Plan::top_count`]) when it has
    /// a value; returns whether it did.
    fn write_top(&self, top: usize, event: &Event, has_fields: &mut bool, out: &mut Vec<u8>) -> bool {
        if let Some(node) = self.tops.get(top) {
            return self.write_node(node, event, has_fields, out);
        }
        let Some((key, name)) = self.stamp else { return false };
        let Some(v) = event.output(key) else { return false };
        member(name, has_fields, out);
        out.extend_from_slice(v.as_bytes());
        true
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
    /// (or the keys a conflict is resolved with)? A key spelled plainly is
    /// found as `"key"` in the text (a string value spelling it is a false
    /// alarm, which [`Plan::write_merged`] sorts out); a key written with
    /// escapes (`"sourc\u0065"`) is not, so a record the parser saw such a
    /// key in always takes the exact check. The flag costs nothing here.
    fn may_conflict(&self, raw: &str, event: &Event) -> bool {
        if !event.raw_has_fields {
            return false;
        }
        if event.raw_key_escaped {
            return true;
        }
        let quoted = |k: &str| {
            let b = raw.as_bytes();
            raw.match_indices(k).any(|(at, _)| at > 0 && b[at - 1] == b'"' && b.get(at + k.len()) == Some(&b'"'))
        };
        self.top_keys().any(quoted) || quoted(WARNINGS_KEY)
    }

    /// The slow path, for records that may carry a key the profile writes.
    /// The record's top-level keys are read decoded; when one of them is a
    /// profile's top-level key, or the record's `enrichment_warnings` must
    /// give way to the chain's, the event is written here: the record's
    /// members as sent, the profile's other members after them, the
    /// conflicting ones under `enrichment` (see the module docs). Returns
    /// false, having written nothing, when there is no conflict after all.
    ///
    /// The record is copied as text (whole, or member by member, key and
    /// value as written, when its warnings are dropped), never through a
    /// `serde_json::Value`: that would reorder its keys, round its numbers,
    /// rewrite its escapes, and fail on what the parser accepts (`1e400`, a
    /// lone surrogate in a string, nesting deeper than 128), which used to
    /// send such a record down the plain path with the key written twice.
    fn write_merged(&self, raw: &str, event: &Event, out: &mut Vec<u8>) -> bool {
        let keys: SmallVec<[&str; 16]> = self.top_keys().collect();
        let mut carried: SmallVec<[bool; 16]> = smallvec![false; keys.len()];
        let (mut has_warnings, mut has_conflict_key) = (false, false);
        let read = for_each_field(raw, |key, _, _| {
            if let Some(i) = keys.iter().position(|k| *k == key) {
                carried[i] = true;
            }
            has_warnings |= key == WARNINGS_KEY;
            has_conflict_key |= key == CONFLICT_KEY;
        });
        debug_assert!(read.is_ok(), "record text was validated by the parser");
        let warnings_give_way = has_warnings && !event.warnings.is_empty();
        if !carried.contains(&true) && !warnings_give_way {
            return false;
        }
        // The profile's members the record lacks, and those it carries (to move).
        let (mut added, mut moved) = (Vec::new(), Vec::new());
        let (mut any_added, mut any_moved) = (false, false);
        let mut moved_names: SmallVec<[&str; 4]> = SmallVec::new();
        for (top, name) in keys.iter().enumerate() {
            if carried[top] {
                if self.write_top(top, event, &mut any_moved, &mut moved) {
                    moved_names.push(name);
                }
            } else if self.write_top(top, event, &mut any_added, &mut added) && *name == CONFLICT_KEY {
                // A profile path under `enrichment.` takes the key itself.
                has_conflict_key = true;
            }
        }
        let extra = (!moved_names.is_empty() && has_conflict_key).then(|| {
            format!(
                "output profile {}: the record already has {} and {CONFLICT_KEY:?}; the profile's values were left out",
                self.profile.name,
                moved_names.join(", ")
            )
        });
        let mut has_fields = event.raw_has_fields;
        if has_warnings && (!event.warnings.is_empty() || extra.is_some()) {
            // The record's warnings give way to ours: copy the other members.
            has_fields = crate::batch::write_members_but(raw, out, |key| key == WARNINGS_KEY);
        } else {
            let body = raw.trim_end();
            out.extend_from_slice(body[..body.len() - 1].trim_end().as_bytes());
        }
        if any_added {
            if has_fields {
                out.push(b',');
            }
            has_fields = true;
            out.extend_from_slice(&added);
        }
        if any_moved && extra.is_none() {
            member(CONFLICT_KEY, &mut has_fields, out);
            out.push(b'{');
            out.extend_from_slice(&moved);
            out.push(b'}');
        }
        write_warnings(&event.warnings, extra.as_slice(), has_fields, out);
        out.push(b'}');
        true
    }
}

fn write_warnings(warnings: &[String], extra: &[String], has_fields: bool, out: &mut Vec<u8>) {
    if warnings.is_empty() && extra.is_empty() {
        return;
    }
    let mut has = has_fields;
    member(WARNINGS_KEY, &mut has, out);
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
pub(super) fn reencode(profile: &Profile, field: usize, fragment: &JsonFragment) -> Option<JsonFragment> {
    let key = (profile.uid, field, fragment.as_ptr() as usize);
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
