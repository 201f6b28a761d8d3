//! Opening a MaxMind DB: a private snapshot of the file, mapped; its
//! metadata, layout and a sample of records checked before it goes live;
//! and the status that describes it.

use std::io;
use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use enrichd_engine::limits::copy_capped;
use enrichd_engine::{source_info, PluginState, PluginStatus, SourceInfo};
use maxminddb::{Metadata, Mmap, Reader};

use super::shared::SharedRecords;
use super::tree::{Found, Tree};
use super::{DataError, DataSection, Fact, RecordFormat};

/// The mapped file, shared by the tree walker and the record reader.
struct SharedMap(Arc<Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// An open database.
pub(super) struct Database {
    reader: Reader<SharedMap>,
    pub(super) map: Arc<Mmap>,
    pub(super) tree: Tree,
    /// Where the search tree (from 0) and the data section lie in `map`.
    pub(super) tree_len: usize,
    pub(super) data: Range<usize>,
    /// Answers decoded by any thread (see [`super::shared`]).
    pub(super) shared: SharedRecords,
}

pub(super) const METADATA_MARKER: &[u8] = b"\xab\xcd\xefMaxMind.com";

/// Nodes whose records are decoded when a database is validated (on
/// GeoLite2-City: 0.4 s in a debug build, where opening takes 3.6 s).
const SAMPLE_NODES: usize = 20_000;

/// Where the search tree and the data section lie in a database's bytes,
/// from the metadata `Reader::from_source` has just read: the tree, its
/// length, and the data section's range. Refuses a layout that does not fit.
pub(crate) fn layout(bytes: &[u8], md: &Metadata) -> Result<(Tree, usize, Range<usize>), &'static str> {
    let tree_len =
        (md.node_count as usize).checked_mul(usize::from(md.record_size) / 4).ok_or("search tree too large")?;
    let start = tree_len.checked_add(16).ok_or("search tree too large")?;
    let end = bytes.windows(METADATA_MARKER.len()).rposition(|w| w == METADATA_MARKER).unwrap_or(0);
    if start > end {
        return Err("data section out of bounds");
    }
    let tree = Tree::new(&bytes[..tree_len], md.node_count as usize, md.record_size, end - start, md.ip_version == 4)
        .ok_or("search tree out of bounds")?;
    Ok((tree, tree_len, start..end))
}

impl Database {
    /// The database's metadata (type, build time, layout).
    pub(super) fn metadata(&self) -> &Metadata {
        self.reader.metadata()
    }

    /// Maps and validates `path`; `Ok(None)` when the file does not exist.
    /// A file over `max_bytes` is refused before it is copied.
    pub(super) fn open(path: &Path, label: &str, max_bytes: u64) -> anyhow::Result<Option<(Database, PluginStatus)>> {
        let fail = |e: &dyn std::fmt::Display| anyhow!("opening {label} database {}: {e}", path.display());
        // Map a private snapshot, never the file itself: `cp new.mmdb
        // GeoLite2-City.mmdb` truncates and rewrites the file in place, and a
        // mapping of it would then raise SIGBUS on the next lookup. The
        // snapshot is an unlinked temporary file (in $TMPDIR) that nothing
        // else can reach; it disappears with the last mapping. A file caught
        // mid-rewrite gives a torn snapshot, which validation below refuses.
        let mut snapshot = tempfile::tempfile().map_err(|e| fail(&format!("creating a snapshot file: {e}")))?;
        match copy_capped(path, &mut snapshot, max_bytes) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
                return Err(fail(&format!("{e} (`max_database_bytes`); not loaded")))
            }
            Err(e) => return Err(fail(&format!("copying to a snapshot: {e}"))),
        }
        // SAFETY: the mapping is read-only and only read through
        // bounds-checked code (the maxminddb reader and `DataSection`); the
        // snapshot file is private and unlinked, so nothing can change or
        // truncate it while it is mapped.
        let map = Arc::new(unsafe { Mmap::map(&snapshot) }.map_err(|e| fail(&e))?);
        // Mapping here (rather than `Reader::open_mmap`) lets the SHA-256 be
        // taken over exactly the bytes served, and the record reader share them.
        let source = source_info(path, &map);
        let reader = Reader::from_source(SharedMap(Arc::clone(&map))).map_err(|e| fail(&e))?;
        let md = reader.metadata();
        let (tree, tree_len, data) = layout(&map, md).map_err(|e| fail(&e))?;
        let status = loaded_status(md, source);
        let shared = SharedRecords::new(0);
        Ok(Some((Database { reader, map, tree, tree_len, data, shared }, status)))
    }

    /// Checks a sample of the database before it goes live: the records of
    /// up to [`SAMPLE_NODES`] nodes spread over the search tree, each
    /// decoded completely ([`DataSection::validate`]) and as the plugin
    /// reads it for a lookup. The metadata and layout checks of `open`
    /// pass a file whose data section is corrupt; this catches it (a
    /// damaged record in a few percent of them is all but certain to be
    /// sampled) instead of serving "malformed record data" per lookup.
    pub(super) fn validate<F: RecordFormat>(&self) -> Result<(), String> {
        validate_sample::<F>(&self.tree, self.nodes(), &self.map[self.data.clone()])
    }

    /// Every sampled record decoded completely, whatever its format (a
    /// downloaded file checked before it replaces the live one).
    pub(super) fn sample(&self) -> Result<(), String> {
        sample_records(&self.tree, self.nodes(), &self.map[self.data.clone()], |_, _| Ok(()))
    }

    /// The search tree's bytes.
    pub(super) fn nodes(&self) -> &[u8] {
        &self.map[..self.tree_len]
    }

    /// Data-section offset of the record for `ip` (canonical); `None` when
    /// there is none.
    pub(super) fn find(&self, ip: IpAddr) -> Found {
        self.tree.find(self.nodes(), ip)
    }

    /// Writes the answer of format `F` for the record at `offset` to `out`.
    pub(super) fn encode<F: RecordFormat>(&self, offset: usize, out: &mut Vec<u8>) -> Result<Fact, DataError> {
        encode_record::<F>(&self.map[self.data.clone()], offset, out)
    }
}

/// Values the validation of one database visits at most, across its
/// sample (see [`sample_records`]).
const SAMPLE_VALUES: u64 = 50_000_000;

/// [`Database::validate`] on a database's parts: `nodes` is the search
/// tree, `data` the data section.
pub(crate) fn validate_sample<F: RecordFormat>(tree: &Tree, nodes: &[u8], data: &[u8]) -> Result<(), String> {
    sample_records(tree, nodes, data, |offset, out| encode_record::<F>(data, offset, out).map(drop))
}

/// The records of up to [`SAMPLE_NODES`] nodes of the tree, each decoded
/// completely, after which `read` reads it as a plugin would.
fn sample_records(
    tree: &Tree,
    nodes: &[u8],
    data: &[u8],
    mut read: impl FnMut(usize, &mut Vec<u8>) -> Result<(), DataError>,
) -> Result<(), String> {
    let section = DataSection::new(data);
    let mut seen = std::collections::HashSet::new();
    let (mut checked, mut failed, mut first) = (0usize, 0usize, None);
    let mut out = Vec::new();
    // Values visited across the whole sample: distinct records that each
    // point at one shared structure of 99,999 values would otherwise cost
    // 40,000 x 100,000 steps on every reload. A real City sample visits a
    // few million; past the budget the rest of the sample is not checked.
    let mut total = SAMPLE_VALUES;
    tree.sample_records(nodes, SAMPLE_NODES, |found| {
        let problem = match found {
            Err(e) => Some(e.to_string()),
            Ok(offset) if !seen.insert(offset) => None,
            Ok(_) if total == 0 => None,
            Ok(offset) => match section.validate_within(offset, &mut total) {
                None => None,
                Some(checked_whole) => {
                    checked += 1;
                    checked_whole.and_then(|()| read(offset, &mut out)).err().map(|e| e.to_string())
                }
            },
        };
        if let Some(problem) = problem {
            failed += 1;
            first.get_or_insert(problem);
        }
    });
    match first {
        None => Ok(()),
        Some(first) => Err(format!(
            "corrupt data: {failed} of {checked} sampled records do not decode (first: {first}); not loaded"
        )),
    }
}

/// [`Database::encode`] on the data section's bytes.
pub(crate) fn encode_record<F: RecordFormat>(data: &[u8], offset: usize, out: &mut Vec<u8>) -> Result<Fact, DataError> {
    out.clear();
    let section = DataSection::new(data);
    match section.record(offset)? {
        Some(record) => F::encode(&section, record, out),
        None => {
            out.extend_from_slice(b"null"); // not a map: nothing to report
            Ok(0)
        }
    }
}

pub(super) fn loaded_status(md: &Metadata, source: SourceInfo) -> PluginStatus {
    let mut status = PluginStatus::new(PluginState::Loaded);
    status.version = Some(format!("{} built {}", md.database_type, utc_date(md.build_epoch)));
    status.sources.push(source);
    status.data_built_at = Some(md.build_epoch);
    status.details = serde_json::json!({
        "database_type": md.database_type,
        "ip_version": md.ip_version,
        "node_count": md.node_count,
        "record_size": md.record_size,
        "build_epoch": md.build_epoch,
        "languages": md.languages,
    });
    status
}

pub(super) fn missing_status(path: &Path) -> PluginStatus {
    let mut status = PluginStatus::new(PluginState::Missing);
    status.sources.push(SourceInfo {
        path: path.to_path_buf(),
        sha256: None,
        size_bytes: None,
        loaded_at: None,
        error: Some("file not found".into()),
    });
    status.error = Some("file not found".into());
    status
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub(crate) fn utc_date(epoch: u64) -> String {
    let (year, month, day) = crate::civil::civil_from_days((epoch / 86_400) as i64);
    format!("{year:04}-{month:02}-{day:02}")
}

/// What [`inspect`] found in a database file.
#[derive(Clone, Debug)]
pub(crate) struct DatabaseFacts {
    pub database_type: String,
    pub build_epoch: u64,
}

/// Opens and validates `path` as a stage would (metadata, layout, a sample
/// of records decoded): what an updater checks before swapping a
/// downloaded file in.
pub(crate) fn inspect(path: &Path, max_bytes: u64) -> anyhow::Result<DatabaseFacts> {
    let Some((db, _)) = Database::open(path, "downloaded", max_bytes)? else {
        bail!("{} does not exist", path.display());
    };
    db.sample().map_err(|e| anyhow!("downloaded database: {e}"))?;
    let md = db.reader.metadata();
    Ok(DatabaseFacts { database_type: md.database_type.clone(), build_epoch: md.build_epoch })
}
