//! Threat-intel enricher: flags events whose addresses or domain fields
//! match indicators loaded from files.
//!
//! Why it is built this way:
//!
//! - Indicators are loaded once, when the chain is built, into an immutable
//!   [`index::Index`]; a reload builds a new chain. The hot path therefore
//!   takes no lock and shares nothing mutable between threads.
//! - Most events match nothing. For them the enricher attaches one shared,
//!   pre-serialized `{"matches":[]}` (an `Arc` clone, i.e. one atomic
//!   increment): no allocation, no formatting. Matches are rare and written
//!   straight into one JSON string.
//! - Every covering indicator is reported (an address inside nested listed
//!   subnets matches all of them, most specific first), like Zeek's intel
//!   framework, because analysts want to see each feed that knows the host.
//! - Each match names its source file, so the same indicator from two feeds
//!   is two matches: which feeds agree is information, not noise.
//!
//! Layout: [`options`] (config), [`loader`] (file formats), [`index`]
//! (prefix and domain lookups), [`api_store`] (indicators added through
//! the API) and `admin` (its `indicators` admin resource), this file
//! (factory and enricher).

mod admin;
pub mod api_store;
pub mod index;
pub mod loader;
pub mod options;
pub mod output;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use enrichd_engine::{
    AddressSelector, AdminResource, BatchView, BuildContext, Enricher, EnvOverride, FactDecl, FactId, FactKind,
    JsonFragment, KeyId, LookupAnswer, LookupTarget, Plugin, PluginState, PluginStatus, TextFieldId,
};
use serde_json::json;

use index::{Index, IndexBuilder};
use loader::{push_json_str, FileReport};
pub use options::TiOptions;

/// Factory of `plugin = "ti"` chain entries.
pub struct TiFactory;

impl Plugin for TiFactory {
    type Options = TiOptions;

    fn kind(&self) -> &'static str {
        "ti"
    }

    fn description(&self) -> &'static str {
        "Threat-intel indicators (IPs, CIDRs, domains) from plain, CSV or Zeek intel files"
    }

    fn env_overrides(&self) -> &'static [EnvOverride] {
        &[EnvOverride { var: "TI_PATH", option: "paths", list: true }]
    }

    /// `GET`/`PUT /v1/indicators`, `DELETE /v1/indicators/{id}`: the
    /// indicators added through the API ([`api_store`]).
    fn admin_resources(&self) -> Vec<AdminResource> {
        vec![AdminResource { name: "indicators", handler: Arc::new(admin::Indicators) }]
    }

    fn build(&self, options: TiOptions, ctx: &mut BuildContext<'_>) -> anyhow::Result<Box<dyn Enricher>> {
        let opts = options.validated()?;
        let key = ctx.output_key(&opts.output);
        let fact = ctx.fact(
            FactDecl::new("indicator_matches", FactKind::IndicatorMatches)
                .output(key, output::schema(opts.matched_flag))
                .values(output::indicators),
        );
        let api_store = opts.api_indicators.then(|| ctx.state_dir().map(api_store::path_in)).flatten();
        let (index, reports) = load(&opts.paths, api_store.as_deref(), |p| ctx.resolve_path(p), &opts.limits());
        let mut watched: Vec<PathBuf> = opts.paths.iter().map(|p| ctx.resolve_path(p)).collect();
        watched.extend(api_store);
        // Only ask the parser to capture domain fields when there is
        // something to match them against: capturing costs on every record.
        let domain_fields = if index.as_ref().is_some_and(Index::has_domains) {
            opts.domain_fields.iter().map(|f| (ctx.text_field(f), json_string(f))).collect()
        } else {
            Vec::new()
        };
        let mut enricher = TiEnricher::new(&opts, key, fact, index, reports, domain_fields);
        enricher.watched = watched;
        Ok(Box::new(enricher))
    }
}

/// Loads every configured path and, when given, the API indicator store;
/// the index is `None` when no file was read.
pub fn load(
    paths: &[String],
    api_store: Option<&Path>,
    resolve: impl Fn(&str) -> PathBuf,
    limits: &loader::FileLimits,
) -> (Option<Index>, Vec<FileReport>) {
    let mut builder = IndexBuilder::default();
    let mut reports = loader::load_all(paths, resolve, &mut builder, limits);
    // The API store counts as a source only once it holds something: an
    // empty one must not turn "no indicator file" into "loaded".
    let api = api_store.map(|p| api_store::load_into(p, &mut builder));
    let any_loaded = reports.iter().any(|r| r.error.is_none()) || api.as_ref().is_some_and(|r| r.indicators > 0);
    reports.extend(api.filter(|r| r.indicators > 0 || r.error.is_some()));
    (any_loaded.then(|| builder.finish()), reports)
}

/// The enricher of one `ti` chain entry.
pub struct TiEnricher {
    key: KeyId,
    /// The output key's name (`/v1/lookup` answers under it).
    output: Box<str>,
    fact: FactId,
    index: Option<Index>,
    check_src: bool,
    check_dst: bool,
    dst_or_src: bool,
    /// Captured field id and its name as a JSON string literal.
    domain_fields: Vec<(TextFieldId, Box<str>)>,
    matched_flag: bool,
    /// The shared answer for events that match nothing.
    empty: JsonFragment,
    status: PluginStatus,
    /// Configured paths (files and directories) and the API store.
    watched: Vec<PathBuf>,
    /// Indicators (distinct + repeats) per file read, by path, for the
    /// keep-last-good checks on the next generation.
    counts: Vec<(String, usize)>,
    max_shrink: f64,
}

/// Files with fewer indicators than this are not held back for shrinking
/// (hand-kept lists lose half their lines in ordinary edits); becoming
/// empty is still checked.
pub const MIN_SHRINK_CHECKED: usize = 100;

impl TiEnricher {
    fn new(
        opts: &TiOptions,
        key: KeyId,
        fact: FactId,
        index: Option<Index>,
        reports: Vec<FileReport>,
        domain_fields: Vec<(TextFieldId, Box<str>)>,
    ) -> Self {
        let has = |s| opts.addresses.contains(&s);
        let empty = if opts.matched_flag { r#"{"matches":[],"matched":false}"# } else { r#"{"matches":[]}"# };
        let status = build_status(index.as_ref(), &reports);
        let counts = reports
            .iter()
            .filter(|r| r.error.is_none() && r.format != Some("api"))
            .map(|r| (r.path.display().to_string(), r.indicators + r.duplicates))
            .collect();
        TiEnricher {
            key,
            output: opts.output.as_str().into(),
            fact,
            index,
            check_src: has(AddressSelector::Source),
            check_dst: has(AddressSelector::Destination),
            dst_or_src: has(AddressSelector::DestinationOrSource),
            domain_fields,
            matched_flag: opts.matched_flag,
            empty: Arc::from(empty),
            status,
            watched: Vec::new(),
            counts,
            max_shrink: opts.max_shrink,
        }
    }

    /// The addresses of an event to check, each with its field name, once.
    #[inline]
    fn addresses(&self, src: Option<IpAddr>, dst: Option<IpAddr>) -> [Option<(IpAddr, &'static str)>; 2] {
        let mut check_src = self.check_src;
        let mut check_dst = self.check_dst;
        if self.dst_or_src {
            if dst.is_some() {
                check_dst = true;
            } else {
                check_src = true;
            }
        }
        [src.filter(|_| check_src).map(|ip| (ip, "\"src_ip\"")), dst.filter(|_| check_dst).map(|ip| (ip, "\"dst_ip\""))]
    }
}

impl Enricher for TiEnricher {
    fn enrich(&self, batch: &mut BatchView<'_>) {
        let Some(index) = &self.index else { return };
        let source = batch.source;
        let check_domains = !self.domain_fields.is_empty();
        for event in batch.events.iter_mut() {
            let mut out = Matches::default();
            for (ip, field) in self.addresses(event.src_ip, event.dst_ip).into_iter().flatten() {
                index.for_each_ip_match(ip, |hit| out.push(&hit, field, Value::Ip(ip)));
            }
            if check_domains {
                for (id, field) in &self.domain_fields {
                    if let Some(value) = source.text(event, *id) {
                        let name = host_part(value);
                        index.for_each_domain_match(name, |hit| out.push(&hit, field, Value::Text(value)));
                    }
                }
            }
            event.set_fact(self.fact, out.count);
            let value = match out.finish(self.matched_flag) {
                None => self.empty.clone(),
                Some(text) => Arc::from(text),
            };
            event.set_output(self.key, value);
        }
    }

    fn status(&self) -> PluginStatus {
        self.status.clone()
    }

    fn watch_paths(&self) -> Vec<PathBuf> {
        self.watched.clone()
    }

    /// Holds back a generation in which a file read now and live became
    /// empty (without a `#` comment declaring it) or lost more than
    /// `max_shrink` of its indicators. New, removed and failing files are
    /// not judged here (failures already make the load less healthy); the
    /// API store is never held back (its deletions are deliberate).
    fn vet_successor(&self, next: &PluginStatus) -> Result<(), String> {
        let files = next.details.get("files").and_then(serde_json::Value::as_array);
        let mut held = Vec::new();
        for file in files.into_iter().flatten() {
            let (Some(path), None) = (file["path"].as_str(), file.get("error")) else { continue };
            if file["format"] == "api" {
                continue;
            }
            let Some(&(_, before)) = self.counts.iter().find(|(p, _)| p == path) else { continue };
            let now =
                [&file["indicators"], &file["duplicates"]].iter().filter_map(|v| v.as_u64()).sum::<u64>() as usize;
            let source = file["source"].as_str().unwrap_or(path);
            if now == 0 && before > 0 && file["declared_empty"] != true {
                held.push(format!(
                    "{source} has no indicator where the live one has {before} (emptied, or caught mid-write?); \
                     a file holding only a comment line such as `# empty` empties a feed on purpose"
                ));
            } else if now > 0
                && before >= MIN_SHRINK_CHECKED
                && (before - now.min(before)) as f64 > self.max_shrink * before as f64
            {
                held.push(format!(
                    "{source} has {now} indicators where the live one has {before}, a loss of more than \
                     `max_shrink` ({}); raise `max_shrink` (1 disables the check) to take it",
                    self.max_shrink
                ));
            }
        }
        if held.is_empty() {
            Ok(())
        } else {
            Err(held.join("; "))
        }
    }

    /// Answers under the stage's output key, plus `threats` (the bare
    /// match list, the documented lookup shape of the default chain).
    fn lookup(&self, target: LookupTarget<'_>, out: &mut LookupAnswer) {
        let mut m = Matches::default();
        if let Some(index) = &self.index {
            match target {
                LookupTarget::Ip(ip) => index.for_each_ip_match(ip, |hit| m.push(&hit, "\"ip\"", Value::Ip(ip))),
                LookupTarget::Domain(name) => {
                    index.for_each_domain_match(name, |hit| m.push(&hit, "\"domain\"", Value::Text(name)))
                }
            }
        }
        let text = m.finish(self.matched_flag).unwrap_or_else(|| self.empty.to_string());
        let value: serde_json::Value = serde_json::from_str(&text).expect("matches are valid JSON");
        // The reference API's lookup answered with the list as `threats`.
        out.aliases.insert("threats".into(), value["matches"].clone());
        out.fields.insert(self.output.to_string(), value);
    }
}

/// Indicator type, as shown in a match's `"type"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Addr = 0,
    Subnet = 1,
    Domain = 2,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Addr => "addr",
            Kind::Subnet => "subnet",
            Kind::Domain => "domain",
        }
    }
}

/// One match, handed to the caller's writer.
pub struct Hit<'a> {
    pub kind: Kind,
    /// The indicator, displayable as listed (`45.149.3.0/24`, `1.2.3.4`,
    /// `evil-example.com`).
    pub indicator: Indicator<'a>,
    /// Pre-serialized `,"source":...}` rest of the match object.
    pub tail: &'a str,
}

/// The indicator text of a [`Hit`], formatted only when written.
pub enum Indicator<'a> {
    Net { ip: IpAddr, len: u8, host: bool },
    Domain(&'a str),
}

impl fmt::Display for Indicator<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Indicator::Net { ip, host: true, .. } => write!(f, "{ip}"),
            Indicator::Net { ip, len, .. } => write!(f, "{ip}/{len}"),
            Indicator::Domain(d) => f.write_str(d),
        }
    }
}

enum Value<'a> {
    Ip(IpAddr),
    Text(&'a str),
}

/// Accumulates one event's matches as JSON; allocates on the first match.
#[derive(Default)]
struct Matches {
    text: Option<String>,
    count: u32,
}

impl Matches {
    fn push(&mut self, hit: &Hit<'_>, field: &str, value: Value<'_>) {
        let s = self.text.get_or_insert_with(|| {
            let mut s = String::with_capacity(256);
            s.push_str("{\"matches\":[");
            s
        });
        if self.count > 0 {
            s.push(',');
        }
        self.count += 1;
        // Indicator texts are IPs, networks or validated domain names: no
        // character needs escaping.
        let _ = write!(
            s,
            "{{\"indicator\":\"{}\",\"type\":\"{}\",\"field\":{field},\"value\":",
            hit.indicator,
            hit.kind.name()
        );
        match value {
            Value::Ip(ip) => {
                let _ = write!(s, "\"{ip}\"");
            }
            Value::Text(t) => push_json_str(s, t),
        }
        s.push_str(hit.tail);
    }

    fn finish(self, matched_flag: bool) -> Option<String> {
        let mut s = self.text?;
        s.push(']');
        if matched_flag {
            s.push_str(",\"matched\":true");
        }
        s.push('}');
        Some(s)
    }
}

/// The name in a domain field: trimmed, without a `:port` (HTTP `Host`);
/// an IPv6 literal yields an empty name, which matches nothing.
fn host_part(value: &str) -> &str {
    let value = value.trim_ascii();
    // `contains` is a word-at-a-time memchr: the usual no-colon case is cheap.
    if !value.contains(':') {
        return value;
    }
    match value.split_once(':') {
        Some((host, port)) if !host.starts_with('[') && !port.contains(':') => host,
        _ => "",
    }
}

fn json_string(s: &str) -> Box<str> {
    let mut out = String::new();
    push_json_str(&mut out, s);
    out.into()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn build_status(index: Option<&Index>, reports: &[FileReport]) -> PluginStatus {
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
