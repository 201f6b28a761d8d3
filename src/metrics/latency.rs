//! Request latency: quantiles over a recent window and cumulative buckets.
//!
//! Samples are microseconds in an HdrHistogram (2 significant digits: each
//! reported quantile is within 1% of the true sample value), so a p99 costs
//! a walk over a few thousand counters, never a sort of the samples. Ingest
//! threads record into their own histogram; the ticker adds those into
//! 5-second slots; quantiles merge the slots of the last minute. Results are
//! milliseconds as floats: a batch enriched in 40 µs reads 0.04, not 0.
//! Each slot's own p95 also makes one point of the dashboard's 5-minute
//! lag sparkline: slots still in the window are read directly, and a slot's
//! p95 is kept (one float) when the slot is reused, so five minutes of
//! history cost 60 floats rather than 60 histograms.
//!
//! [`Buckets`] are the fixed, cumulative buckets a Prometheus histogram
//! needs (quantiles cannot be aggregated across instances, buckets can).

use std::collections::VecDeque;

use hdrhistogram::Histogram;

/// Width of one slot of the window.
pub(crate) const SLOT_S: u64 = 5;
/// Slots in the window: the current one and the 11 before it, so the window
/// is the last 55-60 seconds.
const SLOTS: u64 = 12;
/// The window length reported as `window_s`.
pub(crate) const WINDOW_S: u64 = SLOT_S * SLOTS;
/// Longest latency told apart (an hour); longer ones count as this.
const MAX_US: u64 = 3_600_000_000;
/// Slots' p95 remembered after they leave the window: 5 minutes.
const HISTORY: usize = 60;

/// An empty histogram of microseconds.
pub(crate) fn histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, MAX_US, 2).expect("static bounds are valid")
}

/// Records one latency, in microseconds (sub-microsecond values count as 1).
pub(crate) fn record(h: &mut Histogram<u32>, elapsed: std::time::Duration) {
    h.saturating_record((elapsed.as_micros() as u64).clamp(1, MAX_US));
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Quantiles {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub samples: u64,
}

pub(crate) struct LatencyWindow {
    /// (slot number = second / SLOT_S, samples of that slot).
    slots: Vec<(u64, Histogram<u32>)>,
    /// (slot number, p95 in ms) of slots reused since, oldest first.
    history: VecDeque<(u64, f64)>,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow { slots: (0..SLOTS).map(|_| (u64::MAX, histogram())).collect(), history: VecDeque::new() }
    }
}

fn p95_ms(h: &Histogram<u32>) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(0.95) as f64 / 1000.0)
}

impl LatencyWindow {
    /// Adds samples recorded during `second`.
    pub(crate) fn add(&mut self, second: u64, samples: &Histogram<u32>) {
        let n = second / SLOT_S;
        let slot = &mut self.slots[(n % SLOTS) as usize];
        if slot.0 != n {
            if slot.0 != u64::MAX && slot.0 > n {
                return; // older than the window
            }
            if let Some(p95) = p95_ms(&slot.1).filter(|_| slot.0 != u64::MAX) {
                self.history.push_back((slot.0, p95));
                if self.history.len() > HISTORY {
                    self.history.pop_front();
                }
            }
            slot.1.reset();
            slot.0 = n;
        }
        // Only fails when a count would overflow u32 within 5 seconds.
        let _ = slot.1.add(samples);
    }

    /// Quantiles over the slots of the last minute as of `now_s`.
    pub(crate) fn quantiles(&self, now_s: u64) -> Quantiles {
        let current = now_s / SLOT_S;
        let mut merged = histogram();
        for (n, h) in &self.slots {
            if *n != u64::MAX && *n <= current && current - n < SLOTS {
                let _ = merged.add(h);
            }
        }
        if merged.is_empty() {
            return Quantiles::default();
        }
        let ms = |q: f64| merged.value_at_quantile(q) as f64 / 1000.0;
        Quantiles { p50_ms: ms(0.50), p95_ms: ms(0.95), p99_ms: ms(0.99), samples: merged.len() }
    }

    /// The p95 of each of the `points` slots up to the one holding `now_s`,
    /// oldest first: `None` for a slot without samples.
    pub(crate) fn p95_per_slot(&self, now_s: u64, points: u64) -> Vec<Option<f64>> {
        let current = now_s / SLOT_S;
        (0..points)
            .rev()
            .map(|i| {
                let n = current.checked_sub(i)?;
                match self.slots.iter().find(|(m, _)| *m == n) {
                    Some((_, h)) => p95_ms(h),
                    None => self.history.iter().find(|(m, _)| *m == n).map(|(_, p)| *p),
                }
            })
            .collect()
    }
}

/// Upper bounds (ms) of the Prometheus latency buckets: 50 µs to 10 s.
pub(crate) const BUCKET_BOUNDS_MS: [f64; 17] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

/// Fixed-bucket latency counts (per bucket, not yet cumulative) and sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Buckets {
    /// One count per bound, then the overflow (+Inf) bucket.
    counts: [u64; BUCKET_BOUNDS_MS.len() + 1],
    pub sum_ms: f64,
    pub count: u64,
}

impl Buckets {
    pub(crate) fn observe(&mut self, elapsed: std::time::Duration) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let i = BUCKET_BOUNDS_MS.partition_point(|b| *b < ms);
        self.counts[i] += 1;
        self.sum_ms += ms;
        self.count += 1;
    }

    pub(crate) fn add(&mut self, other: &Buckets) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum_ms += other.sum_ms;
        self.count += other.count;
    }

    /// (upper bound in seconds, count in this bucket alone) pairs, +Inf
    /// last: what the Prometheus encoder takes (it writes them cumulated).
    pub(crate) fn per_bucket_seconds(&self) -> Vec<(f64, u64)> {
        BUCKET_BOUNDS_MS.iter().map(|ms| ms / 1000.0).chain([f64::INFINITY]).zip(self.counts).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn quantiles_are_within_one_percent_and_sub_millisecond() {
        let mut h = histogram();
        // 1..=1000 µs, uniformly: p50 = 500 µs, p95 = 950 µs, p99 = 990 µs.
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let mut w = LatencyWindow::default();
        w.add(1000, &h);
        let q = w.quantiles(1000);
        assert_eq!(q.samples, 1000);
        for (got, want) in [(q.p50_ms, 0.5), (q.p95_ms, 0.95), (q.p99_ms, 0.99)] {
            assert!((got - want).abs() <= want * 0.01, "{got} vs {want}");
        }
        assert!(q.p50_ms > 0.0 && q.p50_ms < 1.0, "sub-millisecond values stay visible");
    }

    #[test]
    fn old_slots_leave_the_window() {
        let mut slow = histogram();
        record(&mut slow, Duration::from_millis(200));
        let mut fast = histogram();
        record(&mut fast, Duration::from_micros(30));
        let mut w = LatencyWindow::default();
        w.add(1000, &slow);
        w.add(1030, &fast);
        assert!((w.quantiles(1030).p99_ms - 200.0).abs() < 2.0);
        // A minute later the slow sample is out; the fast one is still in.
        let q = w.quantiles(1000 + WINDOW_S);
        assert_eq!(q.samples, 1);
        assert!((q.p99_ms - 0.03).abs() < 0.001);
        // And with no traffic at all, the window empties.
        assert_eq!(w.quantiles(1030 + WINDOW_S + SLOT_S), Quantiles::default());
        // A slot reused for a new period forgets the old period's samples.
        w.add(1000 + WINDOW_S, &fast);
        assert_eq!(w.quantiles(1000 + WINDOW_S).samples, 2);
    }

    #[test]
    fn each_slot_keeps_its_p95_after_leaving_the_window() {
        let at = |ms: u64| {
            let mut h = histogram();
            record(&mut h, Duration::from_millis(ms));
            h
        };
        let mut w = LatencyWindow::default();
        // Slots 200, 201 and (after a gap) 203; then 20 slots later, long
        // after all three were reused.
        w.add(1000, &at(10));
        w.add(1005, &at(20));
        w.add(1017, &at(40));
        let near = w.p95_per_slot(1019, 5);
        let near: Vec<_> = near.into_iter().map(|p| p.map(|v| v.round())).collect();
        assert_eq!(near, [None, Some(10.0), Some(20.0), None, Some(40.0)]);
        for s in (1020..1120).step_by(5) {
            w.add(s, &at(1));
        }
        let far = w.p95_per_slot(1119, 24);
        assert_eq!(far.len(), 24);
        assert_eq!(far[0].map(f64::round), Some(10.0), "slot 200, reused since, is remembered");
        assert_eq!((far[1].map(f64::round), far[2], far[3].map(f64::round)), (Some(20.0), None, Some(40.0)));
        assert!(far[4..].iter().all(|p| p.is_some_and(|v| (v - 1.0).abs() < 0.02)), "{far:?}");
        // Bounded: only the last HISTORY reused slots are remembered.
        for s in (1120..1120 + 5 * 200).step_by(5) {
            w.add(s, &at(1));
        }
        assert!(w.history.len() <= HISTORY);
        assert_eq!(w.p95_per_slot(u64::MAX / 2, 3), [None, None, None]);
    }

    #[test]
    fn buckets_split_at_their_bounds_with_inf_last() {
        let mut b = Buckets::default();
        for us in [20, 60, 60, 900, 3_000, 20_000_000] {
            b.observe(Duration::from_micros(us));
        }
        let c = b.per_bucket_seconds();
        assert_eq!(c.len(), BUCKET_BOUNDS_MS.len() + 1);
        assert_eq!(c[0], (0.00005, 1));
        assert_eq!(c[1], (0.0001, 2));
        assert_eq!(c[4], (0.001, 1));
        assert_eq!(c[6], (0.005, 1));
        assert_eq!(*c.last().unwrap(), (f64::INFINITY, 1));
        assert_eq!(c.iter().map(|(_, n)| n).sum::<u64>(), 6);
        assert_eq!(b.count, 6);
        assert!((b.sum_ms - 20_004.04).abs() < 1e-6);
        let mut twice = b.clone();
        twice.add(&b);
        assert_eq!(twice.per_bucket_seconds()[1].1, 4);
        assert_eq!(twice.count, 12);
    }
}
