//! enrichd's sources: where events come from besides `POST /v1/ingest`
//! (`[[source]] type = ...`).
//!
//! Each source implements the engine's
//! [`Component`](enrichd_engine::component::Component) contract (family [`SourceFamily`](enrichd_engine::source::SourceFamily)) and nothing more: it
//! speaks one protocol, hands each message body to the core's
//! [`Ingest`](enrichd_engine::source::Ingest) handle (the same pipeline and
//! admission as HTTP ingest) and settles the message from the answer.
//! What a source must get right is that mapping (ack only after
//! `Accepted`, settle bad input for good, give back and pause on
//! backpressure): see the contract in `enrichd_engine::source`.
//!
//! - [`nats`]: a NATS JetStream durable pull consumer.

pub mod nats;
