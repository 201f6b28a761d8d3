//! What both `.mmdb` updaters share beyond the HTTP client
//! (`super::super::http`): unpacking the database out of a `.tar.gz` (or
//! taking a bare `.mmdb` as it is) into the staging file within a second
//! bound, and validating the result by opening it as the `geoip` / `asn`
//! stages do.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::Path;

use crate::mmdb::DatabaseFacts;

/// Writes the database out of `download` into `staging`: the `.mmdb`
/// member of a `.tar.gz` (the one named `want` when given, else the only
/// one), or the file itself when it is a bare `.mmdb`. At most
/// `max_bytes` are written; the staging file is synced.
pub(crate) fn unpack(mut download: File, staging: &Path, want: Option<&str>, max_bytes: u64) -> Result<(), String> {
    download.rewind().map_err(|e| format!("reading the download: {e}"))?;
    let mut magic = [0u8; 2];
    let n = download.read(&mut magic).map_err(|e| format!("reading the download: {e}"))?;
    download.rewind().map_err(|e| format!("reading the download: {e}"))?;
    let mut out = File::create(staging).map_err(|e| format!("creating {}: {e}", staging.display()))?;
    let written = if n == 2 && magic == [0x1f, 0x8b] {
        // Every member before the database is inflated to be skipped: the
        // whole archive's inflated bytes are bounded, not only the
        // database's, or a bomb under any other name costs unbounded time.
        let inflated =
            Inflated { inner: flate2::read::GzDecoder::new(download), left: max_bytes + OTHER_MEMBERS_BYTES };
        let mut archive = tar::Archive::new(inflated);
        let mut found = None;
        let entries = archive.entries().map_err(|e| format!("not a .tar.gz archive: {e}"))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("reading the archive (truncated or corrupt?): {e}"))?;
            let path = entry.path().map_err(|e| format!("reading the archive: {e}"))?.into_owned();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
            let wanted = match want {
                Some(want) => name == want,
                None => name.ends_with(".mmdb"),
            };
            if entry.header().entry_type().is_file() && wanted {
                let size = entry.header().size().map_err(|e| format!("reading the archive: {e}"))?;
                let n = copy_capped(entry, &mut out, max_bytes, &name)?;
                if n != size {
                    return Err(format!("{name}: {n} of {size} bytes in the archive (truncated download?); not used"));
                }
                found = Some(n);
                break;
            }
        }
        match found {
            Some(n) => n,
            None => {
                let what = want.map_or("a .mmdb file".to_string(), |w| format!("{w:?}"));
                return Err(format!("the archive holds no {what}"));
            }
        }
    } else {
        copy_capped(download, &mut out, max_bytes, "the download")?
    };
    out.sync_all().map_err(|e| format!("syncing {}: {e}", staging.display()))?;
    if written == 0 {
        return Err("the database is empty".into());
    }
    Ok(())
}

/// What an archive may inflate to besides the database itself (MaxMind's
/// hold a licence, a copyright notice and a readme of a few kB).
const OTHER_MEMBERS_BYTES: u64 = 16 << 20;

/// A reader that fails once more than `left` bytes came out of `inner`.
struct Inflated<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Inflated<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other(format!(
                "the archive inflates to over max_database_bytes + {} MiB; not used",
                OTHER_MEMBERS_BYTES >> 20
            ))
        })?;
        Ok(n)
    }
}

fn copy_capped(from: impl Read, to: &mut File, max_bytes: u64, what: &str) -> Result<u64, String> {
    let n = io::copy(&mut from.take(max_bytes + 1), to)
        .map_err(|e| format!("unpacking {what} (truncated or corrupt?): {e}"))?;
    if n > max_bytes {
        return Err(format!("{what} is over max_database_bytes = {max_bytes} unpacked; not used"));
    }
    Ok(n)
}

/// Opens `staging` as a stage would, then checks its type: `expected` when
/// given, else the type of the database now at `target` (when there is a
/// readable one): swapping a City database for an ASN one would only make
/// the stage refuse it.
pub(crate) fn validate(
    staging: &Path,
    target: &Path,
    expected: Option<&str>,
    max_bytes: u64,
) -> Result<DatabaseFacts, String> {
    let facts = crate::mmdb::inspect(staging, max_bytes).map_err(|e| format!("{e:#}; not used"))?;
    let current;
    let expected = match expected {
        Some(e) => Some((e, "expected")),
        None => {
            current = crate::mmdb::inspect(target, max_bytes).ok();
            current.as_ref().map(|c| (c.database_type.as_str(), "the current file's type"))
        }
    };
    if let Some((want, why)) = expected {
        if facts.database_type != want {
            return Err(format!(
                "the downloaded database is of type {:?}, not {want:?} ({why}); not used",
                facts.database_type
            ));
        }
    }
    Ok(facts)
}

/// `GeoIP2-City built 2024-01-02`.
pub(crate) fn describe_facts(facts: &DatabaseFacts) -> String {
    format!("{} built {}", facts.database_type, crate::mmdb::utc_date(facts.build_epoch))
}
