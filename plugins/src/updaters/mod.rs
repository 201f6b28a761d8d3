//! Data-file updaters (`[[update]]` entries; the contract is
//! `enrichd_engine::updater`), one folder per file format:
//!
//! - [`mmdb`]: `.mmdb` databases, from MaxMind's download service
//!   (`maxmind`) or any URL (`mmdb_url`).
//! - [`nats`]: any file, mirrored from a NATS JetStream Object Store bucket
//!   (`nats_object`; watched, and written by `enrichd publish`).

pub mod mmdb;
pub mod nats;
