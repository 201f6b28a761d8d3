//! JSON Schemas of the input formats and of the enriched output, generated
//! from these documented structs with `schemars`, served under `/v1/schema`.
//!
//! The structs exist only to describe the wire format; the engine parses
//! records with its own streaming reader (see `enrichd_engine::parse`).
//! What the chain adds to a record is not written here: each stage declares
//! the facts it produces with the JSON Schema of the output they are
//! written under, and the enriched schema is assembled from the live
//! chain's declarations, under the configured output keys.
#![allow(dead_code)]

use enrichd_engine::Chain;
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

/// An enriched record: the input record's fields plus the outputs of the
/// chain's stages (added to this schema from the facts they declare, see
/// [`document`]) and these.
#[derive(JsonSchema)]
struct EnrichedRecord {
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

pub(crate) fn names() -> Vec<&'static str> {
    DOCS.to_vec()
}

pub(crate) fn index() -> Value {
    json!({
        "enriched_schema": DOCS[0],
        "input_schemas": { "zeek.conn.v1": DOCS[1], "flows.v1": DOCS[2] },
        "schema_base": "/v1/schema/",
    })
}

/// The schema document `name`; the enriched one describes `chain`'s outputs.
pub(crate) fn document(name: &str, chain: &Chain) -> Option<Value> {
    let schema = match name {
        "enriched.v1.schema.json" | "enriched.v1" => return Some(enriched(chain)),
        "zeek.conn.v1.schema.json" | "zeek.conn.v1" => schemars::schema_for!(IngestRequest<ZeekConnRecord>),
        "flows.v1.schema.json" | "flows.v1" => schemars::schema_for!(IngestRequest<FlowRecord>),
        _ => return None,
    };
    Some(serde_json::to_value(schema).expect("schema serializes"))
}

/// The enriched-batch schema with one property per output key the chain's
/// enabled stages declared a fact for (the first declaration of a key wins:
/// facts of one target share their output), each with the fact's schema
/// and, in `x-enrichd-facts`, the facts it carries (name, kind, side, stage).
fn enriched(chain: &Chain) -> Value {
    let mut doc = serde_json::to_value(schemars::schema_for!(EnrichedBatch)).expect("schema serializes");
    let mut outputs = serde_json::Map::new();
    for fact in chain.active_facts() {
        let Some(key) = fact.decl.output else { continue };
        let name = chain.keys()[key.index()].to_string();
        let entry = outputs.entry(name).or_insert_with(|| {
            let mut schema = fact.decl.schema.clone();
            if !schema.is_object() {
                schema = json!({});
            }
            schema["x-enrichd-facts"] = json!([]);
            schema
        });
        if let Some(list) = entry["x-enrichd-facts"].as_array_mut() {
            list.push(json!({
                "name": fact.decl.name, "kind": fact.decl.kind, "stage": &*fact.stage,
                "side": fact.decl.side.map(|s| match s { enrichd_engine::Side::Source => "source", enrichd_engine::Side::Destination => "destination" }),
            }));
        }
    }
    // The record's properties live in `$defs` (schemars) under the
    // record's struct name.
    let record = doc.pointer_mut("/$defs/EnrichedRecord/properties").and_then(Value::as_object_mut);
    if let Some(properties) = record {
        for (key, schema) in outputs {
            properties.entry(key).or_insert(schema);
        }
    }
    doc
}
