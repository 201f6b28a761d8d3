//! Forwarding: an HTTP-ingest instance hands each accepted raw batch to a
//! shared queue (a broker's stream) instead of enriching it, so collectors
//! keep `POST /v1/ingest` while instances consuming that queue (a
//! [`crate::source`]) do the work.
//!
//! A forwarding target is a component of the [`ForwardFamily`] registered under a kind name
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

use crate::component::{Factory, Family};
use crate::output::BoxFuture;

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

/// Forwarding targets: built from a [`ForwardContext`], they build a
/// [`Forwarder`]. A target implements
/// [`Component`](crate::component::Component) with
/// `type Family = ForwardFamily`.
pub struct ForwardFamily;

impl Family for ForwardFamily {
    type Context = ForwardContext;
    type Built = dyn Forwarder;
}

/// What the registry holds for a forwarding target kind.
pub type ForwardFactory = dyn Factory<ForwardFamily>;
