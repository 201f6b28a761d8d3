//! JSON Schemas of the input formats and of the enriched output, generated
//! from these documented structs with `schemars`, served under `/v1/schema`.
//!
//! The structs exist only to describe the wire format; the engine parses
//! records with its own streaming reader (see `enrichd_engine::parse`).
#![allow(dead_code)]

use schemars::JsonSchema;
use serde_json::{json, Value};

/// Protocol: a name (`tcp`, `udp`, `icmp`, ...) or an IANA number.
#[derive(JsonSchema)]
#[serde(untagged)]
enum Protocol {
    Name(String),
    Number(u8),
}

/// A `flows.v1` record. Fields not listed pass through unchanged.
#[derive(JsonSchema)]
struct FlowRecord {
    /// Event time, seconds since the Unix epoch.
    ts: Option<f64>,
    /// Source address, IPv4 or IPv6.
    src_ip: Option<String>,
    /// Destination address, IPv4 or IPv6.
    dst_ip: Option<String>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
    protocol: Option<Protocol>,
    /// Accepted as an alias of `protocol`.
    proto: Option<Protocol>,
    bytes: Option<u64>,
    packets: Option<u64>,
}

/// A `zeek.conn.v1` record: Zeek's dotted names (`id.orig_h`) or the
/// underscore names (`id_orig_h`). Fields not listed pass through unchanged.
#[derive(JsonSchema)]
struct ZeekConnRecord {
    /// Epoch seconds (Zeek's default JSON) or an ISO 8601 string.
    ts: Option<Value>,
    uid: Option<String>,
    #[serde(rename = "id.orig_h")]
    id_orig_h_dotted: Option<String>,
    #[serde(rename = "id.orig_p")]
    id_orig_p_dotted: Option<u16>,
    #[serde(rename = "id.resp_h")]
    id_resp_h_dotted: Option<String>,
    #[serde(rename = "id.resp_p")]
    id_resp_p_dotted: Option<u16>,
    id_orig_h: Option<String>,
    id_orig_p: Option<u16>,
    id_resp_h: Option<String>,
    id_resp_p: Option<u16>,
    proto: Option<Protocol>,
    service: Option<String>,
    duration: Option<f64>,
    orig_bytes: Option<u64>,
    resp_bytes: Option<u64>,
    conn_state: Option<String>,
}

/// Body of `POST /v1/ingest`.
#[derive(JsonSchema)]
struct IngestRequest<R> {
    collector_id: Option<String>,
    /// `zeek.conn.v1` (aliases `zeek`, `zeek.conn`) or `flows.v1`.
    format: String,
    /// At most 10,000 records (configurable).
    records: Vec<R>,
}

/// Geolocation of an address (`null` when unknown).
#[derive(JsonSchema)]
struct Geo {
    /// ISO 3166-1 alpha-2 country code.
    country: Option<String>,
    /// City name (English).
    city: Option<String>,
    lat: Option<f64>,
    lon: Option<f64>,
    /// Continent code (e.g. `EU`), when the database has it.
    continent: Option<String>,
    timezone: Option<String>,
    /// Accuracy radius in km, when the database has it.
    accuracy_radius: Option<u32>,
}

/// Autonomous system of an address (`null` when unknown).
#[derive(JsonSchema)]
struct Asn {
    asn: u32,
    org: Option<String>,
}

/// One threat-intel indicator that matched the event.
#[derive(JsonSchema)]
struct TiMatch {
    /// The indicator as listed (`45.149.3.0/24`, `evil-example.com`).
    indicator: String,
    /// `addr`, `subnet` or `domain`.
    #[serde(rename = "type")]
    kind: String,
    /// The event field that matched (`src_ip`, `dst_ip`, `query`, ...).
    field: String,
    /// The event's value in that field.
    value: String,
    /// The indicator file.
    source: String,
    category: Option<String>,
    confidence: Option<u8>,
    /// Zeek intel `meta.source`.
    feed: Option<String>,
    description: Option<String>,
}

#[derive(JsonSchema)]
struct Ti {
    matches: Vec<TiMatch>,
}

/// An enriched record (default layout): the input record's fields plus these.
#[derive(JsonSchema)]
struct EnrichedRecord {
    geo: Option<Geo>,
    asn: Option<Asn>,
    ti: Ti,
    /// Risk score 0-100, from the risk rule.
    risk_score: Option<u8>,
    /// Why the score is what it is.
    reasons: Option<Vec<String>>,
    /// Non-fatal problems with this record (e.g. an address that is not one).
    enrichment_warnings: Option<Vec<String>>,
}

/// Answer of `POST /v1/ingest`.
#[derive(JsonSchema)]
struct EnrichedBatch {
    collector_id: Option<String>,
    format: String,
    count: u64,
    records: Vec<EnrichedRecord>,
}

const DOCS: [&str; 3] = ["enriched.v1.schema.json", "zeek.conn.v1.schema.json", "flows.v1.schema.json"];

pub fn names() -> Vec<&'static str> {
    DOCS.to_vec()
}

pub fn index() -> Value {
    json!({
        "enriched_schema": DOCS[0],
        "input_schemas": { "zeek.conn.v1": DOCS[1], "flows.v1": DOCS[2] },
        "schema_base": "/v1/schema/",
    })
}

pub fn document(name: &str) -> Option<Value> {
    let schema = match name {
        "enriched.v1.schema.json" | "enriched.v1" => schemars::schema_for!(EnrichedBatch),
        "zeek.conn.v1.schema.json" | "zeek.conn.v1" => schemars::schema_for!(IngestRequest<ZeekConnRecord>),
        "flows.v1.schema.json" | "flows.v1" => schemars::schema_for!(IngestRequest<FlowRecord>),
        _ => return None,
    };
    Some(serde_json::to_value(schema).expect("schema serializes"))
}
