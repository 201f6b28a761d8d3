//! Changing the running set: the order concurrent changes apply in, and
//! what a refused change leaves behind.

use std::future::Future;
use std::task::Poll;

use super::*;

fn file_entry(batch_max: usize) -> Vec<options::OutputEntry> {
    vec![options::OutputEntry {
        options: entry(json!({"name": "o", "durability": "memory", "batch_max": batch_max})),
        line: None,
    }]
}

async fn reconcile(f: &Fixture) -> Result<(), String> {
    f.delivery.reconcile(&f.registry, &(Profiles::embedded(), None), &|_| None).await
}

fn batch_max(f: &Fixture) -> usize {
    f.delivery.snapshot().iter().find(|s| s.spec.runtime.name == "o").unwrap().spec.runtime.batch_max
}

/// An API change's reconcile that has to wait for a reload's (here: the
/// lock held by the test) applies the settings as they are when its turn
/// comes, not as they were when it asked: a refused file's outputs, put
/// back while it waited, must not go live after the restore.
#[tokio::test]
async fn a_waiting_reconcile_applies_the_settings_of_its_turn() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path(), |_, _| Outcome::Delivered);
    f.delivery.set_config_entries(file_entry(10));
    reconcile(&f).await.unwrap();
    assert_eq!(batch_max(&f), 10);
    // Another reconcile is under way...
    let under_way = f.delivery.running.lock().await;
    // ... while a reload sets a file it will refuse, and an API change's
    // reconcile starts and waits.
    f.delivery.set_config_entries(file_entry(20));
    let mut waiting = Box::pin(reconcile(&f));
    std::future::poll_fn(|cx| {
        assert!(waiting.as_mut().poll(cx).is_pending(), "waits for the reconcile under way");
        Poll::Ready(())
    })
    .await;
    // The reload puts the previous file back; then the waiting one runs.
    f.delivery.set_config_entries(file_entry(10));
    drop(under_way);
    waiting.await.unwrap();
    assert_eq!(batch_max(&f), 10, "the restored file's setting, not the refused one's");
}

/// A change of durability whose sink cannot be built leaves the output on
/// the lane it runs on: views, the dead-letter calls and the shutdown find
/// that lane by name, not one of the new durability left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_change_of_durability_leaves_no_new_lane() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path(), |_, _| Outcome::Retry("down".into()));
    f.apply(vec![entry(json!({"name": "o", "durability": "memory"}))]).await.unwrap();
    let lane = f.delivery.lane_named("o").unwrap();
    let refused = f.apply(vec![entry(json!({"name": "o", "durability": "spool", "fail": true}))]).await;
    assert!(format!("{:#}", refused.unwrap_err()).contains("could not log in"));
    let found = f.delivery.lane_named("o").unwrap();
    assert!(Arc::ptr_eq(&found, &lane), "the running lane, not a {:?} one", found.durability);
    assert!(!tmp.path().join("spool").join("o").exists(), "no spool opened for the refused change");
    // Still the running output's: what it queues goes to the dead-letter
    // at shutdown (a memory queue), found through the registered lane.
    f.submit(0, 3).unwrap();
    f.delivery.shutdown(Instant::now() + Duration::from_millis(50)).await;
    assert_eq!(lane.stats.dead_lettered.load(Relaxed), 3);
}

/// Batches appended to an output's lane while a change of its durability
/// is being applied (found empty, then ingest still on the old lanes until
/// the new set is live) are handed over to the new lane and delivered,
/// not left in a lane nothing reads any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_queued_during_a_change_of_durability_are_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    // Down until the change is live: the old worker delivers nothing.
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let is_up = up.clone();
    let f = fixture(
        tmp.path(),
        move |_, _| if is_up.load(Relaxed) { Outcome::Delivered } else { Outcome::Retry("down".into()) },
    );
    f.apply(vec![entry(json!({"name": "o", "durability": "memory"}))]).await.unwrap();
    // Ingest holding the lanes it saw before the change appends while the
    // new sink is built.
    let seen_before = f.delivery.active();
    *f.shared.on_build.lock().unwrap() = Some(Box::new(move || {
        let payload = Payload::from(bytes::Bytes::from_static(b"{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n"));
        submit(seen_before.clone(), &[payload], 3, None).unwrap();
    }));
    f.apply(vec![entry(json!({"name": "o", "durability": "spool"}))]).await.unwrap();
    *f.shared.on_build.lock().unwrap() = None;
    up.store(true, Relaxed);
    let lane = f.settle("o", 3).await;
    assert_eq!(lane.durability, Durability::Spool);
    let mut got: Vec<u64> = f.shared.delivered.lock().unwrap().iter().map(|e| number(e)).collect();
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2], "delivered from the new lane");
    assert_eq!(lane.stats.sent.load(Relaxed), 3);
}
