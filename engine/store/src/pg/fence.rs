//! Fencing tokens: what makes a lease safe against a leader that was
//! paused or cut off while another took over.
//!
//! A node that wins a singleton's lease (the feed puller, an outbox's
//! driver, the case clock) gets a token higher than every earlier
//! holder's, from Redis. It sets it on the singleton's [`Fence`], and
//! every write the singleton makes to the shared store checks it first,
//! in the same transaction ([`fence_check`]): the store keeps the highest
//! token that ever wrote under the lease and refuses a lower one
//! ([`StoreError::Fenced`]). A new leader writes its token as soon as it
//! wins ([`fence_claim`]), so from that moment an old leader waking from a
//! pause can write nothing, whatever it still believes.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::StoreError;

use super::{pg_error, PgConn};

/// The fencing table's migrations (component `fences`).
pub const MIGRATIONS: &[&str] = &["CREATE TABLE kuzet_fences (
    name text PRIMARY KEY,
    token bigint NOT NULL CHECK (token > 0)
)"];

/// One singleton's fencing token on this node: 0 while the node does not
/// hold the lease. Shared by the lease's keeper, which sets it, and the
/// store port writing for the singleton, which checks it.
#[derive(Debug)]
pub struct Fence {
    name: &'static str,
    token: AtomicU64,
}

impl Fence {
    /// The fence of the lease `name`, not held.
    pub const fn new(name: &'static str) -> Fence {
        Fence {
            name,
            token: AtomicU64::new(0),
        }
    }

    /// The lease's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// This node now holds the lease with `token` (> 0).
    pub fn hold(&self, token: u64) {
        self.token.store(token, Ordering::Release);
    }

    /// This node no longer holds the lease.
    pub fn release(&self) {
        self.token.store(0, Ordering::Release);
    }

    /// The token held, if any.
    pub fn token(&self) -> Option<u64> {
        match self.token.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }
}

/// Checks `fence` inside the transaction `tx`, before a singleton's
/// write: refused if this node does not hold the lease, or if the store
/// has seen a higher token for it; otherwise the token is recorded as the
/// highest seen, and its row stays locked until `tx` ends, so two
/// leaders' writes never interleave.
pub fn fence_check(
    tx: &mut impl postgres::GenericClient,
    at: &str,
    fence: &Fence,
) -> Result<(), StoreError> {
    let Some(token) = fence.token() else {
        return Err(StoreError::Fenced {
            at: at.to_string(),
            name: fence.name.to_string(),
            token: 0,
            seen: 0,
        });
    };
    let mine = i64::try_from(token).unwrap_or(i64::MAX);
    let row = tx
        .query_opt(
            "INSERT INTO kuzet_fences (name, token) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET token = EXCLUDED.token
             WHERE kuzet_fences.token <= EXCLUDED.token
             RETURNING token",
            &[&fence.name, &mine],
        )
        .map_err(|e| pg_error(at, e))?;
    if row.is_some() {
        return Ok(());
    }
    let seen: i64 = tx
        .query_one(
            "SELECT token FROM kuzet_fences WHERE name = $1",
            &[&fence.name],
        )
        .map(|r| r.get(0))
        .map_err(|e| pg_error(at, e))?;
    Err(StoreError::Fenced {
        at: at.to_string(),
        name: fence.name.to_string(),
        token,
        seen: u64::try_from(seen).unwrap_or(0),
    })
}

/// A new leader's first act: records its token as the highest seen, so
/// an older holder's writes are refused from now on.
pub fn fence_claim(conn: &PgConn, fence: &Fence) -> Result<(), StoreError> {
    conn.with_store(|c| {
        let mut tx = c.transaction().map_err(|e| pg_error(conn.at(), e))?;
        fence_check(&mut tx, conn.at(), fence)?;
        tx.commit().map_err(|e| pg_error(conn.at(), e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuzet_sim::servers::PgServer;

    #[test]
    fn an_old_leader_is_refused_once_a_new_one_has_claimed() {
        let pg = PgServer::start().unwrap();
        let url = pg.create_db("fence").unwrap();
        let conn = PgConn::new(&url);
        super::super::migrate(&conn, "fences", MIGRATIONS).unwrap();
        let old = Fence::new("feed");
        let new = Fence::new("feed");
        // Not held: refused.
        assert!(matches!(
            fence_claim(&conn, &old),
            Err(StoreError::Fenced { token: 0, .. })
        ));
        old.hold(4);
        fence_claim(&conn, &old).unwrap();
        new.hold(5);
        fence_claim(&conn, &new).unwrap();
        // The old one wakes and writes: refused, whatever it believes.
        let err = fence_claim(&conn, &old).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Fenced {
                    token: 4,
                    seen: 5,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!err.is_transient());
        fence_claim(&conn, &new).unwrap();
        // Another lease is apart.
        let other = Fence::new("outbox");
        other.hold(1);
        fence_claim(&conn, &other).unwrap();
    }
}
