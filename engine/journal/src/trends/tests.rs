//! A synthetic week of traffic with every kind of caller the trends must
//! tell apart: ordinary subscribers, a steady foreign range, an
//! allowlisted bank, a courier whose customers call back, a foreign range
//! surging on the last day, a slow SIM box and a timed group on one
//! source. The tests assert what is found and what is not, from the
//! scenario's numbers, never from a recorded report.

use std::collections::HashSet;

use kuzet_rules::ruleset::{Decision, ListPolicy, RuleSet};
use kuzet_rules::{CallTime, ListBuilder, Number, NumberingPlan, TrunkKind};

use super::*;
use crate::row::{CallRow, OutcomeKind, OutcomeRow, Row};

/// 2025-01-01T00:00:00Z.
const D0: i64 = 1_735_689_600;
const S: i64 = 1_000_000;
const DAYS: i64 = 7;

fn plan() -> NumberingPlan {
    NumberingPlan::kazakhstan().validated().unwrap()
}

fn num(s: &str) -> Number {
    thread_local! {
        static PLAN: NumberingPlan = plan();
    }
    PLAN.with(|p| p.normalize(s.as_bytes()).unwrap())
}

/// Digits `base` followed by `k`, zero-padded to `width` digits.
fn nth(base: &str, width: usize, k: u64) -> Number {
    num(&format!("+{base}{k:0width$}"))
}

struct Week {
    rows: Vec<Row>,
    rng: u64,
    cast: Cast,
}

impl Week {
    fn rand(&mut self, below: u64) -> u64 {
        // xorshift64*: deterministic, no dependency.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % below.max(1)
    }

    #[allow(clippy::too_many_arguments)]
    fn call(
        &mut self,
        ts_us: i64,
        caller: Number,
        callee: Number,
        trunk: (&str, TrunkKind),
        source: &str,
        allowlisted: bool,
    ) {
        let secs = ts_us / S;
        self.rows.push(Row::Call(CallRow {
            seq: 0,
            ts_us,
            time: CallTime {
                secs: secs as u32,
                hour: (secs.rem_euclid(86_400) / 3600) as u8,
                weekday: ((secs.div_euclid(86_400) + 3) % 7) as u8,
            },
            trunk: Some(trunk.0.to_string()),
            trunk_kind: Some(trunk.1),
            source: source.to_string(),
            caller: Some(caller),
            from: Some(caller),
            pai: None,
            display: None,
            a_present: true,
            callee: Some(callee),
            caller_trust: "claimed",
            digest: 0,
            decision: Decision::Allow,
            shadow_decision: Decision::Allow,
            score: 0,
            allowlisted,
            fired: Vec::new(),
            fired_shadow: Vec::new(),
            version: "1.0".into(),
        }));
    }

    fn outcome(&mut self, ts_us: i64, caller: Number, callee: Number, kind: OutcomeKind, ms: u32) {
        self.rows.push(Row::Outcome(OutcomeRow {
            seq: 0,
            ts_us,
            secs: (ts_us / S) as u32,
            caller,
            callee: Some(callee),
            kind,
            ms,
            via: "api",
            known: true,
        }));
    }

    /// A call and how it ended: answered for `talk_ms`, or cancelled.
    #[allow(clippy::too_many_arguments)]
    fn dial(
        &mut self,
        ts_us: i64,
        a: Number,
        b: Number,
        trunk: (&str, TrunkKind),
        source: &str,
        answered: bool,
        talk_ms: u32,
    ) {
        self.call(ts_us, a, b, trunk, source, false);
        if answered {
            self.outcome(
                ts_us + 5 * S + i64::from(talk_ms) * 1000,
                a,
                b,
                OutcomeKind::Answered,
                talk_ms,
            );
        } else {
            self.outcome(ts_us + 20 * S, a, b, OutcomeKind::Cancelled, 20_000);
        }
    }

    /// Journal order: by time, seq numbered.
    fn into_rows(self) -> (Vec<Row>, Cast) {
        let mut rows = self.rows;
        rows.sort_by_key(Row::ts_us);
        for (i, r) in rows.iter_mut().enumerate() {
            match r {
                Row::Call(c) => c.seq = i as u64,
                Row::Outcome(o) => o.seq = i as u64,
            }
        }
        (rows, self.cast)
    }
}

/// Who is who in the week.
struct Cast {
    subscribers: Vec<Number>,
    russians: Vec<Number>,
    bank: Vec<Number>,
    courier: Number,
    surgers: Vec<Number>,
    simbox: Number,
    simbox_callees: Vec<Number>,
    group: Vec<Number>,
}

const MOBILE: (&str, TrunkKind) = ("mobile-core", TrunkKind::Mobile);
const INTL: (&str, TrunkKind) = ("intl-gw", TrunkKind::International);
const BANK: (&str, TrunkKind) = ("bank-sip", TrunkKind::Other);
const KAZTEL: (&str, TrunkKind) = ("kaztel", TrunkKind::Domestic);
const PBX: (&str, TrunkKind) = ("pbx-7", TrunkKind::Other);
const CORE: &str = "10.0.0.1";
const GATEWAY: &str = "203.0.113.1";
const GROUP_SOURCE: &str = "198.51.100.9";

fn at(day: i64, secs: i64) -> i64 {
    (D0 + day * 86_400 + secs) * S
}

fn week() -> (Vec<Row>, Cast) {
    let mut w = Week {
        rows: Vec::new(),
        rng: 0x1234_5678_9abc_def1,
        cast: Cast {
            subscribers: (0..300).map(|k| nth("7701", 7, k)).collect(),
            russians: (0..10).map(|k| nth("7916", 7, 1_000_000 + k)).collect(),
            bank: (0..4).map(|k| nth("7717", 7, 2_000_000 + k)).collect(),
            courier: num("+77273000001"),
            surgers: (0..12).map(|k| nth("22507", 8, k * 7919)).collect(),
            simbox: num("+77475550001"),
            simbox_callees: (0..150).map(|k| nth("7705", 7, 7_770_000 + k)).collect(),
            group: (0..4).map(|k| nth("7700", 7, 8_000_000 + k)).collect(),
        },
    };
    let subs = w.cast.subscribers.clone();
    // Subscribers: a few calls a day to their own circle, at any time
    // between 08:00 and 22:00, mostly answered and long.
    let circles: Vec<Vec<Number>> = (0..subs.len())
        .map(|_| (0..15).map(|_| subs[w.rand(300) as usize]).collect())
        .collect();
    for day in 0..DAYS {
        for (i, &a) in subs.iter().enumerate() {
            for _ in 0..3 + w.rand(6) {
                let b = circles[i][w.rand(15) as usize];
                if a == b {
                    continue;
                }
                let t = at(day, 8 * 3600 + w.rand(14 * 3600) as i64);
                let answered = w.rand(10) < 8;
                let talk = 30_000 + w.rand(300_000) as u32;
                w.dial(t, a, b, MOBILE, CORE, answered, talk);
            }
        }
        // A steady Russian range: each caller three subscribers a day.
        for a in w.cast.russians.clone() {
            for _ in 0..3 {
                let b = subs[w.rand(300) as usize];
                let t = at(day, 9 * 3600 + w.rand(10 * 3600) as i64);
                let talk = 60_000 + w.rand(600_000) as u32;
                w.dial(t, a, b, INTL, GATEWAY, true, talk);
            }
        }
        // The bank's four allowlisted lines: a reminder every 90 s from
        // 09:00 to 18:00, all from one source, to ever new numbers.
        for (l, a) in w.cast.bank.clone().into_iter().enumerate() {
            for k in 0..360 {
                let t = at(day, 9 * 3600 + k * 90 + l as i64 * 7) + w.rand(4 * S as u64) as i64;
                let b = nth("7705", 7, (day * 4 * 360 + l as i64 * 360 + k) as u64);
                w.call(t, a, b, BANK, "192.0.2.50", true);
            }
        }
        // The group: four lines on one PBX source, a call every 90 s
        // (give or take 2 s) for an hour a day, to ever new numbers.
        for (l, a) in w.cast.group.clone().into_iter().enumerate() {
            for k in 0..40 {
                let t = at(day, 13 * 3600 + l as i64 * 11 + k * 90) + w.rand(4 * S as u64) as i64;
                let b = nth("7706", 7, (day * 160 + l as i64 * 40 + k) as u64);
                let answered = w.rand(10) < 5;
                w.dial(t, a, b, PBX, GROUP_SOURCE, answered, 60_000);
            }
        }
    }
    // The courier: 150 customers over the week, about 3 an hour in
    // working hours, short answered calls; four in ten call back later.
    let courier = w.cast.courier;
    for k in 0..150i64 {
        let (day, slot) = (k / 22, k % 22);
        let t = at(day, 10 * 3600 + slot * 20 * 60) + w.rand(300 * S as u64) as i64;
        let b = nth("7702", 7, 4_000_000 + k as u64);
        w.dial(t, courier, b, KAZTEL, "198.51.100.30", true, 6_000);
        if w.rand(10) < 4 {
            let back = t + (3600 + w.rand(7200) as i64) * S;
            w.dial(back, b, courier, MOBILE, CORE, true, 40_000);
        }
    }
    // The surge: twelve callers in +22507 on the last day only, each
    // reaching seven subscribers nobody else calls; most rings cancelled,
    // the rest answered for a few seconds.
    for (i, a) in w.cast.surgers.clone().into_iter().enumerate() {
        for j in 0..7u64 {
            let t = at(DAYS - 1, 3600 + w.rand(20 * 3600) as i64);
            let b = nth("7701", 7, 9_000_000 + i as u64 * 7 + j);
            let answered = w.rand(10) < 3;
            w.dial(t, a, b, INTL, GATEWAY, answered, 3_000);
        }
    }
    // The slow SIM box: five calls an hour (every 12 minutes, give or
    // take 30 s) from 10:00 to 16:00 on five days, 150 subscribers, none
    // of whom calls back; mostly cancelled or a few seconds long.
    let simbox = w.cast.simbox;
    let callees = w.cast.simbox_callees.clone();
    for (k, &b) in callees.iter().enumerate() {
        let k = k as i64;
        let (day, slot) = (1 + k / 30, k % 30);
        let t = at(day, 10 * 3600 + slot * 12 * 60) + w.rand(60 * S as u64) as i64 - 30 * S;
        let answered = w.rand(10) < 6;
        w.dial(t, simbox, b, MOBILE, CORE, answered, 5_000);
    }
    w.into_rows()
}

fn opts() -> TrendOptions {
    TrendOptions {
        since_us: D0 * S,
        until_us: (D0 + DAYS * 86_400) * S,
        ..TrendOptions::default()
    }
}

fn report() -> (TrendReport, Cast) {
    let (rows, cast) = week();
    (trends(rows.into_iter(), &plan(), &opts()), cast)
}

/// Every number any finding names.
fn named(r: &TrendReport) -> HashSet<String> {
    let mut out: HashSet<String> = r.slow_simboxes.iter().map(|s| s.number.clone()).collect();
    for g in &r.groups {
        out.extend(g.numbers.iter().cloned());
    }
    out
}

fn within(got: f64, want: f64, share: f64) -> bool {
    (got - want).abs() <= want * share
}

fn rule_parses(snippet: &str) {
    let file = format!("[thresholds]\nflag = 40\nblock = 100\n\n{snippet}");
    if let Err(e) = RuleSet::from_toml_str(&file, "suggestion", &plan(), &ListPolicy::default()) {
        panic!("suggested rule does not parse: {e}\n{file}");
    }
}

#[test]
fn a_foreign_range_surging_on_the_last_day_is_reported_with_a_flaglist_range() {
    let (r, cast) = report();
    let s = r
        .surges
        .iter()
        .find(|s| s.scope == "range" && s.key == "+22507")
        .unwrap_or_else(|| panic!("no surge for +22507: {:#?}", r.surges));
    assert_eq!(s.country, "+225");
    // Twelve callers times seven callees nobody else calls.
    let reached = (cast.surgers.len() * 7) as f64;
    assert!(within(s.recent_callees as f64, reached, 0.15), "{s:?}");
    assert_eq!(s.baseline_callees_per_day, 0.0);
    assert!(s.ratio > opts().surge_factor);
    assert_eq!(s.recent_calls, reached as u64);
    // Mostly cancelled, and what was answered was short.
    assert!(s.recent_answer_ratio.unwrap() < 0.5, "{s:?}");
    assert_eq!(s.recent_short_ratio, Some(1.0));
    assert_eq!(s.baseline_answer_ratio, None);
    // The suggestion is a flaglist line that covers every surging caller.
    let plan = plan();
    let mut b = ListBuilder::new(&plan);
    b.add_line("suggestion", 1, &s.suggestion).unwrap();
    let list = b.finish();
    for &n in &cast.surgers {
        assert!(list.lookup(n).unwrap().reason.starts_with("trends: surge"));
    }
    assert!(list.lookup(cast.russians[0]).is_none());
}

#[test]
fn the_trunk_carrying_the_surge_is_reported_with_a_rule_that_parses() {
    let (r, _) = report();
    let s = r
        .surges
        .iter()
        .find(|s| s.scope == "trunk" && s.key == INTL.0)
        .unwrap_or_else(|| panic!("no surge for {}: {:#?}", INTL.0, r.surges));
    assert!(s.ratio > opts().surge_factor);
    assert!(s.baseline_callees_per_day > 0.0);
    assert!(s.suggestion.contains("trunks = [\"international\"]"));
    rule_parses(&s.suggestion);
    // Ranges rank by strength: the new range before the trunk it rode.
    let pos = |scope: &str, key: &str| {
        r.surges
            .iter()
            .position(|s| s.scope == scope && s.key == key)
    };
    assert!(pos("range", "+22507") < pos("trunk", INTL.0));
}

#[test]
fn steady_ranges_and_trunks_are_not_surges() {
    let (r, _) = report();
    for s in &r.surges {
        assert!(
            !(s.scope == "range" && s.key == "+79161"),
            "steady Russian range reported: {s:?}"
        );
        assert!(
            ![MOBILE.0, KAZTEL.0, PBX.0, BANK.0].contains(&s.key.as_str()),
            "steady trunk reported: {s:?}"
        );
    }
}

/// Asked about four weeks of a journal that holds one: the baseline is
/// the days it holds, so steady traffic is still steady and the surge is
/// still the surge, with the same daily figures.
#[test]
fn a_journal_younger_than_the_window_has_a_baseline_of_the_days_it_holds() {
    let (rows, _) = week();
    let month = TrendOptions {
        since_us: (D0 - 21 * 86_400) * S,
        ..opts()
    };
    let r = trends(rows.clone().into_iter(), &plan(), &month);
    let (week, _) = report();
    let keys = |r: &TrendReport| -> Vec<(String, String, f64)> {
        r.surges
            .iter()
            .map(|s| (s.scope.clone(), s.key.clone(), s.baseline_callees_per_day))
            .collect()
    };
    assert_eq!(keys(&r), keys(&week));
    assert!(r.surges.iter().any(|s| s.key == "+22507"), "{:?}", r.surges);
}

#[test]
fn a_slow_sim_box_is_reported_and_nobody_else() {
    let (r, cast) = report();
    let numbers: Vec<&str> = r.slow_simboxes.iter().map(|s| s.number.as_str()).collect();
    assert_eq!(numbers, [cast.simbox.to_string()], "{:#?}", r.slow_simboxes);
    let s = &r.slow_simboxes[0];
    assert!(
        within(f64::from(s.callees), cast.simbox_callees.len() as f64, 0.1),
        "{s:?}"
    );
    assert_eq!(s.calls as usize, cast.simbox_callees.len());
    assert!(
        s.max_per_hour <= 6 && s.max_per_hour <= opts().slow_max_per_hour,
        "{s:?}"
    );
    assert_eq!(s.callbacks, 0);
    assert!(
        s.answer_ratio.unwrap() < 0.8 && s.short_ratio == Some(1.0),
        "{s:?}"
    );
    // The list line names the number; the rule parses and would fire at
    // the finding's threshold.
    let plan = plan();
    let mut b = ListBuilder::new(&plan);
    b.add_line("suggestion", 1, &s.suggestion).unwrap();
    assert!(b.finish().lookup(cast.simbox).is_some());
    rule_parses(&s.rule);
    assert!(s
        .rule
        .contains(&format!("max = {}", opts().slow_min_callees - 1)));
}

#[test]
fn a_courier_called_back_by_its_customers_is_not_a_slow_sim_box() {
    let (r, cast) = report();
    assert!(!named(&r).contains(&cast.courier.to_string()));
    // With the callbacks gone, the same calls are reported: the callbacks
    // are what tells it apart.
    let (rows, _) = week();
    let courier = Some(cast.courier);
    let alone = rows
        .into_iter()
        .filter(|row| !matches!(row, Row::Call(c) if c.callee == courier));
    let r = trends(alone, &plan(), &opts());
    assert!(r
        .slow_simboxes
        .iter()
        .any(|s| s.number == cast.courier.to_string()));
}

#[test]
fn callers_on_one_source_with_one_cadence_are_a_group() {
    let (r, cast) = report();
    let want: HashSet<String> = cast.group.iter().map(|n| n.to_string()).collect();
    let g = r
        .groups
        .iter()
        .find(|g| g.numbers.iter().any(|n| want.contains(n)))
        .unwrap_or_else(|| panic!("no group: {:#?}", r.groups));
    assert_eq!(g.numbers.iter().cloned().collect::<HashSet<_>>(), want);
    assert_eq!(g.size, cast.group.len());
    assert_eq!(g.shared, format!("source {GROUP_SOURCE}"));
    assert!(within(g.median_gap_s, 90.0, 0.05), "{g:?}");
    assert!(g.pattern.contains("hours 13"), "{}", g.pattern);
    // Reported once: not again for the trunk they share.
    let mentions = r
        .groups
        .iter()
        .filter(|g| g.numbers.iter().any(|n| want.contains(n)))
        .count();
    assert_eq!(mentions, 1);
    let plan = plan();
    let mut b = ListBuilder::new(&plan);
    b.add_text("suggestion", &g.suggestion).unwrap();
    let list = b.finish();
    assert!(cast.group.iter().all(|&n| list.lookup(n).is_some()));
}

#[test]
fn legitimate_callers_appear_in_no_finding() {
    let (r, cast) = report();
    let named = named(&r);
    let legit = cast
        .subscribers
        .iter()
        .chain(&cast.russians)
        .chain(&cast.bank)
        .chain(std::iter::once(&cast.courier));
    for n in legit {
        assert!(!named.contains(&n.to_string()), "{n} reported");
    }
    // The bank keeps the group's very cadence on one source: only the
    // allowlist keeps it out, and its calls count.
    assert!(r.calls > 4 * 360 * DAYS as u64);
    assert!(!r.surges.iter().any(|s| s.key == BANK.0));
}

#[test]
fn the_window_can_come_from_the_rows() {
    let (rows, cast) = week();
    let first = rows.iter().map(Row::ts_us).min().unwrap();
    let last = rows.iter().map(Row::ts_us).max().unwrap();
    let derived = TrendOptions {
        since_us: 0,
        until_us: 0,
        ..opts()
    };
    let r = trends(rows.into_iter(), &plan(), &derived);
    assert_eq!((r.since_us, r.until_us), (first, last + 1));
    assert!(r.surges.iter().any(|s| s.key == "+22507"));
    assert_eq!(r.slow_simboxes[0].number, cast.simbox.to_string());
    assert_eq!(r.groups.len(), 1);
}

#[test]
fn rows_outside_the_window_are_not_read() {
    let (rows, _) = week();
    let inside = rows
        .iter()
        .filter(|r| matches!(r, Row::Call(c) if c.ts_us >= (D0 + 86_400) * S))
        .count() as u64;
    let later = TrendOptions {
        since_us: (D0 + 86_400) * S,
        ..opts()
    };
    let r = trends(rows.into_iter(), &plan(), &later);
    assert_eq!(r.calls, inside);
    assert_eq!(r.recent_since_us, (D0 + 6 * 86_400) * S);
}

#[test]
fn the_caller_cap_bounds_tracking_and_counts_the_rest() {
    let (rows, _) = week();
    let callers: HashSet<Number> = rows
        .iter()
        .filter_map(|r| match r {
            Row::Call(c) => c.caller,
            Row::Outcome(_) => None,
        })
        .collect();
    let capped = TrendOptions {
        max_callers: 50,
        ..opts()
    };
    let r = trends(rows.into_iter(), &plan(), &capped);
    let left_out = (callers.len() - 50) as f64;
    assert!(
        within(r.untracked_callers as f64, left_out, 0.15),
        "{} of {left_out}",
        r.untracked_callers
    );
    // Ranges do not need caller state: the surge is still seen.
    assert!(r.surges.iter().any(|s| s.key == "+22507"));
}

#[test]
fn each_kind_keeps_its_strongest_twenty() {
    // 25 new ranges on the last day, range k reaching 20 + k callees.
    let mut w = week_empty();
    for k in 0..25u64 {
        let a = nth(&format!("225{}", 10 + k), 8, 1);
        for j in 0..(20 + k) {
            // Irregular gaps: a steady cadence here would be a group.
            let t = at(DAYS - 1, 3600 + (j * j) as i64 * 13);
            w.call(t, a, nth("7701", 7, k * 100 + j), INTL, GATEWAY, false);
        }
    }
    // Baseline traffic on the trunk so that it is no surge of its own.
    for day in 0..DAYS {
        for j in 0..2000u64 {
            let t = at(day, j as i64 * 40);
            w.call(
                t,
                nth("7916", 7, j),
                nth("7701", 7, 5_000_000 + day as u64 * 2000 + j),
                INTL,
                GATEWAY,
                false,
            );
        }
    }
    let (rows, _) = w.into_rows();
    let r = trends(rows.into_iter(), &plan(), &opts());
    let ranges: Vec<&Surge> = r.surges.iter().filter(|s| s.scope == "range").collect();
    assert_eq!(r.surges.len(), MAX_FINDINGS);
    assert_eq!(ranges.len(), MAX_FINDINGS);
    assert!(r.surges.windows(2).all(|p| p[0].ratio >= p[1].ratio));
    // The weakest five are the ones left out.
    assert!(ranges.iter().all(|s| s.recent_callees >= 25), "{ranges:#?}");
    assert_eq!(
        r.counts(),
        [("surge", 20), ("slow_simbox", 0), ("group", 0)]
    );
}

fn week_empty() -> Week {
    Week {
        rows: Vec::new(),
        rng: 1,
        cast: Cast {
            subscribers: Vec::new(),
            russians: Vec::new(),
            bank: Vec::new(),
            courier: num("+77273000001"),
            surgers: Vec::new(),
            simbox: num("+77475550001"),
            simbox_callees: Vec::new(),
            group: Vec::new(),
        },
    }
}

#[test]
fn the_report_goes_through_json_unchanged() {
    let (r, _) = report();
    let json = serde_json::to_string(&r).unwrap();
    let back: TrendReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    assert_eq!(
        r.counts(),
        [
            ("surge", r.surges.len()),
            ("slow_simbox", r.slow_simboxes.len()),
            ("group", r.groups.len())
        ]
    );
}

#[test]
fn a_hostile_source_address_is_escaped_in_text() {
    // Three timed callers on a source whose text carries a terminal
    // escape, a newline and a right-to-left override.
    let hostile = "198.51.100.66\x1b[2J\n\u{202e}evil";
    let mut w = week_empty();
    for l in 0..3u64 {
        let a = nth("7700", 7, 9_000_000 + l);
        for k in 0..20 {
            let t = at(2, 3600 + l as i64 * 5 + k * 60);
            w.call(
                t,
                a,
                nth("7706", 7, 9_000_000 + l * 100 + k as u64),
                PBX,
                hostile,
                false,
            );
        }
    }
    let (rows, _) = w.into_rows();
    let r = trends(rows.into_iter(), &plan(), &opts());
    assert_eq!(r.groups.len(), 1, "{:#?}", r.groups);
    assert!(
        r.groups[0].shared.contains('\x1b'),
        "the data keeps the bytes"
    );
    let mut text = String::new();
    r.write_text(&mut text).unwrap();
    assert!(
        text.contains("198.51.100.66\\u{1b}[2J\\n\\u{202e}evil"),
        "{text}"
    );
    assert!(!text.chars().any(|c| c.is_control() && c != '\n'));
    assert!(!text.contains('\u{202e}'));
    // Every line the report writes is one of its own.
    assert!(text.lines().all(|l| !l.starts_with("evil")));
}

#[test]
fn the_text_report_names_every_finding() {
    let (r, cast) = report();
    let mut text = String::new();
    r.write_text(&mut text).unwrap();
    assert!(text.contains("range +22507 (+225)"), "{text}");
    assert!(text.contains(&cast.simbox.to_string()));
    for n in &cast.group {
        assert!(text.contains(&n.to_string()));
    }
    assert!(
        text.contains("2025-01-01T00:00:00Z .. 2025-01-08T00:00:00Z"),
        "{text}"
    );
}

#[test]
fn distinct_estimates_stay_close() {
    for n in [10u64, 32, 100, 150, 500] {
        let mut c = Callees::default();
        let mut h = Hll::default();
        for k in 0..n {
            c.insert(77_010_000_000 + k * 13);
            h.insert(77_010_000_000 + k * 13);
        }
        assert!(
            within(f64::from(c.estimate()), n as f64, 0.1),
            "{n}: {}",
            c.estimate()
        );
        assert!(
            within(h.estimate(), n as f64, 0.15),
            "{n}: {}",
            h.estimate()
        );
        if n <= 32 {
            assert_eq!(h.estimate(), n as f64, "exact while small");
        }
        // Merging a sketch with itself and with its own half changes nothing.
        let mut twice = h.clone();
        twice.merge(&h);
        assert_eq!(twice.estimate(), h.estimate());
    }
    let mut h = Hll::default();
    for k in 0..100_000u64 {
        h.insert(k);
    }
    assert!(within(h.estimate(), 100_000.0, 0.15), "{}", h.estimate());
}

#[test]
fn calling_codes_and_countries_are_named() {
    let (plan, o) = (plan(), opts());
    let t = Tracker::new(&plan, &o);
    assert_eq!(t.country(22507, 5), "+225");
    assert_eq!(t.country(44207, 5), "+44");
    assert_eq!(t.country(12125, 5), "+1");
    assert_eq!(t.country(79161, 5), "RU");
}
