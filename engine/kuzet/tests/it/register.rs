//! Reporting to the pre-trial register, against the stand-in register of
//! `kuzet-sim` speaking `kuzet.register.v1` over real gRPC: a register
//! that is down while incidents are made and kuzet is SIGKILLed and
//! restarted, one that refuses, and one that stalls while calls go on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kuzet_sim::register::{read_entries, Entry, Mode};

use crate::common::{ask, client, invite, status, Pki, Reg, TempDir, Watched};

fn free_tcp() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn config(dir: &TempDir, register: SocketAddr) {
    dir.write(
        "block.txt",
        "+77011110001,fraud one\n+77011110002,fraud two\n+77011110003,fraud three\n",
    );
    dir.write(
        "kuzet.toml",
        &format!(
            "[server]\nstats_interval_secs = 1\n\
             [lists]\nblocklist = [\"block.txt\"]\n\
             [store]\nnode_name = \"kz-test\"\n\
             [incidents]\nreport_min_blocked = 3\nupdate_interval_secs = 1\n\
             [register]\nendpoint = \"http://{register}\"\ntimeout_ms = 2000\n"
        ),
    );
}

fn block_calls(w: &Watched, from: &str, n: usize, tag: &str) {
    let s = client();
    let port = s.local_addr().unwrap().port();
    for i in 0..n {
        let r = ask(
            &s,
            w.addr,
            &invite(
                from,
                &format!("+770200000{i:02}"),
                &format!("{tag}-{i}"),
                port,
            ),
        );
        assert_eq!(status(&r), 603, "{r}");
    }
}

/// The register's latest accepted report per key, and how many cases it
/// opened per key.
fn register_view(file: &Path) -> (HashMap<String, Entry>, HashMap<String, usize>) {
    let mut latest = HashMap::new();
    let mut opened: HashMap<String, usize> = HashMap::new();
    for e in read_entries(file).unwrap() {
        if e.op == "submit" && !e.duplicate {
            *opened.entry(e.key.clone()).or_default() += 1;
        }
        let keep = latest
            .get(&e.key)
            .is_none_or(|l: &Entry| e.seq >= l.seq && !e.duplicate);
        if keep {
            latest.insert(e.key.clone(), e);
        }
    }
    (latest, opened)
}

/// kuzet's incidents, read from its store file.
fn kuzet_incidents(data: &Path) -> Vec<kuzet_store::incident::Incident> {
    let c = kuzet_store::open_reader(data).unwrap();
    kuzet_store::incident::list(&c, None, None, 100).unwrap()
}

fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn incidents_reach_a_register_that_was_down_across_a_sigkill_exactly_once() {
    let dir = TempDir::new("register-down");
    let raddr = free_tcp();
    config(&dir, raddr);
    let data: PathBuf = dir.path().join("data");
    let file = dir.path().join("register.jsonl");

    let mut w = Watched::start(&["-c", "kuzet.toml", "--data", "data"], dir.path());
    for (i, a) in ["+77011110001", "+77011110002", "+77011110003"]
        .iter()
        .enumerate()
    {
        block_calls(&w, a, 3, &format!("down-{i}"));
    }
    // The register is down: deliveries fail and are retried.
    w.wait_for("register delivery failed", Duration::from_secs(20));
    let before = kuzet_incidents(&data);
    assert_eq!(before.len(), 3);
    assert!(before
        .iter()
        .all(|i| i.reportable && i.register_state == "pending"));

    // SIGKILL: no chance to flush anything. What was committed stays.
    w.signal("KILL");
    let _ = w.wait_exit();
    let w = Watched::start(&["-c", "kuzet.toml", "--data", "data"], dir.path());
    // An incident whose report was already tried grows after the restart:
    // the tried report stays as it was, and an update must follow. (One
    // never tried would simply carry the growth.)
    let tried: String = {
        let c = kuzet_store::open_reader(&data).unwrap();
        c.query_row(
            "SELECT i.key FROM incidents i JOIN outbox o ON o.incident = i.id
             WHERE o.attempts > 0 LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    block_calls(&w, &tried, 1, "after");

    let _reg = Reg::start(raddr, &file, Mode::Accept, Duration::ZERO);
    wait("every report delivered", Duration::from_secs(60), || {
        let inc = kuzet_incidents(&data);

        inc.len() == 3
            && inc.iter().all(|i| i.register_state == "delivered")
            && inc
                .iter()
                .any(|i| i.key == tried && i.blocked == 4 && i.state == "updated")
    });
    let (latest, opened) = register_view(&file);
    let mine = kuzet_incidents(&data);
    assert_eq!(latest.len(), 3, "{latest:?}");
    // Keys are the store's own id and the incident's: they survive a
    // renamed host and never repeat across stores.
    let store_id: String = kuzet_store::open_reader(&data)
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(store_id.len(), 16);
    for i in &mine {
        let key = format!("{store_id}/{}", i.id);
        assert_eq!(opened.get(&key), Some(&1), "{key} opened once: {opened:?}");
        let r = &latest[&key];
        assert_eq!(r.case, i.register_case, "{key}");
        assert_eq!(
            r.blocked, i.blocked,
            "{key}: the register holds kuzet's state"
        );
        assert_eq!(
            r.victims,
            i.evidence.victims.iter().cloned().collect::<Vec<_>>(),
            "{key}"
        );
    }
    let (code, _, log) = w.stop();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn a_refused_incident_is_dead_lettered_and_not_retried() {
    let dir = TempDir::new("register-refuse");
    let raddr = free_tcp();
    config(&dir, raddr);
    let data = dir.path().join("data");
    let file = dir.path().join("register.jsonl");
    let _reg = Reg::start(raddr, &file, Mode::Refuse, Duration::ZERO);
    let mut w = Watched::start(&["-c", "kuzet.toml", "--data", "data"], dir.path());
    block_calls(&w, "+77011110001", 3, "refused");
    w.wait_for("incident dead-lettered", Duration::from_secs(20));
    wait("the dead letter recorded", Duration::from_secs(10), || {
        kuzet_incidents(&data)
            .iter()
            .any(|i| i.register_state == "dead_letter")
    });
    let inc = kuzet_incidents(&data);
    assert_eq!(inc.len(), 1);
    assert_eq!(inc[0].register_state, "dead_letter");
    assert!(
        inc[0].register_error.contains("told to refuse"),
        "{:?}",
        inc[0]
    );
    // Investigators see it among the dead letters.
    let c = kuzet_store::open_reader(&data).unwrap();
    let dead = kuzet_store::incident::list(&c, Some("dead_letter"), None, 10).unwrap();
    assert_eq!(dead.len(), 1);
    let attempts: i64 = c
        .query_row("SELECT sum(attempts) FROM outbox", [], |r| r.get(0))
        .unwrap();
    // More calls of the same source do not bring it back to life.
    block_calls(&w, "+77011110001", 2, "refused-more");
    let (code, out, log) = w.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(attempts, 1, "tried once, never retried");
    let c = kuzet_store::open_reader(&data).unwrap();
    let after: i64 = c
        .query_row("SELECT sum(attempts) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(after, 1, "{out}");
    assert!(read_entries(&file).unwrap().is_empty());
}

#[test]
fn a_stalled_register_delays_no_call() {
    let dir = TempDir::new("register-stall");
    let raddr = free_tcp();
    config(&dir, raddr);
    let data = dir.path().join("data");
    let file = dir.path().join("register.jsonl");
    let _reg = Reg::start(raddr, &file, Mode::Stall, Duration::from_secs(30));
    let w = Watched::start(&["-c", "kuzet.toml", "--data", "data"], dir.path());
    block_calls(&w, "+77011110001", 3, "stall");
    // The report is in flight and the register holds it.
    wait("the report to be sent", Duration::from_secs(20), || {
        let c = kuzet_store::open_reader(&data).unwrap();
        c.query_row("SELECT coalesce(sum(attempts), 0) FROM outbox", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
            >= 1
    });
    // Meanwhile every call is judged and answered as usual, none failed
    // open, and every one of them is recorded.
    block_calls(&w, "+77011110002", 200, "during");
    let (code, out, log) = w.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!out.contains("failopen"), "{out}");
    assert!(out.contains("verdict_block_total=203"), "{out}");
    assert!(out.contains("store_records_total=203"), "{out}");
}

/// Over TLS, kuzet trusts the register only through the configured CA:
/// with it, reports are delivered; with another CA, they wait, retried.
#[test]
fn reports_go_over_tls_to_a_register_signed_by_the_configured_ca() {
    let dir = TempDir::new("register-tls");
    let pki = Pki::new(dir.path(), "register");
    let server = pki.server("register");
    let (ca, other_ca) = (pki.ca(), Pki::new(dir.path(), "other").ca());
    let raddr = free_tcp();
    let file = dir.path().join("register.jsonl");
    let _reg = Reg::start_tls(
        raddr,
        &file,
        Mode::Accept,
        Duration::ZERO,
        Some((server.cert_pem(), server.key_pem())),
    );
    for (tag, ca_file, delivered) in [("good", &ca, true), ("wrong", &other_ca, false)] {
        let run = TempDir::new(&format!("register-tls-{tag}"));
        config(&run, raddr);
        let toml = std::fs::read_to_string(run.path().join("kuzet.toml"))
            .unwrap()
            .replace(
                &format!("endpoint = \"http://{raddr}\""),
                &format!(
                    "endpoint = \"https://{raddr}\"\nca_file = {:?}",
                    ca_file.display().to_string()
                ),
            );
        run.write("kuzet.toml", &toml);
        let data = run.path().join("data");
        let mut w = Watched::start(&["-c", "kuzet.toml", "--data", "data"], run.path());
        block_calls(&w, "+77011110001", 3, tag);
        if delivered {
            wait("delivery over TLS", Duration::from_secs(20), || {
                kuzet_incidents(&data)
                    .iter()
                    .any(|i| i.register_state == "delivered")
            });
        } else {
            w.wait_for("register delivery failed", Duration::from_secs(20));
            wait("the failure recorded", Duration::from_secs(10), || {
                kuzet_incidents(&data)
                    .iter()
                    .any(|i| !i.register_error.is_empty())
            });
            let inc = kuzet_incidents(&data);
            assert_eq!(inc[0].register_state, "pending", "{inc:?}");
        }
        let (code, _, log) = w.stop();
        assert_eq!(code, Some(0), "{log}");
    }
    let (latest, _) = register_view(&file);
    assert_eq!(
        latest.len(),
        1,
        "only the run that trusted the right CA got through"
    );
}
