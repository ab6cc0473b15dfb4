//! The behaviour every [`Centre`] must show, written once against the
//! port and run by each implementation's tests (SQLite's in
//! `centre.rs`, PostgreSQL's in `pg/centre.rs`): cursors that move only
//! from the batch just before, the feed's adds, withdrawals and expiry,
//! one case per alert id, one decision per case with its report queued
//! with it, reports kept under their key and moved from pending to
//! delivered or dead-lettered, and all of it kept across instances.
//!
//! Each function takes a fresh, empty store. What only one backend has
//! (SQLite's file, PostgreSQL's fences) is tested beside that backend.

use std::sync::Arc;

use super::*;

pub(crate) fn add(target: &str, category: &str, expires_at_s: i64) -> FeedChange {
    FeedChange::Add(row(target, category, expires_at_s))
}

pub(crate) fn row(target: &str, category: &str, expires_at_s: i64) -> FeedRow {
    FeedRow {
        target: target.into(),
        category: category.into(),
        confidence: 90,
        reported_at_s: 1_000,
        expires_at_s,
        case_ref: format!("AFC-{target}"),
    }
}

pub(crate) fn alert(id: &str, due_at_us: i64) -> NewCase {
    NewCase {
        alert_id: id.into(),
        number: "+77011234567".into(),
        category: "gsm-gateway".into(),
        centre_note: "three bank customers name this number".into(),
        reported_at_us: 1_000,
        opened_at_us: 2_000,
        due_at_us,
    }
}

pub(crate) fn report(key: &str, not_before_us: i64) -> NewReport {
    NewReport {
        key: key.into(),
        kind: "decision".into(),
        body: format!(r#"{{"v":1,"kind":"decision","key":"{key}"}}"#),
        not_before_us,
    }
}

pub(crate) fn decision(confirmed: bool) -> CaseDecision {
    CaseDecision {
        confirmed,
        note: "SIM box at a rented flat".into(),
        bss_ref: "BSS-889123".into(),
        by: "ana".into(),
        at_us: 5_000,
    }
}

/// The live feed at `now_s`, in no particular order, and its cursor.
pub(crate) fn live(c: &dyn Centre, now_s: i64) -> (Vec<FeedRow>, u64) {
    let mut rows = Vec::new();
    let cursor = c.feed_load(now_s, &mut |r| rows.push(r)).unwrap();
    (rows, cursor)
}

/// A batch of `n` adds spread over the key space as real numbers are,
/// none expired before 1 000 000 s.
pub(crate) fn spread_batch(n: usize) -> Vec<FeedChange> {
    (0..n)
        .map(|i| {
            let x = (i as u64).wrapping_mul(2_654_435_761) % 10_000_000_000;
            add(
                &format!("+7{x:010}"),
                "bank-impersonation",
                1_000_000 + (x % 604_800) as i64,
            )
        })
        .collect()
}

/// `at` is how the store names itself in its errors (a file, a server).
pub(crate) fn a_batch_that_does_not_follow_the_cursor_is_refused_and_changes_nothing(
    c: &dyn Centre,
    at: &str,
) {
    assert_eq!(c.cursor(BATCHES).unwrap(), 0);
    let e = c.feed_apply(0, &[add("+1", "x", 10)]).unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    c.feed_apply(1, &[add("+77011234567", "x", 10)]).unwrap();
    // A gap: nothing of it is kept, the cursor stays.
    let e = c
        .feed_apply(3, &[add("+77020000001", "x", 10)])
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    assert!(!e.is_transient());
    assert!(
        e.to_string().contains(at) && e.to_string().contains("2 must come first"),
        "{e}"
    );
    // A replay likewise.
    let e = c
        .feed_apply(1, &[FeedChange::Withdraw("+77011234567".into())])
        .unwrap_err();
    assert!(e.to_string().contains("already applied"), "{e}");
    assert_eq!(c.cursor(BATCHES).unwrap(), 1);
    assert!(c.feed_entry("+77020000001").unwrap().is_none());
    assert!(c.feed_entry("+77011234567").unwrap().is_some());
    // The streams' cursors are apart.
    assert_eq!(c.cursor(ALERTS).unwrap(), 0);
    c.feed_apply(2, &[add("+77020000001", "x", 10)]).unwrap();
    assert_eq!(c.cursor(BATCHES).unwrap(), 2);
}

pub(crate) fn adds_replace_withdrawals_remove_and_expiry_deletes(c: &dyn Centre) {
    c.feed_apply(
        1,
        &[
            add("+77011234567", "bank-impersonation", 100),
            add("+7702555*", "range", 100),
            add("+77030000001", "short", 50),
        ],
    )
    .unwrap();
    c.feed_apply(
        2,
        &[
            add("+77011234567", "investment", 200),
            FeedChange::Withdraw("+7702555*".into()),
            FeedChange::Withdraw("+77049999999".into()),
            // Withdrawn and added again in one batch: the order holds.
            FeedChange::Withdraw("+77030000001".into()),
            add("+77030000001", "again", 60),
            // Added twice in one batch: the later wins.
            add("+77050000001", "first", 70),
            add("+77050000001", "second", 70),
            // Added and withdrawn in one batch: gone.
            add("+77060000001", "brief", 70),
            FeedChange::Withdraw("+77060000001".into()),
        ],
    )
    .unwrap();
    assert_eq!(
        c.feed_entry("+77011234567").unwrap(),
        Some(row("+77011234567", "investment", 200))
    );
    assert!(c.feed_entry("+7702555*").unwrap().is_none());
    assert_eq!(
        c.feed_entry("+77030000001").unwrap().unwrap().category,
        "again"
    );
    assert_eq!(
        c.feed_entry("+77050000001").unwrap().unwrap().category,
        "second"
    );
    assert!(c.feed_entry("+77060000001").unwrap().is_none());
    // Expired at 60 (expires_at <= now), not at 59.
    assert_eq!(c.feed_expire(59).unwrap(), 0);
    assert_eq!(c.feed_expire(60).unwrap(), 1);
    assert!(c.feed_entry("+77030000001").unwrap().is_none());
    assert_eq!(c.feed_expire(60).unwrap(), 0);
    assert_eq!(c.cursor(BATCHES).unwrap(), 2, "expiry is no batch");
}

pub(crate) fn the_feed_loads_only_live_rows_with_its_cursor(c: &dyn Centre) {
    assert_eq!(live(c, 0), (vec![], 0));
    c.feed_apply(1, &[add("+7701", "a", 100), add("+7702", "b", 50)])
        .unwrap();
    c.feed_apply(2, &[add("+7703*", "c", 51)]).unwrap();
    let (rows, cursor) = live(c, 50);
    assert_eq!(cursor, 2);
    let mut targets: Vec<_> = rows.iter().map(|r| r.target.as_str()).collect();
    targets.sort_unstable();
    assert_eq!(targets, ["+7701", "+7703*"]);
    assert_eq!(live(c, 100).0, vec![]);
    // Expired rows load as nothing even before expiry deletes them.
    assert!(c.feed_entry("+7702").unwrap().is_some());
}

/// `held` counts the feed's rows as the store holds them, expired or not.
/// Returns how long the first batch (`n` adds) took to apply.
pub(crate) fn a_batch_of_many_changes_applies_in_one_go(
    c: &dyn Centre,
    n: usize,
    held: &dyn Fn() -> u64,
) -> std::time::Duration {
    let batch = spread_batch(n);
    let t = std::time::Instant::now();
    c.feed_apply(1, &batch).unwrap();
    let took = t.elapsed();
    eprintln!("{n} changes applied in {took:?}");
    assert_eq!(held(), n as u64);
    assert_eq!(c.cursor(BATCHES).unwrap(), 1);
    // A second batch withdraws half of them.
    let half: Vec<FeedChange> = batch
        .iter()
        .step_by(2)
        .map(|ch| FeedChange::Withdraw(ch.target().to_string()))
        .collect();
    c.feed_apply(2, &half).unwrap();
    assert_eq!(held(), (n - n.div_ceil(2)) as u64);
    let (rows, cursor) = live(c, 0);
    assert_eq!((rows.len(), cursor), (n - n.div_ceil(2), 2));
    took
}

pub(crate) fn alerts_open_one_case_per_id_and_move_their_cursor(c: &dyn Centre) {
    // The Centre's note is kept as sent, control characters and all.
    let noted = NewCase {
        centre_note: "line\0\u{1b}[2Jbreak".into(),
        ..alert("A-2", 100)
    };
    let opened = c
        .open_cases(1, &[alert("A-1", 300), noted, alert("A-1", 999)])
        .unwrap();
    assert_eq!(
        opened
            .iter()
            .map(|k| k.alert_id.as_str())
            .collect::<Vec<_>>(),
        ["A-1", "A-2"]
    );
    assert_eq!(opened[0].due_at_us, 300, "the first of an id is kept");
    assert_eq!(c.case(opened[0].id).unwrap().as_ref(), Some(&opened[0]));
    let kept = c.case(opened[1].id).unwrap().unwrap();
    assert_eq!(kept, opened[1]);
    assert_eq!(kept.centre_note, "line\0\u{1b}[2Jbreak");
    let opened2 = c
        .open_cases(2, &[alert("A-2", 100), alert("A-3", 200)])
        .unwrap();
    assert_eq!(opened2.len(), 1);
    assert_eq!(opened2[0].alert_id, "A-3");
    assert_eq!(c.cursor(ALERTS).unwrap(), 2);
    // Out of order: refused, nothing opened.
    let e = c.open_cases(4, &[alert("A-4", 100)]).unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    let e = c.open_cases(2, &[alert("A-4", 100)]).unwrap_err();
    assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
    assert_eq!(c.cases(None, None, 10).unwrap().len(), 3);
    assert_eq!(c.cursor(ALERTS).unwrap(), 2);
    assert_eq!(c.cursor(BATCHES).unwrap(), 0);
    // An empty batch still moves the cursor.
    assert!(c.open_cases(3, &[]).unwrap().is_empty());
    assert_eq!(c.cursor(ALERTS).unwrap(), 3);
    // Soonest due first; filtered by state and due time.
    let all = c.cases(None, None, 10).unwrap();
    assert_eq!(
        all.iter().map(|k| k.alert_id.as_str()).collect::<Vec<_>>(),
        ["A-2", "A-3", "A-1"]
    );
    let soon = c.cases(Some(OPEN), Some(300), 10).unwrap();
    assert_eq!(soon.len(), 2);
    assert_eq!(c.cases(None, None, 1).unwrap().len(), 1);
    assert!(c.cases(Some(CONFIRMED), None, 10).unwrap().is_empty());
    assert!(c.case(999).unwrap().is_none());
}

pub(crate) fn a_case_is_decided_once_and_its_report_queued_once(c: &dyn Centre) {
    let opened = c
        .open_cases(
            1,
            &[
                alert("A-1", 1_000),
                alert("A-2", 2_000),
                alert("A-3", 9_000),
            ],
        )
        .unwrap();
    let id = opened[0].id;
    let decided = c
        .decide(id, &decision(true), &report("s/decision/A-1", 0))
        .unwrap()
        .unwrap();
    assert_eq!(decided.state, CONFIRMED);
    assert_eq!(
        (decided.decided_at_us, decided.decided_by.as_str()),
        (Some(5_000), "ana")
    );
    assert_eq!(decided.bss_ref, "BSS-889123");
    assert_eq!(c.case(id).unwrap(), Some(decided.clone()));
    // Again (another key, even): refused, nothing changes or queues.
    let again = c
        .decide(id, &decision(false), &report("s/decision/A-1b", 0))
        .unwrap();
    assert!(again.unwrap_err().contains("already decided"));
    assert_eq!(c.case(id).unwrap(), Some(decided));
    let none = c
        .decide(9_999, &decision(true), &report("s/decision/x", 0))
        .unwrap();
    assert!(none.unwrap_err().contains("no case"));
    let queued = c.reports(None, 10).unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].key, "s/decision/A-1");
    c.decide(opened[1].id, &decision(false), &report("s/decision/A-2", 0))
        .unwrap()
        .unwrap();
    // A-3 is open (due at 9 000): overdue at 9 001, due soon at 8 000
    // within 1 000, neither at 7 000 within 1 000.
    let counts = |now, near| c.case_counts(now, near).unwrap();
    let base = CaseCounts {
        open: 1,
        confirmed: 1,
        not_confirmed: 1,
        ..CaseCounts::default()
    };
    assert_eq!(counts(9_001, 1_000), CaseCounts { overdue: 1, ..base });
    assert_eq!(
        counts(8_000, 1_000),
        CaseCounts {
            due_soon: 1,
            ..base
        }
    );
    assert_eq!(counts(7_000, 1_000), base);
    assert_eq!(c.cases(Some(OPEN), None, 10).unwrap().len(), 1);
    assert_eq!(c.cases(Some(NOT_CONFIRMED), None, 10).unwrap().len(), 1);
}

pub(crate) fn reports_are_queued_once_per_key_and_go_pending_to_delivered_or_dead(c: &dyn Centre) {
    let before = crate::now_us();
    let a = report("s/victim/1/+77029990001", 100);
    let b = report("s/victim/1/+77029990002", 200);
    let d = report("s/feedback/1", 100);
    assert_eq!(
        c.queue_reports(&[a.clone(), b.clone(), a.clone()]).unwrap(),
        2
    );
    assert_eq!(c.queue_reports(&[a.clone(), d]).unwrap(), 1);
    let backlog = c.report_backlog().unwrap();
    assert_eq!((backlog.pending, backlog.dead_letters), (3, 0));
    assert!(backlog.oldest_pending_us.unwrap() >= before);
    // Not before their time; oldest first.
    assert!(c.due_reports(99, 10).unwrap().is_empty());
    let due = c.due_reports(150, 10).unwrap();
    assert_eq!(
        due.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        [a.key.as_str(), "s/feedback/1"]
    );
    assert_eq!(
        (due[0].body.as_str(), due[0].attempts),
        (a.body.as_str(), 0)
    );
    let [ra, rd] = [due[0].id, due[1].id];
    // a: tried, not taken (a long error is cut), tried again, taken.
    c.report_tried(ra).unwrap();
    let long = "é".repeat(700);
    c.report_retry(ra, 1_000, &long).unwrap();
    let waiting = c.due_reports(999, 10).unwrap();
    assert!(waiting.iter().all(|r| r.id != ra), "a waits for its retry");
    assert_eq!(waiting.len(), 2);
    let row = |id| {
        c.reports(None, 10)
            .unwrap()
            .into_iter()
            .find(|r| r.id == id)
            .unwrap()
    };
    let kept = row(ra).last_error;
    assert_eq!(kept.len(), MAX_ERROR);
    assert!(long.starts_with(&kept));
    let again = c.due_reports(1_000, 10).unwrap();
    assert_eq!((again[0].id, again[0].attempts), (ra, 1));
    c.report_tried(ra).unwrap();
    c.report_delivered(ra, 1_500).unwrap();
    let done = row(ra);
    assert_eq!(
        (done.state.as_str(), done.attempts, done.delivered_at_us),
        (DELIVERED, 2, Some(1_500))
    );
    assert!(done.last_error.is_empty());
    // A key held, delivered, still queues nothing.
    assert_eq!(c.queue_reports(&[a]).unwrap(), 0);
    // The feedback: refused by the Centre.
    c.report_tried(rd).unwrap();
    c.report_dead_letter(rd, "422 Unprocessable Entity")
        .unwrap();
    // Neither changes once it is no longer pending.
    c.report_retry(rd, 0, "late").unwrap();
    c.report_delivered(rd, 9).unwrap();
    c.report_tried(rd).unwrap();
    let dead = row(rd);
    assert_eq!(
        (dead.state.as_str(), dead.last_error.as_str(), dead.attempts),
        (DEAD_LETTER, "422 Unprocessable Entity", 1)
    );
    let backlog = c.report_backlog().unwrap();
    assert_eq!((backlog.pending, backlog.dead_letters), (1, 1));
    assert!(backlog.oldest_pending_us.is_some());
    let due = c.due_reports(i64::MAX, 10).unwrap();
    assert_eq!(
        due.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        [b.key.as_str()]
    );
    // Listed newest first, by state.
    let listed = c.reports(None, 10).unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed[0].id > listed[1].id && listed[1].id > listed[2].id);
    assert_eq!(c.reports(Some(PENDING), 10).unwrap()[0].key, b.key);
    assert_eq!(c.reports(Some(DEAD_LETTER), 10).unwrap()[0].id, rd);
    c.report_delivered(due[0].id, 2_000).unwrap();
    assert_eq!(
        c.report_backlog().unwrap(),
        CentreBacklog {
            pending: 0,
            dead_letters: 1,
            oldest_pending_us: None
        }
    );
}

/// `open` makes a new instance on the same store each time it is called.
pub(crate) fn everything_survives_a_new_instance(open: &dyn Fn() -> Arc<dyn Centre>) {
    let c = open();
    c.feed_apply(1, &[add("+77011234567", "x", 500)]).unwrap();
    let opened = c.open_cases(1, &[alert("A-1", 100)]).unwrap();
    c.decide(opened[0].id, &decision(true), &report("s/decision/A-1", 0))
        .unwrap()
        .unwrap();
    c.queue_reports(&[report("s/feedback/1", 0)]).unwrap();
    let due = c.due_reports(0, 10).unwrap();
    c.report_tried(due[0].id).unwrap();
    c.report_delivered(due[0].id, 7).unwrap();
    let (cases, reports) = (
        c.cases(None, None, 10).unwrap(),
        c.reports(None, 10).unwrap(),
    );
    drop(c);
    let c = open();
    assert_eq!(
        (c.cursor(BATCHES).unwrap(), c.cursor(ALERTS).unwrap()),
        (1, 1)
    );
    assert_eq!(live(&*c, 0), (vec![row("+77011234567", "x", 500)], 1));
    assert_eq!(c.cases(None, None, 10).unwrap(), cases);
    assert_eq!(c.reports(None, 10).unwrap(), reports);
    assert_eq!(c.report_backlog().unwrap().pending, 1);
    // The next batch follows on from the stored cursor.
    c.feed_apply(2, &[]).unwrap();
    assert_eq!(c.cursor(BATCHES).unwrap(), 2);
}
