//! Writing SIP: a response built from the request it answers, and the
//! small pieces (a header line, a decimal, a hex word) every message kuzet
//! or its simulator writes is made of. The engine, the null responder and
//! the load driver all write through here, into buffers they reuse, so
//! nothing allocates per message.

use crate::syntax::{param, parse_name_addr};
use crate::{Hdr, Message};

/// Appends `name: value` and CRLF.
#[inline]
pub fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `v` in decimal.
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends `v` as 16 lowercase hex digits.
pub fn push_hex(out: &mut Vec<u8>, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize]);
    }
}

/// Whether a To (or From) value carries a tag.
pub fn has_tag(value: &[u8]) -> bool {
    parse_name_addr(value).is_ok_and(|n| param(n.params, b"tag").is_some())
}

/// Starts a response to `req` in `out` (cleared first): the status line,
/// then the request's Via headers, From, To, Call-ID and CSeq, as RFC 3261
/// section 8.2.6 asks. A To without a tag gets `;tag=` and whatever `tag`
/// writes, unless the code is 100. `to_tagged` says whether the To has a
/// tag when the caller already knows; `None` looks. The caller appends its
/// own headers, then [`end_empty`].
pub fn response(
    out: &mut Vec<u8>,
    req: &Message<'_>,
    code: u16,
    reason: &str,
    to_tagged: Option<bool>,
    tag: impl FnOnce(&mut Vec<u8>),
) {
    out.clear();
    out.extend_from_slice(b"SIP/2.0 ");
    push_u64(out, u64::from(code));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for via in req.all(Hdr::Via) {
        header(out, b"Via", via);
    }
    if let Some(v) = req.header(Hdr::From) {
        header(out, b"From", v);
    }
    if let Some(to) = req.header(Hdr::To) {
        out.extend_from_slice(b"To: ");
        out.extend_from_slice(to);
        if code > 100 && !to_tagged.unwrap_or_else(|| has_tag(to)) {
            out.extend_from_slice(b";tag=");
            tag(out);
        }
        out.extend_from_slice(b"\r\n");
    }
    if let Some(v) = req.header(Hdr::CallId) {
        header(out, b"Call-ID", v);
    }
    if let Some(v) = req.header(Hdr::CSeq) {
        header(out, b"CSeq", v);
    }
}

/// Ends a message that has no body.
#[inline]
pub fn end_empty(out: &mut Vec<u8>) {
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse, Transport};

    #[test]
    fn a_response_echoes_what_the_client_matches_on() {
        let req = b"INVITE sip:b@x SIP/2.0\r\nv: SIP/2.0/UDP h1;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP h0;branch=z9hG4bK0\r\nf: <sip:a@x>;tag=9\r\nt: <sip:b@x>\r\ni: id1\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n";
        let m = parse(req, Transport::Datagram).unwrap();
        let mut out = b"junk".to_vec();
        response(&mut out, &m, 302, "Moved Temporarily", None, |o| {
            o.extend_from_slice(b"x1")
        });
        header(&mut out, b"Contact", b"<sip:b@x>");
        end_empty(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "SIP/2.0 302 Moved Temporarily\r\nVia: SIP/2.0/UDP h1;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP h0;branch=z9hG4bK0\r\nFrom: <sip:a@x>;tag=9\r\nTo: <sip:b@x>;tag=x1\r\nCall-ID: id1\r\nCSeq: 7 INVITE\r\nContact: <sip:b@x>\r\nContent-Length: 0\r\n\r\n"
        );
        // A tagged To keeps its tag; a 100 never gets one.
        let mut out = Vec::new();
        response(&mut out, &m, 100, "Trying", None, |o| o.push(b'!'));
        assert!(!out.contains(&b'!'));
        let mut v = Vec::new();
        push_u64(&mut v, 0);
        v.push(b' ');
        push_u64(&mut v, u64::MAX);
        v.push(b' ');
        push_hex(&mut v, 0xab);
        assert_eq!(v, b"0 18446744073709551615 00000000000000ab");
        assert!(has_tag(b"<sip:b@x>;tag=1") && !has_tag(b"<sip:b@x>"));
    }
}
