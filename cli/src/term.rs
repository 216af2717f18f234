//! Text from nodes and the coordinator, made safe for the operator's terminal.
//!
//! A node controls much of what admin commands print: its OS and kernel strings,
//! versions, errors, condition and event messages. Printed as they are, an ANSI
//! escape in one of them could recolour, move the cursor, retitle the window or
//! hide lines, and a carriage return could overwrite what a line says. Human
//! output therefore escapes every control character (C0, DEL, C1) and the
//! Unicode direction overrides that reorder what is shown; JSON output is
//! escaped by serde already.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Characters that change how a terminal shows text rather than being text.
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every unsafe character written as a Rust-style escape (`\u{1b}`,
/// `\r`, `\n`, `\t`): visible, and unambiguous. Borrowed when there is none.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`printable`] line by line: keeps the line breaks of a message that has
/// several lines (errors), escapes everything else.
pub fn printable_lines(s: &str) -> String {
    s.split('\n').map(printable).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_strings_are_escaped_and_plain_ones_untouched() {
        let hostile = "Debian 12\x1b]0;pwned\x07\x1b[2J\rok\u{9b}31m\u{202e}gpj.exe\u{7f}";
        let shown = printable(hostile);
        assert!(!shown.chars().any(unsafe_char), "{shown:?}");
        assert_eq!(shown, "Debian 12\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\rok\\u{9b}31m\\u{202e}gpj.exe\\u{7f}");
        assert!(matches!(printable("Linux 6.1.0-18-amd64 — ünïcode ok"), Cow::Borrowed(_)));
        assert_eq!(printable("a\nb\tc"), "a\\nb\\tc");
        assert_eq!(printable_lines("one\r\ntwo\x1b"), "one\\r\ntwo\\u{1b}");
    }
}
