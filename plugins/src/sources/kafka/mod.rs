//! The `kafka` source: a member of a Kafka consumer group, offsets
//! committed by hand after the core accepted a message's events.
//!
//! Each message goes through the core's ingest step and is settled from
//! its answer:
//!
//! | core's answer          | message                                   | why |
//! |------------------------|-------------------------------------------|-----|
//! | accepted               | offset stored, committed within `commit_interval_ms` | every enabled output holds the events as durably as it promises |
//! | bad input (4xx)        | dead-lettered, offset stored (committed past) | it would fail again: never a redelivery loop |
//! | backpressure / outage  | held, partitions paused, the same message retried after a growing pause (the consumer is still polled) | not the message's fault; nothing new is fetched meanwhile |
//!
//! Kafka's unit of acknowledgement is a partition's *position*, not a
//! message: committing offset `n` settles everything before it. So the
//! source settles messages strictly in the order the consumer returns
//! them, one at a time, and only ever stores the offset of a settled
//! message (`enable.auto.commit` and `enable.auto.offset.store` off). That
//! keeps the committed position a contiguous prefix of settled messages
//! without tracking gaps, at the price of one message in flight per
//! instance; put several events in a message (an envelope, NDJSON) and
//! scale out with partitions and instances, as with the `nats` source's
//! `concurrency`.
//!
//! Delivery is at least once end to end: a crash between acceptance and
//! the commit redelivers messages from the last committed offset to the
//! group's next member, and their events are enriched and queued twice.
//! Each payload carries the origin key `<topic>:<partition>:<offset>` (the
//! same on every delivery, in any instance), from which outputs derive
//! their ids: the `nats` output's `Nats-Msg-Id` drops the second copy, the
//! `kafka` output's message key and `Enrichd-Msg-Id` header repeat, so a
//! reader can drop it.
//!
//! Why `StreamConsumer` (librdkafka's own threads, awaited from tokio)
//! rather than a `BaseConsumer` on a blocking thread: the source waits on
//! `Ingest::submit` (async) between messages, and librdkafka already
//! runs the group protocol (heartbeats, rebalances) on its own threads.
//! It still has to be polled at least every `max.poll.interval.ms`, or the
//! member is counted as failed, so a held message is waited on while
//! polling (`hold`). The blocking calls (the final
//! synchronous commit, closing the consumer, which leaves the group) run
//! on tokio's blocking pool.
//!
//! Kafka keeps no delivery count, so the `redelivered` counter stays 0;
//! `nacked` counts refused attempts, and messages whose offset could not
//! be stored because a rebalance took their partition away (they are not
//! acknowledged: the partition's next owner reads them again, see
//! `KafkaRunner::store`).

mod context;
mod options;
mod statistics;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use enrichd_engine::component::Component;
use enrichd_engine::output::{BoxFuture, FieldError};
use enrichd_engine::source::{
    DeadMessage, Ingest, Refusal, SourceContext, SourceFamily, SourceRunner, SourceStats, StopSignal, STOP_BUDGET,
};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio::sync::watch;

use context::GroupContext;
pub use options::{KafkaSourceOptions, StartAt};
use statistics::STATISTICS_INTERVAL_MS;

/// The `kafka` source kind.
pub struct KafkaSource;

impl Component for KafkaSource {
    type Family = SourceFamily;
    type Options = KafkaSourceOptions;

    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn description(&self) -> &'static str {
        "Kafka: a consumer group member; each message (a /v1/ingest envelope or NDJSON records) has its offset \
         committed once its enriched events are accepted by every output"
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        crate::kafka::SECRET_FIELDS
    }

    fn validate(&self, options: &KafkaSourceOptions) -> Vec<FieldError> {
        options.validate()
    }

    fn build(&self, options: KafkaSourceOptions, ctx: &SourceContext) -> anyhow::Result<Arc<dyn SourceRunner>> {
        Ok(Arc::new(KafkaRunner { options, name: ctx.name.clone() }))
    }
}

struct KafkaRunner {
    options: KafkaSourceOptions,
    name: String,
}

/// Longest pause between attempts to create the consumer.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Longest pause after a refusal for backpressure.
const MAX_PAUSE: Duration = Duration::from_secs(1);

type GroupConsumer = StreamConsumer<GroupContext>;

impl SourceRunner for KafkaRunner {
    fn run(self: Arc<Self>, ingest: Arc<dyn Ingest>, stop: StopSignal) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut stop = stop;
            let (stopping, stopped) = watch::channel(false);
            let consume = self.consume(&ingest, stopped);
            tokio::pin!(consume);
            tokio::select! {
                _ = &mut stop => {}
                _ = &mut consume => return,
            }
            // Finish the message in hand and commit what was settled, so a
            // restart does not process it again.
            let _ = stopping.send(true);
            // `timeout_ms` bounds it, within the runtime's stop budget
            // (past it the task is aborted and this error never set): a
            // broker that does not answer the final commit cannot hold up
            // a shutdown or a reload.
            let budget = self.options.connection.timeout().min(STOP_BUDGET.saturating_sub(Duration::from_secs(2)));
            if tokio::time::timeout(budget, consume).await.is_err() {
                ingest.stats().set_error(&self.name, "stopped before the last offsets were committed");
            }
        })
    }
}

/// How processing a message ended.
enum Settled {
    /// Its offset is stored (accepted, or dead-lettered).
    Stored,
    /// Its offset could not be stored (its partition was taken away): it
    /// stays uncommitted and its partition's next owner reads it again.
    GivenBack,
    /// The source is stopping: the message stays uncommitted (redelivered).
    Stopped,
}

impl KafkaRunner {
    /// Creates the consumer and consumes until `stopped`; a consumer that
    /// cannot be created (a setting librdkafka refuses) is reported and
    /// tried again with a growing pause.
    async fn consume(&self, ingest: &Arc<dyn Ingest>, mut stopped: watch::Receiver<bool>) {
        let stats = ingest.stats();
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.consumer(ingest) {
                Ok(consumer) => return self.poll(Arc::new(consumer), ingest, stopped).await,
                Err(e) => stats.set_error(&self.name, format!("{e:#}")),
            }
            tokio::select! {
                _ = stopped.changed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The group member, subscribed. librdkafka connects in the
    /// background and reports broker problems through the context.
    fn consumer(&self, ingest: &Arc<dyn Ingest>) -> anyhow::Result<GroupConsumer> {
        let o = &self.options;
        let mut config = o.connection.client_config(&self.name);
        config
            .set("group.id", &o.group_id)
            // Offsets are stored only for settled messages and committed
            // by the source: at least once.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // The partitions' lag, for the source's backlog (see
            // `GroupContext::stats_raw`).
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
            .set(
                "auto.offset.reset",
                match o.start_at {
                    StartAt::Earliest => "earliest",
                    StartAt::Latest => "latest",
                },
            );
        let consumer: GroupConsumer = config
            .create_with_context(GroupContext::new(&self.name, ingest))
            .map_err(|e| anyhow::anyhow!("kafka consumer for {}: {e}", o.connection.describe()))?;
        let topics: Vec<&str> = o.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|e| anyhow::anyhow!("subscribing to {topics:?}: {e}"))?;
        Ok(consumer)
    }

    /// Receives and settles messages until `stopped`, committing stored
    /// offsets every `commit_interval_ms`; then commits and leaves the
    /// group.
    async fn poll(&self, consumer: Arc<GroupConsumer>, ingest: &Arc<dyn Ingest>, mut stopped: watch::Receiver<bool>) {
        let stats = ingest.stats();
        let interval = Duration::from_millis(self.options.commit_interval_ms);
        let tick = interval.clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut last_commit = Instant::now();
        let mut dirty = false;
        // Whether anything was stored in this run: the final commit is then
        // synchronous whatever the asynchronous ones did (a failed one is
        // only logged by librdkafka, and `dirty` is cleared when it is sent).
        let mut stored_any = false;
        let mut errors = ReceiveErrors::default();
        let cluster = tokio::select! {
            _ = stopped.changed() => return,
            cluster = self.cluster(&consumer, stats) => cluster,
        };
        // Messages that arrived while one was held (see `hold`), next in
        // line before anything new.
        let mut early = VecDeque::new();
        loop {
            let received = match early.pop_front() {
                Some(message) => Ok(Ok(message)),
                None => tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    received = tokio::time::timeout(tick, consumer.recv()) => received,
                },
            };
            match received {
                Err(_idle) => errors.quiet(),
                Ok(Err(e)) => {
                    // One partition's or topic's trouble (see
                    // `ReceiveErrors`): reported, while the others' messages
                    // queued behind it are received at once.
                    stats.set_error(
                        &self.name,
                        format!(
                            "receiving from {:?} (the other partitions are read meanwhile): {e}",
                            self.options.topics
                        ),
                    );
                    if let Some(pause) = errors.error() {
                        tokio::time::sleep(pause).await;
                    }
                }
                Ok(Ok(message)) => {
                    errors.quiet();
                    stats.set_connected(true);
                    match self.process(&consumer, &cluster, &message, ingest, &mut stopped, &mut early).await {
                        Settled::Stored => (dirty, stored_any) = (true, true),
                        Settled::GivenBack => {}
                        Settled::Stopped => break,
                    }
                }
            }
            if dirty && last_commit.elapsed() >= interval {
                // Asynchronous: the next commit (or the final synchronous
                // one) covers a failed one.
                commit(&*consumer, CommitMode::Async, &self.name, stats);
                dirty = false;
                last_commit = Instant::now();
            }
        }
        // Off the async threads: a synchronous commit waits for the
        // broker, and dropping the consumer leaves the group (a rebalance
        // hands its partitions to the others at once, not after the
        // session timeout).
        // Messages still in hand must go before the consumer is closed:
        // librdkafka's close and destroy wait for every message of theirs
        // to be released, forever.
        drop(early);
        let (name, stats_of) = (self.name.clone(), ingest.clone());
        let _ = tokio::task::spawn_blocking(move || {
            if dirty || stored_any {
                commit(&*consumer, CommitMode::Sync, &name, stats_of.stats());
            }
            consumer.unsubscribe();
            drop(consumer);
        })
        .await;
    }

    /// The cluster's identity for origins: topic, partition and offset
    /// alone are the same in two clusters, and two inputs with one origin
    /// get one message id downstream, where a duplicate window drops the
    /// second (silent loss). The cluster id the brokers report, asked until
    /// they answer (nothing is consumed before they do anyway); a broker
    /// too old to have one: the bootstrap brokers' checksum.
    async fn cluster(&self, consumer: &Arc<GroupConsumer>, stats: &SourceStats) -> String {
        for attempt in 1..=3 {
            let asking = consumer.clone();
            let id = tokio::task::spawn_blocking(move || asking.client().fetch_cluster_id(Duration::from_secs(5)))
                .await
                .ok()
                .flatten();
            if let Some(id) = id.filter(|id| !id.is_empty()) {
                stats.set_connected(true);
                return id;
            }
            if attempt < 3 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let mut brokers = self.options.connection.brokers.clone();
        brokers.sort();
        stats.set_error(&self.name, "the brokers report no cluster id; origins name the bootstrap brokers instead");
        format!("brokers-{:08x}", crc32fast::hash(brokers.join(",").as_bytes()))
    }

    /// One message: submit (again while refused), then settle it.
    async fn process<'c>(
        &self,
        consumer: &'c GroupConsumer,
        cluster: &str,
        message: &BorrowedMessage<'c>,
        ingest: &Arc<dyn Ingest>,
        stopped: &mut watch::Receiver<bool>,
        early: &mut VecDeque<BorrowedMessage<'c>>,
    ) -> Settled {
        let stats = ingest.stats();
        SourceStats::count(&stats.messages, 1);
        let body = message.payload().unwrap_or_default();
        let header = |name: &str| {
            let headers = message.headers()?;
            let found = headers.iter().find(|h| h.key.eq_ignore_ascii_case(name))?;
            found.value.map(|v| String::from_utf8_lossy(v).trim().to_string())
        };
        let mut payload = match super::payload(body, header, self.options.format.as_deref()) {
            Ok(payload) => payload,
            Err(reason) => return self.poison(consumer, message, &reason, ingest),
        };
        payload.origin = Some(format!("{cluster}/{}:{}:{}", message.topic(), message.partition(), message.offset()));
        let mut paused = false;
        let mut wait = Duration::from_millis(50);
        let settled = loop {
            // A submit can wait long (an `ack` output until it delivers):
            // a stop does not wait for it. The message stays uncommitted
            // and comes again (its events may then be queued twice: at
            // least once).
            let answer = tokio::select! {
                answer = ingest.submit(payload.clone()) => answer,
                _ = stopped.changed() => break Settled::Stopped,
            };
            match answer {
                Ok(_) => {
                    break self.store(consumer, message, stats, &stats.acked);
                }
                Err(Refusal::BadInput { code, message: why }) => {
                    break self.poison(consumer, message, &format!("{code}: {why}"), ingest);
                }
                Err(
                    Refusal::Backpressure { message: why, retry_after }
                    | Refusal::Unavailable { message: why, retry_after },
                ) => {
                    SourceStats::count(&stats.nacked, 1);
                    wait = (wait * 2).min(MAX_PAUSE).min(retry_after.max(Duration::from_millis(100)));
                    stats.set_error(
                        &self.name,
                        format!(
                            "message {}:{}:{} refused, again in {} ms: {why}",
                            message.topic(),
                            message.partition(),
                            message.offset(),
                            wait.as_millis()
                        ),
                    );
                    // Stop fetching while the outputs are full: nothing
                    // new piles up in librdkafka's queue meanwhile.
                    if !paused {
                        paused = set_paused(consumer, true);
                    }
                    if hold(consumer, wait, stopped, early, stats, &self.name).await.is_err() {
                        break Settled::Stopped;
                    }
                }
            }
        };
        if paused {
            set_paused(consumer, false);
        }
        settled
    }

    /// Bad input: the dead-letter, and the offset stored so it is
    /// committed past (never a redelivery loop).
    fn poison(
        &self,
        consumer: &GroupConsumer,
        message: &BorrowedMessage<'_>,
        reason: &str,
        ingest: &Arc<dyn Ingest>,
    ) -> Settled {
        let stats = ingest.stats();
        let origin = serde_json::json!({
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
        });
        let body = message.payload().unwrap_or_default();
        // Written before the offset is stored: should the store fail, the
        // message comes again and is dead-lettered a second time (a
        // duplicate record), never committed past without a record.
        ingest.dead_letter(DeadMessage { origin: &origin, reason, body });
        self.store(consumer, message, stats, &stats.termed)
    }

    /// Stores the offset past `message`, which settles it at the next
    /// commit, and counts it in `settled_as` (`acked` or `termed`). librdkafka refuses only for a partition this member no
    /// longer holds (`_STATE`: revoked by a rebalance while the message was
    /// being processed or held; `_UNKNOWN_PARTITION`). Then the message is
    /// not acknowledged, and not counted as `acked` or `termed`: the
    /// partition's next owner (this member too, should it get the partition
    /// back) reads on from the group's committed offset, which is at or
    /// before this message since messages are settled in order, so it comes
    /// again. It is counted as given back (`nacked`) and the error shown in
    /// `last_error`; its events, already accepted, are accepted again when
    /// it returns (at least once, the origin key the same).
    fn store(
        &self,
        consumer: &GroupConsumer,
        message: &BorrowedMessage<'_>,
        stats: &SourceStats,
        settled_as: &AtomicU64,
    ) -> Settled {
        match consumer.store_offset_from_message(message) {
            Ok(()) => {
                SourceStats::count(settled_as, 1);
                Settled::Stored
            }
            Err(e) => {
                SourceStats::count(&stats.nacked, 1);
                stats.set_error(
                    &self.name,
                    format!(
                        "offset {} of {}:{} not stored, the message is not acknowledged and will be read again \
                         by the partition's next owner (its partition was taken away, a rebalance?): {e}",
                        message.offset(),
                        message.topic(),
                        message.partition()
                    ),
                );
                Settled::GivenBack
            }
        }
    }
}

/// Errors from the consumer's queue between messages, and whether to
/// pause before receiving again.
///
/// What arrives there is one partition's, one topic's or the group's
/// trouble: a fetch refused for a partition (librdkafka passes on the
/// errors it does not handle itself, once per fetch back-off of that
/// partition), a subscribed topic missing or not authorized, an offset
/// reset that failed. The brokers answered; losing them comes through
/// `GroupContext::error`. The queue is shared by every partition, so a
/// pause after each error (as there was, growing to 1 s) held the healthy
/// partitions' messages queued behind it, and one broken partition of
/// many slowed or stalled the whole source; marking the source
/// disconnected for it was as wrong. So an error costs nothing but its
/// report, and `connected` is left alone. Only a run of errors with
/// nothing else between them (no message, no quiet tick: the queue yields
/// errors alone, back to back) pauses, so such a queue does not spin.
#[derive(Debug, Default)]
struct ReceiveErrors {
    in_a_row: u32,
}

/// Errors in a row, with nothing else between them, before a pause.
const ERRORS_BEFORE_PAUSE: u32 = 20;

/// The pause after such a run, per further error.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

impl ReceiveErrors {
    /// An error was received: the pause before receiving again, if any.
    fn error(&mut self) -> Option<Duration> {
        self.in_a_row = self.in_a_row.saturating_add(1);
        (self.in_a_row >= ERRORS_BEFORE_PAUSE).then_some(ERROR_PAUSE)
    }

    /// A message arrived, or the queue was empty for a while.
    fn quiet(&mut self) {
        self.in_a_row = 0;
    }
}

/// Waits `wait` with a message held, polling the consumer meanwhile:
/// librdkafka counts a member that has not polled for
/// `max.poll.interval.ms` (5 minutes) as failed and rebalances its
/// partitions away, and it hands over its statistics (the backlog) and
/// rebalance events only when polled, so an output full for minutes must
/// not stop the polling. The paused partitions deliver nothing (pausing
/// drops what was fetched ahead and resumes from the held message's
/// successor); a message from a partition assigned meanwhile is kept in
/// `early`, in order, and its partition paused too. `Err` when stopping.
async fn hold<'c>(
    consumer: &'c GroupConsumer,
    wait: Duration,
    stopped: &mut watch::Receiver<bool>,
    early: &mut VecDeque<BorrowedMessage<'c>>,
    stats: &SourceStats,
    name: &str,
) -> Result<(), ()> {
    let until = tokio::time::Instant::now() + wait;
    loop {
        tokio::select! {
            _ = stopped.changed() => return Err(()),
            _ = tokio::time::sleep_until(until) => return Ok(()),
            received = consumer.recv(), if early.len() < EARLY_MAX => match received {
                Ok(message) => {
                    early.push_back(message);
                    set_paused(consumer, true);
                }
                Err(e) => {
                    stats.set_error(name, format!("receiving while a message is held: {e}"));
                    tokio::time::sleep_until(until.min(tokio::time::Instant::now() + Duration::from_millis(100))).await;
                }
            },
        }
    }
}

/// Most messages taken in while one is held (should pausing fail, the
/// consumer is then no longer read until the hold ends: never a queue
/// growing at fetch speed while the outputs are full).
const EARLY_MAX: usize = 1_000;

/// Commits the stored offsets; "nothing to commit" is not a problem.
fn commit<C: ConsumerContext>(consumer: &impl Consumer<C>, mode: CommitMode, name: &str, stats: &SourceStats) {
    match consumer.commit_consumer_state(mode) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => stats.set_error(name, format!("committing offsets (they will be committed later): {e}")),
    }
}

/// Pauses (or resumes) fetching from every assigned partition. Returns
/// whether it took effect.
fn set_paused(consumer: &GroupConsumer, pause: bool) -> bool {
    let Ok(assignment) = consumer.assignment() else { return false };
    let done = if pause { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
    done.is_ok()
}
