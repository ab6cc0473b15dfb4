//! Unit tests for the indexing pass and stream framing.

use super::*;

const INVITE: &[u8] = b"INVITE sip:+77011234567@10.0.0.1;user=phone SIP/2.0\r\n\
v: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
t: <sip:+77011234567@10.0.0.1;user=phone>\r\n\
f: \"Alice\" <sip:87021112233@10.0.0.9>;tag=1928301774\r\n\
i: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
P-Asserted-Identity: <tel:+77021112233>\r\n\
l: 4\r\n\
\r\n\
v=0\r\n";

#[test]
fn indexes_compact_names_and_frames_body() {
    let m = parse(INVITE, Transport::Datagram).unwrap();
    assert!(m.is_request());
    assert_eq!(m.defect(), None);
    assert_eq!(m.method(), b"INVITE");
    assert_eq!(m.request_uri(), b"sip:+77011234567@10.0.0.1;user=phone");
    assert_eq!(m.version(), b"SIP/2.0");
    assert_eq!(
        m.header(Hdr::CallId),
        Some(&b"a84b4c76e66710@pc33.example.com"[..])
    );
    assert_eq!(
        m.header(Hdr::Via).unwrap(),
        b"SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK776asdhds"
    );
    assert_eq!(
        m.header(Hdr::PAssertedIdentity),
        Some(&b"<tel:+77021112233>"[..])
    );
    assert_eq!(m.body(), b"v=0\r");
    assert_eq!(m.header_named(b"max-FORWARDS"), Some(&b"70"[..]));
    assert_eq!(m.count(Hdr::Via), 1);
    assert_eq!(m.count(Hdr::Route), 0);
}

#[test]
fn folded_and_spaced_headers() {
    let msg = b"OPTIONS sip:a@b SIP/2.0\r\nVia  : SIP/2.0/UDP h\r\n ;branch=z9hG4bK1\r\nSubject:\r\nX: 1,\r\n\t2\r\n\r\n";
    let m = parse(msg, Transport::Datagram).unwrap();
    assert_eq!(m.defect(), None);
    assert_eq!(
        m.header(Hdr::Via).unwrap(),
        b"SIP/2.0/UDP h\r\n ;branch=z9hG4bK1"
    );
    assert_eq!(m.header_named(b"subject"), Some(&b""[..]));
    assert_eq!(m.header_named(b"x"), Some(&b"1,\r\n\t2"[..]));
    assert_eq!(m.body(), b"");
}

#[test]
fn start_line_defects() {
    for bad in [
        &b"INVITE  sip:a@b SIP/2.0\r\n\r\n"[..],
        b"INVITE sip:a@b SIP/2.0  \r\n\r\n",
        b"INVITE <sip:a@b> SIP/2.0\r\n\r\n",
        b"INVITE sip:a@b; lr SIP/2.0\r\n\r\n",
        b"SIP/2.0 4294967301 big\r\n\r\n",
        b"SIP/2.0 20 OK\r\n\r\n",
    ] {
        let m = parse(bad, Transport::Datagram).unwrap();
        assert_eq!(
            m.defect(),
            Some(Defect::StartLine),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let m = parse(b"SIP/2.0 100 \r\n\r\n", Transport::Datagram).unwrap();
    assert_eq!((m.status(), m.reason_phrase()), (100, &b""[..]));
    assert_eq!(
        parse(b"\x00\x01garbage", Transport::Datagram).err(),
        Some(ParseError::NotSip)
    );
    assert_eq!(
        parse(b"", Transport::Datagram).err(),
        Some(ParseError::Empty)
    );
    assert_eq!(
        parse(b"no newline at all", Transport::Datagram).err(),
        Some(ParseError::NotSip)
    );
}

#[test]
fn content_length_defects() {
    let bad = |s: &str| parse(s.as_bytes(), Transport::Datagram).unwrap().defect();
    assert_eq!(
        bad("OPTIONS sip:a@b SIP/2.0\r\nl: -9\r\n\r\n"),
        Some(Defect::BadContentLength)
    );
    assert_eq!(
        bad("OPTIONS sip:a@b SIP/2.0\r\nl: 9\r\n\r\nabc"),
        Some(Defect::BodyTruncated)
    );
    assert_eq!(
        bad("OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 1\r\n\r\nabc"),
        Some(Defect::DuplicateContentLength)
    );
    assert_eq!(
        bad("OPTIONS sip:a@b SIP/2.0\r\nnocolon\r\n\r\n"),
        Some(Defect::HeaderLine)
    );
    assert_eq!(
        bad("OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n"),
        Some(Defect::NoEndOfHeaders)
    );
}

#[test]
fn too_many_headers_is_a_defect_not_a_crash() {
    let mut s = String::from("OPTIONS sip:a@b SIP/2.0\r\n");
    for i in 0..200 {
        s.push_str(&format!("X-{i}: {i}\r\n"));
    }
    s.push_str("\r\n");
    let m = parse(s.as_bytes(), Transport::Datagram).unwrap();
    assert_eq!(m.defect(), Some(Defect::TooManyHeaders));
    assert_eq!(m.headers().count(), MAX_HEADERS);
}

#[test]
fn stream_framing_handles_partial_and_pipelined_input() {
    let one = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nContent-Length: 5\r\n\r\nhello";
    let two = format!("{one}{one}");
    for cut in 0..one.len() {
        assert_eq!(
            parse(&one.as_bytes()[..cut], Transport::Stream).err(),
            if cut == 0 {
                Some(ParseError::Empty)
            } else {
                Some(ParseError::Incomplete)
            },
            "cut at {cut}"
        );
    }
    let m = parse(two.as_bytes(), Transport::Stream).unwrap();
    assert_eq!(m.len(), one.len());
    assert_eq!(m.body(), b"hello");
    let m2 = parse(&two.as_bytes()[m.len()..], Transport::Stream).unwrap();
    assert_eq!(m2.len(), one.len());
    // No Content-Length on a stream means an empty body.
    let m = parse(b"OPTIONS sip:a@b SIP/2.0\r\n\r\nEXTRA", Transport::Stream).unwrap();
    assert_eq!(m.len(), 27);
}

#[test]
fn stream_rejects_oversized_messages() {
    let big = format!(
        "OPTIONS sip:a@b SIP/2.0\r\nContent-Length: {}\r\n\r\n",
        MAX_MESSAGE
    );
    assert_eq!(
        parse(big.as_bytes(), Transport::Stream).err(),
        Some(ParseError::TooLarge)
    );
    let mut endless = String::from("OPTIONS sip:a@b SIP/2.0\r\n");
    while endless.len() < MAX_MESSAGE + 10 {
        endless.push_str("X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    assert_eq!(
        parse(endless.as_bytes(), Transport::Stream).err(),
        Some(ParseError::TooLarge)
    );
    assert_eq!(
        parse(endless.as_bytes(), Transport::Datagram).err(),
        Some(ParseError::TooLarge)
    );
}

#[test]
fn non_utf8_header_bytes_are_indexed() {
    let msg = b"OPTIONS sip:a@b SIP/2.0\r\nX-Bin: \xff\xfe\x80\r\nVia: SIP/2.0/UDP h\r\n\r\n";
    let m = parse(msg, Transport::Datagram).unwrap();
    assert_eq!(m.defect(), None);
    assert_eq!(m.header_named(b"x-bin"), Some(&b"\xff\xfe\x80"[..]));
}
