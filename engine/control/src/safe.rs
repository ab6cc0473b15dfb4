//! Text that is safe to show a person: what a caller or peer sent (a
//! Call-ID, a display name, a register's error text) can neither move a
//! terminal's cursor, set its title, forge a line nor start a formula.
//!
//! [`visible`] writes every control character as a visible escape: C0
//! (TAB, CR and LF included), DEL, C1, the Unicode line and paragraph
//! separators and the bidirectional overrides (which can reorder what a
//! line appears to say). ESC is escaped itself, so no escape sequence
//! survives. A backslash is doubled, so `\x1b` typed by a caller reads
//! differently from an escaped ESC. [`csv_cell`] neutralises a spreadsheet
//! formula (OWASP's advice: a cell that starts with `=`, `+`, `-`, `@`,
//! TAB or CR gets a leading `'`) and then quotes the cell as CSV needs.
//! [`json_line`] escapes DEL and C1 in JSON text, which JSON allows raw.

use std::borrow::Cow;
use std::fmt::Write as _;

/// True for a character [`visible`] escapes.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `s` with every control character written as a visible escape: `\t`,
/// `\r`, `\n`, `\x1b`, `\u{9b}`, and `\\` for a backslash. Borrowed when
/// there is nothing to escape.
pub fn visible(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x80 && is_hidden(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_hidden(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Bytes as text (invalid UTF-8 shown as U+FFFD), then [`visible`].
pub fn visible_bytes(b: &[u8]) -> String {
    visible(&String::from_utf8_lossy(b)).into_owned()
}

/// One CSV cell: a formula is neutralised with a leading `'`, control
/// characters are escaped ([`visible`]), and the cell is quoted when it
/// holds a comma, a quote or surrounding spaces.
pub fn csv_cell(s: &str) -> String {
    // Some spreadsheets skip leading spaces before they look for a
    // formula: so does this check.
    let formula = matches!(
        s.trim_start_matches(' ').chars().next(),
        Some('=' | '+' | '-' | '@' | '\t' | '\r')
    );
    let mut cell = String::with_capacity(s.len() + 2);
    if formula {
        cell.push('\'');
    }
    cell.push_str(&visible(s));
    if cell.contains([',', '"']) || cell.starts_with(' ') || cell.ends_with(' ') {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell
    }
}

/// A serialized JSON value with DEL and the C1 controls escaped as
/// `\u00XX` (JSON escapes C0 itself, and these are legal raw): a line a
/// terminal can show as it is.
pub fn json_line(v: &serde_json::Value) -> String {
    let s = v.to_string();
    // JSON escapes C0, the quote and the backslash itself; what it leaves
    // raw and a terminal would act on is DEL, C1, the line separators and
    // the direction overrides.
    let raw = |c: char| c == '\u{7f}' || (is_hidden(c) && !c.is_ascii());
    if !s.chars().any(raw) {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if raw(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// A writer for the text log: every control byte of a log line but its
/// final newline is escaped ([`visible`]), so no value in any line (a
/// file name, a peer's error text) can forge another line or drive the
/// terminal. One call is one line: the log formatter writes each event
/// whole.
pub struct SafeLines<W>(pub W);

impl<W: std::io::Write> std::io::Write for SafeLines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, nl) = match buf.strip_suffix(b"\n") {
            Some(b) => (b, true),
            None => (buf, false),
        };
        let text = String::from_utf8_lossy(body);
        let mut line = visible(&text).into_owned();
        if nl {
            line.push('\n');
        }
        self.0.write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible_escapes() {
        assert_eq!(visible("+77011234567"), "+77011234567");
        assert!(matches!(visible("plain"), Cow::Borrowed(_)));
        assert_eq!(
            visible("a\u{1b}]0;owned\u{7}b\r\ncaller +7"),
            "a\\x1b]0;owned\\x07b\\r\\ncaller +7"
        );
        assert_eq!(visible("\u{9b}31m\u{7f}"), "\\u{9b}31m\\x7f");
        assert_eq!(visible("x\u{202e}gnp.exe"), "x\\u{202e}gnp.exe");
        assert_eq!(visible("\\x1b"), "\\\\x1b");
        assert_eq!(visible("tab\there"), "tab\\there");
        assert_eq!(visible_bytes(b"\xff\x1b"), "\u{fffd}\\x1b");
    }

    #[test]
    fn csv_cells_never_start_a_formula() {
        for (raw, cell) in [
            ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
            ("@SUM(1+1)", "'@SUM(1+1)"),
            (
                "+HYPERLINK(\"http://x\")",
                "\"'+HYPERLINK(\"\"http://x\"\")\"",
            ),
            ("-2+3", "'-2+3"),
            ("\tx", "'\\tx"),
            ("\r=1", "'\\r=1"),
            ("a,b", "\"a,b\""),
            ("  =1+1", "'  =1+1"),
            ("plain", "plain"),
            ("+77011234567", "'+77011234567"),
        ] {
            assert_eq!(csv_cell(raw), cell, "{raw:?}");
        }
    }

    #[test]
    fn json_lines_escape_what_json_leaves_raw() {
        let v = serde_json::json!({"c": "a\u{9b}b\u{7f}\u{1b}\u{202e}\u{2028}"});
        assert_eq!(json_line(&v), r#"{"c":"a\u009bb\u007f\u001b\u202e\u2028"}"#);
    }

    #[test]
    fn log_lines_keep_one_newline_and_escape_the_rest() {
        use std::io::Write as _;
        let mut w = SafeLines(Vec::new());
        w.write_all(b"INFO verdict call_id=x\r\nINFO forged\x1b[2J\n")
            .unwrap();
        assert_eq!(
            String::from_utf8(w.0).unwrap(),
            "INFO verdict call_id=x\\r\\nINFO forged\\x1b[2J\n"
        );
    }
}
