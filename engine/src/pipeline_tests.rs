use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::*;
use crate::batch::BatchView;
use crate::config::Config;
use crate::event::KeyId;
use crate::plugin::{BuildContext, Enricher, PluginFactory, PluginState, PluginStatus};
use crate::registry::Registry;

/// Writes `"seen": true` on every event: proof the chain ran (its key is
/// declared, so records that carry `seen` take the shadowing path).
struct Mark;
struct MarkEnricher(KeyId);

impl PluginFactory for Mark {
    fn kind(&self) -> &'static str {
        "mark"
    }
    fn description(&self) -> &'static str {
        "test"
    }
    fn options_schema(&self) -> schemars::Schema {
        schemars::json_schema!({})
    }
    fn build(&self, _: &toml::Table, ctx: &mut BuildContext<'_>) -> anyhow::Result<Box<dyn Enricher>> {
        Ok(Box::new(MarkEnricher(ctx.output_key("seen"))))
    }
}

impl Enricher for MarkEnricher {
    fn enrich(&self, batch: &mut BatchView<'_>) {
        for e in batch.events.iter_mut() {
            e.set_output(self.0, "true".into());
        }
    }
    fn status(&self) -> PluginStatus {
        PluginStatus::new(PluginState::Loaded)
    }
}

/// A chain of one [`Mark`] stage (also used by the property tests).
pub(crate) fn chain() -> Chain {
    let mut registry = Registry::new();
    registry.register(Box::new(Mark));
    let config = Config::parse("[[chain]]\nplugin = \"mark\"\n", std::path::Path::new("t.toml")).unwrap();
    Chain::build(&config.chain, &registry, std::path::Path::new(".")).unwrap()
}

#[derive(Default)]
struct Watcher {
    in_flight: AtomicUsize,
    seen: Mutex<Vec<usize>>,
}

impl Observer for Watcher {
    fn entering(&self, events: usize) {
        self.in_flight.fetch_add(events, Ordering::Relaxed);
    }
    fn left(&self, events: usize) {
        self.in_flight.fetch_sub(events, Ordering::Relaxed);
    }
    fn observe(&self, _: &Chain, batch: &Batch, timing: Timing) {
        assert_eq!(self.in_flight.load(Ordering::Relaxed), batch.len(), "observed while in the chain");
        assert!(timing.lag >= timing.processing);
        self.seen.lock().unwrap().push(batch.len());
    }
}

fn ndjson(text: &str) -> Input {
    Input::Ndjson { text: text.into(), format: Format::FlowsV1, first_index: 1 }
}

#[test]
fn envelope_runs_through_chain_observers_and_encoder() {
    let chain = chain();
    let watcher = Arc::new(Watcher::default());
    let pipeline = Pipeline::new(Limits::default()).with_observer(watcher.clone());
    let body = br#"{"collector_id":"c1","format":"flows.v1","records":[{"src_ip":"1.2.3.4"},{"x":1}]}"#;
    let mut out = Vec::new();
    let done = pipeline
        .run(&chain, Input::Envelope(body.to_vec()), Encoding::INGEST_RESPONSE, Instant::now(), &mut out)
        .unwrap();
    assert_eq!(done, Processed { events: 2, chain_generation: 1 });
    let answer: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(answer["count"], 2);
    assert_eq!(answer["records"][0]["seen"], true);
    assert_eq!(answer["records"][1]["x"], 1);
    assert_eq!(*watcher.seen.lock().unwrap(), vec![2]);
    assert_eq!(watcher.in_flight.load(Ordering::Relaxed), 0);
}

#[test]
fn refused_input_is_neither_observed_nor_written() {
    let chain = chain();
    let watcher = Arc::new(Watcher::default());
    let pipeline = Pipeline::new(Limits::default()).with_observer(watcher.clone());
    let mut out = Vec::new();
    let err = pipeline
        .run(&chain, ndjson("{\"src_ip\":\"1.2.3.4\"}\nnot json\n"), Encoding::NDJSON, Instant::now(), &mut out)
        .unwrap_err();
    assert!(matches!(err, InputError::Record { index: 2, .. }), "{err:?}");
    assert!(out.is_empty());
    assert!(watcher.seen.lock().unwrap().is_empty());
}

#[test]
fn ndjson_is_held_to_the_record_limit() {
    let chain = chain();
    let pipeline = Pipeline::new(Limits { max_records: 2 });
    let err = pipeline.run(&chain, ndjson("{}\n{}\n{}\n"), Encoding::NDJSON, Instant::now(), &mut Vec::new());
    assert_eq!(err.unwrap_err(), InputError::TooManyRecords { count: 3, max: 2 });
}

/// The limit stops NDJSON reading past record `max + 1`, on one thread and
/// in parts: a million `{}` lines (3 MB, under the 5 MiB body limit) built
/// a million events (a few hundred MB) before the count was checked.
#[test]
fn ndjson_reading_stops_past_the_record_limit() {
    let chain = chain();
    let many = "{}\n".repeat(1_000_000);
    for split in [Split::new(1, 1), Split::new(2, 4)] {
        let pipeline = Pipeline::new(Limits { max_records: 10 }).with_split(split);
        let err = pipeline.decode(&chain, ndjson(&many)).unwrap_err();
        let InputError::TooManyRecords { count, max: 10 } = err else { panic!("{err:?}") };
        assert!(count <= 11, "{count}: read further than the limit");
        assert_eq!(err.to_string(), "too many records: at least 11 (max 10)");
        // At the limit, and a bad record before it, read as before.
        assert_eq!(pipeline.decode(&chain, ndjson(&"{}\n".repeat(10))).unwrap().len(), 10);
        let bad = "{}\n".repeat(4) + "{\"bytes\":-1}\n" + &many;
        let err = pipeline.decode(&chain, ndjson(&bad)).unwrap_err();
        assert!(matches!(err, InputError::Record { index: 5, .. }), "{err:?}");
    }
}

#[test]
fn lenient_run_skips_only_the_bad_lines() {
    let chain = chain();
    let watcher = Arc::new(Watcher::default());
    let pipeline = Pipeline::new(Limits::default()).with_observer(watcher.clone());
    let mut out = Vec::new();
    let text = "{\"a\":1}\n{bad\n\n{\"a\":3}\n";
    let skipped = pipeline.run_lenient(&chain, text.into(), Format::FlowsV1, 10, Encoding::NDJSON, &mut out);
    assert_eq!(skipped.iter().map(|s| s.index).collect::<Vec<_>>(), vec![11]);
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!((lines[0]["a"].as_i64(), lines[1]["a"].as_i64()), (Some(1), Some(3)));
    assert!(lines.iter().all(|l| l["seen"] == true));
}

/// A record sent pretty-printed inside an envelope still comes out as one
/// NDJSON line (outputs split on LF), and the same JSON.
#[test]
fn pretty_printed_records_stay_one_line_in_ndjson() {
    let chain = chain();
    let pipeline = Pipeline::new(Limits::default());
    let body = b"{\"collector_id\":\"c\",\"format\":\"flows.v1\",\"records\":[{\r\n  \"src_ip\": \"1.2.3.4\",\n  \"note\": \"a\\nb\"\n}, {\"x\":\n1}]}";
    let encodings = [Encoding::NDJSON, Encoding::INGEST_RESPONSE];
    let mut outs = vec![Encoded::default(), Encoded::default()];
    pipeline.run_many(&chain, Input::Envelope(body.to_vec()), &encodings, Instant::now(), &mut outs).unwrap();
    let text = String::from_utf8(outs[0].bytes.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let recorded: Vec<&[u8]> = crate::batch::split_lines(&outs[0].bytes, &outs[0].line_ends).collect();
    assert_eq!(recorded, lines.iter().map(|l| l.as_bytes()).collect::<Vec<_>>(), "the recorded line ends");
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["note"], "a\nb", "escaped newlines inside strings are kept");
    assert_eq!(first["seen"], true);
    let answer: serde_json::Value = serde_json::from_slice(&outs[1].bytes).unwrap();
    assert_eq!(answer["records"][0], first, "the answer and the output agree");
}

/// An answer in the layout of an NDJSON encoding of the same run is built
/// from its lines: byte for byte what a direct encoding writes (for
/// compact records), whichever order the encodings come in.
#[test]
fn answer_built_from_ndjson_lines_equals_a_direct_encoding() {
    let chain = chain();
    let pipeline = Pipeline::new(Limits::default());
    let body = b"{\"collector_id\":\"c\\\"q\",\"format\":\"flows.v1\",\"records\":[{\"src_ip\":\"1.2.3.4\",\"n\":1},{\"x\":[1,{\"y\":\"z\\n\"}]},{}]}";
    let mut direct = Vec::new();
    pipeline
        .run(&chain, Input::Envelope(body.to_vec()), Encoding::INGEST_RESPONSE, Instant::now(), &mut direct)
        .unwrap();
    for encodings in [[Encoding::INGEST_RESPONSE, Encoding::NDJSON], [Encoding::NDJSON, Encoding::INGEST_RESPONSE]] {
        let mut outs = vec![Encoded::default(), Encoded::default()];
        pipeline.run_many(&chain, Input::Envelope(body.to_vec()), &encodings, Instant::now(), &mut outs).unwrap();
        let answer = encodings.iter().position(|e| e.shape == Shape::IngestResponse).unwrap();
        assert_eq!(String::from_utf8_lossy(&outs[answer].bytes), String::from_utf8_lossy(&direct));
        assert_eq!(String::from_utf8(outs[1 - answer].bytes.clone()).unwrap().lines().count(), 3);
        assert!(outs[answer].line_ends.is_empty(), "an answer has no lines to record");
    }
    // Two answers in one layout: the second is written on its own, alike.
    let encodings = [Encoding::INGEST_RESPONSE, Encoding::NDJSON, Encoding::INGEST_RESPONSE];
    let mut outs = vec![Encoded::default(); 3];
    pipeline.run_many(&chain, Input::Envelope(body.to_vec()), &encodings, Instant::now(), &mut outs).unwrap();
    assert_eq!((outs[0].bytes.as_slice(), outs[2].bytes.as_slice()), (direct.as_slice(), direct.as_slice()));
}

/// A body of `n` records in varied shapes: compact, escaped, nested, and
/// ones already carrying the chain's key (the shadowing path).
fn varied_body(n: usize, pretty: bool) -> Vec<u8> {
    let records: Vec<String> = (0..n)
        .map(|i| match i % 4 {
            0 => format!("{{\"src_ip\":\"10.0.{}.{}\",\"n\":{i}}}", i / 256, i % 256),
            1 => format!("{{\"note\":\"a\\\"b\\\\c {i}\",\"x\":[1,{{\"y\":null}}]}}"),
            2 => format!("{{\"seen\":false,\"i\":{i}}}"),
            _ if pretty => format!("{{\n  \"i\": {i},\r\n  \"z\": \"q\"\n}}"),
            _ => format!("{{\"i\":{i},\"z\":\"q\"}}"),
        })
        .collect();
    format!("{{\"collector_id\":\"c\",\"format\":\"flows.v1\",\"records\":[{}]}}", records.join(",")).into_bytes()
}

/// A batch split over threads comes out exactly as the same batch run
/// whole: every layout, in order, byte for byte (compact records), and
/// the stage statistics count it once.
#[test]
fn split_batches_equal_whole_batches() {
    let whole = Pipeline::new(Limits::default()).with_split(Split::new(usize::MAX, 1));
    let split = Pipeline::new(Limits::default()).with_split(Split::new(8, 3));
    assert_eq!(split.split.parts(100), 3);
    assert_eq!(split.split.parts(7), 1, "below the threshold");
    for n in [8, 9, 10, 31, 100] {
        let body = varied_body(n, false);
        for encodings in [
            vec![Encoding::INGEST_RESPONSE],
            vec![Encoding::NDJSON],
            vec![Encoding::INGEST_RESPONSE, Encoding::NDJSON, Encoding::NDJSON],
        ] {
            let run = |pipeline: &Pipeline, chain: &Chain| {
                let kept = Encoded { bytes: b"kept:".to_vec(), line_ends: vec![7] };
                let mut outs = vec![kept; encodings.len()];
                let done =
                    pipeline.run_many(chain, Input::Envelope(body.clone()), &encodings, Instant::now(), &mut outs);
                assert_eq!(done.unwrap().events, n);
                outs
            };
            let chain = chain();
            let expected = run(&whole, &chain);
            let got = run(&split, &chain);
            for ((e, g), encoding) in expected.iter().zip(&got).zip(&encodings) {
                assert_eq!(
                    String::from_utf8_lossy(&g.bytes),
                    String::from_utf8_lossy(&e.bytes),
                    "{n} records, {encodings:?}"
                );
                assert_eq!(g.line_ends, e.line_ends, "{n} records, {encodings:?}");
                if encoding.shape == Shape::Ndjson {
                    // Counted from where this run began (after "kept:").
                    let lines: Vec<&[u8]> = crate::batch::split_lines(&g.bytes[5..], &g.line_ends).collect();
                    let expected_lines: Vec<&[u8]> =
                        g.bytes[5..].split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
                    assert_eq!(lines, expected_lines, "{n} records");
                }
            }
            let report = &chain.reports()[0];
            // One whole run and one split run of the same n events.
            assert_eq!((report.batches, report.events), (2, 2 * n as u64), "a split batch counts once");
        }
    }
    // Pretty-printed records: the same JSON (line breaks between tokens
    // become spaces in NDJSON lines, from which a split answer is built).
    let body = varied_body(40, true);
    let chain = chain();
    let mut a = vec![Encoded::default()];
    let mut b = vec![Encoded::default()];
    let answer = [Encoding::INGEST_RESPONSE];
    whole.run_many(&chain, Input::Envelope(body.clone()), &answer, Instant::now(), &mut a).unwrap();
    split.run_many(&chain, Input::Envelope(body), &answer, Instant::now(), &mut b).unwrap();
    let parse = |v: &[u8]| serde_json::from_slice::<serde_json::Value>(v).unwrap();
    assert_eq!(parse(&a[0].bytes), parse(&b[0].bytes));
}

/// A batch splits only when it is the only one in the pipeline: when the
/// cores already have other batches, a split would only add hand-offs.
#[test]
fn batches_split_only_when_alone() {
    let split = Split::new(8, 2);
    assert_eq!(split.parts(1000), 2);
    let _first = split.enter();
    assert_eq!(split.parts(1000), 2, "the batch itself counts");
    {
        let _second = split.enter();
        assert_eq!(split.parts(1000), 1, "another batch is in");
    }
    assert_eq!(split.parts(1000), 2, "left again");
    assert_eq!(Split::new(8, 1).parts(1000), 1, "one core: never");
}

/// A record that carries `enrichment_warnings` of its own (re-ingested
/// output): written once, whether or not the chain warns, and kept as sent
/// when it does not (before: twice when the chain warned, which
/// Elasticsearch refuses; dropped on the shadowing path when it did not).
#[test]
fn a_records_own_warnings_are_written_once() {
    let chain = chain();
    let pipeline = Pipeline::new(Limits::default());
    let run = |records: &str| {
        let body = format!(r#"{{"format":"flows.v1","records":[{records}]}}"#);
        let mut out = Vec::new();
        pipeline.run(&chain, Input::Envelope(body.into_bytes()), Encoding::NDJSON, Instant::now(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    for escaped in [false, true] {
        let key = if escaped { r#""enrichment_warning\u0073""# } else { r#""enrichment_warnings""# };
        // The chain warns (an address that is none): its warnings replace the record's.
        let out = run(&format!(r#"{{"src_ip":"nope",{key}:["upstream"]}}"#));
        assert_eq!(out.matches("enrichment_warnings").count() + out.matches("warning\\u0073").count(), 1, "{out}");
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert!(line["enrichment_warnings"][0].as_str().unwrap().contains("src_ip"), "{out}");
        // It does not: the record's own stay, as sent.
        let out = run(&format!(r#"{{"src_ip":"1.2.3.4",{key}:["upstream"]}}"#));
        assert!(out.contains(&format!(r#"{key}:["upstream"]"#)), "{out}");
        // With a key the chain writes too (the shadowing path).
        let out = run(&format!(r#"{{"seen":1,"src_ip":"1.2.3.4",{key}:["upstream"]}}"#));
        assert!(out.contains(&format!(r#"{key}:["upstream"]"#)), "{out}");
        assert_eq!(out.matches("seen").count(), 1, "{out}");
    }
}
