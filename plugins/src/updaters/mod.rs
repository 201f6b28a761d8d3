//! Data-file updaters (`[[update]]` entries; the contract is
//! `enrichd_engine::updater`), one folder per file format:
//!
//! - [`mmdb`]: `.mmdb` databases, from MaxMind's download service
//!   (`maxmind`) or any URL (`mmdb_url`).

pub mod mmdb;
