//! The National Bank Anti-Fraud Centre's side of the store
//! (docs/nb-feed.md): the feed layer as applied (fraud numbers and
//! ranges, each until it expires), the cases opened for the Centre's
//! alerts on the operator's own numbers and their decisions, the outbox of
//! reports to the Centre, and the cursor of each stream pulled from it.
//!
//! It lives in a file of its own, [`CENTRE_FILE`], beside the calls log:
//! SQLite has one writer per file, and a feed batch of a million entries
//! must never hold the recorder's write lock (nor the recorder hold up a
//! batch). The file is made 0600 and opened like the audit log's: its
//! files checked first, never through a link, WAL, each commit synced. Its
//! schema is its own: `application_id` marks it (`KZNB`) and
//! `user_version` is its version ([`CENTRE_VERSION`]); a file of a newer
//! version, or not kuzet's, is refused untouched, with the path. Its
//! `meta` table holds the streams' cursors.
//!
//! A stream's batch moves its cursor in the same transaction as what it
//! applies, and only from the sequence just before it: a replay or a gap
//! is refused whole ([`StoreError::Conflict`]) and changes nothing. A
//! report is written here in the same transaction as the fact that causes
//! it (a case's decision) and never changes after, so every try sends the
//! same bytes under the same idempotency key.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::ports::Centre;
use crate::sqlite::Lazy;
use crate::{private, schema, sqlite_error, StoreError};

/// The Centre's file in the data directory.
pub const CENTRE_FILE: &str = "centre.db";

/// `KZNB`: marks the SQLite file as kuzet's Centre store.
pub const CENTRE_APPLICATION_ID: i64 = 0x4b5a_4e42;

/// The schema version this build writes: 1, the feed, the cursors, the
/// cases and the reports.
pub const CENTRE_VERSION: i64 = 1;

/// Each migration takes the Centre's schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the cursors (one row per stream), the feed layer by target, with
    // its expiry indexed (expiring reads only what is due), the cases (one
    // per alert id; by when they are due, in all and per state) and the
    // reports' outbox (one per idempotency key; the pending ones and the
    // dead letters indexed, so the reporter and the gauges read only
    // those, however many were delivered).
    "
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE feed (
        target        TEXT PRIMARY KEY,
        category      TEXT NOT NULL,
        confidence    INTEGER NOT NULL,
        reported_at_s INTEGER NOT NULL,
        expires_at_s  INTEGER NOT NULL,
        case_ref      TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX feed_expiry ON feed (expires_at_s);
    CREATE TABLE cases (
        id             INTEGER PRIMARY KEY,
        alert_id       TEXT NOT NULL UNIQUE,
        number         TEXT NOT NULL,
        category       TEXT NOT NULL,
        centre_note    TEXT NOT NULL,
        reported_at_us INTEGER NOT NULL,
        opened_at_us   INTEGER NOT NULL,
        due_at_us      INTEGER NOT NULL,
        state          TEXT NOT NULL,
        decided_at_us  INTEGER,
        decided_by     TEXT NOT NULL,
        note           TEXT NOT NULL,
        bss_ref        TEXT NOT NULL
    );
    CREATE INDEX cases_due ON cases (due_at_us, id);
    CREATE INDEX cases_state ON cases (state, due_at_us, id);
    CREATE TABLE reports (
        id              INTEGER PRIMARY KEY,
        key             TEXT NOT NULL UNIQUE,
        kind            TEXT NOT NULL,
        body            TEXT NOT NULL,
        state           TEXT NOT NULL,
        attempts        INTEGER NOT NULL,
        queued_at_us    INTEGER NOT NULL,
        next_at_us      INTEGER NOT NULL,
        delivered_at_us INTEGER,
        last_error      TEXT NOT NULL
    );
    CREATE INDEX reports_pending ON reports (id) WHERE state = 'pending';
    CREATE INDEX reports_dead ON reports (id) WHERE state = 'dead_letter';
    ",
];

/// Opens the data directory's Centre file, creating it 0600 (and its
/// schema) on first use. The directory and the file's companions are
/// checked first (kuzet's, not links); a file not kuzet's, or of a newer
/// version, is refused before anything in it is changed.
pub fn open(dir: &Path) -> Result<Connection, StoreError> {
    let path = dir.join(CENTRE_FILE);
    let sq = |e| sqlite_error(&path, e);
    let dir_err = |reason: String| StoreError::Directory {
        path: dir.to_path_buf(),
        reason,
    };
    private::prepare_dir(dir).map_err(dir_err)?;
    for f in CENTRE_FILES {
        private::check_file(&dir.join(f)).map_err(dir_err)?;
    }
    let (conn, version) =
        schema::open_own(dir, CENTRE_FILE, CENTRE_APPLICATION_ID, CENTRE_VERSION)?;
    tune(&conn).map_err(sq)?;
    if version < CENTRE_VERSION {
        migrate(&conn).map_err(sq)?;
    }
    Ok(conn)
}

/// The Centre file and its WAL and shared-memory files.
pub const CENTRE_FILES: [&str; 3] = [CENTRE_FILE, "centre.db-wal", "centre.db-shm"];

/// WAL (the feed loads while batches and decisions commit), each commit
/// synced (a cursor, a decision and its report survive a power cut), a
/// page cache of at most 32 MiB per connection (the feed's table and its
/// expiry index while a batch applies), and the WAL cut back to 64 MiB
/// after a checkpoint (a million-entry batch writes more than that).
fn tune(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -32_768)?;
    conn.pragma_update(None, "journal_size_limit", 67_108_864_i64)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// Applies the migrations the file lacks, in one transaction that reads
/// the version again (two first opens at once: the second finds it done).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for m in MIGRATIONS.iter().skip(version.max(0) as usize) {
        tx.execute_batch(m)?;
    }
    tx.pragma_update(None, "application_id", CENTRE_APPLICATION_ID)?;
    tx.pragma_update(None, "user_version", CENTRE_VERSION)?;
    tx.commit()
}

/// The feed's stream: its cursor is the last batch applied.
pub const BATCHES: &str = "batches";

/// The alerts' stream: its cursor is the last alerts batch whose cases
/// were opened.
pub const ALERTS: &str = "alerts";

/// A case not decided yet.
pub const OPEN: &str = "open";
/// A case decided: the number was the fraud the Centre said (suspended).
pub const CONFIRMED: &str = "confirmed";
/// A case decided: the number was not.
pub const NOT_CONFIRMED: &str = "not_confirmed";

/// A report still to deliver (tried or not).
pub const PENDING: &str = "pending";
/// A report the Centre took.
pub const DELIVERED: &str = "delivered";
/// A report the Centre refused: never retried.
pub const DEAD_LETTER: &str = "dead_letter";

/// The longest error text kept with a report, in bytes (cut on a
/// character boundary): an error quotes what a peer answered.
pub const MAX_ERROR: usize = 1024;

/// One entry of the feed layer as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedRow {
    /// A number (`+77011234567`) or a range (E.164 digits then `*`,
    /// `+7702555*`).
    pub target: String,
    /// The Centre's category, e.g. `bank-impersonation`.
    pub category: String,
    /// The Centre's confidence, 0 to 100.
    pub confidence: u8,
    /// When the Centre had it reported, s since the epoch.
    pub reported_at_s: i64,
    /// When it leaves the layer, s since the epoch.
    pub expires_at_s: i64,
    /// The Centre's case reference.
    pub case_ref: String,
}

/// One change of a feed batch, applied in the batch's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedChange {
    /// The entry joins the layer, replacing one held for its target.
    Add(FeedRow),
    /// The target (a number or a range) leaves the layer; one not held is
    /// nothing to do.
    Withdraw(String),
}

impl FeedChange {
    /// The number or range it changes.
    pub fn target(&self) -> &str {
        match self {
            FeedChange::Add(r) => &r.target,
            FeedChange::Withdraw(t) => t,
        }
    }
}

/// A case to open for one of the Centre's alerts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCase {
    /// The Centre's alert id: one case per id, ever.
    pub alert_id: String,
    /// The operator's number the alert names (E.164).
    pub number: String,
    /// The Centre's category.
    pub category: String,
    /// The Centre's note, as it came (shown escaped).
    pub centre_note: String,
    /// When the Centre had it reported, µs since the epoch.
    pub reported_at_us: i64,
    /// When kuzet opened the case.
    pub opened_at_us: i64,
    /// When the decision is due (the end of the second working day).
    pub due_at_us: i64,
}

impl NewCase {
    /// The case as it stands once opened under `id`: open, undecided.
    pub fn opened(&self, id: i64) -> Case {
        Case {
            id,
            alert_id: self.alert_id.clone(),
            number: self.number.clone(),
            category: self.category.clone(),
            centre_note: self.centre_note.clone(),
            reported_at_us: self.reported_at_us,
            opened_at_us: self.opened_at_us,
            due_at_us: self.due_at_us,
            state: OPEN.into(),
            decided_at_us: None,
            decided_by: String::new(),
            note: String::new(),
            bss_ref: String::new(),
        }
    }
}

/// A case as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// Its id.
    pub id: i64,
    /// The Centre's alert id.
    pub alert_id: String,
    /// The operator's number the alert names.
    pub number: String,
    /// The Centre's category.
    pub category: String,
    /// The Centre's note.
    pub centre_note: String,
    /// When the Centre had it reported, µs since the epoch.
    pub reported_at_us: i64,
    /// When kuzet opened it.
    pub opened_at_us: i64,
    /// When its decision is due.
    pub due_at_us: i64,
    /// `open`, `confirmed` or `not_confirmed`.
    pub state: String,
    /// When it was decided.
    pub decided_at_us: Option<i64>,
    /// Who decided it (a token's name; empty while open).
    pub decided_by: String,
    /// The operator's note on the decision.
    pub note: String,
    /// The operator's billing/BSS reference (kuzet holds no personal
    /// data of the subscriber).
    pub bss_ref: String,
}

/// The decision on a case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseDecision {
    /// Whether the number was the fraud the Centre said.
    pub confirmed: bool,
    /// The operator's note.
    pub note: String,
    /// The billing/BSS reference.
    pub bss_ref: String,
    /// Who decided.
    pub by: String,
    /// When, µs since the epoch.
    pub at_us: i64,
}

/// How many cases are in each state, for the gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaseCounts {
    /// Open cases.
    pub open: u64,
    /// Open cases due within the window asked for, not overdue.
    pub due_soon: u64,
    /// Open cases past their due time.
    pub overdue: u64,
    /// Cases confirmed.
    pub confirmed: u64,
    /// Cases not confirmed.
    pub not_confirmed: u64,
}

/// A report to queue for the Centre.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewReport {
    /// Its idempotency key: one report per key, ever.
    pub key: String,
    /// `decision`, `fraud_number`, `potential_victim` or `feedback`.
    pub kind: String,
    /// The report as it will be sent (JSON), frozen from now on.
    pub body: String,
    /// Not sent before this time, µs since the epoch.
    pub not_before_us: i64,
}

/// A report due for sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportDue {
    /// Its id.
    pub id: i64,
    /// Its idempotency key.
    pub key: String,
    /// Its kind.
    pub kind: String,
    /// The body to send, as queued.
    pub body: String,
    /// Tries so far.
    pub attempts: i64,
}

/// A report as the CLI lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportRow {
    /// Its id.
    pub id: i64,
    /// Its idempotency key.
    pub key: String,
    /// Its kind.
    pub kind: String,
    /// `pending`, `delivered` or `dead_letter`.
    pub state: String,
    /// Tries so far.
    pub attempts: i64,
    /// When it was queued, µs since the epoch.
    pub queued_at_us: i64,
    /// When the Centre took it.
    pub delivered_at_us: Option<i64>,
    /// The last try's error (empty once delivered).
    pub last_error: String,
}

/// How much the Centre's outbox holds, for the gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CentreBacklog {
    /// Reports still to deliver.
    pub pending: u64,
    /// Reports the Centre refused.
    pub dead_letters: u64,
    /// When the oldest report still pending was queued.
    pub oldest_pending_us: Option<i64>,
}

/// `error` cut to at most [`MAX_ERROR`] bytes, on a character boundary.
pub(crate) fn bounded(error: &str) -> &str {
    if error.len() <= MAX_ERROR {
        return error;
    }
    let mut end = MAX_ERROR;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    &error[..end]
}

/// The stream's cursor as stored (0 before any).
fn cursor_of(c: &Connection, stream: &str) -> rusqlite::Result<u64> {
    let v: Option<i64> = c
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([cursor_key(stream)], |r| r.get(0))
        .optional()?;
    Ok(v.map_or(0, |v| v.max(0) as u64))
}

fn cursor_key(stream: &str) -> String {
    format!("cursor:{stream}")
}

/// Whether batch `seq` of `stream` is the next after the stored cursor;
/// why not, if not.
fn follows(c: &Connection, stream: &str, seq: u64) -> rusqlite::Result<Result<(), String>> {
    Ok(follows_cursor(stream, cursor_of(c, stream)?, seq))
}

/// Whether batch `seq` of `stream` is the next after the cursor `cur`;
/// why not, if not (every backend's words).
pub(crate) fn follows_cursor(stream: &str, cur: u64, seq: u64) -> Result<(), String> {
    let next = cur.saturating_add(1);
    if seq == next && i64::try_from(seq).is_ok() {
        Ok(())
    } else if seq <= cur {
        Err(format!(
            "the {stream} cursor is at {cur}: {seq} is already applied; nothing done"
        ))
    } else {
        Err(format!(
            "the {stream} cursor is at {cur}: {seq} does not follow it, {next} must come first; nothing done"
        ))
    }
}

fn set_cursor(c: &Connection, stream: &str, seq: u64) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![cursor_key(stream), seq as i64])?;
    Ok(())
}

const FEED_COLUMNS: &str = "target, category, confidence, reported_at_s, expires_at_s, case_ref";

fn feed_row(r: &Row<'_>) -> rusqlite::Result<FeedRow> {
    Ok(FeedRow {
        target: r.get(0)?,
        category: r.get(1)?,
        confidence: r.get(2)?,
        reported_at_s: r.get(3)?,
        expires_at_s: r.get(4)?,
        case_ref: r.get(5)?,
    })
}

const CASE_COLUMNS: &str = "id, alert_id, number, category, centre_note, reported_at_us,
    opened_at_us, due_at_us, state, decided_at_us, decided_by, note, bss_ref";

fn case_row(r: &Row<'_>) -> rusqlite::Result<Case> {
    Ok(Case {
        id: r.get(0)?,
        alert_id: r.get(1)?,
        number: r.get(2)?,
        category: r.get(3)?,
        centre_note: r.get(4)?,
        reported_at_us: r.get(5)?,
        opened_at_us: r.get(6)?,
        due_at_us: r.get(7)?,
        state: r.get(8)?,
        decided_at_us: r.get(9)?,
        decided_by: r.get(10)?,
        note: r.get(11)?,
        bss_ref: r.get(12)?,
    })
}

fn get_case(c: &Connection, id: i64) -> rusqlite::Result<Option<Case>> {
    c.prepare_cached(&format!("SELECT {CASE_COLUMNS} FROM cases WHERE id = ?1"))?
        .query_row([id], case_row)
        .optional()
}

/// Queues `r` unless its key is held; whether it was new.
fn queue(c: &Connection, r: &NewReport, now_us: i64) -> rusqlite::Result<bool> {
    let n = c
        .prepare_cached(
            "INSERT OR IGNORE INTO reports
             (key, kind, body, state, attempts, queued_at_us, next_at_us, delivered_at_us, last_error)
             VALUES (?1, ?2, ?3, 'pending', 0, ?4, ?5, NULL, '')",
        )?
        .execute(params![r.key, r.kind, r.body, now_us, r.not_before_us])?;
    Ok(n == 1)
}

/// Applies a feed batch, or says why it does not follow.
fn apply(
    c: &mut Connection,
    seq: u64,
    changes: &[FeedChange],
) -> rusqlite::Result<Result<(), String>> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Err(why) = follows(&tx, BATCHES, seq)? {
        return Ok(Err(why));
    }
    {
        let mut add = tx.prepare_cached(&format!(
            "INSERT INTO feed ({FEED_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (target) DO UPDATE SET category = excluded.category,
                 confidence = excluded.confidence, reported_at_s = excluded.reported_at_s,
                 expires_at_s = excluded.expires_at_s, case_ref = excluded.case_ref"
        ))?;
        let mut withdraw = tx.prepare_cached("DELETE FROM feed WHERE target = ?1")?;
        // In the order of their targets (stable: one target's changes keep
        // the batch's order, and changes to different targets commute), so
        // the table's pages are written in key order, each once, however
        // the batch is ordered.
        let mut order: Vec<&FeedChange> = changes.iter().collect();
        order.sort_by(|a, b| a.target().cmp(b.target()));
        for ch in order {
            match ch {
                FeedChange::Add(r) => add.execute(params![
                    r.target,
                    r.category,
                    r.confidence,
                    r.reported_at_s,
                    r.expires_at_s,
                    r.case_ref
                ])?,
                FeedChange::Withdraw(target) => withdraw.execute([target])?,
            };
        }
    }
    set_cursor(&tx, BATCHES, seq)?;
    tx.commit()?;
    Ok(Ok(()))
}

/// Hands over every live feed entry and the feed's cursor, from one
/// snapshot.
fn load(c: &mut Connection, now_s: i64, each: &mut dyn FnMut(FeedRow)) -> rusqlite::Result<u64> {
    // Deferred: the first read fixes the snapshot both reads see.
    let tx = c.transaction()?;
    let cursor = cursor_of(&tx, BATCHES)?;
    {
        // `+` keeps the expiry index out of it: nearly every row is live,
        // and a scan in key order reads each page once.
        let mut st = tx.prepare(&format!(
            "SELECT {FEED_COLUMNS} FROM feed WHERE +expires_at_s > ?1"
        ))?;
        let mut rows = st.query([now_s])?;
        while let Some(r) = rows.next()? {
            each(feed_row(r)?);
        }
    }
    tx.commit()?;
    Ok(cursor)
}

/// Opens the cases of an alerts batch, or says why it does not follow.
fn open_batch(
    c: &mut Connection,
    seq: u64,
    cases: &[NewCase],
) -> rusqlite::Result<Result<Vec<Case>, String>> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Err(why) = follows(&tx, ALERTS, seq)? {
        return Ok(Err(why));
    }
    let mut opened = Vec::new();
    {
        let mut put = tx.prepare_cached(
            "INSERT OR IGNORE INTO cases (alert_id, number, category, centre_note, reported_at_us,
                 opened_at_us, due_at_us, state, decided_at_us, decided_by, note, bss_ref)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'open', NULL, '', '', '')",
        )?;
        for n in cases {
            let added = put.execute(params![
                n.alert_id,
                n.number,
                n.category,
                n.centre_note,
                n.reported_at_us,
                n.opened_at_us,
                n.due_at_us
            ])?;
            if added == 1 {
                opened.push(n.opened(tx.last_insert_rowid()));
            }
        }
    }
    set_cursor(&tx, ALERTS, seq)?;
    tx.commit()?;
    Ok(Ok(opened))
}

/// Decides an open case and queues its report, or says why not.
fn decide_case(
    c: &mut Connection,
    id: i64,
    d: &CaseDecision,
    report: &NewReport,
) -> rusqlite::Result<Result<Case, String>> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let Some(case) = get_case(&tx, id)? else {
        return Ok(Err(format!("no case {id}")));
    };
    if case.state != OPEN {
        return Ok(Err(format!(
            "case {id} is already decided ({})",
            case.state
        )));
    }
    tx.prepare_cached(
        "UPDATE cases SET state = ?2, decided_at_us = ?3, decided_by = ?4, note = ?5, bss_ref = ?6
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        if d.confirmed {
            CONFIRMED
        } else {
            NOT_CONFIRMED
        },
        d.at_us,
        d.by,
        d.note,
        d.bss_ref
    ])?;
    queue(&tx, report, crate::now_us())?;
    let decided = get_case(&tx, id)?;
    tx.commit()?;
    Ok(decided.ok_or_else(|| format!("no case {id}")))
}

/// The Centre's port on SQLite, in the data directory's [`CENTRE_FILE`].
///
/// One read-write connection carries every write (each method's one
/// transaction) and the reporter's reads; another serves the gauges' and
/// the CLI's reads, so they never wait behind a feed batch. Both are
/// opened on first use (the file made then) and dropped after an error,
/// so the next call opens a fresh one. Loading the feed opens a
/// connection of its own for its snapshot, however long it streams.
pub struct SqliteCentre {
    dir: PathBuf,
    path: PathBuf,
    writer: Lazy,
    reader: Lazy,
}

impl SqliteCentre {
    /// The Centre's store in the data directory `dir` (its file made on
    /// first use).
    pub fn new(dir: &Path) -> SqliteCentre {
        let path = dir.join(CENTRE_FILE);
        SqliteCentre {
            dir: dir.to_path_buf(),
            writer: Lazy::new(path.clone()),
            reader: Lazy::new(path.clone()),
            path,
        }
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.writer.with(|| open(&self.dir), true, f)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        self.reader.with(|| open(&self.dir), true, |c| f(c))
    }

    /// A refusal of the work itself, as the store's error.
    fn conflict<T>(&self, r: Result<T, String>) -> Result<T, StoreError> {
        r.map_err(|reason| StoreError::Conflict {
            path: self.path.clone(),
            reason,
        })
    }
}

impl Centre for SqliteCentre {
    fn cursor(&self, stream: &str) -> Result<u64, StoreError> {
        self.read(|c| cursor_of(c, stream))
    }

    fn feed_load(&self, now_s: i64, each: &mut dyn FnMut(FeedRow)) -> Result<u64, StoreError> {
        let mut c = open(&self.dir)?;
        load(&mut c, now_s, each).map_err(|e| sqlite_error(&self.path, e))
    }

    fn feed_apply(&self, seq: u64, changes: &[FeedChange]) -> Result<(), StoreError> {
        let r = self.write(|c| apply(c, seq, changes))?;
        self.conflict(r)
    }

    fn feed_expire(&self, now_s: i64) -> Result<u64, StoreError> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute("DELETE FROM feed WHERE expires_at_s <= ?1", [now_s])?;
            tx.commit()?;
            Ok(n as u64)
        })
    }

    fn feed_entry(&self, target: &str) -> Result<Option<FeedRow>, StoreError> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {FEED_COLUMNS} FROM feed WHERE target = ?1"
            ))?
            .query_row([target], feed_row)
            .optional()
        })
    }

    fn open_cases(&self, seq: u64, cases: &[NewCase]) -> Result<Vec<Case>, StoreError> {
        let r = self.write(|c| open_batch(c, seq, cases))?;
        self.conflict(r)
    }

    fn case(&self, id: i64) -> Result<Option<Case>, StoreError> {
        self.read(|c| get_case(c, id))
    }

    fn cases(
        &self,
        state: Option<&str>,
        due_before_us: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Case>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {CASE_COLUMNS} FROM cases
                 WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR due_at_us < ?2)
                 ORDER BY due_at_us, id LIMIT ?3"
            ))?;
            let rows = st.query_map(
                params![state, due_before_us, limit.clamp(1, 1000) as i64],
                case_row,
            )?;
            rows.collect()
        })
    }

    fn decide(
        &self,
        id: i64,
        d: &CaseDecision,
        report: &NewReport,
    ) -> Result<Result<Case, String>, StoreError> {
        self.write(|c| decide_case(c, id, d, report))
    }

    fn case_counts(&self, now_us: i64, near_us: i64) -> Result<CaseCounts, StoreError> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT coalesce(sum(state = 'open'), 0),
                        coalesce(sum(state = 'open' AND due_at_us >= ?1 AND due_at_us <= ?2), 0),
                        coalesce(sum(state = 'open' AND due_at_us < ?1), 0),
                        coalesce(sum(state = 'confirmed'), 0),
                        coalesce(sum(state = 'not_confirmed'), 0)
                 FROM cases",
            )?
            .query_row(params![now_us, now_us.saturating_add(near_us)], |r| {
                Ok(CaseCounts {
                    open: r.get::<_, i64>(0)? as u64,
                    due_soon: r.get::<_, i64>(1)? as u64,
                    overdue: r.get::<_, i64>(2)? as u64,
                    confirmed: r.get::<_, i64>(3)? as u64,
                    not_confirmed: r.get::<_, i64>(4)? as u64,
                })
            })
        })
    }

    fn queue_reports(&self, reports: &[NewReport]) -> Result<usize, StoreError> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = crate::now_us();
            let mut n = 0;
            for r in reports {
                n += usize::from(queue(&tx, r, now)?);
            }
            tx.commit()?;
            Ok(n)
        })
    }

    fn due_reports(&self, now_us: i64, limit: usize) -> Result<Vec<ReportDue>, StoreError> {
        self.write(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, key, kind, body, attempts FROM reports
                 WHERE state = 'pending' AND next_at_us <= ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = st.query_map(params![now_us, limit.clamp(1, 1000) as i64], |r| {
                Ok(ReportDue {
                    id: r.get(0)?,
                    key: r.get(1)?,
                    kind: r.get(2)?,
                    body: r.get(3)?,
                    attempts: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }

    fn report_tried(&self, id: i64) -> Result<(), StoreError> {
        self.write(|c| {
            c.prepare_cached(
                "UPDATE reports SET attempts = attempts + 1 WHERE id = ?1 AND state = 'pending'",
            )?
            .execute([id])?;
            Ok(())
        })
    }

    fn report_delivered(&self, id: i64, at_us: i64) -> Result<(), StoreError> {
        self.write(|c| {
            c.prepare_cached(
                "UPDATE reports SET state = 'delivered', delivered_at_us = ?2, last_error = ''
                 WHERE id = ?1 AND state = 'pending'",
            )?
            .execute(params![id, at_us])?;
            Ok(())
        })
    }

    fn report_retry(&self, id: i64, next_at_us: i64, error: &str) -> Result<(), StoreError> {
        self.write(|c| {
            c.prepare_cached(
                "UPDATE reports SET next_at_us = ?2, last_error = ?3
                 WHERE id = ?1 AND state = 'pending'",
            )?
            .execute(params![id, next_at_us, bounded(error)])?;
            Ok(())
        })
    }

    fn report_dead_letter(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.write(|c| {
            c.prepare_cached(
                "UPDATE reports SET state = 'dead_letter', last_error = ?2
                 WHERE id = ?1 AND state = 'pending'",
            )?
            .execute(params![id, bounded(error)])?;
            Ok(())
        })
    }

    fn report_backlog(&self) -> Result<CentreBacklog, StoreError> {
        self.read(|c| {
            let tx = c.unchecked_transaction()?;
            let pending: i64 = tx
                .prepare_cached("SELECT count(*) FROM reports WHERE state = 'pending'")?
                .query_row([], |r| r.get(0))?;
            let dead: i64 = tx
                .prepare_cached("SELECT count(*) FROM reports WHERE state = 'dead_letter'")?
                .query_row([], |r| r.get(0))?;
            let oldest: Option<i64> = tx
                .prepare_cached(
                    "SELECT queued_at_us FROM reports WHERE state = 'pending' ORDER BY id LIMIT 1",
                )?
                .query_row([], |r| r.get(0))
                .optional()?;
            tx.commit()?;
            Ok(CentreBacklog {
                pending: pending as u64,
                dead_letters: dead as u64,
                oldest_pending_us: oldest,
            })
        })
    }

    fn reports(&self, state: Option<&str>, limit: usize) -> Result<Vec<ReportRow>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, key, kind, state, attempts, queued_at_us, delivered_at_us, last_error
                 FROM reports WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![state, limit.clamp(1, 1000) as i64], |r| {
                Ok(ReportRow {
                    id: r.get(0)?,
                    key: r.get(1)?,
                    kind: r.get(2)?,
                    state: r.get(3)?,
                    attempts: r.get(4)?,
                    queued_at_us: r.get(5)?,
                    delivered_at_us: r.get(6)?,
                    last_error: r.get(7)?,
                })
            })?;
            rows.collect()
        })
    }
}

#[cfg(test)]
pub(crate) mod suite;

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    use super::suite::{self, add};
    use super::*;

    #[test]
    fn the_centre_file_is_made_private_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = SqliteCentre::new(dir.path());
        c.feed_apply(1, &[add("+77011234567", "x", 10)]).unwrap();
        for f in CENTRE_FILES {
            let m = std::fs::metadata(dir.path().join(f)).unwrap();
            assert_eq!(m.mode() & 0o777, 0o600, "{f}");
        }
        drop(c);
        let conn = open(dir.path()).unwrap();
        conn.pragma_update(None, "user_version", CENTRE_VERSION + 1)
            .unwrap();
        drop(conn);
        let e = SqliteCentre::new(dir.path()).cursor(BATCHES).unwrap_err();
        assert!(
            matches!(e, StoreError::NewerSchema { found, .. } if found == CENTRE_VERSION + 1),
            "{e}"
        );
        assert!(e.to_string().contains("centre.db"), "{e}");
    }

    #[test]
    fn a_foreign_or_linked_centre_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CENTRE_FILE);
        let other = Connection::open(&path).unwrap();
        other
            .execute_batch("CREATE TABLE t (x); PRAGMA application_id = 7;")
            .unwrap();
        drop(other);
        let e = open(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::Foreign(_)), "{e}");
        std::fs::remove_file(&path).unwrap();
        // A link in its place is refused by the port and by the writer's
        // check of the data directory alike.
        let target = dir.path().join("elsewhere.db");
        std::fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let c = SqliteCentre::new(dir.path());
        let e = c.cursor(BATCHES).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = crate::open(dir.path(), crate::Options::default())
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("centre.db is a symbolic link"),
            "{e}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"", "the target untouched");
        // Once the link is gone the same port opens a file of its own.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(c.cursor(BATCHES).unwrap(), 0);
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
    }

    /// A Centre in a fresh data directory, kept as long as the directory.
    fn fresh() -> (tempfile::TempDir, SqliteCentre) {
        let dir = tempfile::tempdir().unwrap();
        let c = SqliteCentre::new(dir.path());
        (dir, c)
    }

    #[test]
    fn a_batch_that_does_not_follow_the_cursor_is_refused_and_changes_nothing() {
        let (_dir, c) = fresh();
        suite::a_batch_that_does_not_follow_the_cursor_is_refused_and_changes_nothing(
            &c,
            CENTRE_FILE,
        );
    }

    #[test]
    fn adds_replace_withdrawals_remove_and_expiry_deletes() {
        let (_dir, c) = fresh();
        suite::adds_replace_withdrawals_remove_and_expiry_deletes(&c);
    }

    #[test]
    fn the_feed_loads_only_live_rows_with_its_cursor() {
        let (_dir, c) = fresh();
        suite::the_feed_loads_only_live_rows_with_its_cursor(&c);
    }

    #[test]
    fn a_batch_of_a_million_changes_applies_in_one_go() {
        let (dir, c) = fresh();
        let conn = open(dir.path()).unwrap();
        let held = || {
            conn.query_row("SELECT count(*) FROM feed", [], |r| r.get::<_, i64>(0))
                .unwrap() as u64
        };
        suite::a_batch_of_many_changes_applies_in_one_go(&c, 1_000_000, &held);
    }

    #[test]
    fn alerts_open_one_case_per_id_and_move_their_cursor() {
        let (_dir, c) = fresh();
        suite::alerts_open_one_case_per_id_and_move_their_cursor(&c);
    }

    #[test]
    fn a_case_is_decided_once_and_its_report_queued_once() {
        let (_dir, c) = fresh();
        suite::a_case_is_decided_once_and_its_report_queued_once(&c);
    }

    #[test]
    fn reports_are_queued_once_per_key_and_go_pending_to_delivered_or_dead() {
        let (_dir, c) = fresh();
        suite::reports_are_queued_once_per_key_and_go_pending_to_delivered_or_dead(&c);
    }

    #[test]
    fn everything_survives_a_new_instance() {
        let dir = tempfile::tempdir().unwrap();
        let open = || -> Arc<dyn Centre> { crate::sqlite::ports(dir.path()).centre };
        suite::everything_survives_a_new_instance(&open);
    }

    #[test]
    fn an_error_text_is_cut_on_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        let s = format!("{}é", "a".repeat(MAX_ERROR - 1));
        assert_eq!(bounded(&s).len(), MAX_ERROR - 1);
        assert_eq!(bounded(&"a".repeat(5_000)).len(), MAX_ERROR);
    }
}
