//! NDJSON input (`enrichd enrich`, `[[source]]` NDJSON payloads): the first
//! byte picks the format, the rest is the text. Refused with an
//! `InputError` or parsed into a batch whose encodings are valid JSON;
//! read in 2-4 parts, the same answer or error.
#![no_main]

use enrichd_engine::{parse_ndjson, parse_ndjson_in_parts, Format, Limits};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let format = if first & 1 == 0 { Format::from_name("zeek") } else { Format::from_name("flows.v1") };
    let format = format.expect("known format names");
    let whole = parse_ndjson(text.to_owned(), format, &common::spec(), 1);
    if let Ok(batch) = &whole {
        common::check_encodings(batch);
    }
    let split = parse_ndjson_in_parts(
        text.to_owned(),
        format,
        &common::spec(),
        1,
        Limits { max_records: usize::MAX },
        2 + first as usize % 3,
    );
    common::same_result(&whole, &split, "split NDJSON");
});
