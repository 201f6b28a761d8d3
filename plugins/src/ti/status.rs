//! What the `ti` stage reports: its status (indicators, files, errors)
//! and the dashboard's feeds table.

use enrichd_engine::{PluginState, PluginStatus, StatusTable};
use serde_json::json;

use super::index::Index;
use super::loader::FileReport;

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub(super) fn build_status(index: Option<&Index>, reports: &[FileReport]) -> PluginStatus {
    let failed: Vec<&FileReport> = reports.iter().filter(|r| r.error.is_some()).collect();
    let loaded = reports.len() - failed.len();
    let state = match index {
        Some(_) => PluginState::Loaded,
        None if failed.iter().all(|r| r.missing) => PluginState::Missing,
        None => PluginState::Error,
    };
    for r in &failed {
        tracing::warn!("ti: {}: {}", r.path.display(), r.error.as_deref().unwrap_or_default());
    }
    let mut status = PluginStatus::new(state);
    status.sources = reports.iter().map(FileReport::source_info).collect();
    let [addr, subnet, domain] = index.map(Index::counts).unwrap_or_default();
    if let Some(index) = index {
        status.version = Some(format!(
            "{} from {}",
            plural(addr + subnet + domain, "indicator", "indicators"),
            plural(loaded, "file", "files")
        ));
        tracing::info!(
            "ti: {}, index {} KiB",
            status.version.as_deref().unwrap_or_default(),
            index.heap_bytes().div_ceil(1024)
        );
    }
    // With some files loaded the stage works, but degraded: say which
    // files failed (a reload will not swap such a load over a clean one).
    if !failed.is_empty() {
        let errors: Vec<String> =
            failed.iter().map(|r| format!("{}: {}", r.path.display(), r.error.as_deref().unwrap_or(""))).collect();
        status.error = Some(errors.join("; "));
    }
    status.details = json!({
        "indicators": {"addr": addr, "subnet": subnet, "domain": domain},
        "skipped_lines": reports.iter().map(|r| r.skipped_lines).sum::<usize>(),
        "unsupported": reports.iter().map(|r| r.unsupported).sum::<usize>(),
        "files": reports,
    });
    status
}

/// The dashboard's "Feeds" panel: per feed its indicators by state and its
/// hits (from [`super::TiEnricher::feed_report`]'s rows).
pub(super) fn feed_table(feeds: &[serde_json::Value]) -> StatusTable {
    use enrichd_engine::plugin::{ColumnKind::*, StatusColumn as C};
    let columns = [
        ("feed", "feed", Text),
        ("live", "live", Count),
        ("expired", "expired", Count),
        ("decayed", "decayed", Count),
        ("hits", "hits", Count),
        ("distinct_sources", "sources hit", Count),
        ("last_hit", "last hit", Time),
    ];
    let mut table = StatusTable::new("Feeds", columns.iter().map(|&(_, label, kind)| C::new(label, kind)).collect());
    for f in feeds {
        table.push_row(columns.iter().map(|&(key, _, _)| f[key].clone()).collect());
    }
    table
}
