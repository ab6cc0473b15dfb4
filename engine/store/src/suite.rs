//! The store's behaviour through its ports, written once and run against
//! every implementation: SQLite (`tests.rs`) and PostgreSQL
//! (`pg/tests.rs`). Each case takes an [`Open`], which opens the writer
//! and the ports on a store named by the case (the same name, the same
//! store), so what a case asserts is what the ports promise, whatever is
//! behind them.

use crate::audit::Entry;
use crate::incident::Policy;
use crate::outbox::PAYLOAD_VERSION;
use crate::ports::Ports;
use crate::query::Filter;
use crate::{Options, Record, RecordWriter, RuleHit};

/// One store as a case sees it: its writer, with the clock given, and the
/// other ports.
pub trait Harness {
    /// The recorder port.
    fn writer(&mut self) -> &mut dyn RecordWriter;
    /// Commits `recs` at `now_us` (the writer's `insert`, clock moved).
    fn insert_at(&mut self, recs: &[Record], now_us: i64);
    /// The queries, outbox and audit ports on the same store.
    fn ports(&self) -> &Ports;
}

/// Opens the store named `name` with `opts` (the same name: the same
/// store, its earlier harness dropped first).
pub type Open<'a> = &'a mut dyn FnMut(&str, Options) -> Box<dyn Harness>;

pub fn rec(n: i64, a: &str, b: &str, decision: &str, rules: &[&str]) -> Record {
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

pub fn opts() -> Options {
    Options {
        node: "test-node".into(),
        max_age: std::time::Duration::ZERO,
        max_bytes: 0,
        retire_chunk: 10,
        incidents: Policy::default(),
    }
}

pub fn report_policy() -> Policy {
    Policy {
        report: true,
        min_blocked: 3,
        window_us: 600_000_000,
        update_interval_us: 60_000_000,
        ..Policy::default()
    }
}

pub fn entry(who: &str, ts_us: i64) -> Entry {
    Entry {
        id: 0,
        ts_us,
        who: who.into(),
        role: "investigator".into(),
        action: "QueryCalls".into(),
        filter: "{}".into(),
        rows: 1,
        outcome: "ok".into(),
        count: 1,
    }
}

fn by_incident(h: &dyn Harness, incident: i64) -> usize {
    let f = Filter {
        incident: Some(incident),
        ..Filter::default()
    };
    h.ports().queries.calls(&f, None, 100).unwrap().calls.len()
}

/// Records come back whole; the filters, pages, export and counts.
pub fn records_come_back_whole_and_queries_filter_and_page(open: Open<'_>) {
    let mut h = open("whole", opts());
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
    batch[1].list_hit = Some(crate::ListHitRec {
        list: "blocklist".into(),
        side: "caller".into(),
        exact: true,
        reason: "fraud desk".into(),
    });
    batch[1].headers = vec![0, 159, 255, b'\r', b'\n'];
    batch[1].pai_num = Some("+77010000000".into());
    h.insert_at(&batch, batch[24].ts_us);
    let q = h.ports().queries.clone();

    let by_number = Filter {
        number: Some("+77011234567".into()),
        ..Filter::default()
    };
    let p = q.calls(&by_number, None, 100).unwrap();
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
    // Every field, the odd ones too.
    let one = q
        .calls(
            &Filter {
                verdict_id: Some(batch[1].verdict_id.clone()),
                ..Filter::default()
            },
            None,
            1,
        )
        .unwrap();
    let mut want = batch[1].clone();
    want.id = one.calls[0].id;
    want.node = "test-node".into();
    want.incident = one.calls[0].incident;
    assert_eq!(one.calls[0], want);

    // The callee side matches too.
    let callee = Filter {
        number: Some("+77020000007".into()),
        ..Filter::default()
    };
    assert_eq!(q.calls(&callee, None, 10).unwrap().calls.len(), 1);

    // Pages of 10: 10, 10, 5, and the cursor ends.
    let all = Filter::default();
    let p1 = q.calls(&all, None, 10).unwrap();
    let p2 = q.calls(&all, p1.next, 10).unwrap();
    let p3 = q.calls(&all, p2.next, 10).unwrap();
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
    assert_eq!(q.calls(&by_rule, None, 100).unwrap().calls.len(), 19);
    let by_id = Filter {
        verdict_id: Some(format!("{:024X}", 7)),
        ..Filter::default()
    };
    assert_eq!(
        q.calls(&by_id, None, 100).unwrap().calls[0].call_id,
        "call-7"
    );
    let window = Filter {
        since_us: Some(batch[10].ts_us),
        until_us: Some(batch[12].ts_us),
        ..Filter::default()
    };
    assert_eq!(q.calls(&window, None, 100).unwrap().calls.len(), 2);
    let by_trunk = Filter {
        trunk: Some("none".into()),
        ..Filter::default()
    };
    assert!(q.calls(&by_trunk, None, 100).unwrap().calls.is_empty());

    // The export: every row, newest first; stopped when asked.
    let mut seen = Vec::new();
    let n = q
        .export(&all, &mut |r| {
            seen.push(r.call_id);
            true
        })
        .unwrap();
    assert_eq!((n, seen.len()), (25, 25));
    assert_eq!(seen[0], "call-24");
    let mut taken = 0;
    let n = q
        .export(&all, &mut |_| {
            taken += 1;
            taken < 3
        })
        .unwrap();
    assert_eq!((n, taken), (3, 3));

    let (per_decision, per_rule) = q.counts(&all, 3_600_000_000).unwrap();
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
    // Buckets oldest first, keys in order within one.
    let (d, r) = q.counts(&all, 10_000_000).unwrap();
    assert!(d
        .windows(2)
        .all(|w| (w[0].bucket_us, &w[0].key) < (w[1].bucket_us, &w[1].key)));
    assert!(r
        .windows(2)
        .all(|w| (w[0].bucket_us, &w[0].key) < (w[1].bucket_us, &w[1].key)));
    assert_eq!(d[0].bucket_us % 10_000_000, 0);
}

/// Calls group per source within the window, and per campaign across
/// sources from the third caller on.
pub fn calls_group_per_source_and_per_campaign(open: Open<'_>) {
    let mut o = opts();
    o.incidents = report_policy();
    let mut h = open("grouping", o);
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
    h.insert_at(&calls, calls[4].ts_us);
    // The same source after the 10-minute window: a new incident.
    let late = rec(
        1000,
        "+77011234567",
        "+77020000009",
        "block",
        &["blocklist"],
    );
    h.insert_at(std::slice::from_ref(&late), late.ts_us);
    let q = h.ports().queries.clone();
    let all = q.incidents(None, None, 10).unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let first = &all[1].incident;
    assert_eq!(
        (first.kind.as_str(), first.key.as_str()),
        ("source", "+77011234567")
    );
    assert_eq!((first.blocked, first.flagged), (5, 0));
    assert_eq!(first.evidence.victims.len(), 5);
    assert_eq!(first.evidence.samples.len(), 5);
    assert!(first.reportable);
    assert_eq!(first.register_state, "pending");
    assert_eq!(all[0].incident.blocked, 1);
    assert!(!all[0].incident.reportable);
    assert_eq!(by_incident(h.as_ref(), first.id), 5);
    // The cursor and the state filter.
    assert_eq!(
        q.incidents(None, Some(all[0].incident.id), 10)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(q.incidents(Some("open"), None, 10).unwrap().len(), 2);
    assert!(q.incidents(Some("closed"), None, 10).unwrap().is_empty());

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
    h.insert_at(&camp[..2], camp[1].ts_us);
    let c = q.incidents(None, None, 10).unwrap();
    let campaign = &c
        .iter()
        .find(|i| i.incident.kind == "campaign")
        .unwrap()
        .incident;
    assert_eq!(campaign.key, "velocity_1m@intl-1");
    assert!(!campaign.reportable);
    h.insert_at(&camp[2..], camp[2].ts_us);
    let c = q.incidents(None, None, 10).unwrap();
    let campaign = &c
        .iter()
        .find(|i| i.incident.kind == "campaign")
        .unwrap()
        .incident;
    assert_eq!(campaign.evidence.callers_seen, 3);
    assert!(campaign.reportable);
}

/// A tried entry is frozen; growth is queued as the next sequence after
/// the interval and never overtakes it; dead letters take later entries;
/// quiet incidents close.
pub fn the_outbox_freezes_what_was_tried_and_updates_follow_in_sequence(open: Open<'_>) {
    let mut o = opts();
    o.incidents = report_policy();
    let mut h = open("outbox", o);
    let ob = h.ports().outbox.clone();
    let q = h.ports().queries.clone();
    let mk = |n: i64| rec(n, "+77011234567", "+77020000001", "block", &["blocklist"]);
    let t0 = mk(0).ts_us;
    h.insert_at(&[mk(0), mk(1)], t0);
    assert!(ob.due(t0 + 10_000_000, 10).unwrap().is_empty());
    h.insert_at(&[mk(2)], t0);
    h.insert_at(&[mk(3)], t0);
    let due = ob.due(t0 + 10_000_000, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        (
            due[0].seq,
            due[0].kind.as_str(),
            due[0].report.as_ref().unwrap().blocked
        ),
        (1, "submit", 4)
    );
    // Not due before its time.
    assert!(ob.due(t0 - 1, 10).unwrap().is_empty());
    let frozen = ob.claim(due[0].id).unwrap().unwrap();
    assert_eq!((frozen.version, frozen.blocked), (PAYLOAD_VERSION, 4));
    // Tried: it never changes again; growth waits for the interval.
    h.insert_at(&[mk(4)], t0 + 1_000_000);
    let again = ob.due(t0 + 10_000_000, 10).unwrap();
    assert_eq!(
        (
            again[0].seq,
            again[0].report.as_ref().unwrap().blocked,
            again[0].attempts
        ),
        (1, 4, 1)
    );
    ob.retry(&again[0], t0 + 20_000_000, "register away")
        .unwrap();
    assert!(ob.due(t0 + 10_000_000, 10).unwrap().is_empty());
    let inc = q.incident(again[0].incident).unwrap().unwrap();
    assert_eq!(inc.incident.register_error, "register away");
    h.writer().tick(t0 + 61_000_000).unwrap();
    // The update is queued, but never overtakes the submission.
    assert_eq!(ob.backlog().unwrap().pending, 2);
    let d = ob.due(t0 + 62_000_000, 10).unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].seq, 1);
    ob.delivered(&d[0], "CASE-1").unwrap();
    let d = ob.due(t0 + 62_000_000, 10).unwrap();
    assert_eq!(
        (
            d[0].seq,
            d[0].kind.as_str(),
            d[0].report.as_ref().unwrap().blocked
        ),
        (2, "update", 5)
    );
    let inc = q.incident(d[0].incident).unwrap().unwrap();
    assert_eq!(
        (
            inc.incident.state.as_str(),
            inc.incident.register_case.as_str(),
            inc.delivered_seq
        ),
        ("reported", "CASE-1", 1)
    );
    // The update tried, then more growth after another interval: a third
    // entry behind the second.
    assert_eq!(ob.claim(d[0].id).unwrap().unwrap().blocked, 5);
    h.insert_at(&[mk(5)], t0 + 130_000_000);
    assert_eq!(ob.backlog().unwrap().pending, 2);
    ob.dead_letter(&d[0], "invalid: victims missing").unwrap();
    let inc = q.incident(d[0].incident).unwrap().unwrap();
    assert_eq!(inc.incident.register_state, "dead_letter");
    assert!(ob.due(t0 + 200_000_000, 10).unwrap().is_empty());
    let b = ob.backlog().unwrap();
    assert_eq!((b.pending, b.dead_letters), (0, 1));
    assert_eq!(q.incidents(Some("dead_letter"), None, 10).unwrap().len(), 1);
    // Quiet for a day: closed.
    h.writer().tick(t0 + 2 * 86_400_000_000).unwrap();
    let inc = q.incident(d[0].incident).unwrap().unwrap();
    assert_eq!(inc.incident.state, "closed");
    assert!(q.incident(d[0].incident + 100).unwrap().is_none());
}

/// The audit log: appended together, read newest first with a cursor.
pub fn the_audit_log_appends_and_reads_newest_first(open: Open<'_>) {
    let h = open("audit", opts());
    let a = h.ports().audit.clone();
    a.append(&[entry("ana", 1), entry("rui", 2)]).unwrap();
    a.append(&[entry("eve", 3)]).unwrap();
    let read = a.read(None, 10).unwrap();
    assert_eq!(
        read.iter().map(|e| e.who.as_str()).collect::<Vec<_>>(),
        ["eve", "rui", "ana"]
    );
    assert_eq!(read[0].count, 1);
    let older = a.read(Some(read[0].id), 1).unwrap();
    assert_eq!(older.len(), 1);
    assert_eq!(older[0].who, "rui");
    assert!(a.append(&[]).is_ok());
}

/// The store keeps its id, its verdict key and the last verdict sequence
/// across a reopen; another store has another id.
pub fn the_store_keeps_its_identity(open: Open<'_>) {
    let mut h = open("identity", opts());
    let id = h.writer().store_id().to_string();
    assert_eq!(id.len(), 16);
    let key = h.writer().verdict_key().unwrap();
    assert_eq!(h.writer().last_verdict_seq("00000000").unwrap(), None);
    let mut a = rec(1, "+77011234567", "+77020000001", "block", &[]);
    a.id_seq = 41;
    let mut b = rec(2, "+77011234567", "+77020000001", "block", &[]);
    b.id_seq = 42;
    h.insert_at(&[b, a], 0);
    assert_eq!(h.writer().last_verdict_seq("00000000").unwrap(), Some(42));
    drop(h);
    let mut h = open("identity", opts());
    assert_eq!(h.writer().store_id(), id, "the id is kept");
    assert_eq!(h.writer().verdict_key().unwrap(), key, "the key is kept");
    assert_eq!(h.writer().last_verdict_seq("00000000").unwrap(), Some(42));
    h.writer().probe(1).unwrap();
    assert!(!h.writer().location().is_empty());
    let mut other = open("identity_other", opts());
    assert_ne!(other.writer().store_id(), id);
}

/// A replay skips what the store holds and counts only the new.
pub fn a_replay_skips_what_the_store_holds(open: Open<'_>) {
    let mut o = opts();
    o.incidents = report_policy();
    let mut h = open("replay", o);
    let mk = |n: i64| rec(n, "+77011234567", "+77020000001", "block", &["blocklist"]);
    h.insert_at(&[mk(0), mk(1)], mk(1).ts_us);
    let n = h
        .writer()
        .insert_replayed(vec![mk(0), mk(1), mk(2)])
        .unwrap();
    assert_eq!(n, 1);
    let q = h.ports().queries.clone();
    assert_eq!(
        q.calls(&Filter::default(), None, 100).unwrap().calls.len(),
        3
    );
    let inc = q.incidents(None, None, 10).unwrap();
    assert_eq!(inc.len(), 1);
    assert_eq!(inc[0].incident.blocked, 3, "each call counted once");
}

/// Every case, in turn.
pub fn all(open: Open<'_>) {
    records_come_back_whole_and_queries_filter_and_page(open);
    calls_group_per_source_and_per_campaign(open);
    the_outbox_freezes_what_was_tried_and_updates_follow_in_sequence(open);
    the_audit_log_appends_and_reads_newest_first(open);
    the_store_keeps_its_identity(open);
    a_replay_skips_what_the_store_holds(open);
}
