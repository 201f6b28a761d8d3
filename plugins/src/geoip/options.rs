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
}

fn default_database() -> PathBuf {
    PathBuf::from("geo/GeoLite2-City.mmdb")
}

fn default_targets() -> Vec<Target> {
    vec![Target { address: AddressSelector::DestinationOrSource, output: "geo".into() }]
}
