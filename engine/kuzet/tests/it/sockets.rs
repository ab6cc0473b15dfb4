//! The engine over real UDP and TCP sockets on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use kuzet::config::Mode;
use kuzet_dataplane::metrics::Counter;

use crate::common::*;

fn lists_dir() -> TempDir {
    let d = TempDir::new("lists");
    d.write(
        "block.txt",
        "# test blocklist\n+77011112233,fraud desk report\n8 702 000 00 01\n+88216*,irsf range\n",
    );
    d.write("allow.txt", "+77272500000,bank call centre\n");
    d.write("flag.txt", "+7700999*,watch\n");
    d
}

fn with_lists(d: &TempDir) -> kuzet::config::Config {
    let mut c = test_config();
    c.lists.files[kuzet_rules::ListId::Block] = vec![d.path().join("block.txt").into()];
    c.lists.files[kuzet_rules::ListId::Allow] = vec![d.path().join("allow.txt").into()];
    c.lists.files[kuzet_rules::ListId::Flag] = vec![d.path().join("flag.txt").into()];
    c
}

#[test]
fn redirect_over_udp_answers_per_list() {
    let d = lists_dir();
    let eng = start(with_lists(&d));
    let c = client();
    let port = c.local_addr().unwrap().port();
    let cases = [
        ("87011112233", "87015550000", 603, "block"),
        ("+7(702)000-00-01", "87015550000", 603, "block"),
        ("87015550000", "+882161234567", 603, "block"),
        ("+77009990001", "87015550000", 302, "flag"),
        ("+77272500000", "+882161234567", 302, "allow"),
        ("87015550000", "87015550001", 302, "allow"),
        ("anonymous", "87015550001", 302, "allow"),
    ];
    for (i, (a, b, code, verdict)) in cases.iter().enumerate() {
        let r = ask(&c, eng.udp_addr, &invite(a, b, &format!("call{i}"), port));
        assert_eq!(status(&r), *code, "{a} -> {b}:\n{r}");
        let v = header(&r, "X-Kuzet-Verdict").unwrap();
        assert!(v.starts_with(verdict), "{a} -> {b}: {v}");
        assert_eq!(header(&r, "Call-ID"), Some(format!("call{i}").as_str()));
        if *code == 603 {
            assert_eq!(
                reason_without_id(&r).as_deref(),
                Some("Q.850;cause=21;text=\"blocklist\"")
            );
        } else {
            assert_eq!(
                header(&r, "Contact").unwrap(),
                format!("<sip:{b}@127.0.0.1>")
            );
        }
        assert!(header(&r, "To").unwrap().contains(";tag="), "{r}");
    }
    // OPTIONS is answered 200; ACK is absorbed; other methods get 405.
    let opt = invite("1", "2", "o1", port).replace("INVITE", "OPTIONS");
    assert_eq!(status(&ask(&c, eng.udp_addr, &opt)), 200);
    let bye = invite("1", "2", "b1", port).replace("INVITE", "BYE");
    assert_eq!(status(&ask(&c, eng.udp_addr, &bye)), 405);
    let ack = invite("1", "2", "a1", port).replace("INVITE", "ACK");
    c.send_to(ack.as_bytes(), eng.udp_addr).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    assert!(c.recv_from(&mut buf).is_err(), "ACK gets no answer");
    let m = eng.metrics.clone();
    eng.stop();
    assert_eq!(m.get(Counter::Blocked), 3);
    assert_eq!(m.get(Counter::AcksAbsorbed), 1);
}

/// Regression: the 200 to OPTIONS and the 405 advertised different methods.
#[test]
fn options_and_405_advertise_the_same_methods() {
    let eng = start(test_config());
    let c = client();
    let port = c.local_addr().unwrap().port();
    let opt = invite("1", "2", "o1", port).replace("INVITE", "OPTIONS");
    let r200 = ask(&c, eng.udp_addr, &opt);
    let bye = invite("1", "2", "b1", port).replace("INVITE", "BYE");
    let r405 = ask(&c, eng.udp_addr, &bye);
    assert_eq!((status(&r200), status(&r405)), (200, 405));
    assert_eq!(
        header(&r200, "Allow"),
        Some("INVITE, ACK, OPTIONS, PUBLISH")
    );
    assert_eq!(header(&r200, "Allow"), header(&r405, "Allow"));
    eng.stop();
}

#[test]
fn block_code_is_configurable() {
    let d = lists_dir();
    let mut cfg = with_lists(&d);
    cfg.verdict.block_code = 607;
    let eng = start(cfg);
    let c = client();
    let r = ask(
        &c,
        eng.udp_addr,
        &invite("87011112233", "87015550000", "x", 1),
    );
    assert!(r.starts_with("SIP/2.0 607 Unwanted\r\n"), "{r}");
    eng.stop();
}

#[test]
fn garbage_and_bad_requests_do_not_stop_other_calls() {
    let d = lists_dir();
    let eng = start(with_lists(&d));
    let c = client();
    for junk in [
        &b"\x00\x01\x02garbage"[..],
        b"",
        b"\r\n\r\n",
        &[0xffu8; 1400],
        b"INVITE sip:x SIP/2.0\r\n",
    ] {
        c.send_to(junk, eng.udp_addr).unwrap();
    }
    // A big datagram with too many headers: 400, not a crash.
    let mut big = invite("87011112233", "1", "big", 1);
    let filler: String = (0..300)
        .map(|i| format!("X-F{i}: {}\r\n", "a".repeat(100)))
        .collect();
    big = big.replacen("Content-Length", &format!("{filler}Content-Length"), 1);
    let r = ask(&c, eng.udp_addr, &big);
    assert_eq!(status(&r), 400, "{r}");
    let r = ask(
        &c,
        eng.udp_addr,
        &invite("87011112233", "87015550000", "after", 1),
    );
    assert_eq!(status(&r), 603);
    let m = eng.metrics.clone();
    eng.stop();
    assert!(m.get(Counter::Unparseable) >= 2);
}

fn read_responses(s: &mut TcpStream, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < n && Instant::now() < deadline {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(_) => continue,
        }
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            got.push(String::from_utf8_lossy(&buf[..end + 4]).into_owned());
            buf.drain(..end + 4);
        }
    }
    got
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

/// Reads until the peer closes the connection: `Ok` once the stream ends
/// (FIN) or is reset (RST, what a close with unread input sends), `Err`
/// if it is still open when `within` runs out. A read timeout is no
/// close: taking one for a close is how these checks used to pass
/// whatever kuzet did.
fn closed_within(s: &mut TcpStream, within: Duration) -> Result<(), String> {
    use std::io::ErrorKind::*;
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("the connection is still open after {within:?}"));
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            // Whatever kuzet wrote before closing.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ConnectionReset | ConnectionAborted) => return Ok(()),
            Err(e) if matches!(e.kind(), WouldBlock | TimedOut) => continue,
            Err(e) => return Err(format!("reading failed otherwise: {e}")),
        }
    }
}

#[test]
fn tcp_frames_pipelined_and_partial_messages() {
    let d = lists_dir();
    let eng = start(with_lists(&d));
    let addr = eng.tcp_addr.unwrap();
    // Two INVITEs in one write.
    let mut s = tcp(addr);
    let two = format!(
        "{}{}",
        invite("87011112233", "87015550000", "p1", 1).replace("UDP", "TCP"),
        invite("87015550000", "87015550001", "p2", 1).replace("UDP", "TCP")
    );
    s.write_all(two.as_bytes()).unwrap();
    let r = read_responses(&mut s, 2);
    assert_eq!(r.len(), 2);
    assert_eq!(status(&r[0]), 603);
    assert_eq!(status(&r[1]), 302);
    // One INVITE a byte at a time, with a body.
    let body = "v=0\r\n";
    let one = invite("87015550000", "+882160000000", "slow", 1).replace(
        "Content-Length: 0",
        &format!("Content-Length: {}", body.len()),
    ) + body;
    for b in one.as_bytes() {
        s.write_all(&[*b]).unwrap();
    }
    let r = read_responses(&mut s, 1);
    assert_eq!(status(&r[0]), 603, "{r:?}");
    // A keep-alive ping gets a pong and the connection stays usable.
    s.write_all(b"\r\n\r\n").unwrap();
    let mut pong = [0u8; 2];
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"\r\n");
    eng.stop();
}

/// Regression (issue 19, defect 9): the "closed" checks here could not
/// fail. Each took any read error for a close, and a read that timed out
/// after 3 s is one, so a kuzet that kept a bad peer's connection open
/// passed. Now the connection must be seen to end (FIN or RST) well
/// before any other deadline would close it (the message deadline is
/// 10 s), and counted as closed for bad input while kuzet runs.
#[test]
fn regression_tcp_bad_peers_are_seen_closed_and_others_go_on() {
    let d = lists_dir();
    let eng = start(with_lists(&d));
    let addr = eng.tcp_addr.unwrap();
    let closed_bad = |n: u64| {
        wait("a connection counted as closed for bad input", || {
            (eng.metrics.get(Counter::TcpClosedBadInput) >= n).then_some(())
        })
    };
    // Endless headers: the connection is closed once past the size bound.
    // Writing may already fail once kuzet has closed (a reset): that too
    // is a close, and the read below then sees the end of the stream.
    let mut endless = tcp(addr);
    endless.write_all(b"INVITE sip:1@x SIP/2.0\r\n").unwrap();
    let line = format!("X-Filler: {}\r\n", "z".repeat(1000));
    for _ in 0..200 {
        if endless.write_all(line.as_bytes()).is_err() {
            break;
        }
    }
    closed_within(&mut endless, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("endless headers must close the connection: {e}"));
    closed_bad(1);
    // A huge Content-Length is refused too.
    let mut huge = tcp(addr);
    huge.write_all(
        invite("1", "2", "h", 1)
            .replace("Content-Length: 0", "Content-Length: 999999")
            .as_bytes(),
    )
    .unwrap();
    closed_within(&mut huge, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("a huge Content-Length must close the connection: {e}"));
    closed_bad(2);
    // A peer that stops mid-message does not block anyone else.
    let mut stalled = tcp(addr);
    stalled
        .write_all(b"INVITE sip:1@x SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n")
        .unwrap();
    let mut ok = tcp(addr);
    ok.write_all(invite("87011112233", "87015550000", "ok", 1).as_bytes())
        .unwrap();
    assert_eq!(status(&read_responses(&mut ok, 1)[0]), 603);
    let m = eng.metrics.clone();
    eng.stop();
    assert_eq!(m.get(Counter::TcpClosedBadInput), 2);
}

/// The close is seen as the end of the stream (issue 19, defect 9: it
/// used to be any read error, a timeout included, held to under 5 s).
#[test]
fn tcp_idle_peer_is_closed() {
    let mut cfg = test_config();
    cfg.server.tcp_idle_timeout_secs = 1;
    let eng = start(cfg);
    // Connected, one keep-alive, then nothing: no message is in progress,
    // so the idle timeout applies (a message in progress has its own
    // deadline; see hardening.rs).
    let mut s = tcp(eng.tcp_addr.unwrap());
    s.write_all(b"\r\n\r\n").unwrap();
    let mut pong = [0u8; 2];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_exact(&mut pong).unwrap();
    closed_within(&mut s, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("an idle peer must be closed: {e}"));
    eng.stop();
}

#[test]
fn list_reload_swaps_atomically_and_bad_files_keep_the_old_list() {
    let d = lists_dir();
    let eng = start(with_lists(&d));
    let c = client();
    let call = |id: &str| {
        status(&ask(
            &c,
            eng.udp_addr,
            &invite("+77051234567", "87015550000", id, 1),
        ))
    };
    assert_eq!(call("r0"), 302);
    // Replace the file atomically (write then rename), as an operator would.
    let tmp = d.write("block.tmp", "+77051234567,new campaign\n");
    std::fs::rename(&tmp, d.path().join("block.txt")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while call("r1") != 603 {
        assert!(Instant::now() < deadline, "reload did not apply");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A malformed file is rejected whole; the list in force stays.
    let tmp = d.write("block.tmp", "+77051234567\nthis is not a number\n");
    std::fs::rename(&tmp, d.path().join("block.txt")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while eng.metrics.value("list_reload_failures_total") == Some(0) {
        assert!(Instant::now() < deadline, "bad file was not noticed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(call("r2"), 603, "old list still in force");
    assert_eq!(
        status(&ask(&c, eng.udp_addr, &invite("87011112233", "1", "r3", 1))),
        302,
        "the first reload dropped the old entries"
    );
    eng.stop();
}

#[test]
fn fail_open_allows_when_over_budget_and_counts_it() {
    let d = lists_dir();
    let mut cfg = with_lists(&d);
    cfg.verdict.failopen_budget_us = 0;
    let eng = start(cfg);
    let c = client();
    let r = ask(
        &c,
        eng.udp_addr,
        &invite("87011112233", "87015550000", "fo", 1),
    );
    assert_eq!(status(&r), 302, "blocklisted, but scoring was over budget");
    let m = eng.metrics.clone();
    eng.stop();
    assert_eq!(m.get(Counter::FailOpenOverload), 1);
    assert_eq!(m.get(Counter::Blocked), 0);
}

/// A next hop that records what it receives and can answer.
pub(crate) fn uas() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

pub(crate) fn recv(s: &UdpSocket) -> (String, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let (n, from) = s.recv_from(&mut buf).expect("a datagram");
    (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
}

pub(crate) fn answer(req: &str, code: &str) -> String {
    let mut out = format!("SIP/2.0 {code}\r\n");
    for l in req.lines() {
        let lower = l.to_ascii_lowercase();
        if ["via:", "from:", "to:", "call-id:", "cseq:"]
            .iter()
            .any(|p| lower.starts_with(p))
        {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out + "Content-Length: 0\r\n\r\n"
}

#[test]
fn proxy_forwards_rewrites_and_routes_responses_back() {
    let d = lists_dir();
    let next = uas();
    let mut cfg = with_lists(&d);
    cfg.server.mode = Mode::Proxy;
    cfg.proxy.next_hop = Some(next.local_addr().unwrap());
    let eng = start(cfg);
    let c = client();
    let port = c.local_addr().unwrap().port();
    // A flagged INVITE goes on with the verdict header.
    c.send_to(
        invite("+77009990001", "87015550000", "px1", port).as_bytes(),
        eng.udp_addr,
    )
    .unwrap();
    let (fwd, from) = recv(&next);
    assert_eq!(
        from.port(),
        eng.udp_addr.port(),
        "forwarded from the listen port"
    );
    let vias: Vec<&str> = fwd.lines().filter(|l| l.starts_with("Via:")).collect();
    assert_eq!(vias.len(), 2, "{fwd}");
    assert!(
        vias[0].starts_with(&format!(
            "Via: SIP/2.0/UDP {};branch=z9hG4bK-kz",
            eng.udp_addr
        )),
        "{fwd}"
    );
    assert!(
        vias[1].contains(&format!("rport={port}")) && vias[1].contains("received=127.0.0.1"),
        "{fwd}"
    );
    assert_eq!(header(&fwd, "Max-Forwards"), Some("69"));
    assert!(header(&fwd, "X-Kuzet-Verdict")
        .unwrap()
        .starts_with("flag;score=50;rules=\"flaglist: caller in a listed"));
    // The 180 and 200 come back through kuzet to the caller, minus kuzet's Via.
    for code in ["180 Ringing", "200 OK"] {
        next.send_to(answer(&fwd, code).as_bytes(), eng.udp_addr)
            .unwrap();
        let (resp, _) = recv(&c);
        assert!(resp.starts_with(&format!("SIP/2.0 {code}")), "{resp}");
        assert_eq!(resp.matches("Via:").count(), 1, "{resp}");
        assert!(!resp.contains("z9hG4bK-kz"));
    }
    // CANCEL takes the same branch as its INVITE (stateless RFC 3261 16.11).
    let cancel = invite("+77009990001", "87015550000", "px1", port).replace("INVITE", "CANCEL");
    c.send_to(cancel.as_bytes(), eng.udp_addr).unwrap();
    let (fwd_cancel, _) = recv(&next);
    let branch = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("Via:"))
            .unwrap()
            .to_string()
    };
    assert_eq!(branch(&fwd_cancel), branch(&fwd));
    // A blocked INVITE is answered 603 locally and never reaches the next hop.
    let r = ask(
        &c,
        eng.udp_addr,
        &invite("87011112233", "87015550000", "px2", port),
    );
    assert_eq!(status(&r), 603);
    next.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(next.recv_from(&mut [0u8; 100]).is_err());
    // Max-Forwards 0 is answered 483.
    let r = ask(
        &c,
        eng.udp_addr,
        &invite("1", "2", "px3", port).replace("Max-Forwards: 70", "Max-Forwards: 0"),
    );
    assert_eq!(status(&r), 483);
    let m = eng.metrics.clone();
    eng.stop();
    assert_eq!(m.get(Counter::Forwarded), 2);
    assert_eq!(m.get(Counter::ResponsesRouted), 2);
}

#[test]
fn proxy_over_tcp_gets_its_responses_on_the_connection() {
    let next = uas();
    let mut cfg = test_config();
    cfg.server.mode = Mode::Proxy;
    cfg.proxy.next_hop = Some(next.local_addr().unwrap());
    let eng = start(cfg);
    let mut s = tcp(eng.tcp_addr.unwrap());
    s.write_all(
        invite("87015550000", "87015550001", "t1", 1)
            .replace("UDP", "TCP")
            .as_bytes(),
    )
    .unwrap();
    let (fwd, _) = recv(&next);
    assert!(fwd.contains(";kzc="), "{fwd}");
    next.send_to(answer(&fwd, "200 OK").as_bytes(), eng.udp_addr)
        .unwrap();
    let r = read_responses(&mut s, 1);
    assert_eq!(r.len(), 1);
    assert!(r[0].starts_with("SIP/2.0 200 OK"), "{r:?}");
    eng.stop();
}

#[test]
fn proxy_refuses_unknown_sources_when_trunks_are_set() {
    let next = uas();
    let mut cfg = kuzet::config::Config::from_toml_str(
        "[[trunks]]\nname='intl'\nkind='international'\ncidrs=['192.0.2.0/24']\n",
        "t",
    )
    .unwrap();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.udp_workers = 1;
    cfg.server.mode = Mode::Proxy;
    cfg.proxy.next_hop = Some(next.local_addr().unwrap());
    let eng = start(cfg);
    let c = client();
    let r = ask(
        &c,
        eng.udp_addr,
        &invite("87015550000", "87015550001", "u1", 1),
    );
    assert_eq!(status(&r), 403, "{r}");
    let m = eng.metrics.clone();
    eng.stop();
    assert_eq!(m.get(Counter::UnknownSource), 1);
}

/// Regression: in proxy mode a caller's own `X-Kuzet-Verdict: allow` was
/// forwarded untouched, so a flagged call reached the next hop with two
/// verdict headers, the forged one first.
#[test]
fn forged_verdict_headers_never_reach_the_next_hop() {
    let d = lists_dir();
    let next = uas();
    let mut cfg = with_lists(&d);
    cfg.server.mode = Mode::Proxy;
    cfg.proxy.next_hop = Some(next.local_addr().unwrap());
    let eng = start(cfg);
    let c = client();
    let port = c.local_addr().unwrap().port();
    let forged = invite("+77009990001", "+77015550000", "forged", port).replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nX-Kuzet-Verdict: allow\r\nx-kuzet-trust: yes\r\n",
    );
    c.send_to(forged.as_bytes(), eng.udp_addr).unwrap();
    let (fwd, _) = recv(&next);
    let verdicts: Vec<&str> = fwd
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("x-kuzet-"))
        .collect();
    assert_eq!(verdicts.len(), 1, "{fwd}");
    assert!(verdicts[0].starts_with("X-Kuzet-Verdict: flag;"), "{fwd}");
    // A response from downstream cannot plant one either.
    let resp = answer(&fwd, "200 OK")
        .replace("Content-Length", "X-Kuzet-Verdict: block\r\nContent-Length");
    next.send_to(resp.as_bytes(), eng.udp_addr).unwrap();
    let (back, _) = recv(&c);
    assert!(back.starts_with("SIP/2.0 200"), "{back}");
    assert!(!back.to_ascii_lowercase().contains("x-kuzet-"), "{back}");
    let m = eng.metrics.clone();
    eng.stop();
    assert_eq!(m.get(Counter::ForgedHeadersRemoved), 3);
}

/// Regression (issue 19, defect 9): the foreign-response check could not
/// fail. It sent a response that kuzet never forwarded a request for and
/// stopped kuzet at once: nothing was read back, and kuzet had often not
/// read the datagram yet, so a kuzet that relayed it passed. Now three
/// foreign responses (no kuzet Via at all; kuzet's branch prefix under
/// another host's address; kuzet's address with a branch not its own),
/// the last two with the caller's Via below so that a relay would reach
/// the caller, go in from the next hop; an OPTIONS from the caller goes
/// in behind them (one worker handles them in order), and its answer must
/// be the first thing the caller gets, with all three counted as dropped
/// and none as routed.
#[test]
fn regression_a_foreign_response_is_dropped_and_never_reaches_the_caller() {
    let next = uas();
    let mut cfg = test_config();
    cfg.server.mode = Mode::Proxy;
    cfg.proxy.next_hop = Some(next.local_addr().unwrap());
    let eng = start(cfg);
    let c = client();
    let port = c.local_addr().unwrap().port();
    let caller_via =
        |id: &str| format!("Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{id};rport\r\n");
    let response = |id: &str, vias: &str| {
        format!(
            "SIP/2.0 200 OK\r\n{vias}From: <sip:87015550000@127.0.0.1>;tag=a{id}\r\n\
             To: <sip:87015550001@127.0.0.1>;tag=b{id}\r\nCall-ID: {id}\r\n\
             CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let foreign = [
        response("foreign-1", &caller_via("foreign-1")),
        response(
            "foreign-2",
            &format!(
                "Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK-kzforged\r\n{}",
                caller_via("foreign-2")
            ),
        ),
        response(
            "foreign-3",
            &format!(
                "Via: SIP/2.0/UDP {};branch=z9hG4bKnotkuzet\r\n{}",
                eng.udp_addr,
                caller_via("foreign-3")
            ),
        ),
    ];
    for r in &foreign {
        next.send_to(r.as_bytes(), eng.udp_addr).unwrap();
    }
    // No user part: kuzet answers it itself, after the three above.
    let probe = invite("0", "0", "probe", port)
        .replace("INVITE sip:0@127.0.0.1", "OPTIONS sip:127.0.0.1")
        .replace("1 INVITE", "1 OPTIONS");
    c.send_to(probe.as_bytes(), eng.udp_addr).unwrap();
    let (first, _) = recv(&c);
    assert_eq!(
        (status(&first), header(&first, "Call-ID")),
        (200, Some("probe")),
        "the caller got something before the probe's answer:\n{first}"
    );
    assert_eq!(eng.metrics.get(Counter::ResponsesDropped), 3);
    assert_eq!(eng.metrics.get(Counter::ResponsesRouted), 0);
    assert_eq!(eng.metrics.get(Counter::Responses), 3);
    eng.stop();
}
