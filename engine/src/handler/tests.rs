//! Unit tests for the handler's small helpers; the behaviour over sockets
//! is covered by `tests/it`.

use super::*;
use crate::sip::syntax::parse_via;

#[test]
fn numbers_print_without_allocating_helpers() {
    let mut v = Vec::new();
    push_u64(&mut v, 0);
    v.push(b' ');
    push_u64(&mut v, 18_446_744_073_709_551_615);
    assert_eq!(v, b"0 18446744073709551615");
    v.clear();
    push_hex(&mut v, 0xab);
    assert_eq!(v, b"00000000000000ab");
}

#[test]
fn response_destination_prefers_received_and_rport() {
    let v = parse_via(b"SIP/2.0/UDP host.example;branch=z9hG4bK1;received=192.0.2.7;rport=4000").unwrap();
    assert_eq!(via_destination(&v), Some("192.0.2.7:4000".parse().unwrap()));
    let v = parse_via(b"SIP/2.0/UDP 192.0.2.8:5070;branch=z9hG4bK1").unwrap();
    assert_eq!(via_destination(&v), Some("192.0.2.8:5070".parse().unwrap()));
    let v = parse_via(b"SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK1").unwrap();
    assert_eq!(via_destination(&v), Some("[2001:db8::1]:5060".parse().unwrap()));
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
