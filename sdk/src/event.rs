//! Read access to one event.

use crate::abi::{present, EventRecord};

/// An IP address as the ABI carries it: 16 bytes, IPv4 mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ip {
    bytes: [u8; 16],
    v4: bool,
}

impl Ip {
    pub fn v4(a: u8, b: u8, c: u8, d: u8) -> Ip {
        let mut bytes = [0u8; 16];
        bytes[10] = 0xff;
        bytes[11] = 0xff;
        bytes[12..].copy_from_slice(&[a, b, c, d]);
        Ip { bytes, v4: true }
    }

    pub fn v6(bytes: [u8; 16]) -> Ip {
        Ip { bytes, v4: false }
    }

    /// Parses dotted IPv4 (`10.0.0.1`); IPv6 text is not parsed by the SDK.
    pub fn parse_v4(s: &str) -> Option<Ip> {
        let mut octets = [0u8; 4];
        let mut parts = s.split('.');
        for o in octets.iter_mut() {
            *o = parts.next()?.parse().ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Ip::v4(octets[0], octets[1], octets[2], octets[3]))
    }

    #[inline]
    pub fn is_v4(&self) -> bool {
        self.v4
    }

    #[inline]
    pub fn octets_v4(&self) -> Option<[u8; 4]> {
        if self.v4 {
            Some([self.bytes[12], self.bytes[13], self.bytes[14], self.bytes[15]])
        } else {
            None
        }
    }

    #[inline]
    pub fn bytes(&self) -> [u8; 16] {
        self.bytes
    }

    /// Whether this address lies in `network/prefix` (same family only;
    /// IPv4 prefixes count from the IPv4 address).
    pub fn in_network(&self, network: &Ip, prefix: u8) -> bool {
        if self.v4 != network.v4 {
            return false;
        }
        let (bits, start) = if self.v4 { (prefix.min(32) as usize, 96) } else { (prefix.min(128) as usize, 0) };
        let mut remaining = bits;
        let mut i = start / 8;
        while remaining >= 8 {
            if self.bytes[i] != network.bytes[i] {
                return false;
            }
            remaining -= 8;
            i += 1;
        }
        if remaining > 0 {
            let mask = 0xffu8 << (8 - remaining);
            return self.bytes[i] & mask == network.bytes[i] & mask;
        }
        true
    }
}

/// One event of the batch: the well-known fields, and any other field by
/// name through the host.
pub struct Event<'a> {
    rec: &'a EventRecord,
    index: u16,
}

impl<'a> Event<'a> {
    #[inline]
    pub fn new(rec: &'a EventRecord, index: u16) -> Self {
        Event { rec, index }
    }

    #[inline]
    fn has(&self, bit: u32) -> bool {
        self.rec.present & bit != 0
    }

    #[inline]
    pub fn record(&self) -> &EventRecord {
        self.rec
    }

    #[inline]
    pub fn src_ip(&self) -> Option<Ip> {
        self.ip(present::SRC_IP, present::SRC_IPV4, self.rec.src_ip)
    }

    #[inline]
    pub fn dst_ip(&self) -> Option<Ip> {
        self.ip(present::DST_IP, present::DST_IPV4, self.rec.dst_ip)
    }

    #[inline]
    fn ip(&self, bit: u32, v4_bit: u32, bytes: [u8; 16]) -> Option<Ip> {
        if self.has(bit) {
            Some(Ip { bytes, v4: self.has(v4_bit) })
        } else {
            None
        }
    }

    /// `src_port`, or Zeek's `id.orig_p` / `id_orig_p`.
    #[inline]
    pub fn src_port(&self) -> Option<u16> {
        self.opt(present::SRC_PORT, self.rec.src_port)
    }

    /// `dst_port`, or Zeek's `id.resp_p` / `id_resp_p`.
    #[inline]
    pub fn dst_port(&self) -> Option<u16> {
        self.opt(present::DST_PORT, self.rec.dst_port)
    }

    /// IANA protocol number (6 = TCP, 17 = UDP, 1 = ICMP).
    #[inline]
    pub fn proto(&self) -> Option<u8> {
        self.opt(present::PROTO, self.rec.proto)
    }

    /// Flow `bytes`.
    #[inline]
    pub fn bytes(&self) -> Option<u64> {
        self.opt(present::BYTES, self.rec.bytes)
    }

    #[inline]
    pub fn orig_bytes(&self) -> Option<u64> {
        self.opt(present::ORIG_BYTES, self.rec.orig_bytes)
    }

    #[inline]
    pub fn resp_bytes(&self) -> Option<u64> {
        self.opt(present::RESP_BYTES, self.rec.resp_bytes)
    }

    #[inline]
    pub fn packets(&self) -> Option<u64> {
        self.opt(present::PACKETS, self.rec.packets)
    }

    /// Event time, epoch seconds.
    #[inline]
    pub fn ts(&self) -> Option<f64> {
        self.opt(present::TS, self.rec.ts)
    }

    #[inline]
    pub fn duration(&self) -> Option<f64> {
        self.opt(present::DURATION, self.rec.duration)
    }

    /// Threat-intel matches found by earlier chain stages.
    #[inline]
    pub fn ti_matches(&self) -> u32 {
        self.rec.ti_matches
    }

    #[inline]
    pub fn src_country(&self) -> Option<&str> {
        self.country(present::SRC_COUNTRY, &self.rec.src_country)
    }

    #[inline]
    pub fn dst_country(&self) -> Option<&str> {
        self.country(present::DST_COUNTRY, &self.rec.dst_country)
    }

    #[inline]
    fn country<'s>(&self, bit: u32, code: &'s [u8; 2]) -> Option<&'s str> {
        if self.has(bit) {
            core::str::from_utf8(code).ok()
        } else {
            None
        }
    }

    #[inline]
    pub fn src_asn(&self) -> Option<u32> {
        self.opt(present::SRC_ASN, self.rec.src_asn)
    }

    #[inline]
    pub fn dst_asn(&self) -> Option<u32> {
        self.opt(present::DST_ASN, self.rec.dst_asn)
    }

    /// Any field of the event by name (as sent, or added by earlier chain
    /// stages, e.g. `geo`), as JSON text copied into `buf`.
    pub fn field_json<'b>(&self, key: &str, buf: &'b mut [u8]) -> Option<&'b str> {
        crate::host::field_json(self.index, key, buf)
    }

    /// A string field by name, without its JSON quotes (no unescaping:
    /// values with escapes come back as written).
    pub fn field_str<'b>(&self, key: &str, buf: &'b mut [u8]) -> Option<&'b str> {
        let json = self.field_json(key, buf)?;
        if json.len() >= 2 && json.starts_with('"') && json.ends_with('"') {
            Some(&json[1..json.len() - 1])
        } else {
            None
        }
    }

    #[inline]
    fn opt<T>(&self, bit: u32, v: T) -> Option<T> {
        if self.has(bit) {
            Some(v)
        } else {
            None
        }
    }
}
