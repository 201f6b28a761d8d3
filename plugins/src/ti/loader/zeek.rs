//! Zeek intel framework files (`#fields indicator indicator_type ...`),
//! with the CIF extension's and teams' own `meta.*` columns.

use std::net::IpAddr;

use enrichd_engine::limits::quote;

use super::super::index::Net;
use super::super::meta::Attrs;
use super::super::Kind;
use super::parser::{lifecycle, LifecycleColumns, Parsed, Parser};
use super::plain::{normalize_domain, parse_net};

impl Parser<'_> {
    /// Zeek intel framework files: `#fields indicator indicator_type
    /// meta.source ...`, TAB-separated, `-` unset.
    pub(super) fn zeek(&mut self, text: &str) {
        let mut sep = "\t".to_string();
        let mut columns: Option<ZeekColumns> = None;
        for (i, line) in text.lines().enumerate() {
            if self.too_long(i + 1, line) || line.trim().is_empty() {
                continue;
            }
            if let Some(value) = line.strip_prefix("#separator") {
                sep = unescape_separator(value.trim_start_matches([' ', '\t']));
                continue;
            }
            if line.starts_with("#fields") {
                let names: Vec<&str> = line.split(sep.as_str()).skip(1).collect();
                columns = ZeekColumns::from_names(&names);
                if columns.is_none() {
                    self.report.error = Some(format!("line {}: `#fields` lacks indicator or indicator_type", i + 1));
                    return;
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let Some(cols) = &columns else { continue };
            let fields: Vec<&str> = line.split(sep.as_str()).collect();
            if fields.len() != cols.count {
                self.bad(i + 1, &format!("expected {} fields, found {}", cols.count, fields.len()));
                continue;
            }
            let get = |c: Option<usize>| c.map(|c| fields[c]).filter(|s| !matches!(*s, "-" | "(empty)" | ""));
            let Some(indicator) = get(Some(cols.indicator)) else {
                self.bad(i + 1, "indicator is unset");
                continue;
            };
            let Some(kind) = get(Some(cols.indicator_type)) else {
                self.bad(i + 1, "indicator_type is unset");
                continue;
            };
            let parsed = match kind.strip_prefix("Intel::").unwrap_or(kind) {
                "ADDR" => match indicator.parse::<IpAddr>() {
                    Ok(ip) => Ok(Parsed::Net(Net::host(ip), Kind::Addr, false)),
                    Err(_) => Err(format!("{} is not an IP address", quote(indicator))),
                },
                "SUBNET" => parse_net(indicator)
                    .map(|(net, normalized)| Parsed::Net(net, Kind::Subnet, normalized))
                    .ok_or_else(|| format!("{} is not a CIDR network", quote(indicator))),
                "DOMAIN" => normalize_domain(indicator, false, &mut self.name)
                    .map(|()| Parsed::Domain)
                    .map_err(|e| format!("{}: {e}", quote(indicator))),
                _ => {
                    self.report.unsupported += 1;
                    continue;
                }
            };
            let parsed = parsed.and_then(|parsed| {
                let mut attrs = Attrs {
                    feed: get(cols.source),
                    description: get(cols.desc),
                    url: get(cols.url),
                    ..Attrs::default()
                };
                lifecycle(&mut attrs, get, &cols.lifecycle)?;
                Ok((parsed, attrs))
            });
            match parsed {
                Ok((parsed, attrs)) => {
                    let tail = self.tail_of(attrs);
                    self.add(parsed, tail);
                }
                Err(message) => self.bad(i + 1, &message),
            }
        }
    }
}

/// Column positions of a Zeek intel file.
struct ZeekColumns {
    indicator: usize,
    indicator_type: usize,
    source: Option<usize>,
    desc: Option<usize>,
    url: Option<usize>,
    lifecycle: LifecycleColumns,
    count: usize,
}

impl ZeekColumns {
    fn from_names(names: &[&str]) -> Option<ZeekColumns> {
        let find = |wanted: &str| names.iter().position(|n| n.trim() == wanted);
        Some(ZeekColumns {
            indicator: find("indicator")?,
            indicator_type: find("indicator_type")?,
            source: find("meta.source"),
            desc: find("meta.desc"),
            url: find("meta.url"),
            // Zeek's intel framework defines source, desc, url; the CIF
            // extension adds cif_confidence / cif_severity / cif_tags /
            // cif_firstseen / cif_lastseen, and teams add their own
            // meta.* columns under the plain names.
            lifecycle: LifecycleColumns {
                confidence: find("meta.confidence").or_else(|| find("meta.cif_confidence")),
                severity: find("meta.severity").or_else(|| find("meta.cif_severity")),
                tags: find("meta.tags").or_else(|| find("meta.cif_tags")),
                first_seen: find("meta.first_seen").or_else(|| find("meta.cif_firstseen")),
                last_seen: find("meta.last_seen").or_else(|| find("meta.cif_lastseen")),
                valid_until: find("meta.valid_until").or_else(|| find("meta.expires")),
            },
            count: names.len(),
        })
    }
}

/// `\x09` -> TAB (Zeek writes the separator escaped).
fn unescape_separator(value: &str) -> String {
    match value.strip_prefix("\\x").and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
        Some(b) => char::from(b).to_string(),
        None if value.is_empty() => "\t".into(),
        None => value.to_string(),
    }
}
