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
//! The contract an updater must keep: never leave a partial or unverified
//! file in the staging path when it answers [`Fetched::Staged`]; bound
//! every download in bytes and time; never put a secret (licence key,
//! token) in an error text (the core also masks the values of
//! [`Factory::secret_fields`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::component::{Factory, Family};
use crate::output::BoxFuture;

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
