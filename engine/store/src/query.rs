//! Investigators' queries over the calls log: by number (either side),
//! time range, decision, rule, trunk, incident or verdict id; newest
//! first, a page at a time, with a cursor; and counts per decision and per
//! rule over time.
//!
//! Every filter is a bound parameter, never text spliced into SQL. A
//! cursor is the last row id of the page before, so pages stay stable
//! while the writer appends.

use rusqlite::types::Value;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::record::{Record, COLUMNS};

/// What an investigator asks for. Empty fields do not filter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// A normalized number (E.164 with `+`): calls from or to it.
    pub number: Option<String>,
    /// From this time (µs since the epoch, inclusive).
    pub since_us: Option<i64>,
    /// Until this time (exclusive).
    pub until_us: Option<i64>,
    /// `allow`, `flag`, `redirect` or `block`.
    pub decision: Option<String>,
    /// A rule id that fired (enforced or shadow).
    pub rule: Option<String>,
    /// A trunk name.
    pub trunk: Option<String>,
    /// An incident id.
    pub incident: Option<i64>,
    /// A verdict id.
    pub verdict_id: Option<String>,
}

impl Filter {
    /// The WHERE clause and its parameters; `before` is the cursor.
    fn clause(&self, before: Option<i64>) -> (String, Vec<Value>) {
        let mut w = Vec::new();
        let mut p: Vec<Value> = Vec::new();
        let arg = |v: Value, p: &mut Vec<Value>| {
            p.push(v);
            format!("?{}", p.len())
        };
        if let Some(n) = &self.number {
            let a = arg(Value::Text(n.clone()), &mut p);
            w.push(format!("(a = {a} OR b = {a})"));
        }
        if let Some(t) = self.since_us {
            w.push(format!("ts_us >= {}", arg(Value::Integer(t), &mut p)));
        }
        if let Some(t) = self.until_us {
            w.push(format!("ts_us < {}", arg(Value::Integer(t), &mut p)));
        }
        if let Some(d) = &self.decision {
            w.push(format!(
                "decision = {}",
                arg(Value::Text(d.clone()), &mut p)
            ));
        }
        if let Some(r) = &self.rule {
            w.push(format!(
                "id IN (SELECT call FROM call_rules WHERE rule = {})",
                arg(Value::Text(r.clone()), &mut p)
            ));
        }
        if let Some(t) = &self.trunk {
            w.push(format!("trunk = {}", arg(Value::Text(t.clone()), &mut p)));
        }
        if let Some(i) = self.incident {
            w.push(format!("incident = {}", arg(Value::Integer(i), &mut p)));
        }
        if let Some(v) = &self.verdict_id {
            w.push(format!(
                "verdict_id = {}",
                arg(Value::Text(v.to_ascii_lowercase()), &mut p)
            ));
        }
        if let Some(c) = before {
            w.push(format!("id < {}", arg(Value::Integer(c), &mut p)));
        }
        let clause = if w.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", w.join(" AND "))
        };
        (clause, p)
    }
}

/// One page of calls, newest first, and the cursor for the next (none when
/// this was the last).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Page {
    /// The calls.
    pub calls: Vec<Record>,
    /// Pass it back to get the next page.
    pub next: Option<i64>,
}

/// The largest page a query returns.
pub const MAX_PAGE: usize = 1000;

/// One page of calls matching `f`, newest first, older than `before`.
pub fn calls(
    conn: &Connection,
    f: &Filter,
    before: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Page> {
    let limit = limit.clamp(1, MAX_PAGE);
    let (clause, mut p) = f.clause(before);
    p.push(Value::Integer(limit as i64 + 1));
    let sql = format!(
        "SELECT {COLUMNS} FROM calls {clause} ORDER BY id DESC LIMIT ?{}",
        p.len()
    );
    let mut st = conn.prepare_cached(&sql)?;
    let mut calls = st
        .query_map(rusqlite::params_from_iter(p), Record::from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let next = if calls.len() > limit {
        calls.truncate(limit);
        calls.last().map(|c| c.id)
    } else {
        None
    };
    Ok(Page { calls, next })
}

/// Every call matching `f`, newest first, handed to `each` a row at a time
/// (an export streams without holding the result). `each` returns false
/// to stop. Returns the rows handed over.
pub fn export(
    conn: &Connection,
    f: &Filter,
    mut each: impl FnMut(Record) -> bool,
) -> rusqlite::Result<u64> {
    let (clause, p) = f.clause(None);
    let sql = format!("SELECT {COLUMNS} FROM calls {clause} ORDER BY id DESC");
    let mut st = conn.prepare(&sql)?;
    let mut rows = st.query(rusqlite::params_from_iter(p))?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        n += 1;
        if !each(Record::from_row(r)?) {
            break;
        }
    }
    Ok(n)
}

/// How many calls of one kind fell in one time bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// The bucket's start, µs since the epoch.
    pub bucket_us: i64,
    /// The decision or the rule id.
    pub key: String,
    /// Calls.
    pub calls: u64,
}

/// Rows a counts answer holds at most, per kind.
pub const MAX_COUNTS: usize = 10_000;

/// Counts of calls matching `f` per decision and per rule, in buckets of
/// `bucket_us`, oldest first (at most [`MAX_COUNTS`] rows of each).
pub fn counts(
    conn: &Connection,
    f: &Filter,
    bucket_us: i64,
) -> rusqlite::Result<(Vec<Count>, Vec<Count>)> {
    let bucket_us = bucket_us.max(1_000_000);
    let (clause, mut p) = f.clause(None);
    p.push(Value::Integer(bucket_us));
    let b = p.len();
    let per_decision = format!(
        "SELECT (ts_us / ?{b}) * ?{b} AS bucket, decision, count(*) FROM calls {clause}
         GROUP BY bucket, decision ORDER BY bucket, decision LIMIT {MAX_COUNTS}"
    );
    let per_rule = format!(
        "SELECT (c.ts_us / ?{b}) * ?{b} AS bucket, r.rule, count(*)
         FROM call_rules r JOIN calls c ON c.id = r.call
         WHERE c.id IN (SELECT id FROM calls {clause})
         GROUP BY bucket, r.rule ORDER BY bucket, r.rule LIMIT {MAX_COUNTS}"
    );
    let run = |sql: &str| -> rusqlite::Result<Vec<Count>> {
        let mut st = conn.prepare(sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(p.iter()), |r| {
            Ok(Count {
                bucket_us: r.get(0)?,
                key: r.get(1)?,
                calls: r.get::<_, i64>(2)? as u64,
            })
        })?;
        rows.collect()
    };
    Ok((run(&per_decision)?, run(&per_rule)?))
}
