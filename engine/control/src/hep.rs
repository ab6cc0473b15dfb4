//! Verdicts inside Homer: each decision as a HEPv3 packet to a collector.
//!
//! HEP (Homer Encapsulation Protocol) version 3 is a header `HEP3`, the
//! packet's total length (u16, network order), then chunks of vendor id
//! (u16), type (u16), chunk length including these six bytes (u16) and a
//! payload. kuzet sends, per decision, a packet of protocol type 100 (a
//! log) whose payload is the verdict as JSON and whose correlation id
//! (chunk 0x0011) is the Call-ID, so Homer shows kuzet's reason beside the
//! call's ladder diagram. With `mirror_sip` it also sends the INVITE as
//! received and kuzet's answer as sent, as protocol type 1 (SIP).
//!
//! It runs on the verdict thread, never a SIP worker: one non-blocking UDP
//! send per packet, fire and forget. A send that fails (the collector's
//! host unreachable, a full socket buffer) is counted and dropped; nothing
//! waits for the collector. The encoder is ours: HEP needs a few dozen
//! lines, and no Rust crate for sending it is maintained.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use kuzet_dataplane::counter_set;
use kuzet_dataplane::metrics::Metrics;
use kuzet_dataplane::records::{flags, RecordEntry};
use kuzet_store::Record;

/// Where and how HEP packets go.
#[derive(Clone, Debug)]
pub struct HepConfig {
    /// The collector (Homer's heplify-server, or any HEP capture server).
    pub collector: SocketAddr,
    /// The capture agent id (chunk 0x000c) Homer files the packets under.
    pub capture_id: u32,
    /// Sent as chunk 0x000e when set: the collector's shared key.
    pub auth_key: Option<String>,
    /// Also mirror the INVITE and kuzet's answer as SIP (type 1).
    pub mirror_sip: bool,
    /// kuzet's own SIP address: the far end of each mirrored message.
    pub local: SocketAddr,
}

counter_set! {
    /// HEP's counters. Plain allows the call path could not queue for HEP
    /// are the call path's (`hep_queue_dropped_total`).
    pub struct HepCounters {
        sent => "hep_sent_total", "HEP packets sent to the collector",
        send_errors => "hep_send_errors_total", "HEP packets that could not be sent (dropped)",
    }
}

/// Sends HEP packets to one collector.
pub struct HepSender {
    cfg: HepConfig,
    sock: UdpSocket,
    buf: Vec<u8>,
    counters: Arc<HepCounters>,
}

/// HEP protocol types.
const PROTO_SIP: u8 = 1;
const PROTO_LOG: u8 = 100;

impl HepSender {
    /// A non-blocking UDP socket towards the collector, counting into
    /// `metrics`' [`HepCounters`].
    pub fn new(cfg: HepConfig, metrics: &Metrics) -> std::io::Result<HepSender> {
        let bind: SocketAddr = if cfg.collector.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let sock = UdpSocket::bind(bind)?;
        sock.set_nonblocking(true)?;
        Ok(HepSender {
            cfg,
            sock,
            buf: Vec::with_capacity(8192),
            counters: metrics.counter_set(),
        })
    }

    /// Sends one decision: the verdict as a log packet, and the INVITE and
    /// the answer when mirroring. `rec` is the verdict as the store records
    /// it (rules explained, the list hit with its reason).
    pub fn send(&mut self, ev: &RecordEntry, rec: &Record) {
        let call_id = ev.call_id.as_bytes();
        let proto_id = if ev.has(flags::TCP) { 6 } else { 17 };
        let json = verdict_json(rec);
        let ts = ev.ts_us;
        let local = self.cfg.local;
        let mut packets: [(u8, SocketAddr, SocketAddr, &[u8]); 3] = [
            (PROTO_LOG, ev.source, local, json.as_bytes()),
            (PROTO_SIP, ev.source, local, &ev.head),
            (PROTO_SIP, local, ev.source, &ev.answer),
        ];
        let n = if self.cfg.mirror_sip { 3 } else { 1 };
        for (proto, src, dst, payload) in packets.iter_mut().take(n) {
            if payload.is_empty() {
                continue;
            }
            encode(
                &mut self.buf,
                &self.cfg,
                *proto,
                proto_id,
                *src,
                *dst,
                ts,
                call_id,
                payload,
            );
            match self.sock.send_to(&self.buf, self.cfg.collector) {
                Ok(_) => self.counters.sent.inc(),
                Err(_) => self.counters.send_errors.inc(),
            }
        }
    }
}

/// The verdict as Homer shows it: decision, rules with values and
/// thresholds, the list hit and the lists' version.
fn verdict_json(r: &Record) -> String {
    let rules: Vec<serde_json::Value> = r
        .rules
        .iter()
        .map(|h| {
            serde_json::json!({
                "id": h.id,
                "value": h.value,
                "threshold": h.threshold,
                "shadow": h.shadow,
                "why": h.why,
            })
        })
        .collect();
    let list_hit = r.list_hit.as_ref().map(|l| {
        serde_json::json!({
            "list": l.list,
            "side": l.side,
            "exact": l.exact,
            "reason": l.reason,
        })
    });
    serde_json::json!({
        "kuzet": "verdict",
        "verdict_id": r.verdict_id,
        "node": r.node,
        "decision": r.decision,
        "shadow_decision": r.shadow_decision,
        "code": r.code,
        "score": r.score,
        "caller": r.a,
        "callee": r.b,
        "trunk": r.trunk,
        "rules": rules,
        "list_hit": list_hit,
        "lists_version": r.lists_version,
        "explanation": r.explanation,
    })
    .to_string()
}

/// Writes one HEPv3 packet into `out`.
#[allow(clippy::too_many_arguments)]
fn encode(
    out: &mut Vec<u8>,
    cfg: &HepConfig,
    proto_type: u8,
    proto_id: u8,
    src: SocketAddr,
    dst: SocketAddr,
    unix_us: i64,
    correlation: &[u8],
    payload: &[u8],
) {
    out.clear();
    out.extend_from_slice(b"HEP3");
    out.extend_from_slice(&[0, 0]); // total length, set below
    let (family, s, d) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (2u8, s.octets().to_vec(), d.octets().to_vec()),
        (s, d) => (10u8, v6(s).to_vec(), v6(d).to_vec()),
    };
    chunk(out, 0x0001, &[family]);
    chunk(out, 0x0002, &[proto_id]);
    if family == 2 {
        chunk(out, 0x0003, &s);
        chunk(out, 0x0004, &d);
    } else {
        chunk(out, 0x0005, &s);
        chunk(out, 0x0006, &d);
    }
    chunk(out, 0x0007, &src.port().to_be_bytes());
    chunk(out, 0x0008, &dst.port().to_be_bytes());
    let secs = (unix_us.max(0) / 1_000_000) as u32;
    let micros = (unix_us.max(0) % 1_000_000) as u32;
    chunk(out, 0x0009, &secs.to_be_bytes());
    chunk(out, 0x000a, &micros.to_be_bytes());
    chunk(out, 0x000b, &[proto_type]);
    chunk(out, 0x000c, &cfg.capture_id.to_be_bytes());
    if let Some(k) = &cfg.auth_key {
        chunk(out, 0x000e, k.as_bytes());
    }
    chunk(out, 0x0011, correlation);
    // A payload past what a UDP datagram carries is cut, never split.
    let room = u16::MAX as usize - out.len() - 6;
    chunk(out, 0x000f, &payload[..payload.len().min(room)]);
    let total = out.len().min(u16::MAX as usize) as u16;
    out[4..6].copy_from_slice(&total.to_be_bytes());
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// One chunk: generic vendor (0), its type, its length with the header.
fn chunk(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = (payload.len() + 6).min(u16::MAX as usize) as u16;
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload[..usize::from(len) - 6]);
}
