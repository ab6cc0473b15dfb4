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
