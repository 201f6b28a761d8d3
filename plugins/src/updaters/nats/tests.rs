//! `nats_object` against a real nats-server: publish, fetch, unchanged,
//! the watch's wake-up, and the bounds.

use std::time::Duration;

use enrichd_engine::component::Factory;
use enrichd_engine::updater::{Fetched, UpdateContext, Validators};
use serde_json::{json, Map, Value};

use super::*;
use crate::nats::test_server::NatsServer;

fn options(value: Value) -> Map<String, Value> {
    let Value::Object(map) = value else { unreachable!() };
    map
}

fn runner(url: &str, extra: Value, target: &std::path::Path) -> Arc<dyn UpdateRunner> {
    let mut o = options(json!({"servers": [url], "bucket": "test", "timeout_ms": 2000}));
    o.extend(options(extra));
    assert!(NatsObjectUpdater.check(&o).is_empty(), "{:?}", NatsObjectUpdater.check(&o));
    let ctx = UpdateContext { name: "rule".into(), base_dir: "/".into(), target: target.to_path_buf() };
    Factory::build(&NatsObjectUpdater, &o, &ctx).unwrap()
}

#[test]
fn options_are_checked() {
    let bad =
        options(json!({"servers": [], "bucket": "a.b", "replicas": 9, "max_bytes": 0, "object": "a b", "bogus": 1}));
    let fields: Vec<String> = NatsObjectUpdater.check(&bad).into_iter().map(|e| e.field).collect();
    for want in ["servers", "bucket", "replicas", "max_bytes", "object", "bogus"] {
        assert!(fields.iter().any(|f| f == want), "{want} in {fields:?}");
    }
    assert_eq!(Factory::secret_fields(&NatsObjectUpdater), &["password", "token"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_fetches_and_wakes_on_a_new_version() {
    let Some(nats) = NatsServer::start("publishes_fetches_and_wakes_on_a_new_version") else { return };
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("staged");
    let target = dir.path().join("rule.wasm");
    let reader = runner(&nats.url, json!({}), &target);
    let writer = runner(&nats.url, json!({}), &target);

    // Nothing published yet: an error that says so, and no staged file.
    let err = reader.fetch(&Validators::default(), &staging).await.unwrap_err();
    assert!(err.contains("nothing published"), "{err}");

    let published = writer.publish(b"version one").unwrap().await.unwrap();
    assert!(published.contains("test/rule revision"), "{published}");
    let Fetched::Staged { validators, detail } = reader.fetch(&Validators::default(), &staging).await.unwrap() else {
        panic!("expected a staged file")
    };
    assert_eq!(std::fs::read(&staging).unwrap(), b"version one");
    assert!(detail.contains("11 bytes"), "{detail}");
    assert!(validators.digest.as_deref().is_some_and(|d| d.starts_with("SHA-256=")), "{validators:?}");
    // While the local file is missing, the same version is fetched again
    // (a file deleted by hand comes back); once it is there, unchanged.
    assert!(matches!(reader.fetch(&validators, &staging).await.unwrap(), Fetched::Staged { .. }));
    std::fs::rename(&staging, &target).unwrap();
    assert_eq!(reader.fetch(&validators, &staging).await.unwrap(), Fetched::Unchanged);

    // The watch: the first wake-up is the check after it starts; the next
    // one must come from the publish.
    tokio::time::timeout(Duration::from_secs(5), reader.changes().unwrap()).await.expect("initial wake-up");
    let wake = reader.changes().unwrap();
    writer.publish(b"version two").unwrap().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), wake).await.expect("a publish wakes the watcher");
    let Fetched::Staged { .. } = reader.fetch(&validators, &staging).await.unwrap() else { panic!("new version") };
    assert_eq!(std::fs::read(&staging).unwrap(), b"version two");

    // Over max_bytes: refused on both sides, the file untouched.
    let small = runner(&nats.url, json!({"max_bytes": 4}), &target);
    assert!(small.publish(b"too large").unwrap().await.unwrap_err().contains("max_bytes"));
    std::fs::remove_file(&staging).unwrap();
    let err = small.fetch(&Validators::default(), &staging).await.unwrap_err();
    assert!(err.contains("over max_bytes"), "{err}");
    assert!(!staging.exists());
}

/// A status board bucket created by hand without `max_age` keeps every
/// entry for ever: instances older than `status_ttl_s` are still left out
/// of the members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_older_than_the_ttl_are_left_out() {
    let Some(nats) = NatsServer::start("members_older_than_the_ttl_are_left_out") else { return };
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    js.create_key_value(kv::Config { bucket: "enrichd-status".into(), history: 1, ..Default::default() })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let board =
        runner(&nats.url, json!({"status_bucket": "enrichd-status", "status_ttl_s": 15}), &dir.path().join("x"));
    board.announce("gone", &json!({"instance": "gone"})).unwrap().await.unwrap();
    assert_eq!(board.members().unwrap().await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_secs(16)).await;
    board.announce("here", &json!({"instance": "here"})).unwrap().await.unwrap();
    let members = board.members().unwrap().await.unwrap();
    assert_eq!(members, [json!({"instance": "here"})]);
}

/// An object whose metadata carries no digest (written by another client,
/// or tampered with) is not taken: the client checks the chunks only when
/// there is a digest to check them against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_without_a_digest_is_refused() {
    use base64::Engine as _;
    let Some(nats) = NatsServer::start("an_object_without_a_digest_is_refused") else { return };
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("rule.wasm");
    let writer = runner(&nats.url, json!({}), &target);
    // The bucket, made by a regular publish; then the object's metadata
    // replaced by one without a digest over a chunk of other content.
    writer.publish(b"version one").unwrap().await.unwrap();
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish("$O.test.C.forged", "tampered!!!".into()).await.unwrap().await.unwrap();
    let meta = json!({
        "name": "rule", "bucket": "test", "nuid": "forged", "size": 11, "chunks": 1,
        "mtime": "2026-01-01T00:00:00Z",
    });
    let subject = format!("$O.test.M.{}", base64::engine::general_purpose::URL_SAFE.encode("rule"));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Rollup", "sub");
    js.publish_with_headers(subject, headers, meta.to_string().into()).await.unwrap().await.unwrap();
    let reader = runner(&nats.url, json!({}), &target);
    let err = reader.fetch(&Validators::default(), &dir.path().join("staged")).await.unwrap_err();
    assert!(err.contains("no digest"), "{err}");
}
