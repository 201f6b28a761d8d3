//! The sources runtime's own checks: payload decoding, entry checks, views.
use super::*;

#[test]
fn bad_payloads_are_refused_with_a_code() {
    let ndjson = |body: &[u8], format: &str, gzip: bool| Payload {
        body: body.to_vec(),
        gzip,
        shape: PayloadShape::Ndjson { format: format.into() },
        origin: None,
    };
    let code = |r: Result<Input, Refusal>| match r {
        Err(Refusal::BadInput { code, .. }) => code,
        Err(other) => panic!("not bad input: {other:?}"),
        Ok(_) => "ok".into(),
    };
    assert_eq!(code(decode(ndjson(b"{}", "bogus", false), 1000)), "unknown_format");
    assert_eq!(code(decode(ndjson(b"\xff", "zeek", false), 1000)), "invalid_utf8");
    assert_eq!(code(decode(ndjson(b"not gzip", "zeek", true), 1000)), "decompress_failed");
    assert_eq!(code(decode(ndjson(&[b' '; 2000], "zeek", false), 1000)), "body_too_large");
    assert_eq!(code(decode(ndjson(b"{}", "zeek.conn.v1", false), 1000)), "ok");
}

#[test]
fn views_mask_credentials_in_urls() {
    let mut registry = Registry::new();
    enrichd_plugins::register_all(&mut registry);
    let entry = json!({
        "type": "nats", "name": "feed", "stream": "TELEMETRY", "subjects": ["telemetry.>"],
        "servers": ["nats://alice:s3cr3t-pw@nats.example:4222"], "user": "bob", "password": "other-secret",
    });
    let specs = desired(&registry, &[SourceEntry { options: entry.as_object().unwrap().clone(), line: None }])
        .expect("a valid entry");
    let view = specs[0].view(&registry).to_string();
    assert!(!view.contains("s3cr3t-pw") && !view.contains("other-secret"), "{view}");
    assert!(view.contains("nats.example:4222") && view.contains("password_set"), "{view}");
}

#[test]
fn entries_are_checked_whole() {
    let registry = Registry::new();
    let entry = |v: Value| SourceEntry { options: v.as_object().unwrap().clone(), line: Some(3) };
    let err = desired(&registry, &[entry(json!({"type": "bogus", "name": "a b", "enabled": 1}))]).unwrap_err();
    assert!(
        err.contains("line 3") && err.contains("type:") && err.contains("name:") && err.contains("enabled:"),
        "{err}"
    );
}
