//! Options of a `nats` output, and the checks serde cannot express.

use enrichd_engine::output::FieldError;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::nats::NatsConnection;

/// `[[output]] type = "nats"`: enriched events published to a JetStream
/// subject as NDJSON messages (several events per message), each publish
/// acknowledged by the stream.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NatsOutputOptions {
    #[serde(flatten)]
    pub connection: NatsConnection,
    /// The subject messages are published to; a stream must capture it.
    /// Required.
    pub subject: Option<String>,
    /// A stream to create (file storage, capturing `subject`) when it is
    /// missing. Default: none, the stream must exist.
    pub create_stream: Option<String>,
    /// Largest message body in bytes (default 0: the server's
    /// `max_payload`, less room for headers). Events are packed into
    /// messages up to it; an event larger on its own is dead-lettered.
    pub max_message_bytes: usize,
}

impl NatsOutputOptions {
    pub(crate) fn validate(&self) -> Vec<FieldError> {
        crate::nats::publish_errors(
            &self.connection,
            self.subject.as_deref(),
            self.create_stream.as_deref(),
            self.max_message_bytes,
        )
    }
}
