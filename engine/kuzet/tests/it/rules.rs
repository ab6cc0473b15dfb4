//! Behaviour rules through the real engine, on real sockets: the verdict
//! header explains every rule that fired with its value and threshold;
//! a redirect decision sends the call to the configured desk; the rule
//! file reloads atomically while calls flow, a bad file keeps the rules in
//! force, and no call goes unanswered across the swap.

use std::time::{Duration, Instant};

use crate::common::{
    ask, client, free_port, header, invite, reason_without_id, start, status, test_config,
    wait_until_answering, TempDir,
};

const RULES: &str = "[thresholds]\nflag = 40\nredirect = 70\nredirect_uri = \"sip:desk@antifraud.example\"\nblock = 100\n\
    [[rule]]\nid = \"velocity_1m\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 3\nscore = 50\n\
    [[rule]]\nid = \"sequential\"\nkind = \"sequential\"\nrun = 5\nscore = 30\n";

#[test]
fn rules_explain_flag_redirect_and_block() {
    let dir = TempDir::new("rules");
    let mut cfg = test_config();
    cfg.rules.file = Some(dir.write("rules.toml", RULES));
    let k = start(cfg);
    let c = client();
    let port = c.local_addr().unwrap().port();
    let a = "+77011234567";
    let mut seen = Vec::new();
    for i in 0..5 {
        let resp = ask(
            &c,
            k.udp_addr,
            &invite(a, &format!("+7702000000{i}"), &format!("r{i}"), port),
        );
        seen.push((
            status(&resp),
            header(&resp, "X-Kuzet-Verdict").unwrap_or("").to_string(),
            header(&resp, "Contact").unwrap_or("").to_string(),
        ));
    }
    // Calls 1-3: at most 3 a minute, allowed.
    for (s, v, contact) in &seen[..3] {
        assert_eq!((*s, v.as_str()), (302, "allow"));
        assert!(contact.contains("+7702000000"), "{contact}");
    }
    // Call 4: velocity 4 > 3 scores 50: flagged, explained, sent on.
    assert_eq!(seen[3].0, 302);
    assert_eq!(
        seen[3].1,
        "flag;score=50;rules=\"velocity_1m: 4 calls > 3\""
    );
    // Call 5: velocity 5 > 3 and 5 numbers in a row: 80, redirected to the desk.
    assert_eq!(seen[4].0, 302);
    assert_eq!(seen[4].2, "<sip:desk@antifraud.example>");
    // A redirect carries its verdict id, for the desk it reaches.
    assert_eq!(
        without_verdict_id(&seen[4].1),
        "redirect;score=80;rules=\"velocity_1m: 5 calls > 3; sequential: 5 in a row >= 5\""
    );
    k.stop();
}

#[test]
fn rule_file_reloads_atomically_and_a_bad_file_keeps_the_old_rules() {
    let dir = TempDir::new("rules-reload");
    let path = dir.write("rules.toml", RULES);
    let mut cfg = test_config();
    cfg.rules.file = Some(path.clone());
    let k = start(cfg);
    let c = client();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let port = c.local_addr().unwrap().port();
    let blocked_now = |i: u32| {
        let resp = ask(
            &c,
            k.udp_addr,
            &invite("+77771112233", "+77020000001", &format!("q{i}"), port),
        );
        status(&resp)
    };
    assert_eq!(blocked_now(0), 302);
    // Swap in a file whose velocity rule blocks any second call a minute.
    let stricter = format!(
        "{RULES}[[rule]]\nid = \"night_owl\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 0\nscore = 100\n"
    );
    let tmp = dir.write("rules.toml.new", &stricter);
    std::fs::rename(&tmp, &path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 1;
    loop {
        // Every call is answered across the swap, before and after.
        let s = blocked_now(i);
        assert!(s == 302 || s == 603, "{s}");
        if s == 603 {
            break;
        }
        assert!(Instant::now() < deadline, "the new rules never applied");
        std::thread::sleep(Duration::from_millis(20));
        i += 1;
    }
    // A broken file is refused; the rules in force stay.
    let failures = || {
        k.metrics
            .counter_set::<kuzet_control::publish::ReloadCounters>()
            .failures
            .get()
    };
    assert_eq!(failures(), 0);
    let tmp = dir.write("rules.toml.bad", "[thresholds]\nflag = 40\nblock = 100\n[[rule]]\nid = \"x\"\nkind = \"nonsense\"\nscore = 1\n");
    std::fs::rename(&tmp, &path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while failures() == 0 {
        assert!(Instant::now() < deadline, "the bad file was never tried");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(blocked_now(1000), 603);
    k.stop();
}

fn publish(body: &str, id: &str, port: u16) -> String {
    format!(
        "PUBLISH sip:kuzet@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{id};rport\r\n\
         From: <sip:switch@127.0.0.1>;tag=s{id}\r\nTo: <sip:kuzet@127.0.0.1>\r\nCall-ID: {id}\r\nCSeq: 1 PUBLISH\r\n\
         Max-Forwards: 70\r\nEvent: kuzet-outcome\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn outcome_api_feeds_the_wangiri_rule() {
    let dir = TempDir::new("rules-outcomes");
    let mut cfg = test_config();
    cfg.rules.file = Some(dir.write(
        "rules.toml",
        "[thresholds]\nflag = 40\nblock = 100\n[[rule]]\nid = \"wangiri\"\nkind = \"wangiri\"\nmin_calls = 3\nratio = 0.6\nscore = 100\n",
    ));
    // The switch in front reports outcomes from its trunk.
    cfg.trunks = vec![kuzet::config::TrunkConfig {
        name: "switch".into(),
        kind: "international".into(),
        cidrs: vec!["127.0.0.1/32".parse().unwrap()],
        trust_pai: false,
    }];
    cfg.outcomes.reporters = vec!["switch".into()];
    let k = start(cfg);
    let c = client();
    let port = c.local_addr().unwrap().port();
    let a = "+88216123456";
    // Outcomes count only for a number seen calling.
    let unseen = ask(
        &c,
        k.udp_addr,
        &publish(
            &format!("caller={a}\noutcome=cancelled\nring_ms=100\n"),
            "p00",
            port,
        ),
    );
    assert!(
        unseen.starts_with("SIP/2.0 404 Caller Not Seen Calling"),
        "{unseen}"
    );
    assert_eq!(
        status(&ask(&c, k.udp_addr, &invite(a, "+77020000000", "w0", port))),
        302
    );
    // Bad events are refused with the reason.
    let resp = ask(
        &c,
        k.udp_addr,
        &publish("caller=+88216123456\noutcome=cancelled\n", "p0", port),
    );
    assert_eq!(status(&resp), 400);
    assert!(
        resp.starts_with("SIP/2.0 400 cancelled needs ring_ms"),
        "{resp}"
    );
    let resp = ask(
        &c,
        k.udp_addr,
        &publish("caller=nobody;outcome=answered;talk_ms=5", "p1", port),
    );
    assert!(
        resp.starts_with("SIP/2.0 400 caller missing or not a number"),
        "{resp}"
    );
    // Two short rings: below min_calls 3, the next call goes through.
    for i in 0..2 {
        let ok = ask(
            &c,
            k.udp_addr,
            &publish(
                &format!("caller={a}\noutcome=cancelled\nring_ms=1200\n"),
                &format!("q{i}"),
                port,
            ),
        );
        assert_eq!(status(&ok), 200);
    }
    assert_eq!(
        status(&ask(&c, k.udp_addr, &invite(a, "+77020000001", "w1", port))),
        302
    );
    // A third short ring: 3 of 3 >= 60%, the next call is blocked and says why.
    ask(
        &c,
        k.udp_addr,
        &publish(
            &format!("caller={a};outcome=cancelled;ring_ms=900"),
            "q9",
            port,
        ),
    );
    let resp = ask(&c, k.udp_addr, &invite(a, "+77020000002", "w2", port));
    assert_eq!(status(&resp), 603);
    assert_eq!(
        header(&resp, "X-Kuzet-Verdict"),
        Some("block;score=100;rules=\"wangiri: 100.0% >= 60.0%\"")
    );
    assert_eq!(
        reason_without_id(&resp).as_deref(),
        Some("Q.850;cause=21;text=\"wangiri\"")
    );
    k.stop();
}

/// Proxy mode learns outcomes from the messages it forwards: CANCELled
/// rings feed the Wangiri rule, 2xx and BYE feed the concurrency rule.
#[test]
fn proxy_learns_outcomes_on_the_wire() {
    use crate::sockets::{answer, recv, uas};
    let dir = TempDir::new("rules-proxy");
    let next = uas();
    let mut cfg = test_config();
    cfg.server.mode = kuzet::config::Mode::Proxy;
    cfg.proxy.next_hop = Some(next.local_addr().unwrap());
    cfg.rules.file = Some(dir.write(
        "rules.toml",
        "[thresholds]\nflag = 40\nblock = 100\n\
         [[rule]]\nid = \"wangiri\"\nkind = \"wangiri\"\nmin_calls = 2\nratio = 1.0\nscore = 100\n\
         [[rule]]\nid = \"concurrent\"\nkind = \"concurrent\"\nmax = 1\nscore = 40\n",
    ));
    let k = start(cfg);
    let c = client();
    let port = c.local_addr().unwrap().port();
    // Two calls that ring and are cancelled at once: two short rings.
    let w = "+88216000777";
    for id in ["w1", "w2"] {
        c.send_to(invite(w, "+77020000001", id, port).as_bytes(), k.udp_addr)
            .unwrap();
        let (fwd, _) = recv(&next);
        next.send_to(answer(&fwd, "180 Ringing").as_bytes(), k.udp_addr)
            .unwrap();
        let (ringing, _) = recv(&c);
        assert!(ringing.starts_with("SIP/2.0 180"), "{ringing}");
        c.send_to(
            invite(w, "+77020000001", id, port)
                .replace("INVITE", "CANCEL")
                .as_bytes(),
            k.udp_addr,
        )
        .unwrap();
        let (cancel, _) = recv(&next);
        assert!(cancel.starts_with("CANCEL"), "{cancel}");
    }
    let resp = ask(&c, k.udp_addr, &invite(w, "+77020000001", "w3", port));
    assert_eq!(status(&resp), 603, "{resp}");
    assert_eq!(
        header(&resp, "X-Kuzet-Verdict"),
        Some("block;score=100;rules=\"wangiri: 100.0% >= 100.0%\"")
    );
    // Concurrency: two answered calls in progress, the third is flagged.
    let b = "+77011110000";
    let mut answered = Vec::new();
    for id in ["c1", "c2"] {
        c.send_to(invite(b, "+77020000002", id, port).as_bytes(), k.udp_addr)
            .unwrap();
        let (fwd, _) = recv(&next);
        assert_eq!(header(&fwd, "X-Kuzet-Verdict"), None, "{fwd}");
        next.send_to(answer(&fwd, "200 OK").as_bytes(), k.udp_addr)
            .unwrap();
        let (ok, _) = recv(&c);
        assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
        answered.push(fwd);
    }
    c.send_to(invite(b, "+77020000002", "c3", port).as_bytes(), k.udp_addr)
        .unwrap();
    let (fwd, _) = recv(&next);
    assert_eq!(
        header(&fwd, "X-Kuzet-Verdict"),
        Some("flag;score=40;rules=\"concurrent: 2 calls > 1\"")
    );
    // One of them ends: the next call is not flagged.
    let bye = invite(b, "+77020000002", "c1", port).replace("INVITE", "BYE");
    c.send_to(bye.as_bytes(), k.udp_addr).unwrap();
    let (fwd_bye, _) = recv(&next);
    assert!(fwd_bye.starts_with("BYE"), "{fwd_bye}");
    c.send_to(invite(b, "+77020000002", "c4", port).as_bytes(), k.udp_addr)
        .unwrap();
    let (fwd, _) = recv(&next);
    assert_eq!(header(&fwd, "X-Kuzet-Verdict"), None, "{fwd}");
    k.stop();
}

/// Regression: when a BYE was lost, the sweep dropped the call record but
/// left the caller counted as busy, so that number was never evicted and
/// the `concurrent` rule kept flagging it for ever.
#[test]
fn a_lost_bye_does_not_leave_the_caller_busy_for_ever() {
    use crate::common::handler_with_rules;
    use crate::sockets::answer;
    use kuzet_dataplane::handler::Outcome;
    use kuzet_dataplane::metrics::Counter;
    let h = handler_with_rules(
        kuzet::config::Mode::Proxy,
        "[thresholds]\nflag = 40\nblock = 100\n[[rule]]\nid = \"concurrent\"\nkind = \"concurrent\"\nmax = 0\nscore = 40\n",
    );
    let src = "127.0.0.1:40000".parse().unwrap();
    let a = "+77011119999";
    let number = kuzet_rules::NumberingPlan::kazakhstan()
        .validated()
        .unwrap()
        .normalize(a.as_bytes())
        .unwrap();
    let mut out = Vec::new();
    let inv = invite(a, "+77020000001", "lost-bye", 40000);
    let o = h.handle(inv.as_bytes(), src, None, Instant::now(), &mut out);
    assert_eq!(o, Outcome::Forward("127.0.0.1:5999".parse().unwrap()));
    let fwd = String::from_utf8(out.clone()).unwrap();
    let ok = answer(&fwd, "200 OK");
    let next_hop = "127.0.0.1:5999".parse().unwrap();
    let o = h.handle(ok.as_bytes(), next_hop, None, Instant::now(), &mut out);
    assert_eq!(o, Outcome::Forward(src), "the 200 goes back to the caller");
    assert_eq!(h.caller_state(number).unwrap().concurrent, 1);
    assert_eq!(h.calls_in_progress(), 1);
    // The BYE never comes. Past the state TTL (test_config: one day), the
    // sweep ends the call and the caller is no longer busy.
    let later = Instant::now() + Duration::from_secs(86_400 + 60);
    h.sweep_at(later);
    assert_eq!(h.calls_in_progress(), 0);
    assert_eq!(h.metrics().get(Counter::CallsExpired), 1);
    assert!(
        h.caller_state(number).is_none_or(|s| s.concurrent == 0),
        "still counted busy: {:?}",
        h.caller_state(number)
    );
    // And the caller's next call is not flagged as concurrent.
    let inv = invite(a, "+77020000001", "after", 40000);
    h.handle(inv.as_bytes(), src, None, Instant::now(), &mut out);
    let fwd = String::from_utf8(out.clone()).unwrap();
    assert_eq!(header(&fwd, "X-Kuzet-Verdict"), None, "{fwd}");
}

/// Regression: verdicts still queued at shutdown were dropped with the
/// control thread. Every verdict of a burst, lists-only ones included,
/// reaches the log though the process is stopped right after the burst.
#[test]
fn shutdown_drains_every_queued_verdict() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let dir = TempDir::new("drain");
    dir.write("flag.txt", "+7700*,watch range\n");
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
            "--flaglist",
            "flag.txt",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(crate::common::Reaped)
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let c = client();
    let lport = c.local_addr().unwrap().port();
    wait_until_answering(&c, addr);
    const N: usize = 300;
    for i in 0..N {
        let r = ask(
            &c,
            addr,
            &invite(
                &format!("+7700{i:07}"),
                "+77020000001",
                &format!("d{i}"),
                lport,
            ),
        );
        assert!(
            header(&r, "X-Kuzet-Verdict").unwrap().starts_with("flag;"),
            "{r}"
        );
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status();
    let (mut log, mut summary) = (String::new(), String::new());
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut summary)
        .unwrap();
    assert!(child.0.wait().unwrap().success());
    let logged = log
        .lines()
        .filter(|l| {
            l.contains(" verdict ")
                && l.contains("flaglist: caller in a listed 4-digit range (watch range)")
        })
        .count();
    assert_eq!(logged, N, "{summary}");
    assert!(
        summary.contains(&format!("verdicts_logged_total={N}")),
        "{summary}"
    );
    assert!(!summary.contains("verdict_log_dropped_total"), "{summary}");
}

/// A rule file with no list rules: blocklisted numbers are still blocked
/// and flaglisted ones still flagged, over the wire.
#[test]
fn a_rule_file_keeps_the_lists_in_force() {
    let dir = TempDir::new("rules-lists");
    let mut cfg = test_config();
    cfg.lists.files[kuzet_rules::ListId::Block] = vec![dir
        .write("block.txt", "+77011112233,bank fraud desk\n")
        .into()];
    cfg.lists.files[kuzet_rules::ListId::Flag] =
        vec![dir.write("flag.txt", "+77009990001\n").into()];
    cfg.rules.file = Some(dir.write("rules.toml", RULES));
    let k = start(cfg);
    let c = client();
    let port = c.local_addr().unwrap().port();
    let r = ask(
        &c,
        k.udp_addr,
        &invite("+77011112233", "+77020000001", "bl", port),
    );
    assert_eq!(status(&r), 603, "{r}");
    // 603+: the first rule and the verdict id a caller can cite.
    let reason = header(&r, "Reason").unwrap();
    let id = reason
        .strip_prefix("Q.850;cause=21;text=\"blocklist; verdict ")
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{reason}"));
    assert!(
        id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{reason}"
    );
    assert_eq!(
        header(&r, "X-Kuzet-Verdict"),
        Some("block;score=100;rules=\"blocklist: caller listed (bank fraud desk)\"")
    );
    let r = ask(
        &c,
        k.udp_addr,
        &invite("+77009990001", "+77020000001", "fl", port),
    );
    assert_eq!(status(&r), 302, "{r}");
    assert_eq!(
        header(&r, "X-Kuzet-Verdict"),
        Some("flag;score=50;rules=\"flaglist: caller listed\"")
    );
    k.stop();
}

/// In proxy mode a redirect decision rewrites the Request-URI to the desk
/// and the call goes on there, explained.
#[test]
fn proxy_redirect_rewrites_the_request_uri() {
    use crate::sockets::{recv, uas};
    let dir = TempDir::new("rules-proxy-redirect");
    let next = uas();
    let mut cfg = test_config();
    cfg.server.mode = kuzet::config::Mode::Proxy;
    cfg.proxy.next_hop = Some(next.local_addr().unwrap());
    cfg.rules.file = Some(dir.write("rules.toml", RULES));
    let k = start(cfg);
    let c = client();
    let port = c.local_addr().unwrap().port();
    let a = "+77011234567";
    let mut last = String::new();
    for i in 0..5 {
        c.send_to(
            invite(a, &format!("+7702000000{i}"), &format!("pr{i}"), port).as_bytes(),
            k.udp_addr,
        )
        .unwrap();
        last = recv(&next).0;
    }
    assert!(
        last.starts_with("INVITE sip:desk@antifraud.example SIP/2.0\r\n"),
        "{last}"
    );
    assert_eq!(
        without_verdict_id(header(&last, "X-Kuzet-Verdict").unwrap()),
        "redirect;score=80;rules=\"velocity_1m: 5 calls > 3; sequential: 5 in a row >= 5\""
    );
    k.stop();
}

/// A forged short ring five times over would block a number as Wangiri.
fn wangiri_engine(
    dir: &TempDir,
    reporters: &[&str],
    secret: Option<&str>,
) -> kuzet::server::Running {
    let mut cfg = test_config();
    cfg.rules.max_tracked_numbers = 100;
    cfg.rules.file = Some(dir.write(
        "rules.toml",
        "[thresholds]\nflag = 40\nblock = 100\n[[rule]]\nid = \"wangiri\"\nkind = \"wangiri\"\nmin_calls = 3\nratio = 0.6\nscore = 100\n\
         [[rule]]\nid = \"v\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 1\nscore = 50\n",
    ));
    cfg.trunks = vec![kuzet::config::TrunkConfig {
        name: "switch".into(),
        kind: "domestic".into(),
        cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        trust_pai: false,
    }];
    cfg.outcomes.reporters = reporters.iter().map(|r| r.to_string()).collect();
    cfg.outcomes.secret = secret.map(|s| s.as_bytes().to_vec());
    start(cfg)
}

/// Regression: with no trunks configured, anyone who could reach the SIP
/// port could report five short rings and get a number blocked.
#[test]
fn forged_outcomes_cannot_block_a_number() {
    let dir = TempDir::new("forged-outcomes");
    let c = client();
    let port = c.local_addr().unwrap().port();
    let victim = "+77011234567";
    let forge = |k: &kuzet::server::Running, key: Option<&str>, tag: &str| {
        (0..5)
            .map(|i| {
                let mut p = publish(
                    &format!("caller={victim};outcome=cancelled;ring_ms=300"),
                    &format!("{tag}{i}"),
                    port,
                );
                if let Some(key) = key {
                    p = p.replace("Event:", &format!("X-Kuzet-Outcome-Key: {key}\r\nEvent:"));
                }
                status_line(&ask(&c, k.udp_addr, &p))
            })
            .collect::<Vec<_>>()
    };
    // No reporter configured: the API is off.
    let k = wangiri_engine(&dir, &[], None);
    ask(
        &c,
        k.udp_addr,
        &invite(victim, "+77020000001", "seen", port),
    );
    assert!(forge(&k, None, "a")
        .iter()
        .all(|s| s == "403 Outcome API Disabled"));
    let r = ask(
        &c,
        k.udp_addr,
        &invite(victim, "+77020000002", "after", port),
    );
    assert_ne!(status(&r), 603, "{r}");
    k.stop();
    // Reporters configured elsewhere, and a secret this source lacks.
    let k = wangiri_engine(&dir, &["switch"], Some("0123456789abcdef-secret"));
    ask(
        &c,
        k.udp_addr,
        &invite(victim, "+77020000001", "seen2", port),
    );
    assert!(forge(&k, None, "b")
        .iter()
        .all(|s| s == "403 Not An Outcome Reporter"));
    assert!(forge(&k, Some("0123456789abcdef-wrong!"), "c")
        .iter()
        .all(|s| s == "403 Not An Outcome Reporter"));
    assert_eq!(
        k.metrics
            .get(kuzet_dataplane::metrics::Counter::OutcomesRefused),
        10
    );
    let r = ask(
        &c,
        k.udp_addr,
        &invite(victim, "+77020000002", "after2", port),
    );
    assert_ne!(status(&r), 603, "{r}");
    // The right key is accepted.
    assert!(forge(&k, Some("0123456789abcdef-secret"), "d")
        .iter()
        .all(|s| s == "200 OK"));
    k.stop();
}

/// Regression: `started` outcomes for numbers never seen calling created
/// state that was never evicted; a few thousand filled the tracker and
/// velocity rules stopped working for everyone after.
#[test]
fn forged_outcomes_cannot_fill_or_pin_the_tracker() {
    let dir = TempDir::new("pinned-state");
    let k = wangiri_engine(&dir, &[], Some("0123456789abcdef-secret"));
    let c = client();
    let port = c.local_addr().unwrap().port();
    for i in 0..500 {
        let p = publish(
            &format!("caller=+7701{i:07};outcome=started"),
            &format!("s{i}"),
            port,
        )
        .replace(
            "Event:",
            "X-Kuzet-Outcome-Key: 0123456789abcdef-secret\r\nEvent:",
        );
        assert_eq!(
            status_line(&ask(&c, k.udp_addr, &p)),
            "404 Caller Not Seen Calling"
        );
    }
    // The tracker (cap 100) has room: a new caller's second call in a
    // minute is still seen by the velocity rule.
    let a = "+77029999999";
    assert_eq!(
        status(&ask(&c, k.udp_addr, &invite(a, "+77020000001", "v1", port))),
        302
    );
    let r = ask(&c, k.udp_addr, &invite(a, "+77020000002", "v2", port));
    assert_eq!(
        header(&r, "X-Kuzet-Verdict"),
        Some("flag;score=50;rules=\"v: 2 calls > 1\"")
    );
    k.stop();
}

/// "403 Reason" of a response.
fn status_line(resp: &str) -> String {
    resp.lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("SIP/2.0 ")
        .to_string()
}

/// Shadow rules are logged with what they would have done, and enforced
/// verdicts with their explanation, by the kuzet binary on stderr.
#[test]
fn verdicts_and_shadow_results_reach_the_log() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let dir = TempDir::new("rules-log");
    let rules = dir.write(
        "rules.toml",
        "[thresholds]\nflag = 40\nblock = 100\n\
         [[rule]]\nid = \"velocity_trial\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 1\nscore = 100\nmode = \"shadow\"\n\
         [[rule]]\nid = \"mismatch\"\nkind = \"cli_mismatch\"\nscore = 40\n",
    );
    let port = free_port();
    let cfg = dir.write(
        "kuzet.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ntcp = false\n[rules]\nfile = {:?}\n",
            rules.display().to_string()
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args([
            "run",
            "--control",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&cfg)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(crate::common::Reaped)
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let c = client();
    let lport = c.local_addr().unwrap().port();
    // Once kuzet answers, the first call: nothing fires.
    wait_until_answering(&c, addr);
    let resp = ask(
        &c,
        addr,
        &invite("+77011234567", "+77020000001", "l1", lport),
    );
    assert_eq!(header(&resp, "X-Kuzet-Verdict"), Some("allow"));
    // The second: the shadow velocity rule would block; not enforced.
    let resp = ask(
        &c,
        addr,
        &invite("+77011234567", "+77020000002", "l2", lport),
    );
    assert_eq!(
        header(&resp, "X-Kuzet-Verdict"),
        Some("allow;score=0;rules=\"velocity_trial: 2 calls > 1 (shadow)\"")
    );
    // A From/PAI mismatch is enforced: flagged.
    let with_pai = invite("+77019999999", "+77020000003", "l3", lport).replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nP-Asserted-Identity: <sip:+77018888888@127.0.0.1>\r\n",
    );
    let resp = ask(&c, addr, &with_pai);
    assert!(header(&resp, "X-Kuzet-Verdict")
        .unwrap()
        .starts_with("flag;score=40;rules=\"mismatch: From and PAI differ"));
    // Stop at once: verdicts still queued are logged before the process ends.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status();
    let _ = child.0.wait();
    let mut log = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" verdict ")).collect();
    assert!(
        lines.iter().any(|l| l.contains("decision=\"allow\"")
            && l.contains("shadow_decision=\"block\"")
            && l.contains("velocity_trial: 2 calls > 1 (shadow)")
            // Correlation with the switch's records.
            && l.contains("call_id=\"l2\"")
            && l.contains(&format!("source=127.0.0.1:{lport}"))
            && l.contains("transport=\"udp\"")),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("decision=\"flag\"") && l.contains("mismatch: From and PAI differ")),
        "{log}"
    );
}

/// A verdict header without its `;verdict=ID` (checked to be 24 hex
/// digits, an opaque id).
fn without_verdict_id(v: &str) -> &str {
    let (head, id) = v.rsplit_once(";verdict=").expect("a verdict id");
    assert!(
        id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    head
}
