//! The drain loop of one output: read the backlog, batch, send, retry,
//! dead-letter, acknowledge.
//!
//! One worker per output, so a slow destination never delays another. The
//! loop works in *rounds*: a run of backlog entries of at most `batch_max`
//! events (one entry if it alone is bigger, then sent in `batch_max`
//! chunks). A round ends when every one of its events is delivered or
//! dead-lettered; only then is the backlog acknowledged through it. So a
//! crash or a stop in the middle of a round re-sends that round later:
//! delivery is at least once, and `id_mode = "hash"` (Elasticsearch) makes
//! the repeat harmless.
//!
//! Retry policy, decided here for every output alike:
//! - an attempt where *every* event comes back `Retry` means the
//!   destination is unavailable (down, throttling all, refusing the
//!   credentials): it does not count against an event's `max_retries`;
//!   the worker backs off (exponential, jittered, capped) and tries again,
//!   for as long as it takes. The backlog's bound turns this into 503s at
//!   ingest, never into loss.
//! - an attempt where the destination answered per event (a 2xx `_bulk`
//!   answer with 429 items) counts against the events it refused for now:
//!   after `max_retries` such attempts they are dead-lettered with the last
//!   reason.
//! - `Reject` goes to the dead-letter at once, with the reason. Events sent
//!   back with it but not at fault (HEC refuses a whole request for one bad
//!   event) are not charged, and go again at once without it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use enrichd_engine::output::{EventOrigin, OutEvent, Outcome, Sink, SinkBatch};
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::watch;

use super::backlog::{PersistDue, ACK_PERSIST_INTERVAL};
use super::deadletter::DeadRecord;
use super::entry::Entry;
use super::options::RuntimeOptions;
use super::stats::LostReason;
use super::Lane;

/// `Some(deadline)`: stop; keep draining until the backlog is empty or the
/// deadline passes.
pub(crate) type StopSignal = watch::Receiver<Option<Instant>>;

/// Reads of one entry that may fail before it is skipped as damaged.
const READ_ATTEMPTS: u32 = 5;

/// The most bytes one read takes from the backlog.
const READ_MAX_BYTES: u64 = 64 << 20;

/// Runs until stopped (see [`StopSignal`]).
///
/// Up to `max_in_flight` rounds are sent at once (a destination that is
/// slow to answer — Splunk's indexer acknowledgement takes a second or
/// more — is not waited on one request at a time); they complete in any
/// order and are acknowledged in order, so the backlog's position only
/// moves past rounds that are wholly settled.
pub(crate) async fn run(lane: Arc<Lane>, sink: Arc<dyn Sink>, options: RuntimeOptions, mut stop: StopSignal) {
    let worker = Arc::new(Worker { lane, sink, options });
    let max_in_flight = worker.options.max_in_flight.max(1);
    let batch_max = worker.options.batch_max as u64;
    let mut next = worker.lane.backlog.first_unacked();
    let mut read_failures = 0;
    // After a read of several entries failed: read one at a time until one
    // succeeds, so that a damaged entry is found and skipped, not the
    // intact ones before it (a read fails whole).
    let mut narrow = false;
    let mut inflight = FuturesOrdered::new();
    let mut inflight_events = 0u64;
    loop {
        let stopping = *stop.borrow_and_update();
        let past_deadline = stopping.is_some_and(|d| Instant::now() >= d);
        let pending = worker.lane.backlog.stats();
        let unread = pending.events.saturating_sub(inflight_events);
        // A full batch goes at once; a partial one when nothing is in
        // flight and its oldest event has waited the flush interval (or
        // we are stopping).
        let flush_due = pending.oldest_accepted_unix_ms.unwrap_or(0) + worker.options.flush_interval_ms;
        let now_ms = super::unix_ms();
        let ready =
            unread >= batch_max || (inflight.is_empty() && unread > 0 && (stopping.is_some() || now_ms >= flush_due));
        if ready && !past_deadline && inflight.len() < max_in_flight {
            let round = if narrow {
                read(&worker.lane, next, 1).await
            } else {
                match worker.lane.backlog.read_in_memory(next, batch_max, READ_MAX_BYTES) {
                    Some(entries) => Ok(entries),
                    None => read(&worker.lane, next, worker.options.batch_max).await,
                }
            };
            match round {
                Ok(entries) if !entries.is_empty() => {
                    read_failures = 0;
                    narrow = false;
                    let last = entries.last().expect("not empty").seq;
                    let events: u64 = entries.iter().map(|e| u64::from(e.events)).sum();
                    next = last + 1;
                    inflight_events += events;
                    let mut round_stop = stop.clone();
                    // Each round its own task: building and parsing `_bulk`
                    // bodies then uses every core, not the worker's one.
                    let round_worker = worker.clone();
                    inflight.push_back(AbortOnDrop(tokio::spawn(async move {
                        let settled = round_worker.round(&entries, &mut round_stop).await;
                        (settled, last, events)
                    })));
                }
                Ok(_) => {
                    // Counted as pending but nothing to read from `next`:
                    // entries written but not yet durable (a spool's fsync
                    // is under way; its appender wakes us when it is done),
                    // or a position to resynchronise once nothing is in
                    // flight. A fixed sleep here stalled the drain behind
                    // every group commit.
                    if inflight.is_empty() {
                        next = worker.lane.backlog.first_unacked();
                    }
                    tokio::select! {
                        _ = worker.lane.wake.notified() => {}
                        _ = stop.changed() => {}
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                // Find the damaged entry at once: this failure is not
                // counted against an entry yet.
                Err(_) if !narrow => narrow = true,
                Err(e) => {
                    read_failures += 1;
                    worker.skip_unreadable(&e, &mut next, &mut read_failures, inflight.is_empty()).await;
                }
            }
            continue;
        }
        if inflight.is_empty() {
            if stopping.is_some() && (unread == 0 || past_deadline) {
                // Where delivery got to survives the stop (a no-op when
                // already persisted).
                worker.persist().await;
                return;
            }
            let mut wait = if unread > 0 { flush_due.saturating_sub(now_ms).max(1) } else { 60_000 };
            match worker.lane.backlog.persist_due() {
                PersistDue::Now => worker.persist().await,
                PersistDue::In(due) => wait = wait.min(due.as_millis() as u64 + 1),
                PersistDue::Nothing => {}
            }
            tokio::select! {
                _ = worker.lane.wake.notified() => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
            continue;
        }
        tokio::select! {
            done = inflight.next() => {
                let Some(done) = done else { continue };
                // A round that panicked is not settled: stop, unacknowledged.
                let (settled, last, events) = done.unwrap_or((false, 0, 0));
                if !settled {
                    // Stopped mid-round: it and what follows stay
                    // unacknowledged; what was acknowledged before stays so.
                    worker.persist().await;
                    return;
                }
                inflight_events -= events;
                // In memory here; only persisting the position (a spool's,
                // at most every 250 ms under load) goes to the blocking pool.
                match worker.lane.backlog.ack_in_memory(last) {
                    Ok(false) => {}
                    Ok(true) => worker.persist().await,
                    Err(e) => worker.lane.error(format!("acknowledging the backlog: {e:#}")),
                }
                worker.lane.settled.forget_through(last);
                worker.lane.acked.send_replace(last + 1);
            }
            _ = worker.lane.wake.notified(), if inflight.len() < max_in_flight => {}
            _ = stop.changed() => {}
            // Rounds in flight for long (a destination down): acks made
            // before are persisted when due, not held until the next ack.
            _ = tokio::time::sleep(ACK_PERSIST_INTERVAL) => {
                if worker.lane.backlog.persist_due() == PersistDue::Now {
                    worker.persist().await;
                }
            }
        }
    }
}

impl Worker {
    /// A read of one entry failed. After [`READ_ATTEMPTS`] in a row, the
    /// entry at `next` is taken to be damaged on disk after start (its
    /// checksum fails on every read): it is skipped and its events counted
    /// as lost (its metadata, kept in memory, says how many), rather than
    /// block every event behind it. Only with nothing in flight
    /// (acknowledging is in order).
    async fn skip_unreadable(&self, e: &anyhow::Error, next: &mut u64, failures: &mut u32, idle: bool) {
        self.lane.error(format!("reading the backlog: {e:#}"));
        if *failures >= READ_ATTEMPTS && idle {
            // Reads start at the first unacknowledged entry at the latest.
            let at = (*next).max(self.lane.backlog.first_unacked());
            let events = self.lane.backlog.entry_events(at).map_or(1, u64::from);
            self.lane.error(format!(
                "skipping backlog entry {at} ({events} events): unreadable after {READ_ATTEMPTS} attempts"
            ));
            match self.lane.backlog.ack_in_memory(at) {
                Ok(due) => {
                    // Skipped from now on, whether or not the position is
                    // persisted yet: counted now.
                    self.lane.stats.lose(LostReason::SpoolCorrupt, events);
                    *next = at + 1;
                    self.lane.acked.send_replace(*next);
                    if due {
                        self.persist().await;
                    }
                }
                Err(e) => self.lane.error(format!("skipping backlog entry {at}: {e:#}")),
            }
            *failures = 0;
        }
        tokio::time::sleep(Duration::from_millis(self.options.backoff_max_ms.min(1000))).await;
    }

    /// Persists the backlog's acknowledged position, on the blocking pool;
    /// a failure is the lane's error (retried when next due).
    async fn persist(&self) {
        let lane = self.lane.clone();
        let persisted =
            tokio::task::spawn_blocking(move || lane.backlog.persist()).await.unwrap_or_else(|e| Err(e.into()));
        if let Err(e) = persisted {
            self.lane.error(format!("acknowledging the backlog: {e:#}"));
        }
    }
}

/// A round's task, aborted when the worker lets go of it (the worker
/// stopped): a stopped output must not keep sending behind its successor's
/// back. An aborted round is unacknowledged, so its events go again.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// The entries of one round: from `next`, at most `batch_max` events (at
/// least one entry).
async fn read(lane: &Arc<Lane>, next: u64, batch_max: usize) -> anyhow::Result<Vec<Entry>> {
    let lane = lane.clone();
    tokio::task::spawn_blocking(move || lane.backlog.read(next, batch_max as u64, READ_MAX_BYTES)).await?
}

struct Worker {
    lane: Arc<Lane>,
    sink: Arc<dyn Sink>,
    options: RuntimeOptions,
}

/// One event of a round: where its bytes are, and how it fared.
struct Slot {
    entry: usize,
    start: usize,
    end: usize,
    id: u64,
    /// The event's index in its entry (see `EventOrigin::index`).
    index: u32,
    attempts: u32,
    /// Delivered or dead-lettered (recorded if the round is interrupted).
    settled: bool,
}

impl Worker {
    /// Delivers or dead-letters every event of `entries`. `false`: stopped
    /// before that (the round stays unacknowledged).
    async fn round(&self, entries: &[Entry], stop: &mut StopSignal) -> bool {
        let mut rng = seed() ^ entries[0].seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // Settled by an interrupted round before: not sent again.
        let done = self.lane.settled.snapshot();
        let mut slots = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let mut start = 0;
            let mut index = 0u64;
            let payload = &entry.payload.bytes;
            let mut push = |start: usize, end: usize| {
                if !done.as_ref().is_some_and(|d| d.contains(&(entry.seq, index as u32))) {
                    slots.push(Slot {
                        entry: i,
                        start,
                        end,
                        id: entry.seq << 24 | index,
                        index: index as u32,
                        attempts: 0,
                        settled: false,
                    });
                }
                index += 1;
            };
            match entry.payload.line_ends.as_deref() {
                // Recorded by the writer: no search (see `Payload`).
                Some(ends) if ends.last().is_none_or(|&end| end < payload.len()) => {
                    for &end in ends {
                        push(start, end);
                        start = end + 1;
                    }
                }
                // memchr: a line is ~1 KB, and a byte-at-a-time split
                // showed in profiles.
                _ => {
                    for end in memchr::memchr_iter(b'\n', payload).chain([payload.len()]) {
                        if end > start {
                            push(start, end);
                        }
                        start = end + 1;
                    }
                }
            }
            if index != u64::from(entry.events) {
                tracing::warn!(output = %self.lane.name, seq = entry.seq, lines = index, events = entry.events,
                    "backlog entry holds a different number of events than recorded");
            }
        }
        let batch_max = self.options.batch_max;
        let mut begin = 0;
        while begin < slots.len() {
            let end = (begin + batch_max).min(slots.len());
            if !self.chunk(entries, &mut slots[begin..end], stop, &mut rng).await {
                // Unacknowledged: what it settled must not go twice.
                self.lane.settled.record(slots.iter().filter(|s| s.settled).map(|s| (entries[s.entry].seq, s.index)));
                return false;
            }
            begin = end;
        }
        true
    }

    async fn chunk(&self, entries: &[Entry], slots: &mut [Slot], stop: &mut StopSignal, rng: &mut u64) -> bool {
        let stats = self.lane.stats.clone();
        let mut pending: Vec<usize> = (0..slots.len()).collect();
        let mut failures = 0u32;
        // Events of a chunk share their entry's acceptance time only when
        // the chunk is one entry; the first one's is used for routing.
        let accepted_unix_ms = entries[slots[0].entry].accepted_unix_ms;
        loop {
            let batch: Vec<OutEvent<'_>> = pending
                .iter()
                .map(|&i| {
                    let s = &slots[i];
                    let entry = &entries[s.entry];
                    let origin = entry.origin.as_deref().map(|key| EventOrigin { key, index: s.index });
                    OutEvent { json: &entry.payload.bytes[s.start..s.end], id: s.id, origin }
                })
                .collect();
            let started = Instant::now();
            let send = self.sink.send(SinkBatch { events: &batch, accepted_unix_ms, id_scope: self.lane.id_scope });
            // A stop's deadline ends a send under way too (a slow or
            // unacknowledging destination could hold a shutdown or a
            // reconfiguration for the whole request and ack timeouts): the
            // round stays unacknowledged and is sent again (at least once).
            let mut report = tokio::select! {
                report = send => report,
                () = past_stop_deadline(stop) => return false,
            };
            stats.record_batch(started.elapsed());
            if report.outcomes.len() != batch.len() {
                let message = format!("output answered {} outcomes for {} events", report.outcomes.len(), batch.len());
                report.outcomes = vec![Outcome::Retry(message); batch.len()];
            }
            // Charge a retry to an event only when the destination answered
            // for it on its own (a 2xx with per-event results) or took
            // others in the same attempt: then the refusal is about it, not
            // about the destination being unavailable.
            let delivered_any = report.outcomes.iter().any(|o| matches!(o, Outcome::Delivered | Outcome::Duplicate));
            let answered_per_event = delivered_any || report.http_status.is_some_and(|s| (200..300).contains(&s));
            let rejected_any = report.outcomes.iter().any(|o| matches!(o, Outcome::Reject(_)));
            let mut still = Vec::new();
            let mut dead: Vec<(usize, String)> = Vec::new();
            let mut last_error = None;
            for (k, outcome) in report.outcomes.into_iter().enumerate() {
                let i = pending[k];
                match outcome {
                    Outcome::Delivered => {
                        stats.sent.fetch_add(1, Relaxed);
                        slots[i].settled = true;
                    }
                    Outcome::Duplicate => {
                        stats.sent.fetch_add(1, Relaxed);
                        stats.duplicates.fetch_add(1, Relaxed);
                        slots[i].settled = true;
                    }
                    Outcome::Reject(reason) => {
                        stats.failed.fetch_add(1, Relaxed);
                        slots[i].attempts += 1;
                        last_error = Some(reason.clone());
                        dead.push((i, reason));
                    }
                    Outcome::Retry(reason) => {
                        stats.failed.fetch_add(1, Relaxed);
                        if answered_per_event {
                            slots[i].attempts += 1;
                        }
                        if slots[i].attempts > self.options.max_retries {
                            dead.push((i, format!("gave up after {} attempts: {reason}", slots[i].attempts)));
                        } else {
                            still.push(i);
                        }
                        last_error = Some(reason);
                    }
                }
            }
            if let Some(e) = last_error {
                self.lane.error(e);
            }
            if !dead.is_empty() {
                if !self.dead_letter(entries, slots, &dead, stop, rng).await {
                    return false;
                }
                for &(i, _) in &dead {
                    slots[i].settled = true;
                }
            }
            if still.is_empty() {
                return true;
            }
            stats.retried.fetch_add(still.len() as u64, Relaxed);
            pending = still;
            if rejected_any && !delivered_any {
                // The bad events are out; the rest go again now.
                continue;
            }
            failures += 1;
            if !self.backoff(failures, stop, rng).await {
                return false;
            }
        }
    }

    /// Writes `dead` to the dead-letter, retrying a failing disk until
    /// stopped: an event leaves the round only once it is kept somewhere.
    async fn dead_letter(
        &self,
        entries: &[Entry],
        slots: &[Slot],
        dead: &[(usize, String)],
        stop: &mut StopSignal,
        rng: &mut u64,
    ) -> bool {
        let now = super::unix_ms();
        let owned: Vec<(Vec<u8>, String, u32)> = dead
            .iter()
            .map(|(i, reason)| {
                let s = &slots[*i];
                (entries[s.entry].payload.bytes[s.start..s.end].to_vec(), self.lane.mask(reason), s.attempts.max(1))
            })
            .collect();
        let owned = Arc::new(owned);
        let mut failures = 0;
        loop {
            let lane = self.lane.clone();
            let records = owned.clone();
            let written = tokio::task::spawn_blocking(move || {
                let records: Vec<DeadRecord<'_>> = records
                    .iter()
                    .map(|(event, error, attempts)| DeadRecord { event, error, attempts: *attempts, unix_ms: now })
                    .collect();
                lane.deadletter.append(&records)
            })
            .await;
            match written {
                Ok(Ok(evicted)) => {
                    self.lane.stats.dead_lettered.fetch_add(owned.len() as u64, Relaxed);
                    self.lane.stats.lose(LostReason::DeadLetterEvicted, evicted);
                    return true;
                }
                Ok(Err(e)) => {
                    self.lane.stats.lose(LostReason::DeadLetterEvicted, e.evicted);
                    self.lane.error(format!("writing the dead-letter: {e}"));
                }
                Err(e) => self.lane.error(format!("writing the dead-letter: {e}")),
            }
            failures += 1;
            if !self.backoff(failures, stop, rng).await {
                return false;
            }
        }
    }

    /// Waits before the next attempt. `false`: stop and deadline passed.
    async fn backoff(&self, failures: u32, stop: &mut StopSignal, rng: &mut u64) -> bool {
        let o = &self.options;
        let cap = o.backoff_initial_ms.saturating_mul(1u64 << failures.saturating_sub(1).min(20)).min(o.backoff_max_ms);
        // Equal jitter: at least half the step, so retries stay spaced,
        // and spread so many instances do not retry in step.
        let wait = cap / 2 + next_random(rng) % (cap / 2 + 1);
        let deadline = Instant::now() + Duration::from_millis(wait);
        // A stop whose deadline has passed ends the wait (and is checked
        // first: a stop already due wins over a wait already over).
        tokio::select! {
            biased;
            () = past_stop_deadline(stop) => false,
            _ = tokio::time::sleep_until(deadline.into()) => true,
        }
    }
}

/// Resolves once a stop has been asked for and its deadline has passed.
async fn past_stop_deadline(stop: &mut StopSignal) {
    loop {
        let stopping = *stop.borrow_and_update();
        match stopping {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => return,
                    // An earlier deadline may follow.
                    changed = stop.changed() => {
                        if changed.is_err() {
                            tokio::time::sleep_until(at.into()).await;
                            return;
                        }
                    }
                }
            }
            None => {
                if stop.changed().await.is_err() {
                    // Nobody can ask any more.
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

use std::sync::atomic::Ordering::Relaxed;

fn seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u64) | 1
}

/// xorshift64: jitter needs spread, not cryptographic quality.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}
