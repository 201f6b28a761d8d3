//! Administrative resources a plugin may offer: `GET`/`PUT /v1/{name}` and
//! `DELETE /v1/{name}/{id}` on the server (the `ti` plugin's `indicators`,
//! the indicators added through the API, is the worked example).
//!
//! Why it is here and shaped like this:
//!
//! - Admin routes are plugin-specific (what an indicator is, how it is
//!   validated and stored only the plugin knows), but the service must not
//!   name a plugin. So a [`crate::PluginFactory`] lists its
//!   [`AdminResource`]s and the service mounts every one of them the same
//!   way, behind its admin key check and body limits.
//! - There is no HTTP in the engine (it depends on no web framework): a
//!   request is a method, an optional id and the body bytes; an answer is a
//!   status code, a JSON body and the files the call changed.
//! - A change is live when the call returns: the service reloads every
//!   stage watching one of [`AdminResponse::changed`] before it answers,
//!   and adds what the reload did under `"live"` in the body. Mutating
//!   calls (`Put`, `Delete`) are serialized by the service, reload
//!   included, so a handler may read, modify and rewrite its files without
//!   a lock of its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};

/// One administrative resource: `name` is the path segment (`/v1/{name}`).
#[derive(Clone)]
pub struct AdminResource {
    /// Lowercase letters, digits, `-` and `_`; must not clash with the
    /// server's own routes (`health`, `schema`, ...).
    pub name: &'static str,
    pub handler: Arc<dyn AdminHandler>,
}

/// Serves the calls on one [`AdminResource`]. Called off the async threads:
/// blocking file I/O is fine.
pub trait AdminHandler: Send + Sync {
    fn handle(&self, request: AdminRequest<'_>) -> AdminResponse;
}

/// What was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminMethod {
    /// `GET /v1/{name}`.
    List,
    /// `PUT /v1/{name}` with a body.
    Put,
    /// `DELETE /v1/{name}/{id}`.
    Delete,
}

impl AdminMethod {
    /// Whether the call may change data (the service serializes those).
    pub fn mutates(self) -> bool {
        !matches!(self, AdminMethod::List)
    }
}

/// One call on an [`AdminResource`].
#[derive(Clone, Copy, Debug)]
pub struct AdminRequest<'a> {
    pub method: AdminMethod,
    /// The `{id}` of `DELETE /v1/{name}/{id}`.
    pub id: Option<&'a str>,
    /// The request body (empty but for `Put`), already size-checked.
    pub body: &'a [u8],
    /// The server's writable state directory (`server.state_dir`).
    pub state_dir: &'a Path,
}

/// The answer to an [`AdminRequest`].
#[derive(Clone, Debug)]
pub struct AdminResponse {
    /// HTTP status code.
    pub status: u16,
    /// The JSON body; refusals use the server's `{"error", "detail", ...}`
    /// shape ([`AdminResponse::error`]).
    pub body: Value,
    /// Files the call wrote: the stages watching them are reloaded before
    /// the answer is sent (only after a 2xx answer).
    pub changed: Vec<PathBuf>,
}

impl AdminResponse {
    /// `200` with `body`.
    pub fn ok(body: Value) -> Self {
        AdminResponse { status: 200, body, changed: Vec::new() }
    }

    /// A refusal: `{"error": code, "detail": detail}`.
    pub fn error(status: u16, code: &str, detail: impl Into<String>) -> Self {
        AdminResponse { status, body: json!({ "error": code, "detail": detail.into() }), changed: Vec::new() }
    }

    /// Merges the members of `extra` (an object) into the body.
    pub fn with(mut self, extra: Value) -> Self {
        if let (Some(body), Value::Object(extra)) = (self.body.as_object_mut(), extra) {
            body.extend(extra);
        }
        self
    }

    /// Marks `paths` as changed by the call.
    pub fn changed(mut self, paths: impl IntoIterator<Item = PathBuf>) -> Self {
        self.changed.extend(paths);
        self
    }
}

/// What a stage action asks (`/v1/{collection}/{stage}/{action}`).
///
/// A plugin may name a collection ([`crate::PluginFactory::stage_collection`],
/// e.g. the `wasm` plugin's `rules`) under which each of its stages answers
/// actions by name (`shadow`, `promote`, ...): operations on one stage,
/// where [`AdminResource`]s are plugin-wide. The service routes the call to
/// the live stage of that name ([`crate::Enricher::stage_action`]) and
/// knows nothing of what the actions mean: `GET` needs the read scope,
/// `POST` and `DELETE` the admin scope, are serialized, audited, and the
/// stages watching [`AdminResponse::changed`] are reloaded before the
/// answer (as for admin resources).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageMethod {
    Get,
    Post,
    Delete,
}

impl StageMethod {
    /// Whether the call may change data (admin scope, serialized, audited).
    pub fn mutates(self) -> bool {
        !matches!(self, StageMethod::Get)
    }
}

/// One call of a stage action.
#[derive(Clone, Copy, Debug)]
pub struct StageRequest<'a> {
    pub method: StageMethod,
    /// The `{action}` path segment.
    pub action: &'a str,
    /// The raw query string (empty when none).
    pub query: &'a str,
    /// The request body (empty for `GET`), already size-checked.
    pub body: &'a [u8],
    /// The server's writable state directory (`server.state_dir`).
    pub state_dir: &'a Path,
    /// The id of the caller's key (never the key), for records of who did
    /// what; `None` when the call came from no key.
    pub actor: Option<&'a str>,
}
