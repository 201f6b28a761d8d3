//! What holds for every output: registered by `register_all`, and a schema
//! in which every option (the flattened HTTP ones included) is documented
//! and unknown keys are refused.

use enrichd_engine::Registry;
use serde_json::Value;

#[test]
fn every_output_is_registered_with_a_documented_closed_schema() {
    let mut registry = Registry::new();
    crate::register_all(&mut registry);
    let kinds: Vec<&str> = registry.outputs().map(|f| f.kind()).collect();
    assert_eq!(kinds, ["elastic", "splunk", "file", "nats", "kafka"]);
    let secrets: Vec<&[&str]> = registry.outputs().map(|f| f.secret_fields()).collect();
    assert_eq!(secrets, [&["password", "api_key"][..], &["token"], &[], &["password", "token"], &["sasl_password"]]);
    for factory in registry.outputs() {
        let kind = factory.kind();
        let schema = serde_json::to_value(factory.options_schema()).unwrap();
        assert_eq!(schema["additionalProperties"], Value::Bool(false), "{kind}: {schema:#}");
        let properties = schema["properties"].as_object().unwrap_or_else(|| panic!("{kind}: {schema:#}"));
        if kind == "nats" {
            for nats in ["servers", "user", "password", "token", "timeout_ms"] {
                assert!(properties.contains_key(nats), "{kind} lacks {nats}: {schema:#}");
            }
        } else if kind == "kafka" {
            for kafka in ["brokers", "topic", "client", "sasl_password", "max_message_bytes", "timeout_ms"] {
                assert!(properties.contains_key(kafka), "{kind} lacks {kafka}: {schema:#}");
            }
        } else if kind != "file" {
            for http in ["tls_verify", "ca_file", "timeout_ms", "gzip"] {
                assert!(properties.contains_key(http), "{kind} lacks {http}: {schema:#}");
            }
        }
        for (name, property) in properties {
            let described = property["description"].as_str().is_some_and(|d| d.len() > 10);
            assert!(described, "{kind}.{name} is undocumented: {property:#}");
        }
    }
}

#[test]
fn ca_file_is_read_relative_to_the_base_dir_at_build() {
    use enrichd_engine::component::Factory;
    let dir = tempfile::tempdir().unwrap();
    let ctx = super::test_server::context(dir.path());
    let build = |extra: serde_json::Value| {
        let mut options = serde_json::json!({ "url": "https://es:9200" });
        options.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let options = serde_json::from_value(options).unwrap();
        super::elastic::ElasticOutput.build(&options, &ctx).err().map(|e| format!("{e:#}"))
    };
    let missing = build(serde_json::json!({ "ca_file": "certs/ca.pem" })).expect("a missing file fails");
    assert!(missing.contains("certs/ca.pem"), "{missing}");
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    let junk = build(serde_json::json!({ "ca_file": "junk.pem" })).expect("junk fails");
    assert!(junk.contains("junk.pem"), "{junk}");
    assert_eq!(build(serde_json::json!({ "tls_verify": false })), None);
}

/// The gzip framing written around the deflate stream is what a standard
/// decoder expects: it inflates to the input, and it checks the CRC and
/// length this code wrote (a damaged trailer is refused).
#[test]
fn gzip_bodies_decode_with_a_standard_decoder() {
    use std::io::Read as _;
    let inflate = |gz: &[u8]| {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(gz).read_to_end(&mut plain).map(|_| plain)
    };
    let json: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("{{\"n\":{i},\"src_ip\":\"10.0.{}.{}\"}}\n", i / 256, i % 256).into_bytes())
        .collect();
    let noise: Vec<u8> = (0..300_000u64).map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8).collect();
    for body in [&b""[..], b"x", &json, &noise] {
        let gz = crate::gzip::gzip(body);
        assert_eq!(gz[..4], [0x1f, 0x8b, 8, 0]);
        assert_eq!(inflate(&gz).unwrap(), body);
        for from_end in [8, 1] {
            // A CRC byte, then a length byte.
            let mut damaged = gz.clone();
            let at = damaged.len() - from_end;
            damaged[at] ^= 1;
            assert!(inflate(&damaged).is_err(), "trailer byte -{from_end} damaged, {} bytes", body.len());
        }
    }
}
