//! `splunk`: the Splunk HTTP Event Collector (HEC).
//!
//! One `POST {base}/services/collector/event` per batch: the events as
//! concatenated HEC envelopes (`time`, `host`, `source`, `sourcetype`,
//! `index`, `event`), gzipped, with `Authorization: Splunk <token>` and
//! this sink's `X-Splunk-Request-Channel` (one random UUID per sink).
//!
//! HEC answers for the whole request, so outcomes are per batch except
//! where it names the bad event:
//!
//! | response                                  | outcome                        |
//! |-------------------------------------------|--------------------------------|
//! | 2xx                                       | all `Delivered` (with `indexer_ack`: once acknowledged) |
//! | 2xx, `indexer_ack`, no ack within `ack_timeout_ms` | all `Retry("indexer ack timeout ...")` |
//! | 400 with `invalid-event-number` n         | event n `Reject(text)`, the others `Retry` (HEC refused the whole request, so they are resent without it) |
//! | 400 code 7 (incorrect index)              | all `Retry`: a setting to fix, not bad events |
//! | other 400 and 4xx                         | all `Reject(text)`             |
//! | 413                                       | all `Reject`: lower `batch_max` |
//! | 401 / 403                                 | all `Retry("token rejected ...")` |
//! | 404, 408, 429, 3xx, 5xx, network, timeout | all `Retry`                    |
//!
//! With `indexer_ack`, a 200 carries an `ackId`; the sink polls
//! `{base}/services/collector/ack` on the same channel every `ack_poll_ms`
//! until it is true, within the same `send` (one attempt stays one call,
//! bounded by `ack_timeout_ms`). A 200 without an `ackId` (the token has
//! acknowledgement off) counts as delivered: HEC took the events and
//! cannot say more.

mod options;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use enrichd_engine::component::Component;
use enrichd_engine::output::{
    redact_url, BoxFuture, FieldError, Outcome, OutputContext, OutputFamily, SendReport, Sink, SinkBatch,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;

use self::options::collector_base;
pub use self::options::SplunkOptions;
use super::http::{execute, secret_header, snippet, HttpOptions};

/// The HEC channel header.
const CHANNEL_HEADER: HeaderName = HeaderName::from_static("x-splunk-request-channel");

/// HEC's "Incorrect index" error code.
const INCORRECT_INDEX: i64 = 7;

/// Factory of the `splunk` output.
pub struct SplunkOutput;

impl Component for SplunkOutput {
    type Family = OutputFamily;
    type Options = SplunkOptions;

    fn kind(&self) -> &'static str {
        "splunk"
    }

    fn description(&self) -> &'static str {
        "Splunk HTTP Event Collector, optionally with indexer acknowledgement"
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        &["token"]
    }

    fn path_fields(&self) -> &'static [&'static str] {
        super::http::PATH_FIELDS
    }

    fn validate(&self, options: &SplunkOptions) -> Vec<FieldError> {
        options.validate()
    }

    fn build(&self, options: SplunkOptions, ctx: &OutputContext) -> anyhow::Result<Arc<dyn Sink>> {
        let hec_url = options.hec_url.as_deref().context("hec_url is required")?;
        let token = options.token.as_deref().context("token is required")?;
        let base = collector_base(hec_url);
        let parse = |path: &str| {
            reqwest::Url::parse(&format!("{base}{path}")).with_context(|| format!("hec_url {}", redact_url(hec_url)))
        };
        let event_url = parse("/services/collector/event")?;
        let ack_url = parse("/services/collector/ack")?;
        Ok(Arc::new(SplunkSink {
            client: options.http.client(&ctx.base_dir)?,
            event_url,
            ack_url,
            auth: secret_header(&format!("Splunk {token}"))?,
            channel: std::sync::Mutex::new(Channel::new(0)?),
            fields: envelope_fields(&options),
            ack: options.indexer_ack.then(|| AckPolling {
                timeout: Duration::from_millis(options.ack_timeout_ms),
                every: Duration::from_millis(options.ack_poll_ms),
            }),
            http: options.http,
        }))
    }
}

/// `,"host":..,"source":..,"sourcetype":..,"index":..,"event":` (the
/// envelope after `time`, the same for every event).
fn envelope_fields(options: &SplunkOptions) -> String {
    let string = |s: &str| serde_json::Value::from(s).to_string();
    let mut out = String::new();
    if let Some(host) = &options.host {
        out.push_str(&format!(",\"host\":{}", string(host)));
    }
    out.push_str(&format!(",\"source\":{},\"sourcetype\":{}", string(&options.source), string(&options.sourcetype)));
    if let Some(index) = &options.index {
        out.push_str(&format!(",\"index\":{}", string(index)));
    }
    out.push_str(",\"event\":");
    out
}

struct AckPolling {
    timeout: Duration,
    every: Duration,
}

/// A HEC channel and the ack ids awaited on it. HEC hands out each id once
/// per channel; an id handed out again while still awaited means HEC lost
/// the channel (a restart, an expiry, another indexer behind a balancer)
/// and numbers from 0 again: the id then names two requests, so the sink
/// moves to a new channel and retries what it can no longer tell apart.
/// (Not "an id lower than before": with several requests in flight their
/// answers are read in any order.)
struct Channel {
    header: HeaderValue,
    /// Bumped at each move to a new channel.
    generation: u64,
    awaited: std::collections::HashSet<u64>,
}

impl Channel {
    fn new(generation: u64) -> anyhow::Result<Channel> {
        let header = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())?;
        Ok(Channel { header, generation, awaited: Default::default() })
    }
}

struct SplunkSink {
    client: reqwest::Client,
    event_url: reqwest::Url,
    ack_url: reqwest::Url,
    /// `Splunk <token>`, sensitive.
    auth: HeaderValue,
    /// The indexer-acknowledgement channel every request names.
    channel: std::sync::Mutex<Channel>,
    fields: String,
    ack: Option<AckPolling>,
    http: HttpOptions,
}

impl Sink for SplunkSink {
    fn send<'a>(&'a self, batch: SinkBatch<'a>) -> BoxFuture<'a, SendReport> {
        Box::pin(self.send_batch(batch))
    }
}

/// HEC's answer: `{"text": "...", "code": n, "ackId": n,
/// "invalid-event-number": n}`.
#[derive(Deserialize, Default)]
struct HecReply {
    #[serde(default)]
    text: String,
    code: Option<i64>,
    #[serde(rename = "ackId")]
    ack_id: Option<u64>,
    #[serde(rename = "invalid-event-number")]
    invalid_event: Option<usize>,
}

impl SplunkSink {
    async fn send_batch(&self, batch: SinkBatch<'_>) -> SendReport {
        let n = batch.events.len();
        if n == 0 {
            return SendReport::all(0, Outcome::Delivered, None);
        }
        let (body, mut headers) = self.http.encode(self.body(&batch), "application/json");
        headers.insert(AUTHORIZATION, self.auth.clone());
        let (channel, generation) = {
            let c = self.channel.lock().unwrap_or_else(|e| e.into_inner());
            (c.header.clone(), c.generation)
        };
        headers.insert(CHANNEL_HEADER, channel.clone());
        let request = self.client.post(self.event_url.clone()).headers(headers).body(body);
        let reply = match execute(request, self.event_url.as_str()).await {
            Ok(reply) => reply,
            Err(failed) => return SendReport::all(n, Outcome::Retry(failed.message), None),
        };
        let status = reply.status;
        let parsed: Option<HecReply> = serde_json::from_slice(&reply.body).ok();
        let is_hec = parsed.as_ref().is_some_and(|h| h.code.is_some());
        let hec = parsed.unwrap_or_default();
        let text = match hec.text {
            text if !text.is_empty() => snippet(&text, 500),
            _ if reply.body.is_empty() => "no body".into(),
            _ => snippet(&String::from_utf8_lossy(&reply.body), 200),
        };
        let all = |outcome| SendReport::all(n, outcome, Some(status));
        match status {
            // HEC answers every success with its JSON (`{"text":"Success",
            // "code":0}`, plus `ackId` with indexer acknowledgement): any
            // other 2xx (a proxy's page, a wrong path) proves nothing.
            200..=299 if !is_hec => {
                all(Outcome::Retry(format!("HTTP {status} but not a HEC reply ({text}): check hec_url")))
            }
            200..=299 => match (&self.ack, hec.ack_id) {
                (Some(_), Some(id)) if !self.await_ack_id(generation, id) => all(Outcome::Retry(format!(
                    "HEC channel reset (ackId {id} handed out again): resent on a new channel"
                ))),
                (Some(ack), Some(id)) => match self.wait_for_ack_once(ack, id, &channel, generation).await {
                    // Not a verdict on the events: HEC took them and has
                    // not said; waited for like a destination that is
                    // down, not charged to each event's retries.
                    Outcome::Retry(why) => SendReport::all(n, Outcome::Retry(why), None),
                    outcome => all(outcome),
                },
                (Some(_), None) => all(Outcome::Retry(format!(
                    "HTTP {status} without an ackId: indexer acknowledgement is off for this token \
                     (turn it on, or indexer_ack = false)"
                ))),
                (None, _) => all(Outcome::Delivered),
            },
            400 if hec.code == Some(INCORRECT_INDEX) => {
                all(Outcome::Retry(format!("HTTP 400: {text} (check index and the token's allowed indexes)")))
            }
            400 => match hec.invalid_event {
                Some(bad) if bad < n => SendReport {
                    outcomes: (0..n)
                        .map(|i| {
                            if i == bad {
                                Outcome::Reject(format!("HTTP 400: {text}"))
                            } else {
                                Outcome::Retry(format!("HEC refused the batch for another event (#{bad}: {text})"))
                            }
                        })
                        .collect(),
                    http_status: Some(status),
                },
                _ => all(Outcome::Reject(format!("HTTP 400: {text}"))),
            },
            401 | 403 => all(Outcome::Retry(format!("token rejected (HTTP {status}: {text})"))),
            413 => all(Outcome::Reject("HTTP 413: batch too large for HEC, lower batch_max".into())),
            404 | 408 | 429 | 300..=399 | 500.. | 0..=199 => all(Outcome::Retry(format!("HTTP {status}: {text}"))),
            _ => all(Outcome::Reject(format!("HTTP {status}: {text}"))),
        }
    }

    /// The request body: one HEC envelope per event.
    fn body(&self, batch: &SinkBatch<'_>) -> Vec<u8> {
        let time = format!("{{\"time\":{}.{:03}", batch.accepted_unix_ms / 1000, batch.accepted_unix_ms % 1000);
        let per_event = time.len() + self.fields.len() + 2;
        let mut body = Vec::with_capacity(batch.events.iter().map(|e| e.json.len() + per_event).sum());
        for event in batch.events {
            body.extend_from_slice(time.as_bytes());
            body.extend_from_slice(self.fields.as_bytes());
            // Line breaks in JSON are whitespace between tokens: harmless
            // to HEC, dropped for one envelope per line.
            body.extend(event.json.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
            body.extend_from_slice(b"}\n");
        }
        body
    }

    /// Records `id` as awaited on the channel of `generation`; `false`
    /// when it already was (the channel was reset: a new one is taken).
    /// Ids of a channel already left behind are not tracked.
    fn await_ack_id(&self, generation: u64, id: u64) -> bool {
        let mut c = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        if c.generation != generation || c.awaited.insert(id) {
            return true;
        }
        if let Ok(fresh) = Channel::new(generation + 1) {
            *c = fresh;
        }
        false
    }

    /// [`SplunkSink::wait_for_ack`], then `id` is no longer awaited.
    async fn wait_for_ack_once(&self, ack: &AckPolling, id: u64, channel: &HeaderValue, generation: u64) -> Outcome {
        let outcome = self.wait_for_ack(ack, id, channel, generation).await;
        let mut c = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        if c.generation == generation {
            c.awaited.remove(&id);
        }
        outcome
    }

    /// Polls the ack endpoint until `id` is acknowledged or `ack.timeout`
    /// has passed. A `true` after the channel was found reset is not
    /// trusted (it may answer for a request sent after the reset).
    async fn wait_for_ack(&self, ack: &AckPolling, id: u64, channel: &HeaderValue, generation: u64) -> Outcome {
        #[derive(Deserialize)]
        struct AckReply {
            acks: std::collections::HashMap<String, bool>,
        }
        let deadline = Instant::now() + ack.timeout;
        let body = format!("{{\"acks\":[{id}]}}");
        let mut ack_headers = HeaderMap::new();
        ack_headers.insert(AUTHORIZATION, self.auth.clone());
        ack_headers.insert(CHANNEL_HEADER, channel.clone());
        ack_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut last = String::from("not acknowledged yet");
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep(ack.every.min(deadline - now)).await;
            let request = self.client.post(self.ack_url.clone()).headers(ack_headers.clone()).body(body.clone());
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, execute(request, self.ack_url.as_str())).await {
                Err(_) => break,
                Ok(Err(failed)) => last = failed.message,
                Ok(Ok(reply)) if reply.status == 200 => match serde_json::from_slice::<AckReply>(&reply.body) {
                    Ok(acks) if acks.acks.get(&id.to_string()) == Some(&true) => {
                        let reset = self.channel.lock().unwrap_or_else(|e| e.into_inner()).generation != generation;
                        return if reset {
                            Outcome::Retry(format!(
                                "HEC channel reset while ackId {id} was awaited: its answer may be another \
                                 request's; resent"
                            ))
                        } else {
                            Outcome::Delivered
                        };
                    }
                    Ok(_) => last = String::from("not acknowledged yet"),
                    Err(e) => last = format!("unreadable ack reply: {e}"),
                },
                Ok(Ok(reply)) => {
                    last = format!(
                        "ack poll HTTP {}: {}",
                        reply.status,
                        snippet(&String::from_utf8_lossy(&reply.body), 200)
                    )
                }
            }
        }
        Outcome::Retry(format!("indexer ack timeout after {} ms ({last})", ack.timeout.as_millis()))
    }
}
