//! Large batches on several threads (issue 18 point 4): a 10,000-record
//! batch arriving while a second core is idle should not take one core's
//! time.
//!
//! Decisions, and why:
//!
//! - **Only when alone.** Splitting helps only when cores are idle; when
//!   other batches are in the pipeline the cores are already busy, and the
//!   split would only add hand-offs. The pipeline counts the batches inside
//!   it ([`Split::enter`]); a batch splits when it is the only one.
//! - **Only when large.** A scoped thread costs some microseconds to start
//!   and the parts are joined with one copy of the encoded bytes; below
//!   [`Split::min_events`] (4,096 by default) that is not worth it.
//! - **Decoding, chain and encoding all split.** NDJSON is cut at line
//!   breaks; an envelope's records array is read from guessed record
//!   boundaries that the first thread proves by reading up to them
//!   (`parse_split.rs`). The chain and the writer work per event, so their
//!   parts are independent. Each part writes NDJSON lines for every distinct layout;
//!   the `/v1/ingest` answer is assembled from those lines in order (the
//!   same bytes the one-thread path writes when an NDJSON twin exists).
//! - **Same answer.** Events keep their order; stage statistics count the
//!   batch once (`Chain::run_split`). Tests compare split and whole runs
//!   byte for byte.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use super::{same_profile, Encoded, Encoding, Shape};
use crate::batch::Batch;
use crate::chain::Chain;
use crate::profile::{Plan, Profile};

/// When and how far a batch is split over threads.
#[derive(Clone, Debug)]
pub struct Split {
    /// Batches with fewer events run on one thread.
    pub min_events: usize,
    /// Most threads one batch uses (1: never split).
    pub max_parts: usize,
    /// Batches inside the pipeline now (shared by the pipeline's clones).
    busy: Arc<AtomicUsize>,
}

impl Default for Split {
    fn default() -> Self {
        static CORES: OnceLock<usize> = OnceLock::new();
        let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Split { min_events: 4096, max_parts: cores.clamp(1, 4), busy: Arc::default() }
    }
}

impl Split {
    /// A split of at most `max_parts` threads for batches of at least
    /// `min_events` events.
    pub fn new(min_events: usize, max_parts: usize) -> Self {
        Split { min_events, max_parts: max_parts.max(1), ..Split::default() }
    }

    /// Counts a batch inside the pipeline until the guard drops.
    pub(super) fn enter(&self) -> Busy<'_> {
        self.busy.fetch_add(1, Relaxed);
        Busy(&self.busy)
    }

    /// How many parts a body of `bytes` is decoded in now: as for
    /// [`Split::parts`], counting a record as [`BYTES_PER_RECORD`] bytes
    /// (the count is only known after decoding).
    pub(super) fn decode_parts(&self, bytes: usize) -> usize {
        self.parts(bytes / BYTES_PER_RECORD)
    }

    /// How many parts a batch of `events` runs in now.
    pub(super) fn parts(&self, events: usize) -> usize {
        if self.max_parts <= 1 || events < self.min_events.max(2) || self.busy.load(Relaxed) > 1 {
            return 1;
        }
        // Each part keeps at least half the threshold's events.
        self.max_parts.min(events / (self.min_events / 2).max(1)).max(1)
    }
}

/// A small record's size, for [`Split::decode_parts`]: replayed Zeek conn
/// records are 300-400 bytes, flow records 150-200; erring small splits a
/// few bodies that would not pay, never fails to split a large one.
const BYTES_PER_RECORD: usize = 128;

/// See [`Split::enter`].
pub(super) struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Encodes `batch` once per encoding (`outs[i]` gets `encodings[i]`), its
/// events written in `parts` runs on scoped threads.
pub(super) fn encode(chain: &Chain, batch: &Batch, encodings: &[Encoding], outs: &mut [Encoded], parts: usize) {
    // One set of NDJSON lines per distinct layout.
    let mut layouts: Vec<&Option<Arc<Profile>>> = Vec::new();
    let layout_of: Vec<usize> = encodings
        .iter()
        .map(|e| {
            layouts.iter().position(|p| same_profile(p, &e.profile)).unwrap_or_else(|| {
                layouts.push(&e.profile);
                layouts.len() - 1
            })
        })
        .collect();
    let n = batch.len();
    let chunk = n.div_ceil(parts.max(1)).max(1);
    let ranges: Vec<Range<usize>> = (0..n).step_by(chunk).map(|start| start..(start + chunk).min(n)).collect();
    let write_part = |range: &Range<usize>| -> Vec<Encoded> {
        layouts.iter().map(|profile| lines(chain, batch, profile, range.clone())).collect()
    };
    // lines[part][layout]
    let lines: Vec<Vec<Encoded>> = std::thread::scope(|scope| {
        // A part whose thread cannot start (limits, memory) is written
        // here instead.
        let others: Vec<_> = ranges
            .iter()
            .skip(1)
            .map(|r| std::thread::Builder::new().spawn_scoped(scope, move || write_part(r)).map_err(|_| r))
            .collect();
        let mut all = Vec::with_capacity(ranges.len());
        all.push(ranges.first().map(write_part).unwrap_or_default());
        all.extend(others.into_iter().map(|spawned| match spawned {
            Ok(h) => h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(range) => write_part(range),
        }));
        all
    });
    for ((encoding, out), layout) in encodings.iter().zip(outs.iter_mut()).zip(layout_of) {
        let parts: Vec<(&[u8], &[usize])> =
            lines.iter().filter_map(|p| p.get(layout).map(|e| (e.bytes.as_slice(), e.line_ends.as_slice()))).collect();
        match encoding.shape {
            Shape::Ndjson => {
                crate::batch::reserve_room(&mut out.bytes, parts.iter().map(|(p, _)| p.len()).sum());
                let base = out.bytes.len();
                for (part, ends) in parts {
                    let at = out.bytes.len() - base;
                    out.line_ends.extend(ends.iter().map(|end| at + end));
                    out.bytes.extend_from_slice(part);
                }
            }
            Shape::IngestResponse => batch.write_ingest_response_from_lines(&parts, &mut out.bytes),
        }
    }
}

/// The events of `range` as NDJSON lines in `profile`'s layout.
fn lines(chain: &Chain, batch: &Batch, profile: &Option<Arc<Profile>>, range: Range<usize>) -> Encoded {
    let mut out = Encoded::default();
    match profile {
        None => batch.write_ndjson_part(chain.keys(), range, &mut out.bytes, &mut out.line_ends),
        Some(profile) => {
            let plan = Plan::new(profile, chain);
            crate::batch::write_lines(&batch.events()[range], &mut out.bytes, &mut out.line_ends, |event, out| {
                plan.write_event(batch.source().raw_record(event), event, out)
            });
        }
    }
    out
}
