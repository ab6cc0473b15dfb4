//! The PostgreSQL recorder port ([`PgStore`], a [`RecordWriter`]): each
//! node's writer thread commits its batches into the one shared store.
//!
//! **Idempotent inserts.** A batch whose COMMIT was cut off (the
//! connection lost while committing) may or may not be in the store; the
//! recorder keeps it in the record queue and tries it again as it is. A
//! call's identity is its verdict id with its time (`UNIQUE (verdict_id,
//! ts_us)`; a partitioned table's unique key must hold the partition
//! key, and a retried record carries both unchanged). A batch first
//! reads which of its calls the store holds already and groups only the
//! others into incidents; they are then inserted with `ON CONFLICT DO
//! NOTHING`, and if any turns out to be held after all (an earlier try
//! still committing on a connection the client had given up), the
//! transaction is rolled back and the batch read again: so a call is
//! recorded once and counted in its incident once, whatever the retries.
//!
//! **Errors.** A lost or refused connection, a server shutting down, a
//! deadlock or serialization failure is transient ([`super::pg_error`]):
//! the recorder keeps the batch in the record queue (the spool on local
//! disk, bounded by `[store] queue_mb`) and tries again each second, and
//! the connection is made again on the next try.

use postgres::types::ToSql;
use postgres::Transaction;

use crate::{Options, Record, RecordWriter, Retired, StoreError};

use super::incidents;
use super::partitions::{self, Known, Partitioning};
use super::{pg_error, PgConn};

/// Rows sent in one INSERT (arrays of a column each).
const INSERT_CHUNK: usize = 4096;

/// How often a batch is read again after finding calls an earlier try
/// was still committing, before the store says try later.
const RACE_TRIES: usize = 3;

/// The PostgreSQL store's writer: one node's recorder port on the shared
/// store.
pub struct PgStore {
    conn: PgConn,
    opts: Options,
    how: Partitioning,
    store_id: String,
    /// The partitions as last read (refreshed when a record needs one it
    /// does not list, and once a minute).
    known: Known,
    /// When incidents' lifetimes were last checked (µs).
    lifetimes_checked_us: i64,
    /// When partitions ahead of need were last checked (µs).
    partitions_checked_us: i64,
    /// The data directory's lock, when the node holds one
    /// ([`PgStore::holding`]): kept for as long as the writer lives.
    _lock: Option<std::fs::File>,
}

/// The columns [`super::queries::record_from_row`] reads, in order.
pub const COLUMNS: &str = "id, verdict_id, ts_us, node, call_id, ruri, from_hdr, pai_hdr, a, b,
    from_num, pai_num, trunk, trunk_kind, source, transport, decision, shadow_decision, code,
    score, sampled, explanation, rules, list_hit, lists_version, headers, incident, a_trust,
    caller_role";

/// Separates rule ids in the text the insert splits into `rule_ids`
/// (a rule id is a config identifier: never a control character).
const RULE_SEP: &str = "\u{1f}";

const INSERT: &str = "INSERT INTO calls (verdict_id, ts_us, node, call_id, ruri, from_hdr,
    pai_hdr, a, b, from_num, pai_num, trunk, trunk_kind, source, transport, decision,
    shadow_decision, code, score, sampled, explanation, rules, list_hit, lists_version, headers,
    incident, a_trust, caller_role, rule_ids)
    SELECT u.v, u.ts, $29, u.call_id, u.ruri, u.from_hdr, u.pai_hdr, u.a, u.b, u.from_num,
        u.pai_num, u.trunk, u.trunk_kind, u.source, u.transport, u.decision, u.shadow_decision,
        u.code, u.score, u.sampled, u.explanation, u.rules, u.list_hit, u.lists_version,
        u.headers, u.incident, u.a_trust, u.caller_role, string_to_array(u.rule_ids, $30)
    FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
        $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
        $14::text[], $15::text[], $16::text[], $17::int4[], $18::int8[], $19::bool[],
        $20::text[], $21::text[], $22::text[], $23::text[], $24::bytea[], $25::int8[],
        $26::text[], $27::text[], $28::text[])
        AS u(v, ts, call_id, ruri, from_hdr, pai_hdr, a, b, from_num, pai_num, trunk,
             trunk_kind, source, transport, decision, shadow_decision, code, score, sampled,
             explanation, rules, list_hit, lists_version, headers, incident, a_trust,
             caller_role, rule_ids)
    ON CONFLICT (verdict_id, ts_us) DO NOTHING";

/// Opens the shared store at `url` as node `opts.node`'s writer: brings
/// every component's schema up to date (once across racing nodes), reads
/// or makes the store's id, and makes today's and tomorrow's partitions.
/// The server must answer now: an unreachable one is a (transient) error
/// the caller reports at start.
pub fn open(url: &str, opts: Options, how: Partitioning) -> Result<PgStore, StoreError> {
    let conn = PgConn::new(url);
    for (component, steps) in super::schema::COMPONENTS {
        super::migrate(&conn, component, steps)?;
    }
    let store_id = super::meta_value(&conn, "store_id", || {
        super::random_hex(8).map_err(|e| StoreError::internal(conn.at(), e))
    })?;
    let mut s = PgStore {
        conn,
        opts,
        how,
        store_id,
        known: Known::new(),
        lifetimes_checked_us: 0,
        partitions_checked_us: 0,
        _lock: None,
    };
    s.ahead(crate::now_us())?;
    Ok(s)
}

impl PgStore {
    /// The writer holding `lock` (the data directory's, from
    /// [`crate::lock_dir`]: the record queue in it is this node's alone)
    /// for as long as it lives.
    pub fn holding(mut self, lock: std::fs::File) -> PgStore {
        self._lock = Some(lock);
        self
    }

    /// The connection (tests read through it).
    pub fn conn(&self) -> &PgConn {
        &self.conn
    }

    /// This store's node name.
    pub fn node(&self) -> &str {
        &self.opts.node
    }

    /// [`RecordWriter::insert`] with the clock given (tests move it).
    pub fn insert_at(&mut self, recs: &[Record], now_us: i64) -> Result<(), StoreError> {
        self.insert_counted(recs, now_us).map(|_| ())
    }

    /// Makes the partitions of today and tomorrow (at `now_us`) unless
    /// they exist.
    fn ahead(&mut self, now_us: i64) -> Result<(), StoreError> {
        let how = self.how;
        let at = self.conn.at().to_string();
        self.known = self
            .conn
            .with_store(|c| partitions::ensure(c, &at, how, [now_us, now_us + 86_400_000_000]))?;
        self.partitions_checked_us = now_us;
        // Statistics for the partitions being filled, so a search by
        // number is planned on its index (a failure only costs a plan).
        if let Err(e) = self.conn.with(partitions::analyze_changed) {
            tracing::warn!(server = %at, error = %e, "calls partitions could not be analyzed");
        }
        Ok(())
    }

    /// Makes the partitions the batch's times need, before its
    /// transaction: only those within the retention age and at most two
    /// days ahead of `now_us` (a time further off goes to the default
    /// partition, where it is trimmed like any other).
    fn partitions_for(&mut self, recs: &[Record], now_us: i64) -> Result<(), StoreError> {
        let oldest = if self.opts.max_age.is_zero() {
            i64::MIN
        } else {
            now_us.saturating_sub(self.opts.max_age.as_micros() as i64)
        };
        let newest = now_us.saturating_add(2 * 86_400_000_000);
        let mut missing: Vec<i64> = recs
            .iter()
            .map(|r| r.ts_us)
            .filter(|t| (oldest..=newest).contains(t) && !partitions::covered(&self.known, *t))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup_by_key(|t| self.how.range(*t).0);
        let (how, at) = (self.how, self.conn.at().to_string());
        self.known = self
            .conn
            .with_store(|c| partitions::ensure(c, &at, how, missing))?;
        Ok(())
    }

    /// Commits `recs` (each once: those held already are skipped) and
    /// returns how many were new.
    fn insert_counted(&mut self, recs: &[Record], now_us: i64) -> Result<usize, StoreError> {
        if recs.is_empty() {
            return Ok(0);
        }
        self.partitions_for(recs, now_us)?;
        let at = self.conn.at().to_string();
        let (opts, conn) = (&self.opts, &self.conn);
        for _ in 0..RACE_TRIES {
            let done = conn.with_store(|c| {
                let mut tx = c.transaction().map_err(|e| pg_error(&at, e))?;
                let out = insert_tx(&mut tx, recs, opts, now_us).map_err(|e| pg_error(&at, e))?;
                if out.is_some() {
                    tx.commit().map_err(|e| pg_error(&at, e))?;
                }
                Ok(out)
            })?;
            if let Some(n) = done {
                return Ok(n);
            }
        }
        Err(StoreError::Backend {
            at,
            transient: true,
            source: "calls of this batch were being committed by an earlier try; try again".into(),
        })
    }

    /// Records in the calls log.
    pub fn count(&self) -> Result<u64, StoreError> {
        self.conn
            .with(|c| c.query_one("SELECT count(*) FROM calls", &[]))
            .map(|r| r.get::<_, i64>(0).max(0) as u64)
    }
}

/// One try of a batch in `tx`: `None` when a call turned out to be held
/// already between the read and the insert (the caller rolls back and
/// reads again), else how many calls were new.
fn insert_tx(
    tx: &mut Transaction<'_>,
    recs: &[Record],
    opts: &Options,
    now_us: i64,
) -> Result<Option<usize>, postgres::Error> {
    let lo = recs.iter().map(|r| r.ts_us).min().unwrap_or(0);
    let hi = recs.iter().map(|r| r.ts_us).max().unwrap_or(0);
    let ids: Vec<&str> = recs.iter().map(|r| r.verdict_id.as_str()).collect();
    let held: std::collections::HashSet<(String, i64)> = tx
        .query(
            "SELECT verdict_id, ts_us FROM calls
             WHERE ts_us >= $1 AND ts_us <= $2 AND verdict_id = ANY($3)",
            &[&lo, &hi, &ids],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // The batch's new calls, each once.
    let mut seen = std::collections::HashSet::new();
    let fresh: Vec<&Record> = recs
        .iter()
        .filter(|r| {
            let k = (r.verdict_id.clone(), r.ts_us);
            !held.contains(&k) && seen.insert(k)
        })
        .collect();
    let linked = incidents::group_batch(tx, &fresh, &opts.incidents, now_us)?;
    let mut inserted = 0;
    for (chunk, links) in fresh.chunks(INSERT_CHUNK).zip(linked.chunks(INSERT_CHUNK)) {
        inserted += insert_rows(tx, chunk, links, &opts.node)?;
    }
    if inserted != fresh.len() as u64 {
        return Ok(None);
    }
    if let Some(seq) = recs.iter().map(|r| r.id_seq).max().filter(|s| *s > 0) {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO kuzet_nodes (node, verdict_seq) VALUES ($1, $2)
             ON CONFLICT (node) DO UPDATE
             SET verdict_seq = greatest(kuzet_nodes.verdict_seq, EXCLUDED.verdict_seq)",
            &[&opts.node, &seq],
        )?;
    }
    Ok(Some(fresh.len()))
}

/// Inserts `recs` (a column array each, one statement), each linked to
/// its incident (the record's own, if it names one); returns how many
/// rows went in.
fn insert_rows(
    tx: &mut Transaction<'_>,
    recs: &[&Record],
    links: &[Option<i64>],
    node: &str,
) -> Result<u64, postgres::Error> {
    let col = |f: fn(&Record) -> &str| recs.iter().map(|r| f(r)).collect::<Vec<&str>>();
    let opt = |f: fn(&Record) -> Option<&str>| recs.iter().map(|r| f(r)).collect::<Vec<_>>();
    let v = col(|r| &r.verdict_id);
    let ts: Vec<i64> = recs.iter().map(|r| r.ts_us).collect();
    let call_id = col(|r| &r.call_id);
    let ruri = col(|r| &r.ruri);
    let from_hdr = col(|r| &r.from_hdr);
    let pai_hdr = col(|r| &r.pai_hdr);
    let a = opt(|r| r.a.as_deref());
    let b = opt(|r| r.b.as_deref());
    let from_num = opt(|r| r.from_num.as_deref());
    let pai_num = opt(|r| r.pai_num.as_deref());
    let trunk = opt(|r| r.trunk.as_deref());
    let trunk_kind = opt(|r| r.trunk_kind.as_deref());
    let source = col(|r| &r.source);
    let transport = col(|r| &r.transport);
    let decision = col(|r| &r.decision);
    let shadow = col(|r| &r.shadow_decision);
    let code: Vec<i32> = recs.iter().map(|r| i32::from(r.code)).collect();
    let score: Vec<i64> = recs.iter().map(|r| i64::from(r.score)).collect();
    let sampled: Vec<bool> = recs.iter().map(|r| r.sampled).collect();
    let explanation = col(|r| &r.explanation);
    let rules: Vec<String> = recs
        .iter()
        .map(|r| serde_json::to_string(&r.rules).unwrap_or_else(|_| "[]".into()))
        .collect();
    let list_hit: Vec<Option<String>> = recs
        .iter()
        .map(|r| {
            r.list_hit
                .as_ref()
                .and_then(|l| serde_json::to_string(l).ok())
        })
        .collect();
    let lists_version = col(|r| &r.lists_version);
    let headers: Vec<&[u8]> = recs.iter().map(|r| r.headers.as_slice()).collect();
    let incident: Vec<Option<i64>> = recs
        .iter()
        .zip(links)
        .map(|(r, l)| r.incident.or(*l))
        .collect();
    let a_trust = col(|r| &r.a_trust);
    let caller_role = col(|r| &r.caller_role);
    let rule_ids: Vec<String> = recs
        .iter()
        .map(|r| {
            let mut ids: Vec<&str> = r.rules.iter().map(|h| h.id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            ids.join(RULE_SEP)
        })
        .collect();
    let params: [&(dyn ToSql + Sync); 30] = [
        &v,
        &ts,
        &call_id,
        &ruri,
        &from_hdr,
        &pai_hdr,
        &a,
        &b,
        &from_num,
        &pai_num,
        &trunk,
        &trunk_kind,
        &source,
        &transport,
        &decision,
        &shadow,
        &code,
        &score,
        &sampled,
        &explanation,
        &rules,
        &list_hit,
        &lists_version,
        &headers,
        &incident,
        &a_trust,
        &caller_role,
        &rule_ids,
        &node,
        &RULE_SEP,
    ];
    tx.execute(INSERT, &params)
}

impl RecordWriter for PgStore {
    fn location(&self) -> String {
        self.conn.at().to_string()
    }

    fn insert(&mut self, recs: &[Record]) -> Result<(), StoreError> {
        self.insert_at(recs, crate::now_us())
    }

    /// Every call the store holds already (by verdict id and time) is
    /// skipped, in the same statement that inserts the others.
    fn insert_replayed(&mut self, recs: Vec<Record>) -> Result<usize, StoreError> {
        let mut n = 0;
        for chunk in recs.chunks(INSERT_CHUNK) {
            n += self.insert_counted(chunk, crate::now_us())?;
        }
        Ok(n)
    }

    fn tick(&mut self, now_us: i64) -> Result<(), StoreError> {
        let lifetimes = now_us - self.lifetimes_checked_us >= 60_000_000;
        let policy = &self.opts.incidents;
        self.conn.with(|c| {
            let mut tx = c.transaction()?;
            incidents::tick(&mut tx, policy, now_us, lifetimes)?;
            tx.commit()
        })?;
        if lifetimes {
            self.lifetimes_checked_us = now_us;
        }
        if now_us - self.partitions_checked_us >= 60_000_000 {
            self.ahead(now_us)?;
        }
        Ok(())
    }

    fn probe(&mut self, now_us: i64) -> Result<(), StoreError> {
        let node = &self.opts.node;
        self.conn.with(|c| {
            c.execute(
                "INSERT INTO kuzet_nodes (node, last_probe_us) VALUES ($1, $2)
                 ON CONFLICT (node) DO UPDATE SET last_probe_us = EXCLUDED.last_probe_us",
                &[node, &now_us],
            )
            .map(|_| ())
        })
    }

    /// By age: the oldest partition wholly older than the age and not
    /// exempt, dropped, else a chunk of the default partition's old rows.
    /// By size: the oldest partition not exempt (never the newest in
    /// use), dropped, while the store is over its limit.
    /// (`super::partitions` says what is exempt.)
    fn retire_chunk(&mut self, now_us: i64) -> Result<Retired, StoreError> {
        let chunk = self.opts.retire_chunk.max(1) as i64;
        if !self.opts.max_age.is_zero() {
            let cutoff = now_us.saturating_sub(self.opts.max_age.as_micros() as i64);
            let n = self
                .conn
                .with(|c| match partitions::drop_oldest(c, cutoff)? {
                    Some(n) => Ok(Some(n)),
                    None => {
                        partitions::trim_default(c, cutoff, chunk).map(|n| (n > 0).then_some(n))
                    }
                })?;
            if let Some(n) = n {
                self.known.retain(|(_, hi, _)| *hi > cutoff);
                return Ok(Retired {
                    n: n as usize,
                    over_size: false,
                });
            }
        }
        if self.opts.max_bytes > 0 && self.used_bytes()? > self.opts.max_bytes {
            // Only partitions older than the newest holding calls are
            // dropped for size (never that one, nor those made ahead).
            let newest = self.conn.with(|c| {
                c.query_one(
                    "SELECT max(lo_us) FROM call_partitions
                     WHERE lo_us <= (SELECT max(ts_us) FROM calls)",
                    &[],
                )
                .map(|r| r.get::<_, Option<i64>>(0))
            })?;
            let dropped = match newest {
                Some(lo) => self.conn.with(|c| partitions::drop_oldest(c, lo))?,
                None => None,
            };
            return Ok(match dropped {
                Some(n) => Retired {
                    n: (n as usize).max(1),
                    over_size: false,
                },
                None => Retired {
                    n: 0,
                    over_size: true,
                },
            });
        }
        Ok(Retired::default())
    }

    /// Bytes the calls' partitions (with their indexes and TOAST), the
    /// incidents and the outbox take on the server.
    fn used_bytes(&self) -> Result<u64, StoreError> {
        self.conn.with(|c| {
            c.query_one(
                "SELECT (coalesce((SELECT sum(pg_total_relation_size(relid))
                          FROM pg_partition_tree('calls') WHERE isleaf), 0)
                        + pg_total_relation_size('incidents')
                        + pg_total_relation_size('outbox'))::bigint",
                &[],
            )
            .map(|r| r.get::<_, i64>(0).max(0) as u64)
        })
    }

    fn store_id(&self) -> &str {
        &self.store_id
    }

    /// Kept per node (by its name) in the shared store; a PostgreSQL
    /// store never held records from before opaque ids, so the prefix
    /// finds nothing more.
    fn last_verdict_seq(&self, _node_prefix: &str) -> Result<Option<u64>, StoreError> {
        let node = &self.opts.node;
        self.conn
            .with(|c| {
                c.query_opt(
                    "SELECT verdict_seq FROM kuzet_nodes WHERE node = $1 AND verdict_seq > 0",
                    &[node],
                )
            })
            .map(|r| r.map(|r| r.get::<_, i64>(0).max(0) as u64))
    }

    /// Made by the first node that asks, then the same for every node.
    fn verdict_key(&self) -> Result<[u8; 16], StoreError> {
        let hex = super::meta_value(&self.conn, "verdict_key", || {
            super::random_hex(16).map_err(|e| StoreError::internal(self.conn.at(), e))
        })?;
        let mut k = [0u8; 16];
        for (i, b) in k.iter_mut().enumerate() {
            *b = hex
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    StoreError::internal(
                        self.conn.at(),
                        "the stored verdict key is not 32 hex digits",
                    )
                })?;
        }
        Ok(k)
    }
}
