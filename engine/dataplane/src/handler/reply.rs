//! Writing responses through the SIP crate's one response writer: the
//! status line and the request's Via, From, To (with a stateless To-tag),
//! Call-ID and CSeq, then extra headers and an empty body; the blocked-call
//! answer with its Reason; the verdict header.

use super::*;

/// What kuzet serves, in every `Allow` header it writes.
pub(super) const ALLOW: &[u8] = b"Allow: INVITE, ACK, OPTIONS, PUBLISH\r\n";

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
            // 603+ (ATIS-1000099): the text carries what a wrongly blocked
            // caller needs to seek redress, the verdict id and where.
            o.extend_from_slice(b"Reason: Q.850;cause=21;text=\"");
            o.extend_from_slice(v.first_rule().as_bytes());
            if let Some(id) = v.public {
                o.extend_from_slice(b"; verdict ");
                id.write_to(o);
            }
            o.extend_from_slice(&self.appeal);
            o.extend_from_slice(b"\"\r\n");
            verdict_header(o, v);
        });
    }

    /// Writes a response to `m`: the head from the request, the extra
    /// headers, `Server`, and an empty body. The To-tag is a hash of the
    /// Call-ID and From, so a retransmitted request gets the same tag.
    pub(super) fn reply(
        &self,
        m: &Message<'_>,
        c: Option<&Checked<'_>>,
        code: u16,
        reason: &str,
        out: &mut Vec<u8>,
        extra: impl FnOnce(&mut Vec<u8>),
    ) {
        self.reply_bare(m, c, code, reason, out, |o| {
            extra(o);
            o.extend_from_slice(b"Server: kuzet\r\n");
        });
    }

    /// [`reply`](Self::reply) without the `Server` header: only what RFC
    /// 3261 requires and `extra`.
    pub(super) fn reply_bare(
        &self,
        m: &Message<'_>,
        c: Option<&Checked<'_>>,
        code: u16,
        reason: &str,
        out: &mut Vec<u8>,
        extra: impl FnOnce(&mut Vec<u8>),
    ) {
        let tagged = c.map(|c| param(c.to.params, b"tag").is_some());
        write::response(out, m, code, reason, tagged, |o| {
            o.extend_from_slice(b"kz");
            let mut h = Fnv::default();
            h.write(m.header(Hdr::CallId).unwrap_or_default());
            h.write(m.header(Hdr::From).unwrap_or_default());
            write::push_hex(o, h.finish());
        });
        extra(out);
        write::end_empty(out);
    }
}

/// `fmt::Write` into a byte buffer, so explanations are written in place.
pub(super) struct ByteWriter<'a>(pub(super) &'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        // A quote would end the header's quoted string early.
        self.0
            .extend(s.bytes().map(|b| if b == b'"' { b'\'' } else { b }));
        Ok(())
    }
}

/// `X-Kuzet-Verdict: DECISION[;score=N;rules="EXPLANATION"][;verdict=ID]`:
/// one format for every verdict, lists and behaviour rules alike; a
/// redirect carries its verdict id, so the desk it reaches can look the
/// call up.
pub(super) fn verdict_header(out: &mut Vec<u8>, v: &Judged<'_>) {
    let s = &v.scored;
    out.extend_from_slice(b"X-Kuzet-Verdict: ");
    out.extend_from_slice(s.decision.as_str().as_bytes());
    if !s.fired().is_empty() {
        out.extend_from_slice(b";score=");
        push_u64(out, u64::from(s.score));
        out.extend_from_slice(b";rules=\"");
        let _ = v.set.explain(s, &mut ByteWriter(out));
        out.push(b'"');
    }
    if let (Decision::Redirect, Some(id)) = (s.decision, v.public) {
        out.extend_from_slice(b";verdict=");
        id.write_to(out);
    }
    out.extend_from_slice(b"\r\n");
}

/// Where `inner` starts within `outer`, when it is a sub-slice of it.
pub(super) fn offset_in(outer: &[u8], inner: &[u8]) -> Option<usize> {
    let o = outer.as_ptr() as usize;
    let i = inner.as_ptr() as usize;
    (i >= o && i + inner.len() <= o + outer.len()).then(|| i - o)
}
