//! Reason and tag lists as JSON fragments, made once and shared: lists of
//! declared texts (ABI 1.1) by their packed ids, other lists by their
//! bytes. Split from `results.rs`, which validates and applies a module's
//! result buffer; this is what a list of one event's entries becomes.

use enrichd_engine::{constant_fragment, JsonFragment};
use rustc_hash::FxHashMap as HashMap;

use crate::declared::DeclaredTexts;

/// The list last made from texts, with its interning key.
#[derive(Default)]
pub(crate) struct ListCache {
    /// Interning key under construction.
    key: Vec<u8>,
    /// The previous list's key (empty before the first: keys never are)
    /// and fragment.
    last_key: Vec<u8>,
    last: JsonFragment,
}

/// JSON lists of declared texts (ABI 1.1) by packed ids: a direct-mapped
/// table, so a lookup is one multiply and one compare, with no hashing or
/// comparing of text. A collision only costs rebuilding a list.
#[derive(Default)]
pub(crate) struct IdListCache {
    /// Whose ids the keys are ([`DeclaredTexts::generation`]).
    generation: u64,
    slots: Vec<(u64, JsonFragment)>,
}

/// Slots per thread and module: a miss takes the constants' lock, so room
/// for many more lists than a rule writes (16 bytes a slot).
const ID_LIST_SLOTS: usize = 256;

impl IdListCache {
    /// The list of packed ids `key` of `texts`' module, if cached.
    #[inline]
    pub(crate) fn get(&mut self, key: u64, texts: &DeclaredTexts) -> Option<JsonFragment> {
        if self.generation != texts.generation() || self.slots.is_empty() {
            self.generation = texts.generation();
            self.slots.clear();
            self.slots.resize(ID_LIST_SLOTS, (0, JsonFragment::new()));
        }
        let slot = &self.slots[Self::slot(key)];
        (slot.0 == key).then(|| slot.1.clone())
    }

    /// Caches `json` as the list `key` (after a [`IdListCache::get`] miss)
    /// and returns its fragment. Few distinct lists per module: kept as
    /// constants, so events clone and drop them without atomics. A list
    /// longer than [`MAX_INTERNED_JSON`] is made but not kept, so that the
    /// slots hold at most a MiB per thread whatever the texts.
    #[cold]
    pub(crate) fn insert(&mut self, key: u64, json: &str) -> JsonFragment {
        if json.len() > MAX_INTERNED_JSON {
            return JsonFragment::from(json);
        }
        let fragment = constant_fragment(json);
        self.slots[Self::slot(key)] = (key, fragment.clone());
        fragment
    }

    /// Fibonacci hashing: the product's top bits pick the slot.
    #[inline]
    fn slot(key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - ID_LIST_SLOTS.ilog2())) as usize
    }
}

/// A reason or tag list being read from one event's entries: its length,
/// and its declared ids packed while it has only those.
#[derive(Default)]
pub(crate) struct ListKey {
    pub(crate) count: u32,
    /// `id + 1` per item, 8 bits each, the last in the low byte: never 0
    /// for a list of 1-8 ids, and a list's JSON depends on nothing else.
    ids: u64,
    has_text: bool,
}

impl ListKey {
    #[inline]
    pub(crate) fn id(&mut self, id: u8) {
        self.count += 1;
        self.ids = self.ids << 8 | (u64::from(id) + 1);
    }

    #[inline]
    pub(crate) fn text(&mut self) {
        self.count += 1;
        self.has_text = true;
    }

    /// The list's key in the [`IdListCache`], if it is made only of
    /// declared texts and short enough to pack (at most 8).
    #[inline]
    pub(crate) fn packed(&self) -> Option<u64> {
        (!self.has_text && (1..=8).contains(&self.count)).then_some(self.ids)
    }
}

/// Most interned JSON texts kept per thread before the table is reset.
const MAX_INTERNED: usize = 4096;
/// Most bytes (keys and JSON) an interned table holds before it is reset:
/// the count alone let entries of a few hundred KiB (a list of 32 long
/// texts) fill a thread's table to most of a gigabyte.
const MAX_INTERNED_BYTES: usize = 4 << 20;
/// Longest JSON interned (a field value, at most 4,096 bytes, always is):
/// longer lists are rare, and rebuilt rather than kept.
pub(crate) const MAX_INTERNED_JSON: usize = 4096;

/// Guest bytes -> validated JSON fragment, bounded in count and bytes.
#[derive(Default)]
pub(crate) struct Interned {
    map: HashMap<Box<[u8]>, JsonFragment>,
    bytes: usize,
}

impl Interned {
    #[inline]
    pub(crate) fn get(&self, key: &[u8]) -> Option<&JsonFragment> {
        self.map.get(key)
    }

    /// Interns `json` under `key`, unless it is too long to be worth
    /// keeping; clears the table first when it is full.
    pub(crate) fn intern(&mut self, key: &[u8], json: String) -> JsonFragment {
        let size = key.len() + json.len();
        let fragment = JsonFragment::from(json);
        if fragment.len() > MAX_INTERNED_JSON {
            return fragment;
        }
        if self.map.len() >= MAX_INTERNED || self.bytes + size > MAX_INTERNED_BYTES {
            self.map.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.map.insert(key.into(), fragment.clone());
        fragment
    }
}

impl ListCache {
    /// A JSON array of `items`, shared with earlier identical lists.
    /// Consecutive events mostly get the same list, so the previous one is
    /// compared before hashing.
    pub(crate) fn string_list<'s>(
        &mut self,
        items: impl Iterator<Item = Item<'s>> + Clone,
        texts: &DeclaredTexts,
        interned: &mut Interned,
    ) -> JsonFragment {
        let key = &mut self.key;
        key.clear();
        key.push(b'L');
        for item in items.clone() {
            key.extend_from_slice(item.bytes(texts));
            key.push(0xff); // never part of UTF-8: an unambiguous separator
        }
        if self.last_key == *key {
            return self.last.clone();
        }
        let fragment = match interned.get(key.as_slice()) {
            Some(f) => f.clone(),
            None => interned.intern(key, json_list(items, texts)),
        };
        self.last_key.clone_from(key);
        self.last = fragment.clone();
        fragment
    }
}

/// One reason or tag: written out, or a declared text's id.
#[derive(Clone, Copy)]
pub(crate) enum Item<'o> {
    Text(&'o [u8]),
    Declared(u8),
}

impl<'o> Item<'o> {
    #[inline]
    pub(crate) fn bytes<'t>(self, texts: &'t DeclaredTexts) -> &'t [u8]
    where
        'o: 't,
    {
        match self {
            Item::Text(bytes) => bytes,
            Item::Declared(id) => texts.text(id).as_bytes(),
        }
    }
}

/// The JSON array of `items` (texts checked to be UTF-8 by the caller).
pub(crate) fn json_list<'o>(items: impl Iterator<Item = Item<'o>>, texts: &DeclaredTexts) -> String {
    let mut json = String::from("[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            json.push(',');
        }
        match item {
            Item::Declared(id) => json.push_str(texts.json(id)),
            Item::Text(bytes) => {
                let text = std::str::from_utf8(bytes).expect("validated with the result buffer");
                json.push_str(&serde_json::to_string(text).expect("strings serialize"));
            }
        }
    }
    json.push(']');
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interned_table_is_bounded_in_bytes_and_keeps_no_long_entry() {
        let mut table = Interned::default();
        // A long list is made but not kept.
        let long = "x".repeat(MAX_INTERNED_JSON + 1);
        assert_eq!(&*table.intern(b"long", long.clone()), long);
        assert!(table.get(b"long").is_none());
        // Entries of 4 KiB (with their keys): far fewer than the count
        // bound, the table is reset by its bytes.
        let json = "y".repeat(MAX_INTERNED_JSON - 8);
        for i in 0..2 * MAX_INTERNED_BYTES / MAX_INTERNED_JSON {
            table.intern(format!("key{i:05}").as_bytes(), json.clone());
            assert!(table.bytes <= MAX_INTERNED_BYTES, "{} bytes after {i}", table.bytes);
            assert_eq!(table.bytes, table.map.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>());
        }
        assert!(table.map.len() <= MAX_INTERNED_BYTES / MAX_INTERNED_JSON);
    }

    #[test]
    fn the_id_list_cache_survives_collisions_and_a_new_module() {
        // Two keys of the same slot: each lookup must give its own list.
        let a = 0x0102;
        let b = (0x0103..).find(|&k| IdListCache::slot(k) == IdListCache::slot(a)).unwrap();
        let texts = DeclaredTexts::of(&["x", "y", "z"]);
        let mut cache = IdListCache::default();
        let get = |cache: &mut IdListCache, key, texts: &DeclaredTexts, json: &str| {
            cache.get(key, texts).unwrap_or_else(|| cache.insert(key, json))
        };
        for _ in 0..2 {
            assert_eq!(&*get(&mut cache, a, &texts, "A"), "A");
            assert_eq!(&*get(&mut cache, b, &texts, "B"), "B");
        }
        // A cached list is found; another module's ids start afresh.
        assert_eq!(cache.get(b, &texts).as_deref(), Some("B"));
        let other = DeclaredTexts::of(&["x", "y", "z"]);
        assert_eq!(cache.get(b, &other), None);
    }
}
