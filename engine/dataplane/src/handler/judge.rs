//! Judging a call: the facts go to the scoring core, the verdict comes
//! back, and every failure to score ends in *allow* plus a counter
//! (fail-open). There is one path: the list snapshot's rule set (the
//! built-in list rules, plus a rule file's when there is one) judges every
//! INVITE. Verdicts worth a log line go to the control plane over a bounded
//! queue; a full queue drops and counts, it never waits.

use super::*;

impl Handler {
    /// Extracts the call facts and scores them; fails open.
    pub(super) fn score<'l>(
        &self,
        m: &Message<'_>,
        c: &Checked<'_>,
        src: SocketAddr,
        conn: Option<u64>,
        received: Instant,
        set: &'l ListSet,
    ) -> Judged<'l> {
        self.metrics.inc(Counter::Invites);
        let allow = Judged {
            scored: Scored::ALLOW,
            set,
            a: None,
        };
        if received.elapsed() > self.budget {
            self.metrics.inc(Counter::FailOpenOverload);
            self.metrics.inc(Counter::Allowed);
            return allow;
        }
        let result = catch_unwind(AssertUnwindSafe(|| {
            let trunk = self.trunks.lookup(src.ip());
            let b = self.number_of_uri(&c.ruri);
            let rules = &set.rules;
            let (from, pai, a, a_present) = if rules.needs_identities() {
                let (from, from_claimed) = self.header_number(m, Hdr::From);
                let (pai, pai_claimed) = self.header_number(m, Hdr::PAssertedIdentity);
                let a = self.a_order.iter().find_map(|s| match s {
                    NumberSource::Pai => pai,
                    NumberSource::From => from,
                });
                (from, pai, a, from_claimed || pai_claimed)
            } else {
                // Only the A-number matters: decode its headers in order
                // and stop at the first number.
                let a = self.a_number(m);
                (a, a, a, a.is_some())
            };
            let input = CallInput {
                a,
                from,
                pai,
                a_present,
                b,
                trunk: trunk.map(|t| t.kind),
                time: if rules.needs_clock() {
                    self.call_time(received)
                } else {
                    CallTime::default()
                },
            };
            let scored = set.score(&input, &self.callers, &self.destinations);
            if scored.decision != Decision::Allow || scored.shadow_decision != scored.decision {
                self.queue_event(m, &scored, a, b, src, conn, trunk);
            }
            Judged { scored, set, a }
        }));
        let v = match result {
            Ok(v) => v,
            Err(_) => {
                self.metrics.inc(Counter::FailOpenInternal);
                allow
            }
        };
        self.metrics.inc(match v.scored.decision {
            Decision::Allow => Counter::Allowed,
            Decision::Flag => Counter::Flagged,
            Decision::Redirect => Counter::Redirected,
            Decision::Block => Counter::Blocked,
        });
        v
    }

    /// Hands a verdict to the control plane's log: a copy into the bounded
    /// queue's preallocated slot, never a wait; a full queue drops it and
    /// counts.
    #[allow(clippy::too_many_arguments)]
    fn queue_event(
        &self,
        m: &Message<'_>,
        scored: &Scored,
        a: Option<Number>,
        b: Option<Number>,
        src: SocketAddr,
        conn: Option<u64>,
        trunk: Option<Trunk<'_>>,
    ) {
        if scored.shadow_decision != scored.decision {
            self.metrics.inc(Counter::ShadowDiffers);
        }
        let Some(tx) = &self.events else { return };
        let ev = VerdictEvent {
            set: self.lists.load_full(),
            scored: *scored,
            a,
            b,
            call_id: CallId::new(m.header(Hdr::CallId).unwrap_or_default()),
            source: src,
            tcp: conn.is_some(),
            trunk: trunk.map(|t| t.name.clone()),
        };
        if tx.try_send(ev).is_err() {
            self.metrics.inc(Counter::VerdictLogDropped);
        }
    }
}

/// A call's verdict, the snapshot that gave it, and the A-number it scored.
pub(super) struct Judged<'l> {
    pub(super) scored: Scored,
    pub(super) set: &'l ListSet,
    pub(super) a: Option<Number>,
}

impl Judged<'_> {
    pub(super) fn decision(&self) -> Decision {
        self.scored.decision
    }

    /// Where a redirect decision sends the call.
    pub(super) fn redirect_uri(&self) -> Option<&str> {
        match self.scored.decision {
            Decision::Redirect => self.set.rules.thresholds.redirect_uri.as_deref(),
            _ => None,
        }
    }

    /// The first enforced rule that fired, for the `Reason` text.
    pub(super) fn first_rule(&self) -> &str {
        self.scored
            .fired()
            .iter()
            .find(|f| !f.shadow)
            .and_then(|f| self.set.rules.rules.get(usize::from(f.rule)))
            .map_or("rules", |r| &*r.id)
    }
}
