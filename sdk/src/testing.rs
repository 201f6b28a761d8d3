//! Native test harness: build events in Rust, run a rule or enricher on
//! them exactly as the host would (same exchange area, same result
//! encoding), read back the verdicts. Only compiled off wasm32.

use std::cell::RefCell;
use std::net::IpAddr;

use crate::abi::{self, kind, present, EventRecord, IoArea};
use crate::{Event, Output};

thread_local! {
    static FIELDS: RefCell<Vec<Vec<(String, String)>>> = const { RefCell::new(Vec::new()) };
    static CONFIG: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
    static LOGS: RefCell<Vec<(i32, String)>> = const { RefCell::new(Vec::new()) };
}

/// Sets a configuration value, as a chain entry's `config` table would.
pub fn set_config(key: &str, value: &str) {
    CONFIG.with(|c| {
        let mut c = c.borrow_mut();
        c.retain(|(k, _)| k != key);
        c.push((key.into(), value.into()));
    });
}

/// Messages the guest logged on this thread so far.
pub fn logs() -> Vec<(i32, String)> {
    LOGS.with(|l| l.borrow().clone())
}

fn copy_out(value: Option<String>, buf: &mut [u8]) -> i32 {
    match value {
        None => -1,
        Some(v) => {
            if v.len() <= buf.len() {
                buf[..v.len()].copy_from_slice(v.as_bytes());
            }
            v.len() as i32
        }
    }
}

pub(crate) fn host_field(event: u16, key: &str, buf: &mut [u8]) -> i32 {
    let value = FIELDS.with(|f| {
        f.borrow().get(event as usize).and_then(|fs| fs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
    });
    copy_out(value, buf)
}

pub(crate) fn host_config(key: &str, buf: &mut [u8]) -> i32 {
    let value = CONFIG.with(|c| c.borrow().iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()));
    copy_out(value, buf)
}

pub(crate) fn host_log(level: i32, message: &str) {
    LOGS.with(|l| l.borrow_mut().push((level, message.into())));
}

/// Builds one event.
#[derive(Clone)]
pub struct EventBuilder {
    rec: EventRecord,
    fields: Vec<(String, String)>,
}

impl Default for EventBuilder {
    fn default() -> Self {
        EventBuilder::new()
    }
}

fn ip_bytes(ip: &str) -> ([u8; 16], bool) {
    match ip.parse::<IpAddr>().expect("a valid IP address") {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), true),
        IpAddr::V6(v6) => (v6.octets(), false),
    }
}

impl EventBuilder {
    pub fn new() -> Self {
        EventBuilder { rec: EventRecord::EMPTY, fields: Vec::new() }
    }

    fn set(mut self, bit: u32, f: impl FnOnce(&mut EventRecord)) -> Self {
        self.rec.present |= bit;
        f(&mut self.rec);
        self
    }

    pub fn src_ip(self, ip: &str) -> Self {
        let (b, v4) = ip_bytes(ip);
        let bits = present::SRC_IP | if v4 { present::SRC_IPV4 } else { 0 };
        self.set(bits, |r| r.src_ip = b)
    }

    pub fn dst_ip(self, ip: &str) -> Self {
        let (b, v4) = ip_bytes(ip);
        let bits = present::DST_IP | if v4 { present::DST_IPV4 } else { 0 };
        self.set(bits, |r| r.dst_ip = b)
    }

    pub fn src_port(self, p: u16) -> Self {
        self.set(present::SRC_PORT, |r| r.src_port = p)
    }

    pub fn dst_port(self, p: u16) -> Self {
        self.set(present::DST_PORT, |r| r.dst_port = p)
    }

    pub fn proto(self, p: u8) -> Self {
        self.set(present::PROTO, |r| r.proto = p)
    }

    pub fn bytes(self, b: u64) -> Self {
        self.set(present::BYTES, |r| r.bytes = b)
    }

    pub fn orig_bytes(self, b: u64) -> Self {
        self.set(present::ORIG_BYTES, |r| r.orig_bytes = b)
    }

    pub fn resp_bytes(self, b: u64) -> Self {
        self.set(present::RESP_BYTES, |r| r.resp_bytes = b)
    }

    pub fn packets(self, p: u64) -> Self {
        self.set(present::PACKETS, |r| r.packets = p)
    }

    pub fn ts(self, ts: f64) -> Self {
        self.set(present::TS, |r| r.ts = ts)
    }

    pub fn ti_matches(mut self, n: u32) -> Self {
        self.rec.ti_matches = n;
        self
    }

    pub fn dst_country(self, code: &str) -> Self {
        let c = code.as_bytes();
        self.set(present::DST_COUNTRY, |r| r.dst_country = [c[0], c[1]])
    }

    pub fn dst_asn(self, asn: u32) -> Self {
        self.set(present::DST_ASN, |r| r.dst_asn = asn)
    }

    /// Any other field, as JSON text (`"\"example.com\""`, `42`).
    pub fn field(mut self, key: &str, json: &str) -> Self {
        self.fields.push((key.into(), json.into()));
        self
    }

    /// An event from a record built elsewhere (e.g. by the host's converter).
    pub fn from_record(rec: EventRecord) -> Self {
        EventBuilder { rec, fields: Vec::new() }
    }

    pub fn record(&self) -> EventRecord {
        self.rec
    }

    /// Runs `f` on this one event.
    pub fn run(self, f: fn(&Event, &mut Output)) -> Results {
        run_batch(&[self], f).remove(0)
    }
}

/// What a rule or enricher produced for one event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Results {
    pub score: Option<i32>,
    pub reasons: Vec<String>,
    pub tags: Vec<String>,
    /// `(key, JSON text)`.
    pub fields: Vec<(String, String)>,
}

/// Runs `f` over a batch (up to [`abi::MAX_BATCH`] events) through the same
/// exchange area and encoding the host uses.
pub fn run_batch(events: &[EventBuilder], f: fn(&Event, &mut Output)) -> Vec<Results> {
    assert!(events.len() <= abi::MAX_BATCH, "at most {} events per batch", abi::MAX_BATCH);
    let mut io: Box<IoArea> = Box::new(IoArea {
        events: [EventRecord::EMPTY; abi::MAX_BATCH],
        out_len: 0,
        reserved: 0,
        out: [0; abi::OUT_CAPACITY],
    });
    for (slot, e) in io.events.iter_mut().zip(events) {
        *slot = e.rec;
    }
    FIELDS.with(|f| *f.borrow_mut() = events.iter().map(|e| e.fields.clone()).collect());
    let status = crate::process_batch(&mut io, events.len(), f);
    assert_eq!(status, 0, "result buffer overflowed");
    let mut results = vec![Results::default(); events.len()];
    for entry in abi::entries(&io.out[..io.out_len as usize]) {
        let entry = entry.expect("well-formed results");
        let r = &mut results[entry.event as usize];
        let text = || String::from_utf8(entry.payload.to_vec()).expect("UTF-8");
        match entry.kind {
            kind::SCORE => {
                let p = entry.payload;
                r.score = Some(i32::from_le_bytes([p[0], p[1], p[2], p[3]]));
            }
            kind::REASON => r.reasons.push(text()),
            kind::TAG => r.tags.push(text()),
            _ => {
                let klen = entry.payload[0] as usize;
                let key = String::from_utf8(entry.payload[1..1 + klen].to_vec()).unwrap();
                let value = String::from_utf8(entry.payload[1 + klen..].to_vec()).unwrap();
                r.fields.push((key, value));
            }
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo(ev: &Event, out: &mut Output) {
        if let Some(p) = ev.dst_port() {
            out.score(p as i32);
        }
        if ev.src_ip().map_or(false, |ip| ip.in_network(&Ip4::net(), 8)) {
            out.tag("ten");
        }
        let mut buf = [0u8; 64];
        if let Some(q) = ev.field_str("query", &mut buf) {
            let mut t = crate::Text::<64>::new();
            t.push_str("q=").push_str(q).push_str(" n=").push_u64(7);
            out.reason(t.as_str());
        }
        out.field_str("note", "a \"b\"");
    }

    struct Ip4;
    impl Ip4 {
        fn net() -> crate::Ip {
            crate::Ip::parse_v4("10.0.0.0").unwrap()
        }
    }

    #[test]
    fn harness_round_trips_through_the_abi_encoding() {
        let r = run_batch(
            &[
                EventBuilder::new().dst_port(443).src_ip("10.1.2.3").field("query", "\"x.example\""),
                EventBuilder::new().src_ip("2001:db8::1"),
            ],
            demo,
        );
        assert_eq!(r[0].score, Some(443));
        assert_eq!(r[0].tags, vec!["ten"]);
        assert_eq!(r[0].reasons, vec!["q=x.example n=7"]);
        assert_eq!(r[0].fields, vec![("note".to_string(), "\"a \\\"b\\\"\"".to_string())]);
        assert_eq!(r[1].score, None);
        assert!(r[1].tags.is_empty());
    }

    #[test]
    fn config_and_network_membership() {
        set_config("home", "192.168.0.0");
        let mut buf = [0u8; 32];
        assert_eq!(crate::host::config_value("home", &mut buf), Some("192.168.0.0"));
        assert_eq!(crate::host::config_value("nope", &mut buf), None);
        let net = crate::Ip::parse_v4("192.168.0.0").unwrap();
        assert!(crate::Ip::parse_v4("192.168.255.1").unwrap().in_network(&net, 16));
        assert!(!crate::Ip::parse_v4("192.169.0.1").unwrap().in_network(&net, 16));
        assert!(crate::Ip::parse_v4("1.2.3.4").unwrap().in_network(&net, 0));
        assert!(crate::Ip::parse_v4("1.2.3").is_none());
    }
}
