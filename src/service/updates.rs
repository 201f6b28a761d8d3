//! The `[[update]]` entries: data files kept current by an updater of the
//! entry's kind (from the registry; the core names none), on a schedule and
//! on demand (`POST /v1/updates/{name}/run`).
//!
//! Why it looks like this:
//! - **The updater fetches, the core swaps.** An updater downloads,
//!   verifies and validates into a staging file the core names, next to
//!   the target (same directory, so the rename is atomic); the core renames
//!   it over the target and reloads the stages watching that path through
//!   the ordinary reload, whose keep-last-good rule still applies (a file a
//!   stage refuses leaves its previous data live). The file watcher sees
//!   the rename too; that second reload finds the same hash and is dropped.
//! - **One run at a time per entry**, scheduled or asked for: a second
//!   caller waits for the first and then runs its own check.
//! - **State outlives the process.** What the last download was (ETag,
//!   Last-Modified, the published digest) and when each check ran are kept
//!   in `state_dir/updates/<name>.json`, so a restart neither downloads
//!   again nor checks before `interval_s` has passed since the last check.
//! - **Secrets never leave.** Values of the kind's secret options are
//!   masked in every stored or logged error (the updaters also mask what
//!   they read from the environment), and views show `<key>_set: true`.
//! - **Push as well as poll.** A runner that can say when its remote copy
//!   changed (`UpdateRunner::changes`, e.g. a watched bucket) is fetched at
//!   once on that signal, through the same run as a scheduled check;
//!   `interval_s` stays as the fallback.
//! - **Content origin by hash.** Each staged file's SHA-256 is remembered
//!   with what the updater said it was (revision, detail); a stage whose
//!   loaded source has that hash reports it as its `origin`. By hash, not
//!   by path: a published file a stage refused is on disk, but the stage
//!   still serves (and reports the origin of) its last good content.
//! - **Configured at start.** A reload of the file does not change running
//!   updaters (the entries are read once); restart to change them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use enrichd_engine::output::check_keys;
use enrichd_engine::updater::{UpdateContext, UpdateRunner, Validators};
use enrichd_engine::Registry;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::AppState;
use crate::metrics::prometheus::UpdateReading;
use origin::{same_file, Origin};
use run::run;

mod origin;
mod run;

/// Keys of an `[[update]]` entry the runtime takes; the rest are the kind's
/// own options.
pub(crate) const RUNTIME_KEYS: [&str; 6] = ["type", "name", "enabled", "path", "interval_s", "on_start"];

/// Shortest `interval_s`.
const MIN_INTERVAL_S: u64 = 10;

/// An `[[update]]` table of the file, as JSON, with its line.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct UpdateEntry {
    pub options: Map<String, Value>,
    pub line: Option<usize>,
}

/// The runtime's keys of an `[[update]]` entry (the rest are the type's
/// own options).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct UpdateRuntime {
    /// The updater type (one a plugin registers; each is listed below).
    /// Required.
    #[serde(rename = "type")]
    pub kind: String,
    /// The entry's name in the API and the metrics (1-64 letters, digits,
    /// `_`, `-`; default: its type).
    pub name: Option<String>,
    /// Run the updater (default true).
    pub enabled: bool,
    /// The file kept current, relative to the config file's directory: the
    /// same path as the `database` of the stage that reads it. Required.
    pub path: PathBuf,
    /// Seconds between checks (default 86400, at least 10). MaxMind
    /// publishes GeoLite2 twice a week; checking daily costs a small
    /// checksum request when nothing changed.
    pub interval_s: u64,
    /// Check at start when the last check (kept in the state directory) is
    /// older than `interval_s` or the file is missing (default true).
    pub on_start: bool,
}

impl Default for UpdateRuntime {
    fn default() -> Self {
        UpdateRuntime {
            kind: String::new(),
            name: None,
            enabled: true,
            path: PathBuf::new(),
            interval_s: 86_400,
            on_start: true,
        }
    }
}

/// A checked entry.
#[derive(Clone, Debug)]
struct UpdateSpec {
    kind: String,
    name: String,
    enabled: bool,
    target: PathBuf,
    interval: Duration,
    on_start: bool,
    options: Map<String, Value>,
}

/// What is known of one entry's runs; persisted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct RunState {
    validators: Validators,
    /// Unix seconds.
    last_check: Option<u64>,
    last_success: Option<u64>,
    last_change: Option<u64>,
    last_error: Option<String>,
    last_error_at: Option<u64>,
    /// `changed`, `unchanged` or `failed`.
    last_result: Option<String>,
    /// What the last change brought (the updater's words).
    last_detail: Option<String>,
    /// What the reload made of the last change, per stage.
    last_apply: Option<Value>,
    /// The last few staged files: what each one was, by SHA-256.
    origins: Vec<Origin>,
    checks: u64,
    changes: u64,
    failures: u64,
    #[serde(skip)]
    next_run: Option<u64>,
    #[serde(skip)]
    running: bool,
}

/// One entry: its runner and state.
struct Lane {
    spec: UpdateSpec,
    runner: Option<Arc<dyn UpdateRunner>>,
    /// Secret option values, masked in every message.
    secrets: Vec<String>,
    /// The secret option names, shown as `<name>_set`.
    secret_fields: &'static [&'static str],
    state: Mutex<RunState>,
    /// One run at a time.
    run_lock: tokio::sync::Mutex<()>,
    file: PathBuf,
}

/// The configured `[[update]]` entries.
#[derive(Default)]
pub(crate) struct Updates {
    lanes: OnceLock<Vec<Arc<Lane>>>,
    /// How a swapped file is reloaded, handed in by [`Updates::start`]: the
    /// service's own reload (the stages reading the file, or the whole
    /// chain when it is the chain file), which lives above this module.
    reload: OnceLock<ReloadChanged>,
}

/// Reloads what the changed paths concern and reports it.
pub(crate) type ReloadChanged = fn(&AppState, &[PathBuf]) -> Value;

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `enrichd check-config`: every problem of the entries (with lines), or
/// the files they keep current (a stage's missing database is then
/// expected: the updater fetches it at start).
pub(crate) fn check(registry: &Registry, entries: &[UpdateEntry], base_dir: &Path) -> Result<Vec<PathBuf>, String> {
    desired(registry, entries, base_dir)
        .map(|specs| specs.into_iter().filter(|s| s.enabled).map(|s| s.target).collect())
}

/// Checks every entry; `Err` lists every problem with its line.
fn desired(registry: &Registry, entries: &[UpdateEntry], base_dir: &Path) -> Result<Vec<UpdateSpec>, String> {
    let mut out: Vec<UpdateSpec> = Vec::new();
    let mut problems = Vec::new();
    for entry in entries {
        let at = entry.line.map_or(String::new(), |l| format!(" (line {l})"));
        let (runtime, options): (Map<String, Value>, Map<String, Value>) = entry
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(k, _)| RUNTIME_KEYS.contains(&k.as_str()));
        let (errors, parsed) = check_keys::<UpdateRuntime>(&runtime);
        let mut mine: Vec<String> = errors.into_iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
        let runtime = parsed.unwrap_or_default();
        let factory = registry.updater(&runtime.kind);
        if factory.is_none() {
            let known: Vec<&str> = registry.updaters().map(|f| f.kind()).collect();
            mine.push(format!("type: {:?} is not an updater type (known: {})", runtime.kind, known.join(", ")));
        }
        let name = runtime.name.clone().unwrap_or_else(|| runtime.kind.clone());
        if !valid_name(&name) {
            mine.push("name: 1-64 letters, digits, `_` and `-`".into());
        }
        if runtime.path.as_os_str().is_empty() {
            mine.push("path: required (the file to keep current, as the stage's `database`)".into());
        }
        if runtime.interval_s < MIN_INTERVAL_S {
            mine.push(format!("interval_s: must be at least {MIN_INTERVAL_S}"));
        }
        if let Some(factory) = factory {
            mine.extend(factory.check(&options).into_iter().map(|e| format!("{}: {}", e.field, e.message)));
        }
        let target = if runtime.path.is_absolute() { runtime.path.clone() } else { base_dir.join(&runtime.path) };
        if out.iter().any(|s| s.name == name) {
            mine.push(format!("a second entry named {name:?}"));
        } else if out.iter().any(|s| s.target == target) {
            mine.push(format!("a second entry for {}", target.display()));
        }
        if mine.is_empty() {
            out.push(UpdateSpec {
                kind: runtime.kind,
                name,
                enabled: runtime.enabled,
                target,
                interval: Duration::from_secs(runtime.interval_s),
                on_start: runtime.on_start,
                options,
            });
        } else {
            problems.push(format!("[[update]]{at}: {}", mine.join("; ")));
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems.join("; "))
    }
}

impl Lane {
    fn mask(&self, mut text: String) -> String {
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "***");
        }
        enrichd_engine::limits::cap_message(text)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn persist(&self) {
        let text = serde_json::to_vec_pretty(&*self.state()).expect("state serializes");
        let tmp = self.file.with_extension("json.tmp");
        // 0600 like the other state files: errors may name hosts.
        let written = std::fs::create_dir_all(self.file.parent().unwrap_or(Path::new(".")))
            .and_then(|()| {
                use std::os::unix::fs::OpenOptionsExt;
                let mut file =
                    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
                std::io::Write::write_all(&mut file, &text)?;
                // On disk before the rename: a crash must not leave an
                // empty state file, read back as "never fetched".
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &self.file));
        if let Err(e) = written {
            tracing::warn!(updater = %self.spec.name, error = %e, path = %self.file.display(), "keeping update state");
        }
    }

    /// Where the updater writes: beside the target, so the swap is a
    /// rename within one directory.
    fn staging(&self) -> PathBuf {
        self.beside_target("update")
    }

    /// Where the file an update replaces is kept until the stages have
    /// taken the new one (next to the target, like the staging file).
    fn last_good(&self) -> PathBuf {
        self.beside_target("last-good")
    }

    /// `.<target file>.<entry name>.<what>` in the target's directory.
    fn beside_target(&self, what: &str) -> PathBuf {
        let file = self.spec.target.file_name().map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
        self.spec.target.with_file_name(format!(".{file}.{}.{what}", self.spec.name))
    }

    fn view(&self) -> Value {
        let s = self.state().clone();
        let mut settings = Map::new();
        for (k, v) in &self.spec.options {
            if self.secret_fields.contains(&k.as_str()) {
                settings.insert(format!("{k}_set"), Value::Bool(true));
            } else {
                // URLs often carry credentials (`user:password@`, an API
                // key in the query): shown without them, whatever the
                // option is called.
                let shown = match v {
                    Value::String(text) if text.contains("://") => {
                        Value::from(enrichd_engine::output::redact_url(text))
                    }
                    other => other.clone(),
                };
                settings.insert(k.clone(), shown);
            }
        }
        let state = match (&self.runner, s.running, s.last_result.as_deref()) {
            (None, ..) => "disabled",
            (_, true, _) => "running",
            (_, _, Some("failed")) => "failing",
            _ => "ok",
        };
        let time = |t: Option<u64>| t.map(|t| enrichd_engine::rfc3339(UNIX_EPOCH + Duration::from_secs(t)));
        json!({
            "name": self.spec.name,
            "type": self.spec.kind,
            "enabled": self.spec.enabled,
            "path": self.spec.target,
            "interval_s": self.spec.interval.as_secs(),
            "state": state,
            "last_check": time(s.last_check),
            "last_success": time(s.last_success),
            "last_change": time(s.last_change),
            "next_run": time(s.next_run),
            "last_result": s.last_result,
            "last_detail": s.last_detail,
            "last_error": s.last_error,
            "last_error_at": time(s.last_error_at),
            "last_apply": s.last_apply,
            "validators": s.validators,
            "checks": s.checks,
            "changes": s.changes,
            "failures": s.failures,
            "settings": settings,
        })
    }
}

impl Updates {
    /// Checks and builds every entry; `Err` lists every problem. Called
    /// once, at start.
    pub(crate) fn configure(
        &self,
        registry: &Registry,
        entries: &[UpdateEntry],
        base_dir: &Path,
        state_dir: &Path,
    ) -> Result<(), String> {
        let specs = desired(registry, entries, base_dir)?;
        let mut lanes = Vec::new();
        for spec in specs {
            let factory = registry.updater(&spec.kind).expect("checked by desired");
            let secret_fields = factory.secret_fields();
            let secrets = spec
                .options
                .iter()
                .filter(|(k, _)| secret_fields.contains(&k.as_str()))
                .filter_map(|(_, v)| v.as_str().filter(|s| !s.is_empty()).map(String::from))
                .collect();
            let runner = if spec.enabled {
                let ctx = UpdateContext {
                    name: spec.name.clone(),
                    base_dir: base_dir.to_path_buf(),
                    target: spec.target.clone(),
                };
                Some(factory.build(&spec.options, &ctx).map_err(|e| format!("[[update]] {:?}: {e:#}", spec.name))?)
            } else {
                None
            };
            let file = state_dir.join("updates").join(format!("{}.json", spec.name));
            let state = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
            lanes.push(Arc::new(Lane {
                spec,
                runner,
                secrets,
                secret_fields,
                state: Mutex::new(state),
                run_lock: tokio::sync::Mutex::new(()),
                file,
            }));
        }
        self.lanes.set(lanes).map_err(|_| "updates configured twice".to_string())
    }

    fn lanes(&self) -> &[Arc<Lane>] {
        self.lanes.get().map_or(&[], |l| l.as_slice())
    }

    /// Starts each enabled entry's schedule (on the current runtime); a
    /// swapped file is reloaded with `reload`.
    pub(crate) fn start(&self, state: &Arc<AppState>, reload: ReloadChanged) {
        let _ = self.reload.set(reload);
        for lane in self.lanes().iter().filter(|l| l.runner.is_some()) {
            let (lane, service) = (lane.clone(), Arc::downgrade(state));
            let mut shutdown = state.shutdown.subscribe();
            let runner = lane.runner.clone().expect("filtered on runner");
            let interval = lane.spec.interval.as_secs();
            let now = now_s();
            let first = match lane.state().last_check {
                _ if !lane.spec.on_start => now + interval,
                _ if !lane.spec.target.exists() => now,
                Some(last) => last.saturating_add(interval).max(now),
                None => now,
            };
            lane.state().next_run = Some(first);
            tokio::spawn(async move {
                loop {
                    let next = lane.state().next_run.unwrap_or_else(now_s);
                    let wait = Duration::from_secs(next.saturating_sub(now_s()));
                    let pushed = runner.changes();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = async move {
                            match pushed {
                                Some(changed) => changed.await,
                                None => std::future::pending().await,
                            }
                        } => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                    let Some(service) = service.upgrade() else { return };
                    run(&service, &lane).await;
                }
            });
        }
    }

    /// `POST /v1/updates/{name}/run`: one check now; `None` for an unknown
    /// name.
    pub(crate) async fn run_now(&self, state: &Arc<AppState>, name: &str) -> Option<Value> {
        let lane = self.lanes().iter().find(|l| l.spec.name == name)?.clone();
        if lane.runner.is_some() {
            // A task of its own: a client that goes away mid-run must not
            // cancel it halfway (a file swapped in with its state, audit
            // entry and `running` flag never recorded).
            let (state, run_lane) = (state.clone(), lane.clone());
            let _ = tokio::spawn(async move { run(&state, &run_lane).await }).await;
        }
        Some(lane.view())
    }

    /// Where a stage's loaded file came from: the entry that keeps `path`
    /// current and what it staged with this `sha256`; `None` when no entry
    /// keeps the path or the content is not one it staged (a file put
    /// there by other means).
    pub(crate) fn origin(&self, path: &Path, sha256: &str) -> Option<(String, String, Origin)> {
        let lane = self.lanes().iter().find(|l| same_file(&l.spec.target, path))?;
        let origin = lane.state().origins.iter().rev().find(|o| o.sha256 == sha256)?.clone();
        Some((lane.spec.name.clone(), lane.spec.kind.clone(), origin))
    }

    /// [`Updates::origin`] as the API shows it beside a stage's source:
    /// `{"from": "update", "update", "type", "revision", "detail", "at"}`,
    /// or `{"from": "file"}` for content no entry staged. `detail` is left
    /// out for public documents.
    pub(crate) fn origin_view(&self, path: &Path, sha256: Option<&str>, with_detail: bool) -> Value {
        let Some((name, kind, origin)) = sha256.and_then(|sha| self.origin(path, sha)) else {
            return json!({ "from": "file" });
        };
        let mut view = json!({
            "from": "update",
            "update": name,
            "type": kind,
            "revision": origin.revision,
            "at": enrichd_engine::rfc3339(UNIX_EPOCH + Duration::from_secs(origin.at)),
        });
        if with_detail {
            view["detail"] = origin.detail.into();
        }
        view
    }

    /// `enrichd publish`: the runner of the entry `name` (built from the
    /// configuration, not started), for [`UpdateRunner::publish`].
    pub(crate) fn runner(&self, name: &str) -> Option<(String, Arc<dyn UpdateRunner>)> {
        let lane = self.lanes().iter().find(|l| l.spec.name == name)?;
        Some((lane.spec.kind.clone(), lane.runner.clone()?))
    }

    /// The enabled entries' runners, in configuration order.
    pub(crate) fn runners(&self) -> Vec<(String, Arc<dyn UpdateRunner>)> {
        self.lanes().iter().filter_map(|l| Some((l.spec.name.clone(), l.runner.clone()?))).collect()
    }

    /// The entries' names, in configuration order.
    pub(crate) fn names(&self) -> Vec<String> {
        self.lanes().iter().map(|l| l.spec.name.clone()).collect()
    }

    /// `GET /v1/updates`.
    pub(crate) fn views(&self) -> Vec<Value> {
        self.lanes().iter().map(|l| l.view()).collect()
    }

    pub(crate) fn readings(&self) -> Vec<UpdateReading> {
        self.lanes()
            .iter()
            .map(|l| {
                let s = l.state();
                UpdateReading {
                    name: l.spec.name.clone(),
                    checks: s.checks,
                    changes: s.changes,
                    failures: s.failures,
                    last_success: s.last_success.unwrap_or(0),
                    healthy: s.last_result.as_deref() != Some("failed"),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(toml: &str) -> UpdateEntry {
        let table: toml::Table = toml.parse().unwrap();
        let Value::Object(options) = serde_json::to_value(table).unwrap() else { unreachable!() };
        UpdateEntry { options, line: Some(3) }
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        enrichd_plugins::register_all(&mut r);
        r
    }

    #[test]
    fn entries_are_checked_whole() {
        let r = registry();
        let ok = entry("type = \"mmdb_url\"\npath = \"geo/x.mmdb\"\nurl = \"http://127.0.0.1:1/x.mmdb\"\n");
        let specs = desired(&r, std::slice::from_ref(&ok), Path::new("/etc/enrichd")).unwrap();
        assert_eq!(specs[0].name, "mmdb_url");
        assert_eq!(specs[0].target, Path::new("/etc/enrichd/geo/x.mmdb"));
        let bad = entry("type = \"mmdb_url\"\ninterval_s = 1\nurl = \"ftp://x\"\nbogus = 1\n");
        let err = desired(&r, &[bad], Path::new("/")).unwrap_err();
        for want in ["(line 3)", "path: required", "interval_s", "url:", "bogus"] {
            assert!(err.contains(want), "{want} in {err}");
        }
        let err = desired(&r, &[ok.clone(), ok], Path::new("/")).unwrap_err();
        assert!(err.contains("a second entry named"), "{err}");
        let err = desired(&r, &[entry("type = \"rsync\"\npath = \"x\"\n")], Path::new("/")).unwrap_err();
        assert!(err.contains("not an updater type") && err.contains("maxmind"), "{err}");
    }
}
