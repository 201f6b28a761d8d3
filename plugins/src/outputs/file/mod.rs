//! `file`: enriched events appended to a local NDJSON file, rotated by
//! size (`path` -> `path.1` -> ... -> `path.N`).
//!
//! For archives, for a log shipper that tails the file, and for trying
//! outputs out without a cluster. Each batch is written and flushed (and
//! with `fsync`, synced) before `send` returns, so `Delivered` means the
//! kernel (or the disk) has it. An IO error (disk full, permissions) is a
//! `Retry` for the events not yet flushed; the file is cut back to the
//! last flushed line so a retry does not leave half a line behind, and the
//! file is reopened on the next batch. Nothing is ever rejected.
//!
//! Writes are blocking file IO: they run on tokio's blocking pool, one
//! batch at a time per sink.

mod options;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use enrichd_engine::component::Component;
use enrichd_engine::output::{
    BoxFuture, FieldError, Outcome, OutputContext, OutputFamily, SendReport, Sink, SinkBatch,
};

pub use self::options::FileOptions;

/// Factory of the `file` output.
pub struct FileOutput;

impl Component for FileOutput {
    type Family = OutputFamily;
    type Options = FileOptions;

    fn kind(&self) -> &'static str {
        "file"
    }

    fn description(&self) -> &'static str {
        "NDJSON file, rotated by size"
    }

    fn path_fields(&self) -> &'static [&'static str] {
        &["path"]
    }

    fn validate(&self, options: &FileOptions) -> Vec<FieldError> {
        options.validate()
    }

    fn build(&self, options: FileOptions, ctx: &OutputContext) -> anyhow::Result<Arc<dyn Sink>> {
        let path = ctx.base_dir.join(options.path.as_deref().context("path is required")?);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut state = FileState {
            path,
            max_bytes: options.max_bytes,
            max_files: options.max_files.max(1),
            fsync: options.fsync,
            writer: None,
            size: 0,
            flushed_size: 0,
        };
        // Open now: a path that cannot be written fails the build, not
        // every batch.
        state.open().with_context(|| format!("opening {}", state.path.display()))?;
        Ok(Arc::new(FileSink { state: Arc::new(Mutex::new(state)) }))
    }
}

struct FileSink {
    state: Arc<Mutex<FileState>>,
}

impl Sink for FileSink {
    fn send<'a>(&'a self, batch: SinkBatch<'a>) -> BoxFuture<'a, SendReport> {
        // The blocking pool needs owned data: one buffer, one range per
        // event.
        let mut bytes = Vec::with_capacity(batch.events.iter().map(|e| e.json.len()).sum());
        let mut ends = Vec::with_capacity(batch.events.len());
        for event in batch.events {
            bytes.extend_from_slice(event.json);
            ends.push(bytes.len());
        }
        let state = self.state.clone();
        Box::pin(async move {
            let n = ends.len();
            let written = tokio::task::spawn_blocking(move || {
                let mut state = state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                state.write_batch(&bytes, &ends)
            })
            .await;
            let outcomes = written.unwrap_or_else(|e| vec![Outcome::Retry(format!("file writer failed: {e}")); n]);
            SendReport { outcomes, http_status: None }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        let state = self.state.clone();
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || {
                let mut state = state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Err(e) = state.flush() {
                    tracing::warn!(path = %state.path.display(), "closing the output file: {e}");
                }
                state.writer = None;
            })
            .await;
        })
    }
}

struct FileState {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    fsync: bool,
    /// `None` after an error: reopened by the next batch.
    writer: Option<BufWriter<File>>,
    /// Bytes in the current file, counting buffered ones.
    size: u64,
    /// Bytes in the current file known to be flushed (synced with `fsync`).
    flushed_size: u64,
}

impl FileState {
    /// Writes the events (`bytes` split at `ends`), one per line: every
    /// event flushed is `Delivered`, the rest `Retry` if an IO error
    /// stopped the batch.
    fn write_batch(&mut self, bytes: &[u8], ends: &[usize]) -> Vec<Outcome> {
        let mut flushed = 0;
        let result = self.write_events(bytes, ends, &mut flushed);
        let Err(error) = result else {
            return vec![Outcome::Delivered; ends.len()];
        };
        let message = format!("writing {}: {error}", self.path.display());
        self.abandon();
        let mut outcomes = vec![Outcome::Delivered; flushed];
        outcomes.resize(ends.len(), Outcome::Retry(message));
        outcomes
    }

    fn write_events(&mut self, bytes: &[u8], ends: &[usize], flushed: &mut usize) -> io::Result<()> {
        self.open()?;
        let mut start = 0;
        for (i, &end) in ends.iter().enumerate() {
            let event = &bytes[start..end];
            start = end;
            let line_len = event.len() as u64 + 1;
            if self.max_bytes > 0 && self.size > 0 && self.size + line_len > self.max_bytes {
                self.flush()?;
                *flushed = i;
                self.rotate()?;
            }
            let writer = self.writer.as_mut().expect("opened above");
            // One line by the interface's promise (`OutEvent::json`).
            debug_assert!(!event.iter().any(|&b| b == b'\n' || b == b'\r'));
            writer.write_all(event)?;
            writer.write_all(b"\n")?;
            self.size += line_len;
        }
        self.flush()?;
        *flushed = ends.len();
        Ok(())
    }

    /// Opens the file for appending if it is not open.
    fn open(&mut self) -> io::Result<()> {
        if self.writer.is_none() {
            let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.size = file.metadata()?.len();
            self.flushed_size = self.size;
            self.writer = Some(BufWriter::with_capacity(256 << 10, file));
        }
        Ok(())
    }

    /// Flushes (and syncs, with `fsync`) what is buffered.
    fn flush(&mut self) -> io::Result<()> {
        if let Some(writer) = &mut self.writer {
            writer.flush()?;
            if self.fsync {
                writer.get_ref().sync_data()?;
            }
            self.flushed_size = self.size;
        }
        Ok(())
    }

    /// Closes the (flushed) file and shifts `path` -> `path.1` -> ... ->
    /// `path.N` (the old `path.N` goes), then opens a new `path`.
    fn rotate(&mut self) -> io::Result<()> {
        self.writer = None;
        for k in (1..self.max_files).rev() {
            let from = numbered(&self.path, k);
            if from.exists() {
                std::fs::rename(&from, numbered(&self.path, k + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))?;
        self.open()
    }

    /// After an error: drops what is buffered, cuts the file back to the
    /// last flushed line (best effort), and closes it so the next batch
    /// reopens.
    fn abandon(&mut self) {
        if let Some(writer) = self.writer.take() {
            let (file, _unwritten) = writer.into_parts();
            if let Err(e) = file.set_len(self.flushed_size) {
                tracing::warn!(path = %self.path.display(), "cutting back a partly written batch: {e}");
            }
        }
    }
}

/// `path.k`.
fn numbered(path: &Path, k: u32) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(".{k}"));
    PathBuf::from(name)
}
