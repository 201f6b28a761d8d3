//! `enrichd config-schema`: one JSON Schema for the whole `config.toml`,
//! the service's sections with each registered plugin's, output's,
//! source's and updater's options put in (so editors and CI can check a
//! file before enrichd reads it).

use enrichd_engine::Registry;

use super::config::Sections;

/// The JSON Schema of the whole file, with each registered plugin's
/// options.
pub(crate) fn json_schema(registry: &Registry) -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(Sections)).expect("schema serializes");
    let mut defs = schema["$defs"].as_object().cloned().unwrap_or_default();
    // Each plugin's options schema comes with its own `$defs`, which its
    // `$ref`s point at from the document root: hoist them there (a
    // validator resolves `#/$defs/Target` against the root only).
    let mut chain = enrichd_engine::Config::chain_schema(registry);
    if let Some(entries) = chain.pointer_mut("/items/oneOf").and_then(|v| v.as_array_mut()) {
        for entry in entries {
            let kind = entry.pointer("/properties/plugin/const").and_then(|v| v.as_str()).unwrap_or("").to_string();
            hoist_defs(entry, &mut defs, &kind);
            *entry = strip_meta(std::mem::take(entry));
        }
    }
    schema["properties"]["chain"] = chain;
    // `[[output]]` entries: the runtime's keys plus the type's own
    // options, each set under `$defs` (`OutputRuntime`, `Output_<type>`).
    let mut runtime = serde_json::to_value(schemars::schema_for!(crate::delivery::options::RuntimeOptions))
        .expect("schema serializes");
    hoist_defs(&mut runtime, &mut defs, "OutputRuntime");
    defs.insert("OutputRuntime".into(), strip_meta(runtime));
    let mut kinds = Vec::new();
    for factory in registry.outputs() {
        let mut options = serde_json::to_value(factory.options_schema()).expect("schema serializes");
        hoist_defs(&mut options, &mut defs, &format!("Output_{}", factory.kind()));
        defs.insert(format!("Output_{}", factory.kind()), strip_meta(options));
        kinds.push(serde_json::Value::from(factory.kind()));
    }
    let mut runtime =
        serde_json::to_value(schemars::schema_for!(super::sources::SourceRuntime)).expect("schema serializes");
    defs.insert("SourceRuntime".into(), strip_meta(runtime.take()));
    let mut source_kinds = Vec::new();
    for factory in registry.sources() {
        let mut options = serde_json::to_value(factory.options_schema()).expect("schema serializes");
        if let Some(inner) = options.as_object_mut().and_then(|o| o.remove("$defs")) {
            defs.extend(inner.as_object().cloned().unwrap_or_default());
        }
        defs.insert(format!("Source_{}", factory.kind()), strip_meta(options));
        source_kinds.push(serde_json::Value::from(factory.kind()));
    }
    schema["properties"]["source"]["items"] = serde_json::json!({
        "type": "object",
        "description": "One source: the keys of `$defs/SourceRuntime` plus those of `$defs/Source_<type>`.",
        "required": ["type"],
        "properties": { "type": { "enum": source_kinds } },
    });
    let mut runtime =
        serde_json::to_value(schemars::schema_for!(super::updates::UpdateRuntime)).expect("schema serializes");
    defs.insert("UpdateRuntime".into(), strip_meta(runtime.take()));
    let mut update_kinds = Vec::new();
    for factory in registry.updaters() {
        let mut options = serde_json::to_value(factory.options_schema()).expect("schema serializes");
        hoist_defs(&mut options, &mut defs, &format!("Update_{}", factory.kind()));
        defs.insert(format!("Update_{}", factory.kind()), strip_meta(options));
        update_kinds.push(serde_json::Value::from(factory.kind()));
    }
    schema["properties"]["update"]["items"] = serde_json::json!({
        "type": "object",
        "description": "One data file kept current: the keys of `$defs/UpdateRuntime` plus those of `$defs/Update_<type>`.",
        "required": ["type", "path"],
        "properties": { "type": { "enum": update_kinds } },
    });
    let mut runtime =
        serde_json::to_value(schemars::schema_for!(super::forward::ForwardRuntime)).expect("schema serializes");
    defs.insert("ForwardRuntime".into(), strip_meta(runtime.take()));
    let mut forward_kinds = Vec::new();
    for factory in registry.forwarders() {
        let mut options = serde_json::to_value(factory.options_schema()).expect("schema serializes");
        hoist_defs(&mut options, &mut defs, &format!("Forward_{}", factory.kind()));
        defs.insert(format!("Forward_{}", factory.kind()), strip_meta(options));
        forward_kinds.push(serde_json::Value::from(factory.kind()));
    }
    schema["properties"]["forward"]["items"] = serde_json::json!({
        "type": "object",
        "description": "One forwarding target: the keys of `$defs/ForwardRuntime` plus those of `$defs/Forward_<type>`.",
        "required": ["type"],
        "properties": { "type": { "enum": forward_kinds } },
    });
    schema["$defs"] = serde_json::Value::Object(defs);
    schema["properties"]["output"]["items"] = serde_json::json!({
        "type": "object",
        "description": "One destination: the keys of `$defs/OutputRuntime` plus those of `$defs/Output_<type>`.",
        "required": ["type"],
        "properties": { "type": { "enum": kinds } },
    });
    schema
}

/// Moves `schema`'s own `$defs` into the root's `defs`. A name already
/// there with another definition is renamed `<owner>_<name>`, and the
/// `$ref`s inside `schema` follow, so two plugins' different `Target`s
/// both stay right.
fn hoist_defs(schema: &mut serde_json::Value, defs: &mut serde_json::Map<String, serde_json::Value>, owner: &str) {
    let Some(inner) = schema.as_object_mut().and_then(|o| o.remove("$defs")) else { return };
    let serde_json::Value::Object(inner) = inner else { return };
    let mut renames = Vec::new();
    for (name, def) in &inner {
        match defs.get(name) {
            Some(existing) if existing != def => renames.push((name.clone(), format!("{owner}_{name}"))),
            _ => {}
        }
    }
    let rename = |v: &mut serde_json::Value| rewrite_refs(v, &renames);
    rename(schema);
    for (name, mut def) in inner {
        rename(&mut def);
        let target = renames.iter().find(|(from, _)| *from == name).map_or(name, |(_, to)| to.clone());
        defs.insert(target, def);
    }
}

fn rewrite_refs(value: &mut serde_json::Value, renames: &[(String, String)]) {
    match value {
        serde_json::Value::Object(o) => {
            if let Some(serde_json::Value::String(r)) = o.get_mut("$ref") {
                if let Some((_, to)) = renames.iter().find(|(from, _)| r.as_str() == format!("#/$defs/{from}")) {
                    *r = format!("#/$defs/{to}");
                }
            }
            o.values_mut().for_each(|v| rewrite_refs(v, renames));
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|v| rewrite_refs(v, renames)),
        _ => {}
    }
}

/// A sub-schema without its own `$schema` and title (it lives in `$defs`).
fn strip_meta(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(o) = schema.as_object_mut() {
        o.remove("$schema");
    }
    schema
}
