//! The `/v1/metrics` JSON document (without the enricher and output
//! sections, which the API layer adds from the chain and settings).
//!
//! Conventions: rates and milliseconds are floats; series are `[ts_ms,
//! value]` pairs, one per bucket including empty ones, `ts_ms` the bucket's
//! wall-clock start, the last pair the current partial bucket (its rate is
//! over the part elapsed). `avg_risk` of a bucket without scored events is
//! `null` (a gap, not a score of 0); `totals.avg_risk` is 0 until the first
//! scored event. Every figure the dashboard draws a sparkline of has its
//! 5-minute series here, so a page opened on a busy server draws them all
//! at once instead of starting empty: `unique_sources` is the running
//! estimate at each bucket's end (`null` before start), `lag_ms_p95` the
//! p95 of the bucket's batches (`null` without any), `requests` the HTTP
//! requests answered in the bucket (counted by the ticker, each second).

use serde_json::{json, Value};

use super::aggregate::{Reading, Tops};
use super::distinct;
use super::feed::{country, HIGH_RISK_KEEP, HIGH_RISK_SCORE};
use super::latency::WINDOW_S;
use super::window::Span;
use super::Metrics;

fn ratio(sum: u64, count: u64) -> Option<f64> {
    (count > 0).then(|| sum as f64 / count as f64)
}

fn series(spans: &[Span], value: impl Fn(&Span) -> Value) -> Value {
    spans.iter().map(|s| json!([s.start_ms, value(s)])).collect()
}

/// A series kept beside the spans (same buckets), `null` where `None`.
fn points<T: Into<Value> + Copy>(spans: &[Span], values: &[Option<T>]) -> Value {
    spans.iter().zip(values).map(|(s, v)| json!([s.start_ms, v.map_or(Value::Null, Into::into)])).collect()
}

fn tops(t: &Tops) -> Value {
    let entries = |list: Vec<Value>| Value::Array(list);
    json!({
        "sources": entries(t.sources.iter().map(|e| json!({"key": e.key.to_string(), "count": e.count, "error": e.error})).collect()),
        "dst_countries": entries(t.countries.iter().map(|e| json!({"key": country(e.key), "count": e.count, "error": e.error})).collect()),
        "asns": entries(t.asns.iter().map(|(e, label)| json!({"key": e.key.to_string(), "label": label, "count": e.count, "error": e.error})).collect()),
        "indicators": entries(t.indicators.iter().map(|e| json!({"key": e.key, "count": e.count, "error": e.error})).collect()),
        // Facts plugins declared with `top_values`, by fact name.
        "facts": t.facts.iter().map(|(name, list)| (name.clone(), entries(list.iter().map(|e| json!({"key": e.key, "count": e.count, "error": e.error})).collect()))).collect::<serde_json::Map<String, Value>>(),
    })
}

pub(crate) fn document(m: &Metrics, r: &Reading) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let req = &m.requests;
    let (c2, c4, c5) = (req.class_total(0), req.class_total(1), req.class_total(2));
    let (queue_depth, records_queued) = m.in_flight();
    let t = &r.totals;
    json!({
        "requests_total": req.total.load(Relaxed),
        "requests_failed": c4 + c5,
        "records_processed": t.events,
        "queue_depth": queue_depth,
        "records_queued": records_queued,
        "eps": r.eps_10s,
        "requests_by_class": { "2xx": c2, "4xx": c4, "5xx": c5 },
        "uptime_s": r.uptime_s,
        "server_time_ms": r.now_ms,
        "totals": {
            "events": t.events,
            "batches": t.batches,
            "threat_matches": t.threats,
            "events_with_threats": r.events_with_threats,
            "batches_rejected": m.batches_rejected(),
            "unique_sources": r.unique_sources,
            "unique_sources_error": distinct::relative_error(),
            "sources_active_5m": r.sources_active,
            "risk_sum": t.risk_sum,
            "risk_count": t.risk_count,
            "avg_risk": ratio(t.risk_sum, t.risk_count).unwrap_or(0.0),
        },
        "rates": { "eps_10s": r.eps_10s, "eps_1m": r.eps_1m, "epm_1m": r.eps_1m * 60.0, "bpm_1m": r.bpm_1m },
        "queue": {
            "lag_ms_p50": r.lag.p50_ms, "lag_ms_p95": r.lag.p95_ms, "lag_ms_p99": r.lag.p99_ms,
            "window_s": WINDOW_S, "samples": r.lag.samples,
        },
        "processing": {
            "ms_p50": r.processing.p50_ms, "ms_p95": r.processing.p95_ms, "ms_p99": r.processing.p99_ms,
            "window_s": WINDOW_S, "samples": r.processing.samples,
        },
        "timeseries": {
            "bucket_s": 5,
            "last_5m": {
                "eps": series(&r.series_5s, |s| s.per_second(s.tally.events).into()),
                "bpm": series(&r.series_5s, |s| (s.per_second(s.tally.batches) * 60.0).into()),
                "threats": series(&r.series_5s, |s| s.tally.threats.into()),
                "avg_risk": series(&r.series_5s, |s| ratio(s.tally.risk_sum, s.tally.risk_count).into()),
                "unique_sources": points(&r.series_5s, &r.sources_5s),
                "lag_ms_p95": points(&r.series_5s, &r.lag_p95_5s),
                "requests": series(&r.series_5s, |s| s.tally.requests.into()),
            },
            "last_15m": {
                "bucket_s": 15,
                "epm": series(&r.series_15s, |s| (s.per_second(s.tally.events) * 60.0).into()),
            },
        },
        "top": { "5m": tops(&r.top_5m), "15m": tops(&r.top_15m) },
        "recent_high_risk": r.high_risk.iter().map(|h| h.to_json()).collect::<Vec<_>>(),
        "recent_high_risk_threshold": HIGH_RISK_SCORE,
        "recent_high_risk_max": HIGH_RISK_KEEP,
    })
}
