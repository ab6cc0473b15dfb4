//! Judging a call: the facts go to the scoring core, the verdict comes
//! back, and every failure to score ends in *allow* plus a counter
//! (fail-open). Verdicts worth a log line go to the control plane over a
//! bounded queue; a full queue drops and counts, it never waits.

use super::*;

impl Handler {
    /// Extracts the call facts and scores them; fails open.
    pub(super) fn score<'l>(
        &self,
        m: &Message<'_>,
        c: &Checked<'_>,
        src: SocketAddr,
        received: Instant,
        lists: &'l ListSet,
    ) -> Judged<'l> {
        self.metrics.inc(Counter::Invites);
        if received.elapsed() > self.budget {
            self.metrics.inc(Counter::FailOpenOverload);
            self.metrics.inc(Counter::Allowed);
            return Judged::Lists(Verdict::ALLOW);
        }
        let result = catch_unwind(AssertUnwindSafe(|| {
            let trunk = self.trunks.lookup(src.ip()).map(|t| t.kind);
            let b = self.number_of_uri(&c.ruri);
            match &lists.rules {
                None => Judged::Lists(evaluate(
                    &CallFacts {
                        a_number: self.a_number(m),
                        b_number: b,
                        trunk_kind: trunk,
                    },
                    lists,
                )),
                Some(rules) => {
                    let (from, from_claimed) = self.header_number(m, Hdr::From);
                    let (pai, pai_claimed) = self.header_number(m, Hdr::PAssertedIdentity);
                    let a = self.a_order.iter().find_map(|s| match s {
                        NumberSource::Pai => pai,
                        NumberSource::From => from,
                    });
                    let input = CallInput {
                        a,
                        from,
                        pai,
                        a_present: from_claimed || pai_claimed,
                        b,
                        trunk,
                        time: self.call_time(received),
                    };
                    let rl = RuleLists {
                        block: Some(&lists.block),
                        flag: Some(&lists.flag),
                        allow: Some(&lists.allow),
                        protected: Some(&lists.protected),
                        premium: Some(&lists.premium),
                    };
                    let s = rules.score(&input, &rl, &self.callers, &self.destinations);
                    if s.decision != Decision::Allow || s.shadow_decision != s.decision {
                        self.log_event(s, a, b);
                    }
                    Judged::Rules(s, rules, a)
                }
            }
        }));
        let v = match result {
            Ok(v) => v,
            Err(_) => {
                self.metrics.inc(Counter::FailOpenInternal);
                Judged::Lists(Verdict::ALLOW)
            }
        };
        self.metrics.inc(match v.decision() {
            Decision::Allow => Counter::Allowed,
            Decision::Flag => Counter::Flagged,
            Decision::Redirect => Counter::Redirected,
            Decision::Block => Counter::Blocked,
        });
        v
    }

    pub(super) fn log_event(&self, scored: Scored, a: Option<Number>, b: Option<Number>) {
        if scored.shadow_decision != scored.decision {
            self.metrics.inc(Counter::ShadowDiffers);
        }
        let Some(tx) = &self.events else { return };
        let ev = RuleEvent {
            set: self.lists.load_full(),
            scored,
            a,
            b,
        };
        if tx.try_send(ev).is_err() {
            self.metrics.inc(Counter::RuleLogDropped);
        }
    }
}

/// A call's verdict: from the lists alone, or from the rule set.
pub(super) enum Judged<'l> {
    Lists(Verdict<'l>),
    /// The rule set's verdict, and the A-number it scored.
    Rules(Scored, &'l RuleSet, Option<Number>),
}

impl Judged<'_> {
    pub(super) fn decision(&self) -> Decision {
        match self {
            Judged::Lists(v) => match v.action {
                Action::Allow => Decision::Allow,
                Action::Flag => Decision::Flag,
                Action::Block => Decision::Block,
            },
            Judged::Rules(s, ..) => s.decision,
        }
    }
}
