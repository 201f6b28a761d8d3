//! `POST /v1/ingest` bodies (and `[[source]]` envelope payloads): any bytes
//! must be refused with an `InputError` or parsed into a batch whose
//! encoded forms (the ingest answer and NDJSON) are valid JSON, one line
//! per record. Read in 2-4 parts (guessed record boundaries, checked by
//! the first thread) it must give exactly the same answer or error.
#![no_main]

use enrichd_engine::{parse_envelope, parse_envelope_in_parts, Limits};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let spec = common::spec();
    let limits = Limits { max_records: 1000 };
    let whole = parse_envelope(data.to_vec(), &spec, limits);
    if let Ok(batch) = &whole {
        common::check_encodings(batch);
    }
    let parts = 2 + data.len() % 3;
    common::same_result(&whole, &parse_envelope_in_parts(data.to_vec(), &spec, limits, parts), "split envelope");
});
