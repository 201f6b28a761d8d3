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
//! - Metadata and lifecycle ([`meta`]): each listing carries its feed,
//!   confidence, severity, tags and times, stored once and shared; expiry
//!   and decay are judged per match against the batch's clock, so nothing
//!   needs a reload to stop matching. The strongest confidence and
//!   severity and the number of feeds that agree are facts rules read
//!   (`ti_confidence`, `ti_severity`, `ti_feeds`).
//! - Hit statistics ([`hits`]) per feed and indicator, kept across reloads,
//!   recorded without a global lock, served at `GET /v1/indicators/hits`.
//!
//! Layout: [`options`] (config), [`loader`] (file formats), [`index`]
//! (prefix and domain lookups), [`api_store`] (indicators added through
//! the API) and `admin` (its `indicators` admin resource), this file
//! (factory and enricher).

mod admin;
pub mod api_store;
pub mod hits;
pub mod index;
pub mod loader;
mod matches;
pub mod meta;
pub mod options;
pub mod output;
#[cfg(test)]
mod proptests;
mod status;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use enrichd_engine::{
    AddressSelector, AdminResource, BatchView, BuildContext, Enricher, EnvOverride, FactDecl, FactId, FactKind,
    JsonFragment, KeyId, LookupAnswer, LookupTarget, Plugin, PluginStatus, StatusSeries, TextFieldId,
};
use serde_json::json;

use hits::{FeedHits, HitStats};
use index::{Index, IndexBuilder};
use loader::FileReport;
use matches::{Matches, Value};
use meta::push_json_str;
use meta::{Feed, Life, Meta};
pub use options::TiOptions;
use status::{build_status, feed_table};

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

    /// `GET /v1/indicators/hits?feed=&top=`: hit statistics.
    fn views(&self) -> &'static [&'static str] {
        &[HITS_VIEW]
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
        let facts = MetaFacts {
            confidence: ctx.fact(FactDecl::new("ti_confidence", FactKind::Count)),
            severity: ctx.fact(FactDecl::new("ti_severity", FactKind::Label).labels(meta::SEVERITY_LABELS)),
            feeds: ctx.fact(FactDecl::new("ti_feeds", FactKind::Count)),
        };
        let stats = ctx.carried::<HitStats>();
        let api_store = opts.api_indicators.then(|| ctx.state_dir().map(api_store::path_in)).flatten();
        let (index, reports) =
            load(&opts.paths, api_store.as_deref(), |p| ctx.resolve_path(p), &opts.limits(), &opts.feeds);
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
        enricher.facts = facts;
        enricher.feed_hits = enricher
            .index
            .iter()
            .flat_map(Index::feeds)
            .map(|f| (stats.feed(&f.name), hits::name_hash(&f.name)))
            .collect();
        enricher.stats = stats;
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
    feeds: &[meta::FeedDefaults],
) -> (Option<Index>, Vec<FileReport>) {
    let mut builder = IndexBuilder::default();
    let mut reports = loader::load_all(paths, resolve, &mut builder, limits, feeds);
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
    facts: MetaFacts,
    /// Per feed of the index (by `Meta::feed`): its counters and name hash.
    feed_hits: Vec<(Arc<FeedHits>, u64)>,
    stats: Arc<HitStats>,
}

/// The path of the hit statistics view.
pub const HITS_VIEW: &str = "indicators/hits";

/// The facts a match's metadata sets (only on events with a match).
#[derive(Clone, Copy)]
struct MetaFacts {
    confidence: FactId,
    severity: FactId,
    feeds: FactId,
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
            // The same text for every batch: no atomics per event.
            empty: enrichd_engine::constant_fragment(empty),
            status,
            watched: Vec::new(),
            counts,
            max_shrink: opts.max_shrink,
            facts: MetaFacts { confidence: fact, severity: fact, feeds: fact },
            feed_hits: Vec::new(),
            stats: Arc::default(),
        }
    }

    /// Whether `meta`'s feed decays (its matches then show their effective
    /// confidence).
    #[inline]
    fn decays(&self, index: &Index, meta: &Meta) -> bool {
        index.feeds().get(meta.feed as usize).is_some_and(|f: &Feed| f.half_life_s > 0.0)
    }

    /// Whether a listing matches now.
    #[inline]
    fn live(&self, index: &Index, meta: &Meta, now: i64) -> Option<Life> {
        let feed = index.feeds().get(meta.feed as usize).unwrap_or(&meta::NO_FEED);
        match meta.life(feed, now) {
            live @ Life::Live(_) => Some(live),
            _ => None,
        }
    }

    /// Counts one live match for its feed and indicator.
    #[inline]
    fn record(&self, hit: &Hit<'_>, now: i64, source: Option<u64>) {
        if let Some((feed, hash)) = self.feed_hits.get(hit.meta.feed as usize) {
            feed.record(now, source);
            self.stats.record_indicator(feed, *hash, hit.kind, &hit.indicator, now, source);
        }
    }

    /// Live / expired / decayed listings per feed at `now`, with each
    /// feed's hit statistics.
    fn feed_report(&self, now: i64) -> Vec<serde_json::Value> {
        let Some(index) = &self.index else { return Vec::new() };
        let feeds = index.feeds();
        let mut counts = vec![[0u64; 3]; feeds.len()];
        for (meta, uses) in index.metas() {
            let Some(feed) = feeds.get(meta.feed as usize) else { continue };
            let slot = match meta.life(feed, now) {
                Life::Live(_) => 0,
                Life::Expired => 1,
                Life::Decayed => 2,
            };
            counts[meta.feed as usize][slot] += u64::from(uses);
        }
        feeds
            .iter()
            .zip(counts)
            .zip(&self.feed_hits)
            .map(|((feed, [live, expired, decayed]), (hits, _))| {
                let mut v = json!({
                    "feed": feed.name,
                    "live": live,
                    "expired": expired,
                    "decayed": decayed,
                });
                if feed.half_life_s > 0.0 {
                    v["half_life_s"] = json!(feed.half_life_s);
                    v["decay_floor"] = json!(feed.floor);
                }
                if let serde_json::Value::Object(h) = json!(hits.report()) {
                    v.as_object_mut().expect("an object").extend(h.into_iter().filter(|(k, _)| k != "feed"));
                }
                v
            })
            .collect()
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
        // One clock read per batch: expiry and decay are judged against it.
        let now = unix_now();
        let events = &mut *batch.events;
        for i in 0..events.len() {
            // Cold after the stages before: start the loads of one ahead
            // (measured: 40 -> 34 ns/event on random flows).
            if let Some(ahead) = events.get(i + 4) {
                ahead.prefetch();
            }
            let event = &mut events[i];
            let mut out = Matches::default();
            let src = event.src_ip;
            let mut on_hit = |hit: Hit<'_>, field: &str, value: Value<'_>| {
                if let Some(Life::Live(confidence)) = self.live(index, hit.meta, now) {
                    self.record(&hit, now, src.map(hits::source_hash));
                    out.push(&hit, field, value, confidence, self.decays(index, hit.meta));
                }
            };
            for (ip, field) in self.addresses(event.src_ip, event.dst_ip).into_iter().flatten() {
                index.for_each_ip_match(ip, |hit| on_hit(hit, field, Value::Ip(ip)));
            }
            if check_domains {
                for (id, field) in &self.domain_fields {
                    if let Some(value) = source.text(event, *id) {
                        let name = host_part(value);
                        index.for_each_domain_match(name, |hit| on_hit(hit, field, Value::Text(value)));
                    }
                }
            }
            event.set_fact(self.fact, out.count);
            if out.count > 0 {
                if let Some(c) = out.confidence {
                    event.set_fact(self.facts.confidence, u32::from(c));
                }
                if out.severity > 0 {
                    event.set_fact(self.facts.severity, u32::from(out.severity));
                }
                event.set_fact(self.facts.feeds, out.feeds.len() as u32);
            }
            let value = match out.finish(self.matched_flag) {
                None => self.empty.clone(),
                Some(text) => JsonFragment::from(text),
            };
            event.set_output(self.key, value);
        }
    }

    /// The load's status plus, computed now, live / expired / decayed
    /// indicators and hits per feed (details `feeds`, Prometheus series).
    fn status(&self) -> PluginStatus {
        let mut status = self.status.clone();
        let feeds = self.feed_report(unix_now());
        for f in &feeds {
            let feed = f["feed"].as_str().unwrap_or_default().to_string();
            for state in ["live", "expired", "decayed"] {
                status.series.push(StatusSeries {
                    name: "indicators",
                    help: "Threat-intel indicators by feed and state (live, expired, decayed).",
                    counter: false,
                    labels: vec![("feed", feed.clone()), ("state", state.to_string())],
                    value: f[state].as_f64().unwrap_or(0.0),
                });
            }
            status.series.push(StatusSeries {
                name: "indicator_hits",
                help: "Threat-intel matches by feed (since the server started).",
                counter: true,
                labels: vec![("feed", feed.clone())],
                value: f["hits"].as_f64().unwrap_or(0.0),
            });
            if let Some(last) = f["last_hit"].as_str().and_then(meta::parse_time) {
                status.series.push(StatusSeries {
                    name: "indicator_last_hit_timestamp_seconds",
                    help: "Unix time of each feed's latest match.",
                    counter: false,
                    labels: vec![("feed", feed)],
                    value: last as f64,
                });
            }
        }
        status.tables.push(feed_table(&feeds));
        if let Some(details) = status.details.as_object_mut() {
            details.insert("feeds".into(), feeds.into());
            details.insert("untracked_indicator_hits".into(), self.stats.untracked().into());
        }
        status
    }

    /// `indicators/hits?feed=NAME&top=N`: per feed (live counts and hits)
    /// and the `top` most hit indicators (default 20, at most 1000).
    fn view(&self, view: &str, query: &str) -> Option<Result<serde_json::Value, String>> {
        if view != HITS_VIEW {
            return None;
        }
        Some(admin::hits_query(query).map(|(feed, top)| {
            let mut feeds = self.feed_report(unix_now());
            if let Some(f) = &feed {
                feeds.retain(|v| v["feed"] == f.as_str());
            }
            json!({
                "feeds": feeds,
                "indicators": self.stats.top(feed.as_deref(), top),
                "untracked_indicator_hits": self.stats.untracked(),
            })
        }))
    }

    fn watch_paths(&self) -> Vec<PathBuf> {
        self.watched.clone()
    }

    /// Holds back a generation in which a file read now and live became
    /// empty (without a `#` comment declaring it), lost more than
    /// `max_shrink` of its indicators, or could not be read. The last
    /// matters when the stage is already degraded (another file missing):
    /// the engine's health check sees no change then, and the unreadable
    /// file's live indicators would silently go. New and removed files are
    /// not judged here; the API store is never held back (its deletions
    /// are deliberate).
    fn vet_successor(&self, next: &PluginStatus) -> Result<(), String> {
        let files = next.details.get("files").and_then(serde_json::Value::as_array);
        let mut held = Vec::new();
        for file in files.into_iter().flatten() {
            let Some(path) = file["path"].as_str() else { continue };
            if file["format"] == "api" {
                continue;
            }
            let Some(&(_, before)) = self.counts.iter().find(|(p, _)| p == path) else { continue };
            let source = file["source"].as_str().unwrap_or(path);
            if let Some(error) = file.get("error") {
                if before > 0 {
                    let error = error.as_str().map_or_else(|| error.to_string(), str::to_string);
                    held.push(format!(
                        "{source} could not be read ({error}) where the live one has {before} indicators"
                    ));
                }
                continue;
            }
            let now =
                [&file["indicators"], &file["duplicates"]].iter().filter_map(|v| v.as_u64()).sum::<u64>() as usize;
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
            let now = unix_now();
            // The same verdict as an event now gets; a lookup is not a hit.
            let mut on_hit = |hit: Hit<'_>, field: &str, value: Value<'_>| {
                if let Some(Life::Live(confidence)) = self.live(index, hit.meta, now) {
                    m.push(&hit, field, value, confidence, self.decays(index, hit.meta));
                }
            };
            match target {
                LookupTarget::Ip(ip) => index.for_each_ip_match(ip, |hit| on_hit(hit, "\"ip\"", Value::Ip(ip))),
                LookupTarget::Domain(name) => {
                    index.for_each_domain_match(name, |hit| on_hit(hit, "\"domain\"", Value::Text(name)))
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
    /// What the hot path needs of its metadata (shared with the tail).
    pub meta: &'a Meta,
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

/// Unix seconds now.
fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn json_string(s: &str) -> Box<str> {
    let mut out = String::new();
    push_json_str(&mut out, s);
    out.into()
}
