//! End to end with kuzet-sim: a labelled scenario against the real `kuzet`
//! binary, started on the list files and trunk config the scenario writes.
//!
//! The categories kuzet handles today are list matches (the blocklist and
//! the NB feed export, loaded as a blocklist): they must be caught in full
//! with no legitimate call blocked or flagged. The same traffic, exported
//! for SIPp and replayed by it, must get the same verdicts.

use std::net::SocketAddr;
use std::path::Path;

use kuzet_sim::driver::{self, Options, Pace, Proto};
use kuzet_sim::report::{self, Report};
use kuzet_sim::scenario::Scenario;
use kuzet_sim::traffic::Traffic;

use crate::common::TempDir;
use crate::sipp::{parse_counts, swap_after, Kuzet};

/// Writes `t`'s engine files into a new folder, adds `[rules] file =
/// "rules.toml"` holding `rules` when given (and `lists_extra` lines under
/// `[lists]`), and starts the kuzet binary on them, logging warnings only.
fn start_on(t: &Traffic, tag: &str, rules: Option<&str>, lists_extra: &str) -> (TempDir, Kuzet) {
    let dir = TempDir::new(tag);
    t.write_engine_files(dir.path()).unwrap();
    let mut toml = std::fs::read_to_string(dir.path().join("kuzet.toml")).unwrap();
    toml = toml.replacen("[lists]\n", &format!("[lists]\n{lists_extra}"), 1);
    if let Some(text) = rules {
        dir.write("rules.toml", text);
        toml += "\n[rules]\nfile = \"rules.toml\"\n";
    }
    dir.write("kuzet.toml", &toml);
    let k = Kuzet::start(&["--config", "kuzet.toml", "--log", "warn"], dir.path());
    (dir, k)
}

/// The shipped default rules with every rule that ships in shadow for
/// tuning switched to enforce: what the scenarios' detection figures are
/// measured against (night_premium, a trial, stays in shadow).
fn all_enforced() -> String {
    let text = include_str!("../../../../deploy/rules/default.toml");
    let out = text.replace("mode = \"shadow\"   #", "mode = \"enforce\"   #");
    assert!(
        out != text,
        "default.toml no longer ships rules in shadow for tuning"
    );
    out
}

pub(crate) fn small() -> Traffic {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sim/scenarios/small.toml");
    Traffic::generate(&Scenario::from_file(&p).unwrap()).unwrap()
}

pub(crate) fn run(t: &Traffic, to: SocketAddr, proto: Proto) -> Report {
    run_with(t, to, proto, false)
}

pub(crate) fn run_with(t: &Traffic, to: SocketAddr, proto: Proto, report_outcomes: bool) -> Report {
    let mut o = Options::new(to, t.calls.len());
    o.report_outcomes = report_outcomes;
    o.proto = proto;
    o.pace = Pace::Rate(1500.0);
    o.t1 = std::time::Duration::from_millis(200);
    o.timeout = std::time::Duration::from_secs(10);
    let (results, stats) = driver::drive(t, o).unwrap();
    report::build(t, &results, &stats)
}

/// The list categories are caught in full, nothing legitimate is touched,
/// and every call is answered.
pub(crate) fn assert_list_detection(t: &Traffic, r: &Report) {
    assert_eq!(r.sent, t.calls.len() as u64);
    assert_eq!(r.answered, r.sent, "{}", r.table());
    assert_eq!(r.timeouts, 0);
    for cat in ["blocklist", "nb_feed"] {
        let c = &r.categories[cat];
        assert!(c.calls > 10, "{cat}: {c:?}");
        assert_eq!(c.blocked, c.calls, "{cat}: {}", r.table());
        assert_eq!((c.recall, c.precision), (Some(1.0), Some(1.0)), "{cat}");
    }
    assert_eq!(r.false_positive_rate, Some(0.0), "{}", r.table());
    for (name, c) in r.categories.iter().filter(|(_, c)| !c.fraud) {
        assert_eq!(c.allowed, c.calls, "{name}: {c:?}");
    }
    assert_eq!(
        r.campaigns["known_scammers"].calls_before_detection,
        Some(0)
    );
    assert_eq!(r.campaigns["nb_reported"].calls_before_detection, Some(0));
    // Allowed answers are exactly the calls not blocked.
    let blocked: u64 = r.categories.values().map(|c| c.blocked).sum();
    assert_eq!(r.status.get(&603).copied().unwrap_or(0), blocked);
    assert_eq!(
        r.status.get(&302).copied().unwrap_or(0),
        r.answered - blocked
    );
}

#[test]
fn small_scenario_lists_caught_in_full_over_udp_and_tcp() {
    let t = small();
    let dir = TempDir::new("sim-e2e");
    t.write_engine_files(dir.path()).unwrap();
    let k = Kuzet::start(&["--config", "kuzet.toml"], dir.path());
    let udp = run(&t, k.addr, Proto::Udp);
    assert_list_detection(&t, &udp);
    let tcp = run(&t, k.addr, Proto::Tcp);
    assert_list_detection(&t, &tcp);
    assert_eq!(udp.categories, tcp.categories);
    k.stop();
}

#[test]
fn sipp_replay_of_the_export_gets_the_same_verdicts() {
    let t = small();
    let dir = TempDir::new("sim-sipp");
    t.write_engine_files(dir.path()).unwrap();
    let export = dir.path().join("sipp");
    kuzet_sim::export::write_sipp(&t, &export).unwrap();
    let k = Kuzet::start(&["--config", "kuzet.toml"], dir.path());
    let ours = run(&t, k.addr, Proto::Udp);
    let st = std::process::Command::new("bash")
        .arg(export.join("replay.sh"))
        .arg(k.addr.to_string())
        .arg("400")
        .status()
        .unwrap();
    assert!(
        st.success(),
        "replay.sh failed; logs in {}",
        export.display()
    );
    let (mut ok302, mut ok603, mut failed) = (0, 0, 0);
    for e in std::fs::read_dir(&export).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with("_counts.csv") {
            let c = parse_counts(&std::fs::read_to_string(&p).unwrap());
            // Column names: <step>_<message>_Recv; the 302 step is 1, 603 is 2.
            let get = |pre: &str| {
                c.iter()
                    .filter(|(k, _)| k.starts_with(pre) && k.ends_with("_Recv"))
                    .map(|(_, v)| *v)
                    .sum::<u64>()
            };
            ok302 += get("1_302");
            ok603 += get("2_603");
            failed += c
                .iter()
                .filter(|(k, _)| k.contains("Unexp"))
                .map(|(_, v)| *v)
                .sum::<u64>();
        }
    }
    assert_eq!(failed, 0);
    assert_eq!(ok302, ours.status[&302]);
    assert_eq!(ok603, ours.status[&603]);
    assert_eq!(ok302 + ok603, t.calls.len() as u64);
    k.stop();
}

/// The example rule file against the small scenario: spoofing and list
/// categories caught in full, premium pumping caught, the sequential
/// dialler, the Wangiri callers (through the outcome API) and the SIM box
/// caught soon after crossing their thresholds, nothing legitimate touched.
#[test]
fn small_scenario_with_the_example_rules() {
    let t = small();
    let (_dir, k) = start_on(&t, "sim-rules", Some(&all_enforced()), "");
    // The driver plays the switch and reports outcomes (redirect mode).
    let r = run_with(&t, k.addr, Proto::Udp, true);
    assert_eq!(r.answered, t.calls.len() as u64, "{}", r.table());
    // Every identity variant of the spoofing campaigns, and trusted
    // (allowlisted) numbers spoofed from abroad.
    for cat in [
        "blocklist",
        "nb_feed",
        "cli_spoof",
        "protected_spoof",
        "allowlist_spoof",
    ] {
        let c = &r.categories[cat];
        assert_eq!(
            c.blocked,
            c.calls,
            "{cat} must be blocked in full:\n{}",
            r.table()
        );
    }
    let irsf = &r.categories["irsf"];
    assert_eq!(
        irsf.recall,
        Some(1.0),
        "premium destinations:\n{}",
        r.table()
    );
    // Two sequential callers, interleaved: each is caught on its 6th call
    // in a row, so the campaign is caught within 2 x 6 of its first call.
    let walker = &r.campaigns["walker"];
    assert!(
        walker.calls_before_detection.is_some_and(|n| n < 12),
        "{}",
        r.table()
    );
    // Wangiri: 3 callers; each is caught on the call after its 5th short
    // ring (min_calls 5, 80% short), so the campaign within 3 x 5 + 5.
    let wangiri = &r.campaigns["one_ring"];
    assert!(
        wangiri.calls_before_detection.is_some_and(|n| n <= 20),
        "{}",
        r.table()
    );
    // One SIM box line: velocity_1m (20) is crossed on its 21st call.
    let simbox = &r.campaigns["simbox_almaty"];
    assert!(
        simbox
            .calls_before_detection
            .is_some_and(|n| (20..=25).contains(&n)),
        "{}",
        r.table()
    );
    // ...and once detected, blocked within 5 more calls (escalation).
    assert!(
        simbox.worst_calls_to_block.is_some_and(|n| n <= 5) && simbox.callers_never_blocked == 0,
        "{}",
        r.table()
    );
    // No legitimate kind is touched: Russian callers on either trunk,
    // roamers calling home, PBXs with From != PAI, busy business lines,
    // redialled calls, foreign numbers without '+'.
    for (name, c) in r.categories.iter().filter(|(_, c)| !c.fraud) {
        assert_eq!(c.false_positive_rate, Some(0.0), "{name}:\n{}", r.table());
    }
    for kind in ["russian_callers", "outbound_roamers", "pbx", "business"] {
        assert!(r.categories[kind].calls > 0, "{kind} made no call");
    }
    k.stop();
}

/// A rule file swapped mid-run under load: every call is answered, and the
/// new rule applies from the swap on (never before, never lost after).
///
/// Regression (issue 19, defect 9): the file was swapped 1.5 s after the
/// driver started, whatever it had sent by then. Now it is swapped once
/// kuzet has judged a quarter of the calls.
#[test]
fn rule_reload_mid_run_loses_no_call() {
    let t = small();
    let v1 = "[thresholds]\nflag = 40\nblock = 100\n[[rule]]\nid = \"blocklist\"\nkind = \"list\"\nlist = \"blocklist\"\nscore = 100\n";
    let v2 =
        format!("{v1}[[rule]]\nid = \"doi\"\nkind = \"domestic_on_international\"\nscore = 100\n");
    let (dir, k) = start_on(
        &t,
        "sim-rule-reload",
        Some(v1),
        "reload_interval_ms = 100\n",
    );
    let rules = dir.path().join("rules.toml");
    let calls = 4000;
    let mut o = Options::new(k.addr, calls);
    o.pace = Pace::Rate(1000.0);
    o.t1 = std::time::Duration::from_millis(200);
    o.timeout = std::time::Duration::from_secs(10);
    let tr = t.clone();
    let tmp = dir.write("rules.toml.new", &v2);
    let swapper = swap_after(k.admin, calls as u64 / 4, move || {
        std::fs::rename(&tmp, &rules).unwrap();
    });
    let driver = std::thread::spawn(move || driver::drive(&tr, o).unwrap());
    let (results, stats) = driver.join().unwrap();
    let judged_before = swapper.join().expect("the rules were swapped mid-run");
    assert_eq!((stats.answered, stats.timeouts), (calls as u64, 0));
    // (call number, status) of the spoofed calls, in the order sent.
    let spoof: Vec<(usize, u16)> = results
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            t.sources[t.calls[i % t.calls.len()].source as usize].kind
                == kuzet_sim::scenario::Kind::CliSpoof
        })
        .map(|(i, r)| (i, r.status))
        .collect();
    let first_block = spoof
        .iter()
        .position(|&(_, s)| s == 603)
        .expect("the new rule applied before the run ended");
    // Calls are sent in order: those in the first half of what kuzet had
    // judged when the file was swapped were answered long before (half
    // leaves room for any sent before the swap but judged after it).
    assert!(
        spoof[first_block].0 as u64 >= judged_before / 2,
        "applied before the swap: call {} blocked, {judged_before} judged at the swap",
        spoof[first_block].0
    );
    assert!(
        first_block > 0,
        "the new rule blocked the very first spoofed call: it applied before the swap"
    );
    assert!(spoof[..first_block].iter().all(|&(_, s)| s == 302));
    assert!(
        spoof[first_block..].iter().all(|&(_, s)| s == 603),
        "and to every call after it"
    );
    k.stop();
}

/// Fan-out on its own: one SIM box line calling a new subscriber each time
/// is caught on the call that crosses the distinct-callee threshold. The
/// rule is scoped to the mobile trunk, where SIM boxes terminate, so the
/// taxi dispatch (domestic trunk, few callers, many callees) is untouched.
#[test]
fn fan_out_is_caught_when_it_crosses_its_threshold() {
    let t = small();
    let rules =
        "[thresholds]\nflag = 40\nblock = 100\n[[rule]]\nid = \"fan_out_1h\"\nkind = \"fan_out\"\n\
                 window_s = 3600\nmax = 10\nscore = 60\n[rule.scope]\ntrunks = [\"mobile\"]\n";
    let (_dir, k) = start_on(&t, "sim-fanout", Some(rules), "");
    let r = run(&t, k.addr, Proto::Udp);
    // 10 distinct callees is the most allowed: the 11th call is flagged.
    assert_eq!(
        r.campaigns["simbox_almaty"].calls_before_detection,
        Some(10),
        "{}",
        r.table()
    );
    assert_eq!(r.false_positive_rate, Some(0.0), "{}", r.table());
    k.stop();
}

/// Reciprocity, end to end: the busy courier lines (on the domestic trunk,
/// over ten distinct callees each, half of whom call back) are flagged by
/// a bare fan-out rule, and spared once the rule asks how many called
/// back; the SIM box, never called back, is caught either way.
#[test]
fn fan_out_spares_business_lines_their_customers_call_back() {
    let t = small();
    let rule = |extra: &str| {
        format!(
            "[thresholds]\nflag = 40\nblock = 100\n[[rule]]\nid = \"fan\"\nkind = \"fan_out\"\n\
             window_s = 3600\nmax = 10\nscore = 60\n{extra}[rule.scope]\ntrunks = [\"mobile\", \"domestic\"]\n"
        )
    };
    let flagged = |r: &Report, cat: &str| {
        let c = &r.categories[cat];
        c.flagged + c.blocked
    };
    let (_d1, k) = start_on(&t, "sim-fan-bare", Some(&rule("")), "");
    let bare = run(&t, k.addr, Proto::Udp);
    k.stop();
    let (_d2, k) = start_on(
        &t,
        "sim-fan-recip",
        Some(&rule("max_called_back = 0.05\n")),
        "",
    );
    let recip = run(&t, k.addr, Proto::Udp);
    k.stop();
    assert!(flagged(&bare, "business") > 0, "{}", bare.table());
    assert_eq!(flagged(&recip, "business"), 0, "{}", recip.table());
    for r in [&bare, &recip] {
        assert_eq!(
            r.campaigns["simbox_almaty"].calls_before_detection,
            Some(10),
            "{}",
            r.table()
        );
    }
}

/// Round trip: every call a kuzet-sim run saw blocked or flagged is in the
/// intercepted-call log with the rules that fired, and a query by one
/// fraud number, typed another way, returns exactly that number's calls.
#[test]
fn a_sim_runs_intercepted_calls_are_all_on_record() {
    let t = small();
    let (dir, k) = start_on(&t, "sim-record", Some(&all_enforced()), "");
    let mut o = Options::new(k.addr, t.calls.len());
    o.report_outcomes = true;
    o.pace = Pace::Rate(1500.0);
    o.t1 = std::time::Duration::from_millis(200);
    o.timeout = std::time::Duration::from_secs(10);
    let (results, _) = driver::drive(&t, o).unwrap();
    let summary = k.stop();
    assert!(!summary.contains("store_dropped_total"), "{summary}");

    let plan = kuzet_rules::NumberingPlan::kazakhstan();
    let norm = |s: &str| plan.normalize(s.as_bytes()).map(|n| n.to_string());
    // What the driver saw: (A, B) of each intercepted call.
    let mut seen: Vec<(Option<String>, Option<String>, &str)> = Vec::new();
    for (c, r) in t.calls.iter().zip(&results) {
        let d = match (r.status, r.flagged) {
            (603, _) => "block",
            (_, true) => "flag",
            _ => continue,
        };
        seen.push((norm(&c.a), norm(&c.b), d));
    }
    assert!(seen.len() > 50, "only {} intercepted", seen.len());

    let conn = kuzet_store::open_reader(&dir.path().join("kuzet-data")).unwrap();
    let mut recorded = Vec::new();
    kuzet_store::query::export(&conn, &kuzet_store::query::Filter::default(), |r| {
        if !r.sampled && matches!(r.decision.as_str(), "block" | "flag") {
            recorded.push(r);
        }
        true
    })
    .unwrap();
    let mut got: Vec<(Option<String>, Option<String>, &str)> = recorded
        .iter()
        .map(|r| {
            let d = if r.decision == "block" {
                "block"
            } else {
                "flag"
            };
            (r.a.clone(), r.b.clone(), d)
        })
        .collect();
    seen.sort();
    got.sort();
    assert_eq!(got, seen, "the log holds exactly the intercepted calls");
    for r in &recorded {
        assert!(!r.rules.is_empty(), "{r:?}");
        assert!(!r.explanation.is_empty() && r.code != 0 || r.decision == "flag");
        assert!(String::from_utf8_lossy(&r.headers).starts_with("INVITE "));
    }

    // One fraud number, asked for in its national form with spaces.
    let (a, _, _) = seen
        .iter()
        .find(|(a, _, d)| a.as_deref().is_some_and(|a| a.starts_with("+77")) && *d == "block")
        .unwrap();
    let a = a.clone().unwrap();
    let national = format!("8 {}", &a[2..]);
    let want = recorded
        .iter()
        .filter(|r| r.a.as_deref() == Some(&a) || r.b.as_deref() == Some(&a))
        .count();
    let plan_number = plan
        .normalize(national.replace(' ', "").as_bytes())
        .unwrap()
        .to_string();
    assert_eq!(plan_number, a);
    let by_number = kuzet_store::query::calls(
        &conn,
        &kuzet_store::query::Filter {
            number: Some(plan_number),
            ..Default::default()
        },
        None,
        1000,
    )
    .unwrap();
    let non_sample: Vec<_> = by_number.calls.iter().filter(|r| !r.sampled).collect();
    assert_eq!(non_sample.len(), want);
    assert!(non_sample
        .iter()
        .all(|r| r.a.as_deref() == Some(&a) || r.b.as_deref() == Some(&a)));
}
