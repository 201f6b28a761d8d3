//! `[server] trusted_proxies`: behind a proxy each client has its own
//! per-address budget, and nobody else can claim an address by writing a
//! forwarding header.

mod common;

use common::{test_chain, Server, KEY};

/// A server limiting each address to 2 requests per second (burst 1 s),
/// with `trusted` as `[server] trusted_proxies`.
fn start(trusted: &str) -> Server {
    Server::start_with(
        &format!(
            "[server]\nrate_limit_per_address = 2\nrate_limit_burst_s = 1\n{trusted}\n[auth]\napi_keys = [\"{KEY}\"]\n{}",
            test_chain()
        ),
        &[],
    )
}

/// The status of `GET /v1/enrichers` with the key and `headers`.
fn status(s: &Server, headers: &[(&str, &str)]) -> u16 {
    let mut req = common::agent().get(&s.url("/v1/enrichers")).header("Authorization", format!("Bearer {KEY}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    common::read(req.call()).status
}

/// Sends until the first 429 (the budget is 2); how many passed.
fn exhaust(s: &Server, headers: &[(&str, &str)]) -> usize {
    for passed in 0..10 {
        match status(s, headers) {
            429 => return passed,
            200 => {}
            other => panic!("status {other}"),
        }
    }
    panic!("no 429 after 10 requests with {headers:?}");
}

#[test]
fn clients_behind_a_trusted_proxy_each_have_their_own_budget() {
    let s = start("trusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]");
    let a = [("X-Forwarded-For", "203.0.113.1")];
    let passed = exhaust(&s, &a);
    assert!((2..=4).contains(&passed), "{passed} requests passed a budget of 2");
    assert_eq!(status(&s, &[("X-Forwarded-For", "203.0.113.2")]), 200, "another client has its own budget");
    assert_eq!(status(&s, &[("Forwarded", "for=\"[2001:db8::2]:4711\"")]), 200, "RFC 7239 Forwarded");
    // The client cannot escape by putting another address in front: the
    // proxy appends the address it saw, the rightmost untrusted one.
    assert_eq!(status(&s, &[("X-Forwarded-For", "198.51.100.9, 203.0.113.1")]), 429);
    // Hops that are trusted proxies are skipped.
    assert_eq!(status(&s, &[("X-Forwarded-For", "203.0.113.1, 10.0.0.7")]), 429);
    // A header that does not parse counts against the proxy's own address,
    // which still has its budget.
    assert_eq!(status(&s, &[("X-Forwarded-For", "not-an-address")]), 200);
}

#[test]
fn forwarding_headers_are_ignored_unless_the_peer_is_trusted() {
    // No trusted proxies (the default), and a list without the peer: the
    // header is anyone's to write, so every request is the peer's.
    for trusted in ["", "trusted_proxies = [\"10.0.0.0/8\"]"] {
        let s = start(trusted);
        exhaust(&s, &[("X-Forwarded-For", "203.0.113.1")]);
        for forged in [("X-Forwarded-For", "203.0.113.2"), ("Forwarded", "for=203.0.113.3")] {
            assert_eq!(status(&s, &[forged]), 429, "{trusted:?}: a forged {forged:?} escaped the limit");
        }
        assert_eq!(status(&s, &[]), 429, "{trusted:?}");
    }
}
