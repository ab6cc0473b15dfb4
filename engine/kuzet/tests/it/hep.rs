//! Verdicts inside Homer: what kuzet sends to a HEP collector, decoded
//! here against the HEPv3 field layout (a header `HEP3` and the total
//! length, then chunks of vendor, type, length and payload) by a decoder
//! of the test's own, received on a real UDP socket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::common::*;

/// One decoded HEPv3 packet: chunk type to payload (vendor 0 only).
fn decode(p: &[u8]) -> HashMap<u16, Vec<u8>> {
    assert_eq!(&p[..4], b"HEP3", "HEPv3 magic");
    let total = u16::from_be_bytes([p[4], p[5]]) as usize;
    assert_eq!(total, p.len(), "the total length is the datagram's");
    let mut at = 6;
    let mut chunks = HashMap::new();
    while at < total {
        assert!(at + 6 <= total, "a chunk header past the end");
        let vendor = u16::from_be_bytes([p[at], p[at + 1]]);
        let kind = u16::from_be_bytes([p[at + 2], p[at + 3]]);
        let len = u16::from_be_bytes([p[at + 4], p[at + 5]]) as usize;
        assert!(
            len >= 6 && at + len <= total,
            "chunk {kind:#x} length {len}"
        );
        assert_eq!(vendor, 0, "generic chunks");
        assert!(
            chunks.insert(kind, p[at + 6..at + len].to_vec()).is_none(),
            "chunk {kind:#x} twice"
        );
        at += len;
    }
    assert_eq!(at, total);
    chunks
}

fn u16_of(c: &HashMap<u16, Vec<u8>>, k: u16) -> u16 {
    u16::from_be_bytes(c[&k][..].try_into().unwrap())
}

fn u32_of(c: &HashMap<u16, Vec<u8>>, k: u16) -> u32 {
    u32::from_be_bytes(c[&k][..].try_into().unwrap())
}

fn text(c: &HashMap<u16, Vec<u8>>, k: u16) -> String {
    String::from_utf8(c[&k].clone()).unwrap()
}

#[test]
fn each_decision_reaches_the_collector_as_hepv3_with_the_sip_mirrored() {
    let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
    collector
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let d = TempDir::new("hep");
    d.write("block.txt", "+77011112233,fraud desk report\n");
    let mut cfg = test_config();
    cfg.lists.files[kuzet_rules::ListId::Block] = vec![d.path().join("block.txt").into()];
    cfg.hep.enabled = true;
    cfg.hep.collector = collector.local_addr().unwrap();
    cfg.hep.capture_id = 4242;
    cfg.hep.auth_key = Some("homer-key".into());
    cfg.hep.mirror_sip = true;
    let before = kuzet_dataplane::handler::evidence::unix_us() / 1_000_000;
    let eng = start(cfg);
    let c = client();
    let port = c.local_addr().unwrap().port();
    let blocked = ask(
        &c,
        eng.udp_addr,
        &invite("87011112233", "87015550000", "hep-block", port),
    );
    assert_eq!(status(&blocked), 603);
    let allowed = ask(
        &c,
        eng.udp_addr,
        &invite("87015550001", "87015550002", "hep-allow", port),
    );
    assert_eq!(status(&allowed), 302);

    // Three packets a call: the verdict (type 100), the INVITE and the
    // answer (type 1).
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65536];
    while got.len() < 6 {
        assert!(Instant::now() < deadline, "{} packets of 6", got.len());
        if let Ok(n) = collector.recv(&mut buf) {
            got.push(decode(&buf[..n]));
        }
    }
    for p in &got {
        assert_eq!(p[&0x0001], vec![2], "IPv4");
        assert_eq!(p[&0x0002], vec![17], "UDP");
        assert_eq!(u32_of(p, 0x000c), 4242, "capture id");
        assert_eq!(text(p, 0x000e), "homer-key", "auth key");
        let secs = u32_of(p, 0x0009) as i64;
        assert!(secs >= before && secs < before + 60, "timestamp {secs}");
        assert!(u32_of(p, 0x000a) < 1_000_000, "micro-seconds offset");
    }
    let kuzet = eng.udp_addr;
    let ip =
        |p: &HashMap<u16, Vec<u8>>, k: u16| IpAddr::from(<[u8; 4]>::try_from(&p[&k][..]).unwrap());
    let from = |p: &HashMap<u16, Vec<u8>>| SocketAddr::new(ip(p, 0x0003), u16_of(p, 0x0007));
    let to = |p: &HashMap<u16, Vec<u8>>| SocketAddr::new(ip(p, 0x0004), u16_of(p, 0x0008));
    let caller = c.local_addr().unwrap();
    for call in ["hep-block", "hep-allow"] {
        let mine: Vec<_> = got.iter().filter(|p| text(p, 0x0011) == call).collect();
        assert_eq!(mine.len(), 3, "{call}: correlation id is the Call-ID");
        let log = mine
            .iter()
            .find(|p| p[&0x000b] == vec![100])
            .expect("a log");
        let v: serde_json::Value = serde_json::from_slice(&log[&0x000f]).unwrap();
        assert_eq!((from(log), to(log)), (caller, kuzet));
        let invite = mine
            .iter()
            .find(|p| p[&0x000b] == vec![1] && p[&0x000f].starts_with(b"INVITE "))
            .expect("the INVITE mirrored");
        assert_eq!((from(invite), to(invite)), (caller, kuzet));
        assert!(text(invite, 0x000f).contains(&format!("Call-ID: {call}\r\n")));
        let answer = mine
            .iter()
            .find(|p| p[&0x000b] == vec![1] && p[&0x000f].starts_with(b"SIP/2.0 "))
            .expect("the answer mirrored");
        assert_eq!((from(answer), to(answer)), (kuzet, caller));
        if call == "hep-block" {
            assert_eq!(v["decision"], "block", "{v}");
            assert_eq!(v["code"], 603);
            assert_eq!(v["rules"][0]["id"], "blocklist");
            assert!(v["rules"][0]["value"].is_u64() && v["rules"][0]["threshold"].is_u64());
            assert_eq!(v["score"], 100);
            assert_eq!(v["list_hit"]["reason"], "fraud desk report");
            assert!(v["lists_version"].as_str().unwrap().contains('.'));
            assert_eq!(text(answer, 0x000f), blocked, "the answer as sent");
            assert_eq!(
                v["verdict_id"].as_str().unwrap(),
                blocked.split("verdict ").nth(1).unwrap()[..24].to_string()
            );
        } else {
            assert_eq!(v["decision"], "allow", "every decision, allows too: {v}");
            assert_eq!(text(answer, 0x000f), allowed);
        }
    }
    eng.stop();
}
