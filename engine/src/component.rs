//! One contract for every component an entry of `config.toml` names by
//! `type = "..."`: outputs (`[[output]]`), sources (`[[source]]`),
//! data-file updaters (`[[update]]`) and forwarding targets
//! (`[[forward]]`).
//!
//! Why one: the four families differ only in what they build (a sink, a
//! source runner, ...) and what that is built with (a directory, a target
//! path, ...). Everything else is the same for each and is written here
//! once: a kind name, typed options (serde + schemars: the schema, the
//! reference documentation and the checks all come from one struct),
//! secret fields, every problem with the options listed rather than the
//! first, then the build. A plugin implements [`Component`] with its
//! family; the core only sees the object-safe [`Factory`] of that family
//! (the blanket implementation turns one into the other) and looks it up
//! by kind in the [`crate::Registry`].

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize as _, Serialize};
use serde_json::{Map, Value};

/// A family of components: what its members are built with and what they
/// build. Implemented by a marker type per family (e.g.
/// [`crate::output::OutputFamily`]).
pub trait Family: 'static {
    /// What a member is built with besides its options (its name,
    /// directories).
    type Context;
    /// What a member builds: the family's trait object.
    type Built: ?Sized + Send + Sync;
}

/// What a component of family `F` is built with.
pub type ContextOf<F> = <F as Family>::Context;
/// What a component of family `F` builds.
pub type BuiltOf<F> = <F as Family>::Built;

/// The typed way to write a component: options as a struct
/// (`deny_unknown_fields`, `default`, a doc comment on every field, every
/// field defaultable so each can be checked on its own).
pub trait Component: Send + Sync {
    type Family: Family;
    /// The component's own options.
    type Options: DeserializeOwned + schemars::JsonSchema + Default;

    /// The `type = "..."` of the entry, and the entry's default name.
    fn kind(&self) -> &'static str;
    fn description(&self) -> &'static str;
    /// See [`Factory::secret_fields`].
    fn secret_fields(&self) -> &'static [&'static str] {
        &[]
    }
    /// See [`Factory::path_fields`].
    fn path_fields(&self) -> &'static [&'static str] {
        &[]
    }
    /// Checks a type cannot express (required fields, URLs, ranges), every
    /// problem listed.
    fn validate(&self, options: &Self::Options) -> Vec<FieldError>;
    fn build(
        &self,
        options: Self::Options,
        ctx: &ContextOf<Self::Family>,
    ) -> anyhow::Result<Arc<BuiltOf<Self::Family>>>;
}

/// The object-safe face of a [`Component`] of family `F`: what the
/// registry holds and the service calls.
pub trait Factory<F: Family>: Send + Sync {
    /// The `type = "..."` of the entry, and the entry's default name.
    fn kind(&self) -> &'static str;
    fn description(&self) -> &'static str;
    /// JSON Schema of the component's own options.
    fn options_schema(&self) -> schemars::Schema;
    /// Option names whose values are secrets: stored, never shown (views
    /// say `<name>_set: true`), masked in every error text.
    fn secret_fields(&self) -> &'static [&'static str];
    /// Option names whose values are file paths the component reads or
    /// writes. Settings that arrive over the API may only name files inside
    /// a directory the operator set aside: an API key must not be a way to
    /// read or append to any file the service can reach.
    fn path_fields(&self) -> &'static [&'static str];
    /// Every problem with `options` (unknown keys, wrong types, values out
    /// of range, missing requirements), not just the first.
    fn check(&self, options: &Map<String, Value>) -> Vec<FieldError>;
    /// Builds the component; `options` passed [`Factory::check`].
    fn build(&self, options: &Map<String, Value>, ctx: &F::Context) -> anyhow::Result<Arc<F::Built>>;
}

impl<C: Component> Factory<C::Family> for C {
    fn kind(&self) -> &'static str {
        Component::kind(self)
    }

    fn description(&self) -> &'static str {
        Component::description(self)
    }

    fn options_schema(&self) -> schemars::Schema {
        schemars::schema_for!(C::Options)
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        Component::secret_fields(self)
    }

    fn path_fields(&self) -> &'static [&'static str] {
        Component::path_fields(self)
    }

    fn check(&self, options: &Map<String, Value>) -> Vec<FieldError> {
        check_options::<C::Options>(options, |typed| Component::validate(self, typed))
    }

    fn build(
        &self,
        options: &Map<String, Value>,
        ctx: &ContextOf<C::Family>,
    ) -> anyhow::Result<Arc<BuiltOf<C::Family>>> {
        let typed = C::Options::deserialize(Value::Object(options.clone()))
            .map_err(|e| anyhow::anyhow!("invalid options: {e}"))?;
        Component::build(self, typed, ctx)
    }
}

/// One problem with one option, as `PUT /v1/outputs/{name}` lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into() }
    }
}

/// Every problem with typed options: [`check_keys`], then `validate` (the
/// checks a type cannot express) on the keys that parsed, so a bad URL is
/// reported beside an unknown key, not after it.
pub fn check_options<T: DeserializeOwned>(
    options: &Map<String, Value>,
    validate: impl FnOnce(&T) -> Vec<FieldError>,
) -> Vec<FieldError> {
    let (mut errors, parsed) = check_keys::<T>(options);
    if let Some(typed) = parsed {
        let more: Vec<FieldError> =
            validate(&typed).into_iter().filter(|e| !errors.iter().any(|known| known.field == e.field)).collect();
        errors.extend(more);
    }
    errors
}

/// Every key of `options` that does not deserialize into `T` on its own (a
/// type every field of which has a default), and `T` from the keys that
/// do. serde stops at the first error; checking each key alone lists them
/// all, and the rest can still be validated.
pub fn check_keys<T: DeserializeOwned>(options: &Map<String, Value>) -> (Vec<FieldError>, Option<T>) {
    let mut errors = Vec::new();
    for (key, value) in options {
        let one = Map::from_iter([(key.clone(), value.clone())]);
        if let Err(e) = T::deserialize(Value::Object(one)) {
            errors.push(FieldError::new(key.clone(), serde_message(&e.to_string())));
        }
    }
    let good: Map<String, Value> = options
        .iter()
        .filter(|(k, _)| !errors.iter().any(|e| &e.field == *k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    match T::deserialize(Value::Object(good)) {
        Ok(parsed) => (errors, Some(parsed)),
        Err(e) => {
            if errors.is_empty() {
                errors.push(FieldError::new("", serde_message(&e.to_string())));
            }
            (errors, None)
        }
    }
}

/// serde's message without its " at line 1 column 9" tail (meaningless for
/// a value checked on its own).
fn serde_message(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => message,
    };
    crate::limits::cap_message(without_strings(message))
}

/// serde names a refused string value (`invalid type: string "…"`): in
/// settings that may be a secret, or a URL with one in it, so the value
/// is left out (`a string`); what was expected stays.
fn without_strings(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("string \"") {
        out.push_str(&rest[..at]);
        out.push_str("a string");
        // Skip the quoted value, escapes included (serde writes it as
        // `{:?}` does).
        let value = &rest[at + "string \"".len()..];
        let mut chars = value.char_indices();
        let mut end = value.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields, default)]
    #[allow(dead_code)] // read only through serde
    struct Settings {
        urls: Vec<String>,
        port: u16,
    }

    /// A refused value is not echoed: settings hold secrets (a password in
    /// a URL given where a list was expected).
    #[test]
    fn field_errors_leave_string_values_out() {
        let options = serde_json::json!({"urls": "https://u:pa\"ss@h", "port": "80"});
        let (errors, _) = check_keys::<Settings>(options.as_object().unwrap());
        let text: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
        assert_eq!(
            text,
            ["port: invalid type: a string, expected u16", "urls: invalid type: a string, expected a sequence"]
        );
        assert_eq!(without_strings(r#"x string "a\"b" y string "c""#), "x a string y a string");
    }
}
