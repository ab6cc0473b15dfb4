//! Issue 10, as an attacker or a bad day would try it, against the real
//! binary and real sockets: early signals, hostile files, replies too big
//! for a datagram, hostile TCP peers.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use crate::common::{free_port, Reaped, TempDir};

/// Regression: a SIGTERM right after start-up killed kuzet without its
/// counters, because the handler was installed after serving began; a
/// SIGHUP then killed it outright.
#[test]
fn a_sigterm_during_start_up_still_stops_cleanly_with_counters() {
    let dir = TempDir::new("early-sigterm");
    // Big enough that loading takes a while, so the signals land mid-load.
    let mut list = String::with_capacity(400_000 * 14);
    for i in 0..400_000u64 {
        list.push_str(&format!("+7701{:07}\n", i));
    }
    dir.write("block.txt", &list);
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args([
            "run",
            "--control",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--blocklist",
            "block.txt",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(Reaped)
        .unwrap();
    let mut err = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    // The first log line comes after the handlers are installed.
    while err.read_line(&mut line).unwrap() > 0 && !line.contains("kuzet starting") {
        line.clear();
    }
    assert!(line.contains("kuzet starting"), "{line}");
    for sig in ["-HUP", "-TERM"] {
        Command::new("kill")
            .arg(sig)
            .arg(child.0.id().to_string())
            .status()
            .unwrap();
    }
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let status = child.0.wait().unwrap();
    let mut out = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{status:?}\n{rest}");
    assert!(out.starts_with("kuzet stopped. counters:"), "{out}\n{rest}");
}

/// Regression: a near-64 KiB request over UDP got a reply too big for a
/// datagram, so it got no answer at all.
#[test]
fn a_reply_too_big_for_a_datagram_is_cut_down_or_answered_513() {
    use crate::common::{ask, client, header, invite, start, status, test_config};
    use kuzet::config::Mode;
    let eng = start(test_config());
    let c = client();
    let port = c.local_addr().unwrap().port();
    // A huge display name in From: the 302 must echo From. At 65,460
    // bytes the full reply would not fit a datagram, the one cut down to
    // what RFC 3261 requires (and the Contact) does.
    let sized = |len: usize, id: &str| {
        let base = invite("+77011234567", "+77020000001", id, port);
        let name = "a".repeat(len - base.len() - 3);
        let big = base.replacen("From: <", &format!("From: \"{name}\" <"), 1);
        assert_eq!(big.len(), len);
        big
    };
    let r = ask(&c, eng.udp_addr, &sized(65_460, "cut"));
    assert_eq!(status(&r), 302, "{}", &r[..100]);
    assert_eq!(header(&r, "Contact"), Some("<sip:+77020000001@127.0.0.1>"));
    assert!(
        header(&r, "X-Kuzet-Verdict").is_none(),
        "the optional header went"
    );
    assert!(r.len() <= 65_507);
    // At the largest datagram even that does not fit: 513, not silence.
    let r = ask(&c, eng.udp_addr, &sized(65_507, "max"));
    assert!(
        r.starts_with("SIP/2.0 513 Message Too Large"),
        "{}",
        &r[..100]
    );
    let m = eng.metrics.clone();
    eng.stop();
    assert_eq!(m.get(kuzet_dataplane::metrics::Counter::RepliesTooBig), 2);
    // Proxy mode: a request kuzet's own Via would push past a datagram
    // gets 513 rather than silence.
    let next = crate::sockets::uas();
    let mut cfg = test_config();
    cfg.server.mode = Mode::Proxy;
    cfg.proxy.next_hop = Some(next.local_addr().unwrap());
    let eng = start(cfg);
    let base = invite("+77011234567", "+77020000001", "fwd", port);
    let pad = "p".repeat(65_480 - base.len() - "X-Padding: \r\n".len());
    let big = base.replacen(
        "Content-Length",
        &format!("X-Padding: {pad}\r\nContent-Length"),
        1,
    );
    assert_eq!(big.len(), 65_480);
    let r = ask(&c, eng.udp_addr, &big);
    assert!(
        r.starts_with("SIP/2.0 513 Message Too Large"),
        "{}",
        &r[..100]
    );
    eng.stop();
}

fn mkfifo(path: &std::path::Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(ok.success(), "mkfifo {}", path.display());
}

/// Regression: a list file replaced by a FIFO hung every later reload and
/// the stats log, and SIGTERM could no longer stop kuzet.
#[test]
fn a_list_replaced_by_a_fifo_is_refused_and_stats_and_sigterm_go_on() {
    use crate::common::{ask, client, invite, status, Watched};
    let dir = TempDir::new("fifo");
    dir.write("block.txt", "+77011112233\n");
    dir.write(
        "kuzet.toml",
        "[server]\nstats_interval_secs = 1\n\n[lists]\nblocklist = [\"block.txt\"]\nreload_interval_ms = 50\n",
    );
    let mut k = Watched::start(&["-c", "kuzet.toml"], dir.path());
    // Swapped in atomically, as a careless deploy script would.
    mkfifo(&dir.path().join("fifo"));
    std::fs::rename(dir.path().join("fifo"), dir.path().join("block.txt")).unwrap();
    let refused = k.wait_for("list reload rejected", Duration::from_secs(10));
    assert!(
        refused.contains("block.txt: is a FIFO, not a regular file"),
        "{refused}"
    );
    // The stats log goes on after it, and calls still meet the old list.
    k.wait_for("behaviour state", Duration::from_secs(5));
    let c = client();
    let port = c.local_addr().unwrap().port();
    let r = ask(
        &c,
        k.addr,
        &invite("+77011112233", "+77020000001", "f1", port),
    );
    assert_eq!(status(&r), 603);
    let (code, out, log) = k.stop();
    assert_eq!(code, Some(0), "{log}");
    // Refused, and tried again after a back-off (the FIFO is still there).
    let failures: u64 = out
        .split("list_reload_failures_total=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no failure count in {out}"));
    assert!((1..=3).contains(&failures), "{out}");
    // At start-up the same file is refused with the same reason (exit 2),
    // instead of hanging before serving.
    let (code, _, log) =
        crate::common::Watched::spawn(&["--blocklist", "block.txt"], dir.path()).wait_exit();
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("block.txt: is a FIFO, not a regular file"),
        "{log}"
    );
}

use std::time::Duration;

/// Regression: a list file holding a single 1 GB line was read whole
/// (2.1 GB resident), and the whole line was repeated in the error.
#[test]
fn a_one_gigabyte_line_is_refused_with_its_number_and_a_short_excerpt() {
    use crate::common::Watched;
    let dir = TempDir::new("huge-line");
    dir.write("block.txt", "+77011112233\n");
    let mut k = Watched::start(&["--blocklist", "block.txt"], dir.path());
    let before = k.peak_rss_kib();
    // 8 KiB of digits, then a sparse run of NULs to 1 GiB: one line, no
    // newline anywhere, and no gigabyte of disk spent on it.
    let huge = dir.path().join("huge.tmp");
    let mut f = std::fs::File::create(&huge).unwrap();
    std::io::Write::write_all(&mut f, &[b'9'; 8192]).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    std::fs::rename(&huge, dir.path().join("block.txt")).unwrap();
    let refused = k.wait_for("list reload rejected", Duration::from_secs(20));
    assert!(
        refused.contains("block.txt:1: the line is longer than 4096 bytes; it starts \"9999"),
        "{refused}"
    );
    assert!(refused.contains("…"), "the excerpt is cut: {refused}");
    assert!(refused.len() < 400, "{} bytes: {refused}", refused.len());
    let grew = k.peak_rss_kib().saturating_sub(before);
    assert!(grew < 32 * 1024, "peak RSS grew by {grew} KiB");
    let (code, _, log) = k.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// Non-UTF-8 config and rule files are refused with the line that is
/// not UTF-8, and a config that is not a regular file says what it is.
#[test]
fn non_utf8_config_and_rule_files_name_the_line() {
    use crate::common::Watched;
    let dir = TempDir::new("utf8");
    std::fs::write(
        dir.path().join("kuzet.toml"),
        b"[server]\nstats_interval_secs = 5\n# Almaty caf\xe9 lines\n",
    )
    .unwrap();
    let (code, _, log) = Watched::spawn(&["-c", "kuzet.toml"], dir.path()).wait_exit();
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("kuzet.toml:3: the line is not valid UTF-8"),
        "{log}"
    );
    let (code, _, log) = Watched::spawn(&["-c", "."], dir.path()).wait_exit();
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains(".: is a directory, not a regular file"),
        "{log}"
    );
    std::fs::write(
        dir.path().join("rules.toml"),
        b"[thresholds]\nflag = 50\nblock = 100\n\n\n# \xff\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args(["rules", "check", "rules.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("rules.toml:6: the line is not valid UTF-8"),
        "{err}"
    );
}

/// An emptied list file (a truncated upload) is refused, and the lists in
/// force stay, unless its config entry says `allow_empty = true`.
#[test]
fn an_emptied_list_is_refused_unless_the_config_allows_it() {
    use crate::common::{ask, client, header, invite, start, status, test_config};
    use kuzet::config::ListEntry;
    let dir = TempDir::new("emptied");
    let mut cfg = test_config();
    cfg.lists.files[kuzet_rules::ListId::Block] =
        vec![dir.write("block.txt", "+77011112233\n").into()];
    cfg.lists.files[kuzet_rules::ListId::Flag] = vec![ListEntry {
        path: dir.write("flag.txt", "+77011112244\n"),
        allow_empty: true,
    }];
    // At start-up an empty list is refused too, with what to do about it.
    let mut empty = cfg.clone();
    empty.lists.files[kuzet_rules::ListId::Block] =
        vec![dir.write("empty.txt", "# nothing yet\n\n").into()];
    let Err(e) = kuzet::server::start(empty, Default::default()) else {
        panic!("an empty blocklist was accepted at start-up");
    };
    let e = e.to_string();
    assert!(
        e.contains("empty.txt: the blocklist file has no entries"),
        "{e}"
    );
    assert!(e.contains("allow_empty = true"), "{e}");

    let eng = start(cfg);
    let c = client();
    let port = c.local_addr().unwrap().port();
    let call = |a: &str, id: &str| ask(&c, eng.udp_addr, &invite(a, "+77020000001", id, port));
    let reloads = eng
        .metrics
        .counter_set::<kuzet_control::publish::ReloadCounters>();
    let wait = |counter: &kuzet_dataplane::metrics::Tally, what: &str, n: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while counter.get() < n {
            assert!(std::time::Instant::now() < deadline, "{what} < {n}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    std::fs::write(dir.path().join("block.txt"), "").unwrap();
    wait(&reloads.failures, "failures", 1);
    assert_eq!(status(&call("+77011112233", "e1")), 603, "old list stays");
    // Put it back, then empty the list that may be empty.
    // (write and rename, so no reload ever sees it half written)
    let tmp = dir.write("block.tmp", "+77011112233\n");
    std::fs::rename(tmp, dir.path().join("block.txt")).unwrap();
    wait(&reloads.reloads, "reloads", 1);
    let r = call("+77011112244", "e2");
    assert!(
        header(&r, "X-Kuzet-Verdict").is_some_and(|v| v.starts_with("flag;")),
        "{r}"
    );
    std::fs::write(dir.path().join("flag.txt"), "").unwrap();
    wait(&reloads.reloads, "reloads", 2);
    let r = call("+77011112244", "e3");
    assert!(
        header(&r, "X-Kuzet-Verdict").is_none_or(|v| v.starts_with("allow")),
        "{r}"
    );
    assert_eq!(status(&call("+77011112233", "e4")), 603);
    assert_eq!(reloads.failures.get(), 1);
    eng.stop();
}

/// A reload that takes longer than `lists.reload_timeout_ms` is abandoned
/// (the load stops, not only the wait), the lists in force stay, and
/// shutdown is not held up.
#[test]
fn a_reload_that_takes_too_long_is_abandoned_and_the_lists_in_force_stay() {
    use crate::common::{start, test_config};
    use kuzet_control::publish::ReloadCounters;
    let dir = TempDir::new("slow-reload");
    let mut list = String::with_capacity(300_000 * 14);
    for i in 0..300_000u64 {
        list.push_str(&format!("+7701{i:07}\n"));
    }
    let mut cfg = test_config();
    cfg.lists.files[kuzet_rules::ListId::Block] = vec![dir.write("block.txt", &list).into()];
    cfg.lists.reload_timeout_ms = 1;
    let eng = start(cfg);
    let reloads = eng.metrics.counter_set::<ReloadCounters>();
    let generation = eng.lists.load().generation;
    list.push_str("+77029999999\n");
    dir.write("block.txt", &list);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while reloads.abandoned.get() == 0 {
        assert!(std::time::Instant::now() < deadline, "never abandoned");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(eng.lists.load().generation, generation);
    assert_eq!(reloads.reloads.get(), 0);
    let stopping = std::time::Instant::now();
    eng.stop();
    assert!(stopping.elapsed() < Duration::from_secs(5));
}

/// An INVITE over TCP with a From display name of `pad` bytes.
fn tcp_invite(a: &str, id: &str, pad: usize) -> String {
    let base = crate::common::invite(a, "+77020000001", id, 5060).replace("UDP", "TCP");
    if pad == 0 {
        return base;
    }
    base.replacen("From: <", &format!("From: \"{}\" <", "p".repeat(pad)), 1)
}

/// Reads until one whole SIP response (headers, no body) has arrived;
/// `None` if the connection ends or the read timeout passes first.
fn try_response(s: &mut std::net::TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// Like [`try_response`], for a response that must come.
fn read_response(s: &mut std::net::TcpStream) -> String {
    try_response(s).expect("a response before the connection ended or timed out")
}

/// Whether the peer has closed the connection: a read sees the end (or a
/// reset) before `limit`.
fn closed_within(s: &mut std::net::TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match s.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Regression: a TCP peer that sent one byte a second was never closed,
/// because the idle timeout restarted on every read; a few hundred of
/// them held every TCP slot. A message now has a deadline from its first
/// byte; a message that merely arrives in pieces is still served.
#[test]
fn a_tcp_peer_sending_a_byte_at_a_time_is_closed_at_the_message_deadline() {
    use crate::common::{start, status, test_config};
    use kuzet_dataplane::metrics::Counter;
    use std::io::Write;
    let mut cfg = test_config();
    cfg.server.tcp_message_timeout_ms = 1000;
    cfg.server.tcp_idle_timeout_secs = 60;
    let eng = start(cfg);
    let addr = eng.tcp_addr.unwrap();
    // In two pieces 100 ms apart: answered.
    let mut ok = std::net::TcpStream::connect(addr).unwrap();
    ok.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let msg = tcp_invite("+77011112233", "pieces", 0);
    let (head, tail) = msg.split_at(msg.len() / 2);
    ok.write_all(head.as_bytes()).unwrap();
    assert!(!closed_within(&mut ok, Duration::from_millis(100)));
    ok.write_all(tail.as_bytes()).unwrap();
    ok.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(status(&read_response(&mut ok)), 302);
    // Five bytes a second, forever: closed at the deadline, long before
    // the 60 s idle timeout.
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for b in tcp_invite("+77011112233", "loris", 0).bytes() {
        if slow.write_all(&[b]).is_err() || closed_within(&mut slow, Duration::from_millis(200)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow peer was never closed");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The connection that was served stays open.
    assert!(!closed_within(&mut ok, Duration::from_millis(50)));
    let m = eng.metrics.clone();
    eng.stop();
    assert_eq!(m.get(Counter::TcpClosedSlowMessage), 1);
}

/// Regression: a TCP peer that pipelined requests and never read its
/// answers was never closed, because the send waited with no timeout.
#[test]
fn a_tcp_peer_that_never_reads_its_answers_is_closed() {
    use crate::common::{start, test_config};
    use kuzet_dataplane::metrics::Counter;
    use std::io::Write;
    let mut cfg = test_config();
    cfg.server.tcp_write_timeout_ms = 500;
    let eng = start(cfg);
    let addr = eng.tcp_addr.unwrap();
    // A small receive window, so kuzet's answers back up quickly.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: std::net::TcpStream = sock.into();
    s.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // 4 KiB requests whose answers echo the 4 KiB From: pipelined, never read.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut i = 0u64;
    while eng.metrics.get(Counter::TcpClosedNotReading) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never closed after {i} requests"
        );
        i += 1;
        match s.write_all(tcp_invite("+77011112233", &format!("nr{i}"), 4000).as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            // Closed (reset) under us: the counter says why.
            Err(_) => {}
        }
    }
    // Its slot is free again: the connection count goes back to what a
    // new, well-behaved connection adds.
    let mut fresh = std::net::TcpStream::connect(addr).unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    fresh
        .write_all(tcp_invite("+77011112233", "fresh", 0).as_bytes())
        .unwrap();
    assert_eq!(crate::common::status(&read_response(&mut fresh)), 302);
    eng.stop();
}

/// One source address cannot hold more than its share of TCP slots;
/// others still get in, and a freed slot can be used again.
#[test]
fn tcp_connections_are_capped_per_source_address() {
    use crate::common::{start, status, test_config};
    use kuzet_dataplane::metrics::Counter;
    use std::io::Write;
    let mut cfg = test_config();
    cfg.server.max_tcp_connections_per_source = 2;
    let eng = start(cfg);
    let addr = eng.tcp_addr.unwrap();
    let from = |ip: &str| {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let local: std::net::SocketAddr = format!("{ip}:0").parse().unwrap();
        sock.bind(&local.into()).unwrap();
        sock.connect(&addr.into()).unwrap();
        let s: std::net::TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };
    let served = |s: &mut std::net::TcpStream, id: &str| {
        s.write_all(tcp_invite("+77011112233", id, 0).as_bytes())
            .is_ok()
            && try_response(s).is_some_and(|r| status(&r) == 302)
    };
    let mut a = from("127.0.0.1");
    let mut b = from("127.0.0.1");
    assert!(served(&mut a, "a"));
    assert!(served(&mut b, "b"));
    let mut c = from("127.0.0.1");
    assert!(!served(&mut c, "c"), "a third was let in");
    assert_eq!(eng.metrics.get(Counter::TcpRefusedPerSource), 1);
    let mut d = from("127.0.0.2");
    assert!(served(&mut d, "d"), "another source is not held back");
    // Once one closes, its slot is given back (as soon as kuzet has seen
    // the close: until then a newcomer is refused, and tries again).
    drop(a);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !served(&mut from("127.0.0.1"), "e") {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never came back"
        );
    }
    assert!(served(&mut b, "b2"), "the other connection is untouched");
    eng.stop();
}

/// Regression: the TCP listen backlog was 128, so a burst of routers
/// reconnecting at once was refused. It is 4096 by default (the kernel
/// caps it at net.core.somaxconn) and configurable; `ss` reads it back
/// from the kernel.
#[test]
fn the_tcp_listen_backlog_is_4096_by_default_and_configurable() {
    use crate::common::{start, test_config};
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let backlog_of = |port: u16| -> u32 {
        let out = Command::new("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2; scripts/install-deps.sh installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        // State Recv-Q Send-Q Local Peer: for a listener, Send-Q is the backlog.
        let cols: Vec<&str> = text.split_whitespace().collect();
        assert!(cols.len() >= 3 && cols[0] == "LISTEN", "{text}");
        cols[2].parse().unwrap()
    };
    let eng = start(test_config());
    assert_eq!(
        backlog_of(eng.tcp_addr.unwrap().port()),
        somaxconn.min(4096)
    );
    eng.stop();
    let mut cfg = test_config();
    cfg.server.tcp_backlog = 1000;
    let eng = start(cfg);
    assert_eq!(
        backlog_of(eng.tcp_addr.unwrap().port()),
        somaxconn.min(1000)
    );
    eng.stop();
}
