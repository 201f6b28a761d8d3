//! `enrichd publish rule|indicators|chain NAME FILE`: put a new version of a file
//! where every instance's `[[update]]` entry NAME fetches it from, so a
//! fleet goes live on it at once (each instance stages, swaps and reloads
//! it with the keep-last-good rule).
//!
//! The command knows no protocol: it builds the entry's updater from the
//! same configuration the instances use and calls its `publish` (a kind
//! that can only read, like a vendor's download service, says so). A rule
//! is checked first as `enrichd rule check` would (ABI, exports): a module
//! every instance would refuse is better refused here, once; so is a chain
//! file that does not parse or names a plugin this build does not have.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::app;
use crate::service::updates::Updates;

#[derive(clap::Subcommand)]
pub(crate) enum PublishCommand {
    /// Publish a WebAssembly rule module (checked as `rule check` does
    /// first) through the `[[update]]` entry NAME; prints the revision.
    Rule {
        /// The `[[update]]` entry that keeps the stage's module current.
        name: String,
        /// The module (`.wasm`).
        file: PathBuf,
        /// Configuration file (the instances' own).
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Publish an indicator file through the `[[update]]` entry NAME;
    /// prints the revision.
    Indicators {
        /// The `[[update]]` entry that keeps the indicator file current.
        name: String,
        /// The indicator file.
        file: PathBuf,
        /// Configuration file (the instances' own).
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Publish a chain file (`[[chain]]` entries only, as `chain_file`
    /// names) through the `[[update]]` entry NAME; prints the revision.
    Chain {
        /// The `[[update]]` entry that keeps the chain file current.
        name: String,
        /// The chain file.
        file: PathBuf,
        /// Configuration file (the instances' own).
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
}

pub(crate) fn run(command: PublishCommand) -> anyhow::Result<()> {
    let (name, file, config) = match &command {
        PublishCommand::Rule { name, file, config }
        | PublishCommand::Indicators { name, file, config }
        | PublishCommand::Chain { name, file, config } => (name, file, config),
    };
    let content = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    match command {
        PublishCommand::Rule { .. } => check_rule(file)?,
        PublishCommand::Indicators { .. } => {
            if content.is_empty() || std::str::from_utf8(&content).is_err() {
                bail!("{}: an indicator file is non-empty UTF-8 text", file.display());
            }
        }
        PublishCommand::Chain { .. } => check_chain(file, &content)?,
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let revision = runtime.block_on(publish(config, name, &content))?;
    println!("{revision}");
    Ok(())
}

/// Loads the module as a stage would (the host's own checks).
fn check_rule(file: &Path) -> anyhow::Result<()> {
    let options: enrichd_wasm::WasmOptions =
        toml::from_str(&format!("module = {}\n", super::toml_string(&file.display().to_string())))?;
    enrichd_wasm::inspect(file, &options)
        .map(|_| ())
        .with_context(|| format!("{} is not a module the wasm stage would load; not published", file.display()))
}

/// Parses the chain file as an instance would and checks every entry
/// names a plugin of this build. The options are checked by each instance
/// when it builds the stages (they may name files only the instances have);
/// a refusal there keeps that instance's running chain.
fn check_chain(file: &Path, content: &[u8]) -> anyhow::Result<()> {
    let text = std::str::from_utf8(content).with_context(|| format!("{} is not UTF-8 text", file.display()))?;
    let entries =
        enrichd_engine::Config::parse_chain_file(text, file).map_err(|e| anyhow::anyhow!("{e}; not published"))?;
    if !enrichd_engine::config::declares_chain(&entries, text) {
        bail!(
            "{}: no [[chain]] entry (write `chain = []` to publish an empty chain on purpose); not published",
            file.display()
        );
    }
    let registry = app::registry();
    for entry in &entries {
        if registry.get(&entry.plugin).is_none() {
            bail!(
                "{}: unknown plugin {:?} (known: {}); not published",
                entry.location,
                entry.plugin,
                registry.kinds().join(", ")
            );
        }
    }
    Ok(())
}

/// The `[[update]]` entries of a configuration file, built (not started).
pub(crate) fn updates_of(config_path: &Path) -> anyhow::Result<Updates> {
    let registry = app::registry();
    let mut config = crate::service::ServiceConfig::load(config_path)?;
    config.apply_env(&registry, |name| std::env::var(name).ok())?;
    let updates = Updates::default();
    // Configuring only reads the state directory (nothing is started).
    updates
        .configure(&registry, &config.updates, &config.engine.base_dir, &config.state_dir())
        .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?;
    Ok(updates)
}

async fn publish(config_path: &Path, name: &str, content: &[u8]) -> anyhow::Result<String> {
    let updates = updates_of(config_path)?;
    let Some((kind, runner)) = updates.runner(name) else {
        let names = updates.names();
        bail!(
            "{}: no enabled [[update]] entry named {name:?} (entries: {})",
            config_path.display(),
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        );
    };
    let Some(publishing) = runner.publish(content) else {
        bail!("[[update]] {name:?} is of type {kind:?}, which can only fetch, not publish");
    };
    publishing.await.map_err(|e| anyhow::anyhow!("[[update]] {name:?}: {e}"))
}
