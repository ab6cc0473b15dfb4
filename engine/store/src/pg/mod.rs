//! The PostgreSQL implementation of the store's ports ([`crate::ports`]):
//! one store shared by every node of a cluster (`[store] backend =
//! "postgres"`), so an investigator on any node sees every node's calls,
//! incidents group calls from every node, and one leader at a time drives
//! each outbox.
//!
//! This module holds what every part shares: a connection that is made on
//! first use and made again after an error ([`PgConn`]), the errors
//! classified as transient or not ([`pg_error`]), the schema's migrations
//! per component, applied once across racing nodes ([`migrate`]), and the
//! fencing tokens of the leases ([`Fence`], [`fence_check`]); and the
//! published versions every node shares ([`shelves`]). The client
//! is the blocking `postgres` crate, as the ports are blocking: the
//! control plane calls them from threads of its own or tokio's blocking
//! pool, never from an async task.
//!
//! The ports, each in a file of its own: the recorder's [`PgStore`]
//! ([`calls`], opened by [`open`]), the investigators' [`PgQueries`]
//! ([`queries`]), the reporter's [`PgOutbox`] ([`outbox`], fenced when
//! a lease drives it), the gate's [`PgAudit`] ([`audit`]); grouping and
//! the outbox's rules in [`incidents`], the call log's partitions in
//! [`partitions`], the schema in [`schema`]. [`ports`] makes the ports
//! a running kuzet hands its control plane; the Centre's port is handed
//! in by the caller (it is not on PostgreSQL yet).
//!
//! The store's identity is shared: its id and the verdict key are one row
//! each in `kuzet_meta`, written by whichever node comes first and read
//! by every other ([`meta_value`]); each node keeps its own last verdict
//! sequence, by its name.

pub mod audit;
pub mod calls;
pub mod centre;
pub mod fence;
pub mod incidents;
pub mod outbox;
pub mod partitions;
pub mod queries;
pub mod schema;
pub mod shelves;

use std::sync::{Arc, Mutex};

pub use audit::PgAudit;
pub use calls::{open, PgStore};
pub use fence::{fence_check, fence_claim, Fence};
pub use outbox::PgOutbox;
pub use partitions::Partitioning;
pub use queries::PgQueries;

use crate::ports::{Centre, Ports};
use crate::StoreError;

/// The queries, outbox and audit ports on the shared store at `url` (the
/// writer, [`open`], must have made its schema first), with `centre` for
/// the Centre's port (kept apart: the seam where a PostgreSQL Centre
/// goes). `outbox_fence` is the lease the outbox's writes must hold when
/// several nodes may drive it (`None`: one node, unfenced). Connections
/// are made on first use.
pub fn ports(url: &str, outbox_fence: Option<Arc<Fence>>, centre: Arc<dyn Centre>) -> Ports {
    Ports {
        queries: Arc::new(PgQueries::new(url)),
        outbox: Arc::new(PgOutbox::new(url, outbox_fence)),
        audit: Arc::new(PgAudit::new(url)),
        centre,
    }
}

/// The value of `key` in `kuzet_meta`, made with `make` and written if
/// the store has none yet: insert-if-absent, then read back, so nodes
/// racing here all get the value of whichever wrote first.
pub fn meta_value(
    conn: &PgConn,
    key: &str,
    make: impl FnOnce() -> Result<String, StoreError>,
) -> Result<String, StoreError> {
    if let Some(v) = conn.with(|c| {
        c.query_opt("SELECT value FROM kuzet_meta WHERE key = $1", &[&key])
            .map(|r| r.map(|r| r.get::<_, String>(0)))
    })? {
        return Ok(v);
    }
    let fresh = make()?;
    conn.with(|c| {
        c.execute(
            "INSERT INTO kuzet_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&key, &fresh],
        )?;
        c.query_one("SELECT value FROM kuzet_meta WHERE key = $1", &[&key])
            .map(|r| r.get::<_, String>(0))
    })
}

/// `n` random bytes from the OS, as hex.
pub fn random_hex(n: usize) -> Result<String, String> {
    let mut raw = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The server's address as log lines name it: the URL without a password.
pub fn redacted(url: &str) -> String {
    match url.parse::<postgres::Config>() {
        Ok(c) => {
            let host = c
                .get_hosts()
                .iter()
                .map(|h| match h {
                    postgres::config::Host::Tcp(s) => s.clone(),
                    postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .collect::<Vec<_>>()
                .join(",");
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!(
                "postgres://{}@{host}:{port}/{}",
                c.get_user().unwrap_or(""),
                c.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "postgres (an unreadable URL)".into(),
    }
}

/// PostgreSQL's error, classified: a lost or refused connection, a
/// server shutting down or out of resources, a serialization failure or
/// a deadlock come right when tried again; anything else (a constraint,
/// a type, a syntax error) refuses the work itself.
pub fn pg_error(at: &str, e: postgres::Error) -> StoreError {
    let transient = match e.code() {
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("53") // insufficient resources
                || c.starts_with("57P") // operator intervention: shutdown
                || c == "40001" // serialization failure
                || c == "40P01" // deadlock
                || c == "55P03" // lock not available
                || c == "25006" // read-only transaction (a standby)
                || c == "25P03" // idle in a transaction too long: the server ended it
        }
        // No SQLSTATE: the connection is closed, or the socket failed.
        None => true,
    };
    StoreError::Backend {
        at: at.to_string(),
        transient,
        source: Box::new(e),
    }
}

/// One connection to the server, made on first use and dropped after an
/// error that may have broken it, so the next use connects again: a
/// server that went away and came back is used again with no restart.
/// Shared by threads, one statement at a time (a mutex).
pub struct PgConn {
    url: String,
    at: String,
    client: Mutex<Option<postgres::Client>>,
}

impl PgConn {
    /// A connection to `url`, not yet made.
    pub fn new(url: &str) -> PgConn {
        PgConn {
            url: url.to_string(),
            at: redacted(url),
            client: Mutex::new(None),
        }
    }

    /// The server as log lines name it (no password).
    pub fn at(&self) -> &str {
        &self.at
    }

    /// A new client of its own (for a long export, or a thread of its
    /// own).
    pub fn connect(&self) -> Result<postgres::Client, StoreError> {
        let mut cfg: postgres::Config = self.url.parse().map_err(|e| StoreError::Backend {
            at: self.at.clone(),
            transient: false,
            source: Box::new(e),
        })?;
        cfg.connect_timeout(CONNECT_TIMEOUT);
        cfg.application_name("kuzet");
        cfg.connect(postgres::NoTls)
            .map_err(|e| pg_error(&self.at, e))
    }

    /// Runs `f` on the connection (made first if there is none). An
    /// error that may have broken it drops it.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        self.with_store(|c| f(c).map_err(|e| pg_error(&self.at, e)))
    }

    /// As [`with`](Self::with), for work that returns the store's own
    /// errors (a [`StoreError::Conflict`], a fence refused).
    pub fn with_store<T>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self
            .client
            .lock()
            .map_err(|_| StoreError::internal(&self.at, "connection lock poisoned"))?;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.connect()?);
        }
        let Some(client) = guard.as_mut() else {
            return Err(StoreError::internal(&self.at, "no connection"));
        };
        let out = f(client);
        if matches!(&out, Err(e) if e.is_transient()) {
            *guard = None;
        }
        out
    }
}

/// The blocking client runs a runtime of its own, which may not be
/// entered from a thread that drives an async runtime: a port dropped
/// there (an `Arc` whose last holder was an async task, at shutdown)
/// closes its connection on a thread of its own.
impl Drop for PgConn {
    fn drop(&mut self) {
        let client = match self.client.get_mut() {
            Ok(c) => c.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(c) = client {
            let (tx, rx) = std::sync::mpsc::channel::<postgres::Client>();
            let closing = std::thread::Builder::new()
                .name("kuzet-pg-close".into())
                .spawn(move || drop(rx.recv()));
            match closing {
                Ok(_) => {
                    let _ = tx.send(c);
                }
                Err(e) => {
                    // Dropped here it could abort the process: left open
                    // instead, until the process ends.
                    tracing::warn!(server = %self.at, error = %e, "could not close a PostgreSQL connection on a thread of its own; it is left to close when kuzet exits");
                    std::mem::forget(c);
                }
            }
        }
    }
}

/// Creates the migrations' own table, if missing: which version of each
/// component's schema the database holds.
const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS kuzet_schema (
    component text PRIMARY KEY,
    version integer NOT NULL
)";

/// Brings `component`'s schema up to date: `steps[i]` takes it from
/// version `i` to `i + 1`, each in one transaction with its version. Nodes
/// starting together race here: a transaction-scoped advisory lock makes
/// one migrate while the others wait and then find nothing to do. A
/// database whose version is newer than this build knows is refused,
/// never rewritten.
pub fn migrate(conn: &PgConn, component: &str, steps: &[&str]) -> Result<(), StoreError> {
    let known = steps.len() as i32;
    conn.with_store(|c| {
        let at = conn.at().to_string();
        let e = |err| pg_error(&at, err);
        let mut tx = c.transaction().map_err(e)?;
        // One lock number for every component: migrations are rare.
        tx.execute("SELECT pg_advisory_xact_lock(7466104101)", &[])
            .map_err(e)?;
        tx.batch_execute(SCHEMA_TABLE).map_err(e)?;
        let found: i32 = tx
            .query_opt(
                "SELECT version FROM kuzet_schema WHERE component = $1",
                &[&component],
            )
            .map_err(e)?
            .map(|r| r.get(0))
            .unwrap_or(0);
        if found > known {
            return Err(StoreError::NewerSchema {
                path: format!("{at} ({component})").into(),
                found: found.into(),
                known: known.into(),
            });
        }
        for (i, step) in steps.iter().enumerate().skip(found as usize) {
            tx.batch_execute(step).map_err(e)?;
            let v = i as i32 + 1;
            tx.execute(
                "INSERT INTO kuzet_schema (component, version) VALUES ($1, $2)
                 ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
                &[&component, &v],
            )
            .map_err(e)?;
        }
        tx.commit().map_err(e)
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod conn_tests {
    use super::*;
    use kuzet_sim::servers::PgServer;

    #[test]
    fn migrations_run_once_and_a_newer_schema_is_refused() {
        let pg = PgServer::start().unwrap();
        let url = pg.create_db("mig").unwrap();
        let conn = PgConn::new(&url);
        let steps = ["CREATE TABLE a (v int)", "INSERT INTO a VALUES (1)"];
        migrate(&conn, "test", &steps).unwrap();
        migrate(&conn, "test", &steps).unwrap();
        assert_eq!(pg.psql("mig", "SELECT count(*) FROM a").unwrap(), "1");
        let err = migrate(&conn, "test", &steps[..1]).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NewerSchema {
                    found: 2,
                    known: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_server_that_goes_away_is_a_transient_error_and_is_used_again_when_back() {
        let mut pg = PgServer::start().unwrap();
        let conn = PgConn::new(&pg.url("postgres"));
        let one = |c: &mut postgres::Client| {
            c.query_one("SELECT 1::int", &[])
                .map(|r| r.get::<_, i32>(0))
        };
        assert_eq!(conn.with(one).unwrap(), 1);
        pg.stop();
        let err = conn.with(one).unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(!err.to_string().is_empty());
        pg.restart().unwrap();
        assert_eq!(conn.with(one).unwrap(), 1);
        // A refusal of the work itself is not transient.
        let err = conn
            .with(|c| c.batch_execute("SELECT * FROM no_such_table"))
            .unwrap_err();
        assert!(!err.is_transient(), "{err}");
    }

    #[test]
    fn the_url_is_named_without_its_password() {
        let r = redacted("postgres://kuzet:s3cret@db.example:5433/calls");
        assert_eq!(r, "postgres://kuzet@db.example:5433/calls");
        assert!(!redacted("host=x password=s3cret").contains("s3cret"));
    }
}
