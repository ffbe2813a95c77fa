//! Text a task wrote, made safe to print on an operator's terminal.
//!
//! A task's summary, errors, log lines and `describe()` fields are whatever
//! its author chose, escape sequences included: printed raw they can clear
//! the screen, retitle the window, hide lines (`\r`) or reorder text (bidi
//! overrides, invisible characters). Every control character (C0, DEL, C1),
//! every Unicode format character (general category Cf) and every
//! default-ignorable code point (what a terminal draws as nothing) is shown
//! as an escape (`\x1b`, `\u{202e}`) instead.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` on one line: line breaks are escaped too.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_with(text, false)
}

/// `text` with its line breaks kept (and every other control escaped).
pub fn escape_lines(text: &str) -> Cow<'_, str> {
    escape_with(text, true)
}

fn escape_with(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| (c != '\n' || !keep_newlines) && c != '\t' && needs_escape(c);
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// Controls; Unicode's format characters (general category Cf: bidi marks,
/// embeddings, overrides and isolates, zero-width joiners and spaces, the
/// soft hyphen, invisible operators, tags, interlinear annotations,
/// prepended concatenation marks); and the other default-ignorable code
/// points, which render as nothing (variation selectors, the combining
/// grapheme joiner, Hangul fillers, Khmer inherent vowels, Mongolian
/// selectors, musical formatting marks). Unicode 16's lists.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{034f}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061c}'
                | '\u{06dd}'
                | '\u{070f}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08e2}'
                | '\u{115f}'..='\u{1160}'
                | '\u{17b4}'..='\u{17b5}'
                | '\u{180b}'..='\u{180f}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{3164}'
                | '\u{fe00}'..='\u{fe0f}'
                | '\u{feff}'
                | '\u{ffa0}'
                | '\u{fff0}'..='\u{fffb}'
                | '\u{110bd}'
                | '\u{110cd}'
                | '\u{13430}'..='\u{1343f}'
                | '\u{1bca0}'..='\u{1bca3}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0000}'..='\u{e0fff}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched() {
        for text in [
            "",
            "deleted 42 files",
            "Größe: 3 MiB — ok",
            "tab\tseparated",
        ] {
            assert!(matches!(escape(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn every_control_character_is_shown_not_sent() {
        for code in (0u32..0x20).chain(0x7f..0xa0) {
            let c = char::from_u32(code).unwrap();
            if c == '\t' {
                continue;
            }
            let text = format!("a{c}b");
            let shown = escape(&text);
            assert!(!shown.contains(c), "{code:#x} -> {shown:?}");
            assert!(shown.chars().all(|c| !c.is_control()), "{code:#x}");
        }
        assert_eq!(
            escape("\x1b[2J\x1b]0;owned\x07"),
            "\\x1b[2J\\x1b]0;owned\\x07"
        );
        assert_eq!(escape("over\rwrite"), "over\\x0dwrite");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
    }

    #[test]
    fn bidi_overrides_are_shown() {
        assert_eq!(escape("a\u{202e}b\u{2066}c"), "a\\u{202e}b\\u{2066}c");
    }

    #[test]
    fn every_invisible_formatting_character_is_shown() {
        for c in [
            '\u{061c}',
            '\u{180e}',
            '\u{200b}',
            '\u{200c}',
            '\u{200d}',
            '\u{200e}',
            '\u{200f}',
            '\u{2028}',
            '\u{2029}',
            '\u{202a}',
            '\u{202b}',
            '\u{202c}',
            '\u{202d}',
            '\u{202e}',
            '\u{2060}',
            '\u{2061}',
            '\u{2062}',
            '\u{2063}',
            '\u{2064}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{206a}',
            '\u{206f}',
            '\u{feff}',
            '\u{fff9}',
            '\u{fffa}',
            '\u{fffb}',
            '\u{00ad}',
            '\u{034f}',
            '\u{0600}',
            '\u{06dd}',
            '\u{115f}',
            '\u{1160}',
            '\u{17b4}',
            '\u{180b}',
            '\u{3164}',
            '\u{fe0f}',
            '\u{ffa0}',
            '\u{110bd}',
            '\u{13430}',
            '\u{1bca0}',
            '\u{1d173}',
            '\u{e0001}',
            '\u{e0041}',
            '\u{e007f}',
            '\u{e01ef}',
        ] {
            let text = format!("a{c}b");
            let shown = escape_lines(&text);
            assert!(!shown.contains(c), "{:x}", c as u32);
            assert_eq!(shown, format!("a\\u{{{:x}}}b", c as u32));
        }
    }

    #[test]
    fn line_breaks_are_kept_only_where_asked() {
        assert_eq!(escape("a\nb"), "a\\x0ab");
        assert_eq!(escape_lines("a\nb\x1b"), "a\nb\\x1b");
    }
}
