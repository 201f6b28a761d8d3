//! The service: what `enrichd serve` runs around the engine, independent
//! of HTTP.

pub mod config;

pub use config::ServiceConfig;
