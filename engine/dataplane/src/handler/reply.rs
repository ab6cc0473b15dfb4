//! Writing responses: the status line, the request's Via, From, To (with a
//! stateless To-tag), Call-ID and CSeq, extra headers, an empty body; the
//! blocked-call answer with its Reason; the verdict header.

use super::*;

impl Handler {
    pub(super) fn reply_blocked(
        &self,
        m: &Message<'_>,
        c: &Checked<'_>,
        v: &Judged<'_>,
        out: &mut Vec<u8>,
    ) {
        let reason = match self.block_code {
            403 => "Forbidden",
            607 => "Unwanted",
            _ => "Decline",
        };
        self.reply(m, Some(c), self.block_code, reason, out, |o| {
            o.extend_from_slice(b"Reason: Q.850;cause=21;text=\"");
            let rule = match v {
                Judged::Lists(v) => v.rule.as_str(),
                Judged::Rules(s, r, _) => s
                    .fired()
                    .iter()
                    .find(|f| !f.shadow)
                    .and_then(|f| r.rules.get(usize::from(f.rule)))
                    .map_or("rules", |r| &*r.id),
            };
            o.extend_from_slice(rule.as_bytes());
            o.extend_from_slice(b"\"\r\n");
            verdict_header(o, v);
        });
    }

    /// Writes a response to `m`: status line, the request's Via, From, To
    /// (with a stateless To-tag), Call-ID and CSeq, the extra headers, and
    /// an empty body.
    pub(super) fn reply(
        &self,
        m: &Message<'_>,
        c: Option<&Checked<'_>>,
        code: u16,
        reason: &str,
        out: &mut Vec<u8>,
        extra: impl FnOnce(&mut Vec<u8>),
    ) {
        out.clear();
        out.extend_from_slice(b"SIP/2.0 ");
        push_u64(out, u64::from(code));
        out.push(b' ');
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        for via in m.all(Hdr::Via) {
            header(out, b"Via", via);
        }
        if let Some(v) = m.header(Hdr::From) {
            header(out, b"From", v);
        }
        if let Some(to) = m.header(Hdr::To) {
            out.extend_from_slice(b"To: ");
            out.extend_from_slice(to);
            let has_tag = match c {
                Some(c) => param(c.to.params, b"tag").is_some(),
                None => parse_name_addr(to).is_ok_and(|n| param(n.params, b"tag").is_some()),
            };
            if !has_tag && code > 100 {
                out.extend_from_slice(b";tag=kz");
                let mut h = Fnv::default();
                h.write(m.header(Hdr::CallId).unwrap_or_default());
                h.write(m.header(Hdr::From).unwrap_or_default());
                push_hex(out, h.finish());
            }
            out.extend_from_slice(b"\r\n");
        }
        if let Some(v) = m.header(Hdr::CallId) {
            header(out, b"Call-ID", v);
        }
        if let Some(v) = m.header(Hdr::CSeq) {
            header(out, b"CSeq", v);
        }
        extra(out);
        out.extend_from_slice(b"Server: kuzet\r\nContent-Length: 0\r\n\r\n");
    }
}

/// `fmt::Write` into a byte buffer, so explanations are written in place.
pub(super) struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        // A quote would end the header's quoted string early.
        self.0
            .extend(s.bytes().map(|b| if b == b'"' { b'\'' } else { b }));
        Ok(())
    }
}

pub(super) fn verdict_header(out: &mut Vec<u8>, j: &Judged<'_>) {
    let v = match j {
        Judged::Lists(v) => v,
        Judged::Rules(s, r, _) => {
            out.extend_from_slice(b"X-Kuzet-Verdict: ");
            out.extend_from_slice(s.decision.as_str().as_bytes());
            if !s.fired().is_empty() {
                out.extend_from_slice(b";score=");
                push_u64(out, u64::from(s.score));
                out.extend_from_slice(b";rules=\"");
                let _ = r.explain(s, &mut ByteWriter(out));
                out.push(b'"');
            }
            out.extend_from_slice(b"\r\n");
            return;
        }
    };
    out.extend_from_slice(b"X-Kuzet-Verdict: ");
    out.extend_from_slice(v.action.as_str().as_bytes());
    if v.action != Action::Allow || v.hit.is_some() {
        out.extend_from_slice(b";score=");
        push_u64(out, u64::from(v.score));
        out.extend_from_slice(b";rule=");
        out.extend_from_slice(v.rule.as_str().as_bytes());
        if let Some(side) = v.side {
            out.extend_from_slice(b";side=");
            out.extend_from_slice(side.as_str().as_bytes());
        }
        if let Some(hit) = v.hit {
            if !hit.reason.is_empty() {
                out.extend_from_slice(b";reason=\"");
                out.extend_from_slice(hit.reason.as_bytes());
                out.push(b'"');
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

pub(super) fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub(super) fn push_hex(out: &mut Vec<u8>, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize]);
    }
}

/// Where `inner` starts within `outer`, when it is a sub-slice of it.
pub(super) fn offset_in(outer: &[u8], inner: &[u8]) -> Option<usize> {
    let o = outer.as_ptr() as usize;
    let i = inner.as_ptr() as usize;
    (i >= o && i + inner.len() <= o + outer.len()).then(|| i - o)
}
