//! One SIP message in, one action out: the call path.
//!
//! [`Handler::handle`] is what every transport calls for every message. It
//! validates the request (RFC 3261 and the RFC 4475 torture cases), pulls
//! out the A- and B-numbers, scores the call against the list snapshot in
//! force and writes the reply or the forwarded message into a buffer the
//! caller owns and reuses. It does no I/O, never awaits, takes no lock, and
//! allocates nothing per call: the list snapshot is an `ArcSwap` load and
//! every header is a borrow from the datagram. `tests/alloc.rs` counts it
//! with a counting global allocator, call by call and on a real UDP
//! worker, in both modes: after warm-up, exactly zero.

mod calls;
pub mod evidence;
mod judge;
mod numbers;
mod outcome;
mod proxy;
mod redirect;
mod reply;
mod validate;

use std::hash::{BuildHasher, Hasher};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use kuzet_rules::ruleset::{CallInput, Decision, Scored};
use kuzet_rules::state::table::{self, Packed, Table};
use kuzet_rules::state::{CallTime, Outcome as CallOutcome, State};
use kuzet_rules::{ListSet, Number, NumberingPlan};

use kuzet_sip::syntax::{
    param, parse_cseq, parse_name_addr, parse_uri, parse_via, split_values, NameAddr, Scheme,
    SyntaxError, Uri,
};
use kuzet_sip::{parse, push_u64, write, Hdr, Message, ParseError, Transport};
use serde::Deserialize;

use crate::metrics::{Counter, Metrics};
use crate::trunks::{Trunk, TrunkMap};

use calls::CallRec;
pub use evidence::{IdKey, PublicId, VerdictId};
use judge::{Judged, TxRec};
use outcome::is_outcome;
use reply::*;
pub use validate::Reject;

/// A call answered: who called, who answered, when (Unix seconds). From
/// proxy mode's own view of the 2xx, or from the outcome API's
/// `outcome=answered` with a `callee`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answered {
    /// The A-number.
    pub caller: Number,
    /// The B-number that answered.
    pub callee: Number,
    /// When (Unix seconds).
    pub at_s: i64,
}

use validate::*;

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
    /// Proxy mode: add kuzet's Record-Route to a new call's INVITE, so the
    /// dialog's later requests (and its BYE) pass through kuzet. Off, they
    /// usually go around it: answered calls stay in the call table until
    /// `max_call`, and their callers look busy meanwhile.
    pub record_route: bool,
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
    /// INVITE transactions whose verdict is kept to answer retransmissions
    /// the same way, at most.
    pub max_transactions: usize,
    /// How long a verdict is kept for retransmissions (RFC 3261 Timer B:
    /// 64 × T1 = 32 s).
    pub transaction_window: Duration,
    /// Trunks (by name) whose sources may report call outcomes.
    pub outcome_reporters: Vec<String>,
    /// A shared secret that lets any source report outcomes, sent in
    /// `X-Kuzet-Outcome-Key`. With neither this nor reporters, the
    /// outcome API is off.
    pub outcome_secret: Option<Vec<u8>>,
    /// The longest call: a call in progress for longer is stale (a lost
    /// BYE, a forged start) and stops counting.
    pub max_call: Duration,
    /// This node's name (in verdict ids and records).
    pub node_name: String,
    /// Keep one allowed call in this many as a sample (0: none).
    pub record_allowed_every: u32,
    /// HEP wants every call's verdict: queue an event for plain allows too
    /// (sent to HEP only, neither logged nor recorded).
    pub events_for_every_call: bool,
    /// HEP mirrors SIP: copy kuzet's answer into the event.
    pub copy_answers: bool,
    /// Where a wrongly blocked caller can appeal, added to the Reason text
    /// of a block beside the verdict id.
    pub appeal_contact: Option<String>,
    /// Verdict ids continue from at least this sequence (the store's last
    /// for this node, plus one), whatever the clock says.
    pub first_verdict_seq: Option<u64>,
    /// The secret public verdict ids are made under (the store's); none:
    /// a random one.
    pub verdict_key: Option<IdKey>,
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
            record_route: true,
            reject_unknown_source: true,
            unknown_source_code: 403,
            max_tracked_numbers: 1_000_000,
            idle_ttl_secs: 86_400,
            utc_offset_minutes: 300,
            max_transactions: 262_144,
            transaction_window: Duration::from_secs(32),
            outcome_reporters: Vec::new(),
            outcome_secret: None,
            max_call: Duration::from_secs(u64::from(kuzet_rules::state::MAX_CALL_S)),
            node_name: "kuzet".into(),
            record_allowed_every: 1000,
            events_for_every_call: false,
            copy_answers: false,
            appeal_contact: None,
            first_verdict_seq: None,
            verdict_key: None,
        }
    }
}

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
    record_route: bool,
    /// `host:port` of kuzet's own Via.
    via_sent_by: Vec<u8>,
    reject_unknown: bool,
    unknown_code: u16,
    metrics: Arc<Metrics>,
    /// Behaviour state: per A-number, per premium destination, per
    /// escalating rule and caller.
    state: State,
    /// Verdicts of recent INVITE transactions, for retransmissions.
    txs: Table<TxRec>,
    /// The secret key of each request's digest (a retransmission must be
    /// the same request).
    digest_key: std::collections::hash_map::RandomState,
    tx_window_ms: u64,
    started: Instant,
    /// When the handler was ready to judge: no request's fail-open budget
    /// counts from before it (calls queued in the kernel while kuzet
    /// started are judged, not waved through).
    ready: Instant,
    utc_offset_s: i64,
    /// The record queue (none: nothing is logged or recorded).
    records: Option<Arc<crate::records::RecordRing>>,
    /// Answered calls, for the National Bank Centre's potential-victim
    /// reports (none: not wanted). Bounded; a full queue drops and counts.
    answers: Option<std::sync::mpsc::SyncSender<Answered>>,
    /// The call journal's queue (none: no journal). Bounded; a full
    /// queue drops and counts.
    journal: Option<crate::journal::JournalTx>,
    /// Who may use the outcome API.
    outcome_reporters: Vec<String>,
    outcome_secret: Option<Vec<u8>>,
    /// Proxy mode: calls in progress, by Call-ID hash, to learn outcomes
    /// (ring time, talk time, concurrency) from the messages forwarded.
    calls: Table<CallRec>,
    calls_ttl_ms: u64,
    /// The node part of verdict ids.
    node: u32,
    /// The next verdict id's sequence number.
    next_verdict: std::sync::atomic::AtomicU64,
    /// The secret under which verdict ids are given out.
    id_key: IdKey,
    /// One allowed call in this many is recorded (0: none).
    sample_every: u64,
    /// Queue an event for every judged call (HEP), not only notable ones.
    every_call: bool,
    /// Copy kuzet's answer into each event (HEP mirrors SIP).
    copy_answers: bool,
    /// ` appeal: CONTACT` for the Reason text, or nothing.
    appeal: Vec<u8>,
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
        let mut h = Handler {
            mode: s.mode,
            plan: s.plan,
            lists,
            trunks: s.trunks,
            a_order: s.a_order,
            block_code: s.block_code,
            budget: s.failopen_budget,
            next_hop: s.next_hop,
            record_route: s.record_route,
            via_sent_by,
            reject_unknown: s.reject_unknown_source,
            unknown_code: s.unknown_source_code,
            metrics,
            state: State::new(s.max_tracked_numbers, s.idle_ttl_secs)
                .with_max_call(s.max_call.as_secs().min(u64::from(u32::MAX)) as u32),
            outcome_reporters: s.outcome_reporters,
            outcome_secret: s.outcome_secret,
            txs: Table::new(s.max_transactions),
            digest_key: std::collections::hash_map::RandomState::new(),
            tx_window_ms: s.transaction_window.as_millis() as u64,
            started: Instant::now(),
            utc_offset_s: i64::from(s.utc_offset_minutes) * 60,
            records: None,
            answers: None,
            journal: None,
            // Only proxy mode sees calls end; redirect mode keeps no table.
            calls: Table::new(match s.mode {
                Mode::Proxy => s.max_tracked_numbers,
                Mode::Redirect => 1,
            }),
            calls_ttl_ms: s.max_call.as_millis() as u64,
            node: VerdictId::node_of(&s.node_name),
            next_verdict: std::sync::atomic::AtomicU64::new(
                (evidence::unix_us().max(1) as u64).max(s.first_verdict_seq.unwrap_or(0)),
            ),
            id_key: s.verdict_key.unwrap_or_else(IdKey::random),
            sample_every: u64::from(s.record_allowed_every),
            every_call: s.events_for_every_call,
            copy_answers: s.copy_answers,
            appeal: s
                .appeal_contact
                .map(|c| format!("; appeal: {c}").into_bytes())
                .unwrap_or_default(),
            ready: Instant::now(),
        };
        // Requests that queued in the socket while the tables above were
        // set aside are not late: their budget counts from now.
        h.ready = Instant::now();
        h
    }

    /// Verdicts worth recording go to `ring` (bounded; full = refused and
    /// counted, never waited for).
    pub fn with_records(mut self, ring: Arc<crate::records::RecordRing>) -> Handler {
        self.records = Some(ring);
        self
    }

    /// Answered calls (who answered whom, and when) go to `tx`: the
    /// National Bank Centre's potential victims are the callees a fraud
    /// source reached. A full queue drops the event and counts it
    /// (`answered_events_dropped_total`); a call never waits for it.
    pub fn with_answers(mut self, tx: std::sync::mpsc::SyncSender<Answered>) -> Handler {
        self.answers = Some(tx);
        self
    }

    /// Every scored call's facts and every outcome go to `tx`, the call
    /// journal's queue. With a journal, every call's identities and clock
    /// are read whatever the rules in force need, so a backtest of rules
    /// that need more has them. A full queue drops and counts
    /// (`journal_dropped_total`); a call never waits for it.
    pub fn with_journal(mut self, tx: crate::journal::JournalTx) -> Handler {
        self.journal = Some(tx);
        self
    }

    /// Queues a journal entry without waiting; a full queue counts.
    pub(super) fn journal(&self, e: crate::journal::Entry) {
        if let Some(tx) = &self.journal {
            if tx.send(e) == Err(crate::journal::Refused::Full) {
                self.metrics.inc(Counter::JournalDropped);
            }
        }
    }

    /// Journals an outcome applied to `caller`'s state.
    pub(super) fn journal_outcome(
        &self,
        caller: u64,
        callee: u64,
        secs: u32,
        what: crate::journal::OutcomeWhat,
        proxy: bool,
        known: bool,
    ) {
        if self.journal.is_some() {
            self.journal(crate::journal::Entry::Outcome(
                crate::journal::OutcomeFact {
                    ts_us: evidence::unix_us(),
                    secs,
                    caller,
                    callee,
                    what,
                    proxy,
                    known,
                },
            ));
        }
    }

    /// Hands an answered call to the answers queue, if there is one,
    /// without waiting (no allocation: the queue's room is made up front).
    pub(super) fn answered(&self, caller: u64, callee: u64, at_s: i64) {
        let (Some(tx), Some(caller), Some(callee)) = (
            &self.answers,
            Number::from_raw(caller),
            Number::from_raw(callee),
        ) else {
            return;
        };
        if tx
            .try_send(Answered {
                caller,
                callee,
                at_s,
            })
            .is_err()
        {
            self.metrics.inc(Counter::AnswersDropped);
        }
    }

    /// The version of the lists and rules this node scores with now.
    pub fn version(&self) -> kuzet_rules::snapshot::Version {
        self.lists.load().version
    }

    /// The public id a caller was given for `id`.
    pub fn public_id(&self, id: VerdictId) -> PublicId {
        self.id_key.public(id)
    }

    /// Forgets idle numbers and keeps the trackers under their caps; the
    /// control thread calls it, and it never makes a worker wait. Returns
    /// how many numbers were dropped.
    pub fn sweep(&self) -> usize {
        self.sweep_at(Instant::now())
    }

    /// [`sweep`](Self::sweep) as if the time were `at` (tests move the
    /// clock instead of sleeping).
    pub fn sweep_at(&self, at: Instant) -> usize {
        let now = self.call_time(at).secs;
        // A call record left by a lost BYE or CANCEL goes after the TTL. An
        // answered one was counted as a call in progress: count it ended,
        // or the caller would look busy for ever.
        let now_ms = at.saturating_duration_since(self.started).as_millis() as u64;
        let ttl_ms = self.calls_ttl_ms;
        self.calls.retain(
            |r| now_ms.saturating_sub(r.invited_ms.max(r.answered_ms)) < ttl_ms,
            |r| {
                if r.answered_ms > 0 {
                    self.state
                        .callers
                        .concurrent(r.a, now, -1, self.state.max_call_s);
                    self.metrics.inc(Counter::CallsExpired);
                }
            },
        );
        // A transaction's verdict is kept for its window only.
        let window = self.tx_window_ms;
        self.txs
            .retain(|t| now_ms.saturating_sub(t.created_ms) < window, |_| ());
        self.state.sweep(now)
    }

    /// This node's behaviour counts since the last export, for the other
    /// nodes of a cluster, labelled with the window lengths of the rules
    /// in force. Off the call path (the control side calls it); it walks
    /// the trackers like a sweep and never makes a worker wait.
    pub fn export_state(&self) -> kuzet_rules::state::Delta {
        self.export_state_at(Instant::now())
    }

    /// [`export_state`](Self::export_state) as if the time were `at`.
    pub fn export_state_at(&self, at: Instant) -> kuzet_rules::state::Delta {
        let windows = self.lists.load().rules.windows();
        self.state.export(self.call_time(at).secs, &windows)
    }

    /// Adds another node's counts to this node's behaviour state. Off the
    /// call path, like [`export_state`](Self::export_state).
    pub fn merge_state(
        &self,
        delta: &kuzet_rules::state::Delta,
    ) -> Result<kuzet_rules::state::Merged, kuzet_rules::state::DeltaError> {
        let windows = self.lists.load().rules.windows();
        self.state.merge(delta, &windows)
    }

    /// Milliseconds since start-up, the clock of calls and transactions.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Calls in progress proxy mode is following.
    pub fn calls_in_progress(&self) -> usize {
        self.calls.len()
    }

    /// The behaviour state kept for an A-number, if any (for tests and
    /// diagnostics).
    pub fn caller_state(&self, a: Number) -> Option<kuzet_rules::state::CallerState> {
        self.state.callers.get(a.raw())
    }

    /// The behaviour state (for tools and tests: a test fills it to see a
    /// sweep of a full table).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The behaviour state's clock now, in its seconds.
    pub fn state_now(&self) -> u32 {
        self.call_time(Instant::now()).secs
    }

    /// Numbers tracked now (callers, destinations), and callers scored
    /// without behaviour state because the tracker was full.
    pub fn tracked(&self) -> (usize, usize, u64) {
        (
            self.state.callers.len(),
            self.state.destinations.len(),
            self.state
                .callers
                .full_misses
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The time of something that happened at `at` (a request's kernel
    /// arrival, or now): Unix seconds, which behaviour state aligns its
    /// windows on so that nodes can add their counts up, and the local
    /// hour and weekday for rule scopes. The wall clock is read now and
    /// moved back (or on) by how far `at` is from now on the monotonic
    /// clock: two clock reads, no lock, no allocation.
    fn call_time(&self, at: Instant) -> CallTime {
        self.clock(at).0
    }

    /// The clock scoring reads at `at`, and `at` in µs since the epoch.
    fn clock(&self, at: Instant) -> (CallTime, i64) {
        let (wall, mono) = (std::time::SystemTime::now(), Instant::now());
        let unix = wall
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let unix = match at.checked_duration_since(mono) {
            Some(ahead) => unix.saturating_add(ahead),
            None => unix.saturating_sub(mono.saturating_duration_since(at)),
        };
        let us = unix.as_micros().min(i64::MAX as u128) as i64;
        let unix = unix.as_secs();
        let secs = unix.min(u64::from(u32::MAX)) as u32;
        let wall = unix as i64 + self.utc_offset_s;
        let days = wall.div_euclid(86_400);
        (
            CallTime {
                secs,
                hour: (wall.rem_euclid(86_400) / 3600) as u8,
                // 1970-01-01 was a Thursday; 0 = Monday.
                weekday: (days + 3).rem_euclid(7) as u8,
            },
            us,
        )
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
        let o = match self.mode {
            Mode::Redirect => self.redirect(m, &checked, src, conn, received, out),
            Mode::Proxy => self.proxy(m, &checked, src, conn, received, out),
        };
        self.fit(m, &checked, conn, o, out)
    }

    /// Makes sure what goes out over UDP fits one datagram: a reply too
    /// big is cut down to what RFC 3261 requires (Via, From, To, Call-ID,
    /// CSeq, and a redirect's Contact); failing that, or for a request too
    /// big to forward, the sender gets `513 Message Too Large`; failing
    /// even that, nothing is sent (counted).
    fn fit(
        &self,
        m: &Message<'_>,
        c: &Checked<'_>,
        conn: Option<u64>,
        o: Outcome,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let over_udp = match o {
            Outcome::Reply => conn.is_none(),
            Outcome::Forward(_) => true,
            Outcome::ToConnection(_) | Outcome::Drop => false,
        };
        if !over_udp || out.len() <= MAX_UDP_PAYLOAD {
            return o;
        }
        self.metrics.inc(Counter::RepliesTooBig);
        if o == Outcome::Reply && cut_down(self, m, c, out) {
            return Outcome::Reply;
        }
        self.reply_bare(m, Some(c), 513, "Message Too Large", out, |_| {});
        // A reply to a TCP request goes back over TCP, any size.
        if conn.is_some() || out.len() <= MAX_UDP_PAYLOAD {
            return Outcome::Reply;
        }
        out.clear();
        Outcome::Drop
    }
}

/// The largest UDP payload over IPv4 (65,535 less the IP and UDP headers).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Rewrites the reply in `out`, too big for a datagram, as its status line
/// and Contact and only what RFC 3261 requires (Via, From, To, Call-ID,
/// CSeq); true when that fits. Allocates nothing: what is kept of the old
/// reply while `out` is rewritten is either a borrow of the request (a
/// Contact that is its Request-URI) or copied to this frame (the reason
/// phrase, and a Contact that is a rule file's `redirect_uri`, at most 256
/// characters). A Contact that is neither cannot be kept, and the caller
/// answers 513 instead.
#[cold]
#[inline(never)]
fn cut_down(h: &Handler, m: &Message<'_>, c: &Checked<'_>, out: &mut Vec<u8>) -> bool {
    let line_end = memchr::memchr(b'\r', out).unwrap_or(0);
    let code = kuzet_sip::parse_u32(out.get(8..11).unwrap_or_default()).unwrap_or(0);
    // kuzet's reason phrases are short and ASCII; one cut short is cut at
    // a character boundary.
    let mut reason = [0u8; 64];
    let said = out.get(12..line_end).unwrap_or_default();
    let said = &said[..said.len().min(reason.len())];
    reason[..said.len()].copy_from_slice(said);
    let reason = match std::str::from_utf8(&reason[..said.len()]) {
        Ok(r) => r,
        Err(e) => std::str::from_utf8(&reason[..e.valid_up_to()]).unwrap_or_default(),
    };
    // The Contact line, as the request's Request-URI or a copy.
    let mut copy = [0u8; 300];
    let contact: Option<&[u8]> = match memchr::memmem::find(out, b"\r\nContact: <") {
        None => None,
        Some(at) => {
            let start = at + b"\r\nContact: <".len();
            let end = memchr::memchr(b'>', &out[start..]).map_or(out.len(), |e| start + e);
            let uri = &out[start..end];
            if uri == m.request_uri() {
                Some(m.request_uri())
            } else if uri.len() <= copy.len() {
                copy[..uri.len()].copy_from_slice(uri);
                Some(&copy[..uri.len()])
            } else {
                return false;
            }
        }
    };
    h.reply_bare(m, Some(c), code as u16, reason, out, |o| {
        if let Some(uri) = contact {
            o.extend_from_slice(b"Contact: <");
            o.extend_from_slice(uri);
            o.extend_from_slice(b">\r\n");
        }
    });
    out.len() <= MAX_UDP_PAYLOAD
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
