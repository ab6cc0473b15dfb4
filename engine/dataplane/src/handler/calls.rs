//! Calls in progress, as proxy mode sees them: an INVITE opens a record, a
//! 2xx marks it answered, a CANCEL, BYE or other final answer closes it.
//! What is learnt (ring time, talk time, concurrency) feeds the Wangiri,
//! short-call and concurrency rules.

use super::*;
use crate::journal::OutcomeWhat;

impl Handler {
    /// Proxy mode: learns call outcomes from what it forwards. An INVITE
    /// opens a record; a 2xx to it marks the call answered (one more
    /// concurrent call); a CANCEL is a ring of that length; another final
    /// answer is a ring that ran out; a BYE after an answer is a call of
    /// that length (one concurrent call fewer). A call answered by the
    /// callee it was let through to (`b`) goes to the answers queue.
    pub(super) fn learn(&self, m: &Message<'_>, a: Option<Number>, b: Option<Number>) {
        let Some(id) = m.header(Hdr::CallId) else {
            return;
        };
        let mut h = Fnv::default();
        h.write(id);
        let key = table::key_of(h.finish());
        let now_ms = self.started.elapsed().as_millis() as u64;
        let now = self.call_time(Instant::now()).secs;
        let policy = self.lists.load().rules.outcomes;
        if m.is_request() {
            match m.method() {
                b"INVITE" => {
                    if let Some(a) = a {
                        // A full table means this call is not followed:
                        // counted, and said at WARN by the control plane.
                        let followed = self.calls.upsert(key, |r| {
                            if r.a == 0 {
                                *r = CallRec {
                                    a: a.raw(),
                                    b: b.map_or(0, Number::raw),
                                    invited_ms: now_ms,
                                    answered_ms: 0,
                                };
                            }
                        });
                        if followed.is_err() {
                            self.metrics.inc(Counter::CallsUntracked);
                        }
                    }
                }
                b"CANCEL" => {
                    if let Some(r) = self.calls.remove_if(key, |r| r.answered_ms == 0) {
                        let ring_ms =
                            now_ms.saturating_sub(r.invited_ms).min(u64::from(u32::MAX)) as u32;
                        let known = self.state.callers.outcome(
                            r.a,
                            now,
                            CallOutcome::Cancelled { ring_ms },
                            &policy,
                        );
                        self.journal_outcome(
                            r.a,
                            r.b,
                            now,
                            OutcomeWhat::Cancelled(ring_ms),
                            true,
                            known,
                        );
                    }
                }
                b"BYE" => {
                    if let Some(r) = self.calls.remove_if(key, |r| r.answered_ms > 0) {
                        let talk_ms = now_ms
                            .saturating_sub(r.answered_ms)
                            .min(u64::from(u32::MAX)) as u32;
                        let known = self.state.callers.outcome(
                            r.a,
                            now,
                            CallOutcome::Answered { talk_ms },
                            &policy,
                        );
                        self.journal_outcome(
                            r.a,
                            r.b,
                            now,
                            OutcomeWhat::Answered(talk_ms),
                            true,
                            known,
                        );
                        let known =
                            self.state
                                .callers
                                .concurrent(r.a, now, -1, self.state.max_call_s);
                        self.journal_outcome(r.a, r.b, now, OutcomeWhat::Ended, true, known);
                    }
                }
                _ => {}
            }
            return;
        }
        let invite = m
            .header(Hdr::CSeq)
            .and_then(|c| parse_cseq(c).ok())
            .is_some_and(|(_, meth)| meth == b"INVITE");
        let status = m.status();
        if !invite || status < 200 {
            return;
        }
        if status < 300 {
            let answered = self.calls.update(key, |r| {
                let first = r.answered_ms == 0;
                if first {
                    r.answered_ms = now_ms.max(1);
                }
                first.then_some((r.a, r.b))
            });
            if let Some(Some((a, b))) = answered {
                let known = self
                    .state
                    .callers
                    .concurrent(a, now, 1, self.state.max_call_s);
                self.journal_outcome(a, b, now, OutcomeWhat::Started, true, known);
                if b != 0 {
                    self.answered(a, b, i64::from(now));
                }
            }
        } else if let Some(r) = self.calls.remove_if(key, |r| r.answered_ms == 0) {
            // Refused or rang out (a CANCELled call was removed already).
            let ring_ms = now_ms.saturating_sub(r.invited_ms).min(u64::from(u32::MAX)) as u32;
            let ring_ms = ring_ms.max(policy.short_ring_ms);
            let known =
                self.state
                    .callers
                    .outcome(r.a, now, CallOutcome::Cancelled { ring_ms }, &policy);
            self.journal_outcome(r.a, r.b, now, OutcomeWhat::Cancelled(ring_ms), true, known);
        }
    }
}

/// A call proxy mode has seen start: who called, whom it was let through
/// to (0: redirected, or not a number), when it was sent on, and when it
/// was answered (0 = not yet), in ms since start-up.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct CallRec {
    pub(super) a: u64,
    pub(super) b: u64,
    pub(super) invited_ms: u64,
    pub(super) answered_ms: u64,
}

impl Packed for CallRec {
    const WORDS: usize = 4;
    fn unpack(w: &[u64]) -> Self {
        CallRec {
            a: w[0],
            invited_ms: w[1],
            answered_ms: w[2],
            b: w[3],
        }
    }
    fn pack(&self, w: &mut [u64]) {
        w[0] = self.a;
        w[1] = self.invited_ms;
        w[2] = self.answered_ms;
        w[3] = self.b;
    }
}
