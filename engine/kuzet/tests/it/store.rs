//! The intercepted-call log, met as a user meets it: calls over real UDP
//! to a running engine, then the SQLite file read back; and the faults of
//! its environment (a directory that cannot be written, a disk that fills
//! while calls go on, a store from another schema version) with the real
//! binary.

use std::time::{Duration, Instant};

use kuzet::config::ListEntry;
use kuzet_store::query::{calls, Filter};

use crate::common::{ask, client, header, invite, start, status, test_config, TempDir, Watched};

/// The verdict id in a blocked call's Reason text.
fn verdict_id_of(reply: &str) -> String {
    let reason = header(reply, "Reason").expect("a Reason header");
    let at = reason.find("verdict ").expect("a verdict id in the Reason") + 8;
    reason[at..at + 24].to_string()
}

#[test]
fn blocked_calls_are_recorded_with_their_evidence_and_the_603_cites_the_verdict() {
    let dir = TempDir::new("store-evidence");
    let block = dir.write("block.txt", "+77011234567,bank fraud desk\n");
    let mut c = test_config();
    c.lists.files[kuzet_rules::ListId::Block] = vec![ListEntry::path(block)];
    c.store.enabled = true;
    c.store.dir = Some(dir.path().join("data"));
    c.store.node_name = Some("kz-test-1".into());
    // Every allowed call is kept as a sample.
    c.store.record_allowed_every = 1;
    c.verdict.appeal_contact = Some("+7 727 000 00 00".into());
    let k = start(c);
    let s = client();
    let port = s.local_addr().unwrap().port();

    // Written nationally, with spaces: the log keeps it as received and
    // normalized.
    let blocked = invite("87011234567", "+77029876543", "ev-block-1", port);
    let r = ask(&s, k.udp_addr, &blocked);
    assert_eq!(status(&r), 603, "{r}");
    let reason = header(&r, "Reason").unwrap();
    assert!(
        reason.contains("blocklist; verdict ") && reason.ends_with("; appeal: +7 727 000 00 00\""),
        "{reason}"
    );
    let vid = verdict_id_of(&r);
    // A retransmission is answered with the same verdict id and not
    // recorded twice.
    let again = ask(&s, k.udp_addr, &blocked);
    assert_eq!(verdict_id_of(&again), vid);

    let allowed = ask(
        &s,
        k.udp_addr,
        &invite("+77015550000", "+77029876543", "ev-allow-1", port),
    );
    assert_eq!(status(&allowed), 302);
    assert!(header(&allowed, "Reason").is_none());
    k.stop();

    let conn = kuzet_store::open_reader(&dir.path().join("data")).unwrap();
    let by_id = Filter {
        verdict_id: Some(vid.to_uppercase()),
        ..Filter::default()
    };
    let page = calls(&conn, &by_id, None, 10).unwrap();
    assert_eq!(page.calls.len(), 1, "the verdict id finds its call");
    let rec = &page.calls[0];
    assert_eq!(rec.verdict_id, vid);
    assert_eq!(rec.call_id, "ev-block-1");
    assert_eq!(rec.node, "kz-test-1");
    assert_eq!(rec.a.as_deref(), Some("+77011234567"));
    assert_eq!(rec.b.as_deref(), Some("+77029876543"));
    assert_eq!(rec.from_num.as_deref(), Some("+77011234567"));
    assert_eq!(rec.pai_num, None);
    assert!(
        rec.from_hdr.contains("sip:87011234567@"),
        "{}",
        rec.from_hdr
    );
    assert_eq!(rec.ruri, "sip:+77029876543@127.0.0.1");
    assert_eq!(rec.decision, "block");
    assert_eq!(rec.code, 603);
    assert_eq!(rec.score, 100);
    assert_eq!(rec.transport, "udp");
    assert_eq!(rec.source, format!("127.0.0.1:{port}"));
    assert!(!rec.sampled);
    assert_eq!(rec.rules.len(), 1);
    assert_eq!(rec.rules[0].id, "blocklist");
    assert!(!rec.rules[0].shadow);
    let hit = rec.list_hit.as_ref().expect("the list entry");
    assert_eq!(
        (
            hit.list.as_str(),
            hit.side.as_str(),
            hit.exact,
            hit.reason.as_str()
        ),
        ("blocklist", "caller", true, "bank fraud desk")
    );
    assert!(
        rec.explanation.contains("caller listed (bank fraud desk)"),
        "{}",
        rec.explanation
    );
    assert!(!rec.lists_version.is_empty());
    let head = String::from_utf8_lossy(&rec.headers);
    assert!(
        head.starts_with("INVITE sip:+77029876543@127.0.0.1 SIP/2.0\r\n")
            && head.contains("Call-ID: ev-block-1\r\n")
            && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    let age = kuzet_dataplane::handler::evidence::unix_us() - rec.ts_us;
    assert!((0..60_000_000).contains(&age), "recorded {age} µs ago");

    // By number: the blocked call once (its retransmission was not
    // recorded again); the sampled allow is there too, marked.
    let by_a = Filter {
        number: Some("+77011234567".into()),
        ..Filter::default()
    };
    assert_eq!(calls(&conn, &by_a, None, 10).unwrap().calls.len(), 1);
    let by_b = Filter {
        number: Some("+77029876543".into()),
        ..Filter::default()
    };
    let both = calls(&conn, &by_b, None, 10).unwrap().calls;
    assert_eq!(both.len(), 2);
    assert_eq!(both[0].call_id, "ev-allow-1");
    assert!(both[0].sampled);
    assert_eq!(both[0].decision, "allow");
    assert_eq!(both[0].code, 302);
}

#[test]
fn an_unwritable_data_directory_is_an_exit_2_naming_the_path() {
    let dir = TempDir::new("store-unwritable");
    dir.write("not-a-dir", "x");
    for data in [
        dir.path().join("not-a-dir").display().to_string(),
        "/proc/kuzet-data".to_string(),
    ] {
        let w = Watched::spawn(&["--data", &data], dir.path());
        let (code, _, log) = w.wait_exit();
        assert_eq!(code, Some(2), "{log}");
        assert!(log.contains("store error") && log.contains(&data), "{log}");
    }
}

#[test]
fn a_store_from_a_newer_kuzet_is_refused_and_left_as_it_was() {
    let dir = TempDir::new("store-newer");
    let data = dir.path().join("data");
    drop(kuzet_store::open(&data, kuzet_store::Options::default()).unwrap());
    {
        let c = rusqlite::Connection::open(data.join(kuzet_store::DB_FILE)).unwrap();
        c.pragma_update(None, "user_version", 42).unwrap();
    }
    let w = Watched::spawn(&["--data", "data"], dir.path());
    let (code, _, log) = w.wait_exit();
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("schema version 42") && log.contains("kuzet.db"),
        "{log}"
    );
    let c = rusqlite::Connection::open(data.join(kuzet_store::DB_FILE)).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 42);
}

/// Waits for a counters line (logged every second) whose counters pass
/// `ok`, and returns it.
pub(crate) fn wait_counters(w: &mut Watched, ok: impl Fn(&dyn Fn(&str) -> u64) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = w.wait_for("counters:", left);
        let get = |name: &str| counter_in(&line, name);
        if ok(&get) {
            return line;
        }
    }
}

/// A counter's value in a counters line (0 when absent: zeros are left out).
pub(crate) fn counter_in(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Fills the file system holding `path` with a file there, to the last
/// byte.
pub(crate) fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    while f.write_all(&block[..1]).is_ok() {}
}

/// The disk fills while calls go on. kuzet runs with its data directory
/// on an 8 MiB tmpfs of its own (a mount namespace, `unshare -rm`); the
/// test fills that file system through `/proc/PID/root`, then frees it.
/// Calls are answered throughout. What the store cannot take waits in the
/// record queue (allocated whole at start, so a full disk cannot fault
/// it); once the queue is full, blocks are answered without a verdict id
/// (counted). When space returns, everything queued is committed: every
/// verdict id a caller was given is in the store, and only the calls
/// answered without one are missing.
#[test]
fn a_full_disk_loses_no_record_whose_verdict_id_was_given() {
    let dir = TempDir::new("store-full");
    dir.write("block.txt", "+77011234567,fraud\n");
    dir.write(
        "kuzet.toml",
        "[server]\nstats_interval_secs = 1\n[lists]\nblocklist = [\"block.txt\"]\n\
         [store]\nqueue_mb = 1\n",
    );
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=8m,mode=0700 kuzet-test '{}' && exec \"$0\" \"$@\"",
        data.display()
    );
    let mut w = Watched::start_with(
        "unshare",
        &["-rm", "sh", "-c", &script, env!("CARGO_BIN_EXE_kuzet")],
        &["-c", "kuzet.toml", "--data", "data"],
        dir.path(),
    );
    // The data directory as kuzet sees it: its own mount. (SQLite resolves
    // the /proc link, so the test sees the store only through kuzet's
    // counters and logs.)
    let seen = std::path::PathBuf::from(format!("/proc/{}/root{}", w.pid(), data.display()));
    assert!(
        seen.join(kuzet_store::DB_FILE).exists(),
        "kuzet's store is not reachable at {}",
        seen.display()
    );
    let addr = w.addr;
    let s = client();
    let port = s.local_addr().unwrap().port();
    // Every call is blocked; returns how many were given a verdict id.
    let send = |tag: &str, n: usize| -> u64 {
        let mut given = 0;
        for i in 0..n {
            let r = ask(
                &s,
                addr,
                &invite("+77011234567", "+77029876543", &format!("{tag}-{i}"), port),
            );
            assert_eq!(status(&r), 603, "{r}");
            if header(&r, "Reason").is_some_and(|v| v.contains("; verdict ")) {
                given += 1;
            }
        }
        given
    };
    let mut given = send("before", 20);
    wait_counters(&mut w, |c| c("store_records_total") == 20);
    fill(&seen.join("filler"));
    given += send("full", 3000);
    w.wait_for("store write failed", Duration::from_secs(20));
    let during = wait_counters(&mut w, |c| c("verdict_ids_withheld_total") > 0);
    assert!(given < 3020, "the queue filled: some calls got no id");
    std::fs::remove_file(seen.join("filler")).unwrap();
    given += send("after", 20);
    w.wait_for("the store is writable again", Duration::from_secs(30));
    wait_counters(&mut w, |c| c("store_records_total") == given);
    let (code, out, log) = w.stop();
    assert_eq!(code, Some(0), "{log}");
    let recorded = counter_in(&out, "store_records_total");
    let withheld = counter_in(&out, "verdict_ids_withheld_total");
    assert_eq!(recorded, given, "every verdict id given is recorded: {out}");
    assert_eq!(withheld, 3040 - given, "{out}");
    assert_eq!(counter_in(&out, "store_dropped_total"), withheld, "{out}");
    assert!(counter_in(&out, "store_write_errors_total") > 0, "{out}");
    assert!(
        counter_in(&during, "verdict_ids_withheld_total") > 0,
        "{during}"
    );
    // The loss was said at WARN, with counts.
    assert!(
        log.contains("WARN") && log.contains("records not kept since the last report"),
        "{log}"
    );
}
