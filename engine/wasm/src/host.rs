//! Host functions a module may import (`enrichd_v1.field`, `.config`,
//! `.log`) and the per-store state behind them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use enrichd_engine::{Event, FactInfo, KeyId, SourceText};
use serde_json::value::RawValue;
use wasmtime::{Caller, Extern};

use crate::limits::GuestLimits;

/// What a store carries besides the instance.
pub struct HostState {
    pub limits: GuestLimits,
    pub module_name: Arc<str>,
    /// The chain entry's `config` table, as strings.
    pub config: Arc<Vec<(String, String)>>,
    /// Output keys of earlier chain stages, readable through `field`.
    pub earlier_keys: Arc<Vec<(String, KeyId)>>,
    /// Facts declared by earlier chain stages, readable through `field` by
    /// their declared name (before output keys, so renaming an output does
    /// not break a rule).
    pub earlier_facts: Arc<[FactInfo]>,
    /// The batch being processed, during a call only.
    pub call: Option<CallContext>,
    /// The module's log budget, shared by all its instances.
    pub logs: Arc<LogBudget>,
}

impl HostState {
    pub fn new(
        module_name: Arc<str>,
        config: Arc<Vec<(String, String)>>,
        earlier_keys: Arc<Vec<(String, KeyId)>>,
        earlier_facts: Arc<[FactInfo]>,
        logs: Arc<LogBudget>,
    ) -> Self {
        HostState { limits: GuestLimits::default(), module_name, config, earlier_keys, earlier_facts, call: None, logs }
    }
}

/// Guest log lines per module: a burst of `LOG_BURST`, then `LOG_PER_SEC`
/// a second, whatever the number of threads, instances and recycles (a
/// token bucket). Lines over it are dropped and counted.
pub struct LogBudget {
    bucket: Mutex<(f64, Instant)>,
    pub dropped: AtomicU64,
}

pub(crate) const LOG_BURST: f64 = 100.0;
pub(crate) const LOG_PER_SEC: f64 = 10.0;
/// Longest guest log message, in bytes (read, then again once escaped).
pub(crate) const LOG_MAX_BYTES: usize = 512;
/// Longest key `field` and `config` look up; longer ones are absent. Keeps
/// every host call short, so the deadline is kept between guest
/// instructions (where the epoch is checked).
pub(crate) const MAX_KEY: usize = 1024;

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget { bucket: Mutex::new((LOG_BURST, Instant::now())), dropped: AtomicU64::new(0) }
    }
}

impl LogBudget {
    /// Takes one line from the budget; false (and counted) when empty.
    pub fn take(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * LOG_PER_SEC).min(LOG_BURST);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            self.dropped.fetch_add(1, Relaxed);
            false
        }
    }
}

/// Borrowed view of the chunk under processing.
///
/// SAFETY contract: set right before `enrichd_process` is called and cleared
/// right after it returns, while `enrich` holds the batch borrowed; the host
/// functions that read it run only inside that call, on the same thread.
pub struct CallContext {
    pub source: SourceText<'static>,
    pub events: *const Event,
    pub len: usize,
}

// SAFETY: the raw pointer is only used on the thread that owns the store, inside a
// call (see the contract above).
unsafe impl Send for CallContext {}

fn memory(caller: &mut Caller<'_, HostState>) -> Option<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

fn read_guest(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Option<String> {
    let mem = memory(caller)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let bytes = mem.data(&caller).get(ptr..ptr.checked_add(len)?)?;
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// A key a guest asks for (`field`, `config`): `None` (answered as absent)
/// past [`MAX_KEY`] bytes, so every host call stays short.
fn read_key(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Option<String> {
    if len as u32 as usize > MAX_KEY {
        return None;
    }
    read_guest(caller, ptr, len)
}

/// Copies `value` to guest memory if it fits; returns its length, -1 if
/// absent, -2 if the output area is outside memory.
fn write_guest(caller: &mut Caller<'_, HostState>, value: Option<&[u8]>, ptr: i32, cap: i32) -> i32 {
    let Some(value) = value else { return -1 };
    if value.len() > i32::MAX as usize {
        return -1;
    }
    let (ptr, cap) = (ptr as u32 as usize, cap as u32 as usize);
    if value.len() <= cap {
        let Some(mem) = memory(caller) else { return -2 };
        let Some(dst) = ptr.checked_add(value.len()).and_then(|end| mem.data_mut(&mut *caller).get_mut(ptr..end))
        else {
            return -2;
        };
        dst.copy_from_slice(value);
    }
    value.len() as i32
}

pub(crate) fn field(
    caller: &mut Caller<'_, HostState>,
    event: i32,
    key_ptr: i32,
    key_len: i32,
    out_ptr: i32,
    out_cap: i32,
) -> i32 {
    let Some(key) = read_key(caller, key_ptr, key_len) else { return -1 };
    let value: Option<String> = {
        let state = caller.data();
        let Some(call) = &state.call else { return -1 };
        if event < 0 || event as usize >= call.len {
            return -1;
        }
        // SAFETY: see `CallContext`; index checked against `len`.
        let ev: &Event = unsafe { &*call.events.add(event as usize) };
        if let Some(value) = fact_value(&state.earlier_facts, ev, &key) {
            return write_guest(caller, Some(value.as_bytes()), out_ptr, out_cap);
        }
        match state.earlier_keys.iter().find(|(k, _)| *k == key) {
            Some((_, id)) => ev.output(*id).map(|f| f.to_string()),
            None => {
                let raw = call.source.raw_record(ev);
                serde_json::from_str::<BTreeMap<Cow<'_, str>, &RawValue>>(raw)
                    .ok()
                    .and_then(|m| m.get(key.as_str()).map(|v| v.get().to_owned()))
            }
        }
    };
    write_guest(caller, value.as_deref().map(str::as_bytes), out_ptr, out_cap)
}

/// The JSON of the declared fact `name` on `ev`, when an earlier stage
/// declared it and set it on this event (the latest declaring stage wins):
/// a scalar kind rendered from its value (`"GB"`, `1221`, `"hosting"`), a
/// list or object read from its output.
fn fact_value(facts: &[FactInfo], ev: &Event, name: &str) -> Option<String> {
    let info = facts.iter().rev().find(|f| f.decl.name == name && ev.fact(f.id).is_some())?;
    let value = ev.fact(info.id)?;
    if info.decl.kind.is_scalar() {
        info.render(value).map(|v| v.to_string())
    } else {
        info.decl.output.and_then(|key| ev.output(key)).map(|f| f.to_string())
    }
}

pub(crate) fn config(
    caller: &mut Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    out_ptr: i32,
    out_cap: i32,
) -> i32 {
    let Some(key) = read_key(caller, key_ptr, key_len) else { return -1 };
    let value = caller.data().config.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
    write_guest(caller, value.as_deref().map(str::as_bytes), out_ptr, out_cap)
}

/// Logs a guest message: rate-limited (`LogBudget`), cut to
/// `LOG_MAX_BYTES`, invalid UTF-8 replaced, and escaped so that it stays
/// one line (a guest cannot forge log lines or terminal escapes).
pub(crate) fn log(caller: &mut Caller<'_, HostState>, level: i32, ptr: i32, len: i32) {
    if len < 0 || !caller.data().logs.take() {
        return;
    }
    let Some(mem) = memory(caller) else { return };
    let (ptr, len) = (ptr as u32 as usize, (len as u32 as usize).min(LOG_MAX_BYTES));
    let Some(bytes) = ptr.checked_add(len).and_then(|end| mem.data(&caller).get(ptr..end)) else { return };
    let message = crate::text::escape(&String::from_utf8_lossy(bytes), LOG_MAX_BYTES);
    let module = caller.data().module_name.clone();
    match level {
        0 => tracing::error!(%module, "{message}"),
        1 => tracing::warn!(%module, "{message}"),
        2 => tracing::info!(%module, "{message}"),
        _ => tracing::debug!(%module, "{message}"),
    }
}
