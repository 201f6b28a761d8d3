//! Synthetic `flows.v1` traffic for the dashboard and acceptance tests.
//!
//! Deterministic (a seeded xorshift), so a failing run can be replayed.
//! A chosen share of sources comes from 45.149.3.0/24, which the sample
//! indicators (`ti/indicators.txt`) list: those events match threat intel
//! and score high in the default risk rule.

use serde_json::{json, Value};

/// The destination ports the reference run draws from.
pub(crate) const PORTS: [u16; 8] = [53, 80, 443, 445, 3389, 1433, 22, 23];

pub(crate) struct Flows {
    state: u64,
    seq: u64,
}

impl Flows {
    pub(crate) fn new(seed: u64) -> Flows {
        Flows { state: seed | 1, seq: 0 }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// One flow record. Every `1 / malicious_one_in`-th record (exactly, by
    /// sequence number; 0 = none) has its source in 45.149.3.0/24; the
    /// others come from 203.0.113.0/24 and 198.18.0.0/15 (documentation and
    /// benchmarking ranges, in no indicator list).
    pub(crate) fn record(&mut self, dst_ip: &str, malicious_one_in: u64) -> Value {
        self.seq += 1;
        let malicious = malicious_one_in > 0 && self.seq.is_multiple_of(malicious_one_in);
        let src_ip = if malicious {
            format!("45.149.3.{}", 1 + self.below(254))
        } else if self.below(2) == 0 {
            format!("203.0.113.{}", 1 + self.below(254))
        } else {
            let n = self.below(2 * 256 * 256);
            format!("198.{}.{}.{}", 18 + n / 65536, (n / 256) % 256, n % 256)
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        json!({
            "ts": now,
            "src_ip": src_ip,
            "dst_ip": dst_ip,
            "src_port": 1024 + self.below(64511),
            "dst_port": PORTS[self.below(PORTS.len() as u64) as usize],
            "protocol": if self.below(4) == 0 { "udp" } else { "tcp" },
            "bytes": 200 + self.below(5_000_000 - 200 + 1),
            "packets": 1 + self.below(5000),
        })
    }

    /// A `POST /v1/ingest` body of `n` records.
    pub(crate) fn batch(&mut self, n: usize, dst_ip: &str, malicious_one_in: u64) -> Value {
        let records: Vec<Value> = (0..n).map(|_| self.record(dst_ip, malicious_one_in)).collect();
        json!({ "collector_id": "e2e-load", "format": "flows.v1", "records": records })
    }
}
