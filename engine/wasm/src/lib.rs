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
//!
//! Where this crate sits: it is a plugin, in the layering sense (engine <-
//! plugins <- service): it depends on `enrichd-engine` only through the
//! plugin contract (`Plugin`, `Enricher`, `BuildContext`), the
//! engine never names it, and the binary registers [`WasmFactory`] next to
//! `enrichd_plugins::register_all`. It stays a crate of its own at
//! `engine/wasm/` rather than becoming a module of `enrichd-plugins`,
//! because: wasmtime and cranelift are by far the heaviest dependencies
//! (most of a clean build), and a separate crate lets the native plugins,
//! their tests and tools that need no guest code build without them; its
//! tests build the guest crates (`rules/`, `sdk/`) as dev-dependencies,
//! which the native plugins have no use for; and it is the host half of an
//! ABI whose guest half (`sdk/`) is versioned with it. The path under
//! `engine/` is historical; moving the folder would only churn paths.

#[cfg(feature = "runtime")]
mod actions;
#[cfg(feature = "runtime")]
mod artifacts;
pub mod declared;
#[cfg(feature = "runtime")]
mod enricher;
#[cfg(feature = "runtime")]
mod host;
#[cfg(feature = "runtime")]
mod limits;
mod lists;
#[cfg(feature = "runtime")]
mod module_file;
mod options;
#[cfg(feature = "runtime")]
mod record;
pub mod results;
#[cfg(feature = "runtime")]
pub mod runtime;
#[cfg(feature = "runtime")]
mod shadow;
#[cfg(feature = "runtime")]
pub mod signature;
#[cfg_attr(not(feature = "runtime"), allow(dead_code))]
mod stats;
#[cfg_attr(not(feature = "runtime"), allow(dead_code))]
mod text;
#[cfg(feature = "runtime")]
mod versions;

/// The guest ABI this host runs (`--version` reports it).
pub use enrichd_sdk::abi::{ABI_MAJOR, ABI_MINOR};
#[cfg(feature = "runtime")]
pub use enricher::WasmEnricher;
#[cfg(feature = "runtime")]
pub use module_file::{inspect, ModuleReport};
pub use options::{Role, WasmOptions};
#[cfg(feature = "runtime")]
pub use record::{to_record, RecordSlots};
pub use stats::FailureKind;

#[cfg(feature = "runtime")]
use enrichd_engine::{BuildContext, Enricher, Plugin};

/// The `wasm` plugin kind.
#[cfg(feature = "runtime")]
pub struct WasmFactory;

#[cfg(feature = "runtime")]
impl Plugin for WasmFactory {
    type Options = WasmOptions;

    fn kind(&self) -> &'static str {
        "wasm"
    }

    fn description(&self) -> &'static str {
        "A WebAssembly rule or custom enricher (ABI v1.1), sandboxed in wasmtime"
    }

    fn stage_collection(&self) -> Option<&'static str> {
        Some("rules")
    }

    fn build(&self, options: WasmOptions, ctx: &mut BuildContext<'_>) -> anyhow::Result<Box<dyn Enricher>> {
        // Load errors are logged, kept and served: they may quote names the
        // module chose, so they are escaped and bounded.
        let enricher = actions::WasmStage::build(options, ctx).map_err(|e| anyhow::anyhow!(text::error_text(&e)))?;
        Ok(Box::new(enricher))
    }
}
