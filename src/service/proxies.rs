//! `[server] trusted_proxies`: which peers may tell us who the client is.
//!
//! Behind a load balancer or an ingress every connection comes from the
//! proxy, so the per-address rate limit (and anything else keyed by the
//! client's address) would put every collector behind it in one budget,
//! which one anonymous flood through the proxy exhausts. A proxy says whom
//! it forwards for in `X-Forwarded-For` (or RFC 7239 `Forwarded: for=`);
//! those headers are only believed when the TCP peer is in this list,
//! because anyone else can write them.
//!
//! Which address in the header: each proxy appends the address it received
//! the request from, so the entries written by our own proxies are on the
//! right and whatever the client sent is on the left. The client is the
//! rightmost address that is not itself a trusted proxy (an address left of
//! it may be forged); when every hop is trusted (requests from inside), the
//! leftmost. `X-Forwarded-For` is read when present, else `Forwarded`: a
//! proxy that writes only `Forwarded` must drop a client's
//! `X-Forwarded-For` (documented with the setting).
//!
//! Malformed headers (an entry that is not an address, `for=unknown`, an
//! obfuscated node) are never an error: the answer is the peer's address,
//! as without the setting. Only entries right of the client matter: junk
//! the client sent left of it cannot force that fallback.
//!
//! Work per request: nothing unless the peer is trusted; then one pass over
//! the header bytes, no allocation (the walk keeps the answer so far rather
//! than collecting hops).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::HeaderMap;
use serde::Deserialize;

/// The configured networks. Addresses are compared in IPv6 form (IPv4 as
/// `::ffff:a.b.c.d`), so `10.0.0.0/8` also covers a peer that a dual-stack
/// listener reports as `::ffff:10.1.2.3`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TrustedProxies(Vec<Network>);

#[derive(Debug, Clone, Copy, PartialEq)]
struct Network {
    /// The network's address in IPv6 form, host bits cleared.
    base: u128,
    /// The prefix length in IPv6 form (IPv4's plus 96).
    mask: u128,
}

impl Network {
    fn parse(text: &str) -> Option<Network> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr.parse::<IpAddr>().ok()?, Some(len)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let (bits, offset) = match addr {
            IpAddr::V4(_) => (32, 96),
            IpAddr::V6(_) => (128, 0),
        };
        let len = match len {
            // Digits only: `u8::from_str` would also take `+8`.
            Some(len) if !len.is_empty() && len.len() <= 3 && len.bytes().all(|b| b.is_ascii_digit()) => {
                len.parse::<u32>().ok().filter(|&l| l <= bits)?
            }
            Some(_) => return None,
            None => bits,
        };
        let mask = u128::MAX.checked_shl(128 - (len + offset)).unwrap_or(0);
        Some(Network { base: wide(addr) & mask, mask })
    }

    fn contains(&self, addr: u128) -> bool {
        addr & self.mask == self.base
    }
}

/// An address in IPv6 form (IPv4 mapped).
fn wide(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl TrustedProxies {
    /// Parses a list of networks (`10.0.0.0/8`, `2001:db8::/32`, or a single
    /// address); the error names the first entry that is not one.
    pub(crate) fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, String> {
        entries
            .iter()
            .map(|e| {
                let e = e.as_ref();
                Network::parse(e.trim()).ok_or_else(|| {
                    format!("{e:?} is not an IP address or CIDR network (e.g. 10.0.0.0/8, 2001:db8::/32, 192.0.2.7)")
                })
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, addr: IpAddr) -> bool {
        let addr = wide(addr);
        self.0.iter().any(|n| n.contains(addr))
    }

    /// The client's address: `peer`, unless `peer` is a trusted proxy and
    /// its forwarding headers name the client (see the module docs).
    pub(crate) fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if self.0.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let mut walk = Walk::default();
        if headers.contains_key("x-forwarded-for") {
            for value in headers.get_all("x-forwarded-for") {
                let Ok(value) = value.to_str() else { return peer };
                for hop in value.split(',') {
                    walk.hop(self, parse_node(hop.trim_matches([' ', '\t'])));
                }
            }
        } else {
            for value in headers.get_all("forwarded") {
                let Ok(value) = value.to_str() else { return peer };
                for element in split_unquoted(value, b',') {
                    walk.hop(self, forwarded_for_of(element));
                }
            }
        }
        walk.answer().unwrap_or(peer)
    }
}

/// The hops of a forwarding header, read left to right (client first),
/// keeping only what the answer needs.
#[derive(Default)]
struct Walk {
    /// The first hop that is an address (used only when every hop is one).
    leftmost: Option<IpAddr>,
    /// The rightmost untrusted hop so far.
    client: Option<IpAddr>,
    /// A hop that is not an address was seen after `client` (or with no
    /// `client` yet): unless an untrusted hop comes after it, we cannot
    /// tell who the client is.
    unreadable: bool,
}

impl Walk {
    fn hop(&mut self, proxies: &TrustedProxies, hop: Option<IpAddr>) {
        match hop.map(|a| a.to_canonical()) {
            None => self.unreadable = true,
            Some(addr) => {
                self.leftmost.get_or_insert(addr);
                if !proxies.trusts(addr) {
                    self.client = Some(addr);
                    self.unreadable = false;
                }
            }
        }
    }

    fn answer(&self) -> Option<IpAddr> {
        if self.unreadable {
            None
        } else {
            self.client.or(self.leftmost)
        }
    }
}

/// One node as the headers write it: `192.0.2.1`, `2001:db8::1`,
/// `192.0.2.1:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711` (a port may be
/// an RFC 7239 obfuscated one, `_abc`).
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(addr) = node.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let (host, port) = match node.strip_prefix('[') {
        Some(rest) => {
            let (v6, after) = rest.split_once(']')?;
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':')?),
            };
            (IpAddr::V6(v6.parse::<Ipv6Addr>().ok()?), port)
        }
        None => {
            let (v4, port) = node.split_once(':')?;
            (IpAddr::V4(v4.parse().ok()?), Some(port))
        }
    };
    match port {
        Some(port) if port.is_empty() || !port.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => None,
        _ => Some(host),
    }
}

/// The address of a `Forwarded` element's `for=` (`None`: no `for`, or
/// one that is not an address: `unknown`, `_hidden`, junk).
fn forwarded_for_of(element: &str) -> Option<IpAddr> {
    let pair = split_unquoted(element, b';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim_matches([' ', '\t']).eq_ignore_ascii_case("for").then_some(value.trim_matches([' ', '\t']))
    })?;
    let value = match pair.strip_prefix('"') {
        // A quoted-pair (`\x`) is never needed to write an address.
        Some(quoted) => quoted.strip_suffix('"').filter(|v| !v.contains(['\\', '"']))?,
        None => pair,
    };
    parse_node(value)
}

/// `text` split at `sep` where it is not inside a quoted string (RFC 7230
/// quoted-string, with `\` escapes).
fn split_unquoted(text: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, b) in text.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                _ if b == sep && !quoted => {
                    rest = Some(&text[i + 1..]);
                    return Some(&text[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(text)
    })
}

/// Written back as the list it was read from (the schema's default, the
/// configuration reference).
impl serde::Serialize for TrustedProxies {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|n| {
            let len = n.mask.count_ones();
            match Ipv6Addr::from(n.base).to_ipv4_mapped() {
                Some(v4) if len >= 96 => format!("{v4}/{}", len - 96),
                _ => format!("{}/{len}", Ipv6Addr::from(n.base)),
            }
        }))
    }
}

/// `trusted_proxies = [...]` in the file: checked as it is read, so a bad
/// entry is a configuration error with its line.
impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<String>::deserialize(deserializer)?;
        TrustedProxies::parse(&entries).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(list).unwrap()
    }

    fn client(proxies: &TrustedProxies, peer: &str, headers: &[(&str, &str)]) -> String {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                axum::http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
        proxies.client(peer.parse().unwrap(), &map).to_string()
    }

    #[test]
    fn networks_parse_and_match() {
        let p = proxies(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", " 172.16.0.1/12 "]);
        for inside in ["10.255.0.1", "::ffff:10.1.1.1", "192.0.2.7", "2001:db8:ffff::1", "172.31.255.255"] {
            assert!(p.trusts(inside.parse().unwrap()), "{inside}");
        }
        for outside in ["11.0.0.1", "192.0.2.8", "2001:db9::1", "172.32.0.0", "::1"] {
            assert!(!p.trusts(outside.parse().unwrap()), "{outside}");
        }
        assert!(proxies(&["0.0.0.0/0"]).trusts("203.0.113.1".parse().unwrap()));
        assert!(!proxies(&["0.0.0.0/0"]).trusts("2001:db8::1".parse().unwrap()));
        assert!(proxies(&["::/0"]).trusts("2001:db8::1".parse().unwrap()));
        let written = serde_json::to_string(&proxies(&["10.1.2.3/8", "192.0.2.7", "2001:db8::1/32"])).unwrap();
        assert_eq!(written, r#"["10.0.0.0/8","192.0.2.7/32","2001:db8::/32"]"#);
        for bad in ["10.0.0/8", "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/+8", "example.org", "", "10.0.0.0/8/8"]
        {
            let e = TrustedProxies::parse(&[bad]).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let p = proxies(&["127.0.0.0/8", "10.0.0.0/8"]);
        let xff = |v: &str| client(&p, "127.0.0.1", &[("x-forwarded-for", v)]);
        assert_eq!(xff("203.0.113.9"), "203.0.113.9");
        assert_eq!(xff("198.51.100.1, 203.0.113.9, 10.0.0.2"), "203.0.113.9", "a forged left part is ignored");
        assert_eq!(xff("10.0.0.5, 10.0.0.2"), "10.0.0.5", "all trusted: the leftmost");
        assert_eq!(xff("junk, 203.0.113.9"), "203.0.113.9", "junk left of the client does not matter");
        assert_eq!(xff("203.0.113.9:5555"), "203.0.113.9");
        assert_eq!(xff("[2001:db8::7]:80, 10.0.0.1"), "2001:db8::7");
        assert_eq!(xff("2001:db8::7"), "2001:db8::7");
        assert_eq!(xff("::ffff:203.0.113.9"), "203.0.113.9");
        // Header lines are one list, in order.
        let two = client(&p, "127.0.0.1", &[("x-forwarded-for", "203.0.113.1"), ("x-forwarded-for", "198.51.100.2")]);
        assert_eq!(two, "198.51.100.2");
        // X-Forwarded-For wins over Forwarded when both are there.
        let both = client(&p, "127.0.0.1", &[("forwarded", "for=198.51.100.3"), ("x-forwarded-for", "203.0.113.4")]);
        assert_eq!(both, "203.0.113.4");
    }

    #[test]
    fn forwarded_for_is_read() {
        let p = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        let fwd = |v: &str| client(&p, "127.0.0.1", &[("forwarded", v)]);
        assert_eq!(fwd("for=192.0.2.60;proto=http;by=203.0.113.43"), "192.0.2.60");
        assert_eq!(fwd("For=\"[2001:db8:cafe::17]:4711\""), "2001:db8:cafe::17");
        assert_eq!(fwd("for=198.51.100.1, for=192.0.2.43;by=\"a,b\", for=10.0.0.1"), "192.0.2.43");
        assert_eq!(fwd("proto=https; for=192.0.2.61:_port"), "192.0.2.61");
        assert_eq!(fwd("for=unknown, for=192.0.2.62"), "192.0.2.62");
    }

    #[test]
    fn anything_unreadable_or_untrusted_falls_back_to_the_peer() {
        let p = proxies(&["127.0.0.0/8"]);
        let with = |peer: &str, name: &str, v: &str| client(&p, peer, &[(name, v)]);
        // A peer not in the list: its headers are not believed.
        assert_eq!(with("192.0.2.1", "x-forwarded-for", "203.0.113.9"), "192.0.2.1");
        assert_eq!(with("192.0.2.1", "forwarded", "for=203.0.113.9"), "192.0.2.1");
        // No list: today's behaviour.
        assert_eq!(client(&TrustedProxies::default(), "127.0.0.1", &[("x-forwarded-for", "1.2.3.4")]), "127.0.0.1");
        assert_eq!(client(&p, "127.0.0.1", &[]), "127.0.0.1");
        assert_eq!(client(&p, "::ffff:127.0.0.1", &[]), "127.0.0.1");
        for junk in
            ["", "not-an-address", "203.0.113.9, junk", "203.0.113.9,", "1.2.3.4:", "[::1", "[::1]x", "300.1.1.1"]
        {
            assert_eq!(with("127.0.0.1", "x-forwarded-for", junk), "127.0.0.1", "{junk:?}");
        }
        for junk in
            ["for=unknown", "for=_hidden", "proto=http", "for=\"192.0.2.1", "for=\"192.0.\\2.1\"", "for=1.2.3.4, by=x"]
        {
            assert_eq!(with("127.0.0.1", "forwarded", junk), "127.0.0.1", "{junk:?}");
        }
        let mut map = HeaderMap::new();
        map.insert("x-forwarded-for", axum::http::HeaderValue::from_bytes(b"203.0.113.9\xff").unwrap());
        assert_eq!(p.client("127.0.0.1".parse().unwrap(), &map).to_string(), "127.0.0.1", "not text");
    }
}
