//! Options of a `kafka` source, and the checks serde cannot express.

use enrichd_engine::output::FieldError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::kafka::{good_topic, KafkaConnection, Role};

/// Where a group with no committed offset for a partition starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// The oldest message the broker still holds: nothing already in the
    /// topic is skipped.
    #[default]
    Earliest,
    /// Only messages produced after the group first joined.
    Latest,
}

/// `[[source]] type = "kafka"`: a member of a Kafka consumer group. Each
/// message body is a `/v1/ingest` envelope or NDJSON records (optionally
/// gzip); a message's offset is committed only once its enriched events
/// are accepted by every enabled output.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSourceOptions {
    #[serde(flatten)]
    pub connection: KafkaConnection,
    /// The topics to consume (they must exist). Required.
    pub topics: Vec<String>,
    /// The consumer group (default `enrichd`): instances with the same
    /// group share the topics' partitions, each message going to one of
    /// them.
    pub group_id: String,
    /// Where a partition without a committed offset starts: `earliest`
    /// (default) or `latest`.
    pub start_at: StartAt,
    /// Milliseconds between offset commits (default 1000; 0: after every
    /// message). Only offsets of settled messages are ever committed, so
    /// a longer interval means more messages processed twice after a
    /// crash, never a message lost. Offsets are also committed when the
    /// source stops and before a rebalance takes partitions away.
    pub commit_interval_ms: u64,
    /// The record format of bodies that say nothing about themselves
    /// (`zeek.conn.v1`, `flows.v1`): they are then NDJSON records of it.
    /// Default: such bodies are `/v1/ingest` envelopes. A message's
    /// `Enrichd-Format` header (`envelope` or a record format) or its
    /// `Content-Type` (`application/json`: envelope,
    /// `application/x-ndjson`: records) wins over this.
    pub format: Option<String>,
}

impl Default for KafkaSourceOptions {
    fn default() -> Self {
        KafkaSourceOptions {
            connection: KafkaConnection::default(),
            topics: Vec::new(),
            group_id: "enrichd".into(),
            start_at: StartAt::Earliest,
            commit_interval_ms: 1000,
            format: None,
        }
    }
}

impl KafkaSourceOptions {
    pub(crate) fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        self.connection.validate(Role::Consumer, &mut errors);
        if self.topics.is_empty() {
            errors.push(FieldError::new("topics", "is required (at least one topic)"));
        }
        if let Some(bad) = self.topics.iter().find(|t| !good_topic(t)) {
            errors.push(FieldError::new("topics", format!("{bad:?} is not a topic name ([A-Za-z0-9._-], 1-249)")));
        }
        if self.group_id.trim().is_empty() || self.group_id.len() > 255 || self.group_id.contains(char::is_control) {
            errors.push(FieldError::new("group_id", "a non-empty name of at most 255 characters"));
        }
        if self.commit_interval_ms > 600_000 {
            errors.push(FieldError::new("commit_interval_ms", "must be at most 600000"));
        }
        if let Some(f) = &self.format {
            if enrichd_engine::Format::from_name(f).is_none() {
                errors
                    .push(FieldError::new("format", format!("{f:?} is not a record format (zeek.conn.v1, flows.v1)")));
            }
        }
        errors
    }
}
