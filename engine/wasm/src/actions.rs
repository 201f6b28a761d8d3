//! The `wasm` stages' actions at `/v1/rules/{stage}/{action}` (the service
//! routes them generically, see `enrichd_engine::admin::StageRequest`):
//!
//! - `GET shadow`: the shadow's summary; `POST shadow` (body: the module's
//!   bytes, `?signature=HEX` when the stage checks signatures) deploys a
//!   shadow, replacing any; `DELETE shadow` removes it.
//! - `POST promote`: the shadow becomes the live module: stored as a
//!   version in the state directory and loaded by the ordinary reload
//!   path (keep-last-good), the previous live version kept for rollback.
//! - `POST rollback`: the version live before the current one comes back.
//! - `GET history`: the last versions with hash, who and when.
//!
//! Every refusal is a 4xx naming what is wrong; the module is checked the
//! way a live one is (size, signature, compilation, interface, a probe
//! instantiation) before it runs.

use std::path::Path;
use std::sync::{Arc, Mutex};

use enrichd_engine::{
    to_hex, AdminResponse, BatchView, BuildContext, Enricher, PluginStatus, StageMethod, StageRequest,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::enricher::WasmEnricher;
use crate::options::WasmOptions;
use crate::shadow::{Origin, Shadow, ShadowChange, Summary};
use crate::stats::{CircuitBreaker, ModuleStats};
use crate::versions;

/// A `wasm` stage as the engine sees it: the enricher, plus its actions.
/// A wrapper rather than a method of [`WasmEnricher`], so that the actions
/// (which use the enricher) and the enricher (which runs batches) do not
/// depend on each other.
pub(crate) struct WasmStage(pub(crate) WasmEnricher, Option<String>, Mutex<Option<ShadowChange>>);

impl WasmStage {
    /// Builds the stage: the live module, then the configured shadow, if
    /// any. The shadow is loaded here but installed only when the stage goes
    /// live ([`Enricher::went_live`]): the shadow cell is shared with the
    /// live generation, and this build may yet be refused.
    pub(crate) fn build(options: WasmOptions, ctx: &mut BuildContext<'_>) -> anyhow::Result<WasmStage> {
        let shadow = options.shadow_module.as_ref().map(|p| ctx.resolve_path(p));
        let enricher = WasmEnricher::build(options, ctx)?;
        let mut shadow_error = None;
        let change = match shadow {
            // A shadow that cannot load fails only itself: the live rule
            // builds and serves, the problem is reported in the status.
            Some(path) => match config_shadow(&enricher, &path, ctx.state_dir()) {
                Ok(change) => change,
                Err(e) => {
                    let error = enrichd_engine::limits::cap_message(format!("{e:#}"));
                    tracing::warn!(stage = ctx.stage_name(), %error, "shadow module not loaded; the live rule serves");
                    shadow_error = Some(error);
                    None
                }
            },
            // `shadow_module` gone from the configuration: its shadow goes
            // too (one deployed through the API stays).
            None => {
                let current = enricher.shadow.current.load_full();
                current
                    .filter(|s| s.origin == Origin::Config)
                    .map(|expected| ShadowChange { expected: Some(expected), next: None })
            }
        };
        Ok(WasmStage(enricher, shadow_error, Mutex::new(change)))
    }
}

impl Enricher for WasmStage {
    fn enrich(&self, batch: &mut BatchView<'_>) {
        self.0.enrich(batch)
    }

    fn status(&self) -> PluginStatus {
        let mut status = self.0.status();
        if let (Some(error), Some(details)) = (&self.1, status.details.as_object_mut()) {
            details.insert("shadow_error".into(), error.clone().into());
        }
        status
    }

    fn watch_paths(&self) -> Vec<std::path::PathBuf> {
        self.0.watch_paths()
    }

    fn stage_action(&self, request: StageRequest<'_>) -> Option<AdminResponse> {
        handle(&self.0, request)
    }

    fn went_live(&self) {
        let change = self.2.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(change) = change {
            change.apply(&self.0.shadow);
        }
    }
}

pub(crate) fn handle(stage: &WasmEnricher, request: StageRequest<'_>) -> Option<AdminResponse> {
    let answer = match (request.action, request.method) {
        ("shadow", StageMethod::Get) => Ok(summary(stage)),
        ("shadow", StageMethod::Post) => deploy(stage, request),
        ("shadow", StageMethod::Delete) => Ok(remove(stage, request.state_dir)),
        ("promote", StageMethod::Post) => promote(stage, request),
        ("rollback", StageMethod::Post) => rollback(stage, request),
        ("history", StageMethod::Get) => history(stage, request.state_dir),
        ("promote" | "rollback" | "history", method) => Err(AdminResponse::error(
            405,
            "method_not_allowed",
            format!("{method:?} is not allowed on {:?}", request.action),
        )),
        _ => return None,
    };
    Some(answer.unwrap_or_else(|refusal| refusal))
}

fn no_shadow(stage: &WasmEnricher) -> AdminResponse {
    AdminResponse::error(404, "no_shadow", format!("stage {:?} runs no shadow rule", &*stage.stage))
}

fn summary(stage: &WasmEnricher) -> AdminResponse {
    match stage.shadow.current.load().as_deref() {
        Some(shadow) => AdminResponse::ok(shadow.to_json()).with(json!({"stage": &*stage.stage})),
        None => no_shadow(stage),
    }
}

fn remove(stage: &WasmEnricher, state_dir: &Path) -> AdminResponse {
    let _changes = versions::lock_changes();
    match stage.shadow.current.swap(None) {
        Some(old) => {
            versions::prune_unused(state_dir, &stage.stage, None);
            AdminResponse::ok(json!({"removed": old.sha256, "summary": old.summary.to_json()}))
        }
        None => no_shadow(stage),
    }
}

fn store_error(e: std::io::Error) -> AdminResponse {
    tracing::error!(error = %e, "rule versions store");
    AdminResponse::error(500, "store_failed", "the rule versions could not be read or written in the state directory")
}

/// The `signature` query parameter: 128 hex digits (the raw 64 bytes).
fn signature_of(query: &str) -> Result<Option<Vec<u8>>, AdminResponse> {
    let mut signature = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "signature" {
            return Err(AdminResponse::error(
                400,
                "invalid_query",
                format!("unknown parameter {name:?}; the only one is `signature`"),
            )
            .with(json!({"param": name})));
        }
        let bytes = (value.len() == 128 && value.is_ascii())
            .then(|| {
                (0..64).map(|i| u8::from_str_radix(&value[2 * i..2 * i + 2], 16).ok()).collect::<Option<Vec<u8>>>()
            })
            .flatten()
            .ok_or_else(|| {
                AdminResponse::error(
                    400,
                    "invalid_signature",
                    "`signature` must be the Ed25519 signature as 128 hex digits",
                )
                .with(json!({"param": "signature"}))
            })?;
        signature = Some(bytes);
    }
    Ok(signature)
}

fn deploy(stage: &WasmEnricher, request: StageRequest<'_>) -> Result<AdminResponse, AdminResponse> {
    if !stage.results().is_rule() {
        return Err(AdminResponse::error(
            409,
            "not_a_rule",
            format!("stage {:?} is a custom enricher; shadows compare rule verdicts", &*stage.stage),
        ));
    }
    let signature = signature_of(request.query)?;
    let bytes = request.body;
    if bytes.is_empty() {
        return Err(AdminResponse::error(400, "empty_body", "the body must be the module (.wasm or .wat bytes)"));
    }
    let limit = stage.module_size_limit();
    if bytes.len() as u64 > limit {
        return Err(AdminResponse::error(
            413,
            "module_too_large",
            format!("the module is {} bytes, over the stage's module_size_limit_mib ({limit} bytes)", bytes.len()),
        ));
    }
    let sha = to_hex(&Sha256::digest(bytes));
    let _changes = versions::lock_changes();
    let path = versions::version_path(request.state_dir, &stage.stage, &sha);
    let existed = path.exists();
    let path =
        versions::store(request.state_dir, &stage.stage, &sha, bytes, signature.as_deref()).map_err(store_error)?;
    let (module, signed_by) = match stage.load_candidate(&path, bytes, Some(request.state_dir)) {
        Ok(loaded) => loaded,
        Err(e) => {
            if !existed {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(crate::signature::signature_path(&path));
            }
            return Err(AdminResponse::error(422, "invalid_module", crate::text::error_text(&e)));
        }
    };
    let shadow = new_shadow(stage, module, (path, sha.clone(), bytes.len()), Origin::Api, request.actor, signed_by);
    let replaced = stage.shadow.current.swap(Some(Arc::new(shadow))).map(|old| old.sha256.clone());
    versions::prune_unused(request.state_dir, &stage.stage, Some(&sha));
    tracing::info!(stage = %stage.stage, by = request.actor, "shadow rule deployed");
    Ok(summary(stage).with(json!({"replaced": replaced})))
}

fn new_shadow(
    stage: &WasmEnricher,
    module: Arc<crate::runtime::LoadedModule>,
    (path, sha256, size_bytes): (std::path::PathBuf, String, usize),
    origin: Origin,
    by: Option<&str>,
    signed_by: Option<String>,
) -> Shadow {
    Shadow {
        name: format!("{} (shadow {})", &*stage.stage, &sha256[..12]).into(),
        module,
        path,
        sha256,
        size_bytes,
        origin,
        added_at: enrichd_engine::rfc3339(std::time::SystemTime::now()),
        added_by: by.map(str::to_string),
        signed_by,
        stats: ModuleStats::default(),
        breaker: CircuitBreaker::new(
            stage.options.breaker_failures,
            std::time::Duration::from_secs(stage.options.breaker_window_s),
            std::time::Duration::from_secs(stage.options.breaker_cooldown_s),
        ),
        summary: Summary::default(),
        instances: Default::default(),
    }
}

/// Loads the stage's `shadow_module` at build, for [`Enricher::went_live`]
/// to install: nothing to do when a shadow from the API runs (it wins) or
/// the same module already does (its summary goes on), or it is the live
/// module itself (just promoted).
pub(crate) fn config_shadow(
    stage: &WasmEnricher,
    path: &Path,
    state_dir: Option<&Path>,
) -> anyhow::Result<Option<ShadowChange>> {
    use anyhow::Context;
    // Capped while reading, as the live module is: a huge file named here
    // must not be read whole first.
    let bytes = crate::module_file::read_module(path, stage.module_size_limit())
        .with_context(|| format!("reading the shadow module {} (module_size_limit_mib)", path.display()))?;
    let sha = to_hex(&Sha256::digest(&bytes));
    if stage.live_sha256.as_deref() == Some(sha.as_str()) {
        return Ok(None);
    }
    let current = stage.shadow.current.load_full();
    if let Some(current) = current.as_deref() {
        if current.origin == Origin::Api || current.sha256 == sha {
            return Ok(None);
        }
    }
    anyhow::ensure!(stage.results().is_rule(), "shadow_module: only a rule stage can run a shadow");
    let (module, signed_by) =
        stage.load_candidate(path, &bytes, state_dir).with_context(|| format!("shadow module {}", path.display()))?;
    let shadow = new_shadow(stage, module, (path.to_path_buf(), sha, bytes.len()), Origin::Config, None, signed_by);
    Ok(Some(ShadowChange { expected: current, next: Some(Arc::new(shadow)) }))
}

fn promote(stage: &WasmEnricher, request: StageRequest<'_>) -> Result<AdminResponse, AdminResponse> {
    let _changes = versions::lock_changes();
    let shadow = stage.shadow.current.load_full().ok_or_else(|| no_shadow(stage))?;
    let (Some(configured), Some(live_sha), Some(live_bytes)) =
        (&stage.configured_sha256, &stage.live_sha256, &stage.live_bytes)
    else {
        return Err(AdminResponse::error(409, "no_live_module", "the stage has no live module to replace"));
    };
    let dir = request.state_dir;
    if shadow.origin == Origin::Config {
        let bytes = std::fs::read(&shadow.path).map_err(store_error)?;
        if to_hex(&Sha256::digest(&bytes)) != shadow.sha256 {
            return Err(AdminResponse::error(
                409,
                "shadow_changed",
                "the shadow module file changed since it was loaded; reload first",
            ));
        }
        let sig = std::fs::read(crate::signature::signature_path(&shadow.path)).ok();
        versions::store(dir, &stage.stage, &shadow.sha256, &bytes, sig.as_deref()).map_err(store_error)?;
    }
    let live_store = || {
        let sig = std::fs::read(crate::signature::signature_path(stage.live_path())).ok();
        versions::store(dir, &stage.stage, live_sha, live_bytes, sig.as_deref()).map(|_| ())
    };
    let changed = versions::promote(
        dir,
        &stage.stage,
        configured,
        versions::Version { sha256: live_sha, size_bytes: live_bytes.len() },
        versions::Version { sha256: &shadow.sha256, size_bytes: shadow.size_bytes },
        request.actor,
        live_store,
    )
    .map_err(store_error)?;
    // Only this shadow: one deployed meanwhile stays.
    let cleared = stage.shadow.current.compare_and_swap(&shadow, None::<Arc<Shadow>>);
    drop(cleared);
    tracing::info!(stage = %stage.stage, by = request.actor, promoted = %shadow.sha256, replaced = %live_sha, "shadow promoted");
    Ok(AdminResponse::ok(json!({
        "promoted": shadow.sha256, "replaced": live_sha, "summary": shadow.summary.to_json(),
    }))
    .changed([changed]))
}

fn rollback(stage: &WasmEnricher, request: StageRequest<'_>) -> Result<AdminResponse, AdminResponse> {
    let _changes = versions::lock_changes();
    let Some(configured) = &stage.configured_sha256 else {
        return Err(AdminResponse::error(409, "no_live_module", "the stage has no configured module loaded"));
    };
    match versions::rollback(request.state_dir, &stage.stage, configured, request.actor).map_err(store_error)? {
        None => Err(AdminResponse::error(
            409,
            "nothing_to_roll_back",
            format!("stage {:?} runs its configured module; no earlier promoted version to restore", &*stage.stage),
        )),
        Some((changed, from, to)) => {
            tracing::info!(stage = %stage.stage, by = request.actor, from = %from, to = %to, "rule rolled back");
            Ok(AdminResponse::ok(json!({"rolled_back": from, "restored": to})).changed([changed]))
        }
    }
}

fn history(stage: &WasmEnricher, state_dir: &Path) -> Result<AdminResponse, AdminResponse> {
    let state = versions::load(state_dir, &stage.stage).map_err(store_error)?;
    let applies = state.base_sha256.is_some() && state.base_sha256 == stage.configured_sha256;
    let mut entries = state.history.clone();
    entries.reverse();
    Ok(AdminResponse::ok(json!({
        "stage": &*stage.stage,
        "configured_module": stage.configured_path,
        "configured_sha256": stage.configured_sha256,
        "live_sha256": stage.live_sha256,
        "promoted": stage.live_path() != stage.configured_path,
        "stack": if applies { state.stack } else { Vec::new() },
        "history": entries,
        "keep": versions::KEEP,
    })))
}
