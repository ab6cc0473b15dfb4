//! The outcome API: a `PUBLISH` with `Event: kuzet-outcome` whose body
//! says how a call ended, so the outcome rules work in redirect mode too
//! (the switch reports what kuzet cannot see).

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
    /// ```
    ///
    /// Lines may also be separated by `;`. Answered 200, or 400 with the
    /// reason.
    pub(super) fn outcome(&self, m: &Message<'_>, c: &Checked<'_>, out: &mut Vec<u8>) -> Outcome {
        let (mut caller, mut what, mut ring, mut talk) = (None, None, None, None);
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
                _ => {}
            }
        }
        let now = self.call_time(Instant::now()).secs;
        let policy = self.lists.load().rules.outcomes;
        let result = match (caller, what) {
            (None, _) => Err("caller missing or not a number"),
            (Some(n), Some(b"cancelled")) => match ring {
                Some(ring_ms) => {
                    self.state.callers.outcome(
                        n.raw(),
                        now,
                        CallOutcome::Cancelled { ring_ms },
                        &policy,
                    );
                    Ok(())
                }
                None => Err("cancelled needs ring_ms"),
            },
            (Some(n), Some(b"answered")) => match talk {
                Some(talk_ms) => {
                    self.state.callers.outcome(
                        n.raw(),
                        now,
                        CallOutcome::Answered { talk_ms },
                        &policy,
                    );
                    Ok(())
                }
                None => Err("answered needs talk_ms"),
            },
            (Some(n), Some(b"started")) => {
                self.state.callers.concurrent(n.raw(), now, 1);
                Ok(())
            }
            (Some(n), Some(b"ended")) => {
                self.state.callers.concurrent(n.raw(), now, -1);
                Ok(())
            }
            _ => Err("outcome must be cancelled, answered, started or ended"),
        };
        match result {
            Ok(()) => {
                self.metrics.inc(Counter::Outcomes);
                self.reply(m, Some(c), 200, "OK", out, |_| {});
            }
            Err(why) => {
                self.metrics.inc(Counter::BadRequests);
                self.reply(m, Some(c), 400, why, out, |_| {});
            }
        }
        Outcome::Reply
    }
}

/// A `PUBLISH` for kuzet's outcome API (`Event: kuzet-outcome`).
pub(super) fn is_outcome(m: &Message<'_>) -> bool {
    m.header_named(b"Event")
        .is_some_and(|e| kuzet_sip::syntax::trim_lws(e).eq_ignore_ascii_case(b"kuzet-outcome"))
}
