//! Host functions a module may import (`enrichd_v1.field`, `.config`,
//! `.log`) and the per-store state behind them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use enrichd_engine::{Event, KeyId, SourceText};
use serde_json::value::RawValue;
use wasmtime::{Caller, Extern, StoreLimits};

/// What a store carries besides the instance.
pub struct HostState {
    pub limits: StoreLimits,
    pub module_name: Arc<str>,
    /// The chain entry's `config` table, as strings.
    pub config: Arc<Vec<(String, String)>>,
    /// Output keys of earlier chain stages, readable through `field`.
    pub earlier_keys: Arc<Vec<(String, KeyId)>>,
    /// The batch being processed, during a call only.
    pub call: Option<CallContext>,
    /// Log lines this instance may still write (a guest cannot flood logs).
    pub logs_left: u32,
}

impl HostState {
    pub fn new(
        module_name: Arc<str>,
        config: Arc<Vec<(String, String)>>,
        earlier_keys: Arc<Vec<(String, KeyId)>>,
    ) -> Self {
        HostState { limits: StoreLimits::default(), module_name, config, earlier_keys, call: None, logs_left: 100 }
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

// The raw pointer is only used on the thread that owns the store, inside a
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

pub fn field(
    caller: &mut Caller<'_, HostState>,
    event: i32,
    key_ptr: i32,
    key_len: i32,
    out_ptr: i32,
    out_cap: i32,
) -> i32 {
    let Some(key) = read_guest(caller, key_ptr, key_len) else { return -1 };
    let value: Option<String> = {
        let state = caller.data();
        let Some(call) = &state.call else { return -1 };
        if event < 0 || event as usize >= call.len {
            return -1;
        }
        // SAFETY: see `CallContext`; index checked against `len`.
        let ev: &Event = unsafe { &*call.events.add(event as usize) };
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

pub fn config(caller: &mut Caller<'_, HostState>, key_ptr: i32, key_len: i32, out_ptr: i32, out_cap: i32) -> i32 {
    let Some(key) = read_guest(caller, key_ptr, key_len) else { return -1 };
    let value = caller.data().config.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
    write_guest(caller, value.as_deref().map(str::as_bytes), out_ptr, out_cap)
}

pub fn log(caller: &mut Caller<'_, HostState>, level: i32, ptr: i32, len: i32) {
    if caller.data().logs_left == 0 {
        return;
    }
    caller.data_mut().logs_left -= 1;
    let Some(message) = read_guest(caller, ptr, len.min(512)) else { return };
    let module = caller.data().module_name.clone();
    match level {
        0 => tracing::error!(%module, "{message}"),
        1 => tracing::warn!(%module, "{message}"),
        2 => tracing::info!(%module, "{message}"),
        _ => tracing::debug!(%module, "{message}"),
    }
}
