//! Forwarding: an HTTP-ingest instance hands each accepted raw batch to a
//! shared queue (a broker's stream) instead of enriching it, so collectors
//! keep `POST /v1/ingest` while instances consuming that queue (a
//! [`crate::source`]) do the work.
//!
//! A forwarding target is a [`ForwardFactory`] registered under a kind name
//! (`[[forward]] type = "..."`); the core never names one. The split:
//!
//! - the **core** reads the body within the HTTP limits and decodes it
//!   with the chain's parser, so a bad batch is still a 4xx naming what
//!   and where at the edge (never a dead-letter entry far downstream);
//!   then it calls [`Forwarder::forward`] and answers from the result;
//! - the **forwarder** publishes the batch and resolves only once the
//!   queue has it durably (a publish acknowledgement), so the client's 200
//!   means what it means without forwarding: the events will be enriched
//!   and delivered. It makes one attempt per call; the client retries on
//!   the 503 that a failure becomes.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::output::{check_options, BoxFuture, FieldError};

/// One accepted batch, as received: a `/v1/ingest` envelope (not
/// compressed; the forwarder may compress it to fit a message).
#[derive(Clone, Copy, Debug)]
pub struct RawBatch<'a> {
    pub body: &'a [u8],
    /// Records in it (already decoded by the core).
    pub events: usize,
}

/// Why a batch was not forwarded. Nothing was queued, unless the text says
/// the answer was lost (then a resend may duplicate it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardError {
    /// The batch cannot fit a message even compressed: the client must send
    /// smaller batches (a 413).
    TooLarge(String),
    /// The queue did not take it now (unreachable, no acknowledgement in
    /// time): try again later (a 503).
    Unavailable(String),
}

/// A built forwarding target.
pub trait Forwarder: Send + Sync {
    /// Queues `batch` durably; resolves once the queue acknowledged it.
    fn forward<'a>(&'a self, batch: RawBatch<'a>) -> BoxFuture<'a, Result<(), ForwardError>>;
}

/// What a forwarder is built with besides its options.
#[derive(Clone, Debug)]
pub struct ForwardContext {
    /// The entry's name (`name`, default its kind).
    pub name: String,
}

/// Builds forwarders of one kind from options; implemented through
/// [`Forward`].
pub trait ForwardFactory: Send + Sync {
    /// The `type = "..."` of `[[forward]]` and the default entry name.
    fn kind(&self) -> &'static str;
    fn description(&self) -> &'static str;
    /// JSON Schema of the forwarder's own options.
    fn options_schema(&self) -> schemars::Schema;
    /// Option names whose values are secrets (never shown, masked).
    fn secret_fields(&self) -> &'static [&'static str];
    /// Every problem with `options`, not just the first.
    fn check(&self, options: &Map<String, Value>) -> Vec<FieldError>;
    /// Builds the forwarder; `options` passed [`ForwardFactory::check`].
    fn build(&self, options: &Map<String, Value>, ctx: &ForwardContext) -> anyhow::Result<Arc<dyn Forwarder>>;
}

/// The typed way to write a forwarder, like [`crate::output::Output`].
pub trait Forward: Send + Sync {
    /// The forwarder's options (`deny_unknown_fields`, `default`).
    type Options: DeserializeOwned + schemars::JsonSchema + Default;

    fn kind(&self) -> &'static str;
    fn description(&self) -> &'static str;
    fn secret_fields(&self) -> &'static [&'static str] {
        &[]
    }
    /// Checks a type cannot express, every problem listed.
    fn validate(&self, options: &Self::Options) -> Vec<FieldError>;
    fn build(&self, options: Self::Options, ctx: &ForwardContext) -> anyhow::Result<Arc<dyn Forwarder>>;
}

impl<F: Forward> ForwardFactory for F {
    fn kind(&self) -> &'static str {
        Forward::kind(self)
    }

    fn description(&self) -> &'static str {
        Forward::description(self)
    }

    fn options_schema(&self) -> schemars::Schema {
        schemars::schema_for!(F::Options)
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        Forward::secret_fields(self)
    }

    fn check(&self, options: &Map<String, Value>) -> Vec<FieldError> {
        check_options::<F::Options>(options, |typed| Forward::validate(self, typed))
    }

    fn build(&self, options: &Map<String, Value>, ctx: &ForwardContext) -> anyhow::Result<Arc<dyn Forwarder>> {
        let typed = <F::Options as serde::Deserialize>::deserialize(Value::Object(options.clone()))
            .map_err(|e| anyhow::anyhow!("invalid options: {e}"))?;
        Forward::build(self, typed, ctx)
    }
}
