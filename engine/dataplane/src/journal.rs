//! The call journal's queue: the facts of every call kuzet scored and
//! every outcome it applied, handed off the call path for the journal's
//! writer (`kuzet-journal`) to keep in Parquet files.
//!
//! An entry is plain `Copy` data (numbers packed, the trunk by index, the
//! fired rules by index), written with `try_send` into a bounded
//! `std::sync::mpsc::sync_channel` made at start-up: the channel's room is
//! allocated then, so a send allocates nothing, and a full queue drops
//! the entry and counts it (`journal_dropped_total`); a call never waits
//! for the journal. The order entries leave the queue is the journal's
//! order: the writer numbers them as it takes them.

use std::net::IpAddr;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use kuzet_rules::ruleset::{CallInput, Decision, Scored};
use kuzet_rules::snapshot::Version;
use kuzet_rules::ListSet;

/// Fired rules a journal entry keeps (a verdict holds at most 16).
pub const MAX_FIRED: usize = 16;

/// One fired rule as the journal keeps it: its index in the snapshot's
/// rule set and whether it was in shadow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FiredRule {
    /// Index into the rule set of [`CallFact::version`].
    pub rule: u16,
    /// Reported, not counted.
    pub shadow: bool,
}

/// The scoring facts of one call, and what kuzet made of them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CallFact {
    /// Where and how it arrived.
    pub at: Arrival,
    /// What scoring read: the caller, callee and every presented identity,
    /// the trunk's kind and the clock.
    pub input: CallInput,
    /// The decision.
    pub decision: Decision,
    /// What shadow rules would have made of it.
    pub shadow_decision: Decision,
    /// The capped sum of enforced scores.
    pub score: u32,
    /// The allowlist exempted it.
    pub allowlisted: bool,
    /// How many of `fired` are used.
    pub n_fired: u8,
    /// The rules that fired, enforced and shadow.
    pub fired: [FiredRule; MAX_FIRED],
    /// The snapshot it was judged under.
    pub version: Version,
    /// That snapshot's generation on this node.
    pub generation: u64,
}

/// Where and how a call arrived, beside what scoring read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Arrival {
    /// Arrival (the kernel's stamp), µs since the epoch.
    pub ts_us: i64,
    /// The trunk's index in the config + 1 (0: on no trunk).
    pub trunk: u16,
    /// The source address.
    pub source: IpAddr,
    /// The caller's trust (`records::trust`: none, claimed, network).
    pub a_trust: u8,
    /// The request's digest.
    pub digest: u64,
}

impl CallFact {
    /// The facts of a call that arrived as `at`, scored from `input` into
    /// `s` under `set`.
    #[inline]
    pub fn of(at: Arrival, input: &CallInput, s: &Scored, set: &ListSet) -> CallFact {
        let (n_fired, fired) = CallFact::fired_of(s);
        CallFact {
            at,
            input: *input,
            decision: s.decision,
            shadow_decision: s.shadow_decision,
            score: s.score,
            allowlisted: s.allowlisted,
            n_fired,
            fired,
            version: set.version,
            generation: set.generation,
        }
    }

    /// The fired rules of `s`, as the journal keeps them.
    pub fn fired_of(s: &Scored) -> (u8, [FiredRule; MAX_FIRED]) {
        let mut out = [FiredRule::default(); MAX_FIRED];
        let mut n = 0;
        for (slot, f) in out.iter_mut().zip(s.fired()) {
            *slot = FiredRule {
                rule: f.rule,
                shadow: f.shadow,
            };
            n += 1;
        }
        (n, out)
    }

    /// The fired rules.
    pub fn fired(&self) -> &[FiredRule] {
        &self.fired[..usize::from(self.n_fired).min(MAX_FIRED)]
    }
}

/// What an outcome said happened to a caller's call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeWhat {
    /// Rang for this many ms, not answered.
    Cancelled(u32),
    /// Answered, lasted this many ms.
    Answered(u32),
    /// Answered: in progress from now.
    Started,
    /// Over.
    Ended,
}

/// One outcome applied to (or offered to) behaviour state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutcomeFact {
    /// When, µs since the epoch.
    pub ts_us: i64,
    /// The Unix second state was updated at.
    pub secs: u32,
    /// The caller (packed).
    pub caller: u64,
    /// Who answered (packed; 0: not known).
    pub callee: u64,
    /// What happened.
    pub what: OutcomeWhat,
    /// Seen by proxy mode (true) or reported through the outcome API.
    pub proxy: bool,
    /// State knew the caller.
    pub known: bool,
}

/// A journal entry.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Entry {
    /// A call scored.
    Call(CallFact),
    /// An outcome applied.
    Outcome(OutcomeFact),
}

/// The sending side, kept by the handler.
#[derive(Clone, Debug)]
pub struct JournalTx {
    tx: SyncSender<Entry>,
}

/// Why an entry was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full.
    Full,
    /// The writer is gone.
    Closed,
}

impl JournalTx {
    /// Queues `e` without waiting.
    pub fn send(&self, e: Entry) -> Result<(), Refused> {
        self.tx.try_send(e).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Full,
            TrySendError::Disconnected(_) => Refused::Closed,
        })
    }
}

/// A journal queue of `cap` entries: the handler's side and the writer's.
pub fn queue(cap: usize) -> (JournalTx, Receiver<Entry>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(cap.max(1));
    (JournalTx { tx }, rx)
}
