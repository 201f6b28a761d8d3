//! STIX 2.1 indicators into rows of the `ti` stage's CSV form.
//!
//! Why convert instead of teaching the stage STIX: the stage's loader
//! already reads CSV with every metadata column (confidence, tags,
//! first_seen, last_seen, valid_until), its reload path and its guards;
//! a converted file is one more file it reads, and an operator can open
//! it and see what the feed contributed. The `stix_id` column (ignored by
//! the loader) lets a TAXII update replace or revoke an object's rows.
//!
//! Patterns: only what is a plain list of observables matches here, i.e.
//! equality on `ipv4-addr:value`, `ipv6-addr:value` (addresses or CIDRs),
//! `domain-name:value` and `url:value` (its host), combined with `OR`
//! inside or between observation brackets. Anything else (`AND`,
//! `FOLLOWEDBY`, qualifiers, other operators or objects, non-STIX pattern
//! languages) is reported as unsupported with the reason, never dropped
//! silently and never approximated (an `AND` read as `OR` would match
//! what the feed did not say).

use serde_json::Value;

use crate::ti::loader::{normalize_domain, parse_net};
use crate::ti::meta::{MAX_TAGS, MAX_TAG_BYTES};

/// The CSV header of converted files; `stix_id` is not a loader column.
pub(crate) const CSV_HEADER: &str =
    "indicator,category,confidence,description,tags,first_seen,last_seen,valid_until,stix_id";

/// Longest description kept (bytes): converted lines stay far below the
/// loader's line cap.
const MAX_DESCRIPTION: usize = 512;
/// Longest pattern quoted in an unsupported report.
const MAX_QUOTED_PATTERN: usize = 200;
/// Most observables taken from one pattern.
const MAX_VALUES_PER_PATTERN: usize = 1000;

/// What one STIX object contributes.
pub(crate) enum Converted {
    /// Not an indicator (identities, relationships, ...): ignored.
    Other,
    /// `revoked: true`: its rows (if any) are removed.
    Revoked { id: String },
    /// The object's CSV rows (one per observable).
    Rows { id: String, rows: Vec<String> },
    /// An indicator this plugin cannot match: the id and why, with the
    /// pattern quoted (bounded).
    Unsupported { id: String, reason: String },
}

/// Converts one object of a bundle or TAXII envelope.
pub(crate) fn convert(object: &Value) -> Converted {
    let text = |k: &str| object.get(k).and_then(Value::as_str);
    if text("type") != Some("indicator") {
        return Converted::Other;
    }
    let id = clean(text("id").unwrap_or("indicator--?"), 128);
    if object.get("revoked").and_then(Value::as_bool) == Some(true) {
        return Converted::Revoked { id };
    }
    let pattern = text("pattern").unwrap_or("");
    let unsupported = |reason: String| Converted::Unsupported {
        id: id.clone(),
        reason: format!("{reason}: {}", clean(pattern, MAX_QUOTED_PATTERN)),
    };
    match text("pattern_type") {
        Some("stix") | None => {}
        Some(other) => return unsupported(format!("pattern_type {:?}", clean(other, 32))),
    }
    let values = match parse_pattern(pattern) {
        Ok(v) => v,
        Err(reason) => return unsupported(reason),
    };
    let list = |k: &str| -> Vec<&str> {
        object
            .get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    let confidence = object.get("confidence").and_then(Value::as_u64).filter(|&c| c <= 100);
    let description = text("name").or_else(|| text("description")).unwrap_or("");
    // As many tags as the stage keeps, no more: every row of the pattern
    // repeats them, so an object with a thousand values and a million
    // labels must not render to gigabytes (or rows over the line cap).
    let tags: Vec<String> =
        list("labels").iter().take(MAX_TAGS).map(|t| clean(t, MAX_TAG_BYTES).replace([',', ';', '|'], " ")).collect();
    let fields_after = [
        csv_field(&clean(list("indicator_types").first().copied().unwrap_or(""), 64)),
        confidence.map(|c| c.to_string()).unwrap_or_default(),
        csv_field(&clean(description, MAX_DESCRIPTION)),
        csv_field(&tags.join("|")),
        csv_field(&clean(text("valid_from").unwrap_or(""), 40)),
        csv_field(&clean(text("modified").unwrap_or(""), 40)),
        csv_field(&clean(text("valid_until").unwrap_or(""), 40)),
        csv_field(&id),
    ]
    .join(",");
    let rows = values.into_iter().map(|v| format!("{},{fields_after}", csv_field(&v))).collect();
    Converted::Rows { id, rows }
}

/// `objects` in the order their versions were made (`modified`, then as
/// listed): applied in that order, the newest version of an indicator is
/// the one kept, wherever the list puts it (a bundle may list a revoked v2
/// before the v1 it revokes).
pub(crate) fn oldest_first(objects: &[Value]) -> Vec<&Value> {
    let modified = |o: &Value| {
        let text = o.get("modified").and_then(Value::as_str).unwrap_or("");
        // Seconds first: RFC 3339 strings with different fractions do not
        // sort as text (`…00.1Z` after `…00.123Z`).
        (crate::ti::meta::parse_time(text).unwrap_or(i64::MIN), fraction(text))
    };
    let mut sorted: Vec<&Value> = objects.iter().collect();
    sorted.sort_by_cached_key(|o| modified(o)); // stable: ties keep the list's order
    sorted
}

/// The fractional seconds of an RFC 3339 time, in nanoseconds.
fn fraction(text: &str) -> u32 {
    let Some((_, frac)) = text.split_once('.') else { return 0 };
    let digits: String = frac.chars().take_while(char::is_ascii_digit).take(9).collect();
    format!("{digits:0<9}").parse().unwrap_or(0)
}

/// The observables of a supported pattern, in the loader's indicator
/// syntax (`1.2.3.4`, `10.0.0.0/8`, `domain:example.com`).
pub(crate) fn parse_pattern(pattern: &str) -> Result<Vec<String>, String> {
    let tokens = tokenize(pattern)?;
    let mut p = PatternParser { tokens: &tokens, at: 0, out: Vec::new(), depth: 0 };
    p.expression()?;
    match p.tokens.get(p.at) {
        None if p.out.is_empty() => Err("no observable".into()),
        None => Ok(p.out),
        Some(Token::Word(w)) if w.eq_ignore_ascii_case("AND") => Err("AND is not supported".into()),
        Some(Token::Word(w)) => Err(format!("{} is not supported", clean(w, 32).to_uppercase())),
        Some(t) => Err(format!("unexpected {t:?}")),
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Open,
    Close,
    LParen,
    RParen,
    Eq,
    /// Any other comparison operator (`!=`, `<`, `LIKE` is a word).
    Op(String),
    Str(String),
    Word(String),
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '[' => out.push(Token::Open),
            ']' => out.push(Token::Close),
            '(' => out.push(Token::LParen),
            ')' => out.push(Token::RParen),
            '=' => out.push(Token::Eq),
            '!' | '<' | '>' => {
                let mut op = c.to_string();
                if chars.peek() == Some(&'=') {
                    op.push(chars.next().unwrap_or('='));
                }
                out.push(Token::Op(op));
            }
            '\'' => {
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated string".into()),
                        Some('\\') => value.push(chars.next().ok_or("unterminated string")?),
                        Some('\'') => break,
                        Some(c) => value.push(c),
                    }
                }
                out.push(Token::Str(value));
            }
            c if c.is_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | '*') => {
                let mut word = c.to_string();
                while let Some(&n) = chars.peek() {
                    if !(n.is_alphanumeric() || matches!(n, '_' | '-' | ':' | '.' | '*')) {
                        break;
                    }
                    word.push(n);
                    chars.next();
                }
                out.push(Token::Word(word));
            }
            c => return Err(format!("unexpected character {c:?}")),
        }
        if out.len() > 4 * MAX_VALUES_PER_PATTERN {
            return Err("pattern too long".into());
        }
    }
    Ok(out)
}

struct PatternParser<'a> {
    tokens: &'a [Token],
    at: usize,
    out: Vec<String>,
    /// Open brackets and parentheses around the current position: the
    /// parser recurses once per level, so a hostile pattern of thousands
    /// of `(` would otherwise overflow the stack and abort the process.
    depth: usize,
}

/// Deepest nesting of `[`, `(` accepted in a pattern (real ones use 2-3).
const MAX_PATTERN_DEPTH: usize = 32;

impl PatternParser<'_> {
    fn next_is_or(&self) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w.eq_ignore_ascii_case("OR"))
    }

    /// `observation (OR observation)*`
    fn expression(&mut self) -> Result<(), String> {
        self.observation()?;
        while self.next_is_or() {
            self.at += 1;
            self.observation()?;
        }
        Ok(())
    }

    /// One level deeper, refused past [`MAX_PATTERN_DEPTH`].
    fn nest(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_PATTERN_DEPTH {
            return Err(format!("nested deeper than {MAX_PATTERN_DEPTH} levels"));
        }
        Ok(())
    }

    /// `[ comparisons ]` or `( expression )`
    fn observation(&mut self) -> Result<(), String> {
        self.nest()?;
        let result = self.observation_inner();
        self.depth -= 1;
        result
    }

    fn observation_inner(&mut self) -> Result<(), String> {
        match self.tokens.get(self.at) {
            Some(Token::Open) => {
                self.at += 1;
                self.comparisons()?;
                self.expect(Token::Close)
            }
            Some(Token::LParen) => {
                self.at += 1;
                self.expression()?;
                self.expect(Token::RParen)
            }
            _ => Err("expected an observation `[...]`".into()),
        }
    }

    /// `comparison (OR comparison)*`, inside one observation.
    fn comparisons(&mut self) -> Result<(), String> {
        self.comparison()?;
        while self.next_is_or() {
            self.at += 1;
            self.comparison()?;
        }
        match self.tokens.get(self.at) {
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("AND") => Err("AND is not supported".into()),
            _ => Ok(()),
        }
    }

    /// `object:path = 'value'` or `( comparisons )`.
    fn comparison(&mut self) -> Result<(), String> {
        if self.tokens.get(self.at) == Some(&Token::LParen) {
            self.at += 1;
            self.nest()?;
            let inner = self.comparisons();
            self.depth -= 1;
            inner?;
            return self.expect(Token::RParen);
        }
        let Some(Token::Word(path)) = self.tokens.get(self.at) else {
            return Err("expected `object:property`".into());
        };
        match self.tokens.get(self.at + 1) {
            Some(Token::Eq) => {}
            Some(Token::Op(op)) => return Err(format!("operator {op} is not supported")),
            Some(Token::Word(w)) => return Err(format!("operator {} is not supported", clean(w, 16).to_uppercase())),
            _ => return Err("expected `=`".into()),
        }
        let Some(Token::Str(value)) = self.tokens.get(self.at + 2) else {
            return Err("expected a quoted value".into());
        };
        self.at += 3;
        if self.out.len() >= MAX_VALUES_PER_PATTERN {
            return Err(format!("more than {MAX_VALUES_PER_PATTERN} observables"));
        }
        let value = value.trim();
        let observable = match path.as_str() {
            "ipv4-addr:value" | "ipv6-addr:value" => {
                let want_v4 = path.starts_with("ipv4");
                match parse_net(value) {
                    Some((net, _)) if matches!(net, crate::ti::index::Net::V4(..)) == want_v4 => value.to_string(),
                    _ => return Err(format!("{} is not an {}", clean(value, 64), &path[..9])),
                }
            }
            "domain-name:value" => domain(value)?,
            "url:value" => {
                let url = reqwest::Url::parse(value).map_err(|_| format!("{} is not a URL", clean(value, 64)))?;
                let host = url.host_str().ok_or("URL without a host")?;
                let bare = host.trim_start_matches('[').trim_end_matches(']');
                match bare.parse::<std::net::IpAddr>() {
                    Ok(ip) => ip.to_string(),
                    Err(_) => domain(host)?,
                }
            }
            other => return Err(format!("{} is not supported", clean(other, 64))),
        };
        self.out.push(observable);
        Ok(())
    }

    fn expect(&mut self, want: Token) -> Result<(), String> {
        if self.tokens.get(self.at) == Some(&want) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected {want:?}"))
        }
    }
}

fn domain(value: &str) -> Result<String, String> {
    let mut name = String::new();
    normalize_domain(value, false, &mut name).map_err(|e| format!("{}: {e}", clean(value, 64)))?;
    Ok(format!("domain:{name}"))
}

/// At most `max` bytes of `s` on one line (control characters to spaces).
pub(crate) fn clean(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// A CSV field, quoted when it must be (the loader reads `""` escapes).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
