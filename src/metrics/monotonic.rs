//! Counters that stay counters across a stage's generations.
//!
//! Some totals a plugin reports belong to what it runs now: a WASM stage's
//! errors are its module's (a promoted module starts from 0), a shadow's
//! comparisons are that shadow's. Exposed as they are under the stage's
//! name, such a counter would go backwards at a rollout, and a scrape that
//! found the new total already past the old one would hide the reset from
//! Prometheus (`increase()` then under-counts). So each exposed counter
//! keeps what it had counted before its source last dropped, and adds it.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub(crate) struct Monotonic(Mutex<HashMap<String, (f64, f64)>>);

impl Monotonic {
    /// The exposed value of the counter `key` whose source reads `raw` now:
    /// `raw` plus every total it had reached before a drop.
    pub(crate) fn value(&self, key: String, raw: f64) -> f64 {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (last, carried) = seen.entry(key).or_insert((raw, 0.0));
        if raw < *last {
            *carried += *last;
        }
        *last = raw;
        raw + *carried
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_that_starts_again_continues_the_counter() {
        let m = Monotonic::default();
        let v = |raw: f64| m.value("errors/risk".into(), raw);
        assert_eq!([v(0.0), v(5.0), v(7.0)], [0.0, 5.0, 7.0]);
        // A new module counts from 0 again: 7 carried.
        assert_eq!([v(2.0), v(9.0)], [9.0, 16.0]);
        assert_eq!([v(1.0), v(1.0)], [17.0, 17.0]);
        assert_eq!(m.value("errors/other".into(), 3.0), 3.0, "each counter its own");
    }
}
