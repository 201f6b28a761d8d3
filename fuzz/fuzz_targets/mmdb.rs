//! MaxMind DB files for the `geoip` and `asn` plugins, corrupted: our own
//! search-tree walker and record decoder (`plugins/src/mmdb/`) must refuse
//! a hostile file with an error, never panic, loop, read out of bounds or
//! allocate without bound. Seeds are the MaxMind test databases.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = enrichd_plugins::fuzzing::probe_mmdb(data);
});
