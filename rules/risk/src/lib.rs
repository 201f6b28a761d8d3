//! The default risk rule: exactly the v1 rules of the reference design.
//!
//! - base 10;
//! - +60 if the event has any threat-intel match;
//! - +10 if the destination port is 23, 445, 1433 or 3389;
//! - +10 if bytes > 1,000,000 and the source port is >= 1024
//!   (independent of the port rule);
//! - clamped to 0..=100.
//!
//! Field fallbacks: the engine already reads `dst_port` / `id.resp_p` /
//! `id_resp_p` into the destination port (and likewise the source port);
//! bytes are `bytes`, else `orig_bytes`. Every increment adds a reason.

#![cfg_attr(target_arch = "wasm32", no_std)]

use enrichd_sdk::{Event, Output, Text};

pub const BASE: i32 = 10;
pub const THREAT_MATCH: i32 = 60;
pub const SENSITIVE_PORT: i32 = 10;
pub const LARGE_TRANSFER: i32 = 10;
pub const SENSITIVE_PORTS: [u16; 4] = [23, 445, 1433, 3389];
pub const LARGE_TRANSFER_BYTES: u64 = 1_000_000;

// The fixed reasons, declared once (ABI 1.1): each is one byte per event
// in the result buffer, and the host reuses the JSON of a repeated list.
enrichd_sdk::texts! {
    const ONE_MATCH = "threat intel match (1 indicator) +60";
    const PORT_23 = "sensitive destination port 23 +10";
    const PORT_445 = "sensitive destination port 445 +10";
    const PORT_1433 = "sensitive destination port 1433 +10";
    const PORT_3389 = "sensitive destination port 3389 +10";
    // No per-event numbers here (they are in the record).
    const LARGE_TRANSFER_REASON = "large transfer (> 1,000,000 bytes) from an ephemeral source port +10";
}

pub fn score(ev: &Event, out: &mut Output) {
    let mut score = BASE;
    let matches = ev.ti_matches();
    if matches > 0 {
        score += THREAT_MATCH;
        if matches == 1 {
            out.declared_reason(ONE_MATCH);
        } else {
            // Counts vary: a text of its own.
            let mut r = Text::<64>::new();
            r.push_str("threat intel match (").push_u64(matches as u64).push_str(" indicators) +60");
            out.reason(r.as_str());
        }
    }
    if let Some(port) = ev.dst_port() {
        let reason = match port {
            23 => Some(PORT_23),
            445 => Some(PORT_445),
            1433 => Some(PORT_1433),
            3389 => Some(PORT_3389),
            _ => None,
        };
        if let Some(reason) = reason {
            debug_assert!(SENSITIVE_PORTS.contains(&port));
            score += SENSITIVE_PORT;
            out.declared_reason(reason);
        }
    }
    let bytes = ev.bytes().or_else(|| ev.orig_bytes());
    if let (Some(bytes), Some(src_port)) = (bytes, ev.src_port()) {
        if bytes > LARGE_TRANSFER_BYTES && src_port >= 1024 {
            score += LARGE_TRANSFER;
            out.declared_reason(LARGE_TRANSFER_REASON);
        }
    }
    out.score(score.clamp(0, 100));
}

enrichd_sdk::export!(score);

#[cfg(test)]
mod tests {
    use super::*;
    use enrichd_sdk::testing::EventBuilder;

    #[test]
    fn base_score_only() {
        let r = EventBuilder::new().src_ip("10.0.0.1").dst_port(80).src_port(50000).bytes(100).run(score);
        assert_eq!(r.score, Some(10));
        assert!(r.reasons.is_empty());
    }

    #[test]
    fn every_increment_with_its_reason() {
        let r = EventBuilder::new().ti_matches(2).dst_port(3389).src_port(1024).bytes(1_000_001).run(score);
        assert_eq!(r.score, Some(90));
        assert_eq!(
            r.reasons,
            [
                "threat intel match (2 indicators) +60",
                "sensitive destination port 3389 +10",
                "large transfer (> 1,000,000 bytes) from an ephemeral source port +10"
            ]
        );
    }

    #[test]
    fn boundaries() {
        // Exactly 1,000,000 bytes is not "> 1,000,000"; port 1023 is not ephemeral.
        assert_eq!(EventBuilder::new().bytes(1_000_000).src_port(5000).run(score).score, Some(10));
        assert_eq!(EventBuilder::new().bytes(5_000_000).src_port(1023).run(score).score, Some(10));
        for p in [23, 445, 1433, 3389] {
            assert_eq!(EventBuilder::new().dst_port(p).run(score).score, Some(20), "port {p}");
        }
        assert_eq!(EventBuilder::new().dst_port(22).run(score).score, Some(10));
    }

    #[test]
    fn bytes_fall_back_to_orig_bytes() {
        let r = EventBuilder::new().orig_bytes(2_000_000).resp_bytes(1).src_port(40000).run(score);
        assert_eq!(r.score, Some(20));
        // `bytes` wins when both are present.
        let r = EventBuilder::new().bytes(10).orig_bytes(2_000_000).src_port(40000).run(score);
        assert_eq!(r.score, Some(10));
    }

    #[test]
    fn missing_fields_score_base() {
        assert_eq!(EventBuilder::new().run(score).score, Some(10));
    }
}
