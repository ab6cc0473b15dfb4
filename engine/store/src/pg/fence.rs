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
use std::time::Duration;

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

/// How long a fenced write's transaction may sit idle, waiting on its
/// client, before the server ends it with its session. A singleton's
/// write holds the fence's row locked from its check to its commit, and a
/// new leader's claim waits for that lock: a writer paused or cut off in
/// between (SIGSTOP, a stalled VM, a partition the server does not see)
/// would hold up every claim, and so leave the singleton with no leader,
/// for as long as it was away. A fenced write sends its statements back
/// to back (its work on the client is done before the transaction
/// begins), so a second idle is a stalled writer: its transaction rolls
/// back whole, and the writer, if it wakes, gets an error it may try
/// again (refused then by the new leader's token).
pub const FENCED_IDLE_LIMIT: Duration = Duration::from_secs(1);

/// Checks `fence` inside the transaction `tx`, before a singleton's
/// write: refused if this node does not hold the lease, or if the store
/// has seen a higher token for it; otherwise the token is recorded as the
/// highest seen, and its row stays locked until `tx` ends, so two
/// leaders' writes never interleave. From here on the transaction may
/// wait on its client for [`FENCED_IDLE_LIMIT`] at most.
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
    // Before the lock is taken, so no stalled writer holds it longer.
    tx.batch_execute(&format!(
        "SET LOCAL idle_in_transaction_session_timeout = {}",
        FENCED_IDLE_LIMIT.as_millis()
    ))
    .map_err(|e| pg_error(at, e))?;
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

    /// Regression: a leader paused inside a fenced write, after its check
    /// had locked the fence's row, held the lock for as long as it was
    /// paused, and the next leader's claim waited on it: the register
    /// outbox had no leader (`cluster_store`'s paused leader, when the pause
    /// caught the reporter recording a retry). The server now ends
    /// such a transaction after FENCED_IDLE_LIMIT.
    #[test]
    fn a_writer_stalled_inside_a_fenced_write_holds_up_a_claim_only_briefly() {
        let pg = PgServer::start().unwrap();
        let url = pg.create_db("stalled").unwrap();
        let conn = PgConn::new(&url);
        super::super::migrate(&conn, "fences", MIGRATIONS).unwrap();
        let old = Fence::new("feed");
        old.hold(4);
        let mut stalled = conn.connect().unwrap();
        let mut tx = stalled.transaction().unwrap();
        fence_check(&mut tx, "a stalled writer", &old).unwrap();
        // Its client goes quiet here, the fence's row locked.
        let (done, claimed) = std::sync::mpsc::channel();
        let claimer = PgConn::new(&url);
        let t = std::time::Instant::now();
        std::thread::spawn(move || {
            let new = Fence::new("feed");
            new.hold(5);
            let _ = done.send(fence_claim(&claimer, &new));
        });
        let r = claimed
            .recv_timeout(FENCED_IDLE_LIMIT + Duration::from_secs(5))
            .expect("the new leader's claim waited on the stalled writer");
        assert!(r.is_ok(), "{r:?}");
        assert!(t.elapsed() >= FENCED_IDLE_LIMIT / 2, "{:?}", t.elapsed());
        // The stalled writer's transaction is gone: nothing of it lands,
        // and what it is told is worth trying again.
        let err = tx.commit().unwrap_err();
        assert!(pg_error("a stalled writer", err).is_transient());
        let seen = conn
            .with(|c| c.query_one("SELECT token FROM kuzet_fences WHERE name = 'feed'", &[]))
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(seen, 5);
    }
}
