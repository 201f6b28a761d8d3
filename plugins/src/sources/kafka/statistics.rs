//! The little of librdkafka's statistics the `kafka` source reads: its
//! backlog (the lag of the partitions this member fetches), reported by
//! `GroupContext::stats_raw` every [`STATISTICS_INTERVAL_MS`].

/// How often librdkafka reports statistics (the backlog's freshness).
pub(super) const STATISTICS_INTERVAL_MS: &str = "1000";

/// The little of librdkafka's statistics (`STATISTICS.md`) the backlog
/// needs; read by hand rather than into rdkafka's full `Statistics`, whose
/// every field must match the library's version.
#[derive(serde::Deserialize)]
pub(super) struct GroupStatistics {
    #[serde(default)]
    topics: std::collections::HashMap<String, TopicStatistics>,
    cgrp: Option<GroupState>,
}

#[derive(serde::Deserialize)]
struct TopicStatistics {
    #[serde(default)]
    partitions: std::collections::HashMap<String, PartitionStatistics>,
}

#[derive(serde::Deserialize)]
struct PartitionStatistics {
    partition: i32,
    /// High watermark minus the group's committed offset; -1 when unknown
    /// (nothing committed yet).
    #[serde(default = "unknown_lag")]
    consumer_lag: i64,
    /// High watermark minus the offset stored for the next commit.
    #[serde(default = "unknown_lag")]
    consumer_lag_stored: i64,
    /// `active` while this member fetches the partition. librdkafka keeps
    /// a revoked partition's last lag, so only these count.
    #[serde(default)]
    fetch_state: String,
}

fn unknown_lag() -> i64 {
    -1
}

#[derive(serde::Deserialize)]
struct GroupState {
    /// `up` once the coordinator answers.
    #[serde(default)]
    state: String,
    #[serde(default)]
    assignment_size: i64,
}

impl GroupStatistics {
    /// Messages waiting in this member's partitions: `Some(0)` with no
    /// partition assigned, `None` before the group answers or while no
    /// assigned partition's lag is known yet.
    pub(super) fn backlog(&self) -> Option<u64> {
        let group = self.cgrp.as_ref().filter(|g| g.state == "up")?;
        let lags = self.topics.values().flat_map(|t| t.partitions.values());
        // Partition -1 is librdkafka's internal "unassigned" one.
        // A group that has committed nothing yet has no `consumer_lag`:
        // the lag behind what is stored for the next commit stands in.
        let lag = |p: &PartitionStatistics| {
            Some(p.consumer_lag).filter(|l| *l >= 0).or(Some(p.consumer_lag_stored).filter(|l| *l >= 0))
        };
        let held = lags.filter(|p| p.partition >= 0 && p.fetch_state == "active");
        let known = held.filter_map(lag).map(|l| l as u64);
        let (count, sum) = known.fold((0, 0u64), |(n, sum), lag| (n + 1, sum.saturating_add(lag)));
        match group.assignment_size {
            0 => Some(0),
            _ if count == 0 => None,
            _ => Some(sum),
        }
    }
}
