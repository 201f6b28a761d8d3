//! The caps of one guest instance ([`Limits`]) and the store's resource
//! limiter that enforces them ([`GuestLimits`]). A leaf of the crate: the
//! host functions (`host`) keep the limiter in their store state and the
//! runtime (`runtime`) installs it, without importing each other for it.

use std::time::Duration;

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// Limits applied to every instance of a module.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub memory_bytes: usize,
    pub table_elements: usize,
    /// The configured deadline: CPU time of the calling thread per call.
    pub deadline: Duration,
    /// The same in epoch ticks: when the epoch check first looks at the
    /// CPU clock ([`cpu_deadline_update`]).
    pub deadline_ticks: u64,
}

/// A call's CPU-time budget, checked when the epoch deadline passes.
///
/// # Why CPU time, not wall time
///
/// The epoch ticker counts wall time. On an overloaded host (more runnable
/// threads than cores: a load spike, a noisy neighbour) a thread can wait
/// for a core longer than a whole deadline while its guest runs for a few
/// microseconds; with a wall-clock deadline such calls timed out, the
/// breaker counted them, and under sustained load it opened and turned
/// scoring off although the module was fine. A hostile or looping guest
/// burns CPU, so a CPU-time deadline stops it just as surely, and only it.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBudget {
    /// The thread's CPU clock when the call started.
    pub started: Duration,
    pub budget: Duration,
}

/// CPU time this thread has used so far (`CLOCK_THREAD_CPUTIME_ID`).
pub(crate) fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a
    // constant every Linux provides.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    debug_assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is always available on Linux");
    Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// What the epoch callback does once the wall-clock ticks of the deadline
/// passed: interrupt if the call used its CPU budget, else look again once
/// the rest of the budget could have been used (at least one tick).
pub(crate) fn cpu_deadline_update(call: CpuBudget, now: Duration, tick: Duration) -> wasmtime::UpdateDeadline {
    let used = now.saturating_sub(call.started);
    if used >= call.budget {
        return wasmtime::UpdateDeadline::Interrupt;
    }
    let left = call.budget - used;
    wasmtime::UpdateDeadline::Continue((left.as_nanos().div_ceil(tick.as_nanos().max(1)) as u64).max(1))
}

/// Instances, tables and memories one store may create: a module is one
/// instance with one memory; toolchains emit one table (4 leaves room).
const MAX_INSTANCES: usize = 1;
const MAX_TABLES: usize = 4;
const MAX_MEMORIES: usize = 1;

/// Which cap a store hit last, so that a failed call is classified
/// without reading error texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    Memory,
    Table,
}

/// The store's resource limiter: wasmtime's `StoreLimits`, remembering
/// which cap refused a grow.
///
/// A refused grow traps (`trap_on_grow_failure`) rather than returning -1
/// to the guest: the call fails (`memory` / `table`), nothing of it is
/// applied, and the instance, with whatever it had grown, is discarded.
/// A guest cannot keep probing the cap within a call.
#[derive(Default)]
pub struct GuestLimits {
    inner: StoreLimits,
    pub hit: Option<LimitHit>,
    /// The running call's CPU budget.
    pub cpu: CpuBudget,
}

impl GuestLimits {
    pub fn new(limits: Limits) -> Self {
        let inner = StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .table_elements(limits.table_elements)
            .instances(MAX_INSTANCES)
            .tables(MAX_TABLES)
            .memories(MAX_MEMORIES)
            .trap_on_grow_failure(true)
            .build();
        GuestLimits { inner, hit: None, cpu: CpuBudget::default() }
    }
}

impl ResourceLimiter for GuestLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let r = self.inner.memory_growing(current, desired, maximum);
        if !matches!(r, Ok(true)) {
            self.hit = Some(LimitHit::Memory);
        }
        r
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.hit = Some(LimitHit::Memory);
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let r = self.inner.table_growing(current, desired, maximum);
        if !matches!(r, Ok(true)) {
            self.hit = Some(LimitHit::Table);
        }
        r
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.hit = Some(LimitHit::Table);
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::UpdateDeadline;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_deadline_counts_cpu_time_not_waiting() {
        let call = CpuBudget { started: 100 * MS, budget: 10 * MS };
        // Ten wall-clock ticks passed but the thread ran 2 ms: go on, and
        // look again when the other 8 ms could have been used.
        assert!(matches!(cpu_deadline_update(call, 102 * MS, MS), UpdateDeadline::Continue(8)));
        assert!(matches!(cpu_deadline_update(call, 110 * MS, MS), UpdateDeadline::Interrupt));
        assert!(matches!(cpu_deadline_update(call, 109 * MS + MS / 2, MS), UpdateDeadline::Continue(1)));
    }

    #[test]
    fn the_thread_cpu_clock_moves_with_work_not_with_sleep() {
        let start = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(30));
        let slept = thread_cpu_time() - start;
        assert!(slept < Duration::from_millis(10), "sleeping used {slept:?} of CPU");
        let start = thread_cpu_time();
        let mut x = 0u64;
        while thread_cpu_time() - start < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(x > 0);
    }
}
