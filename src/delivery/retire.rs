//! A lane replaced by a change of durability, handed over to its
//! successor.
//!
//! A change of durability is allowed only while the output's backlog is
//! empty, but ingest goes on appending to the lanes it last saw until the
//! new set is live: the sinks are built in between, and the old worker is
//! stopped. What a batch appended to the old lane in that window would be
//! left behind: the registry names the new lane, so nothing would deliver
//! it, dead-letter it at shutdown or count it (events accepted with a 2xx,
//! then lost in silence). Once the new set is live and the old worker has
//! stopped, [`hand_over`] moves those entries to the new lane, with their
//! acceptance times and origin keys; what the new lane cannot take goes to
//! the dead-letter, as at a shutdown. A batch whose append began on the
//! old set's snapshot and ends after the hand-over can still be left
//! behind: the window shrinks from the whole change to one append.
//! An entry the old worker delivered part of before it stopped is moved
//! whole: those events may arrive twice (at least once).

use super::{dead_letter_entries, Lane};

/// Moves what is left in `old`'s backlog to `new`'s (see the module docs);
/// what `new` cannot take goes to `old`'s dead-letter. Blocking (a spool
/// append fsyncs).
pub(super) fn hand_over(old: &Lane, new: &Lane) {
    let first = old.backlog.first_unacked();
    let entries = match old.backlog.read(first, u64::MAX, u64::MAX) {
        Ok(entries) => entries,
        Err(e) => {
            new.error(format!("reading the backlog left by the change of durability: {e:#}"));
            return;
        }
    };
    let mut moved = 0u64;
    let mut taken = 0;
    for entry in &entries {
        if let Err(e) =
            new.backlog.append(&entry.payload, entry.events, entry.accepted_unix_ms, entry.origin.as_deref())
        {
            new.error(format!("moving events queued during the change of durability: {e}"));
            break;
        }
        let _ = old.backlog.ack_through(entry.seq);
        moved += u64::from(entry.events);
        taken += 1;
    }
    if moved > 0 {
        tracing::info!(output = %new.name, events = moved, "events queued during the change of durability moved to the new backlog");
        new.wake.notify_one();
    }
    // What could not be moved.
    dead_letter_entries(old, &entries[taken..], "change of durability");
}
