//! Running a stage's shadow over the chunk the live module just ran on
//! (see `crate::shadow` for why it runs there).

use std::time::Instant;

use enrichd_engine::{Event, SourceText};

use super::{log_transition, Target, ThreadSlot, WasmEnricher};
use crate::shadow::Shadow;
use crate::stats::FailureKind;

impl WasmEnricher {
    /// Runs the shadow over the chunk the live module just ran on and
    /// compares its verdicts; applies nothing. `live` is how the live call
    /// ended (its verdicts are in `slot.live_verdicts` when it succeeded).
    pub(super) fn run_shadow(
        &self,
        shadow: &Shadow,
        source: SourceText<'_>,
        events: &[Event],
        slot: &mut ThreadSlot,
        live: Result<(), FailureKind>,
    ) {
        let started = Instant::now();
        let ticket = shadow.breaker.admit();
        let mut instance = shadow.instances.get_or(Default::default).borrow_mut();
        let result = if ticket.is_none() {
            Err(FailureKind::CircuitOpen)
        } else {
            let target = Target { name: &shadow.name, module: &shadow.module, stats: &shadow.stats };
            let ThreadSlot { records, shadow_scratch, shadow_verdicts, live_verdicts, .. } = slot;
            match self.call_guest(&target, source, events, records, &mut instance) {
                Err(kind) => Err(kind),
                Ok(out) => match self.results.check(events.len(), out, &shadow.module.texts, shadow_scratch) {
                    Err(kind) => Err(kind),
                    Ok(()) => {
                        self.results.verdicts(events.len(), out, &shadow.module.texts, shadow_scratch, shadow_verdicts);
                        if live.is_ok() {
                            if let Some(d) = shadow.summary.compare(live_verdicts, shadow_verdicts) {
                                let ev = &events[d.index];
                                let live_reasons = self.results.written_reasons(ev);
                                let s = shadow_verdicts[d.index];
                                let shadow_reasons =
                                    self.results.reasons(d.index, out, &shadow.module.texts, shadow_scratch);
                                shadow.summary.sample(
                                    ev,
                                    (live_verdicts[d.index].score, live_reasons),
                                    (s.score, shadow_reasons),
                                );
                            }
                        } else {
                            shadow.summary.not_compared(events.len(), true);
                        }
                        Ok(())
                    }
                },
            }
        };
        if let Some(ticket) = ticket {
            log_transition(&shadow.name, "shadow ", ticket.settle(result));
        }
        if let Err(kind) = result {
            if kind == FailureKind::MalformedResult {
                *instance = None;
            }
            shadow.failed(kind, events.len());
        }
        shadow.summary.add_time(started.elapsed());
    }
}
