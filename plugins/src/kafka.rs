//! What the `kafka` source and output share: the client options flattened
//! into their own (brokers, an allow-listed passthrough of librdkafka
//! settings, the SASL password) and the librdkafka configuration built
//! from them.
//!
//! Why an allow-list rather than any librdkafka property: the source's
//! and the output's guarantees rest on settings enrichd owns
//! (`enable.auto.commit=false`, `enable.idempotence=true`, `acks=all`,
//! the group id, ...); a passthrough that could override them would
//! silently turn at-least-once into at-most-once. The list holds what an
//! operator legitimately tunes (authentication, timeouts, fetch and batch
//! sizes, compression); everything else is refused by name.
//!
//! Secrets: the one secret librdkafka needs here, the SASL password, is
//! its own option (`sasl_password`, declared in [`SECRET_FIELDS`], so the
//! core never shows it and masks it in error texts), never a passthrough
//! entry. Broker addresses are `host:port` lists without credentials.

use std::collections::BTreeMap;
use std::time::Duration;

use enrichd_engine::output::FieldError;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use schemars::JsonSchema;
use serde::Deserialize;

/// Longest accepted timeout (ten minutes).
const MAX_TIMEOUT_MS: u64 = 600_000;

/// librdkafka settings an operator may pass through `client`: the name,
/// then whether the source (consumer), the output (producer) or both
/// accept it.
const ALLOWED: &[(&str, Role)] = &[
    ("client.id", Role::Both),
    ("security.protocol", Role::Both),
    ("sasl.mechanism", Role::Both),
    ("sasl.mechanisms", Role::Both),
    ("sasl.username", Role::Both),
    ("socket.timeout.ms", Role::Both),
    ("socket.keepalive.enable", Role::Both),
    ("reconnect.backoff.ms", Role::Both),
    ("reconnect.backoff.max.ms", Role::Both),
    ("metadata.max.age.ms", Role::Both),
    ("broker.address.family", Role::Both),
    ("session.timeout.ms", Role::Consumer),
    ("heartbeat.interval.ms", Role::Consumer),
    ("max.poll.interval.ms", Role::Consumer),
    ("partition.assignment.strategy", Role::Consumer),
    ("group.instance.id", Role::Consumer),
    ("fetch.max.bytes", Role::Consumer),
    ("fetch.min.bytes", Role::Consumer),
    ("fetch.wait.max.ms", Role::Consumer),
    ("max.partition.fetch.bytes", Role::Consumer),
    ("queued.max.messages.kbytes", Role::Consumer),
    ("queued.min.messages", Role::Consumer),
    ("linger.ms", Role::Producer),
    ("batch.size", Role::Producer),
    ("batch.num.messages", Role::Producer),
    ("compression.type", Role::Producer),
    ("queue.buffering.max.messages", Role::Producer),
    ("queue.buffering.max.kbytes", Role::Producer),
    ("request.timeout.ms", Role::Producer),
];

/// Which side of the protocol an [`ALLOWED`] setting belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Consumer,
    Producer,
    Both,
}

/// Connection to a Kafka cluster (any broker speaking the Kafka protocol).
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(default)]
pub struct KafkaConnection {
    /// Bootstrap brokers as `host:port` (librdkafka's `bootstrap.servers`;
    /// the client learns the rest of the cluster from them). Default
    /// `["127.0.0.1:9092"]`.
    pub brokers: Vec<String>,
    /// Further librdkafka settings, from an allow-list: `client.id`,
    /// `security.protocol` (`plaintext` or `sasl_plaintext`: this build has
    /// no TLS), `sasl.mechanism`, `sasl.username`, socket and reconnect
    /// timeouts; for a source the group's session, heartbeat and poll
    /// intervals, fetch sizes and `queued.max.messages.kbytes`; for an
    /// output `linger.ms`, batch sizes, `compression.type` and queue
    /// bounds. Settings enrichd's guarantees rest on (offset commits,
    /// idempotence, acks, group id) are refused. Values are strings.
    pub client: BTreeMap<String, String>,
    /// The SASL password (librdkafka's `sasl.password`; a secret: never
    /// shown).
    pub sasl_password: Option<String>,
    /// Time limit, in milliseconds (default 30000, at most 600000), for an
    /// output's message (from queueing to the brokers' acknowledgement,
    /// librdkafka's retries included) or for a source to stop (finish the
    /// message in hand and commit the settled offsets).
    pub timeout_ms: u64,
}

impl Default for KafkaConnection {
    fn default() -> Self {
        KafkaConnection {
            brokers: vec!["127.0.0.1:9092".into()],
            client: BTreeMap::new(),
            sasl_password: None,
            timeout_ms: 30_000,
        }
    }
}

/// Option names of [`KafkaConnection`] that hold secrets.
pub(crate) const SECRET_FIELDS: &[&str] = &["sasl_password"];

impl KafkaConnection {
    /// Adds every problem with these options, for a client in `role`, to
    /// `errors`.
    pub(crate) fn validate(&self, role: Role, errors: &mut Vec<FieldError>) {
        if self.brokers.is_empty() {
            errors.push(FieldError::new("brokers", "at least one broker (host:port)"));
        }
        for b in &self.brokers {
            let ok = b.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && !host.contains(['/', '@', ',']) && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok || b.contains(char::is_whitespace) {
                // Masked: a refused `user:password@host:port` must not echo.
                errors.push(FieldError::new(
                    "brokers",
                    format!("{:?} is not host:port", enrichd_engine::output::redact_url(b)),
                ));
            }
        }
        for (key, value) in &self.client {
            if key == "sasl.password" {
                errors.push(FieldError::new("client", "set the SASL password with `sasl_password` (a secret)"));
                continue;
            }
            match ALLOWED.iter().find(|(name, _)| name == key) {
                None => errors.push(FieldError::new(
                    "client",
                    format!("{key:?} is not a setting enrichd passes through (see the option's documentation)"),
                )),
                Some((_, r)) if *r != Role::Both && *r != role => {
                    errors.push(FieldError::new("client", format!("{key:?} does not apply here")))
                }
                Some(_) => {}
            }
            if value.contains(['\n', '\r', '\0']) {
                errors.push(FieldError::new("client", format!("the value of {key:?} has a control character")));
            }
            if key == "security.protocol"
                && !["plaintext", "sasl_plaintext"].contains(&value.to_ascii_lowercase().as_str())
            {
                errors.push(FieldError::new(
                    "client",
                    "security.protocol: plaintext or sasl_plaintext (this build of librdkafka has no TLS)",
                ));
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            errors.push(FieldError::new("timeout_ms", format!("must be between 1 and {MAX_TIMEOUT_MS}")));
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The brokers, for messages (they carry no credentials).
    pub(crate) fn describe(&self) -> String {
        self.brokers.join(",")
    }

    /// librdkafka's configuration: the brokers, a client id naming the
    /// component, the passthrough settings, then the password. The caller
    /// sets its own guarantees after this, so they win over anything else.
    pub(crate) fn client_config(&self, name: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.describe())
            .set("client.id", format!("enrichd-{name}"))
            .set_log_level(RDKafkaLogLevel::Warning);
        for (key, value) in &self.client {
            config.set(key, value);
        }
        if let Some(password) = &self.sasl_password {
            config.set("sasl.password", password);
        }
        config
    }
}

/// A topic name Kafka accepts: 1 to 249 of `[A-Za-z0-9._-]`.
pub(crate) fn good_topic(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Routes librdkafka's log lines and client errors to tracing under the
/// component's name (rdkafka's default context writes them to the `log`
/// crate). Errors (a broker down, an authentication failure) are also
/// handed to `on_error`, so the component's view shows the last one.
pub(crate) struct LogContext {
    pub name: String,
    pub on_error: Box<dyn Fn(String) + Send + Sync>,
}

impl rdkafka::ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let name = self.name.as_str();
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(component = name, facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(component = name, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(component = name, facility, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(component = name, facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        (self.on_error)(format!("kafka client: {error}: {reason}"));
    }
}

/// A test broker: `tests/common/kafka.rs` of the enrichd crate, shared.
#[cfg(test)]
#[path = "../../tests/common/kafka.rs"]
pub(crate) mod test_broker;

/// What the source's and output's tests do to a test broker besides
/// running the component: create topics, produce raw messages, read
/// everything back.
#[cfg(test)]
pub(crate) mod test_client {
    use std::time::{Duration, Instant};

    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Message};

    pub(crate) async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
        let admin: AdminClient<_> = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
        let results = admin
            .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
            .await
            .unwrap();
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
        }
    }

    /// Produces `body` with `headers`, acknowledged.
    pub(crate) async fn produce(brokers: &str, topic: &str, body: &[u8], headers: &[(&str, &str)]) {
        let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
        let mut h = OwnedHeaders::new();
        for (key, value) in headers {
            h = h.insert(Header { key, value: Some(*value) });
        }
        let record = FutureRecord::<(), _>::to(topic).payload(body).headers(h);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }

    /// A consumer of `topic` in a group of its own, from the start.
    pub(crate) fn reader(brokers: &str, group: &str, topic: &str) -> StreamConsumer {
        let c: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        c.subscribe(&[topic]).unwrap();
        c
    }

    /// Messages read until `n` arrived or `timeout` passed.
    pub(crate) async fn read(c: &StreamConsumer, n: usize, timeout: Duration) -> Vec<OwnedMessage> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(200), c.recv()).await {
                got.push(m.detach());
            }
        }
        got
    }

    /// The header `key` of `m`, as text.
    pub(crate) fn header(m: &OwnedMessage, key: &str) -> Option<String> {
        use rdkafka::message::Headers;
        let h = m.headers()?;
        h.iter().find(|h| h.key == key).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(c: &KafkaConnection, role: Role) -> Vec<FieldError> {
        let mut e = Vec::new();
        c.validate(role, &mut e);
        e
    }

    #[test]
    fn kafka_connection_checks_brokers_and_the_allow_list() {
        assert!(errors(&KafkaConnection::default(), Role::Consumer).is_empty());
        let mut c =
            KafkaConnection { brokers: vec!["kafka:9092".into(), "nope".into(), "h:0".into()], ..Default::default() };
        c.client.insert("enable.auto.commit".into(), "true".into());
        c.client.insert("sasl.password".into(), "hunter2".into());
        c.client.insert("linger.ms".into(), "5".into());
        c.client.insert("security.protocol".into(), "SSL".into());
        let e = errors(&c, Role::Consumer);
        let text = format!("{e:?}");
        assert_eq!(e.iter().filter(|e| e.field == "brokers").count(), 2, "{text}");
        assert!(text.contains("enable.auto.commit"), "{text}");
        assert!(text.contains("sasl_password"), "{text}");
        assert!(!text.contains("hunter2"), "no secret in messages: {text}");
        assert!(text.contains("\\\"linger.ms\\\" does not apply here"), "{text}");
        assert!(text.contains("no TLS"), "{text}");
        // The producer takes linger.ms.
        let mut c = KafkaConnection::default();
        c.client.insert("linger.ms".into(), "5".into());
        c.client.insert("security.protocol".into(), "SASL_PLAINTEXT".into());
        assert!(errors(&c, Role::Producer).is_empty());
    }

    #[test]
    fn kafka_client_config_puts_the_password_in_its_own_setting() {
        let mut c = KafkaConnection { sasl_password: Some("s3cret".into()), ..Default::default() };
        c.client.insert("sasl.username".into(), "u".into());
        let config = c.client_config("in");
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(config.get("client.id"), Some("enrichd-in"));
        assert_eq!(config.get("sasl.username"), Some("u"));
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
    }
}
