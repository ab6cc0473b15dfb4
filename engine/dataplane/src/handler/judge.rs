//! Judging a call: the facts go to the scoring core, the verdict comes
//! back, and every failure to score ends in *allow* plus a counter
//! (fail-open). There is one path: the list snapshot's rule set (the
//! built-in list rules, plus a rule file's when there is one) judges every
//! INVITE. Verdicts worth a log line go to the control plane over a bounded
//! queue; a full queue drops and counts, it never waits.

use super::*;
use crate::metrics::Gauge;

impl Handler {
    /// Extracts the call facts and scores them; fails open. A
    /// retransmission of an INVITE already judged (same Call-ID, CSeq and
    /// top Via branch, within the transaction window) gets the verdict it
    /// got, without being scored or counted again.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn score<'l>(
        &self,
        m: &Message<'_>,
        c: &Checked<'_>,
        src: SocketAddr,
        conn: Option<u64>,
        received: Instant,
        set: &'l ListSet,
        event: &mut Option<VerdictEvent>,
    ) -> Judged<'l> {
        let tx = transaction_key(m);
        if let Some((scored, id)) = self.retransmission(tx, set) {
            self.metrics.inc(Counter::InviteRetransmissions);
            return Judged {
                scored,
                set,
                a: None,
                id,
            };
        }
        self.metrics.inc(Counter::Invites);
        let allow = Judged {
            scored: Scored::ALLOW,
            set,
            a: None,
            id: None,
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
            let (from, pai, display, a, a_present) = if rules.needs_identities() {
                let from = self.claim(m, Hdr::From, true);
                let pai = self.claim(m, Hdr::PAssertedIdentity, true);
                let a = self.a_order.iter().find_map(|s| match s {
                    NumberSource::Pai => pai.number,
                    NumberSource::From => from.number,
                });
                (
                    from.number,
                    pai.number,
                    pai.display.or(from.display),
                    a,
                    from.claimed || pai.claimed,
                )
            } else {
                // Only the A-number matters: decode its headers in order
                // and stop at the first number.
                let a = self.a_number(m);
                (a, a, None, a, a.is_some())
            };
            let input = CallInput {
                a,
                from,
                pai,
                display,
                a_present,
                b,
                trunk: trunk.map(|t| t.kind),
                time: if rules.needs_clock() {
                    self.call_time(received)
                } else {
                    CallTime::default()
                },
            };
            let scored = set.score(&input, &self.state);
            self.metrics.rules_fired(set, scored.fired());
            let notable =
                scored.decision != Decision::Allow || scored.shadow_decision != scored.decision;
            // A sample of allowed calls, picked by the transaction's hash:
            // no shared counter, and a retransmission is picked the same.
            let sampled = !notable && self.sample_every > 0 && tx.is_multiple_of(self.sample_every);
            let mut id = None;
            if notable || sampled || self.every_call {
                let vid = self.new_verdict_id();
                let record = notable || sampled;
                if record {
                    id = Some(vid);
                }
                let identities = rules.needs_identities().then_some((from, pai));
                *event = self.build_event(
                    m, &scored, &input, identities, src, conn, trunk, vid, sampled, record,
                );
            }
            Judged { scored, set, a, id }
        }));
        let v = match result {
            Ok(v) => v,
            Err(_) => {
                self.metrics.inc(Counter::FailOpenInternal);
                allow
            }
        };
        self.remember(tx, &v.scored, v.id, set);
        self.metrics.inc(match v.scored.decision {
            Decision::Allow => Counter::Allowed,
            Decision::Flag => Counter::Flagged,
            Decision::Redirect => Counter::Redirected,
            Decision::Block => Counter::Blocked,
        });
        v
    }

    /// The next verdict id: a relaxed counter, unique on this node.
    fn new_verdict_id(&self) -> VerdictId {
        VerdictId {
            node: self.node,
            seq: self
                .next_verdict
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Hands a judged call's event (when it has one) to the control
    /// plane's log, store and HEP: a copy into the bounded queue's
    /// preallocated slot, never a wait; a full queue drops it and counts.
    /// `answer` is what kuzet sent back (empty when it forwarded), kept
    /// only when HEP mirrors SIP.
    pub(super) fn send_event(&self, event: &mut Option<VerdictEvent>, answer: &[u8]) {
        let Some(mut ev) = event.take() else { return };
        let Some(tx) = &self.events else { return };
        // A plain allow for HEP alone takes at most half the queue, so it
        // never crowds out a record.
        if !ev.record
            && self.metrics.gauge(Gauge::StoreQueueDepth) * 2
                >= self.metrics.gauge(Gauge::StoreQueueCapacity)
        {
            self.metrics.inc(Counter::HepQueueDropped);
            return;
        }
        if self.copy_answers {
            ev.evidence.answer = Inline::new(answer);
        }
        let record = ev.record;
        if tx.try_send(ev).is_err() {
            if record {
                self.metrics.inc(Counter::VerdictLogDropped);
                self.metrics.inc(Counter::StoreDropped);
            } else {
                // A plain allow queued for HEP alone: no record was lost.
                self.metrics.inc(Counter::HepQueueDropped);
            }
        } else {
            self.metrics.shift(Gauge::StoreQueueDepth, 1);
        }
    }

    /// The event for a judged call, for the control plane's log and store
    /// (and HEP); `identities` are the From and PAI numbers when scoring
    /// already read them. None when nobody takes events.
    #[allow(clippy::too_many_arguments)]
    fn build_event(
        &self,
        m: &Message<'_>,
        scored: &Scored,
        input: &CallInput,
        identities: Option<(Option<Number>, Option<Number>)>,
        src: SocketAddr,
        conn: Option<u64>,
        trunk: Option<Trunk<'_>>,
        verdict_id: VerdictId,
        sampled: bool,
        record: bool,
    ) -> Option<VerdictEvent> {
        if scored.shadow_decision != scored.decision {
            self.metrics.inc(Counter::ShadowDiffers);
        }
        self.events.as_ref()?;
        let (from, pai) = identities.unwrap_or_else(|| {
            (
                self.claim(m, Hdr::From, false).number,
                self.claim(m, Hdr::PAssertedIdentity, false).number,
            )
        });
        let bytes = m.bytes();
        let head_end = match offset_in(bytes, m.body()) {
            Some(at) if !m.body().is_empty() => at,
            _ => bytes.len(),
        };
        let code = match (scored.decision, self.mode) {
            (Decision::Block, _) => self.block_code,
            (_, Mode::Redirect) => 302,
            (_, Mode::Proxy) => 0,
        };
        let ev = VerdictEvent {
            set: self.lists.load_full(),
            scored: *scored,
            a: input.a,
            b: input.b,
            call_id: CallId::new(m.header(Hdr::CallId).unwrap_or_default()),
            source: src,
            tcp: conn.is_some(),
            trunk: trunk.as_ref().map(|t| t.name.clone()),
            trunk_kind: trunk.map(|t| t.kind.as_str()),
            evidence: Evidence {
                verdict_id,
                unix_us: evidence::unix_us(),
                code,
                sampled,
                from,
                pai,
                ruri: Inline::new(m.request_uri()),
                from_raw: Inline::new(m.header(Hdr::From).unwrap_or_default()),
                pai_raw: Inline::new(m.header(Hdr::PAssertedIdentity).unwrap_or_default()),
                head: Inline::new(&bytes[..head_end]),
                answer: Inline::new(&[]),
            },
            record,
        };
        Some(ev)
    }
}

/// The key of an INVITE's transaction: Call-ID, CSeq and the top Via's
/// branch (RFC 3261 section 17.2.3), hashed.
fn transaction_key(m: &Message<'_>) -> u64 {
    let mut h = Fnv::default();
    h.write(m.header(Hdr::CallId).unwrap_or_default());
    h.write(b"\0");
    h.write(m.header(Hdr::CSeq).unwrap_or_default());
    h.write(b"\0");
    let top = split_values(m.header(Hdr::Via).unwrap_or_default())
        .next()
        .unwrap_or_default();
    h.write(parse_via(top).ok().and_then(|v| v.branch()).unwrap_or(top));
    table::key_of(h.finish())
}

impl Handler {
    /// The verdict an earlier copy of this INVITE got, if it is in the
    /// window and the snapshot that judged it is still in force.
    fn retransmission(&self, tx: u64, set: &ListSet) -> Option<(Scored, Option<VerdictId>)> {
        let t = self.txs.get(tx)?;
        let age = self.now_ms().saturating_sub(t.created_ms);
        let id = (t.verdict_seq != 0).then_some(VerdictId {
            node: self.node,
            seq: t.verdict_seq,
        });
        (age < self.tx_window_ms && t.generation == set.generation).then_some((t.scored, id))
    }

    /// Keeps a verdict for the transaction's window (a full table only
    /// means a retransmission would be scored again: counted).
    fn remember(&self, tx: u64, scored: &Scored, id: Option<VerdictId>, set: &ListSet) {
        let rec = TxRec {
            created_ms: self.now_ms(),
            generation: set.generation,
            verdict_seq: id.map_or(0, |i| i.seq),
            scored: *scored,
        };
        if self.txs.upsert(tx, |t| *t = rec).is_err() {
            self.metrics.inc(Counter::TransactionsUntracked);
        }
    }
}

/// A judged INVITE transaction: when, under which snapshot, its verdict
/// (the first [`Scored::PACKED_FIRED`] rules that fired) and its verdict
/// id's sequence number (0: not recorded).
#[derive(Clone, Copy)]
pub(super) struct TxRec {
    pub(super) created_ms: u64,
    generation: u64,
    verdict_seq: u64,
    scored: Scored,
}

impl Default for TxRec {
    fn default() -> Self {
        TxRec {
            created_ms: 0,
            generation: 0,
            verdict_seq: 0,
            scored: Scored::ALLOW,
        }
    }
}

impl Packed for TxRec {
    const WORDS: usize = 3 + Scored::PACKED_WORDS;
    fn unpack(w: &[u64]) -> Self {
        TxRec {
            created_ms: w[0],
            generation: w[1],
            verdict_seq: w[2],
            scored: Scored::unpack(&w[3..]),
        }
    }
    fn pack(&self, w: &mut [u64]) {
        w[0] = self.created_ms;
        w[1] = self.generation;
        w[2] = self.verdict_seq;
        self.scored.pack(&mut w[3..]);
    }
}

/// A call's verdict, the snapshot that gave it, the A-number it scored,
/// and its verdict id when it was recorded.
pub(super) struct Judged<'l> {
    pub(super) scored: Scored,
    pub(super) set: &'l ListSet,
    pub(super) a: Option<Number>,
    pub(super) id: Option<VerdictId>,
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
