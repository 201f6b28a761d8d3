//! enrichd's WebAssembly host: rules and custom enrichers as sandboxed
//! wasmtime modules speaking ABI v1 (`sdk/ABI.md`).
//!
//! A chain entry `plugin = "wasm"` loads one module. A **rule** returns a
//! verdict per event (score, reasons, tags), written as `risk_score`,
//! `reasons`, `tags`; a **custom enricher** sets the fields it declares.
//! Both read every field, including what earlier stages added.
//!
//! Why this shape: one host->guest call per batch of up to 256 events, with
//! the well-known fields in a fixed 112-byte record (tens of ns per event),
//! instead of JSON per event (microseconds). A module that traps, loops,
//! exhausts memory or writes garbage fails only its own chunk: those events
//! get the configured fallback, the instance is recycled, and after repeated
//! failures a circuit breaker stops calling it.

mod enricher;
mod host;
mod limits;
mod options;
pub mod runtime;
mod stats;
mod text;

pub use enricher::{inspect, to_record, ModuleReport, WasmEnricher};
pub use options::{Role, WasmOptions};
pub use stats::FailureKind;

use enrichd_engine::{BuildContext, Enricher, PluginFactory};

/// The `wasm` plugin kind.
pub struct WasmFactory;

impl PluginFactory for WasmFactory {
    fn kind(&self) -> &'static str {
        "wasm"
    }

    fn description(&self) -> &'static str {
        "A WebAssembly rule or custom enricher (ABI v1), sandboxed in wasmtime"
    }

    fn options_schema(&self) -> schemars::Schema {
        schemars::schema_for!(WasmOptions)
    }

    fn build(&self, options: &toml::Table, ctx: &mut BuildContext<'_>) -> anyhow::Result<Box<dyn Enricher>> {
        let options: WasmOptions = toml::Value::Table(options.clone()).try_into()?;
        // Load errors are logged, kept and served: they may quote names the
        // module chose, so they are escaped and bounded.
        let enricher = WasmEnricher::build(options, ctx).map_err(|e| anyhow::anyhow!(text::error_text(&e)))?;
        Ok(Box::new(enricher))
    }
}
