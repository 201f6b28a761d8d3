//! enrichd guest SDK: write risk rules and custom enrichers in Rust, test
//! them with plain `cargo test`, build them to WebAssembly.
//!
//! ```ignore
//! use enrichd_sdk::{Event, Output};
//!
//! fn rule(ev: &Event, out: &mut Output) {
//!     let mut score = 10;
//!     if ev.dst_port() == Some(23) {
//!         score += 10;
//!         out.reason("telnet");
//!     }
//!     out.score(score);
//! }
//! enrichd_sdk::export!(rule);
//! ```
//!
//! Why no dependencies and `no_std` on wasm: the guests build with Debian's
//! rustc 1.63, offline, where `no_std + alloc` is unavailable; so the SDK
//! works on fixed buffers and the host's exchange area (see `ABI.md`).
//! Natively (tests) it uses `std`, and [`testing`] runs a rule on events
//! built in Rust.

#![cfg_attr(target_arch = "wasm32", no_std)]
// The workspace's house rules; the SDK is outside it and builds with rustc
// 1.63, whose cargo has no `[lints]` table.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod abi;
mod event;
mod output;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod text;

pub use abi::EventRecord;
pub use event::{Event, Ip};
pub use output::{DeclaredText, Output};
pub use text::Text;

/// Host functions (wasm) or the test harness's stand-ins (native).
pub mod host {
    #[cfg(target_arch = "wasm32")]
    #[link(wasm_import_module = "enrichd_v1")]
    extern "C" {
        /// JSON text of field `key` of event `event`; returns its length
        /// (written only if it fits `cap`), or -1 when absent.
        fn field(event: i32, key_ptr: i32, key_len: i32, out_ptr: i32, out_cap: i32) -> i32;
        /// Guest configuration value of `key`; same return convention.
        fn config(key_ptr: i32, key_len: i32, out_ptr: i32, out_cap: i32) -> i32;
        /// Logs a message (level 0 error .. 3 debug); the host rate-limits.
        fn log(level: i32, ptr: i32, len: i32);
    }

    /// The JSON text of a field, copied into `buf`; `None` when absent or
    /// longer than `buf`.
    pub fn field_json<'b>(event: u16, key: &str, buf: &'b mut [u8]) -> Option<&'b str> {
        #[cfg(target_arch = "wasm32")]
        // SAFETY: the host reads `key_len` bytes at `key_ptr` and writes at
        // most `out_cap` bytes at `out_ptr`; both are live borrows here.
        let n = unsafe {
            field(event as i32, key.as_ptr() as i32, key.len() as i32, buf.as_mut_ptr() as i32, buf.len() as i32)
        };
        #[cfg(not(target_arch = "wasm32"))]
        let n = crate::testing::host_field(event, key, buf);
        finish(n, buf)
    }

    /// A configuration value given to the module in the chain entry.
    pub fn config_value<'b>(key: &str, buf: &'b mut [u8]) -> Option<&'b str> {
        #[cfg(target_arch = "wasm32")]
        // SAFETY: as for `field`: a borrowed key in, a borrowed buffer out.
        let n = unsafe { config(key.as_ptr() as i32, key.len() as i32, buf.as_mut_ptr() as i32, buf.len() as i32) };
        #[cfg(not(target_arch = "wasm32"))]
        let n = crate::testing::host_config(key, buf);
        finish(n, buf)
    }

    /// Logs `message` through the host (level 0 = error, 1 = warn, 2 = info, 3 = debug).
    pub fn log_message(level: i32, message: &str) {
        #[cfg(target_arch = "wasm32")]
        // SAFETY: the host only reads `len` bytes at `ptr`, a live borrow.
        unsafe {
            log(level, message.as_ptr() as i32, message.len() as i32)
        };
        #[cfg(not(target_arch = "wasm32"))]
        crate::testing::host_log(level, message);
    }

    fn finish(n: i32, buf: &[u8]) -> Option<&str> {
        if n < 0 || n as usize > buf.len() {
            return None;
        }
        core::str::from_utf8(&buf[..n as usize]).ok()
    }
}

/// Runs `f` over the first `n` events of the exchange area and leaves the
/// results there; what the exported `enrichd_process` calls.
#[doc(hidden)]
pub fn process_batch(io: &mut abi::IoArea, n: usize, f: fn(&Event, &mut Output)) -> i32 {
    let n = if n > abi::MAX_BATCH { abi::MAX_BATCH } else { n };
    let mut out = Output::new(&mut io.out);
    for i in 0..n {
        out.start_event(i as u16);
        let ev = Event::new(&io.events[i], i as u16);
        f(&ev, &mut out);
    }
    let len = out.len();
    io.out_len = len as u32;
    if out.overflowed() {
        1
    } else {
        0
    }
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __wasm {
    pub static mut IO: crate::abi::IoArea = crate::abi::IoArea {
        events: [crate::abi::EventRecord::EMPTY; crate::abi::MAX_BATCH],
        out_len: 0,
        reserved: 0,
        out: [0; crate::abi::OUT_CAPACITY],
    };

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo) -> ! {
        core::arch::wasm32::unreachable()
    }
}

/// Declares the module's fixed reason and tag texts once (ABI 1.1), as
/// constants to pass to [`Output::declared_reason`] and
/// [`Output::declared_tag`]:
///
/// ```ignore
/// enrichd_sdk::texts! {
///     const TELNET = "telnet +10";
///     const LARGE = "large transfer";
/// }
/// // ... out.declared_reason(TELNET);
/// ```
///
/// Why: a text written per event is copied into the result buffer, then
/// checked, hashed and compared by the host, event after event; a declared
/// one is one byte, and the host reuses the JSON list it built for the same
/// ids. Texts that vary per event (numbers in them) stay with
/// [`Output::reason`]; both can be mixed in one event, in any order.
/// Generates the export `enrichd_texts` on wasm32: use once per module.
#[macro_export]
macro_rules! texts {
    ($($(#[$attr:meta])* $vis:vis const $name:ident = $text:literal;)+) => {
        // Ids are the declaration order; a 256th text overflows the `u8`
        // discriminant and does not compile.
        #[allow(non_camel_case_types, dead_code)]
        #[repr(u8)]
        enum __EnrichdTextId { $($name),+ }
        $(
            $(#[$attr])*
            $vis const $name: $crate::DeclaredText = $crate::DeclaredText::new(__EnrichdTextId::$name as u8, $text);
            const _: () = assert!($text.len() <= $crate::abi::MAX_TEXT, "a declared text is at most 1,024 bytes");
        )+
        const _: () = assert!(
            0 $(+ $text.len())+ <= $crate::abi::MAX_DECLARED_BYTES,
            "declared texts are at most 16 KiB in all"
        );

        #[cfg(target_arch = "wasm32")]
        #[no_mangle]
        pub extern "C" fn enrichd_texts() -> i32 {
            const N: usize = [$($text),+].len();
            static TABLE: $crate::abi::TextTable<N> = $crate::abi::TextTable {
                count: N as u32,
                texts: [$($crate::abi::TextRef::new($text)),+],
            };
            &TABLE as *const $crate::abi::TextTable<N> as i32
        }
    };
}

/// Exports `f` (a `fn(&Event, &mut Output)`) as this module's rule or
/// enricher: generates `enrichd_abi_version`, `enrichd_io` and
/// `enrichd_process` on wasm32, nothing natively.
#[macro_export]
macro_rules! export {
    ($f:path) => {
        #[cfg(target_arch = "wasm32")]
        #[no_mangle]
        pub extern "C" fn enrichd_abi_version() -> i32 {
            $crate::abi::ABI_VERSION as i32
        }

        #[cfg(target_arch = "wasm32")]
        #[no_mangle]
        pub extern "C" fn enrichd_io() -> i32 {
            // SAFETY: takes the address only; no reference is created.
            unsafe { core::ptr::addr_of_mut!($crate::__wasm::IO) as i32 }
        }

        #[cfg(target_arch = "wasm32")]
        #[no_mangle]
        pub extern "C" fn enrichd_process(n: i32) -> i32 {
            // SAFETY: a guest is single-threaded and the host calls
            // `enrichd_process` only from outside the module, never
            // re-entrantly: this is the only live reference to `IO`.
            let io = unsafe { &mut *core::ptr::addr_of_mut!($crate::__wasm::IO) };
            $crate::process_batch(io, n as usize, $f)
        }
    };
}
