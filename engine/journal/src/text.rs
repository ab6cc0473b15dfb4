//! Text as kuzet prints it for a person: whatever came from the network
//! or a file (numbers, source addresses, trunk names, rule ids) escaped,
//! so no report can carry a terminal escape, a line break or a
//! bidirectional override into someone's terminal.

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
