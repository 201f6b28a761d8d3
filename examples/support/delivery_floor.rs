//! The delivery benchmark's floor: what delivering a batch costs the
//! machine with no enrichment at all.
//!
//! A spool-mode output must, per accepted batch, append its NDJSON to a
//! file and `fdatasync` it (group commit shared by concurrent requests),
//! then send it as a `_bulk` body to the receiver, which runs on the same
//! two cores here. Client threads do exactly that with a batch enrichd
//! wrote, and nothing else; the CPU they and the receiver use per event is
//! a cost any deliverer pays on this machine. With ingest-only's CPU per
//! event (enrichd and its clients) it bounds the ratio the target
//! is written in: `ingest / (ingest + floor)` even if enrichd's own
//! delivery code cost nothing.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events per second and CPU of this process (clients, committer,
/// receiver) per event, with the machine's steal.
pub(crate) struct Floor {
    pub events_per_second: f64,
    pub cpu_ns: f64,
    pub steal_pct: f64,
}

/// `lines`: one batch of enriched NDJSON (`events` lines); `bulk`: the
/// same as a `_bulk` body. `disk`: also append `lines` and fdatasync.
pub(crate) fn run(
    url: &str,
    lines: &[u8],
    bulk: &[u8],
    events: u64,
    disk: bool,
    seconds: u64,
    clients: usize,
) -> Floor {
    let dir = tempfile::tempdir().unwrap();
    let committer = disk.then(|| committer(dir.path().join("spool")));
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let (lines, bulk) = (Arc::new(lines.to_vec()), Arc::new(bulk.to_vec()));
    let cpu_before = super::support::cpu_seconds(std::process::id()).unwrap_or(f64::NAN);
    let ticks_before = super::support::cpu_ticks();
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, delivered, lines, bulk) = (stop.clone(), delivered.clone(), lines.clone(), bulk.clone());
            let committer = committer.clone();
            let url = format!("{url}/_bulk");
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                while !stop.load(Relaxed) {
                    if let Some(committer) = &committer {
                        let (done, wait) = mpsc::sync_channel(1);
                        committer.send((lines.clone(), done)).unwrap();
                        wait.recv().unwrap();
                    }
                    let mut r =
                        agent.post(&url).header("Content-Type", "application/x-ndjson").send(&bulk[..]).expect("bulk");
                    let _ = r.body_mut().read_to_vec();
                    delivered.fetch_add(events, Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = super::support::cpu_seconds(std::process::id()).unwrap_or(f64::NAN) - cpu_before;
    let delivered = delivered.load(Relaxed).max(1) as f64;
    Floor {
        events_per_second: delivered / elapsed,
        cpu_ns: cpu * 1e9 / delivered,
        steal_pct: super::support::steal_pct(ticks_before, super::support::cpu_ticks()),
    }
}

type Commit = (Arc<Vec<u8>>, mpsc::SyncSender<()>);

/// A group commit: appends every batch waiting, one `fdatasync` for all,
/// then answers each.
fn committer(path: std::path::PathBuf) -> mpsc::Sender<Commit> {
    let (tx, rx) = mpsc::channel::<Commit>();
    std::thread::spawn(move || {
        use std::io::Seek as _;
        let mut file = std::fs::File::create(path).unwrap();
        let mut written = 0u64;
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            group.extend(rx.try_iter());
            // Over the same 64 MiB again, as the spool reuses its segment
            // files (fresh page-cache pages cost more to write).
            if written > 64 << 20 {
                file.seek(std::io::SeekFrom::Start(0)).unwrap();
                written = 0;
            }
            for (bytes, _) in &group {
                file.write_all(bytes).unwrap();
                written += bytes.len() as u64;
            }
            file.sync_data().unwrap();
            for (_, done) in group {
                let _ = done.send(());
            }
        }
    });
    tx
}
