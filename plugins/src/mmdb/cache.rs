//! The per-thread caches of an mmdb enricher and the passes that answer a
//! batch through them (see the parent module for why the caches).
//!
//! A batch is answered in three passes so that each can overlap its cache
//! misses instead of waiting on them one at a time: gather the addresses
//! (repeats are answered from the address table), walk the tree for all
//! the others together ([`super::tree`]), then fetch or build each
//! fragment with table slots, fragments and replaced outputs prefetched a
//! few lookups ahead.

use std::net::IpAddr;

use enrichd_engine::{JsonFragment, Side};

use super::tree::{self, Found};
use super::{DataError, Database, Fact, RecordFormat};

/// log2 of the slots of the address table (1024 slots, 24 KiB: small
/// enough to stay in the CPU caches, where repeated addresses find it).
/// Tests use 8 slots so that collisions and evictions happen all the time.
const IP_BITS: u32 = if cfg!(test) { 3 } else { 10 };

/// Largest answer (encoded fragment) a record may give, bytes; a real City
/// answer is a few hundred. Larger ones are refused as malformed records.
const MAX_ANSWER_BYTES: usize = 8 << 10;

/// `by_ip` value for an address with no record.
const NOT_FOUND: usize = usize::MAX;

/// How far ahead of its use a record-table slot is prefetched (and, half
/// as far, the fragment it holds).
const AHEAD: usize = 8;

/// One address of one event to answer.
#[derive(Clone, Copy)]
pub(super) struct Job {
    pub event: u32,
    /// Index into the enricher's targets.
    pub target: u8,
    pub side: Side,
    /// Canonical: an IPv4-mapped IPv6 address is looked up as IPv4.
    pub ip: IpAddr,
    /// Filled in by [`Caches::find_all`].
    found: Found,
}

impl Job {
    pub(super) fn new(event: usize, target: usize, side: Side, ip: IpAddr) -> Job {
        // Batches hold far fewer than 2^32 events; targets are a handful.
        Job { event: event as u32, target: target as u8, side, ip: ip.to_canonical(), found: Ok(None) }
    }
}

/// One thread's caches for one enricher, and its reusable batch buffers.
pub(super) struct Caches {
    /// Address (as two halves) -> data offset or [`NOT_FOUND`]. Holds no
    /// `Arc`, so replacing an entry never touches a cold fragment.
    by_ip: Box<[(u64, u64, usize)]>,
    pub records: Records,
    /// This batch's lookups, in event order.
    pub jobs: Vec<Job>,
    /// Addresses the address table did not know, and where their jobs are.
    walk: Vec<IpAddr>,
    walk_jobs: Vec<u32>,
    walk_found: Vec<Found>,
}

/// Record offset -> fragment (and fact).
pub(super) struct Records {
    /// This thread's `null`: sharing one `Arc` across threads would make
    /// every core bump the same counter.
    pub null: JsonFragment,
    #[allow(clippy::type_complexity)]
    by_offset: Box<[(usize, Option<(JsonFragment, Fact)>)]>,
    /// log2 of `by_offset.len()`.
    bits: u32,
    /// Reused serialization buffer.
    scratch: Vec<u8>,
}

impl Caches {
    /// With a record table of `1 << record_bits` slots (8 in tests, so
    /// that collisions and evictions happen all the time).
    pub(super) fn new(record_bits: u32) -> Self {
        let bits = if cfg!(test) { 3 } else { record_bits };
        Caches {
            // (0, 0) is `::`, which is never looked up: its canonical form
            // is IPv6 and no database has a record for it worth caching.
            by_ip: vec![(0, 0, NOT_FOUND); 1 << IP_BITS].into_boxed_slice(),
            records: Records {
                null: enrichd_engine::constant_fragment("null"),
                by_offset: (0..1 << bits).map(|_| (0, None)).collect(),
                bits,
                scratch: Vec::with_capacity(256),
            },
            jobs: Vec::new(),
            walk: Vec::new(),
            walk_jobs: Vec::new(),
            walk_found: Vec::new(),
        }
    }

    /// Sets `found` of every job: from the address table, or by walking
    /// the tree for all the others at once.
    pub(super) fn find_all(&mut self, db: &Database) {
        self.walk.clear();
        self.walk_jobs.clear();
        for (i, job) in self.jobs.iter_mut().enumerate() {
            let (high, low, slot) = ip_slot(job.ip);
            match self.by_ip[slot] {
                (h, l, offset) if (h, l) == (high, low) && (h, l) != (0, 0) => {
                    job.found = Ok((offset != NOT_FOUND).then_some(offset));
                }
                _ => {
                    self.walk.push(job.ip);
                    self.walk_jobs.push(i as u32);
                }
            }
        }
        self.walk_found.clear();
        self.walk_found.resize(self.walk.len(), Ok(None));
        db.tree.find_many(db.nodes(), &self.walk, &mut self.walk_found);
        for ((&i, &ip), &found) in self.walk_jobs.iter().zip(&self.walk).zip(&self.walk_found) {
            self.jobs[i as usize].found = found;
            if let Ok(offset) = found {
                let (high, low, slot) = ip_slot(ip);
                self.by_ip[slot] = (high, low, offset.unwrap_or(NOT_FOUND));
            }
        }
    }

    /// The fragment (and fact) for one address, through both caches (the
    /// batch path, for one address).
    #[cfg(test)]
    pub(super) fn answer<F: RecordFormat>(
        &mut self,
        db: &Database,
        ip: IpAddr,
    ) -> anyhow::Result<(JsonFragment, Fact)> {
        self.jobs.clear();
        self.jobs.push(Job::new(0, 0, Side::Source, ip));
        self.find_all(db);
        let mut answer = None;
        self.records.answer_all::<F>(db, &self.jobs, |step| {
            if let Step::Answer(_, a) = step {
                answer = Some(a.map_err(|e| anyhow::anyhow!("{e}")));
            }
        });
        answer.expect("one job, one answer")
    }
}

/// What [`Records::answer_all`] tells its caller.
pub(super) enum Step<'j> {
    /// This job will be answered a few steps from now (time to prefetch).
    Soon(&'j Job),
    /// The answer to this job.
    Answer(&'j Job, Result<(JsonFragment, Fact), String>),
}

impl Records {
    /// Calls `visit` with the answer to each job, in order, and with each
    /// job a few steps ahead. Table slots and the fragments they hold are
    /// prefetched ahead too: with random addresses most are cold, and `Arc`
    /// counts must be touched.
    pub(super) fn answer_all<'j, F: RecordFormat>(
        &mut self,
        db: &Database,
        jobs: &'j [Job],
        mut visit: impl FnMut(Step<'j>),
    ) {
        let offset_of = |i: usize| jobs.get(i).and_then(|j| j.found.ok().flatten());
        for (i, job) in jobs.iter().enumerate() {
            if let Some(offset) = offset_of(i + AHEAD) {
                tree::prefetch_line(&self.by_offset[slot_index(offset as u64, self.bits)]);
            }
            if let Some(soon) = jobs.get(i + AHEAD / 2) {
                visit(Step::Soon(soon));
            }
            if let Some(offset) = offset_of(i + AHEAD / 2) {
                // A hit's fragment is about to be shared, a miss's is about
                // to be dropped: either way its count will be written.
                if let (_, Some((fragment, _))) = &self.by_offset[slot_index(offset as u64, self.bits)] {
                    tree::prefetch_line(fragment.as_ptr());
                }
            }
            let answer = match job.found {
                Ok(None) => Ok((self.null.clone(), 0)),
                Ok(Some(offset)) => self.record::<F>(db, offset).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            visit(Step::Answer(job, answer));
        }
    }

    /// The fragment for the record at `offset`, from cache when possible.
    fn record<F: RecordFormat>(&mut self, db: &Database, offset: usize) -> Result<(JsonFragment, Fact), DataError> {
        let slot = slot_index(offset as u64, self.bits);
        if let (k, Some(hit)) = &self.by_offset[slot] {
            if *k == offset {
                return Ok(hit.clone());
            }
        }
        if let Some(kept) = db.shared.get(offset, &self.null) {
            self.by_offset[slot] = (offset, Some(kept.clone()));
            return Ok(kept);
        }
        let fact = db.encode::<F>(offset, &mut self.scratch)?;
        if self.scratch.len() > MAX_ANSWER_BYTES {
            // Kept out of the caches and out of events: a crafted record
            // (names pointing at one long string) must not put megabytes
            // into every event it answers, or into each thread's table.
            return Err(DataError { offset });
        }
        let text = std::str::from_utf8(&self.scratch).expect("encoders write UTF-8");
        db.shared.insert(offset, text, fact);
        let fragment = if text == "null" { self.null.clone() } else { JsonFragment::from(text) };
        self.by_offset[slot] = (offset, Some((fragment.clone(), fact)));
        Ok((fragment, fact))
    }
}

/// The address-table key (an address as two halves) and slot of `ip`.
fn ip_slot(ip: IpAddr) -> (u64, u64, usize) {
    let key = match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    };
    let (high, low) = ((key >> 64) as u64, key as u64);
    (high, low, slot_index(high ^ low, IP_BITS))
}

/// Fibonacci hashing into a table of `1 << bits` slots.
fn slot_index(key: u64, bits: u32) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
}
