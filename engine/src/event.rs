//! The in-memory event: the well-known fields parsed once, the rest kept as
//! the client's own JSON text.
//!
//! Why this shape: enrichers and (later) WASM rules read addresses, ports and
//! byte counts on every event, so those are parsed exactly once into plain
//! Rust values. Everything else the client sent is never turned into a tree:
//! the record's JSON text stays in the batch's buffer and is copied to the
//! output byte for byte, which is both "pass through untouched" and cheap.
//! Enrichment results are pre-serialized JSON fragments shared through `Arc`,
//! so a GeoIP answer decoded once can be attached to thousands of events
//! without a per-event allocation. What stages establish for later ones
//! (a country code, an AS number, a score) are declared facts
//! ([`crate::fact`]): the core has no field named after any plugin's answer.

use std::net::IpAddr;

use smallvec::SmallVec;

/// A byte range inside a batch's source text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub len: u32,
}

impl Span {
    pub(crate) fn range(self) -> std::ops::Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

/// A captured string field: borrowed from the source when it had no escapes,
/// owned (decoded) otherwise.
#[derive(Clone, Debug)]
pub(crate) enum Text {
    Span(Span),
    Owned(Box<str>),
}

/// Index of an output key in the chain's key table (see [`crate::BuildContext::output_key`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(pub(crate) u16);

impl KeyId {
    /// Position of the key in the chain's key table ([`crate::Chain::keys`]).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Index of a declared fact in the chain's fact table (see [`crate::fact`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FactId(pub(crate) u16);

impl FactId {
    /// Position in [`crate::Chain::facts`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The facts set on one event: values indexed by fact id with a presence
/// mask, so setting and reading one is O(1) with no scan, and iterating
/// walks the set bits. A chain declares a handful of facts (the stage-3
/// chain: eight); ids past [`FactSet::INDEXED`] (a fact table grown over
/// many reloads) go to a side list, allocated only then.
#[derive(Clone, Debug, Default)]
pub(crate) struct FactSet {
    present: u16,
    values: [u32; FactSet::INDEXED],
    more: Vec<(FactId, u32)>,
}

impl FactSet {
    const INDEXED: usize = 16;

    #[inline]
    fn set(&mut self, id: FactId, value: u32) {
        let i = id.index();
        if i < Self::INDEXED {
            self.present |= 1 << i;
            self.values[i] = value;
        } else if let Some(slot) = self.more.iter_mut().find(|(f, _)| *f == id) {
            slot.1 = value;
        } else {
            self.more.push((id, value));
        }
    }

    #[inline]
    fn get(&self, id: FactId) -> Option<u32> {
        let i = id.index();
        if i < Self::INDEXED {
            (self.present & (1 << i) != 0).then(|| self.values[i])
        } else {
            self.more.iter().find(|(f, _)| *f == id).map(|(_, v)| *v)
        }
    }

    /// The lowest id of `mask` set here, with its value.
    #[inline]
    fn first_of(&self, mask: &FactMask) -> Option<(FactId, u32)> {
        let hit = self.present & mask.bits;
        if hit != 0 {
            let i = hit.trailing_zeros() as usize;
            return Some((FactId(i as u16), self.values[i]));
        }
        if mask.more.is_empty() {
            return None;
        }
        mask.more.iter().find_map(|&id| self.get(id).map(|v| (id, v)))
    }

    /// Every fact of `mask` set here, by id.
    fn iter_in<'a>(&'a self, mask: &'a FactMask) -> impl Iterator<Item = (FactId, u32)> + 'a {
        Self::walk(self.present & mask.bits, &self.values)
            .chain(mask.more.iter().filter_map(move |&id| self.get(id).map(|v| (id, v))))
    }

    fn walk(mut bits: u16, values: &[u32; Self::INDEXED]) -> impl Iterator<Item = (FactId, u32)> + '_ {
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some((FactId(i as u16), values[i]))
        })
    }

    fn iter(&self) -> impl Iterator<Item = (FactId, u32)> + '_ {
        let mut bits = self.present;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some((FactId(i as u16), self.values[i]))
        })
        .chain(self.more.iter().copied())
    }
}

/// A set of fact ids, worked out once per chain by a consumer (metrics, the
/// WASM record) that asks per event "which of these is set": with the ids
/// below [`FactSet::INDEXED`] as a bit mask, that is one AND and a
/// trailing-zeros count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FactMask {
    bits: u16,
    more: Vec<FactId>,
}

impl FactMask {
    pub fn of(ids: impl IntoIterator<Item = FactId>) -> Self {
        let mut mask = FactMask::default();
        for id in ids {
            if id.index() < FactSet::INDEXED {
                mask.bits |= 1 << id.index();
            } else if !mask.more.contains(&id) {
                mask.more.push(id);
                mask.more.sort();
            }
        }
        mask
    }

    pub fn is_empty(&self) -> bool {
        self.bits == 0 && self.more.is_empty()
    }
}

/// Index of a captured text field (see [`crate::BuildContext::text_field`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TextFieldId(pub(crate) u16);

/// A pre-serialized JSON value (object, array, string, number or `null`).
///
/// Plugins build these once per distinct answer and share them between
/// events; the engine writes the text verbatim into the output.
///
/// Why `ArcStr` and not `Arc<str>`: every event holds several fragments,
/// and cloning one into an event and dropping it with the event were two
/// atomic read-modify-writes each, a third of the WASM rule's per-event
/// time in its profile (issue 18). An `ArcStr` is one pointer (an event's
/// output slots shrink by half), and a [`constant_fragment`] clones and
/// drops with no atomic at all.
pub type JsonFragment = arcstr::ArcStr;

/// The fragment for `json`, made once per process and never freed: for
/// values written into event after event (`null`, `[]`, the scores 0-100,
/// a stage's "no match" answer, a rule's lists of declared reasons). One
/// per distinct text, and at most [`MAX_CONSTANT_BYTES`] of them in all:
/// past that (a module emitting ever new lists, say) fragments are
/// ordinary, counted and freed, so neither traffic nor reloads can grow
/// the memory without bound. Not for the hot path: it takes a lock; callers
/// keep what it returns.
pub fn constant_fragment(json: &str) -> JsonFragment {
    use std::sync::{Mutex, OnceLock};
    static CONSTANTS: OnceLock<Mutex<Constants>> = OnceLock::new();
    let mut constants = CONSTANTS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    constants.get(json, MAX_CONSTANT_BYTES)
}

/// The table behind [`constant_fragment`], with its bound as a parameter
/// (so a test can reach it without filling the process's table).
#[derive(Default)]
struct Constants {
    by_text: std::collections::HashMap<Box<str>, JsonFragment>,
    bytes: usize,
}

impl Constants {
    fn get(&mut self, json: &str, max_bytes: usize) -> JsonFragment {
        if let Some(fragment) = self.by_text.get(json) {
            return fragment.clone();
        }
        let fragment = JsonFragment::from(json);
        if self.bytes + 2 * json.len() <= max_bytes {
            fragment.leak();
            self.bytes += 2 * json.len();
            self.by_text.insert(json.into(), fragment.clone());
        }
        fragment
    }
}

/// Bytes of text [`constant_fragment`] keeps (each text twice: the
/// fragment and the table's key).
pub const MAX_CONSTANT_BYTES: usize = 1 << 20;

/// One telemetry record.
#[derive(Clone, Debug, Default)]
pub struct Event {
    /// The record's JSON object text inside the batch source.
    pub(crate) raw: Span,
    /// The record has at least one field of its own (so output needs a comma).
    pub(crate) raw_has_fields: bool,
    /// The record carries a key the chain writes; those are dropped on output
    /// so the response never holds the same key twice.
    pub(crate) shadows_output: bool,
    /// A key of the record is written with escapes (`"sourc\u0065"`), so
    /// a search of the raw text for a key's plain spelling can miss it
    /// (output profiles check their keys that way; see
    /// `profile::write::Plan::may_conflict`). Only the serde path reads
    /// such keys, so the fast path never pays for the flag.
    pub(crate) raw_key_escaped: bool,

    /// Event time, seconds since the Unix epoch, when given as a number.
    pub ts: Option<f64>,
    /// Source / originator address (`src_ip`, `id.orig_h`, `id_orig_h`).
    pub src_ip: Option<IpAddr>,
    /// Destination / responder address (`dst_ip`, `id.resp_h`, `id_resp_h`).
    pub dst_ip: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    /// IANA protocol number (`tcp` = 6, `udp` = 17, ...).
    pub proto: Option<u8>,
    /// Total bytes of a flow record (`bytes`).
    pub bytes: Option<u64>,
    /// Zeek `orig_bytes` / `resp_bytes`.
    pub orig_bytes: Option<u64>,
    pub resp_bytes: Option<u64>,
    pub packets: Option<u64>,
    /// Zeek `duration`, seconds.
    pub duration: Option<f64>,

    /// Declared facts set by the stages (see [`crate::fact`]): small
    /// scalars by id.
    pub(crate) facts: FactSet,
    pub(crate) texts: SmallVec<[(TextFieldId, Text); 2]>,
    // Inline room for the stage-3 chain (geo and asn on both addresses,
    // ti, risk_score, reasons, tags) so no event allocates for its
    // results. Plugin facts (country, AS number, matches, score...) are in
    // `facts`, not here.
    pub(crate) outputs: SmallVec<[(KeyId, JsonFragment); 8]>,
    pub(crate) warnings: Vec<String>,
}

/// Which of an event's two addresses an enricher looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AddressSelector {
    /// `src_ip` / `id.orig_h`.
    Source,
    /// `dst_ip` / `id.resp_h`.
    Destination,
    /// The destination, or the source when the record has no destination.
    DestinationOrSource,
}

/// One of an event's two ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl AddressSelector {
    pub fn pick(self, event: &Event) -> Option<IpAddr> {
        self.pick_side(event).map(|(_, ip)| ip)
    }

    /// The selected address and which end of the event it is.
    pub fn pick_side(self, event: &Event) -> Option<(Side, IpAddr)> {
        let src = event.src_ip.map(|ip| (Side::Source, ip));
        let dst = event.dst_ip.map(|ip| (Side::Destination, ip));
        match self {
            AddressSelector::Source => src,
            AddressSelector::Destination => dst,
            AddressSelector::DestinationOrSource => dst.or(src),
        }
    }
}

impl Event {
    /// An event built in code (offline lookups, tests, benchmarks): no raw
    /// record text, only the well-known fields set by the caller.
    pub fn synthetic() -> Self {
        Event::default()
    }

    /// Asks the CPU to start loading this event's flow fields and facts
    /// (what stages read): called a few events ahead of a loop's reads,
    /// so that their cache misses overlap (see [`crate::hint`]).
    #[inline]
    pub fn prefetch(&self) {
        let base = (self as *const Event).cast::<u8>();
        let (start, end) = Event::READ_BY_STAGES;
        // Line by line from the first such field to the end of the last.
        let mut at = start & !63;
        while at < end {
            crate::hint::prefetch_line(base.wrapping_add(at));
            at += 64;
        }
    }

    /// Where the fields stages read lie in an `Event`: from the lowest
    /// offset to the end of the highest (the layout is the compiler's).
    const READ_BY_STAGES: (usize, usize) = {
        use std::mem::{offset_of, size_of};
        let fields = [
            (offset_of!(Event, ts), size_of::<Option<f64>>()),
            (offset_of!(Event, src_ip), size_of::<Option<IpAddr>>()),
            (offset_of!(Event, dst_ip), size_of::<Option<IpAddr>>()),
            (offset_of!(Event, src_port), size_of::<Option<u16>>()),
            (offset_of!(Event, dst_port), size_of::<Option<u16>>()),
            (offset_of!(Event, proto), size_of::<Option<u8>>()),
            (offset_of!(Event, bytes), size_of::<Option<u64>>()),
            (offset_of!(Event, orig_bytes), size_of::<Option<u64>>()),
            (offset_of!(Event, resp_bytes), size_of::<Option<u64>>()),
            (offset_of!(Event, packets), size_of::<Option<u64>>()),
            (offset_of!(Event, duration), size_of::<Option<f64>>()),
            (offset_of!(Event, facts), size_of::<FactSet>()),
        ];
        let (mut start, mut end, mut i) = (usize::MAX, 0, 0);
        while i < fields.len() {
            let (offset, size) = fields[i];
            if offset < start {
                start = offset;
            }
            if offset + size > end {
                end = offset + size;
            }
            i += 1;
        }
        (start, end)
    };

    /// Attaches an enrichment result under `key`, replacing an earlier value
    /// for the same key (a later chain entry wins).
    #[inline]
    pub fn set_output(&mut self, key: KeyId, value: JsonFragment) {
        if let Some(slot) = self.outputs.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.outputs.push((key, value));
        }
    }

    /// The enrichment result attached under `key`, if any.
    #[inline]
    pub fn output(&self, key: KeyId) -> Option<&JsonFragment> {
        self.outputs.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Every enrichment result attached, in the order first set (metrics read
    /// a few of them by key name without knowing the plugins).
    pub fn outputs(&self) -> impl Iterator<Item = (KeyId, &JsonFragment)> {
        self.outputs.iter().map(|(k, v)| (*k, v))
    }

    /// Sets a declared fact (see [`crate::BuildContext::fact`]), replacing
    /// an earlier value of the same fact.
    #[inline]
    pub fn set_fact(&mut self, fact: FactId, value: u32) {
        self.facts.set(fact, value);
    }

    /// The value of a fact, if a stage set it on this event.
    #[inline]
    pub fn fact(&self, fact: FactId) -> Option<u32> {
        self.facts.get(fact)
    }

    /// The first (lowest id: first declared) fact of `mask` set on this
    /// event, with its value.
    #[inline]
    pub fn first_fact(&self, mask: &FactMask) -> Option<(FactId, u32)> {
        self.facts.first_of(mask)
    }

    /// Every fact of `mask` set on this event, by id.
    #[inline]
    pub fn facts_in<'a>(&'a self, mask: &'a FactMask) -> impl Iterator<Item = (FactId, u32)> + 'a {
        self.facts.iter_in(mask)
    }

    /// Every fact set on this event, by id (ids follow declaration order,
    /// which is chain order).
    pub fn facts(&self) -> impl Iterator<Item = (FactId, u32)> + '_ {
        self.facts.iter()
    }

    /// Records a problem with this event that did not stop it from being
    /// processed (e.g. an address field that is not an IP address). Shown to
    /// the client in the record's `enrichment_warnings`.
    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Sets a captured text field directly (synthetic events, tests).
    pub fn set_text(&mut self, field: TextFieldId, value: &str) {
        self.texts.retain(|(f, _)| *f != field);
        self.texts.push((field, Text::Owned(value.into())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fact_set_indexes_sets_overwrites_and_spills() {
        let mut e = Event::synthetic();
        assert_eq!(e.fact(FactId(3)), None);
        e.set_fact(FactId(3), 30);
        e.set_fact(FactId(0), 1);
        e.set_fact(FactId(3), 31);
        e.set_fact(FactId(40), 400);
        e.set_fact(FactId(17), 170);
        e.set_fact(FactId(40), 401);
        assert_eq!((e.fact(FactId(0)), e.fact(FactId(3)), e.fact(FactId(4))), (Some(1), Some(31), None));
        assert_eq!((e.fact(FactId(40)), e.fact(FactId(17)), e.fact(FactId(18))), (Some(401), Some(170), None));
        let all: Vec<(u16, u32)> = e.facts().map(|(id, v)| (id.0, v)).collect();
        assert_eq!(all, vec![(0, 1), (3, 31), (40, 401), (17, 170)]);
        e.set_fact(FactId(15), 0);
        assert_eq!(e.fact(FactId(15)), Some(0), "zero is a value, not absence");
        let mask = FactMask::of([FactId(40), FactId(5), FactId(3), FactId(15)]);
        assert_eq!(e.first_fact(&mask).map(|(id, v)| (id.0, v)), Some((3, 31)));
        let hits: Vec<u16> = e.facts_in(&mask).map(|(id, _)| id.0).collect();
        assert_eq!(hits, vec![3, 15, 40]);
        assert_eq!(e.first_fact(&FactMask::of([FactId(5), FactId(41)])), None);
        assert_eq!(e.first_fact(&FactMask::of([FactId(41), FactId(40)])).map(|(id, _)| id.0), Some(40));
        assert!(FactMask::of([]).is_empty());
    }

    #[test]
    fn a_constant_fragment_is_made_once_and_never_counted() {
        let a = constant_fragment("[\"constant test\"]");
        let b = constant_fragment("[\"constant test\"]");
        assert!(JsonFragment::ptr_eq(&a, &b), "one per distinct text");
        assert!(JsonFragment::is_static(&a), "clones and drops touch no counter");
        assert_eq!(&*a, "[\"constant test\"]");
        let other = constant_fragment("[\"another\"]");
        assert!(!JsonFragment::ptr_eq(&a, &other));
        assert!(!JsonFragment::is_static(&JsonFragment::from("[1]")), "ordinary fragments are counted and freed");
    }

    #[test]
    fn constants_stop_at_their_bound_and_are_ordinary_past_it() {
        // 2 x 4 bytes a text: room for two under a bound of 17.
        let mut table = Constants::default();
        let (a, b) = (table.get("\"aa\"", 17), table.get("\"bb\"", 17));
        assert!(JsonFragment::is_static(&a) && JsonFragment::is_static(&b));
        let c = table.get("\"cc\"", 17);
        assert!(!JsonFragment::is_static(&c), "past the bound: counted and freed");
        assert_eq!((table.bytes, table.by_text.len()), (16, 2), "nothing kept past the bound");
        // Kept ones are still found; a text past the bound is made anew.
        assert!(JsonFragment::ptr_eq(&a, &table.get("\"aa\"", 17)));
        assert!(!JsonFragment::ptr_eq(&c, &table.get("\"cc\"", 17)));
    }
}
