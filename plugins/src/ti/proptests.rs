//! The TI index against a brute-force covering-set scan (proptest): for
//! random IPv4 and IPv6 prefixes, nested and overlapping (few distinct high
//! bits), every address must get exactly the networks that cover it, most
//! specific first, in listing order among equals. The probes include each
//! network's first and last address and their neighbours, where interval
//! bugs live. Shrinking reduces a failure to the fewest networks.

use std::net::IpAddr;

use proptest::prelude::*;

use super::index::{IndexBuilder, Net};
use super::Kind;

/// A prefix as `(start, len, v6)`, its host bits cleared.
fn prefix() -> impl Strategy<Value = (u128, u8, bool)> {
    prop_oneof![
        // IPv4 under 4 /8s so they nest.
        (0u128..4, any::<u32>(), 0u8..=32).prop_map(|(top, low, len)| {
            let k = (top << 30) | u128::from(low >> 2);
            (mask(k, len, 32), len, false)
        }),
        (0u128..4, any::<u128>(), 0u8..=128).prop_map(|(top, low, len)| {
            let k = (top << 126) | (low >> 2);
            (mask(k, len, 128), len, true)
        }),
    ]
}

fn mask(k: u128, len: u8, bits: u32) -> u128 {
    if len == 0 {
        0
    } else {
        let host_bits = bits - u32::from(len);
        let host = if host_bits == 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
        k & (u128::MAX >> (128 - bits)) & !host
    }
}

fn to_ip(k: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(k.into())
    } else {
        IpAddr::V4((k as u32).into())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn index_equals_brute_force_covering_set(
        nets in prop::collection::vec(prefix(), 1..200),
        extra in prop::collection::vec((any::<u128>(), any::<bool>()), 0..50),
    ) {
        let mut b = IndexBuilder::default();
        for (i, &(start, len, v6)) in nets.iter().enumerate() {
            let (net, _) = Net::new(to_ip(start, v6), len).unwrap();
            let host = u32::from(len) == if v6 { 128 } else { 32 };
            let tail = b.tail(&i.to_string(), super::meta::Meta::default());
            b.add_net(net, if host { Kind::Addr } else { Kind::Subnet }, tail);
        }
        let index = b.finish();
        let mut probes: Vec<(u128, bool)> = extra.iter().map(|&(k, v6)| (if v6 { k } else { k & 0xffff_ffff }, v6)).collect();
        for &(start, len, v6) in &nets {
            let bits = if v6 { 128 } else { 32 };
            let width = u128::MAX >> (128 - bits);
            let end = if u32::from(len) == bits { start } else { start | (width >> len) };
            for p in [start.wrapping_sub(1), start, end, end.wrapping_add(1)] {
                probes.push((p & width, v6));
            }
        }
        for (k, v6) in probes {
            let mut got = Vec::new();
            index.for_each_ip_match(to_ip(k, v6), |h| got.push(h.tail.parse::<usize>().unwrap()));
            let bits = if v6 { 128 } else { 32 };
            let mut want: Vec<(u8, usize)> = nets
                .iter()
                .enumerate()
                .filter(|(_, &(s, l, f))| f == v6 && (l == 0 || (k ^ s) >> (bits - u32::from(l)) == 0))
                .map(|(i, &(_, l, _))| (l, i))
                .collect();
            want.sort_by_key(|&(l, i)| (std::cmp::Reverse(l), i));
            // The same network listed twice is one network with two listings.
            let want: Vec<usize> = want.into_iter().map(|(_, i)| i).collect();
            prop_assert_eq!(got, want, "{} ({} networks)", to_ip(k, v6), nets.len());
        }
    }
}
