//! The store against real SQLite files in temporary directories.

use super::*;
use crate::query::{calls, counts, export, Filter};

use crate::suite::{entry, opts, rec, report_policy};

#[test]
fn records_come_back_whole_and_queries_filter_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), opts()).unwrap();
    let mut batch = Vec::new();
    for n in 0..25 {
        let (a, rules) = if n % 5 == 0 {
            ("+77011234567", vec!["blocklist"])
        } else {
            ("+77019999999", vec!["velocity_1m", "fan_out"])
        };
        batch.push(rec(n, a, &format!("+7702000{n:04}"), "block", &rules));
    }
    batch[3].decision = "flag".into();
    s.insert(&batch).unwrap();
    assert_eq!(s.count().unwrap(), 25);

    let r = open_reader(dir.path()).unwrap();
    let by_number = Filter {
        number: Some("+77011234567".into()),
        ..Filter::default()
    };
    let p = calls(&r, &by_number, None, 100).unwrap();
    let ids: Vec<_> = p.calls.iter().map(|c| c.call_id.clone()).collect();
    assert_eq!(ids, ["call-20", "call-15", "call-10", "call-5", "call-0"]);
    assert_eq!(p.next, None);
    let got = &p.calls[4];
    let mut want = batch[0].clone();
    want.id = got.id;
    want.node = "test-node".into();
    // Grouped into its source's incident as it was written.
    assert!(got.incident.is_some());
    want.incident = got.incident;
    assert_eq!(got, &want);

    // The callee side matches too.
    let callee = Filter {
        number: Some("+77020000007".into()),
        ..Filter::default()
    };
    assert_eq!(calls(&r, &callee, None, 10).unwrap().calls.len(), 1);

    // Pages of 10: 10, 10, 5, and the cursor ends.
    let all = Filter::default();
    let p1 = calls(&r, &all, None, 10).unwrap();
    let p2 = calls(&r, &all, p1.next, 10).unwrap();
    let p3 = calls(&r, &all, p2.next, 10).unwrap();
    assert_eq!(
        (p1.calls.len(), p2.calls.len(), p3.calls.len()),
        (10, 10, 5)
    );
    assert!(p3.next.is_none());
    assert!(p1.calls[9].id > p2.calls[0].id);

    let by_rule = Filter {
        rule: Some("fan_out".into()),
        decision: Some("block".into()),
        ..Filter::default()
    };
    assert_eq!(calls(&r, &by_rule, None, 100).unwrap().calls.len(), 19);
    let by_id = Filter {
        verdict_id: Some(format!("{:024X}", 7)),
        ..Filter::default()
    };
    assert_eq!(
        calls(&r, &by_id, None, 100).unwrap().calls[0].call_id,
        "call-7"
    );
    let window = Filter {
        since_us: Some(batch[10].ts_us),
        until_us: Some(batch[12].ts_us),
        ..Filter::default()
    };
    assert_eq!(calls(&r, &window, None, 100).unwrap().calls.len(), 2);

    let mut seen = 0;
    assert_eq!(
        export(&r, &all, |_| {
            seen += 1;
            true
        })
        .unwrap(),
        25
    );
    assert_eq!(seen, 25);

    let (per_decision, per_rule) = counts(&r, &all, 3_600_000_000).unwrap();
    let total: u64 = per_decision.iter().map(|c| c.calls).sum();
    assert_eq!(total, 25);
    assert!(per_decision.iter().any(|c| c.key == "flag" && c.calls == 1));
    assert_eq!(
        per_rule
            .iter()
            .filter(|c| c.key == "blocklist")
            .map(|c| c.calls)
            .sum::<u64>(),
        5
    );
}

#[test]
fn retention_by_age_goes_in_chunks_and_keeps_the_young() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.max_age = Duration::from_secs(10);
    // No incidents: an open one would keep its calls whatever their age.
    o.incidents.enabled = false;
    let mut s = open(dir.path(), o).unwrap();
    let batch: Vec<_> = (0..35)
        .map(|n| rec(n, "+77011234567", "+77020000001", "block", &["blocklist"]))
        .collect();
    s.insert(&batch).unwrap();
    // "Now" is 10 s after record 29: records 0..=19 are older than 10 s.
    let now = batch[29].ts_us;
    let mut chunks = Vec::new();
    loop {
        let n = s.retire_chunk(now).unwrap().n;
        if n == 0 {
            break;
        }
        chunks.push(n);
    }
    assert_eq!(chunks, [10, 9]);
    assert_eq!(s.count().unwrap(), 16);
    let rules: i64 = s
        .conn()
        .query_row("SELECT count(*) FROM call_rules", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rules, 16);
}

#[test]
fn retention_by_size_trims_the_oldest_until_under_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.max_bytes = 1 << 20;
    o.retire_chunk = 50;
    o.incidents.enabled = false;
    let mut s = open(dir.path(), o).unwrap();
    // Flags: retention by size takes allows and flags, never a block.
    let mut batch: Vec<_> = (0..3000)
        .map(|n| rec(n, "+77011234567", "+77020000001", "flag", &["flaglist"]))
        .collect();
    for r in &mut batch {
        r.headers = vec![b'x'; 1000];
    }
    s.insert(&batch).unwrap();
    assert!(s.used_bytes().unwrap() > 1 << 20);
    while s.retire_chunk(0).unwrap().n > 0 {}
    assert!(s.used_bytes().unwrap() <= 1 << 20);
    let left = s.count().unwrap();
    assert!(left > 100 && left < 3000, "{left} left");
    // The newest survive.
    let newest: String = s
        .conn()
        .query_row(
            "SELECT call_id FROM calls ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(newest, "call-2999");
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), opts()).unwrap());
    {
        let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    let e = open(dir.path(), opts()).err().unwrap();
    assert!(
        matches!(e, StoreError::NewerSchema { found: 99, .. }),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("kuzet.db") && msg.contains("99"), "{msg}");
    let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99);
}

#[test]
fn an_older_schema_is_migrated_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    // A store as version 0 would be: kuzet's, but with no tables yet.
    {
        let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
        c.pragma_update(None, "application_id", schema::APPLICATION_ID)
            .unwrap();
    }
    let mut s = open(dir.path(), opts()).unwrap();
    s.insert(&[rec(1, "+77011234567", "+77020000001", "block", &[])])
        .unwrap();
    drop(s);
    let s = open(dir.path(), opts()).unwrap();
    assert_eq!(s.count().unwrap(), 1);
    let v: i64 = s
        .conn()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, schema::current());
}

#[test]
fn a_foreign_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    let e = open(dir.path(), opts()).err().unwrap();
    assert!(matches!(e, StoreError::Foreign(_)), "{e}");
}

#[test]
fn bad_directories_are_refused_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let e = open(&file, opts()).err().unwrap();
    assert!(e.to_string().contains("plain-file"), "{e}");
    // Even root cannot create a directory in /proc.
    let e = open(Path::new("/proc/kuzet-data"), opts()).err().unwrap();
    assert!(e.to_string().contains("/proc/kuzet-data"), "{e}");
}

#[test]
fn one_data_directory_takes_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path(), opts()).unwrap();
    let e = open(dir.path(), opts()).err().unwrap();
    assert!(matches!(e, StoreError::Locked(_)), "{e}");
    drop(first);
    assert!(open(dir.path(), opts()).is_ok());
}

#[test]
fn the_audit_log_only_grows() {
    let dir = tempfile::tempdir().unwrap();
    let _s = open(dir.path(), opts()).unwrap();
    let c = audit::open(dir.path()).unwrap();
    for i in 0..3 {
        let e = audit::Entry {
            id: 0,
            ts_us: i,
            who: "ana".into(),
            role: "investigator".into(),
            action: "QueryCalls".into(),
            filter: "{}".into(),
            rows: 5,
            outcome: "ok".into(),
            count: 1,
        };
        audit::append(&c, &e).unwrap();
    }
    let got = audit::read(&c, None, 10).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].ts_us, 2);
    assert_eq!(audit::read(&c, Some(got[0].id), 10).unwrap().len(), 2);
}

#[test]
fn calls_group_per_source_within_the_window_and_per_campaign_across_sources() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.incidents = report_policy();
    let mut s = open(dir.path(), o).unwrap();
    // One source, five calls a second apart, to five victims.
    let calls: Vec<_> = (0..5)
        .map(|n| {
            rec(
                n,
                "+77011234567",
                &format!("+7702000000{n}"),
                "block",
                &["blocklist"],
            )
        })
        .collect();
    s.insert_at(&calls, calls[4].ts_us).unwrap();
    // The same source after the 10-minute window: a new incident.
    let late = rec(
        1000,
        "+77011234567",
        "+77020000009",
        "block",
        &["blocklist"],
    );
    s.insert_at(std::slice::from_ref(&late), late.ts_us)
        .unwrap();
    let all = incident::list(s.conn(), None, None, 10).unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let first = &all[1];
    assert_eq!(
        (first.kind.as_str(), first.key.as_str()),
        ("source", "+77011234567")
    );
    assert_eq!((first.blocked, first.flagged), (5, 0));
    assert_eq!(first.evidence.victims.len(), 5);
    assert_eq!(
        first.evidence.rules.iter().collect::<Vec<_>>(),
        ["blocklist"]
    );
    assert_eq!(
        first.evidence.sources.iter().collect::<Vec<_>>(),
        ["192.0.2.1"]
    );
    assert_eq!(first.evidence.samples.len(), 5);
    assert!(first.reportable);
    assert_eq!(first.register_state, "pending");
    assert_eq!(all[0].blocked, 1);
    assert!(!all[0].reportable);
    // Every call links to its source incident.
    let r = open_reader(dir.path()).unwrap();
    let linked = calls_of(&r, first.id);
    assert_eq!(linked, 5);

    // A velocity rule through one trunk ties three callers into a campaign,
    // which is an incident to report only from the third caller on.
    let camp: Vec<_> = (0..3)
        .map(|n| {
            let mut c = rec(
                2000 + n,
                &format!("+7701555000{n}"),
                "+77020000001",
                "block",
                &["velocity_1m"],
            );
            c.trunk = Some("intl-1".into());
            c
        })
        .collect();
    s.insert_at(&camp[..2], camp[1].ts_us).unwrap();
    let c = incident::list(s.conn(), None, None, 10).unwrap();
    let campaign = c.iter().find(|i| i.kind == "campaign").unwrap();
    assert_eq!(campaign.key, "velocity_1m@intl-1");
    assert!(!campaign.reportable);
    s.insert_at(&camp[2..], camp[2].ts_us).unwrap();
    let c = incident::list(s.conn(), None, None, 10).unwrap();
    let campaign = c.iter().find(|i| i.kind == "campaign").unwrap();
    assert_eq!(campaign.evidence.callers_seen, 3);
    assert!(campaign.reportable);
}

fn calls_of(c: &Connection, incident: i64) -> usize {
    calls(
        c,
        &Filter {
            incident: Some(incident),
            ..Filter::default()
        },
        None,
        100,
    )
    .unwrap()
    .calls
    .len()
}

#[test]
fn the_outbox_freezes_what_was_tried_and_updates_follow_in_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.incidents = report_policy();
    let mut s = open(dir.path(), o).unwrap();
    let mk = |n: i64| rec(n, "+77011234567", "+77020000001", "block", &["blocklist"]);
    let t0 = mk(0).ts_us;
    s.insert_at(&[mk(0), mk(1)], t0).unwrap();
    assert!(incident::due(s.conn(), t0 + 10_000_000, 10)
        .unwrap()
        .is_empty());
    s.insert_at(&[mk(2)], t0).unwrap();
    s.insert_at(&[mk(3)], t0).unwrap();
    let due = incident::due(s.conn(), t0 + 10_000_000, 10).unwrap();
    assert_eq!(due.len(), 1);
    // Never tried: the pending submission carries the latest count.
    assert_eq!(
        (
            due[0].seq,
            due[0].kind.as_str(),
            due[0].report.as_ref().unwrap().blocked
        ),
        (1, "submit", 4)
    );
    let frozen = incident::mark_tried(s.conn(), due[0].id).unwrap();
    assert_eq!(frozen.unwrap().blocked, 4);
    // Tried: it never changes again; growth waits for the interval.
    s.insert_at(&[mk(4)], t0 + 1_000_000).unwrap();
    let again = incident::due(s.conn(), t0 + 10_000_000, 10).unwrap();
    assert_eq!(
        (again[0].seq, again[0].report.as_ref().unwrap().blocked),
        (1, 4)
    );
    s.tick(t0 + 61_000_000).unwrap();
    // The update is queued, but never overtakes the submission.
    let pending: i64 = s
        .conn()
        .query_row(
            "SELECT count(*) FROM outbox WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(pending, 2);
    let d = incident::due(s.conn(), t0 + 62_000_000, 10).unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].seq, 1);
    incident::delivered(s.conn(), &d[0], "CASE-1").unwrap();
    let d = incident::due(s.conn(), t0 + 62_000_000, 10).unwrap();
    assert_eq!(
        (
            d[0].seq,
            d[0].kind.as_str(),
            d[0].report.as_ref().unwrap().blocked
        ),
        (2, "update", 5)
    );
    let inc = incident::get(s.conn(), d[0].incident).unwrap().unwrap();
    assert_eq!(
        (inc.state.as_str(), inc.register_case.as_str()),
        ("reported", "CASE-1")
    );
    incident::dead_letter(s.conn(), &d[0], "invalid: victims missing").unwrap();
    let inc = incident::get(s.conn(), d[0].incident).unwrap().unwrap();
    assert_eq!(inc.register_state, "dead_letter");
    assert!(incident::due(s.conn(), t0 + 63_000_000, 10)
        .unwrap()
        .is_empty());
    assert_eq!(
        incident::list(s.conn(), Some("dead_letter"), None, 10)
            .unwrap()
            .len(),
        1
    );
    // Quiet for a day: closed.
    s.tick(t0 + 2 * 86_400_000_000).unwrap();
    let inc = incident::get(s.conn(), d[0].incident).unwrap().unwrap();
    assert_eq!(inc.state, "closed");
}

#[test]
fn a_version_1_store_with_calls_is_migrated_to_the_current_schema() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
        c.execute_batch(schema::MIGRATIONS[0]).unwrap();
        c.pragma_update(None, "application_id", schema::APPLICATION_ID)
            .unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute(
            "INSERT INTO calls (verdict_id, ts_us, node, call_id, ruri, from_hdr, pai_hdr, source,
             transport, decision, shadow_decision, code, score, sampled, explanation, rules,
             lists_version, headers) VALUES ('v', 1, 'n', 'old-call', '', '', '', 's', 'udp',
             'block', 'block', 603, 100, 0, '', '[]', '1', x'')",
            [],
        )
        .unwrap();
    }
    let s = open(dir.path(), opts()).unwrap();
    assert_eq!(s.count().unwrap(), 1);
    assert_eq!(incident::backlog(s.conn()).unwrap(), 0);
    let v: i64 = s
        .conn()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, schema::current());
}

#[test]
fn the_store_keeps_its_id_and_knows_each_nodes_last_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), opts()).unwrap();
    let id = s.store_id().to_string();
    assert_eq!(id.len(), 16);
    let mut a = rec(1, "+77011234567", "+77020000001", "block", &[]);
    a.verdict_id = "1d7ea713000660d935cd989a".into();
    let mut b = rec(2, "+77011234567", "+77020000001", "block", &[]);
    b.verdict_id = "1d7ea713000660d935cd98ff".into();
    let mut other = rec(3, "+77011234567", "+77020000001", "block", &[]);
    other.verdict_id = "ffffffff0000000000000001".into();
    s.insert(&[a, b, other]).unwrap();
    assert_eq!(
        s.last_verdict_seq("1d7ea713").unwrap(),
        Some(0x000660d935cd98ff)
    );
    assert_eq!(s.last_verdict_seq("00000000").unwrap(), None);
    drop(s);
    let s = open(dir.path(), opts()).unwrap();
    assert_eq!(s.store_id(), id, "the id is kept");
    let other_dir = tempfile::tempdir().unwrap();
    assert_ne!(open(other_dir.path(), opts()).unwrap().store_id(), id);
}

/// A source's incident is found again from its latest linked call, across
/// batches and past the sampled allows recorded in between; a closed one
/// is not joined again; and the lookups read the indexes, not the tables.
#[test]
fn a_source_finds_its_open_incident_across_batches_and_never_a_closed_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.incidents = incident::Policy {
        window_us: 600_000_000,
        close_after_us: 3_600_000_000,
        ..incident::Policy::default()
    };
    let mut s = open(dir.path(), o).unwrap();
    let src = "+77011112233";
    let first = rec(0, src, "+77020000001", "block", &["blocklist"]);
    s.insert_at(std::slice::from_ref(&first), first.ts_us)
        .unwrap();
    // Other sources, and this source's sampled allows, between its calls.
    let mut between: Vec<_> = (1..40)
        .map(|n| {
            rec(
                n,
                &format!("+770199900{n:02}"),
                "+77020000002",
                "block",
                &["blocklist"],
            )
        })
        .collect();
    for n in 40..50 {
        let mut allow = rec(n, src, "+77020000003", "allow", &[]);
        allow.sampled = true;
        between.push(allow);
    }
    s.insert_at(&between, between[48].ts_us).unwrap();
    let again = rec(60, src, "+77020000004", "flag", &["wangiri"]);
    s.insert_at(std::slice::from_ref(&again), again.ts_us)
        .unwrap();
    let of_src: Vec<_> = incident::list(s.conn(), None, None, 100)
        .unwrap()
        .into_iter()
        .filter(|i| i.kind == "source" && i.key == src)
        .collect();
    assert_eq!(of_src.len(), 1, "{of_src:?}");
    assert_eq!((of_src[0].blocked, of_src[0].flagged), (1, 1));
    let r = open_reader(dir.path()).unwrap();
    assert_eq!(calls_of(&r, of_src[0].id), 2);

    // An hour of quiet closes it; the source's next call, though within
    // the grouping window of nothing, opens a new incident.
    let later = again.ts_us + 3_600_000_001;
    s.tick(later).unwrap();
    assert_eq!(
        incident::get(s.conn(), of_src[0].id)
            .unwrap()
            .unwrap()
            .state,
        "closed"
    );
    let mut back = rec(70, src, "+77020000005", "block", &["blocklist"]);
    back.ts_us = later;
    s.insert_at(std::slice::from_ref(&back), later).unwrap();
    let open_now: Vec<_> = incident::list(s.conn(), Some("open"), None, 100)
        .unwrap()
        .into_iter()
        .filter(|i| i.key == src)
        .collect();
    assert_eq!(open_now.len(), 1);
    assert_ne!(open_now[0].id, of_src[0].id);

    // The plans: a source through the callers' index, a campaign through
    // its own, and closing reads only the open incidents.
    let plan = |sql: &str| -> String {
        let mut st = s
            .conn()
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let rows = st
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        rows.join("; ")
    };
    let source = plan(
        "SELECT incident FROM (SELECT incident FROM calls WHERE a = '+7'
         AND caller_role IN ('source', '') ORDER BY id DESC LIMIT 64)
         WHERE incident IS NOT NULL LIMIT 1",
    );
    assert!(source.contains("USING INDEX calls_a"), "{source}");
    assert!(!source.contains("TEMP B-TREE"), "{source}");
    let campaign = plan(
        "SELECT id FROM incidents WHERE kind = 'campaign' AND key = 'x'
         AND kind IN ('campaign', 'trunk', 'address') AND state != 'closed'
         ORDER BY id DESC LIMIT 1",
    );
    assert!(
        campaign.contains("USING INDEX incidents_keyed"),
        "{campaign}"
    );
    let closing =
        plan("UPDATE incidents SET state = 'closed' WHERE state != 'closed' AND last_seen_us < 5");
    assert!(closing.contains("USING INDEX incidents_open"), "{closing}");
}

/// The audit log has a file of its own: an entry is written while the
/// recorder holds the calls log's write lock, and an older store's
/// entries (kept in the calls log) are carried over on first open.
#[test]
fn the_audit_log_never_waits_for_the_recorder_and_keeps_older_entries() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), opts()).unwrap();
    // Entries an older kuzet wrote into the calls log's own table.
    let old = open_side_writer(dir.path()).unwrap();
    for (who, ts) in [("old-1", 1), ("old-2", 2)] {
        old.execute(
            "INSERT INTO audit (ts_us, who, role, action, filter, rows, outcome)
             VALUES (?1, ?2, 'investigator', 'QueryCalls', '{}', 1, 'ok')",
            params![ts, who],
        )
        .unwrap();
    }
    drop(old);
    // The recorder is in the middle of a long commit.
    s.conn().execute_batch("BEGIN IMMEDIATE").unwrap();
    let c = audit::open(dir.path()).unwrap();
    c.busy_timeout(Duration::ZERO).unwrap();
    audit::append(&c, &entry("ana", 3)).expect("written while the calls log is locked");
    s.conn().execute_batch("COMMIT").unwrap();
    let got: Vec<_> = audit::read(&c, None, 10)
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.who))
        .collect();
    assert_eq!(
        got,
        [
            (3, "ana".to_string()),
            (2, "old-2".into()),
            (1, "old-1".into())
        ]
    );
    // Opened again, nothing is copied twice.
    drop(c);
    assert_eq!(
        audit::read(&audit::open(dir.path()).unwrap(), None, 10)
            .unwrap()
            .len(),
        3
    );
    // Another application's file in its place is refused.
    std::fs::remove_file(dir.path().join(audit::AUDIT_FILE)).unwrap();
    let _ = std::fs::remove_file(dir.path().join("audit.db-wal"));
    let _ = std::fs::remove_file(dir.path().join("audit.db-shm"));
    let f = Connection::open(dir.path().join(audit::AUDIT_FILE)).unwrap();
    f.execute_batch("PRAGMA application_id = 7; CREATE TABLE t (x);")
        .unwrap();
    drop(f);
    assert!(matches!(
        audit::open(dir.path()),
        Err(StoreError::Foreign(_))
    ));
}

/// Regression (issue 18): with retention by size, 1,500 padded blocked
/// calls from an outsider retired an open incident's calls, though the
/// incident still listed their ids. Retention now keeps every call of an
/// incident that is not closed, and over the size limit takes only allows
/// and flags (a block's verdict id was given to its caller); with nothing
/// else to take, it says the store is over its limit.
#[test]
fn retention_against_a_flood_keeps_open_incidents_and_given_verdict_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.max_bytes = 2 << 20;
    o.retire_chunk = 200;
    let mut s = open(dir.path(), o).unwrap();
    // The evidence: a source blocked three times, an incident.
    let evidence: Vec<_> = (0..3)
        .map(|n| rec(n, "+77011112233", "+77020000001", "block", &["blocklist"]))
        .collect();
    s.insert(&evidence).unwrap();
    // The flood: padded blocks from many outsiders, and padded flags.
    let mut flood: Vec<_> = (10..1510)
        .map(|n| {
            let mut r = rec(
                n,
                &format!("+7701{:07}", n),
                "+77020000002",
                "block",
                &["blocklist"],
            );
            r.headers = vec![b'x'; 3000];
            r
        })
        .collect();
    // And sampled allows, which belong to no incident.
    flood.extend((2000..2600).map(|n| {
        let mut r = rec(n, &format!("+7702{:07}", n), "+77020000003", "allow", &[]);
        r.sampled = true;
        r.headers = vec![b'y'; 3000];
        r
    }));
    s.insert(&flood).unwrap();
    assert!(s.used_bytes().unwrap() > 2 << 20);
    let mut last = Retired::default();
    for _ in 0..100 {
        last = s.retire_chunk(flood[0].ts_us).unwrap();
        if last.n == 0 {
            break;
        }
    }
    assert!(
        last.over_size,
        "nothing left to retire: the store says it is over its limit"
    );
    let count = |sql: &str| -> i64 { s.conn().query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT count(*) FROM calls WHERE decision = 'allow'"),
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM calls WHERE decision = 'block'"),
        1503
    );
    // Every verdict id the incident names is still there.
    let inc: i64 = s
        .conn()
        .query_row(
            "SELECT id FROM incidents WHERE key = '+77011112233'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let i = incident::get(s.conn(), inc).unwrap().unwrap();
    for v in &i.evidence.samples {
        let n: i64 = s
            .conn()
            .query_row(
                "SELECT count(*) FROM calls WHERE verdict_id = ?1",
                [v],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "{v} kept");
    }
    assert_eq!(calls_of(s.conn(), inc), 3);
}

/// The incident's calls are kept past the retention age while it is open,
/// and retired once it has closed.
#[test]
fn retention_by_age_waits_for_an_incident_to_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.max_age = Duration::from_secs(10);
    let mut s = open(dir.path(), o.clone()).unwrap();
    let calls: Vec<_> = (0..3)
        .map(|n| rec(n, "+77011112233", "+77020000001", "block", &["velocity_1m"]))
        .collect();
    s.insert(&calls).unwrap();
    let later = calls[2].ts_us + 3_600_000_000;
    assert_eq!(s.retire_chunk(later).unwrap().n, 0, "open: kept");
    // Closed after the policy's quiet gap: then retention may take them.
    let closed_at = calls[2].ts_us + o.incidents.close_after_us + 1;
    s.tick(closed_at).unwrap();
    assert_eq!(s.retire_chunk(closed_at).unwrap().n, 3);
}

/// An incident whose calls never stop is closed after its longest life,
/// so retention, which keeps an open incident's calls, always ends.
#[test]
fn an_incident_open_too_long_is_closed_and_its_calls_can_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.max_age = Duration::from_secs(10);
    o.incidents.max_open_us = 3_600_000_000;
    let mut s = open(dir.path(), o).unwrap();
    // A call every 30 minutes for three hours: never an hour apart.
    let calls: Vec<_> = (0..7)
        .map(|n| {
            let mut r = rec(n, "+77011112233", "+77020000001", "block", &["blocklist"]);
            r.ts_us = 1_700_000_000_000_000 + n * 1_800_000_000;
            r
        })
        .collect();
    for c in &calls {
        s.insert_at(std::slice::from_ref(c), c.ts_us).unwrap();
    }
    let now = calls[6].ts_us + 1;
    assert_eq!(s.retire_chunk(now).unwrap().n, 0, "open: every call kept");
    s.tick(now).unwrap();
    let state: String = s
        .conn()
        .query_row("SELECT state FROM incidents", [], |r| r.get(0))
        .unwrap();
    assert_eq!(state, "closed");
    // All but the last, which is younger than the retention age.
    assert_eq!(
        s.retire_chunk(now).unwrap().n,
        6,
        "closed: retention takes them"
    );
}

#[test]
fn the_sqlite_ports_serve_what_the_writer_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.incidents = report_policy();
    let mut s = open(dir.path(), o).unwrap();
    let ports = sqlite::ports(dir.path());
    let mk = |n: i64| rec(n, "+77011234567", "+77020000001", "block", &["blocklist"]);
    let t0 = mk(0).ts_us;
    s.insert_at(&[mk(0), mk(1), mk(2)], t0).unwrap();
    // Queries: a page, an export, counts, the incident with what the
    // register has of it.
    let page = ports.queries.calls(&Filter::default(), None, 2).unwrap();
    assert_eq!(page.calls.len(), 2);
    let mut seen = 0;
    let n = ports
        .queries
        .export(&Filter::default(), &mut |_| {
            seen += 1;
            true
        })
        .unwrap();
    assert_eq!((n, seen), (3, 3));
    let (per_decision, _) = ports
        .queries
        .counts(&Filter::default(), 3_600_000_000)
        .unwrap();
    assert_eq!(per_decision.iter().map(|c| c.calls).sum::<u64>(), 3);
    let listed = ports.queries.incidents(None, None, 10).unwrap();
    assert_eq!(listed.len(), 1);
    let id = listed[0].incident.id;
    assert_eq!(listed[0].delivered_seq, 0);
    // The outbox: due, claimed (frozen, in this build's payload version),
    // delivered; the backlog follows.
    assert_eq!(ports.outbox.backlog().unwrap().pending, 1);
    let due = ports.outbox.due(t0 + 10_000_000, 10).unwrap();
    assert_eq!(due.len(), 1);
    let frozen = ports.outbox.claim(due[0].id).unwrap().unwrap();
    assert_eq!(
        (frozen.version, frozen.blocked),
        (outbox::PAYLOAD_VERSION, 3)
    );
    ports.outbox.delivered(&due[0], "CASE-9").unwrap();
    let b = ports.outbox.backlog().unwrap();
    assert_eq!((b.pending, b.dead_letters), (0, 0));
    let v = ports.queries.incident(id).unwrap().unwrap();
    assert_eq!(
        (v.delivered_seq, v.incident.register_case.as_str()),
        (1, "CASE-9")
    );
    assert!(ports.queries.incident(id + 100).unwrap().is_none());
    // The audit log: appended together, read newest first.
    ports
        .audit
        .append(&[entry("ana", 1), entry("rui", 2)])
        .unwrap();
    let read = ports.audit.read(None, 10).unwrap();
    assert_eq!(
        read.iter().map(|e| e.who.as_str()).collect::<Vec<_>>(),
        ["rui", "ana"]
    );
}

#[test]
fn a_store_error_says_whether_trying_again_can_help() {
    let busy = sqlite_error(
        Path::new("/x/kuzet.db"),
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None),
    );
    assert!(busy.is_transient());
    assert!(busy.to_string().starts_with("/x/kuzet.db: "), "{busy}");
    let refused = sqlite_error(
        Path::new("/x/kuzet.db"),
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
            None,
        ),
    );
    assert!(!refused.is_transient());
    let conflict = StoreError::Conflict {
        path: "/x/centre.db".into(),
        reason: "batch 3 does not follow the cursor 1".into(),
    };
    assert!(!conflict.is_transient());
    assert!(
        conflict.to_string().starts_with("/x/centre.db: "),
        "{conflict}"
    );
}

/// The SQLite store as the port suite opens it: a data directory per
/// store name, kept for the whole run.
struct SqliteHarness {
    store: Store,
    ports: Ports,
}

impl suite::Harness for SqliteHarness {
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
fn the_port_suite_holds_on_sqlite() {
    let root = tempfile::tempdir().unwrap();
    let mut open = |name: &str, o: Options| -> Box<dyn suite::Harness> {
        let dir = root.path().join(name);
        let store = open(&dir, o).unwrap();
        Box::new(SqliteHarness {
            store,
            ports: sqlite::ports(&dir),
        })
    };
    suite::all(&mut open);
}
