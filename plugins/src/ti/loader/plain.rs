//! Plain lists: one indicator per line (IP, CIDR, `domain:NAME`, a bare
//! domain, or a hosts-file line), and the token parsing every format uses.

use std::net::IpAddr;

use enrichd_engine::limits::quote;

use super::super::index::{Net, MAX_NAME};
use super::super::meta::Attrs;
use super::super::Kind;
use super::parser::{Parsed, Parser};

impl Parser<'_> {
    /// One indicator per line: the first whitespace-separated token (IPsum's
    /// `ip<TAB>count` keeps the IP), `domain:NAME`, a bare domain, or a hosts
    /// line `0.0.0.0 name`; `#` starts a comment.
    pub(super) fn plain(&mut self, text: &str) {
        let tail = self.tail_of(Attrs::default());
        for (i, line) in text.lines().enumerate() {
            if self.too_long(i + 1, line) {
                continue;
            }
            let content = strip_comment(line);
            let mut tokens = content.split_whitespace();
            let Some(first) = tokens.next() else { continue };
            match parse_plain(first, tokens.next(), &mut self.name) {
                Ok(parsed) => self.add(parsed, tail),
                Err(message) => self.bad(i + 1, &message),
            }
        }
    }
}

/// The line without a `#` comment (whole-line, or after whitespace).
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

/// Addresses hosts-format block lists point names at.
fn is_sink(ip: IpAddr) -> bool {
    ip.is_unspecified() || ip.is_loopback()
}

/// Names hosts files map for the system itself, not indicators.
fn is_hosts_boilerplate(name: &str) -> bool {
    matches!(name, "localhost" | "localhost.localdomain" | "local" | "broadcasthost" | "0.0.0.0")
        || name.starts_with("ip6-")
}

/// Parses one indicator token (with the next token, for hosts lines).
pub(super) fn parse_plain(first: &str, second: Option<&str>, name: &mut String) -> Result<Parsed, String> {
    if let Some(domain) = first.strip_prefix("domain:") {
        return normalize_domain(domain, false, name)
            .map(|()| Parsed::Domain)
            .map_err(|e| format!("{}: {e}", quote(first)));
    }
    if let Some((net, normalized)) = parse_net(first) {
        if let (Net::V4(_, 32) | Net::V6(_, 128), Some(host)) = (net, second) {
            if !first.contains('/') && is_sink(first.parse().expect("parsed as a network")) {
                if is_hosts_boilerplate(host) {
                    return Ok(Parsed::Ignore);
                }
                return normalize_domain(host, false, name)
                    .map(|()| Parsed::Domain)
                    .map_err(|e| format!("hosts entry {}: {e}", quote(host)));
            }
        }
        let kind = if first.contains('/') { Kind::Subnet } else { Kind::Addr };
        return Ok(Parsed::Net(net, kind, normalized));
    }
    if first.contains(['/', ':']) || first.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{} is not a valid IP address or CIDR network", quote(first)));
    }
    normalize_domain(first, true, name)
        .map(|()| Parsed::Domain)
        .map_err(|e| format!("{} is not an IP address, CIDR network or domain ({e})", quote(first)))
}

/// `ip` or `ip/len`; host bits are cleared (the second value says whether
/// there were any).
pub fn parse_net(s: &str) -> Option<(Net, bool)> {
    match s.split_once('/') {
        None => s.parse::<IpAddr>().ok().map(|ip| (Net::host(ip), false)),
        Some((ip, len)) => {
            if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Net::new(ip.parse().ok()?, len.parse().ok()?)
        }
    }
}

/// Validates a domain name and writes it lowercased, without a trailing dot
/// or a leading `*.`, into `out`. `require_dot` refuses single labels (for
/// bare names, where `localhost` or a typo is likelier than a TLD).
pub fn normalize_domain(s: &str, require_dot: bool, out: &mut String) -> Result<(), &'static str> {
    let s = s.strip_prefix("*.").unwrap_or(s);
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return Err("empty domain name");
    }
    if s.len() > MAX_NAME {
        return Err("domain name longer than 253 bytes");
    }
    if require_dot && !s.contains('.') {
        return Err("a bare name needs at least one dot");
    }
    for label in s.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("empty label or label longer than 63 bytes");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err("invalid character in domain name");
        }
    }
    if s.rsplit('.').next().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit())) {
        return Err("all-numeric top-level label");
    }
    out.clear();
    out.extend(s.chars().map(|c| c.to_ascii_lowercase()));
    Ok(())
}
