//! What the service knows about reloads beyond the stages' own reports, and
//! the command-line settings a reloaded file is compared after.

use std::sync::Mutex;

use serde::Serialize;

use super::ServiceConfig;

/// Settings given on the command line, which win over the file's: applied
/// at start and to every reloaded file before it is compared with the
/// running configuration, so `serve --listen X` does not make every reload
/// report `needs_restart: ["server"]`.
#[derive(Clone, Debug, Default)]
pub(crate) struct CliOverrides {
    pub listen: Option<String>,
}

impl CliOverrides {
    /// `--listen PORT` keeps the configured host; `--listen HOST:PORT`
    /// replaces both.
    pub(crate) fn apply(&self, config: &mut ServiceConfig) {
        if let Some(listen) = &self.listen {
            config.server.listen = match listen.parse::<u16>() {
                Ok(port) => {
                    let host = config.server.listen.rsplit_once(':').map_or("127.0.0.1", |(host, _)| host);
                    format!("{host}:{port}")
                }
                Err(_) => listen.clone(),
            };
        }
    }
}

/// What the service knows about reloads beyond the stages' own reports.
#[derive(Default)]
pub(crate) struct ReloadStatus {
    inner: Mutex<ReloadState>,
}

#[derive(Clone, Default, Serialize)]
pub(crate) struct ReloadState {
    /// Whether file watching is active (and why not, if it failed).
    pub watching: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_error: Option<String>,
    /// Configuration reloads applied / refused.
    pub config_reloads: u64,
    pub config_reload_failures: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_config_error: Option<String>,
    /// Sections changed on disk that only a restart applies.
    pub needs_restart: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reload_at: Option<String>,
    /// The chain file the running chain was read from (shown with its
    /// origin in `/v1/enrichers`, never on the public endpoints: a path).
    #[serde(skip)]
    pub chain_file: Option<enrichd_engine::config::ChainFileInfo>,
}

impl ReloadStatus {
    pub(crate) fn with_chain_file(chain_file: Option<enrichd_engine::config::ChainFileInfo>) -> Self {
        ReloadStatus { inner: Mutex::new(ReloadState { chain_file, ..ReloadState::default() }) }
    }

    pub(crate) fn snapshot(&self) -> ReloadState {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut ReloadState)) {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_alone_keeps_the_configured_host() {
        let mut config = ServiceConfig::parse("[server]\nlisten = \"0.0.0.0:8080\"\n", std::path::Path::new("c.toml"))
            .expect("parses");
        CliOverrides { listen: Some("9090".into()) }.apply(&mut config);
        assert_eq!(config.server.listen, "0.0.0.0:9090");
        CliOverrides { listen: Some("[::1]:7070".into()) }.apply(&mut config);
        assert_eq!(config.server.listen, "[::1]:7070");
        CliOverrides { listen: Some("8081".into()) }.apply(&mut config);
        assert_eq!(config.server.listen, "[::1]:8081");
    }
}
