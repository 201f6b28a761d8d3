//! The `nats` forwarding target: each raw `/v1/ingest` batch published as
//! one message to a JetStream subject (a raw-events stream a `nats` source
//! consumes), the HTTP answer waiting for the stream's acknowledgement.
//!
//! | what happens                          | answer to the client |
//! |---------------------------------------|----------------------|
//! | publish acknowledged by the stream    | 200                  |
//! | no connection, refused, no ack in `timeout_ms` | 503 (resend; a lost ack means the resend duplicates) |
//! | larger than a message even gzipped    | 413 (send smaller batches) |
//!
//! The message is the envelope as received, with `Enrichd-Format:
//! envelope`; one larger than the server's `max_payload` is gzipped
//! (`Content-Encoding: gzip`; the source inflates it within
//! `server.max_body_bytes`). Security telemetry compresses 5-15×, so a
//! 5 MiB batch fits NATS' default 1 MiB payload. One message per batch,
//! never split: the consuming instance then accepts or refuses the batch
//! whole, as `/v1/ingest` would have.

#[cfg(test)]
mod tests;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use enrichd_engine::component::Component;
use enrichd_engine::forward::{ForwardContext, ForwardError, ForwardFamily, Forwarder, RawBatch};
use enrichd_engine::output::{BoxFuture, FieldError};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::gzip::gzip;
use crate::nats::NatsConnection;

/// Room left in a message for its headers and protocol framing.
const HEADER_ROOM: usize = 512;

/// `[[forward]] type = "nats"`: raw batches published to a JetStream
/// subject, each publish acknowledged by the stream before `/v1/ingest`
/// answers.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NatsForwardOptions {
    #[serde(flatten)]
    pub connection: NatsConnection,
    /// The subject batches are published to; a stream must capture it
    /// (the `nats` source's `stream`). Required.
    pub subject: Option<String>,
    /// A stream to create (file storage, capturing `subject`) when it is
    /// missing. Default: none, the stream must exist (a `nats` source with
    /// `create = true` makes it).
    pub create_stream: Option<String>,
    /// Largest message body in bytes (default 0: the server's
    /// `max_payload`, less room for headers). A batch larger than this is
    /// gzipped; one still larger is refused with 413.
    pub max_message_bytes: usize,
}

impl NatsForwardOptions {
    fn validate(&self) -> Vec<FieldError> {
        crate::nats::publish_errors(
            &self.connection,
            self.subject.as_deref(),
            self.create_stream.as_deref(),
            self.max_message_bytes,
        )
    }
}

/// The `nats` forwarding kind.
pub struct NatsForward;

impl Component for NatsForward {
    type Family = ForwardFamily;
    type Options = NatsForwardOptions;

    fn kind(&self) -> &'static str {
        "nats"
    }

    fn description(&self) -> &'static str {
        "NATS JetStream: each raw /v1/ingest batch published to a subject, answered once the stream acknowledged it"
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        crate::nats::SECRET_FIELDS
    }

    fn validate(&self, options: &NatsForwardOptions) -> Vec<FieldError> {
        options.validate()
    }

    fn build(&self, options: NatsForwardOptions, ctx: &ForwardContext) -> anyhow::Result<Arc<dyn Forwarder>> {
        Ok(Arc::new(NatsForwarder {
            options,
            name: ctx.name.clone(),
            conn: tokio::sync::Mutex::new(Connection::NotYet),
        }))
    }
}

struct NatsForwarder {
    options: NatsForwardOptions,
    name: String,
    /// Connected on first use (the client then reconnects on its own).
    conn: tokio::sync::Mutex<Connection>,
}

/// How long a failed connection attempt answers for the next ones: the
/// requests that queued behind an attempt to an unreachable server get its
/// error at once, instead of each trying (and waiting) again in turn.
const FAILURE_HELD: Duration = Duration::from_secs(1);

enum Connection {
    NotYet,
    Up(jetstream::Context, usize),
    Failed(std::time::Instant, String),
}

impl NatsForwarder {
    /// The JetStream context and the largest body to publish.
    async fn connection(&self) -> Result<(jetstream::Context, usize), String> {
        let mut conn = self.conn.lock().await;
        match &*conn {
            Connection::Up(js, limit) => return Ok((js.clone(), *limit)),
            Connection::Failed(at, error) if at.elapsed() < FAILURE_HELD => return Err(error.clone()),
            _ => {}
        }
        let connected = self.connect().await;
        *conn = match &connected {
            Ok((js, limit)) => Connection::Up(js.clone(), *limit),
            Err(e) => Connection::Failed(std::time::Instant::now(), e.clone()),
        };
        connected
    }

    async fn connect(&self) -> Result<(jetstream::Context, usize), String> {
        let o = &self.options;
        let client = o.connection.connect(&format!("forward {}", self.name)).await.map_err(|e| format!("{e:#}"))?;
        let server_max = client.server_info().max_payload.max(2 * HEADER_ROOM);
        let wanted = if o.max_message_bytes == 0 { server_max } else { o.max_message_bytes.min(server_max) };
        let js = jetstream::ContextBuilder::new().timeout(o.connection.timeout()).build(client);
        if let Some(name) = &o.create_stream {
            let subjects = o.subject.iter().cloned().collect();
            js.get_or_create_stream(stream::Config { name: name.clone(), subjects, ..Default::default() })
                .await
                .map_err(|e| format!("stream {name:?} (created if missing): {e}"))?;
        }
        Ok((js, wanted.saturating_sub(HEADER_ROOM).max(HEADER_ROOM)))
    }
}

impl Forwarder for NatsForwarder {
    fn forward<'a>(&'a self, batch: RawBatch<'a>) -> BoxFuture<'a, Result<(), ForwardError>> {
        Box::pin(async move {
            let (js, limit) = self.connection().await.map_err(ForwardError::Unavailable)?;
            let subject = self.options.subject.clone().unwrap_or_default();
            let mut publish =
                PublishMessage::build().header("Enrichd-Format", "envelope").header("Content-Type", "application/json");
            let body = if batch.body.len() <= limit {
                batch.body.to_vec()
            } else {
                let packed = gzip(batch.body);
                if packed.len() > limit {
                    return Err(ForwardError::TooLarge(format!(
                        "the batch is {} bytes ({} gzipped); a message may hold {limit}: send smaller batches",
                        batch.body.len(),
                        packed.len()
                    )));
                }
                publish = publish.header("Content-Encoding", "gzip");
                packed
            };
            let timeout = self.options.connection.timeout();
            let ack = js
                .send_publish(subject.clone(), publish.payload(body.into()))
                .await
                .map_err(|e| ForwardError::Unavailable(format!("publishing to {subject:?}: {e}")))?;
            match tokio::time::timeout(timeout + Duration::from_millis(100), ack.into_future()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => {
                    // No stream takes the subject (deleted since the
                    // connection was made): connect again next time, which
                    // creates it when `create_stream` says so.
                    if e.kind() == async_nats::jetstream::context::PublishErrorKind::StreamNotFound {
                        *self.conn.lock().await = Connection::NotYet;
                    }
                    Err(ForwardError::Unavailable(format!(
                        "no publish acknowledgement from the stream for {subject:?}: {e}"
                    )))
                }
                Err(_) => Err(ForwardError::Unavailable(format!(
                    "no publish acknowledgement within {} ms for {subject:?} (a resend may duplicate the batch)",
                    timeout.as_millis()
                ))),
            }
        })
    }
}
