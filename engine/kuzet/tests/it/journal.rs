//! The call journal as rule authors and analysts meet it: the small
//! scenario run live through engines that keep a journal, the journal
//! replayed (`kuzet_journal::replay`, what `kuzet rules backtest` runs)
//! and compared call for call with what the engines did live, read by
//! DuckDB from the venv `scripts/install-deps.sh` makes, a list changed
//! mid-run, promotion refused and accepted over gRPC, and the journal's
//! disk filled under the binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kuzet::config::Config;
use kuzet_api::rules as rpb;
use kuzet_api::rules::rule_service_client::RuleServiceClient;
use kuzet_dataplane::metrics::Counter;
use kuzet_journal::archive::Loader;
use kuzet_journal::read::Rows;
use kuzet_journal::replay::{self, Candidate, Report};
use kuzet_journal::Row;
use kuzet_rules::ruleset::RuleSet;
use kuzet_rules::Decision;
use kuzet_sim::driver::Proto;
use kuzet_sim::traffic::Traffic;

use crate::common::{ask, client, invite, start, status, wait, TempDir, Watched};
use crate::publishing::{channel, config as publishing_config, req, rt};

/// The shipped rules with every rule that ships in shadow enforced.
fn all_enforced() -> String {
    include_str!("../../../../deploy/rules/default.toml")
        .replace("mode = \"shadow\"   #", "mode = \"enforce\"   #")
}

/// The engine config the scenario writes, with a store and journal in
/// `dir/data` and the rules `rules` (a file in `dir`).
fn scenario_config(t: &Traffic, dir: &TempDir, rules: &str) -> Config {
    t.write_engine_files(dir.path()).unwrap();
    dir.write("rules.toml", rules);
    let mut c = Config::from_file(&dir.path().join("kuzet.toml")).unwrap();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.udp_workers = 1;
    c.control.listen = "127.0.0.1:0".parse().unwrap();
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
    c.rules.max_tracked_numbers = 50_000;
    c.rules.file = Some(dir.path().join("rules.toml"));
    c.store.enabled = true;
    c.store.dir = Some(dir.path().join("data"));
    c.journal.roll_s = 1;
    c
}

/// Waits, if need be, until the clock is early enough in its minute that
/// a run of a few seconds stays inside one minute (and one hour): then
/// two runs of the same calls count every window alike.
fn early_in_the_minute() {
    wait("a run to fit in one minute", || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        (now % 60 < 30 && now % 3600 < 3570).then_some(())
    });
}

/// Runs the small scenario live through an engine on `rules`, outcomes
/// reported; returns the journal's folder and the engine's decisions as
/// counted.
fn live_run(t: &Traffic, tag: &str, rules: &str) -> (TempDir, [u64; 4], u64) {
    let dir = TempDir::new(tag);
    let c = scenario_config(t, &dir, rules);
    let e = start(c);
    early_in_the_minute();
    let r = crate::sim::run_with(t, e.udp_addr, Proto::Udp, true);
    assert_eq!(r.answered, r.sent, "{}", r.table());
    let m = e.metrics.clone();
    let counts = [
        Counter::Allowed,
        Counter::Flagged,
        Counter::Redirected,
        Counter::Blocked,
    ]
    .map(|c| m.get(c));
    let fail_open = m.get(Counter::FailOpenOverload) + m.get(Counter::FailOpenInternal);
    e.stop();
    (dir, counts, fail_open)
}

fn journal_of(dir: &TempDir) -> PathBuf {
    dir.path().join("data").join("journal")
}

fn calls(root: &Path) -> Vec<kuzet_journal::CallRow> {
    Rows::open(root, 0, i64::MAX)
        .filter_map(|r| match r {
            Row::Call(c) => Some(c),
            Row::Outcome(_) => None,
        })
        .collect()
}

fn backtest(root: &Path, rules: Option<&str>) -> Report {
    let c = Config::default();
    let plan = c.plan().unwrap();
    let policy = c.sources().policy;
    let cand = Candidate {
        label: "test".into(),
        rules: rules.map(|text| {
            std::sync::Arc::new(RuleSet::from_toml_str(text, "rules.toml", &plan, &policy).unwrap())
        }),
        lists: Vec::new(),
    };
    let mut loader = Loader::new(root, plan, policy);
    let opts = replay::Options {
        max_numbers: 50_000,
        ..replay::Options::default()
    };
    replay::backtest(root, &mut loader, &cand, &opts, &mut |_, _| {}).unwrap()
}

/// Live with R, then replayed with R: every call comes out as it did.
/// Replayed with R′ (the shipped rules, shadow as shipped): the changes
/// are exactly those a live run with R′ of the same calls shows, call for
/// call. DuckDB reads the journal and counts the decisions kuzet counted.
#[test]
fn the_journal_replays_live_verdicts_exactly_and_predicts_another_rule_set() {
    let t = crate::sim::small();
    let r = all_enforced();
    let r2 = include_str!("../../../../deploy/rules/default.toml");
    let (a, a_counts, a_fail_open) = live_run(&t, "journal-r", &r);
    let (b, _, _) = live_run(&t, "journal-r2", r2);
    let (ja, jb) = (journal_of(&a), journal_of(&b));
    let (ca, cb) = (calls(&ja), calls(&jb));
    assert!(ca.len() > 400, "{} calls journalled", ca.len());
    // Fidelity: R over R's journal changes nothing.
    let same = backtest(&ja, Some(&r));
    assert_eq!(same.calls, ca.len() as u64);
    assert_eq!((same.changed, same.skipped), (0, 0), "{same:?}");
    assert!(same.outcomes > 0, "outcomes were replayed");
    assert!(same.blocked.calls > 0 && same.flagged.calls + same.redirected.calls > 0);
    let in_force = {
        let c = Config::default();
        let mut loader = Loader::new(&ja, c.plan().unwrap(), c.sources().policy);
        replay::backtest(
            &ja,
            &mut loader,
            &Candidate::default(),
            &replay::Options::default(),
            &mut |_, _| {},
        )
        .unwrap()
    };
    assert_eq!((in_force.calls, in_force.changed), (same.calls, 0));
    // R′ over R's journal against R′ live, call for call.
    // Calls are matched by caller, callee and which of that pair's calls
    // they are: the driver's pacing may interleave callers differently
    // from run to run, never one caller's own calls.
    let keyed = |rows: &[kuzet_journal::CallRow]| {
        let mut seen = std::collections::HashMap::new();
        rows.iter()
            .map(|c| {
                let k = seen.entry((c.caller, c.callee)).or_insert(0u32);
                *k += 1;
                ((c.caller, c.callee, *k), c.decision)
            })
            .collect::<std::collections::HashMap<_, _>>()
    };
    let (ka, kb) = (keyed(&ca), keyed(&cb));
    assert_eq!(ka.len(), kb.len(), "both runs judged the same calls");
    let mut live = std::collections::BTreeMap::<(String, String), u64>::new();
    for (k, x) in &ka {
        let y = kb.get(k).expect("the same calls in both runs");
        if x != y {
            *live
                .entry((x.as_str().into(), y.as_str().into()))
                .or_default() += 1;
        }
    }
    let other = backtest(&ja, Some(r2));
    let predicted: std::collections::BTreeMap<(String, String), u64> = other
        .transitions
        .iter()
        .map(|t| ((t.from.clone(), t.to.clone()), t.count.calls))
        .collect();
    assert!(!live.is_empty(), "R and R′ differ on some calls");
    assert_eq!(predicted, live);
    let count = |d: Decision| cb.iter().filter(|c| c.decision == d).count() as u64;
    assert_eq!(other.after.block, count(Decision::Block));
    assert_eq!(other.after.allow, count(Decision::Allow));
    // Every shadow rule of R′ that fired is reported with what
    // enforcing it would do.
    assert!(!other.shadow.is_empty(), "{:?}", other.shadow);
    // DuckDB reads what kuzet wrote: calls per decision as counted.
    let q = format!(
        "import duckdb\nrows = duckdb.sql(\"select decision, count(*) from read_parquet('{}/calls/*/*/*.parquet', hive_partitioning=true) group by decision\").fetchall()\nprint(dict(rows))",
        ja.display()
    );
    let out = duckdb(&q);
    let got: std::collections::HashMap<String, u64> = out
        .trim()
        .trim_matches(|c| c == '{' || c == '}')
        .split(", ")
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once(": ").unwrap();
            (k.trim_matches('\'').to_string(), v.parse().unwrap())
        })
        .collect();
    let n = |k: &str| got.get(k).copied().unwrap_or(0);
    assert_eq!(n("allow"), a_counts[0] - a_fail_open, "{out}");
    assert_eq!(
        [n("flag"), n("redirect"), n("block")],
        [a_counts[1], a_counts[2], a_counts[3]],
        "{out}"
    );
}

/// Runs `script` with the venv's Python (DuckDB installed by
/// scripts/install-deps.sh); its standard output.
fn duckdb(script: &str) -> String {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/install-deps.sh (it installs DuckDB there)",
        py.display()
    );
    let out = std::process::Command::new(&py)
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The blocklist file changes while calls go on: the calls before were
/// judged under one version, those after under another, and the replay
/// judges each under its own (the number added is blocked only after).
#[test]
fn a_backtest_across_a_list_change_replays_each_call_under_its_own_version() {
    let dir = TempDir::new("journal-lists");
    dir.write("block.txt", "+77011111111,fraud\n");
    let mut c = crate::common::test_config();
    c.store.enabled = true;
    c.store.dir = Some(dir.path().join("data"));
    c.lists.files[kuzet_rules::ListId::Block] =
        vec![kuzet::config::ListEntry::path(dir.path().join("block.txt"))];
    c.journal.roll_s = 1;
    let e = start(c);
    let sock = client();
    let port = sock.local_addr().unwrap().port();
    let mut n = 0;
    let mut call = |a: &str| {
        n += 1;
        status(&ask(
            &sock,
            e.udp_addr,
            &invite(a, "+77019990000", &format!("jl-{n}"), port),
        ))
    };
    let before = e.lists.load().version;
    assert_eq!(call("+77022222222"), 302);
    assert_eq!(call("+77011111111"), 603);
    dir.write("block.txt", "+77011111111,fraud\n+77022222222,fraud\n");
    wait("the new blocklist in force", || {
        (e.lists.load().version != before).then_some(())
    });
    assert_eq!(call("+77022222222"), 603);
    let journal = dir.path().join("data").join("journal");
    e.stop();
    let rows = calls(&journal);
    assert_eq!(rows.len(), 3);
    assert_ne!(rows[0].version, rows[2].version);
    let c = Config::default();
    let mut loader = Loader::new(&journal, c.plan().unwrap(), c.sources().policy);
    let r = replay::backtest(
        &journal,
        &mut loader,
        &Candidate::default(),
        &replay::Options::default(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!((r.calls, r.changed, r.skipped), (3, 0, 0), "{r:?}");
    assert_eq!(r.versions.len(), 2);
    assert!(r.versions.iter().all(|v| v.kept));
    assert_eq!((r.after.block, r.after.allow), (2, 1));
}

/// Staged rules that enforce a rule the version in force keeps in shadow:
/// refused without a backtest, refused with one too short, accepted with
/// one long enough (shown in the answer and the version), and an admin
/// may go without (audited).
#[test]
fn promotion_needs_a_backtest_long_enough() {
    let dir = TempDir::new("journal-promote");
    let mut c = publishing_config(&dir);
    c.journal.roll_s = 1;
    // Evidence must span two seconds of calls here (a day by default).
    c.publishing.backtest_min_hours = 2.0 / 3600.0;
    let e = start(c);
    let control = e.control_addr.unwrap();
    let shipped = include_str!("../../../../deploy/rules/default.toml");
    let promoted = all_enforced();
    let sock = client();
    let port = sock.local_addr().unwrap().port();
    let send = |tag: &str| {
        for i in 0..5 {
            let r = ask(
                &sock,
                e.udp_addr,
                &invite(
                    "+77013334455",
                    &format!("+7702000000{i}"),
                    &format!("{tag}-{i}"),
                    port,
                ),
            );
            assert!(matches!(status(&r), 302 | 603), "{r}");
        }
    };
    rt().block_on(async {
        let ch = channel(control).await;
        let mut r = RuleServiceClient::new(ch.clone());
        let stage = |text: &str| rpb::StageRequest {
            text: Some(rpb::RuleText {
                name: "rules.toml".into(),
                toml: text.into(),
            }),
            ..Default::default()
        };
        r.stage(req(stage(shipped), Some("rui"))).await.unwrap();
        // The shipped rules enforce more than the built-in ones: with no
        // journal yet, an admin puts them in force without a backtest.
        let first = r
            .activate(req(
                rpb::ActivateRequest {
                    version: "v1".into(),
                    without_backtest: true,
                    ..Default::default()
                },
                Some("root"),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(first.backtest.is_none());
        let v2 = r
            .stage(req(stage(&promoted), Some("rui")))
            .await
            .unwrap()
            .into_inner()
            .version
            .unwrap()
            .id;
        let activate = |without: bool| rpb::ActivateRequest {
            version: v2.clone(),
            without_backtest: without,
            ..Default::default()
        };
        send("first");
        // Calls far enough apart for the evidence the config asks.
        let t0 = std::time::Instant::now();
        wait("three seconds of calls", || {
            (t0.elapsed() >= Duration::from_secs(3)).then_some(())
        });
        send("second");
        wait("the journal written", || {
            (e.metrics.value("journal_files_total").unwrap_or(0) >= 2).then_some(())
        });
        let refused = r
            .activate(req(activate(false), Some("apo")))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::FailedPrecondition,
            "{refused:?}"
        );
        assert!(
            refused.message().contains("needs a backtest"),
            "{}",
            refused.message()
        );
        // A backtest over the last second alone is too short.
        let rc = r.clone();
        let run = |since_s: i64| {
            let mut r = rc.clone();
            let v = v2.clone();
            async move {
                let mut s = r
                    .backtest(req(
                        rpb::BacktestRequest {
                            rules: Some(rpb::backtest_request::Rules::Version(v)),
                            since_s,
                            ..Default::default()
                        },
                        Some("rui"),
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                loop {
                    let m = s.message().await.unwrap().unwrap();
                    if !m.report_json.is_empty() {
                        return m;
                    }
                }
            }
        };
        let short = run(2).await;
        let short_report: Report = serde_json::from_str(&short.report_json).unwrap();
        assert!(short_report.hours < 2.0 / 3600.0, "{}", short_report.hours);
        let still = r
            .activate(req(activate(false), Some("apo")))
            .await
            .unwrap_err();
        assert_eq!(still.code(), tonic::Code::FailedPrecondition, "{still:?}");
        assert!(
            still.message().contains("its newest backtest replayed"),
            "{}",
            still.message()
        );
        // A rule author may not go without; neither may an approver.
        let no = r
            .activate(req(activate(true), Some("apo")))
            .await
            .unwrap_err();
        assert_eq!(no.code(), tonic::Code::PermissionDenied, "{no:?}");
        let long = run(3600).await;
        assert_eq!(long.attached_to, v2);
        let long_report: Report = serde_json::from_str(&long.report_json).unwrap();
        assert_eq!(long_report.calls, 10);
        assert!(long_report.hours >= 2.0 / 3600.0);
        let ok = r
            .activate(req(activate(false), Some("apo")))
            .await
            .unwrap()
            .into_inner();
        let b = ok.backtest.expect("the activation shows its evidence");
        assert_eq!((b.by.as_str(), b.calls), ("rui", 10));
        let versions = r
            .list_versions(req(rpb::ListVersionsRequest::default(), Some("apo")))
            .await
            .unwrap()
            .into_inner();
        let shown = versions.versions.iter().find(|v| v.id == v2).unwrap();
        assert_eq!(shown.backtests.len(), 2);
        // Back to v1, then forward again by an admin without a backtest
        // (there is one now; the audit row says which was used).
        r.rollback(req(rpb::RollbackRequest::default(), Some("apo")))
            .await
            .unwrap();
        // Trends answer from the same journal.
        let tr = r
            .trends(req(
                rpb::TrendsRequest {
                    since_s: 3600,
                    recent_s: 60,
                },
                Some("rui"),
            ))
            .await
            .unwrap()
            .into_inner();
        let tr: kuzet_journal::trends::TrendReport = serde_json::from_str(&tr.report_json).unwrap();
        assert_eq!(tr.calls, 10);
    });
    e.stop();
}

/// The journal's disk fills while calls go on: every call is answered,
/// the rows lost are counted and said at WARN, and once there is room
/// again the journal is written again.
#[test]
fn a_full_journal_disk_loses_rows_loudly_and_calls_go_on() {
    let dir = TempDir::new("journal-full");
    dir.write(
        "kuzet.toml",
        "[server]\nstats_interval_secs = 1\n[journal]\nroll_s = 1\ndir = \"journal\"\n",
    );
    let journal = dir.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=2m,mode=0700 kuzet-journal '{}' && exec \"$0\" \"$@\"",
        journal.display()
    );
    let mut w = Watched::start_with(
        "unshare",
        &["-rm", "sh", "-c", &script, env!("CARGO_BIN_EXE_kuzet")],
        &["-c", "kuzet.toml", "--data", "data"],
        dir.path(),
    );
    let seen = PathBuf::from(format!("/proc/{}/root{}", w.pid(), journal.display()));
    let addr: SocketAddr = w.addr;
    let s = client();
    let port = s.local_addr().unwrap().port();
    let send = |tag: &str, n: usize| {
        for i in 0..n {
            let r = ask(
                &s,
                addr,
                &invite("+77011234567", "+77029876543", &format!("{tag}-{i}"), port),
            );
            assert_eq!(status(&r), 302, "{r}");
        }
    };
    send("before", 20);
    crate::store::wait_counters(&mut w, |c| c("journal_files_total") >= 1);
    crate::store::fill(&seen.join("filler"));
    send("full", 200);
    w.wait_for("call journal rows lost", Duration::from_secs(20));
    let during = crate::store::wait_counters(&mut w, |c| c("journal_write_failed_total") > 0);
    assert!(
        crate::store::counter_in(&during, "journal_write_failed_total") > 0,
        "{during}"
    );
    std::fs::remove_file(seen.join("filler")).unwrap();
    let written = crate::store::counter_in(&during, "journal_files_total");
    // Calls go on until the journal is written again (the writer tries
    // the disk again at most once a second).
    let mut again = false;
    for round in 0..20 {
        send(&format!("after-{round}"), 5);
        let line = crate::store::wait_counters(&mut w, |_| true);
        if crate::store::counter_in(&line, "journal_files_total") > written {
            again = true;
            break;
        }
    }
    assert!(
        again,
        "the journal was not written again once there was room"
    );
    let (code, _out, log) = w.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("WARN"), "{log}");
}

/// Three days of an operator's traffic for the early warnings:
/// subscribers, steady callers from abroad, an allowlisted call centre and
/// a clinic's reminder line (called back) throughout; a foreign range
/// (+225 07) that began calling on the last day; and a robocalling SIM
/// box of four SIMs, each placing about nine calls an hour, most of them
/// unanswered or short: under every hourly threshold, yet reaching
/// hundreds of subscribers, none of whom call back.
const DAYS: &str = r#"
seed = 23
duration_s = 259200

[subscribers]
first = 7010000000
count = 200000

[[legit]]
name = "people"
kind = "subscribers"
cps = 0.03

[[legit]]
name = "abroad"
kind = "inbound_international"
cps = 0.02
callers = 2000

[[legit]]
name = "bank_call_centre"
kind = "high_volume"
cps = 0.01
callers = 2
allowlisted = true

[[legit]]
name = "clinic"
kind = "business"
cps = 0.01
callers = 2
callback_ratio = 0.3

[[legit]]
name = "new_range"
kind = "inbound_international"
numbers = ["+2250701"]
cps = 0.01
callers = 500
start_s = 172800

[[campaign]]
name = "slow_simbox"
kind = "simbox"
cps = 0.01
callers = 4
answer_ratio = 0.2
mean_duration_s = 6
"#;

/// The days' calls scored under the shipped rules and written through
/// the journal's writer into `root`, ending now, as a node running them
/// would have; returns the callers of each source by name.
fn write_days(
    root: &Path,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    use kuzet_dataplane::journal::OutcomeWhat;
    use kuzet_journal::synth::{self, Scorer};
    use kuzet_rules::ListId;
    use kuzet_sim::traffic::Behaviour;
    let sc = kuzet_sim::scenario::Scenario::from_toml_str(DAYS, "days.toml").unwrap();
    let t = Traffic::generate(&sc).unwrap();
    let plan = Config::default().plan().unwrap();
    let f = &t.files;
    let set = synth::snapshot(
        &[
            (ListId::Block, &[&f.blocklist, &f.nbfeed]),
            (ListId::Allow, &[&f.allowlist]),
        ],
        include_str!("../../../../deploy/rules/default.toml"),
        &plan,
    )
    .unwrap();
    let set = std::sync::Arc::new(set);
    let mut w = kuzet_journal::write::Writer::new(kuzet_journal::write::WriterSetup {
        root: root.to_path_buf(),
        node: "days".into(),
        trunks: t.trunks.iter().map(|(n, _)| n.as_str().into()).collect(),
        cfg: kuzet_journal::JournalConfig::default(),
        lists: std::sync::Arc::new(arc_swap::ArcSwap::new(set.clone())),
        versions: Default::default(),
        metrics: Default::default(),
    })
    .unwrap();
    let mut scorer = Scorer::new(set, plan.clone(), 50_000);
    let start = kuzet_store::now_us() - t.duration_us as i64 - 1_000_000;
    let mut out = Vec::new();
    let mut callers: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for c in &t.calls {
        let info = &t.sources[usize::from(c.source)];
        if let Some(n) = plan.normalize(c.a.as_bytes()) {
            callers
                .entry(info.name.clone())
                .or_default()
                .insert(n.to_string());
        }
        let (name, _) = &t.trunks[usize::from(c.trunk)];
        out.clear();
        scorer.score(
            &synth::Call {
                ts_us: start + c.at_us as i64,
                trunk: u16::from(c.trunk) + 1,
                trunk_kind: kuzet_rules::TrunkKind::from_name(name),
                source: std::net::IpAddr::V4(t.trunks[usize::from(c.trunk)].1),
                a: &c.a,
                from: c.from.as_deref(),
                display: c.display.as_deref(),
                b: &c.b,
                outcome: Some(match c.behaviour {
                    Behaviour::Answer { talk_ms, .. } => OutcomeWhat::Answered(talk_ms),
                    Behaviour::Cancel { after_ms } => OutcomeWhat::Cancelled(after_ms),
                    Behaviour::NoAnswer => OutcomeWhat::Cancelled(30_000),
                }),
            },
            &mut out,
        );
        for e in &out {
            w.take(*e);
        }
    }
    w.close_all();
    callers
}

/// The early warnings from days of scenario traffic in the journal: the
/// node reads them on its timer and serves their counts as gauges, and
/// `Trends` reports the surging range and every SIM of the slow SIM box,
/// each with an entry to backtest; no legitimate caller is a finding.
#[test]
fn trends_find_a_surging_range_and_a_slow_simbox_in_days_of_traffic() {
    use kuzet_dataplane::metrics::Gauge;
    let dir = TempDir::new("journal-trends");
    let root = dir.path().join("journal");
    let callers = write_days(&root);
    let mut c = publishing_config(&dir);
    c.journal.dir = Some(root.clone());
    c.journal.trends_every_s = 1;
    let e = start(c);
    wait("the node's first read of the trends", || {
        (e.metrics.gauge(Gauge::TrendLastRunUnix) > 0).then_some(())
    });
    let (surges, slow) = (
        e.metrics.gauge(Gauge::TrendSurges),
        e.metrics.gauge(Gauge::TrendSlowSimboxes),
    );
    let control = e.control_addr.unwrap();
    let report = rt().block_on(async {
        let mut r = RuleServiceClient::new(channel(control).await);
        r.trends(req(rpb::TrendsRequest::default(), Some("rui")))
            .await
            .unwrap()
            .into_inner()
    });
    let tr: kuzet_journal::trends::TrendReport = serde_json::from_str(&report.report_json).unwrap();
    assert!(tr.calls > 20_000, "{}", tr.calls);
    // The range that began calling yesterday, and only it.
    assert_eq!(
        (surges, slow),
        (tr.surges.len() as i64, tr.slow_simboxes.len() as i64)
    );
    let keys: Vec<&str> = tr.surges.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["+22507"], "{:#?}", tr.surges);
    let s = &tr.surges[0];
    assert_eq!(s.baseline_callees_per_day, 0.0);
    assert!(s.recent_callees > 500, "{s:?}");
    assert!(s.suggestion.contains("+22507"), "{s:?}");
    // Every SIM of the slow SIM box, under every hourly threshold.
    let sims = &callers["slow_simbox"];
    let found: std::collections::BTreeSet<String> =
        tr.slow_simboxes.iter().map(|b| b.number.clone()).collect();
    assert_eq!(&found, sims, "{:#?}", tr.slow_simboxes);
    for b in &tr.slow_simboxes {
        assert!(
            b.max_per_hour <= 30 && b.callees >= 300 && b.callbacks == 0,
            "{b:?}"
        );
        assert!(b.suggestion.contains(&b.number), "{b:?}");
    }
    // No legitimate caller in any finding: not the clinic, called back;
    // not the call centre, allowlisted; not subscribers or callers abroad.
    let mut named: Vec<&String> = tr.slow_simboxes.iter().map(|b| &b.number).collect();
    named.extend(tr.groups.iter().flat_map(|g| &g.numbers));
    for source in [
        "people",
        "abroad",
        "bank_call_centre",
        "clinic",
        "new_range",
    ] {
        let legit = &callers[source];
        assert!(
            named.iter().all(|n| !legit.contains(*n)),
            "{source} named in {named:?}"
        );
    }
    e.stop();
}
