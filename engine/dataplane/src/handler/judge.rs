//! Judging a call: the facts go to the scoring core, the verdict comes
//! back, and every failure to score ends in *allow* plus a counter
//! (fail-open). There is one path: the list snapshot's rule set (the
//! built-in list rules, plus a rule file's when there is one) judges every
//! INVITE. A verdict worth recording is written, whole and explained, into
//! the record queue ([`crate::records`]) before the answer leaves; a full
//! queue refuses it (counted), it never waits, and then the caller is
//! given no verdict id. The record says how far the network vouches for
//! the caller's number and what the call makes of the caller (a source,
//! an unverified claim, an impersonated number, a potential victim), so
//! no record accuses a number nobody vouches for.

use super::*;
use crate::metrics::Gauge;
use crate::records::{self, Class, Facts, Sizer, Slot};
use kuzet_rules::ruleset::{Kind, ListId};
use kuzet_rules::Who;

/// A record reserved in the queue, written but for kuzet's answer, which
/// [`Handler::send_event`] adds before publishing it.
pub(super) type Pending<'h> = Option<Slot<'h>>;

impl Handler {
    /// Extracts the call facts and scores them; fails open. A
    /// retransmission of an INVITE already judged (same Call-ID, CSeq and
    /// top Via branch, within the transaction window, and the same request:
    /// see [`Handler::request_digest`]) gets the verdict it got, without
    /// being scored or counted again. A request that reuses a judged
    /// INVITE's transaction but differs from it is judged on its own and
    /// counted.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn score<'l, 'h>(
        &'h self,
        m: &Message<'_>,
        c: &Checked<'_>,
        src: SocketAddr,
        conn: Option<u64>,
        received: Instant,
        set: &'l ListSet,
        event: &mut Pending<'h>,
    ) -> Judged<'l> {
        let tx = transaction_key(m);
        let digest = self.request_digest(m);
        if let Some((scored, id)) = self.retransmission(tx, digest, set) {
            self.metrics.inc(Counter::InviteRetransmissions);
            return Judged {
                scored,
                set,
                a: None,
                b: None,
                id,
                public: id.map(|i| self.public_id(i)),
            };
        }
        self.metrics.inc(Counter::Invites);
        let allow = Judged {
            scored: Scored::ALLOW,
            set,
            a: None,
            b: None,
            id: None,
            public: None,
        };
        if received.max(self.ready).elapsed() > self.budget {
            self.metrics.inc(Counter::FailOpenOverload);
            self.metrics.inc(Counter::Allowed);
            return allow;
        }
        let result = catch_unwind(AssertUnwindSafe(|| {
            let trunk = self.trunks.lookup(src.ip());
            let b = self.number_of_uri(&c.ruri);
            let rules = &set.rules;
            let journal = self.journal.is_some();
            let (from, pai, display, a, a_present, a_src) = if rules.needs_identities() || journal {
                let from = self.claim(m, Hdr::From, true);
                let pai = self.claim(m, Hdr::PAssertedIdentity, true);
                let a = self.a_order.iter().find_map(|s| match s {
                    NumberSource::Pai => pai.number.map(|n| (n, *s)),
                    NumberSource::From => from.number.map(|n| (n, *s)),
                });
                (
                    from.number,
                    pai.number,
                    pai.display.or(from.display),
                    a.map(|x| x.0),
                    from.claimed || pai.claimed,
                    a.map(|x| x.1),
                )
            } else {
                // Only the A-number matters: decode its headers in order
                // and stop at the first number.
                let a = self.a_number_from(m);
                let n = a.map(|x| x.0);
                (n, n, None, n, n.is_some(), a.map(|x| x.1))
            };
            let mut input = CallInput {
                a,
                from,
                pai,
                display,
                a_present,
                b,
                trunk: trunk.map(|t| t.kind),
                time: CallTime::default(),
            };
            let mut ts_us = 0;
            if rules.needs_clock() || journal {
                (input.time, ts_us) = self.clock(received);
            }
            let scored = set.score(&input, &self.state);
            let a_trust = match (a, a_src) {
                (None, _) => records::trust::NONE,
                (Some(_), Some(NumberSource::Pai)) if trunk.is_some_and(|t| t.trust_pai) => {
                    records::trust::NETWORK
                }
                _ => records::trust::CLAIMED,
            };
            if journal {
                let at = crate::journal::Arrival {
                    ts_us,
                    trunk: trunk.map_or(0, |t| t.index.saturating_add(1)),
                    source: src.ip(),
                    a_trust,
                    digest,
                };
                self.journal(crate::journal::Entry::Call(crate::journal::CallFact::of(
                    at, &input, &scored, set,
                )));
            }
            self.metrics.rules_fired(set, scored.fired());
            let notable =
                scored.decision != Decision::Allow || scored.shadow_decision != scored.decision;
            // A sample of allowed calls, picked by the transaction's hash:
            // no shared counter, and a retransmission is picked the same.
            let sampled = !notable && self.sample_every > 0 && tx.is_multiple_of(self.sample_every);
            let mut id = None;
            if notable || sampled || self.every_call {
                let record = notable || sampled;
                let class = match scored.decision {
                    _ if !record => Class::HepOnly,
                    Decision::Block | Decision::Redirect => Class::IdGiven,
                    _ => Class::Low,
                };
                // Under the store's size pressure, samples stop first,
                // then every low-value record (counted).
                let pressure = self.metrics.gauge(Gauge::StorePressure);
                if (sampled && pressure >= 1) || (class == Class::Low && pressure >= 2) {
                    self.metrics.inc(if sampled {
                        Counter::StoreSamplesSkipped
                    } else {
                        Counter::StoreLowValueRefused
                    });
                } else if self.records.is_some() {
                    let vid = self.new_verdict_id();
                    let identities = (rules.needs_identities() || journal).then_some((from, pai));
                    let written = self.write_record(
                        m, &scored, set, &input, identities, src, conn, trunk, vid, sampled,
                        record, class, a_trust,
                    );
                    match written {
                        Some(slot) => {
                            *event = Some(slot);
                            if record {
                                id = Some(vid);
                            }
                        }
                        None => self.refused(class),
                    }
                }
            }
            if scored.shadow_decision != scored.decision {
                self.metrics.inc(Counter::ShadowDiffers);
            }
            Judged {
                scored,
                set,
                a,
                b,
                id,
                public: None,
            }
        }));
        let mut v = match result {
            Ok(v) => v,
            Err(_) => {
                self.metrics.inc(Counter::FailOpenInternal);
                allow
            }
        };
        // Only an id the caller is given is written into the answer.
        if matches!(v.scored.decision, Decision::Block | Decision::Redirect) {
            v.public = v.id.map(|i| self.public_id(i));
        }
        self.remember(tx, digest, &v.scored, v.id, set);
        self.metrics.inc(match v.scored.decision {
            Decision::Allow => Counter::Allowed,
            Decision::Flag => Counter::Flagged,
            Decision::Redirect => Counter::Redirected,
            Decision::Block => Counter::Blocked,
        });
        v
    }

    /// A record that found no room: counted by what it would have been.
    fn refused(&self, class: Class) {
        match class {
            Class::IdGiven => {
                // The caller is answered without a verdict id.
                self.metrics.inc(Counter::StoreDropped);
                self.metrics.inc(Counter::VerdictIdsWithheld);
            }
            Class::Low => {
                self.metrics.inc(Counter::StoreDropped);
                self.metrics.inc(Counter::VerdictLogDropped);
            }
            // A plain allow for HEP alone: no record was lost.
            Class::HepOnly => self.metrics.inc(Counter::HepQueueDropped),
        }
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

    /// Publishes a judged call's record (when it has one) with kuzet's
    /// answer, so the recorder may take it. `answer` is what kuzet sent
    /// back (empty when it forwarded), kept only when HEP mirrors SIP.
    pub(super) fn send_event(&self, event: &mut Pending<'_>, answer: &[u8]) {
        let Some(mut slot) = event.take() else { return };
        let answer = if self.copy_answers {
            &answer[..answer.len().min(evidence::ANSWER_MAX)]
        } else {
            &[]
        };
        records::put_answer(&mut slot, answer);
        slot.commit();
    }

    /// Writes a judged call's record into the record queue, all but the
    /// answer: reserved first (sized exactly), so a full queue costs
    /// nothing but the sizing. `identities` are the From and PAI numbers
    /// when scoring already read them. None when the queue has no room
    /// for this class.
    #[allow(clippy::too_many_arguments)]
    fn write_record<'h>(
        &'h self,
        m: &Message<'_>,
        scored: &Scored,
        set: &ListSet,
        input: &CallInput,
        identities: Option<(Option<Number>, Option<Number>)>,
        src: SocketAddr,
        conn: Option<u64>,
        trunk: Option<Trunk<'_>>,
        verdict_id: VerdictId,
        sampled: bool,
        record: bool,
        class: Class,
        a_trust: u8,
    ) -> Option<Slot<'h>> {
        let ring = self.records.as_ref()?;
        let (from, pai) = identities.unwrap_or_else(|| {
            (
                self.claim(m, Hdr::From, false).number,
                self.claim(m, Hdr::PAssertedIdentity, false).number,
            )
        });
        let code = match (scored.decision, self.mode) {
            (Decision::Block, _) => self.block_code,
            (_, Mode::Redirect) => 302,
            (_, Mode::Proxy) => 0,
        };
        // Each fired rule's explanation, written once into a stack arena.
        let lists = set.lists();
        let mut arena = Arena::new();
        let mut spans = [(0u16, 0u16); kuzet_rules::ruleset::MAX_FIRED];
        let fired = scored.fired();
        for (f, span) in fired.iter().zip(spans.iter_mut()) {
            let start = arena.len;
            let _ = set.rules.explain_fired(f, &lists, &mut arena);
            *span = (start as u16, arena.len as u16);
        }
        let mut rules: [(&str, u32, u32, bool, &[u8]); kuzet_rules::ruleset::MAX_FIRED] =
            [("", 0, 0, false, &[]); kuzet_rules::ruleset::MAX_FIRED];
        let mut n = 0;
        let mut list_hit = None;
        for (f, span) in fired.iter().zip(spans.iter()) {
            let Some(r) = set.rules.rules.get(usize::from(f.rule)) else {
                continue;
            };
            rules[n] = (
                &r.id,
                f.value,
                f.threshold,
                f.shadow,
                &arena.buf[usize::from(span.0)..usize::from(span.1)],
            );
            n += 1;
            if list_hit.is_none() {
                list_hit = set.list_hit(f).map(|h| (h.list, h.side, h.exact, h.reason));
            }
        }
        let role = if record {
            caller_role(scored, set, a_trust)
        } else {
            records::role::NONE
        };
        let public = self.public_id(verdict_id).hex();
        let mut head_parts: [&[u8]; HEAD_PARTS] = [&[]; HEAD_PARTS];
        let mut marker = [0u8; 96];
        let parts = head_section(m, &mut head_parts, &mut marker);
        let mut flags = 0u8;
        if record {
            flags |= records::flags::RECORD;
        }
        if sampled {
            flags |= records::flags::SAMPLED;
        }
        if conn.is_some() {
            flags |= records::flags::TCP;
        }
        if class == Class::IdGiven {
            flags |= records::flags::ID_GIVEN;
        }
        let facts = Facts {
            flags,
            decision: scored.decision,
            shadow_decision: scored.shadow_decision,
            code,
            score: scored.score,
            ts_us: evidence::unix_us(),
            node: verdict_id.node,
            seq: verdict_id.seq,
            verdict_id: if record { &public } else { &[] },
            numbers: [input.a, input.b, from, pai],
            a_trust,
            caller_role: role,
            source: src,
            trunk: trunk.map(|t| (&**t.name, t.kind.as_str())),
            version: set.version,
            call_id: m.header(Hdr::CallId).unwrap_or_default(),
            ruri: m.request_uri(),
            from_hdr: m.header(Hdr::From).unwrap_or_default(),
            pai_hdr: m.header(Hdr::PAssertedIdentity).unwrap_or_default(),
            rules: &rules[..n],
            list_hit,
            head: &head_parts[..parts],
        };
        let mut size = Sizer::default();
        records::put_facts(&mut size, &facts);
        let answer_room = 4 + if self.copy_answers {
            evidence::ANSWER_MAX
        } else {
            0
        };
        let mut slot = ring.reserve(size.0 + answer_room, class)?;
        records::put_facts(&mut slot, &facts);
        Some(slot)
    }
}

/// What a recorded call makes of its caller, from the rules that fired:
/// a caller-ID spoof impersonates the presented numbers; a call blocked
/// for its callee alone makes the caller a potential victim; otherwise
/// the caller is the suspect, attributable only when the network vouches
/// for its number (`a_trust`) or the number itself is listed.
fn caller_role(scored: &Scored, set: &ListSet, a_trust: u8) -> u8 {
    if scored.decision == Decision::Allow {
        return records::role::NONE;
    }
    let (mut spoof, mut caller_side, mut callee_side, mut listed) = (false, false, false, false);
    for f in scored.fired().iter().filter(|f| f.counts()) {
        let Some(r) = set.rules.rules.get(usize::from(f.rule)) else {
            continue;
        };
        match r.kind {
            Kind::DomesticOnInternational | Kind::ProtectedCaller => spoof = true,
            Kind::List {
                list: ListId::Allow,
                ..
            } => {}
            Kind::List { list, .. } => {
                if f.who == Some(Who::Callee) || list == ListId::Premium {
                    callee_side = true;
                } else {
                    caller_side = true;
                    listed = true;
                }
            }
            Kind::DestinationVelocity { .. } => callee_side = true,
            _ => caller_side = true,
        }
    }
    if spoof {
        records::role::IMPERSONATED
    } else if caller_side {
        if a_trust == records::trust::NETWORK || listed {
            records::role::SOURCE
        } else {
            records::role::CLAIMED
        }
    } else if callee_side {
        records::role::POTENTIAL_VICTIM
    } else {
        records::role::CLAIMED
    }
}

/// Parts a header section is written in, at most: the start line, each
/// header line and its line break, the note of what was left out, the
/// blank line.
const HEAD_PARTS: usize = 4 + 2 * kuzet_sip::MAX_HEADERS;

/// The request's start line and header section as evidence, in order:
/// every header kuzet knows by name (Via, From, To, Call-ID, CSeq,
/// Contact, P-Asserted-Identity, P-Preferred-Identity, Privacy, Route,
/// Max-Forwards and the rest it parses: everything a rule reads) whole,
/// the others while [`evidence::OTHER_HEADERS_MAX`] bytes last, then a
/// line saying what was left out. Returns how many parts it filled.
fn head_section<'a>(
    m: &'a Message<'_>,
    parts: &mut [&'a [u8]; HEAD_PARTS],
    marker: &'a mut [u8; 96],
) -> usize {
    let bytes = m.bytes();
    let mut n = 0;
    let first_header = m.headers().next().map(|h| h.line.start);
    let start_end =
        first_header.unwrap_or_else(|| memchr::memchr(b'\n', bytes).map_or(bytes.len(), |i| i + 1));
    parts[n] = &bytes[..start_end.min(bytes.len())];
    n += 1;
    let mut budget = evidence::OTHER_HEADERS_MAX;
    let (mut left_lines, mut left_bytes) = (0usize, 0usize);
    for hl in m.headers() {
        let line = &bytes[hl.line.clone()];
        if hl.kind == Hdr::Other {
            if line.len() + 2 > budget {
                left_lines += 1;
                left_bytes += line.len() + 2;
                continue;
            }
            budget -= line.len() + 2;
        }
        if n + 2 >= HEAD_PARTS - 2 {
            left_lines += 1;
            left_bytes += line.len() + 2;
            continue;
        }
        parts[n] = line;
        parts[n + 1] = b"\r\n";
        n += 2;
    }
    if left_lines > 0 {
        let mut w = std::io::Cursor::new(&mut marker[..]);
        let _ = write!(
            w,
            "X-Kuzet-Not-Kept: {left_lines} header lines, {left_bytes} bytes\r\n"
        );
        let len = w.position() as usize;
        parts[n] = &marker[..len];
        n += 1;
    }
    parts[n] = b"\r\n";
    n + 1
}

/// A stack buffer explanations are written into without allocating; what
/// does not fit is cut.
struct Arena {
    buf: [u8; 4096],
    len: usize,
}

impl Arena {
    fn new() -> Arena {
        Arena {
            buf: [0; 4096],
            len: 0,
        }
    }
}

impl std::fmt::Write for Arena {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let take = s.len().min(room);
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
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
    /// What makes a retransmission the same request as the INVITE it
    /// repeats, beyond the transaction key: the Request-URI, every From,
    /// To, P-Asserted-Identity and Privacy value as received, and the top
    /// Via's transport and sent-by. A request that reuses an allowed
    /// INVITE's Call-ID, CSeq and branch with another callee or caller
    /// must not ride on its verdict. The hash is keyed with a secret made
    /// at start-up (SipHash, std's `RandomState`), so nobody outside can
    /// craft a different request with the same digest.
    pub fn request_digest(&self, m: &Message<'_>) -> u64 {
        let mut h = self.digest_key.build_hasher();
        let mut part = |b: &[u8]| {
            h.write_usize(b.len());
            h.write(b);
        };
        part(m.request_uri());
        for hdr in [Hdr::From, Hdr::To, Hdr::PAssertedIdentity, Hdr::Privacy] {
            let mut n = 0u8;
            for v in m.all(hdr) {
                part(v);
                n = n.wrapping_add(1);
            }
            part(&[n]);
        }
        let top = split_values(m.header(Hdr::Via).unwrap_or_default())
            .next()
            .unwrap_or_default();
        match parse_via(top) {
            Ok(v) => {
                part(v.transport);
                part(v.host);
                part(&v.port.unwrap_or(0).to_le_bytes());
            }
            Err(_) => part(top),
        }
        h.finish()
    }

    /// The verdict an earlier copy of this INVITE got, if it is in the
    /// window, the snapshot that judged it is still in force, and it is
    /// the same request (`digest`). One that reuses the transaction with
    /// different identities or routing is counted and judged afresh.
    fn retransmission(
        &self,
        tx: u64,
        digest: u64,
        set: &ListSet,
    ) -> Option<(Scored, Option<VerdictId>)> {
        let t = self.txs.get(tx)?;
        let age = self.now_ms().saturating_sub(t.created_ms);
        if age >= self.tx_window_ms || t.generation != set.generation {
            return None;
        }
        if t.digest != digest {
            self.metrics.inc(Counter::TransactionReused);
            return None;
        }
        let id = (t.verdict_seq != 0).then_some(VerdictId {
            node: self.node,
            seq: t.verdict_seq,
        });
        Some((t.scored, id))
    }

    /// Keeps a verdict for the transaction's window (a full table only
    /// means a retransmission would be scored again: counted).
    fn remember(
        &self,
        tx: u64,
        digest: u64,
        scored: &Scored,
        id: Option<VerdictId>,
        set: &ListSet,
    ) {
        let rec = TxRec {
            created_ms: self.now_ms(),
            digest,
            generation: set.generation,
            verdict_seq: id.map_or(0, |i| i.seq),
            scored: *scored,
        };
        if self.txs.upsert(tx, |t| *t = rec).is_err() {
            self.metrics.inc(Counter::TransactionsUntracked);
        }
    }
}

/// A judged INVITE transaction: when, the digest of the request judged,
/// under which snapshot, its verdict (the first [`Scored::PACKED_FIRED`]
/// rules that fired) and its verdict id's sequence number (0: not
/// recorded).
#[derive(Clone, Copy)]
pub(super) struct TxRec {
    pub(super) created_ms: u64,
    digest: u64,
    generation: u64,
    verdict_seq: u64,
    scored: Scored,
}

impl Default for TxRec {
    fn default() -> Self {
        TxRec {
            created_ms: 0,
            digest: 0,
            generation: 0,
            verdict_seq: 0,
            scored: Scored::ALLOW,
        }
    }
}

impl Packed for TxRec {
    const WORDS: usize = 4 + Scored::PACKED_WORDS;
    fn unpack(w: &[u64]) -> Self {
        TxRec {
            created_ms: w[0],
            digest: w[1],
            generation: w[2],
            verdict_seq: w[3],
            scored: Scored::unpack(&w[4..]),
        }
    }
    fn pack(&self, w: &mut [u64]) {
        w[0] = self.created_ms;
        w[1] = self.digest;
        w[2] = self.generation;
        w[3] = self.verdict_seq;
        self.scored.pack(&mut w[4..]);
    }
}

/// A call's verdict, the snapshot that gave it, the A-number it scored,
/// its verdict id when it was recorded, and the public id a caller is
/// given (blocks and redirects only).
pub(super) struct Judged<'l> {
    pub(super) scored: Scored,
    pub(super) set: &'l ListSet,
    pub(super) a: Option<Number>,
    /// The B-number it scored.
    pub(super) b: Option<Number>,
    pub(super) id: Option<VerdictId>,
    pub(super) public: Option<PublicId>,
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
