//! The store's ports: what the control plane asks of a store, as traits
//! with nothing of a database in their signatures. A store plugs in by
//! implementing them: [`crate::sqlite`] (one file per node) and
//! [`crate::pg`] (one PostgreSQL database the nodes share; its Centre
//! port is still SQLite's).
//!
//! - [`RecordWriter`]: the recorder's, the one writer of the call log: it
//!   commits batches of records (grouping them into incidents and queueing
//!   reports in the same unit), keeps retention and incident upkeep going,
//!   and knows the store's identity (its id, the last verdict sequence,
//!   the verdict key).
//! - [`Queries`]: the investigators': calls by filter a page at a time,
//!   exports, counts, incidents.
//! - [`Outbox`]: the reporter's: entries due, claimed (frozen) before they
//!   are sent, delivered, retried or dead-lettered, and the backlog.
//! - [`AuditLog`]: the access gate's: entries appended, never changed, and
//!   read back newest first.
//! - [`Centre`]: the National Bank Anti-Fraud Centre's (docs/nb-feed.md):
//!   the feed layer and its cursor, the cases opened for the Centre's
//!   alerts and their decisions, and the outbox of reports to the Centre.
//! - [`SharedShelves`]: the published versions of a cluster's lists and
//!   rules, stored once for every node (PostgreSQL only:
//!   [`crate::pg::shelves`]).
//!
//! Every method blocks: the control plane calls them from threads of its
//! own or tokio's blocking pool, never from an async task directly.
//! SQLite has no other interface, and the PostgreSQL implementation uses
//! the blocking `postgres` client on the same threads; ARCHITECTURE.md
//! says why the ports are not async.
//! Errors are the crate's own [`StoreError`], which says whether trying
//! again can help ([`StoreError::is_transient`]).

use std::sync::Arc;

use crate::audit::Entry;
use crate::centre::{
    Case, CaseCounts, CaseDecision, CentreBacklog, FeedChange, FeedRow, NewCase, NewReport,
    ReportDue, ReportRow,
};
use crate::incident::Incident;
use crate::outbox::{Due, Payload};
use crate::query::{Count, Filter, Page};
use crate::{Record, Retired, StoreError};

/// The recorder port: the store's one writer. Owned by the recorder's
/// writer thread (hence `&mut self` and `Send`, not `Sync`).
pub trait RecordWriter: Send {
    /// Where the store is, for log lines: a file, or a server's name.
    fn location(&self) -> String;

    /// Commits `recs` as one unit: the calls, the incidents they join and
    /// the outbox entries those call for, all or nothing. On error nothing
    /// of the batch is kept and the store stays usable; a
    /// [transient](StoreError::is_transient) error is worth trying again
    /// as it is, any other means the store refuses something in the batch.
    fn insert(&mut self, recs: &[Record]) -> Result<(), StoreError>;

    /// Commits records a crashed process left in the record queue,
    /// skipping those the store already holds (committed just before the
    /// crash), so a replay never records a call twice. Returns how many
    /// were new.
    fn insert_replayed(&mut self, recs: Vec<Record>) -> Result<usize, StoreError>;

    /// The incidents' periodic work, about once a second: delayed report
    /// updates, closing quiet incidents (and, once a minute, those open too
    /// long).
    fn tick(&mut self, now_us: i64) -> Result<(), StoreError>;

    /// Writes one small row: whether the store takes a commit now, asked
    /// while no batch is coming (a node taken out of service for a failed
    /// commit gets no calls to prove it recovered).
    fn probe(&mut self, now_us: i64) -> Result<(), StoreError>;

    /// Retires one chunk of records too old or over the size limit, oldest
    /// first, in one short unit of work, and says how many went and
    /// whether the store is over its size limit with nothing it may
    /// retire. Never the calls of an incident still open, nor (for size) a
    /// block or redirect whose verdict id a caller was given.
    fn retire_chunk(&mut self, now_us: i64) -> Result<Retired, StoreError>;

    /// Bytes the store's live data takes, as its size limit counts them.
    fn used_bytes(&self) -> Result<u64, StoreError>;

    /// The store's own random id, made when it was created: the first half
    /// of every incident's idempotency key, so keys survive a renamed host
    /// and never repeat across stores.
    fn store_id(&self) -> &str;

    /// The highest verdict sequence this store has recorded, so a
    /// restarted node continues after it even if the clock went back.
    /// `node_prefix` (8 hex digits of the node) finds it in records from
    /// before opaque ids, whose ids began with it.
    fn last_verdict_seq(&self, node_prefix: &str) -> Result<Option<u64>, StoreError>;

    /// The store's secret for public verdict ids (16 bytes), made on
    /// first use and kept in the store, so ids stay stable and opaque
    /// across restarts.
    fn verdict_key(&self) -> Result<[u8; 16], StoreError>;
}

/// An incident with how far the register has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncidentView {
    /// The incident.
    pub incident: Incident,
    /// The highest report sequence the register has taken (0: none yet).
    pub delivered_seq: u64,
}

/// Counts of calls per time bucket: per decision, and per rule.
pub type Counts = (Vec<Count>, Vec<Count>);

/// The investigators' port: reads only, each a consistent view of its
/// own. Shared by every request (`Sync`).
pub trait Queries: Send + Sync {
    /// One page of calls matching `f`, newest first, older than the
    /// cursor `before` (at most [`crate::query::MAX_PAGE`]).
    fn calls(&self, f: &Filter, before: Option<i64>, limit: usize) -> Result<Page, StoreError>;

    /// Every call matching `f`, newest first, handed to `each` a row at a
    /// time from one consistent view (an export streams without holding
    /// the result); `each` returns false to stop. Returns the rows handed
    /// over.
    fn export(&self, f: &Filter, each: &mut dyn FnMut(Record) -> bool) -> Result<u64, StoreError>;

    /// Calls matching `f` counted per decision and per rule in buckets of
    /// `bucket_us`, oldest first (at most [`crate::query::MAX_COUNTS`]
    /// rows of each).
    fn counts(&self, f: &Filter, bucket_us: i64) -> Result<Counts, StoreError>;

    /// Incidents, newest first, optionally in one state (or register state
    /// `dead_letter`), older than the cursor `before` (at most 1000).
    fn incidents(
        &self,
        state: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<IncidentView>, StoreError>;

    /// One incident.
    fn incident(&self, id: i64) -> Result<Option<IncidentView>, StoreError>;
}

/// How much the outbox holds, for the gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Entries still to deliver.
    pub pending: u64,
    /// Incidents the register refused.
    pub dead_letters: u64,
}

/// The reporter's port: the durable outbox of reports to the register.
///
/// An entry is claimed before it is first sent and never changes after,
/// so a retry carries exactly what the first try did; the register's
/// idempotency key plus the sequence make the effect exactly once. One
/// reporter drains a store; a store shared by several nodes must make
/// [`claim`](Outbox::claim) exclusive as well (a lease) before a second
/// reporter runs on it: the PostgreSQL outbox checks the lease's fencing
/// token in each of its writes ([`crate::pg::PgOutbox`]).
pub trait Outbox: Send + Sync {
    /// Entries due at `now_us`, oldest first, at most one per incident
    /// (the lowest sequence still pending: an update never overtakes its
    /// submission).
    fn due(&self, now_us: i64, limit: usize) -> Result<Vec<Due>, StoreError>;

    /// Marks the entry tried and returns its payload as it now stands, or
    /// why it cannot be read (it must then be dead-lettered, never sent):
    /// from this moment the entry never changes, in one unit with the mark.
    fn claim(&self, id: i64) -> Result<Result<Payload, String>, StoreError>;

    /// The register took it, as `case`: the entry is done and the incident
    /// shows the case, together.
    fn delivered(&self, d: &Due, case: &str) -> Result<(), StoreError>;

    /// Try again at `next_at_us`; the incident shows the error meanwhile.
    fn retry(&self, d: &Due, next_at_us: i64, error: &str) -> Result<(), StoreError>;

    /// The register refused it as invalid (or its payload is unreadable):
    /// dead-lettered with every later entry of the incident, never retried;
    /// the incident shows why.
    fn dead_letter(&self, d: &Due, error: &str) -> Result<(), StoreError>;

    /// Entries pending and incidents dead-lettered.
    fn backlog(&self) -> Result<Backlog, StoreError>;
}

/// The access gate's port: an append-only log of who asked what.
pub trait AuditLog: Send + Sync {
    /// Appends `entries` (their ids are ignored), all or none.
    fn append(&self, entries: &[Entry]) -> Result<(), StoreError>;

    /// The newest entries, older than the cursor `before` (an entry id),
    /// at most `limit` (1 to 1000).
    fn read(&self, before: Option<i64>, limit: usize) -> Result<Vec<Entry>, StoreError>;
}

/// The National Bank Anti-Fraud Centre's port (docs/nb-feed.md): what
/// kuzet keeps of the Centre's two streams (the feed of fraud numbers and
/// the alerts on the operator's own numbers) and of its reports to the
/// Centre.
///
/// Each stream has a cursor, the last batch applied; a batch is applied
/// only as the next after it, in one unit of work with moving it, so a
/// replay or a gap changes nothing ([`StoreError::Conflict`]). A report
/// is queued in the same unit of work as the fact that causes it, under
/// an idempotency key it keeps for ever, and never changes after: every
/// try sends the same bytes. Every write is one unit of work: all of it
/// or none. Shared by the feed's puller, the reporter, the API and the
/// gauges (`Sync`).
pub trait Centre: Send + Sync {
    /// The last applied sequence of a stream, `"batches"` (the feed) or
    /// `"alerts"`; 0 before any.
    fn cursor(&self, stream: &str) -> Result<u64, StoreError>;

    /// Hands `each` every feed entry not expired at `now_s`
    /// (`expires_at_s > now_s`), one at a time (a table of ten million
    /// entries streams, it is never collected), and returns the
    /// `"batches"` cursor read from the same consistent view.
    fn feed_load(&self, now_s: i64, each: &mut dyn FnMut(FeedRow)) -> Result<u64, StoreError>;

    /// Applies feed batch `seq` in one unit of work: refused with
    /// [`StoreError::Conflict`], nothing applied, unless the stored
    /// `"batches"` cursor is `seq - 1`. An `Add` replaces the entry held
    /// for its target, a `Withdraw` removes it (none held: nothing), in
    /// the batch's order; then the cursor becomes `seq`. A batch of a
    /// million changes takes seconds, not minutes.
    fn feed_apply(&self, seq: u64, changes: &[FeedChange]) -> Result<(), StoreError>;

    /// Removes the entries expired at `now_s` (`expires_at_s <= now_s`);
    /// returns how many.
    fn feed_expire(&self, now_s: i64) -> Result<u64, StoreError>;

    /// The entry held for this exact target (a number, or a range as
    /// written), if any.
    fn feed_entry(&self, target: &str) -> Result<Option<FeedRow>, StoreError>;

    /// Opens a case per alert of alerts batch `seq`, in one unit of work
    /// with moving the `"alerts"` cursor to `seq`: refused with
    /// [`StoreError::Conflict`], nothing opened, unless the cursor is
    /// `seq - 1`. An alert id already held (from this batch or any
    /// before) opens nothing. Returns the cases newly opened.
    fn open_cases(&self, seq: u64, cases: &[NewCase]) -> Result<Vec<Case>, StoreError>;

    /// One case.
    fn case(&self, id: i64) -> Result<Option<Case>, StoreError>;

    /// Cases, soonest due first: only those in `state` if given (`open`,
    /// `confirmed`, `not_confirmed`), only those due before
    /// `due_before_us` if given; at most `limit` (1 to 1000).
    fn cases(
        &self,
        state: Option<&str>,
        due_before_us: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Case>, StoreError>;

    /// Records the decision on an open case and queues `report` (the
    /// decision report for the Centre) in the same unit of work; returns
    /// the case as decided. `Ok(Err(reason))` when there is no such case
    /// or it is already decided: nothing changes, nothing is queued.
    fn decide(
        &self,
        id: i64,
        d: &CaseDecision,
        report: &NewReport,
    ) -> Result<Result<Case, String>, StoreError>;

    /// Case counts at `now_us`; "due soon" is open, not overdue, and due
    /// within `near_us`.
    fn case_counts(&self, now_us: i64, near_us: i64) -> Result<CaseCounts, StoreError>;

    /// Queues `reports` in one unit of work; a key already held, whatever
    /// its report's state, queues nothing. Returns how many were new.
    fn queue_reports(&self, reports: &[NewReport]) -> Result<usize, StoreError>;

    /// Reports pending and due at `now_us` (their first try's time, or
    /// their retry's, reached), oldest first, at most `limit` (1 to
    /// 1000).
    fn due_reports(&self, now_us: i64, limit: usize) -> Result<Vec<ReportDue>, StoreError>;

    /// Counts a try of a pending report, called just before it is sent.
    fn report_tried(&self, id: i64) -> Result<(), StoreError>;

    /// The Centre took the pending report `id` at `at_us`: it is done.
    fn report_delivered(&self, id: i64, at_us: i64) -> Result<(), StoreError>;

    /// The pending report `id` was not taken: tried again at
    /// `next_at_us`; `error` (cut at 1024 bytes) is kept meanwhile.
    fn report_retry(&self, id: i64, next_at_us: i64, error: &str) -> Result<(), StoreError>;

    /// The Centre refused the pending report `id`: dead-lettered, never
    /// retried, with `error` (cut at 1024 bytes).
    fn report_dead_letter(&self, id: i64, error: &str) -> Result<(), StoreError>;

    /// Reports pending and dead-lettered, and when the oldest pending one
    /// was queued.
    fn report_backlog(&self) -> Result<CentreBacklog, StoreError>;

    /// Reports newest first, only those in `state` if given (`pending`,
    /// `delivered`, `dead_letter`), at most `limit` (1 to 1000).
    fn reports(&self, state: Option<&str>, limit: usize) -> Result<Vec<ReportRow>, StoreError>;
}

/// Published versions shared by the nodes of a cluster: each published
/// list's and the rules' shelf (`lists/blocklist`, `rules`) as one index
/// document and the contents it names, so a version published on any
/// node is stored once and every node fetches it from here.
///
/// A content is named by its digest within its shelf and never changes:
/// putting it again stores nothing (it only marks it wanted now, so it is
/// not taken away as unused before the index that names it is written).
/// It moves in pieces both ways, so a content of a hundred megabytes is
/// never held whole in memory. An index is a document with a sequence
/// that rises by one at each change; it changes only by compare-and-set
/// against the sequence the writer read, and only while every content it
/// names is stored. Contents no index names are dropped once an hour has
/// passed since they were last put. Every method blocks (see the module
/// docs).
pub trait SharedShelves: Send + Sync {
    /// Where the shared store is, for messages (a server's name, no
    /// password).
    fn location(&self) -> String;

    /// Stores the content `digest` of `shelf`, read from `from` to its
    /// end, unless it is stored already (then `from` is not read). Returns
    /// whether it was stored now. All or nothing: a content is never
    /// stored in part.
    fn put_content(
        &self,
        shelf: &str,
        digest: &str,
        from: &mut dyn std::io::Read,
    ) -> Result<bool, StoreError>;

    /// Writes the content `digest` of `shelf` into `into`, piece by piece;
    /// returns its length, or `None` when the store does not hold it.
    fn content(
        &self,
        shelf: &str,
        digest: &str,
        into: &mut dyn std::io::Write,
    ) -> Result<Option<u64>, StoreError>;

    /// `shelf`'s index and its sequence (`None`: none was ever written).
    fn index(&self, shelf: &str) -> Result<Option<(u64, String)>, StoreError>;

    /// Every shelf's index sequence, by shelf name: what a node compares
    /// with the ones it holds to know whether it is behind.
    fn sequences(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// Replaces `shelf`'s index with `doc` if its sequence is still
    /// `expect` (0: there is no index yet); the new sequence is then
    /// `expect + 1`. `named` is every content `doc` names: each must be
    /// stored, else the change is refused ([`StoreError::Conflict`]).
    /// Returns false, changing nothing, when another writer got there
    /// first.
    fn cas_index(
        &self,
        shelf: &str,
        expect: u64,
        doc: &str,
        named: &[String],
    ) -> Result<bool, StoreError>;

    /// The next publishing sequence, shared by every node and shelf: above
    /// every one handed out before and above `at_least`.
    fn next_sequence(&self, at_least: u64) -> Result<u64, StoreError>;
}

/// The ports a running kuzet hands its control plane, on one store.
#[derive(Clone)]
pub struct Ports {
    /// The investigators' reads.
    pub queries: Arc<dyn Queries>,
    /// The register outbox.
    pub outbox: Arc<dyn Outbox>,
    /// The audit log.
    pub audit: Arc<dyn AuditLog>,
    /// The National Bank Centre's feed, cases and reports.
    pub centre: Arc<dyn Centre>,
}
