//! Opening a spool: every segment checked, damage cut off and counted,
//! delivered segments removed, spare files adopted (see the parent's
//! module docs for the layout).

use std::fs::{self, OpenOptions};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{bail, Context};

use super::{disk, spares, Recovery, Segment, Spool, SpoolConfig, State, SyncState};

impl Spool {
    /// Opens (or creates) the spool in `config.dir`, checking every segment.
    /// Damage is cut off, counted and described in the `Recovery`; only an
    /// I/O error (unreadable directory, failed truncate) fails the open.
    pub(crate) fn open(config: SpoolConfig) -> anyhow::Result<(Spool, Recovery)> {
        let SpoolConfig { dir, max_bytes, segment_bytes } = config;
        if segment_bytes == 0 || max_bytes == 0 {
            bail!("spool max_bytes and segment_bytes must be positive");
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating the spool directory {}", dir.display()))?;
        let mut recovery = Recovery::default();
        let first_unacked = match disk::read_ack(&dir).context("reading the spool's ack file")? {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(text)) => {
                recovery
                    .problems
                    .push(format!("ack file unreadable ({text:?}): delivering from the oldest entry again"));
                0
            }
        };
        let mut st = State {
            first_unacked,
            persisted_first_unacked: first_unacked,
            next_seq: first_unacked,
            ..State::default()
        };
        let mut removed_any = false;
        for (first_seq, path) in disk::list_segments(&dir).context("listing the spool directory")? {
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let prev_end = st.segments.back().map_or(0, Segment::end_seq);
            if first_seq < prev_end {
                let len = fs::metadata(&path).map_or(0, |m| m.len());
                recovery.corrupt_entries += 1;
                recovery.corrupt_bytes += len;
                recovery
                    .problems
                    .push(format!("{name}: overlaps the previous segment (which ends before seq {prev_end}); ignored"));
                continue;
            }
            let file =
                OpenOptions::new().read(true).write(true).open(&path).with_context(|| format!("opening {name}"))?;
            let scan = disk::scan_segment(&file, first_seq).with_context(|| format!("reading {name}"))?;
            if let Some(problem) = &scan.problem {
                let cut = scan.file_len - scan.valid_len;
                recovery.corrupt_entries += 1;
                recovery.corrupt_bytes += cut;
                recovery.problems.push(format!("{name}: {problem}; dropped the last {cut} bytes of the segment"));
            }
            // Damage, or an end marker and older bytes of a reused file
            // (no damage): either way the segment continues from here.
            if scan.valid_len < scan.file_len {
                file.set_len(scan.valid_len).with_context(|| format!("truncating {name}"))?;
                file.sync_all().with_context(|| format!("syncing {name}"))?;
            }
            let segment = Segment {
                first_seq,
                path,
                file: Arc::new(file),
                disk_bytes: scan.valid_len,
                file_len: scan.valid_len,
                entries: scan.entries,
            };
            if segment.entries.is_empty() || segment.end_seq() <= first_unacked {
                fs::remove_file(&segment.path).with_context(|| format!("removing {name}"))?;
                removed_any = true;
                continue;
            }
            st.used_bytes += segment.disk_bytes;
            for (i, meta) in segment.entries.iter().enumerate() {
                if first_seq + i as u64 >= first_unacked {
                    st.unacked_bytes += meta.disk_len();
                    st.unacked_entries += 1;
                    st.unacked_events += u64::from(meta.events);
                }
            }
            st.next_seq = st.next_seq.max(segment.end_seq());
            st.segments.push_back(segment);
        }
        if removed_any {
            disk::sync_dir(&dir).context("syncing the spool directory")?;
        }
        st.spares = spares::Spares::adopt(&dir, max_bytes.saturating_sub(st.used_bytes), segment_bytes)
            .context("reading the spool's spare files")?;
        recovery.entries = st.unacked_entries;
        recovery.events = st.unacked_events;
        recovery.bytes = st.unacked_bytes;
        let synced_next = st.next_seq;
        let spool = Spool {
            dir,
            max_bytes,
            segment_bytes,
            state: Mutex::new(st),
            sync: Mutex::new(SyncState { synced_next, syncing: false, failed: false }),
            synced: Condvar::new(),
            poisoned: AtomicBool::new(false),
            ack_lock: Mutex::new(None),
            fsyncs: AtomicU64::new(0),
            #[cfg(test)]
            test_hooks: super::tests::Hooks::default(),
        };
        Ok((spool, recovery))
    }
}
