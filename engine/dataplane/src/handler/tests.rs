//! Unit tests for the handler's small helpers; the behaviour over sockets
//! is covered by `tests/it`.

use super::proxy::{sent_by_matches, via_destination};
use super::*;
use kuzet_sip::syntax::parse_via;

#[test]
fn response_destination_prefers_received_and_rport() {
    let v = parse_via(b"SIP/2.0/UDP host.example;branch=z9hG4bK1;received=192.0.2.7;rport=4000")
        .unwrap();
    assert_eq!(via_destination(&v), Some("192.0.2.7:4000".parse().unwrap()));
    let v = parse_via(b"SIP/2.0/UDP 192.0.2.8:5070;branch=z9hG4bK1").unwrap();
    assert_eq!(via_destination(&v), Some("192.0.2.8:5070".parse().unwrap()));
    let v = parse_via(b"SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK1").unwrap();
    assert_eq!(
        via_destination(&v),
        Some("[2001:db8::1]:5060".parse().unwrap())
    );
    let v = parse_via(b"SIP/2.0/UDP needs-dns.example;branch=z9hG4bK1").unwrap();
    assert_eq!(via_destination(&v), None, "no DNS on the call path");
}

#[test]
fn own_via_is_recognized_by_sent_by() {
    let v = parse_via(b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-kz1").unwrap();
    assert!(sent_by_matches(&v, b"127.0.0.1:5060"));
    assert!(!sent_by_matches(&v, b"127.0.0.1:5061"));
    let v = parse_via(b"SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK-kz1").unwrap();
    assert!(sent_by_matches(&v, b"127.0.0.1:5060"), "default port");
}

#[test]
fn sub_slice_offsets() {
    let outer = b"abcdef";
    assert_eq!(offset_in(outer, &outer[2..4]), Some(2));
    assert_eq!(offset_in(outer, b"cd"), None);
}

#[test]
fn a_number_order_is_configurable() {
    let msg = b"INVITE sip:87015550000@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: <sip:87011111111@h>;tag=1\r\nTo: <sip:87015550000@h>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\
P-Asserted-Identity: \"Bank\" <sip:+77272500000@h>, <tel:+77272500000>\r\nContent-Length: 0\r\n\r\n";
    let m = kuzet_sip::parse(msg, Transport::Datagram).unwrap();
    let lists: SharedLists = Arc::new(ArcSwap::from_pointee(ListSet::default()));
    let metrics = Arc::new(Metrics::default());
    let mut cfg = Settings::default();
    let h = Handler::new(cfg.clone(), lists.clone(), metrics.clone());
    assert_eq!(
        h.a_number(&m).unwrap().to_string(),
        "+77272500000",
        "PAI first by default"
    );
    assert_eq!(h.b_number(&m).unwrap().to_string(), "+77015550000");
    cfg.a_order = vec![NumberSource::From, NumberSource::Pai];
    let h = Handler::new(cfg, lists, metrics);
    assert_eq!(h.a_number(&m).unwrap().to_string(), "+77011111111");
    let no_user = b"INVITE sip:h SIP/2.0\r\nFrom: <sip:h>\r\n\r\n";
    let m = kuzet_sip::parse(no_user, Transport::Datagram).unwrap();
    assert_eq!((h.a_number(&m), h.b_number(&m)), (None, None));
}

/// Regression: a TCP connection's id was written into kuzet's Via as a
/// `u64` and read back as a `u32`, so past 2^32 connections a response
/// could not find its way back. An id above `u32::MAX` round-trips.
#[test]
fn a_tcp_connection_id_round_trips_through_the_via() {
    let cfg = Settings {
        mode: Mode::Proxy,
        next_hop: Some("127.0.0.1:5999".parse().unwrap()),
        ..Settings::default()
    };
    let h = Handler::new(
        cfg,
        Arc::new(ArcSwap::from_pointee(ListSet::default())),
        Arc::new(Metrics::default()),
    );
    let id = u64::from(u32::MAX) + 12_345;
    let req = b"OPTIONS sip:+77015550000@h SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.9:5060;branch=z9hG4bKtcp1\r\n\
From: <sip:+77011111111@h>;tag=1\r\nTo: <sip:+77015550000@h>\r\nCall-ID: tcp-id\r\nCSeq: 1 OPTIONS\r\n\
Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    let mut out = Vec::new();
    let src = "10.0.0.9:40000".parse().unwrap();
    let o = h.handle(req, src, Some(id), Instant::now(), &mut out);
    assert!(matches!(o, Outcome::Forward(_)), "{o:?}");
    let fwd = String::from_utf8(out.clone()).unwrap();
    assert!(fwd.contains(&format!(";kzc={id}")), "{fwd}");
    // The next hop answers through kuzet's Via.
    let ours = fwd.lines().find(|l| l.starts_with("Via:")).unwrap();
    let resp = format!(
        "SIP/2.0 200 OK\r\n{ours}\r\nVia: SIP/2.0/TCP 10.0.0.9:5060;branch=z9hG4bKtcp1;received=10.0.0.9;rport=40000\r\n\
From: <sip:+77011111111@h>;tag=1\r\nTo: <sip:+77015550000@h>;tag=2\r\nCall-ID: tcp-id\r\nCSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n"
    );
    let o = h.handle(
        resp.as_bytes(),
        "127.0.0.1:5999".parse().unwrap(),
        None,
        Instant::now(),
        &mut out,
    );
    assert_eq!(o, Outcome::ToConnection(id));
    assert_eq!(
        kuzet_sip::parse_u64(b" 18446744073709551615 "),
        Some(u64::MAX)
    );
    assert_eq!(kuzet_sip::parse_u64(b"18446744073709551616"), None);
}

/// Proxy mode's dialog model: a new call gets kuzet's Record-Route; a
/// request inside the dialog (To has a tag), even a re-INVITE from a
/// listed caller, is routed, never scored: kuzet's own Route entry is
/// removed and the request goes to the next Route, else to the
/// Request-URI's address; a dialog kuzet is not in goes to the next hop.
#[test]
fn proxy_mode_records_the_route_and_routes_in_dialog_requests_unscored() {
    let plan = NumberingPlan::kazakhstan();
    let mut block = kuzet_rules::ListBuilder::new(&plan);
    block.add_text("b", "+77011112233\n").unwrap();
    let set = ListSet::default().with_list(kuzet_rules::ListId::Block, block.finish());
    let cfg = Settings {
        mode: Mode::Proxy,
        next_hop: Some("127.0.0.1:5999".parse().unwrap()),
        via_address: "127.0.0.1:5060".parse().unwrap(),
        ..Settings::default()
    };
    let metrics = Arc::new(Metrics::default());
    let h = Handler::new(cfg, Arc::new(ArcSwap::from_pointee(set)), metrics.clone());
    let src = "10.0.0.9:5062".parse().unwrap();
    let req = |method: &str, ruri: &str, to_tag: &str, route: &str| {
        format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5062;branch=z9hG4bK{method}{to_tag}\r\n\
             {route}From: <sip:+77011112233@h>;tag=a\r\nTo: <sip:+77015550000@h>{to_tag}\r\n\
             Call-ID: dlg-1\r\nCSeq: 2 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let mut out = Vec::new();
    let mut send = |msg: String| {
        out.clear();
        let o = h.handle(msg.as_bytes(), src, None, Instant::now(), &mut out);
        (o, String::from_utf8_lossy(&out).into_owned())
    };
    // A new call from the listed caller is blocked; an unlisted one is
    // forwarded with kuzet's Record-Route.
    let (o, _) = send(req("INVITE", "sip:+77015550000@h", "", ""));
    assert_eq!(o, Outcome::Reply);
    let (o, fwd) =
        send(req("INVITE", "sip:+77015550000@h", "", "").replace("+77011112233", "+77019990000"));
    assert_eq!(o, Outcome::Forward("127.0.0.1:5999".parse().unwrap()));
    assert!(
        fwd.contains("\r\nRecord-Route: <sip:127.0.0.1:5060;lr>\r\n"),
        "{fwd}"
    );
    let invites = metrics.get(Counter::Invites);
    // A re-INVITE in the dialog, along kuzet's route: the listed caller's
    // in-dialog request is not scored; it goes to the callee's Contact.
    let routed = "Route: <sip:127.0.0.1:5060;lr>\r\n";
    let (o, fwd) = send(req(
        "INVITE",
        "sip:callee@192.0.2.20:5080",
        ";tag=b",
        routed,
    ));
    assert_eq!(o, Outcome::Forward("192.0.2.20:5080".parse().unwrap()));
    assert!(
        !fwd.contains("Route:"),
        "kuzet's own Route is removed: {fwd}"
    );
    assert_eq!(metrics.get(Counter::Invites), invites, "not scored");
    // The next Route wins over the Request-URI, and stays.
    let two = "Route: <sip:127.0.0.1:5060;lr>, <sip:192.0.2.30;lr>\r\n";
    let (o, fwd) = send(req("BYE", "sip:callee@192.0.2.20:5080", ";tag=b", two));
    assert_eq!(o, Outcome::Forward("192.0.2.30:5060".parse().unwrap()));
    assert!(fwd.contains("\r\nRoute: <sip:192.0.2.30;lr>\r\n"), "{fwd}");
    // A target kuzet cannot reach without DNS, and a dialog kuzet did not
    // record-route, go to the next hop.
    let (o, _) = send(req("BYE", "sip:callee@callee.example", ";tag=b", routed));
    assert_eq!(o, Outcome::Forward("127.0.0.1:5999".parse().unwrap()));
    let (o, _) = send(req("BYE", "sip:callee@192.0.2.20:5080", ";tag=b", ""));
    assert_eq!(o, Outcome::Forward("127.0.0.1:5999".parse().unwrap()));
    assert_eq!(metrics.get(Counter::InDialogForwarded), 4);
    assert_eq!(metrics.get(Counter::Invites), invites);
}

/// Behaviour state counts in Unix time, from each request's arrival, with
/// windows aligned on it; two handlers that exchange their state's
/// deltas each count the other's calls, and only once.
#[test]
fn behaviour_state_counts_in_unix_time_and_merges_between_handlers() {
    let plan = NumberingPlan::kazakhstan().validated().unwrap();
    let rules = kuzet_rules::ruleset::RuleSet::from_toml_str(
        "[thresholds]\nflag = 40\nblock = 100\n[[rule]]\nid = \"v\"\nkind = \"velocity\"\nwindow_s = 3600\nmax = 2\nscore = 50\n",
        "t.toml",
        &plan,
        &kuzet_rules::ListPolicy::default(),
    )
    .unwrap();
    let handler = || {
        let set = ListSet::default().with_rules(rules.clone());
        Handler::new(
            Settings::default(),
            Arc::new(ArcSwap::from_pointee(set)),
            Arc::new(Metrics::default()),
        )
    };
    let (x, y) = (handler(), handler());
    let invite = |h: &Handler, n: u32, at: Instant| {
        let req = format!(
            "INVITE sip:+7701555{n:04}@h SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKm{n}\r\n\
From: <sip:+77011111111@h>;tag=1\r\nTo: <sip:+7701555{n:04}@h>\r\nCall-ID: merge-{n}\r\nCSeq: 1 INVITE\r\n\
Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        let mut out = Vec::new();
        h.handle(
            req.as_bytes(),
            "10.0.0.9:5060".parse().unwrap(),
            None,
            at,
            &mut out,
        );
    };
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32
    };
    let a = Number::e164(b"77011111111").unwrap();
    let t0 = Instant::now();
    let before = unix();
    invite(&x, 1, t0);
    invite(&x, 2, t0);
    invite(&y, 3, t0);
    let after = unix();
    let s = x.caller_state(a).unwrap();
    assert!(
        (before..=after).contains(&s.last_seen),
        "{} not Unix time",
        s.last_seen
    );
    assert_eq!(s.velocity[0].start() % 3600, 0, "aligned on the hour");
    // An hour on (the arrival says so), the window has moved on the hour.
    let later = t0 + Duration::from_secs(3600);
    let d = x.export_state_at(t0);
    assert_eq!(d.callers.len(), 1);
    assert_eq!(d.callers[0].velocity[0].cur, 2);
    let m = y.merge_state(&d).unwrap();
    assert_eq!(m.applied, 1);
    x.merge_state(&y.export_state_at(t0)).unwrap();
    for h in [&x, &y] {
        let s = h.caller_state(a).unwrap();
        assert_eq!(s.velocity[0].count(s.last_seen, 3600), 3);
        assert!(h.export_state_at(t0).is_empty(), "counted once");
    }
    invite(&y, 4, later);
    let s = y.caller_state(a).unwrap();
    assert!(s.last_seen >= before + 3600);
    assert_eq!(s.velocity[0].start(), s.last_seen - s.last_seen % 3600);
}
