//! Indicator files for the `ti` plugin (plain lists, CSV with a header,
//! Zeek intel; the format is detected from the text): any text must load
//! into an index (bad lines counted, never a panic), and every match the
//! index gives for the file's own tokens must write valid JSON.
#![no_main]

use std::net::IpAddr;

use enrichd_plugins::ti::index::IndexBuilder;
use enrichd_plugins::ti::loader::{parse_text, FileReport};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let max_line = if first & 1 == 0 { 8 << 10 } else { 40 };
    let mut report = FileReport { source: "fuzz.txt".into(), ..FileReport::default() };
    let mut builder = IndexBuilder::default();
    parse_text(text, &mut report, &mut builder, max_line);
    assert_eq!(report.indicators, report.addr + report.subnet + report.domain, "{report:?}");
    let index = builder.finish();
    let mut json = String::new();
    let mut check = |hit: enrichd_plugins::ti::Hit<'_>| {
        json.clear();
        json.push_str(&format!("{{\"indicator\":{:?}", hit.indicator.to_string()));
        json.push_str(hit.tail);
        if let Err(e) = serde_json::from_str::<Box<serde_json::value::RawValue>>(&json) {
            panic!("match is not JSON ({e}): {json}");
        }
    };
    let tokens = text.split(|c: char| c.is_whitespace() || c == ',' || c == '/' || c == '"').filter(|t| !t.is_empty());
    for token in tokens.take(256) {
        match token.parse::<IpAddr>() {
            Ok(ip) => index.for_each_ip_match(ip, &mut check),
            Err(_) => index.for_each_domain_match(token, &mut check),
        }
    }
});
