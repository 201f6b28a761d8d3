//! Group commit: appenders wait for one fsync that covers their entry
//! (see the parent's module docs, "Durability").

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use super::{disk, lock, poisoned_error, AppendError, Spool};

impl Spool {
    /// Group commit: returns once an fsync covering `seq` succeeded, doing
    /// that fsync itself if nobody else is.
    pub(super) fn wait_durable(&self, seq: u64) -> Result<(), AppendError> {
        let mut sync = lock(&self.sync);
        loop {
            if sync.synced_next > seq {
                return Ok(());
            }
            if sync.failed {
                return Err(poisoned_error().into());
            }
            if !sync.syncing {
                break;
            }
            sync = self.synced.wait(sync).unwrap_or_else(PoisonError::into_inner);
        }
        sync.syncing = true;
        drop(sync);
        let result = self.sync_round();
        let mut sync = lock(&self.sync);
        sync.syncing = false;
        match &result {
            Ok(target) => sync.synced_next = sync.synced_next.max(*target),
            Err(_) => {
                sync.failed = true;
                self.poisoned.store(true, Ordering::Release);
            }
        }
        self.synced.notify_all();
        drop(sync);
        result.map(|_| ()).map_err(AppendError::Io)
    }

    /// One leader's fsync of everything written so far; returns the seq
    /// below which all entries are now durable.
    fn sync_round(&self) -> io::Result<u64> {
        let (target, files, dir_dirty) = {
            let mut st = lock(&self.state);
            let mut files = std::mem::take(&mut st.unsynced);
            files.extend(st.segments.back().map(|s| Arc::clone(&s.file)));
            (st.next_seq, files, std::mem::take(&mut st.dir_dirty))
        };
        #[cfg(test)]
        self.test_hooks.before_sync()?;
        for file in files {
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            file.sync_data()?;
        }
        if dir_dirty {
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            disk::sync_dir(&self.dir)?;
        }
        Ok(target)
    }
}
