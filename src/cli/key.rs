//! `enrichd key new` / `enrichd key hash`: make keys for `[[auth.keys]]`
//! without the secret ever going into the configuration file.

use std::io::Read;

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::service::auth::sha256_hex;

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Make a random key: prints it once (for the client) and the
    /// `[[auth.keys]]` entry holding only its SHA-256 (for config.toml).
    New {
        /// The entry's name (who or what uses the key).
        #[arg(long, default_value = "collector")]
        name: String,
        /// Its scopes, comma-separated: ingest, read, admin.
        #[arg(long, default_value = "ingest", value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// Print the SHA-256 and the id (what logs name it by) of a key read
    /// from standard input.
    Hash,
}

pub(crate) fn run(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::New { name, scopes } => {
            for scope in &scopes {
                if !["ingest", "read", "admin"].contains(&scope.as_str()) {
                    bail!("unknown scope {scope:?}: use ingest, read or admin");
                }
            }
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).context("reading the system's random source")?;
            let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let key = format!("enr_{key}");
            let scopes: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
            println!("# The key, for the client; it is not stored anywhere and cannot be shown again:");
            println!("{key}");
            println!();
            println!("# For config.toml (applied on reload, no restart):");
            println!("[[auth.keys]]");
            println!("name = {}", super::toml_string(&name));
            println!("sha256 = \"{}\"", sha256_hex(&key));
            println!("scopes = [{}]", scopes.join(", "));
            Ok(())
        }
        KeyCommand::Hash => {
            let mut key = String::new();
            std::io::stdin().take(64 * 1024).read_to_string(&mut key).context("reading the key from stdin")?;
            let key = key.trim();
            if key.is_empty() {
                bail!("no key on standard input");
            }
            let hex = sha256_hex(key);
            println!("sha256 = \"{hex}\"");
            println!("id = {}", &hex[..12]);
            Ok(())
        }
    }
}
