//! `POST /v1/ingest` bodies (and `[[source]]` envelope payloads): any bytes
//! must be refused with an `InputError` or parsed into a batch whose
//! encoded forms (the ingest answer and NDJSON) are valid JSON, one line
//! per record.
#![no_main]

use enrichd_engine::{parse_envelope, Limits};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let spec = common::spec();
    if let Ok(batch) = parse_envelope(data.to_vec(), &spec, Limits { max_records: 1000 }) {
        common::check_encodings(&batch);
    }
});
