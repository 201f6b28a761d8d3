//! The `nats` output: enriched events published to a JetStream subject,
//! packed as NDJSON into messages no larger than the server allows.
//!
//! | answer                                   | outcome |
//! |------------------------------------------|---------|
//! | publish acknowledged by the stream       | `Delivered` |
//! | acknowledged as a duplicate (its `Nats-Msg-Id` was seen) | `Duplicate` |
//! | no connection, publish refused, no ack in `timeout_ms` | `Retry` (the runtime backs off) |
//! | an event larger than a message on its own | `Reject` (dead-letter) |
//!
//! Every message carries a `Nats-Msg-Id`, so a repeat is dropped by the
//! stream within its duplicate window (`duplicate_window`, 2 minutes by
//! default):
//!
//! - events whose input had an idempotency key (a `nats` source message:
//!   its stream and sequence) get `<output>:<key>:<first>-<last>`, the
//!   range of their indices in that input. A message redelivered after a
//!   crash, enriched again in this or another instance, yields the same
//!   ids, so its events are stored once. A message never mixes inputs, and
//!   the id names an index *range*, not a chunk number: if the enriched
//!   events differ in size the second time (a rule changed meanwhile), the
//!   chunks break elsewhere, and a range id can only match a message
//!   holding exactly the same events, never drop one that was not stored;
//! - other events (HTTP ingest) get the output backlog's id scope and the
//!   first and last event ids, so a retry of the same backlog entry (a lost
//!   ack, a crash with a spool) repeats the id.

mod options;
#[cfg(test)]
mod tests;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage, stream};
use enrichd_engine::component::Component;
use enrichd_engine::output::{
    BoxFuture, FieldError, Outcome, OutputContext, OutputFamily, SendReport, Sink, SinkBatch,
};

use super::pack::{message_id, pack};

pub use options::NatsOutputOptions;

/// Messages published before their acks are awaited.
const ACK_WAVE: usize = 256;

/// Room left in a message for its headers and protocol framing.
const HEADER_ROOM: usize = 512;

/// How long a smaller message limit learned from the stream holds before
/// the stream is asked again: its `max_msg_size` may have been raised (or
/// the stream replaced), and the limit would otherwise only ever shrink,
/// small messages until a restart. One stream info request a minute, only
/// while a smaller limit is in force.
const RELEARN_AFTER: Duration = Duration::from_secs(60);

/// The `nats` output kind.
pub struct NatsOutput;

impl Component for NatsOutput {
    type Family = OutputFamily;
    type Options = NatsOutputOptions;

    fn kind(&self) -> &'static str {
        "nats"
    }

    fn description(&self) -> &'static str {
        "NATS JetStream: events published as NDJSON messages to a subject, each acknowledged by the stream, \
         with a Nats-Msg-Id stable across retries"
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        crate::nats::SECRET_FIELDS
    }

    fn validate(&self, options: &NatsOutputOptions) -> Vec<FieldError> {
        options.validate()
    }

    fn build(&self, options: NatsOutputOptions, ctx: &OutputContext) -> anyhow::Result<Arc<dyn Sink>> {
        Ok(Arc::new(NatsSink::new(options, ctx.name.clone(), RELEARN_AFTER)))
    }
}

struct NatsSink {
    options: NatsOutputOptions,
    name: String,
    /// Connected on first use (the client then reconnects on its own).
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// A smaller message limit learned from the stream: a stream's
    /// `max_msg_size` below the server's `max_payload` refuses full-size
    /// messages. Each refusal halves it (the next round packs smaller
    /// messages); an event alone over it is refused for good. Without
    /// this every round was retried as it was, for ever. After
    /// `relearn_after` the stream is asked for its limit, which may have
    /// grown ([`NatsSink::relearn`]).
    stream_limit: std::sync::Mutex<Learned>,
    relearn_after: Duration,
}

/// A message body limit learned from the stream, and when.
struct Learned {
    /// `usize::MAX`: none (the server's `max_payload` applies).
    bytes: usize,
    at: Instant,
}

#[derive(Clone)]
struct Conn {
    js: jetstream::Context,
}

impl NatsSink {
    fn new(options: NatsOutputOptions, name: String, relearn_after: Duration) -> Self {
        NatsSink {
            options,
            name,
            conn: tokio::sync::Mutex::new(None),
            stream_limit: std::sync::Mutex::new(Learned { bytes: usize::MAX, at: Instant::now() }),
            relearn_after,
        }
    }

    fn learned(&self) -> std::sync::MutexGuard<'_, Learned> {
        self.stream_limit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The largest message body to build now: the configured size within
    /// the server's `max_payload` (as of the last connection: the client
    /// takes it from each server's INFO, so a reconnect to a server that
    /// allows more raises it) and the limit learned from the stream.
    fn limit(&self, conn: &Conn) -> usize {
        let server_max = conn.js.client().max_payload().max(2 * HEADER_ROOM);
        let o = &self.options;
        let wanted = if o.max_message_bytes == 0 { server_max } else { o.max_message_bytes.min(server_max) };
        wanted.saturating_sub(HEADER_ROOM).max(HEADER_ROOM).min(self.learned().bytes)
    }

    /// Asks the stream for its message limit once a learned one is
    /// `relearn_after` old: a raised `max_msg_size` (or one removed) lets
    /// messages grow again. When the stream cannot be asked (no permission
    /// for its info, say), the learned limit is dropped and the next
    /// refusal learns it again: one refused round per period at worst.
    async fn relearn(&self, conn: &Conn, subject: &str) {
        {
            let learned = self.learned();
            if learned.bytes == usize::MAX || learned.at.elapsed() < self.relearn_after {
                return;
            }
        }
        let asked = async {
            let name = conn.js.stream_by_subject(subject).await.ok()?;
            let stream = conn.js.get_stream(name).await.ok()?;
            Some(stream.cached_info().config.max_message_size)
        };
        let bytes = match tokio::time::timeout(self.options.connection.timeout(), asked).await {
            Ok(Some(max)) if max > 0 => (max as usize).saturating_sub(HEADER_ROOM).max(HEADER_ROOM),
            _ => usize::MAX,
        };
        *self.learned() = Learned { bytes, at: Instant::now() };
    }

    async fn connection(&self) -> Result<Conn, String> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let o = &self.options;
        let client = o.connection.connect(&self.name).await.map_err(|e| format!("{e:#}"))?;
        let js = jetstream::ContextBuilder::new().timeout(o.connection.timeout()).build(client);
        if let Some(name) = &o.create_stream {
            let subjects = o.subject.iter().cloned().collect();
            js.get_or_create_stream(stream::Config { name: name.clone(), subjects, ..Default::default() })
                .await
                .map_err(|e| format!("stream {name:?} (created if missing): {e}"))?;
        }
        let c = Conn { js };
        *conn = Some(c.clone());
        Ok(c)
    }
}

impl Sink for NatsSink {
    fn send<'a>(&'a self, batch: SinkBatch<'a>) -> BoxFuture<'a, SendReport> {
        Box::pin(async move {
            let n = batch.events.len();
            let conn = match self.connection().await {
                Ok(c) => c,
                Err(e) => return SendReport::all(n, Outcome::Retry(e), None),
            };
            let subject = self.options.subject.clone().unwrap_or_default();
            self.relearn(&conn, &subject).await;
            let limit = self.limit(&conn);
            let (messages, too_large) = pack(batch.events, limit);
            let mut outcomes = vec![Outcome::Delivered; n];
            for i in too_large {
                outcomes[i] = Outcome::Reject(format!(
                    "event of {} bytes is larger than a message may be ({} bytes)",
                    batch.events[i].json.len(),
                    limit
                ));
            }
            // Publish a wave of messages, then wait for their acks together
            // (one round trip per wave, not per message). Waves stay well
            // under the client's 5,000 unacknowledged publishes, which it
            // would otherwise wait on forever (acks are awaited only here).
            for wave in messages.chunks(ACK_WAVE) {
                self.publish_wave(&conn, &subject, &batch, wave, &mut outcomes).await;
            }
            SendReport { outcomes, http_status: None }
        })
    }
}

impl NatsSink {
    /// Publishes `wave` and awaits the acks, marking what failed `Retry`.
    async fn publish_wave(
        &self,
        conn: &Conn,
        subject: &str,
        batch: &SinkBatch<'_>,
        wave: &[Vec<usize>],
        outcomes: &mut [Outcome],
    ) {
        let mut acks = Vec::with_capacity(wave.len());
        for indices in wave {
            let mut body = Vec::with_capacity(indices.iter().map(|&i| batch.events[i].json.len() + 1).sum());
            for &i in indices {
                body.extend_from_slice(batch.events[i].json);
                body.push(b'\n');
            }
            let publish = PublishMessage::build()
                .payload(body.into())
                .message_id(message_id(&self.name, batch.id_scope, batch.events, indices))
                .header("Content-Type", "application/x-ndjson");
            match conn.js.send_publish(subject.to_string(), publish).await {
                Ok(ack) => acks.push((indices, ack)),
                Err(e) => {
                    for &i in indices {
                        outcomes[i] = Outcome::Retry(format!("publishing to {subject:?}: {e}"));
                    }
                }
            }
        }
        let timeout = self.options.connection.timeout();
        let waits = acks.into_iter().map(|(indices, ack)| async move {
            let answer = tokio::time::timeout(timeout + Duration::from_millis(100), ack.into_future()).await;
            (indices, answer)
        });
        for (indices, answer) in futures_util::future::join_all(waits).await {
            let failure = match answer {
                Ok(Ok(ack)) => {
                    if ack.duplicate {
                        for &i in indices {
                            outcomes[i] = Outcome::Duplicate;
                        }
                    }
                    continue;
                }
                Ok(Err(e)) if over_stream_limit(&e) => {
                    let size: usize = indices.iter().map(|&i| batch.events[i].json.len() + 1).sum();
                    let halved = (size / 2).max(HEADER_ROOM);
                    {
                        let mut learned = self.learned();
                        if halved < learned.bytes {
                            *learned = Learned { bytes: halved, at: Instant::now() };
                        }
                    }
                    for &i in indices {
                        outcomes[i] = if indices.len() == 1 {
                            Outcome::Reject(format!(
                                "an event of {} bytes is over the stream's maximum message size ({subject:?})",
                                batch.events[i].json.len()
                            ))
                        } else {
                            Outcome::Retry(format!(
                                "a message of {size} bytes is over the stream's maximum message size \
                                 ({subject:?}); sent again in messages of at most {halved} bytes"
                            ))
                        };
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    // No stream takes the subject (deleted since the
                    // connection was made): connect again next round, which
                    // creates it when `create_stream` says so.
                    if e.kind() == async_nats::jetstream::context::PublishErrorKind::StreamNotFound {
                        *self.conn.lock().await = None;
                    }
                    format!("no publish acknowledgement from the stream for {subject:?}: {e}")
                }
                Err(_) => format!("no publish acknowledgement within {} ms for {subject:?}", timeout.as_millis()),
            };
            for &i in indices {
                outcomes[i] = Outcome::Retry(failure.clone());
            }
        }
    }
}

/// Whether the stream refused a message for its size (JetStream error
/// 10054, the stream's `max_msg_size`).
fn over_stream_limit(e: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::ErrorCode;
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|api| api.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
}
