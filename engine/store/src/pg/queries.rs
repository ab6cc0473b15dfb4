//! The investigators' port on PostgreSQL ([`PgQueries`], a [`Queries`]):
//! every node's calls, whichever node the investigator asks.
//!
//! The filters and their meaning are SQLite's ([`crate::query`]): every
//! value a bound parameter, pages newest first with the row id as the
//! cursor, counts per decision and per rule in buckets (text ordered
//! bytewise, as SQLite orders it). Each answer is one consistent view: a
//! page or a count is one statement; an export runs in a `REPEATABLE
//! READ` read-only transaction on a connection of its own and is fetched
//! through a portal a thousand rows at a time, so an export of millions
//! of rows streams and is never collected, and the other queries go on
//! meanwhile (they share a few connections, taken in turn). Ids come from one sequence shared by the nodes, so a row
//! committed by another node after a page was read may carry an id below
//! that page's cursor and be seen only by a later query: the cursor pages
//! what was committed when each page was read.

use std::sync::atomic::{AtomicUsize, Ordering};

use postgres::types::ToSql;
use postgres::{IsolationLevel, Row};

use crate::ports::{Counts, IncidentView, Queries};
use crate::query::{Count, Filter, Page, MAX_COUNTS, MAX_PAGE};
use crate::{Record, StoreError};

use super::calls::COLUMNS;
use super::{incidents, pg_error, PgConn};

/// Rows an export fetches from its portal at a time.
const EXPORT_FETCH: i32 = 1000;

/// Connections the reads share, taken in turn (each made on first use):
/// one slow answer holds up only the requests behind it on its own.
const READERS: usize = 4;

/// The investigators' reads of the shared store.
pub struct PgQueries {
    conns: Vec<PgConn>,
    next: AtomicUsize,
}

impl PgQueries {
    /// Reads the store at `url` (opened by a writer, [`super::open`],
    /// which made its schema).
    pub fn new(url: &str) -> PgQueries {
        PgQueries {
            conns: (0..READERS).map(|_| PgConn::new(url)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next connection in turn.
    fn conn(&self) -> &PgConn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        &self.conns[i]
    }
}

/// A filter's WHERE clause and its parameters; `before` is the cursor.
fn clause(f: &Filter, before: Option<i64>) -> (String, Vec<Box<dyn ToSql + Sync>>) {
    let mut w = Vec::new();
    let mut p: Vec<Box<dyn ToSql + Sync>> = Vec::new();
    let mut arg = |v: Box<dyn ToSql + Sync>| {
        p.push(v);
        format!("${}", p.len())
    };
    if let Some(n) = &f.number {
        let a = arg(Box::new(n.clone()));
        w.push(format!("(a = {a} OR b = {a})"));
    }
    if let Some(t) = f.since_us {
        w.push(format!("ts_us >= {}", arg(Box::new(t))));
    }
    if let Some(t) = f.until_us {
        w.push(format!("ts_us < {}", arg(Box::new(t))));
    }
    if let Some(d) = &f.decision {
        w.push(format!("decision = {}", arg(Box::new(d.clone()))));
    }
    if let Some(r) = &f.rule {
        w.push(format!(
            "rule_ids @> ARRAY[{}::text]",
            arg(Box::new(r.clone()))
        ));
    }
    if let Some(t) = &f.trunk {
        w.push(format!("trunk = {}", arg(Box::new(t.clone()))));
    }
    if let Some(i) = f.incident {
        w.push(format!("incident = {}", arg(Box::new(i))));
    }
    if let Some(v) = &f.verdict_id {
        w.push(format!(
            "verdict_id = {}",
            arg(Box::new(v.to_ascii_lowercase()))
        ));
    }
    if let Some(c) = before {
        w.push(format!("id < {}", arg(Box::new(c))));
    }
    let clause = if w.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", w.join(" AND "))
    };
    (clause, p)
}

fn refs(p: &[Box<dyn ToSql + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    p.iter().map(|b| b.as_ref()).collect()
}

/// Reads a row selected with [`COLUMNS`].
pub fn record_from_row(r: &Row) -> Result<Record, postgres::Error> {
    let rules: String = r.try_get(22)?;
    let list: Option<String> = r.try_get(23)?;
    Ok(Record {
        id: r.try_get(0)?,
        verdict_id: r.try_get(1)?,
        ts_us: r.try_get(2)?,
        node: r.try_get(3)?,
        call_id: r.try_get(4)?,
        ruri: r.try_get(5)?,
        from_hdr: r.try_get(6)?,
        pai_hdr: r.try_get(7)?,
        a: r.try_get(8)?,
        b: r.try_get(9)?,
        from_num: r.try_get(10)?,
        pai_num: r.try_get(11)?,
        trunk: r.try_get(12)?,
        trunk_kind: r.try_get(13)?,
        source: r.try_get(14)?,
        transport: r.try_get(15)?,
        decision: r.try_get(16)?,
        shadow_decision: r.try_get(17)?,
        code: u16::try_from(r.try_get::<_, i32>(18)?).unwrap_or(0),
        score: u32::try_from(r.try_get::<_, i64>(19)?).unwrap_or(0),
        sampled: r.try_get(20)?,
        explanation: r.try_get(21)?,
        rules: serde_json::from_str(&rules).unwrap_or_default(),
        list_hit: list.and_then(|l| serde_json::from_str(&l).ok()),
        lists_version: r.try_get(24)?,
        headers: r.try_get(25)?,
        incident: r.try_get(26)?,
        a_trust: r.try_get(27)?,
        caller_role: r.try_get(28)?,
        id_seq: 0,
    })
}

impl Queries for PgQueries {
    fn calls(&self, f: &Filter, before: Option<i64>, limit: usize) -> Result<Page, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let (clause, mut p) = clause(f, before);
        p.push(Box::new(limit as i64 + 1));
        let sql = format!(
            "SELECT {COLUMNS} FROM calls {clause} ORDER BY id DESC LIMIT ${}",
            p.len()
        );
        let mut calls = self.conn().with(|c| {
            c.query(&sql, &refs(&p))?
                .iter()
                .map(record_from_row)
                .collect::<Result<Vec<_>, _>>()
        })?;
        let next = if calls.len() > limit {
            calls.truncate(limit);
            calls.last().map(|c| c.id)
        } else {
            None
        };
        Ok(Page { calls, next })
    }

    fn export(&self, f: &Filter, each: &mut dyn FnMut(Record) -> bool) -> Result<u64, StoreError> {
        let conn = self.conn();
        let at = conn.at();
        let e = |err| pg_error(at, err);
        let (clause, p) = clause(f, None);
        let sql = format!("SELECT {COLUMNS} FROM calls {clause} ORDER BY id DESC");
        // A connection of its own: an export may last minutes, and the
        // port's other reads must not wait for it.
        let mut client = conn.connect()?;
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(e)?;
        let portal = tx.bind(sql.as_str(), &refs(&p)).map_err(e)?;
        let mut n = 0;
        loop {
            let rows = tx.query_portal(&portal, EXPORT_FETCH).map_err(e)?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                n += 1;
                if !each(record_from_row(r).map_err(e)?) {
                    return Ok(n);
                }
            }
        }
        Ok(n)
    }

    fn counts(&self, f: &Filter, bucket_us: i64) -> Result<Counts, StoreError> {
        let bucket_us = bucket_us.max(1_000_000);
        let (clause, mut p) = clause(f, None);
        p.push(Box::new(bucket_us));
        let b = p.len();
        let per_decision = format!(
            "SELECT (ts_us / ${b}) * ${b} AS bucket, decision, count(*) FROM calls {clause}
             GROUP BY bucket, decision ORDER BY bucket, decision COLLATE \"C\"
             LIMIT {MAX_COUNTS}"
        );
        let per_rule = format!(
            "SELECT (ts_us / ${b}) * ${b} AS bucket, r.rule, count(*)
             FROM calls CROSS JOIN LATERAL unnest(rule_ids) AS r(rule) {clause}
             GROUP BY bucket, r.rule ORDER BY bucket, r.rule COLLATE \"C\"
             LIMIT {MAX_COUNTS}"
        );
        let read = |rows: Vec<Row>| -> Result<Vec<Count>, postgres::Error> {
            rows.iter()
                .map(|r| {
                    Ok(Count {
                        bucket_us: r.try_get(0)?,
                        key: r.try_get(1)?,
                        calls: r.try_get::<_, i64>(2)?.max(0) as u64,
                    })
                })
                .collect()
        };
        self.conn().with(|c| {
            // Both from one view.
            let mut tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let d = read(tx.query(&per_decision, &refs(&p))?)?;
            let r = read(tx.query(&per_rule, &refs(&p))?)?;
            tx.commit()?;
            Ok((d, r))
        })
    }

    fn incidents(
        &self,
        state: Option<&str>,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<IncidentView>, StoreError> {
        self.conn()
            .with(|c| incidents::list(c, state, before, limit))
            .map(|v| {
                v.into_iter()
                    .map(|(incident, delivered_seq)| IncidentView {
                        incident,
                        delivered_seq,
                    })
                    .collect()
            })
    }

    fn incident(&self, id: i64) -> Result<Option<IncidentView>, StoreError> {
        self.conn().with(|c| incidents::get(c, id)).map(|v| {
            v.map(|(incident, delivered_seq)| IncidentView {
                incident,
                delivered_seq,
            })
        })
    }
}
