//! The guest's result buffer, checked and written into the events.
//!
//! Everything a module returns passes through here: the entries (score,
//! reasons, tags, fields) are validated as a whole before any is applied,
//! so a module that writes garbage fails only its own chunk. This is the
//! one place that reads bytes a hostile module controls, so it is kept
//! apart from wasmtime: the fuzz harness (`fuzz/fuzz_targets/wasm_results.rs`)
//! drives it with arbitrary buffers without building a runtime.

use std::sync::Arc;

use enrichd_engine::{BuildContext, Event, FactDecl, FactId, FactKind, JsonFragment, KeyId};
use enrichd_sdk::abi::{self, kind};
use rustc_hash::FxHashMap as HashMap;

use crate::options::{Role, WasmOptions};
use crate::stats::FailureKind;

/// Buffers for reading results, reused from batch to batch.
#[derive(Default)]
pub struct Scratch {
    /// `(event, kind, payload offset, payload length)` per entry.
    entries: Vec<(u16, u8, usize, usize)>,
    /// Reasons + tags per event, to enforce the per-event cap.
    counts: Vec<u8>,
    /// Reason / tag list keys and the last list made.
    lists: ListCache,
    /// Guest bytes -> validated JSON fragment.
    interned: HashMap<Box<[u8]>, JsonFragment>,
    /// Enricher fields checked but not yet applied: `(event, key, value)`.
    computed: Vec<(usize, KeyId, JsonFragment)>,
}

#[derive(Default)]
struct ListCache {
    /// Interning key under construction.
    key: Vec<u8>,
    /// The previous list's key (empty before the first: keys never are)
    /// and fragment.
    last_key: Vec<u8>,
    last: JsonFragment,
}

/// Most interned JSON texts kept per thread before the table is reset.
const MAX_INTERNED: usize = 4096;

fn intern(table: &mut HashMap<Box<[u8]>, JsonFragment>, key: &[u8], json: String) -> JsonFragment {
    if table.len() >= MAX_INTERNED {
        table.clear();
    }
    let fragment: JsonFragment = Arc::from(json);
    table.insert(key.into(), fragment.clone());
    fragment
}

/// A field value from the guest, checked to be one JSON value that
/// JSON readers downstream accept: numbers must fit an IEEE double
/// (RFC 7493), which a syntax-only check lets through (`24e457`: found by
/// the `wasm_results` fuzz target). Parsed into a `Value` only on a cache
/// miss: values repeat.
fn interned_json_value(
    value: &[u8],
    table: &mut HashMap<Box<[u8]>, JsonFragment>,
) -> Result<JsonFragment, FailureKind> {
    let mut key = Vec::with_capacity(value.len() + 1);
    key.push(b'V');
    key.extend_from_slice(value);
    if let Some(f) = table.get(key.as_slice()) {
        return Ok(f.clone());
    }
    let text = std::str::from_utf8(value).map_err(|_| FailureKind::MalformedResult)?;
    serde_json::from_str::<serde_json::Value>(text).map_err(|_| FailureKind::MalformedResult)?;
    Ok(intern(table, &key, text.to_owned()))
}

enum Outputs {
    /// The rule's output keys and its declared facts (score, reasons, tags).
    Rule {
        score: KeyId,
        reasons: KeyId,
        tags: KeyId,
        facts: [FactId; 3],
    },
    Enricher {
        fields: Vec<(String, KeyId)>,
    },
}

/// What a module's results become: the output keys and facts it declared
/// at build time and the pre-encoded values its verdicts reuse.
pub struct ResultWriter {
    name: Arc<str>,
    outputs: Outputs,
    fallback_score: JsonFragment,
    scores: Vec<JsonFragment>,
    empty_list: JsonFragment,
    null: JsonFragment,
}

impl ResultWriter {
    /// Declares the outputs and facts of a module in `options.role` (the
    /// rule's score / reasons / tags, or the enricher's fields). `name`
    /// names the module in warnings.
    pub fn declare(name: Arc<str>, options: &WasmOptions, ctx: &mut BuildContext<'_>) -> anyhow::Result<Self> {
        let outputs = match options.role {
            Role::Rule => {
                let score = ctx.output_key(&options.score_field);
                let reasons = ctx.output_key(&options.reasons_field);
                let tags = ctx.output_key(&options.tags_field);
                let list = || serde_json::json!({"type": "array", "items": {"type": "string"}});
                let facts = [
                    ctx.fact(FactDecl::new("score", FactKind::Score).output(
                        score,
                        serde_json::json!({"type": ["integer", "null"], "minimum": 0, "maximum": 100,
                            "description": "Score 0-100 from the rule (`null` when it set none)."}),
                    )),
                    ctx.fact(FactDecl::new("reasons", FactKind::ReasonList).output(reasons, list())),
                    ctx.fact(FactDecl::new("tags", FactKind::TagList).output(tags, list())),
                ];
                Outputs::Rule { score, reasons, tags, facts }
            }
            Role::Enricher => {
                anyhow::ensure!(!options.fields.is_empty(), "an enricher must list the `fields` it sets");
                let fields = options
                    .fields
                    .iter()
                    .map(|f| {
                        let key = ctx.output_key(f);
                        // Declared so that `/v1/schema` lists it and later
                        // rules read it by name; the guest says nothing of
                        // its type.
                        ctx.fact(FactDecl::new(f.as_str(), FactKind::Object).output(key, serde_json::json!({})));
                        (f.clone(), key)
                    })
                    .collect();
                Outputs::Enricher { fields }
            }
        };
        Ok(ResultWriter {
            name,
            outputs,
            fallback_score: options
                .fallback_score
                .map_or_else(|| Arc::from("null"), |s| Arc::from(s.min(100).to_string())),
            scores: (0..=100).map(|s| Arc::from(s.to_string())).collect(),
            empty_list: Arc::from("[]"),
            null: Arc::from("null"),
        })
    }

    /// Validates the whole result buffer, then writes it into the events:
    /// nothing is applied unless every entry is acceptable.
    ///
    /// Allocation-free in steady state: entries are indexed into reused
    /// buffers, and the JSON of reason / tag lists and field values is
    /// interned per thread by the guest's raw bytes, so a repeated list is
    /// neither re-validated, re-escaped nor re-allocated.
    pub fn apply(&self, events: &mut [Event], out: &[u8], scratch: &mut Scratch) -> Result<(), FailureKind> {
        self.check(events.len(), out, scratch)?;
        self.write(events, out, scratch)
    }

    /// Validates the result buffer for `n` events and indexes its entries
    /// (sorted by event) in `scratch`, applying nothing: what a shadow
    /// module's results go through before they are compared.
    pub fn check(&self, n: usize, out: &[u8], scratch: &mut Scratch) -> Result<(), FailureKind> {
        let Scratch { entries, counts, .. } = scratch;
        entries.clear();
        counts.clear();
        counts.resize(n, 0);
        let base = out.as_ptr() as usize;
        let mut sorted = true;
        for entry in abi::entries(out) {
            let e = entry.map_err(|_| FailureKind::MalformedResult)?;
            let count = counts.get_mut(e.event as usize).ok_or(FailureKind::MalformedResult)?;
            match e.kind {
                kind::SCORE if e.payload.len() != 4 => return Err(FailureKind::MalformedResult),
                kind::REASON | kind::TAG => {
                    *count += 1;
                    // Checked here, so that applying below cannot fail.
                    if *count > 32 || e.payload.len() > abi::MAX_TEXT || !is_utf8(e.payload) {
                        return Err(FailureKind::MalformedResult);
                    }
                }
                kind::FIELD if e.payload.is_empty() || e.payload.len() > abi::MAX_TEXT * 4 => {
                    return Err(FailureKind::MalformedResult)
                }
                // A rule declares no field: any field key is undeclared.
                kind::FIELD if matches!(self.outputs, Outputs::Rule { .. }) => {
                    return Err(FailureKind::MalformedResult)
                }
                _ => {}
            }
            sorted &= entries.last().is_none_or(|&(last, ..)| last <= e.event);
            entries.push((e.event, e.kind, e.payload.as_ptr() as usize - base, e.payload.len()));
        }
        if !sorted {
            entries.sort_by_key(|&(event, ..)| event);
        }
        Ok(())
    }

    /// Writes the entries indexed by [`ResultWriter::check`] into `events`.
    fn write(&self, events: &mut [Event], out: &[u8], scratch: &mut Scratch) -> Result<(), FailureKind> {
        let Scratch { entries, lists, interned, computed, .. } = scratch;
        match &self.outputs {
            Outputs::Rule { score, reasons, tags, facts } => {
                // Everything is validated: write straight into the events.
                let (score_key, reasons_key, tags_key) = (*score, *reasons, *tags);
                let [score_fact, reasons_fact, tags_fact] = *facts;
                let mut rest = &entries[..];
                for (i, ev) in events.iter_mut().enumerate() {
                    let n = rest.iter().take_while(|&&(event, ..)| event as usize == i).count();
                    let (mine, next) = rest.split_at(n);
                    rest = next;
                    let payload = |&(_, _, at, len): &(u16, u8, usize, usize)| &out[at..at + len];
                    let s = mine
                        .iter()
                        .rev()
                        .find(|e| e.1 == kind::SCORE)
                        .map(|e| i32::from_le_bytes(payload(e).try_into().expect("4 bytes")).clamp(0, 100) as u8);
                    let reasons = mine.iter().filter(|e| e.1 == kind::REASON);
                    let r = self.string_list(reasons.clone().map(payload), lists, interned);
                    if let Some(s) = s {
                        ev.set_fact(score_fact, u32::from(s));
                    }
                    ev.set_fact(reasons_fact, reasons.count() as u32);
                    ev.set_output(score_key, s.map_or_else(|| self.null.clone(), |s| self.scores[s as usize].clone()));
                    ev.set_output(reasons_key, r);
                    let tags = mine.iter().filter(|e| e.1 == kind::TAG);
                    if tags.clone().next().is_some() {
                        let t = self.string_list(tags.clone().map(payload), lists, interned);
                        ev.set_fact(tags_fact, tags.count() as u32);
                        ev.set_output(tags_key, t);
                    }
                }
            }
            Outputs::Enricher { fields } => {
                // Field values can still be refused (unknown key, not JSON):
                // check them all before writing any.
                computed.clear();
                for &(event, _, at, len) in entries.iter().filter(|e| e.1 == kind::FIELD) {
                    let p = &out[at..at + len];
                    let klen = p[0] as usize;
                    let name = p.get(1..1 + klen).ok_or(FailureKind::MalformedResult)?;
                    let id = fields.iter().find(|(k, _)| k.as_bytes() == name).map(|(_, id)| *id);
                    let id = id.ok_or(FailureKind::MalformedResult)?;
                    let value = interned_json_value(&p[1 + klen..], interned)?;
                    computed.push((event as usize, id, value));
                }
                for (event, id, value) in computed.drain(..) {
                    events[event].set_output(id, value);
                }
            }
        }
        Ok(())
    }

    /// A JSON array of the strings `items` (UTF-8, checked by the caller),
    /// shared with earlier identical lists. Consecutive events mostly get
    /// the same list, so the previous one is compared before hashing.
    fn string_list<'s>(
        &self,
        items: impl Iterator<Item = &'s [u8]> + Clone,
        lists: &mut ListCache,
        interned: &mut HashMap<Box<[u8]>, JsonFragment>,
    ) -> JsonFragment {
        let key = &mut lists.key;
        key.clear();
        key.push(b'L');
        for item in items.clone() {
            key.extend_from_slice(item);
            key.push(0xff); // never part of UTF-8: an unambiguous separator
        }
        if key.len() == 1 {
            return self.empty_list.clone();
        }
        if lists.last_key == *key {
            return lists.last.clone();
        }
        let fragment = match interned.get(key.as_slice()) {
            Some(f) => f.clone(),
            None => {
                let mut json = String::with_capacity(key.len() + 8);
                json.push('[');
                for (i, item) in items.enumerate() {
                    let text = std::str::from_utf8(item).expect("validated with the result buffer");
                    if i > 0 {
                        json.push(',');
                    }
                    json.push_str(&serde_json::to_string(text).expect("strings serialize"));
                }
                json.push(']');
                intern(interned, key, json)
            }
        };
        lists.last_key.clone_from(key);
        lists.last = fragment.clone();
        fragment
    }

    /// Whether results are verdicts (a rule) rather than fields.
    pub fn is_rule(&self) -> bool {
        matches!(self.outputs, Outputs::Rule { .. })
    }

    /// The verdict of each of `n` events from the entries indexed by
    /// [`ResultWriter::check`] (or a successful [`ResultWriter::apply`]) of
    /// `out`, into `into` (cleared first). No allocation once `into` has
    /// grown: reasons are compared by a hash of their bytes.
    pub fn verdicts(&self, n: usize, out: &[u8], scratch: &Scratch, into: &mut Vec<Verdict>) {
        into.clear();
        into.resize(n, Verdict::default());
        for &(event, kind, at, len) in &scratch.entries {
            let Some(v) = into.get_mut(event as usize) else { continue };
            let payload = &out[at..at + len];
            match kind {
                kind::SCORE => {
                    v.score = Some(i32::from_le_bytes(payload.try_into().expect("4 bytes")).clamp(0, 100) as u8)
                }
                kind::REASON => v.reasons = mix(v.reasons, payload),
                _ => {}
            }
        }
    }

    /// The reasons of event `event` as text, from the entries indexed in
    /// `scratch` (for the few events a shadow summary quotes).
    pub fn reasons(&self, event: usize, out: &[u8], scratch: &Scratch) -> Vec<String> {
        scratch
            .entries
            .iter()
            .filter(|&&(e, kind, ..)| e as usize == event && kind == kind::REASON)
            .map(|&(_, _, at, len)| String::from_utf8_lossy(&out[at..at + len]).into_owned())
            .collect()
    }

    /// The reasons a rule wrote into `event` (read back from its output,
    /// for a quoted sample).
    pub fn written_reasons(&self, event: &Event) -> Vec<String> {
        let Outputs::Rule { reasons, .. } = &self.outputs else { return Vec::new() };
        event.output(*reasons).and_then(|json| serde_json::from_str(json).ok()).unwrap_or_default()
    }

    pub fn fallback(&self, events: &mut [Event], kind: FailureKind) {
        let reason = format!("rule error: {}", kind.name());
        match &self.outputs {
            Outputs::Rule { score, reasons, facts, .. } => {
                let reasons_json: JsonFragment = Arc::from(serde_json::to_string(&[&reason]).expect("serializes"));
                for ev in events {
                    ev.set_fact(facts[1], 1);
                    ev.set_output(*score, self.fallback_score.clone());
                    ev.set_output(*reasons, reasons_json.clone());
                }
            }
            Outputs::Enricher { fields } => {
                for ev in events {
                    for (_, id) in fields {
                        ev.set_output(*id, self.null.clone());
                    }
                    ev.warn(format!("{}: enricher error: {}", self.name, kind.name()));
                }
            }
        }
    }
}

/// UTF-8 check with an inlined ASCII fast path (reasons and tags are
/// nearly always ASCII; `from_utf8` is an out-of-line call).
#[inline]
fn is_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

/// A rule's verdict on one event, reduced for comparison: the score and a
/// hash of the reasons in order (0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub score: Option<u8>,
    pub reasons: u64,
}

/// Folds one reason into a reasons hash (order matters; never 0 after a
/// reason, so "no reasons" and "one empty reason" differ).
fn mix(hash: u64, reason: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write_u64(hash);
    h.write(reason);
    h.write_u8(0xff);
    h.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_values_are_json_that_readers_accept() {
        let mut table = HashMap::default();
        for good in [&b"1.5"[..], b"-0", b"1e308", b"\"x\"", b"{\"a\":[1,2,{\"b\":null}]}", b"true"] {
            assert!(interned_json_value(good, &mut table).is_ok(), "{}", String::from_utf8_lossy(good));
        }
        // The fuzz target's crash (fuzz/artifacts/wasm_results/crash-5d3bdbed…):
        // a number no double holds made the enriched answer unreadable.
        for bad in [&b"24e457"[..], b"-1e400", b"[1,2e999]", b"{\"a\":1", b"1 2", b"\xff"] {
            assert!(
                matches!(interned_json_value(bad, &mut table), Err(FailureKind::MalformedResult)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
