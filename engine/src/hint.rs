//! CPU hints for the hot loops of stages that walk a whole batch.
//!
//! Why: a batch of 1,000 events does not stay in the core's caches from
//! one stage to the next, so each stage's first read of an event is a
//! cache miss, and a loop that reads event after event waits for each in
//! turn. Asking for an event's lines a few events ahead lets those misses
//! overlap (see [`crate::Event::prefetch`]).

/// Asks the CPU to start loading the cache line at `at` (a no-op where we
/// have no prefetch instruction). A prefetch is only a hint: it never
/// faults and changes nothing the program can observe.
#[inline(always)]
pub fn prefetch_line<T: ?Sized>(at: *const T) {
    // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has (it is
    // in the target's baseline); it does not dereference the pointer.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
