//! Redirect mode: the 302 that lets a call continue (to its own Request-URI,
//! or to the anti-fraud desk), the 603 that blocks it, and the answers to
//! everything that is not an INVITE.

use super::*;

impl Handler {
    pub(super) fn redirect(
        &self,
        m: &Message<'_>,
        c: &Checked<'_>,
        src: SocketAddr,
        conn: Option<u64>,
        received: Instant,
        out: &mut Vec<u8>,
    ) -> Outcome {
        match m.method() {
            b"INVITE" => {
                let lists = self.lists.load();
                // The verdict's event, filled in only for a call worth one,
                // and queued once the answer is written (HEP mirrors it).
                let mut event = None;
                let v = self.score(m, c, src, conn, received, &lists, &mut event);
                match v.decision() {
                    Decision::Block => self.reply_blocked(m, c, &v, out),
                    _ => {
                        let contact = v.redirect_uri().map_or(m.request_uri(), str::as_bytes);
                        self.reply(m, Some(c), 302, "Moved Temporarily", out, |o| {
                            o.extend_from_slice(b"Contact: <");
                            o.extend_from_slice(contact);
                            o.extend_from_slice(b">\r\n");
                            verdict_header(o, &v);
                        });
                    }
                }
                self.send_event(&mut event, out);
                Outcome::Reply
            }
            b"ACK" => {
                self.metrics.inc(Counter::AcksAbsorbed);
                Outcome::Drop
            }
            b"PUBLISH" if is_outcome(m) => self.outcome(m, c, src, out),
            b"OPTIONS" => {
                self.reply(m, Some(c), 200, "OK", out, |o| o.extend_from_slice(ALLOW));
                Outcome::Reply
            }
            _ => {
                self.reply(m, Some(c), 405, "Method Not Allowed", out, |o| {
                    o.extend_from_slice(ALLOW)
                });
                Outcome::Reply
            }
        }
    }
}
