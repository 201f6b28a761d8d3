//! `enrichd enrich`: NDJSON (or Zeek TSV) in, enriched NDJSON out, through
//! the same pipeline as the server. Bad records are reported and skipped;
//! on a terminal a progress bar follows the input, and a summary (events,
//! matches, time) closes every run on standard error.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use enrichd_engine::{
    Batch, Chain, Encoding, FactKind, Format, InputError, Limits, Observer, Pipeline, PluginState, Skipped, Timing,
};
use indicatif::{ProgressBar, ProgressStyle};

use super::read_lines;
use crate::app;

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

/// Whether the input starts like a Zeek TSV log (its `#separator` header
/// line), without consuming anything.
fn looks_like_zeek_tsv(input: &mut dyn BufRead) -> bool {
    input.fill_buf().is_ok_and(|head| head.starts_with(b"#separator"))
}

/// Messages printed for refused records before they are only counted.
const SHOWN_ERRORS: usize = 10;

/// Counts what the chain did, for the summary (an observer of the
/// pipeline, like the server's metrics).
#[derive(Default)]
struct Tally {
    events: AtomicU64,
    matched: AtomicU64,
}

impl Observer for Tally {
    fn observe(&self, chain: &Chain, batch: &Batch, _timing: Timing) {
        let matches: Vec<_> =
            chain.facts().iter().filter(|f| f.decl.kind == FactKind::IndicatorMatches).map(|f| f.id).collect();
        let matched = batch.events().iter().filter(|e| matches.iter().any(|id| e.fact(*id).unwrap_or(0) > 0)).count();
        self.events.fetch_add(batch.len() as u64, Relaxed);
        self.matched.fetch_add(matched as u64, Relaxed);
    }
}

/// The input, with a progress bar on a terminal: bytes of the file (of the
/// compressed file for `.gz`), or a running count for standard input.
fn open(path: Option<&Path>) -> anyhow::Result<(Box<dyn BufRead>, ProgressBar)> {
    let visible = std::io::stderr().is_terminal();
    let Some(path) = path else {
        let bar = if visible { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("static template"));
        return Ok((Box::new(BufReader::new(std::io::stdin())), bar));
    };
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = if visible { ProgressBar::new(size) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg} ({elapsed}, {eta} left)")
            .expect("static template"),
    );
    let file = bar.wrap_read(file);
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok((Box::new(BufReader::with_capacity(1 << 16, reader)), bar))
}

pub(crate) fn enrich(args: EnrichArgs) -> anyhow::Result<()> {
    let started = Instant::now();
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
            eprintln!("enrichd: warning: {} is {}: {}", r.name, r.status.state, r.status.error.unwrap_or_default());
        }
    }
    let (mut input, bar) = open(args.input.as_deref())?;
    let zeek_tsv = args.zeek_tsv || looks_like_zeek_tsv(&mut input);
    if zeek_tsv && !args.zeek_tsv {
        bar.suspend(|| {
            eprintln!("enrichd: the input starts with a Zeek TSV header (#separator): reading it as --zeek-tsv")
        });
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    let lines = read_lines(input, zeek_tsv);
    let batch_size = args.batch_size.max(1);
    let tally = Arc::new(Tally::default());
    let pipeline = Pipeline::new(Limits { max_records: batch_size }).with_observer(tally.clone());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut chunk = String::new();
    let (mut line_no, mut first_line, mut in_chunk) = (0usize, 1usize, 0usize);
    let (mut skipped, mut written) = (0usize, 0usize);
    let mut buf = Vec::new();
    // Rows are numbered by file line in NDJSON; a TSV log's records are
    // counted without its header lines, so they are called records there.
    let unit = if zeek_tsv { "record" } else { "line" };
    let mut flush = |chunk: &mut String, first_line: usize, out: &mut dyn Write, skipped: &mut usize| {
        let text = std::mem::take(chunk);
        let records = text.lines().filter(|l| !l.trim().is_empty()).count();
        let bad = pipeline.run_lenient(&chain, text, format, first_line, encoding.clone(), &mut buf);
        for Skipped { index, error } in &bad {
            *skipped += 1;
            if *skipped > SHOWN_ERRORS {
                continue;
            }
            let message = match error {
                InputError::Record { field, message, .. } => {
                    let field = field.as_ref().map(|f| format!(", field `{f}`")).unwrap_or_default();
                    format!("enrichd: {unit} {index}{field}: {message}")
                }
                e => format!("enrichd: {unit} {index}: {e}"),
            };
            bar.suspend(|| eprintln!("{message}"));
        }
        out.write_all(&buf)?;
        buf.clear();
        bar.set_message(format!("{} events", tally.events.load(Relaxed)));
        anyhow::Ok(records - bad.len())
    };
    for line in lines {
        let line = match line {
            Ok(line) => line,
            // A row that cannot be read (a TSV row with the wrong number of
            // columns, as the half-written last line of a live log is; a
            // line that is not UTF-8) is skipped and reported like a bad
            // record: the run goes on, and the records already collected are
            // not lost. Reading itself failing still ends the run.
            Err(e) if is_bad_row(&e) => {
                // The records before it go first: the lenient run numbers
                // a batch's records from its first line, consecutively.
                if in_chunk > 0 {
                    written += flush(&mut chunk, first_line, &mut out, &mut skipped)?;
                    in_chunk = 0;
                }
                skipped += 1;
                if !zeek_tsv {
                    line_no += 1; // TSV counts records, not rows
                }
                first_line = line_no + 1;
                if written == 0 && skipped >= 10 * SHOWN_ERRORS {
                    out.flush()?;
                    bar.finish_and_clear();
                    bail!("the first {skipped} rows could not be read: is this a Zeek TSV log with its #fields header, or UTF-8 NDJSON?");
                }
                if skipped <= SHOWN_ERRORS {
                    let at = if zeek_tsv { String::new() } else { format!("line {line_no}: ") };
                    bar.suspend(|| eprintln!("enrichd: {at}{e:#}"));
                }
                continue;
            }
            Err(e) => return Err(e),
        };
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
                bar.finish_and_clear();
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
    bar.finish_and_clear();
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "enrichd: {written} events enriched, {} with indicator matches, {skipped} skipped, in {took:.2} s ({:.0} events/s)",
        tally.matched.load(Relaxed),
        written as f64 / took.max(1e-9)
    );
    if skipped > 0 {
        let shown =
            if skipped > SHOWN_ERRORS { format!("the first {SHOWN_ERRORS} shown above") } else { "see above".into() };
        bail!("{skipped} record(s) skipped, {written} enriched ({shown})");
    }
    Ok(())
}

/// Whether a read error concerns one row (skipped) rather than the input
/// (the run ends): anything but an I/O error, or text that is not UTF-8.
fn is_bad_row(error: &anyhow::Error) -> bool {
    match error.downcast_ref::<std::io::Error>() {
        Some(io) => io.kind() == std::io::ErrorKind::InvalidData,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_hidden_off_a_terminal() {
        // Tests run with stderr captured or piped: nothing may be drawn.
        if !std::io::stderr().is_terminal() {
            let (_, bar) = open(None).unwrap();
            assert!(bar.is_hidden());
        }
    }
}
