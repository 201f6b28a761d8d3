//! Example custom enricher: classifies each event's direction relative to
//! the home networks given in the module's configuration.
//!
//! Chain entry:
//! ```toml
//! [[chain]]
//! plugin = "wasm"
//! name = "direction"
//! module = "rules/examples/direction.wasm"
//! role = "enricher"
//! fields = ["direction"]
//! config = { home_nets = "10.0.0.0/8,192.168.0.0/16" }
//! ```
//! Writes `direction`: `inbound` (outside -> home), `outbound` (home ->
//! outside), `internal` (home -> home) or `external`.

#![cfg_attr(target_arch = "wasm32", no_std)]

use enrichd_sdk::{host, Event, Ip, Output};

const MAX_NETS: usize = 32;

/// Parses `a.b.c.d/len,...` (IPv4) into a fixed table; bad entries are skipped.
fn home_nets(table: &mut [(Ip, u8); MAX_NETS]) -> usize {
    let mut buf = [0u8; 1024];
    let list = match host::config_value("home_nets", &mut buf) {
        Some(list) => list,
        None => return 0,
    };
    let mut n = 0;
    for item in list.split(',') {
        let item = item.trim();
        let (addr, len) = match item.find('/') {
            Some(i) => (&item[..i], item[i + 1..].parse::<u8>().ok()),
            None => (item, Some(32)),
        };
        if let (Some(ip), Some(len)) = (Ip::parse_v4(addr), len) {
            if n < MAX_NETS && len <= 32 {
                table[n] = (ip, len);
                n += 1;
            }
        }
    }
    n
}

// `Option::is_some_and` needs Rust 1.70; guests build with 1.63.
#[allow(clippy::unnecessary_map_or)]
pub fn enrich(ev: &Event, out: &mut Output) {
    let mut table = [(Ip::v4(0, 0, 0, 0), 0u8); MAX_NETS];
    let n = home_nets(&mut table);
    let is_home = |ip: Option<Ip>| ip.map_or(false, |ip| table[..n].iter().any(|(net, len)| ip.in_network(net, *len)));
    let direction = match (is_home(ev.src_ip()), is_home(ev.dst_ip())) {
        (false, true) => "inbound",
        (true, false) => "outbound",
        (true, true) => "internal",
        (false, false) => "external",
    };
    out.field_str("direction", direction);
}

enrichd_sdk::export!(enrich);

#[cfg(test)]
mod tests {
    use super::*;
    use enrichd_sdk::testing::{set_config, EventBuilder};

    fn direction(src: &str, dst: &str) -> String {
        let r = EventBuilder::new().src_ip(src).dst_ip(dst).run(enrich);
        assert_eq!(r.fields.len(), 1);
        r.fields[0].1.trim_matches('"').to_string()
    }

    #[test]
    fn classifies_by_home_networks() {
        set_config("home_nets", "10.0.0.0/8, 192.168.0.0/16,bogus");
        assert_eq!(direction("8.8.8.8", "10.1.2.3"), "inbound");
        assert_eq!(direction("192.168.1.1", "8.8.8.8"), "outbound");
        assert_eq!(direction("10.0.0.1", "192.168.0.1"), "internal");
        assert_eq!(direction("8.8.8.8", "1.1.1.1"), "external");
        assert_eq!(direction("2001:db8::1", "10.0.0.1"), "inbound");
    }
}
