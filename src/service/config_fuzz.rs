//! Property-based fuzzing of the whole `config.toml` as the service reads
//! it (`ServiceConfig::parse` + `apply_env`): the engine's `[[chain]]`
//! layer has a cargo-fuzz target (`fuzz/fuzz_targets/config.rs`), but the
//! service's sections live in the binary crate, which the fuzz harness
//! cannot link, so they are fuzzed here, on stable, by mutating the real
//! configurations the project ships. Whatever the text, the answer is a
//! configuration or a `ConfigError` naming the file, never a panic.

use std::path::Path;

use proptest::prelude::*;

use super::config::ServiceConfig;

/// The configurations shipped with the project: the seeds.
fn seeds() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut texts = vec![std::fs::read_to_string(root.join("config.toml")).expect("config.toml")];
    let mut examples: Vec<_> = std::fs::read_dir(root.join("examples"))
        .expect("examples/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    texts.extend(examples.iter().map(|p| std::fs::read_to_string(p).expect("example config")));
    texts
}

/// Fragments a mutation inserts: TOML syntax, keys and values the service
/// sections know, multi-byte text (line numbers are counted in bytes).
const TOKENS: &[&str] = &[
    "\n[server]\n",
    "\n[[output]]\n",
    "\n[[source]]\n",
    "\n[[update]]\n",
    "\n[[auth.keys]]\n",
    "\n[auth]\n",
    "\n[profiles]\n",
    "\n[reload]\n",
    "\n[output]\n",
    "\n[[chain]]\n",
    "type = \"elastic\"\n",
    "type = \"nats\"\n",
    "type = \"maxmind\"\n",
    "listen = \"[::1]:99999\"\n",
    "tls_cert = \"c.pem\"\n",
    "scopes = [\"admin\"]\n",
    "sha256 = \"zz\"\n",
    "key_env = \"\"\n",
    "name = \"é\u{0}\"\n",
    "= ",
    "\"",
    "'''",
    "[",
    "]",
    "{",
    "}",
    ",",
    "#",
    "é",
    "\u{feff}",
    "\r\n",
    "1e999",
    "-1",
    "18446744073709551616",
    "true",
    "inf",
    "nan",
];

#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, usize),
    Delete(usize, usize),
    DuplicateLine(usize),
    Flip(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, t)| Mutation::Insert(at, t)),
        (any::<usize>(), 1usize..64).prop_map(|(at, n)| Mutation::Delete(at, n)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), 0x20u8..0x7f).prop_map(|(at, b)| Mutation::Flip(at, b)),
    ]
}

/// Applies `m` at a char boundary (the parser takes `&str`).
fn apply(text: &mut String, m: &Mutation) {
    let boundary = |text: &str, at: usize| {
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    match *m {
        Mutation::Insert(at, t) => {
            let at = boundary(text, at);
            text.insert_str(at, TOKENS[t]);
        }
        Mutation::Delete(at, n) => {
            let start = boundary(text, at);
            let end = boundary(text, start.saturating_add(n).min(text.len()));
            text.replace_range(start..end, "");
        }
        Mutation::DuplicateLine(at) => {
            let lines: Vec<&str> = text.split_inclusive('\n').collect();
            if !lines.is_empty() {
                let line = lines[at % lines.len()].to_string();
                let at = boundary(text, at);
                text.insert_str(at, &line);
            }
        }
        Mutation::Flip(at, b) => {
            let at = boundary(text, at);
            if at < text.len() {
                let end = boundary(text, at + 1);
                let end = if end <= at { text[at..].chars().next().map_or(at, |c| at + c.len_utf8()) } else { end };
                text.replace_range(at..end, &char::from(b).to_string());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_mutated_configuration_parses_or_names_the_file(
        seed in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let seeds = seeds();
        let mut text = seed.get(&seeds).clone();
        for m in &mutations {
            apply(&mut text, m);
        }
        let path = Path::new("/etc/enrichd/fuzzed.toml");
        match ServiceConfig::parse(&text, path) {
            Ok(mut config) => {
                let mut registry = enrichd_engine::Registry::default();
                enrichd_plugins::register_all(&mut registry);
                let env = |var: &str| (var == "API_KEY").then(|| "k".to_string());
                if let Err(e) = config.apply_env(&registry, env) {
                    prop_assert!(e.to_string().contains("fuzzed.toml"), "{e}");
                }
                let _ = config.tls_files();
                let _ = config.state_dir();
            }
            Err(e) => prop_assert!(e.to_string().contains("fuzzed.toml"), "{e}"),
        }
    }
}
