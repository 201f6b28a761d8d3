//! The wasmtime side: one `Engine` for the process, modules compiled once
//! (cached by content hash: the last few loaded in memory, and as
//! precompiled artifacts in the state directory), checked against ABI v1 before anything runs,
//! and per-thread instances built from an `InstancePre`.
//!
//! Sandbox: no WASI and no ambient imports (only the three `enrichd_v1`
//! functions), epoch interruption for a per-call deadline in the calling
//! thread's CPU time (a ticker thread advances the epoch every
//! millisecond; past the deadline's ticks a callback reads the thread's
//! CPU clock, see [`crate::limits::CpuBudget`]), memory, table-element and
//! instance / table / memory count caps through the store's resource
//! limiter (a refused grow traps), a bounded wasm stack.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail};
use enrichd_sdk::abi;
use wasmtime::{
    Caller, Config, Engine, ExternType, FuncType, Instance, InstancePre, Linker, Memory, Module, Store, TypedFunc,
    ValType,
};

use crate::artifacts;
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
/// directory) across restarts, if the artifact there is trusted
/// ([`crate::artifacts`]). The result joins the in-memory cache only once
/// it has loaded ([`Compiled::load`]): a module that fails its interface
/// checks or its probe is not kept.
///
/// Without `cache_dir` nothing read from disk is used, not even through the
/// in-memory cache: a stage that checks signatures passes none, so that
/// the code it runs is compiled from the bytes it verified.
pub fn compile(bytes: &[u8], sha256: [u8; 32], cache_dir: Option<&Path>) -> anyhow::Result<Compiled> {
    if let Some((module, from_disk)) = compiled().lock().expect("module cache").get(&sha256) {
        if cache_dir.is_some() || !from_disk {
            return Ok(Compiled { module, sha256, from_disk });
        }
    }
    let on_disk = cache_dir.map(|dir| (artifacts::cache_dir(dir), artifacts::artifact_name(&sha256, engine())));
    let (module, from_disk) = match on_disk.as_ref().and_then(|(dir, name)| artifacts::load(dir, name, engine())) {
        Some(module) => (module, true),
        None => {
            let module = Module::new(engine(), bytes).map_err(|e| anyhow!("not a valid WebAssembly module: {e:#}"))?;
            if let Some((dir, name)) = &on_disk {
                artifacts::store(dir, name, &module);
            }
            (module, false)
        }
    };
    Ok(Compiled { module, sha256, from_disk })
}

/// A compiled module ([`compile`]), not yet remembered.
pub struct Compiled {
    pub module: Module,
    sha256: [u8; 32],
    /// Read from a precompiled artifact (see [`compile`]).
    from_disk: bool,
}

impl Compiled {
    /// [`LoadedModule::load`]; on success the compilation is remembered for
    /// the next build of the same content (a reload, a shadow, a restart of
    /// the stage with other options).
    pub fn load(&self, probe: HostState, limits: Limits) -> anyhow::Result<LoadedModule> {
        let loaded = LoadedModule::load(&self.module, probe, limits)?;
        self.remember();
        Ok(loaded)
    }

    fn remember(&self) {
        compiled().lock().expect("module cache").insert(self.sha256, self.module.clone(), self.from_disk);
    }
}

/// Compiled modules kept in memory, most recently used last. Bounded: every
/// edit of a rule, every shadow uploaded through the API, every module
/// inspected is compiled, and a server running for months must not keep
/// them all. Enough for a chain's rules and their shadows to be rebuilt by
/// a reload without compiling again; one evicted is compiled again (or
/// read from its artifact) when needed, and a live stage keeps its own.
pub(crate) const CACHED_MODULES: usize = 16;

/// Modules compiled in this process by content hash, each with whether it
/// was read from a precompiled artifact.
#[derive(Default)]
struct ModuleCache {
    entries: VecDeque<([u8; 32], Module, bool)>,
}

impl ModuleCache {
    /// The module for `sha256`, made the most recently used.
    fn get(&mut self, sha256: &[u8; 32]) -> Option<(Module, bool)> {
        let at = self.entries.iter().position(|(k, ..)| k == sha256)?;
        let entry = self.entries.remove(at).expect("found above");
        let found = (entry.1.clone(), entry.2);
        self.entries.push_back(entry);
        Some(found)
    }

    fn insert(&mut self, sha256: [u8; 32], module: Module, from_disk: bool) {
        self.entries.retain(|(k, ..)| *k != sha256);
        self.entries.push_back((sha256, module, from_disk));
        while self.entries.len() > CACHED_MODULES {
            self.entries.pop_front();
        }
    }
}

fn compiled() -> &'static Mutex<ModuleCache> {
    static CACHE: OnceLock<Mutex<ModuleCache>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Forgets the in-process compilation of `sha256`, as a restart would.
#[cfg(test)]
pub(crate) fn forget(sha256: &[u8; 32]) {
    compiled().lock().expect("module cache").entries.retain(|(k, ..)| k != sha256);
}

/// Whether the in-process cache holds `sha256`, and how many it holds.
#[cfg(test)]
pub(crate) fn cached(sha256: &[u8; 32]) -> (bool, usize) {
    let cache = compiled().lock().expect("module cache");
    (cache.entries.iter().any(|(k, ..)| k == sha256), cache.entries.len())
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
    /// Counts the instances alive on the creating thread, for tests that
    /// check an instance is freed when its owner goes.
    #[cfg(test)]
    _alive: AliveInstance,
}

#[cfg(test)]
thread_local! {
    static ALIVE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// See `Worker::_alive`: counts on the thread it was created on, so tests
/// running in parallel do not see each other's instances (create and drop
/// them on the test's thread).
#[cfg(test)]
struct AliveInstance;

#[cfg(test)]
impl AliveInstance {
    fn new() -> Self {
        ALIVE.with(|n| n.set(n.get() + 1));
        AliveInstance
    }
}

#[cfg(test)]
impl Drop for AliveInstance {
    fn drop(&mut self) {
        ALIVE.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Instances created on this thread and not yet dropped.
#[cfg(test)]
pub(crate) fn instances_alive() -> usize {
    ALIVE.with(|n| n.get())
}

/// Deadline of the instantiation at load (start function,
/// `enrichd_abi_version`, `enrichd_io`), in ticks: 1 s, or `deadline_ms`
/// if longer. It handles no events, and a batch-sized deadline made loads
/// fail on a busy host (a debug-build instantiation waiting for a core can
/// take 20 ms).
const SETUP_TICKS: u64 = 1000;

/// Which budget an instantiation runs its guest code (start function,
/// `enrichd_abi_version`, `enrichd_io`) under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// The probe at load, off the hot path: [`SETUP_TICKS`] (or the
    /// deadline, if longer).
    Load,
    /// On the hot path (a first call on a thread, after a failed call,
    /// after a reload): the call deadline. Here the instantiation holds up
    /// a batch like a call does, and a module whose start function spins
    /// under the load budget would otherwise stall a batch for up to a
    /// second each time its instance is recycled, too rarely for the
    /// breaker to notice.
    Call,
}

/// Instantiates and checks the ABI version and exchange area.
pub fn instantiate(
    pre: &InstancePre<HostState>,
    state: HostState,
    limits: Limits,
    generation: u64,
    setup: Setup,
) -> anyhow::Result<Worker> {
    let (budget, ticks) = match setup {
        Setup::Load => (limits.deadline.max(TICK * SETUP_TICKS as u32), limits.deadline_ticks.max(SETUP_TICKS)),
        Setup::Call => (limits.deadline, limits.deadline_ticks),
    };
    let mut store = Store::new(engine(), state);
    store.data_mut().limits = GuestLimits::new(limits);
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_callback(|ctx| Ok(cpu_deadline_update(ctx.data().limits.cpu, thread_cpu_time(), TICK)));
    store.data_mut().limits.cpu = CpuBudget { started: thread_cpu_time(), budget };
    store.set_epoch_deadline(ticks);
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
    store.set_epoch_deadline(ticks);
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
    Ok(Worker {
        store,
        memory,
        process,
        io,
        generation,
        instance,
        minor,
        #[cfg(test)]
        _alive: AliveInstance::new(),
    })
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
        let again = HostState::new(
            probe.module_name.clone(),
            probe.config.clone(),
            probe.earlier_keys.clone(),
            probe.earlier_facts.clone(),
            probe.logs.clone(),
        );
        let mut probe = instantiate(&pre, probe, limits, 0, Setup::Load)?;
        // Instances made during a batch get the call deadline (see
        // `Setup::Call`): a start-up that fits only the probe's longer
        // budget would load, then fail every batch. Refused here instead,
        // saying why.
        instantiate(&pre, again, limits, 0, Setup::Call).map_err(|e| {
            anyhow::anyhow!(
                "its start-up (instantiation) does not fit deadline_ms ({} ms), the budget an instance made during a \
                 batch gets: {e:#}",
                limits.deadline.as_millis()
            )
        })?;
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
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use sha2::{Digest, Sha256};

    use super::*;

    /// A module (WAT text) whose export `answer` returns `n`, its hash and
    /// its artifact's path under `state`.
    fn answering(n: i32, state: &Path) -> (String, [u8; 32], PathBuf) {
        let wat = format!(r#"(module (func (export "answer") (result i32) (i32.const {n})))"#);
        let sha: [u8; 32] = Sha256::digest(&wat).into();
        let path = artifacts::cache_dir(state).join(artifacts::artifact_name(&sha, engine()));
        (wat, sha, path)
    }

    /// Compiles and remembers `bytes`, as a successful load would (these
    /// test modules are not enrichd modules, so they cannot load).
    fn remembered(bytes: &[u8], sha: [u8; 32], dir: Option<&Path>) -> Module {
        let compiled = compile(bytes, sha, dir).unwrap();
        compiled.remember();
        compiled.module
    }

    fn answer(module: &Module) -> i32 {
        let mut store = Store::new(engine(), ());
        store.set_epoch_deadline(1_000_000);
        let instance = Instance::new(&mut store, module, &[]).unwrap();
        instance.get_typed_func::<(), i32>(&mut store, "answer").unwrap().call(&mut store, ()).unwrap()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn the_artifact_cache_is_private() {
        let state = tempfile::tempdir().unwrap();
        let (wat, sha, path) = answering(1001, state.path());
        assert_eq!(answer(&remembered(wat.as_bytes(), sha, Some(state.path()))), 1001);
        assert_eq!(mode(&artifacts::cache_dir(state.path())), 0o700);
        assert_eq!(mode(&path), 0o600);
    }

    /// Module B's artifact put under module A's name, as someone who can
    /// write the state directory could: A must still run as A unless the
    /// file could only have been written by this user.
    #[test]
    fn an_artifact_others_could_have_written_is_not_run() {
        let state = tempfile::tempdir().unwrap();
        let s = Some(state.path());
        let (a, sha_a, path_a) = answering(2001, state.path());
        let (b, sha_b, path_b) = answering(2002, state.path());
        remembered(a.as_bytes(), sha_a, s);
        remembered(b.as_bytes(), sha_b, s);
        // A restart (the in-process compilation forgotten) loads A from
        // `path_a` after it was replaced by B's artifact in some way.
        let restart_a = |dir: Option<&Path>| {
            forget(&sha_a);
            answer(&remembered(a.as_bytes(), sha_a, dir))
        };
        let plant = || {
            let _ = std::fs::remove_file(&path_a);
            std::fs::copy(&path_b, &path_a).unwrap();
            chmod(&path_a, 0o600);
        };

        // Control: a private file of ours is trusted (this user can run
        // any code anyway), which shows the swap is visible to the test.
        plant();
        assert_eq!(restart_a(s), 2002);
        // Without a cache directory (a stage checking signatures) neither
        // the disk nor what was read from it is used.
        assert_eq!(answer(&remembered(a.as_bytes(), sha_a, None)), 2001);

        // Writable by others: recompiled, and replaced by a private A.
        plant();
        chmod(&path_a, 0o666);
        assert_eq!(restart_a(s), 2001);
        assert_eq!(mode(&path_a), 0o600);
        assert_eq!(restart_a(s), 2001);

        // A hard link to B's artifact, a symbolic link to it.
        let _ = std::fs::remove_file(&path_a);
        std::fs::hard_link(&path_b, &path_a).unwrap();
        assert_eq!(restart_a(s), 2001);
        let _ = std::fs::remove_file(&path_a);
        std::os::unix::fs::symlink(&path_b, &path_a).unwrap();
        assert_eq!(restart_a(s), 2001);
        assert!(!std::fs::symlink_metadata(&path_a).unwrap().is_symlink());

        // A directory others could write: made private and emptied of
        // what it held (B's artifact too), A recompiled.
        plant();
        let dir = artifacts::cache_dir(state.path());
        chmod(&dir, 0o777);
        assert_eq!(restart_a(s), 2001);
        assert_eq!(mode(&dir), 0o700);
        assert!(!path_b.exists() && path_a.exists());
    }

    fn probe() -> (HostState, Limits) {
        let state = HostState::new("m".into(), Arc::default(), Arc::default(), Arc::new([]), Arc::default());
        let deadline = Duration::from_millis(50);
        (state, Limits { memory_bytes: 1 << 20, table_elements: 100, deadline, deadline_ticks: 50 })
    }

    /// The cache used to keep every module compiled since start: every
    /// edit of a rule, every shadow uploaded, and modules that failed
    /// their checks (inserted before loading).
    #[test]
    fn the_module_cache_is_bounded_and_keeps_only_loaded_modules() {
        // Distinct enrichd modules (by a data segment), each loaded.
        let shas: Vec<[u8; 32]> = (0..CACHED_MODULES + 5)
            .map(|n| {
                let wat = format!(
                    r#"(module (memory (export "memory") 2) (data (i32.const 16) "cache test {n}")
                      (func (export "enrichd_abi_version") (result i32) (i32.const 65536))
                      (func (export "enrichd_io") (result i32) (i32.const 0))
                      (func (export "enrichd_process") (param i32) (result i32) (i32.const 0)))"#
                );
                let sha: [u8; 32] = Sha256::digest(&wat).into();
                let (state, limits) = probe();
                compile(wat.as_bytes(), sha, None).unwrap().load(state, limits).unwrap();
                sha
            })
            .collect();
        let (first, _) = cached(&shas[0]);
        let (last, len) = cached(shas.last().unwrap());
        assert!(!first && last && len <= CACHED_MODULES, "first kept: {first}, last kept: {last}, {len} cached");

        // Compiled, but no enrichd module: not kept.
        let dir = tempfile::tempdir().unwrap();
        let (wat, sha, _) = answering(3001, dir.path());
        let (state, limits) = probe();
        assert!(compile(wat.as_bytes(), sha, None).unwrap().load(state, limits).is_err());
        assert!(!cached(&sha).0);
    }
}
