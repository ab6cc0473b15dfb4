//! Text as kuzet prints it for a person: whatever came from the network
//! or a file (numbers, source addresses, trunk names, rule ids) escaped,
//! so no report can carry a terminal escape, a line break or a
//! bidirectional override into someone's terminal; and times as they are
//! printed.

use std::fmt::{self, Write};

/// Text as it may be shown: printable ASCII as it is, a backslash and
/// everything else (control characters, escape sequences, invisible or
/// bidirectional Unicode) as `char::escape_default` writes it.
pub struct Safe<'a>(pub &'a str);

impl fmt::Display for Safe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c == ' ' || (c.is_ascii_graphic() && c != '\\') {
                f.write_char(c)?;
            } else {
                write!(f, "{}", c.escape_default())?;
            }
        }
        Ok(())
    }
}

/// µs since the epoch as `2025-01-31T23:59:59Z`, clamped to 1970 .. 2100
/// (an open window's end is `i64::MAX`).
pub struct Utc(pub i64);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const Y2100_US: i64 = 4_102_444_800_000_000;
        let us = self.0.clamp(0, Y2100_US) as u64;
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us);
        write!(f, "{}", humantime::format_rfc3339_seconds(t))
    }
}
