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
    let known = lane.state().validators.clone();
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
                    swap(&staging, &lane.spec.target).map(|()| Some((validators, detail)))
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

/// Renames the staged file over `target` and syncs the directory, so the
/// new file survives a crash right after.
fn swap(staging: &Path, target: &Path) -> Result<(), String> {
    std::fs::rename(staging, target).map_err(|e| format!("replacing {} with the download: {e}", target.display()))?;
    if let Some(dir) = target.parent() {
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}
