//! The access gate's port on PostgreSQL ([`PgAudit`], an [`AuditLog`]):
//! one append-only log for every node, its entries in the order the
//! server numbered them. A batch is appended in one transaction, all or
//! none; nothing updates or deletes a row (retention never touches it).

use crate::audit::Entry;
use crate::ports::AuditLog;
use crate::StoreError;

use super::PgConn;

/// The audit log of the shared store.
pub struct PgAudit {
    conn: PgConn,
}

impl PgAudit {
    /// The audit log of the store at `url`.
    pub fn new(url: &str) -> PgAudit {
        PgAudit {
            conn: PgConn::new(url),
        }
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl AuditLog for PgAudit {
    fn append(&self, entries: &[Entry]) -> Result<(), StoreError> {
        self.conn.with(|c| {
            let mut tx = c.transaction()?;
            for e in entries {
                tx.execute(
                    "INSERT INTO audit (ts_us, who, role, action, filter, rows, outcome, count)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &e.ts_us,
                        &e.who,
                        &e.role,
                        &e.action,
                        &e.filter,
                        &clamp(e.rows),
                        &e.outcome,
                        &clamp(e.count.max(1)),
                    ],
                )?;
            }
            tx.commit()
        })
    }

    fn read(&self, before: Option<i64>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let limit = limit.clamp(1, 1000) as i64;
        self.conn.with(|c| {
            c.query(
                "SELECT id, ts_us, who, role, action, filter, rows, outcome, count FROM audit
                 WHERE id < $1 ORDER BY id DESC LIMIT $2",
                &[&before.unwrap_or(i64::MAX), &limit],
            )?
            .iter()
            .map(|r| {
                Ok(Entry {
                    id: r.try_get(0)?,
                    ts_us: r.try_get(1)?,
                    who: r.try_get(2)?,
                    role: r.try_get(3)?,
                    action: r.try_get(4)?,
                    filter: r.try_get(5)?,
                    rows: r.try_get::<_, i64>(6)?.max(0) as u64,
                    outcome: r.try_get(7)?,
                    count: r.try_get::<_, i64>(8)?.max(1) as u64,
                })
            })
            .collect()
        })
    }
}
