//! `enrichd serve`: bind, serve, shut down gracefully on SIGINT / SIGTERM.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use enrichd_engine::{Engine, PluginState};

use crate::service::{AppState, CliOverrides};
use crate::{api, app, reload, server, watch};

pub(crate) fn run(config_path: &Path, listen: Option<String>) -> anyhow::Result<()> {
    keep_batch_buffers();
    let registry = app::registry();
    let (mut config, chain) = app::load(config_path, &registry)?;
    let overrides = CliOverrides { listen };
    overrides.apply(&mut config);
    crate::service::config::check_listen(&config.server.listen).map_err(|e| anyhow::anyhow!("--listen: {e}"))?;
    for report in chain.reports() {
        match report.status.state {
            PluginState::Loaded => {
                let version = report.status.version.as_deref().unwrap_or("");
                tracing::info!(stage = %report.name, version, "enricher loaded")
            }
            PluginState::Disabled => tracing::info!(stage = %report.name, "enricher disabled"),
            state => {
                let error = report.status.error.as_deref().unwrap_or("");
                tracing::warn!(stage = %report.name, %state, error, "enricher not loaded; events pass through it unenriched")
            }
        }
    }
    let state_dir = config.state_dir();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating the state directory {} (server.state_dir)", state_dir.display()))?;
    let watch = config.reload.watch;
    let mut state = AppState::new(Engine::new(chain, registry), config);
    state.overrides = overrides;
    let state = Arc::new(state);
    if state.keys.load().is_empty() {
        tracing::warn!(
            "no API key configured (auth.api_keys or env API_KEY): protected endpoints will refuse every request"
        );
    }
    if watch {
        watch::spawn(state.clone());
    }
    // Parsing and enrichment run on the blocking pool, and every thread
    // there keeps its own caches (mmdb records, WASM instances: several MiB).
    // Tokio's default of 512 threads would let a burst of requests grow
    // memory with concurrency; beyond a few threads per core requests wait
    // (the wait counts in the reported lag) instead.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads((4 * cores).max(8))
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(state))
}

async fn serve(state: Arc<AppState>) -> anyhow::Result<()> {
    // Outputs start before the listener: an accepted event always has
    // somewhere to go.
    state.delivery.set_runtime(tokio::runtime::Handle::current());
    state.delivery.set_config_entries(state.config.outputs.clone());
    crate::service::reconcile_outputs(&state)
        .await
        .map_err(|e| anyhow::anyhow!("{}: outputs: {e}", state.config.path().display()))?;
    // Sources start once the outputs run (their events need somewhere to
    // go), beside the listener.
    state.sources.attach(Arc::downgrade(&state));
    state.sources.set_entries(state.config.sources.clone());
    crate::service::sources::reconcile(&state)
        .await
        .map_err(|e| anyhow::anyhow!("{}: sources: {e}", state.config.path().display()))?;
    // `[ingest] forward`: built before the listener, so no batch is
    // enriched here that should have been forwarded.
    let forwarding =
        crate::service::forward::build(state.engine.registry(), &state.config.ingest, &state.config.forwards)
            .map_err(|e| anyhow::anyhow!("{}: {e}", state.config.path().display()))?;
    if let Some(f) = &forwarding {
        tracing::info!(forward = %f.name, kind = %f.kind, "POST /v1/ingest forwards raw batches instead of enriching them");
    }
    let _ = state.forward.set(forwarding);
    // Data files kept current (`[[update]]`): checked whole before serving.
    state
        .updates
        .configure(
            state.engine.registry(),
            &state.config.updates,
            &state.config.engine.base_dir,
            &state.config.state_dir(),
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", state.config.path().display()))?;
    state.updates.start(&state, crate::reload::reload_changed);
    state.presence.start(&state);
    let tls = match state.config.tls_files() {
        Some(files) => Some(crate::tls::Tls::load(files).context("[server] TLS")?),
        None => None,
    };
    state.tls.set(tls.clone()).ok();
    let listen = state.config.server.listen.clone();
    let listener =
        tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("binding the listen address {listen}"))?;
    // The bound address, not the configured one: with port 0 the OS picks
    // and tests read it from this line.
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "enrichd listening");
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("enrichd listening on {scheme}://{bound}");
    // Rolls the metric windows and drains the ingest shards every second,
    // so memory stays bounded and windows move without readers.
    let ticker = state.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut ticks_since_start = 1u64;
        loop {
            ticks.tick().await;
            // Bounded but not tiny work (merging summaries): off the I/O threads.
            let state = ticker.clone();
            let _ = tokio::task::spawn_blocking(move || state.metrics.tick()).await;
            if let Some(tls) = ticker.tls.get().cloned().flatten() {
                let _ = tokio::task::spawn_blocking(move || tls.refresh()).await;
            }
            if ticker.rate_limits.enabled() && ticks_since_start.is_multiple_of(60) {
                ticker.rate_limits.forget_idle();
            }
            ticks_since_start += 1;
        }
    });
    let stopping = state.clone();
    let shutdown = async move {
        shutdown_signal().await;
        // Ends the event streams, which would otherwise hold shutdown open.
        stopping.shutdown.send_replace(true);
    };
    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(state.clone()));
    let limits = connection_limits(&state.config.server)?;
    server::serve(listener, api::router(state.clone()), limits, tls, shutdown).await;
    // Sources stop taking messages (what they had not acknowledged is
    // redelivered by their broker) before the outputs flush.
    state.sources.shutdown().await;
    // No request is in flight any more: drain the outputs within the
    // deadline; what is left stays in the spools (memory queues go to the
    // dead-letter).
    let deadline = std::time::Duration::from_millis(state.config.server.shutdown_flush_ms);
    tracing::info!(deadline_ms = deadline.as_millis() as u64, "flushing outputs");
    state.delivery.shutdown(std::time::Instant::now() + deadline).await;
    state.presence.withdraw().await;
    tracing::info!("enrichd stopped");
    Ok(())
}

/// `[server]` connection settings, checked, with the cap fitted to the
/// file-descriptor limit (beyond it `accept` would fail for everyone).
fn connection_limits(config: &crate::service::config::ServerConfig) -> anyhow::Result<server::Limits> {
    let seconds = |key: &str, value: u64| {
        anyhow::ensure!(value > 0, "server.{key} must be at least 1 second");
        Ok(std::time::Duration::from_secs(value))
    };
    anyhow::ensure!(config.max_connections > 0, "server.max_connections must be at least 1");
    let mut max_connections = config.max_connections;
    if let Some(budget) = server::connection_budget() {
        if budget < max_connections {
            tracing::warn!(
                configured = max_connections,
                allowed = budget,
                "server.max_connections lowered to fit the file-descriptor limit (raise `ulimit -n` / LimitNOFILE)"
            );
            max_connections = budget;
        }
    }
    Ok(server::Limits {
        max_connections,
        header_timeout: seconds("header_timeout_s", config.header_timeout_s)?,
        keepalive_timeout: seconds("keepalive_timeout_s", config.keepalive_timeout_s)?,
        drain_timeout: std::time::Duration::from_millis(config.shutdown_flush_ms),
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested; finishing requests in flight");
}

/// SIGHUP reloads the configuration and every stage, for environments where
/// file events are unreliable (network filesystems, some volumes).
#[cfg(unix)]
async fn reload_on_sighup(state: Arc<AppState>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading");
        let state = state.clone();
        let _ =
            tokio::task::spawn_blocking(move || reload::reload_everything(&state, reload::Actor::SIGNAL, None)).await;
    }
}

/// Every batch allocates a few buffers of megabytes (request body, the
/// answer, each output's layout, spool read-back, `_bulk` body). glibc
/// serves those from fresh `mmap`s and gives them back at once, so each
/// batch paid page faults and kernel zeroing for every page (a fifth of
/// the samples in a delivery profile). Raising the thresholds keeps such
/// buffers in the heap for reuse; memory stays bounded by what batches in
/// flight hold (admission and `max_body_bytes` bound those).
fn keep_batch_buffers() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tunables; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}
