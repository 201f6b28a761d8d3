//! `geoip`: where an address is, from a GeoIP2-schema City or Country
//! `.mmdb` (MaxMind GeoIP2/GeoLite2, DB-IP and others that follow it; flat
//! layouts with top-level `country_code`, `continent_code`, `city`,
//! `latitude`/`longitude`, like DB-IP Lite's, are read as a fallback).
//!
//! Each target gets `{"country":"GB","city":"London","lat":51.5142,"lon":-0.0931}`:
//! those four keys always, `null` where the database does not say (a Country
//! database has no city or coordinates), plus `continent`, `timezone` and
//! `accuracy_radius` when present. The value is `null` when the address is
//! absent, not in the database, or the database file is missing, so
//! consumers see one stable schema.
//!
//! Why not `maxminddb::geoip2::City`: it decodes the names in every language
//! plus subdivisions, postal codes and more. Here the record is read with
//! `mmdb::DataSection`, which follows only the keys below (English names
//! only) and borrows the strings straight from the mapped file.

mod options;
#[cfg(test)]
mod tests;

use std::path::Path;

use anyhow::bail;
use enrichd_engine::{BuildContext, Enricher, EnvOverride, FactKind, Plugin};
use maxminddb::Metadata;

pub use self::options::GeoIpOptions;
use crate::mmdb::{self, DataError, DataSection, Fact, JsonObject, Map, RecordFormat, Value};

/// Factory of the `geoip` plugin.
pub struct GeoIpFactory;

impl Plugin for GeoIpFactory {
    type Options = GeoIpOptions;

    fn kind(&self) -> &'static str {
        "geoip"
    }

    fn description(&self) -> &'static str {
        "Country, city and coordinates of event addresses from a GeoIP2/GeoLite2 City or Country .mmdb"
    }

    fn env_overrides(&self) -> &'static [EnvOverride] {
        &[EnvOverride { var: "GEOIP_CITY_DB", option: "database", list: false }]
    }

    fn build(&self, options: GeoIpOptions, ctx: &mut BuildContext<'_>) -> anyhow::Result<Box<dyn Enricher>> {
        let database = ctx.resolve_path(&options.database);
        mmdb::build::<Geo>(&database, &options.targets, options.settings(), ctx)
    }
}

/// The geoip record format.
pub(crate) struct Geo;

impl RecordFormat for Geo {
    const KIND: &'static str = "geoip";
    const LABEL: &'static str = "GeoIP";
    /// 32768 slots: 1 MiB of table plus up to ~4.5 MiB of fragments per
    /// thread. Uniformly random IPv4 hit ~150,000 distinct City records per
    /// 2 M addresses; this table misses 19 % of them (4096 slots: 34 %,
    /// and a miss costs ~1 us of decoding cold data).
    const CACHE_BITS: u32 = 15;

    fn check_database(path: &Path, metadata: &Metadata) -> anyhow::Result<()> {
        let kind = &metadata.database_type;
        if kind.split(['-', '_', ' ']).any(|w| w.eq_ignore_ascii_case("asn") || w.eq_ignore_ascii_case("isp")) {
            bail!("{} is a {kind} database; use plugin \"asn\"", path.display());
        }
        Ok(())
    }

    fn encode(data: &DataSection<'_>, record: Map, out: &mut Vec<u8>) -> Result<Fact, DataError> {
        let mut answer = GeoAnswer::default();
        let (mut location, mut flat) = (None, GeoAnswer::default());
        // Once the four GeoIP2 maps are read, the rest of the record (postal,
        // registered country, subdivisions, ...) is not even stepped over.
        let mut maps_wanted = 4;
        data.each(record, |key, value| {
            match key {
                b"country" => answer.country = code(data, value, "iso_code")?,
                b"city" => answer.city = name(data, value)?,
                b"continent" => answer.continent = code(data, value, "code")?,
                b"location" => location = value.as_map(),
                // Flat layouts (DB-IP Lite and similar) put these at the top.
                b"country_code" => flat.country = data.str(Some(value)),
                b"continent_code" => flat.continent = data.str(Some(value)),
                b"latitude" => flat.lat = data.f64(Some(value)),
                b"longitude" => flat.lon = data.f64(Some(value)),
                _ => return Ok(true),
            }
            if value.as_map().is_some() && matches!(key, b"country" | b"city" | b"continent" | b"location") {
                maps_wanted -= 1;
            }
            Ok(maps_wanted > 0)
        })?;
        if let Some(location) = location {
            data.each(location, |key, value| {
                match key {
                    b"latitude" => answer.lat = data.f64(Some(value)),
                    b"longitude" => answer.lon = data.f64(Some(value)),
                    b"accuracy_radius" => answer.accuracy_radius = data.u64(Some(value)),
                    b"time_zone" => answer.timezone = data.str(Some(value)),
                    _ => {}
                }
                Ok(true)
            })?;
        }
        answer.country = answer.country.or(flat.country);
        answer.continent = answer.continent.or(flat.continent);
        answer.lat = answer.lat.or(flat.lat);
        answer.lon = answer.lon.or(flat.lon);
        let fact = match answer.country.map(str::as_bytes) {
            Some(&[a, b]) if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => u32::from(a) << 8 | u32::from(b),
            _ => 0,
        };
        answer.write(out);
        Ok(fact)
    }

    const FACT_KIND: FactKind = FactKind::CountryCode;
    const FACT_NAMES: [&'static str; 2] = ["src_country_code", "dst_country_code"];

    fn output_schema() -> serde_json::Value {
        enrichd_engine::fact::output_schema::<Option<GeoSchema>>()
    }
}

/// Geolocation of an address (`null` when unknown): the answer written per
/// target, as `/v1/schema` describes it.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
struct GeoSchema {
    /// ISO 3166-1 alpha-2 country code.
    country: Option<String>,
    /// City name (English).
    city: Option<String>,
    lat: Option<f64>,
    lon: Option<f64>,
    /// Continent code (e.g. `EU`), when the database has it.
    continent: Option<String>,
    timezone: Option<String>,
    /// Accuracy radius in km, when the database has it.
    accuracy_radius: Option<u32>,
}

/// `country` / `continent`: the code under `key` of a GeoIP2 map. (A flat
/// layout's plain string here is a name, not a code.)
fn code<'a>(data: &DataSection<'a>, value: Value, key: &str) -> Result<Option<&'a str>, DataError> {
    match value.as_map() {
        Some(map) => Ok(data.str(data.get(map, key)?)),
        None => Ok(None),
    }
}

/// `city`: `names.en` of a GeoIP2 map, or a flat layout's plain string.
fn name<'a>(data: &DataSection<'a>, value: Value) -> Result<Option<&'a str>, DataError> {
    match value.as_map() {
        Some(map) => Ok(data.str(data.path(map, &["names", "en"])?)),
        None => Ok(data.str(Some(value))),
    }
}

/// The JSON written per target.
#[derive(Default)]
struct GeoAnswer<'a> {
    country: Option<&'a str>,
    city: Option<&'a str>,
    lat: Option<f64>,
    lon: Option<f64>,
    continent: Option<&'a str>,
    timezone: Option<&'a str>,
    accuracy_radius: Option<u64>,
}

impl GeoAnswer<'_> {
    /// The four main keys always; the others only when known; `null` when
    /// nothing is known.
    fn write(&self, out: &mut Vec<u8>) {
        let GeoAnswer { country, city, lat, lon, continent, timezone, accuracy_radius } = *self;
        if (country, city, continent, timezone) == (None, None, None, None)
            && (lat, lon, accuracy_radius) == (None, None, None)
        {
            out.extend_from_slice(b"null");
            return;
        }
        let mut o = JsonObject::new(out);
        o.str("country", country);
        o.str("city", city);
        o.f64("lat", lat);
        o.f64("lon", lon);
        if continent.is_some() {
            o.str("continent", continent);
        }
        if timezone.is_some() {
            o.str("timezone", timezone);
        }
        if accuracy_radius.is_some() {
            o.u64("accuracy_radius", accuracy_radius);
        }
        o.finish();
    }
}
