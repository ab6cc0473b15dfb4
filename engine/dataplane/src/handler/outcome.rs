//! The outcome API: a `PUBLISH` with `Event: kuzet-outcome` whose body
//! says how a call ended, so the outcome rules work in redirect mode too
//! (the switch reports what kuzet cannot see).
//!
//! Outcomes change how later calls score, so a forged one could get an
//! innocent number blocked. Only configured reporters may send them: a
//! source on a trunk named in `[outcomes] reporters`, or any source that
//! presents the shared secret in `X-Kuzet-Outcome-Key` (compared in
//! constant time). With neither configured, the API is off. An outcome
//! never creates state: a number kuzet has not seen calling is refused.

use subtle::ConstantTimeEq;

use crate::journal::OutcomeWhat;

use super::*;

impl Handler {
    /// The outcome API: a `PUBLISH` with `Event: kuzet-outcome` whose body
    /// says how a call ended, so the Wangiri, short-call and concurrency
    /// rules see outcomes in redirect mode (the switch reports them):
    ///
    /// ```text
    /// caller=+77011234567
    /// outcome=cancelled     (or answered, started, ended)
    /// ring_ms=1500          (cancelled: how long it rang)
    /// talk_ms=42000         (answered: how long it lasted)
    /// callee=+77021234567   (answered, optional: who answered, for the
    ///                        National Bank Centre's potential victims)
    /// ```
    ///
    /// Lines may also be separated by `;`. Answered 200, or 400 with the
    /// reason.
    pub(super) fn outcome(
        &self,
        m: &Message<'_>,
        c: &Checked<'_>,
        src: SocketAddr,
        out: &mut Vec<u8>,
    ) -> Outcome {
        if let Err(why) = self.may_report(m, src) {
            self.metrics.inc(Counter::OutcomesRefused);
            self.reply(m, Some(c), 403, why, out, |_| {});
            return Outcome::Reply;
        }
        let (mut caller, mut what, mut ring, mut talk, mut callee) = (None, None, None, None, None);
        for kv in m.body().split(|&b| b == b'\n' || b == b';') {
            let kv = kuzet_sip::syntax::trim_lws(kv);
            let Some(eq) = kv.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (k, v) = (&kv[..eq], kuzet_sip::syntax::trim_lws(&kv[eq + 1..]));
            match k {
                b"caller" => caller = self.plan.normalize(v),
                b"outcome" => what = Some(v),
                b"ring_ms" => ring = kuzet_sip::parse_u32(v),
                b"talk_ms" => talk = kuzet_sip::parse_u32(v),
                b"callee" => callee = self.plan.normalize(v),
                _ => {}
            }
        }
        let now = self.call_time(Instant::now()).secs;
        let policy = self.lists.load().rules.outcomes;
        let max_call = self.state.max_call_s;
        let seen = |known: bool| if known { Ok(()) } else { Err(NOT_SEEN) };
        let callee_raw = callee.map_or(0, Number::raw);
        // Each outcome applied is journalled, known or not, so a replay
        // offers state exactly what it was offered.
        let journal = |n: Number, what, known: bool| {
            self.journal_outcome(n.raw(), callee_raw, now, what, false, known);
            seen(known)
        };
        let result = match (caller, what) {
            (None, _) => Err("caller missing or not a number"),
            (Some(n), Some(b"cancelled")) => match ring {
                Some(ring_ms) => journal(
                    n,
                    OutcomeWhat::Cancelled(ring_ms),
                    self.state.callers.outcome(
                        n.raw(),
                        now,
                        CallOutcome::Cancelled { ring_ms },
                        &policy,
                    ),
                ),
                None => Err("cancelled needs ring_ms"),
            },
            (Some(n), Some(b"answered")) => match talk {
                Some(talk_ms) => {
                    let r = journal(
                        n,
                        OutcomeWhat::Answered(talk_ms),
                        self.state.callers.outcome(
                            n.raw(),
                            now,
                            CallOutcome::Answered { talk_ms },
                            &policy,
                        ),
                    );
                    if let (Ok(()), Some(b)) = (r, callee) {
                        self.answered(n.raw(), b.raw(), i64::from(now));
                    }
                    r
                }
                None => Err("answered needs talk_ms"),
            },
            (Some(n), Some(b"started")) => journal(
                n,
                OutcomeWhat::Started,
                self.state.callers.concurrent(n.raw(), now, 1, max_call),
            ),
            (Some(n), Some(b"ended")) => journal(
                n,
                OutcomeWhat::Ended,
                self.state.callers.concurrent(n.raw(), now, -1, max_call),
            ),
            _ => Err("outcome must be cancelled, answered, started or ended"),
        };
        match result {
            Ok(()) => {
                self.metrics.inc(Counter::Outcomes);
                self.reply(m, Some(c), 200, "OK", out, |_| {});
            }
            Err(NOT_SEEN) => {
                self.metrics.inc(Counter::OutcomesIgnored);
                self.reply(m, Some(c), 404, NOT_SEEN, out, |_| {});
            }
            Err(why) => {
                self.metrics.inc(Counter::BadRequests);
                self.reply(m, Some(c), 400, why, out, |_| {});
            }
        }
        Outcome::Reply
    }
}

/// The reason phrase for an outcome about a number never seen calling.
const NOT_SEEN: &str = "Caller Not Seen Calling";

impl Handler {
    /// Whether `src` (with `m`'s key header) may report outcomes.
    fn may_report(&self, m: &Message<'_>, src: SocketAddr) -> Result<(), &'static str> {
        if self.outcome_reporters.is_empty() && self.outcome_secret.is_none() {
            return Err("Outcome API Disabled");
        }
        let by_trunk = self.trunks.lookup(src.ip()).is_some_and(|t| {
            self.outcome_reporters
                .iter()
                .any(|r| r.as_str() == &**t.name)
        });
        let by_key = match (&self.outcome_secret, m.header_named(b"X-Kuzet-Outcome-Key")) {
            (Some(secret), Some(key)) => {
                bool::from(kuzet_sip::syntax::trim_lws(key).ct_eq(secret.as_slice()))
            }
            _ => false,
        };
        if by_trunk || by_key {
            Ok(())
        } else {
            Err("Not An Outcome Reporter")
        }
    }
}

/// A `PUBLISH` for kuzet's outcome API (`Event: kuzet-outcome`).
pub(super) fn is_outcome(m: &Message<'_>) -> bool {
    m.header_named(b"Event")
        .is_some_and(|e| kuzet_sip::syntax::trim_lws(e).eq_ignore_ascii_case(b"kuzet-outcome"))
}
