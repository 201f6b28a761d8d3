//! Property tests (proptest) of the record path, on generated records in
//! the shapes senders produce: known fields in every accepted spelling,
//! unknown fields with any JSON value (numbers in several notations, `1e400`,
//! strings with `\uXXXX` escapes and non-ASCII, nested containers), keys in
//! any order and arbitrary whitespace between tokens.
//!
//! - parse -> write -> parse is the identity: the same events, and writing
//!   again gives the same bytes;
//! - through a pipeline whose chain writes a key, every field the record
//!   came with (other than that key) is kept byte for byte, in order, also
//!   when the record already carried the key (the slow path that drops it);
//! - the parser's fast path (`parse_fast.rs`) never accepts what the serde
//!   path refuses and reads the same event where it accepts, on good
//!   records, on records with unusual values for the known fields, and on
//!   records and envelopes with one character changed.

use std::time::Instant;

use proptest::prelude::*;

use crate::batch::for_each_field;
use crate::{parse_ndjson, Encoding, Event, Format, Input, ParseSpec, Pipeline};

/// A string as JSON text, plainly or with every non-alphanumeric character
/// as a `\u` escape (surrogate pairs beyond the BMP).
fn json_string() -> impl Strategy<Value = String> {
    ("\\PC{0,12}", any::<bool>()).prop_map(|(s, escape_all)| {
        if !escape_all {
            return serde_json::to_string(&s).unwrap();
        }
        let mut out = String::from("\"");
        for c in s.chars() {
            if c.is_ascii_alphanumeric() {
                out.push(c);
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04X}"));
                }
            }
        }
        out.push('"');
        out
    })
}

fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
        any::<f32>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f}")),
        prop::sample::select(vec!["1e400", "-0.0", "1.50", "0.1E-7", "123456789012345678901234567890"])
            .prop_map(String::from),
    ]
}

/// Whitespace JSON allows between tokens.
fn ws() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "", " ", "  ", "\t", " \t "]).prop_map(String::from)
}

/// Any JSON value as text (no surrounding whitespace).
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop::sample::select(vec!["null", "true", "false"]).prop_map(String::from),
        json_number(),
        json_string(),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..4), ws())
                .prop_map(|(v, w)| format!("[{}]", v.join(&format!("{w},")))),
            (prop::collection::vec((json_string(), inner), 0..4), ws()).prop_map(|(kv, w)| {
                let fields: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}{w}:{v}")).collect();
                format!("{{{w}{}}}", fields.join(","))
            }),
        ]
    })
}

/// Known fields with values the parser accepts, each in one of its names.
fn known_fields() -> impl Strategy<Value = Vec<(String, String)>> {
    let ip = prop_oneof![
        any::<std::net::Ipv4Addr>().prop_map(|a| format!("\"{a}\"")),
        any::<std::net::Ipv6Addr>().prop_map(|a| format!("\"{a}\"")),
        Just("null".to_string()),
    ];
    let port = prop_oneof![(0u32..=65_535).prop_map(|p| p.to_string()), Just("null".to_string())];
    let proto = prop::sample::select(vec!["\"tcp\"", "\"udp\"", "\"ICMP\"", "6", "17", "\"unknown_transport\""]);
    (
        prop::option::of((prop::sample::select(vec!["src_ip", "id.orig_h", "id_orig_h"]), ip.clone())),
        prop::option::of((prop::sample::select(vec!["dst_ip", "id.resp_h", "id_resp_h"]), ip)),
        prop::option::of((prop::sample::select(vec!["src_port", "id.orig_p"]), port.clone())),
        prop::option::of((prop::sample::select(vec!["dst_port", "id_resp_p"]), port)),
        prop::option::of(proto),
        prop::option::of(any::<u64>()),
        prop::option::of(any::<u32>().prop_map(|t| format!("{t}.{:06}", t % 1_000_000))),
    )
        .prop_map(|(src, dst, sp, dp, proto, bytes, ts)| {
            let mut out = Vec::new();
            let mut push = |k: &str, v: String| out.push((serde_json::to_string(k).unwrap(), v));
            if let Some((k, v)) = src {
                push(k, v);
            }
            if let Some((k, v)) = dst {
                push(k, v);
            }
            if let Some((k, v)) = sp {
                push(k, v);
            }
            if let Some((k, v)) = dp {
                push(k, v);
            }
            if let Some(p) = proto {
                push("proto", p.to_string());
            }
            if let Some(b) = bytes {
                push("bytes", b.to_string());
            }
            if let Some(t) = ts {
                push("ts", t);
            }
            out
        })
}

/// Unknown fields: distinct keys that are none of the known names.
fn unknown_fields() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::btree_map("[a-z_]{1,6}|[a-z]{1,3}\\.[a-z]{1,3}|\\PC{1,4}", json_value(), 0..6).prop_map(|m| {
        m.into_iter()
            .filter(|(k, _)| !KNOWN.contains(&k.as_str()) && k != "seen" && k != crate::WARNINGS_KEY)
            .map(|(k, v)| (serde_json::to_string(&k).unwrap(), v))
            .collect()
    })
}

const KNOWN: [&str; 21] = [
    "ts",
    "src_ip",
    "id.orig_h",
    "id_orig_h",
    "dst_ip",
    "id.resp_h",
    "id_resp_h",
    "src_port",
    "id.orig_p",
    "id_orig_p",
    "dst_port",
    "id.resp_p",
    "id_resp_p",
    "protocol",
    "proto",
    "bytes",
    "orig_bytes",
    "resp_bytes",
    "packets",
    "duration",
    "seen",
];

/// A record: its fields (key text, value text) in order, the unknown ones
/// marked, and its JSON text with `ws` between tokens.
#[derive(Debug, Clone)]
struct Record {
    fields: Vec<(String, String, bool)>,
    text: String,
}

fn record(with_output_key: bool) -> impl Strategy<Value = Record> {
    (known_fields(), unknown_fields(), any::<bool>(), ws(), ws(), any::<prop::sample::Index>()).prop_flat_map(
        move |(known, unknown, shadow, w1, w2, at)| {
            let mut fields: Vec<(String, String, bool)> = known.into_iter().map(|(k, v)| (k, v, false)).collect();
            fields.extend(unknown.into_iter().map(|(k, v)| (k, v, true)));
            if with_output_key && shadow {
                // The chain's own key, already in the record: dropped on output.
                fields.insert(at.index(fields.len() + 1), ("\"seen\"".into(), "\"sender's\"".into(), false));
            }
            Just(fields).prop_shuffle().prop_map(move |fields| {
                let body: Vec<String> = fields.iter().map(|(k, v, _)| format!("{w1}{k}{w2}:{w1}{v}{w2}")).collect();
                let text = format!("{{{}}}", body.join(","));
                Record { fields, text }
            })
        },
    )
}

/// What the parser read from a record, for comparing two parses.
fn parsed(e: &Event) -> String {
    format!(
        "{:?}",
        (e.ts.map(f64::to_bits), e.src_ip, e.dst_ip, e.src_port, e.dst_port, e.proto, e.bytes, e.packets, e.warnings())
    )
}

fn ndjson(records: &[Record]) -> String {
    records.iter().map(|r| format!("{}\n", r.text)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn parse_write_parse_is_the_identity(records in prop::collection::vec(record(false), 1..8), zeek in any::<bool>()) {
        let format = if zeek { Format::ZeekConnV1 } else { Format::FlowsV1 };
        let spec = ParseSpec::default();
        let first = parse_ndjson(ndjson(&records), format, &spec, 1).unwrap();
        let mut written = Vec::new();
        first.write_ndjson(&[], &mut written);
        let written = String::from_utf8(written).unwrap();
        // With nothing to add, each record is written as sent (whitespace
        // before its closing brace aside: that is where fields are added).
        let lines: Vec<&str> = written.lines().collect();
        let sent: Vec<String> =
            records.iter().map(|r| format!("{}}}", r.text[..r.text.len() - 1].trim_end())).collect();
        prop_assert_eq!(&lines, &sent);
        let second = parse_ndjson(written.clone(), format, &spec, 1).unwrap();
        let a: Vec<String> = first.events().iter().map(parsed).collect();
        let b: Vec<String> = second.events().iter().map(parsed).collect();
        prop_assert_eq!(a, b);
        let mut again = Vec::new();
        second.write_ndjson(&[], &mut again);
        prop_assert_eq!(String::from_utf8(again).unwrap(), written);
    }

    #[test]
    fn enriched_records_keep_every_field_byte_for_byte(records in prop::collection::vec(record(true), 1..8)) {
        let chain = crate::pipeline::tests::chain();
        let input = Input::Ndjson { text: ndjson(&records), format: Format::FlowsV1, first_index: 1 };
        let mut out = Vec::new();
        Pipeline::default().run(&chain, input, Encoding::NDJSON, Instant::now(), &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        prop_assert_eq!(lines.len(), records.len());
        for (line, record) in lines.iter().zip(&records) {
            let mut got = Vec::new();
            for_each_field(line, |_, key, value| got.push((key.to_string(), value.to_string()))).unwrap();
            // The record's own fields as sent, minus the chain's key, then the chain's.
            let mut want: Vec<(String, String)> = record
                .fields
                .iter()
                .filter(|(k, ..)| k != "\"seen\"")
                .map(|(k, v, _)| (k.clone(), v.clone()))
                .collect();
            want.push(("\"seen\"".into(), "true".into()));
            prop_assert_eq!(got, want, "record {}", record.text);
        }
    }
}

/// A value for a known field in the forms the fast path handles itself and
/// the ones it must hand to the serde path (or refuse the same way).
fn odd_known_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "1024.0",
            "-1",
            "1e3",
            "\"80\"",
            "true",
            "[]",
            "{}",
            "65536",
            "255",
            "256",
            "-0",
            "0.5",
            "\"1.2.3.4\"",
            "\"1.2.3\\u0034\"",
            "\"::1\"",
            "\"nope\"",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
            "1723351200.412345",
            "-1723351200.5",
            "\"  1.5 \"",
            "null",
            "1.7976931348623157e309",
            "0.1000000000000000055511151231257827",
            "9007199254740993.5",
            "01",
            "1.",
            "\"t\\cp\"",
            "\"TCP\"",
        ])
        .prop_map(String::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
        (any::<u32>(), 0u32..1_000_000_000).prop_map(|(a, b)| format!("{a}.{b}")),
    ]
}

/// A record whose known fields carry odd values, one field maybe repeated.
fn odd_record() -> impl Strategy<Value = String> {
    let key = prop::sample::select(KNOWN[..20].to_vec());
    (prop::collection::vec((key, odd_known_value()), 1..5), unknown_fields(), ws()).prop_map(|(known, unknown, w)| {
        let mut fields: Vec<String> =
            known.into_iter().map(|(k, v)| format!("{}{w}:{w}{v}", serde_json::to_string(k).unwrap())).collect();
        fields.extend(unknown.into_iter().map(|(k, v)| format!("{k}:{v}")));
        format!("{{{w}{}{w}}}", fields.join(","))
    })
}

/// `text` with one character replaced, inserted or removed.
fn mutated(text: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    let chars = prop::sample::select(vec![
        '"', '\\', ',', ':', '{', '}', '[', ']', '0', '-', '.', 'e', ' ', '\u{1}', 'n', 'u', '\n', '\u{a0}', 'x',
    ]);
    (text, any::<prop::sample::Index>(), chars, 0..3u8).prop_map(|(text, at, c, how)| {
        let mut chars: Vec<char> = text.chars().collect();
        let i = at.index(chars.len());
        match how {
            0 => chars[i] = c,
            1 => chars.insert(i, c),
            _ => {
                chars.remove(i);
            }
        }
        chars.into_iter().collect()
    })
}

/// The spec of the pipeline tests' marking chain plus a captured text field.
fn spec_with_texts() -> ParseSpec {
    ParseSpec { text_fields: vec!["a".into(), "b".into(), "domain".into()], output_keys: vec!["seen".into()] }
}

fn fast_agrees_with_serde(text: &str) -> Result<(), TestCaseError> {
    let (fast, serde) = crate::parse::record_both_ways(text, &spec_with_texts());
    if let Some(fast) = fast {
        let serde = serde.map_err(|e| TestCaseError::fail(format!("fast path accepted what serde refuses: {e}")))?;
        prop_assert_eq!(format!("{fast:?}"), format!("{serde:?}"), "record {}", text);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn fast_path_reads_good_records_like_the_serde_path(r in record(true)) {
        let (fast, serde) = crate::parse::record_both_ways(&r.text, &spec_with_texts());
        prop_assert!(serde.is_ok());
        // Keys are plain in these records; escapes in values only where skipped.
        if let Some(fast) = fast {
            prop_assert_eq!(format!("{fast:?}"), format!("{:?}", serde.unwrap()));
        }
    }

    #[test]
    fn fast_path_agrees_on_odd_known_values(text in odd_record()) {
        fast_agrees_with_serde(&text)?;
    }

    #[test]
    fn fast_path_agrees_on_damaged_records(text in mutated(prop_oneof![record(true).prop_map(|r| r.text), odd_record()])) {
        fast_agrees_with_serde(&text)?;
    }

    #[test]
    fn fast_path_agrees_on_damaged_envelopes(
        body in mutated(prop::collection::vec(record(true), 0..4).prop_map(|rs| {
            let records: Vec<String> = rs.into_iter().map(|r| r.text).collect();
            format!("{{\"collector_id\": \"c\", \"format\":\"flows\",\"records\":[{}], \"x\": [1]}}", records.join(" , "))
        })),
        max in 1usize..5,
    ) {
        let limits = crate::Limits { max_records: max };
        let (fast, serde) = crate::parse::envelope_both_ways(&body, &spec_with_texts(), limits);
        if let Some(fast) = fast {
            let serde = serde.map_err(|e| TestCaseError::fail(format!("fast path accepted what serde refuses: {e}")))?;
            prop_assert_eq!(format!("{fast:?}"), format!("{serde:?}"), "body {}", body);
        }
    }
}

/// Address-like texts: plain dotted quads, and the near misses the fast
/// IPv4 reader must hand to the standard parser (leading zeros, octets
/// over 255, three or five parts, signs, spaces, IPv6 and mapped forms).
fn address_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
        any::<[u16; 8]>().prop_map(|s| std::net::Ipv6Addr::from(s).to_string()),
        any::<[u8; 4]>().prop_map(|o| format!("::ffff:{}", std::net::Ipv4Addr::from(o))),
        "[0-9.]{0,17}",
        "[0-9]{1,4}(\\.[0-9]{1,4}){2,4}",
        // Long digit runs: found by the ingest fuzz targets (an octet's
        // value overflowed before its length was judged).
        "[0-9]{4,15}(\\.[0-9]{1,15}){0,3}",
        "[-+ 0-9.a-f:]{0,20}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn fast_address_reader_agrees_with_the_standard_parser(text in address_text()) {
        let fast = crate::parse::fast_ip(&text);
        prop_assert_eq!(fast, text.parse::<std::net::IpAddr>().ok(), "{:?}", text);
    }
}

/// Found by the properties above: a record carrying the chain's own key
/// took a path that re-parsed it into a `serde_json::Value`, which refuses
/// numbers out of `f64` range (the parser accepts them), so the writer
/// panicked; it also sorted keys and rewrote numbers and escapes.
#[test]
fn a_shadowed_record_keeps_its_other_fields_as_sent() {
    let chain = crate::pipeline::tests::chain();
    let text = "{\"z\":1e400,\"seen\":1,\"a\":\"\\u00e9\",\"n\":1.50}\n".to_string();
    let input = Input::Ndjson { text, format: Format::FlowsV1, first_index: 1 };
    let mut out = Vec::new();
    Pipeline::default().run(&chain, input, Encoding::NDJSON, Instant::now(), &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "{\"z\":1e400,\"a\":\"\\u00e9\",\"n\":1.50,\"seen\":true}\n");
}
