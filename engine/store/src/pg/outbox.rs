//! The reporter's port on PostgreSQL ([`PgOutbox`], an [`Outbox`]): the
//! register outbox of the shared store, with SQLite's semantics
//! ([`crate::incident`]): `due` gives at most one entry per incident, the
//! lowest sequence still pending; `claim` counts the try and returns the
//! payload as it then stands, in one statement, after which the writer
//! never rewrites it; `dead_letter` takes the incident's later entries
//! with it.
//!
//! **Fenced.** With several nodes, one leader at a time drives the
//! outbox under a lease; its writes (`claim`, `delivered`, `retry`,
//! `dead_letter`) then carry the lease's [`Fence`] and check it first in
//! their transaction ([`fence_check`]), so a leader that lost its lease
//! while paused writes nothing ([`StoreError::Fenced`]). Without a fence
//! (one node), they are unfenced. Each write locks the incident's row
//! before its outbox entries, the order the writer locks them in.

use std::sync::Arc;

use crate::outbox::{self, Due, Payload};
use crate::ports::{Backlog, Outbox};
use crate::StoreError;

use super::{fence_check, incidents, pg_error, Fence, PgConn};

/// The register outbox of the shared store.
pub struct PgOutbox {
    conn: PgConn,
    fence: Option<Arc<Fence>>,
}

impl PgOutbox {
    /// The outbox of the store at `url`; `fence`, the lease its writes
    /// must hold (`None`: one node, unfenced).
    pub fn new(url: &str, fence: Option<Arc<Fence>>) -> PgOutbox {
        PgOutbox {
            conn: PgConn::new(url),
            fence,
        }
    }

    /// Runs `f` in one transaction, after the fence's check when there
    /// is a fence.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let at = self.conn.at();
        self.conn.with_store(|c| {
            let mut tx = c.transaction().map_err(|e| pg_error(at, e))?;
            if let Some(fence) = &self.fence {
                fence_check(&mut tx, at, fence)?;
            }
            let v = f(&mut tx).map_err(|e| pg_error(at, e))?;
            tx.commit().map_err(|e| pg_error(at, e))?;
            Ok(v)
        })
    }
}

impl Outbox for PgOutbox {
    fn due(&self, now_us: i64, limit: usize) -> Result<Vec<Due>, StoreError> {
        self.conn.with(|c| incidents::due(c, now_us, limit))
    }

    fn claim(&self, id: i64) -> Result<Result<Payload, String>, StoreError> {
        let payload = self.write(|tx| {
            tx.query_opt(
                "UPDATE outbox SET attempts = attempts + 1 WHERE id = $1 RETURNING payload",
                &[&id],
            )
            .map(|r| r.map(|r| r.get::<_, String>(0)))
        })?;
        match payload {
            Some(p) => Ok(outbox::decode(&p)),
            None => Err(StoreError::internal(
                self.conn.at(),
                format!("no outbox entry {id}"),
            )),
        }
    }

    fn delivered(&self, d: &Due, case: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE incidents SET register_state = 'delivered', register_case = $2,
                 register_error = '',
                 state = CASE WHEN state = 'closed' THEN state
                              WHEN $3 = 'submit' THEN 'reported' ELSE 'updated' END
                 WHERE id = $1",
                &[&d.incident, &case, &d.kind],
            )?;
            tx.execute(
                "UPDATE outbox SET state = 'done', last_error = '' WHERE id = $1",
                &[&d.id],
            )?;
            Ok(())
        })
    }

    fn retry(&self, d: &Due, next_at_us: i64, error: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE incidents SET register_error = $2 WHERE id = $1",
                &[&d.incident, &error],
            )?;
            tx.execute(
                "UPDATE outbox SET next_at_us = $2, last_error = $3 WHERE id = $1",
                &[&d.id, &next_at_us, &error],
            )?;
            Ok(())
        })
    }

    fn dead_letter(&self, d: &Due, error: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE incidents SET register_state = 'dead_letter', register_error = $2
                 WHERE id = $1",
                &[&d.incident, &error],
            )?;
            tx.execute(
                "UPDATE outbox SET state = 'dead', last_error = $3
                 WHERE incident = $1 AND seq >= $2 AND state = 'pending'",
                &[&d.incident, &d.seq, &error],
            )?;
            Ok(())
        })
    }

    fn backlog(&self) -> Result<Backlog, StoreError> {
        self.conn.with(|c| {
            let r = c.query_one(
                "SELECT (SELECT count(*) FROM outbox WHERE state = 'pending'),
                        (SELECT count(*) FROM incidents WHERE register_state = 'dead_letter')",
                &[],
            )?;
            Ok(Backlog {
                pending: r.get::<_, i64>(0).max(0) as u64,
                dead_letters: r.get::<_, i64>(1).max(0) as u64,
            })
        })
    }
}
