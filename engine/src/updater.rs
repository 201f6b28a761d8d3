//! The data-file updater interface: how a file an enricher reads (a
//! database, a feed) is kept up to date from somewhere else, without the
//! core knowing any publisher or file format.
//!
//! An updater is a component of the [`UpdaterFamily`] registered under a kind name. For
//! each enabled `[[update]]` entry the service builds an [`UpdateRunner`]
//! and calls [`UpdateRunner::fetch`] on the entry's schedule (and when an
//! operator asks). The split of work mirrors the sources' and outputs':
//!
//! - an **updater** speaks one protocol and knows one file format: it asks
//!   whether there is something new (conditional request, published
//!   checksum), downloads it within its bounds, verifies it, unpacks it and
//!   **validates it by opening it** the way its enricher will, all into a
//!   staging file the core names;
//! - the **core** owns what must be the same for every updater: the
//!   schedule, one run at a time, the state (last check, last success,
//!   validators, errors, next run) and its persistence, the API view and
//!   the metrics, and the swap: an atomic rename of the staged file over
//!   the configured path, after which the stages watching that path are
//!   reloaded through the ordinary keep-last-good reload (a file the
//!   enricher refuses leaves the previous data live).
//!
//! Two optional abilities, for publishers that can push (a message broker's
//! bucket) rather than be polled (a URL):
//!
//! - [`UpdateRunner::changes`]: a future that completes when the remote
//!   copy may have changed; the core then fetches at once, so a change goes
//!   live in about the time of one download and reload instead of waiting
//!   for `interval_s` (which stays as the fallback check). The core runs
//!   the same fetch-stage-swap-reload path either way: there is no second
//!   reload mechanism to get wrong.
//! - [`UpdateRunner::publish`]: put a new version where every instance's
//!   updater of the same entry fetches from (`enrichd publish`), so the
//!   command needs no protocol of its own in the binary.
//! - [`UpdateRunner::announce`] / [`UpdateRunner::members`]: a status
//!   board beside the published files, where every instance reports itself
//!   with a time to live (`enrichd cluster status` reads it). It lives here
//!   because the instances that fetch from one place are the fleet.
//!
//! The contract an updater must keep: never leave a partial or unverified
//! file in the staging path when it answers [`Fetched::Staged`]; bound
//! every download in bytes and time; never put a secret (licence key,
//! token) in an error text (the core also masks the values of
//! [`Factory::secret_fields`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::component::{Factory, Family};
use crate::output::BoxFuture;
use serde_json::Value;

/// What the last successful fetch learned about the remote copy, handed
/// back on the next one so it can ask "changed since?". Kept by the core
/// (and across restarts, in the state directory).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    /// The HTTP `ETag` of the last download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The HTTP `Last-Modified` of the last download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// A digest of the last download as its publisher names it (e.g. a
    /// published SHA-256 of the archive), compared before downloading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// The answer of one [`UpdateRunner::fetch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// Nothing new (304, same published checksum): the file stays.
    Unchanged,
    /// A new, verified and validated file is complete in the staging path.
    Staged {
        validators: Validators,
        /// One line about what was fetched, for the API and the log
        /// (e.g. the database type and build date).
        detail: String,
    },
}

/// What an updater is built with besides its options.
#[derive(Clone, Debug)]
pub struct UpdateContext {
    /// The entry's name (`name`, default its kind).
    pub name: String,
    /// The directory relative paths in options are resolved against.
    pub base_dir: PathBuf,
    /// The file the core swaps the staged file onto (`path` of the entry,
    /// resolved). It may not exist yet.
    pub target: PathBuf,
}

/// A running updater: one protocol, one file format.
pub trait UpdateRunner: Send + Sync {
    /// Checks once whether there is something newer than what `known`
    /// describes; if so downloads, verifies and validates it into
    /// `staging` (which the runner creates or truncates). `Err` says why in
    /// words an operator can act on, without secrets; the staging file is
    /// then removed by the core.
    fn fetch<'a>(&'a self, known: &'a Validators, staging: &'a Path) -> BoxFuture<'a, Result<Fetched, String>>;

    /// For publishers that push: a future completing when the remote copy
    /// may have changed (a spurious wake-up is fine: the fetch answers
    /// [`Fetched::Unchanged`]). Called again after each fetch; a change
    /// between two calls must not be lost (remember it until the next
    /// call). `None` (the default): the schedule alone decides.
    fn changes(&self) -> Option<BoxFuture<'_, ()>> {
        None
    }

    /// Publishes `content` as the new version of what this entry fetches,
    /// for every instance configured with the same entry; answers one line
    /// naming the new revision. `None` (the default): this kind can only
    /// read (a URL, a vendor's download service).
    fn publish<'a>(&'a self, content: &'a [u8]) -> Option<BoxFuture<'a, Result<String, String>>> {
        let _ = content;
        None
    }

    /// For publishers that also keep a status board for the instances that
    /// fetch from them (`enrichd cluster status`): writes `status` as
    /// `instance`'s entry, replacing its previous one; an entry not renewed
    /// expires (the kind's time to live). `None` (the default): no board.
    fn announce<'a>(&'a self, instance: &'a str, status: &'a Value) -> Option<BoxFuture<'a, Result<(), String>>> {
        let _ = (instance, status);
        None
    }

    /// Every unexpired entry of the board [`UpdateRunner::announce`] writes.
    fn members(&self) -> Option<BoxFuture<'_, Result<Vec<Value>, String>>> {
        None
    }

    /// Removes `instance`'s entry from the board at once (a clean
    /// shutdown), so the fleet's view does not show a stopped instance
    /// until its entry expires. `None` (the default): no board, or entries
    /// only expire.
    fn withdraw<'a>(&'a self, instance: &'a str) -> Option<BoxFuture<'a, Result<(), String>>> {
        let _ = instance;
        None
    }
}

/// Data-file updaters: built from an [`UpdateContext`], they build an
/// [`UpdateRunner`]. An updater implements
/// [`Component`](crate::component::Component) with
/// `type Family = UpdaterFamily`.
pub struct UpdaterFamily;

impl Family for UpdaterFamily {
    type Context = UpdateContext;
    type Built = dyn UpdateRunner;
}

/// What the registry holds for an updater kind.
pub type UpdaterFactory = dyn Factory<UpdaterFamily>;
