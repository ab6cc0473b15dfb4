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

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

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
    // per alert id) and the reports' outbox (one per idempotency key; the
    // pending ones indexed by when they are due).
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
    CREATE INDEX reports_pending ON reports (next_at_us, id) WHERE state = 'pending';
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
    // Made 0600 before SQLite sees it: SQLite gives the WAL and the
    // shared-memory file the database file's mode.
    private::precreate(&path).map_err(|e| dir_err(format!("cannot create {CENTRE_FILE}: {e}")))?;
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(sq)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(sq)?;
    let version = schema::check_file(&conn, &path, CENTRE_APPLICATION_ID, CENTRE_VERSION)?;
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
/// cache of 32 MiB for the feed's two indexes while a batch applies, and
/// the WAL cut back to 64 MiB after a checkpoint (a million-entry batch
/// writes several times that).
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn the_centre_file_is_made_private_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()).unwrap());
        let path = dir.path().join(CENTRE_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let c = open(dir.path()).unwrap();
        c.pragma_update(None, "user_version", CENTRE_VERSION + 1)
            .unwrap();
        drop(c);
        let e = open(dir.path()).unwrap_err();
        assert!(
            matches!(e, StoreError::NewerSchema { found, .. } if found == CENTRE_VERSION + 1),
            "{e}"
        );
        assert!(e.to_string().contains("centre.db"), "{e}");
    }
}
