//! What a source's dead-letter keeps of a message refused as bad input.
//!
//! Why it looks like this:
//! - **The whole message, byte for byte.** A team inspects a refused
//!   message to see why it was refused and replays it once the producer
//!   (or enrichd) is fixed; a prefix can do neither. A body that is UTF-8
//!   is kept as a JSON string under `body` (readable with `jq`); any other
//!   (a gzip body, a stray byte) is kept as standard base64 under
//!   `body_base64`, since a lossy conversion would change the bytes.
//!   `body_bytes` is the body's length either way.
//! - **The bound is the dead-letter's, not a per-message cut.** The file
//!   stays within `deadletter_max_bytes`, the oldest records rotated out
//!   and counted as lost (`deadletter_evicted`). A single message whose
//!   record would not fit the whole bound cannot be kept at all: it is
//!   counted as lost `deadletter_too_large`, and only then is an excerpt
//!   (its first [`EXCERPT_BYTES`]) kept, in the source's `last_error` and
//!   the log, with its origin and reason. Not as a record in the file: a
//!   record there is a message kept whole, so `dead_lettered` = records
//!   kept + `deadletter_evicted`; an excerpt record rotated out later
//!   would count that message as lost a second time.

use std::sync::atomic::Ordering::Relaxed;

use base64::Engine as _;
use enrichd_engine::source::DeadMessage;
use serde_json::{json, Value};

use super::SourceLane;
use crate::delivery::deadletter::DeadRecord;

/// Bytes of a message too large for its dead-letter kept as an excerpt
/// (what the engine quotes of any input in an error message).
const EXCERPT_BYTES: usize = enrichd_engine::limits::EXCERPT_BYTES;

/// Bytes a dead-letter line adds around the event and the texts (its keys,
/// `attempts` and `unix_ms`: 74 at most), rounded up so a record judged to
/// fit is never refused by the dead-letter's own check.
const LINE_OVERHEAD: usize = 96;

/// Writes `message` whole to the lane's dead-letter, or counts it as lost
/// with its reason. The source settles the message for good whatever
/// happens here (it is bad input: redelivering it would only fail again),
/// so a record that does not make it, or pushes older ones out, is counted
/// as lost.
pub(super) fn record(lane: &SourceLane, message: DeadMessage<'_>) {
    // The record is at least as long as the body: a body past the bound is
    // not encoded first (a broker's message can be many megabytes).
    if message.body.len() as u64 > lane.deadletter_max_bytes {
        too_large(lane, &message);
        return;
    }
    let event = event(message.origin, message.body).to_string();
    let line = event.len() + json_len(message.reason) + json_len(&lane.name) + LINE_OVERHEAD;
    if line as u64 > lane.deadletter_max_bytes {
        too_large(lane, &message);
        return;
    }
    let record =
        DeadRecord { event: event.as_bytes(), error: message.reason, attempts: 1, unix_ms: crate::delivery::unix_ms() };
    match lane.deadletter.append(&[record]) {
        Ok(evicted) => {
            lane.dead_lettered.fetch_add(1, Relaxed);
            lane.lost_deadletter_evicted.fetch_add(evicted, Relaxed);
        }
        Err(e) => {
            lane.lost_deadletter_failed.fetch_add(1, Relaxed);
            lane.lost_deadletter_evicted.fetch_add(e.evicted, Relaxed);
            lane.stats.set_error(&lane.name, format!("writing the dead-letter: {e:#}"));
        }
    }
}

/// The record's event: where the message came from and its whole body.
fn event(origin: &Value, body: &[u8]) -> Value {
    match std::str::from_utf8(body) {
        Ok(text) => json!({ "origin": origin, "body": text, "body_bytes": body.len() }),
        Err(_) => {
            json!({ "origin": origin, "body_base64": base64::engine::general_purpose::STANDARD.encode(body), "body_bytes": body.len() })
        }
    }
}

/// A message whose record alone would exceed the whole dead-letter: lost,
/// said so with an excerpt (see the module docs). The excerpt comes before
/// the reason: `last_error` is capped at 1 KiB, and the reason can be long.
fn too_large(lane: &SourceLane, message: &DeadMessage<'_>) {
    lane.lost_deadletter_too_large.fetch_add(1, Relaxed);
    let text = format!(
        "a message of {} bytes refused as bad input is larger than the source's whole dead-letter \
         (deadletter_max_bytes = {}): counted as lost (deadletter_too_large), not kept; it begins {}; from {}; \
         refused as: {}",
        message.body.len(),
        lane.deadletter_max_bytes,
        enrichd_engine::limits::quote(&String::from_utf8_lossy(excerpt(message.body))),
        message.origin,
        message.reason,
    );
    // `set_error` logs it too.
    lane.stats.set_error(&lane.name, text);
}

/// The start of `body` quoted for a too-large message (a little more than
/// [`enrichd_engine::limits::quote`] shows, so it can mark the cut).
fn excerpt(body: &[u8]) -> &[u8] {
    &body[..body.len().min(EXCERPT_BYTES + 4)]
}

/// Length of `text` as a JSON string.
fn json_len(text: &str) -> usize {
    serde_json::to_string(text).map_or(text.len() * 6 + 2, |s| s.len())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use base64::Engine as _;
    use enrichd_engine::source::SourceStats;

    use super::*;
    use crate::delivery::deadletter::DeadLetter;

    fn lane(dir: &std::path::Path, max: u64) -> SourceLane {
        SourceLane {
            name: "feed".into(),
            stats: SourceStats::default(),
            deadletter: DeadLetter::open(&dir.join("feed"), "feed", max).unwrap(),
            deadletter_max_bytes: max,
            dead_lettered: AtomicU64::new(0),
            lost_deadletter_failed: AtomicU64::new(0),
            lost_deadletter_evicted: AtomicU64::new(0),
            lost_deadletter_too_large: AtomicU64::new(0),
        }
    }

    fn dead<'a>(origin: &'a Value, body: &'a [u8]) -> DeadMessage<'a> {
        DeadMessage { origin, reason: "invalid_json: expected value at line 1 column 1", body }
    }

    /// A refused message longer than the 4 KiB the dead-letter used to keep
    /// comes back whole: a UTF-8 body as text (quotes, line breaks and
    /// non-ASCII included), any other body as base64 of the same bytes.
    #[test]
    fn a_dead_lettered_message_is_kept_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let lane = lane(dir.path(), 1 << 20);
        let origin = json!({"subject": "raw.zeek", "stream_seq": 7});
        let text: String = (0..2000).map(|i| format!("\"{i}\"\té\n")).collect();
        assert!(text.len() > 3 * 4096);
        let mut binary = vec![0x1f, 0x8b, 0xff, 0x00];
        binary.extend((0..20_000u32).map(|i| (i * 7 % 251) as u8));
        record(&lane, dead(&origin, text.as_bytes()));
        record(&lane, dead(&origin, &binary));
        let (total, records) = lane.deadletter.list(0, 10).unwrap();
        assert_eq!(total, 2);
        assert_eq!(records[0]["event"]["body"].as_str(), Some(text.as_str()));
        assert_eq!(records[0]["event"]["body_bytes"], text.len());
        assert_eq!(records[0]["event"]["origin"], origin);
        let encoded = records[1]["event"]["body_base64"].as_str().unwrap();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap(), binary);
        assert_eq!(records[1]["event"]["body_bytes"], binary.len());
        assert!(records[1]["event"].get("body").is_none());
        assert_eq!(lane.dead_lettered.load(Relaxed), 2);
        assert_eq!(lane.lost_deadletter_too_large.load(Relaxed), 0);
    }

    /// A message larger than the whole bound is not written (it would push
    /// everything else out and still not fit): counted as lost with its
    /// reason, an excerpt in `last_error`; the records kept stay.
    #[test]
    fn a_message_larger_than_the_whole_dead_letter_is_counted_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let lane = lane(dir.path(), 8192);
        let origin = json!({"topic": "raw", "partition": 0, "offset": 3});
        record(&lane, dead(&origin, b"small and bad"));
        let big = format!("BEGIN{}", "x".repeat(9000));
        record(&lane, dead(&origin, big.as_bytes()));
        assert_eq!(lane.dead_lettered.load(Relaxed), 1);
        assert_eq!(lane.lost_deadletter_too_large.load(Relaxed), 1);
        assert_eq!(lane.lost_deadletter_evicted.load(Relaxed), 0, "nothing pushed out for it");
        let (total, records) = lane.deadletter.list(0, 10).unwrap();
        assert_eq!((total, records[0]["event"]["body"].as_str()), (1, Some("small and bad")));
        let error = lane.stats.last_error().unwrap();
        assert!(error.contains("deadletter_too_large") && error.contains("\"offset\":3"), "{error}");
        assert!(error.contains("BEGINxxx") && error.len() < 1000, "{error}");
        // Just within the bound: kept whole.
        let fits = "y".repeat(8192 - 400);
        record(&lane, dead(&origin, fits.as_bytes()));
        assert_eq!(lane.dead_lettered.load(Relaxed), 2);
        let (_, records) = lane.deadletter.list(0, 10).unwrap();
        assert_eq!(records.last().unwrap()["event"]["body"].as_str(), Some(fits.as_str()));
    }
}
