//! One check of an `[[update]]` entry: fetch, verify, stage, swap the file
//! in, reload the stages reading it, and record what happened.

use std::path::Path;
use std::sync::Arc;

use enrichd_engine::updater::Fetched;

use super::origin::{self, sha256_file, Origin};
use super::{now_s, AppState, Lane};

/// One check, with the swap and the reload when there is something new.
pub(super) async fn run(service: &Arc<AppState>, lane: &Lane) {
    let Some(runner) = &lane.runner else { return };
    let _one = lane.run_lock.lock().await;
    lane.state().running = true;
    let staging = lane.staging();
    let (known, previous_success) = {
        let s = lane.state();
        (s.validators.clone(), s.last_success)
    };
    let started = now_s();
    let fetched = match std::fs::create_dir_all(staging.parent().unwrap_or(Path::new("."))) {
        Ok(()) => runner.fetch(&known, &staging).await,
        Err(e) => Err(format!("creating {}: {e}", staging.parent().unwrap_or(Path::new(".")).display())),
    };
    let outcome = match fetched {
        Ok(Fetched::Unchanged) => Ok(None),
        Ok(Fetched::Staged { validators, detail }) => {
            let hashed = staging.clone();
            let sha256 = tokio::task::spawn_blocking(move || sha256_file(&hashed))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| format!("reading the staged file: {e}")));
            match sha256 {
                Ok(sha256) => {
                    // Known before the file is swapped in: whoever sees the
                    // new content (a stage reloading on the rename) can
                    // already tell where it came from.
                    let revision = validators.etag.clone().or_else(|| validators.digest.clone());
                    let origin = Origin { sha256, revision, detail: detail.clone(), at: now_s() };
                    origin::remember(&mut lane.state().origins, origin);
                    keep_previous(&lane.spec.target, &lane.last_good())
                        .and_then(|()| swap(&staging, &lane.spec.target))
                        .map(|()| Some((validators, detail)))
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&staging);
    if let Ok(Some((validators, _))) = &outcome {
        // The new file is in place: its validators are written before the
        // stages see it, so a restart right after (even before the reload
        // answers) does not fetch the same version again.
        {
            let mut s = lane.state();
            s.validators = validators.clone();
            s.last_check = Some(started);
            s.last_success = Some(started);
        }
        lane.persist();
    }
    let apply = match &outcome {
        Ok(Some(_)) => {
            let target = lane.spec.target.clone();
            let service = service.clone();
            // The same reload as the file watcher's: the stages reading the
            // file, or the whole chain when the file is the chain file.
            let report = tokio::task::spawn_blocking(move || match service.updates.reload.get() {
                Some(reload) => reload(&service, &[target]),
                None => serde_json::to_value(service.engine.reload_paths(&[target])).unwrap_or_default(),
            })
            .await;
            report.ok()
        }
        _ => None,
    };
    // The updater's checks are the feed's; a stage reading the file may
    // still refuse it (its own size limits, a shrink it holds back, a
    // database it cannot use). The stage then keeps its last good data in
    // memory, and the disk must keep it too, or the next start would load
    // the refused file.
    let outcome = match (outcome, apply.as_ref().and_then(refusal)) {
        (Ok(Some(_)), Some(reason)) => {
            let restored = restore_previous(&lane.spec.target, &lane.last_good());
            {
                let mut s = lane.state();
                s.validators = known.clone();
                s.last_success = previous_success;
            }
            Err(match restored {
                Ok(()) => {
                    format!("the stages reading the file refused the new version ({reason}); the previous file is back")
                }
                Err(e) => format!("the stages reading the file refused the new version ({reason}); {e}"),
            })
        }
        (outcome, _) => {
            let _ = std::fs::remove_file(lane.last_good());
            outcome
        }
    };
    {
        let mut s = lane.state();
        s.checks += 1;
        s.last_check = Some(started);
        s.running = false;
        s.next_run = Some(now_s() + lane.spec.interval.as_secs());
        match outcome {
            Ok(None) => {
                s.last_success = Some(started);
                s.last_result = Some("unchanged".into());
                tracing::info!(updater = %lane.spec.name, "data file unchanged");
            }
            Ok(Some((validators, detail))) => {
                s.last_success = Some(started);
                s.last_change = Some(now_s());
                s.changes += 1;
                s.validators = validators;
                s.last_result = Some("changed".into());
                tracing::info!(updater = %lane.spec.name, path = %lane.spec.target.display(), %detail, "data file updated");
                let mut entry =
                    crate::audit::AuditEntry::new("updater", "data_file_updated", format!("update {}", lane.spec.name));
                entry.detail = Some(format!("{}: {detail}", lane.spec.target.display()));
                service.audit.record(entry);
                s.last_detail = Some(detail);
                s.last_apply = apply;
            }
            Err(e) => {
                if apply.is_some() {
                    s.last_apply = apply;
                }
                let e = lane.mask(e);
                tracing::warn!(updater = %lane.spec.name, error = %e, "update failed; the current file stays");
                s.failures += 1;
                s.last_error = Some(e);
                s.last_error_at = Some(now_s());
                s.last_result = Some("failed".into());
            }
        }
    }
    lane.persist();
}

/// Why the reload after a swap refused the new file: a stage (or the
/// configuration, for a chain file) rejected it or held it back.
fn refusal(report: &serde_json::Value) -> Option<String> {
    let mut reasons: Vec<String> = report["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|stage| matches!(stage["outcome"].as_str(), Some("rejected" | "held_back")))
        .map(|stage| match stage["error"].as_str() {
            Some(error) => format!("{}: {error}", stage["name"].as_str().unwrap_or("?")),
            None => format!("{}: {}", stage["name"].as_str().unwrap_or("?"), stage["outcome"].as_str().unwrap_or("?")),
        })
        .collect();
    if report["config"]["outcome"] == "rejected" {
        reasons.push(format!("configuration: {}", report["config"]["error"].as_str().unwrap_or("rejected")));
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// Keeps the file about to be replaced as `last_good` (a hard link: no
/// copy, same file system as the target), so a refused update can put it
/// back. No file yet: nothing to keep.
fn keep_previous(target: &Path, last_good: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(last_good);
    match std::fs::hard_link(target, last_good) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("keeping the current {} before replacing it: {e}", target.display())),
    }
}

/// Puts the file kept by [`keep_previous`] back over `target`, or removes
/// `target` when there was none before.
fn restore_previous(target: &Path, last_good: &Path) -> Result<(), String> {
    let restored = if last_good.exists() { std::fs::rename(last_good, target) } else { std::fs::remove_file(target) };
    restored.map_err(|e| format!("putting the previous {} back failed: {e}", target.display()))?;
    sync_parent(target);
    Ok(())
}

fn sync_parent(target: &Path) {
    if let Some(dir) = target.parent() {
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
}

/// Renames the staged file over `target` and syncs the directory, so the
/// new file survives a crash right after.
fn swap(staging: &Path, target: &Path) -> Result<(), String> {
    std::fs::rename(staging, target).map_err(|e| format!("replacing {} with the download: {e}", target.display()))?;
    sync_parent(target);
    Ok(())
}
