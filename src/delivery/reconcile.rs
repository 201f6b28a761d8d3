//! Reconciling the running outputs with what is wanted: the file's
//! `[[output]]` entries, the API's stored settings and the environment's
//! switches, merged ([`desired`]) and applied ([`Delivery::reconcile`]).
//!
//! Why the merge happens under the running set's lock: the file's entries
//! (set by a reload, and put back when a reload is refused) and the API's
//! stored settings change from different threads, each change followed by
//! a reconcile. A reconcile that read them before queueing for the lock
//! could apply, last, a set that was already replaced (a refused file's
//! outputs, restored meanwhile), and nothing would revisit it: the next
//! reload sees its entries unchanged. Read under the lock, the last
//! reconcile to run applies the last state written, whoever wrote it.

use std::sync::Arc;

use enrichd_engine::{Profile, Profiles, Registry};
use serde_json::{Map, Value};

use super::options::{self, OutputSpec};
use super::{Delivery, Desired, Source};

impl Delivery {
    /// Applies the file's entries (as last set), the API's stored settings
    /// and the switches `env` reads to the running outputs. `Err` names
    /// what is wrong; the running outputs are then unchanged.
    pub(crate) async fn reconcile(
        &self,
        registry: &Registry,
        profiles: &(Profiles, Option<Arc<Profile>>),
        env: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<(), String> {
        let mut running = self.running.lock().await;
        // Read only now (see the module docs).
        let entries = self.config_entries();
        let (stored, mut problems) = self.store.load();
        let (desired, more) = desired(registry, &entries, &stored, env);
        problems.extend(more);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        self.apply_locked(&mut running, registry, desired, profiles).await.map_err(|e| format!("{e:#}"))
    }
}

/// Merges the file's `[[output]]` entries with the API's stored settings
/// (the API's win by name) and the `EXPORT_<NAME>_ENABLED` switches (which
/// win over both). Every problem is returned, with where it comes from.
pub(crate) fn desired(
    registry: &Registry,
    config: &[options::OutputEntry],
    stored: &[(String, Map<String, Value>)],
    env: &dyn Fn(&str) -> Option<String>,
) -> (Vec<Desired>, Vec<String>) {
    let mut out: Vec<Desired> = Vec::new();
    let mut problems = Vec::new();
    let describe = |errors: Vec<enrichd_engine::output::FieldError>| {
        errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
    };
    for entry in config {
        let at = entry.line.map_or(String::new(), |l| format!(" (line {l})"));
        match OutputSpec::check(registry, &entry.options, None) {
            Ok(spec) if out.iter().any(|d| d.spec.runtime.name == spec.runtime.name) => {
                problems.push(format!("[[output]]{at}: a second output named {:?}", spec.runtime.name))
            }
            Ok(spec) => out.push(Desired { spec, source: Source::Config }),
            Err(errors) => problems.push(format!("[[output]]{at}: {}", describe(errors))),
        }
    }
    for (name, map) in stored {
        match OutputSpec::check(registry, map, Some(name)) {
            Ok(spec) => {
                out.retain(|d| d.spec.runtime.name != *name);
                out.push(Desired { spec, source: Source::Api });
            }
            Err(errors) => problems.push(format!("stored settings of output {name:?}: {}", describe(errors))),
        }
    }
    for d in &mut out {
        match options::enabled_override(&d.spec.runtime.name, env) {
            Ok(Some(on)) => d.spec.runtime.enabled = on,
            Ok(None) => {}
            Err(e) => problems.push(e),
        }
    }
    out.sort_by(|a, b| a.spec.runtime.name.cmp(&b.spec.runtime.name));
    (out, problems)
}
