//! `[ingest] forward`: an HTTP-ingest instance that publishes each
//! accepted raw batch to a queue (a `[[forward]]` entry's target, e.g. a
//! NATS stream) instead of enriching it; instances with a `[[source]]` on
//! that queue do the enrichment. Collectors keep `POST /v1/ingest`.
//!
//! The core names no target: `[[forward]]` entries are built by the
//! registry's forward kinds (`enrichd_engine::forward`). One entry is in
//! use, the one `forward` names (its `name`, default its `type`); the
//! others are checked too, so a typo is found before it is switched on.
//! Built once at start: a changed `[ingest]` or `[[forward]]` is reported
//! by a reload as `needs_restart` (["forward"]), like `[[update]]`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use enrichd_engine::forward::{ForwardContext, Forwarder};
use enrichd_engine::output::check_keys;
use enrichd_engine::Registry;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// `[ingest]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct IngestConfig {
    /// Publish each accepted `POST /v1/ingest` batch to this `[[forward]]`
    /// entry (its `name`, default its `type`, e.g. `"nats"`) instead of
    /// enriching it here; the answer is 200 `{"accepted", "forwarded"}`
    /// once the queue acknowledged the batch (503 when it did not, 413 when
    /// the batch cannot fit a message). Bad batches are still refused here
    /// with the same 4xx. Default: enrich here.
    pub forward: Option<String>,
}

/// The runtime's keys of a `[[forward]]` entry (the rest are the type's
/// own options).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ForwardRuntime {
    /// The forwarding type (`nats`). Required.
    #[serde(rename = "type")]
    pub kind: String,
    /// The entry's name, which `[ingest] forward` names (default: the
    /// type).
    pub name: Option<String>,
}

/// A `[[forward]]` table of the file, as JSON, with its line.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ForwardEntry {
    pub options: Map<String, Value>,
    pub line: Option<usize>,
}

/// The forwarding target in use, and its counters.
pub(crate) struct Forwarding {
    pub name: String,
    pub kind: String,
    pub forwarder: Arc<dyn Forwarder>,
    /// Batches and events acknowledged by the queue.
    pub batches: AtomicU64,
    pub events: AtomicU64,
    /// Batches refused (unavailable, too large).
    pub failed: AtomicU64,
}

impl Forwarding {
    /// `GET /v1/metrics`' `forward` object.
    pub(crate) fn view(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.kind,
            "batches": self.batches.load(Relaxed),
            "events": self.events.load(Relaxed),
            "failed": self.failed.load(Relaxed),
        })
    }
}

/// Checks every `[[forward]]` entry and builds the one `ingest.forward`
/// names. `Ok(None)`: not forwarding. `Err`: every problem, with lines.
pub(crate) fn build(
    registry: &Registry,
    ingest: &IngestConfig,
    entries: &[ForwardEntry],
) -> Result<Option<Forwarding>, String> {
    let mut problems = Vec::new();
    let mut checked = Vec::new();
    for entry in entries {
        let at = entry.line.map_or(String::new(), |l| format!(" (line {l})"));
        let runtime_part: Map<String, Value> = entry
            .options
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "type" | "name"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let own: Map<String, Value> = entry
            .options
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "type" | "name"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (errors, runtime) = check_keys::<ForwardRuntime>(&runtime_part);
        let Some(runtime) = runtime.filter(|_| errors.is_empty()) else {
            let text: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
            problems.push(format!("[[forward]]{at}: {}", text.join("; ")));
            continue;
        };
        let Some(factory) = registry.forwarder(&runtime.kind) else {
            let known: Vec<&str> = registry.forwarders().map(|f| f.kind()).collect();
            problems.push(format!("[[forward]]{at}: type: {:?} is not one of {known:?}", runtime.kind));
            continue;
        };
        let errors = factory.check(&own);
        if !errors.is_empty() {
            let text: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
            problems.push(format!("[[forward]]{at}: {}", text.join("; ")));
            continue;
        }
        let name = runtime.name.unwrap_or_else(|| runtime.kind.clone());
        if checked.iter().any(|(n, _, _)| *n == name) {
            problems.push(format!("[[forward]]{at}: a second entry named {name:?}"));
            continue;
        }
        checked.push((name, runtime.kind, own));
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let Some(wanted) = &ingest.forward else { return Ok(None) };
    let Some((name, kind, options)) = checked.into_iter().find(|(n, _, _)| n == wanted) else {
        return Err(format!("[ingest] forward = {wanted:?}: no [[forward]] entry of that name"));
    };
    let factory = registry.forwarder(&kind).expect("checked above");
    let forwarder = factory
        .build(&options, &ForwardContext { name: name.clone() })
        .map_err(|e| format!("[[forward]] {name:?}: {e:#}"))?;
    Ok(Some(Forwarding {
        name,
        kind,
        forwarder,
        batches: AtomicU64::new(0),
        events: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(v: Value, line: usize) -> ForwardEntry {
        ForwardEntry { options: v.as_object().unwrap().clone(), line: Some(line) }
    }

    #[test]
    fn entries_are_checked_and_the_named_one_is_required() {
        // The plugins' own registration (not `crate::app`: service must not
        // import it, tests/module_cycles.rs).
        let mut registry = Registry::new();
        enrichd_plugins::register_all(&mut registry);
        let ingest = IngestConfig { forward: Some("raw".into()) };
        let good = entry(json!({"type": "nats", "name": "raw", "subject": "raw.http"}), 3);
        assert!(build(&registry, &ingest, std::slice::from_ref(&good)).unwrap().is_some());
        assert!(build(&registry, &IngestConfig::default(), std::slice::from_ref(&good)).unwrap().is_none());
        let err = build(&registry, &IngestConfig { forward: Some("nats".into()) }, std::slice::from_ref(&good))
            .err()
            .unwrap();
        assert!(err.contains("no [[forward]] entry"), "{err}");
        let bad = entry(json!({"type": "nats", "subject": "a b", "bogus": 1}), 9);
        let err = build(&registry, &ingest, &[good, bad]).err().unwrap();
        assert!(err.contains("line 9") && err.contains("subject:") && err.contains("bogus:"), "{err}");
        let err = build(&registry, &ingest, &[entry(json!({"type": "kafka"}), 1)]).err().unwrap();
        assert!(err.contains("type: \"kafka\""), "{err}");
    }
}
