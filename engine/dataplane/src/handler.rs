//! One SIP message in, one action out: the call path.
//!
//! [`Handler::handle`] is what every transport calls for every message. It
//! validates the request (RFC 3261 and the RFC 4475 torture cases), pulls
//! out the A- and B-numbers, scores the call against the list snapshot in
//! force and writes the reply or the forwarded message into a buffer the
//! caller owns and reuses. It does no I/O, never awaits, takes no lock, and
//! allocates nothing per call: the list snapshot is an `ArcSwap` load and
//! every header is a borrow from the datagram.

use std::hash::Hasher;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use kuzet_rules::ruleset::{CallInput, Decision, RuleLists, RuleSet, Scored};
use kuzet_rules::state::{CallTime, Outcome as CallOutcome, Tracker};
use kuzet_rules::{evaluate, Action, CallFacts, ListSet, Number, NumberingPlan, Verdict};

use kuzet_sip::syntax::{
    param, parse_cseq, parse_name_addr, parse_uri, parse_via, split_values, NameAddr, Scheme,
    SyntaxError, Uri,
};
use kuzet_sip::{parse, push_u64, Hdr, Message, ParseError, Transport};
use serde::Deserialize;

use crate::metrics::{Counter, Metrics};
use crate::trunks::TrunkMap;

/// How kuzet sits on the SIP path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Answer each INVITE with 302 (continue) or 603 (block).
    Redirect,
    /// Forward requests statelessly to the next hop.
    Proxy,
}

/// Where the A-number is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NumberSource {
    /// P-Asserted-Identity.
    Pai,
    /// From.
    From,
}

/// What the call path needs to know, fixed at start-up. The binary builds
/// it from the config file.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Redirect or proxy.
    pub mode: Mode,
    /// `host:port` kuzet writes in its own Via (proxy mode).
    pub via_address: SocketAddr,
    /// Normalizes every number the call path reads.
    pub plan: NumberingPlan,
    /// Source address to trunk.
    pub trunks: TrunkMap,
    /// Where the A-number comes from, first match wins.
    pub a_order: Vec<NumberSource>,
    /// 603, 403 or 607.
    pub block_code: u16,
    /// A request older than this when scoring starts is allowed unscored.
    pub failopen_budget: Duration,
    /// Where proxy mode forwards.
    pub next_hop: Option<SocketAddr>,
    /// Proxy mode: refuse sources no trunk covers (when trunks exist).
    pub reject_unknown_source: bool,
    /// The code they are refused with.
    pub unknown_source_code: u16,
    /// Bound on behaviour state: A-numbers tracked.
    pub max_tracked_numbers: usize,
    /// A number not seen for this long is forgotten.
    pub idle_ttl_secs: u32,
    /// Local time for rule scopes, minutes east of UTC.
    pub utc_offset_minutes: i32,
}

impl Default for Settings {
    /// The documented defaults of `deploy/kuzet.toml`: redirect mode on
    /// 127.0.0.1:5060, the Kazakhstan plan, no trunks.
    fn default() -> Self {
        Settings {
            mode: Mode::Redirect,
            via_address: SocketAddr::from(([127, 0, 0, 1], 5060)),
            plan: NumberingPlan::kazakhstan(),
            trunks: TrunkMap::default(),
            a_order: vec![NumberSource::Pai, NumberSource::From],
            block_code: 603,
            failopen_budget: Duration::from_millis(50),
            next_hop: None,
            reject_unknown_source: true,
            unknown_source_code: 403,
            max_tracked_numbers: 1_000_000,
            idle_ttl_secs: 86_400,
            utc_offset_minutes: 300,
        }
    }
}

/// The branch prefix kuzet puts on its own Via (RFC 3261 magic cookie + tag).
const BRANCH_PREFIX: &[u8] = b"z9hG4bK-kz";

/// What the transport should do with the bytes left in the output buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send the buffer back to the source.
    Reply,
    /// Send the buffer to this address over UDP.
    Forward(SocketAddr),
    /// Send the buffer down the TCP connection with this id.
    ToConnection(u64),
    /// Send nothing.
    Drop,
}

/// The list snapshot: swapped whole on reload, loaded once per call.
pub type SharedLists = Arc<ArcSwap<ListSet>>;

/// A rule verdict worth a log line, sent to the control thread (the call
/// path never writes logs itself).
pub struct RuleEvent {
    pub set: Arc<ListSet>,
    pub scored: Scored,
    pub a: Option<Number>,
    pub b: Option<Number>,
}

/// A call's verdict: from the lists alone, or from the rule set.
enum Judged<'l> {
    Lists(Verdict<'l>),
    /// The rule set's verdict, and the A-number it scored.
    Rules(Scored, &'l RuleSet, Option<Number>),
}

impl Judged<'_> {
    fn decision(&self) -> Decision {
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

/// Everything the call path needs, immutable after start-up.
pub struct Handler {
    mode: Mode,
    plan: NumberingPlan,
    lists: SharedLists,
    trunks: TrunkMap,
    a_order: Vec<NumberSource>,
    block_code: u16,
    budget: Duration,
    next_hop: Option<SocketAddr>,
    /// `host:port` of kuzet's own Via.
    via_sent_by: Vec<u8>,
    reject_unknown: bool,
    unknown_code: u16,
    metrics: Arc<Metrics>,
    /// Behaviour state: per A-number, and per premium destination.
    callers: Tracker,
    destinations: Tracker,
    started: Instant,
    utc_offset_s: i64,
    events: Option<std::sync::mpsc::SyncSender<RuleEvent>>,
    /// Proxy mode: calls in progress, by Call-ID hash, to learn outcomes
    /// (ring time, talk time, concurrency) from the messages forwarded.
    calls: dashmap::DashMap<u64, CallRec>,
    calls_cap: usize,
    calls_ttl_ms: u64,
}

/// A call proxy mode has seen start: who called, when it was sent on, and
/// when it was answered (0 = not yet), in ms since start-up.
#[derive(Clone, Copy, Debug)]
struct CallRec {
    a: u64,
    invited_ms: u64,
    answered_ms: u64,
}

/// A request refused before scoring: the code and reason phrase to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    pub code: u16,
    pub reason: &'static str,
}

const fn reject(code: u16, reason: &'static str) -> Reject {
    Reject { code, reason }
}

/// The pieces of a request that validation decoded and later steps reuse,
/// so nothing on the call path is decoded twice.
struct Checked<'a> {
    to: NameAddr<'a>,
    ruri: Uri<'a>,
    max_forwards: Option<u32>,
}

impl Handler {
    /// Builds a handler from its settings, the shared list snapshot and
    /// the shared counters.
    pub fn new(s: Settings, lists: SharedLists, metrics: Arc<Metrics>) -> Handler {
        let advertised = s.via_address;
        let mut via_sent_by = Vec::new();
        match advertised.ip() {
            IpAddr::V4(ip) => {
                let _ = write!(via_sent_by, "{ip}:{}", advertised.port());
            }
            IpAddr::V6(ip) => {
                let _ = write!(via_sent_by, "[{ip}]:{}", advertised.port());
            }
        }
        Handler {
            mode: s.mode,
            plan: s.plan,
            lists,
            trunks: s.trunks,
            a_order: s.a_order,
            block_code: s.block_code,
            budget: s.failopen_budget,
            next_hop: s.next_hop,
            via_sent_by,
            reject_unknown: s.reject_unknown_source,
            unknown_code: s.unknown_source_code,
            metrics,
            callers: Tracker::new(s.max_tracked_numbers, s.idle_ttl_secs),
            destinations: Tracker::new(s.max_tracked_numbers / 16 + 1024, s.idle_ttl_secs),
            started: Instant::now(),
            utc_offset_s: i64::from(s.utc_offset_minutes) * 60,
            events: None,
            calls: dashmap::DashMap::new(),
            calls_cap: s.max_tracked_numbers,
            calls_ttl_ms: u64::from(s.idle_ttl_secs) * 1000,
        }
    }

    /// Rule verdicts worth logging go to `tx` (bounded; full = dropped and
    /// counted).
    pub fn with_events(mut self, tx: std::sync::mpsc::SyncSender<RuleEvent>) -> Handler {
        self.events = Some(tx);
        self
    }

    /// Forgets idle numbers and keeps the trackers under their caps; the
    /// control thread calls it. Returns how many numbers were dropped.
    pub fn sweep(&self) -> usize {
        let now = self.call_time(Instant::now()).secs;
        // A call record left by a lost BYE or CANCEL goes after the TTL.
        let now_ms = self.started.elapsed().as_millis() as u64;
        let ttl_ms = self.calls_ttl_ms;
        self.calls
            .retain(|_, r| now_ms.saturating_sub(r.invited_ms.max(r.answered_ms)) < ttl_ms);
        self.callers.sweep(now) + self.destinations.sweep(now)
    }

    /// Proxy mode: learns call outcomes from what it forwards. An INVITE
    /// opens a record; a 2xx to it marks the call answered (one more
    /// concurrent call); a CANCEL is a ring of that length; another final
    /// answer is a ring that ran out; a BYE after an answer is a call of
    /// that length (one concurrent call fewer).
    fn learn(&self, m: &Message<'_>, a: Option<Number>) {
        let Some(id) = m.header(Hdr::CallId) else {
            return;
        };
        let mut h = Fnv::default();
        h.write(id);
        let key = h.finish();
        let now_ms = self.started.elapsed().as_millis() as u64;
        let now = self.call_time(Instant::now()).secs;
        let policy = self
            .lists
            .load()
            .rules
            .as_ref()
            .map(|r| r.outcomes)
            .unwrap_or_default();
        if m.is_request() {
            match m.method() {
                b"INVITE" => {
                    if let Some(a) = a {
                        if self.calls.len() < self.calls_cap {
                            self.calls.entry(key).or_insert(CallRec {
                                a: a.raw(),
                                invited_ms: now_ms,
                                answered_ms: 0,
                            });
                        }
                    }
                }
                b"CANCEL" => {
                    if let Some((_, r)) = self.calls.remove_if(&key, |_, r| r.answered_ms == 0) {
                        let ring_ms =
                            now_ms.saturating_sub(r.invited_ms).min(u64::from(u32::MAX)) as u32;
                        self.callers
                            .outcome(r.a, now, CallOutcome::Cancelled { ring_ms }, &policy);
                    }
                }
                b"BYE" => {
                    if let Some((_, r)) = self.calls.remove_if(&key, |_, r| r.answered_ms > 0) {
                        let talk_ms = now_ms
                            .saturating_sub(r.answered_ms)
                            .min(u64::from(u32::MAX)) as u32;
                        self.callers
                            .outcome(r.a, now, CallOutcome::Answered { talk_ms }, &policy);
                        self.callers.concurrent(r.a, now, -1);
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
            if let Some(mut r) = self.calls.get_mut(&key) {
                if r.answered_ms == 0 {
                    r.answered_ms = now_ms.max(1);
                    self.callers.concurrent(r.a, now, 1);
                }
            }
        } else if let Some((_, r)) = self.calls.remove_if(&key, |_, r| r.answered_ms == 0) {
            // Refused or rang out (a CANCELled call was removed already).
            let ring_ms = now_ms.saturating_sub(r.invited_ms).min(u64::from(u32::MAX)) as u32;
            self.callers.outcome(
                r.a,
                now,
                CallOutcome::Cancelled {
                    ring_ms: ring_ms.max(policy.short_ring_ms),
                },
                &policy,
            );
        }
    }

    /// Numbers tracked now (callers, destinations), and callers scored
    /// without behaviour state because the tracker was full.
    pub fn tracked(&self) -> (usize, usize, u64) {
        (
            self.callers.len(),
            self.destinations.len(),
            self.callers
                .full_misses
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    fn call_time(&self, at: Instant) -> CallTime {
        let secs = at.saturating_duration_since(self.started).as_secs() as u32 + 1;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
            + self.utc_offset_s;
        let days = wall.div_euclid(86_400);
        CallTime {
            secs,
            hour: (wall.rem_euclid(86_400) / 3600) as u8,
            // 1970-01-01 was a Thursday; 0 = Monday.
            weekday: (days + 3).rem_euclid(7) as u8,
        }
    }

    /// The shared counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Handles one message that arrived at `received` from `src`. `conn` is
    /// the TCP connection id, if it came over TCP. The reply or forwarded
    /// message is left in `out`.
    pub fn handle(
        &self,
        bytes: &[u8],
        src: SocketAddr,
        conn: Option<u64>,
        received: Instant,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let transport = if conn.is_some() {
            Transport::Stream
        } else {
            Transport::Datagram
        };
        let m = match parse(bytes, transport) {
            Ok(m) => m,
            Err(ParseError::Incomplete | ParseError::Empty) => return Outcome::Drop,
            Err(_) => {
                self.metrics.inc(Counter::Unparseable);
                return Outcome::Drop;
            }
        };
        self.handle_message(&m, src, conn, received, out)
    }

    /// Handles an already indexed message (the TCP framer parses first).
    pub fn handle_message(
        &self,
        m: &Message<'_>,
        src: SocketAddr,
        conn: Option<u64>,
        received: Instant,
        out: &mut Vec<u8>,
    ) -> Outcome {
        out.clear();
        if !m.is_request() {
            self.metrics.inc(Counter::Responses);
            return match self.mode {
                Mode::Proxy if m.defect().is_none() => self.route_response(m, out),
                _ => {
                    self.metrics.inc(Counter::ResponsesDropped);
                    Outcome::Drop
                }
            };
        }
        self.metrics.inc(Counter::Requests);
        let is_ack = m.method() == b"ACK"
            || (m.method().is_empty()
                && m.header(Hdr::CSeq)
                    .and_then(|c| parse_cseq(c).ok())
                    .is_some_and(|(_, meth)| meth == b"ACK"));
        let checked = match check_request(m, self.mode) {
            Ok(c) => c,
            Err(rej) => {
                self.metrics.inc(Counter::BadRequests);
                if is_ack || !can_answer(m) {
                    return Outcome::Drop;
                }
                self.reply(m, None, rej.code, rej.reason, out, |o| {
                    if rej.code == 420 {
                        unsupported_header(m, o);
                    }
                });
                return Outcome::Reply;
            }
        };
        if checked.max_forwards == Some(0) && !(self.mode == Mode::Redirect && is_ack) {
            if is_ack {
                return Outcome::Drop;
            }
            self.reply(m, Some(&checked), 483, "Too Many Hops", out, |_| {});
            return Outcome::Reply;
        }
        match self.mode {
            Mode::Redirect => self.redirect(m, &checked, src, received, out),
            Mode::Proxy => self.proxy(m, &checked, src, conn, received, out),
        }
    }

    fn redirect(
        &self,
        m: &Message<'_>,
        c: &Checked<'_>,
        src: SocketAddr,
        received: Instant,
        out: &mut Vec<u8>,
    ) -> Outcome {
        match m.method() {
            b"INVITE" => {
                let lists = self.lists.load();
                let v = self.score(m, c, src, received, &lists);
                match v.decision() {
                    Decision::Block => self.reply_blocked(m, c, &v, out),
                    d => {
                        let contact = match (&v, d) {
                            (Judged::Rules(_, r, _), Decision::Redirect) => r
                                .thresholds
                                .redirect_uri
                                .as_deref()
                                .map_or(m.request_uri(), str::as_bytes),
                            _ => m.request_uri(),
                        };
                        self.reply(m, Some(c), 302, "Moved Temporarily", out, |o| {
                            o.extend_from_slice(b"Contact: <");
                            o.extend_from_slice(contact);
                            o.extend_from_slice(b">\r\n");
                            verdict_header(o, &v);
                        });
                    }
                }
                Outcome::Reply
            }
            b"ACK" => {
                self.metrics.inc(Counter::AcksAbsorbed);
                Outcome::Drop
            }
            // Outcomes change how later calls score: with trunks configured,
            // only a known source may report them.
            b"PUBLISH"
                if is_outcome(m)
                    && !self.trunks.is_empty()
                    && self.trunks.lookup(src.ip()).is_none() =>
            {
                self.metrics.inc(Counter::UnknownSource);
                self.reply(m, Some(c), 403, "Unknown Source", out, |_| {});
                Outcome::Reply
            }
            b"PUBLISH" if is_outcome(m) => self.outcome(m, c, out),
            b"OPTIONS" => {
                self.reply(m, Some(c), 200, "OK", out, |o| {
                    o.extend_from_slice(b"Allow: INVITE, ACK, OPTIONS, PUBLISH\r\n");
                });
                Outcome::Reply
            }
            _ => {
                self.reply(m, Some(c), 405, "Method Not Allowed", out, |o| {
                    o.extend_from_slice(b"Allow: INVITE, ACK, OPTIONS\r\n");
                });
                Outcome::Reply
            }
        }
    }

    fn proxy(
        &self,
        m: &Message<'_>,
        c: &Checked<'_>,
        src: SocketAddr,
        conn: Option<u64>,
        received: Instant,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let Some(next_hop) = self.next_hop else {
            return Outcome::Drop;
        };
        let method = m.method();
        if self.reject_unknown && !self.trunks.is_empty() && self.trunks.lookup(src.ip()).is_none()
        {
            self.metrics.inc(Counter::UnknownSource);
            if method == b"ACK" {
                return Outcome::Drop;
            }
            self.reply(m, Some(c), self.unknown_code, "Unknown Source", out, |_| {});
            return Outcome::Reply;
        }
        if method == b"PUBLISH" && is_outcome(m) {
            return self.outcome(m, c, out);
        }
        // An OPTIONS to kuzet itself (no user part) is a keep-alive ping from
        // a dispatcher in front: answer it rather than forward it.
        if method == b"OPTIONS" && c.ruri.user.is_none() {
            self.reply(m, Some(c), 200, "OK", out, |_| {});
            return Outcome::Reply;
        }
        let lists;
        let mut verdict = None;
        if method == b"INVITE" {
            lists = self.lists.load();
            let v = self.score(m, c, src, received, &lists);
            if v.decision() == Decision::Block {
                self.reply_blocked(m, c, &v, out);
                return Outcome::Reply;
            }
            verdict = Some(v);
        }
        if self
            .forward(m, c, src, conn, verdict.as_ref(), out)
            .is_err()
        {
            out.clear();
            self.metrics.inc(Counter::BadRequests);
            if method == b"ACK" {
                return Outcome::Drop;
            }
            self.reply(m, Some(c), 400, "Bad Via", out, |_| {});
            return Outcome::Reply;
        }
        self.metrics.inc(Counter::Forwarded);
        // Outcomes matter only to rules; without a rule file, learn nothing.
        // An INVITE reuses the A-number its scoring decoded.
        let learning = match (&verdict, method) {
            (Some(Judged::Rules(_, _, a)), _) => Some(*a),
            (_, b"CANCEL" | b"BYE") if self.lists.load().rules.is_some() => Some(None),
            _ => None,
        };
        if let Some(a) = learning {
            self.learn(m, a);
        }
        Outcome::Forward(next_hop)
    }

    /// Extracts the call facts and scores them; fails open.
    fn score<'l>(
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

    fn log_event(&self, scored: Scored, a: Option<Number>, b: Option<Number>) {
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
    fn outcome(&self, m: &Message<'_>, c: &Checked<'_>, out: &mut Vec<u8>) -> Outcome {
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
        let policy = self
            .lists
            .load()
            .rules
            .as_ref()
            .map(|r| r.outcomes)
            .unwrap_or_default();
        let result = match (caller, what) {
            (None, _) => Err("caller missing or not a number"),
            (Some(n), Some(b"cancelled")) => match ring {
                Some(ring_ms) => {
                    self.callers
                        .outcome(n.raw(), now, CallOutcome::Cancelled { ring_ms }, &policy);
                    Ok(())
                }
                None => Err("cancelled needs ring_ms"),
            },
            (Some(n), Some(b"answered")) => match talk {
                Some(talk_ms) => {
                    self.callers
                        .outcome(n.raw(), now, CallOutcome::Answered { talk_ms }, &policy);
                    Ok(())
                }
                None => Err("answered needs talk_ms"),
            },
            (Some(n), Some(b"started")) => {
                self.callers.concurrent(n.raw(), now, 1);
                Ok(())
            }
            (Some(n), Some(b"ended")) => {
                self.callers.concurrent(n.raw(), now, -1);
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

    /// The number in the first `hdr` header that has one, and whether any
    /// such header claimed a number (a user part starting with '+' or a
    /// digit) at all: a claimed number that does not normalize is invalid.
    fn header_number(&self, m: &Message<'_>, hdr: Hdr) -> (Option<Number>, bool) {
        let mut claimed = false;
        for line in m.all(hdr) {
            for value in split_values(line) {
                let Ok(na) = parse_name_addr(value) else {
                    continue;
                };
                let Ok(uri) = parse_uri(na.uri) else { continue };
                let Some(user) = uri.user else { continue };
                claimed |= user
                    .first()
                    .is_some_and(|b| *b == b'+' || b.is_ascii_digit());
                if let Some(n) = uri.user_number().and_then(|d| self.plan.normalize(d)) {
                    return (Some(n), true);
                }
            }
        }
        (None, claimed)
    }

    /// The A-number, from the sources in configured order.
    pub fn a_number(&self, m: &Message<'_>) -> Option<Number> {
        self.a_order.iter().find_map(|src| {
            let hdr = match src {
                NumberSource::Pai => Hdr::PAssertedIdentity,
                NumberSource::From => Hdr::From,
            };
            self.header_number(m, hdr).0
        })
    }

    /// The B-number, from the Request-URI.
    pub fn b_number(&self, m: &Message<'_>) -> Option<Number> {
        self.number_of_uri(&parse_uri(m.request_uri()).ok()?)
    }

    fn number_of_uri(&self, uri: &Uri<'_>) -> Option<Number> {
        self.plan.normalize(uri.user_number()?)
    }

    fn reply_blocked(&self, m: &Message<'_>, c: &Checked<'_>, v: &Judged<'_>, out: &mut Vec<u8>) {
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
    fn reply(
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

    /// Writes the request as forwarded to the next hop: kuzet's Via on top,
    /// the previous top Via marked with received/rport, Max-Forwards one
    /// lower, the verdict header when flagged, everything else as it came.
    fn forward(
        &self,
        m: &Message<'_>,
        c: &Checked<'_>,
        src: SocketAddr,
        conn: Option<u64>,
        verdict: Option<&Judged<'_>>,
        out: &mut Vec<u8>,
    ) -> Result<(), SyntaxError> {
        let bytes = m.bytes();
        let line_end = memchr::memchr(b'\n', bytes).unwrap_or(0);
        let start_line = &bytes[..line_end];
        let start_line = start_line.strip_suffix(b"\r").unwrap_or(start_line);
        // A redirect decision in proxy mode rewrites the Request-URI to the
        // configured announcement / anti-fraud desk.
        let redirect_to = match verdict {
            Some(j @ Judged::Rules(_, r, _)) if j.decision() == Decision::Redirect => {
                r.thresholds.redirect_uri.as_deref()
            }
            _ => None,
        };
        match redirect_to {
            Some(uri) => {
                out.extend_from_slice(m.method());
                out.push(b' ');
                out.extend_from_slice(uri.as_bytes());
                out.extend_from_slice(b" SIP/2.0");
            }
            None => out.extend_from_slice(start_line),
        }
        out.extend_from_slice(b"\r\nVia: SIP/2.0/UDP ");
        out.extend_from_slice(&self.via_sent_by);
        out.extend_from_slice(b";branch=");
        out.extend_from_slice(BRANCH_PREFIX);
        let top = m.header(Hdr::Via).unwrap_or_default();
        let mut h = Fnv::default();
        h.write(split_values(top).next().unwrap_or_default());
        push_hex(out, h.finish());
        if let Some(id) = conn {
            out.extend_from_slice(b";kzc=");
            push_u64(out, id);
        }
        out.extend_from_slice(b"\r\n");
        let mut first_via = true;
        for hl in m.headers() {
            match hl.kind {
                Hdr::Via if first_via => {
                    first_via = false;
                    out.extend_from_slice(b"Via: ");
                    let top_value = split_values(hl.value).next().unwrap_or_default();
                    let via = parse_via(top_value)?;
                    // Copy the value up to the parameters, then each
                    // parameter, filling in rport; then add received.
                    let params_at = offset_in(hl.value, via.params).unwrap_or(top_value.len());
                    out.extend_from_slice(&hl.value[..params_at]);
                    for p in via.params.split(|&b| b == b';').filter(|p| !p.is_empty()) {
                        out.push(b';');
                        let p = kuzet_sip::syntax::trim_lws(p);
                        if p.eq_ignore_ascii_case(b"rport") {
                            out.extend_from_slice(b"rport=");
                            push_u64(out, u64::from(src.port()));
                        } else {
                            out.extend_from_slice(p);
                        }
                    }
                    out.extend_from_slice(b";received=");
                    let _ = write!(out, "{}", src.ip());
                    let rest_at = offset_in(hl.value, top_value)
                        .map_or(hl.value.len(), |o| o + top_value.len());
                    out.extend_from_slice(&hl.value[rest_at..]);
                    out.extend_from_slice(b"\r\n");
                }
                Hdr::MaxForwards => {
                    out.extend_from_slice(b"Max-Forwards: ");
                    push_u64(
                        out,
                        u64::from(c.max_forwards.unwrap_or(70).saturating_sub(1)),
                    );
                    out.extend_from_slice(b"\r\n");
                }
                _ => {
                    out.extend_from_slice(&bytes[hl.line.clone()]);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        if c.max_forwards.is_none() {
            out.extend_from_slice(b"Max-Forwards: 69\r\n");
        }
        if let Some(v) = verdict {
            if matches!(v.decision(), Decision::Flag | Decision::Redirect) {
                verdict_header(out, v);
            }
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(m.body());
        Ok(())
    }

    /// Proxy mode: pops kuzet's Via off a response and sends it on to the
    /// next Via (its received/rport when present).
    fn route_response(&self, m: &Message<'_>, out: &mut Vec<u8>) -> Outcome {
        let drop = |metrics: &Metrics| {
            metrics.inc(Counter::ResponsesDropped);
            Outcome::Drop
        };
        let Some(top_line) = m.header(Hdr::Via) else {
            return drop(&self.metrics);
        };
        let mut values = split_values(top_line);
        let top = values.next().unwrap_or_default();
        let Ok(ours) = parse_via(top) else {
            return drop(&self.metrics);
        };
        let is_ours = ours.branch().is_some_and(|b| b.starts_with(BRANCH_PREFIX))
            && sent_by_matches(&ours, &self.via_sent_by);
        if !is_ours {
            return drop(&self.metrics);
        }
        let conn = param(ours.params, b"kzc")
            .and_then(kuzet_sip::parse_u32)
            .map(u64::from);
        let rest_of_line = values.next();
        let bytes = m.bytes();
        let line_end = memchr::memchr(b'\n', bytes).unwrap_or(0);
        out.extend_from_slice(&bytes[..=line_end]);
        let mut next_via: Option<&[u8]> = rest_of_line;
        let mut first = true;
        for hl in m.headers() {
            if hl.kind == Hdr::Via && first {
                first = false;
                if let Some(at) = rest_of_line.and_then(|r| offset_in(hl.value, r)) {
                    out.extend_from_slice(b"Via: ");
                    out.extend_from_slice(&hl.value[at..]);
                    out.extend_from_slice(b"\r\n");
                }
                continue;
            }
            if hl.kind == Hdr::Via && next_via.is_none() {
                next_via = split_values(hl.value).next();
            }
            out.extend_from_slice(&bytes[hl.line.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(m.body());
        self.metrics.inc(Counter::ResponsesRouted);
        if self.lists.load().rules.is_some() {
            self.learn(m, None);
        }
        if let Some(id) = conn {
            return Outcome::ToConnection(id);
        }
        let Some(dest) = next_via
            .and_then(|v| parse_via(v).ok())
            .and_then(|v| via_destination(&v))
        else {
            out.clear();
            return drop(&self.metrics);
        };
        Outcome::Forward(dest)
    }
}

/// Whether a response makes sense: it needs a Via to echo. Responses go
/// back to the source address, so even a malformed Via (RFC 4475
/// badinv01) can be answered; whatever else is missing is left out.
fn can_answer(m: &Message<'_>) -> bool {
    m.header(Hdr::Via).is_some()
}

/// RFC 3261 section 8.2 and 16.3 checks, in the order RFC 4475 expects.
fn check_request<'a>(m: &Message<'a>, mode: Mode) -> Result<Checked<'a>, Reject> {
    if let Some(d) = m.defect() {
        return Err(reject(400, d.reason()));
    }
    if m.version() != b"SIP/2.0" {
        return Err(reject(505, "Version Not Supported"));
    }
    for (h, name) in [
        (Hdr::Via, "Missing Via"),
        (Hdr::From, "Missing From"),
        (Hdr::To, "Missing To"),
        (Hdr::CallId, "Missing Call-ID"),
        (Hdr::CSeq, "Missing CSeq"),
    ] {
        if m.header(h).is_none() {
            return Err(reject(400, name));
        }
    }
    for (h, name) in [
        (Hdr::From, "Multiple From"),
        (Hdr::To, "Multiple To"),
        (Hdr::CallId, "Multiple Call-ID"),
        (Hdr::CSeq, "Multiple CSeq"),
        (Hdr::MaxForwards, "Multiple Max-Forwards"),
    ] {
        if m.count(h) > 1 {
            return Err(reject(400, name));
        }
    }
    let (_, cseq_method) =
        parse_cseq(m.header(Hdr::CSeq).unwrap_or_default()).map_err(|_| reject(400, "Bad CSeq"))?;
    if cseq_method != m.method() {
        return Err(reject(400, "CSeq Method Mismatch"));
    }
    let max_forwards = match m.header(Hdr::MaxForwards) {
        None => None,
        Some(v) => match kuzet_sip::parse_u32(v) {
            Some(n) if n <= 255 => Some(n),
            _ => return Err(reject(400, "Bad Max-Forwards")),
        },
    };
    parse_via(
        split_values(m.header(Hdr::Via).unwrap_or_default())
            .next()
            .unwrap_or_default(),
    )
    .map_err(|_| reject(400, "Bad Via"))?;
    parse_name_addr(m.header(Hdr::From).unwrap_or_default())
        .map_err(|_| reject(400, "Bad From"))?;
    let to = parse_name_addr(m.header(Hdr::To).unwrap_or_default())
        .map_err(|_| reject(400, "Bad To"))?;
    for line in m.all(Hdr::Contact) {
        for v in split_values(line) {
            if v != b"*" {
                parse_name_addr(v).map_err(|_| reject(400, "Bad Contact"))?;
            }
        }
    }
    let ruri = parse_uri(m.request_uri()).map_err(|_| reject(400, "Bad Request-URI"))?;
    match ruri.scheme {
        Scheme::Sip | Scheme::Sips | Scheme::Tel => {}
        Scheme::Other => return Err(reject(416, "Unsupported URI Scheme")),
    }
    if !ruri.headers.is_empty() {
        return Err(reject(400, "Headers Not Allowed In Request-URI"));
    }
    let require = match mode {
        Mode::Redirect => Hdr::Require,
        Mode::Proxy => Hdr::ProxyRequire,
    };
    if m.method() != b"ACK" && m.method() != b"CANCEL" && m.header(require).is_some() {
        return Err(reject(420, "Bad Extension"));
    }
    Ok(Checked {
        to,
        ruri,
        max_forwards,
    })
}

fn unsupported_header(m: &Message<'_>, out: &mut Vec<u8>) {
    for h in [Hdr::Require, Hdr::ProxyRequire] {
        for line in m.all(h) {
            header(out, b"Unsupported", line);
        }
    }
}

/// A `PUBLISH` for kuzet's outcome API (`Event: kuzet-outcome`).
fn is_outcome(m: &Message<'_>) -> bool {
    m.header_named(b"Event")
        .is_some_and(|e| kuzet_sip::syntax::trim_lws(e).eq_ignore_ascii_case(b"kuzet-outcome"))
}

/// `fmt::Write` into a byte buffer, so explanations are written in place.
struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        // A quote would end the header's quoted string early.
        self.0
            .extend(s.bytes().map(|b| if b == b'"' { b'\'' } else { b }));
        Ok(())
    }
}

fn verdict_header(out: &mut Vec<u8>, j: &Judged<'_>) {
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

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_hex(out: &mut Vec<u8>, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize]);
    }
}

/// Where `inner` starts within `outer`, when it is a sub-slice of it.
fn offset_in(outer: &[u8], inner: &[u8]) -> Option<usize> {
    let o = outer.as_ptr() as usize;
    let i = inner.as_ptr() as usize;
    (i >= o && i + inner.len() <= o + outer.len()).then(|| i - o)
}

fn sent_by_matches(via: &kuzet_sip::syntax::Via<'_>, sent_by: &[u8]) -> bool {
    let port = via.port.unwrap_or(5060);
    let Some(colon) = sent_by.iter().rposition(|&b| b == b':') else {
        return false;
    };
    via.host.eq_ignore_ascii_case(&sent_by[..colon])
        && kuzet_sip::parse_u32(&sent_by[colon + 1..]) == Some(u32::from(port))
}

/// Where a response goes for this Via: received/rport first (RFC 3581),
/// else the sent-by address. Host names are not resolved on the call path.
fn via_destination(v: &kuzet_sip::syntax::Via<'_>) -> Option<SocketAddr> {
    let host = param(v.params, b"received").unwrap_or(v.host);
    let host = host
        .strip_prefix(b"[")
        .and_then(|h| h.strip_suffix(b"]"))
        .unwrap_or(host);
    let ip: IpAddr = std::str::from_utf8(host).ok()?.parse().ok()?;
    let port = param(v.params, b"rport")
        .and_then(kuzet_sip::parse_u32)
        .and_then(|p| u16::try_from(p).ok())
        .or(v.port)
        .unwrap_or(5060);
    Some(SocketAddr::new(ip, port))
}

/// FNV-1a: stable across runs and nodes, for branches and To-tags.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests;
