//! The configuration reference has one source: the doc comments of the
//! option structs, through the schemars schema. README's reference block is
//! generated from it (`scripts/gen-config-reference`) and `config.toml` is
//! checked against it, so neither can drift from what the binary accepts.

mod common;

use serde_json::Value;

fn enrichd(arg: &str) -> String {
    let out = common::bin().arg(arg).output().expect("enrichd runs");
    assert!(out.status.success(), "enrichd {arg}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn readme() -> String {
    std::fs::read_to_string(common::repo().join("README.md")).unwrap()
}

#[test]
fn readme_reference_is_the_generated_one() {
    let readme = readme();
    let begin = "<!-- config-reference:begin -->\n";
    let start = readme.find(begin).expect("README has the config-reference:begin marker") + begin.len();
    let end = readme.find("<!-- config-reference:end -->").expect("README has the config-reference:end marker");
    let generated = enrichd("config-reference");
    if readme[start..end] != generated {
        let first = readme[start..end].lines().zip(generated.lines()).find(|(a, b)| a != b);
        panic!(
            "README.md's configuration reference differs from `enrichd config-reference` \
             (run scripts/gen-config-reference); first difference: {first:#?}"
        );
    }
}

/// Every option of every section and plugin says what it does.
#[test]
fn every_option_is_described() {
    let schema: Value = serde_json::from_str(&enrichd("config-schema")).unwrap();
    let mut objects: Vec<(String, &Value)> = Vec::new();
    for (name, def) in schema["$defs"].as_object().unwrap() {
        objects.push((name.clone(), def));
    }
    for entry in schema["properties"]["chain"]["items"]["oneOf"].as_array().unwrap() {
        objects.push((format!("plugin {}", entry["properties"]["plugin"]["const"]), entry));
    }
    let mut undocumented = Vec::new();
    for (owner, object) in objects {
        for (key, property) in object["properties"].as_object().into_iter().flatten() {
            let described = property["description"].as_str().is_some_and(|d| !d.trim().is_empty());
            let injected = ["plugin", "name", "enabled"].contains(&key.as_str()) && owner.starts_with("plugin");
            if !described && !injected {
                undocumented.push(format!("{owner}: {key}"));
            }
        }
    }
    assert!(undocumented.is_empty(), "options without a doc comment: {undocumented:#?}");
}

/// `config.toml` shows every service setting (set or commented out) and
/// lists every environment variable the reference names.
#[test]
fn config_toml_covers_every_setting_and_variable() {
    let schema: Value = serde_json::from_str(&enrichd("config-schema")).unwrap();
    let config = std::fs::read_to_string(common::repo().join("config.toml")).unwrap();
    let lines: Vec<&str> = config.lines().map(|l| l.trim_start_matches('#').trim()).collect();
    let mut missing = Vec::new();
    for (section, property) in schema["properties"].as_object().unwrap() {
        let Some(def) = property["$ref"].as_str().and_then(|r| r.strip_prefix("#/$defs/")) else { continue };
        for key in schema["$defs"][def]["properties"].as_object().unwrap().keys() {
            if !lines.iter().any(|l| l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}="))) {
                missing.push(format!("[{section}] {key}"));
            }
        }
    }
    let reference = enrichd("config-reference");
    let env_table = &reference[reference.find("#### Environment variables").unwrap()..];
    for row in env_table.lines().filter(|l| l.starts_with("| `")) {
        for var in row[3..].split('`').next().unwrap().split(", ") {
            let var = var.split('<').next().unwrap();
            if !config.contains(var) {
                missing.push(format!("env {var}"));
            }
        }
    }
    assert!(missing.is_empty(), "config.toml does not mention: {missing:#?}");
}
