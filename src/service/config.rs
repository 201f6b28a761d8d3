//! The service's sections of `config.toml`: `[server]`, `[auth]`,
//! `[reload]`, and the environment overrides of API keys.
//!
//! The file is parsed in two layers from the same text: the engine reads
//! the `[[chain]]` entries ([`enrichd_engine::Config`], which ignores other
//! keys), and this module reads every other section with unknown keys
//! refused, the `chain` key being skipped here. Both report errors with file
//! and line. `enrichd config-schema` prints one schema for the whole file:
//! this module's sections with the engine's `chain` schema put in.

use std::path::{Path, PathBuf};

use enrichd_engine::config::Location;
use enrichd_engine::{BuildEnv, ConfigError, Registry};
use schemars::JsonSchema;

pub(crate) use super::auth::AuthConfig;
use super::sources::SourceEntry;
use super::updates::UpdateEntry;
use crate::delivery::options::OutputEntry;
use serde::Deserialize;

/// The whole configuration file: the service's sections and the engine's
/// part.
#[derive(Debug, Clone)]
pub(crate) struct ServiceConfig {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub reload: ReloadConfig,
    /// `[profiles]`: the layouts enriched events are written in.
    pub profiles: enrichd_engine::profile::ProfilesConfig,
    /// `[[output]]`: where enriched events are delivered, each entry as the
    /// JSON object the API takes (checked by the delivery runtime).
    pub outputs: Vec<crate::delivery::options::OutputEntry>,
    /// `[[source]]`: where events come from besides `POST /v1/ingest`,
    /// each entry as JSON (checked against the registry when applied).
    pub sources: Vec<super::sources::SourceEntry>,
    /// `[[update]]`: data files kept current, each entry as JSON (checked
    /// against the registry at start).
    pub updates: Vec<super::updates::UpdateEntry>,
    /// `[ingest]`: whether HTTP ingest forwards raw batches.
    pub ingest: super::forward::IngestConfig,
    /// `[[forward]]`: forwarding targets, each entry as JSON with its line.
    pub forwards: Vec<super::forward::ForwardEntry>,
    /// The `[[chain]]` entries, the file's path and its directory.
    pub engine: enrichd_engine::Config,
}

/// The whole configuration file.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Config")]
pub(super) struct Sections {
    /// HTTP server settings.
    #[serde(default)]
    server: ServerConfig,
    /// API keys.
    #[serde(default)]
    auth: AuthConfig,
    /// Hot reload of data files, modules and the chain.
    #[serde(default)]
    reload: ReloadConfig,
    /// Output layouts (profiles).
    #[serde(default)]
    profiles: enrichd_engine::profile::ProfilesConfig,
    /// Delivery destinations: `type` (`elastic`, `splunk`, `file`), the
    /// runtime's keys (`name`, `enabled`, `batch_max`, `durability`, ...)
    /// and the output's own options. `enrichd config-schema` lists each
    /// output kind's options under `$defs`.
    #[serde(default)]
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    output: OutputSection,
    /// Event sources besides `POST /v1/ingest`: `type` (e.g. `nats`),
    /// `name` (default: the type), `enabled` (default true),
    /// `deadletter_max_bytes` (default 16 MiB) and the source's own
    /// options. `enrichd config-schema` lists each source kind's options
    /// under `$defs`.
    #[serde(default)]
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    source: Vec<toml::Table>,
    /// Data files kept current (databases, threat-intel feeds, files
    /// published to the fleet): `type` (a kind a plugin registers), `path`
    /// (the file the stage reads), `name`, `enabled`, `interval_s` (default
    /// 86400),
    /// `on_start` (default true) and the updater's own options.
    /// `enrichd config-schema` lists each updater kind's options under
    /// `$defs`.
    #[serde(default)]
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    update: Vec<toml::Table>,
    /// What `POST /v1/ingest` does with an accepted batch: enrich it here
    /// (default) or forward it raw to a `[[forward]]` target.
    #[serde(default)]
    ingest: super::forward::IngestConfig,
    /// Forwarding targets for `[ingest] forward`: `type` (e.g. `nats`),
    /// `name` (default: the type) and the type's own options.
    /// `enrichd config-schema` lists each type's options under `$defs`.
    #[serde(default)]
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    forward: Vec<toml::Table>,
    /// The engine's (see [`enrichd_engine::Config`]); its schema is added
    /// by [`ServiceConfig::json_schema`].
    #[serde(default)]
    #[schemars(skip)]
    #[allow(dead_code)]
    chain: serde::de::IgnoredAny,
    /// A file holding the `[[chain]]` entries instead of this one
    /// (relative to this file's directory, as are the paths inside it; the
    /// file holds only `[[chain]]` entries). Watched and hot-reloaded like
    /// this file; an `[[update]]` entry with this `path` keeps it equal to
    /// a published version (`enrichd publish chain`). Read by the engine.
    #[serde(default)]
    #[allow(dead_code)]
    chain_file: Option<String>,
}

impl ServiceConfig {
    /// Reads and parses `path`; does not apply environment overrides. A
    /// file over [`enrichd_engine::config::MAX_CONFIG_BYTES`] is refused
    /// unread.
    pub(crate) fn load(path: &Path) -> Result<ServiceConfig, ConfigError> {
        ServiceConfig::parse(&enrichd_engine::Config::read(path)?, path)
    }

    /// Parses configuration text; `path` is used for messages and to resolve
    /// relative paths.
    pub(crate) fn parse(text: &str, path: &Path) -> Result<ServiceConfig, ConfigError> {
        let sections: Sections = enrichd_engine::Config::parse_sections(text, path)?;
        let engine = enrichd_engine::Config::parse(text, path)?;
        let outputs = match sections.output {
            OutputSection::None => Vec::new(),
            OutputSection::Entries(tables) => {
                entries("output", tables, text, path, |options, line| OutputEntry { options, line })?
            }
            OutputSection::Profiles(_) => {
                return Err(ConfigError {
                    location: Location {
                        path: path.to_path_buf(),
                        line: header_lines(text, "[output]").first().copied(),
                    },
                    message: "`[output]` (profile settings) is now `[profiles]` (`profile` → `default`, \
                              `profile_files` → `files`); `[[output]]` entries are delivery destinations"
                        .into(),
                });
            }
        };
        if let Err(message) = check_listen(&sections.server.listen) {
            return Err(ConfigError {
                location: Location { path: path.to_path_buf(), line: key_line(text, "[server]", "listen") },
                message: format!("[server] listen: {message}"),
            });
        }
        // Record positions inside a batch are 32-bit (`Span`): a body of
        // 4 GiB or more would wrap them. Nothing near that is a request.
        if sections.server.max_body_bytes == 0 || sections.server.max_body_bytes > MAX_BODY_BYTES {
            return Err(ConfigError {
                location: Location { path: path.to_path_buf(), line: key_line(text, "[server]", "max_body_bytes") },
                message: format!(
                    "[server] max_body_bytes: {} is not from 1 to {MAX_BODY_BYTES} (1 GiB)",
                    sections.server.max_body_bytes
                ),
            });
        }
        if let Err(message) = check_tls(&sections.server) {
            return Err(ConfigError {
                location: Location { path: path.to_path_buf(), line: header_lines(text, "[server]").first().copied() },
                message: format!("[server] {message}"),
            });
        }
        let sources = entries("source", sections.source, text, path, |options, line| SourceEntry { options, line })?;
        let updates = entries("update", sections.update, text, path, |options, line| UpdateEntry { options, line })?;
        let forwards = entries("forward", sections.forward, text, path, |options, line| {
            super::forward::ForwardEntry { options, line }
        })?;
        Ok(ServiceConfig {
            ingest: sections.ingest,
            forwards,
            sources,
            updates,
            server: sections.server,
            auth: sections.auth,
            reload: sections.reload,
            profiles: sections.profiles,
            outputs,
            engine,
        })
    }

    /// Applies the environment variables teams already use: `API_KEY`,
    /// `ADMIN_API_KEY`, and the engine's (`ENRICH_ENABLE_<PLUGIN>`, each
    /// plugin's own such as `GEOIP_CITY_DB`).
    pub(crate) fn apply_env(
        &mut self,
        registry: &Registry,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if let Some(key) = env("API_KEY").filter(|k| !k.trim().is_empty()) {
            self.auth.api_keys.push(key);
        }
        if let Some(key) = env("ADMIN_API_KEY").filter(|k| !k.trim().is_empty()) {
            self.auth.admin_keys.push(key);
        }
        if let Some(problem) = self.auth.check(&env).into_iter().next() {
            // Only on a refusal: read the file again for the line.
            let text = std::fs::read_to_string(self.path()).unwrap_or_default();
            let line = header_lines(&text, "[[auth.keys]]").first().copied();
            return Err(ConfigError { location: Location { path: self.path().to_path_buf(), line }, message: problem });
        }
        self.engine.apply_env(registry, env)
    }

    /// `[server]`'s TLS files resolved against the file's directory, when
    /// TLS is on.
    pub(crate) fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        let server = &self.server;
        Some(crate::tls::TlsFiles {
            cert: self.engine.resolve(server.tls_cert.as_ref()?),
            key: self.engine.resolve(server.tls_key.as_ref()?),
            client_ca: server.tls_client_ca.as_ref().map(|p| self.engine.resolve(p)),
            client_auth: server.tls_client_auth,
        })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.engine.path
    }

    /// The environment chain stages are built in.
    pub(crate) fn build_env(&self) -> BuildEnv {
        BuildEnv {
            base_dir: self.engine.base_dir.clone(),
            state_dir: Some(self.state_dir()),
            generation_field: self.reload.generation_field.clone(),
        }
    }

    /// `server.state_dir`, resolved against the file's directory.
    pub(crate) fn state_dir(&self) -> PathBuf {
        self.engine.resolve(&self.server.state_dir)
    }
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ServerConfig {
    /// Address and port to listen on (`--listen` overrides).
    pub listen: String,
    /// Largest accepted request body in bytes, counted on the bytes actually
    /// received and again after gzip decompression (1 byte to 1 GiB).
    pub max_body_bytes: usize,
    /// Most records accepted in one `/v1/ingest` batch.
    pub max_records: usize,
    /// Require an API key for `GET /v1/metrics` (public by default, like
    /// health and version).
    pub metrics_require_key: bool,
    /// On public metrics, show callers without a valid key the addresses
    /// (top sources, the high-risk events' endpoints), the matched
    /// indicators and the top values of declared facts. Off by default:
    /// they name hosts of the monitored network and what threat intel
    /// flagged; counts, countries and AS numbers stay public either way.
    pub metrics_public_detail: bool,
    /// Value of the `X-API-Version` header on `/v1` responses.
    pub api_version: String,
    /// Writable directory for state kept across restarts (indicators added
    /// through the API). Relative to the configuration file; created on
    /// start.
    pub state_dir: PathBuf,
    /// Most client connections open at once. At the cap, a new connection
    /// evicts the connection that has waited longest for a request (idle
    /// keep-alive or unfinished request head); when every connection is in
    /// a request, it gets a 503 and is closed. Lowered at start to fit the
    /// process's file-descriptor limit.
    pub max_connections: usize,
    /// Seconds a client has to send a complete request head: on a new
    /// connection counted from accept, on a kept-alive one from its first
    /// byte. Then the connection is closed.
    pub header_timeout_s: u64,
    /// Seconds a kept-alive connection may stay idle between requests.
    pub keepalive_timeout_s: u64,
    /// Seconds the server waits for the next piece of a request body; a
    /// stalled body gets 408 and the connection is closed.
    pub body_timeout_s: u64,
    /// At shutdown (SIGTERM/SIGINT), milliseconds requests in flight get to
    /// finish (then their connections are dropped: a client that stopped
    /// reading a stream does not hold the shutdown), and then milliseconds
    /// the outputs get to deliver what is queued; then spools keep the
    /// rest for the next start and memory queues move it to the
    /// dead-letter.
    pub shutdown_flush_ms: u64,
    /// Log one line per HTTP request at info (target `enrichd::access`):
    /// method, path, route group, status, duration, request id and the
    /// id of a valid key (first 12 hex digits of its SHA-256; never the
    /// key). Off by default: at ingest rates it is a line per batch.
    pub access_log: bool,
    /// Requests per second one API key may make (all routes); 0 = no
    /// limit. Over it: 429 with `Retry-After`.
    pub rate_limit_per_key: u32,
    /// Requests per second one client address may make (without a valid
    /// key, an IPv6 client's whole /64 counts as one address; health
    /// checks and metrics scrapes not counted unless they present a wrong
    /// key); 0 = no limit.
    pub rate_limit_per_address: u32,
    /// Burst allowed above the rates, in seconds' worth of requests.
    pub rate_limit_burst_s: u32,
    /// Proxies (CIDR networks or addresses, e.g. `["10.0.0.0/8"]`) whose
    /// `X-Forwarded-For` (or, when absent, RFC 7239 `Forwarded: for=`)
    /// names the client: from a peer in this list, the client is the
    /// rightmost address in the header that is not itself a trusted proxy
    /// (all trusted: the leftmost). Used for the per-address rate limit. A
    /// header that does not parse, or from any other peer, is ignored (the
    /// peer's address counts). A proxy that writes only `Forwarded` must
    /// remove the client's own `X-Forwarded-For`. Empty (default): the peer.
    #[schemars(with = "Vec<String>")]
    pub trusted_proxies: super::proxies::TrustedProxies,
    /// Serve HTTPS with this certificate chain (PEM, leaf first; relative
    /// to this file). Replaced files are picked up within a second, no
    /// restart; a pair that does not load is refused and the running one
    /// stays.
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// Verify client certificates against these CAs (PEM): mutual TLS for
    /// collectors. Needs `tls_cert`.
    pub tls_client_ca: Option<PathBuf>,
    /// With `tls_client_ca`: `required` (no certificate, no connection) or
    /// `optional` (verified when presented).
    pub tls_client_auth: crate::tls::ClientAuth,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 5 * 1024 * 1024,
            max_records: 10_000,
            metrics_require_key: false,
            metrics_public_detail: false,
            api_version: "1.0.0".into(),
            state_dir: PathBuf::from("state"),
            // Reverse-proxy defaults (nginx: client_header_timeout 60s,
            // keepalive_timeout 75s, client_body_timeout 60s).
            max_connections: 4096,
            header_timeout_s: 60,
            keepalive_timeout_s: 75,
            body_timeout_s: 60,
            shutdown_flush_ms: 10_000,
            access_log: false,
            rate_limit_per_key: 0,
            rate_limit_per_address: 0,
            rate_limit_burst_s: 2,
            trusted_proxies: super::proxies::TrustedProxies::default(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_client_auth: crate::tls::ClientAuth::Required,
        }
    }
}

/// `[reload]`
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ReloadConfig {
    /// Watch the chain's data files, modules and this configuration file,
    /// and reload on change. `POST /v1/reload` and SIGHUP work either way.
    pub watch: bool,
    /// Quiet time after the last file event before reloading, so a file
    /// being written is read once it is complete.
    pub debounce_ms: u64,
    /// When set, every enriched event gets this field: the chain generation
    /// and each stage's generation that produced it (`{"chain": 3, "ti": 2,
    /// ...}`), so any verdict can be traced to the data it was made with.
    pub generation_field: Option<String>,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig { watch: true, debounce_ms: 100, generation_field: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServiceConfig, String> {
        ServiceConfig::parse(text, Path::new("/etc/enrichd/c.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn listen_addresses_are_checked_with_their_line() {
        let e = parse("[server]\n# where\nlisten = \"127.0.0.1:99999\"\n").unwrap_err();
        assert!(e.contains("c.toml:3") && e.contains("[server] listen") && e.contains("99999"), "{e}");
        for bad in ["127.0.0.1", "300.1.1.1:80", ":80", "a b:80", "[::1]:x"] {
            assert!(check_listen(bad).is_err(), "{bad}");
        }
        for good in ["127.0.0.1:8080", "[::]:0", "localhost:8080", "enrichd.example.org:443", "[::1]:80"] {
            assert!(check_listen(good).is_ok(), "{good}");
        }
    }

    /// Spans into a batch are 32-bit: a body limit past them is refused at
    /// load, with its line, instead of wrapping record positions.
    #[test]
    fn the_body_limit_is_bounded() {
        let e = parse("[server]\nmax_body_bytes = 5368709120\n").unwrap_err();
        assert!(e.contains("c.toml:2") && e.contains("max_body_bytes") && e.contains("1 GiB"), "{e}");
        assert!(parse("[server]\nmax_body_bytes = 0\n").is_err());
        assert_eq!(parse("[server]\nmax_body_bytes = 1073741824\n").unwrap().server.max_body_bytes, 1 << 30);
    }

    #[test]
    fn trusted_proxies_are_checked_at_load() {
        let e = parse("[server]\n\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0/8\"]\n").unwrap_err();
        assert!(e.contains("c.toml:3") && e.contains("trusted_proxies") && e.contains("\"10.0.0/8\""), "{e}");
        let c = parse("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.1\"]\n").unwrap();
        assert_ne!(c.server.trusted_proxies, Default::default());
        assert_eq!(parse("").unwrap().server.trusted_proxies, Default::default());
    }

    #[test]
    fn both_layers_read_the_same_file() {
        let c = parse("[server]\nlisten = \"0.0.0.0:1\"\n\n[[chain]]\nplugin = \"geoip\"\n\n[reload]\nwatch = false\n")
            .unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:1");
        assert!(!c.reload.watch);
        assert_eq!(c.engine.chain.len(), 1);
        assert_eq!(c.engine.chain[0].location.line, Some(4));
        assert_eq!(c.state_dir(), Path::new("/etc/enrichd/state"));
    }

    #[test]
    fn unknown_keys_are_refused_with_file_and_line() {
        let err = parse("[server]\nlisten = \"x\"\nbogus = 1\n").unwrap_err();
        assert!(err.starts_with("/etc/enrichd/c.toml:3:") && err.contains("bogus"), "{err}");
        let err = parse("[[chain]]\nplugin = \"ti\"\n\n[[chian]]\nplugin = \"ti\"\n").unwrap_err();
        assert!(err.starts_with("/etc/enrichd/c.toml:4:") && err.contains("chian"), "{err}");
        let err = parse("[[chain]]\nname = \"x\"\n").unwrap_err();
        assert!(err.starts_with("/etc/enrichd/c.toml:1:") && err.contains("`plugin` is required"), "{err}");
    }

    #[test]
    fn source_entries_keep_their_lines() {
        let c = parse("[[source]]\ntype = \"nats\"\nstream = \"RAW\"\n\n[[source]]\ntype = \"nats\"\nname = \"b\"\n")
            .unwrap();
        let lines: Vec<Option<usize>> = c.sources.iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(1), Some(5)]);
        assert_eq!(c.sources[0].options["stream"], "RAW");
        assert!(parse("[source]\ntype = \"nats\"\n").is_err(), "a table, not an array of tables");
    }

    #[test]
    fn key_variables_add_keys() {
        let mut c = parse("[auth]\napi_keys = [\"a\"]\n").unwrap();
        let env = |v: &str| match v {
            "API_KEY" => Some("b".to_string()),
            "ADMIN_API_KEY" => Some(String::new()),
            _ => None,
        };
        c.apply_env(&Registry::new(), env).unwrap();
        assert_eq!(c.auth.api_keys, ["a", "b"]);
        assert!(c.auth.admin_keys.is_empty());
    }
}

/// `output` in the file: `[[output]]` entries, or the old `[output]` table
/// (profiles), refused with a migration hint.
#[derive(Default, Deserialize)]
#[serde(untagged)]
enum OutputSection {
    #[default]
    #[serde(skip)]
    None,
    Entries(Vec<toml::Table>),
    Profiles(#[allow(dead_code)] toml::Table),
}

/// The `[[section]]` tables as JSON objects with their lines, made into
/// entries by `entry` (the runtime that reads them checks their keys).
fn entries<E>(
    section: &str,
    tables: Vec<toml::Table>,
    text: &str,
    path: &Path,
    entry: impl Fn(serde_json::Map<String, serde_json::Value>, Option<usize>) -> E,
) -> Result<Vec<E>, ConfigError> {
    let lines = header_lines(text, &format!("[[{section}]]"));
    tables
        .into_iter()
        .enumerate()
        .map(|(i, table)| {
            let line = lines.get(i).copied();
            match serde_json::to_value(table) {
                Ok(serde_json::Value::Object(options)) => Ok(entry(options, line)),
                _ => Err(ConfigError {
                    location: Location { path: path.to_path_buf(), line },
                    message: format!(
                        "`[[{section}]]` entry is not representable as JSON (use strings, numbers, booleans, arrays)"
                    ),
                }),
            }
        })
        .collect()
}

/// Largest `max_body_bytes` allowed: 1 GiB (spans into a batch are 32-bit).
const MAX_BODY_BYTES: usize = 1 << 30;

/// A listen address as `host:port` (an IP address, `[v6]`, or a name):
/// refused here with the reason rather than at bind time, after the chain
/// was built, or never by `check-config`.
pub(crate) fn check_listen(listen: &str) -> Result<(), String> {
    if listen.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = listen.rsplit_once(':') else {
        return Err(format!("{listen:?} is not host:port (e.g. 127.0.0.1:8080 or [::]:8080)"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("{listen:?}: port {port:?} is not a number from 0 to 65535"));
    }
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let is_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        // All-numeric labels are a mistyped IPv4 address, not a name.
        && !host.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if host.parse::<std::net::IpAddr>().is_ok() || is_name {
        Ok(())
    } else {
        Err(format!("{listen:?}: {host:?} is not an IP address or host name"))
    }
}

/// Line of `key = ...` in `table` (`[server]`), for messages.
/// The TLS keys come together: a certificate needs its key, client
/// verification needs a certificate.
fn check_tls(server: &ServerConfig) -> Result<(), String> {
    match (&server.tls_cert, &server.tls_key, &server.tls_client_ca) {
        (Some(_), None, _) => Err("tls_cert is set without tls_key".into()),
        (None, Some(_), _) => Err("tls_key is set without tls_cert".into()),
        (None, None, Some(_)) => Err("tls_client_ca needs tls_cert and tls_key (client certificates need TLS)".into()),
        _ => Ok(()),
    }
}

fn key_line(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut in_table = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            in_table = line == table;
        } else if in_table && line.split_once('=').is_some_and(|(k, _)| k.trim() == key) {
            return Some(i + 1);
        }
    }
    None
}

/// 1-based numbers of the lines that are exactly `header` (comments and
/// spaces aside).
fn header_lines(text: &str, header: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.split('#').next().unwrap_or("").trim() == header)
        .map(|(i, _)| i + 1)
        .collect()
}
