//! The audit log: every investigator's query and export, who asked, in
//! which role, with which filter, when, how many rows it returned, and
//! whether it was allowed. Rows are only ever appended; no API deletes or
//! changes them, and retention of the calls log never touches them.

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

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
}

/// Appends `e` (its `id` is ignored); returns the new entry's id.
pub fn append(conn: &Connection, e: &Entry) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "INSERT INTO audit (ts_us, who, role, action, filter, rows, outcome)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .insert(params![
        e.ts_us,
        e.who,
        e.role,
        e.action,
        e.filter,
        e.rows as i64,
        e.outcome
    ])
}

/// The newest entries, before the cursor `before` (a row id).
pub fn read(conn: &Connection, before: Option<i64>, limit: usize) -> rusqlite::Result<Vec<Entry>> {
    let mut st = conn.prepare_cached(
        "SELECT id, ts_us, who, role, action, filter, rows, outcome FROM audit
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
            })
        },
    )?;
    rows.collect()
}
