//! The one ingest step every entry point of `enrichd serve` shares: decode,
//! enrich, encode for the caller and for each output's profile, admit to
//! every enabled output, and (for `ack` outputs) wait for delivery.
//!
//! `POST /v1/ingest` and every `[[source]]` call [`ingest`]; they differ
//! only in how they read their bytes and how they answer (an HTTP status,
//! a broker ack). Keeping one function is what makes a source inherit the
//! limits, the 4xx checks, the metrics and the all-or-nothing admission
//! without copying them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use enrichd_engine::{Encoded, Encoding, Input, InputError};

use super::AppState;
use crate::delivery::Refused;

/// What was done with an accepted batch.
pub(crate) struct Ingested {
    /// The caller's encoding of the enriched batch (empty when none was
    /// asked for).
    pub response: Vec<u8>,
    pub events: usize,
    /// The outputs the events were queued for.
    pub outputs: Vec<String>,
}

/// Why a batch was not accepted. Except for `AckTimeout`, nothing of it
/// was queued anywhere.
#[derive(Debug)]
pub(crate) enum IngestError {
    /// The input is wrong (what and where).
    BadInput(InputError),
    /// An output's backlog is full.
    Backpressure(Refused),
    /// An `ack` output did not confirm delivery in time; the events stay
    /// queued and will still be delivered.
    AckTimeout { output: String, timeout: Duration },
    /// The enrichment task failed (a panic): nothing was queued.
    Internal,
}

/// How long a batch waits for its `ack` outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AckWait {
    /// Up to each output's `ack_timeout` (an HTTP client, which retries).
    Timeout,
    /// Until delivered, or until shutdown (a broker source: its message
    /// stays unsettled meanwhile; giving it back after a timeout would
    /// queue the same events again, once per redelivery).
    UntilDelivered,
}

/// Runs `input` through the pipeline and hands it to every enabled output.
/// `respond`: the encoding the caller wants back (`None`: only counts).
/// `arrived` is when the input arrived, for the lag metrics. `origin`: the
/// input's idempotency key (`enrichd_engine::source::Payload::origin`),
/// kept with the batch in every output's backlog.
pub(crate) async fn ingest(
    state: &Arc<AppState>,
    input: Input,
    arrived: Instant,
    respond: Option<Encoding>,
    origin: Option<&str>,
    ack_wait: AckWait,
) -> Result<Ingested, IngestError> {
    let origin = origin.map(str::to_string);
    let worker = state.clone();
    let outputs = state.delivery.active();
    let no_outputs = outputs.is_empty();
    // Counted until enriched: waiting for a blocking thread (if it goes to
    // one), then running.
    let _queued = state.metrics.batch_in_flight();
    let size = input_len(&input);
    let work = move || enrich_and_admit(&worker, input, respond, &outputs, arrived, origin.as_deref());
    // Parsing, enrichment and spool appends are CPU and disk work: kept off
    // the I/O threads, except a small batch when no output is enabled (no
    // disk on its path): its work (~100 us for 100 events) costs less than
    // the two thread hand-offs of the blocking pool. A panic there is the
    // same 500 as on a blocking thread.
    let (response, events, admitted) = if size <= INLINE_MAX_BYTES && no_outputs {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|_| {
            tracing::error!("ingest worker failed");
            IngestError::Internal
        })??
    } else {
        tokio::task::spawn_blocking(work).await.map_err(|e| {
            tracing::error!(error = %e, "ingest worker failed");
            IngestError::Internal
        })??
    };
    let mut names = Vec::new();
    if let Some(admitted) = &admitted {
        let waited = match ack_wait {
            AckWait::Timeout => admitted.wait_acks().await,
            AckWait::UntilDelivered => admitted.wait_acks_until(state.shutdown.subscribe()).await,
        };
        waited.map_err(|output| IngestError::AckTimeout { output, timeout: admitted.ack_timeout() })?;
        names = admitted.active.iter().map(|o| o.lane.name.clone()).collect();
    }
    Ok(Ingested { response, events, outputs: names })
}

/// Bodies up to this size with no output enabled are enriched on the I/O
/// thread that read them (see [`ingest`]).
const INLINE_MAX_BYTES: usize = 64 << 10;

/// What [`ingest`] does with a batch, on a blocking thread (or, small and
/// with no output enabled, on the I/O thread): the pipeline run with every
/// encoding needed, then admission to every output.
fn enrich_and_admit(
    worker: &Arc<AppState>,
    input: Input,
    respond: Option<Encoding>,
    outputs: &Arc<Vec<crate::delivery::Active>>,
    arrived: Instant,
    origin: Option<&str>,
) -> Result<(Vec<u8>, usize, Option<crate::delivery::Admitted>), IngestError> {
    let chain = worker.engine.chain();
    // The caller's answer (if any), then one NDJSON layout per distinct
    // output profile.
    let mut encodings = Vec::with_capacity(1 + outputs.len());
    let responding = respond.is_some();
    encodings.extend(respond);
    let first_output = encodings.len();
    let mut layout_of = Vec::with_capacity(outputs.len());
    for o in outputs.iter() {
        let same = encodings[first_output..].iter().position(|e| same_profile(&e.profile, &o.profile));
        layout_of.push(
            first_output
                + same.unwrap_or_else(|| {
                    encodings.push(Encoding::NDJSON.with_profile(o.profile.clone()));
                    encodings.len() - first_output - 1
                }),
        );
    }
    // A first guess: the writers size each buffer from its first
    // record when the guess is short (engine `batch::write_lines`).
    let size = input_len(&input);
    let mut outs: Vec<Encoded> = encodings.iter().map(|_| Encoded::with_capacity(size * 2 + 4096)).collect();
    let processed =
        worker.pipeline.run_many(&chain, input, &encodings, arrived, &mut outs).map_err(IngestError::BadInput)?;
    let admitted = if outputs.is_empty() || processed.events == 0 {
        None
    } else {
        let layouts: Vec<crate::delivery::Payload> = outs
            .drain(first_output..)
            .map(|o| crate::delivery::Payload { bytes: o.bytes.into(), line_ends: Some(o.line_ends.into()) })
            .collect();
        let payloads: Vec<_> = layout_of.iter().map(|&i| layouts[i - first_output].clone()).collect();
        let events = u32::try_from(processed.events).unwrap_or(u32::MAX);
        Some(crate::delivery::submit(outputs.clone(), &payloads, events, origin).map_err(IngestError::Backpressure)?)
    };
    let response = if responding { outs.swap_remove(0).bytes } else { Vec::new() };
    Ok::<_, IngestError>((response, processed.events, admitted))
}

fn input_len(input: &Input) -> usize {
    match input {
        Input::Envelope(body) => body.len(),
        Input::Ndjson { text, .. } => text.len(),
    }
}

fn same_profile(a: &Option<Arc<enrichd_engine::Profile>>, b: &Option<Arc<enrichd_engine::Profile>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}
