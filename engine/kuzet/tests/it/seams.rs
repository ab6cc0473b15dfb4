//! Issue 19's defects, each a regression test named after it, where the
//! defect shows only across a process or a thread: kuzet starting under
//! traffic, a reload between a call and its record, a reload abandoned and
//! retried, control answering while a full table is swept.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{header, invite, status, wait, TempDir, Watched};

/// Regression: kuzet bound its SIP sockets, then spent ~100 ms setting its
/// tables aside; calls that queued meanwhile were past their 50 ms budget
/// when the workers started and were let through unscored (the first 11
/// of a blocklisted caller at 200 calls/s got 302, every time). A budget
/// now counts from no earlier than the handler being ready.
#[test]
fn a_blocklisted_caller_at_200_calls_a_second_while_kuzet_starts_gets_603_from_the_first_call() {
    let dir = TempDir::new("start-burst");
    dir.write("block.txt", "+77011112233,fraud line\n");
    let listen = SocketAddr::from(([127, 0, 0, 1], crate::ports::free_port()));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    // Call number -> status of its first answer.
    let answers: Arc<Mutex<BTreeMap<u32, u16>>> = Arc::default();
    let sender = {
        let (s, stop) = (sock.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let msg = invite("+77011112233", "+77020000001", &format!("sb-{i}"), port);
                // Nobody listens until kuzet binds: those are lost.
                let _ = s.send_to(msg.as_bytes(), listen);
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            i
        })
    };
    let receiver = {
        let (answers, stop) = (answers.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                let r = String::from_utf8_lossy(&buf[..n]).into_owned();
                let Some(i) = header(&r, "Call-ID")
                    .and_then(|c| c.strip_prefix("sb-"))
                    .and_then(|i| i.parse().ok())
                else {
                    continue;
                };
                answers.lock().unwrap().entry(i).or_insert(status(&r));
            }
        })
    };
    // A budget ten times the default, so a loaded machine (the suite runs
    // in parallel) does not fail calls open for being slow; and tables
    // three times the default (about 550 MB), so setting them aside takes
    // long enough that the calls queued meanwhile would be past even that
    // budget (checked: without the fix, calls from the 12th on get 302).
    dir.write(
        "kuzet.toml",
        "[lists]\nblocklist = [\"block.txt\"]\n[verdict]\nfailopen_budget_us = 500000\n\
         [rules]\nmax_tracked_numbers = 3000000\n",
    );
    let w = Watched::start_on(listen, &["-c", "kuzet.toml"], dir.path());
    wait("200 calls answered", || {
        (answers.lock().unwrap().len() >= 200).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    receiver.join().unwrap();
    w.stop();
    let answers = answers.lock().unwrap();
    let first = *answers.keys().next().unwrap();
    assert!(first > 0, "some calls were sent before kuzet listened");
    let let_through: Vec<_> = answers.iter().filter(|(_, s)| **s != 603).collect();
    assert!(
        let_through.is_empty(),
        "of {sent} calls sent from call {first} on, these were not blocked \
         (call, status): {let_through:?}"
    );
}

/// The `version=` a log line gives.
fn version_in(line: &str) -> String {
    line.split("version=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no version in {line:?}"))
        .to_string()
}

/// Regression: the verdict event took the snapshot current when the event
/// was built, not the one that judged the call, so a reload in between
/// gave the store (and the register) another snapshot's rules, reasons and
/// version. Here the store is held while the list's reason changes: the
/// record, written after the reload, still carries the judging snapshot's
/// reason and version; a call after the reload carries the new ones.
#[test]
fn a_reload_between_a_call_and_its_record_keeps_the_judging_snapshot() {
    use crate::attacks::{recorded, verdict_id, wait_recorded};
    use crate::common::{ask, client};
    let dir = TempDir::new("reload-between");
    dir.write("block.txt", "+77011112233,first reason\n");
    dir.write(
        "kuzet.toml",
        "[server]\nstats_interval_secs = 1\n[lists]\nblocklist = [\"block.txt\"]\nreload_interval_ms = 50\n",
    );
    let mut w = Watched::start(&["-c", "kuzet.toml", "--data", "data"], dir.path());
    let first = version_in(
        w.log
            .iter()
            .find(|l| l.contains("lists loaded"))
            .expect("the start-up load's line"),
    );
    let data = dir.path().join("data");
    let lock = rusqlite::Connection::open(data.join("kuzet.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE;").unwrap();
    let c = client();
    let port = c.local_addr().unwrap().port();
    let addr = w.addr;
    let call = |id: &str| {
        let r = ask(&c, addr, &invite("+77011112233", "+77020000001", id, port));
        assert_eq!(status(&r), 603, "{r}");
        verdict_id(&r).expect("a verdict id")
    };
    let before = call("rb-1");
    let tmp = dir.path().join("block.tmp");
    std::fs::write(&tmp, "+77011112233,second reason\n").unwrap();
    std::fs::rename(&tmp, dir.path().join("block.txt")).unwrap();
    let second = version_in(&w.wait_for("lists reloaded", Duration::from_secs(20)));
    assert_ne!(first, second);
    let after = call("rb-2");
    lock.execute_batch("COMMIT;").unwrap();
    drop(lock);
    wait_recorded(&data, &before);
    wait_recorded(&data, &after);
    for (id, version, reason, other) in [
        (&before, &first, "first reason", "second reason"),
        (&after, &second, "second reason", "first reason"),
    ] {
        let r = &recorded(&data, id)[0];
        assert_eq!(&r.lists_version, version, "{r:?}");
        assert_eq!(r.list_hit.as_ref().unwrap().reason, reason, "{r:?}");
        assert!(
            r.explanation.contains(reason) && !r.explanation.contains(other),
            "{}",
            r.explanation
        );
    }
    w.stop();
}

/// A counter's value in a `/metrics` scrape.
fn counter(scrape: &str, name: &str) -> u64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in the scrape")) as u64
}

/// Regression: the behaviour state's sweep ran inline on the control
/// runtime, O(capacity) (about 170 MB at the default cap), and while it
/// ran, gRPC, `/metrics`, `/readyz`, the reporter and SIGHUP all waited.
/// Here the callers' table is filled to its cap and swept every second; a
/// scrape sees a sweep in progress (it could not, were the sweep on the
/// runtime), and during that sweep `/readyz` and an investigator's query
/// are each answered within 100 ms.
#[test]
fn control_stays_responsive_during_a_sweep_of_a_full_table() {
    use crate::common::{start, test_config};
    use crate::operations::http_get;
    use kuzet_api::investigation as pb;
    use kuzet_api::investigation::investigation_service_client::InvestigationServiceClient;
    const CAP: u64 = 1_500_000;
    let dir = TempDir::new("sweep-full");
    let mut c = test_config();
    c.rules.max_tracked_numbers = CAP as usize;
    c.server.stats_interval_secs = 1;
    c.store.enabled = true;
    c.store.dir = Some(dir.path().join("data"));
    c.control.tokens = vec![kuzet::config::TokenConfig {
        name: "ana".into(),
        role: "investigator".into(),
        sha256: kuzet_control::access::hash_token("kz_sweep_test_token"),
    }];
    let k = start(c);
    let (admin, control) = (k.admin_addr.unwrap(), k.control_addr.unwrap());
    let now = k.handler.state_now();
    let callers = &k.handler.state().callers;
    for n in 1..=CAP {
        callers.with(77_010_000_000 + n, now, |_| ());
    }
    // A sweep that finds the table past 90% trims it towards 80%, and the
    // node sweeps every second while it fills: what is left here depends
    // on when the last one ran (88% on one CI run). The sweep walks every
    // slot whatever the fill, so half full is full enough for this test.
    assert!(callers.len() as u64 >= CAP / 2, "{}", callers.len());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut query = rt.block_on(async {
        InvestigationServiceClient::connect(format!("http://{control}"))
            .await
            .unwrap()
    });
    let sweeping = || {
        let (_, m) = http_get(admin, "/metrics");
        let (started, done) = (
            counter(&m, "kuzet_state_sweeps_started_total"),
            counter(&m, "kuzet_state_sweeps_total"),
        );
        (started > done).then_some(started)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut probes = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no scrape answered during a sweep, or none within 100 ms: {probes:?}"
        );
        let Some(sweep) = sweeping() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let t = Instant::now();
        let (code, _) = http_get(admin, "/readyz");
        let readyz = t.elapsed();
        assert_eq!(code, 200);
        let t = Instant::now();
        let mut req = tonic::Request::new(pb::QueryCallsRequest::default());
        req.metadata_mut().insert(
            "authorization",
            "Bearer kz_sweep_test_token".parse().unwrap(),
        );
        rt.block_on(query.query_calls(req))
            .expect("the query is answered");
        let answered = t.elapsed();
        // Still the same sweep: both were answered while it ran.
        let during = sweeping() == Some(sweep);
        probes.push((sweep, during, readyz, answered));
        let limit = Duration::from_millis(100);
        if during && readyz < limit && answered < limit {
            break;
        }
    }
    k.stop();
}
