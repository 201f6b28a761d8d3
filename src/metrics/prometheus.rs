//! `GET /metrics`: the Prometheus text exposition (format 0.0.4), encoded
//! by `prometheus-client`, the Prometheus project's own Rust client.
//!
//! Values are not kept in the crate's metric types: those would add a
//! second set of counters on the ingest path (its histogram takes a lock
//! per observation). Each scrape renders one [`Reading`] through a custom
//! collector instead, the same reading the JSON document is made from, so
//! the two always agree. Counter names get `_total` from the encoder.

use enrichd_engine::{StageReport, EVENT_DURATION_BOUNDS_NS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::Value as Json;

use super::aggregate::Reading;
use super::latency::Buckets;
use super::process::ProcessReading;
use super::{Metrics, RouteGroup, STATUS_CLASSES};

pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What the exposition needs beyond the metrics themselves.
pub(crate) struct Context<'a> {
    pub stages: &'a [StageReport],
    /// Each output's delivery counters.
    pub outputs: &'a [OutputReading],
    /// Each source's counters.
    pub sources: &'a [SourceReading],
    /// Each `[[update]]` entry's counters.
    pub updates: &'a [UpdateReading],
    /// Where each stage's loaded files came from.
    pub origins: &'a [OriginReading],
    /// `enrichd_build_info` labels.
    pub build: &'a [(&'static str, String)],
    /// Requests refused by a rate limit, by what limited them.
    pub rate_limited: [(&'static str, u64); 2],
}

/// One output's numbers, read by the caller from the delivery runtime.
#[derive(Debug, Default)]
pub(crate) struct OutputReading {
    pub name: String,
    pub enabled: bool,
    pub queued: u64,
    pub sent: u64,
    pub duplicates: u64,
    pub failed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub refused: u64,
    pub lost: Vec<(&'static str, u64)>,
    pub backlog_events: u64,
    pub backlog_bytes: u64,
    pub oldest_age_seconds: f64,
    pub deadletter_events: u64,
    pub deadletter_bytes: u64,
    pub batch_seconds_sum: f64,
    pub batches: u64,
    /// Cumulative (upper bound in seconds, count).
    pub batch_buckets: Vec<(f64, u64)>,
}

/// One source's numbers, read by the caller from the running sources.
#[derive(Debug, Default)]
pub(crate) struct SourceReading {
    pub name: String,
    pub enabled: bool,
    pub running: bool,
    /// The broker answers, as the source sees it now.
    pub connected: bool,
    /// Messages waiting in the broker for the source (`None`: not known).
    pub backlog: Option<u64>,
    pub messages: u64,
    pub events: u64,
    pub acked: u64,
    pub termed: u64,
    pub nacked: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
    /// Messages lost, by reason.
    pub lost: Vec<(&'static str, u64)>,
}

/// One `[[update]]` entry's numbers, read by the caller from the updaters.
#[derive(Debug, Default)]
pub(crate) struct UpdateReading {
    pub name: String,
    pub checks: u64,
    pub changes: u64,
    pub failures: u64,
    /// Unix seconds of the last check that did not fail (0: none).
    pub last_success: u64,
    /// The last check did not fail.
    pub healthy: bool,
}

/// Where one file a stage serves came from (`telemetry_enricher_content_info`).
#[derive(Debug, Default)]
pub(crate) struct OriginReading {
    pub stage: String,
    /// `update` or `file`.
    pub from: String,
    /// The `[[update]]` entry (empty for `file`).
    pub update: String,
    /// The updater's revision (empty for `file`).
    pub revision: String,
}

/// A per-output (per-source) family: name, help, and how to read it.
type Column<R, T> = (&'static str, &'static str, fn(&R) -> T);

#[derive(Debug)]
enum Sample {
    Counter(u64),
    CounterF(f64),
    Gauge(f64),
    Histogram { sum: f64, count: u64, buckets: Vec<(f64, u64)> },
    Info,
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
struct Family {
    /// Owned for the plugins' series (`telemetry_enricher_<name>`).
    name: std::borrow::Cow<'static, str>,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, Sample)>,
}

/// A fixed set of families rendered once.
#[derive(Debug, Default)]
struct Exposition(Vec<Family>);

impl Exposition {
    fn add(&mut self, name: &'static str, help: &'static str, kind: MetricType, samples: Vec<(Labels, Sample)>) {
        self.0.push(Family { name: name.into(), help, kind, samples });
    }
    fn counter(&mut self, name: &'static str, help: &'static str, v: u64) {
        self.add(name, help, MetricType::Counter, vec![(vec![], Sample::Counter(v))]);
    }
    fn gauge(&mut self, name: &'static str, help: &'static str, v: f64) {
        self.add(name, help, MetricType::Gauge, vec![(vec![], Sample::Gauge(v))]);
    }
}

fn encode_sample(enc: &mut MetricEncoder<'_>, sample: &Sample, labels: &Labels) -> Result<(), std::fmt::Error> {
    let no_exemplar: Option<&Exemplar<NoLabelSet, f64>> = None;
    match sample {
        Sample::Counter(v) => enc.encode_counter(v, no_exemplar),
        Sample::CounterF(v) => enc.encode_counter(v, no_exemplar),
        Sample::Gauge(v) => enc.encode_gauge(v),
        Sample::Histogram { sum, count, buckets } => enc.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None),
        Sample::Info => enc.encode_info(labels),
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for family in &self.0 {
            let mut enc = encoder.encode_descriptor(&family.name, family.help, None, family.kind)?;
            match family.samples.as_slice() {
                // Unlabelled, or an info metric (whose labels are its value).
                [(labels, sample)] if labels.is_empty() || matches!(sample, Sample::Info) => {
                    encode_sample(&mut enc, sample, labels)?
                }
                samples => {
                    for (labels, sample) in samples {
                        encode_sample(&mut enc.encode_family(labels)?, sample, labels)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn seconds_histogram(b: &Buckets) -> Sample {
    Sample::Histogram { sum: b.sum_ms / 1000.0, count: b.count, buckets: b.per_bucket_seconds() }
}

/// The client libraries' standard process families (unprefixed on
/// purpose: shared dashboards and alerts query these names).
fn process_families(x: &mut Exposition, p: &ProcessReading) {
    let gauges: [(&'static str, &'static str, Option<f64>); 6] = [
        ("process_resident_memory_bytes", "Resident memory size in bytes.", p.resident_bytes.map(|v| v as f64)),
        ("process_virtual_memory_bytes", "Virtual memory size in bytes.", p.virtual_bytes.map(|v| v as f64)),
        (
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds.",
            p.start_time_seconds,
        ),
        ("process_open_fds", "Number of open file descriptors.", p.open_fds.map(|v| v as f64)),
        ("process_max_fds", "Maximum number of open file descriptors.", p.max_fds.map(|v| v as f64)),
        ("process_threads", "Number of OS threads in the process.", p.threads.map(|v| v as f64)),
    ];
    for (name, help, value) in gauges {
        if let Some(v) = value {
            x.gauge(name, help, v);
        }
    }
    if let Some(cpu) = p.cpu_seconds {
        x.add(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            MetricType::Counter,
            vec![(vec![], Sample::CounterF(cpu))],
        );
    }
}

/// Sum of an enricher's error counters in its details (`errors` as a
/// number or as counts by kind), 0 when it reports none.
fn stage_errors(details: &Json) -> u64 {
    match details.get("errors") {
        Some(Json::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Json::Object(kinds)) => kinds.values().filter_map(Json::as_u64).sum(),
        _ => 0,
    }
}

pub(crate) fn render(m: &Metrics, r: &Reading, ctx: &Context<'_>) -> String {
    let mut x = Exposition::default();
    let t = &r.totals;
    x.counter("telemetry_ingest", "Events enriched.", t.events);
    x.counter("telemetry_batches", "Batches enriched.", t.batches);
    x.counter("telemetry_batches_rejected", "Ingest requests refused whole (4xx).", m.batches_rejected());
    x.counter("telemetry_threat_matches", "Threat-intel indicator matches.", t.threats);
    x.counter("telemetry_events_with_threats", "Events with at least one indicator match.", r.events_with_threats);
    x.add(
        "telemetry_risk_score",
        "Risk scores (0-100) of scored events.",
        MetricType::Histogram,
        vec![(
            vec![],
            Sample::Histogram { sum: t.risk_sum as f64, count: t.risk_count, buckets: r.risk_buckets.clone() },
        )],
    );
    x.add(
        "telemetry_queue_lag_seconds",
        "Time from a batch's arrival to its enrichment done.",
        MetricType::Histogram,
        vec![(vec![], seconds_histogram(&r.lag_buckets))],
    );
    let (batches, records) = m.in_flight();
    x.gauge("telemetry_queue_depth", "Batches waiting for or in enrichment.", batches as f64);
    x.gauge("telemetry_records_queued", "Records of the batches in enrichment.", records as f64);
    x.gauge(
        "telemetry_sources_active",
        "Distinct source addresses in the last 5 minutes (HyperLogLog).",
        r.sources_active as f64,
    );
    x.gauge(
        "telemetry_sources_unique",
        "Distinct source addresses since start (HyperLogLog).",
        r.unique_sources as f64,
    );
    let req = &m.requests;
    x.add(
        "telemetry_requests",
        "HTTP requests answered, by route group (ingest, metrics, health, outputs, api, dashboard, other) and \
         status class.",
        MetricType::Counter,
        RouteGroup::ALL
            .iter()
            .flat_map(|&group| {
                STATUS_CLASSES.iter().enumerate().map(move |(class, label)| {
                    (
                        vec![("route", group.label().to_string()), ("status_class", label.to_string())],
                        Sample::Counter(req.count(group, class)),
                    )
                })
            })
            .collect(),
    );
    x.add(
        "telemetry_rate_limited",
        "HTTP requests refused with 429 by a rate limit, by what limited them (key or address).",
        MetricType::Counter,
        ctx.rate_limited.iter().map(|(by, n)| (vec![("by", by.to_string())], Sample::Counter(*n))).collect(),
    );
    x.add(
        "telemetry_processing_duration_seconds",
        "Time to parse, enrich and encode one batch.",
        MetricType::Histogram,
        vec![(vec![], seconds_histogram(&r.processing_buckets))],
    );
    x.gauge("telemetry_uptime_seconds", "Seconds since the server started.", r.uptime_s);

    let per_stage = |f: &dyn Fn(&StageReport) -> Sample| -> Vec<(Labels, Sample)> {
        ctx.stages.iter().map(|s| (vec![("enricher", s.name.clone())], f(s))).collect()
    };
    x.add(
        "telemetry_enricher_events",
        "Events through each enricher.",
        MetricType::Counter,
        per_stage(&|s| Sample::Counter(s.events)),
    );
    x.add(
        "telemetry_enricher_batches",
        "Batches through each enricher.",
        MetricType::Counter,
        per_stage(&|s| Sample::Counter(s.batches)),
    );
    x.add(
        "telemetry_enricher_event_duration_seconds",
        "Time each enricher spent per event (each event counted at its batch's mean): count = events, sum = time.",
        MetricType::Histogram,
        per_stage(&|s| Sample::Histogram {
            sum: s.total_ns as f64 / 1e9,
            count: s.event_duration_buckets.iter().sum(),
            buckets: EVENT_DURATION_BOUNDS_NS
                .iter()
                .map(|ns| *ns as f64 / 1e9)
                .chain([f64::INFINITY])
                .zip(s.event_duration_buckets.iter().copied())
                .collect(),
        }),
    );
    x.add(
        "telemetry_enricher_errors",
        "Errors each enricher reported (e.g. WASM traps, timeouts).",
        MetricType::Counter,
        // A WASM stage counts its module's errors: a rollout starts again
        // from 0, the exposed counter does not.
        per_stage(&|s| {
            let raw = stage_errors(&s.status.details) as f64;
            Sample::Counter(m.monotonic.value(format!("errors/{}", s.name), raw) as u64)
        }),
    );
    x.add(
        "telemetry_enricher_data_age_seconds",
        "Age of each enricher's loaded data, from its publisher's build time, for data that says (databases).",
        MetricType::Gauge,
        ctx.stages
            .iter()
            .filter_map(|s| Some((vec![("enricher", s.name.clone())], Sample::Gauge(s.data_age_s? as f64))))
            .collect(),
    );
    // Plugins' own series (`PluginStatus::series`), one family per name
    // across stages, in order of first appearance.
    let mut families: Vec<Family> = Vec::new();
    for stage in ctx.stages {
        for s in &stage.status.series {
            let name = format!("telemetry_enricher_{}", s.name);
            let mut labels: Labels = vec![("enricher", stage.name.clone())];
            labels.extend(s.labels.iter().cloned());
            // A plugin's counters may belong to what it runs now (a
            // shadow's comparisons start again with a new shadow).
            let sample = match s.counter {
                true => Sample::CounterF(m.monotonic.value(format!("{name}{labels:?}"), s.value)),
                false => Sample::Gauge(s.value),
            };
            match families.iter_mut().find(|f| f.name == name) {
                Some(f) => f.samples.push((labels, sample)),
                None => families.push(Family {
                    name: name.into(),
                    help: s.help,
                    kind: if s.counter { MetricType::Counter } else { MetricType::Gauge },
                    samples: vec![(labels, sample)],
                }),
            }
        }
    }
    x.add(
        "telemetry_enricher_reloads",
        "Reloads swapped in for each enricher (new data, module or options).",
        MetricType::Counter,
        per_stage(&|s| Sample::Counter(s.reloads)),
    );
    x.add(
        "telemetry_enricher_reload_failures",
        "Reloads refused for each enricher (the last good version stayed live).",
        MetricType::Counter,
        per_stage(&|s| Sample::Counter(s.reload_failures)),
    );
    x.add(
        "telemetry_enricher_generation",
        "Live generation of each enricher (1 at start, +1 per reload).",
        MetricType::Gauge,
        per_stage(&|s| Sample::Gauge(s.generation as f64)),
    );
    x.add(
        "telemetry_enricher_content_info",
        "Where each file an enricher serves came from: an [[update]] entry and its revision, or the file as found (from=file).",
        MetricType::Gauge,
        // One series per distinct origin: two files found as they are (a
        // `ti` stage's two lists) have the same labels, and a label set
        // twice in one family is invalid exposition.
        ctx.origins
            .iter()
            .map(|o| (o.stage.clone(), o.from.clone(), o.update.clone(), o.revision.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|(stage, from, update, revision)| {
                let labels = vec![("enricher", stage), ("from", from), ("update", update), ("revision", revision)];
                (labels, Sample::Gauge(1.0))
            })
            .collect(),
    );
    x.add(
        "telemetry_enricher_up",
        "1 when the enricher is loaded and working.",
        MetricType::Gauge,
        per_stage(&|s| Sample::Gauge(f64::from(u8::from(s.status.state == enrichd_engine::PluginState::Loaded)))),
    );
    // A plugin's series never shadows a built-in family (a second
    // HELP/TYPE for one name is invalid exposition).
    families.retain(|f| !x.0.iter().any(|built_in| built_in.name == f.name));
    x.0.extend(families);

    let per_output = |f: &dyn Fn(&OutputReading) -> Sample| -> Vec<(Labels, Sample)> {
        ctx.outputs.iter().map(|o| (vec![("output", o.name.clone())], f(o))).collect()
    };
    let counters: [Column<OutputReading, u64>; 7] = [
        ("telemetry_output_queued", "Events accepted for each output (appended to its spool or queue).", |o| o.queued),
        ("telemetry_output_sent", "Events each output delivered.", |o| o.sent),
        ("telemetry_output_duplicates", "Of the events sent, those the destination already had (deduplicated).", |o| {
            o.duplicates
        }),
        ("telemetry_output_failed", "Event attempts that did not deliver (retried or dead-lettered).", |o| o.failed),
        ("telemetry_output_retried", "Events sent again after a failed attempt.", |o| o.retried),
        ("telemetry_output_dead_lettered", "Events written to each output's dead-letter.", |o| o.dead_lettered),
        ("telemetry_output_refused", "Events refused at ingest (503) because the output's backlog was full.", |o| {
            o.refused
        }),
    ];
    for (name, help, read) in counters {
        x.add(name, help, MetricType::Counter, per_output(&|o| Sample::Counter(read(o))));
    }
    x.add(
        "telemetry_output_lost",
        "Accepted events neither delivered nor dead-lettered, by reason.",
        MetricType::Counter,
        ctx.outputs
            .iter()
            .flat_map(|o| {
                o.lost.iter().map(|(reason, n)| {
                    (vec![("output", o.name.clone()), ("reason", reason.to_string())], Sample::Counter(*n))
                })
            })
            .collect(),
    );
    let gauges: [Column<OutputReading, f64>; 6] = [
        ("telemetry_output_backlog", "Events waiting in each output's spool or queue.", |o| o.backlog_events as f64),
        ("telemetry_output_backlog_bytes", "Bytes waiting in each output's spool or queue.", |o| {
            o.backlog_bytes as f64
        }),
        ("telemetry_output_oldest_undelivered_age_seconds", "Age of the oldest event waiting in each output.", |o| {
            o.oldest_age_seconds
        }),
        ("telemetry_output_deadletter_events", "Events held in each output's dead-letter.", |o| {
            o.deadletter_events as f64
        }),
        ("telemetry_output_deadletter_bytes", "Bytes held in each output's dead-letter.", |o| {
            o.deadletter_bytes as f64
        }),
        ("telemetry_output_enabled", "1 when the output is enabled.", |o| f64::from(u8::from(o.enabled))),
    ];
    for (name, help, read) in gauges {
        x.add(name, help, MetricType::Gauge, per_output(&|o| Sample::Gauge(read(o))));
    }
    x.add(
        "telemetry_output_batch_duration_seconds",
        "Time of each request to the destination.",
        MetricType::Histogram,
        per_output(&|o| Sample::Histogram {
            sum: o.batch_seconds_sum,
            count: o.batches,
            buckets: o.batch_buckets.clone(),
        }),
    );
    let per_source = |f: &dyn Fn(&SourceReading) -> Sample| -> Vec<(Labels, Sample)> {
        ctx.sources.iter().map(|s| (vec![("source", s.name.clone())], f(s))).collect()
    };
    let source_counters: [Column<SourceReading, u64>; 7] = [
        ("telemetry_source_messages", "Messages each source took from its broker (redeliveries included).", |s| {
            s.messages
        }),
        ("telemetry_source_events", "Events in the messages each source had accepted.", |s| s.events),
        ("telemetry_source_acked", "Messages acknowledged after their events were accepted by every output.", |s| {
            s.acked
        }),
        ("telemetry_source_termed", "Messages settled for good as bad input (never redelivered).", |s| s.termed),
        ("telemetry_source_nacked", "Messages given back for a later attempt (backpressure, outages).", |s| s.nacked),
        ("telemetry_source_redelivered", "Messages the broker delivered more than once.", |s| s.redelivered),
        ("telemetry_source_dead_lettered", "Messages written to each source's dead-letter.", |s| s.dead_lettered),
    ];
    for (name, help, read) in source_counters {
        x.add(name, help, MetricType::Counter, per_source(&|s| Sample::Counter(read(s))));
    }
    x.add(
        "telemetry_source_lost",
        "Bad-input messages settled without a dead-letter record, by reason (the write failed; evicted by the bound; larger than the whole bound).",
        MetricType::Counter,
        ctx.sources
            .iter()
            .flat_map(|s| {
                s.lost.iter().map(|(reason, n)| {
                    (vec![("source", s.name.clone()), ("reason", (*reason).to_string())], Sample::Counter(*n))
                })
            })
            .collect(),
    );
    x.add(
        "telemetry_source_running",
        "1 when the source's consumer task runs.",
        MetricType::Gauge,
        per_source(&|s| Sample::Gauge(f64::from(u8::from(s.running)))),
    );
    x.add(
        "telemetry_source_enabled",
        "1 when the source is enabled.",
        MetricType::Gauge,
        per_source(&|s| Sample::Gauge(f64::from(u8::from(s.enabled)))),
    );
    x.add(
        "telemetry_source_connected",
        "1 when the source's broker answers (connected, fetching); 0 during an outage.",
        MetricType::Gauge,
        per_source(&|s| Sample::Gauge(f64::from(u8::from(s.connected)))),
    );
    x.add(
        "telemetry_source_backlog_messages",
        "Messages waiting in the broker for each source (a stream consumer's pending count, the lag of a Kafka \
         member's partitions), as the broker last said; absent while not known.",
        MetricType::Gauge,
        ctx.sources
            .iter()
            .filter_map(|s| Some((vec![("source", s.name.clone())], Sample::Gauge(s.backlog? as f64))))
            .collect(),
    );
    let per_update = |f: &dyn Fn(&UpdateReading) -> Sample| -> Vec<(Labels, Sample)> {
        ctx.updates.iter().map(|u| (vec![("updater", u.name.clone())], f(u))).collect()
    };
    x.add(
        "telemetry_update_checks",
        "Checks each updater made.",
        MetricType::Counter,
        per_update(&|u| Sample::Counter(u.checks)),
    );
    x.add(
        "telemetry_update_changes",
        "New files each updater swapped in.",
        MetricType::Counter,
        per_update(&|u| Sample::Counter(u.changes)),
    );
    x.add(
        "telemetry_update_failures",
        "Checks that failed (the current file stayed).",
        MetricType::Counter,
        per_update(&|u| Sample::Counter(u.failures)),
    );
    x.add(
        "telemetry_update_last_success_timestamp_seconds",
        "Unix time of each updater's last check that did not fail (0: none yet).",
        MetricType::Gauge,
        per_update(&|u| Sample::Gauge(u.last_success as f64)),
    );
    x.add(
        "telemetry_update_healthy",
        "1 unless each updater's last check failed.",
        MetricType::Gauge,
        per_update(&|u| Sample::Gauge(f64::from(u8::from(u.healthy)))),
    );
    x.add("enrichd_build", "Build of this enrichd.", MetricType::Info, vec![(ctx.build.to_vec(), Sample::Info)]);
    process_families(&mut x, &super::process::read());

    let mut registry = Registry::default();
    registry.register_collector(Box::new(x));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_counts_are_read_from_details() {
        assert_eq!(stage_errors(&json!({"errors": {"trap": 2, "timeout": 1}})), 3);
        assert_eq!(stage_errors(&json!({"errors": 4})), 4);
        assert_eq!(stage_errors(&json!(null)), 0);
    }
}
