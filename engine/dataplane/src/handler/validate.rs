//! Validation: the RFC 3261 checks (section 8.2 for a UAS, 16.3 for a
//! proxy) in the order RFC 4475 expects, and the pieces of the request they
//! decode, kept so that nothing is decoded twice on the call path.

use super::*;

/// A request refused before scoring: the code and reason phrase to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The status code.
    pub code: u16,
    /// The reason phrase, naming what is wrong.
    pub reason: &'static str,
}

pub(super) const fn reject(code: u16, reason: &'static str) -> Reject {
    Reject { code, reason }
}

/// The pieces of a request that validation decoded and later steps reuse,
/// so nothing on the call path is decoded twice.
pub(super) struct Checked<'a> {
    pub(super) to: NameAddr<'a>,
    pub(super) ruri: Uri<'a>,
    pub(super) max_forwards: Option<u32>,
}

/// Whether a response makes sense: it needs a Via to echo. Responses go
/// back to the source address, so even a malformed Via (RFC 4475
/// badinv01) can be answered; whatever else is missing is left out.
pub(super) fn can_answer(m: &Message<'_>) -> bool {
    m.header(Hdr::Via).is_some()
}

/// RFC 3261 section 8.2 and 16.3 checks, in the order RFC 4475 expects.
pub(super) fn check_request<'a>(m: &Message<'a>, mode: Mode) -> Result<Checked<'a>, Reject> {
    if let Some(d) = m.defect() {
        return Err(reject(400, d.reason()));
    }
    if m.version() != b"SIP/2.0" {
        return Err(reject(505, "Version Not Supported"));
    }
    for (h, name) in [
        (Hdr::Via, "Missing Via"),
        (Hdr::From, "Missing From"),
        (Hdr::To, "Missing To"),
        (Hdr::CallId, "Missing Call-ID"),
        (Hdr::CSeq, "Missing CSeq"),
    ] {
        if m.header(h).is_none() {
            return Err(reject(400, name));
        }
    }
    for (h, name) in [
        (Hdr::From, "Multiple From"),
        (Hdr::To, "Multiple To"),
        (Hdr::CallId, "Multiple Call-ID"),
        (Hdr::CSeq, "Multiple CSeq"),
        (Hdr::MaxForwards, "Multiple Max-Forwards"),
    ] {
        if m.count(h) > 1 {
            return Err(reject(400, name));
        }
    }
    let (_, cseq_method) =
        parse_cseq(m.header(Hdr::CSeq).unwrap_or_default()).map_err(|_| reject(400, "Bad CSeq"))?;
    if cseq_method != m.method() {
        return Err(reject(400, "CSeq Method Mismatch"));
    }
    let max_forwards = match m.header(Hdr::MaxForwards) {
        None => None,
        Some(v) => match kuzet_sip::parse_u32(v) {
            Some(n) if n <= 255 => Some(n),
            _ => return Err(reject(400, "Bad Max-Forwards")),
        },
    };
    parse_via(
        split_values(m.header(Hdr::Via).unwrap_or_default())
            .next()
            .unwrap_or_default(),
    )
    .map_err(|_| reject(400, "Bad Via"))?;
    parse_name_addr(m.header(Hdr::From).unwrap_or_default())
        .map_err(|_| reject(400, "Bad From"))?;
    let to = parse_name_addr(m.header(Hdr::To).unwrap_or_default())
        .map_err(|_| reject(400, "Bad To"))?;
    for line in m.all(Hdr::Contact) {
        for v in split_values(line) {
            if v != b"*" {
                parse_name_addr(v).map_err(|_| reject(400, "Bad Contact"))?;
            }
        }
    }
    let ruri = parse_uri(m.request_uri()).map_err(|_| reject(400, "Bad Request-URI"))?;
    match ruri.scheme {
        Scheme::Sip | Scheme::Sips | Scheme::Tel => {}
        Scheme::Other => return Err(reject(416, "Unsupported URI Scheme")),
    }
    if !ruri.headers.is_empty() {
        return Err(reject(400, "Headers Not Allowed In Request-URI"));
    }
    let require = match mode {
        Mode::Redirect => Hdr::Require,
        Mode::Proxy => Hdr::ProxyRequire,
    };
    if m.method() != b"ACK" && m.method() != b"CANCEL" && m.header(require).is_some() {
        return Err(reject(420, "Bad Extension"));
    }
    Ok(Checked {
        to,
        ruri,
        max_forwards,
    })
}

pub(super) fn unsupported_header(m: &Message<'_>, out: &mut Vec<u8>) {
    for h in [Hdr::Require, Hdr::ProxyRequire] {
        for line in m.all(h) {
            write::header(out, b"Unsupported", line);
        }
    }
}
