//! The `nats` source: a durable pull consumer on a JetStream stream.
//!
//! Each message goes through the core's ingest step and is settled from
//! its answer:
//!
//! | core's answer          | message                          | why |
//! |------------------------|----------------------------------|-----|
//! | accepted               | `ack`                            | every enabled output holds the events as durably as it promises |
//! | bad input (4xx)        | `term` + the source's dead-letter | it would fail again: never a redelivery loop |
//! | backpressure / outage  | `nak` with a delay, pulling pauses | not the message's fault; nothing is buffered meanwhile |
//!
//! So delivery is at least once end to end: a crash between acceptance
//! and `ack` redelivers the message after `ack_wait`, and its events are
//! enriched and queued twice. Each payload carries the origin key
//! `<stream>:<stream sequence>` (the same on every delivery, in any
//! instance), from which outputs that can deduplicate derive their ids:
//! the `nats` output's `Nats-Msg-Id` makes the stream drop the second copy.
//! A message still being processed when `ack_wait`
//! nears gets an in-progress signal, so slow outputs do not cause
//! redeliveries.
//!
//! The body's shape: the `Enrichd-Format` header (`envelope`, or a record
//! format for NDJSON), else `Content-Type` (`application/json`: envelope,
//! `…ndjson`: records of the `format` option), else the `format` option
//! (records) or an envelope. Gzip: `Content-Encoding: gzip` or the gzip
//! magic bytes.

mod options;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream, AckKind};
use enrichd_engine::component::Component;
use enrichd_engine::output::{BoxFuture, FieldError};
use enrichd_engine::source::{
    DeadMessage, Ingest, Payload, Refusal, SourceContext, SourceFamily, SourceRunner, SourceStats, StopSignal,
};
use futures_util::StreamExt;

pub use options::NatsSourceOptions;

/// The `nats` source kind.
pub struct NatsSource;

impl Component for NatsSource {
    type Family = SourceFamily;
    type Options = NatsSourceOptions;

    fn kind(&self) -> &'static str {
        "nats"
    }

    fn description(&self) -> &'static str {
        "NATS JetStream: a durable pull consumer; each message (a /v1/ingest envelope or NDJSON records) is \
         acknowledged once its enriched events are accepted by every output"
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        crate::nats::SECRET_FIELDS
    }

    fn validate(&self, options: &NatsSourceOptions) -> Vec<FieldError> {
        options.validate()
    }

    fn build(&self, options: NatsSourceOptions, ctx: &SourceContext) -> anyhow::Result<Arc<dyn SourceRunner>> {
        Ok(Arc::new(NatsRunner { options, name: ctx.name.clone() }))
    }
}

struct NatsRunner {
    options: NatsSourceOptions,
    name: String,
}

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Longest pause after a refusal for backpressure.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// How often an idle source asks the server for its consumer's backlog.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// How long a stopping source may take to finish the batch in hand.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl SourceRunner for NatsRunner {
    fn run(self: Arc<Self>, ingest: Arc<dyn Ingest>, stop: StopSignal) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut stop = stop;
            let stopping = AtomicBool::new(false);
            let consume = self.consume(&ingest, &stopping);
            tokio::pin!(consume);
            tokio::select! {
                _ = &mut stop => {}
                _ = &mut consume => return,
            }
            // Finish the batch in hand (its messages are given back at once
            // rather than processed), so nothing accepted stays unacked
            // until `ack_wait` brings it back as a duplicate.
            stopping.store(true, Relaxed);
            let _ = tokio::time::timeout(STOP_GRACE, consume).await;
        })
    }
}

impl NatsRunner {
    /// Connects and consumes until `stopping`: every failure is reported
    /// and retried with a growing pause.
    async fn consume(&self, ingest: &Arc<dyn Ingest>, stopping: &AtomicBool) {
        let stats = ingest.stats();
        let mut backoff = Duration::from_millis(250);
        while !stopping.load(Relaxed) {
            match self.consumer().await {
                Ok((consumer, origin, client)) => {
                    backoff = Duration::from_millis(250);
                    match self.pull(&consumer, &origin, &client, ingest, stopping).await {
                        Some(error) => stats.set_error(&self.name, error),
                        None => return,
                    }
                }
                Err(e) => stats.set_error(&self.name, format!("{e:#}")),
            }
            stats.set_connected(false);
            stats.set_backlog(None);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The durable consumer, created (with its stream) if missing and
    /// allowed, and the stream's identity for origins: its name and when
    /// it was created. Two streams of one name (two clusters, a stream
    /// deleted and created again) number their messages from 1 alike; an
    /// origin of name and sequence alone would give their messages the same
    /// message ids downstream, where a stream's duplicate window would drop
    /// the second as a repeat: silent loss. The client comes along too: its
    /// connection state is the source's.
    async fn consumer(
        &self,
    ) -> anyhow::Result<(consumer::Consumer<consumer::pull::Config>, String, async_nats::Client)> {
        let o = &self.options;
        let client = o.connection.connect(&self.name).await?;
        let js = jetstream::new(client.clone());
        let stream_name = o.stream.clone().unwrap_or_default();
        let mut stream = if o.create {
            let subjects =
                if o.subjects.is_empty() { o.filter_subject.iter().cloned().collect() } else { o.subjects.clone() };
            js.get_or_create_stream(stream::Config { name: stream_name.clone(), subjects, ..Default::default() })
                .await
                .map_err(|e| anyhow::anyhow!("stream {stream_name:?} (created if missing): {e}"))?
        } else {
            js.get_stream(&stream_name).await.map_err(|e| anyhow::anyhow!("stream {stream_name:?}: {e}"))?
        };
        let config = consumer::pull::Config {
            durable_name: Some(o.durable.clone()),
            filter_subject: o.filter_subject.clone().unwrap_or_default(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_millis(o.ack_wait_ms),
            max_deliver: o.max_deliver,
            max_ack_pending: o.max_ack_pending,
            ..Default::default()
        };
        let failed =
            |e: &dyn std::fmt::Display| anyhow::anyhow!("consumer {:?} on stream {stream_name:?}: {e}", o.durable);
        let consumer: consumer::Consumer<consumer::pull::Config> = if o.create {
            stream.get_or_create_consumer(&o.durable, config).await.map_err(|e| failed(&e))?
        } else {
            stream.get_consumer(&o.durable).await.map_err(|e| failed(&e))?
        };
        // Confirms the stream answers before the first fetch.
        let info = stream.info().await.map_err(|e| anyhow::anyhow!("stream {stream_name:?}: {e}"))?;
        let origin = format!("{}@{}", info.config.name, info.created.unix_timestamp_nanos());
        Ok((consumer, origin, client))
    }

    /// Fetches and processes batches until fetching fails (returns why) or
    /// `stopping` (returns `None`).
    async fn pull(
        &self,
        consumer: &consumer::Consumer<consumer::pull::Config>,
        origin: &str,
        client: &async_nats::Client,
        ingest: &Arc<dyn Ingest>,
        stopping: &AtomicBool,
    ) -> Option<String> {
        let o = &self.options;
        let pause = Pause::default();
        let mut failures = 0;
        let mut backlog_asked: Option<Instant> = None;
        while !stopping.load(Relaxed) {
            // A fetch during an outage just ends on its timer, without an
            // error: the client's own state says whether the server answers.
            let connected = client.connection_state() == async_nats::connection::State::Connected;
            if ingest.stats().connected() && !connected {
                ingest.stats().set_error(&self.name, "disconnected from the NATS server; reconnecting");
            }
            ingest.stats().set_connected(connected);
            if !connected {
                ingest.stats().set_backlog(None);
            }
            // Backpressure: no new messages until the pause is over.
            if let Some(wait) = pause.remaining() {
                tokio::time::sleep(wait).await;
                continue;
            }
            let batch =
                consumer.batch().max_messages(o.batch).expires(Duration::from_millis(o.fetch_wait_ms)).messages().await;
            // A failed fetch, or a batch of nothing but errors (the durable
            // consumer deleted, the stream recreated: every pull answers "no
            // responders"): three in a row and the consumer is looked up
            // again (and created, if allowed) after a pause, instead of
            // pulling from a consumer that is gone, at once and for ever.
            let failure = match batch {
                Err(e) => Some(format!("fetching from the consumer: {e}")),
                Ok(batch) => {
                    let received = AtomicUsize::new(0);
                    let last_error = std::sync::Mutex::new(None);
                    batch
                        .for_each_concurrent(o.concurrency, |message| async {
                            match message {
                                Ok(message) => {
                                    received.fetch_add(1, Relaxed);
                                    self.process(message, origin, ingest, &pause, stopping).await
                                }
                                Err(e) => {
                                    let e = format!("receiving a message: {e}");
                                    ingest.stats().set_error(&self.name, e.clone());
                                    *last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                                }
                            }
                        })
                        .await;
                    let received = received.load(Relaxed);
                    if received == 0 && connected && backlog_asked.is_none_or(|at| at.elapsed() >= BACKLOG_EVERY) {
                        // Nothing came: messages delivered tell the backlog
                        // as they come, an empty fetch does not (other
                        // instances may hold every message the consumer
                        // lets out), so the server is asked.
                        backlog_asked = Some(Instant::now());
                        let info = tokio::time::timeout(BACKLOG_EVERY, consumer.get_info()).await;
                        if let Ok(Ok(info)) = info {
                            ingest.stats().set_backlog(Some(info.num_pending));
                        }
                    }
                    last_error.into_inner().unwrap_or_else(|p| p.into_inner()).filter(|_| received == 0)
                }
            };
            match failure {
                Some(e) => {
                    failures += 1;
                    if failures >= 3 {
                        return Some(e);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => failures = 0,
            }
        }
        None
    }

    /// One message: submit, then settle it from the answer.
    async fn process(
        &self,
        message: jetstream::Message,
        origin: &str,
        ingest: &Arc<dyn Ingest>,
        pause: &Pause,
        stopping: &AtomicBool,
    ) {
        let stats = ingest.stats();
        SourceStats::count(&stats.messages, 1);
        let info = message.info().ok().map(|i| (i.stream_sequence, i.delivered, i.pending));
        let (stream_seq, delivered) = info.map_or((0, 1), |(seq, delivered, _)| (seq, delivered));
        if let Some((_, _, pending)) = info {
            // What the stream still holds for the consumer beyond this one.
            stats.set_backlog(Some(pending));
        }
        if delivered > 1 {
            SourceStats::count(&stats.redelivered, 1);
        }
        // Stopping: give it back for another instance at once.
        if stopping.load(Relaxed) {
            self.settle(&message, AckKind::Nak(None), &stats.nacked, stats).await;
            return;
        }
        // Pulling is paused: give the message back untouched.
        if let Some(wait) = pause.remaining() {
            self.settle(&message, AckKind::Nak(Some(wait.max(Duration::from_millis(100)))), &stats.nacked, stats).await;
            return;
        }
        let payload = match shape(&message.message, self.options.format.as_deref()) {
            Ok(mut payload) => {
                // The stream's identity and the message's sequence; none
                // when the server's reply subject did not say the sequence
                // (every such message would share sequence 0).
                payload.origin = info.map(|_| format!("{origin}:{stream_seq}"));
                payload
            }
            Err(reason) => return self.poison(&message, stream_seq, delivered, &reason, ingest).await,
        };
        let answer = self.submit_in_progress(&message, payload, ingest).await;
        match answer {
            Ok(_) => {
                pause.clear();
                self.settle(&message, AckKind::Ack, &stats.acked, stats).await;
            }
            Err(Refusal::BadInput { code, message: why }) => {
                let reason = format!("{code}: {why}");
                self.poison(&message, stream_seq, delivered, &reason, ingest).await
            }
            Err(
                Refusal::Backpressure { message: why, retry_after }
                | Refusal::Unavailable { message: why, retry_after },
            ) => {
                let wait = pause.extend(retry_after);
                stats.set_error(
                    &self.name,
                    format!("message {stream_seq} given back for {} ms: {why}", wait.as_millis()),
                );
                self.settle(&message, AckKind::Nak(Some(wait)), &stats.nacked, stats).await;
            }
        }
    }

    /// Submits, telling the server the message is in progress every half
    /// `ack_wait` (an `ack` output can take a while).
    async fn submit_in_progress(
        &self,
        message: &jetstream::Message,
        payload: Payload,
        ingest: &Arc<dyn Ingest>,
    ) -> Result<enrichd_engine::source::Accepted, Refusal> {
        let half = Duration::from_millis((self.options.ack_wait_ms / 2).max(1));
        let submit = ingest.submit(payload);
        tokio::pin!(submit);
        loop {
            tokio::select! {
                answer = &mut submit => return answer,
                _ = tokio::time::sleep(half) => {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
        }
    }

    /// Bad input: `term` (never redelivered) and the dead-letter.
    async fn poison(
        &self,
        message: &jetstream::Message,
        seq: u64,
        delivered: i64,
        reason: &str,
        ingest: &Arc<dyn Ingest>,
    ) {
        let stats = ingest.stats();
        let origin = serde_json::json!({
            "subject": message.subject.as_str(),
            "stream": self.options.stream,
            "stream_seq": seq,
            "delivered": delivered,
        });
        ingest.dead_letter(DeadMessage { origin: &origin, reason, body: &message.payload });
        self.settle(message, AckKind::Term, &stats.termed, stats).await;
    }

    async fn settle(&self, message: &jetstream::Message, kind: AckKind, counter: &AtomicU64, stats: &SourceStats) {
        match message.ack_with(kind).await {
            Ok(()) => SourceStats::count(counter, 1),
            // The server redelivers it after `ack_wait`: at least once.
            Err(e) => stats.set_error(&self.name, format!("settling a message: {e}")),
        }
    }
}

/// When pulling may resume after backpressure, shared by a batch's
/// concurrent messages.
#[derive(Default)]
struct Pause(Mutex<Option<(Instant, Duration)>>);

impl Pause {
    fn remaining(&self) -> Option<Duration> {
        let until = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        until.and_then(|(at, _)| at.checked_duration_since(Instant::now()))
    }

    /// Pauses (again): 100 ms, doubling while refusals go on, at most
    /// `MAX_PAUSE` or `retry_after`. Returns the pause.
    fn extend(&self, retry_after: Duration) -> Duration {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let last = guard.map_or(Duration::from_millis(50), |(_, d)| d);
        let wait = (last * 2).min(MAX_PAUSE).min(retry_after.max(Duration::from_millis(100)));
        *guard = Some((Instant::now() + wait, wait));
        wait
    }

    fn clear(&self) {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_some_and(|(at, _)| at <= Instant::now()) {
            *guard = None;
        }
    }
}

/// The payload of a message (see [`super::payload`]), from its NATS
/// headers.
fn shape(message: &async_nats::Message, format: Option<&str>) -> Result<Payload, String> {
    let header = |name: &str| message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().trim().to_string());
    super::payload(&message.payload, header, format)
}
