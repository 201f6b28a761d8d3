//! `enrichd rule diff OLD NEW --input events.ndjson`: what a shadow would
//! report, offline. The chain (the configuration's with `--config`,
//! outputs unused; else the rule alone after `--ti`) runs OLD as its rule
//! and NEW in shadow through the same host code as the server
//! (`shadow_module`), so the summary is the one `GET
//! /v1/rules/{name}/shadow` gives, read through the same stage action.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use enrichd_engine::{Chain, Config, Encoding, Format, Input, Limits, Pipeline, StageMethod, StageRequest};
use serde_json::Value;

use crate::app;

#[derive(clap::Args)]
pub(crate) struct DiffArgs {
    /// The live rule's module (`.wasm` or `.wat`).
    old: PathBuf,
    /// The candidate's module.
    new: PathBuf,
    /// Events, one JSON object per line.
    #[arg(long)]
    input: PathBuf,
    /// Record format: zeek.conn.v1 (aliases zeek, zeek.conn) or flows.v1.
    #[arg(long, short, default_value = "zeek.conn.v1")]
    format: String,
    /// Run this configuration's chain (its outputs are not used), its rule
    /// stage running OLD with NEW in shadow; without it, the rule alone.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The `wasm` stage of `--config` to compare on (default: the only
    /// one).
    #[arg(long)]
    stage: Option<String>,
    /// Without `--config`: run the threat-intel stage from this indicator
    /// file first, so `ti_matches` is set as in production.
    #[arg(long)]
    ti: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// The `wasm` entry `stage` of `entries` (or the only one) gets OLD as its
/// module and NEW as its shadow; its name is returned.
fn point_at(
    entries: &mut [enrichd_engine::ChainEntryConfig],
    stage: Option<&str>,
    old: &Path,
    new: &Path,
) -> anyhow::Result<String> {
    let mut wasm = entries.iter_mut().filter(|e| e.plugin == "wasm" && e.enabled);
    let entry = match stage {
        Some(name) => {
            wasm.find(|e| e.stage_name() == name).with_context(|| format!("no enabled wasm stage {name:?}"))?
        }
        None => {
            let first = wasm.next().context("the configuration has no enabled wasm stage")?;
            anyhow::ensure!(wasm.next().is_none(), "several wasm stages: name one with --stage");
            first
        }
    };
    entry.options.insert("module".into(), old.display().to_string().into());
    entry.options.insert("shadow_module".into(), new.display().to_string().into());
    Ok(entry.stage_name())
}

fn build(args: &DiffArgs) -> anyhow::Result<(Chain, String)> {
    let abs = |p: &PathBuf| std::fs::canonicalize(p).with_context(|| format!("{}", p.display()));
    let (old, new) = (abs(&args.old)?, abs(&args.new)?);
    let registry = app::registry();
    if let Some(path) = &args.config {
        anyhow::ensure!(args.ti.is_none(), "--ti is for runs without --config (the configuration has its own chain)");
        let mut config = crate::service::ServiceConfig::load(path)?;
        config.apply_env(&registry, |name| std::env::var(name).ok())?;
        let stage = point_at(&mut config.engine.chain, args.stage.as_deref(), &old, &new)?;
        // No state directory: a version promoted on a server does not
        // replace OLD here.
        let env = enrichd_engine::BuildEnv { state_dir: None, ..config.build_env() };
        let chain = Chain::build_in(&config.engine.chain, &registry, &env)
            .with_context(|| format!("building the enricher chain from {}", path.display()))?;
        return Ok((chain, stage));
    }
    let mut toml = String::new();
    if let Some(ti) = &args.ti {
        toml.push_str(&format!("[[chain]]\nplugin = \"ti\"\npaths = [{:?}]\n\n", abs(ti)?.display().to_string()));
    }
    toml.push_str(&format!(
        "[[chain]]\nplugin = \"wasm\"\nname = \"rule\"\nmodule = {:?}\nshadow_module = {:?}\n",
        old.display().to_string(),
        new.display().to_string()
    ));
    let cfg = Config::parse(&toml, Path::new("rule-diff.toml"))?;
    Ok((Chain::build(&cfg.chain, &registry, Path::new("."))?, "rule".into()))
}

pub(crate) fn run(args: DiffArgs) -> anyhow::Result<()> {
    let format = Format::from_name(&args.format).with_context(|| format!("unknown format {:?}", args.format))?;
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    if read(&args.old)? == read(&args.new)? {
        // A stage never shadows its own module (a promoted shadow stays
        // named in the configuration): nothing to compare.
        println!("{} and {} are the same module: no event can differ", args.old.display(), args.new.display());
        return Ok(());
    }
    let (chain, stage) = build(&args)?;
    let text = std::fs::read_to_string(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let input = Input::Ndjson { text, format, first_index: 1 };
    let mut out = Vec::new(); // the enriched events: not what is asked
    Pipeline::new(Limits { max_records: usize::MAX }).run(&chain, input, Encoding::NDJSON, Instant::now(), &mut out)?;
    let request = StageRequest {
        method: StageMethod::Get,
        action: "shadow",
        query: "",
        body: &[],
        state_dir: Path::new(""),
        actor: None,
    };
    let answer = chain.stage_action("wasm", &stage, request).context("the stage reported no shadow")?;
    anyhow::ensure!(answer.status == 200, "{}", answer.body);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer.body)?);
    } else {
        print!("{}", human(&answer.body));
    }
    Ok(())
}

/// The summary for people: counts, the two histograms side by side, the
/// samples one per line.
fn human(body: &Value) -> String {
    use std::fmt::Write;
    let s = &body["summary"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "events compared: {}\nevents differing: {} (score: {}, reasons: {})\nnot compared: {} (old failed), {} (new failed)",
        n(&s["events_compared"]),
        n(&s["events_differing"]),
        n(&s["score_differs"]),
        n(&s["reasons_differ"]),
        n(&s["events_not_compared"]["live_failed"]),
        n(&s["events_not_compared"]["shadow_failed"]),
    );
    let _ = writeln!(out, "\nscore      old      new");
    let (old, new) = (&s["histograms"]["live"], &s["histograms"]["shadow"]);
    let empty = Vec::new();
    let buckets = old["buckets"].as_array().unwrap_or(&empty);
    for (i, b) in buckets.iter().enumerate() {
        let le = match &b["le"] {
            Value::String(s) => s.clone(),
            v => format!("<= {v}"),
        };
        let _ = writeln!(out, "{le:<8} {:>7}  {:>7}", n(&b["count"]), n(&new["buckets"][i]["count"]));
    }
    let _ = writeln!(out, "no score {:>7}  {:>7}", n(&old["unscored"]), n(&new["unscored"]));
    let samples = s["samples"].as_array().unwrap_or(&empty);
    if !samples.is_empty() {
        let _ = writeln!(out, "\nsamples (first differing event of each chunk, newest last):");
        for sample in samples {
            let _ = writeln!(
                out,
                "  {}:{} -> {}:{}  old {} {}  new {} {}",
                sample["src_ip"].as_str().unwrap_or("-"),
                sample["src_port"],
                sample["dst_ip"].as_str().unwrap_or("-"),
                sample["dst_port"],
                sample["live"]["score"],
                sample["live"]["reasons"],
                sample["shadow"]["score"],
                sample["shadow"]["reasons"],
            );
        }
    }
    out
}
