//! Where in a TOML text something is: the one line-and-column helper that
//! every TOML file kuzet reads (the config, rule files, sim scenarios) uses
//! for its `file:line:col: reason` errors.

/// 1-based line and column of byte offset `at` in `text`.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    (line, col)
}

/// Where a TOML parse error points: its span's start, or 1:1 when it has
/// none.
pub fn error_at(text: &str, e: &toml::de::Error) -> (usize, usize) {
    e.span().map_or((1, 1), |s| line_col(text, s.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based_and_count_characters() {
        let t = "a = 1\nb = \"ü\"x\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        // "ü" is two bytes but one column.
        assert_eq!(line_col(t, 6 + 7), (2, 7));
        assert_eq!(line_col(t, 10_000), (3, 1));
        assert_eq!(line_col(t, 6 + 6), (2, 6), "inside a multi-byte char");
    }
}
