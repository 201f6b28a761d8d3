//! The one path every entry point runs: decode → chain → observers → encode.
//!
//! HTTP ingest and `[[source]]` entries (both through the service's one
//! ingest step), `enrichd enrich`, `enrichd rule test` and `enrichd bench`
//! are thin adapters over [`Pipeline`]: they bring
//! bytes and a chain snapshot and get the encoded answer back. Keeping the
//! steps in one place is what makes the benchmark measure the code users
//! run, and what lets a new entry point inherit every check (limits, strict
//! 4xx errors) and every observer (live metrics) without copying them.
//!
//! The pipeline holds no chain: callers pass the snapshot they took
//! ([`crate::Engine::chain`]) so a batch never sees two chain versions, and
//! offline tools can run a chain they built themselves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch::Batch;
use crate::chain::Chain;
use crate::format::Format;
use crate::parse::{parse_envelope_in_parts, parse_ndjson_in_parts, InputError, Limits};
use crate::profile::{Plan, Profile};

pub use split::Split;

#[path = "pipeline_split.rs"]
mod split;

/// What arrives: bytes in one of the accepted input shapes.
pub enum Input {
    /// A `/v1/ingest` envelope (`collector_id`, `format`, `records`).
    Envelope(Vec<u8>),
    /// Newline-delimited records of one format. `first_index` is the number
    /// error messages give the first record (a line number, or a record
    /// index when the text continues a stream).
    Ndjson { text: String, format: Format, first_index: usize },
}

/// How enriched events leave the pipeline: the envelope and the output
/// profile (`None`: the default v1.4 layout, see [`crate::profile`]).
#[derive(Clone, Debug)]
pub struct Encoding {
    pub shape: Shape,
    pub profile: Option<Arc<Profile>>,
}

impl Encoding {
    /// The `/v1/ingest` answer in the default layout.
    pub const INGEST_RESPONSE: Encoding = Encoding { shape: Shape::IngestResponse, profile: None };
    /// NDJSON in the default layout.
    pub const NDJSON: Encoding = Encoding { shape: Shape::Ndjson, profile: None };

    /// This encoding with records written in `profile`.
    pub fn with_profile(mut self, profile: Option<Arc<Profile>>) -> Self {
        self.profile = profile;
        self
    }
}

/// The envelope around enriched events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// The `/v1/ingest` answer: `{"collector_id", "format", "count", "records": [...]}`.
    IngestResponse,
    /// One enriched record per line.
    Ndjson,
}

/// Timing of one batch through the pipeline.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// From the input's arrival (before its bytes were read, for HTTP) to
    /// the end of enrichment: what a client waits for, queueing included.
    pub lag: Duration,
    /// Decoding and enrichment.
    pub processing: Duration,
}

/// Watches batches go by (live metrics, and later per-output accounting).
///
/// Observers run on the batch's own thread right after the chain, with the
/// batch still hot in cache; they must be cheap and must not block.
pub trait Observer: Send + Sync {
    /// `events` decoded events enter the chain.
    fn entering(&self, _events: usize) {}
    /// The events announced by [`Observer::entering`] left the chain (or the
    /// chain panicked: then `observe` is not called, `left` still is).
    fn left(&self, _events: usize) {}
    /// One enriched batch, before it is encoded.
    fn observe(&self, chain: &Chain, batch: &Batch, timing: Timing);
}

/// One encoding's bytes as [`Pipeline::run_many`] wrote them.
#[derive(Clone, Debug, Default)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    /// For an NDJSON encoding: where each line of this run ends (the
    /// position of its line feed, counted from where the run began writing
    /// in `bytes`), one per event in order. Empty for other shapes. Kept so
    /// that readers of the lines (an output's worker) need not search for
    /// them.
    pub line_ends: Vec<usize>,
}

impl Encoded {
    /// An empty buffer with room for `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        Encoded { bytes: Vec::with_capacity(bytes), line_ends: Vec::new() }
    }
}

/// What one run did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Processed {
    pub events: usize,
    /// The generation of the chain snapshot the batch ran on.
    pub chain_generation: u64,
}

/// A bad record skipped by [`Pipeline::run_lenient`].
#[derive(Debug)]
pub struct Skipped {
    /// The record's number (see [`Input::Ndjson`]'s `first_index`).
    pub index: usize,
    pub error: InputError,
}

/// Decode → chain → observers → encode, shared by every entry point.
#[derive(Clone, Default)]
pub struct Pipeline {
    limits: Limits,
    observers: Vec<Arc<dyn Observer>>,
    split: Split,
}

impl Pipeline {
    pub fn new(limits: Limits) -> Self {
        Pipeline { limits, observers: Vec::new(), split: Split::default() }
    }

    /// How large batches are split over threads (see [`Split`]).
    pub fn with_split(mut self, split: Split) -> Self {
        self.split = split;
        self
    }

    /// Adds an observer; observers run in the order added.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Runs one input through `chain` and appends the encoded result to
    /// `out`. A refused input is refused whole (nothing is enriched or
    /// observed) and the error says what and where. `arrived` is when the
    /// input arrived, for the lag observers see.
    pub fn run(
        &self,
        chain: &Chain,
        input: Input,
        encoding: Encoding,
        arrived: Instant,
        out: &mut Vec<u8>,
    ) -> Result<Processed, InputError> {
        let mut outs = [Encoded { bytes: std::mem::take(out), line_ends: Vec::new() }];
        let result = self.run_many(chain, input, std::slice::from_ref(&encoding), arrived, &mut outs);
        let [done] = outs;
        *out = done.bytes;
        result
    }

    /// [`Pipeline::run`] writing the enriched batch once per encoding
    /// (`outs[i]` gets `encodings[i]`): one decode and one chain run for
    /// the client's answer and every output's layout.
    pub fn run_many(
        &self,
        chain: &Chain,
        input: Input,
        encodings: &[Encoding],
        arrived: Instant,
        outs: &mut [Encoded],
    ) -> Result<Processed, InputError> {
        assert_eq!(encodings.len(), outs.len(), "one output buffer per encoding");
        let _busy = self.split.enter();
        let started = Instant::now();
        let mut batch = self.decode_entered(chain, input)?;
        let parts = self.split.parts(batch.len());
        self.enrich_split(chain, &mut batch, arrived, started, parts);
        for out in outs.iter_mut() {
            out.line_ends.clear();
        }
        if parts > 1 {
            split::encode(chain, &batch, encodings, outs, parts);
            return Ok(Processed { events: batch.len(), chain_generation: chain.generation() });
        }
        // Encoding is most of a batch's write cost: an answer in the same
        // layout as an NDJSON encoding is built from those lines (a copy)
        // instead of writing every event a second time.
        let ndjson_twin = |i: usize| {
            let e = &encodings[i];
            (e.shape == Shape::IngestResponse)
                .then(|| {
                    encodings.iter().position(|n| n.shape == Shape::Ndjson && same_profile(&n.profile, &e.profile))
                })
                .flatten()
        };
        // Each answer with a twin is written together with it, each record
        // copied into the answer right after it is written as a line.
        // (An NDJSON encoding twins with one answer; a second answer in the
        // same layout is written on its own.)
        let mut twins: Vec<(usize, usize)> = Vec::new();
        for i in 0..encodings.len() {
            if let Some(j) = ndjson_twin(i).filter(|j| !twins.iter().any(|&(_, t)| t == *j)) {
                twins.push((i, j));
            }
        }
        for (i, encoding) in encodings.iter().enumerate() {
            if twins.iter().any(|&(a, _)| a == i) {
                continue;
            }
            if let Some(&(a, _)) = twins.iter().find(|&&(_, j)| j == i) {
                let mut answer = std::mem::take(&mut outs[a].bytes);
                encode_twins(chain, &batch, &encoding.profile, &mut answer, &mut outs[i]);
                outs[a].bytes = answer;
            } else {
                encode(chain, &batch, encoding, &mut outs[i]);
            }
        }
        Ok(Processed { events: batch.len(), chain_generation: chain.generation() })
    }

    /// [`Pipeline::run`] for offline NDJSON that must not stop at one bad
    /// line: when the text is refused, its lines are retried one by one and
    /// the bad ones are returned (in order) instead of failing the rest.
    pub fn run_lenient(
        &self,
        chain: &Chain,
        text: String,
        format: Format,
        first_index: usize,
        encoding: Encoding,
        out: &mut Vec<u8>,
    ) -> Vec<Skipped> {
        let arrived = Instant::now();
        // The decoder consumes its text; the copy is what the rare slow path
        // re-reads line by line.
        let input = Input::Ndjson { text: text.clone(), format, first_index };
        let Err(_) = self.run(chain, input, encoding.clone(), arrived, out) else { return Vec::new() };
        let mut skipped = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let index = first_index + i;
            let input = Input::Ndjson { text: format!("{line}\n"), format, first_index: index };
            if let Err(error) = self.run(chain, input, encoding.clone(), arrived, out) {
                skipped.push(Skipped { index, error });
            }
        }
        skipped
    }

    /// Decodes `input` with this pipeline's limits and the chain's parse spec
    /// (counted as a batch in the pipeline: a large body alone decodes on
    /// the idle cores, one among others on its own).
    pub fn decode(&self, chain: &Chain, input: Input) -> Result<Batch, InputError> {
        let _busy = self.split.enter();
        self.decode_entered(chain, input)
    }

    /// [`Pipeline::decode`] for a caller that counted the batch already.
    fn decode_entered(&self, chain: &Chain, input: Input) -> Result<Batch, InputError> {
        match input {
            Input::Envelope(body) => {
                let parts = self.split.decode_parts(body.len());
                parse_envelope_in_parts(body, chain.parse_spec(), self.limits, parts)
            }
            Input::Ndjson { text, format, first_index } => {
                let parts = self.split.decode_parts(text.len());
                parse_ndjson_in_parts(text, format, chain.parse_spec(), first_index, self.limits, parts)
            }
        }
    }

    /// Runs the chain over a decoded batch and shows it to the observers.
    pub fn enrich(&self, chain: &Chain, batch: &mut Batch, arrived: Instant, started: Instant) {
        self.enrich_split(chain, batch, arrived, started, 1);
    }

    /// [`Pipeline::enrich`] with the chain run over `parts` threads.
    fn enrich_split(&self, chain: &Chain, batch: &mut Batch, arrived: Instant, started: Instant, parts: usize) {
        let events = batch.len();
        let _left = Left { observers: &self.observers, events };
        for o in &self.observers {
            o.entering(events);
        }
        chain.run_split(batch, parts);
        let done = Instant::now();
        let timing = Timing { lag: done - arrived, processing: done - started };
        for o in &self.observers {
            o.observe(chain, batch, timing);
        }
    }
}

/// Writes an enriched batch in `encoding`. The default layout (no profile)
/// is the direct path: record bytes, then the shared fragments.
pub fn encode(chain: &Chain, batch: &Batch, encoding: &Encoding, out: &mut Encoded) {
    let Encoded { bytes, line_ends } = out;
    match (&encoding.profile, encoding.shape) {
        (None, Shape::IngestResponse) => batch.write_ingest_response(chain.keys(), bytes),
        (None, Shape::Ndjson) => batch.write_ndjson_part(chain.keys(), 0..batch.len(), bytes, line_ends),
        (Some(profile), shape) => {
            let plan = Plan::new(profile, chain);
            let write = |event: &_, out: &mut Vec<u8>| plan.write_event(batch.source().raw_record(event), event, out);
            match shape {
                Shape::IngestResponse => batch.write_ingest_response_with(bytes, write),
                Shape::Ndjson => crate::batch::write_lines(batch.events(), bytes, line_ends, write),
            }
        }
    }
}

/// The `/v1/ingest` answer into `answer` and NDJSON lines into `lines`, both
/// in `profile`'s layout, in one pass (see
/// [`Batch::write_ingest_response_and_lines`]).
fn encode_twins(
    chain: &Chain,
    batch: &Batch,
    profile: &Option<Arc<Profile>>,
    answer: &mut Vec<u8>,
    lines: &mut Encoded,
) {
    let Encoded { bytes, line_ends } = lines;
    match profile {
        None => batch.write_ingest_response_and_ndjson(chain.keys(), answer, bytes, line_ends),
        Some(profile) => {
            let plan = Plan::new(profile, chain);
            batch.write_ingest_response_and_lines(answer, bytes, line_ends, |event, out| {
                plan.write_event(batch.source().raw_record(event), event, out)
            });
        }
    }
}

/// The same layout: both default, or the same profile object.
fn same_profile(a: &Option<Arc<Profile>>, b: &Option<Arc<Profile>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// Tells the observers the events left the chain, also when it unwound.
struct Left<'a> {
    observers: &'a [Arc<dyn Observer>],
    events: usize,
}

impl Drop for Left<'_> {
    fn drop(&mut self) {
        for o in self.observers {
            o.left(self.events);
        }
    }
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
pub(crate) mod tests;
