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
