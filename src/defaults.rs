//! The documented default setup, compiled into the binary: `config.toml`,
//! the default risk rule and the sample indicators. `enrichd init` writes
//! them out for editing, and `enrichd serve` with no configuration in reach
//! starts on them, so a copied binary runs anywhere (degraded until the
//! GeoLite2 databases are put in `geo/`: they cannot ship, MaxMind's licence).
//!
//! Where the files go when nothing says (`--data-dir` and `ENRICHD_DATA_DIR`
//! win): systemd's `$STATE_DIRECTORY` for a service, `/var/lib/enrichd` for
//! root, else the XDG data directory (`$XDG_DATA_HOME/enrichd`,
//! `~/.local/share/enrichd`).

use std::path::{Path, PathBuf};

use anyhow::Context;

pub(crate) const CONFIG: &str = include_str!("../config.toml");
const RISK_RULE: &[u8] = include_bytes!("../rules/risk.wasm");
const INDICATORS: &str = include_str!("../ti/indicators.txt");
const GEO_README: &str = "\
Put the MaxMind GeoLite2 databases here (they cannot ship with enrichd):
  GeoLite2-City.mmdb and GeoLite2-ASN.mmdb
from https://dev.maxmind.com/geoip/geolite2-free-geolocation-data (free
account). enrichd loads them when they appear, without a restart.
";

/// Where a configuration file is looked for when `--config` is not given,
/// in order: the working directory, `$ENRICHD_CONFIG`, the user's and the
/// system's configuration directories.
pub(crate) fn config_candidates() -> Vec<PathBuf> {
    let mut candidates = vec![PathBuf::from("config.toml")];
    candidates.extend(std::env::var_os("ENRICHD_CONFIG").map(PathBuf::from));
    let user = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    candidates.extend(user.map(|d| d.join("enrichd/config.toml")));
    candidates.push(PathBuf::from("/etc/enrichd/config.toml"));
    candidates
}

/// The data directory when neither `--data-dir` nor `ENRICHD_DATA_DIR` says.
pub(crate) fn data_dir(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit.or_else(|| std::env::var_os("ENRICHD_DATA_DIR").map(PathBuf::from)) {
        return Ok(dir);
    }
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may list several, colon-separated: the first is ours.
        let first = dir.to_string_lossy().split(':').next().unwrap_or_default().to_string();
        return Ok(PathBuf::from(first));
    }
    // SAFETY: getuid(2) has no failure mode and touches no memory.
    if unsafe { libc::getuid() } == 0 {
        return Ok(PathBuf::from("/var/lib/enrichd"));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .context("no data directory: pass --data-dir or set ENRICHD_DATA_DIR (HOME is not set)")?;
    Ok(data.join("enrichd"))
}

/// What `write_layout` did with each file.
pub(crate) struct Written {
    pub path: PathBuf,
    pub kept: bool,
}

/// Writes the default layout into `dir`: `config.toml`, `rules/risk.wasm`,
/// `ti/indicators.txt`, `geo/` (with a note on the databases) and
/// `state/`. Existing files are kept unless `overwrite`.
pub(crate) fn write_layout(dir: &Path, overwrite: bool) -> anyhow::Result<Vec<Written>> {
    let files: [(&str, &[u8]); 4] = [
        ("config.toml", CONFIG.as_bytes()),
        ("rules/risk.wasm", RISK_RULE),
        ("ti/indicators.txt", INDICATORS.as_bytes()),
        ("geo/README.txt", GEO_README.as_bytes()),
    ];
    let mut written = Vec::new();
    for (rel, bytes) in files {
        let path = dir.join(rel);
        let kept = path.exists() && !overwrite;
        if !kept {
            let parent = path.parent().expect("a relative file path has a parent");
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            // Via a temporary file: a reader (the watcher) never sees half.
            let tmp = path.with_extension("tmp-init");
            std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        }
        written.push(Written { path, kept });
    }
    std::fs::create_dir_all(dir.join("state")).with_context(|| format!("creating {}", dir.join("state").display()))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_written_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_layout(dir.path(), false).unwrap();
        assert!(first.iter().all(|w| !w.kept));
        assert_eq!(std::fs::read(dir.path().join("rules/risk.wasm")).unwrap(), RISK_RULE);
        std::fs::write(dir.path().join("config.toml"), "# mine\n").unwrap();
        let again = write_layout(dir.path(), false).unwrap();
        assert!(again.iter().all(|w| w.kept));
        assert_eq!(std::fs::read_to_string(dir.path().join("config.toml")).unwrap(), "# mine\n");
        write_layout(dir.path(), true).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("config.toml")).unwrap(), CONFIG);
        assert!(dir.path().join("state").is_dir() && dir.path().join("geo/README.txt").is_file());
    }
}
