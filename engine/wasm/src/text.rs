//! Guest-controlled text on its way to logs, errors and the API.
//!
//! A module decides the bytes of its log messages, and of the names in its
//! import, export and name sections, which wasmtime and wasmparser quote in
//! their errors (and backtraces). Everything of that kind is escaped (no
//! line break, terminal escape or bidi override reaches a log line or a
//! terminal) and bounded in length before the host logs, stores or serves
//! it.

use std::fmt::Write;

/// Longest error text the host keeps or serves about a module (load
/// errors, instantiation failures), in bytes.
pub(crate) const MAX_ERROR_TEXT: usize = 300;

/// Longest guest-chosen name quoted inside an error, in bytes.
pub(crate) const MAX_NAME: usize = 64;

/// Characters written as `\u{..}`: C0/C1 controls and DEL (line breaks,
/// terminal escapes), Unicode line and paragraph separators, and bidi
/// controls (which reorder what a terminal or a page shows).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `text` on one line, control characters escaped (`\n`, `\u{1b}`, ...;
/// a backslash doubled, so an escape cannot be forged either), cut to at
/// most `max` bytes on a character boundary, with `…` when cut.
pub(crate) fn escape(text: &str, max: usize) -> String {
    const MORE: &str = "…";
    let mut out = String::with_capacity(text.len().min(max));
    let mut piece = String::new();
    // Where to cut if the text turns out too long: the last piece boundary
    // that leaves room for `MORE` (never inside an escape).
    let mut cut = 0;
    for c in text.chars() {
        piece.clear();
        match c {
            '\\' => piece.push_str("\\\\"),
            '\n' => piece.push_str("\\n"),
            '\r' => piece.push_str("\\r"),
            '\t' => piece.push_str("\\t"),
            c if needs_escape(c) => write!(piece, "\\u{{{:x}}}", c as u32).expect("writing to a String"),
            c => piece.push(c),
        }
        if out.len() + MORE.len() <= max {
            cut = out.len();
        }
        if out.len() + piece.len() > max {
            out.truncate(cut);
            out.push_str(MORE);
            return out;
        }
        out.push_str(&piece);
    }
    out
}

/// `text` cut to at most `max` bytes on a character boundary (with `…`
/// when cut), not escaped: for names quoted in an error that is escaped
/// as a whole (`error_text`).
pub(crate) fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// An error about a module, as the host logs, stores and serves it.
pub(crate) fn error_text(e: &anyhow::Error) -> String {
    escape(&format!("{e:#}"), MAX_ERROR_TEXT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_and_escapes_cannot_forge_a_line() {
        let forged = "ok\n2026-01-01T00:00:00Z ERROR enrichd: forged\r\u{1b}[2K\u{85}\u{2028}\u{202e}x\\n";
        let e = escape(forged, 1000);
        assert!(!e.chars().any(needs_escape), "{e}");
        assert_eq!(e, "ok\\n2026-01-01T00:00:00Z ERROR enrichd: forged\\r\\u{1b}[2K\\u{85}\\u{2028}\\u{202e}x\\\\n");
        assert_eq!(escape("plain text, ünïcödé", 100), "plain text, ünïcödé");
    }

    #[test]
    fn bounded_on_a_character_boundary() {
        let long = "é".repeat(1000);
        let e = escape(&long, 301);
        assert!(e.len() <= 301 && e.ends_with('…'), "{}", e.len());
        assert_eq!(escape("\n\n\n", 5), "\\n…");
        assert_eq!(escape("abc", 3), "abc");
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("aééé", 5), "a…");
    }
}
