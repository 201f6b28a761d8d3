//! Hot reload, the service's side: re-reading `config.toml`, deciding what
//! can be applied live, and the one entry point the watcher, SIGHUP and
//! `POST /v1/reload` share.
//!
//! The engine reloads stages (see `enrichd_engine::live`); this module adds
//! what only the service knows: the configuration file and its environment
//! overrides. Chain, `[[output]]`, `[[source]]` entries and `[auth]` keys
//! apply live; `[server]`, `[reload]`, `[profiles]` and `[[update]]`
//! changes are reported as needing a restart, never silently ignored.

use std::path::PathBuf;

use enrichd_engine::ReloadReport;
use serde_json::{json, Value};

use crate::audit::AuditEntry;
use crate::service::{AppState, ServiceConfig};

/// Who asked for a reload, for the audit log.
#[derive(Clone, Copy)]
pub(crate) struct Actor {
    pub kind: &'static str,
}

impl Actor {
    pub(crate) const API: Actor = Actor { kind: "api" };
    pub(crate) const SIGNAL: Actor = Actor { kind: "signal" };
    pub(crate) const WATCHER: Actor = Actor { kind: "watcher" };
}

/// Reloads the configuration and every stage (`POST /v1/reload`, SIGHUP).
pub(crate) fn reload_everything(state: &AppState, actor: Actor, key_id: Option<String>) -> Value {
    let before = content_hashes(state);
    let config = reload_config(state, actor, key_id.as_deref());
    let stages = state.engine.reload_all();
    let mut entry = AuditEntry::new(actor.kind, "reload", "all");
    entry.key_id = key_id.clone();
    entry.result = config.as_ref().and_then(|c| c["outcome"].as_str()).unwrap_or("ok").to_string();
    state.audit.record(entry);
    audit_swaps(state, &before, &stages, actor, key_id);
    finish(state, config, stages)
}

/// Reloads what the changed paths concern (the watcher).
pub(crate) fn reload_changed(state: &AppState, changed: &[PathBuf]) -> Value {
    let before = content_hashes(state);
    // The configuration file, and the chain file it names (the running
    // one's: a changed `chain_file` is followed after a restart).
    let mut config_files = vec![enrichd_engine::live::absolute(state.config.path())];
    config_files.extend(state.config.engine.chain_file.as_ref().map(|f| enrichd_engine::live::absolute(&f.path)));
    let config = changed
        .iter()
        .any(|p| config_files.contains(&enrichd_engine::live::absolute(p)))
        .then(|| reload_config(state, Actor::WATCHER, None));
    let stages = state.engine.reload_paths(changed);
    audit_swaps(state, &before, &stages, Actor::WATCHER, None);
    finish(state, config.flatten(), stages)
}

/// One hash over what the whole chain runs (every stage's files).
pub(crate) fn chain_hash(state: &AppState) -> String {
    let all: Vec<String> = content_hashes(state).into_iter().map(|(n, h)| format!("{n}={h}")).collect();
    crate::audit::sha256(all.join(";").as_bytes())
}

/// Per stage, a hash over what it runs: the content hashes of the files
/// it loaded and its generation (which moves only when a rebuild with
/// different content is swapped in, e.g. indicators added through the API,
/// which are no file of the stage's own).
fn content_hashes(state: &AppState) -> Vec<(String, String)> {
    state
        .engine
        .chain()
        .reports()
        .into_iter()
        .map(|r| {
            let mut parts: Vec<String> = r.status.sources.iter().filter_map(|s| s.sha256.clone()).collect();
            parts.push(format!("generation {}", r.generation));
            (r.name, crate::audit::sha256(parts.join(",").as_bytes()))
        })
        .collect()
}

/// One audit entry per stage that was swapped or refused: which content
/// went live (or did not) in place of which.
fn audit_swaps(
    state: &AppState,
    before: &[(String, String)],
    report: &ReloadReport,
    actor: Actor,
    key_id: Option<String>,
) {
    let after = content_hashes(state);
    for stage in &report.stages {
        let (action, result) = match stage.outcome {
            enrichd_engine::live::Outcome::Reloaded => ("stage_swapped", "ok"),
            enrichd_engine::live::Outcome::Rejected => ("stage_reload_refused", "rejected"),
            enrichd_engine::live::Outcome::HeldBack => ("stage_reload_held_back", "held_back"),
            _ => continue,
        };
        let find = |list: &[(String, String)]| list.iter().find(|(n, _)| *n == stage.name).map(|(_, h)| h.clone());
        let mut entry = AuditEntry::new(actor.kind, action, stage.name.clone());
        entry.key_id = key_id.clone();
        entry.before_sha256 = find(before);
        entry.after_sha256 = find(&after);
        entry.result = result.into();
        entry.detail = stage.error.clone();
        state.audit.record(entry);
    }
}

/// Swaps in the file's keys (rotation without a restart), audited by the
/// keyring's fingerprint (a digest of digests: no key in the log).
fn replace_keys(state: &AppState, config: &ServiceConfig, actor: Actor, key_id: Option<&str>) {
    let keys = crate::service::Keyring::new(&config.auth, &|name| std::env::var(name).ok());
    let before = state.keys.load().fingerprint();
    let after = keys.fingerprint();
    if before == after {
        return;
    }
    let count = keys.len();
    state.keys.store(std::sync::Arc::new(keys));
    tracing::info!(keys = count, "API keys replaced");
    let mut entry = AuditEntry::new(actor.kind, "keys_replaced", "auth");
    entry.key_id = key_id.map(str::to_string);
    entry.before_sha256 = Some(before);
    entry.after_sha256 = Some(after);
    entry.result = "ok".into();
    state.audit.record(entry);
}

fn finish(state: &AppState, config: Option<Value>, stages: ReloadReport) -> Value {
    state.reload.update(|s| s.last_reload_at = Some(enrichd_engine::rfc3339(std::time::SystemTime::now())));
    let chain = state.engine.chain();
    json!({
        "config": config,
        "chain_generation": chain.generation(),
        "stages": stages.stages,
        "swapped": stages.swapped,
        "needs_restart": state.reload.snapshot().needs_restart,
    })
}

/// Re-reads the configuration file and applies its chain entries.
/// `None` when the file did not change what the chain is built from.
fn reload_config(state: &AppState, actor: Actor, key_id: Option<&str>) -> Option<Value> {
    let _one_at_a_time = state.config_reloads.lock().unwrap_or_else(|e| e.into_inner());
    let loaded = ServiceConfig::load(state.config.path()).and_then(|mut c| {
        c.apply_env(state.engine.registry(), |name| std::env::var(name).ok())?;
        state.overrides.apply(&mut c);
        Ok(c)
    });
    let config = match loaded {
        Ok(c) => c,
        Err(e) => return Some(config_refused(state, e.to_string())),
    };
    // An empty file, or one cut before its first `[[chain]]` that still
    // parses, is not a request to stop enriching: only `chain = []`
    // written out empties a running chain.
    if config.engine.chain.is_empty() && !config.engine.chain_declared && !state.engine.chain().reports().is_empty() {
        let file = config.engine.chain_file.as_ref().map_or(config.path(), |f| f.path.as_path());
        let error = format!(
            "{}: no [[chain]] entry: refusing to remove every stage (the file is empty or was cut mid-write?); \
             the running chain stays. Write `chain = []` to run without enrichers on purpose",
            file.display()
        );
        return Some(config_refused(state, error));
    }
    if config.engine.chain.is_empty() {
        tracing::warn!("the configuration sets `chain = []`: events pass through unenriched");
    }
    let mut needs_restart = Vec::new();
    let running = &state.config;
    if config.server != running.server {
        needs_restart.push("server".to_string());
    }
    if config.reload != running.reload {
        needs_restart.push("reload".to_string());
    }
    // The watch follows the chain file named at start.
    if config.engine.chain_file.as_ref().map(|f| &f.path) != running.engine.chain_file.as_ref().map(|f| &f.path) {
        needs_restart.push("chain_file".to_string());
    }
    if config.profiles != running.profiles {
        needs_restart.push("profiles".to_string());
    }
    // Updaters are configured once at start (their schedules and state).
    if config.updates != running.updates {
        needs_restart.push("update".to_string());
    }
    // So is forwarding (`[ingest]`, `[[forward]]`): a switch between
    // enriching and forwarding is a deployment change, not a hot edit.
    if config.ingest != running.ingest || config.forwards != running.forwards {
        needs_restart.push("forward".to_string());
    }
    // The chain is built first, without going live: a file whose chain
    // does not build changes nothing. Then outputs and sources; one that
    // is refused refuses the whole file (keep-last-good), and what went
    // live before it is put back. Then the built chain is swapped in. A
    // file is never half applied (say, a new output delivering while the
    // answer says "rejected", the next reload seeing no change in
    // outputs and never revisiting them).
    let prepared = match state.engine.prepare_entries(&config.engine.chain) {
        Ok(prepared) => prepared,
        Err(e) => return Some(config_refused(state, e.to_string())),
    };
    let previous_outputs = state.delivery.config_entries();
    let outputs_changed = config.outputs != previous_outputs;
    if outputs_changed {
        if let Err(e) = set_outputs(state, config.outputs.clone()) {
            restore_outputs(state, previous_outputs);
            return Some(config_refused(state, format!("{}: outputs: {e}", config.path().display())));
        }
    }
    let previous_sources = state.sources.entries();
    let sources_changed = config.sources != previous_sources;
    if sources_changed {
        if let Err(e) = set_sources(state, config.sources.clone()) {
            restore_sources(state, previous_sources);
            if outputs_changed {
                restore_outputs(state, previous_outputs);
            }
            return Some(config_refused(state, format!("{}: sources: {e}", config.path().display())));
        }
    }
    // Built again only if a watched file's reload swapped a stage in
    // meanwhile (then it could fail, as any build).
    match state.engine.commit_entries(prepared, &config.engine.chain) {
        Ok(report) => {
            // Only an accepted file says what a restart would change.
            if !needs_restart.is_empty() {
                tracing::warn!(sections = %needs_restart.join(","), "configuration changed in sections that apply only after a restart");
            }
            replace_keys(state, &config, actor, key_id);
            state.reload.update(|s| {
                s.config_reloads += 1;
                s.last_config_error = None;
                s.needs_restart = needs_restart;
                s.chain_file = config.engine.chain_file.clone();
            });
            Some(json!({ "outcome": if report.swapped { "applied" } else { "unchanged" }, "stages": report.stages }))
        }
        Err(e) => {
            if sources_changed {
                restore_sources(state, previous_sources);
            }
            if outputs_changed {
                restore_outputs(state, previous_outputs);
            }
            Some(config_refused(state, e.to_string()))
        }
    }
}

/// Makes `entries` the file's outputs and starts, stops or reconfigures
/// outputs to match. Called on the watcher's thread or a blocking one:
/// never inside the async context, so blocking on the runtime is allowed.
fn set_outputs(state: &AppState, entries: Vec<crate::delivery::options::OutputEntry>) -> Result<(), String> {
    state.delivery.set_config_entries(entries);
    match state.delivery.runtime() {
        Some(rt) => rt.block_on(crate::service::reconcile_outputs(state)),
        None => Err("outputs are not running yet".to_string()),
    }
}

/// Puts the outputs that ran before a refused file back.
fn restore_outputs(state: &AppState, previous: Vec<crate::delivery::options::OutputEntry>) {
    if let Err(e) = set_outputs(state, previous) {
        tracing::error!(error = %e, "putting the previous outputs back after a refused configuration");
    }
}

/// [`set_outputs`] for `[[source]]` entries.
fn set_sources(state: &AppState, entries: Vec<crate::service::sources::SourceEntry>) -> Result<(), String> {
    state.sources.set_entries(entries);
    match state.delivery.runtime() {
        Some(rt) => rt.block_on(crate::service::sources::reconcile(state)),
        None => Err("sources are not running yet".to_string()),
    }
}

fn restore_sources(state: &AppState, previous: Vec<crate::service::sources::SourceEntry>) {
    if let Err(e) = set_sources(state, previous) {
        tracing::error!(error = %e, "putting the previous sources back after a refused configuration");
    }
}

fn config_refused(state: &AppState, error: String) -> Value {
    let error = enrichd_engine::limits::cap_message(error);
    tracing::warn!(%error, "configuration reload refused; the running chain stays");
    state.reload.update(|s| {
        s.config_reload_failures += 1;
        s.last_config_error = Some(error.clone());
    });
    json!({ "outcome": "rejected", "error": error })
}
