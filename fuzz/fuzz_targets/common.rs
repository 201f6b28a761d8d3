//! What the ingest targets share: a parse spec that captures text fields
//! and declares output keys (so those paths run too), and the check that
//! a parsed batch encodes to valid JSON.
#![allow(dead_code)]

use enrichd_engine::{Batch, ParseSpec};
use serde_json::value::RawValue;

pub fn spec() -> ParseSpec {
    ParseSpec {
        text_fields: vec!["query".into(), "uid".into(), "host".into()],
        output_keys: vec!["geo".into(), "ti".into()],
    }
}

/// Two parses of the same bytes give the same batch: the same answer,
/// byte for byte, or both an error (the same one).
pub fn same_result(
    a: &Result<Batch, enrichd_engine::InputError>,
    b: &Result<Batch, enrichd_engine::InputError>,
    what: &str,
) {
    match (a, b) {
        (Ok(a), Ok(b)) => {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            a.write_ingest_response(&[], &mut x);
            b.write_ingest_response(&[], &mut y);
            assert_eq!(String::from_utf8_lossy(&x), String::from_utf8_lossy(&y), "{what}");
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "{what}"),
        (a, b) => panic!("{what}: one read accepted, the other refused: {:?} / {:?}", a.as_ref().err(), b.as_ref().err()),
    }
}

/// The ingest answer is one JSON document and the NDJSON form is one valid
/// JSON object per record.
pub fn check_encodings(batch: &Batch) {
    let mut out = Vec::new();
    batch.write_ingest_response(&[], &mut out);
    if let Err(e) = serde_json::from_slice::<Box<RawValue>>(&out) {
        panic!("ingest answer is not JSON ({e}): {}", String::from_utf8_lossy(&out));
    }
    out.clear();
    batch.write_ndjson(&[], &mut out);
    let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), batch.len(), "one NDJSON line per record");
    for line in lines {
        if let Err(e) = serde_json::from_slice::<Box<RawValue>>(line) {
            panic!("NDJSON line is not JSON ({e}): {}", String::from_utf8_lossy(line));
        }
    }
}
