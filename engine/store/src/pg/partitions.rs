//! The call log's partitions: one per UTC day (or month), each a range of
//! `ts_us`, and a default partition as the catch-all.
//!
//! **Made ahead of need.** The writer makes today's and tomorrow's
//! partitions when it opens and checks once a minute (from `tick`), so
//! the lock a new partition takes on the parent table is taken well
//! before the first call that needs it. A record whose time has no
//! partition (a replay of old records, a clock far off) gets one made on
//! demand before its batch, when its time is within the retention age and
//! at most two days ahead; otherwise, or when making one fails (a lock not
//! granted within [`LOCK_TIMEOUT`]), it goes to the default partition: an
//! insert never fails for want of a partition. A partition is made as a
//! table of its own, the default partition's rows of its range moved into
//! it, and then attached, all in one transaction under an advisory lock
//! (nodes making the same partition at once make it once). A range that
//! meets a partition made earlier with other bounds (the setting changed
//! from daily to monthly) is clipped to the gap around the record.
//!
//! **Retention drops whole partitions** older than the retention age, one
//! per turn. A partition is *exempt* while an incident that is not closed
//! has calls in its range: every call an incident names, linked or as a
//! sample, lies between the incident's first and last call, so a
//! partition whose range meets `[first_seen_us, last_seen_us]` of an
//! incident not closed is kept, whole, until that incident closes (an
//! incident closes after its quiet gap, or after its longest life at the
//! latest, so the exemption always ends). Records in a partition that is
//! partly older than the age wait for the whole partition: at most one
//! day (or month) past the age. The default partition's old rows are
//! deleted a chunk at a time, with the same exemption.
//!
//! **By size** (`max_bytes`), the oldest partition that is not exempt and
//! lies wholly before the newest partition holding calls (never that one,
//! nor those made ahead of need) is dropped, whatever it holds: on
//! PostgreSQL the
//! space of deleted rows is reused but never given back, so only a drop
//! frees it. Unlike SQLite's retention by size, this takes the blocks and
//! redirects of the dropped day too (their verdict ids were given to
//! callers); with nothing droppable left, the store says it is over its
//! limit.

use std::collections::BTreeSet;

use postgres::GenericClient;

use crate::days::{civil_from_days, days_from_civil};
use crate::StoreError;

/// How long making or dropping a partition waits for its lock on the
/// parent table (an investigator's long export holds a lock that conflicts)
/// before it gives up and tries again later.
pub const LOCK_TIMEOUT: &str = "2s";

/// The advisory lock taken while a partition is made or dropped (one for
/// every node).
const PARTITION_LOCK: i64 = 7_466_104_102;

/// µs in a day.
const DAY_US: i64 = 86_400_000_000;

/// How the call log is partitioned (`[store] partition`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partitioning {
    /// One partition per UTC day.
    #[default]
    Daily,
    /// One partition per UTC month.
    Monthly,
}

impl Partitioning {
    /// The range `[lo, hi)` (µs) of the partition that holds `ts_us`.
    pub fn range(self, ts_us: i64) -> (i64, i64) {
        let day = ts_us.div_euclid(DAY_US);
        match self {
            Partitioning::Daily => (day * DAY_US, (day + 1) * DAY_US),
            Partitioning::Monthly => {
                let (y, m, _) = civil_from_days(day);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    days_from_civil(y, m, 1) * DAY_US,
                    days_from_civil(ny, nm, 1) * DAY_US,
                )
            }
        }
    }
}

/// A partition's name: `calls_YYYYMMDD` for one starting at midnight,
/// `calls_YYYYMMDD_HHMMSS` otherwise (a clipped range).
pub fn name_of(lo_us: i64) -> String {
    let day = lo_us.div_euclid(DAY_US);
    let (y, m, d) = civil_from_days(day);
    let secs = lo_us.rem_euclid(DAY_US) / 1_000_000;
    let y = y.clamp(0, 9999);
    if secs == 0 {
        format!("calls_{y:04}{m:02}{d:02}")
    } else {
        format!(
            "calls_{y:04}{m:02}{d:02}_{:02}{:02}{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

/// The partitions as the registry lists them: `(lo, hi, name)`, by `lo`.
pub type Known = BTreeSet<(i64, i64, String)>;

/// Reads the registry of partitions.
pub fn known(c: &mut impl GenericClient) -> Result<Known, postgres::Error> {
    Ok(
        c.query("SELECT lo_us, hi_us, name FROM call_partitions", &[])?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
    )
}

/// Whether a known partition holds `ts_us`.
pub fn covered(known: &Known, ts_us: i64) -> bool {
    known
        .range(..=(ts_us, i64::MAX, String::new()))
        .next_back()
        .is_some_and(|(lo, hi, _)| *lo <= ts_us && ts_us < *hi)
}

/// Makes the partition for `ts_us` (its range clipped to the gap between
/// the partitions around it), unless one holds it already: a transaction
/// of its own, under the partition lock, waiting at most
/// [`LOCK_TIMEOUT`] for the parent table. Returns whether a partition
/// now holds it.
pub fn make(
    client: &mut postgres::Client,
    how: Partitioning,
    ts_us: i64,
) -> Result<bool, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])?;
    let known = known(&mut tx)?;
    if covered(&known, ts_us) {
        return Ok(true);
    }
    let (mut lo, mut hi) = how.range(ts_us);
    for (plo, phi, _) in &known {
        if *phi <= ts_us {
            lo = lo.max(*phi);
        }
        if *plo > ts_us {
            hi = hi.min(*plo);
        }
    }
    let name = name_of(lo);
    if known.iter().any(|(_, _, n)| *n == name) {
        // A name taken by another range (a clipped range's start in the
        // same second): the record stays in the default partition.
        return Ok(false);
    }
    // Made apart and attached: attaching takes a lighter lock on the
    // parent than creating a partition in place, and the default
    // partition's rows of the range are moved in first (attaching fails
    // while the default partition holds any).
    tx.batch_execute(&format!(
        "CREATE TABLE {name} (LIKE calls INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
         ALTER TABLE {name} ADD CONSTRAINT {name}_range
             CHECK (ts_us >= {lo} AND ts_us < {hi});
         WITH moved AS (DELETE FROM calls_default WHERE ts_us >= {lo} AND ts_us < {hi}
             RETURNING *)
         INSERT INTO {name} SELECT * FROM moved;
         ALTER TABLE calls ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi});
         ALTER TABLE {name} DROP CONSTRAINT {name}_range;"
    ))?;
    tx.execute(
        "INSERT INTO call_partitions (name, lo_us, hi_us) VALUES ($1, $2, $3)",
        &[&name, &lo, &hi],
    )?;
    tx.commit()?;
    tracing::info!(partition = %name, lo_us = lo, hi_us = hi, "calls partition made");
    Ok(true)
}

/// Makes the partitions `times` need, each unless one holds it already;
/// a failure leaves that time to the default partition (logged once per
/// call), never fails the caller. Returns the registry as it now stands.
pub fn ensure(
    client: &mut postgres::Client,
    at: &str,
    how: Partitioning,
    times: impl IntoIterator<Item = i64>,
) -> Result<Known, StoreError> {
    let pg = |e| super::pg_error(at, e);
    let mut k = known(client).map_err(pg)?;
    let mut failed = None;
    for t in times {
        if covered(&k, t) {
            continue;
        }
        match make(client, how, t) {
            Ok(_) => k = known(client).map_err(pg)?,
            Err(e) => {
                let e = pg(e);
                // A lost connection is the caller's error, as any other.
                if e.is_transient() && client.is_closed() {
                    return Err(e);
                }
                failed = Some(e);
            }
        }
    }
    if let Some(e) = failed {
        tracing::warn!(server = at, error = %e, "a calls partition could not be made; its records go to the default partition until it is");
    }
    Ok(k)
}

/// Analyzes each calls partition that changed by more than a tenth (and
/// at least 1,000 rows) since it was last analyzed, or never was: a new
/// day's partition the server has no statistics for gets a bad plan for
/// a search by number (the primary key walked backwards through every
/// row: 0.5-1.6 s over a million calls, 0.04 ms once analyzed), and
/// autovacuum may be minutes away on a busy server. Returns the
/// partitions analyzed. Called by the writer with its minute's upkeep.
pub fn analyze_changed(client: &mut postgres::Client) -> Result<Vec<String>, postgres::Error> {
    let names: Vec<String> = client
        .query(
            "SELECT s.relname FROM pg_stat_user_tables s
             JOIN pg_inherits i ON i.inhrelid = s.relid
             WHERE i.inhparent = 'calls'::regclass
               AND s.n_mod_since_analyze > GREATEST(1000, s.n_live_tup / 10)
             ORDER BY s.relname",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for n in &names {
        // The name comes from the catalogue, and is quoted as an
        // identifier all the same.
        client.batch_execute(&format!("ANALYZE \"{}\"", n.replace('"', "\"\"")))?;
        tracing::debug!(partition = %n, "calls partition analyzed");
    }
    Ok(names)
}

/// Rows a partition holds, as the statistics have it (exactly, when it
/// was never analyzed): said in the retired count, never worth a scan of
/// a day's calls.
fn rows_of(tx: &mut impl GenericClient, name: &str) -> Result<u64, postgres::Error> {
    let est: f32 = tx
        .query_opt(
            "SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)",
            &[&name],
        )?
        .map_or(0.0, |r| r.get(0));
    if est >= 0.0 {
        return Ok(est as u64);
    }
    let n: i64 = tx
        .query_one(&format!("SELECT count(*) FROM {name}"), &[])?
        .get(0);
    Ok(n as u64)
}

/// Drops the oldest partition that ends at or before `before_us` and is
/// not exempt: one transaction under
/// the partition lock. Returns the rows it held, or `None` when none may
/// go (or its lock was not granted within [`LOCK_TIMEOUT`]: tried again
/// on the next turn).
pub fn drop_oldest(
    client: &mut postgres::Client,
    before_us: i64,
) -> Result<Option<u64>, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])?;
    let Some(name) = pick(&mut tx, before_us)? else {
        return Ok(None);
    };
    let n = rows_of(&mut tx, &name)?;
    match tx.batch_execute(&format!("DROP TABLE {name}")) {
        Ok(()) => {}
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    }
    tx.execute("DELETE FROM call_partitions WHERE name = $1", &[&name])?;
    tx.commit()?;
    tracing::info!(partition = %name, rows = n, "calls partition retired");
    Ok(Some(n))
}

/// The oldest partition [`drop_oldest`] may take.
fn pick(tx: &mut impl GenericClient, before_us: i64) -> Result<Option<String>, postgres::Error> {
    Ok(tx
        .query_opt(
            "SELECT name FROM call_partitions p WHERE p.hi_us <= $1
             AND NOT EXISTS (SELECT 1 FROM incidents i WHERE i.state <> 'closed'
                 AND i.first_seen_us < p.hi_us AND i.last_seen_us >= p.lo_us)
             ORDER BY p.lo_us LIMIT 1",
            &[&before_us],
        )?
        .map(|r| r.get(0)))
}

/// Deletes up to `chunk` rows of the default partition older than
/// `cutoff_us` outside every incident not closed; returns how many.
pub fn trim_default(
    client: &mut postgres::Client,
    cutoff_us: i64,
    chunk: i64,
) -> Result<u64, postgres::Error> {
    client.execute(
        "DELETE FROM calls_default WHERE ctid IN (SELECT d.ctid FROM calls_default d
         WHERE d.ts_us < $1 AND NOT EXISTS (SELECT 1 FROM incidents i
             WHERE i.state <> 'closed' AND i.first_seen_us <= d.ts_us
             AND i.last_seen_us >= d.ts_us)
         ORDER BY d.ts_us LIMIT $2)",
        &[&cutoff_us, &chunk],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_utc_days_and_months() {
        // 2024-02-29 12:00 UTC.
        let t = days_from_civil(2024, 2, 29) * DAY_US + 12 * 3_600_000_000;
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        let (lo, hi) = Partitioning::Daily.range(t);
        assert_eq!(
            (name_of(lo), hi - lo),
            ("calls_20240229".to_string(), DAY_US)
        );
        let (lo, hi) = Partitioning::Monthly.range(t);
        assert_eq!(name_of(lo), "calls_20240201");
        assert_eq!(name_of(hi), "calls_20240301");
        let (lo, hi) = Partitioning::Monthly.range(days_from_civil(2023, 12, 31) * DAY_US);
        assert_eq!(
            (name_of(lo), name_of(hi)),
            ("calls_20231201".into(), "calls_20240101".into())
        );
        assert_eq!(name_of(lo + 3_723_000_000), "calls_20231201_010203");
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        // Before the epoch too.
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let mut k = Known::new();
        k.insert((DAY_US, 2 * DAY_US, "x".into()));
        assert!(covered(&k, DAY_US) && covered(&k, 2 * DAY_US - 1));
        assert!(!covered(&k, 2 * DAY_US) && !covered(&k, DAY_US - 1));
    }
}
