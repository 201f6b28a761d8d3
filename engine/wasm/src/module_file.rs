//! A module file before it runs: read under the size limit, and checked
//! the way the host checks it (`enrichd rule check`). Split from
//! `enricher.rs`, which runs a loaded module over batches.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use enrichd_engine::to_hex;
use enrichd_sdk::abi;
use sha2::{Digest, Sha256};

use crate::host::HostState;
use crate::options::WasmOptions;
use crate::runtime::{self, Limits};
use crate::text;

/// What `enrichd rule check` reports about a module.
#[derive(Debug, serde::Serialize)]
pub struct ModuleReport {
    pub path: PathBuf,
    pub size_bytes: usize,
    pub sha256: String,
    /// The ABI version the module declares.
    pub abi_version: String,
    /// Reason / tag texts it declares (ABI 1.1).
    pub declared_texts: usize,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    pub memory_limit_mib: u64,
    pub table_limit_elements: u32,
    pub module_size_limit_mib: u64,
    pub deadline_ms: u64,
}

/// Loads and checks a module the way the host does before running it.
/// Errors are escaped and bounded (`text::error_text`): they quote names
/// the module chose.
pub fn inspect(path: &Path, options: &WasmOptions) -> anyhow::Result<ModuleReport> {
    inspect_inner(path, options).map_err(|e| anyhow::anyhow!(text::error_text(&e)))
}

fn inspect_inner(path: &Path, options: &WasmOptions) -> anyhow::Result<ModuleReport> {
    let bytes = read_module(path, module_size_limit(options)).with_context(|| format!("reading {}", path.display()))?;
    let sha: [u8; 32] = Sha256::digest(&bytes).into();
    let name: Arc<str> = path.file_name().map(|n| n.to_string_lossy().into()).unwrap_or_else(|| "module".into());
    let module = runtime::compile(&bytes, sha, None).with_context(|| format!("module {}", path.display()))?;
    let state = HostState::new(
        name,
        Arc::new(options.config_strings()),
        Arc::new(Vec::new()),
        Arc::new([]),
        Default::default(),
    );
    let loaded = module.load(state, limits_of(options)).with_context(|| format!("module {}", path.display()))?;
    Ok(ModuleReport {
        path: path.to_path_buf(),
        size_bytes: bytes.len(),
        sha256: to_hex(&sha),
        abi_version: format!("{}.{}", abi::ABI_MAJOR, loaded.abi_minor),
        declared_texts: loaded.texts.len(),
        imports: module.module.imports().map(|i| format!("{}.{}", i.module(), i.name())).collect(),
        exports: module.module.exports().map(|e| e.name().to_string()).collect(),
        memory_limit_mib: options.memory_limit_mib,
        table_limit_elements: options.table_limit_elements,
        module_size_limit_mib: options.module_size_limit_mib,
        deadline_ms: options.deadline_ms,
    })
}

pub(crate) fn limits_of(o: &WasmOptions) -> Limits {
    Limits {
        memory_bytes: (o.memory_limit_mib as usize).saturating_mul(1 << 20),
        table_elements: o.table_limit_elements as usize,
        deadline: Duration::from_millis(o.deadline_ms.max(1)),
        deadline_ticks: o.deadline_ms.max(1).div_ceil(runtime::TICK.as_millis() as u64),
    }
}

pub(crate) fn module_size_limit(o: &WasmOptions) -> u64 {
    o.module_size_limit_mib.saturating_mul(1 << 20)
}

/// Reads a module file of at most `limit` bytes: refused on its size
/// before reading, and again while reading (the file may be growing), so a
/// huge or sparse file never costs more than `limit` bytes of memory.
pub(crate) fn read_module(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    read_capped(file, size, limit)
}

/// Reads `reader`, whose size was `size` when looked at, refusing more than
/// `limit` bytes.
fn read_capped(reader: impl std::io::Read, size: u64, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let too_big = |what: String| {
        std::io::Error::other(format!("{what} the module size limit of {limit} bytes (module_size_limit_mib)"))
    };
    if size > limit {
        return Err(too_big(format!("the file is {size} bytes, over")));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    reader.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_big("the file grew past".into()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::read_capped;

    #[test]
    fn a_module_file_growing_while_read_is_refused() {
        let grown = [0u8; 100];
        let err = read_capped(&grown[..], 10, 50).unwrap_err();
        assert!(err.to_string().contains("the file grew past the module size limit of 50 bytes"), "{err}");
        assert_eq!(read_capped(&grown[..], 10, 100).unwrap().len(), 100);
    }
}
