//! Fails when modules of one crate import each other in a cycle.
//!
//! The layers are: engine (model, pipeline, plugin contract) <- plugins <-
//! service <- HTTP API, reload, watcher <- binary. Cargo already refuses
//! cycles between crates; this test does the same between the modules of
//! each crate, where nothing else would notice one creeping in.
//!
//! How it works: for each crate it reads `src/**/*.rs`, maps every file to
//! its module path (`a.rs` and `a/mod.rs` are `a`, `a/b.rs` is `a::b`,
//! `#[path = "..."] mod x;` is followed), strips comments and string and
//! char literals, and collects the references a file makes: `use` trees
//! (groups expanded) and `crate::…`, `super::…`, `self::…` paths anywhere in
//! the code, resolved against the module they appear in (inline `mod x { }`
//! blocks included, so `super::super::` in a test module resolves right).
//! A name re-exported with `pub use` is followed one step to the module it
//! comes from. A reference from module `p::a…` to `p::b…` is an edge `a -> b`
//! among the children of `p`: between top-level modules for `p` = the crate
//! root, between sibling submodules of one folder below. A parent and its
//! children may use each other freely (that is containment, not layering).
//! Each set of siblings must form an acyclic graph.
//!
//! Limits: it reads text, not a resolved syntax tree. Names brought into
//! scope by a glob (`use x::*`) are not followed; a reference through a
//! plain `use other::Name` alias of a module is seen where the `use` is, not
//! where it is used (the same edge); macros' generated paths are not seen.
//! Those limits can hide an edge, never invent one. `cargo-modules
//! dependencies --acyclic` does this on a real syntax tree, but it builds
//! rust-analyzer's crates (minutes on two cores, pinned to recent
//! toolchains), too much to `cargo install` on every CI run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates of the repository that are checked, by source directory.
///
/// Not yet `sdk/src`: its native test harness closes a cycle (`event ->
/// host -> testing -> event`: off wasm32 the host shims read what
/// `testing` set up). Untangling it moves SDK code, which changes the
/// committed `rules/*.wasm` and is left for a change that rebuilds them.
const CRATES: &[&str] = &["src", "engine/src", "engine/wasm/src", "plugins/src"];

#[test]
fn no_module_cycles_in_any_crate() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut problems = Vec::new();
    for dir in CRATES {
        let files = read_tree(&repo.join(dir));
        assert!(!files.is_empty(), "no sources under {dir}");
        for cycle in find_cycles(&files) {
            problems.push(format!("{dir}: {cycle}"));
        }
    }
    assert!(problems.is_empty(), "module import cycles:\n{}", problems.join("\n"));
}

/// Every `.rs` file under `root`, by path relative to it.
fn read_tree(root: &Path) -> Vec<(PathBuf, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path.strip_prefix(root).unwrap().to_path_buf(), text));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

type ModPath = Vec<String>;

/// One reference from code in `from` to the absolute path `to`.
struct Reference {
    from: ModPath,
    to: Vec<String>,
    line: usize,
}

/// The cycles among the modules of one crate, each as
/// `scope: a -> b -> a (a.rs:3 ...)`; empty when there is none.
fn find_cycles(files: &[(PathBuf, String)]) -> Vec<String> {
    // Files -> module paths, `#[path]` declarations first.
    let mut redirected: BTreeMap<PathBuf, ModPath> = BTreeMap::new();
    for (path, text) in files {
        let module = module_of(path);
        for (target, name) in path_attributes(text) {
            let mut m = module.clone();
            m.push(name);
            redirected.insert(path.parent().unwrap_or(Path::new("")).join(target), m);
        }
    }
    let mut modules: BTreeSet<ModPath> = BTreeSet::new();
    let mut parsed = Vec::new();
    for (path, text) in files {
        let module = redirected.get(path).cloned().unwrap_or_else(|| module_of(path));
        let scan = scan(text, &module);
        modules.insert(module.clone());
        modules.extend(scan.inline_modules.iter().cloned());
        parsed.push((path.clone(), scan));
    }
    // `pub use` re-exports: (module, name) -> absolute path.
    let mut reexports: BTreeMap<(ModPath, String), Vec<String>> = BTreeMap::new();
    for (_, scan) in &parsed {
        for (module, name, target) in &scan.reexports {
            if let Some(target) = resolve(target, module, &modules) {
                reexports.insert((module.clone(), name.clone()), target);
            }
        }
    }
    // Edges among siblings: scope -> (a, b) -> first place seen.
    let mut edges: BTreeMap<ModPath, BTreeMap<(String, String), String>> = BTreeMap::new();
    for (path, scan) in &parsed {
        for r in &scan.references {
            let Some(to) = resolve(&r.to, &r.from, &modules) else { continue };
            let to = module_prefix(&follow_reexports(to, &modules, &reexports), &modules);
            let common = r.from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == r.from.len() || common == to.len() {
                continue; // itself, an ancestor or a descendant
            }
            let scope = to[..common].to_vec();
            let edge = (r.from[common].clone(), to[common].clone());
            edges.entry(scope).or_default().entry(edge).or_insert_with(|| format!("{}:{}", path.display(), r.line));
        }
    }
    let mut cycles = Vec::new();
    for (scope, edges) in &edges {
        let scope_name = if scope.is_empty() { "crate".to_string() } else { scope.join("::") };
        for cycle in cycles_in(edges.keys().cloned()) {
            let evidence: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} -> {} at {}", w[0], w[1], edges[&(w[0].clone(), w[1].clone())]))
                .collect();
            cycles.push(format!("{scope_name}: {} ({})", cycle.join(" -> "), evidence.join("; ")));
        }
    }
    cycles
}

/// `a/b.rs` -> `[a, b]`; `a/mod.rs` -> `[a]`; `lib.rs`, `main.rs` -> `[]`.
fn module_of(path: &Path) -> ModPath {
    let mut parts: Vec<String> = path.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !(stem == "mod" || (parts.is_empty() && (stem == "lib" || stem == "main"))) {
        parts.push(stem.to_string());
    }
    parts
}

/// `#[path = "x.rs"] mod name;` declarations: (file, module name).
fn path_attributes(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[path = \"") {
        rest = &rest[at + 10..];
        let Some(end) = rest.find('"') else { break };
        let target = rest[..end].to_string();
        let after = &rest[end..];
        if let Some(m) = after.find("mod ") {
            let name: String = after[m + 4..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            out.push((target, name));
        }
    }
    out
}

/// The longest prefix of `path` that is a module of the crate.
fn module_prefix(path: &[String], modules: &BTreeSet<ModPath>) -> ModPath {
    (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p)).unwrap_or_default()
}

/// Follows `pub use` re-exports (a few steps) to where a name is defined.
fn follow_reexports(
    mut path: Vec<String>,
    modules: &BTreeSet<ModPath>,
    reexports: &BTreeMap<(ModPath, String), Vec<String>>,
) -> Vec<String> {
    for _ in 0..4 {
        let module = module_prefix(&path, modules);
        let Some(name) = path.get(module.len()) else { break };
        let Some(target) = reexports.get(&(module.clone(), name.clone())) else { break };
        let mut next = target.clone();
        next.extend(path[module.len() + 1..].iter().cloned());
        if next == path {
            break;
        }
        path = next;
    }
    path
}

/// A path as written in module `at` -> absolute segments, or `None` for
/// another crate's path.
fn resolve(path: &[String], at: &ModPath, modules: &BTreeSet<ModPath>) -> Option<Vec<String>> {
    let first = path.first()?;
    let mut out;
    let rest;
    if first == "crate" {
        out = Vec::new();
        rest = &path[1..];
    } else if first == "self" {
        out = at.clone();
        rest = &path[1..];
    } else if first == "super" {
        out = at.clone();
        let supers = path.iter().take_while(|s| *s == "super").count();
        for _ in 0..supers {
            out.pop()?;
        }
        rest = &path[supers..];
    } else {
        // 2018 paths: a child module of the current one, else another crate.
        let mut child = at.clone();
        child.push(first.clone());
        if !modules.contains(&child) {
            return None;
        }
        out = at.clone();
        rest = path;
    }
    out.extend(rest.iter().cloned());
    Some(out)
}

/// Every cycle of a directed graph, one per strongly connected component
/// (as `a -> b -> ... -> a`).
fn cycles_in(edges: impl Iterator<Item = (String, String)>) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in edges {
        graph.entry(a).or_default().insert(b.clone());
        graph.entry(b).or_default();
    }
    let reaches = |from: &String| -> BTreeMap<String, String> {
        // Breadth-first, remembering each node's predecessor.
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([from.clone()]);
        while let Some(n) = queue.pop_front() {
            for m in &graph[&n] {
                if !seen.contains_key(m) {
                    seen.insert(m.clone(), n.clone());
                    queue.push_back(m.clone());
                }
            }
        }
        seen
    };
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for node in graph.keys() {
        if reported.contains(node) {
            continue;
        }
        let back = reaches(node);
        if !back.contains_key(node) {
            continue;
        }
        // Shortest way round: walk predecessors from `node` back to itself.
        let mut cycle = vec![node.clone()];
        let mut at = back[node].clone();
        while &at != node {
            cycle.push(at.clone());
            at = back[&at].clone();
        }
        cycle.push(node.clone());
        cycle.reverse();
        reported.extend(cycle.iter().cloned());
        out.push(cycle);
    }
    out
}

/// What one file declares and references.
#[derive(Default)]
struct Scan {
    inline_modules: Vec<ModPath>,
    references: Vec<Reference>,
    /// (module, exported name, path as written).
    reexports: Vec<(ModPath, String, Vec<String>)>,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    Punct(&'static str),
}

/// Comments, string and char literals blanked out (newlines kept, so lines
/// still count), then cut into identifiers and the punctuation that matters.
fn tokens(text: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let skip_to = |i: &mut usize, line: &mut usize, end: usize| {
        *line += chars[*i..end.min(chars.len())].iter().filter(|&&c| c == '\n').count();
        *i = end;
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let (mut depth, mut j) = (1, i + 2);
            while j < chars.len() && depth > 0 {
                if chars[j] == '/' && chars.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 1;
                } else if chars[j] == '*' && chars.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 1;
                }
                j += 1;
            }
            skip_to(&mut i, &mut line, j);
        } else if c == '"' || ((c == 'r' || c == 'b') && raw_string_start(&chars, i).is_some()) {
            let end = string_end(&chars, i);
            skip_to(&mut i, &mut line, end);
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F600}'), else a lifetime.
            if next == Some('\\') {
                let mut j = i + 2;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((Token::Ident(chars[start..i].iter().collect()), line));
        } else if c == ':' && next == Some(':') {
            out.push((Token::Punct("::"), line));
            i += 2;
        } else {
            let punct = match c {
                '{' => Some("{"),
                '}' => Some("}"),
                ';' => Some(";"),
                ',' => Some(","),
                '*' => Some("*"),
                '#' => Some("#"),
                _ => None,
            };
            if let Some(p) = punct {
                out.push((Token::Punct(p), line));
            }
            i += 1;
        }
    }
    out
}

/// At `i`: `r"`, `r#"`, `b"`, `br"`, `br#"`... -> index of the first `"`.
fn raw_string_start(chars: &[char], i: usize) -> Option<usize> {
    if i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_') {
        return None; // inside an identifier
    }
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) == Some(&'r') {
        j += 1;
        while chars.get(j) == Some(&'#') {
            j += 1;
        }
    }
    (j > i && chars.get(j) == Some(&'"')).then_some(j)
}

/// Index just past the string literal starting at `i`.
fn string_end(chars: &[char], i: usize) -> usize {
    let quote = raw_string_start(chars, i).unwrap_or(i);
    let hashes = chars[i..quote].iter().filter(|&&c| c == '#').count();
    let raw = chars[i..quote].contains(&'r');
    let mut j = quote + 1;
    while j < chars.len() {
        if !raw && chars[j] == '\\' {
            j += 2;
            continue;
        }
        if chars[j] == '"' && chars[j + 1..].iter().take(hashes).filter(|&&c| c == '#').count() == hashes {
            return j + 1 + hashes;
        }
        j += 1;
    }
    j
}

/// Scans one file whose module is `module`.
fn scan(text: &str, module: &ModPath) -> Scan {
    let toks = tokens(text);
    let mut out = Scan::default();
    // Open braces, and the inline modules they opened: (depth, module).
    let mut depth = 0usize;
    let mut stack: Vec<(usize, ModPath)> = vec![(0, module.clone())];
    let ident = |i: usize| match toks.get(i) {
        Some((Token::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    let punct = |i: usize| match toks.get(i) {
        Some((Token::Punct(p), _)) => Some(*p),
        _ => None,
    };
    let mut i = 0;
    while i < toks.len() {
        let current = stack.last().expect("root stays").1.clone();
        match &toks[i].0 {
            Token::Punct("{") => depth += 1,
            Token::Punct("}") => {
                if stack.len() > 1 && stack.last().is_some_and(|(d, _)| *d == depth) {
                    stack.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Token::Ident(word) if word == "mod" => {
                if let (Some(name), Some("{")) = (ident(i + 1), punct(i + 2)) {
                    let mut inner = current.clone();
                    inner.push(name.to_string());
                    out.inline_modules.push(inner.clone());
                    depth += 1;
                    stack.push((depth, inner));
                    i += 3;
                    continue;
                }
            }
            Token::Ident(word) if word == "use" => {
                let is_pub = is_pub_use(&toks, i);
                let line = toks[i].1;
                let mut leaves = Vec::new();
                i = use_tree(&toks, i + 1, Vec::new(), &mut leaves);
                for (path, alias) in leaves {
                    if path.last().is_some_and(|s| s == "*") {
                        continue;
                    }
                    if is_pub {
                        if let Some(name) = alias.clone().or_else(|| path.last().cloned()) {
                            out.reexports.push((current.clone(), name, path.clone()));
                        }
                    }
                    let to =
                        if path.last().is_some_and(|s| s == "self") { path[..path.len() - 1].to_vec() } else { path };
                    out.references.push(Reference { from: current.clone(), to, line });
                }
                continue;
            }
            Token::Ident(word) if ["crate", "super", "self"].contains(&word.as_str()) => {
                // A path in code: `crate::a::b`, `super::super::x`.
                let prev_is_path = i > 0 && punct(i - 1) == Some("::");
                if !prev_is_path {
                    let line = toks[i].1;
                    let mut path = vec![word.clone()];
                    let mut j = i + 1;
                    while punct(j) == Some("::") {
                        match ident(j + 1) {
                            Some(s) => path.push(s.to_string()),
                            None => break,
                        }
                        j += 2;
                    }
                    if path.len() > 1 {
                        out.references.push(Reference { from: current.clone(), to: path, line });
                    }
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Whether the `use` at token `i` is `pub use` or `pub(...) use`.
fn is_pub_use(toks: &[(Token, usize)], i: usize) -> bool {
    let word = |k: usize| match i.checked_sub(k).map(|p| &toks[p].0) {
        Some(Token::Ident(w)) => Some(w.as_str()),
        _ => None,
    };
    // Parentheses are not tokens: `pub(crate) use` reads `pub crate use`.
    word(1) == Some("pub") || (matches!(word(1), Some("crate" | "super" | "self")) && word(2) == Some("pub"))
}

/// Parses a use tree from token `i` with the segments before it; pushes
/// each leaf (path, alias). Returns the index after the tree's end (past
/// `;`, or at `,` / `}` inside a group).
fn use_tree(
    toks: &[(Token, usize)],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) -> usize {
    if toks.get(i).map(|t| &t.0) == Some(&Token::Punct("::")) {
        i += 1; // `use ::std::...`
        prefix.push("::".into());
    }
    loop {
        match toks.get(i).map(|t| &t.0) {
            Some(Token::Ident(s)) => {
                prefix.push(s.clone());
                i += 1;
                match toks.get(i).map(|t| &t.0) {
                    Some(Token::Punct("::")) => i += 1,
                    Some(Token::Ident(a)) if a == "as" => {
                        let alias = match toks.get(i + 1).map(|t| &t.0) {
                            Some(Token::Ident(n)) => Some(n.clone()),
                            _ => None,
                        };
                        out.push((prefix, alias));
                        return finish(toks, i + 2);
                    }
                    _ => {
                        out.push((prefix, None));
                        return finish(toks, i);
                    }
                }
            }
            Some(Token::Punct("*")) => {
                prefix.push("*".into());
                out.push((prefix, None));
                return finish(toks, i + 1);
            }
            Some(Token::Punct("{")) => {
                i += 1;
                loop {
                    match toks.get(i).map(|t| &t.0) {
                        Some(Token::Punct("}")) => return finish(toks, i + 1),
                        Some(Token::Punct(",")) => i += 1,
                        None => return i,
                        _ => i = use_tree(toks, i, prefix.clone(), out),
                    }
                }
            }
            _ => return finish(toks, i),
        }
    }
}

/// After a leaf: step over a closing `;` (end of the statement).
fn finish(toks: &[(Token, usize)], i: usize) -> usize {
    match toks.get(i).map(|t| &t.0) {
        Some(Token::Punct(";")) => i + 1,
        _ => i,
    }
}

#[cfg(test)]
mod detector {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> Vec<String> {
        let files: Vec<(PathBuf, String)> = files.iter().map(|(p, t)| (PathBuf::from(p), t.to_string())).collect();
        find_cycles(&files)
    }

    #[test]
    fn finds_a_cycle_between_top_level_modules() {
        let cycles = tree(&[
            ("lib.rs", "mod a;\nmod b;\n"),
            ("a.rs", "use crate::b::Thing;\n"),
            ("b.rs", "fn f() {\n    crate::a::g();\n}\n"),
        ]);
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        assert!(cycles[0].starts_with("crate: a -> b -> a"), "{cycles:?}");
        assert!(cycles[0].contains("a.rs:1") && cycles[0].contains("b.rs:2"), "{cycles:?}");
    }

    #[test]
    fn finds_a_cycle_between_siblings_and_through_groups_and_inline_tests() {
        let cycles = tree(&[
            ("lib.rs", "mod m;\n"),
            ("m/mod.rs", "mod x;\nmod y;\nmod z;\n"),
            ("m/x.rs", "use super::{y::{self, T}, Other};\n"),
            ("m/y.rs", "pub struct T;\n#[cfg(test)]\nmod tests {\n    fn t() { super::super::z::f(); }\n}\n"),
            ("m/z.rs", "use crate::m::x as ex;\n"),
        ]);
        assert_eq!(cycles, ["m: x -> y -> z -> x (x -> y at m/x.rs:1; y -> z at m/y.rs:4; z -> x at m/z.rs:1)"]);
    }

    #[test]
    fn follows_reexports_and_path_attributes() {
        let cycles = tree(&[
            ("lib.rs", "mod a;\nmod b;\npub use b::Bee;\n"),
            ("a.rs", "use crate::Bee;\n#[cfg(test)]\n#[path = \"a_tests.rs\"]\nmod tests;\n"),
            ("a_tests.rs", "use super::*;\n"),
            ("b.rs", "pub struct Bee;\n"),
        ]);
        assert!(cycles.is_empty(), "{cycles:?}");
        let cycles = tree(&[
            ("lib.rs", "mod a;\nmod b;\npub use b::Bee;\n"),
            ("a.rs", "use crate::Bee;\n#[path = \"a_tests.rs\"]\nmod tests;\n"),
            ("a_tests.rs", "fn f() { crate::a::tests::g(); }\n"),
            ("b.rs", "pub struct Bee;\nmod inner { use crate::a::X; }\n"),
        ]);
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        assert!(cycles[0].starts_with("crate: a -> b -> a"), "{cycles:?}");
    }

    #[test]
    fn ignores_comments_strings_parents_and_other_crates() {
        let cycles = tree(&[
            ("lib.rs", "mod a;\nmod b;\nuse a::A;\n"),
            (
                "a.rs",
                "// use crate::b::X;\n/* crate::b::Y /* nested */ */\nconst S: &str = \"crate::b::Z {\";\nconst R: &str = r#\"crate::b \"# ;\nconst C: char = '{';\nfn f<'a>(x: &'a str) {}\nuse super::b::B;\n",
            ),
            ("b.rs", "use std::collections::HashMap;\nuse enrichd_engine::a::Thing;\nuse super::*;\nuse crate::Root;\n"),
        ]);
        assert!(cycles.is_empty(), "{cycles:?}");
    }
}
