//! Data-file updaters (`[[update]]` entries; the contract is
//! `enrichd_engine::updater`), one folder per file format:
//!
//! - [`mmdb`]: `.mmdb` databases, from MaxMind's download service
//!   (`maxmind`) or any URL (`mmdb_url`);
//! - [`ti`]: indicator files of the `ti` stage, from any URL (`ti_feed`:
//!   plain, CSV, Zeek intel, STIX 2.1 bundles) or a TAXII 2.1 collection
//!   (`taxii`);
//! - [`nats`]: any file, mirrored from a NATS JetStream Object Store bucket
//!   (`nats_object`; watched, and written by `enrichd publish`).
//!
//! `http` is the bounded HTTP client the HTTP ones share.

mod http;
pub mod mmdb;
pub mod nats;
#[cfg(test)]
mod test_server;
pub mod ti;

/// Writes `content` to a staging path and syncs it: what a runner leaves
/// there must survive a crash right after the core renames it in.
pub(crate) fn write_staged(path: &std::path::Path, content: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    file.write_all(content).and_then(|()| file.sync_all()).map_err(|e| format!("writing {}: {e}", path.display()))
}
