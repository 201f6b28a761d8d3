//! The service: the state `enrichd serve` runs on, independent of how it is
//! reached. The HTTP API (`api/`), hot reload (`reload.rs`) and the file
//! watcher (`watch.rs`) all work on [`AppState`]; this module uses none of
//! them, so the layers stay acyclic: engine <- plugins <- service <- api,
//! reload, watch <- serve / main.
//!
//! Here too: the service's configuration sections ([`config`]), API keys
//! ([`auth`]) and the reload status ([`reload_state`]), the one ingest step
//! every entry point calls ([`ingest`]) and the running `[[source]]`
//! entries that call it too ([`sources`]), and the `[[update]]` entries
//! that keep data files current ([`updates`]), and `[ingest] forward`
//! ([`forward`]). Delivery to outputs
//! lives in [`crate::delivery`]; the state holds its handle.

pub(crate) mod auth;
pub(crate) mod config;
#[cfg(test)]
mod config_fuzz;
pub(crate) mod config_schema;
pub(crate) mod forward;
pub(crate) mod ingest;
pub(crate) mod presence;
pub(crate) mod proxies;
pub(crate) mod reload_state;
pub(crate) mod sources;
pub(crate) mod updates;

use std::sync::Arc;
use std::time::Instant;

use axum::http::HeaderValue;
use enrichd_engine::{Engine, Limits, Pipeline};

pub(crate) use auth::{KeyRefusal, Keyring, Scope};
pub(crate) use config::ServiceConfig;
pub(crate) use reload_state::{CliOverrides, ReloadStatus};

use crate::metrics::Metrics;

/// Everything a handler may need, shared by all requests.
pub(crate) struct AppState {
    pub engine: Engine,
    pub config: ServiceConfig,
    /// Every API key with its scopes; replaced whole on reload (keys
    /// rotate without a restart).
    pub keys: arc_swap::ArcSwap<Keyring>,
    pub metrics: Arc<Metrics>,
    /// Per-key and per-address request limits (`[server] rate_limit_*`).
    pub rate_limits: crate::ratelimit::RateLimits,
    /// The API's TLS configuration, when `[server] tls_cert` is set (set
    /// once at start).
    pub tls: std::sync::OnceLock<Option<Arc<crate::tls::Tls>>>,
    /// Who changed what (`state/audit.jsonl`, `GET /v1/audit`).
    pub audit: crate::audit::Audit,
    /// Watchers of the live stream (`GET /v1/tap`).
    pub tap: Arc<crate::tap::Tap>,
    /// Decode → chain → metrics → encode, as every entry point runs it.
    pub pipeline: Pipeline,
    pub reload: ReloadStatus,
    /// Command-line settings that override the file's (`--listen`): a
    /// reloaded file is compared with the running settings after them.
    pub overrides: CliOverrides,
    /// Serializes the plugins' mutating admin calls (`PUT`/`DELETE` on an
    /// admin resource) and the reloads that make them live.
    pub admin_changes: std::sync::Mutex<()>,
    /// Serializes configuration reloads (the watcher, SIGHUP, the API and
    /// updaters all reload): one file's outputs, sources and chain go live
    /// together or not at all, never interleaved with another reload's.
    pub config_reloads: std::sync::Mutex<()>,
    /// The outputs enriched events are delivered to.
    pub delivery: Arc<crate::delivery::Delivery>,
    /// The running `[[source]]` entries.
    pub sources: sources::Sources,
    /// The `[[update]]` entries (data files kept current).
    pub updates: updates::Updates,
    /// This instance on its fleet's status board.
    pub presence: presence::Presence,
    /// `[ingest] forward`: where `POST /v1/ingest` publishes raw batches
    /// instead of enriching them (`None`: enrich here). Set once at start.
    pub forward: std::sync::OnceLock<Option<forward::Forwarding>>,
    /// Output profiles by name, and the default (`None`: the v1 layout).
    pub profiles: (enrichd_engine::Profiles, Option<Arc<enrichd_engine::Profile>>),
    /// `[profiles] key_profiles`: the profile per API key digest.
    pub key_profiles: Vec<enrichd_engine::profile::KeyProfile>,
    pub started: Instant,
    /// Set once when the server starts shutting down: long-lived responses
    /// (the event stream) end so graceful shutdown can complete.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Value of the `X-API-Version` header (`server.api_version`).
    pub api_version: HeaderValue,
    /// `GET /v1/stream` responses open now (bounded: each holds a
    /// connection for as long as the client likes).
    pub live_streams: std::sync::atomic::AtomicUsize,
}

impl AppState {
    pub(crate) fn new(engine: Engine, config: ServiceConfig) -> Self {
        let keys = arc_swap::ArcSwap::from_pointee(Keyring::new(&config.auth, &|name| std::env::var(name).ok()));
        let api_version =
            HeaderValue::from_str(&config.server.api_version).unwrap_or(HeaderValue::from_static("1.0.0"));
        let metrics = Arc::new(Metrics::default());
        let tap = Arc::new(crate::tap::Tap::default());
        let pipeline = Pipeline::new(Limits { max_records: config.server.max_records })
            .with_observer(metrics.clone())
            .with_observer(tap.clone());
        // `app::load` refused a bad `[profiles]` already.
        let profiles =
            enrichd_engine::Profiles::from_config(&config.profiles, &config.engine.base_dir).unwrap_or_else(|e| {
                tracing::error!(error = %e, "output profiles; writing the v1 layout");
                (enrichd_engine::Profiles::embedded(), None)
            });
        let (state_dir, base_dir) = (config.state_dir(), config.engine.base_dir.clone());
        let key_profiles = enrichd_engine::profile::key_profiles(&config.profiles, &profiles.0).unwrap_or_else(|e| {
            tracing::error!(error = %e, "per-key output profiles ignored");
            Vec::new()
        });
        let rate_limits = crate::ratelimit::RateLimits::new(
            config.server.rate_limit_per_key,
            config.server.rate_limit_per_address,
            config.server.rate_limit_burst_s,
        );
        let reload = ReloadStatus::with_chain_file(config.engine.chain_file.clone());
        AppState {
            key_profiles,
            engine,
            config,
            keys,
            metrics,
            audit: crate::audit::Audit::new(&state_dir),
            rate_limits,
            tls: std::sync::OnceLock::new(),
            tap,
            pipeline,
            reload,
            overrides: Default::default(),
            admin_changes: Default::default(),
            config_reloads: Default::default(),
            delivery: Arc::new(crate::delivery::Delivery::new(&state_dir, &base_dir)),
            sources: sources::Sources::new(state_dir.clone(), base_dir.clone()),
            updates: updates::Updates::default(),
            presence: presence::Presence::default(),
            forward: std::sync::OnceLock::new(),
            profiles,
            started: Instant::now(),
            shutdown: tokio::sync::watch::Sender::new(false),
            api_version,
            live_streams: Default::default(),
        }
    }
}

impl AppState {
    /// The caller's key if it holds `scope` (401 / 403 otherwise).
    pub(crate) fn require(
        &self,
        headers: &axum::http::HeaderMap,
        scope: Scope,
    ) -> Result<auth::KeyDigest, auth::Refusal> {
        self.keys.load().require(headers, scope)
    }

    /// The caller's key if it is valid, whatever its scopes.
    pub(crate) fn caller(&self, headers: &axum::http::HeaderMap) -> Option<auth::KeyDigest> {
        self.keys.load().check(headers).ok()
    }
}

/// Applies the file's `[[output]]` entries (as last loaded), the API's
/// stored settings and the environment's switches to the running outputs.
/// `Err` names what is wrong; the running outputs are then unchanged.
pub(crate) async fn reconcile_outputs(state: &AppState) -> Result<(), String> {
    // The desired set is read inside the delivery's serialized section, so
    // the last reconcile applies the last settings written (see
    // `delivery::reconcile`).
    state.delivery.reconcile(state.engine.registry(), &state.profiles, &|name| std::env::var(name).ok()).await
}
