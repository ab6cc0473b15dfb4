//! The National Bank's Anti-Fraud Centre against a running kuzet, over
//! real HTTP, with the stand-in Centre (`kuzet_sim::nbfeed`): the feed
//! becomes the `nb_feed` layer and is refused when tampered, replayed,
//! out of order or signed by a retired key; entries expire on time; a dead
//! feed goes stale without touching a call; an alert opens a case with its
//! deadline and its decision reaches the Centre once across a SIGKILL; and
//! the people a fraud source reached are reported once each, never an
//! impersonated number. Over HTTPS with mTLS the feed is taken only by a
//! kuzet that has its client certificate and trusts the Centre's CA.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use kuzet::config::{Config, TrunkConfig};
use kuzet_control::nbfeed::{KeyConfig, NbankConfig};
use kuzet_sim::nbfeed::{Alert, FeedEntry, NbFeed, TlsServer};

use crate::common::*;
use crate::operations::http_get;

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A runtime for the stand-in.
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// The stand-in, serving on loopback.
fn centre(rt: &tokio::runtime::Runtime, seed: &str) -> (NbFeed, SocketAddr) {
    let feed = NbFeed::new(seed);
    let addr = rt
        .block_on(feed.spawn("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    (feed, addr)
}

/// The stand-in's keys as `[[nbank.keys]]`.
fn keys(feed: &NbFeed) -> Vec<KeyConfig> {
    feed.keys()
        .into_iter()
        .map(|k| KeyConfig {
            id: k.id,
            public: k.public_hex,
            valid_from: k.valid_from_rfc3339,
            valid_until: None,
        })
        .collect()
}

/// An engine with the store in `dir` and the Centre at `addr`.
fn config(dir: &TempDir, feed: &NbFeed, addr: SocketAddr) -> Config {
    let mut c = test_config();
    c.store.enabled = true;
    c.store.dir = Some(dir.path().join("data"));
    c.nbank = NbankConfig {
        url: Some(format!("http://{addr}")),
        poll_ms: 300,
        timeout_ms: 2_000,
        keys: keys(feed),
        ..NbankConfig::default()
    };
    c
}

/// The status kuzet answers an INVITE from `a`.
fn call(addr: SocketAddr, a: &str, n: &mut u32) -> u16 {
    *n += 1;
    let sock = client();
    let port = sock.local_addr().unwrap().port();
    status(&ask(
        &sock,
        addr,
        &invite(a, "+77019990000", &format!("nb-{n}-{a}"), port),
    ))
}

fn counter(e: &kuzet::server::Running, name: &str) -> u64 {
    e.metrics.value(name).unwrap_or(0)
}

/// A gauge as /metrics shows it.
fn scraped(admin: SocketAddr, name: &str) -> f64 {
    let (_, text) = http_get(admin, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("kuzet_{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("kuzet_{name} not in /metrics"))
}

const FRAUD: &str = "+77015550101";
const LATER: &str = "+77015550102";

#[test]
fn the_feed_blocks_what_a_good_batch_adds_and_refuses_tampered_replayed_and_gapped_batches() {
    let rt = rt();
    let (feed, addr) = centre(&rt, "feed");
    let dir = TempDir::new("nbank-feed");
    let e = start(config(&dir, &feed, addr));
    let mut n = 0;
    assert_eq!(
        call(e.udp_addr, FRAUD, &mut n),
        302,
        "allowed before the feed names it"
    );

    // A good batch: blocked, through the swap, with the version naming it.
    let far = now_s() + 86_400;
    feed.publish(&[FeedEntry::add(FRAUD, "bank-impersonation", far)]);
    wait("the first batch blocks", || {
        (call(e.udp_addr, FRAUD, &mut n) == 603).then_some(())
    });
    assert_eq!(e.lists.load().version.seq, 1, "the version names batch 1");
    // Where the number stands: on nb_feed, from the feed's batch 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args(["lists", "lookup", FRAUD, "--data"])
        .arg(dir.path().join("data"))
        .env_remove("KUZET_TOKEN")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("nb_feed") && text.contains("nbfeed") && text.contains("batch 1"),
        "{text}"
    );

    // Tampered: refused, counted, and nothing of it is in force; kuzet
    // asks again from the same cursor and takes the good copy.
    feed.tamper_next();
    feed.publish(&[FeedEntry::add(LATER, "sim-box", far)]);
    wait("the tampered batch is refused", || {
        (counter(&e, "nbank_batches_rejected_signature_total") == 1).then_some(())
    });
    assert_eq!(
        call(e.udp_addr, LATER, &mut n),
        302,
        "a tampered batch changes nothing"
    );
    assert_eq!(
        call(e.udp_addr, FRAUD, &mut n),
        603,
        "the layer in force stays"
    );
    wait("the good copy of batch 2 blocks", || {
        (call(e.udp_addr, LATER, &mut n) == 603).then_some(())
    });

    // Replayed: ignored.
    feed.replay_next();
    feed.publish(&[FeedEntry::withdraw(LATER)]);
    wait("batch 3 withdraws", || {
        (call(e.udp_addr, LATER, &mut n) == 302).then_some(())
    });
    assert_eq!(counter(&e, "nbank_batches_rejected_replay_total"), 1);
    assert_eq!(call(e.udp_addr, FRAUD, &mut n), 603);

    // A gap: batch 5 offered after 3; refused, and kuzet asks from 3 again.
    feed.skip_next();
    feed.publish(&[FeedEntry::add("+77015550104", "sim-box", far)]);
    feed.publish(&[FeedEntry::add("+77015550105", "sim-box", far)]);
    wait("batches 4 and 5 apply in order", || {
        (e.lists.load().version.seq == 5).then_some(())
    });
    assert_eq!(counter(&e, "nbank_batches_rejected_gap_total"), 1);
    let served: Vec<u64> = feed
        .served()
        .into_iter()
        .filter(|(p, _)| p.contains("batches"))
        .map(|(_, after)| after)
        .collect();
    let at = served
        .windows(2)
        .position(|w| w == [3, 3])
        .expect("after the gap kuzet asked again from its last good batch");
    assert!(served[at + 2..].contains(&4), "{served:?}");
    assert_eq!(call(e.udp_addr, "+77015550104", &mut n), 603);
    assert_eq!(call(e.udp_addr, "+77015550105", &mut n), 603);
    assert_eq!(counter(&e, "nbank_batches_applied_total"), 5);
    e.stop();
}

#[test]
fn an_entry_leaves_the_layer_at_its_expires_at_without_a_reload() {
    let rt = rt();
    let (feed, addr) = centre(&rt, "expiry");
    let dir = TempDir::new("nbank-expiry");
    let e = start(config(&dir, &feed, addr));
    let mut n = 0;
    let expires = now_s() + 3;
    feed.publish(&[FeedEntry::add(FRAUD, "bank-impersonation", expires)]);
    wait("the entry blocks", || {
        (call(e.udp_addr, FRAUD, &mut n) == 603).then_some(())
    });
    // Blocked until its time, allowed from it: the feed says nothing more.
    let left = loop {
        let s = call(e.udp_addr, FRAUD, &mut n);
        let t = now_s();
        if s == 302 {
            break t;
        }
        assert_eq!(s, 603);
        assert!(t < expires + 30, "the entry never left");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        left >= expires,
        "it left at {left}, before its expires_at {expires}"
    );
    eprintln!("the entry left {} s after its expires_at", left - expires);
    assert_eq!(counter(&e, "nbank_entries_expired_total"), 1);
    assert_eq!(
        e.lists.load().lists[kuzet_rules::ListId::NbFeed].exact_count(),
        0
    );
    e.stop();
}

#[test]
fn a_rotated_key_is_taken_and_a_retired_key_is_refused() {
    let rt = rt();
    let (feed, addr) = centre(&rt, "rotate");
    let k2 = feed.rotate();
    let dir = TempDir::new("nbank-keys");
    let mut cfg = config(&dir, &feed, addr);
    // k1 was retired in 2021; k2 is the key in service.
    cfg.nbank.keys[0].valid_until = Some("2021-01-01T00:00:00Z".into());
    let e = start(cfg);
    let mut n = 0;
    let far = now_s() + 86_400;
    feed.publish(&[FeedEntry::add(FRAUD, "bank-impersonation", far)]);
    wait("a batch signed with the new key blocks", || {
        (call(e.udp_addr, FRAUD, &mut n) == 603).then_some(())
    });
    assert_eq!(k2, "k2");
    // The feed goes back to the retired key: refused, every time.
    feed.sign_with("k1");
    feed.publish(&[FeedEntry::add(LATER, "sim-box", far)]);
    wait("the retired key's batch is refused twice", || {
        (counter(&e, "nbank_batches_rejected_key_total") >= 2).then_some(())
    });
    assert_eq!(call(e.udp_addr, LATER, &mut n), 302);
    assert_eq!(e.lists.load().version.seq, 1);
    e.stop();
}

#[test]
fn a_dead_feed_keeps_its_last_layer_enforced_while_it_goes_stale() {
    let rt = rt();
    let (feed, addr) = centre(&rt, "dead");
    let dir = TempDir::new("nbank-dead");
    let mut cfg = config(&dir, &feed, addr);
    cfg.nbank.stale_after_s = 1;
    let e = start(cfg);
    let admin = e.admin_addr.unwrap();
    let mut n = 0;
    feed.publish(&[FeedEntry::add(
        FRAUD,
        "bank-impersonation",
        now_s() + 86_400,
    )]);
    wait("the entry blocks", || {
        (call(e.udp_addr, FRAUD, &mut n) == 603).then_some(())
    });
    assert_eq!(scraped(admin, "nbank_feed_stale"), 0.0);
    feed.stop();
    wait("the feed goes stale", || {
        (scraped(admin, "nbank_feed_stale") == 1.0).then_some(())
    });
    let s1 = scraped(admin, "nbank_feed_staleness_seconds");
    assert!(s1 >= 1.0, "{s1}");
    wait("staleness grows", || {
        (scraped(admin, "nbank_feed_staleness_seconds") > s1).then_some(())
    });
    // Calls go on with the last good layer; the node stays ready and says
    // why someone should look.
    assert_eq!(call(e.udp_addr, FRAUD, &mut n), 603);
    assert_eq!(call(e.udp_addr, LATER, &mut n), 302);
    let (code, body) = http_get(admin, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("warning: the National Bank feed is stale"),
        "{body}"
    );
    assert!(counter(&e, "nbank_fetch_errors_total") >= 1);
    e.stop();
}

#[test]
fn the_feed_over_https_with_mtls_is_taken_and_a_kuzet_without_its_certificate_is_refused() {
    let rt = rt();
    let certs = TempDir::new("nbank-tls-pki");
    // One CA signs the Centre's certificate and kuzet's client
    // certificate; another, which signed neither, stands for a wrong
    // ca_file.
    let pki = Pki::new(certs.path(), "centre");
    let (server, kuzet) = (pki.server("centre"), pki.client("kuzet"));
    let other = Pki::new(certs.path(), "other");
    let feed = NbFeed::new("tls");
    let addr = rt
        .block_on(feed.spawn_tls(
            "127.0.0.1:0".parse().unwrap(),
            TlsServer {
                cert_pem: server.cert_pem(),
                key_pem: server.key_pem(),
                client_ca_pem: Some(std::fs::read(pki.ca()).unwrap()),
            },
        ))
        .unwrap();
    let tls_config = |dir: &TempDir, ca: PathBuf, identity: Option<&Issued>| {
        let mut c = config(dir, &feed, addr);
        c.nbank.url = Some(format!("https://{addr}"));
        c.nbank.ca_file = Some(ca);
        c.nbank.client_cert_file = identity.map(|i| i.cert.clone());
        c.nbank.client_key_file = identity.map(|i| i.key.clone());
        c.check("kuzet.toml").unwrap();
        c
    };
    let far = now_s() + 86_400;
    feed.publish(&[FeedEntry::add(FRAUD, "bank-impersonation", far)]);

    // With the Centre's CA and its client certificate: taken.
    let dir = TempDir::new("nbank-tls");
    let e = start(tls_config(&dir, pki.ca(), Some(&kuzet)));
    let mut n = 0;
    wait("the batch over mTLS blocks", || {
        (call(e.udp_addr, FRAUD, &mut n) == 603).then_some(())
    });
    assert_eq!(e.lists.load().version.seq, 1);
    assert_eq!(counter(&e, "nbank_fetch_errors_total"), 0);
    assert_eq!(feed.failed_handshakes(), 0);
    e.stop();

    // Without the client certificate, the Centre refuses the handshake;
    // trusting another CA, kuzet refuses the Centre's certificate. Either
    // way no request reaches the Centre and nothing is applied.
    let served = feed.served().len();
    for (tag, ca, identity) in [
        ("no-cert", pki.ca(), None),
        ("other-ca", other.ca(), Some(&kuzet)),
    ] {
        let refused = feed.failed_handshakes();
        let dir = TempDir::new(&format!("nbank-tls-{tag}"));
        let e = start(tls_config(&dir, ca, identity));
        wait(&format!("{tag}: fetches fail"), || {
            (counter(&e, "nbank_fetch_errors_total") >= 3).then_some(())
        });
        assert_eq!(call(e.udp_addr, FRAUD, &mut n), 302, "{tag}");
        assert_eq!(e.lists.load().version.seq, 0, "{tag}");
        assert_eq!(counter(&e, "nbank_batches_applied_total"), 0, "{tag}");
        assert!(feed.failed_handshakes() > refused, "{tag}");
        assert_eq!(feed.served().len(), served, "{tag}: {:?}", feed.served());
        e.stop();
    }

    // Plain http to anything but loopback is refused by the config.
    let mut c = config(&dir, &feed, addr);
    c.nbank.url = Some("http://192.0.2.1:8470".into());
    let why = c.check("kuzet.toml").unwrap_err().to_string();
    assert!(why.contains("plain http only on loopback"), "{why}");
    feed.stop();
}

/// `kuzet cases ...` beside the data directory, as kuzet's own user.
fn cases_cli(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .arg("cases")
        .args(args)
        .current_dir(dir)
        .env_remove("KUZET_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`wait`], saying what the last try saw when it times out.
fn wait_or<T>(what: &str, last: &mut String, mut f: impl FnMut(&mut String) -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(t) = f(last) {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; last: {last}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unix seconds of an RFC 3339 time.
fn at(s: &str) -> i64 {
    humantime::parse_rfc3339(s)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn an_alert_opens_a_case_due_after_the_weekend_and_holidays_and_its_decision_reaches_the_centre_once_across_sigkill(
) {
    let rt = rt();
    let (feed, addr) = centre(&rt, "cases");
    let dir = TempDir::new("nbank-cases");
    // Reported on Thursday 2026-12-31: New Year's Day (Friday) and the 2nd
    // (Saturday, moved to Monday the 4th), the weekend, the 6th (off by
    // the holiday file), Orthodox Christmas on the 7th: the second working
    // day is Friday 2027-01-08, and the case is due at its end in Almaty
    // (UTC+5).
    dir.write("holidays.txt", "# swapped day off\n2027-01-06 off\n");
    let mut toml = format!(
        "[server]\nmode = \"redirect\"\n[nbank]\nurl = \"http://{addr}\"\npoll_ms = 200\nholidays_file = \"holidays.txt\"\n"
    );
    for k in keys(&feed) {
        toml.push_str(&format!(
            "[[nbank.keys]]\nid = \"{}\"\npublic = \"{}\"\nvalid_from = \"{}\"\n",
            k.id, k.public, k.valid_from
        ));
    }
    dir.write("kuzet.toml", &toml);
    let args = ["--config", "kuzet.toml"];
    let k = Watched::start(&args, dir.path());
    feed.alert(&[Alert {
        id: "AFC-A-2026-0042".into(),
        number: "+77011234567".into(),
        category: "gsm-gateway".into(),
        reported_at: at("2026-12-31T10:00:00Z"),
        note: "three customers\u{1b}[2J name it".into(),
    }]);
    let mut last = String::new();
    let list = wait_or("the alert opens a case", &mut last, |last| {
        let (code, out, err) = cases_cli(dir.path(), &["list", "--format", "jsonl"]);
        *last = format!("{code} {out} {err}");
        (code == 0 && out.contains("AFC-A-2026-0042")).then_some(out)
    });
    let case: serde_json::Value = serde_json::from_str(list.lines().next().unwrap()).unwrap();
    assert_eq!(case["due_at"], "2027-01-08T19:00:00.000000Z", "{case}");
    assert_eq!(case["state"], "open");
    let id = case["id"].as_i64().unwrap().to_string();
    // Shown escaped: the Centre's note cannot drive the terminal.
    let (code, out, err) = cases_cli(dir.path(), &["show", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("due") && !out.contains('\u{1b}'), "{out}");
    // The case is linked to what kuzet holds on its number: the Centre's
    // feed lists it too, a call from it is blocked, and the case shows
    // that call, the rule that fired and the incident it joined.
    feed.publish(&[FeedEntry::add(
        "+77011234567",
        "gsm-gateway",
        now_s() + 86_400,
    )]);
    let sock = client();
    let mut n = 0;
    wait("the feed blocks the case's number", || {
        n += 1;
        let port = sock.local_addr().unwrap().port();
        let s = status(&ask(
            &sock,
            k.addr,
            &invite("+77011234567", "+77029990000", &format!("case-{n}"), port),
        ));
        (s == 603).then_some(())
    });
    let shown = wait("the case shows the call, its rule and its incident", || {
        let (_, out, _) = cases_cli(dir.path(), &["show", &id, "--format", "jsonl"]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
        (v["calls"].as_array().is_some_and(|c| !c.is_empty())
            && v["incidents"].as_array().is_some_and(|i| !i.is_empty()))
        .then_some(v)
    });
    assert_eq!(shown["calls"][0]["decision"], "block", "{shown}");
    assert_eq!(shown["calls"][0]["caller"], "+77011234567", "{shown}");
    assert!(
        shown["rules_fired"]["nb_feed"].as_u64() >= Some(1),
        "{shown}"
    );
    assert_eq!(shown["incidents"][0]["key"], "+77011234567", "{shown}");
    // The same alert again opens no second case.
    feed.alert(&[Alert {
        id: "AFC-A-2026-0042".into(),
        number: "+77011234567".into(),
        category: "gsm-gateway".into(),
        reported_at: at("2026-12-31T10:00:00Z"),
        note: String::new(),
    }]);

    // The Centre takes the decision but answers late; kuzet is killed in
    // between, so it never learnt the Centre has it.
    feed.delay_answers(Duration::from_secs(60));
    let (code, out, err) = cases_cli(
        dir.path(),
        &[
            "decide",
            &id,
            "--confirmed",
            "--note",
            "SIM box found",
            "--bss-ref",
            "BSS-889123",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("confirmed"), "{out}");
    let key_is = |k: &str| k.ends_with("/decision/AFC-A-2026-0042");
    wait("the Centre takes the decision", || {
        feed.reports().iter().any(|r| key_is(&r.key)).then_some(())
    });
    k.signal("KILL");
    let _ = k.wait_exit();
    feed.delay_answers(Duration::ZERO);
    let k = Watched::start(&args, dir.path());
    wait(
        "kuzet sends it again and the Centre answers it had it",
        || {
            let posts: Vec<u16> = feed
                .posts()
                .into_iter()
                .filter(|(key, _)| key_is(key))
                .map(|(_, s)| s)
                .collect();
            (posts == [201, 200]).then_some(())
        },
    );
    let taken: Vec<_> = feed
        .reports()
        .into_iter()
        .filter(|r| key_is(&r.key))
        .collect();
    assert_eq!(taken.len(), 1, "taken once");
    assert_eq!(taken[0].body["outcome"], "confirmed");
    assert_eq!(taken[0].body["bss_ref"], "BSS-889123");
    assert_eq!(taken[0].body["number"], "+77011234567");
    // The second alert batch was taken (kuzet asks for what follows it)...
    wait("the second alert batch is applied", || {
        feed.served()
            .iter()
            .any(|(p, after)| p.contains("alerts") && *after == 2)
            .then_some(())
    });
    // ...and opened no second case for the same alert id.
    let (code, out, _) = cases_cli(dir.path(), &["list", "--format", "jsonl"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "one case for one alert id: {out}");
    let (code, _, err) = cases_cli(
        dir.path(),
        &["decide", &id, "--not-confirmed", "--bss-ref", "BSS-1"],
    );
    // A second decision is refused.
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("decided"), "{err}");
    // The outbox shows it delivered, after two tries.
    let (code, out, err) = cases_cli(dir.path(), &["reports", "--format", "jsonl"]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        (r["kind"].as_str(), r["state"].as_str()),
        (Some("decision"), Some("delivered")),
        "{r}"
    );
    assert_eq!(r["attempts"], 2, "{r}");

    // A decision the Centre refuses is dead-lettered with its reason, and
    // never sent again.
    feed.fail_reports(Some(422));
    feed.alert(&[Alert {
        id: "AFC-A-2026-0043".into(),
        number: "+77011234568".into(),
        category: "gsm-gateway".into(),
        reported_at: at("2026-12-31T10:00:00Z"),
        note: String::new(),
    }]);
    let second = wait("the second alert opens a case", || {
        let (_, out, _) = cases_cli(
            dir.path(),
            &["list", "--state", "open", "--format", "jsonl"],
        );
        out.lines()
            .find(|l| l.contains("AFC-A-2026-0043"))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].to_string())
    });
    let (code, _, err) = cases_cli(
        dir.path(),
        &["decide", &second, "--not-confirmed", "--bss-ref", "BSS-2"],
    );
    assert_eq!(code, 0, "{err}");
    let dead = wait("the refused decision is dead-lettered", || {
        let (_, out, _) = cases_cli(dir.path(), &["reports", "--state", "dead_letter"]);
        out.contains("AFC-A-2026-0043").then_some(out)
    });
    assert!(dead.contains("422"), "{dead}");
    let tries = || {
        feed.posts()
            .iter()
            .filter(|(k, _)| k.ends_with("AFC-A-2026-0043"))
            .count()
    };
    assert_eq!(tries(), 1, "a refused report is not retried");
    k.signal("TERM");
    let _ = k.wait_exit();
}

/// An INVITE from `a` to `b` sent from `from` (its trunk).
fn call_from(from: &UdpSocket, to: SocketAddr, a: &str, b: &str, id: &str) -> u16 {
    let port = from.local_addr().unwrap().port();
    status(&ask(from, to, &invite(a, b, id, port)))
}

/// The switch reports that `b` answered `a`'s call.
fn answered(from: &UdpSocket, to: SocketAddr, a: &str, b: &str, id: &str) -> u16 {
    let port = from.local_addr().unwrap().port();
    let body = format!("caller={a}\ncallee={b}\noutcome=answered\ntalk_ms=42000\n");
    let msg = format!(
        "PUBLISH sip:kuzet@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{id};rport\r\n\
         From: <sip:switch@127.0.0.1>;tag=s{id}\r\nTo: <sip:kuzet@127.0.0.1>\r\nCall-ID: {id}\r\nCSeq: 1 PUBLISH\r\n\
         Max-Forwards: 70\r\nEvent: kuzet-outcome\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    status(&ask(from, to, &msg))
}

#[test]
fn the_callees_a_fraud_source_reached_are_reported_once_each_and_an_impersonated_number_never() {
    let rt = rt();
    let (feed, addr) = centre(&rt, "victims");
    let dir = TempDir::new("nbank-victims");
    let mut cfg = config(&dir, &feed, addr);
    cfg.nbank.report_fraud_numbers = true;
    cfg.nbank.feedback_every_s = 1;
    // Calls come through an international trunk whose switch reports
    // outcomes; a domestic caller ID arriving on it is spoofed.
    cfg.trunks = vec![TrunkConfig {
        name: "intl".into(),
        kind: "international".into(),
        cidrs: vec!["127.0.0.1/32".parse().unwrap()],
        trust_pai: false,
    }];
    cfg.outcomes.reporters = vec!["intl".into()];
    cfg.rules.file = Some(dir.write(
        "rules.toml",
        "[thresholds]\nflag = 40\nblock = 100\n\
         [[rule]]\nid = \"doi\"\nkind = \"domestic_on_international\"\nscore = 100\n\
         [[rule]]\nid = \"velocity_1m\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 1000\nscore = 50\nmode = \"shadow\"\n",
    ));
    let e = start(cfg);
    let sock = client();
    let source = "+447700900123";
    let spoofed = "+77011112222";
    // The source reaches three people, who answer.
    for (i, b) in ["+77021110001", "+77021110002", "+77021110003"]
        .iter()
        .enumerate()
    {
        let id = format!("v-{i}");
        assert_eq!(call_from(&sock, e.udp_addr, source, b, &id), 302);
        assert_eq!(
            answered(&sock, e.udp_addr, source, b, &format!("{id}-o")),
            200
        );
    }
    // A spoof campaign: a domestic number impersonated from abroad. Its
    // calls are blocked; the switch even reports one answered.
    assert_eq!(
        call_from(&sock, e.udp_addr, spoofed, "+77021110009", "s-1"),
        603
    );
    assert_eq!(
        answered(&sock, e.udp_addr, spoofed, "+77021110009", "s-1-o"),
        200
    );
    // The Centre names the source; its next call is blocked.
    feed.publish(&[FeedEntry::add(
        source,
        "bank-impersonation",
        now_s() + 86_400,
    )]);
    wait("the feed blocks the source", || {
        (call_from(
            &sock,
            e.udp_addr,
            source,
            "+77021110004",
            &format!("b-{}", now_s()),
        ) == 603)
            .then_some(())
    });
    let victims = |fr: &NbFeed| -> Vec<kuzet_sim::nbfeed::Report> {
        fr.reports()
            .into_iter()
            .filter(|r| r.kind == "potential_victim")
            .collect()
    };
    wait("the three potential victims reach the Centre", || {
        (victims(&feed).len() >= 3).then_some(())
    });
    wait("the source is reported, and the hits on the feed", || {
        let r = feed.reports();
        (r.iter().any(|r| r.kind == "fraud_number") && r.iter().any(|r| r.kind == "feedback"))
            .then_some(())
    });
    let mut callees: Vec<String> = victims(&feed)
        .iter()
        .map(|r| {
            assert_eq!(r.body["source"], source);
            assert_eq!(r.body["category"], "nb_feed");
            assert_eq!(r.deliveries, 1, "once each");
            r.body["number"].as_str().unwrap().to_string()
        })
        .collect();
    callees.sort();
    assert_eq!(callees, ["+77021110001", "+77021110002", "+77021110003"]);
    let all = feed.reports();
    let fraud: Vec<_> = all.iter().filter(|r| r.kind == "fraud_number").collect();
    assert_eq!(fraud.len(), 1);
    assert_eq!(fraud[0].body["number"], source);
    assert_eq!(fraud[0].body["basis"], "listed");
    let hits = &all.iter().find(|r| r.kind == "feedback").unwrap().body["hits"];
    assert_eq!(hits[0]["number"], source, "{hits}");
    assert!(hits[0]["calls"].as_u64().unwrap() >= 1);
    // The impersonated number is nowhere in what the Centre got.
    for r in &all {
        assert!(
            !r.body.to_string().contains(spoofed),
            "an impersonated number was reported: {}",
            r.body
        );
    }
    assert_eq!(counter(&e, "nbank_reports_dead_lettered_total"), 0);
    e.stop();
}
