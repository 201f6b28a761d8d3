//! Offline subcommands: the same configuration and chain as the server,
//! without HTTP.

pub(crate) mod bench;
pub(crate) mod cluster;
pub(crate) mod enrich;
pub(crate) mod key;
pub(crate) mod publish;
pub(crate) mod reference;
pub(crate) mod remote;
pub(crate) mod rule;
mod rule_diff;
mod zeek_tsv;

use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context};
use enrichd_engine::{LookupTarget, PluginState};

use crate::app;

/// Checks a configuration file the way `serve` would load it, and fails
/// (exit 1) on what `serve` would only degrade on: a stage that cannot
/// load (a typo'd module path leaves scoring off), and, unless
/// `allow_missing`, a missing database, indicator file or module (for
/// deployments where databases arrive after the config).
pub(crate) fn check_config(path: &Path, allow_missing: bool) -> anyhow::Result<()> {
    let registry = app::registry();
    let (config, chain) = app::load(path, &registry)?;
    let mut problems = Vec::new();
    let updated =
        crate::service::updates::check(&registry, &config.updates, &config.engine.base_dir).unwrap_or_else(|e| {
            problems.push(format!("{}: {e}", path.display()));
            Vec::new()
        });
    for r in chain.reports() {
        let detail = r.status.version.clone().or(r.status.error.clone()).unwrap_or_default();
        println!("  {:<12} {:<8} {:?} {}", r.name, r.plugin, r.status.state, detail);
        let refused = match r.status.state {
            PluginState::Error => true,
            // A database an `[[update]]` entry fetches may be missing.
            PluginState::Missing => {
                !allow_missing && (r.watched.is_empty() || !r.watched.iter().all(|w| updated.contains(w)))
            }
            _ => false,
        };
        if refused {
            let entry = config.engine.chain.iter().find(|e| e.name.as_deref().unwrap_or(&e.plugin) == r.name);
            let line = entry.and_then(|e| e.location.line).map_or(String::new(), |l| format!(":{l}"));
            let files: Vec<String> = r.watched.iter().map(|p| p.display().to_string()).collect();
            problems.push(format!(
                "{}{line}: chain entry {:?} ({}): {}{}",
                path.display(),
                r.name,
                r.plugin,
                r.status.error.as_deref().unwrap_or("not loaded"),
                if files.is_empty() { String::new() } else { format!(" ({})", files.join(", ")) }
            ));
        }
    }
    if crate::service::Keyring::new(&config.auth, &|name| std::env::var(name).ok()).is_empty() {
        println!(
            "  warning: no usable API key configured (auth.api_keys, auth.admin_keys, [[auth.keys]] or env API_KEY)"
        );
    }
    if !problems.is_empty() {
        let hint = if allow_missing { "" } else { "; --allow-missing accepts files that are not there yet" };
        bail!("{} problem(s){hint}:\n  {}", problems.len(), problems.join("\n  "));
    }
    println!("{}: ok ({} chain entries)", path.display(), config.engine.chain.len());
    Ok(())
}

pub(crate) fn config_schema() -> anyhow::Result<()> {
    let schema = crate::service::config_schema::json_schema(&app::registry());
    println!("{}", serde_json::to_string_pretty(&schema)?);
    Ok(())
}

/// `enrichd lookup TARGET`: an address, or a domain name (as domain
/// indicators match it: lowercase, without a trailing dot).
pub(crate) fn lookup(path: &Path, target: &str) -> anyhow::Result<()> {
    let target = target.trim();
    let domain = target.trim_end_matches('.').to_ascii_lowercase();
    let target = match target.parse::<IpAddr>() {
        Ok(ip) => LookupTarget::Ip(ip),
        Err(_) if is_domain_name(&domain) => LookupTarget::Domain(&domain),
        Err(_) => bail!("{target:?} is neither an IP address nor a domain name"),
    };
    let (_, chain) = app::load(path, &app::registry())?;
    // People read this: the reference API's repeated keys are left out.
    let answer = chain.lookup(target).fields;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

fn is_domain_name(name: &str) -> bool {
    name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Opens `path` (or stdin), transparently inflating `.gz` files.
pub(crate) fn open_input(path: Option<&Path>) -> anyhow::Result<Box<dyn BufRead>> {
    let Some(path) = path else { return Ok(Box::new(BufReader::new(std::io::stdin()))) };
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, reader)))
}

/// Reads records as NDJSON lines, converting Zeek TSV when asked.
pub(crate) fn read_lines(input: Box<dyn BufRead>, zeek_tsv: bool) -> Box<dyn Iterator<Item = anyhow::Result<String>>> {
    if zeek_tsv {
        Box::new(zeek_tsv::ZeekTsvReader::new(input))
    } else {
        Box::new(input.lines().map(|l| l.map_err(Into::into)))
    }
}

/// `s` as a TOML string, quoted and escaped by TOML's rules (Rust's `{:?}`
/// escapes some characters as `\u{…}`, which TOML does not read).
pub(crate) fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
