//! Offline subcommands: the same configuration and chain as the server,
//! without HTTP.

pub(crate) mod bench;
pub(crate) mod reference;
pub(crate) mod remote;
pub(crate) mod rule;
mod zeek_tsv;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use enrichd_engine::{Encoding, Format, InputError, Limits, LookupTarget, Pipeline, PluginState, Skipped};

use crate::app;
use crate::service::ServiceConfig;

/// Checks a configuration file the way `serve` would load it, and fails
/// (exit 1) on what `serve` would only degrade on: a stage that cannot
/// load (a typo'd module path leaves scoring off), and, unless
/// `allow_missing`, a missing database, indicator file or module (for
/// deployments where databases arrive after the config).
pub(crate) fn check_config(path: &Path, allow_missing: bool) -> anyhow::Result<()> {
    let registry = app::registry();
    let (config, chain) = app::load(path, &registry)?;
    let mut problems = Vec::new();
    for r in chain.reports() {
        let detail = r.status.version.clone().or(r.status.error.clone()).unwrap_or_default();
        println!("  {:<12} {:<8} {:?} {}", r.name, r.plugin, r.status.state, detail);
        let refused = match r.status.state {
            PluginState::Error => true,
            PluginState::Missing => !allow_missing,
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
    if config.auth.api_keys.is_empty() {
        println!("  warning: no API key configured (auth.api_keys or env API_KEY)");
    }
    if !problems.is_empty() {
        let hint = if allow_missing { "" } else { "; --allow-missing accepts files that are not there yet" };
        bail!("{} problem(s){hint}:\n  {}", problems.len(), problems.join("\n  "));
    }
    println!("{}: ok ({} chain entries)", path.display(), config.engine.chain.len());
    Ok(())
}

pub(crate) fn config_schema() -> anyhow::Result<()> {
    let schema = ServiceConfig::json_schema(&app::registry());
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

#[derive(clap::Args)]
pub(crate) struct EnrichArgs {
    /// Configuration file (its chain and output profiles are used).
    #[arg(long, short, default_value = "config.toml")]
    config: PathBuf,
    /// Record format: zeek.conn.v1 (aliases zeek, zeek.conn) or flows.v1.
    #[arg(long, short, default_value = "zeek.conn.v1")]
    format: String,
    /// Input file (`.gz` is decompressed); standard input when absent.
    input: Option<PathBuf>,
    /// Input is a Zeek TSV log (`#fields` header) rather than NDJSON.
    #[arg(long)]
    zeek_tsv: bool,
    /// Records per batch.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Output profile (`v1`, `stage3`, `ecs` or a profile file's name);
    /// default: the configuration's `[profiles] default`.
    #[arg(long)]
    profile: Option<String>,
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

/// Whether the input starts like a Zeek TSV log (its `#separator` header
/// line), without consuming anything.
fn looks_like_zeek_tsv(input: &mut dyn BufRead) -> bool {
    input.fill_buf().is_ok_and(|head| head.starts_with(b"#separator"))
}

/// Messages `enrich` prints for refused records before it only counts them.
const SHOWN_ERRORS: usize = 10;

/// Reads records as NDJSON lines, converting Zeek TSV when asked.
pub(crate) fn read_lines(input: Box<dyn BufRead>, zeek_tsv: bool) -> Box<dyn Iterator<Item = anyhow::Result<String>>> {
    if zeek_tsv {
        Box::new(zeek_tsv::ZeekTsvReader::new(input))
    } else {
        Box::new(input.lines().map(|l| l.map_err(Into::into)))
    }
}

pub(crate) fn enrich(args: EnrichArgs) -> anyhow::Result<()> {
    let format = Format::from_name(&args.format).with_context(|| format!("unknown format {:?}", args.format))?;
    let (config, chain) = app::load(&args.config, &app::registry())?;
    let (profiles, default) =
        enrichd_engine::Profiles::from_config(&config.profiles, &config.engine.base_dir).map_err(anyhow::Error::msg)?;
    let profile = match &args.profile {
        Some(name) => profiles.get(name).map_err(anyhow::Error::msg)?,
        None => default,
    };
    let encoding = Encoding::NDJSON.with_profile(profile);
    for r in chain.reports() {
        if r.enabled && r.status.state != PluginState::Loaded {
            eprintln!("enrichd: warning: {} is {:?}: {}", r.name, r.status.state, r.status.error.unwrap_or_default());
        }
    }
    let mut input = open_input(args.input.as_deref())?;
    let zeek_tsv = args.zeek_tsv || looks_like_zeek_tsv(&mut input);
    if zeek_tsv && !args.zeek_tsv {
        eprintln!("enrichd: the input starts with a Zeek TSV header (#separator): reading it as --zeek-tsv");
    }
    let lines = read_lines(input, zeek_tsv);
    let batch_size = args.batch_size.max(1);
    let pipeline = Pipeline::new(Limits { max_records: batch_size });
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut chunk = String::new();
    let (mut line_no, mut first_line, mut in_chunk) = (0usize, 1usize, 0usize);
    let (mut skipped, mut written) = (0usize, 0usize);
    let mut buf = Vec::new();
    let mut flush = |chunk: &mut String, first_line: usize, out: &mut dyn Write, skipped: &mut usize| {
        let text = std::mem::take(chunk);
        let records = text.lines().filter(|l| !l.trim().is_empty()).count();
        let bad = pipeline.run_lenient(&chain, text, format, first_line, encoding.clone(), &mut buf);
        for Skipped { index, error } in &bad {
            *skipped += 1;
            if *skipped > SHOWN_ERRORS {
                continue;
            }
            match error {
                InputError::Record { field, message, .. } => {
                    let field = field.as_ref().map(|f| format!(", field `{f}`")).unwrap_or_default();
                    eprintln!("enrichd: line {index}{field}: {message}");
                }
                e => eprintln!("enrichd: line {index}: {e}"),
            }
        }
        out.write_all(&buf)?;
        buf.clear();
        anyhow::Ok(records - bad.len())
    };
    for line in lines {
        let line = line?;
        line_no += 1;
        chunk.push_str(&line);
        chunk.push('\n');
        in_chunk += 1;
        if in_chunk == batch_size {
            written += flush(&mut chunk, first_line, &mut out, &mut skipped)?;
            in_chunk = 0;
            first_line = line_no + 1;
            // Nothing readable at all: the wrong format or file, not a few
            // bad records; say so rather than print every line.
            if written == 0 && skipped >= SHOWN_ERRORS {
                out.flush()?;
                bail!(
                    "the first {skipped} records were all refused: is this NDJSON of {}? (Zeek TSV logs: \
                     --zeek-tsv; other formats: --format)",
                    format.name()
                );
            }
        }
    }
    written += flush(&mut chunk, first_line, &mut out, &mut skipped)?;
    out.flush()?;
    if skipped > 0 {
        let shown =
            if skipped > SHOWN_ERRORS { format!("the first {SHOWN_ERRORS} shown above") } else { "see above".into() };
        bail!("{skipped} record(s) skipped, {written} enriched ({shown})");
    }
    Ok(())
}
