use std::path::Path;

use serde_json::Value;

use super::write::reencode;
use super::*;
use crate::batch::BatchView;
use crate::chain::Chain;
use crate::config::Config;
use crate::event::{JsonFragment, KeyId};
use crate::fact::FactId;
use crate::fact::{pack_country, FactDecl};
use crate::format::Format;
use crate::parse::{parse_ndjson, ParseSpec};
use crate::plugin::{BuildContext, Enricher, PluginFactory, PluginState, PluginStatus};
use crate::registry::Registry;

/// A geo-like stage: one output key per side (`shared = false`) or one key
/// for whichever side it answered (`shared = true`), with a country fact.
struct Geo;
struct GeoEnricher {
    keys: [KeyId; 2],
    facts: [FactId; 2],
    answer: JsonFragment,
}

impl PluginFactory for Geo {
    fn kind(&self) -> &'static str {
        "geo"
    }
    fn description(&self) -> &'static str {
        "test"
    }
    fn options_schema(&self) -> schemars::Schema {
        schemars::json_schema!({})
    }
    fn build(&self, options: &toml::Table, ctx: &mut BuildContext<'_>) -> anyhow::Result<Box<dyn Enricher>> {
        let shared = options.get("shared").and_then(toml::Value::as_bool).unwrap_or(false);
        let keys = if shared {
            let k = ctx.output_key("geo");
            [k, k]
        } else {
            [ctx.output_key("g_src"), ctx.output_key("g_dst")]
        };
        let decl = |name: &str, side, key| {
            FactDecl::new(name, FactKind::CountryCode).side(side).output(key, serde_json::json!({}))
        };
        let facts =
            [ctx.fact(decl("src_cc", Side::Source, keys[0])), ctx.fact(decl("dst_cc", Side::Destination, keys[1]))];
        let answer = JsonFragment::from(r#"{"country":"GB","city":"London","lat":51.5,"lon":-0.1,"extra":null}"#);
        Ok(Box::new(GeoEnricher { keys, facts, answer }))
    }
}

impl Enricher for GeoEnricher {
    fn enrich(&self, batch: &mut BatchView<'_>) {
        for e in batch.events.iter_mut() {
            let sides = [e.src_ip.is_some(), e.dst_ip.is_some()];
            let shared = self.keys[0] == self.keys[1];
            for side in 0..2 {
                if shared && side == 0 && sides[1] {
                    continue; // destination preferred
                }
                if sides[side] {
                    e.set_fact(self.facts[side], pack_country("GB").unwrap());
                    e.set_output(self.keys[side], self.answer.clone());
                } else if !shared {
                    e.set_output(self.keys[side], "null".into());
                }
            }
        }
    }
    fn status(&self) -> PluginStatus {
        PluginStatus::new(PluginState::Loaded)
    }
}

fn chain(options: &str) -> Chain {
    let mut registry = Registry::new();
    registry.register(Box::new(Geo));
    let config = Config::parse(&format!("[[chain]]\nplugin = \"geo\"\n{options}\n"), Path::new("t.toml")).unwrap();
    Chain::build(&config.chain, &registry, Path::new(".")).unwrap()
}

fn run(chain: &Chain, profile: &str, records: &str) -> Vec<Value> {
    // The profile's own writer, as the pipeline's encoder calls it (the
    // pipeline depends on profiles, not the other way round).
    let profile = Profile::parse(profile).unwrap();
    let mut batch = parse_ndjson(records.into(), Format::FlowsV1, chain.parse_spec(), 1).unwrap();
    chain.run(&mut batch);
    let plan = Plan::new(&profile, chain);
    let mut out = Vec::new();
    for event in batch.events() {
        plan.write_event(batch.source().raw_record(event), event, &mut out);
        out.push(b'\n');
    }
    String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).expect(l)).collect()
}

const NESTED: &str = r#"
name = "t"
omit_nulls = true
[[field]]
path = "source.geo"
kind = "country_code"
side = "source"
keep_others = false
rename = { country = "country_iso_code", city = "city_name", lat = "location.lat", lon = "location.lon" }
[[field]]
path = "source.geo.cc"
kind = "country_code"
side = "source"
value = "scalar"
[[field]]
path = "source.ip"
input = "src_ip"
[[field]]
path = "destination.geo"
kind = "country_code"
side = "destination"
[[field]]
path = "network.transport"
input = "transport"
"#;

#[test]
fn nested_paths_merge_into_one_object_with_renames() {
    let c = chain("");
    let recs = run(&c, NESTED, "{\"src_ip\":\"1.2.3.4\",\"protocol\":\"tcp\",\"x\":1}\n{\"dst_ip\":\"::1\"}\n");
    assert_eq!(
        recs[0],
        serde_json::json!({"x": 1, "src_ip": "1.2.3.4", "protocol": "tcp",
            "source": {"geo": {"country_iso_code": "GB", "city_name": "London",
                "location": {"lat": 51.5, "lon": -0.1}, "cc": "GB"}, "ip": "1.2.3.4"},
            "network": {"transport": "tcp"}})
    );
    // Nulls are left out (`omit_nulls`), unrenamed members kept (`extra` was null).
    assert_eq!(recs[1]["destination"]["geo"]["country"], "GB");
    assert!(recs[1]["destination"]["geo"].get("extra").is_none(), "{}", recs[1]);
    assert!(recs[1].get("source").is_none(), "{}", recs[1]);
    assert!(recs[1].get("g_dst").is_none() && recs[1].get("g_src").is_none(), "chain keys are not written");
}

#[test]
fn a_shared_key_is_written_for_the_side_it_answered() {
    let c = chain("shared = true");
    let p = "name = \"t\"\n[[field]]\npath = \"s\"\nkind = \"country_code\"\nside = \"source\"\n\
             [[field]]\npath = \"d\"\nkind = \"country_code\"\nside = \"destination\"\n";
    let recs = run(&c, p, "{\"src_ip\":\"1.2.3.4\",\"dst_ip\":\"::1\"}\n{\"src_ip\":\"1.2.3.4\"}\n");
    assert!(recs[0].get("s").is_none() && recs[0]["d"]["city"] == "London", "{}", recs[0]);
    assert!(recs[1].get("d").is_none() && recs[1]["s"]["city"] == "London", "{}", recs[1]);
}

#[test]
fn nulls_are_kept_unless_omitted_and_nonzero_flags() {
    let c = chain("");
    let p = "name = \"t\"\n[[field]]\npath = \"s\"\nkind = \"country_code\"\nside = \"source\"\n\
             [[field]]\npath = \"o.flag\"\nkind = \"country_code\"\nside = \"source\"\nvalue = \"nonzero\"\n";
    let recs = run(&c, p, "{\"dst_ip\":\"::1\"}\n{\"src_ip\":\"::1\"}\n");
    assert_eq!(recs[0]["s"], Value::Null);
    assert!(recs[0].get("s").is_some(), "{}", recs[0]);
    assert_eq!(recs[0]["o"], serde_json::json!({"flag": false}));
    assert_eq!(recs[1]["o"], serde_json::json!({"flag": true}));
}

#[test]
fn the_records_own_keys_win_and_are_never_duplicated() {
    let c = chain("");
    let text = concat!(
        "{\"src_ip\":\"1.2.3.4\",\"source\":{\"user\":\"x\"}}\n",
        "{\"src_ip\":\"1.2.3.4\",\"source\":1,\"enrichment\":2}\n",
        "{\"src_ip\":\"1.2.3.4\",\"note\":\"\\\"source\\\"\"}\n",
    );
    let recs = run(&c, NESTED, text);
    assert_eq!(recs[0]["source"], serde_json::json!({"user": "x"}));
    assert_eq!(recs[0]["enrichment"]["source"]["ip"], "1.2.3.4");
    assert_eq!(recs[0]["network"], Value::Null, "no protocol: nothing");
    assert_eq!(recs[1]["source"], 1);
    assert_eq!(recs[1]["enrichment"], 2);
    let w = recs[1]["enrichment_warnings"][0].as_str().unwrap();
    assert!(w.contains("source") && w.contains("left out"), "{w}");
    // A string mentioning the key is not the key.
    assert_eq!(recs[2]["source"]["ip"], "1.2.3.4");
    // Each line is one JSON object with unique keys (serde_json keeps the last
    // duplicate silently, so count them in the text too).
    let mut out = Vec::new();
    let profile = Profile::parse(NESTED).unwrap();
    let batch = parse_ndjson(text.into(), Format::FlowsV1, &ParseSpec::default(), 1).unwrap();
    let plan = Plan::new(&profile, &c);
    plan.write_event(batch.source().raw_record(&batch.events()[0]), &batch.events()[0], &mut out);
    assert_eq!(String::from_utf8(out).unwrap().matches("\"source\"").count(), 2, "record's and enrichment's");
}

#[test]
fn reencoding_is_cached_per_fragment() {
    let profile = Profile::parse(NESTED).unwrap();
    let a: JsonFragment = r#"{"country":"GB","city":null}"#.into();
    let first = reencode(&profile, 0, &a).unwrap();
    let again = reencode(&profile, 0, &a).unwrap();
    assert!(JsonFragment::ptr_eq(&first, &again));
    assert_eq!(&*first, r#"{"country_iso_code":"GB"}"#);
    let b: JsonFragment = r#"{"country":null}"#.into();
    assert_eq!(reencode(&profile, 0, &b), None, "all null: nothing");
}

#[test]
fn bad_profiles_are_refused() {
    for (text, msg) in [
        ("name = \"v1\"", "built-in"),
        ("name = \"a b\"", "letters"),
        ("name = \"t\"\n[[field]]\npath = \"a..b\"\nkind = \"score\"", "dotted"),
        ("name = \"t\"\n[[field]]\npath = \"a\"", "needs"),
        ("name = \"t\"\n[[field]]\npath = \"a\"\nkind = \"score\"\n[[field]]\npath = \"a\"\nkind = \"count\"", "twice"),
        ("name = \"t\"\n[[field]]\npath = \"a\"\nkind = \"nope\"", "unknown variant"),
        ("name = \"t\"\n[[field]]\npath = \"enrichment\"\nkind = \"score\"", "reserved"),
    ] {
        let e = Profile::parse(text).unwrap_err();
        assert!(e.contains(msg), "{text}: {e}");
    }
    let p = Profiles::embedded();
    assert!(p.get("v1").unwrap().is_none());
    assert_eq!(p.get("stage3").unwrap().unwrap().name, "stage3");
    assert!(p.get("nope").unwrap_err().contains("v1"));
}

#[test]
fn the_readme_example_profile_parses() {
    let readme = include_str!("../../../README.md");
    let section = &readme[readme.find("### Output profiles").expect("README section")..];
    let start = section.find("```toml\n").expect("example") + "```toml\n".len();
    let text = &section[start..start + section[start..].find("```").unwrap()];
    let p = Profile::parse(text).unwrap_or_else(|e| panic!("README example: {e}"));
    assert_eq!(p.name, "mine");
    assert_eq!(p.fields().len(), 3);
}

/// The re-encode cache holds at most `CACHE_CAPACITY` fragments per thread:
/// past it, it starts over (the evicted answer is re-encoded, not lost).
#[test]
fn reencode_cache_is_bounded() {
    let profile = Profile::parse(NESTED).unwrap();
    let a: JsonFragment = r#"{"country":"GB","city":null}"#.into();
    let first = reencode(&profile, 0, &a).unwrap();
    let others: Vec<JsonFragment> =
        (0..CACHE_CAPACITY).map(|i| JsonFragment::from(format!(r#"{{"country":"GB","city":"c{i}"}}"#))).collect();
    for f in &others {
        reencode(&profile, 0, f).unwrap();
    }
    let again = reencode(&profile, 0, &a).unwrap();
    assert!(!JsonFragment::ptr_eq(&first, &again), "the cache was cleared when full");
    assert_eq!(first, again, "and the answer is the same");
}

/// Each record written in `profile`, as text (the records below hold what
/// a `serde_json::Value` cannot).
fn write_lines(chain: &Chain, profile: &str, records: &str) -> Vec<String> {
    let profile = Profile::parse(profile).unwrap();
    let mut batch = parse_ndjson(records.into(), Format::FlowsV1, chain.parse_spec(), 1).unwrap();
    chain.run(&mut batch);
    let plan = Plan::new(&profile, chain);
    let mut lines = Vec::new();
    for event in batch.events() {
        let mut out = Vec::new();
        plan.write_event(batch.source().raw_record(event), event, &mut out);
        lines.push(String::from_utf8(out).unwrap());
    }
    lines
}

/// The top-level keys of a JSON object, decoded, with their values' text;
/// panics when the text is not one JSON object.
fn top_fields(text: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    crate::batch::for_each_field(text, |key, _, value| fields.push((key.to_owned(), value.to_owned()))).expect(text);
    serde_json::from_str::<serde::de::IgnoredAny>(text).expect(text);
    fields
}

#[test]
fn a_conflict_is_found_in_records_a_value_cannot_hold_and_they_stay_as_sent() {
    let c = chain("");
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let records = [
        // A number out of f64's range, a lone surrogate, nesting past 128.
        r#"{"source":"fw1","n":1e400,"src_ip":"8.8.8.8"}"#.to_string(),
        r#"{"source":"fw1", "s":"\ud800","src_ip":"8.8.8.8"}"#.to_string(),
        format!(r#"{{"source":"fw1","d":{deep},"src_ip":"8.8.8.8"}}"#),
        // The key written with an escape, the record's order and escapes kept.
        r#"{"z":1,"sourc\u0065":"fw1","a":"\u00e9\/","src_ip":"8.8.8.8"}"#.to_string(),
    ];
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    let lines = write_lines(&c, NESTED, &text);
    for (record, line) in records.iter().zip(&lines) {
        // The record's text first, byte for byte; then the profile's members.
        assert!(line.starts_with(&record[..record.len() - 1]), "{line}");
        let fields = top_fields(line);
        let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names.iter().filter(|k| **k == "source").count(), 1, "{line}");
        let (_, source) = fields.iter().find(|(k, _)| k == "source").unwrap();
        assert_eq!(source, "\"fw1\"", "the record's value is kept: {line}");
        let (_, moved) = fields.iter().find(|(k, _)| k == "enrichment").expect(line);
        let moved: Value = serde_json::from_str(moved).unwrap();
        assert_eq!(moved["source"]["ip"], "8.8.8.8", "{line}");
        assert_eq!(moved["source"]["geo"]["country_iso_code"], "GB", "{line}");
    }
    // The review's trigger, in the embedded `ecs` profile.
    let (_, ecs) = EMBEDDED.iter().find(|(name, _)| *name == "ecs").unwrap();
    let line = &write_lines(&c, ecs, &format!("{}\n", records[0]))[0];
    let fields = top_fields(line);
    assert_eq!(fields.iter().filter(|(k, _)| k == "source").count(), 1, "{line}");
    assert!(line.starts_with(r#"{"source":"fw1","n":1e400,"src_ip":"8.8.8.8","#), "{line}");
    assert!(line.contains(r#""enrichment":{"source":{"#), "{line}");
}

#[test]
fn a_record_without_a_conflict_stays_byte_for_byte() {
    let c = chain("");
    // A string spelling the key, a key that merely starts with it, and an
    // escaped key that is not the profile's: each takes the exact check.
    let records = [
        r#"{"z":1,"note":"source","n":1e400,"e":"\u00e9\/","src_ip":"8.8.8.8"}"#,
        r#"{"sources":[1],"src_ip":"8.8.8.8"}"#,
        r#"{"sourc\u0065s":"\ud800","src_ip":"8.8.8.8"}"#,
    ];
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    for (record, line) in records.iter().zip(write_lines(&c, NESTED, &text)) {
        assert!(line.starts_with(&record[..record.len() - 1]), "{line}");
        let rest = &line[record.len() - 1..];
        assert!(rest.starts_with(",\"source\":{\"geo\":"), "the profile's members follow: {line}");
        assert_eq!(top_fields(&line).iter().filter(|(k, _)| k == "source").count(), 1, "{line}");
    }
}

#[test]
fn a_dropped_conflict_keeps_the_other_members_as_sent() {
    let c = chain("");
    // `enrichment` is taken too: the profile's `source` is left out with a
    // warning, which replaces the record's own; every other member is kept as
    // written, in order.
    let record =
        r#"{"b":1e400, "sourc\u0065":1,"enrichment_warnings":["old"],"enrichment":{"k":"\/"},"src_ip":"8.8.8.8"}"#;
    let line = &write_lines(&c, NESTED, &format!("{record}\n"))[0];
    let expected_start = r#"{"b":1e400,"sourc\u0065":1,"enrichment":{"k":"\/"},"src_ip":"8.8.8.8","#;
    assert!(line.starts_with(expected_start), "{line}");
    let fields = top_fields(line);
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["b", "source", "enrichment", "src_ip", "enrichment_warnings"], "{line}");
    assert!(fields[4].1.contains("left out") && !fields[4].1.contains("old"), "{line}");
}
