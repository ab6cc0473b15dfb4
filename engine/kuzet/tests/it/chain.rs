//! kuzet behind a real Kamailio, as an operator runs it:
//! `deploy/kamailio/router.cfg` on Debian's Kamailio is the proxy, a SIPp
//! caller in front, a callee behind (SIPp, or a plain UDP socket where the
//! test must read what arrives), and the real `kuzet` binary on its
//! embedded defaults consulted per INVITE through `dispatcher`.
//!
//! Checked: allowed calls reach the callee and complete through kuzet;
//! a blocked call gets kuzet's 603 with its Reason, unchanged, and never
//! reaches the callee; a flagged call reaches it with kuzet's verdict
//! header (and a verdict header the caller forged is gone); and with kuzet
//! killed by SIGKILL in the middle of a SIPp run, every call still
//! completes, unscored, through the router's fail-open.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::kamailio::{kamailio, Kamailio};
use crate::operations::http_get;
use crate::sipp::sipp;

/// Kamailio on a free loopback port with router.cfg, consulting the kuzet
/// at `kuzet`; its log goes to `log`. Returns once it answers OPTIONS.
fn router(dir: &TempDir, kuzet: SocketAddr, log: &Path) -> (Kamailio, SocketAddr) {
    let list = dir.write("kuzet.list", &format!("1 sip:{kuzet} 0 0\n"));
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = repo().join("deploy/kamailio/router.cfg");
    let child = Command::new(kamailio())
        .arg("-f")
        .arg(&cfg)
        .args(["-DD", "-E", "-m", "64", "-M", "8", "-l"])
        .arg(format!("udp:{addr}"))
        .arg("-A")
        .arg(format!("KZ_DSLIST=\"{}\"", list.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("kamailio starts");
    let k = Kamailio(child);
    let c = client();
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let ping = format!(
        "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bKrping\r\n\
         From: <sip:t@x>;tag=1\r\nTo: <sip:t@x>\r\nCall-ID: router-ping\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 2048];
    loop {
        assert!(Instant::now() < deadline, "kamailio did not come up");
        c.send_to(ping.as_bytes(), addr).unwrap();
        if let Ok(n) = c.recv(&mut buf) {
            if buf[..n].starts_with(b"SIP/2.0 200") {
                return (k, addr);
            }
        }
    }
}

/// An INVITE from `a` to `b` at the callee `to`, sent through `via`.
fn invite_to(
    a: &str,
    b: &str,
    to: SocketAddr,
    call_id: &str,
    from_port: u16,
    extra: &str,
) -> String {
    format!(
        "INVITE sip:{b}@{to} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{from_port};branch=z9hG4bK{call_id};rport\r\n\
         From: <sip:{a}@127.0.0.1>;tag=a{call_id}\r\nTo: <sip:{b}@{to}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n\
         Contact: <sip:{a}@127.0.0.1:{from_port}>\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

/// The first final answer to `call_id` on `sock`.
fn final_answer(sock: &UdpSocket, call_id: &str) -> String {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = sock.recv(&mut buf).expect("an answer through the router");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.contains(call_id) && !text.starts_with("SIP/2.0 1") {
            return text;
        }
    }
}

/// The next INVITE the callee socket receives.
fn next_invite(callee: &UdpSocket) -> String {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = callee.recv(&mut buf).expect("an INVITE at the callee");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("INVITE ") {
            return text;
        }
    }
}

fn metric(admin: SocketAddr, name: &str) -> f64 {
    let (_, text) = http_get(admin, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// A SIPp UAC of `n` calls at `rate`/s from `from` to the callee at
/// `callee`, through the router; started, not waited for.
fn uac(dir: &Path, router: SocketAddr, callee: SocketAddr, n: u32, rate: u32) -> Reaped {
    let child = Command::new(sipp())
        .arg(callee.to_string())
        .args([
            "-sn",
            "uac",
            "-i",
            "127.0.0.1",
            "-p",
            &free_port().to_string(),
        ])
        .args(["-rsa", &router.to_string(), "-s", "87015550000"])
        .args(["-m", &n.to_string(), "-r", &rate.to_string()])
        // A proxy may relay a callee's 180 after its 200 (Kamailio's
        // children send replies outside the transaction's lock, and on
        // two busy cores a 180 handled by one child can leave after the
        // 200 handled by another). RFC 3261 UACs ignore such a late
        // provisional; SIPp would abort the call on it, so it is told
        // not to abort on unexpected messages. A call that does not
        // complete still fails: its next expected message never comes
        // and the call times out.
        .args([
            "-default_behaviors",
            "all,-abortunexp",
            "-recv_timeout",
            "10000",
        ])
        .args([
            "-nostdin",
            "-timeout",
            "60s",
            "-trace_err",
            "-error_file",
            "uac.err",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp starts");
    Reaped(child)
}

fn wait_ok(mut p: Reaped, dir: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let st = loop {
        if let Some(st) = p.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "{what}: sipp did not finish");
        std::thread::sleep(Duration::from_millis(50));
    };
    let errors = std::fs::read_to_string(dir.join("uac.err")).unwrap_or_default();
    assert!(
        st.success(),
        "{what}: not every call completed ({st}):\n{errors}"
    );
}

#[test]
fn kamailio_consults_kuzet_per_invite_and_fails_open_without_it() {
    let dir = TempDir::new("chain");
    // kuzet on its embedded defaults: the sample lists and default rules.
    let k = Watched::start(&["--no-store"], dir.path());
    let serving = k
        .log
        .iter()
        .find(|l| l.contains("kuzet serving"))
        .unwrap()
        .clone();
    let admin: SocketAddr = serving
        .split("admin_addr=Some(")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap()
        .parse()
        .unwrap();
    let log = dir.path().join("kamailio.log");
    let (_kam, router) = router(&dir, k.addr, &log);

    // Blocked: kuzet's 603 reaches the caller with its Reason; the callee
    // sees nothing of it (the first INVITE it gets is the next call's).
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    callee
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let to = callee.local_addr().unwrap();
    let caller = client();
    let port = caller.local_addr().unwrap().port();
    caller
        .send_to(
            invite_to("+77000000001", "87015550200", to, "chain-block", port, "").as_bytes(),
            router,
        )
        .unwrap();
    let r = final_answer(&caller, "chain-block");
    assert!(r.starts_with("SIP/2.0 603"), "{r}");
    let reason = header(&r, "Reason").expect("kuzet's Reason, unchanged");
    assert!(
        reason.starts_with("Q.850;cause=21;text=\"blocklist; verdict "),
        "{reason}"
    );

    // Flagged, with a verdict header the caller forged: the callee gets
    // the INVITE with kuzet's verdict, and only that.
    caller
        .send_to(
            invite_to(
                "+77009990042",
                "87015550201",
                to,
                "chain-flag",
                port,
                "X-Kuzet-Verdict: allow;forged\r\n",
            )
            .as_bytes(),
            router,
        )
        .unwrap();
    let inv = next_invite(&callee);
    assert!(
        inv.contains("Call-ID: chain-flag\r\n"),
        "a blocked call reached the callee:\n{inv}"
    );
    assert!(
        inv.contains("X-Kuzet-Verdict: flag;score=50;rules=\"flaglist:"),
        "{inv}"
    );
    assert!(!inv.contains("forged"), "{inv}");
    assert_eq!(inv.matches("X-Kuzet-Verdict").count(), 1, "{inv}");

    // Allowed calls: SIPp caller to SIPp callee, every call complete, each
    // one judged by kuzet.
    let uas_port = free_port();
    let uas_addr: SocketAddr = format!("127.0.0.1:{uas_port}").parse().unwrap();
    let uas_dir = TempDir::new("chain-uas");
    let _uas = Reaped(
        Command::new(sipp())
            .args(["-sn", "uas", "-i", "127.0.0.1", "-p", &uas_port.to_string()])
            .args(["-nostdin", "-timeout", "120s"])
            .current_dir(uas_dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let before = metric(admin, "kuzet_invites_total");
    let run1 = TempDir::new("chain-uac1");
    wait_ok(
        uac(run1.path(), router, uas_addr, 20, 20),
        run1.path(),
        "through kuzet",
    );
    assert_eq!(metric(admin, "kuzet_invites_total") - before, 20.0);
    assert_eq!(metric(admin, "kuzet_verdict_allow_total"), 20.0);

    // kuzet killed in the middle of a run: every call still completes.
    let run2 = TempDir::new("chain-uac2");
    let calls = uac(run2.path(), router, uas_addr, 60, 20);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(admin, "kuzet_invites_total") - before < 30.0 {
        assert!(
            Instant::now() < deadline,
            "the second run never reached kuzet"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    k.signal("KILL");
    wait_ok(calls, run2.path(), "kuzet killed mid-run");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("goes on unscored"),
        "the router never failed open:\n{text}"
    );
}
