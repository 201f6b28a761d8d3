//! What the `nats` source and output share: the connection options
//! flattened into their own (servers, credentials, timeouts) and the
//! client built from them.
//!
//! Credentials never reach a message: server URLs go through
//! [`redact_url`] and async-nats' error texts carry no password.

use std::time::Duration;

use enrichd_engine::output::{redact_url, FieldError};
use schemars::JsonSchema;
use serde::Deserialize;

/// Longest accepted timeout (ten minutes).
const MAX_TIMEOUT_MS: u64 = 600_000;

/// Connection to a NATS server or cluster.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(default)]
pub struct NatsConnection {
    /// Server URLs (`nats://host:4222`; several for a cluster, the client
    /// fails over between them). Default `["nats://127.0.0.1:4222"]`.
    pub servers: Vec<String>,
    /// User name for user/password authentication.
    pub user: Option<String>,
    /// Password for user/password authentication (a secret: never shown).
    pub password: Option<String>,
    /// Token authentication (a secret: never shown).
    pub token: Option<String>,
    /// Time limit for connecting and for each request to the server
    /// (stream and consumer management, publish acknowledgements), in
    /// milliseconds (default 5000, at most 600000).
    pub timeout_ms: u64,
}

impl Default for NatsConnection {
    fn default() -> Self {
        NatsConnection {
            servers: vec!["nats://127.0.0.1:4222".into()],
            user: None,
            password: None,
            token: None,
            timeout_ms: 5000,
        }
    }
}

/// Option names of [`NatsConnection`] that hold secrets.
pub(crate) const SECRET_FIELDS: &[&str] = &["password", "token"];

impl NatsConnection {
    /// Adds every problem with these options to `errors`.
    pub(crate) fn validate(&self, errors: &mut Vec<FieldError>) {
        if self.servers.is_empty() {
            errors.push(FieldError::new("servers", "at least one server URL"));
        }
        for s in &self.servers {
            if s.trim().is_empty() || s.contains(char::is_whitespace) {
                errors.push(FieldError::new("servers", format!("{:?} is not a server URL", redact_url(s))));
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            errors.push(FieldError::new("timeout_ms", format!("must be between 1 and {MAX_TIMEOUT_MS}")));
        }
        if self.password.is_some() && self.user.is_none() {
            errors.push(FieldError::new("user", "is required with `password`"));
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The servers, credentials masked, for messages.
    pub(crate) fn describe(&self) -> String {
        self.servers.iter().map(|s| redact_url(s)).collect::<Vec<_>>().join(",")
    }

    /// Connects. The client reconnects on its own after a lost connection
    /// (requests fail meanwhile, and callers retry).
    pub(crate) async fn connect(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("enrichd {name}"))
            .connection_timeout(self.timeout())
            .request_timeout(Some(self.timeout()))
            .max_reconnects(None);
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        let servers: Vec<async_nats::ServerAddr> = self
            .servers
            .iter()
            .map(|s| s.parse().map_err(|e| anyhow::anyhow!("server {:?}: {e}", redact_url(s))))
            .collect::<anyhow::Result<_>>()?;
        options.connect(servers).await.map_err(|e| anyhow::anyhow!("connecting to NATS at {}: {e}", self.describe()))
    }
}

/// A test server: `tests/common/nats.rs` of the enrichd crate, shared.
#[cfg(test)]
#[path = "../../tests/common/nats.rs"]
pub(crate) mod test_server;

/// What the publishing components (the `nats` output and forwarder) check
/// of their shared options: the connection, a concrete subject, a stream
/// name JetStream accepts, and a message size of 0 (the server's) or at
/// least 1 KiB.
pub(crate) fn publish_errors(
    connection: &NatsConnection,
    subject: Option<&str>,
    create_stream: Option<&str>,
    max_message_bytes: usize,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    connection.validate(&mut errors);
    match subject {
        None => errors.push(FieldError::new("subject", "is required")),
        Some(s) if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '*' || c == '>') => {
            errors.push(FieldError::new("subject", "a subject without spaces or wildcards"))
        }
        Some(_) => {}
    }
    if let Some(s) = create_stream {
        if s.is_empty() || s.contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\')) {
            errors.push(FieldError::new("create_stream", "a name without spaces, `.`, `*`, `>`"));
        }
    }
    if max_message_bytes != 0 && max_message_bytes < 1024 {
        errors.push(FieldError::new("max_message_bytes", "0 (the server's limit) or at least 1024"));
    }
    errors
}
