//! RFC 4475 conformance: every torture message sent to a running engine
//! over a real UDP socket, and its observable outcome (the status code of
//! the answer, or no answer) judged directly against what EXPECTED.tsv says
//! the RFC expects. Nothing here is kuzet's own opinion of a message: the
//! only input is the RFC's expectation, so a kuzet that silently drops a
//! message it must answer fails.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kuzet::config::Mode;
use kuzet_dataplane::handler::Outcome;
use kuzet_sip::{parse, Hdr, Transport};

use crate::common::{bare_handler, start, status, test_config};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rfc4475");

/// The RFC's expectations as shipped in ../shared/testdata/rfc4475, which
/// the fixtures are a copy of.
fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/rfc4475")
}

fn expected_tsv() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{DIR}/EXPECTED.tsv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split('\t');
            let name = f.next().unwrap().to_string();
            let _section = f.next();
            (name, f.next().unwrap_or("").to_string())
        })
        .collect()
}

/// Whether an outcome (`None`: no answer) meets an expectation as
/// EXPECTED.tsv words it. The words map to outcomes the same way for every
/// message:
/// - a response (the message starts with the SIP version), whatever the
///   words: a server never answers a response (RFC 3261 section 18.1.2),
///   so no answer; that it parses is checked below;
/// - "valid ..." with no code: the request must be answered, and not 400;
/// - a code in parentheses, "(400)", "(505)", "(501 or 400)": exactly one of
///   those; "discard" beside it also allows no answer; "error" allows any
///   error code;
/// - "reasonable" (400 reasonable): any 4xx;
/// - "may reject": answered, rejected (4xx) or accepted, never silence;
/// - 415 and 406 are about the body (type, Accept); a redirect server never
///   reads bodies, so for these the request may also be served normally
///   (a 2xx or 3xx), but not refused with another code or dropped.
fn meets(expected: &str, is_response: bool, got: Option<u16>) -> bool {
    let e = expected;
    if is_response {
        return got.is_none();
    }
    let codes: Vec<u16> = e
        .split(|c: char| !c.is_ascii_digit())
        .filter(|t| t.len() == 3)
        .filter_map(|t| t.parse().ok())
        .collect();
    let discard = e.contains("discard") || e.contains("drop");
    let Some(code) = got else {
        return discard;
    };
    if e.contains("may reject") {
        return codes.is_empty() || codes.contains(&code) || code < 400;
    }
    if e.contains("reasonable") {
        return (400..500).contains(&code);
    }
    if e.contains("error") && (400..700).contains(&code) && !e.starts_with("semantic") {
        return true;
    }
    if codes.iter().any(|c| *c == 415 || *c == 406) {
        return codes.contains(&code) || (200..400).contains(&code);
    }
    if !codes.is_empty() {
        return codes.contains(&code);
    }
    // Valid, no code named: answered, and not refused as malformed.
    e.starts_with("valid") && code != 400
}

/// Sends `bytes`, then an OPTIONS probe, and returns the status of the
/// answer to `bytes`, or `None` when the probe's answer came first (the
/// single worker handles datagrams in order, so the message was dropped).
fn outcome(c: &UdpSocket, to: SocketAddr, bytes: &[u8], probe_id: &str) -> Option<u16> {
    c.send_to(bytes, to).unwrap();
    let port = c.local_addr().unwrap().port();
    let probe = format!(
        "OPTIONS sip:kuzet@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{probe_id}\r\n\
         From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:kuzet@127.0.0.1>\r\nCall-ID: {probe_id}\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    c.send_to(probe.as_bytes(), to).unwrap();
    let mut answer = None;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = c.recv(&mut buf).expect("the probe is always answered");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if crate::common::header(&text, "Call-ID") == Some(probe_id) {
            return answer;
        }
        // The first answer before the probe's is the message's.
        answer.get_or_insert(status(&text));
    }
}

#[test]
fn every_torture_message_gets_the_outcome_rfc4475_expects() {
    let tsv = expected_tsv();
    assert_eq!(tsv.len(), 49, "EXPECTED.tsv lists 49 messages");
    let eng = start(test_config());
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut failures = Vec::new();
    for (i, (name, rfc)) in tsv.iter().enumerate() {
        let bytes = msg(name);
        let got = outcome(&c, eng.udp_addr, &bytes, &format!("probe-{i}"));
        let shown = got.map_or("no answer".to_string(), |c| c.to_string());
        if !meets(rfc, bytes.starts_with(b"SIP/"), got) {
            failures.push(format!("{name}: got {shown}; RFC 4475 expects {rfc:?}"));
        }
    }
    eng.stop();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The judge itself: a kuzet that dropped what it must answer, or answered
/// what it must not, would fail.
#[test]
fn the_outcome_judge_refuses_drops_and_wrong_codes() {
    assert!(
        !meets("invalid (400)", false, None),
        "a dropped 400 case fails"
    );
    assert!(!meets("invalid (505)", false, Some(400)));
    assert!(
        !meets("valid (must parse)", false, None),
        "a dropped valid request fails"
    );
    assert!(!meets("valid (must parse)", false, Some(400)));
    assert!(
        !meets("valid response", true, Some(200)),
        "answering a response fails"
    );
    assert!(!meets("invalid (may reject)", false, None));
    assert!(!meets("valid syntax (415)", false, Some(500)));
    assert!(meets("invalid (400 / discard)", false, None));
    assert!(meets("invalid (error / discard)", false, Some(403)));
    assert!(meets("invalid (501 or 400)", false, Some(501)));
    assert!(meets("valid syntax (415)", false, Some(302)));
    assert!(meets("semantic error (400)", false, Some(400)));
    assert!(!meets("semantic error (400)", false, Some(403)));
}

#[test]
fn the_fixture_copy_matches_the_shared_rfc4475_messages() {
    let shared = shared_dir();
    if !shared.exists() {
        // A checkout without ../shared (CI always has it): say so.
        eprintln!("{} not found; nothing to compare", shared.display());
        return;
    }
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(Path::new(DIR)), names(&shared), "the same files");
    for n in names(&shared) {
        assert_eq!(
            std::fs::read(Path::new(DIR).join(&n)).unwrap(),
            std::fs::read(shared.join(&n)).unwrap(),
            "{n} differs from ../shared/testdata/rfc4475/{n}"
        );
    }
}

fn msg(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}/{name}.dat")).unwrap()
}

#[test]
fn valid_messages_parse_with_the_right_values() {
    let b = msg("wsinv");
    let m = parse(&b, Transport::Datagram).unwrap();
    assert_eq!(m.defect(), None);
    assert_eq!(m.method(), b"INVITE");
    assert_eq!(m.header(Hdr::CallId), Some(&b"wsinv.ndaksdj@192.0.2.1"[..]));
    assert_eq!(m.count(Hdr::Via), 2);
    assert_eq!(m.header(Hdr::MaxForwards), Some(&b"0068"[..]));
    assert_eq!(m.body().len(), 150);

    let b = msg("intmeth");
    let m = parse(&b, Transport::Datagram).unwrap();
    assert_eq!(m.method(), b"!interesting-Method0123456789_*+`.%indeed'~");
    assert!(m
        .request_uri()
        .starts_with(b"sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"));

    let b = msg("esc02");
    let m = parse(&b, Transport::Datagram).unwrap();
    assert_eq!(m.method(), b"RE%47IST%45R");
    assert_eq!(m.count(Hdr::Contact), 2, "C%6Fntact is not Contact");

    let b = msg("longreq");
    let m = parse(&b, Transport::Datagram).unwrap();
    assert_eq!(m.count(Hdr::Via), 34);
    assert_eq!(m.defect(), None);

    let b = msg("mpart01");
    let m = parse(&b, Transport::Datagram).unwrap();
    assert_eq!(m.body().len(), 553);

    let b = msg("noreason");
    let m = parse(&b, Transport::Datagram).unwrap();
    assert_eq!((m.status(), m.reason_phrase()), (100, &b""[..]));

    let b = msg("unreason");
    let m = parse(&b, Transport::Datagram).unwrap();
    assert_eq!(m.status(), 200);
    assert!(m.reason_phrase().starts_with(b"= 2**3 * 5**2"));

    let b = msg("inv2543");
    let m = parse(&b, Transport::Datagram).unwrap();
    assert_eq!(m.header(Hdr::ContentLength), None);
    assert!(
        !m.body().is_empty(),
        "no Content-Length on UDP: body to the end"
    );

    // dblreq on a stream is two messages, framed by Content-Length.
    let b = msg("dblreq");
    let m = parse(&b, Transport::Stream).unwrap();
    assert_eq!(m.method(), b"REGISTER");
    let rest = &b[m.len()..];
    let rest = rest.strip_prefix(b"\r\n").unwrap_or(rest);
    let m2 = parse(rest, Transport::Stream).unwrap();
    assert_eq!(m2.method(), b"INVITE");
    assert_eq!(m2.body().len(), 150);
}

#[test]
fn a_numbers_come_out_of_torture_headers() {
    let h = bare_handler(Mode::Redirect);
    let b = msg("inv2543");
    let m = parse(&b, Transport::Datagram).unwrap();
    assert_eq!(h.a_number(&m).unwrap().to_string(), "+13035551111");
    let b = msg("cparam02");
    let m = parse(&b, Transport::Datagram).unwrap();
    assert_eq!(h.a_number(&m), None, "watson is not a number");
}

#[test]
fn proxy_mode_drops_bad_responses_and_never_panics() {
    let h = bare_handler(Mode::Proxy);
    let src = "192.0.2.1:5060".parse().unwrap();
    for (name, _) in expected_tsv() {
        let name = name.as_str();
        let mut out = Vec::new();
        let o = h.handle(&msg(name), src, None, Instant::now(), &mut out);
        if ["scalarlg", "bigcode", "bcast", "unreason", "noreason"].contains(&name) {
            // None of these responses carries kuzet's Via.
            assert_eq!(o, Outcome::Drop, "{name}");
        }
    }
}
