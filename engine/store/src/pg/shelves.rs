//! The published versions of a cluster's lists and rules on PostgreSQL
//! ([`SharedShelves`]): stored once, fetched by every node.
//!
//! Three tables (component `shelves`): `kuzet_shelf_index`, one row per
//! shelf with its index document and a sequence that rises by one at each
//! change; `kuzet_shelf_contents`, one row per content (shelf, digest,
//! length, pieces, when it was last put); `kuzet_shelf_pieces`, the
//! content in pieces of [`PIECE`] bytes, so neither side ever holds a
//! whole list of ten million numbers in one value. And
//! `kuzet_publishing_seq`, the one publishing sequence every node takes
//! its activations' numbers from.
//!
//! A content is written in one transaction with its row, so it is stored
//! whole or not at all; two nodes storing the same content at once end
//! with one copy (the second waits on the first's row, then finds it).
//! Putting a content that is stored marks it wanted now (`touched`), under
//! a lock on its row, so the clean-up below never takes a content a push
//! is about to name. An index changes only by compare-and-set: the update
//! names the sequence the writer read and locks the shelf's row, so the
//! changes of one shelf are applied one after another; in the same
//! transaction every content the new index names is checked stored, and
//! the contents of that shelf that it no longer names and that nobody put
//! for an hour ([`Options::unused_after`]) are dropped with their pieces.
//!
//! The schema is migrated on first use, not when kuzet starts: a node
//! whose PostgreSQL is down starts and runs on the versions it holds.

use std::io::{Read, Write};
use std::sync::OnceLock;
use std::time::Duration;

use super::{migrate, pg_error, PgConn};
use crate::ports::SharedShelves;
use crate::StoreError;

/// The schema's migrations (component `shelves`).
pub const MIGRATIONS: &[&str] = &["CREATE TABLE kuzet_shelf_index (
    shelf text PRIMARY KEY,
    seq bigint NOT NULL CHECK (seq > 0),
    doc text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE kuzet_shelf_contents (
    shelf text NOT NULL,
    digest text NOT NULL,
    bytes bigint NOT NULL,
    pieces integer NOT NULL,
    touched timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shelf, digest)
);
CREATE TABLE kuzet_shelf_pieces (
    shelf text NOT NULL,
    digest text NOT NULL,
    n integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (shelf, digest, n),
    FOREIGN KEY (shelf, digest) REFERENCES kuzet_shelf_contents ON DELETE CASCADE
);
CREATE TABLE kuzet_publishing_seq (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq bigint NOT NULL
)"];

/// Checks a PostgreSQL URL (`postgres://user@host:port/database`) as
/// the shared shelves would use it; the error does not repeat it (it may
/// hold a password).
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("must be a postgres:// URL".into());
    }
    url.parse::<postgres::Config>()
        .map(|_| ())
        .map_err(|e| format!("not a PostgreSQL URL: {e}"))
}

/// The length of a content's pieces.
pub const PIECE: usize = 1 << 20;

/// How the shared shelves behave.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// A content no index names is dropped once it has not been put for
    /// this long (a push names what it put within seconds).
    pub unused_after: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            unused_after: Duration::from_secs(3600),
        }
    }
}

/// [`SharedShelves`] on PostgreSQL (see the module docs).
pub struct PgShelves {
    conn: PgConn,
    opts: Options,
    migrated: OnceLock<()>,
}

impl PgShelves {
    /// The shelves at `url`; nothing is connected until first used.
    pub fn new(url: &str, opts: Options) -> PgShelves {
        PgShelves {
            conn: PgConn::new(url),
            opts,
            migrated: OnceLock::new(),
        }
    }

    /// Migrates the schema once (and again after a failure).
    fn ready(&self) -> Result<(), StoreError> {
        if self.migrated.get().is_some() {
            return Ok(());
        }
        migrate(&self.conn, "shelves", MIGRATIONS)?;
        let _ = self.migrated.set(());
        Ok(())
    }

    fn e(&self) -> impl Fn(postgres::Error) -> StoreError + '_ {
        |err| pg_error(self.conn.at(), err)
    }
}

impl Drop for PgShelves {
    /// The blocking client closes its connection on a runtime of its own,
    /// which cannot run on a thread that is running async tasks (where the
    /// last holder of the shelves may drop them): it is dropped on a
    /// thread of its own.
    fn drop(&mut self) {
        let conn = std::mem::replace(&mut self.conn, PgConn::new(""));
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(conn)));
        let theirs = slot.clone();
        let spawned = std::thread::Builder::new()
            .name("kuzet-pg-close".into())
            .spawn(move || drop(theirs.lock().map(|mut c| c.take())));
        if let Err(e) = spawned {
            // Left open, for the server to notice, rather than closed here.
            if let Ok(mut c) = slot.lock() {
                std::mem::forget(c.take());
            }
            tracing::warn!(error = %e, "no thread to close the shared shelves' connection; it is left open for the server to notice");
        }
    }
}

/// A count as the database keeps it.
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Fills `buf` from `from` as far as it goes; returns how much was read
/// (less than `buf.len()` only at the end).
fn fill(from: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        match from.read(&mut buf[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

impl SharedShelves for PgShelves {
    fn location(&self) -> String {
        self.conn.at().to_string()
    }

    fn put_content(
        &self,
        shelf: &str,
        digest: &str,
        from: &mut dyn Read,
    ) -> Result<bool, StoreError> {
        self.ready()?;
        let e = self.e();
        // A connection of its own: a large content does not hold the
        // shared one (the index checks) for seconds.
        let mut c = self.conn.connect()?;
        let mut tx = c.transaction().map_err(&e)?;
        let held = tx
            .query_opt(
                "SELECT 1 FROM kuzet_shelf_contents WHERE shelf = $1 AND digest = $2 FOR UPDATE",
                &[&shelf, &digest],
            )
            .map_err(&e)?;
        if held.is_some() {
            tx.execute(
                "UPDATE kuzet_shelf_contents SET touched = now() WHERE shelf = $1 AND digest = $2",
                &[&shelf, &digest],
            )
            .map_err(&e)?;
            tx.commit().map_err(&e)?;
            return Ok(false);
        }
        // Another node storing the same content now: this waits for it,
        // then finds its row and stores nothing.
        let mine = tx
            .query_opt(
                "INSERT INTO kuzet_shelf_contents (shelf, digest, bytes, pieces) VALUES ($1, $2, 0, 0)
                 ON CONFLICT (shelf, digest) DO NOTHING RETURNING 1",
                &[&shelf, &digest],
            )
            .map_err(&e)?;
        if mine.is_none() {
            tx.commit().map_err(&e)?;
            return Ok(false);
        }
        let insert = tx
            .prepare(
                "INSERT INTO kuzet_shelf_pieces (shelf, digest, n, data) VALUES ($1, $2, $3, $4)",
            )
            .map_err(&e)?;
        let mut buf = vec![0u8; PIECE];
        let (mut n, mut bytes) = (0i32, 0u64);
        loop {
            let got = fill(from, &mut buf).map_err(|err| {
                StoreError::internal(
                    self.conn.at(),
                    format!("reading the content {shelf}/{digest} to store it: {err}"),
                )
            })?;
            if got == 0 {
                break;
            }
            tx.execute(&insert, &[&shelf, &digest, &n, &&buf[..got]])
                .map_err(&e)?;
            n += 1;
            bytes += got as u64;
            if got < PIECE {
                break;
            }
        }
        tx.execute(
            "UPDATE kuzet_shelf_contents SET bytes = $3, pieces = $4 WHERE shelf = $1 AND digest = $2",
            &[&shelf, &digest, &big(bytes), &n],
        )
        .map_err(&e)?;
        tx.commit().map_err(&e)?;
        Ok(true)
    }

    fn content(
        &self,
        shelf: &str,
        digest: &str,
        into: &mut dyn Write,
    ) -> Result<Option<u64>, StoreError> {
        self.ready()?;
        let e = self.e();
        let mut c = self.conn.connect()?;
        // One view of it from its row to its last piece.
        let mut tx = c
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(&e)?;
        let Some(row) = tx
            .query_opt(
                "SELECT bytes, pieces FROM kuzet_shelf_contents WHERE shelf = $1 AND digest = $2",
                &[&shelf, &digest],
            )
            .map_err(&e)?
        else {
            return Ok(None);
        };
        let (bytes, pieces): (i64, i32) = (row.get(0), row.get(1));
        let piece = tx
            .prepare(
                "SELECT data FROM kuzet_shelf_pieces WHERE shelf = $1 AND digest = $2 AND n = $3",
            )
            .map_err(&e)?;
        let mut got = 0u64;
        for n in 0..pieces {
            let data: Vec<u8> = tx
                .query_opt(&piece, &[&shelf, &digest, &n])
                .map_err(&e)?
                .map(|r| r.get(0))
                .ok_or_else(|| {
                    StoreError::internal(
                        self.conn.at(),
                        format!("the content {shelf}/{digest} lacks its piece {n}"),
                    )
                })?;
            into.write_all(&data).map_err(|err| {
                StoreError::internal(
                    self.conn.at(),
                    format!("writing the content {shelf}/{digest} where it was asked for: {err}"),
                )
            })?;
            got += data.len() as u64;
        }
        if got != bytes as u64 {
            return Err(StoreError::internal(
                self.conn.at(),
                format!("the content {shelf}/{digest} holds {got} bytes, its row says {bytes}"),
            ));
        }
        tx.commit().map_err(&e)?;
        Ok(Some(got))
    }

    fn index(&self, shelf: &str) -> Result<Option<(u64, String)>, StoreError> {
        self.ready()?;
        self.conn.with(|c| {
            c.query_opt(
                "SELECT seq, doc FROM kuzet_shelf_index WHERE shelf = $1",
                &[&shelf],
            )
            .map(|r| r.map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, String>(1))))
        })
    }

    fn sequences(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.ready()?;
        self.conn.with(|c| {
            c.query(
                "SELECT shelf, seq FROM kuzet_shelf_index ORDER BY shelf",
                &[],
            )
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
                    .collect()
            })
        })
    }

    fn cas_index(
        &self,
        shelf: &str,
        expect: u64,
        doc: &str,
        named: &[String],
    ) -> Result<bool, StoreError> {
        self.ready()?;
        let at = self.conn.at().to_string();
        let unused_s = self.opts.unused_after.as_secs_f64();
        self.conn.with_store(|c| {
            let e = |err| pg_error(&at, err);
            let mut tx = c.transaction().map_err(e)?;
            // Locks the shelf's row: its changes go one after another.
            let changed = if expect == 0 {
                tx.execute(
                    "INSERT INTO kuzet_shelf_index (shelf, seq, doc) VALUES ($1, 1, $2)
                     ON CONFLICT (shelf) DO NOTHING",
                    &[&shelf, &doc],
                )
            } else {
                tx.execute(
                    "UPDATE kuzet_shelf_index SET seq = seq + 1, doc = $3, changed_at = now()
                     WHERE shelf = $1 AND seq = $2",
                    &[&shelf, &big(expect), &doc],
                )
            }
            .map_err(e)?;
            if changed != 1 {
                return Ok(false);
            }
            let held: Vec<String> = tx
                .query(
                    "SELECT digest FROM kuzet_shelf_contents WHERE shelf = $1 AND digest = ANY($2)",
                    &[&shelf, &named],
                )
                .map_err(e)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let missing: Vec<&String> = named.iter().filter(|d| !held.contains(d)).collect();
            if !missing.is_empty() {
                return Err(StoreError::Conflict {
                    path: at.clone().into(),
                    reason: format!(
                        "the index of {shelf} would name contents the store does not hold: {missing:?}; nothing changed"
                    ),
                });
            }
            tx.execute(
                "DELETE FROM kuzet_shelf_contents
                 WHERE shelf = $1 AND NOT (digest = ANY($2))
                   AND touched < now() - make_interval(secs => $3)",
                &[&shelf, &named, &unused_s],
            )
            .map_err(e)?;
            tx.commit().map_err(e)?;
            Ok(true)
        })
    }

    fn next_sequence(&self, at_least: u64) -> Result<u64, StoreError> {
        self.ready()?;
        let floor = big(at_least);
        self.conn.with(|c| {
            c.query_one(
                "INSERT INTO kuzet_publishing_seq (one, seq) VALUES (true, $1::bigint + 1)
                 ON CONFLICT (one) DO UPDATE
                 SET seq = GREATEST(kuzet_publishing_seq.seq, $1::bigint) + 1
                 RETURNING seq",
                &[&floor],
            )
            .map(|r| r.get::<_, i64>(0) as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuzet_sim::servers::PgServer;

    fn fetch(s: &PgShelves, shelf: &str, digest: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        s.content(shelf, digest, &mut out).unwrap().map(|n| {
            assert_eq!(n as usize, out.len());
            out
        })
    }

    #[test]
    fn a_content_is_stored_once_and_comes_back_whole() {
        let pg = PgServer::start().unwrap();
        let url = pg.create_db("shelves_content").unwrap();
        let s = PgShelves::new(&url, Options::default());
        // Two and a half pieces.
        let text: Vec<u8> = (0..PIECE * 5 / 2).map(|i| (i % 251) as u8).collect();
        assert!(s
            .put_content("lists/blocklist", "d1", &mut &text[..])
            .unwrap());
        // Again: nothing stored, the reader not even read.
        let mut untouched: &[u8] = b"other bytes";
        assert!(!s
            .put_content("lists/blocklist", "d1", &mut untouched)
            .unwrap());
        assert_eq!(untouched.len(), 11);
        // A second store of the same content from another node at once.
        let s2 = PgShelves::new(&url, Options::default());
        let t = std::thread::spawn({
            let text = text.clone();
            move || s2.put_content("rules", "d2", &mut &text[..]).unwrap()
        });
        let mine = s.put_content("rules", "d2", &mut &text[..]).unwrap();
        let theirs = t.join().unwrap();
        assert!(mine ^ theirs, "exactly one stored it: {mine} {theirs}");
        assert_eq!(
            pg.psql(
                "shelves_content",
                "SELECT count(*) FROM kuzet_shelf_contents"
            )
            .unwrap(),
            "2"
        );
        assert_eq!(
            pg.psql(
                "shelves_content",
                "SELECT count(*) FROM kuzet_shelf_pieces WHERE digest = 'd1'"
            )
            .unwrap(),
            "3"
        );
        assert_eq!(fetch(&s, "lists/blocklist", "d1").unwrap(), text);
        assert_eq!(fetch(&s, "rules", "d2").unwrap(), text);
        // By shelf: the same digest on another shelf is another content.
        assert_eq!(fetch(&s, "rules", "d1"), None);
        // An empty content is a content.
        assert!(s.put_content("rules", "empty", &mut &b""[..]).unwrap());
        assert_eq!(fetch(&s, "rules", "empty").unwrap(), b"");
    }

    #[test]
    fn an_index_changes_only_from_the_sequence_read_and_only_naming_stored_contents() {
        let pg = PgServer::start().unwrap();
        let url = pg.create_db("shelves_index").unwrap();
        let s = PgShelves::new(
            &url,
            Options {
                unused_after: Duration::ZERO,
            },
        );
        let shelf = "lists/blocklist";
        assert_eq!(s.index(shelf).unwrap(), None);
        assert!(s.sequences().unwrap().is_empty());
        s.put_content(shelf, "a", &mut &b"+77010000001\n"[..])
            .unwrap();
        // Naming a content not stored: refused, nothing changed.
        let err = s
            .cas_index(shelf, 0, "{\"v\":0}", &["a".into(), "b".into()])
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict { reason, .. } if reason.contains("\"b\"")),
            "{err}"
        );
        assert_eq!(s.index(shelf).unwrap(), None);
        // The first index: from no sequence (0) to 1.
        assert!(s.cas_index(shelf, 0, "{\"v\":1}", &["a".into()]).unwrap());
        assert_eq!(s.index(shelf).unwrap(), Some((1, "{\"v\":1}".into())));
        // A second writer from nothing too: it lost.
        assert!(!s.cas_index(shelf, 0, "{\"v\":9}", &["a".into()]).unwrap());
        // From 1: taken; from 1 again (stale): refused, nothing changed.
        s.put_content(shelf, "b", &mut &b"+77010000002\n"[..])
            .unwrap();
        assert!(s
            .cas_index(shelf, 1, "{\"v\":2}", &["a".into(), "b".into()])
            .unwrap());
        assert!(!s.cas_index(shelf, 1, "{\"v\":3}", &["a".into()]).unwrap());
        assert_eq!(s.index(shelf).unwrap(), Some((2, "{\"v\":2}".into())));
        assert_eq!(s.sequences().unwrap(), vec![(shelf.to_string(), 2)]);
        // Another shelf has a sequence of its own.
        s.put_content("rules", "r", &mut &b"x"[..]).unwrap();
        assert!(s.cas_index("rules", 0, "{}", &["r".into()]).unwrap());
        assert_eq!(
            s.sequences().unwrap(),
            vec![("lists/blocklist".to_string(), 2), ("rules".to_string(), 1)]
        );
        // A content the index stops naming is dropped (here at once), and
        // only on its shelf.
        assert!(s.cas_index(shelf, 2, "{\"v\":4}", &["b".into()]).unwrap());
        assert_eq!(fetch(&s, shelf, "a"), None);
        assert_eq!(fetch(&s, shelf, "b").unwrap(), b"+77010000002\n");
        assert_eq!(fetch(&s, "rules", "r").unwrap(), b"x");
        assert_eq!(
            pg.psql(
                "shelves_index",
                "SELECT count(*) FROM kuzet_shelf_pieces WHERE digest = 'a'"
            )
            .unwrap(),
            "0"
        );
    }

    #[test]
    fn the_publishing_sequence_only_rises() {
        let pg = PgServer::start().unwrap();
        let url = pg.create_db("shelves_seq").unwrap();
        let s = PgShelves::new(&url, Options::default());
        assert_eq!(s.next_sequence(0).unwrap(), 1);
        assert_eq!(s.next_sequence(0).unwrap(), 2);
        // A node whose own sequence is ahead takes the next after it.
        assert_eq!(s.next_sequence(40).unwrap(), 41);
        assert_eq!(s.next_sequence(3).unwrap(), 42);
    }

    #[test]
    fn a_server_that_is_down_is_a_transient_error_and_is_used_again_when_back() {
        let mut pg = PgServer::start().unwrap();
        let url = pg.create_db("shelves_down").unwrap();
        let s = PgShelves::new(&url, Options::default());
        pg.stop();
        let err = s.index("rules").unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains(&pg.port().to_string()), "{err}");
        pg.restart().unwrap();
        assert_eq!(s.index("rules").unwrap(), None);
    }
}
