//! A strict Splunk HTTP Event Collector receiver (JSON event endpoint and
//! indexer acknowledgment).
//!
//! Routes: `POST /services/collector`, `/services/collector/event` and
//! `/services/collector/event/1.0` (events), `POST /services/collector/ack`
//! (ack status), `GET /services/collector/health` (no token). Answers are
//! HEC's `{"text", "code"}` bodies with HEC's status codes:
//!
//! - auth: no `Authorization` → 401 code 2 "Token is required"; not of the
//!   form `Splunk <token>` → 401 code 3 "Invalid authorization"; another
//!   token → 403 code 4 "Invalid token" (Splunk's answer for an unknown
//!   token). Basic auth and `?token=` are not accepted here.
//! - body (gzip honoured): whitespace only → 400 code 5 "No data"; then a
//!   run of JSON objects, whitespace between them allowed. Not JSON, not an
//!   object, `time` not a number (epoch seconds, fraction allowed), or
//!   `host`/`source`/`sourcetype`/`index` not strings → 400 code 6 "Invalid
//!   data format"; no `event` → code 12; `event` null or blank text → code
//!   13; `fields` not a flat object → code 15. Each carries
//!   `invalid-event-number`, the 0-based index of the first bad event, and
//!   the whole request is refused: nothing from it is stored (Splunk's docs
//!   do not promise whether events before the bad one are kept, so a client
//!   must not count on either; refusing all is the stricter test).
//! - indexer acknowledgment (`HecConfig::indexer_ack`): events and ack
//!   queries need `X-Splunk-Request-Channel`, a hyphenated GUID (missing →
//!   400 code 10, malformed → 400 code 11); a success carries `ackId`,
//!   counted per channel from 0; the batch is indexed (visible in
//!   `events()`) `ack_delay_ms` later; `{"acks":[ids]}` to the ack endpoint
//!   answers `{"acks":{"<id>":bool}}`, and an id reported true is
//!   forgotten (asked again it is false), as Splunk does. Without indexer
//!   acknowledgment the ack endpoint answers 400 code 14 "ACK is disabled"
//!   and events are indexed at once.
//!
//! Faults (event posts only): `request_5xx` → 503 code 9 "Server is busy",
//! `request_429` → 429 code 9, `reject_field` → 400 code 6 for the whole
//! request, `ack_loss` → the batch is accepted (200 with an ackId) but never
//! indexed and its ack stays false. `delay_ms` holds every answer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::http::Method;
use serde_json::{json, Map, Value};

use super::{Faults, Reply, Request, Rng, Server, Stats};

#[derive(Clone, Debug, Default)]
pub(crate) struct HecConfig {
    pub(crate) token: String,
    pub(crate) indexer_ack: bool,
    pub(crate) ack_delay_ms: u64,
}

/// One indexed event, as the client sent it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HecEvent {
    pub(crate) event: Value,
    pub(crate) time: Option<f64>,
    pub(crate) host: Option<String>,
    pub(crate) source: Option<String>,
    pub(crate) sourcetype: Option<String>,
    pub(crate) index: Option<String>,
    pub(crate) fields: Option<Map<String, Value>>,
}

struct Batch {
    events: Vec<HecEvent>,
    ready_at: Instant,
    lost: bool,
    indexed: bool,
}

#[derive(Default)]
struct Channel {
    next_ack: u64,
    /// Ack id → index into `State::batches`, until reported true.
    acks: BTreeMap<u64, usize>,
}

struct State {
    config: HecConfig,
    faults: Faults,
    rng: Rng,
    stats: Stats,
    batches: Vec<Batch>,
    channels: BTreeMap<String, Channel>,
    indexed: Vec<HecEvent>,
}

impl State {
    /// Moves batches whose ack delay has passed into the index, in arrival order.
    fn promote(&mut self) {
        let now = Instant::now();
        for batch in &mut self.batches {
            if !batch.indexed && !batch.lost && now >= batch.ready_at {
                self.indexed.append(&mut batch.events);
                batch.indexed = true;
            }
        }
    }
}

pub(crate) struct HecReceiver {
    state: Arc<Mutex<State>>,
    server: Server,
}

impl HecReceiver {
    pub(crate) fn start(config: HecConfig) -> HecReceiver {
        let state = Arc::new(Mutex::new(State {
            config,
            faults: Faults::default(),
            rng: Rng::new(0),
            stats: Stats::default(),
            batches: Vec::new(),
            channels: BTreeMap::new(),
            indexed: Vec::new(),
        }));
        let shared = state.clone();
        let server = Server::start("hec", Arc::new(move |req| handle(&mut shared.lock().expect("hec state"), req)));
        HecReceiver { state, server }
    }

    /// `http://127.0.0.1:port` (no trailing slash).
    pub(crate) fn url(&self) -> String {
        self.server.url()
    }

    pub(crate) fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Replaces the faults and reseeds the generator with `faults.seed`.
    pub(crate) fn set_faults(&self, faults: Faults) {
        let mut state = self.lock();
        state.rng = Rng::new(faults.seed);
        state.faults = faults;
    }

    /// See [`Server::outage`].
    pub(crate) fn outage(&self, on: bool) {
        self.server.outage(on);
    }

    /// Indexed events in arrival order (acknowledged batches only once
    /// their ack delay has passed; lost batches never).
    pub(crate) fn events(&self) -> Vec<HecEvent> {
        let mut state = self.lock();
        state.promote();
        state.indexed.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("hec state")
    }
}

fn hec(status: u16, code: u32, text: &str) -> Reply {
    Reply::json(status, json!({"text": text, "code": code}))
}

/// A refused body: counted as malformed, with the event number.
fn invalid(stats: &mut Stats, code: u32, text: &str, event: usize, why: String) -> Reply {
    stats.malformed_rejected.push(format!("code {code} at event {event}: {why}"));
    Reply::json(400, json!({"text": text, "code": code, "invalid-event-number": event}))
}

fn handle(state: &mut State, req: Request) -> Reply {
    state.stats.requests += 1;
    let delay = Duration::from_millis(state.faults.delay_ms);
    let mut reply = route(state, &req);
    reply.delay = delay;
    reply
}

fn route(state: &mut State, req: &Request) -> Reply {
    let path = req.path.trim_end_matches('/');
    match (&req.method, path) {
        (&Method::GET, "/services/collector/health" | "/services/collector/health/1.0") => {
            hec(200, 17, "HEC is healthy")
        }
        (&Method::POST, "/services/collector" | "/services/collector/event" | "/services/collector/event/1.0") => {
            guarded(state, req, post_events)
        }
        (&Method::POST, "/services/collector/ack") => guarded(state, req, query_acks),
        _ => hec(404, 404, "The requested URL was not found on this server."),
    }
}

/// Token, then (with indexer acknowledgment) the channel, then `next`.
fn guarded(state: &mut State, req: &Request, next: fn(&mut State, &Request, Option<String>) -> Reply) -> Reply {
    let denied = match req.header("authorization") {
        None => Some(hec(401, 2, "Token is required")),
        Some(value) => match value.strip_prefix("Splunk ") {
            None => Some(hec(401, 3, "Invalid authorization")),
            Some(token) if token.trim() != state.config.token => Some(hec(403, 4, "Invalid token")),
            Some(_) => None,
        },
    };
    if let Some(denied) = denied {
        state.stats.unauthorized += 1;
        return denied;
    }
    if !state.config.indexer_ack {
        return next(state, req, None);
    }
    match req.header("x-splunk-request-channel") {
        None => {
            state.stats.malformed_rejected.push("no X-Splunk-Request-Channel".into());
            hec(400, 10, "Data channel is missing")
        }
        Some(channel) if !is_guid(channel) => {
            state.stats.malformed_rejected.push(format!("channel [{channel}] is not a GUID"));
            hec(400, 11, "Invalid data channel")
        }
        Some(channel) => next(state, req, Some(channel.to_ascii_lowercase())),
    }
}

fn is_guid(text: &str) -> bool {
    text.len() == 36 && uuid::Uuid::try_parse(text).is_ok()
}

fn post_events(state: &mut State, req: &Request, channel: Option<String>) -> Reply {
    let faults = state.faults.clone();
    if state.rng.hit(faults.request_5xx_per_mille) {
        state.stats.requests_5xx += 1;
        return hec(503, 9, "Server is busy");
    }
    if state.rng.hit(faults.request_429_per_mille) {
        state.stats.requests_429 += 1;
        return hec(429, 9, "Server is busy");
    }
    let body = match req.decoded_body() {
        Ok(body) => body,
        Err(why) => return invalid(&mut state.stats, 6, "Invalid data format", 0, why),
    };
    let events = match parse(&mut state.stats, &body, faults.reject_field.as_deref()) {
        Ok(events) => events,
        Err(reply) => return reply,
    };
    state.stats.items_ok += events.len() as u64;
    let Some(channel) = channel else {
        state.indexed.extend(events);
        return hec(200, 0, "Success");
    };
    let lost = state.rng.hit(faults.ack_loss_per_mille);
    if lost {
        state.stats.acks_lost += 1;
    }
    let ready_at = Instant::now() + Duration::from_millis(state.config.ack_delay_ms);
    state.batches.push(Batch { events, ready_at, lost, indexed: false });
    let batch = state.batches.len() - 1;
    let chan = state.channels.entry(channel).or_default();
    let ack_id = chan.next_ack;
    chan.next_ack += 1;
    chan.acks.insert(ack_id, batch);
    Reply::json(200, json!({"text": "Success", "code": 0, "ackId": ack_id}))
}

fn parse(stats: &mut Stats, body: &[u8], reject_field: Option<&str>) -> Result<Vec<HecEvent>, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        stats.malformed_rejected.push("code 5: empty body".into());
        return Err(hec(400, 5, "No data"));
    }
    let bad_format = |stats: &mut Stats, n: usize, why: String| invalid(stats, 6, "Invalid data format", n, why);
    let mut events = Vec::new();
    for (n, item) in serde_json::Deserializer::from_slice(body).into_iter::<Value>().enumerate() {
        let Value::Object(mut obj) = item.map_err(|e| bad_format(stats, n, format!("not JSON: {e}")))? else {
            return Err(bad_format(stats, n, "not a JSON object".into()));
        };
        let event = match obj.remove("event") {
            None => return Err(invalid(stats, 12, "Event field is required", n, "no event".into())),
            Some(Value::Null) => return Err(invalid(stats, 13, "Event field cannot be blank", n, "null".into())),
            Some(Value::String(s)) if s.trim().is_empty() => {
                return Err(invalid(stats, 13, "Event field cannot be blank", n, "blank text".into()))
            }
            Some(event) => event,
        };
        let time = match obj.remove("time") {
            None => None,
            Some(Value::Number(t)) => t.as_f64(),
            Some(other) => return Err(bad_format(stats, n, format!("time is not a number: {other}"))),
        };
        let mut meta = Vec::with_capacity(4);
        for key in ["host", "source", "sourcetype", "index"] {
            match take_text(&mut obj, key) {
                Ok(value) => meta.push(value),
                Err(why) => return Err(bad_format(stats, n, why)),
            }
        }
        let [host, source, sourcetype, index] = <[Option<String>; 4]>::try_from(meta).expect("four keys");
        let fields = match obj.remove("fields") {
            None => None,
            Some(Value::Object(fields)) if fields.values().all(flat) => Some(fields),
            Some(other) => {
                return Err(invalid(stats, 15, "Error in handling indexed fields", n, format!("fields: {other}")))
            }
        };
        if reject_field.is_some_and(|f| event.get(f).is_some()) {
            // Injected, not malformed: counted as a permanent failure.
            stats.items_failed_400 += 1;
            let body = json!({"text": "Invalid data format", "code": 6, "invalid-event-number": n});
            return Err(Reply::json(400, body));
        }
        events.push(HecEvent { event, time, host, source, sourcetype, index, fields });
    }
    Ok(events)
}

fn take_text(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.remove(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{key} is not a string: {other}")),
    }
}

/// Indexed field values: a string or number, or an array of them.
fn flat(value: &Value) -> bool {
    match value {
        Value::String(_) | Value::Number(_) => true,
        Value::Array(items) => items.iter().all(|v| matches!(v, Value::String(_) | Value::Number(_))),
        _ => false,
    }
}

fn query_acks(state: &mut State, req: &Request, channel: Option<String>) -> Reply {
    let Some(channel) = channel else { return hec(400, 14, "ACK is disabled") };
    let body = match req.decoded_body() {
        Ok(body) => body,
        Err(why) => return invalid(&mut state.stats, 6, "Invalid data format", 0, why),
    };
    let ids: Option<Vec<u64>> = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        let list = v.as_object().filter(|o| o.len() == 1)?.get("acks")?.as_array()?.clone();
        list.iter().map(Value::as_u64).collect()
    });
    let Some(ids) = ids else {
        state.stats.malformed_rejected.push("ack query is not {\"acks\":[ids]}".into());
        return hec(400, 6, "Invalid data format");
    };
    state.promote();
    let mut acks = Map::new();
    let chan = state.channels.entry(channel).or_default();
    for id in ids {
        let done = chan.acks.get(&id).is_some_and(|&batch| state.batches[batch].indexed);
        if done {
            chan.acks.remove(&id);
        }
        acks.insert(id.to_string(), Value::Bool(done));
    }
    Reply::json(200, json!({ "acks": acks }))
}
