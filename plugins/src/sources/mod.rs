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
//! - [`kafka`]: a Kafka consumer group, offsets committed after acceptance.
//!
//! Both read the same bodies, decided the same way ([`payload`]), so a
//! producer can move between brokers without changing what it sends.

pub mod kafka;
pub mod nats;

use enrichd_engine::source::{Payload, PayloadShape};

/// The payload of a message: its shape from its headers (`header` looks
/// one up by name, case-insensitively where the protocol allows) or
/// `format`, gzip from `Content-Encoding` or the magic bytes. `Err`: why it
/// cannot be read at all.
///
/// The shape: the `Enrichd-Format` header (`envelope`, or a record format
/// for NDJSON), else `Content-Type` (`application/json`: envelope,
/// `…ndjson`: records of `format`), else `format` (records) or an
/// envelope.
pub(crate) fn payload(
    body: &[u8],
    header: impl Fn(&str) -> Option<String>,
    format: Option<&str>,
) -> Result<Payload, String> {
    let explicit = header("Enrichd-Format");
    let content_type = header("Content-Type").map(|c| c.to_ascii_lowercase());
    let shape = match (explicit.as_deref(), content_type.as_deref()) {
        (Some(f), _) if f.eq_ignore_ascii_case("envelope") => PayloadShape::Envelope,
        (Some(f), _) => PayloadShape::Ndjson { format: f.to_string() },
        (None, Some(ct)) if ct.contains("ndjson") => match format {
            Some(f) => PayloadShape::Ndjson { format: f.to_string() },
            None => {
                return Err(format!(
                    "NDJSON body ({ct}) without a record format: set the Enrichd-Format header or the source's `format`"
                ))
            }
        },
        (None, Some(ct)) if ct.starts_with("application/json") => PayloadShape::Envelope,
        _ => match format {
            Some(f) => PayloadShape::Ndjson { format: f.to_string() },
            None => PayloadShape::Envelope,
        },
    };
    let gzip =
        header("Content-Encoding").is_some_and(|e| e.eq_ignore_ascii_case("gzip")) || body.starts_with(&[0x1f, 0x8b]);
    Ok(Payload { body: body.to_vec(), gzip, shape, origin: None })
}
