//! kuzet's store: the intercepted-call log (and, on it, the audit log of
//! investigators' queries) in one embedded SQLite file, `kuzet.db`, in the
//! data directory.
//!
//! One writer, the control plane's recorder thread, owns a [`Store`]: it
//! commits records in batches and retires old ones in small chunks between
//! batches. Readers (the investigators' API) open their own read-only
//! connections; WAL mode lets them read while the writer writes. The call
//! path never touches this crate: it hands records to a bounded queue.
//!
//! The schema is versioned ([`schema`]): a store from an older kuzet is
//! migrated in one transaction, and one from a newer kuzet, or a file that
//! is not a kuzet store at all, is refused with the reason, never
//! rewritten.

#![forbid(unsafe_code)]

pub mod audit;
pub mod incident;
pub mod query;
pub mod record;
pub mod schema;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

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
    /// SQLite refused.
    #[error("{path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
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

/// The writer's handle on the store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    opts: Options,
    store_id: String,
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
    if dir.exists() && !dir.is_dir() {
        return Err(dir_err("exists and is not a directory".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| dir_err(format!("cannot create it: {e}")))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| dir_err(format!("cannot write in it: {e}")))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(dir.into())),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(dir_err(format!("cannot lock {LOCK_FILE}: {e}")))
        }
    }
    let path = dir.join(DB_FILE);
    let sq = |source| StoreError::Sqlite {
        path: path.clone(),
        source,
    };
    let mut conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
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
        _lock: lock,
    })
}

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
    let sq = |source| StoreError::Sqlite {
        path: path.clone(),
        source,
    };
    let conn =
        Connection::open_with_flags(&path, mode | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(sq)?;
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

    /// Commits `recs` in one transaction. On error (a full disk) nothing of
    /// the batch is kept and the store stays usable: the next batch tries
    /// again.
    pub fn insert(&mut self, recs: &[Record]) -> rusqlite::Result<()> {
        self.insert_at(recs, now_us())
    }

    /// [`insert`](Self::insert) with the clock given (tests move it).
    pub fn insert_at(&mut self, recs: &[Record], now_us: i64) -> rusqlite::Result<()> {
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
        tx.commit()
    }

    /// The incidents' periodic work: delayed updates and closing quiet
    /// incidents, in one short transaction.
    pub fn tick(&mut self, now_us: i64) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        incident::tick(&tx, &self.opts.incidents, now_us)?;
        tx.commit()
    }

    /// Writes one small row (the time of the probe in `meta`): whether the
    /// store takes a commit now, asked while no batch is coming (a node
    /// taken out of service for a failed commit gets no calls to prove
    /// it recovered).
    pub fn probe(&mut self, now_us: i64) -> rusqlite::Result<()> {
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

    /// The store's own random id, made when the file was created: the
    /// first half of every incident's idempotency key, so keys survive a
    /// renamed host and never repeat across stores.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// The highest verdict sequence this store holds for `node_prefix`
    /// (the 8 hex digits of a node), so a restarted node continues after
    /// it even if the clock went back.
    pub fn last_verdict_seq(&self, node_prefix: &str) -> rusqlite::Result<Option<u64>> {
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
    /// limit, oldest first, in one short transaction. Returns how many
    /// went; 0 means nothing is due. The recorder calls it between
    /// batches until it returns 0, so retention never holds a batch up for
    /// longer than one chunk.
    pub fn retire_chunk(&mut self, now_us: i64) -> rusqlite::Result<usize> {
        let chunk = self.opts.retire_chunk.max(1) as i64;
        // The chunk is chosen by age itself (never an id range: a clock
        // that jumped must not take younger records with it), or, over the
        // size limit, the oldest rows.
        let pick = if !self.opts.max_age.is_zero()
            && self
                .conn
                .prepare_cached("SELECT 1 FROM calls WHERE ts_us < ?1 LIMIT 1")?
                .exists(params![now_us - self.opts.max_age.as_micros() as i64])?
        {
            Some((
                "SELECT id FROM calls WHERE ts_us < ?1 ORDER BY ts_us LIMIT ?2",
                now_us - self.opts.max_age.as_micros() as i64,
            ))
        } else if self.opts.max_bytes > 0 && self.used_bytes()? > self.opts.max_bytes {
            Some(("SELECT id FROM calls WHERE ?1 = ?1 ORDER BY id LIMIT ?2", 0))
        } else {
            None
        };
        let Some((select, arg)) = pick else {
            return Ok(0);
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            &format!("DELETE FROM call_rules WHERE call IN ({select})"),
            params![arg, chunk],
        )?;
        let n = tx.execute(
            &format!("DELETE FROM calls WHERE id IN ({select})"),
            params![arg, chunk],
        )?;
        tx.commit()?;
        Ok(n)
    }

    /// Bytes the database's live pages take (free pages excluded: SQLite
    /// reuses them, so the file stops growing once retention runs).
    pub fn used_bytes(&self) -> rusqlite::Result<u64> {
        let page: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let count: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        Ok(((count - free).max(0) * page) as u64)
    }

    /// Records in the calls log.
    pub fn count(&self) -> rusqlite::Result<u64> {
        self.conn
            .query_row("SELECT count(*) FROM calls", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
    }
}

/// µs since the Unix epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests;
