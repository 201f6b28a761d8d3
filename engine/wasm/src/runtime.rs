//! The wasmtime side: one `Engine` for the process, modules compiled once
//! (cached by content hash, in memory and as precompiled artifacts in the
//! state directory), checked against ABI v1 before anything runs,
//! and per-thread instances built from an `InstancePre`.
//!
//! Sandbox: no WASI and no ambient imports (only the three `enrichd_v1`
//! functions), epoch interruption for a per-call deadline in the calling
//! thread's CPU time (a ticker thread advances the epoch every
//! millisecond; past the deadline's ticks a callback reads the thread's
//! CPU clock, see [`crate::limits::CpuBudget`]), memory, table-element and
//! instance / table / memory count caps through the store's resource
//! limiter (a refused grow traps), a bounded wasm stack.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail};
use enrichd_sdk::abi;
use wasmtime::{
    Caller, Config, Engine, ExternType, FuncType, Instance, InstancePre, Linker, Memory, Module, Store, TypedFunc,
    ValType,
};

use crate::declared::DeclaredTexts;
use crate::host::HostState;
use crate::limits::{cpu_deadline_update, thread_cpu_time, CpuBudget};
pub use crate::limits::{GuestLimits, LimitHit, Limits};

/// Milliseconds per epoch tick: deadlines are counted in these.
pub const TICK: Duration = Duration::from_millis(1);

/// The process-wide engine, with its epoch ticker.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(256 * 1024);
        // `perf` can name guest functions with a perf map (/tmp/perf-PID.map).
        if std::env::var_os("ENRICHD_WASM_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).expect("wasmtime engine with a static configuration");
        let ticker = engine.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                ticker.increment_epoch();
            })
            .expect("spawn the epoch ticker");
        engine
    })
}

/// Compiles `bytes`, reusing an earlier compilation of identical content:
/// from memory within the process, and from `cache_dir` (the server's state
/// directory) across restarts.
pub fn compile(bytes: &[u8], sha256: [u8; 32], cache_dir: Option<&Path>) -> anyhow::Result<Module> {
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], Module>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(m) = cache.lock().expect("module cache").get(&sha256) {
        return Ok(m.clone());
    }
    let on_disk = cache_dir.map(|dir| dir.join("wasm-cache").join(artifact_name(&sha256)));
    let module = match on_disk.as_deref().and_then(load_artifact) {
        Some(module) => module,
        None => {
            let module = Module::new(engine(), bytes).map_err(|e| anyhow!("not a valid WebAssembly module: {e:#}"))?;
            if let Some(path) = &on_disk {
                store_artifact(&module, path);
            }
            module
        }
    };
    cache.lock().expect("module cache").insert(sha256, module.clone());
    Ok(module)
}

/// `<content sha256>-<engine compatibility hash>.cwasm`: an artifact is
/// only ever loaded by an engine that could have produced it.
fn artifact_name(sha256: &[u8; 32]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine().precompile_compatibility_hash().hash(&mut h);
    format!("{}-{:016x}.cwasm", enrichd_engine::to_hex(sha256), h.finish())
}

fn load_artifact(path: &Path) -> Option<Module> {
    if !path.is_file() {
        return None;
    }
    // SAFETY: `deserialize_file` trusts the artifact to be wasmtime's own
    // output. It is: the file sits in our private state directory, under a
    // name binding it to the module's content hash and to this engine's
    // configuration, written whole by `store_artifact` (temporary file,
    // then rename). wasmtime also checks the version and settings header.
    match unsafe { Module::deserialize_file(engine(), path) } {
        Ok(module) => {
            // Recently used artifacts are the last evicted (see `evict`).
            touch(path);
            Some(module)
        }
        Err(e) => {
            tracing::warn!(artifact = %path.display(), error = %e, "ignoring an unusable precompiled module");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

/// Best effort: a cache that cannot be written only costs a compilation.
fn store_artifact(module: &Module, path: &Path) {
    let write = || -> anyhow::Result<()> {
        let dir = path.parent().expect("artifact paths have a directory");
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let bytes = module.serialize().map_err(|e| anyhow!("{e:#}"))?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)?;
        evict(dir, path, MAX_CACHED_ARTIFACTS, MAX_CACHE_BYTES)?;
        Ok(())
    };
    if let Err(e) = write() {
        tracing::debug!(artifact = %path.display(), error = %e, "precompiled module not cached");
    }
}

/// Most precompiled artifacts kept in `wasm-cache`: every distinct module
/// content (each edit of a rule) leaves one, so without a bound the
/// directory grows for as long as the server's state directory lives.
const MAX_CACHED_ARTIFACTS: usize = 32;
/// Most bytes of precompiled artifacts kept (a compiled rule is typically
/// a few hundred KiB to a few MiB).
const MAX_CACHE_BYTES: u64 = 256 << 20;

/// Marks an artifact as used now (its modification time), best effort.
fn touch(path: &Path) {
    let now = std::time::SystemTime::now();
    if let Err(e) = std::fs::File::options().append(true).open(path).and_then(|f| f.set_modified(now)) {
        tracing::debug!(artifact = %path.display(), error = %e, "cannot mark a precompiled module as used");
    }
}

/// Keeps the cache directory within `max_files` artifacts and `max_bytes`:
/// the least recently used (oldest modification time: written or loaded)
/// go first; `keep`, just written, always stays. Only `.cwasm` files are
/// counted or removed.
fn evict(dir: &Path, keep: &Path, max_files: usize, max_bytes: u64) -> std::io::Result<()> {
    let mut artifacts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "cwasm") || path == keep {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let used = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
        artifacts.push((used, meta.len(), path));
    }
    // Newest first; what no longer fits after the newest is removed.
    artifacts.sort_by_key(|a| std::cmp::Reverse(a.0));
    let mut files = 1;
    let mut bytes = std::fs::metadata(keep).map_or(0, |m| m.len());
    for (_, len, path) in artifacts {
        files += 1;
        bytes += len;
        if files > max_files || bytes > max_bytes {
            tracing::debug!(artifact = %path.display(), "evicting a precompiled module from the cache");
            let _ = std::fs::remove_file(&path);
            bytes -= len;
            files -= 1;
        }
    }
    Ok(())
}

/// The imports the host provides, with their types.
fn provided_imports() -> [(&'static str, FuncType); 3] {
    let e = engine();
    [
        ("field", FuncType::new(e, [const { ValType::I32 }; 5], [ValType::I32])),
        ("config", FuncType::new(e, [const { ValType::I32 }; 4], [ValType::I32])),
        ("log", FuncType::new(e, [const { ValType::I32 }; 3], [])),
    ]
}

fn same_type(a: &FuncType, b: &FuncType) -> bool {
    a.params().map(|p| p.to_string()).eq(b.params().map(|p| p.to_string()))
        && a.results().map(|p| p.to_string()).eq(b.results().map(|p| p.to_string()))
}

fn describe(t: &FuncType) -> String {
    let list = |it: &mut dyn Iterator<Item = ValType>| it.map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
    format!("({}) -> ({})", list(&mut t.params()), list(&mut t.results()))
}

/// Checks imports and exports against ABI v1, without running anything.
pub fn check_interface(module: &Module) -> anyhow::Result<()> {
    let provided = provided_imports();
    for import in module.imports() {
        // Names the module chose: cut here, escaped with the whole error.
        let name = crate::text::cut(&format!("{}.{}", import.module(), import.name()), crate::text::MAX_NAME);
        let found = provided.iter().find(|(n, _)| import.module() == abi::IMPORT_MODULE && *n == import.name());
        match (found, import.ty()) {
            (Some((_, want)), ExternType::Func(got)) if same_type(want, &got) => {}
            (Some((_, want)), ExternType::Func(got)) => {
                bail!("imports {name} with type {}, but the host provides {}", describe(&got), describe(want))
            }
            _ => bail!(
                "imports {name}, which the host does not provide (ABI v1 provides only {}.field, {0}.config and {0}.log; no WASI, no ambient I/O)",
                abi::IMPORT_MODULE
            ),
        }
    }
    let e = engine();
    // `(name, type, required)`: `enrichd_texts` is optional (ABI 1.1).
    let wanted = [
        ("enrichd_abi_version", FuncType::new(e, [], [ValType::I32]), true),
        ("enrichd_io", FuncType::new(e, [], [ValType::I32]), true),
        ("enrichd_process", FuncType::new(e, [ValType::I32], [ValType::I32]), true),
        (TEXTS_EXPORT, FuncType::new(e, [], [ValType::I32]), false),
    ];
    for (name, want, required) in &wanted {
        match module.get_export(name) {
            None if !required => {}
            None => bail!("lacks the export `{name}` {} (not an enrichd ABI v1 module?)", describe(want)),
            Some(ExternType::Func(got)) if same_type(want, &got) => {}
            Some(ExternType::Func(got)) => bail!("exports `{name}` as {}, expected {}", describe(&got), describe(want)),
            Some(_) => bail!("exports `{name}` but it is not a function"),
        }
    }
    match module.get_export("memory") {
        Some(ExternType::Memory(_)) => Ok(()),
        _ => bail!("lacks the export `memory`"),
    }
}

/// The export that returns the declared texts' table (ABI 1.1).
const TEXTS_EXPORT: &str = "enrichd_texts";

/// The texts `worker`'s module declared (ABI 1.1 `enrichd_texts`; none for
/// a 1.0 module or one without the export), read from its memory. Called
/// once per load, on the probe instance, within its setup deadline.
fn declared_texts(worker: &mut Worker) -> anyhow::Result<DeclaredTexts> {
    if worker.minor < 1 {
        return Ok(DeclaredTexts::none());
    }
    let Ok(f) = worker.instance.get_typed_func::<(), i32>(&mut worker.store, TEXTS_EXPORT) else {
        return Ok(DeclaredTexts::none());
    };
    worker.store.set_epoch_deadline(SETUP_TICKS);
    let table = f.call(&mut worker.store, ()).map_err(|e| anyhow!("{TEXTS_EXPORT} failed: {e:#}"))? as u32;
    DeclaredTexts::read(worker.memory.data(&worker.store), table as usize).map_err(|e| anyhow!("{TEXTS_EXPORT}: {e:#}"))
}

/// Builds the linker with the host functions and pre-links `module`.
pub fn prelink(module: &Module) -> anyhow::Result<InstancePre<HostState>> {
    let mut linker: Linker<HostState> = Linker::new(engine());
    let m = abi::IMPORT_MODULE;
    linker
        .func_wrap(m, "field", |mut c: Caller<'_, HostState>, ev: i32, kp: i32, kl: i32, op: i32, oc: i32| -> i32 {
            crate::host::field(&mut c, ev, kp, kl, op, oc)
        })
        .map_err(|e| anyhow!("{e:#}"))?;
    linker
        .func_wrap(m, "config", |mut c: Caller<'_, HostState>, kp: i32, kl: i32, op: i32, oc: i32| -> i32 {
            crate::host::config(&mut c, kp, kl, op, oc)
        })
        .map_err(|e| anyhow!("{e:#}"))?;
    linker
        .func_wrap(m, "log", |mut c: Caller<'_, HostState>, level: i32, p: i32, l: i32| {
            crate::host::log(&mut c, level, p, l)
        })
        .map_err(|e| anyhow!("{e:#}"))?;
    linker.instantiate_pre(module).map_err(|e| anyhow!("{e:#}"))
}

/// One live instance, owned by one thread.
pub struct Worker {
    pub store: Store<HostState>,
    pub memory: Memory,
    pub process: TypedFunc<i32, i32>,
    /// Address of the exchange area in guest memory.
    pub io: usize,
    pub generation: u64,
    instance: Instance,
    /// The ABI minor version the module declared.
    pub minor: u32,
}

/// Deadline of instantiation (start function, `enrichd_abi_version`,
/// `enrichd_io`), in ticks: 1 s, or `deadline_ms` if longer. It handles no
/// events, and a batch-sized deadline made loads fail on a busy host
/// (a debug-build instantiation waiting for a core can take 20 ms).
const SETUP_TICKS: u64 = 1000;

/// Instantiates and checks the ABI version and exchange area.
pub fn instantiate(
    pre: &InstancePre<HostState>,
    state: HostState,
    limits: Limits,
    generation: u64,
) -> anyhow::Result<Worker> {
    let mut store = Store::new(engine(), state);
    store.data_mut().limits = GuestLimits::new(limits);
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_callback(|ctx| Ok(cpu_deadline_update(ctx.data().limits.cpu, thread_cpu_time(), TICK)));
    store.data_mut().limits.cpu =
        CpuBudget { started: thread_cpu_time(), budget: limits.deadline.max(TICK * SETUP_TICKS as u32) };
    store.set_epoch_deadline(limits.deadline_ticks.max(SETUP_TICKS));
    let instance: Instance = pre.instantiate(&mut store).map_err(|e| anyhow!("instantiation failed: {e:#}"))?;
    let version = instance
        .get_typed_func::<(), i32>(&mut store, "enrichd_abi_version")
        .and_then(|f| f.call(&mut store, ()))
        .map_err(|e| anyhow!("enrichd_abi_version failed: {e:#}"))? as u32;
    let (major, minor) = (version >> 16, version & 0xffff);
    if major != abi::ABI_MAJOR || minor > abi::ABI_MINOR {
        bail!(
            "built for ABI {major}.{minor}; this host supports {}.0 to {}.{}",
            abi::ABI_MAJOR,
            abi::ABI_MAJOR,
            abi::ABI_MINOR
        );
    }
    store.set_epoch_deadline(limits.deadline_ticks.max(SETUP_TICKS));
    let io = instance
        .get_typed_func::<(), i32>(&mut store, "enrichd_io")
        .and_then(|f| f.call(&mut store, ()))
        .map_err(|e| anyhow!("enrichd_io failed: {e:#}"))? as u32 as usize;
    let memory = instance.get_memory(&mut store, "memory").ok_or_else(|| anyhow!("no exported memory"))?;
    if io.checked_add(abi::IO_AREA_SIZE).is_none_or(|end| end > memory.data_size(&store)) || !io.is_multiple_of(8) {
        bail!(
            "enrichd_io returned {io:#x}: the {} byte exchange area must be 8-aligned and inside memory",
            abi::IO_AREA_SIZE
        );
    }
    let process = instance.get_typed_func::<i32, i32>(&mut store, "enrichd_process").map_err(|e| anyhow!("{e:#}"))?;
    Ok(Worker { store, memory, process, io, generation, instance, minor })
}

/// Shared, immutable facts about a loaded module.
pub struct LoadedModule {
    pub pre: InstancePre<HostState>,
    pub generation: u64,
    /// Texts its results name by id (ABI 1.1).
    pub texts: DeclaredTexts,
    /// The ABI minor version it declared.
    pub abi_minor: u32,
}

impl LoadedModule {
    /// Makes `module` ready to run: its imports and exports checked against
    /// the ABI, pre-linked, and instantiated once with `probe` (so version
    /// and exchange-area problems are load errors, not failures at the
    /// first batch), which also reads what it declares.
    pub fn load(module: &Module, probe: HostState, limits: Limits) -> anyhow::Result<Self> {
        check_interface(module)?;
        let pre = prelink(module)?;
        let mut probe = instantiate(&pre, probe, limits, 0)?;
        Ok(LoadedModule {
            generation: new_generation(),
            texts: declared_texts(&mut probe)?,
            abi_minor: probe.minor,
            pre,
        })
    }
}

pub fn new_generation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub type Shared = Arc<LoadedModule>;

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    use super::*;

    fn artifact(dir: &Path, name: &str, len: usize, age_s: u64) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; len]).unwrap();
        let file = std::fs::File::options().append(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(age_s)).unwrap();
        path
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn the_artifact_cache_keeps_the_most_recently_used_within_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        artifact(d, "a.cwasm", 100, 50);
        artifact(d, "b.cwasm", 100, 40);
        let c = artifact(d, "c.cwasm", 100, 30);
        artifact(d, "d.cwasm", 100, 20);
        artifact(d, "notes.txt", 10_000, 60);
        // Loading `c` makes it the most recently used.
        touch(&c);
        let new = artifact(d, "new.cwasm", 100, 0);
        // By count: the new one and the two most recent others.
        evict(d, &new, 3, u64::MAX).unwrap();
        assert_eq!(names(d), ["c.cwasm", "d.cwasm", "new.cwasm", "notes.txt"]);
        // By bytes: 250 leaves room for the new one and one more.
        evict(d, &new, 10, 250).unwrap();
        assert_eq!(names(d), ["c.cwasm", "new.cwasm", "notes.txt"]);
        // The artifact just written stays even when it alone is too big.
        evict(d, &new, 1, 10).unwrap();
        assert_eq!(names(d), ["new.cwasm", "notes.txt"]);
    }
}
