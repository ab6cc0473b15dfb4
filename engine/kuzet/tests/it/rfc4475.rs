//! RFC 4475 conformance: every torture message through the real handler.
//!
//! The expected outcome of each message is checked two ways: against the
//! table below (what kuzet answers, and why), and against EXPECTED.tsv
//! (what the RFC allows), so the table cannot drift from the RFC.

use std::time::Instant;

use kuzet::config::Mode;
use kuzet_dataplane::handler::Outcome;
use kuzet_sip::{parse, Hdr, Transport};

use crate::common::{bare_handler, status};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rfc4475");

/// kuzet's answer in redirect mode: a status code, or 0 for "dropped".
/// Valid requests get what a redirect server gives: 302 for INVITE, 200 for
/// OPTIONS, 405 for other methods.
const KUZET: &[(&str, u16, &str)] = &[
    ("wsinv", 302, "INVITE, folded and spaced headers"),
    (
        "intmeth",
        405,
        "extension method parses; not served by a redirect server",
    ),
    ("esc01", 302, "escaped URIs"),
    ("escnull", 405, "REGISTER"),
    ("esc02", 405, "escaped method is not REGISTER"),
    ("lwsdisp", 200, "OPTIONS"),
    ("longreq", 302, "long values, many Vias"),
    (
        "dblreq",
        405,
        "first message of the datagram only: REGISTER",
    ),
    ("semiuri", 200, "OPTIONS"),
    ("transports", 200, "OPTIONS"),
    ("mpart01", 405, "MESSAGE"),
    ("unreason", 0, "responses are never answered"),
    ("noreason", 0, "responses are never answered"),
    ("badinv01", 400, "empty Via parameters"),
    ("clerr", 400, "Content-Length larger than the datagram"),
    ("ncl", 400, "negative Content-Length"),
    ("scalar02", 400, "CSeq over 2^31, Max-Forwards over 255"),
    ("scalarlg", 0, "bad response: dropped"),
    ("quotbal", 400, "unbalanced quote in To"),
    ("ltgtruri", 400, "Request-URI in angle brackets"),
    ("lwsruri", 400, "space inside the Request-URI"),
    ("lwsstart", 400, "double spaces in the request line"),
    ("trws", 400, "trailing spaces in the request line"),
    ("escruri", 400, "headers in the Request-URI"),
    (
        "baddate",
        302,
        "kuzet does not read Date: accepted, as the RFC allows",
    ),
    ("regbadct", 400, "bare Contact URI with '?'"),
    ("badaspec", 400, "spaces inside <>"),
    ("baddn", 400, "unquoted comma in a display name"),
    ("badvers", 505, "SIP/7.0"),
    ("mismatch01", 400, "CSeq method differs"),
    ("mismatch02", 400, "CSeq method differs"),
    ("bigcode", 0, "bad response: dropped"),
    (
        "badbranch",
        200,
        "OPTIONS; the branch is the transaction layer's business",
    ),
    ("insuf", 400, "missing From, To, Call-ID"),
    ("unkscm", 416, "unknown Request-URI scheme"),
    ("novelsc", 416, "unknown Request-URI scheme"),
    (
        "unksm2",
        405,
        "REGISTER with odd schemes in To/From/Contact",
    ),
    (
        "bext01",
        420,
        "Require: a redirect server is a UAS and supports no extension",
    ),
    (
        "invut",
        302,
        "kuzet never reads bodies, so the body type is no reason to refuse (a UA would 415)",
    ),
    ("regaut01", 405, "REGISTER"),
    ("multi01", 400, "two To, From, Call-ID, CSeq"),
    ("mcl01", 400, "two Content-Length"),
    ("bcast", 0, "responses are never answered"),
    ("zeromf", 483, "Max-Forwards 0"),
    ("cparam01", 405, "REGISTER"),
    ("cparam02", 405, "REGISTER"),
    ("regescrt", 405, "REGISTER"),
    (
        "sdp01",
        302,
        "a 302 has no body, so Accept cannot be violated (a UA would 406)",
    ),
    ("inv2543", 302, "RFC 2543 syntax accepted"),
];

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

fn run(name: &str) -> u16 {
    let bytes = std::fs::read(format!("{DIR}/{name}.dat")).unwrap();
    let h = bare_handler(Mode::Redirect);
    let mut out = Vec::new();
    let src = "192.0.2.1:5060".parse().unwrap();
    match h.handle(&bytes, src, None, Instant::now(), &mut out) {
        Outcome::Reply => status(&String::from_utf8_lossy(&out)),
        Outcome::Drop => 0,
        o => panic!("{name}: unexpected outcome {o:?}"),
    }
}

#[test]
fn every_torture_message_gets_the_expected_outcome() {
    let tsv = expected_tsv();
    assert_eq!(tsv.len(), 49, "EXPECTED.tsv lists 49 messages");
    assert_eq!(KUZET.len(), 49);
    let mut failures = Vec::new();
    for (name, rfc) in &tsv {
        let (_, want, why) = KUZET.iter().find(|(n, _, _)| n == name).expect("in table");
        let got = run(name);
        if got != *want {
            failures.push(format!("{name}: got {got}, want {want} ({why})"));
        }
        // Cross-check the table against the RFC's own expectation.
        let invalid = rfc.starts_with("invalid") || rfc.starts_with("semantic");
        let may = rfc.contains("may");
        if invalid && !may {
            let ok =
                got == 0 || rfc.contains(&got.to_string()) || (rfc.contains("error") && got >= 400);
            assert!(ok, "{name}: RFC says {rfc:?}, kuzet gave {got}");
        }
        if rfc.starts_with("valid (") {
            assert!(
                got != 400,
                "{name}: valid per RFC ({rfc}) but kuzet answered 400"
            );
        }
        if let Some(code) = rfc
            .strip_prefix("valid syntax (")
            .and_then(|s| s.strip_suffix(')'))
            .and_then(|s| s.parse::<u16>().ok())
        {
            // Codes a UA would send for bodies (415, 406) do not apply to a
            // redirect server that never reads bodies; the rest must match.
            if code != 415 && code != 406 {
                assert_eq!(got, code, "{name}: RFC expects {code}");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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
    for (name, _, _) in KUZET {
        let mut out = Vec::new();
        let o = h.handle(&msg(name), src, None, Instant::now(), &mut out);
        if ["scalarlg", "bigcode", "bcast", "unreason", "noreason"].contains(name) {
            // None of these responses carries kuzet's Via.
            assert_eq!(o, Outcome::Drop, "{name}");
        }
    }
}
