//! Numbers: the A-number from P-Asserted-Identity or From (in the
//! configured order) and the B-number from the Request-URI, normalized by
//! the numbering plan. A number that does not normalize is `None`, a
//! scoring fact.

use super::*;

/// What one identity header claims.
#[derive(Clone, Copy, Default)]
pub(super) struct Claim {
    /// The first number in its URIs.
    pub(super) number: Option<Number>,
    /// Some URI user part looked like a number (`+` or a digit first),
    /// whether or not it normalized.
    pub(super) claimed: bool,
    /// The digits of its display name, when they are a number.
    pub(super) display: Option<Number>,
}

impl Handler {
    /// The number in the first `hdr` header that has one, and whether any
    /// such header claimed a number (a user part starting with '+' or a
    /// digit) at all: a claimed number that does not normalize is invalid.
    pub(super) fn header_number(&self, m: &Message<'_>, hdr: Hdr) -> (Option<Number>, bool) {
        let c = self.claim(m, hdr, false);
        (c.number, c.claimed)
    }

    /// What `hdr` claims; with `display`, the display name's digits too.
    pub(super) fn claim(&self, m: &Message<'_>, hdr: Hdr, display: bool) -> Claim {
        let mut c = Claim::default();
        for line in m.all(hdr) {
            for value in split_values(line) {
                let Ok(na) = parse_name_addr(value) else {
                    continue;
                };
                if display && c.display.is_none() {
                    let d = kuzet_sip::syntax::trim_lws(na.display);
                    let d = d
                        .strip_prefix(b"\"")
                        .and_then(|d| d.strip_suffix(b"\""))
                        .unwrap_or(d);
                    if d.first().is_some_and(|b| *b == b'+' || b.is_ascii_digit()) {
                        c.display = self.plan.normalize(d);
                    }
                }
                let Ok(uri) = parse_uri(na.uri) else { continue };
                let Some(user) = uri.user else { continue };
                c.claimed |= user
                    .first()
                    .is_some_and(|b| *b == b'+' || b.is_ascii_digit());
                if c.number.is_none() {
                    c.number = uri.user_number().and_then(|d| self.plan.normalize(d));
                }
                if c.number.is_some() && (!display || c.display.is_some()) {
                    return c;
                }
            }
        }
        c
    }

    /// The A-number, from the sources in configured order.
    pub fn a_number(&self, m: &Message<'_>) -> Option<Number> {
        self.a_number_from(m).map(|(n, _)| n)
    }

    /// The A-number and the header it came from.
    pub(super) fn a_number_from(&self, m: &Message<'_>) -> Option<(Number, NumberSource)> {
        self.a_order.iter().find_map(|src| {
            let hdr = match src {
                NumberSource::Pai => Hdr::PAssertedIdentity,
                NumberSource::From => Hdr::From,
            };
            self.header_number(m, hdr).0.map(|n| (n, *src))
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
