//! Facts: the typed values a stage establishes about an event, declared by
//! the plugin at build time, for later stages (rules), metrics and
//! `/v1/schema` to read without knowing the plugin.
//!
//! Decisions:
//!
//! - **Declared, not named by the core.** A plugin declares each fact it
//!   produces with [`crate::BuildContext::fact`]: a name of its choosing
//!   (`dst_country`, `asn_class`, ...), a [`FactKind`] (a *type*: country
//!   code, AS number, indicator matches, score, ...; never a meaning such as
//!   "GeoIP"), the [`Side`] of the event it is about (if any), the output
//!   key it writes the full answer under (renamable by config; the fact's
//!   identity does not change with it), the JSON Schema of that output and
//!   whether metrics should keep a "top values" list of it. Consumers find
//!   facts by kind and side (metrics, the WASM event record) or by declared
//!   name (the WASM `field` import), never by output key.
//! - **Small scalars per event.** An event carries `(FactId, u32)` pairs in
//!   a small inline vector: a country code is two ASCII bytes, an AS number
//!   itself, indicator matches their count, a score 0-100, a label the
//!   index into the declared [`FactDecl::labels`], a list the number of its
//!   items. Whatever is larger stays in the event's output fragment (a
//!   shared `Arc<str>`) under the fact's output key, read only by those who
//!   need it, through a reader the plugin supplies ([`FactDecl::values`]:
//!   the indicator names of a TI answer, the organisation of an AS answer).
//!   Setting or reading a fact is a scan of a few inline integers: no
//!   allocation, hashing or string compare per event.
//! - **Ids stable across reloads.** Facts are interned in a table owned by
//!   the chain, keyed by (stage name, fact name) and only ever appended to,
//!   like output keys: a stage kept across a reload keeps reading and
//!   writing the same ids. A stage rebuilt with other options that
//!   re-declares a fact updates its declaration in place. The table may
//!   hold facts of stages no longer in the chain; those are never set, and
//!   [`crate::Chain::active_facts`] leaves them out.

use std::sync::Arc;

use serde::Serialize;

pub use crate::event::FactId;
use crate::event::{KeyId, Side};

/// Upper bounds of every histogram of [`FactKind::Score`] values (the live
/// risk metrics, shadow-rule comparisons), +Inf after the last: one set,
/// so the histograms read side by side.
pub const SCORE_BOUNDS: [u8; 10] = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100];

/// The type of a fact's scalar (what the `u32` means), not its meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactKind {
    /// ISO 3166-1 alpha-2, two uppercase ASCII bytes packed `a << 8 | b`
    /// (see [`pack_country`]).
    CountryCode,
    /// An autonomous system number.
    AsNumber,
    /// Number of indicator matches; the names are read from the output
    /// fragment with [`FactDecl::values`].
    IndicatorMatches,
    /// A score 0-100.
    Score,
    /// A list of reasons (JSON array of strings in the output); the scalar
    /// is its length.
    ReasonList,
    /// A list of tags, like [`FactKind::ReasonList`].
    TagList,
    /// A short text class: the scalar indexes [`FactDecl::labels`].
    Label,
    /// A plain count or number.
    Count,
    /// Any JSON value, only in the output (scalar unused, 0).
    Object,
}

impl FactKind {
    /// Kinds whose scalar is the whole value (rendered by [`FactInfo::render`]);
    /// the others are read from the output fragment.
    pub fn is_scalar(self) -> bool {
        matches!(self, FactKind::CountryCode | FactKind::AsNumber | FactKind::Score | FactKind::Label | FactKind::Count)
    }
}

/// Reads names out of a fact's output fragment (indicator names of a TI
/// answer, the organisation of an AS answer), calling `each` per name.
/// Called off the hot path (metrics, for events that have the fact).
pub type ValuesReader = fn(fragment: &str, each: &mut dyn FnMut(&str));

/// What a plugin declares about one fact it produces.
#[derive(Clone, Debug)]
pub struct FactDecl {
    /// The fact's name, unique within the stage (`dst_country`, `score`).
    /// Rules read it by this name through the `field` import.
    pub name: String,
    pub kind: FactKind,
    /// The end of the event it is about, when it is about one.
    pub side: Option<Side>,
    /// The output key the full answer is written under, if any.
    pub output: Option<KeyId>,
    /// JSON Schema of the value written under `output` (`{}` when none).
    pub schema: serde_json::Value,
    /// Offer metrics a "top values of this fact" list.
    pub top_values: bool,
    /// Reads names out of the output fragment (see [`ValuesReader`]).
    pub values: Option<ValuesReader>,
    /// The texts of a [`FactKind::Label`] fact, by scalar value.
    pub labels: Vec<Box<str>>,
}

impl FactDecl {
    /// A declaration with no side, output, schema, reader or labels.
    pub fn new(name: impl Into<String>, kind: FactKind) -> Self {
        FactDecl {
            name: name.into(),
            kind,
            side: None,
            output: None,
            schema: serde_json::Value::Object(Default::default()),
            top_values: false,
            values: None,
            labels: Vec::new(),
        }
    }

    pub fn side(mut self, side: Side) -> Self {
        self.side = Some(side);
        self
    }

    pub fn output(mut self, key: KeyId, schema: serde_json::Value) -> Self {
        self.output = Some(key);
        self.schema = schema;
        self
    }

    pub fn top_values(mut self) -> Self {
        self.top_values = true;
        self
    }

    pub fn values(mut self, reader: ValuesReader) -> Self {
        self.values = Some(reader);
        self
    }

    pub fn labels<S: Into<Box<str>>>(mut self, labels: impl IntoIterator<Item = S>) -> Self {
        self.labels = labels.into_iter().map(Into::into).collect();
        self
    }
}

/// A declared fact with the stage that declared it.
#[derive(Clone, Debug)]
pub struct FactInfo {
    pub id: FactId,
    pub stage: Arc<str>,
    pub decl: FactDecl,
}

impl FactInfo {
    /// The scalar `value` as JSON: a country code as a string, a label as
    /// its text, numbers as numbers. `None` for kinds read from the output.
    pub fn render(&self, value: u32) -> Option<serde_json::Value> {
        Some(match self.decl.kind {
            FactKind::CountryCode => unpack_country(value)?.into(),
            FactKind::Label => self.decl.labels.get(value as usize)?.to_string().into(),
            FactKind::AsNumber | FactKind::Score | FactKind::Count => value.into(),
            _ => return None,
        })
    }

    /// The scalar `value` as a short text (top-list keys).
    pub fn render_key(&self, value: u32) -> String {
        match self.render(value) {
            Some(serde_json::Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => value.to_string(),
        }
    }
}

/// The JSON Schema of `T` as a fact's output schema ([`FactDecl::output`]):
/// the generated document without its `$schema` header, since it is
/// embedded in `/v1/schema`'s record schema.
pub fn output_schema<T: schemars::JsonSchema>() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(T)).expect("schemas serialize");
    if let Some(o) = schema.as_object_mut() {
        o.remove("$schema");
    }
    schema
}

/// Packs an ISO country code (case-insensitive) for [`FactKind::CountryCode`].
pub fn pack_country(code: &str) -> Option<u32> {
    match code.as_bytes() {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some(u32::from(a.to_ascii_uppercase()) << 8 | u32::from(b.to_ascii_uppercase()))
        }
        _ => None,
    }
}

/// The two ASCII bytes of a packed country code.
pub fn country_bytes(value: u32) -> [u8; 2] {
    [(value >> 8) as u8, value as u8]
}

/// A packed country code as text.
pub fn unpack_country(value: u32) -> Option<String> {
    let b = country_bytes(value);
    (b[0].is_ascii_alphabetic() && b[1].is_ascii_alphabetic()).then(|| String::from_utf8_lossy(&b).into_owned())
}

/// A fact table built outside a chain (tests, tools): each declaration
/// interned in order under its stage name.
pub fn table(decls: impl IntoIterator<Item = (&'static str, FactDecl)>) -> Vec<FactInfo> {
    let mut table = Vec::new();
    for (stage, decl) in decls {
        intern(&mut table, &Arc::from(stage), decl);
    }
    table
}

/// Interns a declaration under (stage, name); see the module docs.
pub(crate) fn intern(table: &mut Vec<FactInfo>, stage: &Arc<str>, decl: FactDecl) -> FactId {
    if let Some(f) = table.iter_mut().find(|f| f.stage == *stage && f.decl.name == decl.name) {
        f.decl = decl;
        return f.id;
    }
    let id = FactId(u16::try_from(table.len()).expect("fewer than 65536 facts"));
    table.push(FactInfo { id, stage: stage.clone(), decl });
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_interned_per_stage_and_name() {
        let mut table = Vec::new();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let x = intern(&mut table, &a, FactDecl::new("x", FactKind::Score));
        let y = intern(&mut table, &b, FactDecl::new("x", FactKind::Score));
        assert_ne!(x, y);
        let again = intern(&mut table, &a, FactDecl::new("x", FactKind::Count));
        assert_eq!(again, x);
        assert_eq!(table[x.index()].decl.kind, FactKind::Count, "a re-declaration updates in place");
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn country_codes_pack_and_render() {
        let gb = pack_country("gb").unwrap();
        assert_eq!(country_bytes(gb), *b"GB");
        assert_eq!(unpack_country(gb).as_deref(), Some("GB"));
        assert_eq!(pack_country("GBR"), None);
        assert_eq!(unpack_country(0), None);
        let info = FactInfo { id: FactId(0), stage: "s".into(), decl: FactDecl::new("c", FactKind::CountryCode) };
        assert_eq!(info.render(gb), Some("GB".into()));
        let label = FactInfo {
            id: FactId(1),
            stage: "s".into(),
            decl: FactDecl::new("l", FactKind::Label).labels(["isp", "hosting"]),
        };
        assert_eq!(label.render_key(1), "hosting");
        assert_eq!(label.render(7), None);
    }
}
