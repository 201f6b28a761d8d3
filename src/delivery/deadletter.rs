//! The dead-letter: events an output rejected for good (a mapping error, a
//! 400 for that document) or gave up on, kept on disk for inspection and
//! replay instead of being dropped.
//!
//! # Format
//!
//! NDJSON, one event per line, oldest first:
//! `{"output":"es","error":"...","attempts":3,"unix_ms":...,"event":{...}}`.
//! The event is embedded as JSON (not a string) so `jq` and the API show
//! it as it was; if its bytes are not valid JSON it is kept as a string
//! under `event_raw` instead (non-UTF-8 bytes become U+FFFD there). Line
//! breaks inside a JSON event are whitespace and become spaces, so one
//! event stays one line.
//!
//! # Bounds
//!
//! Two files, `<prefix>.ndjson` (written) and `<prefix>.1.ndjson` (the one
//! before). When the next line would take the current file past half of
//! `max_bytes`, or both files past `max_bytes`, the current file replaces
//! the rotated one, whose lines are lost: `append` returns how many, so the
//! caller can count them (nothing is lost silently). So the pair holds
//! between half and all of `max_bytes`, and never more. A line longer than
//! `max_bytes` on its own is not written and counts as evicted too.
//! Rotating whole files keeps appends O(1) and the files plain NDJSON, at
//! the cost of evicting up to half the bound at once.
//!
//! # Durability
//!
//! Files are created 0600 (events carry addresses and user data). Every
//! `append` ends with an fsync, and a rotation fsyncs the directory: an
//! event that reached the dead-letter survives a crash. A torn last line
//! (crash mid-write) is ended at open and shows up as unparseable.
//! `take_all` reads everything, then empties both files: the caller must
//! re-spool what it got before another crash, or those events are gone.
//! An `append` that fails part-way may have kept the lines before the
//! failure: a retry of the whole batch duplicates those, never loses any.

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::durable::sync_dir;

/// One rejected event, borrowed from the batch being delivered.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeadRecord<'a> {
    /// The event as sent: a JSON object.
    pub(crate) event: &'a [u8],
    pub(crate) error: &'a str,
    pub(crate) attempts: u32,
    pub(crate) unix_ms: u64,
}

/// A dead-lettered event read back for replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OwnedDeadRecord {
    pub(crate) event: Vec<u8>,
    pub(crate) error: String,
    pub(crate) attempts: u32,
    pub(crate) unix_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DeadLetterStats {
    pub(crate) events: u64,
    pub(crate) bytes: u64,
}

pub(crate) struct DeadLetter {
    output: String,
    max_bytes: u64,
    dir: PathBuf,
    current_path: PathBuf,
    rotated_path: PathBuf,
    state: Mutex<State>,
    /// Tests: the next rotation fails to create the new current file.
    #[cfg(test)]
    fail_next_create: std::sync::atomic::AtomicBool,
}

struct State {
    file: File,
    current: Part,
    rotated: Part,
    /// A rotation renamed the current file but could not create its
    /// successor: `file` is the renamed one and must not be written.
    reopen: bool,
}

/// An append that failed part way: what it had already evicted (rotated
/// out for good) is counted by the caller all the same.
#[derive(Debug)]
pub(crate) struct AppendFailed {
    pub evicted: u64,
    pub error: anyhow::Error,
}

impl std::fmt::Display for AppendFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

#[derive(Clone, Copy, Default)]
struct Part {
    lines: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct LineOut<'a> {
    output: &'a str,
    error: &'a str,
    attempts: u32,
    unix_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_raw: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct LineIn {
    error: String,
    attempts: u32,
    unix_ms: u64,
    event: Option<Box<RawValue>>,
    event_raw: Option<String>,
}

const UNPARSEABLE: &str = "dead-letter line could not be parsed (torn write?)";

fn lock(mutex: &Mutex<State>) -> MutexGuard<'_, State> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(prefix.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens for appending, creating it 0600; an existing file is set to 0600 too.
fn open_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|&b| b == b'\n').filter(|line| !line.is_empty())
}

fn count(bytes: &[u8]) -> Part {
    Part { lines: lines(bytes).count() as u64, bytes: bytes.len() as u64 }
}

fn read_or_empty(path: &Path) -> io::Result<Vec<u8>> {
    match fs::read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        other => other,
    }
}

impl DeadLetter {
    /// Opens (or creates) `<prefix>.ndjson` for `output`, counting what is
    /// already there.
    pub(crate) fn open(path_prefix: &Path, output: &str, max_bytes: u64) -> anyhow::Result<DeadLetter> {
        let dir = match path_prefix.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let current_path = with_suffix(path_prefix, ".ndjson");
        let rotated_path = with_suffix(path_prefix, ".1.ndjson");
        let context = |path: &Path| format!("opening the dead-letter file {}", path.display());
        let mut file = open_file(&current_path).with_context(|| context(&current_path))?;
        let mut bytes = fs::read(&current_path).with_context(|| context(&current_path))?;
        if bytes.last().is_some_and(|&b| b != b'\n') {
            // A crash cut the last line: end it, so the next one starts clean.
            file.write_all(b"\n").and_then(|()| file.sync_data()).with_context(|| context(&current_path))?;
            bytes.push(b'\n');
        }
        let rotated_bytes = read_or_empty(&rotated_path).with_context(|| context(&rotated_path))?;
        if !rotated_bytes.is_empty() {
            fs::set_permissions(&rotated_path, fs::Permissions::from_mode(0o600))
                .with_context(|| context(&rotated_path))?;
        }
        sync_dir(&dir).with_context(|| format!("syncing {}", dir.display()))?;
        let state = State { file, current: count(&bytes), rotated: count(&rotated_bytes), reopen: false };
        Ok(DeadLetter {
            output: output.to_owned(),
            max_bytes,
            dir,
            current_path,
            rotated_path,
            state: Mutex::new(state),
            #[cfg(test)]
            fail_next_create: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Appends the records and fsyncs; returns how many events were evicted
    /// (older ones rotated out, or records too large to keep at all), also
    /// when it fails part way ([`AppendFailed::evicted`]).
    pub(crate) fn append(&self, records: &[DeadRecord<'_>]) -> Result<u64, AppendFailed> {
        let mut st = lock(&self.state);
        let mut evicted = 0;
        match self.append_locked(&mut st, records, &mut evicted) {
            Ok(()) => Ok(evicted),
            Err(error) => Err(AppendFailed { evicted, error }),
        }
    }

    fn append_locked(&self, st: &mut State, records: &[DeadRecord<'_>], evicted: &mut u64) -> anyhow::Result<()> {
        if st.reopen {
            st.file = open_file(&self.current_path)
                .with_context(|| format!("creating the dead-letter file {}", self.current_path.display()))?;
            st.reopen = false;
        }
        let mut pending = Vec::new();
        let mut pending_lines = 0;
        for record in records {
            let line = self.encode(record)?;
            let len = line.len() as u64;
            if len > self.max_bytes {
                *evicted += 1;
                continue;
            }
            loop {
                let current = st.current.bytes + pending.len() as u64;
                let over_bound = st.rotated.bytes + current + len > self.max_bytes;
                let over_half = current > 0 && current + len > self.max_bytes / 2;
                if !over_bound && !over_half {
                    break;
                }
                self.flush(st, &mut pending, &mut pending_lines)?;
                self.rotate(st, evicted)?;
            }
            pending.extend_from_slice(&line);
            pending_lines += 1;
        }
        self.flush(st, &mut pending, &mut pending_lines)
    }

    fn encode(&self, record: &DeadRecord<'_>) -> anyhow::Result<Vec<u8>> {
        let event: Cow<'_, [u8]> = if record.event.iter().any(|&b| b == b'\n' || b == b'\r') {
            // Outside strings (where JSON forbids raw line breaks) they are
            // whitespace: a space keeps the event's meaning.
            let mut event = record.event.to_vec();
            enrichd_engine::batch::one_line(&mut event);
            Cow::Owned(event)
        } else {
            Cow::Borrowed(record.event)
        };
        let raw = serde_json::from_slice::<&RawValue>(&event).ok();
        let line = LineOut {
            output: &self.output,
            error: record.error,
            attempts: record.attempts,
            unix_ms: record.unix_ms,
            event: raw,
            event_raw: if raw.is_none() { Some(String::from_utf8_lossy(record.event)) } else { None },
        };
        let mut bytes = serde_json::to_vec(&line).context("encoding a dead-letter line")?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Writes and fsyncs the pending lines; on a failed write, cuts the
    /// file back so no torn line stays behind.
    fn flush(&self, st: &mut State, pending: &mut Vec<u8>, pending_lines: &mut u64) -> anyhow::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = st.file.write_all(pending).and_then(|()| st.file.sync_data()) {
            let _ = st.file.set_len(st.current.bytes);
            return Err(e).with_context(|| format!("writing the dead-letter file {}", self.current_path.display()));
        }
        st.current.bytes += pending.len() as u64;
        st.current.lines += *pending_lines;
        pending.clear();
        *pending_lines = 0;
        Ok(())
    }

    /// The current file becomes the rotated one (dropping the old rotated
    /// file): the dropped lines are added to `evicted` as soon as the
    /// rename has happened, whatever fails after it.
    fn rotate(&self, st: &mut State, evicted: &mut u64) -> anyhow::Result<()> {
        fs::rename(&self.current_path, &self.rotated_path)
            .with_context(|| format!("rotating the dead-letter file {}", self.current_path.display()))?;
        *evicted += st.rotated.lines;
        st.rotated = st.current;
        st.current = Part::default();
        st.reopen = true;
        #[cfg(test)]
        if self.fail_next_create.swap(false, std::sync::atomic::Ordering::Relaxed) {
            anyhow::bail!("creating the dead-letter file: injected failure");
        }
        st.file = open_file(&self.current_path)
            .with_context(|| format!("creating the dead-letter file {}", self.current_path.display()))?;
        st.reopen = false;
        sync_dir(&self.dir).with_context(|| format!("syncing {}", self.dir.display()))?;
        Ok(())
    }

    /// Both files' lines in order, oldest first (call with the lock held).
    fn read_all(&self) -> anyhow::Result<Vec<u8>> {
        let mut bytes =
            read_or_empty(&self.rotated_path).with_context(|| format!("reading {}", self.rotated_path.display()))?;
        bytes.extend(fs::read(&self.current_path).with_context(|| format!("reading {}", self.current_path.display()))?);
        Ok(bytes)
    }

    /// One page of dead-lettered lines, oldest first, and how many there
    /// are in all. Reads the files (at most `max_bytes`): for the admin API.
    pub(crate) fn list(&self, offset: usize, limit: usize) -> anyhow::Result<(u64, Vec<serde_json::Value>)> {
        let st = lock(&self.state);
        let bytes = self.read_all()?;
        drop(st);
        let total = lines(&bytes).count() as u64;
        let page = lines(&bytes)
            .skip(offset)
            .take(limit)
            .map(|line| {
                serde_json::from_slice(line).unwrap_or_else(
                    |_| serde_json::json!({ "error": UNPARSEABLE, "line": String::from_utf8_lossy(line) }),
                )
            })
            .collect();
        Ok((total, page))
    }

    /// Every dead-lettered event, oldest first, handed to `requeue`; the
    /// dead-letter is emptied only once `requeue` succeeded, all under the
    /// lock (nothing is dead-lettered in between). So a refused requeue
    /// leaves it as it was, and a crash at any point loses nothing: at
    /// worst (a crash after the requeue, before the emptying is durable)
    /// the events are replayed twice. An unparseable line comes back whole
    /// as the event, with an error saying so, rather than being dropped.
    pub(crate) fn replay_with<T>(
        &self,
        requeue: impl FnOnce(&[OwnedDeadRecord]) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut st = lock(&self.state);
        let bytes = self.read_all().map_err(|e| format!("reading the dead-letter: {e:#}"))?;
        let records: Vec<OwnedDeadRecord> = lines(&bytes)
            .map(|line| match serde_json::from_slice::<LineIn>(line) {
                Ok(LineIn { error, attempts, unix_ms, event: Some(event), .. }) => {
                    OwnedDeadRecord { event: event.get().as_bytes().to_vec(), error, attempts, unix_ms }
                }
                Ok(LineIn { error, attempts, unix_ms, event: None, event_raw: Some(raw) }) => {
                    OwnedDeadRecord { event: raw.into_bytes(), error, attempts, unix_ms }
                }
                _ => OwnedDeadRecord { event: line.to_vec(), error: UNPARSEABLE.to_owned(), attempts: 0, unix_ms: 0 },
            })
            .collect();
        let requeued = requeue(&records)?;
        if records.is_empty() {
            return Ok(requeued);
        }
        // Requeued: if emptying fails they stay on disk too (replayed twice
        // rather than lost), and the counters follow what is really left.
        if let Err(e) = self.empty(&mut st) {
            tracing::warn!(output = %self.output, "dead-letter replayed but not emptied: {e:#}");
            st.current = count(&read_or_empty(&self.current_path).unwrap_or_default());
            st.rotated = count(&read_or_empty(&self.rotated_path).unwrap_or_default());
        }
        Ok(requeued)
    }

    /// [`DeadLetter::replay_with`] that just takes the records.
    #[cfg(test)]
    pub(crate) fn take_all(&self) -> Result<Vec<OwnedDeadRecord>, String> {
        self.replay_with(|records| Ok(records.to_vec()))
    }

    fn empty(&self, st: &mut State) -> anyhow::Result<()> {
        match fs::remove_file(&self.rotated_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", self.rotated_path.display()));
            }
            _ => st.rotated = Part::default(),
        }
        st.file
            .set_len(0)
            .and_then(|()| st.file.sync_data())
            .with_context(|| format!("emptying {}", self.current_path.display()))?;
        st.current = Part::default();
        sync_dir(&self.dir).with_context(|| format!("syncing {}", self.dir.display()))
    }

    pub(crate) fn stats(&self) -> DeadLetterStats {
        let st = lock(&self.state);
        DeadLetterStats { events: st.current.lines + st.rotated.lines, bytes: st.current.bytes + st.rotated.bytes }
    }
}
