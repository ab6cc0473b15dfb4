//! The stand-in Centre (`kuzet_sim::nbfeed`) against kuzet's own reader of
//! the feed (`kuzet_control::nbfeed::batch`): what the stand-in serves
//! verifies and parses, and each fault it makes is refused for the reason
//! it stands for. The stand-in is kuzet's test peer, so it must not drift
//! from what kuzet reads.

use std::io::{Read, Write};
use std::net::SocketAddr;

use kuzet_control::nbfeed::batch::{follows, parse, verify, Action, Key, Rejected};
use kuzet_sim::nbfeed::{FeedEntry, NbFeed, PublicKey};

/// GET `path`: status, signature header, body.
fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let status = head[9..12].parse().unwrap();
    let sig = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("kuzet-signature:")
                .map(|_| l["kuzet-signature:".len()..].trim().to_string())
        })
        .unwrap_or_default();
    (status, sig, raw[end + 4..].to_vec())
}

fn key(k: &PublicKey, valid_until: Option<i64>) -> Key {
    Key {
        id: k.id.clone(),
        public: k.verifying_key(),
        valid_from: k.valid_from,
        valid_until,
    }
}

#[test]
fn the_stand_in_centres_batches_pass_kuzets_reader_and_its_faults_are_refused() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let feed = NbFeed::new("it");
    let addr = rt
        .block_on(feed.spawn("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let keys: Vec<Key> = feed.keys().iter().map(|k| key(k, None)).collect();

    feed.publish(&[
        FeedEntry::add("+77011234567", "bank-impersonation", now + 86_400),
        FeedEntry::add("+7702555*", "sim-box", now - 60),
        FeedEntry::withdraw("+77019990000"),
    ]);
    let (status, sig, body) = get(addr, "/v1/batches?after=0");
    assert_eq!(status, 200);
    assert_eq!(verify(&body, &sig, &keys, now), Ok("k1"));
    let b = parse(&body).unwrap();
    assert_eq!((b.seq, b.entries.len()), (1, 3));
    assert_eq!(b.entries[0].target, "+77011234567");
    assert_eq!(b.entries[0].expires_at, now + 86_400);
    assert_eq!(b.entries[1].target, "+7702555*");
    assert_eq!(b.entries[2].action, Action::Withdraw);
    assert_eq!(follows(b.seq, 0), Ok(()));
    assert_eq!(get(addr, "/v1/batches?after=1").0, 204);

    // A byte changed after signing.
    feed.publish(&[]);
    feed.tamper_next();
    let (_, sig, body) = get(addr, "/v1/batches?after=1");
    assert_eq!(verify(&body, &sig, &keys, now), Err(Rejected::BadSignature));

    // A replay and a gap, each signed and well formed.
    feed.publish(&[]);
    feed.replay_next();
    let (_, sig, body) = get(addr, "/v1/batches?after=1");
    assert!(verify(&body, &sig, &keys, now).is_ok());
    let seq = parse(&body).unwrap().seq;
    assert_eq!(follows(seq, 1), Err(Rejected::Replay { seq: 1, cursor: 1 }));
    feed.skip_next();
    let (_, sig, body) = get(addr, "/v1/batches?after=1");
    assert!(verify(&body, &sig, &keys, now).is_ok());
    let seq = parse(&body).unwrap().seq;
    assert_eq!(
        follows(seq, 1),
        Err(Rejected::Gap {
            seq: 3,
            expected: 2
        })
    );

    // A rotated key kuzet was told of; then the old key, retired.
    assert_eq!(feed.rotate(), "k2");
    let listed = feed.keys();
    let keys = vec![key(&listed[0], Some(now)), key(&listed[1], None)];
    feed.publish(&[]);
    let (_, sig, body) = get(addr, "/v1/batches?after=3");
    assert_eq!(verify(&body, &sig, &keys, now), Ok("k2"));
    feed.sign_with("k1");
    feed.publish(&[]);
    let (_, sig, body) = get(addr, "/v1/batches?after=4");
    assert_eq!(
        verify(&body, &sig, &keys, now),
        Err(Rejected::KeyNotValid("k1".into()))
    );
    feed.sign_with("k7");
    feed.publish(&[]);
    let (_, sig, body) = get(addr, "/v1/batches?after=5");
    assert_eq!(
        verify(&body, &sig, &keys, now),
        Err(Rejected::UnknownKey("k7".into()))
    );
    feed.stop();
}
