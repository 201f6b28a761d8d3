//! Per-second tallies over the last 15 minutes, and the rates and chart
//! series read from them.
//!
//! One ring of one-second slots, aligned to wall-clock seconds, serves every
//! view: `eps` (10 s), the one-minute rates, the 5-second buckets of the
//! 5-minute charts and the 15-second buckets of the 15-minute chart. Reading
//! first advances the ring to "now", clearing the slots of seconds without
//! traffic, so windows roll (to flat zeros) even when nothing arrives.
//!
//! Rates divide by the time the window actually covers: the elapsed part of
//! the current second, and never more than the process has been up. A rate
//! is therefore right from the first second instead of diluted by a minute
//! of history that does not exist. The divisor is floored at one second so
//! the first few milliseconds do not produce absurd spikes.

/// Seconds held: 15 minutes plus room for bucket alignment.
pub(crate) const RING_SECONDS: u64 = 15 * 60 + 60;

/// What one second (or a sum of seconds) saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub events: u64,
    pub batches: u64,
    /// Threat-intel indicator matches.
    pub threats: u64,
    /// Sum and number of risk scores (events a rule scored).
    pub risk_sum: u64,
    pub risk_count: u64,
    /// HTTP requests answered (from the request counters, attributed to
    /// the second the ticker saw them: not per batch).
    pub requests: u64,
}

impl Tally {
    pub(crate) fn add(&mut self, other: &Tally) {
        self.events += other.events;
        self.batches += other.batches;
        self.threats += other.threats;
        self.risk_sum += other.risk_sum;
        self.risk_count += other.risk_count;
        self.requests += other.requests;
    }
}

pub(crate) struct SecondRing {
    slots: Box<[Tally]>,
    /// The newest second the ring holds (slots of later seconds are stale).
    newest: u64,
}

impl SecondRing {
    pub(crate) fn new(now_s: u64) -> Self {
        SecondRing { slots: vec![Tally::default(); RING_SECONDS as usize].into(), newest: now_s }
    }

    fn slot(&self, second: u64) -> usize {
        (second % RING_SECONDS) as usize
    }

    /// Moves the ring to `now_s`, clearing the seconds in between. A clock
    /// that went backwards moves nothing.
    pub(crate) fn advance(&mut self, now_s: u64) {
        if now_s <= self.newest {
            return;
        }
        if now_s - self.newest >= RING_SECONDS {
            self.slots.fill(Tally::default());
        } else {
            for s in self.newest + 1..=now_s {
                let i = self.slot(s);
                self.slots[i] = Tally::default();
            }
        }
        self.newest = now_s;
    }

    /// Adds what happened during `second`; older than the ring holds is dropped.
    pub(crate) fn add(&mut self, second: u64, tally: &Tally) {
        self.advance(second);
        if self.newest - second < RING_SECONDS {
            let i = self.slot(second);
            self.slots[i].add(tally);
        }
    }

    /// Sum over the seconds `from..=to`, clipped to what the ring holds.
    pub(crate) fn sum(&self, from: u64, to: u64) -> Tally {
        let mut total = Tally::default();
        let oldest = self.newest.saturating_sub(RING_SECONDS - 1);
        for s in from.max(oldest)..=to.min(self.newest) {
            total.add(&self.slots[self.slot(s)]);
        }
        total
    }
}

/// A time span of the ring: its tally and how many seconds of it the
/// process was up to see (0 for a bucket entirely before start).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Span {
    pub start_ms: u64,
    pub tally: Tally,
    pub covered_s: f64,
}

impl Span {
    /// `value` per second over the covered time (divisor floored at 1 s).
    pub(crate) fn per_second(&self, value: u64) -> f64 {
        if self.covered_s <= 0.0 {
            0.0
        } else {
            value as f64 / self.covered_s.max(1.0)
        }
    }
}

/// Read access to the ring as of `now_ms`, for a process up since `started_ms`.
pub(crate) struct View<'a> {
    pub ring: &'a SecondRing,
    pub now_ms: u64,
    pub started_ms: u64,
}

impl View<'_> {
    fn span(&self, start_ms: u64, end_ms: u64) -> Span {
        let from = start_ms / 1000;
        let to = (end_ms.saturating_sub(1) / 1000).max(from);
        let seen_from = start_ms.max(self.started_ms);
        let seen_to = end_ms.min(self.now_ms);
        let covered_s = seen_to.saturating_sub(seen_from) as f64 / 1000.0;
        Span { start_ms, tally: self.ring.sum(from, to), covered_s }
    }

    /// The last `seconds` seconds, the current (partial) second included.
    pub(crate) fn last(&self, seconds: u64) -> Span {
        let now_s = self.now_ms / 1000;
        let from = (now_s + 1).saturating_sub(seconds);
        // `now + 1`: the current second is in, whatever its millisecond.
        self.span(from * 1000, (self.now_ms + 1).max(from * 1000))
    }

    /// `points` buckets of `bucket_s` seconds aligned to the wall clock, the
    /// last one being the current, partial bucket. Oldest first.
    pub(crate) fn series(&self, bucket_s: u64, points: u64) -> Vec<Span> {
        let now_s = self.now_ms / 1000;
        let current = now_s - now_s % bucket_s;
        (0..points)
            .rev()
            .map(|i| {
                let start = current.saturating_sub(i * bucket_s) * 1000;
                self.span(start, start + bucket_s * 1000)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: u64) -> Tally {
        Tally { events: n, batches: 1, ..Tally::default() }
    }

    const T0: u64 = 1_700_000_000_000; // a round second

    #[test]
    fn rate_is_right_from_the_first_second() {
        let mut ring = SecondRing::new(T0 / 1000);
        ring.add(T0 / 1000, &events(100));
        ring.add(T0 / 1000 + 1, &events(100));
        // 2.5 s after start, 200 events: 80/s, not 200/60.
        let view = View { ring: &ring, now_ms: T0 + 2500, started_ms: T0 };
        let minute = view.last(60);
        assert_eq!(minute.tally.events, 200);
        assert!((minute.per_second(minute.tally.events) - 80.0).abs() < 1e-9);
        assert!((minute.per_second(minute.tally.batches) * 60.0 - 48.0).abs() < 1e-9);
    }

    #[test]
    fn windows_roll_to_zero_without_traffic() {
        let mut ring = SecondRing::new(T0 / 1000);
        ring.add(T0 / 1000, &events(500));
        let view = View { ring: &ring, now_ms: T0 + 30_000, started_ms: T0 };
        assert_eq!(view.last(60).tally.events, 500);
        assert_eq!(view.last(10).tally.events, 0);
        // 70 s later, nothing arrived: the ring is advanced by the reader.
        ring.advance((T0 + 70_000) / 1000);
        let view = View { ring: &ring, now_ms: T0 + 70_000, started_ms: T0 };
        assert_eq!(view.last(60).tally.events, 0);
        assert!(view.series(5, 60).iter().skip(1).all(|b| b.tally.events == 0 || b.start_ms == T0));
        // Far beyond the ring: everything cleared, nothing stale comes back.
        ring.advance((T0 + 10 * RING_SECONDS * 1000) / 1000);
        assert_eq!(ring.sum(0, u64::MAX / 2).events, 0);
    }

    #[test]
    fn a_stale_slot_is_cleared_not_reused() {
        let mut ring = SecondRing::new(T0 / 1000);
        ring.add(T0 / 1000, &events(7));
        // Exactly one ring length later the same slot index comes round.
        ring.add(T0 / 1000 + RING_SECONDS, &events(1));
        assert_eq!(ring.sum(0, u64::MAX / 2).events, 1);
    }

    #[test]
    fn series_buckets_are_aligned_and_complete() {
        let mut ring = SecondRing::new(T0 / 1000);
        let now_ms = T0 + 12_345;
        for s in 0..=12 {
            ring.add(T0 / 1000 + s, &events(10));
        }
        let view = View { ring: &ring, now_ms, started_ms: T0 };
        let series = view.series(5, 60);
        assert_eq!(series.len(), 60);
        let last = series.last().unwrap();
        assert_eq!(last.start_ms, T0 + 10_000, "current partial bucket is the last point");
        assert_eq!(last.tally.events, 30, "seconds 10, 11, 12");
        assert!((last.covered_s - 2.345).abs() < 1e-9);
        assert!(series.windows(2).all(|w| w[1].start_ms - w[0].start_ms == 5000));
        assert!(series.iter().all(|b| b.start_ms % 5000 == 0));
        // Buckets before the process started saw nothing and say so.
        assert_eq!(series[0].covered_s, 0.0);
        assert_eq!(series[0].per_second(series[0].tally.events), 0.0);
        assert_eq!(series[57].tally.events, 50);
        assert!((series[57].per_second(series[57].tally.events) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn late_samples_land_in_their_second() {
        let mut ring = SecondRing::new(T0 / 1000);
        ring.add(T0 / 1000 + 5, &events(1));
        ring.add(T0 / 1000 + 3, &events(2));
        assert_eq!(ring.sum(T0 / 1000 + 3, T0 / 1000 + 3).events, 2);
        // Older than the ring: dropped, not misfiled.
        ring.add(T0 / 1000 + 5 - RING_SECONDS, &events(9));
        assert_eq!(ring.sum(0, u64::MAX / 2).events, 3);
    }
}
