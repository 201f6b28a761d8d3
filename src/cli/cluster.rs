//! `enrichd cluster status`: the fleet as its instances report themselves
//! on the status board of the configuration's `[[update]]` entries (see
//! `service::presence`): one row per instance whose entry has not expired.

use std::path::PathBuf;

use anyhow::bail;
use serde_json::Value;

#[derive(clap::Subcommand)]
pub(crate) enum ClusterCommand {
    /// One line per live instance: id, uptime, events/s, lag, and each
    /// stage's generation, content hash and revision.
    Status {
        /// Configuration file (an instance's own: its `[[update]]` entries
        /// say where the board is).
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
        /// Print the instances' reports as a JSON array instead.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(command: ClusterCommand) -> anyhow::Result<()> {
    let ClusterCommand::Status { config, json } = command;
    let updates = super::publish::updates_of(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let members = runtime.block_on(async {
        for (name, runner) in updates.runners() {
            if let Some(members) = runner.members() {
                return Some(members.await.map_err(|e| anyhow::anyhow!("[[update]] {name:?}: {e}")));
            }
        }
        None
    });
    let Some(members) = members else {
        bail!("{}: no enabled [[update]] entry keeps a status board (e.g. type = \"nats_object\")", config.display());
    };
    let mut members = members?;
    members.sort_by(|a, b| a["instance"].as_str().cmp(&b["instance"].as_str()));
    if json {
        println!("{}", serde_json::to_string_pretty(&members)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>9} {:>9} {:>9}  STAGES (name:generation:sha256[@revision])",
        "INSTANCE", "UPTIME", "EVENTS/S", "LAG P95"
    );
    for m in &members {
        println!(
            "{:<24} {:>8}s {:>9.1} {:>7.1}ms  {}",
            printable(m["instance"].as_str().unwrap_or("?")),
            m["uptime_s"].as_u64().unwrap_or(0),
            m["events_per_s"].as_f64().unwrap_or(0.0),
            m["lag_ms_p95"].as_f64().unwrap_or(0.0),
            stages(m)
        );
    }
    println!("{} instance(s)", members.len());
    Ok(())
}

fn stages(member: &Value) -> String {
    let stages = member["stages"].as_array().map(Vec::as_slice).unwrap_or_default();
    let one = |s: &Value| {
        let content: Vec<String> = s["content"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|c| {
                let sha: String = printable(c["sha256"].as_str().unwrap_or("-")).chars().take(12).collect();
                match c["revision"].as_str() {
                    Some(rev) => format!("{sha}@{}", printable(rev)),
                    None => sha,
                }
            })
            .collect();
        format!("{}:{}:{}", printable(s["name"].as_str().unwrap_or("?")), s["generation"], content.join("+"))
    };
    stages.iter().map(one).collect::<Vec<_>>().join(" ")
}

/// `text` with control characters shown as `?`: the board is written by
/// every instance (and anyone who can write the bucket), and a terminal
/// must not take an escape sequence from it.
fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn board_text_reaches_the_terminal_without_control_characters() {
        assert_eq!(super::printable("node-1\u{1b}]0;pwned\u{7}\r\n"), "node-1?]0;pwned???");
        assert_eq!(super::printable("enrichd-7 ü"), "enrichd-7 ü");
    }
}
