//! `enrichd rule check` / `enrichd rule test`: how a team checks a module
//! before dropping it into production; `keygen` / `sign` / `verify`: how it
//! signs one for stages with `require_signature` (formats: OpenSSL's, see
//! `enrichd_wasm::signature`).

use std::path::PathBuf;

use anyhow::Context;
use std::time::Instant;

use enrichd_engine::{Chain, Config, Encoding, Format, Input, Limits, Pipeline};

use crate::app;

#[derive(clap::Subcommand)]
pub(crate) enum RuleCommand {
    /// Load a module as the host would and report its ABI version, exports,
    /// imports, size and the limits it will run under.
    Check {
        /// The module: `.wasm` (or `.wat` text).
        module: PathBuf,
        /// Linear-memory cap to check against, MiB.
        #[arg(long, default_value_t = 16)]
        memory_limit_mib: u64,
        /// Per-batch deadline, ms.
        #[arg(long, default_value_t = 10)]
        deadline_ms: u64,
    },
    /// Run a module over NDJSON events offline and print each event's verdict.
    Test {
        /// The module: `.wasm` (or `.wat` text).
        module: PathBuf,
        /// Events, one JSON object per line.
        #[arg(long)]
        events: PathBuf,
        /// Record format: zeek.conn.v1 (aliases zeek, zeek.conn) or flows.v1.
        #[arg(long, short, default_value = "zeek.conn.v1")]
        format: String,
        /// `rule` or `enricher`.
        #[arg(long, default_value = "rule")]
        role: String,
        /// Fields an enricher sets (repeat the flag).
        #[arg(long = "field")]
        fields: Vec<String>,
        /// A value of the module's own configuration (what a chain entry's
        /// `config` table holds), `key=value`; repeat the flag.
        #[arg(long = "set", value_name = "KEY=VALUE", alias = "config")]
        config: Vec<String>,
        /// Run the threat-intel stage from this indicator file first, so
        /// `ti_matches` is set as in production.
        #[arg(long)]
        ti: Option<PathBuf>,
    },
    /// Run OLD live and NEW in shadow over NDJSON events offline (the
    /// server's shadow comparison) and print the summary: events compared
    /// and differing, score histograms side by side, differing samples.
    Diff(super::rule_diff::DiffArgs),
    /// Make an Ed25519 key pair for signing modules: PREFIX.pem (private,
    /// 0600; keep it off the servers) and PREFIX.pub.pem (for a stage's
    /// `trusted_keys`).
    Keygen {
        /// Path prefix of the two files.
        prefix: PathBuf,
    },
    /// Sign a module: writes MODULE.sig (base64 Ed25519 signature).
    Sign {
        /// The module to sign (`.wasm`).
        module: PathBuf,
        /// The private key (PEM PKCS#8, from `rule keygen` or `openssl
        /// genpkey -algorithm ed25519`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Check MODULE.sig against trusted public keys, as a stage would;
    /// exit 1 when it does not verify.
    Verify {
        /// The module whose `.sig` is checked.
        module: PathBuf,
        /// A trusted public key (PEM); repeat the flag for several.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
    },
}

fn keygen(prefix: PathBuf) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).context("reading the system's random source")?;
    let (private, public) = enrichd_wasm::signature::keypair_pem(seed)?;
    let private_path = prefix.with_extension("pem");
    let public_path = prefix.with_extension("pub.pem");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private_path)
        .and_then(|mut f| f.write_all(private.as_bytes()))
        .with_context(|| format!("writing {} (an existing key is never replaced)", private_path.display()))?;
    std::fs::write(&public_path, public).with_context(|| format!("writing {}", public_path.display()))?;
    println!("private key: {} (sign with it; keep it off the servers)", private_path.display());
    println!("public key:  {} (list it in the stage's trusted_keys)", public_path.display());
    Ok(())
}

fn sign(module: PathBuf, key: PathBuf) -> anyhow::Result<()> {
    let bytes = std::fs::read(&module).with_context(|| format!("reading {}", module.display()))?;
    let pem = std::fs::read_to_string(&key).with_context(|| format!("reading {}", key.display()))?;
    let signature = enrichd_wasm::signature::sign(&bytes, &pem).with_context(|| format!("{}", key.display()))?;
    let sig_path = enrichd_wasm::signature::signature_path(&module);
    // Written beside and renamed, so a watching server never reads half.
    let staged = sig_path.with_extension("sig.tmp");
    std::fs::write(&staged, format!("{signature}\n")).with_context(|| format!("writing {}", staged.display()))?;
    std::fs::rename(&staged, &sig_path).with_context(|| format!("writing {}", sig_path.display()))?;
    println!("{}", sig_path.display());
    Ok(())
}

fn verify(module: PathBuf, keys: Vec<PathBuf>) -> anyhow::Result<()> {
    use enrichd_wasm::signature;
    let bytes = std::fs::read(&module).with_context(|| format!("reading {}", module.display()))?;
    let trusted = keys.iter().map(|k| signature::TrustedKey::load(k)).collect::<anyhow::Result<Vec<_>>>()?;
    let id = signature::verify(&bytes, &signature::signature_path(&module), &trusted)?;
    println!("ok: signed by key {id}");
    Ok(())
}

pub(crate) fn run(command: RuleCommand) -> anyhow::Result<()> {
    match command {
        RuleCommand::Diff(args) => super::rule_diff::run(args),
        RuleCommand::Keygen { prefix } => keygen(prefix),
        RuleCommand::Sign { module, key } => sign(module, key),
        RuleCommand::Verify { module, keys } => verify(module, keys),
        RuleCommand::Check { module, memory_limit_mib, deadline_ms } => {
            let options: enrichd_wasm::WasmOptions = toml::from_str(&format!(
                "module = {}\nmemory_limit_mib = {memory_limit_mib}\ndeadline_ms = {deadline_ms}\n",
                super::toml_string(&module.display().to_string())
            ))?;
            let report = enrichd_wasm::inspect(&module, &options)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        RuleCommand::Test { module, events, format, role, fields, config, ti } => {
            let format = Format::from_name(&format).with_context(|| format!("unknown format {format:?}"))?;
            let abs = |p: PathBuf| std::fs::canonicalize(&p).with_context(|| format!("{}", p.display()));
            let mut toml = String::new();
            if let Some(ti) = ti {
                toml.push_str(&format!(
                    "[[chain]]\nplugin = \"ti\"\npaths = [{}]\n\n",
                    super::toml_string(&abs(ti)?.display().to_string())
                ));
            }
            let config: Vec<String> = config
                .iter()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').context("--set takes key=value")?;
                    anyhow::Ok(format!("{} = {}", super::toml_string(k), super::toml_string(v)))
                })
                .collect::<anyhow::Result<_>>()?;
            toml.push_str(&format!(
                "[[chain]]\nplugin = \"wasm\"\nname = \"module\"\nmodule = {}\nrole = {}\nfields = {}\nconfig = {{ {} }}\n",
                super::toml_string(&abs(module)?.display().to_string()),
                super::toml_string(&role),
                toml::Value::Array(fields.iter().map(|f| toml::Value::String(f.clone())).collect()),
                config.join(", ")
            ));
            let registry = app::registry();
            let cfg = Config::parse(&toml, std::path::Path::new("rule-test.toml"))?;
            let chain = Chain::build(&cfg.chain, &registry, std::path::Path::new("."))?;
            let text = std::fs::read_to_string(&events).with_context(|| format!("reading {}", events.display()))?;
            let input = Input::Ndjson { text, format, first_index: 1 };
            let mut out = Vec::new();
            Pipeline::new(Limits { max_records: usize::MAX }).run(
                &chain,
                input,
                Encoding::NDJSON,
                Instant::now(),
                &mut out,
            )?;
            print!("{}", String::from_utf8_lossy(&out));
            let report = chain.reports().pop().expect("the module stage");
            eprintln!("{}", serde_json::to_string(&report.status.details)?);
            Ok(())
        }
    }
}
