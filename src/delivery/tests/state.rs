//! What an output reports of itself.

use super::*;

/// An error a sink reports outside its sends (a client library's thread:
/// a broker down) becomes the output's last error, shown by
/// `GET /v1/outputs` and `/v1/metrics`, without the secret it named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_error_is_the_outputs_last_error_without_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path(), |_, _| Outcome::Delivered);
    let settings = json!({"name": "o", "durability": "memory", "secret": "s3cret-token", "client_error": true});
    f.apply(vec![entry(settings)]).await.unwrap();
    let views = views(&f.delivery, &f.registry);
    let error = views[0]["counters"]["last_error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("broker down"), "{views:?}");
    assert!(!error.contains("s3cret-token"), "{error}");
}
