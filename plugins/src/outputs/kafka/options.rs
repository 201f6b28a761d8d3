//! Options of a `kafka` output, and the checks serde cannot express.

use enrichd_engine::output::FieldError;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::kafka::{good_topic, KafkaConnection, Role};

/// `[[output]] type = "kafka"`: enriched events produced to a Kafka topic
/// as NDJSON messages (several events per message) by an idempotent
/// producer, each message acknowledged by every in-sync replica.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaOutputOptions {
    #[serde(flatten)]
    pub connection: KafkaConnection,
    /// The topic messages are produced to (it must exist). Required.
    pub topic: Option<String>,
    /// Largest message body in bytes (default 1000000, Kafka's default
    /// `message.max.bytes`; at least 1024). Events are packed into messages
    /// up to it; an event larger on its own is dead-lettered. Keep it 1 KiB
    /// within the topic's `max.message.bytes` (the key and headers are
    /// sent beside the body).
    pub max_message_bytes: usize,
}

impl Default for KafkaOutputOptions {
    fn default() -> Self {
        KafkaOutputOptions { connection: KafkaConnection::default(), topic: None, max_message_bytes: 1_000_000 }
    }
}

impl KafkaOutputOptions {
    pub(crate) fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        self.connection.validate(Role::Producer, &mut errors);
        match &self.topic {
            None => errors.push(FieldError::new("topic", "is required")),
            Some(t) if !good_topic(t) => errors.push(FieldError::new("topic", "a topic name ([A-Za-z0-9._-], 1-249)")),
            Some(_) => {}
        }
        if !(1024..=100_000_000).contains(&self.max_message_bytes) {
            errors.push(FieldError::new("max_message_bytes", "must be between 1024 and 100000000"));
        }
        errors
    }
}
