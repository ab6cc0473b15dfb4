//! The PostgreSQL store against a real server of the test's own
//! ([`PgServer`]), a database per store: the port suite shared with SQLite
//! (`crate::suite`), and what only a shared server has: retried and
//! interrupted batches, partitions and their retention, several nodes on
//! one store, the fenced outbox.

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use kuzet_sim::servers::PgServer;

use super::*;
use crate::centre::SqliteCentre;
use crate::days::days_from_civil;
use crate::ports::{Outbox, Queries};
use crate::query::Filter;
use crate::suite::{self, opts, rec, report_policy};
use crate::{Options, Record, RecordWriter, StoreError};

const DAY: i64 = 86_400_000_000;

/// 2024-03-01 00:00 UTC, µs.
fn base() -> i64 {
    days_from_civil(2024, 3, 1) * DAY
}

fn server() -> PgServer {
    PgServer::start().expect("PostgreSQL (scripts/install-deps.sh installs it)")
}

struct PgHarness {
    store: PgStore,
    ports: Ports,
}

impl suite::Harness for PgHarness {
    fn writer(&mut self) -> &mut dyn RecordWriter {
        &mut self.store
    }

    fn insert_at(&mut self, recs: &[Record], now_us: i64) {
        self.store.insert_at(recs, now_us).unwrap();
    }

    fn ports(&self) -> &Ports {
        &self.ports
    }
}

#[test]
fn the_port_suite_holds_on_postgres() {
    let pg = server();
    let scratch = tempfile::tempdir().unwrap();
    let mut urls: HashMap<String, String> = HashMap::new();
    let mut open = |name: &str, o: Options| -> Box<dyn suite::Harness> {
        let url = urls
            .entry(name.to_string())
            .or_insert_with(|| pg.create_db(name).unwrap())
            .clone();
        let store = open(&url, o, Partitioning::Daily).unwrap();
        let centre = Arc::new(SqliteCentre::new(scratch.path()));
        Box::new(PgHarness {
            store,
            ports: ports(&url, None, centre),
        })
    };
    suite::all(&mut open);
}

/// Rows of `sql` (one value per line) through psql.
fn psql(pg: &PgServer, db: &str, sql: &str) -> String {
    pg.psql(db, sql).unwrap()
}

fn blocks(from: i64, n: i64, a: &str) -> Vec<Record> {
    (from..from + n)
        .map(|i| rec(i, a, "+77020000001", "block", &["blocklist"]))
        .collect()
}

/// A batch committed, then tried again as it is (its COMMIT's answer
/// lost): every call once, and the incident counts each once; a batch
/// that repeats a call within itself keeps one.
#[test]
fn a_batch_tried_again_is_recorded_once() {
    let pg = server();
    let url = pg.create_db("retry").unwrap();
    let mut o = opts();
    o.incidents = report_policy();
    let mut s = open(&url, o, Partitioning::Daily).unwrap();
    let batch = blocks(0, 5, "+77011234567");
    let now = batch[4].ts_us;
    s.insert_at(&batch, now).unwrap();
    s.insert_at(&batch, now).unwrap();
    let mut twice = blocks(5, 2, "+77011234567");
    twice.push(twice[0].clone());
    s.insert_at(&twice, now).unwrap();
    assert_eq!(s.count().unwrap(), 7);
    let q = PgQueries::new(&url);
    let inc = q.incidents(None, None, 10).unwrap();
    assert_eq!(inc.len(), 1);
    assert_eq!(inc[0].incident.blocked, 7);
    assert_eq!(inc[0].incident.evidence.samples.len(), 7);
    assert_eq!(psql(&pg, "retry", "SELECT count(*) FROM outbox"), "1");
}

/// Regression: a batch of calls from many distinct sources took an
/// advisory lock per source and was refused by a server whose lock table
/// could not hold them ("out of shared memory": `store_bench compare`,
/// 16,384 sources a batch against a default-configured PostgreSQL), and
/// the recorder tried it again for ever. A batch now locks at most
/// GROUP_LOCK_SLOTS slots: 12,000 sources go in on a server whose lock
/// table (10 a connection) refused them a lock each.
#[test]
fn a_batch_of_more_sources_than_the_servers_lock_table_holds_goes_in() {
    let mut pg = server();
    pg.psql(
        "postgres",
        "ALTER SYSTEM SET max_locks_per_transaction = 10",
    )
    .unwrap();
    pg.restart().unwrap();
    assert_eq!(
        psql(&pg, "postgres", "SHOW max_locks_per_transaction"),
        "10"
    );
    let url = pg.create_db("many_sources").unwrap();
    let mut s = open(&url, opts(), Partitioning::Daily).unwrap();
    let batch: Vec<Record> = (0..12_000)
        .map(|i| {
            rec(
                i,
                &format!("+7701{:07}", i),
                "+77020000001",
                "block",
                &["blocklist"],
            )
        })
        .collect();
    s.insert_at(&batch, batch[11_999].ts_us).unwrap();
    assert_eq!(s.count().unwrap(), 12_000);
    assert_eq!(
        psql(
            &pg,
            "many_sources",
            "SELECT count(*) FROM incidents WHERE kind = 'source'"
        ),
        "12000"
    );
}

/// The server stopped in the middle of a large batch: the insert fails
/// as transient (or had committed just before), a batch while it is down
/// fails as transient, and once it is back the same batches go in, each
/// call once.
#[test]
fn a_server_stopped_mid_insert_is_transient_and_nothing_is_doubled() {
    let mut pg = server();
    let url = pg.create_db("midway").unwrap();
    let mut s = open(&url, opts(), Partitioning::Daily).unwrap();
    let big: Vec<Record> = (0..40_000)
        .map(|n| {
            let mut r = rec(
                n,
                &format!("+7701{:07}", n % 5000),
                "+77020000001",
                "block",
                &["blocklist"],
            );
            r.headers = vec![b'h'; 1500];
            r
        })
        .collect();
    let now = big[0].ts_us;
    let big = Arc::new(big);
    let b = big.clone();
    let writer = std::thread::spawn(move || {
        let r = s.insert_at(&b, now);
        (s, r)
    });
    // Stopped once the insert is running (or, if it was quicker than the
    // watch, right after it).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let busy = pg
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'
                 AND query LIKE 'INSERT INTO calls%'",
            )
            .unwrap_or_default();
        if busy != "0" || writer.is_finished() || Instant::now() > deadline {
            break;
        }
    }
    pg.stop();
    let (mut s, first) = writer.join().unwrap();
    if let Err(e) = &first {
        assert!(e.is_transient(), "{e}");
        assert!(e.to_string().contains("postgres://kuzet@127.0.0.1"), "{e}");
    }
    // Down: a batch is refused as transient, naming the server.
    let small = blocks(100_000, 3, "+77019999999");
    let e = s.insert_at(&small, now).unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(s.used_bytes().unwrap_err().is_transient());
    pg.restart().unwrap();
    // Back: the recorder's retries, as it makes them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = s.insert_at(&big, now) {
        assert!(e.is_transient() && Instant::now() < deadline, "{e}");
    }
    s.insert_at(&small, now).unwrap();
    s.insert_at(&big, now).unwrap();
    assert_eq!(s.count().unwrap(), 40_003);
    let dup = psql(
        &pg,
        "midway",
        "SELECT count(*) FROM (SELECT verdict_id FROM calls GROUP BY verdict_id
         HAVING count(*) > 1) d",
    );
    assert_eq!(dup, "0");
}

/// Partition of each row of `db`'s calls, with its count.
fn spread(pg: &PgServer, db: &str) -> String {
    psql(
        pg,
        db,
        "SELECT string_agg(p || ':' || n, ' ' ORDER BY p) FROM
         (SELECT tableoid::regclass::text AS p, count(*) AS n FROM calls GROUP BY 1) x",
    )
}

/// Records of several days land in their days' partitions (made as they
/// are needed, the default partition's rows moved in); retention drops
/// whole partitions past the age, never one holding calls of an incident
/// still open, until it closes.
#[test]
fn partitions_hold_their_days_and_retention_drops_them_whole_but_not_an_open_incidents() {
    let pg = server();
    let url = pg.create_db("parts").unwrap();
    let mut o = opts();
    o.max_age = Duration::from_secs(2 * 86_400);
    o.incidents.window_us = 7 * DAY;
    o.incidents.close_after_us = 2 * DAY;
    let mut s = open(&url, o, Partitioning::Daily).unwrap();
    // One call a day for five days, each of its own source, at 01:00;
    // day 1's source calls again on day 4 (one incident, days 1 to 4).
    let at = |day: i64| base() + day * DAY + 3_600_000_000;
    for day in 0..5 {
        let mut r = rec(
            day,
            &format!("+770100000{day}"),
            "+77020000001",
            "block",
            &["blocklist"],
        );
        r.ts_us = at(day);
        s.insert_at(&[r], at(day)).unwrap();
    }
    let mut again = rec(10, "+7701000001", "+77020000001", "block", &["blocklist"]);
    again.ts_us = at(4) + 1;
    // A record ten days ahead of the writer's clock goes to the default
    // partition; it moves into its own once the clock nears it.
    let mut ahead = rec(11, "+7701999999", "+77020000001", "flag", &[]);
    ahead.ts_us = at(14);
    s.insert_at(&[again, ahead.clone()], at(4) + 1).unwrap();
    assert_eq!(
        spread(&pg, "parts"),
        "calls_20240301:1 calls_20240302:1 calls_20240303:1 calls_20240304:1 \
         calls_20240305:2 calls_default:1"
    );
    let mut next = rec(12, "+7701999999", "+77020000001", "flag", &[]);
    next.ts_us = at(14) + 1;
    s.insert_at(&[next], at(13)).unwrap();
    let spread_now = spread(&pg, "parts");
    assert!(
        spread_now.contains("calls_20240315:2") && !spread_now.contains("calls_default"),
        "{spread_now}"
    );

    // Quiet for two days: every incident but day 1's (its last call on
    // day 4) and day 3's closes.
    let now = at(4) + 3_600_000_000;
    s.tick(now).unwrap();
    let q = PgQueries::new(&url);
    let open_keys: Vec<String> = q
        .incidents(Some("open"), None, 10)
        .unwrap()
        .into_iter()
        .map(|i| i.incident.key)
        .collect();
    assert_eq!(open_keys.len(), 4, "{open_keys:?}");
    // Days 0 and 1 are past the age; day 1 holds an open incident's call.
    let mut retired = Vec::new();
    loop {
        let r = s.retire_chunk(now).unwrap();
        assert!(!r.over_size);
        if r.n == 0 {
            break;
        }
        retired.push(r.n);
    }
    assert_eq!(retired, [1]);
    let left = spread(&pg, "parts");
    assert!(
        !left.contains("calls_20240301") && left.contains("calls_20240302:1"),
        "{left}"
    );
    // Closed: then it goes too.
    let later = at(10);
    s.tick(later).unwrap();
    while s.retire_chunk(later).unwrap().n > 0 {}
    let left = spread(&pg, "parts");
    assert!(
        !left.contains("calls_20240302") && !left.contains("calls_20240305"),
        "{left}"
    );
    assert!(left.contains("calls_20240315:2"), "{left}");
    assert_eq!(
        psql(
            &pg,
            "parts",
            "SELECT count(*) FROM call_partitions WHERE name = 'calls_20240302'"
        ),
        "0"
    );

    // Monthly, as the option asks.
    let url = pg.create_db("monthly").unwrap();
    let mut m = open(&url, opts(), Partitioning::Monthly).unwrap();
    let mut a = rec(1, "+7701", "+7702", "block", &[]);
    a.ts_us = base() + 20 * DAY;
    let mut b = rec(2, "+7701", "+7702", "block", &[]);
    b.ts_us = base() + 40 * DAY;
    let now = b.ts_us;
    m.insert_at(&[a, b], now).unwrap();
    assert_eq!(spread(&pg, "monthly"), "calls_20240301:1 calls_20240401:1");
}

/// Over its size limit the store drops its oldest partition, never the
/// newest in use nor one an open incident holds, and says when nothing
/// is left to drop.
#[test]
fn retention_by_size_drops_the_oldest_partitions_and_keeps_the_newest() {
    let pg = server();
    let url = pg.create_db("size").unwrap();
    let mut o = opts();
    o.incidents.enabled = false;
    o.max_bytes = 1;
    let mut s = open(&url, o, Partitioning::Daily).unwrap();
    for day in 0..3 {
        let mut r = rec(day, "+7701", "+7702", "flag", &[]);
        r.ts_us = base() + day * DAY;
        s.insert_at(&[r], base() + day * DAY).unwrap();
    }
    let mut n = 0;
    let last = loop {
        let r = s.retire_chunk(base() + 3 * DAY).unwrap();
        if r.n == 0 {
            break r;
        }
        n += r.n;
    };
    assert!(last.over_size);
    assert_eq!(n, 2);
    assert_eq!(spread(&pg, "size"), "calls_20240303:1");
}

/// Two nodes' writers on one store, grouping the same source's calls at
/// once: one incident holding every call, its submission queued once,
/// and each node's last verdict its own. An investigator on either node
/// sees both nodes' calls.
#[test]
fn two_nodes_make_one_incident_of_one_source_and_queries_see_both() {
    let pg = server();
    let url = pg.create_db("nodes").unwrap();
    let start = Arc::new(Barrier::new(3));
    let mut threads = Vec::new();
    for (k, node) in ["n1", "n2", "n3"].into_iter().enumerate() {
        let mut o = opts();
        o.node = node.into();
        o.incidents = report_policy();
        let (url, start) = (url.clone(), start.clone());
        threads.push(std::thread::spawn(move || {
            let mut s = open(&url, o, Partitioning::Daily).unwrap();
            start.wait();
            for i in 0..20 {
                let n = (k as i64) * 1000 + i;
                let mut r = rec(
                    n,
                    "+77011234567",
                    &format!("+770200{n:05}"),
                    "block",
                    &["blocklist"],
                );
                r.ts_us = base() + i * 1_000_000;
                r.id_seq = n as u64 + 1;
                // Other sources in the same batches, in another order per
                // node, so the batches' locks overlap.
                let mut other = rec(
                    n + 500,
                    &format!("+77015550{:03}", (i + k as i64) % 3),
                    "+77020000002",
                    "block",
                    &["blocklist"],
                );
                other.ts_us = r.ts_us;
                let batch = if k % 2 == 0 {
                    vec![r, other]
                } else {
                    vec![other, r]
                };
                s.insert_at(&batch, base()).unwrap();
            }
            s
        }));
    }
    let stores: Vec<PgStore> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let q = PgQueries::new(&url);
    let of_source: Vec<_> = q
        .incidents(None, None, 100)
        .unwrap()
        .into_iter()
        .filter(|i| i.incident.key == "+77011234567")
        .collect();
    assert_eq!(of_source.len(), 1, "{of_source:?}");
    assert_eq!(of_source[0].incident.blocked, 60);
    assert_eq!(of_source[0].incident.evidence.victims.len(), 60);
    assert_eq!(
        psql(
            &pg,
            "nodes",
            &format!(
                "SELECT count(*) FROM outbox WHERE incident = {}",
                of_source[0].incident.id
            )
        ),
        "1"
    );
    // The other sources too: one incident each.
    assert_eq!(
        psql(
            &pg,
            "nodes",
            "SELECT count(*) FROM incidents GROUP BY kind, key HAVING count(*) > 1"
        ),
        ""
    );
    let calls = q
        .calls(
            &Filter {
                number: Some("+77011234567".into()),
                ..Filter::default()
            },
            None,
            1000,
        )
        .unwrap()
        .calls;
    assert_eq!(calls.len(), 60);
    assert!(calls
        .iter()
        .all(|c| c.incident == Some(of_source[0].incident.id)));
    let mut nodes: Vec<_> = calls.iter().map(|c| c.node.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    assert_eq!(nodes, ["n1", "n2", "n3"]);
    // One store, one id; each node's verdicts its own.
    assert!(stores.iter().all(|s| s.store_id() == stores[0].store_id()));
    let seqs: Vec<_> = stores
        .iter()
        .map(|s| s.last_verdict_seq("").unwrap())
        .collect();
    assert_eq!(seqs, [Some(20), Some(1020), Some(2020)]);
    let keys: Vec<_> = stores.iter().map(|s| s.verdict_key().unwrap()).collect();
    assert!(keys.iter().all(|k| *k == keys[0]));
}

/// A leader that lost its lease writes nothing to the outbox: once a new
/// leader has claimed a higher token, its claim, delivery, retry and dead
/// letter are refused and change nothing.
#[test]
fn the_fenced_outbox_refuses_an_old_leaders_writes() {
    let pg = server();
    let url = pg.create_db("fenced").unwrap();
    let mut o = opts();
    o.incidents = report_policy();
    let mut s = open(&url, o, Partitioning::Daily).unwrap();
    let batch = blocks(0, 3, "+77011234567");
    s.insert_at(&batch, batch[0].ts_us).unwrap();
    let old = Arc::new(Fence::new("register"));
    let new = Arc::new(Fence::new("register"));
    let old_box = PgOutbox::new(&url, Some(old.clone()));
    let new_box = PgOutbox::new(&url, Some(new.clone()));
    let now = batch[0].ts_us + 10_000_000;
    // Not holding the lease: refused.
    let due = old_box.due(now, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert!(matches!(
        old_box.claim(due[0].id),
        Err(StoreError::Fenced { token: 0, .. })
    ));
    old.hold(1);
    assert!(old_box.claim(due[0].id).unwrap().is_ok());
    new.hold(2);
    fence_claim(&PgConn::new(&url), &new).unwrap();
    for e in [
        old_box.claim(due[0].id).map(|_| ()).unwrap_err(),
        old_box.delivered(&due[0], "CASE-OLD").unwrap_err(),
        old_box.retry(&due[0], now, "x").unwrap_err(),
        old_box.dead_letter(&due[0], "x").unwrap_err(),
    ] {
        assert!(
            matches!(
                e,
                StoreError::Fenced {
                    token: 1,
                    seen: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert!(!e.is_transient());
    }
    let q = PgQueries::new(&url);
    let v = q.incident(due[0].incident).unwrap().unwrap();
    assert_eq!(
        (v.incident.register_state.as_str(), v.delivered_seq),
        ("pending", 0)
    );
    assert_eq!(new_box.due(now, 10).unwrap()[0].attempts, 1);
    new_box.delivered(&due[0], "CASE-NEW").unwrap();
    let v = q.incident(due[0].incident).unwrap().unwrap();
    assert_eq!(
        (v.incident.register_case.as_str(), v.delivered_seq),
        ("CASE-NEW", 1)
    );
    // Unfenced (one node): as SQLite.
    assert_eq!(PgOutbox::new(&url, None).backlog().unwrap().pending, 0);
}

/// A big export streams from one view: rows committed meanwhile are not
/// in it, and it stops when asked.
#[test]
fn an_export_reads_one_view_while_the_writer_goes_on() {
    let pg = server();
    let url = pg.create_db("export").unwrap();
    let mut s = open(&url, opts(), Partitioning::Daily).unwrap();
    let first: Vec<Record> = (0..3000)
        .map(|n| rec(n, &format!("+7701{n:07}"), "+7702", "flag", &["wangiri"]))
        .collect();
    s.insert_at(&first, first[0].ts_us).unwrap();
    let q = PgQueries::new(&url);
    let mut seen = 0u64;
    let mut added = false;
    let n = q
        .export(&Filter::default(), &mut |_| {
            seen += 1;
            if !added {
                // The writer commits more while the export is under way.
                let more: Vec<Record> = (5000..5100)
                    .map(|n| rec(n, &format!("+7701{n:07}"), "+7702", "flag", &[]))
                    .collect();
                s.insert_at(&more, more[0].ts_us).unwrap();
                added = true;
            }
            true
        })
        .unwrap();
    assert_eq!((n, seen), (3000, 3000));
    assert_eq!(s.count().unwrap(), 3100);
}

/// A schema newer than this build's is refused by name, untouched.
#[test]
fn a_newer_schema_is_refused() {
    let pg = server();
    let url = pg.create_db("newer").unwrap();
    drop(open(&url, opts(), Partitioning::Daily).unwrap());
    psql(
        &pg,
        "newer",
        "UPDATE kuzet_schema SET version = 99 WHERE component = 'calls'",
    );
    let e = open(&url, opts(), Partitioning::Daily).err().unwrap();
    assert!(
        matches!(e, StoreError::NewerSchema { found: 99, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("calls"), "{e}");
}

/// A partition being filled is analyzed by the writer's upkeep, so a
/// search by number is planned on the numbers' indexes rather than by
/// walking every row backwards along the primary key (what the server
/// chose for a partition it had no statistics for: `store_bench
/// compare`, 0.5-1.6 s a search over a million calls).
#[test]
fn a_partition_being_filled_is_analyzed_so_a_search_by_number_uses_its_index() {
    let pg = server();
    let url = pg.create_db("stats").unwrap();
    let mut s = open(&url, opts(), Partitioning::Daily).unwrap();
    // 20,000 calls of the last 20 seconds (the writer's upkeep runs on
    // the real clock it opened with).
    let start = crate::now_us() - 20_000_000;
    let mut last = 0;
    for chunk in 0..4i64 {
        let recs: Vec<Record> = (chunk * 5000..(chunk + 1) * 5000)
            .map(|i| {
                let a = format!("+7701{:07}", i % 2000);
                let mut r = rec(i, &a, "+77020000001", "block", &["blocklist"]);
                r.ts_us = start + i * 1000;
                r
            })
            .collect();
        last = recs[recs.len() - 1].ts_us;
        s.insert_at(&recs, last).unwrap();
    }
    let analyzed = || {
        psql(
            &pg,
            "stats",
            "SELECT count(*) FROM pg_stat_user_tables s JOIN pg_inherits i ON i.inhrelid = s.relid \
             WHERE i.inhparent = 'calls'::regclass AND s.n_live_tup > 0 AND s.last_analyze IS NOT NULL",
        )
    };
    assert_eq!(analyzed(), "0", "nothing analyzed before the upkeep");
    // The upkeep runs once a minute of the writer's clock; the server's
    // statistics of what changed arrive within a second or so.
    let t = std::time::Instant::now();
    let mut now = last;
    while analyzed() == "0" {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the upkeep never analyzed the partitions: {}",
            psql(
                &pg,
                "stats",
                "SELECT relname, n_live_tup, n_mod_since_analyze, last_analyze, last_autoanalyze FROM pg_stat_user_tables"
            )
        );
        now += 61_000_000;
        s.tick(now).unwrap();
    }
    let plan = psql(
        &pg,
        "stats",
        "EXPLAIN SELECT id FROM calls WHERE (a = '+77010000007' OR b = '+77010000007') \
         ORDER BY id DESC LIMIT 50",
    );
    assert!(
        !plan.contains("Index Scan Backward") && plan.contains("Bitmap Index Scan"),
        "a search by number walks the partition:\n{plan}"
    );
}
