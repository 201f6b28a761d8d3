//! enrichd's forwarding targets: where an HTTP-ingest instance publishes
//! its raw accepted batches instead of enriching them (`[ingest] forward`,
//! `[[forward]] type = ...`).
//!
//! Each implements the engine's
//! [`Component`](enrichd_engine::component::Component) contract (family [`ForwardFamily`](enrichd_engine::forward::ForwardFamily)): one attempt per
//! batch, resolving only once the queue holds it durably (the HTTP answer
//! waits on it). See the contract in `enrichd_engine::forward`.
//!
//! - [`nats`]: a publish to a NATS JetStream subject, acknowledged by the
//!   stream; a `nats` source elsewhere consumes it.

pub mod nats;
