//! `nats_object`: keeps a file (a rule module, an indicator file, any file
//! a stage reads) equal to one object of a JetStream Object Store bucket,
//! the control plane of a fleet: `enrichd publish` puts a new version once,
//! every instance with the same `[[update]]` entry mirrors it into its own
//! file and reloads.
//!
//! Why it is an updater and not a reload mechanism of its own: the core's
//! `[[update]]` path already stages, swaps and reloads with the
//! keep-last-good rule (a module a stage refuses leaves the last good one
//! serving, and the refusal is reported per instance). This kind adds only
//! what NATS brings: a watch on the bucket ([`UpdateRunner::changes`]) so a
//! publish goes live in about a second instead of at the next
//! `interval_s`, and [`UpdateRunner::publish`] for the CLI.
//!
//! Object Store rather than KV: objects are chunked, so a large indicator
//! file is not limited by the server's message size, and each version
//! carries its SHA-256 (verified here before the file is staged).
//! The object's `nuid` (new for every put) is the revision we report.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::jetstream::object_store::{self, ObjectStore};
use enrichd_engine::component::Component;
use enrichd_engine::output::{BoxFuture, FieldError};
use enrichd_engine::updater::{Fetched, UpdateContext, UpdateRunner, UpdaterFamily, Validators};
use futures_util::StreamExt;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

use crate::nats::NatsConnection;

#[cfg(test)]
mod tests;

/// Largest accepted `max_bytes` (4 GiB).
const MAX_OBJECT_BYTES: u64 = 4 << 30;

/// Mirrors one object of a JetStream Object Store bucket into `path`
/// (watching the bucket, so a published version goes live at once); `enrichd
/// publish` writes the object. The bucket is created when missing.
#[derive(Clone, Debug, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NatsObjectOptions {
    #[serde(flatten)]
    pub connection: NatsConnection,
    /// The Object Store bucket (default `enrichd`): the same on every
    /// instance of a fleet.
    pub bucket: String,
    /// The object's name in the bucket (default: the entry's `name`), e.g.
    /// `risk.wasm`.
    pub object: Option<String>,
    /// Replicas of the bucket when this entry creates it (1-5, default 1;
    /// 3 on a three-node cluster).
    pub replicas: usize,
    /// Largest object accepted, in bytes (default 268435456); a larger one
    /// is refused and the current file stays.
    pub max_bytes: u64,
    /// The KV bucket instances report their status into (default
    /// `enrichd_status`; `enrichd cluster status` reads it).
    pub status_bucket: String,
    /// Seconds an instance's status entry lives without being renewed
    /// (default 15, 15-3600; instances renew every 5 s): the bucket's
    /// `max_age`, so a stopped instance drops off the board.
    pub status_ttl_s: u64,
}

impl Default for NatsObjectOptions {
    fn default() -> Self {
        NatsObjectOptions {
            connection: NatsConnection::default(),
            bucket: "enrichd".into(),
            object: None,
            replicas: 1,
            max_bytes: 256 << 20,
            status_bucket: "enrichd_status".into(),
            status_ttl_s: 15,
        }
    }
}

fn bucket_name_ok(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The `nats_object` updater kind.
pub struct NatsObjectUpdater;

impl Component for NatsObjectUpdater {
    type Family = UpdaterFamily;
    type Options = NatsObjectOptions;

    fn kind(&self) -> &'static str {
        "nats_object"
    }

    fn description(&self) -> &'static str {
        "A file mirrored from a NATS JetStream Object Store bucket (watched; `enrichd publish` writes it)"
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        crate::nats::SECRET_FIELDS
    }

    fn validate(&self, options: &NatsObjectOptions) -> Vec<FieldError> {
        let mut errors = Vec::new();
        options.connection.validate(&mut errors);
        if !bucket_name_ok(&options.bucket) {
            errors.push(FieldError::new("bucket", "letters, digits, `_` and `-`"));
        }
        if let Some(object) = &options.object {
            if object.is_empty() || object.contains(char::is_whitespace) {
                errors.push(FieldError::new("object", "a name without spaces"));
            }
        }
        if !bucket_name_ok(&options.status_bucket) {
            errors.push(FieldError::new("status_bucket", "letters, digits, `_` and `-`"));
        }
        // Instances renew every 5 s and a write may take up to 5 s more:
        // a shorter life would drop live instances off the board.
        if !(15..=3600).contains(&options.status_ttl_s) {
            errors.push(FieldError::new("status_ttl_s", "between 15 and 3600"));
        }
        if !(1..=5).contains(&options.replicas) {
            errors.push(FieldError::new("replicas", "between 1 and 5"));
        }
        if options.max_bytes == 0 || options.max_bytes > MAX_OBJECT_BYTES {
            errors.push(FieldError::new("max_bytes", format!("between 1 and {MAX_OBJECT_BYTES}")));
        }
        errors
    }

    fn build(&self, options: NatsObjectOptions, ctx: &UpdateContext) -> anyhow::Result<Arc<dyn UpdateRunner>> {
        let object = options.object.clone().unwrap_or_else(|| ctx.name.clone());
        Ok(Arc::new(NatsObjectRunner {
            options,
            object,
            name: ctx.name.clone(),
            target: ctx.target.clone(),
            client: Arc::new(tokio::sync::OnceCell::new()),
            store: tokio::sync::Mutex::new(None),
            board: tokio::sync::Mutex::new(None),
            changed: Arc::new(Notify::new()),
            watching: OnceLock::new(),
            watch_error: Arc::new(Mutex::new(None)),
        }))
    }
}

struct NatsObjectRunner {
    options: NatsObjectOptions,
    object: String,
    name: String,
    /// The local file: a version already fetched is fetched again when it
    /// is gone (deleted by hand, a wiped volume).
    target: std::path::PathBuf,
    /// One connection for the bucket, the watch and the board, made on
    /// first use (the client reconnects on its own after that).
    client: Arc<tokio::sync::OnceCell<async_nats::Client>>,
    /// The bucket handle, made on first use (and again after a failure).
    store: tokio::sync::Mutex<Option<ObjectStore>>,
    /// The status board (KV), made on first use.
    board: tokio::sync::Mutex<Option<kv::Store>>,
    /// Set by the watch task for every new version of the object; a
    /// `Notify` keeps one wake-up while nobody waits, so a publish during a
    /// fetch is not lost.
    changed: Arc<Notify>,
    watching: OnceLock<()>,
    /// Why the watch is not running, put into the next fetch's error.
    watch_error: Arc<Mutex<Option<String>>>,
}

impl NatsObjectRunner {
    fn describe(&self) -> String {
        format!(
            "object {:?} of bucket {:?} at {}",
            self.object,
            self.options.bucket,
            self.options.connection.describe()
        )
    }

    /// The bucket, created when missing.
    async fn store(&self) -> Result<ObjectStore, String> {
        let mut slot = self.store.lock().await;
        if let Some(store) = slot.as_ref() {
            return Ok(store.clone());
        }
        let client = connect(&self.client, &self.options, &self.name).await?;
        let store = open_bucket(&self.options, client).await?;
        *slot = Some(store.clone());
        Ok(store)
    }

    /// The status board, created when missing.
    async fn board(&self) -> Result<kv::Store, String> {
        let mut slot = self.board.lock().await;
        if let Some(board) = slot.as_ref() {
            return Ok(board.clone());
        }
        let bucket = &self.options.status_bucket;
        let client = connect(&self.client, &self.options, &self.name).await?;
        let js = async_nats::jetstream::new(client);
        let board = match js.get_key_value(bucket.as_str()).await {
            Ok(board) => board,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description: "enrichd instances' status (enrichd cluster status)".into(),
                    history: 1,
                    max_age: Duration::from_secs(self.options.status_ttl_s),
                    num_replicas: self.options.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("opening or creating KV bucket {bucket:?}: {e}"))?,
        };
        *slot = Some(board.clone());
        Ok(board)
    }

    async fn forget_store(&self) {
        *self.store.lock().await = None;
    }

    async fn fetch_inner(&self, known: &Validators, staging: &std::path::Path) -> Result<Fetched, String> {
        let store = self.store().await?;
        let info = match store.info(&self.object).await {
            Ok(info) => info,
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => {
                return Err(format!("nothing published as {} yet; the local file stays", self.describe()))
            }
            Err(e) => {
                self.forget_store().await;
                return Err(format!("reading {}: {e}", self.describe()));
            }
        };
        if info.deleted {
            return Err(format!("{} was deleted; the local file stays", self.describe()));
        }
        if known.etag.as_deref() == Some(info.nuid.as_str()) && known.digest == info.digest && self.target.is_file() {
            return Ok(Fetched::Unchanged);
        }
        if info.size as u64 > self.options.max_bytes {
            return Err(format!(
                "{} is {} bytes, over max_bytes ({}); the local file stays",
                self.describe(),
                info.size,
                self.options.max_bytes
            ));
        }
        let mut object = store.get(&self.object).await.map_err(|e| format!("downloading {}: {e}", self.describe()))?;
        // What is read is the version `get` found, which may be newer than
        // the `info` above (a publish in between): its own info names it.
        let info = object.info.clone();
        if info.deleted || info.size as u64 > self.options.max_bytes {
            return Err(format!("{} changed while it was read; the local file stays", self.describe()));
        }
        // The object's own reader checks the chunks against the published
        // SHA-256 at the end; the bound guards a size that lies.
        let mut content = Vec::with_capacity(info.size);
        let limit = self.options.max_bytes + 1;
        let read = tokio::time::timeout(
            self.options.connection.timeout() * 12,
            (&mut object).take(limit).read_to_end(&mut content),
        )
        .await;
        match read {
            Err(_) => return Err(format!("downloading {}: timed out", self.describe())),
            Ok(Err(e)) => return Err(format!("downloading {}: {e}", self.describe())),
            Ok(Ok(_)) => {}
        }
        if content.len() as u64 > self.options.max_bytes || content.len() != info.size {
            return Err(format!(
                "downloading {}: got {} bytes, the object says {}",
                self.describe(),
                content.len(),
                info.size
            ));
        }
        // The client checks the chunks against the published digest only
        // when the object has one: one without it is not taken.
        let digest = {
            use base64::Engine as _;
            use sha2::Digest as _;
            format!("SHA-256={}", base64::engine::general_purpose::URL_SAFE.encode(sha2::Sha256::digest(&content)))
        };
        match info.digest.as_deref() {
            Some(published) if published.trim_end_matches('=') == digest.trim_end_matches('=') => {}
            Some(_) => return Err(format!("downloading {}: the content does not match its digest", self.describe())),
            None => return Err(format!("{} has no digest to check it against; not used", self.describe())),
        }
        super::write_staged(staging, &content)?;
        let modified = info.modified.map(|m| format!(", published {m}")).unwrap_or_default();
        Ok(Fetched::Staged {
            validators: Validators { etag: Some(info.nuid.clone()), last_modified: None, digest: info.digest.clone() },
            detail: format!(
                "nats object {}/{} revision {} ({} bytes{modified})",
                self.options.bucket, self.object, info.nuid, info.size
            ),
        })
    }

    /// Starts the watch task once: it wakes [`UpdateRunner::changes`] for
    /// every new version of the object, and reconnects on its own.
    fn start_watch(&self) {
        if self.watching.set(()).is_err() {
            return;
        }
        let (options, name, object) = (self.options.clone(), self.name.clone(), self.object.clone());
        let (changed, watch_error, client) = (self.changed.clone(), self.watch_error.clone(), self.client.clone());
        tokio::spawn(async move {
            // Retries back off from 1 s to a minute while the server stays
            // away; no fetch is triggered meanwhile (a watch that starts
            // checks once: see `watch_once`), so an outage costs neither a
            // failed fetch nor a state-file write per second.
            let mut backoff = Duration::from_secs(1);
            loop {
                let started = std::time::Instant::now();
                let outcome = match connect(&client, &options, &name).await {
                    Ok(client) => watch_once(&options, client, &object, &changed).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = outcome {
                    tracing::warn!(updater = %name, error = %e, retry_in_s = backoff.as_secs(), "watching the bucket");
                    *watch_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        });
    }
}

/// Follows the bucket's changes until the watch breaks.
async fn watch_once(
    options: &NatsObjectOptions,
    client: async_nats::Client,
    object: &str,
    changed: &Notify,
) -> Result<(), String> {
    let store = open_bucket(options, client).await?;
    let mut watch = store.watch().await.map_err(|e| format!("watching bucket {:?}: {e}", options.bucket))?;
    // Anything published before the watch started is caught by this check.
    changed.notify_one();
    while let Some(info) = watch.next().await {
        match info {
            Ok(info) if info.name == object => changed.notify_one(),
            Ok(_) => {}
            Err(e) => return Err(format!("watching bucket {:?}: {e}", options.bucket)),
        }
    }
    Err(format!("the watch of bucket {:?} ended", options.bucket))
}

/// The entry's connection, made once (a failed attempt is tried again on
/// the next call).
async fn connect(
    cell: &tokio::sync::OnceCell<async_nats::Client>,
    options: &NatsObjectOptions,
    name: &str,
) -> Result<async_nats::Client, String> {
    cell.get_or_try_init(|| async {
        options.connection.connect(&format!("update {name}")).await.map_err(|e| format!("{e:#}"))
    })
    .await
    .cloned()
}

async fn open_bucket(options: &NatsObjectOptions, client: async_nats::Client) -> Result<ObjectStore, String> {
    let js = async_nats::jetstream::new(client);
    match js.get_object_store(&options.bucket).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: options.bucket.clone(),
                description: Some("enrichd control plane: rules, indicator files".into()),
                num_replicas: options.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("opening or creating bucket {:?}: {e}", options.bucket)),
    }
}

impl UpdateRunner for NatsObjectRunner {
    fn fetch<'a>(
        &'a self,
        known: &'a Validators,
        staging: &'a std::path::Path,
    ) -> BoxFuture<'a, Result<Fetched, String>> {
        Box::pin(async move {
            let result = self.fetch_inner(known, staging).await;
            let watch = self.watch_error.lock().unwrap_or_else(|p| p.into_inner()).take();
            match (result, watch) {
                (Err(e), Some(w)) => Err(format!("{e} (and the watch: {w})")),
                (result, _) => result,
            }
        })
    }

    fn changes(&self) -> Option<BoxFuture<'_, ()>> {
        self.start_watch();
        Some(Box::pin(self.changed.notified()))
    }

    fn announce<'a>(
        &'a self,
        instance: &'a str,
        status: &'a serde_json::Value,
    ) -> Option<BoxFuture<'a, Result<(), String>>> {
        Some(Box::pin(async move {
            let board = self.board().await?;
            let body = serde_json::to_vec(status).map_err(|e| e.to_string())?;
            if let Err(e) = board.put(instance, body.into()).await {
                *self.board.lock().await = None;
                return Err(format!("writing status to KV bucket {:?}: {e}", self.options.status_bucket));
            }
            Ok(())
        }))
    }

    fn withdraw<'a>(&'a self, instance: &'a str) -> Option<BoxFuture<'a, Result<(), String>>> {
        Some(Box::pin(async move {
            let board = self.board().await?;
            // A delete marker: `keys` and `get` no longer see the entry, and
            // the bucket's history keeps who was there.
            board
                .delete(instance)
                .await
                .map_err(|e| format!("removing the status from KV bucket {:?}: {e}", self.options.status_bucket))
        }))
    }

    fn members(&self) -> Option<BoxFuture<'_, Result<Vec<serde_json::Value>, String>>> {
        Some(Box::pin(async move {
            let board = self.board().await?;
            let bucket = &self.options.status_bucket;
            let failed = |e: &dyn std::fmt::Display| format!("reading KV bucket {bucket:?}: {e}");
            let keys: Vec<String> =
                board.keys().await.map_err(|e| failed(&e))?.filter_map(|k| async move { k.ok() }).collect().await;
            let mut out = Vec::new();
            // Entries older than `status_ttl_s` are gone instances, whatever
            // the bucket keeps: one created by hand (`nats kv add`) may have
            // no `max_age`, or an older one than the option says now.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let oldest = i64::try_from(now.saturating_sub(self.options.status_ttl_s)).unwrap_or(i64::MAX);
            for key in keys {
                let Some(entry) = board.entry(key.as_str()).await.map_err(|e| failed(&e))? else { continue };
                if entry.operation != kv::Operation::Put || entry.created.unix_timestamp() < oldest {
                    continue;
                }
                if let Ok(status) = serde_json::from_slice(&entry.value) {
                    out.push(status);
                }
            }
            Ok(out)
        }))
    }

    fn publish<'a>(&'a self, content: &'a [u8]) -> Option<BoxFuture<'a, Result<String, String>>> {
        Some(Box::pin(async move {
            if content.len() as u64 > self.options.max_bytes {
                return Err(format!("{} bytes is over max_bytes ({})", content.len(), self.options.max_bytes));
            }
            let store = self.store().await?;
            let mut reader = content;
            let info = store
                .put(self.object.as_str(), &mut reader)
                .await
                .map_err(|e| format!("publishing {}: {e}", self.describe()))?;
            Ok(format!(
                "published {}/{} revision {} ({} bytes, {})",
                self.options.bucket,
                self.object,
                info.nuid,
                info.size,
                info.digest.unwrap_or_default()
            ))
        }))
    }
}
