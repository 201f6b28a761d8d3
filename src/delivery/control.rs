//! What the API shows of outputs, and replaying a dead-letter.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use enrichd_engine::Registry;
use serde_json::{json, Value};

use super::{Delivery, Lane, Summary};
use crate::metrics::prometheus::OutputReading;

/// Every configured output as the API shows it.
pub(crate) fn views(delivery: &Delivery, registry: &Registry) -> Vec<Value> {
    let now = super::unix_ms();
    delivery
        .snapshot()
        .iter()
        .map(|Summary { spec, source, lane, sink }| {
            let backlog = lane.backlog.stats();
            let dead = lane.deadletter.stats();
            let state = match (spec.runtime.enabled, sink.is_some()) {
                (false, _) => "disabled",
                (true, true) => "running",
                (true, false) => "error",
            };
            json!({
                "name": spec.runtime.name,
                "type": spec.runtime.kind,
                "source": source,
                "enabled": spec.runtime.enabled,
                "state": state,
                "durability": spec.runtime.durability,
                "settings": spec.view(registry),
                "backlog": {
                    "events": backlog.events,
                    "entries": backlog.entries,
                    "bytes": backlog.bytes,
                    "bound_bytes": lane.bounds.max_bytes(),
                    "oldest_age_ms": backlog.oldest_accepted_unix_ms.map(|t| now.saturating_sub(t)),
                },
                "deadletter": { "events": dead.events, "bytes": dead.bytes },
                "counters": lane.stats.view(),
            })
        })
        .collect()
}

/// Moves the output's dead-lettered events back into its backlog; returns
/// how many. Refused (and the dead-letter kept as it is) when the backlog
/// has no room for them or the append fails: the dead-letter is emptied
/// only once the events are queued
/// ([`DeadLetter::replay_with`](super::deadletter::DeadLetter::replay_with)).
pub(crate) fn replay(lane: &Arc<Lane>) -> Result<u64, String> {
    lane.deadletter.replay_with(|records| {
        if records.is_empty() {
            return Ok(0);
        }
        let mut payload = Vec::new();
        for r in records {
            // One line per record, as the entry's event count says: a
            // record kept raw (not JSON) may hold line breaks, whitespace
            // to JSON.
            let start = payload.len();
            payload.extend_from_slice(&r.event);
            enrichd_engine::batch::one_line(&mut payload[start..]);
            payload.push(b'\n');
        }
        let events = records.len() as u64;
        let payload: super::Payload = bytes::Bytes::from(payload).into();
        let cost = lane.backlog.cost(&payload);
        if !lane.bounds.reserve(&*lane.backlog, cost, events) {
            return Err(format!("output {:?} has no room in its backlog for {events} events", lane.name));
        }
        // A replay is a new input: no origin key; its destination ids come
        // from the backlog position. Decided, not overlooked: an origin
        // names each event by (input key, index in the input), but an
        // entry's events are numbered by their place in the entry, so the
        // input's key on a replayed entry would name dead-lettered events
        // 3 and 7 of an input as its events 0 and 1, ids of events that
        // were stored: the destination would drop them as repeats and they
        // would count as sent (lost in silence). Keeping the true indices
        // would take an index in the dead-letter and the spool formats,
        // for what it buys: a repeat caught only within the destination's
        // duplicate window (JetStream: 2 minutes by default), when a replay
        // usually follows an operator's fix much later. Fresh ids can never
        // match a stored message, so a replay may duplicate (as at least
        // once allows) but never loses an event.
        let appended = lane.backlog.append(&payload, events as u32, super::unix_ms(), None);
        lane.bounds.release(cost, events);
        appended.map_err(|e| format!("queueing the replay: {e}"))?;
        lane.stats.replayed.fetch_add(events, Relaxed);
        lane.wake.notify_one();
        Ok(events)
    })
}

/// Every output's numbers for `/metrics` (also outputs no longer
/// configured whose lane still holds events or counts).
pub(crate) fn readings(delivery: &Delivery) -> Vec<OutputReading> {
    let enabled: Vec<String> = delivery.active().iter().map(|a| a.lane.name.clone()).collect();
    let now = super::unix_ms();
    delivery
        .lanes()
        .into_iter()
        .map(|lane| {
            let s = &lane.stats;
            let backlog = lane.backlog.stats();
            let dead = lane.deadletter.stats();
            let buckets = s.buckets();
            OutputReading {
                enabled: enabled.contains(&lane.name),
                name: lane.name.clone(),
                queued: s.queued.load(Relaxed),
                sent: s.sent.load(Relaxed),
                duplicates: s.duplicates.load(Relaxed),
                failed: s.failed.load(Relaxed),
                retried: s.retried.load(Relaxed),
                dead_lettered: s.dead_lettered.load(Relaxed),
                refused: s.refused.load(Relaxed),
                lost: super::stats::LostReason::ALL.iter().map(|r| (r.label(), s.lost(*r))).collect(),
                backlog_events: backlog.events,
                backlog_bytes: backlog.bytes,
                oldest_age_seconds: backlog
                    .oldest_accepted_unix_ms
                    .map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0),
                deadletter_events: dead.events,
                deadletter_bytes: dead.bytes,
                batch_seconds_sum: s.batch_micros.load(Relaxed) as f64 / 1e6,
                // The count from the buckets read, not the counter: a batch
                // recorded between the two reads would make `_count` and
                // `le="+Inf"` disagree in one scrape.
                batches: buckets.iter().map(|(_, n)| n).sum(),
                batch_buckets: buckets,
            }
        })
        .collect()
}

/// `outputs` of `/v1/metrics`: per output, its counters and backlog; its
/// settings and the text of its last error (which can name files, hosts
/// and what a destination answered) only `with_key`: the document may be
/// public. Without a key the error says only that there is one, and when.
pub(crate) fn metrics_document(delivery: &Delivery, registry: &Registry, with_key: bool) -> Value {
    let mut views = views(delivery, registry);
    if !with_key {
        for v in &mut views {
            if let Some(o) = v.as_object_mut() {
                o.remove("settings");
            }
            if let Some(message) = v.pointer_mut("/counters/last_error/message") {
                *message = Value::from("withheld: details need an API key (GET /v1/outputs)");
            }
        }
    }
    Value::Array(views)
}
