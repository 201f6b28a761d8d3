//! The guest's result buffer, checked and written into the events.
//!
//! Everything a module returns passes through here: the entries (score,
//! reasons, tags, fields) are validated as a whole before any is applied,
//! so a module that writes garbage fails only its own chunk. This is the
//! one place that reads bytes a hostile module controls, so it is kept
//! apart from wasmtime: the fuzz harness (`fuzz/fuzz_targets/wasm_results.rs`)
//! drives it with arbitrary buffers without building a runtime.

use std::sync::Arc;

use enrichd_engine::{constant_fragment, BuildContext, Event, FactDecl, FactId, FactKind, JsonFragment, KeyId};
use enrichd_sdk::abi::{self, kind};

use crate::declared::DeclaredTexts;
use crate::lists::{json_list, IdListCache, Interned, Item, ListCache, ListKey};
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
    /// Lists made only of declared texts, by their packed ids.
    id_lists: IdListCache,
    /// Guest bytes -> validated JSON fragment.
    interned: Interned,
    /// Enricher fields checked but not yet applied: `(event, key, value)`.
    computed: Vec<(usize, KeyId, JsonFragment)>,
}

/// A field value from the guest, checked to be one JSON value that
/// JSON readers downstream accept: numbers must fit an IEEE double
/// (RFC 7493), which a syntax-only check lets through (`24e457`: found by
/// the `wasm_results` fuzz target). Parsed into a `Value` only on a cache
/// miss: values repeat.
fn interned_json_value(value: &[u8], table: &mut Interned) -> Result<JsonFragment, FailureKind> {
    let mut key = Vec::with_capacity(value.len() + 1);
    key.push(b'V');
    key.extend_from_slice(value);
    if let Some(f) = table.get(key.as_slice()) {
        return Ok(f.clone());
    }
    let text = std::str::from_utf8(value).map_err(|_| FailureKind::MalformedResult)?;
    serde_json::from_str::<serde_json::Value>(text).map_err(|_| FailureKind::MalformedResult)?;
    Ok(table.intern(&key, text.to_owned()))
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
                .map_or_else(|| constant_fragment("null"), |s| constant_fragment(&s.min(100).to_string())),
            // Written into event after event: constants clone and drop
            // without atomics.
            scores: (0..=100).map(|s| constant_fragment(&s.to_string())).collect(),
            empty_list: constant_fragment("[]"),
            null: constant_fragment("null"),
        })
    }

    /// Validates the whole result buffer, then writes it into the events:
    /// nothing is applied unless every entry is acceptable. `texts` are
    /// the module's declared texts, which `*_ID` entries name.
    ///
    /// Allocation-free in steady state: entries are indexed into reused
    /// buffers; lists of declared texts are found by their packed ids, and
    /// other reason / tag lists and field values are interned per thread by
    /// the guest's raw bytes, so a repeated list is neither re-validated,
    /// re-escaped nor re-allocated.
    pub fn apply(
        &self,
        events: &mut [Event],
        out: &[u8],
        texts: &DeclaredTexts,
        scratch: &mut Scratch,
    ) -> Result<(), FailureKind> {
        self.check(events.len(), out, texts, scratch)?;
        self.write(events, out, texts, scratch)
    }

    /// Validates the result buffer for `n` events and indexes its entries
    /// (sorted by event) in `scratch`, applying nothing: what a shadow
    /// module's results go through before they are compared.
    pub fn check(&self, n: usize, out: &[u8], texts: &DeclaredTexts, scratch: &mut Scratch) -> Result<(), FailureKind> {
        let Scratch { entries, counts, .. } = scratch;
        entries.clear();
        counts.clear();
        counts.resize(n, 0);
        let base = out.as_ptr() as usize;
        let (mut sorted, mut last) = (true, 0);
        // Bytes of JSON the call's reasons and tags become: an id is one
        // byte of the buffer but its text's JSON (up to 6 KiB) in every
        // event it is written into, so without this bound a 64 KiB buffer
        // made tens of MB of reasons per call. A text written out counts
        // its bytes and quotes; its escapes (at most 5 bytes more per
        // byte) are bounded by the buffer, within the bound's margin.
        let mut lists_json = 0usize;
        for entry in abi::entries(out) {
            let e = entry.map_err(|_| FailureKind::MalformedResult)?;
            let count = counts.get_mut(e.event as usize).ok_or(FailureKind::MalformedResult)?;
            match e.kind {
                kind::SCORE if e.payload.len() != 4 => return Err(FailureKind::MalformedResult),
                kind::REASON | kind::TAG | kind::REASON_ID | kind::TAG_ID => {
                    *count += 1;
                    // Checked here, so that applying below cannot fail.
                    let acceptable = match e.kind {
                        kind::REASON | kind::TAG => {
                            lists_json += e.payload.len() + 3;
                            e.payload.len() <= abi::MAX_TEXT && is_utf8(e.payload)
                        }
                        _ => match e.payload {
                            [id] if (*id as usize) < texts.len() => {
                                lists_json += texts.json(*id).len() + 1;
                                true
                            }
                            _ => false,
                        },
                    };
                    if usize::from(*count) > abi::MAX_LIST_ENTRIES || !acceptable || lists_json > abi::MAX_LISTS_JSON {
                        return Err(FailureKind::MalformedResult);
                    }
                }
                kind::FIELD if e.payload.is_empty() || e.payload.len() > abi::MAX_FIELD_PAYLOAD => {
                    return Err(FailureKind::MalformedResult)
                }
                // A rule declares no field: any field key is undeclared.
                kind::FIELD if matches!(self.outputs, Outputs::Rule { .. }) => {
                    return Err(FailureKind::MalformedResult)
                }
                _ => {}
            }
            sorted &= last <= e.event;
            last = e.event;
            entries.push((e.event, e.kind, e.payload.as_ptr() as usize - base, e.payload.len()));
        }
        if !sorted {
            entries.sort_by_key(|&(event, ..)| event);
        }
        Ok(())
    }

    /// Writes the entries indexed by [`ResultWriter::check`] into `events`.
    fn write(
        &self,
        events: &mut [Event],
        out: &[u8],
        texts: &DeclaredTexts,
        scratch: &mut Scratch,
    ) -> Result<(), FailureKind> {
        let Scratch { entries, lists, id_lists, interned, computed, .. } = scratch;
        match &self.outputs {
            Outputs::Rule { score, reasons, tags, facts } => {
                // Everything is validated: write straight into the events,
                // reading each event's entries once.
                let (score_key, reasons_key, tags_key) = (*score, *reasons, *tags);
                let [score_fact, reasons_fact, tags_fact] = *facts;
                let mut rest = &entries[..];
                for (i, ev) in events.iter_mut().enumerate() {
                    let n = rest.iter().position(|&(event, ..)| event as usize != i).unwrap_or(rest.len());
                    let (mine, next) = rest.split_at(n);
                    rest = next;
                    let mut score = None;
                    let (mut reason_list, mut tag_list) = (ListKey::default(), ListKey::default());
                    for &(_, k, at, len) in mine {
                        match k {
                            // The last score written counts.
                            kind::SCORE => {
                                score = Some(i32::from_le_bytes(out[at..at + len].try_into().expect("4 bytes")))
                            }
                            kind::REASON => reason_list.text(),
                            kind::REASON_ID => reason_list.id(out[at]),
                            kind::TAG => tag_list.text(),
                            kind::TAG_ID => tag_list.id(out[at]),
                            _ => {}
                        }
                    }
                    let score = score.map(|s| s.clamp(0, 100) as u8);
                    if let Some(s) = score {
                        ev.set_fact(score_fact, u32::from(s));
                    }
                    ev.set_fact(reasons_fact, reason_list.count);
                    ev.set_output(
                        score_key,
                        score.map_or_else(|| self.null.clone(), |s| self.scores[s as usize].clone()),
                    );
                    let caches = (&mut *lists, &mut *id_lists, &mut *interned);
                    let r = self.list(&reason_list, (kind::REASON, kind::REASON_ID), mine, out, texts, caches);
                    ev.set_output(reasons_key, r);
                    if tag_list.count > 0 {
                        let caches = (&mut *lists, &mut *id_lists, &mut *interned);
                        let t = self.list(&tag_list, (kind::TAG, kind::TAG_ID), mine, out, texts, caches);
                        ev.set_fact(tags_fact, tag_list.count);
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

    /// The JSON array of one event's reasons or tags (`kinds`: the by-text
    /// and by-id entry kinds), read from its entries `mine`, described by
    /// `key`. Lists of declared texts come from the id cache; others are
    /// interned by their bytes.
    fn list(
        &self,
        key: &ListKey,
        (by_text, by_id): (u8, u8),
        mine: &[(u16, u8, usize, usize)],
        out: &[u8],
        texts: &DeclaredTexts,
        (lists, id_lists, interned): (&mut ListCache, &mut IdListCache, &mut Interned),
    ) -> JsonFragment {
        if key.count == 0 {
            return self.empty_list.clone();
        }
        // Made only when needed: on the hot path (a cached list of ids)
        // building the iterator cost a stall of its own.
        let items = || {
            mine.iter().filter(move |e| e.1 == by_text || e.1 == by_id).map(move |&(_, k, at, len)| {
                if k == by_id {
                    Item::Declared(out[at])
                } else {
                    Item::Text(&out[at..at + len])
                }
            })
        };
        match key.packed() {
            Some(packed) => match id_lists.get(packed, texts) {
                Some(fragment) => fragment,
                None => id_lists.insert(packed, &json_list(items(), texts)),
            },
            None => lists.string_list(items(), texts, interned),
        }
    }

    /// Whether results are verdicts (a rule) rather than fields.
    pub fn is_rule(&self) -> bool {
        matches!(self.outputs, Outputs::Rule { .. })
    }

    /// The verdict of each of `n` events from the entries indexed by
    /// [`ResultWriter::check`] (or a successful [`ResultWriter::apply`]) of
    /// `out`, into `into` (cleared first). No allocation once `into` has
    /// grown: reasons are compared by a hash of their bytes.
    /// A reason is hashed by its text, whether written or declared, so a
    /// module and its shadow compare equal however each writes it.
    pub fn verdicts(&self, n: usize, out: &[u8], texts: &DeclaredTexts, scratch: &Scratch, into: &mut Vec<Verdict>) {
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
                kind::REASON_ID => v.reasons = mix(v.reasons, texts.text(payload[0]).as_bytes()),
                _ => {}
            }
        }
    }

    /// The reasons of event `event` as text, from the entries indexed in
    /// `scratch` (for the few events a shadow summary quotes).
    pub fn reasons(&self, event: usize, out: &[u8], texts: &DeclaredTexts, scratch: &Scratch) -> Vec<String> {
        scratch
            .entries
            .iter()
            .filter(|&&(e, kind, ..)| e as usize == event && (kind == kind::REASON || kind == kind::REASON_ID))
            .map(|&(_, kind, at, len)| match kind {
                kind::REASON_ID => texts.text(out[at]).to_owned(),
                _ => String::from_utf8_lossy(&out[at..at + len]).into_owned(),
            })
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
                let reasons_json = JsonFragment::from(serde_json::to_string(&[&reason]).expect("serializes"));
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
        let mut table = Interned::default();
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
