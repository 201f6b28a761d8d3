//! The `kafka` output: enriched events produced to a Kafka topic, packed
//! as NDJSON into messages no larger than `max_message_bytes`, by an
//! idempotent producer (`enable.idempotence=true`, `acks=all`).
//!
//! | answer                                              | outcome |
//! |-----------------------------------------------------|---------|
//! | delivery report: written by every in-sync replica   | `Delivered` |
//! | local queue full, delivery failed, no report in `timeout_ms` | `Retry` (the runtime backs off) |
//! | an event larger than a message on its own           | `Reject` (dead-letter) |
//!
//! A send returns only after every message's delivery report, so an
//! outcome is never reported before the brokers hold the events.
//!
//! Idempotence makes librdkafka's own retries (a lost acknowledgement, a
//! broker reconnect) write each message once. It cannot cover the
//! runtime's retries of a batch (a new send is a new message to the
//! producer) nor a message the `kafka` source redelivers after a crash.
//! For those every message carries an id, as its key and in the
//! `Enrichd-Msg-Id` header, the same on every copy (the `nats` output's
//! `Nats-Msg-Id`, see [`super::pack::message_id`]): `<output>:<input
//! key>:<first>-<last>` for events whose input had an idempotency key, else
//! the backlog scope and event ids. A reader drops a repeat by that id
//! (Kafka itself keeps both copies), and a key means the copies land in the
//! same partition.

mod options;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use enrichd_engine::component::Component;
use enrichd_engine::output::{
    BoxFuture, ErrorReport, FieldError, Outcome, OutputContext, OutputFamily, SendReport, Sink, SinkBatch,
};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::pack::{message_id, pack};
use crate::kafka::{KafkaConnection, LogContext};
pub use options::KafkaOutputOptions;

/// Room left in a message for its key, headers and record framing: the
/// message id goes twice (key and `Enrichd-Msg-Id`), and with a cluster id,
/// a 249-character topic, a partition and an offset in its origin it runs
/// to ~400 bytes. 512 left a message packed to the limit over
/// `message.max.bytes`, which librdkafka refuses (`MSG_SIZE_TOO_LARGE`).
const HEADER_ROOM: usize = 1024;

/// The `kafka` output kind.
pub struct KafkaOutput;

impl Component for KafkaOutput {
    type Family = OutputFamily;
    type Options = KafkaOutputOptions;

    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn description(&self) -> &'static str {
        "Kafka: events produced as NDJSON messages to a topic by an idempotent producer (acks=all), each \
         confirmed by its delivery report, with a message key stable across retries"
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        crate::kafka::SECRET_FIELDS
    }

    fn validate(&self, options: &KafkaOutputOptions) -> Vec<FieldError> {
        options.validate()
    }

    fn build(&self, options: KafkaOutputOptions, ctx: &OutputContext) -> anyhow::Result<Arc<dyn Sink>> {
        Ok(Arc::new(KafkaSink {
            options,
            name: ctx.name.clone(),
            errors: ctx.errors.clone(),
            producer: Mutex::new(None),
        }))
    }
}

type IdempotentProducer = FutureProducer<LogContext>;

struct KafkaSink {
    options: KafkaOutputOptions,
    name: String,
    /// Where librdkafka's client errors go (the output's `last_error`).
    errors: ErrorReport,
    /// Created on first use (librdkafka then reconnects on its own).
    producer: Mutex<Option<IdempotentProducer>>,
}

/// The producer's librdkafka settings: the connection's, then the
/// guarantees, which nothing passed through can change.
fn producer_config(connection: &KafkaConnection, name: &str, max_message_bytes: usize) -> rdkafka::ClientConfig {
    let mut config = connection.client_config(name);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // librdkafka's own retries within the delivery timeout; the
        // runtime retries beyond it.
        .set("message.timeout.ms", connection.timeout_ms.to_string())
        .set("message.max.bytes", (max_message_bytes + HEADER_ROOM).to_string());
    config
}

impl KafkaSink {
    fn producer(&self) -> Result<IdempotentProducer, String> {
        let mut producer = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = producer.as_ref() {
            return Ok(p.clone());
        }
        let o = &self.options;
        let context = LogContext {
            name: self.name.clone(),
            // Client errors (brokers down, credentials refused) come from
            // librdkafka's threads, between sends too, and it retries on
            // its own: only the output's state can show them (the report
            // also logs them).
            on_error: {
                let errors = self.errors.clone();
                Box::new(move |e| errors.report(e))
            },
        };
        let p: IdempotentProducer = producer_config(&o.connection, &self.name, o.max_message_bytes)
            .create_with_context(context)
            .map_err(|e| format!("kafka producer for {}: {e}", o.connection.describe()))?;
        *producer = Some(p.clone());
        Ok(p)
    }
}

impl Sink for KafkaSink {
    fn send<'a>(&'a self, batch: SinkBatch<'a>) -> BoxFuture<'a, SendReport> {
        Box::pin(async move {
            let n = batch.events.len();
            let producer = match self.producer() {
                Ok(p) => p,
                Err(e) => return SendReport::all(n, Outcome::Retry(e), None),
            };
            let topic = self.options.topic.clone().unwrap_or_default();
            let limit = self.options.max_message_bytes;
            let (messages, too_large) = pack(batch.events, limit);
            let mut outcomes = vec![Outcome::Delivered; n];
            for i in too_large {
                outcomes[i] = Outcome::Reject(format!(
                    "event of {} bytes is larger than a message may be ({limit} bytes)",
                    batch.events[i].json.len()
                ));
            }
            // Queue every message, then wait for all the delivery reports
            // (librdkafka batches them into produce requests meanwhile).
            let mut reports = Vec::with_capacity(messages.len());
            for indices in &messages {
                let mut body = Vec::with_capacity(indices.iter().map(|&i| batch.events[i].json.len() + 1).sum());
                for &i in indices {
                    body.extend_from_slice(batch.events[i].json);
                    body.push(b'\n');
                }
                let id = message_id(&self.name, batch.id_scope, batch.events, indices);
                let headers = OwnedHeaders::new()
                    .insert(Header { key: "Content-Type", value: Some("application/x-ndjson") })
                    .insert(Header { key: "Enrichd-Msg-Id", value: Some(id.as_str()) });
                let record = FutureRecord::to(&topic).key(id.as_str()).payload(&body).headers(headers);
                match producer.send_result(record) {
                    Ok(report) => reports.push((indices, report)),
                    Err((e, _)) => {
                        for &i in indices {
                            outcomes[i] = Outcome::Retry(format!("queueing a message for {topic:?}: {e}"));
                        }
                    }
                }
            }
            // librdkafka resolves each report within message.timeout.ms;
            // the margin only guards against a report that never comes.
            let timeout = self.options.connection.timeout() + Duration::from_secs(1);
            let waits = reports
                .into_iter()
                .map(|(indices, report)| async move { (indices, tokio::time::timeout(timeout, report).await) });
            for (indices, answer) in futures_util::future::join_all(waits).await {
                let failure = match answer {
                    Ok(Ok(Ok(_))) => continue,
                    Ok(Ok(Err((e, _)))) => format!("producing to {topic:?}: {e}"),
                    Ok(Err(_)) => format!("producing to {topic:?}: the producer went away"),
                    Err(_) => format!("no delivery report within {} ms for {topic:?}", timeout.as_millis()),
                };
                for &i in indices {
                    outcomes[i] = Outcome::Retry(failure.clone());
                }
            }
            // A fatal error (InitProducerId refused for a missing
            // IdempotentWrite ACL, an idempotence sequence broken) ends this
            // producer: every later message would fail with it, even once
            // the cause is fixed. The next round makes a new one.
            if let Some((code, reason)) = producer.client().fatal_error() {
                let fatal = format!("the producer hit a fatal error ({code:?}: {reason}); a new one is made");
                for o in outcomes.iter_mut().filter(|o| matches!(o, Outcome::Retry(_))) {
                    *o = Outcome::Retry(fatal.clone());
                }
                let old = self.producer.lock().unwrap_or_else(|e| e.into_inner()).take();
                // Destroying a producer waits on librdkafka: off the async threads.
                let _ = tokio::task::spawn_blocking(move || drop((old, producer))).await;
            }
            SendReport { outcomes, http_status: None }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let producer = self.producer.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(p) = producer {
                // Every send awaited its reports, so this only waits for
                // what a cancelled send left queued; off the async threads.
                let timeout = self.options.connection.timeout();
                let _ = tokio::task::spawn_blocking(move || p.flush(timeout)).await;
            }
        })
    }
}
