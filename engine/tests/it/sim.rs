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
use crate::sipp::{parse_counts, Kuzet};

pub(crate) fn small() -> Traffic {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/scenarios/small.toml");
    Traffic::generate(&Scenario::from_file(&p).unwrap()).unwrap()
}

pub(crate) fn run(t: &Traffic, to: SocketAddr, proto: Proto) -> Report {
    let mut o = Options::new(to, t.calls.len());
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
