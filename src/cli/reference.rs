//! `enrichd config-reference`: the configuration reference as Markdown,
//! generated from the same schemars schema `config-schema` prints.
//!
//! Why generated: the README's tables of sections, plugin options and
//! environment variables used to be written by hand next to the doc comments
//! they repeat, and drifted. Now the doc comments on the option structs are
//! the one source; `tests/config_reference.rs` fails when the README block
//! differs from this output or `config.toml` misses a key or variable.

use std::fmt::Write;

use enrichd_engine::Registry;
use serde_json::Value;

/// Environment variables the service itself reads (plugins declare their
/// own through `PluginFactory::env_overrides`).
pub(crate) const SERVICE_ENV: &[(&str, &str)] = &[
    ("API_KEY", "adds an accepted API key (`auth.api_keys`)"),
    ("ADMIN_API_KEY", "adds an admin key (`auth.admin_keys`)"),
    ("ENRICH_ENABLE_<PLUGIN>", "`enabled` of every chain entry of that plugin (`true`/`false`, `1`/`0`, `yes`/`no`)"),
    (
        "EXPORT_<NAME>_ENABLED",
        "`enabled` of the output of that name, wherever it is configured (e.g. `EXPORT_ELASTIC_ENABLED`, `EXPORT_SPLUNK_ENABLED`)",
    ),
    ("ENRICHD_LOG", "log filter (`info` by default; e.g. `debug`, `enrichd=debug`)"),
    ("GIT_TAG, GIT_SHA, IMAGE_DIGEST", "override what `GET /v1/version` reports"),
    ("ENRICHD_WASM_PERFMAP", "when set, write a perf map of compiled guests (profiling)"),
];

/// The whole reference: service sections, each plugin's options, the
/// environment variables.
pub(crate) fn markdown(registry: &Registry) -> String {
    let schema = crate::service::config_schema::json_schema(registry);
    let mut out = String::new();
    let defs = &schema["$defs"];
    for (name, property) in properties(&schema) {
        let Some(def) = reference(property).and_then(|r| defs.get(r)) else { continue };
        let _ = writeln!(out, "#### `[{name}]`\n\n{}\n", one_line(description(property)));
        table(&mut out, def, defs);
    }
    if let Some(runtime) = defs.get("OutputRuntime") {
        let _ = writeln!(
            out,
            "#### `[[output]]`\n\nA delivery destination: these keys for every type, plus the type's own below \
             (README \"Delivery\").\n"
        );
        table(&mut out, runtime, defs);
    }
    for factory in registry.outputs() {
        let Some(options) = defs.get(format!("Output_{}", factory.kind()).as_str()) else { continue };
        let _ =
            writeln!(out, "#### `[[output]]` `type = \"{}\"`\n\n{}\n", factory.kind(), one_line(factory.description()));
        table(&mut out, options, defs);
    }
    if let Some(runtime) = defs.get("SourceRuntime") {
        let _ = writeln!(
            out,
            "#### `[[source]]`\n\nWhere events come from besides `POST /v1/ingest`: these keys for every type, plus \
             the type's own below (README \"Scale-out on NATS\").\n"
        );
        table(&mut out, runtime, defs);
    }
    for factory in registry.sources() {
        let Some(options) = defs.get(format!("Source_{}", factory.kind()).as_str()) else { continue };
        let _ =
            writeln!(out, "#### `[[source]]` `type = \"{}\"`\n\n{}\n", factory.kind(), one_line(factory.description()));
        table(&mut out, options, defs);
    }
    if let Some(runtime) = defs.get("UpdateRuntime") {
        let _ = writeln!(
            out,
            "#### `[[update]]`\n\nA data file kept current (README \"Keeping databases current\"): these keys for every \
             type, plus the type's own below.\n"
        );
        table(&mut out, runtime, defs);
    }
    for factory in registry.updaters() {
        let Some(options) = defs.get(format!("Update_{}", factory.kind()).as_str()) else { continue };
        let _ =
            writeln!(out, "#### `[[update]]` `type = \"{}\"`\n\n{}\n", factory.kind(), one_line(factory.description()));
        table(&mut out, options, defs);
    }
    if let Some(runtime) = defs.get("ForwardRuntime") {
        let _ = writeln!(
            out,
            "#### `[[forward]]`\n\nWhere `[ingest] forward` publishes raw batches (README \"Scale-out on NATS\"): \
             these keys for every type, plus the type's own below.\n"
        );
        table(&mut out, runtime, defs);
    }
    for factory in registry.forwarders() {
        let Some(options) = defs.get(format!("Forward_{}", factory.kind()).as_str()) else { continue };
        let _ = writeln!(
            out,
            "#### `[[forward]]` `type = \"{}\"`\n\n{}\n",
            factory.kind(),
            one_line(factory.description())
        );
        table(&mut out, options, defs);
    }
    for factory in registry.factories() {
        let options = serde_json::to_value(factory.options_schema()).expect("schemas serialize");
        let _ = writeln!(out, "#### `plugin = \"{}\"`\n\n{}\n", factory.kind(), one_line(factory.description()));
        table(&mut out, &options, &options["$defs"]);
    }
    out.push_str("#### Environment variables\n\n| variable | effect |\n|---|---|\n");
    for (var, what) in env_vars(registry) {
        let _ = writeln!(out, "| `{var}` | {what} |");
    }
    out
}

/// Every environment variable, service first, then each plugin's.
pub(crate) fn env_vars(registry: &Registry) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = SERVICE_ENV.iter().map(|(v, w)| (v.to_string(), w.to_string())).collect();
    for factory in registry.factories() {
        for o in factory.env_overrides() {
            let list = if o.list { " (comma-separated)" } else { "" };
            vars.push((o.var.to_string(), format!("`{}` option `{}`{list}", factory.kind(), o.option)));
        }
    }
    vars
}

fn table(out: &mut String, object: &Value, defs: &Value) {
    out.push_str("| key | type | default | meaning |\n|---|---|---|---|\n");
    for (key, property) in properties(object) {
        let default = property.get("default").map(|d| format!("`{d}`")).unwrap_or_else(|| "–".into());
        let required = object["required"].as_array().is_some_and(|r| r.iter().any(|k| k == key));
        let default = if required { "required".into() } else { default };
        let _ = writeln!(
            out,
            "| `{key}` | {} | {default} | {} |",
            type_name(property, defs),
            one_line(description(property))
        );
    }
    out.push('\n');
}

fn properties(object: &Value) -> impl Iterator<Item = (&String, &Value)> {
    object["properties"].as_object().into_iter().flatten()
}

fn reference(property: &Value) -> Option<&str> {
    property["$ref"].as_str().and_then(|r| r.strip_prefix("#/$defs/"))
}

fn description(value: &Value) -> &str {
    value["description"].as_str().unwrap_or("")
}

/// A short type: `string`, `integer`, `[string]`, an enum's values, or the
/// name of a referenced definition.
fn type_name(property: &Value, defs: &Value) -> String {
    if let Some(name) = reference(property) {
        return match defs.get(name) {
            Some(def) if enum_values(def).is_some() => enum_values(def).unwrap_or_default(),
            _ => name.to_string(),
        };
    }
    if let Some(values) = enum_values(property) {
        return values;
    }
    if let Some(any) = property["anyOf"].as_array() {
        let names: Vec<String> = any.iter().filter(|v| v["type"] != "null").map(|v| type_name(v, defs)).collect();
        return names.join(" or ");
    }
    match &property["type"] {
        Value::String(t) if t == "array" => format!("[{}]", type_name(&property["items"], defs)),
        Value::String(t) => t.clone(),
        Value::Array(types) => {
            let names: Vec<&str> = types.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect();
            names.join(" or ")
        }
        _ => "any".into(),
    }
}

/// `"a"`, `"b"` for a string enum (schemars writes `enum` or `oneOf` of `const`s).
fn enum_values(def: &Value) -> Option<String> {
    let values: Vec<String> = if let Some(values) = def["enum"].as_array() {
        values.iter().map(|v| format!("`{v}`")).collect()
    } else {
        let consts = def["oneOf"].as_array()?;
        consts.iter().map(|c| c.get("const").map(|v| format!("`{v}`"))).collect::<Option<_>>()?
    };
    Some(values.join(", "))
}

/// A doc comment as one table cell: lines joined, pipes escaped.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")
}
