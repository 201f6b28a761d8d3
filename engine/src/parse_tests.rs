use super::*;
use crate::event::{JsonFragment, KeyId};

fn spec(texts: &[&str], outputs: &[&str]) -> ParseSpec {
    ParseSpec {
        text_fields: texts.iter().map(|s| (*s).into()).collect(),
        output_keys: outputs.iter().map(|s| (*s).into()).collect(),
    }
}

fn envelope(body: &str) -> Result<Batch, InputError> {
    parse_envelope(body.as_bytes().to_vec(), &spec(&["query"], &["geo"]), Limits::default())
}

#[test]
fn flows_record_fields_are_parsed_once() {
    let b = envelope(
        r#"{"collector_id":"c1","format":"flows","records":[{"ts":1723351200.5,"src_ip":"10.0.0.1","dst_ip":"2001:db8::1","src_port":51000,"dst_port":443,"protocol":"TCP","bytes":1024,"packets":7}]}"#,
    )
    .unwrap();
    assert_eq!(b.format(), Format::FlowsV1);
    assert_eq!(b.collector_id(), Some("c1"));
    let e = &b.events()[0];
    assert_eq!(e.ts, Some(1723351200.5));
    assert_eq!(e.src_ip, Some("10.0.0.1".parse().unwrap()));
    assert_eq!(e.dst_ip, Some("2001:db8::1".parse().unwrap()));
    assert_eq!((e.src_port, e.dst_port, e.proto), (Some(51000), Some(443), Some(6)));
    assert_eq!((e.bytes, e.packets), (Some(1024), Some(7)));
}

#[test]
fn zeek_dotted_and_underscore_names() {
    for (orig, resp) in [("id.orig_h", "id.resp_h"), ("id_orig_h", "id_resp_h")] {
        let po = orig.replace("_h", "_p");
        let pr = resp.replace("_h", "_p");
        let body = format!(
            r#"{{"format":"zeek","records":[{{"{orig}":"1.2.3.4","{po}":1,"{resp}":"5.6.7.8","{pr}":53,"proto":17,"orig_bytes":3,"resp_bytes":4,"duration":0.5}}]}}"#
        );
        let b = envelope(&body).unwrap();
        let e = &b.events()[0];
        assert_eq!(e.src_ip, Some("1.2.3.4".parse().unwrap()), "{orig}");
        assert_eq!(e.dst_ip, Some("5.6.7.8".parse().unwrap()));
        assert_eq!((e.src_port, e.dst_port, e.proto), (Some(1), Some(53), Some(17)));
        assert_eq!((e.orig_bytes, e.resp_bytes, e.duration), (Some(3), Some(4), Some(0.5)));
    }
}

#[test]
fn record_text_passes_through_and_outputs_are_appended() {
    let mut b = envelope(
        r#"{"format":"flows.v1","records":[ {"a" : 1.50 , "s":"caf\u00e9"} , {}, {"x":[1,{"y":null}]
    }]}"#,
    )
    .unwrap();
    let keys: Vec<Box<str>> = vec!["geo".into(), "ti".into()];
    let frag = JsonFragment::from(r#"{"country":"GB"}"#);
    for e in b.view().events.iter_mut() {
        e.set_output(KeyId(0), frag.clone());
    }
    b.view().events[1].set_output(KeyId(1), JsonFragment::from("null"));
    let mut out = Vec::new();
    b.write_events_array(&keys, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        r#"[{"a" : 1.50 , "s":"caf\u00e9","geo":{"country":"GB"}},{"geo":{"country":"GB"},"ti":null},{"x":[1,{"y":null}],"geo":{"country":"GB"}}]"#
    );
    serde_json::from_str::<serde_json::Value>(&text).unwrap();
}

#[test]
fn record_keys_that_the_chain_writes_are_replaced() {
    let mut b = envelope(r#"{"format":"flows.v1","records":[{"geo":"mine","keep":1}]}"#).unwrap();
    b.view().events[0].set_output(KeyId(0), JsonFragment::from("null"));
    let mut out = Vec::new();
    b.write_event(&b.events()[0], &["geo".into()], &mut out);
    assert_eq!(String::from_utf8(out).unwrap(), r#"{"keep":1,"geo":null}"#);
}

#[test]
fn invalid_address_is_kept_and_noted() {
    let b = envelope(r#"{"format":"flows.v1","records":[{"src_ip":"300.1.1.1","dst_ip":"8.8.8.8"}]}"#).unwrap();
    let e = &b.events()[0];
    assert_eq!(e.src_ip, None);
    assert_eq!(e.dst_ip, Some("8.8.8.8".parse().unwrap()));
    assert_eq!(e.warnings().len(), 1);
    assert!(e.warnings()[0].starts_with("src_ip: \"300.1.1.1\""));
    let mut out = Vec::new();
    b.write_event(e, &[], &mut out);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["src_ip"], "300.1.1.1");
    assert_eq!(v["enrichment_warnings"][0], e.warnings()[0].as_str());
}

#[test]
fn text_fields_are_captured_borrowed_or_decoded() {
    let b = envelope(
        r#"{"format":"zeek","records":[{"query":"a.example.com"},{"query":"b\u002eexample.com"},{"query":7}]}"#,
    )
    .unwrap();
    let src = b.source();
    let q = TextFieldId(0);
    assert_eq!(src.text(&b.events()[0], q), Some("a.example.com"));
    assert_eq!(src.text(&b.events()[1], q), Some("b.example.com"));
    assert_eq!(src.text(&b.events()[2], q), None);
}

#[test]
fn errors_name_the_record_and_field() {
    let cases = [
        (r#"[{"src_port":"80"}]"#, 0, Some("src_port")),
        (r#"[{}, {"dst_port":65536}]"#, 1, Some("dst_port")),
        (r#"[{}, {}, {"bytes":-1}]"#, 2, Some("bytes")),
        (r#"[{"bytes":1.5}]"#, 0, Some("bytes")),
        (r#"[{"src_ip":["1.1.1.1"]}]"#, 0, Some("src_ip")),
        (r#"[{"protocol":true}]"#, 0, Some("protocol")),
        (r#"[{"ts":{}}]"#, 0, Some("ts")),
        (r#"[{}, 5]"#, 1, None),
        (r#"[null]"#, 0, None),
    ];
    for (records, index, field) in cases {
        let err = envelope(&format!(r#"{{"format":"flows.v1","records":{records}}}"#)).unwrap_err();
        match &err {
            InputError::Record { index: i, field: f, message } => {
                assert_eq!(*i, index, "{records}: {err}");
                assert_eq!(f.as_deref(), field, "{records}: {err}");
                assert!(!message.contains("line 1"), "positions relative to the record confuse: {message}");
            }
            other => panic!("{records}: {other:?}"),
        }
    }
}

/// A value of the wrong type is quoted in the error, but never whole: a
/// 100 KB string came back in full in the 400 answer.
#[test]
fn errors_quote_a_long_value_only_in_part() {
    let long = "A".repeat(100 << 10);
    for field in ["dst_port", "bytes", "duration"] {
        let err = envelope(&format!(r#"{{"format":"flows.v1","records":[{{"{field}":"{long}"}}]}}"#)).unwrap_err();
        let InputError::Record { field: Some(named), .. } = &err else { panic!("{field}: {err:?}") };
        assert_eq!(named, field);
        let detail = err.to_string();
        assert!(detail.len() < 2048, "{field}: {} bytes", detail.len());
        assert!(detail.contains(&format!("field `{field}`: invalid type: string \"AAAA")), "{detail:.300}");
        assert!(detail.ends_with(" bytes in all)"), "{field}: the cut is marked");
    }
}

#[test]
fn envelope_errors() {
    assert!(matches!(envelope("nope"), Err(InputError::InvalidJson(_))));
    assert!(matches!(envelope("[]"), Err(InputError::NotAnObject)));
    assert!(matches!(envelope("   "), Err(InputError::NotAnObject)));
    assert!(matches!(envelope(r#"{"records":[]}"#), Err(InputError::MissingFormat)));
    assert!(matches!(envelope(r#"{"format":null,"records":[]}"#), Err(InputError::MissingFormat)));
    assert!(matches!(envelope(r#"{"format":"x","records":[]}"#), Err(InputError::UnknownFormat(_))));
    assert!(matches!(envelope(r#"{"format":"flows.v1"}"#), Err(InputError::Field { field: "records", .. })));
    assert!(matches!(
        envelope(r#"{"format":"flows.v1","records":"x"}"#),
        Err(InputError::Field { field: "records", .. })
    ));
    assert!(matches!(envelope(r#"{"format":"flows.v1","records":[]} trailing"#), Err(InputError::InvalidJson(_))));
    let many = format!(r#"{{"format":"flows.v1","records":[{}]}}"#, ["{}"; 3].join(","));
    let err = parse_envelope(many.into_bytes(), &ParseSpec::default(), Limits { max_records: 2 }).unwrap_err();
    assert_eq!(err, InputError::TooManyRecords { count: 3, max: 2 });
    let err = parse_envelope(vec![b'{', 0xff], &ParseSpec::default(), Limits::default()).unwrap_err();
    assert_eq!(err, InputError::InvalidUtf8(1));
}

/// Far more records than the limit: refused with "at least max + 1", the
/// records array read no further than that (it held a slice per record
/// before refusing, ~28 MB for a 5 MB body of `{}`).
#[test]
fn envelope_reading_stops_past_the_record_limit() {
    let many = format!(r#"{{"format":"flows.v1","records":[{}]}}"#, ["{}"; 100_000].join(","));
    let err = parse_envelope(many.into_bytes(), &ParseSpec::default(), Limits { max_records: 10 }).unwrap_err();
    assert_eq!(err, InputError::TooManyRecords { count: 11, max: 10 });
    assert_eq!(err.to_string(), "too many records: at least 11 (max 10)");
    // The collector stops at element max + 1: what follows is never read
    // (here it would not even be a value).
    let err = super::raw_records("[{}, {}, {}, not json]", 2).unwrap_err();
    assert_eq!(err, InputError::TooManyRecords { count: 3, max: 2 });
    let up_to = super::raw_records("[{}, 1, {\"a\": [2]}]", 3).unwrap();
    assert_eq!(up_to.iter().map(|r| r.get()).collect::<Vec<_>>(), ["{}", "1", "{\"a\": [2]}"]);
    assert!(matches!(super::raw_records("{}", 3), Err(InputError::Field { field: "records", .. })));
    // At the limit, and a bad record before it, read as before.
    let at = format!(r#"{{"format":"flows.v1","records":[{}]}}"#, ["{}"; 10].join(","));
    assert_eq!(parse_envelope(at.into_bytes(), &ParseSpec::default(), Limits { max_records: 10 }).unwrap().len(), 10);
    let bad = format!(r#"{{"format":"flows.v1","records":[{{}},{{"bytes":-1}},{}]}}"#, ["{}"; 20].join(","));
    let err = parse_envelope(bad.into_bytes(), &ParseSpec::default(), Limits { max_records: 10 }).unwrap_err();
    assert_eq!(err, InputError::TooManyRecords { count: 11, max: 10 }, "the count is checked before records are read");
}

#[test]
fn ndjson_lines_skip_blanks_and_number_records() {
    let text = "{\"src_ip\":\"1.1.1.1\"}\r\n\n  {\"src_ip\":\"2.2.2.2\"}  \n".to_string();
    let b = parse_ndjson(text, Format::FlowsV1, &ParseSpec::default(), 0).unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b.source().raw_record(&b.events()[1]), "{\"src_ip\":\"2.2.2.2\"}");
    let err =
        parse_ndjson("{}\n{\"dst_port\":\"x\"}\n".into(), Format::FlowsV1, &ParseSpec::default(), 10).unwrap_err();
    assert!(matches!(err, InputError::Record { index: 11, .. }), "{err:?}");
    // The last line needs no newline; an empty text is an empty batch.
    let b = parse_ndjson("\n{}\n {\"src_ip\":\"3.3.3.3\"}".into(), Format::FlowsV1, &ParseSpec::default(), 0).unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b.source().raw_record(&b.events()[1]), "{\"src_ip\":\"3.3.3.3\"}");
    assert_eq!(parse_ndjson(String::new(), Format::FlowsV1, &ParseSpec::default(), 0).unwrap().len(), 0);
}

fn record_error(records: &str) -> (usize, Option<String>, String) {
    match envelope(&format!(r#"{{"format":"flows.v1","records":{records}}}"#)) {
        Err(InputError::Record { index, field, message }) => (index, field, message),
        other => panic!("expected a record error for {records}, got {:?}", other.map(|b| b.len())),
    }
}

#[test]
fn duplicate_known_fields_and_aliases_are_refused() {
    let (index, field, message) = record_error(r#"[{}, {"src_ip":"1.2.3.4","src_ip":"5.6.7.8"}]"#);
    assert_eq!((index, field.as_deref()), (1, Some("src_ip")));
    assert!(message.contains("duplicate key"), "{message}");
    // Aliases of one field count as the same key, even with equal values.
    let (_, field, message) = record_error(r#"[{"id.orig_h":"1.2.3.4","id_orig_h":"1.2.3.4"}]"#);
    assert_eq!(field.as_deref(), Some("id_orig_h"));
    assert!(message.contains("id.orig_h"), "{message}");
    let (_, field, _) = record_error(r#"[{"protocol":"tcp","dst_port":1,"proto":6}]"#);
    assert_eq!(field.as_deref(), Some("proto"));
    let (_, field, _) = record_error(r#"[{"src_port":1,"id.orig_p":2}]"#);
    assert_eq!(field.as_deref(), Some("id.orig_p"));
    let (_, field, _) = record_error(r#"[{"ts":1,"bytes":2,"ts":1}]"#);
    assert_eq!(field.as_deref(), Some("ts"));
    // An escaped spelling of the same name is the same key.
    let (_, field, _) = record_error(r#"[{"src_ip":"1.2.3.4","src\u005fip":"5.6.7.8"}]"#);
    assert_eq!(field.as_deref(), Some("src_ip"));
}

#[test]
fn duplicate_unknown_and_captured_keys_are_refused() {
    let (index, field, _) = record_error(r#"[{"a":1,"b":2}, {"x":1,"uid":"C1","query":"a.example","uid":"C2"}]"#);
    assert_eq!((index, field.as_deref()), (1, Some("uid")));
    let (_, field, _) = record_error(r#"[{"query":"a.example","query":"b.example"}]"#);
    assert_eq!(field.as_deref(), Some("query"));
    let (_, field, _) = record_error(r#"[{"geo":1,"geo":2}]"#);
    assert_eq!(field.as_deref(), Some("geo"));
    let (_, field, _) = record_error(r#"[{"k\u00e9":1,"ké":2}]"#);
    assert_eq!(field.as_deref(), Some("ké"));
    // Past the 32 keys kept on the stack, detection goes on.
    let many: Vec<String> = (0..100).map(|i| format!(r#""k{i}":{i}"#)).collect();
    let (_, field, _) = record_error(&format!(r#"[{{{},"k7":0}}]"#, many.join(",")));
    assert_eq!(field.as_deref(), Some("k7"));
    let b = envelope(&format!(r#"{{"format":"flows.v1","records":[{{{}}}]}}"#, many.join(","))).unwrap();
    assert_eq!(b.len(), 1, "100 distinct keys are fine");
}

/// A record of very many distinct keys (one 5 MB record holds a few
/// hundred thousand) is read in linear time: comparing each key with every
/// earlier one took minutes here and held a worker that long. Both paths:
/// plain keys are the fast path's (which must notice the duplicate to hand
/// over), an escaped first key sends the record to the serde path.
#[test]
fn a_record_of_200k_distinct_keys_reads_quickly_and_a_late_duplicate_is_found() {
    let keys: String = (0..200_000).map(|i| format!(r#""{i:06}":0,"#)).collect();
    for first in [r#""plain":0"#, r#""\u0061":0"#] {
        let record = format!("{{{keys}{first}}}");
        let (fast, serde) = record_both_ways(&record, &ParseSpec::default());
        assert_eq!(fast.is_some(), first.starts_with(r#""p"#), "{first}: the path taken");
        assert!(serde.is_ok(), "{first}: {serde:?}");
        let b = envelope(&format!(r#"{{"format":"flows.v1","records":[{{}},{record}]}}"#)).unwrap();
        assert_eq!(b.len(), 2, "{first}");
        // The same key again as the record's last one.
        let (index, field, message) = record_error(&format!(r#"[{{}},{{{first},{keys}"123456":1}}]"#));
        assert_eq!((index, field.as_deref()), (1, Some("123456")), "{first}");
        assert!(message.contains("duplicate key"), "{message}");
    }
}

#[test]
fn distinct_keys_and_nested_objects_are_not_duplicates() {
    // Keys that differ only by an alias family are distinct fields; nested
    // objects are passed through as sent (only a record's own keys count).
    let b = envelope(
        r#"{"format":"zeek","records":[{"id.orig_h":"1.2.3.4","id.resp_h":"5.6.7.8","id.orig_p":1,"id.resp_p":2,"orig_bytes":1,"resp_bytes":2,"bytes":3,"nested":{"a":1,"a":2}},{"id.orig_h":"1.2.3.4"}]}"#,
    )
    .unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b.events()[0].src_ip, Some("1.2.3.4".parse().unwrap()));
}

/// The fast path takes the records senders actually send (otherwise every
/// batch would pay for both paths), and hands over what it must.
#[test]
fn fast_path_takes_typical_records_and_hands_over_the_rest() {
    let spec = spec(&["query"], &["geo"]);
    let typical = [
        r#"{"ts":1723351200.412345,"uid":"CHhAvVGS1DHFjwGM9","id.orig_h":"10.0.0.1","id.orig_p":51000,"id.resp_h":"2001:db8::1","id.resp_p":443,"proto":"tcp","service":"ssl","duration":0.25,"orig_bytes":512,"resp_bytes":4096,"conn_state":"SF","local_orig":true,"missed_bytes":0,"history":"ShADadFf","tunnel_parents":[],"query":"example.org"}"#,
        r#"{"ts":1700000000,"src_ip":"1.2.3.4","dst_ip":"5.6.7.8","src_port":1024,"dst_port":53,"protocol":"udp","bytes":200,"packets":1}"#,
        r#"{ "ts" : null , "src_ip" : "not an ip", "nested": {"a": [1, 2.5e-3, {"b": "\u00e9\n"}]}, "geo": 1 }"#,
        "{}",
    ];
    for text in typical {
        let (fast, serde) = record_both_ways(text, &spec);
        let fast = fast.unwrap_or_else(|| panic!("fast path gave up on {text}"));
        assert_eq!(format!("{fast:?}"), format!("{:?}", serde.unwrap()));
    }
    let handed_over = [
        r#"{"src_port":1024.0}"#,
        r#"{"sr\u0063_ip":"1.2.3.4"}"#,
        r#"{"query":"a\u002eorg"}"#,
        r#"{"a":1,"a":2}"#,
        r#"{"bytes":-1}"#,
        r#"{"ts":1e400}"#,
        r#"{"a":01}"#,
        "{\"a\":\"\u{1}\"}",
        r#"{"a":1,}"#,
        r#"{"a":1} x"#,
    ];
    for text in handed_over {
        assert!(record_both_ways(text, &spec).0.is_none(), "fast path kept {text}");
    }
    let body = r#"{"collector_id":"c","format":"zeek","records":[{"id.orig_h":"1.2.3.4"},{"query":"x"}],"extra":{"k":[true]}}"#;
    let (fast, serde) = envelope_both_ways(body, &spec, Limits::default());
    assert_eq!(format!("{:?}", fast.expect("fast path took the envelope")), format!("{:?}", serde.unwrap()));
    for body in [
        r#"{"format":"zeek","format":"zeek","records":[]}"#,
        r#"{"format":"netflow","records":[]}"#,
        r#"{"format":"zeek","records":[1]}"#,
        r#"{"format":"zeek","records":[{},{},{}]}"#,
    ] {
        assert!(envelope_both_ways(body, &spec, Limits { max_records: 2 }).0.is_none(), "fast path kept {body}");
    }
}

/// Found by the ingest fuzz targets: an address field holding a long run
/// of digits overflowed the fast IPv4 reader's octet value (a panic with
/// overflow checks on) before its length was judged. Such a field is not
/// an address: the record is kept, with a warning.
#[test]
fn an_address_made_of_long_digit_runs_is_a_warning_not_a_panic() {
    for address in ["1234567890123", "99999999999.1.1", "1.1.9999999999", "10.18.20.97000000000"] {
        let text = format!("{{\"id.orig_h\":\"{address}\",\"id.resp_h\":\"10.18.20.8\"}}\n");
        let b = parse_ndjson(text, Format::ZeekConnV1, &ParseSpec::default(), 0).unwrap();
        let e = &b.events()[0];
        assert_eq!(e.src_ip, None, "{address}");
        assert_eq!(e.dst_ip, Some("10.18.20.8".parse().unwrap()));
        assert!(e.warnings()[0].contains("is not a valid IP address"), "{:?}", e.warnings());
    }
}

/// A syntax error inside a record names the record (0-based, like every
/// record error), with its position in the body; one outside the records
/// array is the envelope's, with no index.
#[test]
fn a_syntax_error_in_a_record_names_the_record() {
    for (records, index) in [
        (r#"[{"a":1},{"b":tru}]"#, 1),
        ("[\n  {\"a\":1},\n  {\"b\":[{\"c\":}]},\n  {}\n]", 1),
        (r#"[{"a":1} {"b":1}]"#, 1),
        (r#"[{"a":"x\q"}]"#, 0),
        (r#"[{"a":1},{},{"b":"#, 2),
        // A trailing comma or a cut after a comma inside a record that
        // started: that record.
        (r#"[{"a":[1,]}]"#, 0),
        (r#"[{"a":1},{"b":[2,"#, 1),
    ] {
        let body = format!(r#"{{"format":"flows.v1","records":{records}}}"#);
        match envelope(&body) {
            Err(InputError::Record { index: i, field: None, message }) => {
                assert_eq!(i, index, "{records}: {message}");
                assert!(message.contains(" of the body)"), "{records}: {message}");
            }
            other => panic!("{records}: {:?}", other.map(|b| b.len())),
        }
    }
    let err = envelope(r#"{"format":"flows.v1","records":[{"a":1},{"b":tru}]}"#).unwrap_err();
    assert_eq!(err.code(), "invalid_record");
    assert_eq!(err.to_string(), "record 1: expected ident (at line 1 column 49 of the body)");
    for body in [
        r#"{"format":tru,"records":[{"a":1},{"b":tru}]}"#,
        r#"{"format":"flows.v1" "records":[{"a":1}]}"#,
        r#"{"format":"flows.v1","records":[{"a":1}],"x":tru}"#,
        r#"{"format":"flows.v1","records":[{"a":1}],}"#,
        r#"{"format":"flows.v1","records":[{"a":1}]"#,
        r#"{"format":"flows.v1","records":{"a":tru}}"#,
        r#"{"format":"flows.v1","records":[{"a":1}]} {"b":tru}"#,
        // No element started: no record to name.
        r#"{"format":"flows.v1","records":[{"a":1},]}"#,
        r#"{"format":"flows.v1","records":[{"a":1}, "#,
        r#"{"format":"flows.v1","records":["#,
        r#"{"format":"flows.v1","records":[{"a":1}"#,
    ] {
        assert!(matches!(envelope(body), Err(InputError::InvalidJson(_))), "{body}: {:?}", envelope(body).err());
    }
}
