//! kuzet's store: the intercepted-call log, incidents, the register outbox,
//! the audit log of investigators' queries, and what kuzet keeps of the
//! National Bank Anti-Fraud Centre (its feed, its alerts' cases, the
//! reports to it).
//!
//! The control plane sees the store only through five ports ([`ports`]),
//! traits with nothing of a database in their signatures: the recorder's
//! [`RecordWriter`], the investigators' [`Queries`], the reporter's
//! [`Outbox`], the gate's [`AuditLog`] and the Centre's [`Centre`]. The
//! outbox's payload is a wire type of its own, versioned
//! ([`outbox::Payload`]). Two implementations: SQLite ([`sqlite`], the
//! default): one embedded file, `kuzet.db`, in the data directory, the
//! audit log beside it in `audit.db`, and the Centre's data in
//! `centre.db` ([`centre`]); and PostgreSQL ([`pg`], `[store] backend =
//! "postgres"`): one database every node of a cluster shares, for the
//! calls (partitioned by time), incidents, the outbox and the audit log
//! (the Centre's port stays SQLite in the data directory for now).
//!
//! One writer per node, the control plane's recorder thread, owns the
//! [`RecordWriter`] (a [`Store`] on SQLite, the only writer of its file;
//! a [`pg::PgStore`] on PostgreSQL, one of the nodes' writers): it
//! commits records in batches and retires old ones in small chunks
//! between batches. Readers (the investigators' API)
//! open their own read-only connections; WAL mode lets them read while the
//! writer writes. The call path never touches this crate: it hands records
//! to a bounded queue.
//!
//! The schema is versioned ([`schema`]; on PostgreSQL per component,
//! [`pg::schema`]): a store from an older kuzet is migrated in one
//! transaction, and one from a newer kuzet, or a file that is not a kuzet
//! store at all, is refused with the reason, never rewritten.

#![forbid(unsafe_code)]

pub mod audit;
pub mod centre;
pub mod config;
pub mod days;
pub mod incident;
pub mod outbox;
pub mod pg;
pub mod ports;
pub mod private;
pub mod query;
pub mod record;
pub mod schema;
pub mod sqlite;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

pub use ports::{AuditLog, Centre, Outbox, Ports, Queries, RecordWriter, SharedShelves};
pub use record::{ListHitRec, Record, RuleHit};

/// The database's file name inside the data directory.
pub const DB_FILE: &str = "kuzet.db";
/// The lock file that keeps two kuzets off one data directory.
pub const LOCK_FILE: &str = "kuzet.lock";

/// Why the store could not be opened or written: always names the path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory cannot be created or written.
    #[error("data directory {path}: {reason}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// What the OS or SQLite said.
        reason: String,
    },
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another kuzet (it holds {LOCK_FILE})")]
    Locked(PathBuf),
    /// The database was written by a newer kuzet.
    #[error("{path} holds schema version {found}; this kuzet reads versions up to {known}: run the kuzet that wrote it, or point --data at a fresh directory")]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// The file is an SQLite database, but not kuzet's.
    #[error("{0} is not a kuzet store (its application id is not kuzet's); point --data at another directory")]
    Foreign(PathBuf),
    /// The work does not follow from what the store holds (a batch whose
    /// sequence is not the next after the stored cursor): refused whole,
    /// nothing written. Never transient: the same work is refused again
    /// until the caller asks for what does follow.
    #[error("{path}: {reason}")]
    Conflict {
        /// The database file.
        path: PathBuf,
        /// What the store holds and what it was asked.
        reason: String,
    },
    /// A write of a singleton's leader was refused because another node
    /// has since led it with a newer lease (a higher fencing token): this
    /// node lost its lease while paused or cut off, and must stop acting.
    /// Never transient.
    #[error("{at}: the lease {name} moved on (this node's fencing token {token}, the store has seen {seen}); the write is refused")]
    Fenced {
        /// The server.
        at: String,
        /// The lease.
        name: String,
        /// The token this node wrote with.
        token: u64,
        /// The highest token the store has seen for the lease.
        seen: u64,
    },
    /// The database refused or failed.
    #[error("{at}: {source}")]
    Backend {
        /// Where: the database file (a server's name, for a store on one).
        at: String,
        /// Whether the same work can succeed when tried again later: a
        /// full disk, a lock, a busy or unreachable database; not a row the
        /// store refuses for itself.
        transient: bool,
        /// What the database said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Whether trying the same work again later can succeed (the disk,
    /// the lock or the connection comes back), as opposed to a refusal of
    /// the work itself, which would fail the same way every time.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Backend {
                transient: true,
                ..
            }
        )
    }

    /// An error of the store's own making, not the database's (a lock
    /// poisoned by a panic): never transient.
    pub fn internal(at: impl Into<String>, what: impl Into<String>) -> StoreError {
        StoreError::Backend {
            at: at.into(),
            transient: false,
            source: what.into().into(),
        }
    }
}

/// SQLite's error on the file at `path`, classified: the disk, a lock or
/// the file come back; anything else is a refusal of the work itself.
pub(crate) fn sqlite_error(path: &Path, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    let transient = match &e {
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            DiskFull
                | SystemIoFailure
                | DatabaseBusy
                | DatabaseLocked
                | CannotOpen
                | ReadOnly
                | OutOfMemory
                | FileLockingProtocolFailed
        ),
        _ => false,
    };
    StoreError::Backend {
        at: path.display().to_string(),
        transient,
        source: Box::new(e),
    }
}

/// How the store is kept.
#[derive(Clone, Debug)]
pub struct Options {
    /// This node's name, written into every record.
    pub node: String,
    /// Records older than this are retired (0: kept for ever).
    pub max_age: Duration,
    /// The calls log is trimmed, oldest first, to stay under this many
    /// bytes (0: no limit).
    pub max_bytes: u64,
    /// Records retired per chunk: each chunk is one short transaction.
    pub retire_chunk: usize,
    /// How calls group into incidents, and which are reported.
    pub incidents: incident::Policy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            node: "kuzet".into(),
            max_age: Duration::from_secs(90 * 86_400),
            max_bytes: 0,
            retire_chunk: 2000,
            incidents: incident::Policy::default(),
        }
    }
}

/// The writer's handle on the SQLite store: the recorder port
/// ([`RecordWriter`]), holding the data directory's lock.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    opts: Options,
    store_id: String,
    /// When incidents' lifetimes were last checked (µs).
    lifetimes_checked_us: i64,
    /// Held for the process's life: the directory's lock.
    _lock: std::fs::File,
}

/// Opens (creating if needed) the data directory and its database, checks
/// that it can be written, takes the directory's lock and brings the
/// schema up to date.
pub fn open(dir: &Path, opts: Options) -> Result<Store, StoreError> {
    let dir_err = |reason: String| StoreError::Directory {
        path: dir.to_path_buf(),
        reason,
    };
    let lock = lock_dir(dir)?;
    let path = dir.join(DB_FILE);
    let sq = |e| sqlite_error(&path, e);
    // Made 0600 before SQLite sees it: SQLite gives the WAL and the
    // shared-memory file the database file's mode.
    private::precreate(&path).map_err(|e| dir_err(format!("cannot create {DB_FILE}: {e}")))?;
    let mut conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(sq)?;
    // A file that is not kuzet's, or is newer, is refused before anything
    // (even the journal mode) is changed in it.
    schema::check_writable(&conn, &path)?;
    tune(&conn).map_err(sq)?;
    schema::migrate(&mut conn, &path)?;
    let store_id = schema::store_id(&conn).map_err(sq)?;
    Ok(Store {
        conn,
        path,
        opts,
        store_id,
        lifetimes_checked_us: 0,
        _lock: lock,
    })
}

/// Prepares the data directory (kuzet's alone: [`private`]), checks its
/// files, and takes its lock, held for as long as the file returned is
/// open: one kuzet per data directory, whatever store it writes to (with
/// a PostgreSQL store the directory still holds the record queue).
pub fn lock_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    let dir_err = |reason: String| StoreError::Directory {
        path: dir.to_path_buf(),
        reason,
    };
    private::prepare_dir(dir).map_err(dir_err)?;
    for f in DATA_FILES {
        private::check_file(&dir.join(f)).map_err(dir_err)?;
    }
    let lock = private::open_private(&dir.join(LOCK_FILE))
        .map_err(|e| dir_err(format!("cannot write {LOCK_FILE} in it: {e}")))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(dir.into())),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(dir_err(format!("cannot lock {LOCK_FILE}: {e}")))
        }
    }
}

/// Every file kuzet keeps in the data directory: checked (a regular file
/// of kuzet's user, not a link) before any is opened.
pub const DATA_FILES: &[&str] = &[
    LOCK_FILE,
    DB_FILE,
    "kuzet.db-wal",
    "kuzet.db-shm",
    audit::AUDIT_FILE,
    "audit.db-wal",
    "audit.db-shm",
    centre::CENTRE_FILES[0],
    centre::CENTRE_FILES[1],
    centre::CENTRE_FILES[2],
    "records.ring",
];

/// WAL (readers never block the writer), `synchronous = FULL` (each
/// commit is synced: it survives a crash of kuzet and a power cut; the
/// recorder commits a few times a second, so the syncs are few and each
/// writes back a small piece instead of a whole checkpoint at once), and a
/// busy timeout for the rare reader checkpoint.
fn tune(conn: &Connection) -> rusqlite::Result<()> {
    // 16 KiB pages hold several records each (a record with its header
    // section is about 1.4 KiB); set before the file has any page.
    conn.pragma_update(None, "page_size", 16_384)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Pages are read through a 2 GiB map (SQLite's ceiling) rather than
    // copied out of the kernel with a pread each.
    conn.pragma_update(None, "mmap_size", 2_147_418_112_i64)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // The writer's page cache holds the hot index pages (256 MiB: the
    // indexes on numbers are written at random, and past a few million
    // records a smaller cache re-reads their pages for every batch; a 3M
    // fill ran 19% faster with this cache and map than with 64 MiB and
    // 256 MiB), and the WAL is checkpointed every 2048 pages (32 MiB):
    // index pages touched by many commits reach the database once per
    // checkpoint, and no
    // checkpoint has so much to write back that its fsync holds a core in
    // the kernel for long (on a kernel without preemption, the worker on
    // that core waits it out).
    conn.pragma_update(None, "cache_size", -262_144)?;
    conn.pragma_update(None, "wal_autocheckpoint", 2048)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // The writer cycles through about twenty statements per batch (calls,
    // rules, incidents, outbox, retention, upkeep); a cache smaller than
    // that evicts each one just before its next use and parses it again.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Opens a read-only connection for queries.
pub fn open_reader(dir: &Path) -> Result<Connection, StoreError> {
    open_other(dir, OpenFlags::SQLITE_OPEN_READ_ONLY)
}

/// Opens a read-write connection that is not the writer's, for the audit
/// log and the outbox (their writes are small and rare; SQLite serializes
/// them).
pub fn open_side_writer(dir: &Path) -> Result<Connection, StoreError> {
    open_other(dir, OpenFlags::SQLITE_OPEN_READ_WRITE)
}

/// A connection beside the writer's, on an existing store it can read.
fn open_other(dir: &Path, mode: OpenFlags) -> Result<Connection, StoreError> {
    let path = dir.join(DB_FILE);
    let sq = |e| sqlite_error(&path, e);
    let conn = Connection::open_with_flags(
        &path,
        mode | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(sq)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(sq)?;
    schema::check_readable(&conn, &path)?;
    Ok(conn)
}

impl Store {
    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer's connection (tests and the incident engine read through
    /// it).
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// [`RecordWriter::insert`] with the clock given (tests move it).
    pub fn insert_at(&mut self, recs: &[Record], now_us: i64) -> Result<(), StoreError> {
        self.insert_sql(recs, now_us)
            .map_err(|e| sqlite_error(&self.path, e))
    }

    fn insert_sql(&mut self, recs: &[Record], now_us: i64) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The calls, their incidents and the reports they call for commit
        // together; grouping first gives each call its incident as it is
        // written.
        let linked = incident::group_batch(&tx, recs, &self.opts.incidents, now_us)?;
        {
            let mut call = tx.prepare_cached(record::INSERT_CALL)?;
            let mut rule = tx.prepare_cached(
                "INSERT OR IGNORE INTO call_rules (call, rule, shadow) VALUES (?1, ?2, ?3)",
            )?;
            for (r, inc) in recs.iter().zip(linked) {
                let id = r.insert(&mut call, &self.opts.node, r.incident.or(inc))?;
                for h in &r.rules {
                    rule.execute(params![id, h.id, h.shadow])?;
                }
            }
        }
        if let Some(seq) = recs.iter().map(|r| r.id_seq).max().filter(|s| *s > 0) {
            tx.prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('verdict_seq', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = max(CAST(value AS INTEGER), CAST(?1 AS INTEGER))",
            )?
            .execute(params![seq as i64])?;
        }
        tx.commit()
    }

    /// Commits records a crashed process left in the record queue: those
    /// the store already holds (committed just before the crash) are
    /// skipped, so a replay never records a call twice. Returns how many
    /// were new.
    fn insert_replayed_sql(&mut self, recs: Vec<Record>) -> rusqlite::Result<usize> {
        let mut fresh = Vec::with_capacity(recs.len());
        {
            let mut known = self
                .conn
                .prepare_cached("SELECT 1 FROM calls WHERE verdict_id = ?1")?;
            for r in recs {
                if !known.exists(params![r.verdict_id])? {
                    fresh.push(r);
                }
            }
        }
        let n = fresh.len();
        for chunk in fresh.chunks(4096) {
            self.insert_sql(chunk, now_us())?;
        }
        Ok(n)
    }

    /// The incidents' periodic work: delayed updates and closing quiet
    /// incidents, in one short transaction.
    fn tick_sql(&mut self, now_us: i64) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let lifetimes = now_us - self.lifetimes_checked_us >= 60_000_000;
        incident::tick(&tx, &self.opts.incidents, now_us, lifetimes)?;
        tx.commit()?;
        if lifetimes {
            self.lifetimes_checked_us = now_us;
        }
        Ok(())
    }

    /// Writes one small row (the time of the probe in `meta`): whether the
    /// store takes a commit now, asked while no batch is coming (a node
    /// taken out of service for a failed commit gets no calls to prove
    /// it recovered).
    fn probe_sql(&mut self, now_us: i64) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_probe_us', ?1)",
            [now_us.to_string()],
        )?;
        tx.commit()
    }

    /// This store's node name.
    pub fn node(&self) -> &str {
        &self.opts.node
    }

    /// The highest verdict sequence this store has recorded, so a
    /// restarted node continues after it even if the clock went back.
    /// `node_prefix` (8 hex digits of the node) reads it from a store
    /// older than opaque ids, whose ids began with it.
    fn last_verdict_seq_sql(&self, node_prefix: &str) -> rusqlite::Result<Option<u64>> {
        let kept: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'verdict_seq'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(v) = kept.and_then(|v| v.parse::<u64>().ok()) {
            return Ok(Some(v));
        }
        let hi: Option<String> = self.conn.query_row(
            "SELECT max(verdict_id) FROM calls WHERE verdict_id >= ?1 AND verdict_id < ?2",
            params![
                format!("{node_prefix}0000000000000000"),
                format!("{node_prefix}g")
            ],
            |r| r.get(0),
        )?;
        Ok(hi.and_then(|v| u64::from_str_radix(v.get(8..)?, 16).ok()))
    }

    /// Retires one chunk of records that are too old or over the size
    /// limit, oldest first, in one short transaction, and says how many
    /// went and whether the store is over its size limit with nothing it
    /// may retire. The recorder calls it between batches until it retires
    /// nothing, so retention never holds a batch up for longer than one
    /// chunk.
    ///
    /// What retention keeps: the calls of an incident that is not closed
    /// (linked to it, or named as one of its samples), whatever their age;
    /// and, over the size limit, every call whose verdict id was given to
    /// a caller (blocks and redirects) until it ages out: only allows and
    /// flags are retired for size.
    fn retire_chunk_sql(&mut self, now_us: i64) -> rusqlite::Result<Retired> {
        let chunk = self.opts.retire_chunk.max(1) as i64;
        // The chunk is chosen by age itself (never an id range: a clock
        // that jumped must not take younger records with it).
        if !self.opts.max_age.is_zero() {
            let cutoff = now_us - self.opts.max_age.as_micros() as i64;
            let n = self.retire(
                &format!(
                    "SELECT id FROM calls WHERE ts_us < ?1 AND {KEPT} ORDER BY ts_us LIMIT ?2"
                ),
                cutoff,
                chunk,
            )?;
            if n > 0 {
                return Ok(Retired {
                    n,
                    over_size: false,
                });
            }
        }
        if self.opts.max_bytes > 0 && self.used_bytes_sql()? > self.opts.max_bytes {
            let n = self.retire(
                &format!(
                    "SELECT id FROM calls WHERE decision IN ('allow', 'flag') AND ?1 = ?1
                     AND {KEPT} ORDER BY id LIMIT ?2"
                ),
                0,
                chunk,
            )?;
            return Ok(Retired {
                n,
                over_size: n == 0,
            });
        }
        Ok(Retired::default())
    }

    /// Deletes the calls `select` picks (with `?1 = arg`, `?2 = chunk`),
    /// their rules and pins, in one transaction.
    fn retire(&mut self, select: &str, arg: i64, chunk: i64) -> rusqlite::Result<usize> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "CREATE TEMP TABLE IF NOT EXISTS retiring (id INTEGER PRIMARY KEY)",
            [],
        )?;
        tx.execute("DELETE FROM retiring", [])?;
        let n = tx.execute(
            &format!("INSERT INTO retiring (id) {select}"),
            params![arg, chunk],
        )?;
        if n > 0 {
            tx.execute(
                "DELETE FROM call_rules WHERE call IN (SELECT id FROM retiring)",
                [],
            )?;
            tx.execute(
                "DELETE FROM pinned WHERE verdict_id IN
                 (SELECT verdict_id FROM calls WHERE id IN (SELECT id FROM retiring))",
                [],
            )?;
            tx.execute(
                "DELETE FROM calls WHERE id IN (SELECT id FROM retiring)",
                [],
            )?;
        }
        tx.execute("DELETE FROM retiring", [])?;
        tx.commit()?;
        Ok(n)
    }

    /// Bytes the database's live pages take (free pages excluded: SQLite
    /// reuses them, so the file stops growing once retention runs).
    fn used_bytes_sql(&self) -> rusqlite::Result<u64> {
        let page: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let count: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        Ok(((count - free).max(0) * page) as u64)
    }

    /// Records in the calls log.
    pub fn count(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM calls", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| sqlite_error(&self.path, e))
    }
}

/// The SQLite recorder port: the writer's connection, in the data
/// directory it holds locked.
impl RecordWriter for Store {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn insert(&mut self, recs: &[Record]) -> Result<(), StoreError> {
        self.insert_at(recs, now_us())
    }

    fn insert_replayed(&mut self, recs: Vec<Record>) -> Result<usize, StoreError> {
        self.insert_replayed_sql(recs)
            .map_err(|e| sqlite_error(&self.path, e))
    }

    fn tick(&mut self, now_us: i64) -> Result<(), StoreError> {
        self.tick_sql(now_us)
            .map_err(|e| sqlite_error(&self.path, e))
    }

    fn probe(&mut self, now_us: i64) -> Result<(), StoreError> {
        self.probe_sql(now_us)
            .map_err(|e| sqlite_error(&self.path, e))
    }

    fn retire_chunk(&mut self, now_us: i64) -> Result<Retired, StoreError> {
        self.retire_chunk_sql(now_us)
            .map_err(|e| sqlite_error(&self.path, e))
    }

    fn used_bytes(&self) -> Result<u64, StoreError> {
        self.used_bytes_sql()
            .map_err(|e| sqlite_error(&self.path, e))
    }

    fn store_id(&self) -> &str {
        &self.store_id
    }

    fn last_verdict_seq(&self, node_prefix: &str) -> Result<Option<u64>, StoreError> {
        self.last_verdict_seq_sql(node_prefix)
            .map_err(|e| sqlite_error(&self.path, e))
    }

    fn verdict_key(&self) -> Result<[u8; 16], StoreError> {
        schema::verdict_key(&self.conn).map_err(|e| sqlite_error(&self.path, e))
    }
}

/// What one turn of retention did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retired {
    /// Records retired.
    pub n: usize,
    /// The store is over its size limit and holds nothing retention may
    /// retire for size (allows and flags outside open incidents): the
    /// recorder must stop taking low-value records.
    pub over_size: bool,
}

/// The condition under which retention may take a call: it belongs to no
/// incident that is still open, and no open incident names it.
const KEPT: &str = "NOT EXISTS (SELECT 1 FROM incidents i
        WHERE i.id = calls.incident AND i.state != 'closed')
    AND NOT EXISTS (SELECT 1 FROM pinned p JOIN incidents i ON i.id = p.incident
        WHERE p.verdict_id = calls.verdict_id AND i.state != 'closed')";

/// µs since the Unix epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod suite;
#[cfg(test)]
mod tests;
