//! `asn_class`: what kind of network an event address belongs to, from the
//! organisation of its autonomous system: `hosting`, `isp`, `education` or
//! `other`, by keywords (see [`AsnClassOptions`]).
//!
//! The example of an enricher that builds on another one through the
//! plugin contract only: it finds the AS number among the facts earlier
//! stages declared (kind `AsNumber`, by side), reads the organisation from
//! that fact's output with the reader its plugin declared, and declares its
//! own fact, a `Label` offered to metrics as a top-values list. It never
//! names the `asn` plugin or its output key, so renaming that output in the
//! config changes nothing here; and nothing outside this folder knows it
//! exists except the registration line in the binary.
//!
//! Per event: a look at the event's few facts and a direct-mapped,
//! per-thread cache by AS number (organisations are read and matched once
//! per AS, not per event); the output is one of five shared fragments.
//! The cache is per generation of this stage: an ASN database reload that
//! renames an organisation is picked up when this stage is rebuilt.

mod options;
#[cfg(test)]
mod tests;

use std::cell::RefCell;

use enrichd_engine::{
    AddressSelector, BatchView, BuildContext, Enricher, Event, FactDecl, FactId, FactKind, JsonFragment, KeyId, Plugin,
    PluginState, PluginStatus, Side, ValuesReader, WARNINGS_KEY,
};
use serde_json::json;
use thread_local::ThreadLocal;

pub use self::options::AsnClassOptions;

/// The classes, in fact-value order.
pub const CLASSES: [&str; 4] = ["hosting", "isp", "education", "other"];
const HOSTING: u8 = 0;
const ISP: u8 = 1;
const EDUCATION: u8 = 2;
const OTHER: u8 = 3;

/// Cache slots per thread (a power of two).
const CACHE_SLOTS: usize = 1024;

/// Factory of the `asn_class` plugin.
pub struct AsnClassFactory;

impl Plugin for AsnClassFactory {
    type Options = AsnClassOptions;

    fn kind(&self) -> &'static str {
        "asn_class"
    }

    fn description(&self) -> &'static str {
        "Class of an address's network (hosting, isp, education, other) from its AS organisation"
    }

    fn build(&self, options: AsnClassOptions, ctx: &mut BuildContext<'_>) -> anyhow::Result<Box<dyn Enricher>> {
        anyhow::ensure!(
            !options.output.is_empty() && options.output != WARNINGS_KEY,
            "output key {:?} is not allowed",
            options.output
        );
        // AS number facts of earlier stages that say where their answer is
        // and how to read the organisation out of it.
        // (Earlier only: on a rebuild the fact table also holds this and
        // later stages' facts, which a first build never saw.)
        let sources: Vec<AsSource> = ctx
            .earlier_facts()
            .iter()
            .filter(|f| f.decl.kind == FactKind::AsNumber)
            .filter_map(|f| {
                Some(AsSource { fact: f.id, side: f.decl.side, output: f.decl.output?, read: f.decl.values? })
            })
            .collect();
        let key = ctx.output_key(&options.output);
        let schema = json!({
            "description": "Class of the network of the address's autonomous system, by its organisation name; null when unknown.",
            "enum": [CLASSES[0], CLASSES[1], CLASSES[2], CLASSES[3], null],
        });
        let fact =
            ctx.fact(FactDecl::new("asn_class", FactKind::Label).output(key, schema).labels(CLASSES).top_values());
        let lower = |list: &[String]| list.iter().map(|w| w.to_lowercase()).filter(|w| !w.is_empty()).collect();
        let mut status = PluginStatus::new(PluginState::Loaded);
        if sources.is_empty() {
            status.state = PluginState::Error;
            status.error =
                Some("no earlier chain stage declares an AS number fact (add an `asn` entry before this one)".into());
        }
        status.version = Some(format!("{} AS number source(s)", sources.len()));
        Ok(Box::new(AsnClass {
            key,
            fact,
            address: options.address,
            sources,
            keywords: [lower(&options.hosting), lower(&options.isp), lower(&options.education)],
            fragments: CLASSES.map(|c| enrichd_engine::constant_fragment(&format!("\"{c}\""))),
            null: enrichd_engine::constant_fragment("null"),
            status,
            cache: ThreadLocal::new(),
        }))
    }
}

/// An earlier stage's AS number fact.
struct AsSource {
    fact: FactId,
    side: Option<Side>,
    output: KeyId,
    read: ValuesReader,
}

struct AsnClass {
    key: KeyId,
    fact: FactId,
    address: AddressSelector,
    sources: Vec<AsSource>,
    /// Lowercased keywords: hosting, isp, education.
    keywords: [Vec<String>; 3],
    fragments: [JsonFragment; 4],
    null: JsonFragment,
    status: PluginStatus,
    /// Per thread: `(asn, class)` by `asn % CACHE_SLOTS` (asn 0: empty).
    cache: ThreadLocal<RefCell<ClassCache>>,
}

/// `(asn, class)` slots; asn 0 marks an empty one.
type ClassCache = Box<[(u32, u8)]>;

impl AsnClass {
    /// The AS number to classify and where its organisation is: the
    /// selected side's fact, then one declared without a side.
    fn pick<'s>(&'s self, event: &Event) -> Option<(u32, &'s AsSource)> {
        let on = |side: Option<Side>| {
            self.sources.iter().filter(move |s| s.side == side).find_map(|s| event.fact(s.fact).map(|v| (v, s)))
        };
        let picked = match self.address {
            AddressSelector::Source => on(Some(Side::Source)),
            AddressSelector::Destination => on(Some(Side::Destination)),
            AddressSelector::DestinationOrSource => on(Some(Side::Destination)).or_else(|| on(Some(Side::Source))),
        };
        picked.or_else(|| on(None)).filter(|(asn, _)| *asn != 0)
    }

    /// The class of an organisation name.
    fn classify(&self, org: &str) -> u8 {
        let org = org.to_lowercase();
        let has = |words: &[String]| words.iter().any(|w| org.contains(w.as_str()));
        if has(&self.keywords[0]) {
            HOSTING
        } else if has(&self.keywords[2]) {
            EDUCATION
        } else if has(&self.keywords[1]) {
            ISP
        } else {
            OTHER
        }
    }
}

impl Enricher for AsnClass {
    fn enrich(&self, batch: &mut BatchView<'_>) {
        let cell = self.cache.get_or(|| RefCell::new(vec![(0, 0); CACHE_SLOTS].into_boxed_slice()));
        let mut cache = cell.borrow_mut();
        for event in batch.events.iter_mut() {
            let Some((asn, source)) = self.pick(event) else {
                event.set_output(self.key, self.null.clone());
                continue;
            };
            let slot = &mut cache[asn as usize % CACHE_SLOTS];
            let class = if slot.0 == asn {
                slot.1
            } else {
                let mut org = None;
                if let Some(fragment) = event.output(source.output) {
                    (source.read)(fragment, &mut |name| {
                        org.get_or_insert_with(|| name.to_owned());
                    });
                }
                let class = org.as_deref().map_or(OTHER, |o| self.classify(o));
                *slot = (asn, class);
                class
            };
            event.set_fact(self.fact, u32::from(class));
            event.set_output(self.key, self.fragments[class as usize].clone());
        }
    }

    fn status(&self) -> PluginStatus {
        self.status.clone()
    }
}

// Keep the class constants and the label list in step.
const _: () = assert!(CLASSES.len() == OTHER as usize + 1);
