//! `enrichd`: the enrichment engine for network security telemetry.
//!
//! `enrichd serve` runs the `/v1` HTTP API; the other subcommands work
//! offline on the same configuration and chain (check it, print its schema,
//! look up one address, enrich NDJSON / Zeek logs from stdin, benchmark).

mod api;
mod app;
mod audit;
mod cli;
mod dashboard;
mod defaults;
mod delivery;
mod metrics;
mod ratelimit;
mod reload;
mod schema;
mod serve;
mod server;
mod service;
mod tap;
mod tls;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "enrichd",
    version,
    about = "Enrichment engine for network security telemetry",
    after_long_help = ENVIRONMENT_HELP
)]
struct Cli {
    /// Log lines as human-readable text or as one JSON object per line
    /// (for log shippers). Logs go to standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "ENRICHD_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `--help` lists the environment the binary reads.
const ENVIRONMENT_HELP: &str = "\
Environment:
  ENRICHD_LOG              log filter (tracing syntax: info, debug, enrichd=debug,...); default info
  ENRICHD_LOG_FORMAT       text or json, as --log-format
  API_KEY                  adds an API key (auth.api_keys)
  ADMIN_API_KEY            adds an admin key (auth.admin_keys)
  ENRICH_ENABLE_<PLUGIN>   turns a chain entry of that plugin on or off (true/false, 1/0, yes/no, on/off)
  EXPORT_<OUTPUT>_ENABLED  turns an output on or off (wins over config.toml and the API)
  plugin variables         GEOIP_CITY_DB, GEOIP_ASN_DB, TI_PATH, ...: `enrichd config-reference` lists them all";

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API.
    Serve {
        /// Configuration file. Without it: `--data-dir`'s config.toml, else
        /// the first of ./config.toml, $ENRICHD_CONFIG,
        /// $XDG_CONFIG_HOME/enrichd/config.toml, /etc/enrichd/config.toml,
        /// else the built-in default, written to the data directory.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where the built-in default setup lives (config.toml, rules/,
        /// ti/, geo/, state/) [default: $STATE_DIRECTORY, /var/lib/enrichd
        /// as root, else $XDG_DATA_HOME/enrichd].
        #[arg(long, env = "ENRICHD_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Listen address, `host:port` or a port alone (the configured
        /// host on that port); overrides `server.listen`.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Validate the configuration and load every enricher's data.
    CheckConfig {
        /// Configuration file.
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
        /// Accept databases, indicator files and modules that do not exist
        /// yet (they are loaded when they appear); load errors still fail.
        #[arg(long)]
        allow_missing: bool,
    },
    /// Print the JSON Schema of the configuration file.
    ConfigSchema,
    /// Print the configuration reference (sections, plugin options,
    /// environment variables) as Markdown, generated from the schema.
    ConfigReference,
    /// Look up one address offline and print what the chain knows of it.
    Lookup {
        /// An IPv4 or IPv6 address, or a domain name (matched against the
        /// domain indicators).
        target: String,
        /// Configuration file.
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Enrich records offline: NDJSON (or Zeek TSV logs) in, NDJSON out.
    Enrich(cli::enrich::EnrichArgs),
    /// Measure the in-process chain's throughput against a JSON baseline.
    Bench(cli::bench::BenchArgs),
    /// Check or try out a WebAssembly rule / enricher module.
    #[command(subcommand)]
    Rule(cli::rule::RuleCommand),
    /// Publish a rule, an indicator file or a chain file once for every instance
    /// (through an `[[update]]` entry that can publish, e.g. `nats_object`).
    #[command(subcommand)]
    Publish(cli::publish::PublishCommand),
    /// The fleet's instances as they report themselves (through an
    /// `[[update]]` entry that keeps a status board, e.g. `nats_object`).
    #[command(subcommand)]
    Cluster(cli::cluster::ClusterCommand),
    /// Make API keys for `[[auth.keys]]` (stored as their SHA-256).
    #[command(subcommand)]
    Key(cli::key::KeyCommand),
    /// Stream a sample of a running server's enriched events (`GET
    /// /v1/tap`), filtered, as NDJSON on standard output.
    Tap(cli::remote::TapArgs),
    /// A live terminal view of a running server: rates, lag, stages and
    /// outputs (`GET /v1/metrics`).
    Top(cli::remote::TopArgs),
    /// Write the documented default setup (config.toml, the risk rule,
    /// sample indicators, geo/ and state/ directories) for editing.
    Init {
        /// Where [default: the data directory `serve` would use].
        dir: Option<PathBuf>,
        /// Replace files that exist (by default they are kept).
        #[arg(long)]
        force: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell) for standard output.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Print the man page, or write one per subcommand into a directory.
    Man {
        /// Write `enrichd.1` and `enrichd-<subcommand>.1` here instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `--version`: the release, the commit and the guest ABI modules are
/// built against (`-V` prints the release alone).
fn long_version() -> &'static str {
    let text = format!(
        "{} (git {}, WASM guest ABI {}.{})",
        env!("CARGO_PKG_VERSION"),
        std::env::var("GIT_SHA").unwrap_or_else(|_| env!("ENRICHD_GIT_SHA").to_string()),
        enrichd_wasm::ABI_MAJOR,
        enrichd_wasm::ABI_MINOR
    );
    Box::leak(text.into_boxed_str())
}

fn main() -> ExitCode {
    let matches = Cli::command().long_version(long_version()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ENRICHD_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        // Fields at the top level, next to `timestamp`, `level`, `target`.
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
    }
    let result = match cli.command {
        Command::Serve { config, data_dir, listen } => {
            serve_config(config, data_dir).and_then(|config| serve::run(&config, listen))
        }
        Command::Init { dir, force } => init(dir, force),
        Command::CheckConfig { config, allow_missing } => cli::check_config(&config, allow_missing),
        Command::ConfigSchema => cli::config_schema(),
        Command::ConfigReference => {
            print!("{}", cli::reference::markdown(&app::registry()));
            Ok(())
        }
        Command::Lookup { target, config } => cli::lookup(&config, &target),
        Command::Enrich(args) => cli::enrich::enrich(args),
        Command::Bench(args) => cli::bench::run(args),
        Command::Rule(command) => cli::rule::run(command),
        Command::Key(command) => cli::key::run(command),
        Command::Publish(command) => cli::publish::run(command),
        Command::Cluster(command) => cli::cluster::run(command),
        Command::Tap(args) => cli::remote::tap(args),
        Command::Top(args) => cli::remote::top(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "enrichd", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => man(dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("enrichd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration `serve` runs on (see its `--config` help), logged.
fn serve_config(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = config {
        tracing::info!(config = %path.display(), "configuration (--config)");
        return Ok(path);
    }
    if data_dir.is_none() {
        if let Some(found) = defaults::config_candidates().into_iter().find(|p| p.is_file()) {
            tracing::info!(config = %found.display(), "configuration");
            return Ok(found);
        }
    }
    let dir = defaults::data_dir(data_dir)?;
    let written = defaults::write_layout(&dir, false)
        .with_context(|| format!("setting up the data directory {} (or pass --config)", dir.display()))?;
    let new: Vec<String> = written.iter().filter(|w| !w.kept).map(|w| w.path.display().to_string()).collect();
    if new.is_empty() {
        tracing::info!(config = %dir.join("config.toml").display(), "configuration (data directory)");
    } else {
        tracing::info!(
            config = %dir.join("config.toml").display(),
            written = %new.join(", "),
            "no configuration found: starting on the built-in default, written to the data directory for editing"
        );
    }
    Ok(dir.join("config.toml"))
}

/// `enrichd init [DIR]`.
fn init(dir: Option<PathBuf>, force: bool) -> anyhow::Result<()> {
    let dir = match dir {
        Some(dir) => dir,
        None => defaults::data_dir(None)?,
    };
    for w in defaults::write_layout(&dir, force)? {
        println!("{} {}", if w.kept { "kept   " } else { "written" }, w.path.display());
    }
    println!(
        "\nNext: put GeoLite2-City.mmdb and GeoLite2-ASN.mmdb in {geo}, set API_KEY, then\n  \
         enrichd check-config --config {config}\n  enrichd serve --config {config}",
        geo = dir.join("geo").display(),
        config = dir.join("config.toml").display()
    );
    Ok(())
}

fn man(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let cmd = Cli::command().long_version(long_version());
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(cmd, &dir)?;
        }
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every option and argument of every subcommand says what it is in
    /// `--help`.
    #[test]
    fn every_cli_argument_is_documented() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path}: {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "undocumented: {missing:#?}");
        super::Cli::command().debug_assert();
    }
}
