//! Zeek TSV logs (`enrichd enrich --input-format zeek-tsv`): the reader
//! lives in the binary (`src/cli/zeek_tsv.rs`, included here as it is),
//! converting rows to JSON records that then go through the NDJSON parser.
//! Any bytes must give rows or errors, never a panic or a loop.
#![no_main]

use std::io::Cursor;

use enrichd_engine::{parse_ndjson, Format};
use libfuzzer_sys::fuzz_target;

#[path = "../../src/cli/zeek_tsv.rs"]
mod zeek_tsv;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let reader = zeek_tsv::ZeekTsvReader::new(Box::new(Cursor::new(data.to_vec())));
    let mut ndjson = String::new();
    for row in reader {
        let Ok(row) = row else { continue };
        if let Err(e) = serde_json::from_str::<Box<serde_json::value::RawValue>>(&row) {
            panic!("row is not JSON ({e}): {row}");
        }
        ndjson.push_str(&row);
        ndjson.push('\n');
    }
    let format = Format::from_name("zeek").expect("known format");
    if let Ok(batch) = parse_ndjson(ndjson, format, &common::spec(), 1) {
        common::check_encodings(&batch);
    }
});
