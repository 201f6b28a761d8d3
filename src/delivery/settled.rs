//! Events of unacknowledged backlog entries that an interrupted round (a
//! stop, a reconfiguration) had already delivered or dead-lettered.
//!
//! Why: a round is acknowledged only whole, so the next worker sends an
//! interrupted round again. Without this record its settled events would
//! be sent and counted twice (`sent`, `dead_lettered`, the dead-letter
//! itself), and a memory queue's shutdown would dead-letter events already
//! delivered. Written only when a round is interrupted; otherwise it is
//! empty and asking it costs one relaxed load. In memory only: after a
//! restart a spool's entries go again whole (at least once, as
//! documented).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Default)]
pub(crate) struct Settled {
    any: AtomicBool,
    /// `(entry seq, event index)`.
    positions: Mutex<HashSet<(u64, u32)>>,
}

impl Settled {
    fn positions(&self) -> std::sync::MutexGuard<'_, HashSet<(u64, u32)>> {
        self.positions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records settled events of an interrupted round.
    pub(crate) fn record(&self, settled: impl IntoIterator<Item = (u64, u32)>) {
        let mut positions = self.positions();
        positions.extend(settled);
        self.any.store(!positions.is_empty(), Relaxed);
    }

    /// The recorded positions, or `None` when there are none (the usual
    /// case, without taking the lock).
    pub(crate) fn snapshot(&self) -> Option<HashSet<(u64, u32)>> {
        if !self.any.load(Relaxed) {
            return None;
        }
        let positions = self.positions();
        (!positions.is_empty()).then(|| positions.clone())
    }

    /// Entries up to `seq` are acknowledged: their positions are no longer
    /// needed.
    pub(crate) fn forget_through(&self, seq: u64) {
        if !self.any.load(Relaxed) {
            return;
        }
        let mut positions = self.positions();
        positions.retain(|&(s, _)| s > seq);
        self.any.store(!positions.is_empty(), Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_until_acknowledged() {
        let settled = Settled::default();
        assert!(settled.snapshot().is_none());
        settled.record([(3, 0), (3, 2), (5, 1)]);
        let snapshot = settled.snapshot().unwrap();
        assert!(snapshot.contains(&(3, 2)) && !snapshot.contains(&(3, 1)));
        settled.forget_through(3);
        assert_eq!(settled.snapshot().unwrap(), HashSet::from([(5, 1)]));
        settled.forget_through(5);
        assert!(settled.snapshot().is_none());
    }
}
