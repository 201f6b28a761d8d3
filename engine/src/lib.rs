//! enrichd's engine core: the event model, input parsing, the enricher chain
//! and the plugin interface.
//!
//! The core knows no concrete enricher. Plugins implement
//! [`PluginFactory`] / [`Enricher`] and are registered in a [`Registry`] by
//! the binary; the chain is assembled from `config.toml` by kind name.
//!
//! Data flow for one batch, the same for every entry point ([`Pipeline`]):
//! the input is decoded into a [`Batch`] (well-known fields parsed once into
//! [`Event`]s, the record text kept as sent), [`Chain::run`] passes the batch
//! through every stage, observers (live metrics) see it, and it is encoded
//! back ([`Batch::write_ingest_response`], NDJSON) with the enrichment
//! results appended.

pub mod admin;
pub mod batch;
pub mod chain;
pub mod component;
pub mod config;
pub mod entry;
pub mod event;
pub mod fact;
pub mod format;
pub mod forward;
pub mod hint;
pub mod limits;
pub mod live;
pub mod output;
pub mod parse;
pub mod pipeline;
pub mod plugin;
pub mod profile;
#[cfg(test)]
mod proptests;
pub mod registry;
pub mod source;
pub mod updater;

pub use admin::{AdminHandler, AdminMethod, AdminRequest, AdminResource, AdminResponse, StageMethod, StageRequest};
pub use batch::{Batch, BatchView, SourceText, WARNINGS_KEY};
pub use chain::{BuildEnv, Chain, StageReport, EVENT_DURATION_BOUNDS_NS};
pub use config::Config;
pub use entry::{ChainEntryConfig, ConfigError, Location};
pub use event::{constant_fragment, AddressSelector, Event, FactMask, JsonFragment, KeyId, Side, TextFieldId};
pub use fact::{FactDecl, FactId, FactInfo, FactKind, ValuesReader};
pub use format::Format;
pub use live::{Engine, Outcome, ReloadReport, StageReload};
pub use parse::{
    parse_envelope, parse_envelope_in_parts, parse_ndjson, parse_ndjson_in_parts, InputError, Limits, ParseSpec,
};
pub use pipeline::{Encoded, Encoding, Input, Observer, Pipeline, Processed, Shape, Skipped, Split, Timing};
pub use plugin::{
    rfc3339, source_info, to_hex, write_hex, BuildContext, Enricher, EnvOverride, LookupAnswer, LookupTarget, Plugin,
    PluginFactory, PluginState, PluginStatus, SourceInfo, StatusSeries, StatusTable,
};
pub use profile::{Profile, Profiles};
pub use registry::Registry;
