//! enrichd's native enrichers and outputs.
//!
//! Each plugin is a folder with its options struct (documented, validated,
//! schema-generated), its implementation and its tests side by side:
//!
//! - [`geoip`]: GeoIP2 City / Country `.mmdb` lookups.
//! - [`asn`]: ASN `.mmdb` lookups.
//! - [`ti`]: threat-intel indicators (IPs, CIDRs, domains) from files.
//! - [`asn_class`]: hosting / isp / education / other, from the AS
//!   organisation an earlier stage found (the example of a plugin built on
//!   another's declared facts; registered by the binary, not by
//!   [`register_all`]).
//! - [`outputs`]: where enriched events go: `elastic`, `splunk`, `file`,
//!   `nats`, `kafka`.
//! - [`sources`]: where events come from besides HTTP: `nats`, `kafka`.
//! - [`forwarders`]: where an HTTP-ingest instance publishes raw batches
//!   instead of enriching them (`[ingest] forward`): `nats`.
//! - [`updaters`]: how data files are kept current: `maxmind`, `mmdb_url`,
//!   `nats_object`.
//!
//! The binary calls [`register_all`]; the engine core never names them.

pub mod asn;
pub mod asn_class;
mod civil;
pub mod forwarders;
pub mod geoip;
mod gzip;
mod kafka;
mod mmdb;
mod mmdb_probe;
mod nats;
pub mod outputs;
pub mod sources;
#[cfg(test)]
mod test_support;
pub mod ti;
pub mod updaters;

/// Entry points for the fuzz harness (`fuzz/`): the parsers of outside
/// bytes that are not public otherwise. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::mmdb_probe::{probe as probe_mmdb, Probe};
}

use enrichd_engine::Registry;

/// Registers every native plugin, output, source and updater.
pub fn register_all(registry: &mut Registry) {
    registry.register(Box::new(geoip::GeoIpFactory));
    registry.register(Box::new(asn::AsnFactory));
    registry.register(Box::new(ti::TiFactory));
    registry.register_output(Box::new(outputs::elastic::ElasticOutput));
    registry.register_output(Box::new(outputs::splunk::SplunkOutput));
    registry.register_output(Box::new(outputs::file::FileOutput));
    registry.register_output(Box::new(outputs::nats::NatsOutput));
    registry.register_output(Box::new(outputs::kafka::KafkaOutput));
    registry.register_source(Box::new(sources::nats::NatsSource));
    registry.register_source(Box::new(sources::kafka::KafkaSource));
    registry.register_forwarder(Box::new(forwarders::nats::NatsForward));
    registry.register_updater(Box::new(updaters::mmdb::MaxMindUpdater));
    registry.register_updater(Box::new(updaters::mmdb::MmdbUrlUpdater));
    registry.register_updater(Box::new(updaters::ti::TiFeedUpdater));
    registry.register_updater(Box::new(updaters::ti::TaxiiUpdater));
    registry.register_updater(Box::new(updaters::nats::NatsObjectUpdater));
}
