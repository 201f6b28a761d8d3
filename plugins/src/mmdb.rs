//! What the `geoip` and `asn` enrichers share: both map a MaxMind DB
//! (`.mmdb`) file, look up one or more addresses per event and attach the
//! record as a JSON fragment. Only the record decoding differs (see
//! [`RecordFormat`]), so opening and status, the `targets` option, the caches
//! and the batch loop are written once, here.
//!
//! The `maxminddb` crate validates the file and reads its metadata; the
//! search tree is walked for whole batches by [`tree`] and records are
//! read with the lean reader in [`data`] (see each for why).
//!
//! Why the caches: on a full-size database a tree walk costs a few hundred
//! nanoseconds and reading plus serializing a cold record about 1 us,
//! while telemetry repeats addresses heavily and distinct addresses still
//! share records (a whole /24 usually points at one). Each thread keeps two
//! direct-mapped tables per enricher: a small one, address -> record offset
//! (skips the walk), and a larger one, record offset -> fragment (skips the
//! read, and shares one `Arc` among all events with that answer; sized per
//! format by [`RecordFormat::CACHE_BITS`], since even uniformly random
//! addresses keep drawing from a long tail of records). They sit in a `ThreadLocal`
//! owned by the enricher, so they die with its database, need no lock, and
//! the `Arc` counts they bump stay on the thread that made them. Behind
//! them, one byte-bounded table per database ([`shared`]) keeps every
//! answer any thread decoded, so traffic from more networks than a
//! thread's table holds decodes each record once, not once per miss.

mod cache;
mod data;
mod database;
mod fresh;
mod shared;
pub(crate) mod tree;

use std::cell::RefCell;
use std::marker::PhantomData;
use std::path::Path;

use anyhow::{anyhow, bail};
use enrichd_engine::{
    AddressSelector, BatchView, BuildContext, Enricher, FactDecl, FactId, FactKind, KeyId, LookupAnswer, LookupTarget,
    PluginState, PluginStatus, Side, ValuesReader, WARNINGS_KEY,
};
use maxminddb::Metadata;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thread_local::ThreadLocal;

use self::cache::{Caches, Job, Step};
pub(crate) use self::data::{DataError, DataSection, Map, Value};
pub(crate) use self::database::{encode_record, inspect, layout, utc_date, validate_sample, DatabaseFacts};
use self::database::{missing_status, Database};
pub(crate) use self::fresh::Freshness;
pub(crate) use self::fresh::StalePolicy;
use self::fresh::Staleness;
use self::shared::SharedRecords;

/// One address to look up per event and where its answer goes.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Which address of the event: `source`, `destination` or
    /// `destination_or_source`.
    #[serde(serialize_with = "address_name")]
    pub address: AddressSelector,
    /// Output key the answer is written under; `null` when there is none
    /// (no address, address not in the database, database missing).
    pub output: String,
}

/// Serialized only so the options schema can show the default targets.
fn address_name<S: serde::Serializer>(address: &AddressSelector, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match address {
        AddressSelector::Source => "source",
        AddressSelector::Destination => "destination",
        AddressSelector::DestinationOrSource => "destination_or_source",
    })
}

/// How one plugin reads its records.
pub(crate) trait RecordFormat: Send + Sync + 'static {
    /// Plugin kind, used in messages (`geoip`).
    const KIND: &'static str;
    /// What the database is called in messages (`GeoIP`).
    const LABEL: &'static str;
    /// log2 of the slots of the per-thread record cache (`cache::Records`).
    const CACHE_BITS: u32;

    /// Rejects databases of the wrong kind (judged by metadata) with a
    /// message that says what to do instead.
    fn check_database(path: &Path, metadata: &Metadata) -> anyhow::Result<()>;

    /// Writes the JSON answer for a found record to `out` (`null` when the
    /// record holds nothing this plugin reports) and returns the record's
    /// [`Fact`] for later stages (0 when none).
    fn encode(data: &DataSection<'_>, record: Map, out: &mut Vec<u8>) -> Result<Fact, DataError>;

    /// What the record's [`Fact`] is (declared per target and side).
    const FACT_KIND: FactKind;
    /// The fact's declared name for a source and a destination address.
    const FACT_NAMES: [&'static str; 2];
    /// JSON Schema of the answer written per target.
    fn output_schema() -> serde_json::Value;
    /// Reads names out of an answer for metrics (see [`FactDecl::values`]).
    const VALUES: Option<ValuesReader> = None;
}

/// The one typed value a record contributes to the event for later stages
/// (rules, metrics): the scalar of the fact declared per target and side
/// ([`RecordFormat::FACT_KIND`]), e.g. a packed country code or an AS
/// number. Cached with the fragment, so it costs nothing per event.
pub(crate) type Fact = u32;

/// Default `max_database_bytes`: 1 GiB. The largest databases in use
/// (commercial City/Enterprise editions, DB-IP's full ones) are a few
/// hundred MB; every reload copies the file to a snapshot in `$TMPDIR`
/// (often RAM-backed) and holds it next to the live one while validating,
/// so several GiB would be a real cost, not a database.
pub(crate) const DEFAULT_MAX_DATABASE_BYTES: u64 = 1 << 30;

/// The options both plugins share, besides the path and the targets.
pub(crate) struct Settings {
    pub max_database_bytes: u64,
    pub record_cache_mb: u32,
    pub freshness: Freshness,
}

/// Default `record_cache_mb`: room for every answer of GeoLite2-City
/// (~429,000 records) is ~80 MiB; 64 holds the ones traffic asks for.
pub(crate) fn default_record_cache_mb() -> u32 {
    64
}

pub(crate) fn default_max_database_bytes() -> u64 {
    DEFAULT_MAX_DATABASE_BYTES
}

/// Builds an enricher of format `F` for `database` (already resolved),
/// refusing a file larger than `max_bytes`.
pub(crate) fn build<F: RecordFormat>(
    database: &Path,
    targets: &[Target],
    settings: Settings,
    ctx: &mut BuildContext<'_>,
) -> anyhow::Result<Box<dyn Enricher>> {
    check_targets(targets)?;
    let Settings { max_database_bytes, record_cache_mb, freshness } = settings;
    let (db, status) = match Database::open(database, F::LABEL, max_database_bytes)? {
        Some((mut db, status)) => {
            db.shared = SharedRecords::new((record_cache_mb as usize) << 20);
            F::check_database(database, db.metadata())?;
            db.validate::<F>().map_err(|e| anyhow!("{} database {}: {e}", F::LABEL, database.display()))?;
            (Some(db), status)
        }
        None => {
            tracing::warn!(
                plugin = F::KIND,
                path = %database.display(),
                "{} database not found; writing null until it exists",
                F::LABEL
            );
            (None, missing_status(database))
        }
    };
    let targets = targets
        .iter()
        .map(|t| {
            let key = ctx.output_key(&t.output);
            let mut declare = |side: Side| {
                let name = F::FACT_NAMES[usize::from(side == Side::Destination)];
                let mut decl = FactDecl::new(name, F::FACT_KIND).side(side).output(key, F::output_schema());
                decl.values = F::VALUES;
                ctx.fact(decl)
            };
            let facts = match t.address {
                AddressSelector::Source => [Some(declare(Side::Source)), None],
                AddressSelector::Destination => [None, Some(declare(Side::Destination))],
                AddressSelector::DestinationOrSource => [Some(declare(Side::Source)), Some(declare(Side::Destination))],
            };
            TargetSlot { address: t.address, key, output: t.output.as_str().into(), facts }
        })
        .collect();
    let staleness = Staleness::new(freshness, status.data_built_at);
    Ok(Box::new(MmdbEnricher::<F> { db, targets, status, staleness, caches: ThreadLocal::new(), format: PhantomData }))
}

fn check_targets(targets: &[Target]) -> anyhow::Result<()> {
    if targets.is_empty() {
        bail!("`targets` is empty: nothing would be looked up");
    }
    for (i, t) in targets.iter().enumerate() {
        if t.output.is_empty() || t.output == WARNINGS_KEY {
            bail!("targets[{i}]: output key {:?} is not allowed", t.output);
        }
        if targets[..i].iter().any(|o| o.output == t.output) {
            bail!("targets[{i}]: output key {:?} is used twice", t.output);
        }
    }
    Ok(())
}

/// One configured target: its output key and the facts it sets, by side
/// (source, destination).
struct TargetSlot {
    address: AddressSelector,
    key: KeyId,
    /// The output key's name (`/v1/lookup` answers under it).
    output: Box<str>,
    facts: [Option<FactId>; 2],
}

/// How many events ahead of the one whose addresses are read one is
/// prefetched (geoip on random flows: 208-212 -> 192-198 ns/event).
const PREFETCH_AHEAD: usize = 4;

/// The enricher both plugins use, parameterized by record format.
struct MmdbEnricher<F> {
    /// `None` while the file is missing: every target gets `null`.
    db: Option<Database>,
    targets: Vec<TargetSlot>,
    status: PluginStatus,
    /// `max_age_days` / `stale` applied to the loaded database.
    staleness: Staleness,
    caches: ThreadLocal<RefCell<Caches>>,
    format: PhantomData<fn() -> F>,
}

impl<F: RecordFormat> Enricher for MmdbEnricher<F> {
    /// In three passes over the batch, so that each can overlap its cache
    /// misses: gather the addresses (answering repeats from the address
    /// cache), walk the tree for the rest all together, then fetch or
    /// build the fragments.
    fn enrich(&self, batch: &mut BatchView<'_>) {
        let stale = self.staleness.stale_days();
        if let Some(days) = stale {
            self.staleness.log_once(F::KIND, || self.staleness.reason(F::LABEL, days));
        }
        let tag = match (stale, self.staleness.policy) {
            (Some(_), StalePolicy::Stop) => return self.write_null(batch),
            (Some(days), StalePolicy::Tag) => Some(format!("{}: stale database ({days} days old)", F::KIND)),
            _ => None,
        };
        if let Some(tag) = tag {
            for event in batch.events.iter_mut() {
                event.warn(tag.as_str());
            }
        }
        let mut caches = self.caches.get_or(|| RefCell::new(Caches::new(F::CACHE_BITS))).borrow_mut();
        let caches = &mut *caches;
        caches.jobs.clear();
        let events = &mut *batch.events;
        for index in 0..events.len() {
            if let Some(ahead) = events.get(index + PREFETCH_AHEAD) {
                ahead.prefetch(); // cold after the stages before
            }
            let event = &mut events[index];
            for (target, &TargetSlot { address, key, .. }) in self.targets.iter().enumerate() {
                match (address.pick_side(event), &self.db) {
                    (Some((side, ip)), Some(_)) => caches.jobs.push(Job::new(index, target, side, ip)),
                    _ => event.set_output(key, caches.records.null.clone()),
                }
            }
        }
        let Some(db) = &self.db else { return };
        caches.find_all(db);
        let Caches { jobs, records, .. } = caches;
        let null = records.null.clone();
        records.answer_all::<F>(db, jobs, |step| {
            let (job, answer) = match step {
                Step::Soon(job) => {
                    // The output this one replaces (when the batch runs
                    // again) is dropped soon: its count will be written.
                    let key = self.targets[usize::from(job.target)].key;
                    if let Some(old) = batch.events[job.event as usize].output(key) {
                        tree::prefetch_line(old.as_ptr());
                    }
                    return;
                }
                Step::Answer(job, answer) => (job, answer),
            };
            let event = &mut batch.events[job.event as usize];
            let target = &self.targets[usize::from(job.target)];
            let key = target.key;
            match answer {
                Ok((fragment, fact)) => {
                    if fact != 0 {
                        if let Some(id) = target.facts[usize::from(job.side == Side::Destination)] {
                            event.set_fact(id, fact);
                        }
                    }
                    event.set_output(key, fragment);
                }
                Err(e) => {
                    event.warn(format!("{}: lookup of {} failed: {e}", F::KIND, job.ip));
                    event.set_output(key, null.clone());
                }
            }
        });
    }

    fn status(&self) -> PluginStatus {
        let mut status = self.status.clone();
        if let Some(db) = &self.db {
            let cache = db.shared.stats();
            status.details["record_cache"] = serde_json::json!({
                "entries": cache.entries,
                "bytes": cache.bytes,
                "max_bytes": cache.max_bytes,
            });
        }
        if let Some(days) = self.staleness.stale_days() {
            let reason = self.staleness.reason(F::LABEL, days);
            status.details["stale"] = serde_json::Value::Bool(true);
            if self.staleness.policy == StalePolicy::Stop {
                status.state = PluginState::Error;
                status.error = Some(format!("{reason}; not enriching (stale = \"stop\") until a newer one is loaded"));
            } else {
                status.error = Some(reason);
            }
        }
        status
    }

    fn lookup(&self, target: LookupTarget<'_>, out: &mut LookupAnswer) {
        let LookupTarget::Ip(ip) = target else { return };
        let stopped = self.staleness.policy == StalePolicy::Stop && self.staleness.stale_days().is_some();
        let value = match &self.db {
            _ if stopped => serde_json::Value::Null,
            None => serde_json::Value::Null,
            Some(db) => {
                let mut text = b"null".to_vec();
                let found: anyhow::Result<()> = match db.find(ip.to_canonical()) {
                    Ok(Some(offset)) => db.encode::<F>(offset, &mut text).map(drop).map_err(Into::into),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e.into()),
                };
                match found {
                    Ok(()) => serde_json::from_slice(&text).expect("encoders write valid JSON"),
                    Err(e) => serde_json::json!({ "error": e.to_string() }),
                }
            }
        };
        // Under each target's own output key, as events get it.
        for target in &self.targets {
            out.fields.insert(target.output.to_string(), value.clone());
        }
    }
}

impl<F: RecordFormat> MmdbEnricher<F> {
    /// Every target `null` (a stale database under `stale = "stop"`).
    fn write_null(&self, batch: &mut BatchView<'_>) {
        let caches = self.caches.get_or(|| RefCell::new(Caches::new(F::CACHE_BITS))).borrow_mut();
        let null = caches.records.null.clone();
        drop(caches);
        for event in batch.events.iter_mut() {
            for target in &self.targets {
                event.set_output(target.key, null.clone());
            }
        }
    }
}

/// Writes a JSON object field by field into a buffer: cheaper than serde
/// for the few flat answers the plugins write, and allocation-free.
pub(crate) struct JsonObject<'o> {
    out: &'o mut Vec<u8>,
    empty: bool,
}

impl<'o> JsonObject<'o> {
    pub(crate) fn new(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        JsonObject { out, empty: true }
    }

    /// `key` must not need escaping (the plugins use fixed ASCII names).
    fn key(&mut self, key: &str) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub(crate) fn str(&mut self, key: &str, value: Option<&str>) {
        self.key(key);
        match value {
            Some(s) if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) => {
                self.out.push(b'"');
                self.out.extend_from_slice(s.as_bytes());
                self.out.push(b'"');
            }
            Some(s) => serde_json::to_writer(&mut *self.out, s).expect("strings serialize"),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    /// Non-finite numbers are written as `null`, as serde_json does.
    pub(crate) fn f64(&mut self, key: &str, value: Option<f64>) {
        self.key(key);
        serde_json::to_writer(&mut *self.out, &value).expect("numbers serialize");
    }

    pub(crate) fn u64(&mut self, key: &str, value: Option<u64>) {
        self.key(key);
        serde_json::to_writer(&mut *self.out, &value).expect("numbers serialize");
    }

    pub(crate) fn finish(self) {
        self.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::path::Path;

    use maxminddb::Reader;

    use super::database::METADATA_MARKER;
    use super::*;
    use crate::test_support;

    #[test]
    fn utc_date_matches_known_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_517_961_600 + 3600), "2018-02-07");
        assert_eq!(utc_date(4_102_444_799), "2099-12-31");
        let _ = utc_date(u64::MAX); // absurd metadata must not panic
    }

    /// Reports a record's `ip` string: the layout of MaxMind's
    /// `MaxMind-DB-test-*` databases.
    struct IpField;

    impl RecordFormat for IpField {
        const KIND: &'static str = "test";
        const LABEL: &'static str = "test";
        const CACHE_BITS: u32 = 3;
        fn check_database(_: &Path, _: &Metadata) -> anyhow::Result<()> {
            Ok(())
        }
        fn encode(data: &DataSection<'_>, record: Map, out: &mut Vec<u8>) -> Result<Fact, DataError> {
            let mut o = JsonObject::new(out);
            o.str("ip", data.str(data.get(record, "ip")?));
            o.finish();
            Ok(0)
        }
        const FACT_KIND: FactKind = FactKind::Count;
        const FACT_NAMES: [&'static str; 2] = ["src_test", "dst_test"];
        fn output_schema() -> serde_json::Value {
            serde_json::json!({})
        }
    }

    /// Record sizes 24/28/32, IPv4-only, IPv6 and mixed trees, IPv4-mapped
    /// addresses: every answer equals maxminddb's own decoding, through the
    /// caches and again from them.
    #[test]
    fn all_record_sizes_and_tree_layouts_agree_with_maxminddb() {
        let v4 = (1..=33).map(|i| IpAddr::from([1, 1, 1, i]));
        let v6 = (0..=0x5a).map(|i| IpAddr::from(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 2, 0, i)));
        let ips: Vec<IpAddr> = v4
            .clone()
            .chain(v4.map(|ip| match ip {
                IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                v6 => v6,
            }))
            .chain(v6)
            .chain(["::1:ffff:ffff", "::1:ffff:fffe", "2001:db8::1"].map(|s| s.parse().unwrap()))
            .collect();
        for name in ["ipv4-24", "ipv4-28", "ipv4-32", "ipv6-24", "mixed-28", "mixed-32"] {
            let path = test_support::data(&format!("MaxMind-DB-test-{name}.mmdb"));
            let (db, _) = Database::open(Path::new(&path), "test", DEFAULT_MAX_DATABASE_BYTES).unwrap().unwrap();
            let reference = Reader::open_readfile(&path).unwrap();
            let mut caches = Caches::new(3);
            let mut answered = 0;
            for pass in 0..2 {
                for &ip in &ips {
                    let (got, _) = caches.answer::<IpField>(&db, ip).unwrap();
                    let lookup = match ip.to_canonical() {
                        IpAddr::V6(_) if reference.metadata().ip_version == 4 => None,
                        canonical => reference.lookup(canonical).unwrap().decode::<serde_json::Value>().unwrap(),
                    };
                    let want = lookup.map_or("null".to_string(), |r| serde_json::json!({"ip": r["ip"]}).to_string());
                    assert_eq!(&*got, want, "{name} {ip} pass {pass}");
                    answered += usize::from(&*got != "null");
                }
            }
            assert!(answered >= 2 * 32, "{name}: only {answered} answers");
        }
        // The documented example: 1.1.1.3 is in 1.1.1.2/31.
        let path = test_support::data("MaxMind-DB-test-ipv4-24.mmdb");
        let (db, _) = Database::open(Path::new(&path), "test", DEFAULT_MAX_DATABASE_BYTES).unwrap().unwrap();
        let (got, _) = Caches::new(3).answer::<IpField>(&db, "1.1.1.3".parse().unwrap()).unwrap();
        assert_eq!(&*got, r#"{"ip":"1.1.1.2"}"#);
    }

    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// `GeoIP2-City-Test.mmdb` with `flips` random bytes of its data
    /// section (seeded) replaced; metadata and tree intact.
    fn corrupted_city(seed: u64, flips: usize) -> Vec<u8> {
        let path = test_support::data("GeoIP2-City-Test.mmdb");
        let mut bytes = std::fs::read(&path).unwrap();
        let reader = Reader::from_source(bytes.clone()).unwrap();
        let md = reader.metadata();
        let start = md.node_count as usize * usize::from(md.record_size) / 4 + 16;
        let end = bytes.windows(METADATA_MARKER.len()).rposition(|w| w == METADATA_MARKER).unwrap();
        let mut next = xorshift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for _ in 0..flips {
            let at = start + (next() as usize) % (end - start);
            bytes[at] ^= (next() % 255 + 1) as u8;
        }
        bytes
    }

    /// Issue 17, item 7: a City database with bytes flipped in its data
    /// section but intact metadata used to load (and then answer
    /// "malformed record data"); it is now refused when built, so a reload
    /// keeps the last good one. Validation never panics on corrupt data.
    #[test]
    fn corrupt_data_sections_are_refused_before_going_live() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("city.mmdb");
        let config = format!("[[chain]]\nplugin = \"geoip\"\ndatabase = {:?}\n", path.display().to_string());
        let bytes = corrupted_city(17, 300);
        assert!(Reader::from_source(bytes.clone()).is_ok(), "metadata intact: maxminddb alone accepts it");
        std::fs::write(&path, &bytes).unwrap();
        let err = test_support::chain_err(&config);
        assert!(err.contains("corrupt data") && err.contains("sampled records do not decode"), "{err}");
        assert!(err.len() < 1024, "{err}");
        // The intact database passes.
        std::fs::copy(test_support::data("GeoIP2-City-Test.mmdb"), &path).unwrap();
        test_support::chain(&config).unwrap();
        // Many seeds and densities: a verdict every time, never a panic.
        let mut refused = 0;
        for seed in 0..100u64 {
            let flips = [1, 5, 50, 500][seed as usize % 4];
            let bytes = corrupted_city(seed, flips);
            std::fs::write(&path, &bytes).unwrap();
            let Ok(Some((db, _))) = Database::open(&path, "test", DEFAULT_MAX_DATABASE_BYTES) else { continue };
            refused += usize::from(db.validate::<IpField>().is_err());
        }
        assert!(refused > 50, "only {refused} of 100 corrupt copies refused");
    }

    #[test]
    fn targets_are_validated() {
        let t = |output: &str| Target { address: AddressSelector::Source, output: output.into() };
        assert!(check_targets(&[t("geo")]).is_ok());
        assert!(check_targets(&[]).unwrap_err().to_string().contains("empty"));
        assert!(check_targets(&[t("")]).is_err());
        assert!(check_targets(&[t(WARNINGS_KEY)]).is_err());
        assert!(check_targets(&[t("a"), t("b"), t("a")]).unwrap_err().to_string().contains("targets[2]"));
    }
}
