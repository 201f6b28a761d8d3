//! enrichd's outputs: where enriched events go (`[[output]] type = ...`).
//!
//! Each output implements the engine's
//! [`Component`](enrichd_engine::component::Component) contract with
//! family [`OutputFamily`](enrichd_engine::output::OutputFamily) and
//! nothing more: it speaks one protocol and reports, per event
//! and per attempt, `Delivered`, `Retry` or `Reject`. Queueing, retries with
//! backoff, the dead-letter and backpressure belong to the delivery runtime
//! in the service, so that they are the same for every destination and an
//! output cannot get "nothing lost" wrong. What an output must get right is
//! the honest mapping of its protocol's answers to those three outcomes
//! (each module's docs have its table), keeping every attempt bounded in
//! time, and keeping secrets out of every outcome text.
//!
//! - [`elastic`]: Elasticsearch / OpenSearch `_bulk`, daily indices or a
//!   data stream, optional content-hash ids for retries that never index
//!   twice.
//! - [`splunk`]: Splunk HTTP Event Collector, optionally with indexer
//!   acknowledgement.
//! - [`file`]: NDJSON into a local file, rotated by size.
//! - [`nats`]: NDJSON messages published to a NATS JetStream subject,
//!   acknowledged by the stream.
//! - [`kafka`]: NDJSON messages produced to a Kafka topic by an idempotent
//!   producer, acknowledged by every in-sync replica.
//!
//! The HTTP outputs share their client options ([`HttpOptions`]: TLS, CA
//! file, timeout, gzip), flattened into their own.

pub mod elastic;
pub mod file;
mod http;
pub mod kafka;
pub mod nats;
mod pack;
pub mod splunk;
#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

pub use self::http::HttpOptions;
