//! Input formats and the names under which clients send them.

use serde::Serialize;

/// The record formats `/v1/ingest` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Format {
    /// Zeek `conn.log` records, with Zeek's dotted names (`id.orig_h`) or the
    /// underscore names of the v1 schema (`id_orig_h`).
    #[serde(rename = "zeek.conn.v1")]
    ZeekConnV1,
    /// Generic flow records (`src_ip`, `dst_ip`, `protocol`/`proto`, ...).
    #[serde(rename = "flows.v1")]
    FlowsV1,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::ZeekConnV1, Format::FlowsV1];

    /// Parses a format name, accepting the aliases clients use.
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "zeek.conn.v1" | "zeek.conn" | "zeek" => Some(Format::ZeekConnV1),
            "flows.v1" | "flows" => Some(Format::FlowsV1),
            _ => None,
        }
    }

    /// The canonical name, as echoed in responses.
    pub fn name(self) -> &'static str {
        match self {
            Format::ZeekConnV1 => "zeek.conn.v1",
            Format::FlowsV1 => "flows.v1",
        }
    }
}

/// IANA protocol number for a protocol name (case-insensitive).
pub fn protocol_number(name: &str) -> Option<u8> {
    const NAMES: &[(&str, u8)] = &[
        ("icmp", 1),
        ("igmp", 2),
        ("tcp", 6),
        ("udp", 17),
        ("gre", 47),
        ("esp", 50),
        ("ah", 51),
        ("icmp6", 58),
        ("icmpv6", 58),
        ("ipv6-icmp", 58),
        ("ospf", 89),
        ("sctp", 132),
    ];
    NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve_to_canonical_names() {
        assert_eq!(Format::from_name("zeek").unwrap().name(), "zeek.conn.v1");
        assert_eq!(Format::from_name("zeek.conn").unwrap().name(), "zeek.conn.v1");
        assert_eq!(Format::from_name("flows.v1").unwrap().name(), "flows.v1");
        assert!(Format::from_name("netflow").is_none());
        assert!(Format::from_name("ZEEK").is_none());
    }

    #[test]
    fn protocol_names_map_to_iana_numbers() {
        assert_eq!(protocol_number("TCP"), Some(6));
        assert_eq!(protocol_number("udp"), Some(17));
        assert_eq!(protocol_number("icmp"), Some(1));
        assert_eq!(protocol_number("carrier-pigeon"), None);
    }
}
