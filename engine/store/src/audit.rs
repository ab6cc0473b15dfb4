//! The audit log: every investigator's query and export, who asked, in
//! which role, with which filter, when, how many rows it returned, and
//! whether it was allowed. Rows are only ever appended; no API deletes or
//! changes them, and retention of the calls log never touches them.
//! Refusals are aggregated by the control plane: one row per token,
//! action and outcome per second, with how many requests it stands for
//! (`count`), so a flood of refusals is counted whole without a row each.
//!
//! It lives in a file of its own beside the calls log, [`AUDIT_FILE`], so
//! that writing an entry never waits for the recorder's commits: SQLite
//! has one writer per file, and on a loaded node with a large store a
//! batch of calls can hold the calls log's write lock for seconds, while
//! an investigator's answer waits for its audit entry. Stores from before
//! the split kept the log in `kuzet.db`'s `audit` table; the first open
//! copies those rows over, ids and all, and the old table is left as it
//! was (nothing deletes audit rows).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::{StoreError, DB_FILE};

/// The audit log's file in the data directory.
pub const AUDIT_FILE: &str = "audit.db";

/// `KZAU`: marks the SQLite file as kuzet's audit log.
pub const AUDIT_APPLICATION_ID: i64 = 0x4b5a_4155;

/// Opens the data directory's audit log, creating it (and carrying over
/// the entries an older store kept in its calls log) on first use.
pub fn open(dir: &Path) -> Result<Connection, StoreError> {
    let path = dir.join(AUDIT_FILE);
    let sq = |e| crate::sqlite_error(&path, e);
    crate::private::check_file(&path).map_err(|reason| StoreError::Directory {
        path: dir.to_path_buf(),
        reason,
    })?;
    let (conn, version) =
        crate::schema::open_own(dir, AUDIT_FILE, AUDIT_APPLICATION_ID, AUDIT_VERSION)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sq)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sq)?;
    if version == 0 {
        create(&conn, dir).map_err(sq)?;
    }
    if version < AUDIT_VERSION {
        upgrade(&conn).map_err(sq)?;
    }
    Ok(conn)
}

/// The audit log's schema: 1, the table; 2, each row's `count`.
const AUDIT_VERSION: i64 = 2;

/// Brings an audit log of version 1 to 2 (a row's count: 1 for every
/// row written before), in one transaction; a second opener finds it
/// done.
fn upgrade(conn: &Connection) -> rusqlite::Result<()> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 2 {
        tx.execute_batch("ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1;")?;
        tx.pragma_update(None, "user_version", 2)?;
    }
    tx.commit()
}

/// Makes the table and copies an older store's entries, in one
/// transaction on the audit file alone (two first opens at once: the
/// second finds it done). The old entries are read through a connection
/// of their own, so the copy never takes the calls log's write lock.
fn create(conn: &Connection, dir: &Path) -> rusqlite::Result<()> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version != 0 {
        return tx.commit();
    }
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS audit (
            id      INTEGER PRIMARY KEY,
            ts_us   INTEGER NOT NULL,
            who     TEXT NOT NULL,
            role    TEXT NOT NULL,
            action  TEXT NOT NULL,
            filter  TEXT NOT NULL,
            rows    INTEGER NOT NULL,
            outcome TEXT NOT NULL
        );",
    )?;
    let store = dir.join(DB_FILE);
    if store.exists() {
        let old = Connection::open_with_flags(
            &store,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )?;
        old.busy_timeout(Duration::from_secs(5))?;
        let has: i64 = old.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'audit'",
            [],
            |r| r.get(0),
        )?;
        if has > 0 {
            let mut read = old.prepare(
                "SELECT id, ts_us, who, role, action, filter, rows, outcome FROM audit ORDER BY id",
            )?;
            let mut put = tx.prepare(
                "INSERT OR IGNORE INTO audit (id, ts_us, who, role, action, filter, rows, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut rows = read.query([])?;
            while let Some(r) = rows.next()? {
                put.execute(params![
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, String>(7)?
                ])?;
            }
        }
    }
    tx.pragma_update(None, "application_id", AUDIT_APPLICATION_ID)?;
    tx.pragma_update(None, "user_version", 1)?;
    tx.commit()
}

/// One audited request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its row id.
    pub id: i64,
    /// When, µs since the epoch.
    pub ts_us: i64,
    /// The token's name (`-` when no token was valid).
    pub who: String,
    /// Its role.
    pub role: String,
    /// The RPC, e.g. `QueryCalls`.
    pub action: String,
    /// The request's filter, as JSON.
    pub filter: String,
    /// Rows returned.
    pub rows: u64,
    /// `ok`, `denied`, `unauthenticated` or an error.
    pub outcome: String,
    /// Requests the entry stands for (refusals are counted per second).
    pub count: u64,
}

/// Appends `e` (its `id` is ignored); returns the new entry's id.
pub fn append(conn: &Connection, e: &Entry) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "INSERT INTO audit (ts_us, who, role, action, filter, rows, outcome, count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .insert(params![
        e.ts_us,
        e.who,
        e.role,
        e.action,
        e.filter,
        e.rows as i64,
        e.outcome,
        e.count.max(1) as i64
    ])
}

/// The newest entries, before the cursor `before` (a row id).
pub fn read(conn: &Connection, before: Option<i64>, limit: usize) -> rusqlite::Result<Vec<Entry>> {
    let mut st = conn.prepare_cached(
        "SELECT id, ts_us, who, role, action, filter, rows, outcome, count FROM audit
         WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = st.query_map(
        params![before.unwrap_or(i64::MAX), limit.clamp(1, 1000) as i64],
        |r| {
            Ok(Entry {
                id: r.get(0)?,
                ts_us: r.get(1)?,
                who: r.get(2)?,
                role: r.get(3)?,
                action: r.get(4)?,
                filter: r.get(5)?,
                rows: r.get::<_, i64>(6)? as u64,
                outcome: r.get(7)?,
                count: r.get::<_, i64>(8)?.max(1) as u64,
            })
        },
    )?;
    rows.collect()
}
