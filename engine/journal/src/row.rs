//! One journal row as the readers see it: a call's scoring facts
//! ([`CallRow`]) or an outcome report ([`OutcomeRow`]), owned and plain,
//! read back from the Parquet files by [`crate::read`]. Numbers are kept
//! twice: normalized E.164 text for people and analytics tools, and the
//! packed key ([`kuzet_rules::Number::raw`]) that replay needs exactly.

use kuzet_rules::ruleset::Decision;
use kuzet_rules::{CallTime, Number, TrunkKind};

/// The facts of one call kuzet scored, as written at the time.
#[derive(Clone, Debug, PartialEq)]
pub struct CallRow {
    /// The journal's order: strictly increasing on a node, across calls
    /// and outcomes, and across restarts.
    pub seq: u64,
    /// When the request arrived (kernel stamp), µs since the epoch.
    pub ts_us: i64,
    /// The clock scoring read: Unix seconds, local hour and weekday.
    pub time: CallTime,
    /// The trunk's name (`None`: the source is on no trunk).
    pub trunk: Option<String>,
    /// The trunk's kind.
    pub trunk_kind: Option<TrunkKind>,
    /// The source address, as text (`192.0.2.7`, `2001:db8::1`).
    pub source: String,
    /// The A-number scoring used (PAI or From, as configured).
    pub caller: Option<Number>,
    /// The number in From.
    pub from: Option<Number>,
    /// The number in P-Asserted-Identity.
    pub pai: Option<Number>,
    /// The digits of a display name, when they are a number.
    pub display: Option<Number>,
    /// An A-number was present (normalized or not).
    pub a_present: bool,
    /// The B-number, from the Request-URI.
    pub callee: Option<Number>,
    /// How far the network vouches for the caller's number:
    /// `network`, `claimed` or `none`.
    pub caller_trust: &'static str,
    /// The request's digest (keyed per process: it tells retransmissions
    /// and reuses apart within one run).
    pub digest: u64,
    /// What kuzet decided.
    pub decision: Decision,
    /// What the shadow rules would have made of it.
    pub shadow_decision: Decision,
    /// The capped sum of enforced scores.
    pub score: u32,
    /// The allowlist exempted the call.
    pub allowlisted: bool,
    /// The ids of the enforced rules that fired.
    pub fired: Vec<String>,
    /// The ids of the shadow rules that fired.
    pub fired_shadow: Vec<String>,
    /// The snapshot the call was judged under (`SEQ.DIGEST`).
    pub version: String,
}

/// How a call ended, as a switch or proxy mode reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    /// It rang for `ms` and was not answered.
    Cancelled,
    /// It was answered and lasted `ms`.
    Answered,
    /// It was answered (concurrency counts it from now).
    Started,
    /// It ended (concurrency counts it no more).
    Ended,
}

impl OutcomeKind {
    /// `cancelled`, `answered`, `started`, `ended`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Cancelled => "cancelled",
            OutcomeKind::Answered => "answered",
            OutcomeKind::Started => "started",
            OutcomeKind::Ended => "ended",
        }
    }

    /// The kind with this name.
    pub fn from_name(s: &str) -> Option<OutcomeKind> {
        [
            OutcomeKind::Cancelled,
            OutcomeKind::Answered,
            OutcomeKind::Started,
            OutcomeKind::Ended,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One outcome that changed (or was offered to) behaviour state.
#[derive(Clone, Debug, PartialEq)]
pub struct OutcomeRow {
    /// The journal's order (see [`CallRow::seq`]).
    pub seq: u64,
    /// When it was applied, µs since the epoch.
    pub ts_us: i64,
    /// The Unix second state was updated at.
    pub secs: u32,
    /// The caller it is about.
    pub caller: Number,
    /// Who answered, when known.
    pub callee: Option<Number>,
    /// What happened.
    pub kind: OutcomeKind,
    /// Ring time (cancelled) or talk time (answered), ms; 0 otherwise.
    pub ms: u32,
    /// `proxy` (kuzet saw the dialog) or `api` (the outcome API).
    pub via: &'static str,
    /// State knew the caller (an outcome never creates state).
    pub known: bool,
}

/// A journal row of either kind, in journal order.
#[derive(Clone, Debug, PartialEq)]
pub enum Row {
    /// A call.
    Call(CallRow),
    /// An outcome.
    Outcome(OutcomeRow),
}

impl Row {
    /// The row's place in the journal.
    pub fn seq(&self) -> u64 {
        match self {
            Row::Call(c) => c.seq,
            Row::Outcome(o) => o.seq,
        }
    }

    /// When, µs since the epoch.
    pub fn ts_us(&self) -> i64 {
        match self {
            Row::Call(c) => c.ts_us,
            Row::Outcome(o) => o.ts_us,
        }
    }
}
