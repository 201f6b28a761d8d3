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
    /// The configured deadline (wall time per call).
    pub deadline: Duration,
    /// The same in epoch ticks, for the interruption.
    pub deadline_ticks: u64,
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
        GuestLimits { inner, hit: None }
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
