//! The runtime against a scripted sink: partial failures, outages,
//! rejections, bounds, shutdown and restart. Books must balance in each.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enrichd_engine::component::Component;
use enrichd_engine::output::{
    BoxFuture, FieldError, OutEvent, Outcome, OutputContext, OutputFamily, SendReport, Sink, SinkBatch,
};
use enrichd_engine::{Profiles, Registry};
use serde_json::{json, Map, Value};

use super::*;

mod reconfigure;
mod replay;
mod state;

/// What the scripted sink does with an event on a given attempt.
type Script = dyn Fn(&[u8], u32) -> Outcome + Send + Sync;

/// An event as the sink got it, and its origin (input key, index).
type Seen = (Vec<u8>, Option<(String, u32)>);

#[derive(Default)]
struct Shared {
    delivered: Mutex<Vec<Vec<u8>>>,
    /// Every event handed to the sink, with its origin.
    seen: Mutex<Vec<Seen>>,
    calls: AtomicU32,
    /// Run by every build (while a change is being applied).
    on_build: Mutex<Option<Hook>>,
}

type Hook = Box<dyn Fn() + Send + Sync>;

struct ScriptSink {
    script: Arc<Script>,
    shared: Arc<Shared>,
}

impl Sink for ScriptSink {
    fn send<'a>(&'a self, batch: SinkBatch<'a>) -> BoxFuture<'a, SendReport> {
        Box::pin(async move {
            let call = self.shared.calls.fetch_add(1, Relaxed);
            let outcomes: Vec<Outcome> =
                batch.events.iter().map(|e: &OutEvent<'_>| (self.script)(e.json, call)).collect();
            // A destination that never answers.
            if outcomes.iter().any(|o| matches!(o, Outcome::Retry(r) if r == "hang")) {
                std::future::pending::<()>().await;
            }
            let origins =
                batch.events.iter().map(|e| (e.json.to_vec(), e.origin.map(|o| (o.key.to_string(), o.index))));
            self.shared.seen.lock().unwrap().extend(origins);
            let mut delivered = self.shared.delivered.lock().unwrap();
            for (e, o) in batch.events.iter().zip(&outcomes) {
                if *o == Outcome::Delivered {
                    delivered.push(e.json.to_vec());
                }
            }
            // A request that did not get through has no status; otherwise
            // the destination answered per event (like `_bulk`).
            let unreachable =
                outcomes.iter().any(|o| matches!(o, Outcome::Retry(r) if r == "down" || r == "connection refused"));
            SendReport { outcomes, http_status: if unreachable { None } else { Some(200) } }
        })
    }
}

#[derive(serde::Deserialize, schemars::JsonSchema, Default)]
#[serde(deny_unknown_fields, default)]
struct ScriptOptions {
    secret: Option<String>,
    /// The build fails, naming the secret (as a client library's error
    /// might).
    fail: bool,
    /// The build reports a client error naming the secret (as a client
    /// library's thread might, between sends).
    client_error: bool,
}

struct ScriptOutput {
    script: Arc<Script>,
    shared: Arc<Shared>,
}

impl Component for ScriptOutput {
    type Family = OutputFamily;
    type Options = ScriptOptions;
    fn kind(&self) -> &'static str {
        "script"
    }
    fn description(&self) -> &'static str {
        "test sink"
    }
    fn secret_fields(&self) -> &'static [&'static str] {
        &["secret"]
    }
    fn validate(&self, _: &ScriptOptions) -> Vec<FieldError> {
        Vec::new()
    }
    fn build(&self, options: ScriptOptions, ctx: &OutputContext) -> anyhow::Result<Arc<dyn Sink>> {
        if let Some(hook) = self.shared.on_build.lock().unwrap().as_ref() {
            hook();
        }
        if options.client_error {
            ctx.errors
                .report(format!("client: broker down, credentials {:?}", options.secret.clone().unwrap_or_default()));
        }
        if options.fail {
            anyhow::bail!("could not log in with {:?}", options.secret.unwrap_or_default());
        }
        Ok(Arc::new(ScriptSink { script: self.script.clone(), shared: self.shared.clone() }))
    }
}

struct Fixture {
    delivery: Delivery,
    registry: Registry,
    shared: Arc<Shared>,
}

fn fixture(dir: &std::path::Path, script: impl Fn(&[u8], u32) -> Outcome + Send + Sync + 'static) -> Fixture {
    let shared = Arc::new(Shared::default());
    let mut registry = Registry::new();
    registry.register_output(Box::new(ScriptOutput { script: Arc::new(script), shared: shared.clone() }));
    let delivery = Delivery::new(dir, dir);
    Fixture { delivery, registry, shared }
}

fn entry(extra: Value) -> Map<String, Value> {
    let mut base = json!({"type": "script", "flush_interval_ms": 5, "backoff_initial_ms": 1, "backoff_max_ms": 5});
    base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    base.as_object().unwrap().clone()
}

impl Fixture {
    async fn apply(&self, entries: Vec<Map<String, Value>>) -> anyhow::Result<()> {
        let desired = entries
            .into_iter()
            .map(|e| Desired { spec: OutputSpec::check(&self.registry, &e, None).unwrap(), source: Source::Config })
            .collect();
        self.delivery.apply(&self.registry, desired, &(Profiles::embedded(), None)).await
    }

    /// Submits `n` events `{"n": i}` (one batch) to every active output.
    fn submit(&self, from: usize, n: usize) -> Result<Admitted, Refused> {
        let payload: String = (from..from + n).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let active = self.delivery.active();
        // With its line ends recorded, as ingest hands it over (entries
        // without them, read back from a spool file or replayed from the
        // dead-letter, are split by searching: the restart and replay
        // tests take that path).
        let line_ends: Vec<usize> = payload.match_indices('\n').map(|(at, _)| at).collect();
        let payload = Payload { bytes: bytes::Bytes::from(payload), line_ends: Some(line_ends.into()) };
        let payloads: Vec<Payload> = active.iter().map(|_| payload.clone()).collect();
        submit(active, &payloads, n as u32, None)
    }

    async fn settle(&self, name: &str, expected: u64) -> Arc<Lane> {
        let lane = self.delivery.lane_named(name).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = &lane.stats;
            let done = s.sent.load(Relaxed) + s.dead_lettered.load(Relaxed);
            // Settled and acknowledged.
            if (done >= expected && lane.backlog.stats().events == 0) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lane
    }
}

fn number(event: &[u8]) -> u64 {
    serde_json::from_slice::<Value>(event).unwrap()["n"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failures_are_retried_and_rejections_dead_lettered() {
    let tmp = tempfile::tempdir().unwrap();
    // Every 3rd event is throttled on the first two calls; every 10th is
    // refused for good; the rest go through.
    let f = fixture(tmp.path(), |event, call| {
        let n = number(event);
        if n % 10 == 7 {
            Outcome::Reject(format!("mapping error on {n}"))
        } else if n.is_multiple_of(3) && call < 2 {
            Outcome::Retry("429 too many requests".into())
        } else {
            Outcome::Delivered
        }
    });
    f.apply(vec![entry(json!({"durability": "memory", "batch_max": 50}))]).await.unwrap();
    for b in 0..4 {
        f.submit(b * 100, 100).unwrap_or_else(|r| panic!("{r:?}"));
    }
    let lane = f.settle("script", 400).await;
    let s = &lane.stats;
    assert_eq!(s.queued.load(Relaxed), 400);
    assert_eq!(s.dead_lettered.load(Relaxed), 40);
    assert_eq!(s.sent.load(Relaxed), 360);
    assert!(s.retried.load(Relaxed) > 0);
    assert_eq!(s.lost_total(), 0);
    let mut delivered: Vec<u64> = f.shared.delivered.lock().unwrap().iter().map(|e| number(e)).collect();
    delivered.sort_unstable();
    delivered.dedup();
    assert_eq!(delivered.len(), 360, "each delivered once");
    let (total, records) = lane.deadletter.list(0, 100).unwrap();
    assert_eq!(total, 40);
    assert!(records[0]["error"].as_str().unwrap().starts_with("mapping error"), "{}", records[0]);
    assert_eq!(records[0]["event"]["n"].as_u64().unwrap() % 10, 7);
    assert_eq!(lane.backlog.stats().events, 0, "acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_destination_is_waited_for_not_dead_lettered() {
    let tmp = tempfile::tempdir().unwrap();
    // Every event refused on the first 12 calls (more than max_retries).
    let f =
        fixture(
            tmp.path(),
            |_, call| {
                if call < 12 {
                    Outcome::Retry("connection refused".into())
                } else {
                    Outcome::Delivered
                }
            },
        );
    f.apply(vec![entry(json!({"durability": "memory", "max_retries": 2}))]).await.unwrap();
    f.submit(0, 30).unwrap();
    let lane = f.settle("script", 30).await;
    assert_eq!(lane.stats.sent.load(Relaxed), 30);
    assert_eq!(lane.stats.dead_lettered.load(Relaxed), 0);
    assert!(f.shared.calls.load(Relaxed) >= 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_refused_again_and_again_is_dead_lettered_after_max_retries() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path(), |event, _| {
        if number(event) == 5 {
            Outcome::Retry("item 429 for sk-SECRET-value".into())
        } else {
            Outcome::Delivered
        }
    });
    f.apply(vec![entry(json!({"durability": "memory", "max_retries": 3, "secret": "sk-SECRET-value"}))]).await.unwrap();
    f.submit(0, 10).unwrap();
    let lane = f.settle("script", 10).await;
    assert_eq!(lane.stats.sent.load(Relaxed), 9);
    assert_eq!(lane.stats.dead_lettered.load(Relaxed), 1);
    let (_, records) = lane.deadletter.list(0, 10).unwrap();
    let error = records[0]["error"].as_str().unwrap();
    assert!(error.starts_with("gave up after 4 attempts"), "{error}");
    assert!(!error.contains("sk-SECRET-value"), "secret masked: {error}");
    assert_eq!(records[0]["attempts"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_output_refuses_the_batch_for_every_output() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path(), |_, _| Outcome::Retry("down".into()));
    f.apply(vec![
        entry(json!({"name": "roomy", "durability": "memory"})),
        entry(json!({"name": "tight", "durability": "memory", "queue_max_events": 150})),
    ])
    .await
    .unwrap();
    f.submit(0, 100).unwrap();
    let Err(refused) = f.submit(100, 100) else { panic!("admitted past the bound") };
    assert_eq!(refused.output, "tight");
    let roomy = f.delivery.lane_named("roomy").unwrap();
    assert_eq!(roomy.stats.queued.load(Relaxed), 100, "nothing of the refused batch queued anywhere");
    assert_eq!(roomy.backlog.stats().events, 100);
    assert_eq!(f.delivery.lane_named("tight").unwrap().stats.refused.load(Relaxed), 100);
}

/// An append that fails after another output took the batch: the refusal
/// says so (a resend reaches that output twice), instead of the "nothing
/// was queued" of a full backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_names_the_outputs_that_took_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path(), |_, _| Outcome::Retry("down".into()));
    f.apply(vec![
        entry(json!({"name": "mem", "durability": "memory"})),
        entry(json!({"name": "disk", "durability": "spool"})),
    ])
    .await
    .unwrap();
    let payload = Payload { bytes: bytes::Bytes::from_static(b"{\"n\":1}\n"), line_ends: None };
    let active = f.delivery.active();
    let payloads: Vec<Payload> = active.iter().map(|_| payload.clone()).collect();
    // An origin key over the spool's 64 KiB: only the spool refuses it.
    let origin = "o".repeat(70 << 10);
    let Err(refused) = submit(active, &payloads, 1, Some(&origin)) else { panic!("admitted") };
    assert_eq!((refused.code, refused.output.as_str()), ("output_unavailable", "disk"));
    assert_eq!(refused.queued_for, ["mem"]);
    assert!(refused.message.contains("queued for [\"mem\"]"), "{}", refused.message);
    assert_eq!(f.delivery.lane_named("mem").unwrap().backlog.stats().events, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_survives_a_restart_and_memory_queues_are_dead_lettered_at_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let both = vec![
        entry(json!({"name": "disk", "durability": "spool"})),
        entry(json!({"name": "mem", "durability": "memory"})),
    ];
    {
        let f = fixture(tmp.path(), |_, _| Outcome::Retry("down".into()));
        f.apply(both.clone()).await.unwrap();
        f.submit(0, 25).unwrap();
        f.delivery.shutdown(Instant::now() + Duration::from_millis(50)).await;
        let mem = f.delivery.lane_named("mem").unwrap();
        assert_eq!(mem.stats.dead_lettered.load(Relaxed), 25);
        assert_eq!(
            mem.deadletter.list(0, 1).unwrap().1[0]["error"],
            "shutdown: not delivered before the flush deadline"
        );
    }
    let f = fixture(tmp.path(), |_, _| Outcome::Delivered);
    f.apply(both).await.unwrap();
    let disk = f.settle("disk", 25).await;
    let mut got: Vec<u64> = f.shared.delivered.lock().unwrap().iter().map(|e| number(e)).collect();
    got.sort_unstable();
    assert_eq!(got, (0..25).collect::<Vec<_>>(), "the spool's events, each once; the memory queue's are gone");
    assert_eq!(disk.backlog.stats().events, 0);
    assert_eq!(f.delivery.lane_named("mem").unwrap().deadletter.stats().events, 25, "the dead-letter persists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_output_keeps_its_backlog_and_replay_requeues_the_dead_letter() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path(), |event, call| {
        if number(event) < 3 && call < 1 {
            Outcome::Reject("bad".into())
        } else {
            Outcome::Delivered
        }
    });
    f.apply(vec![entry(json!({"durability": "memory", "enabled": false}))]).await.unwrap();
    assert!(f.delivery.active().is_empty());
    f.apply(vec![entry(json!({"durability": "memory"}))]).await.unwrap();
    f.submit(0, 10).unwrap();
    let lane = f.settle("script", 10).await;
    assert_eq!(lane.stats.dead_lettered.load(Relaxed), 3);
    assert_eq!(replay(&lane).unwrap(), 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lane.stats.sent.load(Relaxed) < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(lane.stats.sent.load(Relaxed), 10);
    assert_eq!(lane.deadletter.stats().events, 0);
    // Durability cannot change under queued events.
    let tmp2 = tempfile::tempdir().unwrap();
    let stuck = fixture(tmp2.path(), |_, _| Outcome::Retry("down".into()));
    stuck.apply(vec![entry(json!({"durability": "memory"}))]).await.unwrap();
    stuck.submit(0, 5).unwrap();
    let err = stuck.apply(vec![entry(json!({"durability": "spool"}))]).await.unwrap_err();
    assert!(err.to_string().contains("durability cannot change"), "{err}");
    assert_eq!(stuck.delivery.active().len(), 1, "keep-last-good");
}

/// `[[output]]` entries, API settings (which win by name) and the
/// `EXPORT_<NAME>_ENABLED` switches (which win over both) merge into one
/// desired set; every problem is reported with where it comes from.
#[test]
fn file_api_and_environment_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path(), |_, _| Outcome::Delivered);
    let config = vec![
        options::OutputEntry { options: entry(json!({"name": "elastic"})), line: Some(3) },
        options::OutputEntry { options: entry(json!({"name": "splunk", "batch_max": 10})), line: Some(9) },
        options::OutputEntry { options: entry(json!({"name": "bad", "batch_max": 0})), line: Some(14) },
    ];
    let stored = vec![("splunk".to_string(), entry(json!({"batch_max": 20})))];
    let env = |var: &str| match var {
        "EXPORT_ELASTIC_ENABLED" => Some("false".to_string()),
        "EXPORT_SPLUNK_ENABLED" => Some("maybe".to_string()),
        _ => None,
    };
    let (desired, problems) = super::reconcile::desired(&f.registry, &config, &stored, &env);
    let by_name = |n: &str| desired.iter().find(|d| d.spec.runtime.name == n).unwrap();
    assert!(!by_name("elastic").spec.runtime.enabled, "the switch wins");
    assert_eq!(by_name("splunk").spec.runtime.batch_max, 20, "the API wins over the file");
    assert_eq!(by_name("splunk").source, Source::Api);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("line 14") && problems[0].contains("batch_max"), "{problems:?}");
    assert!(problems[1].contains("EXPORT_SPLUNK_ENABLED"), "{problems:?}");
}

/// A spooled entry damaged on disk after start is found among the entries
/// a read covers (a read fails whole), skipped alone, and its events, not
/// one per entry, counted as lost; the intact entries around it are
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_entry_is_skipped_alone_and_counted_by_its_events() {
    let tmp = tempfile::tempdir().unwrap();
    // One round of at most 30 events at a time: entry 0 alone, then
    // entries 1-3 together.
    let out = vec![entry(json!({"name": "disk", "durability": "spool", "batch_max": 30, "max_in_flight": 1}))];
    {
        let f = fixture(tmp.path(), |_, _| Outcome::Retry("down".into()));
        f.apply(out.clone()).await.unwrap();
        for (from, n) in [(0, 30), (30, 10), (40, 10), (50, 10)] {
            f.submit(from, n).unwrap();
        }
        f.delivery.shutdown(Instant::now() + Duration::from_millis(50)).await;
    }
    // After a restart nothing is kept in memory: every read is from disk.
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let is_up = up.clone();
    let f = fixture(
        tmp.path(),
        move |_, _| {
            if is_up.load(Relaxed) {
                Outcome::Delivered
            } else {
                Outcome::Retry("down".into())
            }
        },
    );
    f.apply(out).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.shared.calls.load(Relaxed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Entry 0 is in flight (read before the damage); damage entry 2.
    let dir = tmp.path().join("spool").join("disk");
    let mut damaged = 0;
    for file in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()) {
        let mut bytes = std::fs::read(&file).unwrap();
        if let Some(at) = bytes.windows(8).position(|w| w == b"{\"n\":45}") {
            bytes[at + 5] = b'7';
            std::fs::write(&file, bytes).unwrap();
            damaged += 1;
        }
    }
    assert_eq!(damaged, 1, "event 45 is in one segment file");
    up.store(true, Relaxed);
    let lane = f.settle("disk", 50).await;
    let mut got: Vec<u64> = f.shared.delivered.lock().unwrap().iter().map(|e| number(e)).collect();
    got.sort_unstable();
    assert_eq!(got, (0..40).chain(50..60).collect::<Vec<_>>(), "every intact entry, each once");
    assert_eq!(lane.stats.view()["lost_by_reason"]["spool_corrupt"], 10, "the entry's events");
    assert_eq!(lane.backlog.stats().events, 0);
}

/// A change whose sink cannot be built is refused whole: the running
/// output keeps its bounds and the secrets its errors are masked with, and
/// the refusal shows neither secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_change_leaves_the_running_output_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path(), |_, _| Outcome::Delivered);
    let running = json!({"name": "o", "durability": "memory", "queue_max_bytes": 1_000_000, "secret": "old-s3cret"});
    f.apply(vec![entry(running)]).await.unwrap();
    let lane = f.delivery.lane_named("o").unwrap();
    let bound = lane.bounds.max_bytes();
    let refused = json!({
        "name": "o", "durability": "memory", "queue_max_bytes": 2_000_000, "secret": "new-s3cret", "fail": true,
    });
    let error = format!("{:#}", f.apply(vec![entry(refused)]).await.unwrap_err());
    assert!(error.contains("could not log in") && !error.contains("new-s3cret"), "{error}");
    assert_eq!(lane.bounds.max_bytes(), bound, "the bound of the running output");
    assert!(!lane.mask("old-s3cret").contains("old-s3cret"), "still masked with the running secret");
    f.submit(0, 3).unwrap();
    f.settle("o", 3).await;
    assert_eq!(f.shared.delivered.lock().unwrap().len(), 3, "the running sink still delivers");
}

/// A record dead-lettered raw (not JSON) may hold line breaks; replayed it
/// is still one event, one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_record_with_line_breaks_replays_as_one_event() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path(), |_, _| Outcome::Delivered);
    f.apply(vec![entry(json!({"durability": "memory"}))]).await.unwrap();
    let lane = f.delivery.lane_named("script").unwrap();
    let raw = deadletter::DeadRecord { event: b"not\njson\r\n{", error: "bad", attempts: 1, unix_ms: 1 };
    lane.deadletter.append(&[raw]).unwrap();
    assert_eq!(replay(&lane).unwrap(), 1);
    f.settle("script", 1).await;
    let delivered = f.shared.delivered.lock().unwrap().clone();
    assert_eq!(delivered, [b"not json  {".to_vec()], "one line: the breaks became spaces");
}

/// A replay the backlog has no room for is refused and leaves the
/// dead-letter exactly as it was (it is emptied only once the events are
/// queued).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_replay_leaves_the_dead_letter_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path(), |_, _| Outcome::Retry("down".into()));
    f.apply(vec![entry(json!({"durability": "memory", "queue_max_events": 5}))]).await.unwrap();
    let lane = f.delivery.lane_named("script").unwrap();
    let events: Vec<Vec<u8>> = (0..3).map(|i| format!("{{\"n\":{i}}}").into_bytes()).collect();
    let records: Vec<_> =
        events.iter().map(|e| deadletter::DeadRecord { event: e, error: "bad", attempts: 1, unix_ms: 1 }).collect();
    lane.deadletter.append(&records).unwrap();
    f.submit(10, 4).unwrap(); // the queue holds 4 of its 5 events
    let refused = replay(&lane).unwrap_err();
    assert!(refused.contains("no room"), "{refused}");
    assert_eq!(lane.deadletter.stats().events, 3, "kept, not taken and put back");
    let kept = lane.deadletter.take_all().unwrap();
    assert_eq!(kept.iter().map(|r| r.event.clone()).collect::<Vec<_>>(), events, "in order");
    assert_eq!(lane.stats.view()["lost"], 0);
}

/// A destination that never answers does not hold a shutdown past its
/// deadline: the send under way is abandoned (its events stay queued, and a
/// memory queue's go to the dead-letter as at any shutdown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_never_ends_does_not_hold_the_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path(), |_, _| Outcome::Retry("hang".into()));
    f.apply(vec![entry(json!({"durability": "memory"}))]).await.unwrap();
    f.submit(0, 5).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.shared.calls.load(Relaxed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopped =
        tokio::time::timeout(Duration::from_secs(5), f.delivery.shutdown(Instant::now() + Duration::from_millis(100)))
            .await;
    assert!(stopped.is_ok(), "the shutdown waited for the hanging send");
    let lane = f.delivery.lane_named("script").unwrap();
    assert_eq!(lane.stats.dead_lettered.load(Relaxed), 5, "the queue went to the dead-letter");
}

/// A round interrupted by a reconfiguration after part of it was
/// delivered is sent again by the next worker without the part already
/// delivered: each event reaches the destination and the counters once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_round_is_not_delivered_or_counted_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let is_up = up.clone();
    // The second half of the entry waits for the destination.
    let f = fixture(tmp.path(), move |event, _| {
        if number(event) < 5 || is_up.load(Relaxed) {
            Outcome::Delivered
        } else {
            Outcome::Retry("down".into())
        }
    });
    let first = json!({"durability": "memory", "batch_max": 5, "backoff_max_ms": 20});
    f.apply(vec![entry(first)]).await.unwrap();
    f.submit(0, 10).unwrap(); // one entry, sent in two chunks of 5
    let lane = f.delivery.lane_named("script").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (lane.stats.sent.load(Relaxed) < 5 || f.shared.calls.load(Relaxed) < 3) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A changed setting: the worker stops mid-round and a new one starts.
    let changed = json!({"durability": "memory", "batch_max": 5, "backoff_max_ms": 25});
    f.apply(vec![entry(changed)]).await.unwrap();
    up.store(true, Relaxed);
    f.settle("script", 10).await;
    let mut got: Vec<u64> = f.shared.delivered.lock().unwrap().iter().map(|e| number(e)).collect();
    got.sort_unstable();
    assert_eq!(got, (0..10).collect::<Vec<_>>(), "each event once");
    assert_eq!(lane.stats.sent.load(Relaxed), 10);
    assert!(lane.settled.snapshot().is_none(), "forgotten once acknowledged");
}
