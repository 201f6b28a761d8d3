//! The prefix index against outside truth: a brute-force oracle on random
//! nested prefixes, the full public lists in `../shared`, and a timing
//! harness against `prefix_trie`.

use super::*;

/// A small deterministic random number generator (xorshift64).
fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

fn to_ip(k: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(k.into())
    } else {
        IpAddr::V4((k as u32).into())
    }
}

/// The interval index against a brute-force scan over random nested and
/// overlapping prefixes, probing around every network boundary.
#[test]
fn prefix_index_matches_brute_force() {
    let mut rng = xorshift(0x9e37_79b9_7f4a_7c15);
    for round in 0..20 {
        let mut b = IndexBuilder::default();
        let mut nets: Vec<(u128, u8, bool, u32)> = Vec::new();
        let n = [3, 400, 1500][round % 3];
        for i in 0..n {
            let v6 = rng().is_multiple_of(4);
            // Few distinct high bits, so networks nest and collide.
            let (bits, len) = if v6 { (128, (rng() % 129) as u8) } else { (32, (rng() % 33) as u8) };
            let raw = if v6 {
                (((rng() as u128) << 64) | rng() as u128) & !(0xffffu128 << 100)
            } else {
                (((rng() % 4096) << 20) | (rng() % (1 << 20))) as u128
            };
            let ip = to_ip(raw, v6);
            let (net, _) = Net::new(ip, len).unwrap();
            let start = match net {
                Net::V4(k, _) => k as u128,
                Net::V6(k, _) => k,
            };
            let tail = b.tail(&format!("{i}"), crate::ti::meta::Meta::default());
            b.add_net(net, if len as u32 == bits { Kind::Addr } else { Kind::Subnet }, tail);
            nets.push((start, len, v6, i));
        }
        let index = b.finish();
        // A network keeps its first MAX_LISTINGS_PER_INDICATOR listings.
        let mut seen = std::collections::HashMap::new();
        nets.retain(|&(s, l, f, _)| {
            let n = seen.entry((s, l, f)).or_insert(0usize);
            *n += 1;
            *n <= crate::ti::index::MAX_LISTINGS_PER_INDICATOR
        });
        let mut probes: Vec<(u128, bool)> = Vec::new();
        for &(start, len, v6, _) in &nets {
            let bits = if v6 { 128 } else { 32 };
            let end = if len == bits { start } else { start | (u128::MAX >> (128 - bits) >> len) };
            for p in [start.wrapping_sub(1), start, end, end.wrapping_add(1), start + (end - start) / 2] {
                probes.push((if v6 { p } else { p & 0xffff_ffff }, v6));
            }
        }
        probes.extend((0..500).map(|_| (rng() as u128 & 0xffff_ffff, false)));
        probes.extend([(0, false), (u32::MAX as u128, false), (0, true), (u128::MAX, true)]);
        for (k, v6) in probes {
            let ip = to_ip(k, v6);
            let mut got = Vec::new();
            index.for_each_ip_match(ip, |h| got.push(h.tail.parse::<u32>().unwrap()));
            let bits = if v6 { 128 } else { 32 };
            let mut want: Vec<&(u128, u8, bool, u32)> =
                nets.iter().filter(|&&(s, l, f, _)| f == v6 && (l == 0 || (k ^ s) >> (bits - l as u32) == 0)).collect();
            want.sort_by_key(|&&(_, l, _, i)| (std::cmp::Reverse(l), i));
            let want: Vec<u32> = want.iter().map(|n| n.3).collect();
            assert_eq!(got, want, "round {round}, {ip}");
        }
    }
}

/// The full public lists, when `../shared` has them: counts must equal the
/// files' data lines, and known entries must match.
#[test]
fn real_lists_from_shared() {
    let (Some(ipsum), Some(phish)) = (shared("ipsum/ipsum.txt"), shared("blocklistproject/phishing-nl.txt")) else {
        eprintln!("skipped: ../shared/testdata/ti lists not present");
        return;
    };
    let mut paths = vec![ipsum.display().to_string(), phish.display().to_string()];
    let firehol = shared("firehol-2021-04-14/firehol_level3.netset");
    paths.extend(firehol.iter().map(|p| p.display().to_string()));
    let started = std::time::Instant::now();
    let (index, reports) = crate::ti::load(&paths, None, |p| PathBuf::from(p), &Default::default(), &[]);
    let elapsed = started.elapsed();
    let index = index.expect("lists load");
    eprintln!(
        "loaded [addr, subnet, domain] = {:?} in {elapsed:?}, index {} MiB",
        index.counts(),
        index.heap_bytes() >> 20
    );

    let ips = data_lines(&ipsum);
    assert_eq!(ips.len(), 120_430, "README: 120,430 IPs");
    assert_eq!((reports[0].addr, reports[0].indicators, reports[0].skipped_lines), (ips.len(), ips.len(), 0));
    let domains = data_lines(&phish);
    assert_eq!(domains.len(), 190_215, "README: 190,215 domains");
    assert_eq!((reports[1].domain, reports[1].indicators, reports[1].skipped_lines), (domains.len(), domains.len(), 0));
    let hits = |ip: &str| {
        let mut got = Vec::new();
        index.for_each_ip_match(ip.parse().unwrap(), |h| got.push((h.indicator.to_string(), h.kind)));
        got
    };
    for line in [&ips[0], &ips[ips.len() / 2], ips.last().unwrap()] {
        let ip = line.split('\t').next().unwrap();
        assert!(hits(ip).contains(&(ip.to_string(), Kind::Addr)), "{ip}");
    }
    for name in [&domains[0], &domains[domains.len() / 2], domains.last().unwrap()] {
        for query in [name.clone(), format!("deep.sub.{}", name.to_ascii_uppercase())] {
            let mut got = Vec::new();
            index.for_each_domain_match(&query, |h| got.push(h.indicator.to_string()));
            assert_eq!(got.first(), Some(name), "{query}");
        }
    }
    let mut none = 0;
    index.for_each_domain_match("surely-not-listed.enrichd.invalid", |_| none += 1);
    assert_eq!(none, 0);

    if let Some(firehol) = firehol {
        let lines = data_lines(&firehol);
        let nets = lines.iter().filter(|l| l.contains('/')).count();
        assert_eq!((reports[2].subnet, reports[2].addr + reports[2].duplicates), (nets, lines.len() - nets));
        let net = lines.iter().find(|l| l.contains("/24")).unwrap();
        let inside = net.replace(".0/24", ".77");
        assert!(hits(&inside).iter().any(|(i, k)| i == net && *k == Kind::Subnet), "{inside} in {net}");
    }
}

/// Timing harness (release build recommended):
/// `cargo test --release -p enrichd-plugins ti::tests::index_checks::bench -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_ns_per_event() {
    use std::time::Instant;
    let mut rng = xorshift(0x2545_f491_4f6c_dd1d);
    // Replayed traffic: internal clients talking to a pool of public
    // addresses; about 1% of events hit an indicator.
    let mut listed: Vec<String> = vec!["45.149.3.9".into(), "94.26.7.7".into()];
    if let Some(p) = shared("ipsum/ipsum.txt") {
        listed = data_lines(&p).iter().take(1000).map(|l| l.split('\t').next().unwrap().to_string()).collect();
    }
    let public: Vec<String> = (0..20_000)
        .map(|_| {
            let x = rng();
            format!("{}.{}.{}.{}", 1 + x % 223, (x >> 8) % 256, (x >> 16) % 256, (x >> 24) % 254 + 1)
        })
        .collect();
    let mut text = String::new();
    for i in 0..10_000u64 {
        let x = rng();
        let dst = if x.is_multiple_of(100) {
            &listed[(x >> 8) as usize % listed.len()]
        } else {
            &public[(x >> 8) as usize % public.len()]
        };
        text += &format!(
            "{{\"src_ip\":\"10.{}.{}.{}\",\"dst_ip\":\"{dst}\",\"proto\":\"tcp\",\"bytes\":{i}}}\n",
            x % 4,
            (x >> 32) % 256,
            (x >> 40) % 254 + 1
        );
    }
    let sample = repo().join("ti/indicators.txt").display().to_string();
    let mut setups = vec![("ti, sample list", vec![sample.clone()])];
    let big: Vec<String> =
        ["firehol-2021-04-14/firehol_level3.netset", "ipsum/ipsum.txt", "blocklistproject/phishing-nl.txt"]
            .iter()
            .filter_map(|p| shared(p).map(|p| p.display().to_string()))
            .collect();
    if big.len() == 3 {
        setups.push(("ti, FireHOL level3 + IPsum + phishing", big.clone()));
    }
    let time = |name: &str, chain: &Chain, text: &str| {
        let mut batch = parse_ndjson(text.to_string(), Format::FlowsV1, chain.parse_spec(), 0).unwrap();
        chain.run(&mut batch);
        let rounds = 200;
        let started = Instant::now();
        for _ in 0..rounds {
            chain.run(&mut batch);
        }
        let ns = started.elapsed().as_nanos() as f64 / (rounds * batch.len()) as f64;
        let matched = batch.events().iter().filter(|e| matches(chain, e) > 0).count();
        eprintln!("{name}: {ns:.1} ns/event ({matched} of {} events matched)", batch.len());
    };
    for (name, paths) in &setups {
        let chain = ti_chain(&paths.iter().map(String::as_str).collect::<Vec<_>>(), "");
        time(name, &chain, &text);
        let dns: String = text
            .lines()
            .enumerate()
            .map(|(i, l)| format!("{},\"query\":\"host{}.cdn{}.example.com\"}}\n", &l[..l.len() - 1], i % 500, i % 37))
            .collect();
        time(&format!("{name}, with a query field"), &chain, &dns);
    }

    // The whole chain when the GeoIP/ASN plugins and databases are there.
    let mmdb = repo().join("../shared/testdata/mmdb/geolite2-2018-02");
    for (name, paths) in setups.iter().filter(|_| mmdb.join("GeoLite2-City.mmdb").exists()) {
        let mut registry = Registry::new();
        crate::register_all(&mut registry);
        let targets = |kind: &str| {
            format!("[{{ address = \"source\", output = \"src_{kind}\" }}, {{ address = \"destination\", output = \"dst_{kind}\" }}]")
        };
        let toml = format!(
            "[[chain]]\nplugin = \"geoip\"\ndatabase = {:?}\ntargets = {}\n\
             [[chain]]\nplugin = \"asn\"\ndatabase = {:?}\ntargets = {}\n\
             [[chain]]\nplugin = \"ti\"\npaths = {paths:?}\n",
            mmdb.join("GeoLite2-City.mmdb"),
            targets("geo"),
            mmdb.join("GeoLite2-ASN.mmdb"),
            targets("asn"),
        );
        let config = Config::parse(&toml, &repo().join("config.toml")).unwrap();
        match Chain::build(&config.chain, &registry, &config.base_dir) {
            Ok(chain) => {
                time(&format!("geoip + asn + {name} (both addresses)"), &chain, &text);
                let stages: Vec<String> =
                    chain.reports().iter().map(|r| format!("{} {:.1}", r.name, r.mean_ns_per_event)).collect();
                eprintln!("  ns/event by stage: {}", stages.join(", "));
            }
            Err(e) => eprintln!("full chain skipped: {e}"),
        }
    }

    // This index against prefix_trie's `cover` on the same networks.
    if big.len() == 3 {
        let (index, _) = crate::ti::load(&big[..2], None, |p| PathBuf::from(p), &Default::default(), &[]);
        let index = index.unwrap();
        let mut trie: prefix_trie::PrefixMap<ipnetwork::Ipv4Network, u32> = prefix_trie::PrefixMap::new();
        for path in &big[..2] {
            for line in data_lines(Path::new(path)) {
                let token = line.split_whitespace().next().unwrap();
                if let Some((Net::V4(k, len), _)) = crate::ti::loader::parse_net(token) {
                    trie.insert(ipnetwork::Ipv4Network::new(k.into(), len).unwrap(), 0);
                }
            }
        }
        let probes: Vec<IpAddr> = (0..1_000_000)
            .map(|i| {
                if i % 100 == 0 {
                    listed[i % listed.len()].parse().unwrap()
                } else {
                    public[i % public.len()].parse().unwrap()
                }
            })
            .collect();
        let started = Instant::now();
        let mut ours = 0usize;
        for ip in &probes {
            index.for_each_ip_match(*ip, |_| ours += 1);
        }
        let t_ours = started.elapsed();
        let started = Instant::now();
        let mut theirs = 0usize;
        for ip in &probes {
            let IpAddr::V4(a) = ip else { continue };
            theirs += trie.cover(&ipnetwork::Ipv4Network::new(*a, 32).unwrap()).count();
        }
        let t_trie = started.elapsed();
        assert_eq!(ours, theirs, "both structures find the same covering networks");
        eprintln!(
            "1M IPv4 lookups (FireHOL level3 + IPsum): interval index {:.1} ns, prefix_trie cover {:.1} ns ({ours} matches)",
            t_ours.as_nanos() as f64 / 1e6,
            t_trie.as_nanos() as f64 / 1e6
        );
    }
}
