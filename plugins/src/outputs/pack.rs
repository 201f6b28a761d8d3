//! Events packed into broker messages, shared by the outputs that publish
//! NDJSON messages (`nats`, `kafka`): the same events always make the
//! same messages with the same ids, so a destination (or its reader) can
//! drop a repeat. Why ranges of one input and not chunk numbers: see the
//! `nats` output's module docs.

use enrichd_engine::output::OutEvent;

/// Whether `next` may follow `last` in one message: consecutive events
/// (by backlog id) without an origin, or consecutive events of the same
/// input (a message id then names the range; see the module docs). A gap
/// (events settled in an earlier round) breaks the message either way, so
/// a retry packs the events left into the messages, and ids, they had.
fn continues(last: &OutEvent<'_>, next: &OutEvent<'_>) -> bool {
    match (last.origin, next.origin) {
        (None, None) => last.id.checked_add(1) == Some(next.id),
        (Some(a), Some(b)) => a.key == b.key && a.index.checked_add(1) == Some(b.index),
        _ => false,
    }
}

/// The events of `events` packed into messages of at most `limit` bytes
/// (NDJSON), in order: each message as the indices of its events. Events
/// larger than `limit` on their own are returned apart. A message holds one
/// input's consecutive events (or only events without an origin), packed
/// greedily from the first: the same events give the same messages.
pub(crate) fn pack(events: &[OutEvent<'_>], limit: usize) -> (Vec<Vec<usize>>, Vec<usize>) {
    let mut messages: Vec<Vec<usize>> = Vec::new();
    let mut too_large = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for (i, e) in events.iter().enumerate() {
        let len = e.json.len() + 1;
        if len > limit {
            too_large.push(i);
            continue;
        }
        let breaks = current.last().is_some_and(|&l: &usize| !continues(&events[l], e));
        if (size + len > limit || breaks) && !current.is_empty() {
            messages.push(std::mem::take(&mut current));
            size = 0;
        }
        current.push(i);
        size += len;
    }
    if !current.is_empty() {
        messages.push(current);
    }
    (messages, too_large)
}

/// The id of a message (`Nats-Msg-Id`, a Kafka message key) (the same events give the same id): from
/// the input's key and the events' index range when they have an origin
/// (see [`pack`]), else from the backlog's scope, the first and last event
/// ids and the count.
pub(crate) fn message_id(output: &str, scope: u64, events: &[OutEvent<'_>], indices: &[usize]) -> String {
    if let (Some(first), Some(last)) = (events[indices[0]].origin, events[indices[indices.len() - 1]].origin) {
        return format!("{output}:{}:{}-{}", first.key, first.index, last.index);
    }
    let first = events[indices[0]].id;
    let last = events[indices[indices.len() - 1]].id;
    format!("{scope:016x}-{first:x}-{last:x}-{}", indices.len())
}
