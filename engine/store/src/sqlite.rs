//! The SQLite implementation of the store's ports ([`crate::ports`]), on
//! one data directory: `kuzet.db` (calls, incidents, outbox), `audit.db`
//! and `centre.db` (the National Bank Centre's port,
//! [`crate::centre::SqliteCentre`]).
//!
//! [`crate::open`] opens the writer, [`crate::Store`], which is the
//! recorder port and holds the directory's lock; [`ports`] makes the other
//! four for the same directory. Each query opens a read-only connection
//! of its own, so it reads one snapshot while the writer commits (WAL),
//! and an export's snapshot lasts as long as the export. The outbox keeps
//! one read-write connection for the reporter's small transactions and a
//! read-only one for its gauges (dropped after an error and opened again);
//! the audit log keeps one connection to its own file, and the Centre's
//! port one writer and one reader to its own. Connections are
//! opened on first use, so a port made before the store exists costs
//! nothing and a store that comes back is used again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::audit::{self, Entry};
use crate::centre::SqliteCentre;
use crate::outbox::{Due, Payload};
use crate::ports::{AuditLog, Backlog, Counts, IncidentView, Outbox, Ports, Queries};
use crate::query::{self, Filter, Page};
use crate::{incident, open_reader, open_side_writer, sqlite_error, Record, StoreError, DB_FILE};

/// The queries, outbox, audit and Centre ports on the data directory
/// `dir` (the writer, [`crate::open`], must have made the store first;
/// `audit.db` and `centre.db` are made on their first use).
pub fn ports(dir: &Path) -> Ports {
    Ports {
        queries: Arc::new(Reader::new(dir)),
        outbox: Arc::new(SqliteOutbox::new(dir)),
        audit: Arc::new(SqliteAudit::new(dir)),
        centre: Arc::new(SqliteCentre::new(dir)),
    }
}

/// The investigators' reads: a read-only connection per query.
pub struct Reader {
    dir: PathBuf,
    db: PathBuf,
}

impl Reader {
    /// Reads the store in `dir`.
    pub fn new(dir: &Path) -> Reader {
        Reader {
            dir: dir.to_path_buf(),
            db: dir.join(DB_FILE),
        }
    }

    /// Runs `f` on a fresh read-only connection.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let c = open_reader(&self.dir)?;
        f(&c).map_err(|e| sqlite_error(&self.db, e))
    }
}

impl Queries for Reader {
    fn calls(&self, f: &Filter, before: Option<i64>, limit: usize) -> Result<Page, StoreError> {
        self.read(|c| query::calls(c, f, before, limit))
    }

    fn export(&self, f: &Filter, each: &mut dyn FnMut(Record) -> bool) -> Result<u64, StoreError> {
        self.read(|c| query::export(c, f, each))
    }

    fn counts(&self, f: &Filter, bucket_us: i64) -> Result<Counts, StoreError> {
        self.read(|c| query::counts(c, f, bucket_us))
    }

    fn incidents(
        &self,
        state: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<IncidentView>, StoreError> {
        self.read(|c| {
            incident::list(c, state, before, limit)?
                .into_iter()
                .map(|i| {
                    Ok(IncidentView {
                        delivered_seq: incident::delivered_seq(c, i.id)?,
                        incident: i,
                    })
                })
                .collect()
        })
    }

    fn incident(&self, id: i64) -> Result<Option<IncidentView>, StoreError> {
        self.read(|c| {
            let Some(i) = incident::get(c, id)? else {
                return Ok(None);
            };
            Ok(Some(IncidentView {
                delivered_seq: incident::delivered_seq(c, i.id)?,
                incident: i,
            }))
        })
    }
}

/// One lazily opened connection, kept while it works.
pub(crate) struct Lazy {
    conn: Mutex<Option<Connection>>,
    db: PathBuf,
}

impl Lazy {
    pub(crate) fn new(db: PathBuf) -> Lazy {
        Lazy {
            conn: Mutex::new(None),
            db,
        }
    }

    /// Runs `f` on the connection, opening it with `open` first if need
    /// be; with `drop_on_error`, a failed `f` closes it (the next use opens
    /// a fresh one).
    pub(crate) fn with<T>(
        &self,
        open: impl FnOnce() -> Result<Connection, StoreError>,
        drop_on_error: bool,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut g = self
            .conn
            .lock()
            .map_err(|_| StoreError::internal(self.db.display().to_string(), "lock poisoned"))?;
        if g.is_none() {
            *g = Some(open()?);
        }
        let Some(c) = g.as_mut() else {
            return Err(StoreError::internal(
                self.db.display().to_string(),
                "no connection",
            ));
        };
        let r = f(c).map_err(|e| sqlite_error(&self.db, e));
        if r.is_err() && drop_on_error {
            *g = None;
        }
        r
    }
}

/// The register outbox in `kuzet.db`.
pub struct SqliteOutbox {
    dir: PathBuf,
    /// The reporter's: claims, deliveries, retries, dead letters.
    writer: Lazy,
    /// The gauges'.
    reader: Lazy,
}

impl SqliteOutbox {
    /// The outbox of the store in `dir`.
    pub fn new(dir: &Path) -> SqliteOutbox {
        SqliteOutbox {
            dir: dir.to_path_buf(),
            writer: Lazy::new(dir.join(DB_FILE)),
            reader: Lazy::new(dir.join(DB_FILE)),
        }
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.writer
            .with(|| open_side_writer(&self.dir), false, |c| f(c))
    }
}

impl Outbox for SqliteOutbox {
    fn due(&self, now_us: i64, limit: usize) -> Result<Vec<Due>, StoreError> {
        self.write(|c| incident::due(c, now_us, limit))
    }

    fn claim(&self, id: i64) -> Result<Result<Payload, String>, StoreError> {
        self.write(|c| incident::mark_tried(c, id))
    }

    fn delivered(&self, d: &Due, case: &str) -> Result<(), StoreError> {
        self.write(|c| incident::delivered(c, d, case))
    }

    fn retry(&self, d: &Due, next_at_us: i64, error: &str) -> Result<(), StoreError> {
        self.write(|c| incident::retry(c, d, next_at_us, error))
    }

    fn dead_letter(&self, d: &Due, error: &str) -> Result<(), StoreError> {
        self.write(|c| incident::dead_letter(c, d, error))
    }

    fn backlog(&self) -> Result<Backlog, StoreError> {
        self.reader.with(
            || open_reader(&self.dir),
            true,
            |c| {
                Ok(Backlog {
                    pending: incident::backlog(c)?,
                    dead_letters: incident::dead_letters(c)?,
                })
            },
        )
    }
}

/// The audit log in `audit.db`.
pub struct SqliteAudit {
    dir: PathBuf,
    conn: Lazy,
}

impl SqliteAudit {
    /// The audit log of the data directory `dir` (made on first use).
    pub fn new(dir: &Path) -> SqliteAudit {
        SqliteAudit {
            dir: dir.to_path_buf(),
            conn: Lazy::new(dir.join(audit::AUDIT_FILE)),
        }
    }
}

impl AuditLog for SqliteAudit {
    fn append(&self, entries: &[Entry]) -> Result<(), StoreError> {
        self.conn.with(
            || audit::open(&self.dir),
            false,
            |c| {
                let tx = c.transaction()?;
                for e in entries {
                    audit::append(&tx, e)?;
                }
                tx.commit()
            },
        )
    }

    fn read(&self, before: Option<i64>, limit: usize) -> Result<Vec<Entry>, StoreError> {
        // A connection of its own, as a reader: an admin paging through the
        // log never holds up the appends.
        let c = audit::open(&self.dir)?;
        audit::read(&c, before, limit)
            .map_err(|e| sqlite_error(&self.dir.join(audit::AUDIT_FILE), e))
    }
}
