//! Issue 18's attacks, each a regression test named after it, over real
//! sockets against the engine (in this process, or the `kuzet` binary
//! where the attack needs a process: a SIGKILL, a second user, a file
//! mode, the bytes a terminal would get): a caller who can reach kuzet, a
//! local user on the same host, and a hostile register.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kuzet_dataplane::metrics::Counter;
use kuzet_sim::register::{read_entries, Mode, HOSTILE_ERROR};

use crate::common::{
    ask, client, header, invite, start, status, test_config, wait, Reg, TempDir, Watched,
};

/// A UDP client bound to `ip` (any 127.x address is local on Linux).
fn client_on(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// An INVITE from `from_user` to `b` with `extra` header lines (each
/// ending in CRLF) before Max-Forwards.
fn invite_with(from_user: &str, b: &str, call_id: &str, port: u16, extra: &str) -> String {
    invite(from_user, b, call_id, port).replace(
        "Max-Forwards: 70\r\n",
        &format!("{extra}Max-Forwards: 70\r\n"),
    )
}

/// The verdict id in a 603's Reason, if it carries one.
pub(crate) fn verdict_id(resp: &str) -> Option<String> {
    let r = header(resp, "Reason")?;
    let at = r.find("; verdict ")? + "; verdict ".len();
    r.get(at..at + 24).map(str::to_string)
}

/// The calls the store holds with this verdict id.
pub(crate) fn recorded(data: &Path, id: &str) -> Vec<kuzet_store::Record> {
    let c = kuzet_store::open_reader(data).unwrap();
    kuzet_store::query::calls(
        &c,
        &kuzet_store::query::Filter {
            verdict_id: Some(id.into()),
            ..Default::default()
        },
        None,
        10,
    )
    .unwrap()
    .calls
}

/// Waits until the store in `data` holds the call with verdict `id`.
pub(crate) fn wait_recorded(data: &Path, id: &str) {
    wait("the call recorded", || {
        (recorded(data, id).len() == 1).then_some(())
    });
}

/// One blocked call from the listed caller to kuzet at `w`, waited for
/// until the store in `data` holds it: its verdict id.
fn one_block(w: &Watched, data: &Path, call_id: &str) -> String {
    let c = client();
    let port = c.local_addr().unwrap().port();
    let r = ask(
        &c,
        w.addr,
        &invite("+77011112233", "+77020000001", call_id, port),
    );
    let id = verdict_id(&r).expect("a verdict id");
    wait_recorded(data, &id);
    id
}

/// Every incident in the store.
fn incidents(data: &Path) -> Vec<kuzet_store::incident::Incident> {
    let c = kuzet_store::open_reader(data).unwrap();
    kuzet_store::incident::list(&c, None, None, 1000).unwrap()
}

/// The `kuzet` binary run in `dir` with `args`, no token in the
/// environment: exit code, stdout bytes, stderr.
fn cli(dir: &Path, args: &[&str]) -> (Option<i32>, Vec<u8>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args(args)
        .env_remove("KUZET_TOKEN")
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// No byte of `out` can drive a terminal: no C0 control but the line
/// ends, no DEL, no C1.
fn assert_printable(out: &[u8], what: &str) {
    let text = String::from_utf8_lossy(out);
    let bad: Vec<char> = text
        .chars()
        .filter(|c| (c.is_control() && *c != '\n') || ('\u{80}'..='\u{9f}').contains(c))
        .collect();
    assert!(
        bad.is_empty(),
        "{what} holds control characters {bad:?}:\n{text}"
    );
}

fn free_tcp() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::ports::free_port()))
}

/// Regression: a second INVITE that reused an allowed INVITE's Call-ID,
/// CSeq and Via branch within 32 s, but to a blocklisted number (or from
/// one), got the cached `302 allow` and was not recorded. It is now judged
/// on its own (603, recorded, counted), in redirect mode and, forwarded
/// nowhere, in proxy mode; a true retransmission still gets the first
/// answer and is counted once.
#[test]
fn the_retransmission_trick_is_judged_on_its_own_in_both_modes() {
    for proxy in [false, true] {
        let dir = TempDir::new("retrans-trick");
        let block = dir.write("block.txt", "+77011112233,fraud line\n");
        let mut cfg = test_config();
        cfg.lists.files[kuzet_rules::ListId::Block] = vec![kuzet::config::ListEntry::path(block)];
        cfg.store.enabled = true;
        cfg.store.dir = Some(dir.path().join("data"));
        let next_hop = UdpSocket::bind("127.0.0.1:0").unwrap();
        next_hop
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        if proxy {
            cfg.server.mode = kuzet::config::Mode::Proxy;
            cfg.proxy.next_hop = Some(next_hop.local_addr().unwrap());
        }
        let k = start(cfg);
        let c = client();
        let port = c.local_addr().unwrap().port();
        let mut buf = vec![0u8; 65536];
        // Forwarded (proxy) or answered (redirect): the first copy goes on.
        let first = invite("+77010000001", "+77020000001", "trick", port);
        if proxy {
            c.send_to(first.as_bytes(), k.udp_addr).unwrap();
            let (n, _) = next_hop.recv_from(&mut buf).expect("forwarded");
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("INVITE sip:+77020000001"));
        } else {
            let r = ask(&c, k.udp_addr, &first);
            assert_eq!(
                (status(&r), header(&r, "X-Kuzet-Verdict")),
                (302, Some("allow"))
            );
        }
        // The same transaction to a listed callee, and from a listed caller.
        for (n, trick) in [
            invite("+77010000001", "+77011112233", "trick", port),
            invite("+77011112233", "+77020000001", "trick", port),
        ]
        .into_iter()
        .enumerate()
        {
            let r = ask(&c, k.udp_addr, &trick);
            assert_eq!(status(&r), 603, "proxy={proxy} trick {n}: {r}");
            let id = verdict_id(&r).expect("a verdict id");
            let rec = wait("the trick recorded", || {
                let r = recorded(&dir.path().join("data"), &id);
                (!r.is_empty()).then_some(r)
            });
            assert_eq!(rec[0].call_id, "trick");
            assert_eq!(rec[0].decision, "block");
        }
        assert_eq!(k.metrics.get(Counter::TransactionReused), 2);
        // A true retransmission of the last one gets its answer again,
        // judged once.
        let invites = k.metrics.get(Counter::Invites);
        let again = ask(
            &c,
            k.udp_addr,
            &invite("+77011112233", "+77020000001", "trick", port),
        );
        assert_eq!(status(&again), 603);
        assert_eq!(k.metrics.get(Counter::Invites), invites);
        assert_eq!(k.metrics.get(Counter::InviteRetransmissions), 1);
        if proxy {
            // Nothing but the first INVITE reached the next hop: the next
            // datagram there is a marker sent now.
            let marker = invite("+77010000009", "+77020000009", "marker", port);
            c.send_to(marker.as_bytes(), k.udp_addr).unwrap();
            let (n, _) = next_hop.recv_from(&mut buf).unwrap();
            assert!(
                String::from_utf8_lossy(&buf[..n]).contains("Call-ID: marker"),
                "{}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
        k.stop();
    }
}

/// An engine with a store, the stand-in register and `rules` (TOML), a
/// blocklist, and trunks: `intl` (127.0.0.2, untrusted) and `core`
/// (127.0.0.3, trusted to assert identities). Sources elsewhere are on no
/// trunk.
fn reporting_engine(
    dir: &TempDir,
    rules: &str,
    block: &str,
    register: SocketAddr,
) -> kuzet::server::Running {
    let mut cfg = test_config();
    cfg.rules.file = Some(dir.write("rules.toml", rules));
    cfg.lists.files[kuzet_rules::ListId::Block] = vec![kuzet::config::ListEntry::path(
        dir.write("block.txt", block),
    )];
    cfg.store.enabled = true;
    cfg.store.dir = Some(dir.path().join("data"));
    cfg.incidents.report_min_blocked = 2;
    cfg.register.endpoint = Some(format!("http://{register}"));
    cfg.register.timeout_ms = 2000;
    cfg.trunks = vec![
        kuzet::config::TrunkConfig {
            name: "intl".into(),
            kind: "international".into(),
            cidrs: vec!["127.0.0.2/32".parse().unwrap()],
            trust_pai: false,
        },
        kuzet::config::TrunkConfig {
            name: "core".into(),
            kind: "mobile".into(),
            cidrs: vec!["127.0.0.3/32".parse().unwrap()],
            trust_pai: true,
        },
    ];
    start(cfg)
}

/// A report as the register took it: kind, key, and every party (number,
/// role, basis).
type Reported = (String, String, Vec<(String, String, String)>);

/// What the register was sent, per report kind and key: every party.
fn reported(file: &Path) -> Vec<Reported> {
    read_entries(file)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.subject, e.parties))
        .collect()
}

/// An engine ([`reporting_engine`]) reporting to a stand-in register of
/// its own: the engine, the register (kept alive), the register's file.
fn reporting(dir: &TempDir, rules: &str, block: &str) -> (kuzet::server::Running, Reg, PathBuf) {
    let reg_addr = free_tcp();
    let reg_file = dir.path().join("register.jsonl");
    let reg = Reg::start(reg_addr, &reg_file, Mode::Accept, Duration::ZERO);
    (reporting_engine(dir, rules, block, reg_addr), reg, reg_file)
}

/// No incident in the store and no report names `number` its source, and
/// every report that names it gives it `role`.
fn never_a_source(data: &Path, reports: &[Reported], number: &str, role: &str) {
    assert!(
        !incidents(data)
            .iter()
            .any(|i| i.kind == "source" && i.key == number),
        "{number} named a source"
    );
    for (kind, subject, parties) in reports {
        assert!(
            !(kind == "source" && subject == number),
            "{number} reported as the source"
        );
        for (n, r, _) in parties {
            if n == number {
                assert_eq!(r, role, "{number} in a {kind} report");
            }
        }
    }
}

const VELOCITY: &str = "[thresholds]\nflag = 40\nblock = 100\n\
    [[rule]]\nid = \"velocity\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 1\nscore = 100\n";

/// Regression: a source on no trunk put any number in P-Asserted-Identity
/// or From (a plain PAI, a second PAI header, a PAI list, `tel:` with
/// separators, `Privacy: id`, or From alone), and kuzet opened an incident
/// under that number and reported it to the register as the source. Now
/// no incident names a number nobody vouches for: the calls are the
/// address's, and each presented number is a claimed caller. The same
/// call through a trunk trusted to assert identities does name its number.
#[test]
fn six_identity_tricks_never_make_an_innocent_number_a_source() {
    let dir = TempDir::new("identity-tricks");
    let (k, _reg, reg_file) = reporting(&dir, VELOCITY, "+77019999999\n");
    let c = client();
    let port = c.local_addr().unwrap().port();
    let tricks: [(&str, &str, &str); 6] = [
        ("+77019990001", "+77010000000", "P-Asserted-Identity: <sip:+77019990001@evil>\r\n"),
        (
            "+77019990002",
            "+77010000000",
            "P-Asserted-Identity: <sip:anonymous@evil>\r\nP-Asserted-Identity: <sip:+77019990002@evil>\r\n",
        ),
        (
            "+77019990003",
            "+77010000000",
            "P-Asserted-Identity: <sip:anonymous@evil>, <tel:+77019990003>\r\n",
        ),
        ("+77019990004", "+77010000000", "P-Asserted-Identity: <tel:+7-701-999-00-04>\r\n"),
        (
            "+77019990005",
            "+77010000000",
            "Privacy: id\r\nP-Asserted-Identity: <sip:+77019990005@evil>\r\n",
        ),
        ("+77019990006", "+77019990006", ""),
    ];
    for (i, (innocent, from, extra)) in tricks.iter().enumerate() {
        for n in 0..3 {
            let r = ask(
                &c,
                k.udp_addr,
                &invite_with(
                    from,
                    &format!("+7702000{i}{n:03}"),
                    &format!("t{i}-{n}"),
                    port,
                    extra,
                ),
            );
            assert_eq!(
                status(&r),
                if n == 0 { 302 } else { 603 },
                "{innocent}: {r}"
            );
        }
    }
    // The control: a trusted trunk asserts its caller.
    let core = client_on("127.0.0.3");
    let cport = core.local_addr().unwrap().port();
    for n in 0..3 {
        let r = ask(
            &core,
            k.udp_addr,
            &invite_with(
                "+77010000000",
                &format!("+77029000{n:03}"),
                &format!("core-{n}"),
                cport,
                "P-Asserted-Identity: <sip:+77018880000@core>\r\n",
            ),
        );
        assert_eq!(status(&r), if n == 0 { 302 } else { 603 });
    }
    let data = dir.path().join("data");
    // Every blocked call is reported; wait for the register to hear it.
    let reports = wait("the reports", || {
        let r = reported(&reg_file);
        let claimed: usize = r
            .iter()
            .flat_map(|(_, _, p)| p.iter())
            .filter(|p| p.1 == "claimed_caller")
            .map(|p| p.0.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        (claimed == 6
            && r.iter()
                .any(|(k, s, _)| k == "source" && s == "+77018880000"))
        .then_some(r)
    });
    for (innocent, _, _) in tricks {
        never_a_source(&data, &reports, innocent, "claimed_caller");
    }
    let address = incidents(&data)
        .into_iter()
        .find(|i| i.kind == "address" && i.key == "127.0.0.1")
        .expect("the calls are the address's");
    assert_eq!(address.evidence.claimed.len(), 6, "{:?}", address.evidence);
    let source = incidents(&data)
        .into_iter()
        .find(|i| i.kind == "source" && i.key == "+77018880000")
        .expect("an asserted number is named");
    assert_eq!(source.evidence.basis, "asserted");
    k.stop();
}

/// Regression: a caller whose calls were blocked because the *callee* is
/// listed (someone calling back a scam number) was reported as the fraud
/// source, with the listed number as its victim. The caller is now a
/// potential victim; the listed number is what the incident is about.
#[test]
fn calls_to_a_listed_callee_make_the_caller_a_potential_victim() {
    let dir = TempDir::new("listed-callee");
    let (k, _reg, reg_file) = reporting(&dir, VELOCITY, "+77015550000,scam line\n");
    let c = client();
    let port = c.local_addr().unwrap().port();
    let mut ids = Vec::new();
    for n in 0..3 {
        let r = ask(
            &c,
            k.udp_addr,
            &invite(
                &format!("+7701000004{n}"),
                "+77015550000",
                &format!("cb-{n}"),
                port,
            ),
        );
        assert_eq!(status(&r), 603, "{r}");
        ids.push(verdict_id(&r).unwrap());
    }
    let data = dir.path().join("data");
    let reports = wait("the destination's report", || {
        let r = reported(&reg_file);
        r.iter()
            .any(|(k, s, p)| k == "destination" && s == "+77015550000" && p.len() >= 4)
            .then_some(r)
    });
    for n in 0..3 {
        never_a_source(
            &data,
            &reports,
            &format!("+7701000004{n}"),
            "potential_victim",
        );
    }
    let (_, _, parties) = reports.iter().find(|(k, _, _)| k == "destination").unwrap();
    assert!(parties.contains(&("+77015550000".into(), "source".into(), "listed".into())));
    let rec = recorded(&data, &ids[0]);
    assert_eq!(rec[0].caller_role, "potential_victim");
    k.stop();
}

/// A campaign of spoofed domestic caller IDs from an international trunk:
/// the incident's source is the trunk, and the presented numbers are
/// impersonated, each holder a victim; none is reported as a source.
#[test]
fn a_spoofed_cli_campaign_names_the_trunk_and_the_numbers_as_impersonated() {
    let dir = TempDir::new("spoof-campaign");
    let rules = "[thresholds]\nflag = 40\nblock = 100\n\
        [[rule]]\nid = \"doi\"\nkind = \"domestic_on_international\"\nscore = 100\n";
    let (k, _reg, reg_file) = reporting(&dir, rules, "+77019999999\n");
    let intl = client_on("127.0.0.2");
    let port = intl.local_addr().unwrap().port();
    let spoofed: Vec<String> = (1..=5).map(|n| format!("+7701000010{n}")).collect();
    for (n, cli) in spoofed.iter().enumerate() {
        let r = ask(
            &intl,
            k.udp_addr,
            &invite(cli, &format!("+7702111000{n}"), &format!("sp-{n}"), port),
        );
        assert_eq!(status(&r), 603, "{r}");
    }
    let data = dir.path().join("data");
    let reports = wait("the trunk's report", || {
        let r = reported(&reg_file);
        r.iter()
            .any(|(k, s, p)| {
                k == "trunk"
                    && s == "intl"
                    && p.iter().filter(|p| p.1 == "impersonated").count() == 5
            })
            .then_some(r)
    });
    let trunk = incidents(&data)
        .into_iter()
        .find(|i| i.kind == "trunk" && i.key == "intl")
        .expect("the trunk's incident");
    assert_eq!(trunk.blocked, 5);
    assert_eq!(trunk.evidence.impersonated.len(), 5);
    for cli in &spoofed {
        never_a_source(&data, &reports, cli, "impersonated");
    }
    k.stop();
}

/// The kuzet binary in `dir` with `kuzet.toml` (a blocklist of
/// +77011112233 and `extra`) and its data in `dir/data`.
pub(crate) fn binary(dir: &TempDir, extra: &str) -> Watched {
    dir.write("block.txt", "+77011112233,fraud line\n");
    dir.write(
        "kuzet.toml",
        &format!(
            "[server]\nstats_interval_secs = 1\n[lists]\nblocklist = [\"block.txt\"]\n{extra}"
        ),
    );
    Watched::start(&["-c", "kuzet.toml", "--data", "data"], dir.path())
}

/// Blocked calls from the listed caller: the verdict ids given.
fn blocked_burst(w: &Watched, tag: &str, n: usize, pad: usize) -> Vec<String> {
    let c = client();
    let port = c.local_addr().unwrap().port();
    let pad = if pad > 0 {
        format!("X-Pad: {}\r\n", "p".repeat(pad))
    } else {
        String::new()
    };
    (0..n)
        .filter_map(|i| {
            let r = ask(
                &c,
                w.addr,
                &invite_with(
                    "+77011112233",
                    &format!("+7702{i:07}"),
                    &format!("{tag}-{i}"),
                    port,
                    &pad,
                ),
            );
            assert_eq!(status(&r), 603, "{r}");
            verdict_id(&r)
        })
        .collect()
}

/// Regression: calls answered in the last ~0.2 s before a SIGKILL were
/// never recorded, though their callers held verdict ids. The record
/// queue is a file: a restart commits what it holds before serving. Here
/// the store is held locked through the burst, so every record is still
/// in the queue when kuzet is killed; then a second burst is killed the
/// moment it ends.
#[test]
fn a_sigkill_after_a_burst_of_blocked_calls_loses_no_verdict_id() {
    let dir = TempDir::new("sigkill-burst");
    let data = dir.path().join("data");
    let w = binary(&dir, "");
    let lock = rusqlite::Connection::open(data.join("kuzet.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE;").unwrap();
    let mut ids = blocked_burst(&w, "held", 300, 0);
    assert_eq!(ids.len(), 300, "every block carries its verdict id");
    let pid = w.pid();
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let _ = w.wait_exit();
    lock.execute_batch("ROLLBACK;").unwrap();
    drop(lock);
    let w = Watched::start(&["-c", "kuzet.toml", "--data", "data"], dir.path());
    // Committed before it served.
    let line = w
        .log
        .iter()
        .find(|l| l.contains("records the last run left"))
        .expect("the replay is said");
    assert!(
        line.contains("WARN") && line.contains("records=300"),
        "{line}"
    );
    ids.extend(blocked_burst(&w, "fast", 300, 0));
    let pid = w.pid();
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let _ = w.wait_exit();
    let w = Watched::start(&["-c", "kuzet.toml", "--data", "data"], dir.path());
    for id in &ids {
        assert_eq!(recorded(&data, id).len(), 1, "verdict {id} lost");
    }
    let c = kuzet_store::open_reader(&data).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM calls", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 600, "and none recorded twice");
    w.stop();
}

/// The cells of a CSV line, unquoted.
fn csv_cells(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => cells.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    cells.push(cur);
    cells
}

/// Regression: escape sequences and folded lines in a Call-ID or a display
/// name reached the terminal raw through `kuzet calls --verdict-id`,
/// `kuzet incidents show` (the register's error text) and kuzet's own text
/// log; in tmux the caller line showed another number and the pane title
/// changed. `--format csv` wrote `=cmd|…`, `@SUM(…)`, `+HYPERLINK(…)` cells
/// as they were. Checked on the bytes the CLI writes.
#[test]
fn escape_sequences_and_formulas_are_shown_harmless() {
    let dir = TempDir::new("escapes");
    let reg_addr = free_tcp();
    let _reg = Reg::start(
        reg_addr,
        &dir.path().join("reg.jsonl"),
        Mode::Hostile,
        Duration::ZERO,
    );
    let admin = "kz_escapes_admin";
    let mut w = binary(
        &dir,
        &format!(
            "[incidents]\nreport_min_blocked = 1\n\
             [register]\nendpoint = \"http://{reg_addr}\"\ntimeout_ms = 2000\n\
             [[control.tokens]]\nname = \"root\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            kuzet_control::access::hash_token(admin)
        ),
    );
    let c = client();
    let port = c.local_addr().unwrap().port();
    let forged_from = "From: \"\x1b[8m+77000000000\x1b[0m\r\n caller    +77000000000\" <sip:+77011112233@evil>;tag=f\r\n";
    let mut ids = Vec::new();
    for call_id in [
        "=cmd|' /C calc'!A0",
        "@SUM(1+1)",
        "+HYPERLINK(\"http://evil\")",
        "-2+3",
        // A folded line inside the Call-ID: shown on its own, it would
        // look like a line of kuzet's log.
        "cid\x1b]0;pwned\x07\x1b[2J\r\n INFO forged line",
    ] {
        let msg = invite("+77011112233", "+77020000001", "x", port)
            .replace("Call-ID: x\r\n", &format!("Call-ID: {call_id}\r\n"));
        let msg = msg
            .lines()
            .filter(|l| !l.starts_with("From:"))
            .map(|l| format!("{l}\r\n"))
            .collect::<String>()
            .replace(
                "Max-Forwards: 70\r\n",
                &format!("{forged_from}Max-Forwards: 70\r\n"),
            );
        c.send_to(msg.as_bytes(), w.addr).unwrap();
        let mut buf = vec![0u8; 65536];
        let (n, _) = c.recv_from(&mut buf).expect("an answer");
        let r = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert_eq!(status(&r), 603, "{call_id:?}: {r}");
        ids.push(verdict_id(&r).unwrap());
    }
    let data = dir.path().join("data");
    wait_recorded(&data, &ids[4]);
    let d = dir.path();
    // One call in full: every value escaped, one caller line.
    for id in [&ids[0], &ids[4]] {
        let (code, out, err) = cli(d, &["calls", "--data", "data", "--verdict-id", id]);
        assert_eq!(code, Some(0), "{err}");
        assert_printable(&out, "calls --verdict-id");
        let text = String::from_utf8_lossy(&out);
        assert_eq!(
            text.lines().filter(|l| l.starts_with("caller")).count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("\\x1b"),
            "the escapes are shown, not hidden: {text}"
        );
    }
    // The table and CSV.
    let (code, out, err) = cli(d, &["calls", "--data", "data"]);
    assert_eq!(code, Some(0), "{err}");
    assert_printable(&out, "calls");
    let (code, out, err) = cli(d, &["calls", "--data", "data", "--format", "csv"]);
    assert_eq!(code, Some(0), "{err}");
    assert_printable(&out, "calls --format csv");
    let text = String::from_utf8_lossy(&out).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    let mut call_ids = Vec::new();
    for line in &lines[1..] {
        let cells = csv_cells(line);
        assert_eq!(cells.len(), 16, "{line}");
        for cell in &cells {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "a formula cell {cell:?} in {line}"
            );
        }
        call_ids.push(cells[15].clone());
    }
    for want in [
        "'=cmd|' /C calc'!A0",
        "'@SUM(1+1)",
        "'+HYPERLINK(\"http://evil\")",
        "'-2+3",
    ] {
        assert!(
            call_ids.iter().any(|c| c == want),
            "{want} not in {call_ids:?}"
        );
    }
    // The register's error text, shown by `incidents show`.
    let inc = wait("the register's refusal", || {
        incidents(&data)
            .into_iter()
            .find(|i| i.register_state == "dead_letter")
    });
    assert!(
        inc.register_error.contains('\x1b'),
        "kept as the register sent it"
    );
    let (code, out, err) = cli(
        d,
        &["incidents", "show", &inc.id.to_string(), "--data", "data"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_printable(&out, "incidents show");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("state")).count(),
        1,
        "{text}"
    );
    assert!(text.contains("\\x1b]0;pwned\\x07"), "{text}");
    // A filter with escapes, in the audit log.
    let (code, _, _) = cli(d, &["calls", "--data", "data", "--rule", "\x1b[2Jx"]);
    assert_eq!(code, Some(0));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args(["audit", "--control", &control_of(&w)])
        .env("KUZET_TOKEN", admin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_printable(&out.stdout, "audit");
    // (The filter is kept as JSON, which writes ESC as \u001b.)
    assert!(String::from_utf8_lossy(&out.stdout).contains("[2Jx"));
    // kuzet's own log: the Call-ID is quoted and escaped, no line forged.
    w.wait_for("counters:", Duration::from_secs(5));
    let (_, _, log) = w.stop();
    assert_printable(log.as_bytes(), "kuzet's log");
    assert!(
        !log.lines()
            .any(|l| l.trim_start().starts_with("INFO forged line")),
        "{log}"
    );
    assert!(log.contains("\\u{1b}]0;pwned"), "{log}");
    let _ = HOSTILE_ERROR;
}

/// The control address of a Watched kuzet, from its serving line.
fn control_of(w: &Watched) -> String {
    w.log
        .iter()
        .find(|l| l.contains("kuzet serving"))
        .and_then(|l| l.split("control_addr=Some(").nth(1))
        .and_then(|r| r.split(')').next())
        .expect("the control address")
        .to_string()
}

/// Regression: `kuzet calls --limit 1000` failed on calls with 4 KiB
/// headers (the page passed the client's 4 MiB message limit). Pages are
/// now cut by size and the CLI asks again until it has what was asked.
#[test]
fn calls_limit_1000_works_on_calls_with_4_kib_headers() {
    let dir = TempDir::new("limit-1000");
    let w = binary(&dir, "");
    let ids = blocked_burst(&w, "big", 1100, 4000);
    let data = dir.path().join("data");
    wait_recorded(&data, &ids[1099]);
    let (code, out, err) = cli(
        dir.path(),
        &[
            "calls", "--data", "data", "--limit", "1000", "--format", "jsonl",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.lines().count(), 1000);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(
        first["headers"]
            .as_str()
            .unwrap()
            .contains(&"p".repeat(4000)),
        "the header is kept whole"
    );
    assert!(err.contains("more: add --cursor"), "{err}");
    w.stop();
}

/// Regression: a 4 KiB header placed before From pushed the raw From out
/// of the record (the header section was cut at 4 KiB). Every header
/// kuzet knows by name is kept whole, whatever comes before it; only the
/// others share a budget, and what is left out is said.
#[test]
fn a_big_header_before_from_cannot_push_the_identity_out_of_the_record() {
    let dir = TempDir::new("padded-from");
    let w = binary(&dir, "");
    let c = client();
    let port = c.local_addr().unwrap().port();
    let pad: String = (0..6)
        .map(|i| format!("X-Pad-{i}: {}\r\n", "q".repeat(2000)))
        .collect();
    let msg = invite("+77011112233", "+77020000001", "padded", port);
    let from_line = msg
        .lines()
        .find(|l| l.starts_with("From:"))
        .unwrap()
        .to_string();
    let msg = msg.replacen(&format!("{from_line}\r\n"), "", 1).replace(
        "Max-Forwards: 70\r\n",
        &format!(
            "{pad}{from_line}\r\nP-Asserted-Identity: <sip:+77011112233@x>\r\nMax-Forwards: 70\r\n"
        ),
    );
    let r = ask(&c, w.addr, &msg);
    let id = verdict_id(&r).unwrap();
    let data = dir.path().join("data");
    let rec = wait("recorded", || recorded(&data, &id).pop());
    let head = String::from_utf8_lossy(&rec.headers);
    assert!(head.contains(&from_line), "{head}");
    assert!(
        head.contains("P-Asserted-Identity: <sip:+77011112233@x>"),
        "{head}"
    );
    assert!(
        head.contains("Call-ID: padded") && head.contains("Via: SIP/2.0/UDP"),
        "{head}"
    );
    assert!(head.contains("X-Kuzet-Not-Kept: 4 header lines"), "{head}");
    assert_eq!(rec.from_hdr, from_line.trim_start_matches("From: "));
    w.stop();
}

/// The permission bits of `p` (not following a link).
fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// kuzet started on `data` (relative to `dir`) that must refuse it: exit 2
/// with a message holding each of `says`.
fn refuses(dir: &Path, data: &str, says: &[&str]) {
    let w = Watched::spawn(&["--data", data], dir);
    let (code, _, log) = w.wait_exit();
    assert_eq!(code, Some(2), "{log}");
    for s in says {
        assert!(log.contains(s), "no {s:?} in:\n{log}");
    }
}

/// Regression: with umask 022 the store, its WAL and the audit log were
/// world-readable; kuzet followed a symlinked `kuzet.lock` and adopted a
/// data directory others could write. The directory is made 0700, every
/// file in it 0600 whatever the umask; a link in place of the directory
/// or any of its files, or a directory group or others can write, is
/// refused with the reason, and the link's target is left alone.
#[test]
fn the_data_directory_its_links_and_its_file_modes_are_kuzets_alone() {
    let dir = TempDir::new("data-modes");
    dir.write("block.txt", "+77011112233,fraud line\n");
    dir.write("kuzet.toml", "[lists]\nblocklist = [\"block.txt\"]\n");
    let w = Watched::start_with(
        "sh",
        &[
            "-c",
            "umask 022; exec \"$0\" \"$@\"",
            env!("CARGO_BIN_EXE_kuzet"),
        ],
        &["-c", "kuzet.toml", "--data", "data"],
        dir.path(),
    );
    let data = dir.path().join("data");
    let id = one_block(&w, &data, "m");
    // A query writes the audit log.
    let (code, _, err) = cli(
        dir.path(),
        &["calls", "--data", "data", "--verdict-id", &id],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(mode_of(&data), 0o700);
    let mut names = Vec::new();
    for e in std::fs::read_dir(&data).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert_eq!(
            mode_of(&e.path()) & 0o077,
            0,
            "{name} is open to others: {:o}",
            mode_of(&e.path())
        );
        names.push(name);
    }
    for f in [
        "kuzet.db",
        "kuzet.db-wal",
        "audit.db",
        "records.ring",
        "kuzet.lock",
        "control.sock",
    ] {
        assert!(names.iter().any(|n| n == f), "{f} not in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n == "local.token"),
        "no token on disk: {names:?}"
    );
    w.stop();

    // A directory others can write.
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    refuses(
        dir.path(),
        "data",
        &["data", "group or others", "chmod 700"],
    );
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    // A lock file pointing into someone's home.
    let victim = dir.write("victim.txt", "someone's file\n");
    std::fs::remove_file(data.join("kuzet.lock")).unwrap();
    std::os::unix::fs::symlink(&victim, data.join("kuzet.lock")).unwrap();
    refuses(dir.path(), "data", &["kuzet.lock", "symbolic link"]);
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "someone's file\n"
    );
    std::fs::remove_file(data.join("kuzet.lock")).unwrap();
    // The store itself a link.
    std::fs::rename(data.join("kuzet.db"), dir.path().join("moved.db")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("moved.db"), data.join("kuzet.db")).unwrap();
    refuses(dir.path(), "data", &["kuzet.db", "symbolic link"]);
    // The directory a link.
    std::os::unix::fs::symlink(&data, dir.path().join("linked")).unwrap();
    refuses(dir.path(), "linked", &["symbolic link"]);
}

/// Runs `cmd` as the unprivileged user `nobody` (uid 65534).
fn as_nobody(cmd: &str) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            cmd,
        ])
        .output()
        .expect("setpriv runs")
}

/// Regression: another local user could make `kuzet-data` first and have
/// kuzet adopt it, plant a store there (forged calls, an incident against
/// an innocent number), and unlink `kuzet.db` and `audit.db` while kuzet
/// ran. With a second Unix user (this test needs root; it is skipped
/// otherwise, saying why), none of it works: a directory another user owns
/// is refused, and kuzet's own is closed to them.
#[test]
fn another_local_user_cannot_own_plant_read_or_erase_the_evidence() {
    if kuzet_store::private::process_uid() != Some(0) {
        eprintln!("skipped: needs root to act as a second user (setpriv)");
        return;
    }
    let dir = TempDir::new("second-user");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(
        &shared,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // The other user gets there first, with a store of their making.
    let planted = shared.join("kuzet-data");
    let out = as_nobody(&format!(
        "mkdir -m 700 '{0}' && printf 'SQLite format 3' > '{0}/kuzet.db'",
        planted.display()
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    refuses(&shared, "kuzet-data", &["kuzet-data", "owned by uid 65534"]);
    // Even one they made open to kuzet (mode 755) is not kuzet's.
    let out = as_nobody(&format!("chmod 755 '{}'", planted.display()));
    assert!(out.status.success());
    refuses(&shared, "kuzet-data", &["owned by uid 65534"]);

    // kuzet's own directory, in the same shared place.
    dir.write("block.txt", "+77011112233,fraud line\n");
    let w = Watched::start(
        &["--data", "shared/mine", "--blocklist", "block.txt"],
        dir.path(),
    );
    let mine = shared.join("mine");
    one_block(&w, &mine, "u2");
    // kuzet's own user queries (the audit log is made).
    let (code, _, err) = cli(dir.path(), &["calls", "--data", "shared/mine"]);
    assert_eq!(code, Some(0), "{err}");
    for (what, cmd) in [
        (
            "read the store",
            format!("cat '{}/kuzet.db' > /dev/null", mine.display()),
        ),
        ("list the directory", format!("ls '{}'", mine.display())),
        (
            "remove the store",
            format!("rm -f '{}/kuzet.db'", mine.display()),
        ),
        (
            "remove the audit log",
            format!("rm -f '{}/audit.db'", mine.display()),
        ),
        (
            "replace the directory",
            format!("mv '{0}' '{0}.gone'", mine.display()),
        ),
    ] {
        let out = as_nobody(&cmd);
        assert!(!out.status.success(), "the other user could {what}");
    }
    // Nor query through its socket.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_kuzet"))
        .args(["calls", "--data"])
        .arg(&mine)
        .env_remove("KUZET_TOKEN")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mine.join("kuzet.db").exists() && mine.join("audit.db").exists());
    w.stop();
}

/// The admin address of a Watched kuzet, from its serving line.
pub(crate) fn admin_of(w: &Watched) -> SocketAddr {
    w.log
        .iter()
        .find(|l| l.contains("kuzet serving"))
        .and_then(|l| l.split("admin_addr=Some(").nth(1))
        .and_then(|r| r.split(')').next())
        .and_then(|a| a.parse().ok())
        .expect("the admin address")
}

/// Regression: with retention by size, 1,500 padded blocked calls from an
/// outsider retired an open incident's calls, though the incident still
/// listed their ids. Retention now takes only what it may (sampled allows
/// here); with nothing else left and the store still over its limit, kuzet
/// stops sampling, says so at WARN and on /readyz, and keeps the evidence.
#[test]
fn retention_against_a_flood_keeps_the_incidents_evidence() {
    let dir = TempDir::new("retention-flood");
    dir.write("block.txt", "+77011112233,fraud line\n+7705*,fraud range\n");
    dir.write(
        "kuzet.toml",
        "[server]\nstats_interval_secs = 1\n[lists]\nblocklist = [\"block.txt\"]\n\
         [store]\nmax_size_mb = 1\nrecord_allowed_every = 1\n",
    );
    let mut w = Watched::start(&["-c", "kuzet.toml", "--data", "data"], dir.path());
    let c = client();
    let port = c.local_addr().unwrap().port();
    // The evidence: three blocked calls of one listed source.
    let evidence: Vec<String> = (0..3)
        .map(|i| {
            let r = ask(
                &c,
                w.addr,
                &invite(
                    "+77011112233",
                    &format!("+7702000000{i}"),
                    &format!("ev-{i}"),
                    port,
                ),
            );
            verdict_id(&r).unwrap()
        })
        .collect();
    // The flood: padded allowed calls (sampled), then padded blocks from a
    // listed range, each a caller of its own.
    let pad = format!("X-Pad: {}\r\n", "f".repeat(3000));
    for i in 0..300 {
        let r = ask(
            &c,
            w.addr,
            &invite_with(
                &format!("+7707{i:07}"),
                "+77020000009",
                &format!("al-{i}"),
                port,
                &pad,
            ),
        );
        assert_eq!(status(&r), 302);
    }
    for i in 0..1500 {
        let r = ask(
            &c,
            w.addr,
            &invite_with(
                &format!("+7705{i:07}"),
                "+77020000009",
                &format!("fl-{i}"),
                port,
                &pad,
            ),
        );
        assert_eq!(status(&r), 603);
    }
    let admin = admin_of(&w);
    let body = wait("the store to say it is over its limit", || {
        let (code, body) = crate::operations::http_get(admin, "/readyz");
        (code == 503 && body.contains("store over its size limit")).then_some(body)
    });
    assert!(body.contains("sampled allows are not recorded"), "{body}");
    w.wait_for("over its size limit", Duration::from_secs(10));
    let data = dir.path().join("data");
    let c2 = kuzet_store::open_reader(&data).unwrap();
    let count = |sql: &str| -> i64 { c2.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT count(*) FROM calls WHERE decision = 'allow'"),
        0,
        "the samples went"
    );
    assert_eq!(
        count("SELECT count(*) FROM calls WHERE decision = 'block'"),
        1503,
        "every block stays"
    );
    for id in &evidence {
        assert_eq!(recorded(&data, id).len(), 1, "{id}");
    }
    let inc_id: i64 = c2
        .query_row(
            "SELECT id FROM incidents WHERE key = '+77011112233'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let inc = kuzet_store::incident::get(&c2, inc_id).unwrap().unwrap();
    assert_eq!(inc.blocked, 3);
    for id in &inc.evidence.samples {
        assert_eq!(recorded(&data, id).len(), 1, "the incident's sample {id}");
    }
    w.stop();
}

/// Regression: a flood of blocked calls overflowed the record queue;
/// 37,558 records were dropped and 5 of 30 verdict ids already given to
/// callers could not be found; /readyz stayed 200 and nothing was logged
/// above info. Now a call the queue has no room for is answered without a
/// verdict id (so every id given is found), each loss is counted and
/// logged at WARN, and losses that go on make the node unready.
#[test]
fn a_record_queue_flood_keeps_every_verdict_id_it_gave() {
    let dir = TempDir::new("queue-flood");
    let mut w = binary(&dir, "[store]\nqueue_mb = 1\n");
    let data = dir.path().join("data");
    let admin = admin_of(&w);
    // The store holds nothing back but this lock: records pile up.
    let lock = rusqlite::Connection::open(data.join("kuzet.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE;").unwrap();
    let c = client();
    let port = c.local_addr().unwrap().port();
    let mut given = Vec::new();
    let mut withheld = 0u64;
    let mut i = 0u64;
    let started = Instant::now();
    loop {
        let r = ask(
            &c,
            w.addr,
            &invite(
                "+77011112233",
                &format!("+7702{i:07}"),
                &format!("q-{i}"),
                port,
            ),
        );
        assert_eq!(status(&r), 603);
        match verdict_id(&r) {
            Some(id) => given.push(id),
            None => withheld += 1,
        }
        i += 1;
        // Keep losing until the node says so on /readyz.
        if withheld > 0 && i.is_multiple_of(200) {
            let (code, body) = crate::operations::http_get(admin, "/readyz");
            if code == 503 && body.contains("records lost") {
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never unready");
    }
    assert!(withheld > 0 && !given.is_empty());
    w.wait_for(
        "records not kept since the last report",
        Duration::from_secs(15),
    );
    lock.execute_batch("ROLLBACK;").unwrap();
    drop(lock);
    let n = given.len() as u64;
    let counter = |line: &str, name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let line = loop {
        let l = w.wait_for("counters:", Duration::from_secs(10));
        if counter(&l, "store_records_total") == n {
            break l;
        }
        assert!(Instant::now() < deadline, "never committed: {l}");
    };
    assert_eq!(
        counter(&line, "verdict_ids_withheld_total"),
        withheld,
        "{line}"
    );
    for id in &given {
        assert_eq!(recorded(&data, id).len(), 1, "verdict {id} lost");
    }
    w.stop();
}

/// Regression: of 60 refusals in one second, 20 were audited, and a rule
/// author's two denied queries in the same second not at all. Every
/// refusal is now counted: one audit row per token, action and outcome
/// per second.
#[test]
fn a_refusal_burst_is_counted_whole_in_the_audit_log() {
    use kuzet_api::investigation as pb;
    let dir = TempDir::new("refusal-burst");
    let mut cfg = test_config();
    cfg.store.enabled = true;
    cfg.store.dir = Some(dir.path().join("data"));
    let (rui, root) = ("kz_rule_author_rui", "kz_admin_root");
    cfg.control.tokens = vec![
        kuzet::config::TokenConfig {
            name: "rui".into(),
            role: "rule-author".into(),
            sha256: kuzet_control::access::hash_token(rui),
        },
        kuzet::config::TokenConfig {
            name: "root".into(),
            role: "admin".into(),
            sha256: kuzet_control::access::hash_token(root),
        },
    ];
    let k = start(cfg);
    let addr = k.control_addr.unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let req = |t: Option<&str>| {
        let mut r = tonic::Request::new(pb::QueryCallsRequest::default());
        if let Some(t) = t {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    };
    rt.block_on(async {
        let mut c = kuzet_api::investigation::investigation_service_client::InvestigationServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        for i in 0..60 {
            let t = if i % 2 == 0 { None } else { Some("kz_wrong") };
            assert_eq!(c.query_calls(req(t)).await.unwrap_err().code(), tonic::Code::Unauthenticated);
        }
        for _ in 0..2 {
            assert_eq!(c.query_calls(req(Some(rui))).await.unwrap_err().code(), tonic::Code::PermissionDenied);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut r = tonic::Request::new(pb::ReadAuditRequest { page_size: 1000, cursor: String::new() });
            r.metadata_mut().insert("authorization", format!("Bearer {root}").parse().unwrap());
            let entries = c.read_audit(r).await.unwrap().into_inner().entries;
            let sum = |who: &str, outcome: &str| -> u64 {
                entries
                    .iter()
                    .filter(|e| e.who == who && e.action == "QueryCalls" && e.outcome == outcome)
                    .map(|e| e.count)
                    .sum()
            };
            let rows = entries.iter().filter(|e| e.who == "-").count();
            if sum("-", "unauthenticated") == 60 && sum("rui", "denied") == 2 {
                // Counted, not a row each: one per second at most.
                assert!(rows <= 3, "{rows} rows for 60 refusals");
                break;
            }
            assert!(Instant::now() < deadline, "{entries:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    k.stop();
}

/// An engine in this process, blocking +77011112233, that reports every
/// incident (one block makes one) to the register at `reg_addr`.
fn reporting_each_block(
    dir: &TempDir,
    reg_addr: SocketAddr,
    timeout_ms: u64,
) -> kuzet::server::Running {
    let mut cfg = test_config();
    cfg.lists.files[kuzet_rules::ListId::Block] = vec![kuzet::config::ListEntry::path(
        dir.write("block.txt", "+77011112233\n"),
    )];
    cfg.store.enabled = true;
    cfg.store.dir = Some(dir.path().join("data"));
    cfg.incidents.report_min_blocked = 1;
    cfg.register.endpoint = Some(format!("http://{reg_addr}"));
    cfg.register.timeout_ms = timeout_ms;
    start(cfg)
}

/// One call from the listed caller to `k`: blocked.
fn block_once(k: &kuzet::server::Running, call_id: &str) {
    let c = client();
    let port = c.local_addr().unwrap().port();
    let r = ask(
        &c,
        k.udp_addr,
        &invite("+77011112233", "+77020000001", call_id, port),
    );
    assert_eq!(status(&r), 603);
}

/// A hostile register answers with a case id of 3.5 MB (it was stored as
/// it was). What a register sends back is now bounded: an answer larger
/// than 16 KiB is not even decoded, a case id past 256 bytes is not
/// believed, and the error kept is cut at 1 KiB; the delivery is retried.
#[test]
fn a_register_answering_a_huge_case_id_is_not_believed() {
    let dir = TempDir::new("register-oversize");
    let reg_addr = free_tcp();
    let _reg = Reg::start(
        reg_addr,
        &dir.path().join("reg.jsonl"),
        Mode::Oversize,
        Duration::ZERO,
    );
    let k = reporting_each_block(&dir, reg_addr, 2000);
    block_once(&k, "big");
    let data = dir.path().join("data");
    let inc = wait("a delivery attempt", || {
        incidents(&data)
            .into_iter()
            .find(|i| !i.register_error.is_empty())
    });
    assert_eq!(inc.register_case, "", "no case id believed");
    assert_ne!(inc.register_state, "delivered");
    assert!(
        inc.register_error.len() <= 1100,
        "{} bytes of error kept",
        inc.register_error.len()
    );
    assert!(
        k.metrics
            .counter_set::<kuzet_control::report::RegisterCounters>()
            .retries
            .get()
            >= 1
    );
    k.stop();
}

/// A field of `/proc/PID/status` (VmRSS in KiB, Threads).
fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field}"))
}

/// Regression: 600 exports that were never read raised kuzet's memory
/// from 0.3 to 1.85 GB and its threads to 519; queries timed out, and a
/// number added to the blocklist stayed unblocked until the streams
/// closed. Exports are now capped per token and in total (the rest get
/// RESOURCE_EXHAUSTED), each holds a small buffer, and the API runs apart
/// from reloads: memory and threads stay bounded, and a reload and a
/// query go through while the streams hang.
#[test]
fn six_hundred_unread_exports_hold_neither_memory_nor_reloads() {
    use kuzet_api::investigation as pb;
    let dir = TempDir::new("unread-exports");
    let tokens: Vec<String> = (0..5).map(|i| format!("kz_export_token_{i}")).collect();
    let mut extra = String::new();
    for (i, t) in tokens.iter().enumerate() {
        extra += &format!(
            "[[control.tokens]]\nname = \"inv{i}\"\nrole = \"investigator\"\nsha256 = \"{}\"\n",
            kuzet_control::access::hash_token(t)
        );
    }
    let w = binary(&dir, &extra);
    let ids = blocked_burst(&w, "exp", 2000, 2000);
    let data = dir.path().join("data");
    wait_recorded(&data, ids.last().unwrap());
    let control = control_of(&w);
    let (rss_before, threads_before) = (
        proc_status(w.pid(), "VmRSS:"),
        proc_status(w.pid(), "Threads:"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (held, exhausted) = rt.block_on(async {
        // Ten connections, sixty exports on each, none of them read.
        let mut set = tokio::task::JoinSet::new();
        for c in 0..10 {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{control}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            for n in 0..60 {
                let token = tokens[(c + n) % tokens.len()].clone();
                let mut client =
                    kuzet_api::investigation::investigation_service_client::InvestigationServiceClient::new(ch.clone());
                set.spawn(async move {
                    let mut r = tonic::Request::new(pb::ExportCallsRequest::default());
                    r.metadata_mut()
                        .insert("authorization", format!("Bearer {token}").parse().unwrap());
                    client.export_calls(r).await.map(|s| s.into_inner())
                });
            }
        }
        let mut held = Vec::new();
        let mut exhausted = 0;
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Ok(s) => held.push(s),
                // Refused: past the export caps, or past the streams a
                // connection may have open (REFUSED_STREAM).
                Err(s) => {
                    assert!(
                        matches!(s.code(), tonic::Code::ResourceExhausted | tonic::Code::Unavailable),
                        "{s:?}"
                    );
                    exhausted += 1;
                }
            }
        }
        (held, exhausted)
    });
    assert_eq!(held.len() + exhausted, 600);
    assert!(held.len() <= 8, "{} exports running", held.len());
    // While they hang unread: a reload takes effect, a query answers.
    std::fs::write(
        dir.path().join("block.txt"),
        "+77011112233,fraud line\n+77019876543,new\n",
    )
    .unwrap();
    let c = client();
    let port = c.local_addr().unwrap().port();
    wait("the reload", || {
        let r = ask(
            &c,
            w.addr,
            &invite(
                "+77019876543",
                "+77020000001",
                &format!("rl-{}", rand_tag()),
                port,
            ),
        );
        (status(&r) == 603).then_some(())
    });
    let (code, out, err) = cli(
        dir.path(),
        &["calls", "--data", "data", "--verdict-id", &ids[0]],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.is_empty());
    let (rss, threads) = (
        proc_status(w.pid(), "VmRSS:"),
        proc_status(w.pid(), "Threads:"),
    );
    assert!(
        rss < rss_before + 150 * 1024,
        "RSS {rss_before} KiB -> {rss} KiB"
    );
    assert!(
        threads < threads_before + 40,
        "threads {threads_before} -> {threads}"
    );
    drop(held);
    drop(rt);
    w.stop();
}

/// A tag that differs between calls of one test run.
fn rand_tag() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Regression: 200 connections trickling request headers to the admin
/// address stayed open indefinitely, and idle admin connections could take
/// every file descriptor, so SIP over TCP and queries failed. Here kuzet
/// runs with 256 descriptors: connections beyond the caps are closed at
/// once, the trickling ones at the header deadline; SIP answers over UDP
/// and TCP throughout, and a query over the local socket too.
#[test]
fn admin_slowloris_and_descriptor_exhaustion_leave_sip_answering() {
    use std::io::{Read, Write};
    let dir = TempDir::new("slowloris");
    dir.write("block.txt", "+77011112233,fraud line\n");
    let w = Watched::start_with(
        "prlimit",
        &["--nofile=256:256", env!("CARGO_BIN_EXE_kuzet")],
        &["--blocklist", "block.txt", "--data", "data"],
        dir.path(),
    );
    let admin = admin_of(&w);
    let control: SocketAddr = control_of(&w).parse().unwrap();
    // Trickling headers from one address: past its share, closed at once.
    let connect = |from: &str, to: SocketAddr| -> Option<std::net::TcpStream> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
        s.bind(&format!("{from}:0").parse::<SocketAddr>().unwrap().into())
            .ok()?;
        s.connect(&to.into()).ok()?;
        let s: std::net::TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
        Some(s)
    };
    let closed = |s: &mut std::net::TcpStream| -> bool {
        let mut b = [0u8; 256];
        match s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    };
    let mut slow: Vec<std::net::TcpStream> = (0..200)
        .filter_map(|_| {
            let mut s = connect("127.0.0.1", admin)?;
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: k");
            Some(s)
        })
        .collect();
    let mut refused_at_once = 0;
    for s in &mut slow {
        if closed(s) {
            refused_at_once += 1;
        }
    }
    assert!(
        refused_at_once >= 180,
        "{refused_at_once} of 200 closed at once"
    );
    // From elsewhere, the admin address answers meanwhile.
    let ask_ready = || {
        let mut s = connect("127.0.0.9", admin).expect("connects");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(
        ask_ready().starts_with("HTTP/1.1 200"),
        "readyz from another address"
    );
    // The trickling ones are closed at the header deadline.
    let started = Instant::now();
    for s in &mut slow {
        loop {
            let _ = s.write_all(b"x");
            if closed(s) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "a trickling connection stayed open"
            );
        }
    }
    drop(slow);
    // A SIP peer's connection, open before the flood.
    let sip = w.addr;
    let mut t = connect("127.0.0.1", sip).expect("SIP over TCP takes a connection");
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Many addresses, many connections, to every surface.
    let mut hold = Vec::new();
    for ip in 2..40 {
        let from = format!("127.0.0.{ip}");
        for to in [admin, control, sip] {
            for _ in 0..12 {
                if let Some(s) = connect(&from, to) {
                    hold.push(s);
                }
            }
        }
    }
    // SIP over UDP answers...
    let c = client();
    let port = c.local_addr().unwrap().port();
    let r = ask(
        &c,
        w.addr,
        &invite("+77011112233", "+77020000001", "fd-udp", port),
    );
    assert_eq!(status(&r), 603);
    // ...and over TCP, on the peer's connection.
    let msg = invite("+77011112233", "+77020000002", "fd-tcp", port)
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    t.write_all(msg.as_bytes()).unwrap();
    let mut b = vec![0u8; 4096];
    let n = t.read(&mut b).unwrap();
    assert_eq!(status(&String::from_utf8_lossy(&b[..n])), 603);
    // A query over the local socket answers.
    let (code, _, err) = cli(dir.path(), &["calls", "--data", "data"]);
    assert_eq!(code, Some(0), "{err}");
    // The flood goes: everything is as before.
    drop(hold);
    wait("ready again", || {
        ask_ready().starts_with("HTTP/1.1 200").then_some(())
    });
    let (code, _, log) = w.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// An outbox entry whose payload does not decode (a damaged file, a
/// payload of another version) used to be sent as an empty report. It is
/// now dead-lettered with the reason, and nothing is sent.
#[test]
fn an_outbox_payload_that_does_not_decode_is_dead_lettered_not_sent_empty() {
    let dir = TempDir::new("outbox-version");
    let reg_addr = free_tcp();
    let reg_file = dir.path().join("reg.jsonl");
    let k = reporting_each_block(&dir, reg_addr, 500);
    block_once(&k, "ob");
    let data = dir.path().join("data");
    // The register is down: the entry waits, tried.
    wait("a failed delivery", || {
        incidents(&data)
            .into_iter()
            .find(|i| !i.register_error.is_empty())
    });
    {
        let w = rusqlite::Connection::open(data.join("kuzet.db")).unwrap();
        w.busy_timeout(Duration::from_secs(5)).unwrap();
        w.execute(
            "UPDATE outbox SET payload = '{\"version\": 99, \"kind\": \"source\"}'",
            [],
        )
        .unwrap();
    }
    // The register comes up: nothing reaches it; the incident says why.
    let _reg = Reg::start(reg_addr, &reg_file, Mode::Accept, Duration::ZERO);
    let inc = wait("the dead letter", || {
        incidents(&data)
            .into_iter()
            .find(|i| i.register_state == "dead_letter")
    });
    assert!(
        inc.register_error.contains("version 99"),
        "{}",
        inc.register_error
    );
    assert!(
        read_entries(&reg_file).unwrap().is_empty(),
        "nothing was sent"
    );
    k.stop();
}

/// A stop with a store that takes nothing (a dead disk, a lock nobody
/// lets go) neither hangs nor loses what a caller was told: kuzet exits,
/// the records stay in the record queue's file, and the next start
/// commits them.
#[test]
fn a_stop_with_a_dead_store_keeps_its_records_for_the_next_start() {
    let dir = TempDir::new("stop-dead-store");
    let data = dir.path().join("data");
    let w = binary(&dir, "");
    let lock = rusqlite::Connection::open(data.join("kuzet.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE;").unwrap();
    let ids = blocked_burst(&w, "dead", 50, 0);
    let started = Instant::now();
    let (code, _, log) = w.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the stop waited {:?}",
        started.elapsed()
    );
    assert!(log.contains("they stay in the record queue"), "{log}");
    lock.execute_batch("ROLLBACK;").unwrap();
    drop(lock);
    let w = Watched::start(&["-c", "kuzet.toml", "--data", "data"], dir.path());
    for id in &ids {
        assert_eq!(recorded(&data, id).len(), 1, "verdict {id} lost");
    }
    w.stop();
}
