//! The engine's event as the ABI's fixed 112-byte record (`sdk/ABI.md`):
//! what every call hands the guest, built once per chunk and shared by the
//! live module and its shadow.

use std::net::IpAddr;

use enrichd_engine::{fact, Event, FactInfo, FactKind, FactMask, Side};
use enrichd_sdk::abi::{present, EventRecord};

fn ip_bytes(ip: IpAddr) -> ([u8; 16], bool) {
    match ip {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), true),
        IpAddr::V6(v6) => (v6.octets(), false),
    }
}

/// The engine's event as the ABI's fixed record. The ASN, country and
/// match slots come from the event's facts by kind and side (`facts` is the
/// chain's fact table, or the part of it declared before the rule): the
/// first fact set of kind `AsNumber` on the source side fills `src_asn`,
/// and so on; `ti_matches` is the sum of the `IndicatorMatches` facts.
/// Never by name: renaming an output changes nothing here.
pub fn to_record(ev: &Event, slots: &RecordSlots) -> EventRecord {
    let mut r = EventRecord::EMPTY;
    fill_record(&mut r, ev, slots);
    r
}

/// [`to_record`] written where the record lies (a chunk's records are
/// written straight into the buffer the guest's area is copied from:
/// building each on the stack and moving it stalled on the copy).
#[inline]
pub(crate) fn fill_record(r: &mut EventRecord, ev: &Event, slots: &RecordSlots) {
    *r = EventRecord::EMPTY;
    let mut p = 0u32;
    if let Some(ip) = ev.src_ip {
        let (b, v4) = ip_bytes(ip);
        r.src_ip = b;
        p |= present::SRC_IP | if v4 { present::SRC_IPV4 } else { 0 };
    }
    if let Some(ip) = ev.dst_ip {
        let (b, v4) = ip_bytes(ip);
        r.dst_ip = b;
        p |= present::DST_IP | if v4 { present::DST_IPV4 } else { 0 };
    }
    macro_rules! copy {
        ($field:ident, $bit:expr) => {
            if let Some(v) = ev.$field {
                r.$field = v;
                p |= $bit;
            }
        };
    }
    copy!(ts, present::TS);
    copy!(bytes, present::BYTES);
    copy!(orig_bytes, present::ORIG_BYTES);
    copy!(resp_bytes, present::RESP_BYTES);
    copy!(packets, present::PACKETS);
    copy!(duration, present::DURATION);
    copy!(src_port, present::SRC_PORT);
    copy!(dst_port, present::DST_PORT);
    copy!(proto, present::PROTO);
    let first = |mask: &FactMask| ev.first_fact(mask).map(|(_, v)| v);
    if let Some(asn) = first(&slots.src_asn) {
        r.src_asn = asn;
        p |= present::SRC_ASN;
    }
    if let Some(asn) = first(&slots.dst_asn) {
        r.dst_asn = asn;
        p |= present::DST_ASN;
    }
    if let Some(code) = first(&slots.src_country) {
        r.src_country = fact::country_bytes(code);
        p |= present::SRC_COUNTRY;
    }
    if let Some(code) = first(&slots.dst_country) {
        r.dst_country = fact::country_bytes(code);
        p |= present::DST_COUNTRY;
    }
    r.ti_matches = ev.facts_in(&slots.matches).fold(0u32, |sum, (_, n)| sum.saturating_add(n));
    r.present = p;
}

/// Which facts fill the event record's fact slots, worked out once per
/// build from the declared kinds and sides: per slot the candidate ids in
/// declaration (chain) order, the first one set wins; `matches` are summed.
/// Filling a record is then a few O(1) fact reads, whatever else the event
/// carries.
#[derive(Clone, Debug, Default)]
pub struct RecordSlots {
    src_asn: FactMask,
    dst_asn: FactMask,
    src_country: FactMask,
    dst_country: FactMask,
    matches: FactMask,
}

impl RecordSlots {
    pub fn of(facts: &[FactInfo]) -> Self {
        let ids = |kind: FactKind, side: Option<Option<Side>>| {
            FactMask::of(
                facts.iter().filter(|f| f.decl.kind == kind && side.is_none_or(|s| f.decl.side == s)).map(|f| f.id),
            )
        };
        RecordSlots {
            src_asn: ids(FactKind::AsNumber, Some(Some(Side::Source))),
            dst_asn: ids(FactKind::AsNumber, Some(Some(Side::Destination))),
            src_country: ids(FactKind::CountryCode, Some(Some(Side::Source))),
            dst_country: ids(FactKind::CountryCode, Some(Some(Side::Destination))),
            matches: ids(FactKind::IndicatorMatches, None),
        }
    }
}
