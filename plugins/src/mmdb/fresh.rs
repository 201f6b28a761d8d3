//! How old a database may get: the staleness policy of the `geoip` and
//! `asn` stages (`max_age_days`, `stale`).
//!
//! Age is measured from the database's own build time (the metadata's
//! `build_epoch`), not the file's modification time: a copy made today of
//! a year-old database is a year old. A database becomes stale while it is
//! live (nothing is rebuilt at the moment it turns 31 days old), so the
//! check is made when it matters: once per batch (one clock read) and
//! whenever the status is read.
//!
//! Why off by default (`max_age_days = 0`): a default that turned every
//! hand-managed or monthly-published database (DB-IP Lite is monthly)
//! degraded on upgrade would be a surprise. The example configuration and
//! the README recommend `max_age_days = 30`, the age at which Elastic's
//! GeoIP processor stops using a database it could not update; `stale =
//! "stop"` is that rule, `warn` and `tag` milder ones.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use schemars::JsonSchema;
use serde::Deserialize;

/// What a stage does once its database is older than `max_age_days`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StalePolicy {
    /// Keep enriching; the stage reports itself degraded (`error` in
    /// `/v1/enrichers`, health `degraded`) and logs a warning once.
    #[default]
    Warn,
    /// As `warn`, and every event the stage enriches also gets a warning in
    /// its `_warnings` saying the database is stale.
    Tag,
    /// Stop enriching: every target is written `null`, lookups answer
    /// `null`, and the stage reports state `error` with the reason, until a
    /// newer database is loaded.
    Stop,
}

/// The policy of one stage, from its options.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Freshness {
    /// 0: never stale.
    pub max_age_days: u32,
    pub policy: StalePolicy,
}

/// The policy applied to one loaded database.
pub(super) struct Staleness {
    /// Unix second from which the database is stale (`None`: never).
    stale_from: Option<u64>,
    built_at: u64,
    max_age_days: u32,
    pub(super) policy: StalePolicy,
    /// The warning was logged (once per loaded database).
    logged: AtomicBool,
}

impl Staleness {
    pub(super) fn new(freshness: Freshness, built_at: Option<u64>) -> Self {
        let stale_from = match (freshness.max_age_days, built_at) {
            (0, _) | (_, None) => None,
            (days, Some(at)) => Some(at.saturating_add(u64::from(days) * 86_400)),
        };
        Staleness {
            stale_from,
            built_at: built_at.unwrap_or(0),
            max_age_days: freshness.max_age_days,
            policy: freshness.policy,
            logged: AtomicBool::new(false),
        }
    }

    /// The database's age in whole days when it is stale now.
    pub(super) fn stale_days(&self) -> Option<u64> {
        let from = self.stale_from?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        (now >= from).then(|| now.saturating_sub(self.built_at) / 86_400)
    }

    /// Why the database counts as stale, for the status and the log.
    pub(super) fn reason(&self, label: &str, days: u64) -> String {
        format!(
            "{label} database built {} is {days} days old, over max_age_days = {}",
            super::utc_date(self.built_at),
            self.max_age_days
        )
    }

    /// Logs the reason the first time it is seen for this database.
    pub(super) fn log_once(&self, kind: &str, reason: impl FnOnce() -> String) {
        if !self.logged.swap(true, Relaxed) {
            tracing::warn!(plugin = kind, policy = ?self.policy, "{}", reason());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_from_build_time_plus_days() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let f = |days| Freshness { max_age_days: days, policy: StalePolicy::Warn };
        assert_eq!(Staleness::new(f(0), Some(0)).stale_days(), None, "0 is off");
        assert_eq!(Staleness::new(f(30), None).stale_days(), None, "no build time, no age");
        assert_eq!(Staleness::new(f(30), Some(now - 29 * 86_400)).stale_days(), None);
        assert_eq!(Staleness::new(f(30), Some(now - 31 * 86_400)).stale_days(), Some(31));
        assert_eq!(Staleness::new(f(u32::MAX), Some(u64::MAX)).stale_days(), None, "no overflow");
        let s = Staleness::new(f(30), Some(1_517_961_600));
        let days = s.stale_days().unwrap();
        assert!(s.reason("GeoIP", days).contains("built 2018-02-07"), "{}", s.reason("GeoIP", days));
    }
}
