//! Handing one enriched batch to every enabled output: admission, append,
//! and (for `ack` outputs) waiting for delivery.
//!
//! A batch is admitted to all enabled outputs or to none: room is reserved
//! in each backlog first, and only when every reservation holds are the
//! appends made. A refusal names the full output, so the client's 503 says
//! what to look at, and nothing of the request was queued anywhere.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::entry::Payload;
use super::{unix_ms, Active};

/// The batch was queued: `(output index in the snapshot, sequence)` per
/// output, to wait on for `ack` outputs.
pub(crate) struct Admitted {
    pub active: Arc<Vec<Active>>,
    pub queued: Vec<u64>,
}

/// Why a batch was not queued everywhere (the request answers 503).
#[derive(Debug)]
pub(crate) struct Refused {
    /// `output_backlog_full` (nothing queued anywhere) or
    /// `output_unavailable` (an append failed after the outputs in
    /// `queued_for` had taken the batch).
    pub code: &'static str,
    pub output: String,
    pub message: String,
    /// Seconds the client should wait before resending.
    pub retry_after_secs: u64,
    /// Outputs that hold the batch anyway: a resend may reach them twice.
    pub queued_for: Vec<String>,
}

/// Admits and appends `payloads[i]` (NDJSON, `events` lines) to output `i`
/// of `active`, each entry keeping the input's `origin` key. Blocking
/// (spool appends fsync): call on a blocking thread.
pub(crate) fn submit(
    active: Arc<Vec<Active>>,
    payloads: &[Payload],
    events: u32,
    origin: Option<&str>,
) -> Result<Admitted, Refused> {
    debug_assert_eq!(active.len(), payloads.len());
    for (reserved, (a, payload)) in active.iter().zip(payloads).enumerate() {
        if !a.lane.bounds.reserve(&*a.lane.backlog, a.lane.backlog.cost(payload), u64::from(events)) {
            for (b, p) in active.iter().zip(payloads).take(reserved) {
                b.lane.bounds.release(b.lane.backlog.cost(p), u64::from(events));
            }
            a.lane.stats.refused.fetch_add(u64::from(events), Relaxed);
            let queued = a.lane.backlog.stats();
            return Err(Refused {
                code: "output_backlog_full",
                queued_for: Vec::new(),
                output: a.lane.name.clone(),
                message: format!(
                    "output {:?} is at its backlog bound ({} events, {} bytes queued); nothing of this request \
                     was accepted: retry later",
                    a.lane.name, queued.events, queued.bytes
                ),
                retry_after_secs: 5,
            });
        }
    }
    let now = unix_ms();
    let mut queued = Vec::with_capacity(active.len());
    let mut failure = None;
    for (a, payload) in active.iter().zip(payloads) {
        let result = a.lane.backlog.append(payload, events, now, origin);
        a.lane.bounds.release(a.lane.backlog.cost(payload), u64::from(events));
        match result {
            Ok(seq) => {
                a.lane.stats.queued.fetch_add(u64::from(events), Relaxed);
                a.lane.wake.notify_one();
                queued.push(seq);
            }
            Err(e) => {
                // Other outputs may have the batch: a resend duplicates it
                // there (at least once), and the answer says where.
                a.lane.error(format!("appending to the backlog: {e}"));
                failure.get_or_insert(Refused {
                    code: "output_unavailable",
                    output: a.lane.name.clone(),
                    message: format!("output {:?} cannot queue events now (see its last_error)", a.lane.name),
                    retry_after_secs: 5,
                    queued_for: Vec::new(),
                });
                queued.push(u64::MAX);
            }
        }
    }
    match failure {
        Some(mut refused) => {
            refused.queued_for = active
                .iter()
                .zip(&queued)
                .filter(|(_, &seq)| seq != u64::MAX)
                .map(|(a, _)| a.lane.name.clone())
                .collect();
            refused.message = match refused.queued_for.is_empty() {
                true => format!("{}; nothing of this request was queued: retry later", refused.message),
                false => format!(
                    "{}; the batch was queued for {:?} all the same: a resend reaches them twice (outputs with \
                     id_mode = \"hash\" or message ids drop the repeat)",
                    refused.message, refused.queued_for
                ),
            };
            Err(refused)
        }
        None => Ok(Admitted { active, queued }),
    }
}

impl Admitted {
    /// Waits until every `ack` output has delivered (or dead-lettered) the
    /// batch; `Err(name)` for the first that did not within its timeout.
    pub(crate) async fn wait_acks(&self) -> Result<(), String> {
        for (a, seq) in self.active.iter().zip(&self.queued) {
            if a.lane.durability != super::options::Durability::Ack {
                continue;
            }
            let mut rx = a.lane.acked.subscribe();
            let done = tokio::time::timeout(a.ack_timeout, rx.wait_for(|acked| *acked > *seq)).await;
            if !matches!(done, Ok(Ok(_))) {
                return Err(a.lane.name.clone());
            }
        }
        Ok(())
    }

    /// [`Admitted::wait_acks`] with no time limit: until every `ack`
    /// output has delivered (or dead-lettered) the batch, or `shutdown`
    /// turns true (`Err(name)` of the output still waited for).
    pub(crate) async fn wait_acks_until(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) -> Result<(), String> {
        for (a, seq) in self.active.iter().zip(&self.queued) {
            if a.lane.durability != super::options::Durability::Ack {
                continue;
            }
            let mut rx = a.lane.acked.subscribe();
            tokio::select! {
                done = rx.wait_for(|acked| *acked > *seq) => {
                    if done.is_err() {
                        return Err(a.lane.name.clone());
                    }
                }
                _ = shutdown.wait_for(|stopping| *stopping) => return Err(a.lane.name.clone()),
            }
        }
        Ok(())
    }

    /// Longest ack wait configured among the outputs (for messages).
    pub(crate) fn ack_timeout(&self) -> Duration {
        self.active.iter().map(|a| a.ack_timeout).max().unwrap_or_default()
    }
}
