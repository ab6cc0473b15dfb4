//! The store against real SQLite files in temporary directories.

use super::*;
use crate::query::{calls, counts, export, Filter};

fn rec(n: i64, a: &str, b: &str, decision: &str, rules: &[&str]) -> Record {
    Record {
        verdict_id: format!("{:024x}", n),
        ts_us: 1_700_000_000_000_000 + n * 1_000_000,
        call_id: format!("call-{n}"),
        ruri: format!("sip:{b}@example.net"),
        from_hdr: format!("<sip:{a}@example.net>;tag=x"),
        a: Some(a.into()),
        b: Some(b.into()),
        source: "192.0.2.1:5060".into(),
        transport: "udp".into(),
        decision: decision.into(),
        shadow_decision: decision.into(),
        code: 603,
        score: 100,
        explanation: rules.join("; "),
        rules: rules
            .iter()
            .map(|r| RuleHit {
                id: (*r).into(),
                value: 21,
                threshold: 20,
                shadow: false,
                why: "21 calls > 20".into(),
            })
            .collect(),
        lists_version: "1".into(),
        headers: b"INVITE sip:x SIP/2.0\r\n\r\n".to_vec(),
        ..Record::default()
    }
}

fn opts() -> Options {
    Options {
        node: "test-node".into(),
        max_age: Duration::ZERO,
        max_bytes: 0,
        retire_chunk: 10,
    }
}

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
    let mut s = open(dir.path(), o).unwrap();
    let batch: Vec<_> = (0..35)
        .map(|n| rec(n, "+77011234567", "+77020000001", "block", &["blocklist"]))
        .collect();
    s.insert(&batch).unwrap();
    // "Now" is 10 s after record 29: records 0..=19 are older than 10 s.
    let now = batch[29].ts_us;
    let mut chunks = Vec::new();
    loop {
        let n = s.retire_chunk(now).unwrap();
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
    o.max_bytes = 256 * 1024;
    o.retire_chunk = 50;
    let mut s = open(dir.path(), o).unwrap();
    let mut batch: Vec<_> = (0..2000)
        .map(|n| rec(n, "+77011234567", "+77020000001", "block", &["blocklist"]))
        .collect();
    for r in &mut batch {
        r.headers = vec![b'x'; 1000];
    }
    s.insert(&batch).unwrap();
    assert!(s.used_bytes().unwrap() > 256 * 1024);
    while s.retire_chunk(0).unwrap() > 0 {}
    assert!(s.used_bytes().unwrap() <= 256 * 1024);
    let left = s.count().unwrap();
    assert!(left > 0 && left < 2000, "{left} left");
    // The newest survive.
    let newest: String = s
        .conn()
        .query_row(
            "SELECT call_id FROM calls ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(newest, "call-1999");
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
    let c = open_side_writer(dir.path()).unwrap();
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
        };
        audit::append(&c, &e).unwrap();
    }
    let got = audit::read(&c, None, 10).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].ts_us, 2);
    assert_eq!(audit::read(&c, Some(got[0].id), 10).unwrap().len(), 2);
}
