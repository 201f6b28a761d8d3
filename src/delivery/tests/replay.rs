//! Replaying a dead-letter.

use super::*;

/// Events of an input with an origin key, dead-lettered and replayed, go
/// out with fresh ids and no origin: never under their input's key with
/// their place in the replayed entry as the index, which would name other
/// events of that input, already stored (`control::replay` says why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_goes_out_without_its_input_origin() {
    let tmp = tempfile::tempdir().unwrap();
    // Events 1 and 3 are refused on the first attempt only.
    let f = fixture(tmp.path(), |event, call| {
        if number(event) % 2 == 1 && call == 0 {
            Outcome::Reject("mapping".into())
        } else {
            Outcome::Delivered
        }
    });
    f.apply(vec![entry(json!({"durability": "memory"}))]).await.unwrap();
    let payload =
        Payload { bytes: bytes::Bytes::from_static(b"{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n"), line_ends: None };
    submit(f.delivery.active(), &[payload], 4, Some("RAW:7")).unwrap();
    let lane = f.settle("script", 4).await;
    assert_eq!(lane.stats.dead_lettered.load(Relaxed), 2);
    assert_eq!(replay(&lane).unwrap(), 2);
    f.settle("script", 6).await;
    let seen = f.shared.seen.lock().unwrap().clone();
    let origin_of = |n: u64| -> Vec<Option<(String, u32)>> {
        seen.iter().filter(|(e, _)| number(e) == n).map(|(_, o)| o.clone()).collect()
    };
    assert_eq!(origin_of(1), [Some(("RAW:7".to_string(), 1)), None], "first with its origin, replayed without");
    assert_eq!(origin_of(3), [Some(("RAW:7".to_string(), 3)), None]);
    assert_eq!(lane.stats.sent.load(Relaxed), 4, "every event delivered once");
    assert_eq!(lane.stats.duplicates.load(Relaxed), 0);
}
