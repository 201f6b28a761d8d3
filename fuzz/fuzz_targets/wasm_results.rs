//! The WASM host's result-buffer validation (`enrichd_wasm::results`): the
//! bytes a hostile module writes into its exchange area. Any buffer must
//! either be applied whole or refused whole (the events then get the
//! fallback), and the enriched events must always encode to valid JSON
//! whose rule outputs have their declared shapes.
//!
//! Input: byte 0 picks the role (even: rule, odd: enricher with fields
//! `f1`, `f2`) and the number of events (1-8); the rest is the buffer.
//! The "module" declares three texts (ABI 1.1), one of them needing JSON
//! escapes, so `REASON_ID` / `TAG_ID` entries name ids 0-2 (3+ are refused).
#![no_main]

use std::cell::RefCell;
use std::path::Path;
use std::sync::Mutex;

use enrichd_engine::{
    parse_envelope, BatchView, BuildContext, Chain, Config, Enricher, Limits, Plugin, PluginState, PluginStatus, Registry,
};
use enrichd_wasm::declared::DeclaredTexts;
use enrichd_wasm::results::{ResultWriter, Scratch};
use enrichd_wasm::WasmOptions;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

thread_local! {
    /// The buffer the "module" returns for the current input.
    static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Whether the last apply was refused.
    static REFUSED: RefCell<bool> = const { RefCell::new(false) };
}

/// A stand-in for the `wasm` plugin: declares what a module declares and
/// applies the fuzzer's bytes as its results, as `WasmEnricher` does.
struct FakeModule;

struct FakeEnricher {
    results: ResultWriter,
    texts: DeclaredTexts,
    scratch: Mutex<Scratch>,
}

impl Plugin for FakeModule {
    type Options = WasmOptions;

    fn kind(&self) -> &'static str {
        "fake_wasm"
    }

    fn description(&self) -> &'static str {
        "applies the fuzz input as a module's result buffer"
    }

    fn build(&self, options: WasmOptions, ctx: &mut BuildContext<'_>) -> anyhow::Result<Box<dyn Enricher>> {
        let results = ResultWriter::declare("fuzz.wasm".into(), &options, ctx)?;
        let texts = DeclaredTexts::of(&["port 23", "quote \" and \\ and \u{1}", "ünï"]);
        Ok(Box::new(FakeEnricher { results, texts, scratch: Default::default() }))
    }
}

impl Enricher for FakeEnricher {
    fn enrich(&self, batch: &mut BatchView<'_>) {
        OUT.with_borrow(|out| {
            let applied = self.results.apply(batch.events, out, &self.texts, &mut self.scratch.lock().expect("scratch"));
            REFUSED.set(applied.is_err());
            if let Err(kind) = applied {
                self.results.fallback(batch.events, kind);
            }
        });
    }

    fn status(&self) -> PluginStatus {
        PluginStatus::new(PluginState::Loaded)
    }
}

fn chain(role: &str) -> Chain {
    let text = format!(
        "[[chain]]\nplugin = \"fake_wasm\"\nmodule = \"none.wasm\"\nrole = \"{role}\"\n{}",
        if role == "enricher" { "fields = [\"f1\", \"f2\"]\n" } else { "" }
    );
    let config = Config::parse(&text, Path::new("fuzz.toml")).expect("fuzz config parses");
    let mut registry = Registry::default();
    registry.register(Box::new(FakeModule));
    Chain::build(&config.chain, &registry, Path::new(".")).expect("fuzz chain builds")
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, out)) = data.split_first() else { return };
    let enricher = head & 1 == 1;
    let events = 1 + (head >> 1) as usize % 8;
    thread_local! {
        static CHAINS: (Chain, Chain) = (chain("rule"), chain("enricher"));
    }
    OUT.with_borrow_mut(|o| {
        o.clear();
        o.extend_from_slice(out);
    });
    CHAINS.with(|(rule, enricher_chain)| {
        let chain = if enricher { enricher_chain } else { rule };
        let record = r#"{"src_ip":"10.0.0.1","dst_ip":"8.8.8.8","dst_port":53,"proto":"udp","keep":[1,"x"]}"#;
        let body = format!(r#"{{"format":"flows.v1","records":[{}]}}"#, vec![record; events].join(","));
        let mut batch = parse_envelope(body.into_bytes(), chain.parse_spec(), Limits { max_records: 16 })
            .expect("the fixed envelope parses");
        chain.run(&mut batch);
        let mut answer = Vec::new();
        batch.write_ingest_response(chain.keys(), &mut answer);
        let answer: Value = match serde_json::from_slice(&answer) {
            Ok(v) => v,
            Err(e) => panic!("enriched answer is not JSON ({e}): {}", String::from_utf8_lossy(&answer)),
        };
        let refused = REFUSED.with_borrow(|r| *r);
        for record in answer["records"].as_array().expect("records array") {
            assert_eq!(record["keep"], serde_json::json!([1, "x"]), "unknown fields pass through");
            if enricher {
                continue;
            }
            let score = &record["risk_score"];
            assert!(score.is_null() || score.as_u64().is_some_and(|s| s <= 100), "score {score}");
            for list in ["reasons", "tags"] {
                if let Some(items) = record.get(list) {
                    let items = items.as_array().unwrap_or_else(|| panic!("{list} is not an array"));
                    assert!(items.len() <= 32, "{list}: at most 32 per event");
                    assert!(items.iter().all(Value::is_string), "{list}: strings only");
                }
            }
            if refused {
                assert_eq!(record["reasons"], serde_json::json!(["rule error: malformed_result"]), "fallback applied");
            }
        }
    });
});
