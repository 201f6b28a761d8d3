//! Options of a `geoip` chain entry.

use std::path::PathBuf;

use enrichd_engine::AddressSelector;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::mmdb::Target;

/// `[[chain]] plugin = "geoip"`: country, city and coordinates of event
/// addresses from a GeoIP2/GeoLite2 City or Country database.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeoIpOptions {
    /// The `.mmdb` file (GeoIP2/GeoLite2 City or Country, or DB-IP's flat
    /// `country_code` layout), relative to the config file's directory.
    /// `GEOIP_CITY_DB` overrides it. A missing file is not an error: the
    /// plugin reports `missing` and writes `null`.
    #[serde(default = "default_database")]
    pub database: PathBuf,
    /// Which addresses to look up and the output key for each, e.g.
    /// `[{ address = "source", output = "src_geo" }, { address = "destination", output = "dst_geo" }]`.
    #[serde(default = "default_targets")]
    pub targets: Vec<Target>,
    /// Largest database accepted, in bytes (default 1 GiB). The file is
    /// copied to a private snapshot before use, so a larger one is refused
    /// unread (by its size, and by the bytes copied should it grow) and a
    /// reload keeps the database live.
    #[serde(default = "crate::mmdb::default_max_database_bytes")]
    pub max_database_bytes: u64,
    /// MiB of decoded answers kept for every thread (default 64; 0: none).
    /// Each thread keeps its recent answers nearby; traffic from many
    /// networks (scans, floods, an Internet edge) misses those, and a miss
    /// decodes the record again (~1 µs on GeoLite2-City). Answers kept here
    /// are decoded once per database. Grows with use up to the bound, then
    /// keeps what it has; emptied when the database reloads.
    #[serde(default = "crate::mmdb::default_record_cache_mb")]
    pub record_cache_mb: u32,
    /// Days after the database's build date (its metadata's
    /// `build_epoch`, not the file's time) from which it counts as stale;
    /// 0 (the default) never. 30 is the age at which Elastic stops using a
    /// GeoIP database it could not update.
    #[serde(default)]
    pub max_age_days: u32,
    /// What a stale database does: `warn` (default: degraded status and a
    /// log line), `tag` (also a warning on every event it enriches) or
    /// `stop` (writes `null`, state `error`, until a newer one loads).
    #[serde(default)]
    pub stale: crate::mmdb::StalePolicy,
}

impl GeoIpOptions {
    /// What the shared mmdb code needs besides the path and targets.
    pub(crate) fn settings(&self) -> crate::mmdb::Settings {
        crate::mmdb::Settings {
            max_database_bytes: self.max_database_bytes,
            record_cache_mb: self.record_cache_mb,
            freshness: crate::mmdb::Freshness { max_age_days: self.max_age_days, policy: self.stale },
        }
    }
}

fn default_database() -> PathBuf {
    PathBuf::from("geo/GeoLite2-City.mmdb")
}

fn default_targets() -> Vec<Target> {
    vec![Target { address: AddressSelector::DestinationOrSource, output: "geo".into() }]
}
