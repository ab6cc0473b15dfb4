//! One SIP message in, one action out: the call path.
//!
//! [`Handler::handle`] is what every transport calls for every message. It
//! validates the request (RFC 3261 and the RFC 4475 torture cases), pulls
//! out the A- and B-numbers, scores the call against the list snapshot in
//! force and writes the reply or the forwarded message into a buffer the
//! caller owns and reuses. It does no I/O, never awaits, takes no lock, and
//! allocates nothing per call: the list snapshot is an `ArcSwap` load and
//! every header is a borrow from the datagram.

mod calls;
mod judge;
mod numbers;
mod outcome;
mod proxy;
mod redirect;
mod reply;
mod validate;

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

use calls::CallRec;
use judge::Judged;
use outcome::is_outcome;
use reply::*;
pub use validate::Reject;
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
