//! Issue 9 over the wire: retransmissions counted once, roamers, spoofing
//! judged on every identity, the shared +7 plan, and list files as
//! spreadsheets write them.

use std::net::UdpSocket;
use std::time::Duration;

use kuzet_dataplane::metrics::Counter;

use crate::common::{ask, client, header, invite, start, status, test_config, TempDir};

const SPOOF_RULES: &str = "[thresholds]\nflag = 40\nblock = 100\n\
    [[rule]]\nid = \"doi\"\nkind = \"domestic_on_international\"\nscore = 100\n\
    [[rule]]\nid = \"prot\"\nkind = \"protected_caller\"\nscore = 100\n\
    [[rule]]\nid = \"inv\"\nkind = \"invalid_caller\"\nscore = 50\n";

/// A client socket bound to `ip` (any 127.x address is local on Linux).
fn client_on(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn spoof_engine(dir: &TempDir) -> kuzet::server::Running {
    let mut cfg = test_config();
    cfg.rules.file = Some(dir.write("rules.toml", SPOOF_RULES));
    cfg.lists.files[kuzet_rules::ListId::Roamers] =
        vec![dir.write("roamers.txt", "+77051112233\n").into()];
    cfg.lists.files[kuzet_rules::ListId::Protected] = vec![dir
        .write("protected.txt", "+77272595555,bank hotline\n")
        .into()];
    cfg.lists.files[kuzet_rules::ListId::Allow] = vec![dir
        .write("allow.txt", "+77272500000,bank call centre\n")
        .into()];
    cfg.trunks = vec![
        kuzet::config::TrunkConfig {
            name: "intl".into(),
            kind: "international".into(),
            cidrs: vec!["127.0.0.2/32".parse().unwrap()],
            trust_pai: false,
        },
        kuzet::config::TrunkConfig {
            name: "mob".into(),
            kind: "mobile".into(),
            cidrs: vec!["127.0.0.1/32".parse().unwrap()],
            trust_pai: false,
        },
    ];
    start(cfg)
}

/// Regression: a retransmitted INVITE was scored as a new call, so under
/// load velocity windows counted messages, not calls.
#[test]
fn retransmitted_invites_are_answered_the_same_and_counted_once() {
    let dir = TempDir::new("retrans");
    let mut cfg = test_config();
    cfg.rules.file = Some(dir.write(
        "rules.toml",
        "[thresholds]\nflag = 40\nblock = 100\n[[rule]]\nid = \"v\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 1\nscore = 50\n",
    ));
    let k = start(cfg);
    let c = client();
    let port = c.local_addr().unwrap().port();
    let first = invite("+77011234567", "+77020000001", "rt1", port);
    let answers: Vec<String> = (0..3).map(|_| ask(&c, k.udp_addr, &first)).collect();
    assert_eq!(status(&answers[0]), 302);
    assert_eq!(header(&answers[0], "X-Kuzet-Verdict"), Some("allow"));
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(k.metrics.get(Counter::Invites), 1);
    assert_eq!(k.metrics.get(Counter::InviteRetransmissions), 2);
    // The caller's second *call* is its second, not its fourth.
    let r = ask(
        &c,
        k.udp_addr,
        &invite("+77011234567", "+77020000002", "rt2", port),
    );
    assert_eq!(
        header(&r, "X-Kuzet-Verdict"),
        Some("flag;score=50;rules=\"v: 2 calls > 1\"")
    );
    // Its retransmission is answered with the flag again, not re-scored.
    let again = ask(
        &c,
        k.udp_addr,
        &invite("+77011234567", "+77020000002", "rt2", port),
    );
    assert_eq!(r, again);
    assert_eq!(k.metrics.get(Counter::Flagged), 1);
    k.stop();
}

#[test]
fn roamers_calling_home_pass_and_spoofs_of_domestic_and_trusted_numbers_do_not() {
    let dir = TempDir::new("roamers");
    let k = spoof_engine(&dir);
    let intl = client_on("127.0.0.2");
    let port = intl.local_addr().unwrap().port();
    let ask_intl = |a: &str, id: &str| ask(&intl, k.udp_addr, &invite(a, "+77020000001", id, port));
    // A subscriber roaming abroad, calling home: allowed, and said so.
    let r = ask_intl("+77051112233", "roam");
    assert_eq!(status(&r), 302, "{r}");
    assert_eq!(
        header(&r, "X-Kuzet-Verdict"),
        Some("allow;score=0;rules=\"doi: From is a known outbound roamer, not counted\"")
    );
    // Any other domestic caller ID from abroad: a spoof.
    assert_eq!(status(&ask_intl("+77011234567", "spoof")), 603);
    // The bank's allowlisted number from abroad: still a spoof.
    let r = ask_intl("+77272500000", "trusted");
    assert_eq!(status(&r), 603, "{r}");
    assert!(header(&r, "X-Kuzet-Verdict")
        .unwrap()
        .contains("allowlist: caller listed (bank call centre); doi: From is domestic"));
    // Russia shares +7: a Russian caller is foreign, valid, allowed.
    let r = ask_intl("+79161234567", "ru");
    assert_eq!(
        (status(&r), header(&r, "X-Kuzet-Verdict")),
        (302, Some("allow"))
    );
    // A Kazakhstani number one digit short: invalid.
    let mob = client_on("127.0.0.1");
    let mport = mob.local_addr().unwrap().port();
    let r = ask(
        &mob,
        k.udp_addr,
        &invite("+7701123456", "+77020000001", "short", mport),
    );
    assert_eq!(
        header(&r, "X-Kuzet-Verdict"),
        Some("flag;score=50;rules=\"inv: caller number invalid (wrong length)\"")
    );
    k.stop();
}

#[test]
fn a_protected_number_in_from_or_a_display_name_is_caught() {
    let dir = TempDir::new("identities");
    let k = spoof_engine(&dir);
    let c = client_on("127.0.0.1");
    let port = c.local_addr().unwrap().port();
    // A clean PAI, the bank hotline in From.
    let in_from = invite("+77011234567", "+77020000001", "pf", port)
        .replacen("From: <sip:+77011234567@", "From: <sip:+77272595555@", 1)
        .replace(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nP-Asserted-Identity: <sip:+77011234567@127.0.0.1>\r\n",
        );
    let r = ask(&c, k.udp_addr, &in_from);
    assert_eq!(status(&r), 603, "{r}");
    assert!(header(&r, "X-Kuzet-Verdict")
        .unwrap()
        .contains("prot: From is a protected number"));
    // The hotline's digits as a display name.
    let in_display = invite("+77011234567", "+77020000001", "pd", port).replacen(
        "From: <sip:",
        "From: \"+7 727 259 5555\" <sip:",
        1,
    );
    let r = ask(&c, k.udp_addr, &in_display);
    assert_eq!(status(&r), 603, "{r}");
    assert!(header(&r, "X-Kuzet-Verdict")
        .unwrap()
        .contains("prot: display name is a protected number"));
    k.stop();
}

/// Regression: a byte-order mark stopped kuzet from starting, and `tel:`
/// and `sip:` forms were refused in list files.
#[test]
fn list_files_as_spreadsheets_and_switches_write_them_are_loaded() {
    let dir = TempDir::new("list-forms");
    let mut cfg = test_config();
    cfg.lists.files[kuzet_rules::ListId::Block] = vec![dir.write(
        "block.csv",
        "\u{feff}tel:+77011112233;npdi,from a bank\r\nsip:+77011112234@gw;user=phone\r\n8 (701) 111-22-35\r\n",
    ).into()];
    let k = start(cfg);
    let c = client();
    let port = c.local_addr().unwrap().port();
    for (i, a) in ["+77011112233", "+77011112234", "+77011112235"]
        .iter()
        .enumerate()
    {
        let r = ask(
            &c,
            k.udp_addr,
            &invite(a, "+77020000001", &format!("lf{i}"), port),
        );
        assert_eq!(status(&r), 603, "{a}: {r}");
    }
    k.stop();
}
