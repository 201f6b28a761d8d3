//! Request rate limits per API key and per client address (`[server]
//! rate_limit_per_key`, `rate_limit_per_address`, requests per second; 0 is
//! off, the default), GCRA from `governor`: a burst of
//! `rate_limit_burst_s` seconds' worth, then the rate. Over it: 429 with
//! `Retry-After`, counted in the metrics.
//!
//! Keys are limited by their digest (one budget per key, whichever address
//! uses it); addresses by IP (the client's: behind a trusted proxy, the one
//! its forwarding header names, see `service::proxies`), with health checks
//! and metrics scrapes left out (a probe or a Prometheus must not be
//! throttled by a busy collector on the same host). State per key and address is dropped once it has
//! refilled ([`RateLimits::forget_idle`], every minute), so a spray of
//! addresses cannot grow it for long.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// What a request was limited by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LimitedBy {
    Key,
    Address,
}

impl LimitedBy {
    pub(crate) fn label(self) -> &'static str {
        match self {
            LimitedBy::Key => "key",
            LimitedBy::Address => "address",
        }
    }
}

#[derive(Default)]
pub(crate) struct RateLimits {
    per_key: Option<DefaultKeyedRateLimiter<[u8; 32]>>,
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    limited_by_key: AtomicU64,
    limited_by_address: AtomicU64,
}

fn quota(per_second: u32, burst_s: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(per_second.saturating_mul(burst_s.max(1))).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl RateLimits {
    pub(crate) fn new(per_key: u32, per_address: u32, burst_s: u32) -> Self {
        RateLimits {
            per_key: quota(per_key, burst_s).map(DefaultKeyedRateLimiter::keyed),
            per_address: quota(per_address, burst_s).map(DefaultKeyedRateLimiter::keyed),
            ..RateLimits::default()
        }
    }

    /// `Err((by, wait))` when the request is over a limit. `address` is
    /// `None` for requests exempt from the address limit.
    pub(crate) fn check(&self, key: Option<&[u8; 32]>, address: Option<IpAddr>) -> Result<(), (LimitedBy, Duration)> {
        let clock = DefaultClock::default();
        if let (Some(limiter), Some(address)) = (&self.per_address, address) {
            // A valid key's requests are held to their own address; only
            // requests without one share their IPv6 /64's budget (a
            // subnet in a data centre holds many hosts, collectors among
            // them, while a client rotating addresses to guess keys or
            // flood has no key).
            let budget = if key.is_some() { address.to_canonical() } else { budget_of(address) };
            if let Err(not_until) = limiter.check_key(&budget) {
                self.limited_by_address.fetch_add(1, Relaxed);
                return Err((LimitedBy::Address, not_until.wait_time_from(clock.now())));
            }
        }
        if let (Some(limiter), Some(key)) = (&self.per_key, key) {
            if let Err(not_until) = limiter.check_key(key) {
                self.limited_by_key.fetch_add(1, Relaxed);
                return Err((LimitedBy::Key, not_until.wait_time_from(clock.now())));
            }
        }
        Ok(())
    }

    /// Requests refused so far, by what limited them.
    pub(crate) fn refused(&self) -> [(LimitedBy, u64); 2] {
        [
            (LimitedBy::Key, self.limited_by_key.load(Relaxed)),
            (LimitedBy::Address, self.limited_by_address.load(Relaxed)),
        ]
    }

    /// Drops the state of keys and addresses whose budget is full again.
    pub(crate) fn forget_idle(&self) {
        if let Some(l) = &self.per_key {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_address {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.per_key.is_some() || self.per_address.is_some()
    }
}

/// The address a keyless request's budget is kept under: an IPv4
/// address, or the /64 of an IPv6 one. A host on a home or office network
/// is given a whole /64 (SLAAC, privacy addresses): per /128, one client
/// could rotate through 2^64 addresses and never meet the limit.
/// IPv4-mapped addresses count as IPv4.
fn budget_of(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_per_key_and_address() {
        let limits = RateLimits::new(5, 100, 2);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..20).filter(|_| limits.check(Some(&a), Some(addr)).is_ok()).count();
        assert_eq!(allowed, 10, "a burst of 2 s at 5/s");
        let Err((by, wait)) = limits.check(Some(&a), Some(addr)) else { panic!("over the limit") };
        assert_eq!(by, LimitedBy::Key);
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200), "{wait:?}");
        assert!(limits.check(Some(&b), Some(addr)).is_ok(), "another key has its own budget");
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let by_address = RateLimits::new(0, 1, 1);
        assert!(by_address.check(None, Some(other)).is_ok());
        assert_eq!(by_address.check(None, Some(other)).unwrap_err().0, LimitedBy::Address);
        assert!(by_address.check(None, None).is_ok(), "exempt requests pass");
        assert_eq!(limits.refused()[0].1, 11);
        assert!(!RateLimits::new(0, 0, 2).enabled());
    }

    /// Keyless IPv6 clients share their /64's budget: rotating addresses
    /// inside a subnet does not escape it; another /64 has its own, and
    /// so does each address of a client with a valid key.
    #[test]
    fn an_ipv6_subnet_shares_one_budget() {
        let limits = RateLimits::new(0, 1, 1);
        let keyed = |s: &str| limits.check(Some(&[7; 32]), Some(s.parse().unwrap()));
        assert!(keyed("2001:db8:9::1").is_ok());
        assert!(keyed("2001:db8:9::2").is_ok(), "another collector in the same subnet");
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(limits.check(None, ip("2001:db8:1:2::1")).is_ok());
        assert_eq!(limits.check(None, ip("2001:db8:1:2:ffff::7")).unwrap_err().0, LimitedBy::Address);
        assert!(limits.check(None, ip("2001:db8:1:3::1")).is_ok());
        assert!(limits.check(None, ip("::ffff:192.0.2.9")).is_ok());
        assert_eq!(limits.check(None, ip("192.0.2.9")).unwrap_err().0, LimitedBy::Address, "mapped is IPv4");
    }
}
