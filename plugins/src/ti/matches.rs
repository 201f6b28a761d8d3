//! One event's threat-intel matches, written as JSON as they are found
//! (no allocation until the first), with what the rule reads of them:
//! the count, the highest confidence and severity, the feeds matched.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::meta::push_json_str;
use super::Hit;

/// The value of a field that matched.
pub(super) enum Value<'a> {
    Ip(IpAddr),
    Text(&'a str),
}

/// Most matches written into one event; past it `more_matches` says how
/// many more there were (an event's size stays bounded whatever the feeds
/// list: the same network listed with a thousand descriptions, nested
/// networks by the dozen).
pub(super) const MAX_WRITTEN: usize = 32;

/// Accumulates one event's matches as JSON; allocates on the first match.
#[derive(Default)]
pub(super) struct Matches {
    text: Option<String>,
    /// Matches found (all of them, written or not).
    pub(super) count: u32,
    /// Highest (effective) confidence among the matches that have one.
    pub(super) confidence: Option<u8>,
    /// Highest severity (0: none).
    pub(super) severity: u8,
    /// Distinct feeds matched.
    pub(super) feeds: Feeds,
}

/// A small set of feed ids (an event matching more than 8 feeds counts 8).
#[derive(Default)]
pub(super) struct Feeds {
    ids: [u16; 8],
    len: u8,
}

impl Feeds {
    fn insert(&mut self, id: u16) {
        let len = self.len as usize;
        if len < self.ids.len() && !self.ids[..len].contains(&id) {
            self.ids[len] = id;
            self.len += 1;
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len as usize
    }
}

impl Matches {
    /// `confidence`: the effective one (written as `effective_confidence`
    /// when the feed decays, where it differs from the listed one).
    pub(super) fn push(&mut self, hit: &Hit<'_>, field: &str, value: Value<'_>, confidence: Option<u8>, decays: bool) {
        self.confidence = self.confidence.max(confidence);
        self.severity = self.severity.max(hit.meta.severity);
        self.feeds.insert(hit.meta.feed);
        if self.count as usize >= MAX_WRITTEN {
            // Counted (and in the confidence, severity and feeds above),
            // not written: see `finish`.
            self.count += 1;
            return;
        }
        let s = self.text.get_or_insert_with(|| {
            let mut s = String::with_capacity(256);
            s.push_str("{\"matches\":[");
            s
        });
        if self.count > 0 {
            s.push(',');
        }
        self.count += 1;
        // Indicator texts are IPs, networks or validated domain names: no
        // character needs escaping.
        let _ = write!(
            s,
            "{{\"indicator\":\"{}\",\"type\":\"{}\",\"field\":{field},\"value\":",
            hit.indicator,
            hit.kind.name()
        );
        match value {
            Value::Ip(ip) => {
                let _ = write!(s, "\"{ip}\"");
            }
            Value::Text(t) => push_json_str(s, t),
        }
        if let (true, Some(c)) = (decays, confidence) {
            let _ = write!(s, ",\"effective_confidence\":{c}");
        }
        s.push_str(hit.tail);
    }

    pub(super) fn finish(self, matched_flag: bool) -> Option<String> {
        let mut s = self.text?;
        s.push(']');
        if self.count as usize > MAX_WRITTEN {
            let _ = write!(s, ",\"more_matches\":{}", self.count as usize - MAX_WRITTEN);
        }
        if matched_flag {
            s.push_str(",\"matched\":true");
        }
        s.push('}');
        Some(s)
    }
}
