//! Gzip request bodies (`Content-Encoding: gzip` on `/v1/ingest`, gzip
//! `[[source]]` payloads): inflated by `limits::gunzip_capped`, which must
//! never return more than its cap, then parsed as an envelope.
#![no_main]

use enrichd_engine::limits::gunzip_capped;
use enrichd_engine::{parse_envelope, Limits};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

/// Small, so bombs in the corpus hit it.
const MAX: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = gunzip_capped(data, MAX) else { return };
    assert!(body.len() <= MAX, "{} bytes inflated past the cap", body.len());
    if let Ok(batch) = parse_envelope(body, &common::spec(), Limits::default()) {
        common::check_encodings(&batch);
    }
});
