//! Numbers: the A-number from P-Asserted-Identity or From (in the
//! configured order) and the B-number from the Request-URI, normalized by
//! the numbering plan. A number that does not normalize is `None`, a
//! scoring fact.

use super::*;

impl Handler {
    /// The number in the first `hdr` header that has one, and whether any
    /// such header claimed a number (a user part starting with '+' or a
    /// digit) at all: a claimed number that does not normalize is invalid.
    pub(super) fn header_number(&self, m: &Message<'_>, hdr: Hdr) -> (Option<Number>, bool) {
        let mut claimed = false;
        for line in m.all(hdr) {
            for value in split_values(line) {
                let Ok(na) = parse_name_addr(value) else {
                    continue;
                };
                let Ok(uri) = parse_uri(na.uri) else { continue };
                let Some(user) = uri.user else { continue };
                claimed |= user
                    .first()
                    .is_some_and(|b| *b == b'+' || b.is_ascii_digit());
                if let Some(n) = uri.user_number().and_then(|d| self.plan.normalize(d)) {
                    return (Some(n), true);
                }
            }
        }
        (None, claimed)
    }

    /// The A-number, from the sources in configured order.
    pub fn a_number(&self, m: &Message<'_>) -> Option<Number> {
        self.a_order.iter().find_map(|src| {
            let hdr = match src {
                NumberSource::Pai => Hdr::PAssertedIdentity,
                NumberSource::From => Hdr::From,
            };
            self.header_number(m, hdr).0
        })
    }

    /// The B-number, from the Request-URI.
    pub fn b_number(&self, m: &Message<'_>) -> Option<Number> {
        self.number_of_uri(&parse_uri(m.request_uri()).ok()?)
    }

    pub(super) fn number_of_uri(&self, uri: &Uri<'_>) -> Option<Number> {
        self.plan.normalize(uri.user_number()?)
    }
}
