//! What a `ti` stage writes, described for `/v1/schema`, and read back for
//! metrics (the indicator names of an answer) behind the plugin contract
//! (`FactDecl::values`).

use std::borrow::Cow;

use schemars::JsonSchema;

/// One threat-intel indicator that matched the event.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct TiMatch {
    /// The indicator as listed (`45.149.3.0/24`, `evil-example.com`).
    indicator: String,
    /// `addr`, `subnet` or `domain`.
    #[serde(rename = "type")]
    kind: String,
    /// The event field that matched (`src_ip`, `dst_ip`, `query`, ...).
    field: String,
    /// The event's value in that field.
    value: String,
    /// The indicator file.
    source: String,
    category: Option<String>,
    confidence: Option<u8>,
    /// Zeek intel `meta.source`.
    feed: Option<String>,
    description: Option<String>,
}

/// Threat-intel matches of an event.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct Ti {
    /// Every indicator covering an address or matching a domain field.
    matches: Vec<TiMatch>,
}

/// [`Ti`] with the `matched_flag` option's `matched`.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct TiFlagged {
    /// Every indicator covering an address or matching a domain field.
    matches: Vec<TiMatch>,
    /// Whether `matches` is non-empty.
    matched: bool,
}

/// JSON Schema of the output (with `matched` when `matched_flag` is set).
pub fn schema(matched_flag: bool) -> serde_json::Value {
    if matched_flag {
        enrichd_engine::fact::output_schema::<TiFlagged>()
    } else {
        enrichd_engine::fact::output_schema::<Ti>()
    }
}

/// The indicator names in an output (`{"matches": [{"indicator": ...}]}`),
/// each passed to `each`.
pub fn indicators(fragment: &str, each: &mut dyn FnMut(&str)) {
    for name in indicator_names(fragment) {
        each(&name);
    }
}

/// A scan, not a parse: `"indicator":"` can only be a key (a quote inside a
/// JSON string is escaped, which breaks the pattern), and the value runs to
/// the next unescaped quote. Values with escapes (never written by this
/// plugin) are decoded properly.
fn indicator_names(fragment: &str) -> impl Iterator<Item = Cow<'_, str>> {
    const KEY: &str = "\"indicator\":\"";
    fragment.match_indices(KEY).filter_map(move |(at, _)| {
        let rest = &fragment[at + KEY.len()..];
        let bytes = rest.as_bytes();
        let mut end = 0;
        let mut escaped = false;
        while end < bytes.len() && (escaped || bytes[end] != b'"') {
            escaped = !escaped && bytes[end] == b'\\';
            end += 1;
        }
        if end == bytes.len() {
            return None; // unterminated: not a valid fragment
        }
        let raw = &rest[..end];
        if raw.contains('\\') {
            serde_json::from_str::<String>(&fragment[at + KEY.len() - 1..at + KEY.len() + end + 1]).ok().map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(raw))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn names(fragment: &str) -> Vec<String> {
        let mut out = Vec::new();
        indicators(fragment, &mut |n| out.push(n.to_owned()));
        out
    }

    #[test]
    fn indicator_names_are_scanned_from_outputs() {
        let ti = r#"{"matches":[{"indicator":"45.149.3.0/24","type":"cidr","field":"src_ip","value":"45.149.3.7"},{"indicator":"evil\u002eexample","type":"domain"}]}"#;
        assert_eq!(names(ti), ["45.149.3.0/24", "evil.example"]);
        assert!(names("not json").is_empty());
        assert!(names(r#"{"matches":[{"indicator":"unterminated"#).is_empty());
        // A value that merely contains the key text is not a key.
        let tricky = r#"{"matches":[{"value":"x\"indicator\":\"no","indicator":"a\\b"}]}"#;
        assert_eq!(names(tricky), ["a\\b"]);
        // Same answers as a full parse on the plugin's real output.
        let parsed: Value = serde_json::from_str(ti).unwrap();
        let by_parse: Vec<&str> =
            parsed["matches"].as_array().unwrap().iter().map(|m| m["indicator"].as_str().unwrap()).collect();
        assert_eq!(by_parse, ["45.149.3.0/24", "evil.example"]);
    }

    #[test]
    fn the_schema_follows_matched_flag() {
        assert!(schema(true)["properties"].get("matched").is_some());
        assert!(schema(false)["properties"].get("matched").is_none());
        assert!(schema(false)["properties"]["matches"].is_object());
    }
}
