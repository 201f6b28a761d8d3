//! This instance on its fleet's status board: every few seconds its id,
//! uptime, each stage's generation and content (hash, origin), lag and
//! event rate are written through the first `[[update]]` entry whose kind
//! keeps a board (`UpdateRunner::announce`; the `nats_object` kind: a KV
//! bucket whose entries expire), and `enrichd cluster status` reads them.
//!
//! Why through an `[[update]]` entry and not a section of its own: the
//! instances that fetch their rules and indicators from one place are the
//! fleet, and that entry already holds the connection (servers,
//! credentials); the core names no broker. An instance without such an
//! entry simply has no board (`/v1/enrichers` says so).
//!
//! The id is `<host>-<random>` kept in `state_dir/instance-id`, so a
//! restarted instance keeps its row, and several instances on one host
//! (each with its own state directory) do not share one.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use enrichd_engine::updater::UpdateRunner;
use serde_json::{json, Value};

use super::AppState;

/// How often an instance renews its entry (the board's time to live must
/// be longer: the `nats_object` default is 15 s).
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long a clean shutdown waits to take the entry off the board.
const WITHDRAW_WITHIN: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(crate) struct Presence {
    id: OnceLock<String>,
    state: Mutex<Reporting>,
    /// The heartbeat and the entry it writes through, for [`Presence::withdraw`].
    heartbeat: Mutex<Option<Heartbeat>>,
}

/// The heartbeat task and the board it writes to.
type Heartbeat = (tokio::task::JoinHandle<()>, Arc<dyn UpdateRunner>);

#[derive(Default, Clone)]
struct Reporting {
    /// The `[[update]]` entry the board is written through.
    via: Option<String>,
    announces: u64,
    failures: u64,
    last_ok: Option<u64>,
    last_error: Option<String>,
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Letters, digits, `-`, `_`: valid as a key on any board.
fn clean(text: &str) -> String {
    text.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(48).collect()
}

/// This instance's id, made once and kept in `state_dir/instance-id`.
fn instance_id(state_dir: &Path) -> String {
    let file = state_dir.join("instance-id");
    if let Some(id) = std::fs::read_to_string(&file).ok().map(|t| clean(t.trim())).filter(|t| !t.is_empty()) {
        return id;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| clean(h.trim())).unwrap_or_default();
    let mut bytes = [0u8; 3];
    let _ = getrandom::fill(&mut bytes);
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let id = if host.is_empty() { format!("enrichd-{suffix}") } else { format!("{host}-{suffix}") };
    if let Err(e) = std::fs::create_dir_all(state_dir).and_then(|()| std::fs::write(&file, &id)) {
        tracing::warn!(error = %e, path = %file.display(), "keeping the instance id (a restart will get a new one)");
    }
    id
}

impl Presence {
    /// Starts the heartbeat when an `[[update]]` entry's kind keeps a
    /// board; otherwise there is none (and the view says so).
    pub(crate) fn start(&self, state: &Arc<AppState>) {
        let id = self.id.get_or_init(|| instance_id(&state.config.state_dir())).clone();
        let Some((via, runner)) = state.updates.runners().into_iter().find(|(_, r)| r.members().is_some()) else {
            return;
        };
        self.reporting().via = Some(via.clone());
        let service = Arc::downgrade(state);
        let mut shutdown = state.shutdown.subscribe();
        let writer = runner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Some(state) = service.upgrade() else { return };
                let status = status(&state, &id);
                let written = match runner.announce(&id, &status) {
                    Some(announce) => tokio::time::timeout(HEARTBEAT, announce)
                        .await
                        .unwrap_or_else(|_| Err(format!("writing the status took over {} s", HEARTBEAT.as_secs()))),
                    None => return,
                };
                {
                    let mut r = state.presence.reporting();
                    match written {
                        Ok(()) => {
                            r.announces += 1;
                            r.last_ok = Some(now_s());
                            r.last_error = None;
                        }
                        Err(e) => {
                            if r.last_error.as_deref() != Some(e.as_str()) {
                                tracing::warn!(update = %via, error = %e, "reporting this instance's status");
                            }
                            r.failures += 1;
                            r.last_error = Some(e);
                        }
                    }
                }
                drop(state);
                tokio::select! {
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        });
        *self.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Some((task, writer));
    }

    /// On a clean shutdown: stops the heartbeat, then takes this instance's
    /// entry off the board, so `enrichd cluster status` stops listing it
    /// at once instead of after the entry's time to live. Bounded: a broker
    /// that does not answer delays shutdown by at most [`WITHDRAW_WITHIN`];
    /// the entry then expires as after a crash.
    pub(crate) async fn withdraw(&self) {
        let Some((mut task, runner)) = self.heartbeat.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let Some(id) = self.id.get() else { return };
        // The shutdown signal ends the loop; a write in flight finishes
        // first, so it cannot put the entry back after the delete. One that
        // does not finish in time is abandoned (aborted) before the delete.
        if tokio::time::timeout(WITHDRAW_WITHIN, &mut task).await.is_err() {
            task.abort();
        }
        let Some(withdraw) = runner.withdraw(id) else { return };
        match tokio::time::timeout(WITHDRAW_WITHIN, withdraw).await {
            Ok(Ok(())) => tracing::info!(instance = %id, "removed this instance from the status board"),
            Ok(Err(e)) => tracing::warn!(error = %e, "removing this instance from the status board (it expires)"),
            Err(_) => tracing::warn!(
                within_s = WITHDRAW_WITHIN.as_secs(),
                "removing this instance from the status board took too long (it expires)"
            ),
        }
    }

    fn reporting(&self) -> std::sync::MutexGuard<'_, Reporting> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For `/v1/enrichers`: the id and how reporting goes.
    pub(crate) fn view(&self) -> Value {
        let r = self.reporting().clone();
        let time = |t: Option<u64>| t.map(|t| enrichd_engine::rfc3339(UNIX_EPOCH + Duration::from_secs(t)));
        json!({
            "id": self.id.get(),
            "board": r.via.as_ref().map(|via| json!({
                "update": via,
                "heartbeat_s": HEARTBEAT.as_secs(),
                "announces": r.announces,
                "failures": r.failures,
                "last_ok": time(r.last_ok),
                "last_error": r.last_error,
            })),
        })
    }
}

/// What this instance reports: enough for a fleet table, no paths or
/// secrets (the board may be readable by every instance's operators).
fn status(state: &AppState, id: &str) -> Value {
    let reading = state.metrics.read();
    let stages: Vec<Value> = state
        .engine
        .chain()
        .reports()
        .into_iter()
        .filter(|r| r.enabled)
        .map(|r| {
            let content: Vec<Value> = r
                .status
                .sources
                .iter()
                .map(|s| {
                    let origin = state.updates.origin_view(&s.path, s.sha256.as_deref(), false);
                    json!({ "sha256": s.sha256, "from": origin["from"], "update": origin.get("update"), "revision": origin.get("revision") })
                })
                .collect();
            json!({
                "name": r.name,
                "state": r.status.state,
                "generation": r.generation,
                "reload_failures": r.reload_failures,
                "content": content,
            })
        })
        .collect();
    json!({
        "instance": id,
        "version": env!("CARGO_PKG_VERSION"),
        "at": now_s(),
        "uptime_s": state.started.elapsed().as_secs(),
        "chain_generation": state.engine.chain().generation(),
        "events_per_s": reading.eps_10s,
        "lag_ms_p95": reading.lag.p95_ms,
        "stages": stages,
    })
}
