//! Delivery to outputs (Elasticsearch, Splunk): the pieces that keep
//! accepted events from being lost while an output is slow or down.
//!
//! - [`spool`]: the durable on-disk queue. Ingest appends (fsynced before
//!   the request is answered), the delivery runtime reads, sends and acks.
//! - [`deadletter`]: events an output rejected for good, kept on disk
//!   (bounded, evictions counted) for inspection and replay.
//!
//! Nothing here is async: callers use `tokio::task::spawn_blocking`.

pub(crate) mod deadletter;
pub(crate) mod spool;
