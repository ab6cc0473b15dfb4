//! The store's schema and its migrations, embedded in the binary.
//!
//! `PRAGMA application_id` marks the file as kuzet's and `PRAGMA
//! user_version` holds its schema version. Opening a store applies every
//! migration it lacks, all in one transaction (a crash midway leaves the
//! old version intact). A file of another application, or of a newer
//! schema, is refused and left untouched.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::StoreError;

/// `KZET`: marks the SQLite file as a kuzet store.
pub const APPLICATION_ID: i64 = 0x4b5a_4554;

/// Each migration takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the intercepted-call log, the rules that fired per call (for
    // queries by rule), and the audit log of investigators' queries.
    "
    CREATE TABLE calls (
        id              INTEGER PRIMARY KEY,
        verdict_id      TEXT NOT NULL,
        ts_us           INTEGER NOT NULL,
        node            TEXT NOT NULL,
        call_id         TEXT NOT NULL,
        ruri            TEXT NOT NULL,
        from_hdr        TEXT NOT NULL,
        pai_hdr         TEXT NOT NULL,
        a               TEXT,
        b               TEXT,
        from_num        TEXT,
        pai_num         TEXT,
        trunk           TEXT,
        trunk_kind      TEXT,
        source          TEXT NOT NULL,
        transport       TEXT NOT NULL,
        decision        TEXT NOT NULL,
        shadow_decision TEXT NOT NULL,
        code            INTEGER NOT NULL,
        score           INTEGER NOT NULL,
        sampled         INTEGER NOT NULL,
        explanation     TEXT NOT NULL,
        rules           TEXT NOT NULL,
        list_hit        TEXT,
        lists_version   TEXT NOT NULL,
        headers         BLOB NOT NULL,
        incident        INTEGER
    );
    CREATE UNIQUE INDEX calls_verdict ON calls (verdict_id);
    CREATE INDEX calls_a ON calls (a, id);
    CREATE INDEX calls_b ON calls (b, id);
    CREATE INDEX calls_ts ON calls (ts_us);
    CREATE INDEX calls_incident ON calls (incident) WHERE incident IS NOT NULL;
    CREATE TABLE call_rules (
        call   INTEGER NOT NULL,
        rule   TEXT NOT NULL,
        shadow INTEGER NOT NULL,
        PRIMARY KEY (call, rule)
    ) WITHOUT ROWID;
    CREATE INDEX call_rules_rule ON call_rules (rule, call);
    CREATE TABLE audit (
        id      INTEGER PRIMARY KEY,
        ts_us   INTEGER NOT NULL,
        who     TEXT NOT NULL,
        role    TEXT NOT NULL,
        action  TEXT NOT NULL,
        filter  TEXT NOT NULL,
        rows    INTEGER NOT NULL,
        outcome TEXT NOT NULL
    );
    ",
    // 2: incidents (calls grouped per source and per campaign) and the
    // outbox of reports to the pre-trial register.
    "
    CREATE TABLE incidents (
        id             INTEGER PRIMARY KEY,
        kind           TEXT NOT NULL,
        key            TEXT NOT NULL,
        state          TEXT NOT NULL,
        first_seen_us  INTEGER NOT NULL,
        last_seen_us   INTEGER NOT NULL,
        blocked        INTEGER NOT NULL,
        flagged        INTEGER NOT NULL,
        other          INTEGER NOT NULL,
        evidence       TEXT NOT NULL,
        reportable     INTEGER NOT NULL,
        dirty          INTEGER NOT NULL,
        register_state TEXT NOT NULL,
        register_case  TEXT NOT NULL,
        register_error TEXT NOT NULL
    );
    CREATE INDEX incidents_key ON incidents (kind, key, id);
    CREATE INDEX incidents_dirty ON incidents (dirty) WHERE dirty = 1;
    CREATE TABLE outbox (
        id          INTEGER PRIMARY KEY,
        incident    INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        payload     TEXT NOT NULL,
        created_us  INTEGER NOT NULL,
        attempts    INTEGER NOT NULL,
        next_at_us  INTEGER NOT NULL,
        state       TEXT NOT NULL,
        last_error  TEXT NOT NULL,
        UNIQUE (incident, seq)
    );
    CREATE INDEX outbox_due ON outbox (state, next_at_us) WHERE state = 'pending';
    ",
    // 3: the store's own facts, e.g. its random id (incident keys).
    "
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    ",
    // 4: a source incident is found through its caller's latest call
    // (`calls_a`), so the incidents need no index of their own on every
    // A-number (a third index written at random per recorded call); only
    // campaigns keep one. The open incidents are indexed by their last
    // call, so closing the quiet ones reads only those due.
    "
    DROP INDEX incidents_key;
    CREATE INDEX incidents_campaign ON incidents (key, id) WHERE kind = 'campaign';
    CREATE INDEX incidents_open ON incidents (last_seen_us) WHERE state != 'closed';
    ",
    // 5: who a record accuses. Each call says how far the network vouches
    // for its A-number and what it makes of its caller (source, claimed,
    // impersonated, potential victim); incidents may be keyed by a trunk
    // or an address (spoofs, unattributable callers) or by a listed
    // destination, found through their own index like campaigns. Calls an
    // incident names by verdict id (its samples) are pinned: retention
    // keeps them, like the calls linked to it, while it is not closed. The
    // low-value calls (allows and flags) have an index of their own, so
    // retention by size finds the oldest of them without reading past
    // evidence it must keep.
    "
    ALTER TABLE calls ADD COLUMN a_trust TEXT NOT NULL DEFAULT '';
    ALTER TABLE calls ADD COLUMN caller_role TEXT NOT NULL DEFAULT '';
    DROP INDEX incidents_campaign;
    CREATE INDEX incidents_keyed ON incidents (kind, key, id)
        WHERE kind IN ('campaign', 'trunk', 'address');
    CREATE TABLE pinned (
        verdict_id TEXT NOT NULL,
        incident   INTEGER NOT NULL,
        PRIMARY KEY (verdict_id, incident)
    ) WITHOUT ROWID;
    CREATE INDEX pinned_incident ON pinned (incident);
    INSERT OR IGNORE INTO pinned (verdict_id, incident)
        SELECT j.value, i.id FROM incidents i, json_each(i.evidence, '$.samples') j
        WHERE i.state != 'closed';
    CREATE INDEX calls_low ON calls (id) WHERE decision IN ('allow', 'flag');
    ",
];

/// The schema version this build writes.
pub fn current() -> i64 {
    MIGRATIONS.len() as i64
}

fn versions(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    let app: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    Ok((app, version, tables))
}

/// Refuses, before anything is written, a file that is not kuzet's or
/// was written by a newer kuzet.
pub fn check_writable(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    check_file(conn, path, APPLICATION_ID, current()).map(|_| ())
}

/// Refuses a file that is neither marked `app_id` nor empty, or whose
/// schema is newer than `known`; returns its schema version. Shared by
/// the calls log and the audit log, each with its own mark.
pub(crate) fn check_file(
    conn: &Connection,
    path: &Path,
    app_id: i64,
    known: i64,
) -> Result<i64, StoreError> {
    let (app, version, tables) = versions(conn).map_err(|e| crate::sqlite_error(path, e))?;
    if app != app_id && !(app == 0 && tables == 0) {
        return Err(StoreError::Foreign(path.into()));
    }
    if version > known {
        return Err(StoreError::NewerSchema {
            path: path.into(),
            found: version,
            known,
        });
    }
    Ok(version)
}

/// Opens a file of the store's own beside the calls log (`file` in
/// `dir`: the audit log, the Centre's file), read-write: made 0600 before
/// SQLite sees it (SQLite gives the WAL and the shared-memory file the
/// database file's mode), never through a link, with a busy timeout, and
/// checked by [`check_file`] before anything in it is written. The caller
/// checks the file (and its companions) with [`crate::private::check_file`]
/// first. Returns the connection and the file's schema version.
pub(crate) fn open_own(
    dir: &Path,
    file: &str,
    app_id: i64,
    known: i64,
) -> Result<(Connection, i64), StoreError> {
    let path = dir.join(file);
    let sq = |e| crate::sqlite_error(&path, e);
    crate::private::precreate(&path).map_err(|e| StoreError::Directory {
        path: dir.to_path_buf(),
        reason: format!("cannot create {file}: {e}"),
    })?;
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(sq)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sq)?;
    let version = check_file(&conn, &path, app_id, known)?;
    Ok((conn, version))
}

/// The store's random id, made on first use (16 bytes from the OS, hex).
pub fn store_id(conn: &Connection) -> rusqlite::Result<String> {
    if let Ok(id) = conn.query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
        r.get::<_, String>(0)
    }) {
        return Ok(id);
    }
    let mut raw = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut raw);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let id = format!("{:016x}", u64::from_le_bytes(raw) ^ nanos.rotate_left(17));
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?1)",
        [&id],
    )?;
    conn.query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
        r.get(0)
    })
}

/// The store's secret for public verdict ids: 16 random bytes from the
/// OS, made on first use and kept in `meta` (the file is 0600).
pub fn verdict_key(conn: &Connection) -> rusqlite::Result<[u8; 16]> {
    let parse = |hex: &str| -> Option<[u8; 16]> {
        let mut k = [0u8; 16];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(k)
    };
    if let Ok(v) = conn.query_row(
        "SELECT value FROM meta WHERE key = 'verdict_key'",
        [],
        |r| r.get::<_, String>(0),
    ) {
        if let Some(k) = parse(&v) {
            return Ok(k);
        }
    }
    let mut raw = [0u8; 16];
    let mut f = std::fs::File::open("/dev/urandom")
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    std::io::Read::read_exact(&mut f, &mut raw)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('verdict_key', ?1)",
        [&hex],
    )?;
    Ok(raw)
}

/// Brings the schema up to [`current`], or refuses the file.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let sq = |e| crate::sqlite_error(path, e);
    check_writable(conn, path)?;
    let (_, version, _) = versions(conn).map_err(sq)?;
    if version == current() {
        return Ok(());
    }
    let tx = conn.transaction().map_err(sq)?;
    for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(m).map_err(sq)?;
        tracing::info!(path = %path.display(), version = i + 1, "store schema migrated");
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(sq)?;
    tx.pragma_update(None, "user_version", current())
        .map_err(sq)?;
    tx.commit().map_err(sq)
}

/// A reader's check: the file is kuzet's and of a version it can read.
pub fn check_readable(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let (app, version, _) = versions(conn).map_err(|e| crate::sqlite_error(path, e))?;
    if app != APPLICATION_ID {
        return Err(StoreError::Foreign(path.into()));
    }
    if version > current() {
        return Err(StoreError::NewerSchema {
            path: path.into(),
            found: version,
            known: current(),
        });
    }
    Ok(())
}
