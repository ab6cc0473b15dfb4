//! Open-loop flood: INVITEs at fixed rates, phase after phase, with every
//! answer's latency filed by when its call was sent. It is how an
//! overload is offered and how recovery from it is seen.
//!
//! Unlike the [driver](crate::driver), the flood keeps no transaction
//! state: no retransmissions, no ACKs, one flag per call. Every INVITE is
//! padded to the same size, so up to 64 of them leave in one `send` with
//! UDP segmentation offload (`UDP_SEGMENT`, where the kernel has it;
//! `sendmmsg` otherwise): one trip through the network stack for 64
//! datagrams, which is how one core offers several times what one kuzet
//! core can score. A
//! call is sent at its scheduled time or, when the flood itself runs late,
//! as soon as it can, and its latency counts from the schedule: a late
//! flood never hides a slow server. Answers are filed into buckets by the
//! scheduled time of their call, so "p99 of the calls offered in the
//! second after the overload" is one bucket's histogram. A call with no
//! answer by the end is lost.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kuzet_net::{send_all, wait, Interest, RecvBatch, SendBatch};

/// One stretch of constant offered rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Phase {
    /// Calls per second.
    pub rate: f64,
    /// How long.
    pub duration: Duration,
}

/// What to flood with.
#[derive(Clone, Debug)]
pub struct FloodOptions {
    /// The SIP server.
    pub target: SocketAddr,
    /// The rates, in order.
    pub phases: Vec<Phase>,
    /// Answer buckets are this long, by scheduled send time.
    pub bucket: Duration,
    /// A-numbers, used in turn.
    pub callers: Vec<String>,
    /// B-numbers, used in turn.
    pub callees: Vec<String>,
    /// After the last phase, wait this long for late answers.
    pub grace: Duration,
}

/// Calls offered in one bucket and how they were answered.
#[derive(Clone, Debug)]
pub struct Bucket {
    /// Bucket start, from the flood's start.
    pub start: Duration,
    /// Calls scheduled in it.
    pub offered: u64,
    /// Of those, answered.
    pub answered: u64,
    /// Latency of the answered ones, microseconds.
    pub latency_us: Histogram<u64>,
}

impl Bucket {
    /// The `q` quantile of latency, counting unanswered calls as slower
    /// than any answer (so a bucket that lost 5% has no p99).
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        if self.offered == 0 {
            return None;
        }
        let lost = self.offered - self.answered.min(self.offered);
        let rank = (q * self.offered as f64).ceil() as u64;
        if rank > self.offered - lost {
            return None;
        }
        Some(
            self.latency_us
                .value_at_quantile(rank as f64 / self.answered.max(1) as f64),
        )
    }
}

/// The flood's result.
#[derive(Clone, Debug)]
pub struct FloodReport {
    /// Per bucket, in time order.
    pub buckets: Vec<Bucket>,
    /// Calls sent.
    pub sent: u64,
    /// Calls answered.
    pub answered: u64,
    /// Answers by status code (302, 603, ...).
    pub codes: std::collections::BTreeMap<u16, u64>,
    /// The most the flood itself fell behind its schedule.
    pub max_lag: Duration,
}

impl FloodReport {
    /// The buckets whose start lies in `[from, to)`.
    pub fn window(&self, from: Duration, to: Duration) -> impl Iterator<Item = &Bucket> {
        self.buckets
            .iter()
            .filter(move |b| b.start >= from && b.start < to)
    }

    /// Calls offered and answered in `[from, to)`, per second.
    pub fn rates(&self, from: Duration, to: Duration) -> (f64, f64) {
        let secs = (to - from).as_secs_f64().max(1e-9);
        let (o, a) = self
            .window(from, to)
            .fold((0, 0), |(o, a), b| (o + b.offered, a + b.answered));
        (o as f64 / secs, a as f64 / secs)
    }
}

/// Datagrams per send or receive call.
const BATCH: usize = 64;
/// Every flood INVITE is exactly this long (padded), so a batch can go out
/// as one segmented send.
const SEGMENT: usize = 560;
/// Calls sent before looking at answers again.
const SEND_SLICE: usize = 512;

/// Runs the flood; blocks until the phases and the grace time are over.
pub fn flood(opts: &FloodOptions) -> io::Result<FloodReport> {
    if opts.callers.is_empty() || opts.callees.is_empty() || opts.bucket.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the flood needs callers, callees and a bucket length",
        ));
    }
    let local: SocketAddr = match opts.target {
        SocketAddr::V4(_) => "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
        SocketAddr::V6(_) => "[::1]:0".parse().unwrap_or_else(|_| unreachable!()),
    };
    let sock = kuzet_net::bind_udp_client(local, 16 << 20)?;
    let me = sock.local_addr()?;
    let fd = sock.as_raw_fd();
    // Connected: no route lookup per datagram, and only the target's
    // answers are read. Segmented sends when the kernel allows them.
    sock.connect(opts.target)?;
    let gso = kuzet_net::set_udp_segment(&sock, SEGMENT as u16).is_ok();
    let mut chunk: Vec<u8> = Vec::with_capacity(BATCH * SEGMENT);
    let mut one = Vec::with_capacity(SEGMENT);
    // Schedule: phase boundaries in seconds and calls due by each.
    let total: f64 = opts.phases.iter().map(|p| p.duration.as_secs_f64()).sum();
    let due_at = |t: f64| -> u64 {
        let mut n = 0.0;
        let mut at = 0.0;
        for p in &opts.phases {
            let d = p.duration.as_secs_f64();
            n += p.rate * (t - at).clamp(0.0, d);
            at += d;
        }
        n as u64
    };
    // Scheduled time of call i (the inverse of due_at), in µs.
    let sched_us = |i: u64| -> u64 {
        let mut before = 0.0;
        let mut at = 0.0;
        for p in &opts.phases {
            let d = p.duration.as_secs_f64();
            let n = p.rate * d;
            if (i as f64) < before + n {
                return ((at + (i as f64 - before) / p.rate.max(1e-9)) * 1e6) as u64;
            }
            before += n;
            at += d;
        }
        (at * 1e6) as u64
    };
    let calls = due_at(total);
    let buckets_n = (total / opts.bucket.as_secs_f64()).ceil() as usize + 1;
    let mut buckets: Vec<Bucket> = (0..buckets_n)
        .map(|i| Bucket {
            start: opts.bucket * i as u32,
            offered: 0,
            answered: 0,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 2)
                .unwrap_or_else(|_| unreachable!("valid bounds")),
        })
        .collect();
    let bucket_us = opts.bucket.as_micros() as u64;
    let mut answered_flags = vec![false; calls as usize];
    let mut codes = std::collections::BTreeMap::new();
    let mut out = SendBatch::new(BATCH);
    let mut inp = RecvBatch::new(BATCH);
    let mut sent = 0u64;
    let mut answered = 0u64;
    let mut max_lag = Duration::ZERO;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(total) + opts.grace;
    loop {
        let now = Instant::now();
        let elapsed = now - start;
        let due = due_at(elapsed.as_secs_f64()).min(calls);
        // Send what is due, a slice at a time, so answers are read too.
        let mut slice = 0;
        while sent < due && slice < SEND_SLICE {
            chunk.clear();
            let first = sent;
            while sent < due && (sent - first) < BATCH as u64 {
                let b = (sched_us(sent) / bucket_us) as usize;
                if let Some(b) = buckets.get_mut(b) {
                    b.offered += 1;
                }
                if gso {
                    write_invite(&mut one, opts, sent, me);
                    chunk.extend_from_slice(&one);
                } else if let Some(buf) = out.next_buf() {
                    write_invite(buf, opts, sent, me);
                    out.commit(opts.target);
                }
                sent += 1;
                slice += 1;
            }
            if gso {
                send_segmented(&sock, &chunk);
            } else {
                send_all(&mut out, fd, Duration::from_millis(20));
            }
        }
        if sent < due {
            let lag = elapsed.saturating_sub(Duration::from_micros(sched_us(sent)));
            max_lag = max_lag.max(lag);
        }
        // Read every answer waiting.
        let mut got_any = false;
        while let Ok(n) = inp.recv(fd) {
            if n == 0 {
                break;
            }
            got_any = true;
            let now_us = start.elapsed().as_micros() as u64;
            for i in 0..n {
                let Some((bytes, _)) = inp.get(i) else {
                    continue;
                };
                let Some((call, code)) = answer_of(bytes) else {
                    continue;
                };
                if code < 200 || call >= calls {
                    continue;
                }
                let flag = &mut answered_flags[call as usize];
                if *flag {
                    continue;
                }
                *flag = true;
                answered += 1;
                *codes.entry(code).or_insert(0) += 1;
                let s = sched_us(call);
                if let Some(b) = buckets.get_mut((s / bucket_us) as usize) {
                    b.answered += 1;
                    let _ = b.latency_us.record(now_us.saturating_sub(s).max(1));
                }
            }
        }
        let now = Instant::now();
        if now >= end || (sent == calls && answered == calls) {
            break;
        }
        if sent >= due && !got_any {
            // Nothing to send yet and nothing to read: sleep until the
            // next call is due or an answer comes.
            let next = start + Duration::from_micros(sched_us(sent));
            let nap = next
                .saturating_duration_since(now)
                .min(Duration::from_millis(1));
            if !nap.is_zero() {
                let _ = wait(&[(fd, Interest::Read)], nap);
            }
        }
    }
    Ok(FloodReport {
        buckets,
        sent,
        answered,
        codes,
        max_lag,
    })
}

/// Sends a chunk of segments in one call, waiting (a little) for room.
fn send_segmented(sock: &std::net::UdpSocket, chunk: &[u8]) {
    if chunk.is_empty() {
        return;
    }
    for _ in 0..100 {
        match sock.send(chunk) {
            Ok(_) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = wait(
                    &[(sock.as_raw_fd(), Interest::Write)],
                    Duration::from_millis(1),
                );
            }
            // The target's port closed (ICMP): the calls are lost, as
            // they would be on the wire.
            Err(_) => return,
        }
    }
}

/// Writes INVITE number `i` into `buf`, padded to exactly [`SEGMENT`]
/// bytes; its Call-ID carries `i`.
fn write_invite(buf: &mut Vec<u8>, o: &FloodOptions, i: u64, me: SocketAddr) {
    use std::io::Write;
    let a = &o.callers[(i % o.callers.len() as u64) as usize];
    let b = &o.callees[(i % o.callees.len() as u64) as usize];
    buf.clear();
    let _ = write!(
        buf,
        "INVITE sip:{b}@{t} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bKfl{i}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{a}@{me}>;tag=fl{i}\r\n\
         To: <sip:{b}@{t}>\r\n\
         Call-ID: flood-{i}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:{a}@{me}>\r\n\
         Content-Length: 0\r\n",
        t = o.target,
    );
    // "X-Pad: " + pad + CRLF, then the blank line.
    let pad = SEGMENT.saturating_sub(buf.len() + 7 + 2 + 2);
    buf.extend_from_slice(b"X-Pad: ");
    buf.resize(buf.len() + pad, b'p');
    buf.extend_from_slice(b"\r\n\r\n");
}

/// The call number and status code of a flood answer: the status line's
/// code and the number after `Call-ID: flood-`, found with a byte search
/// rather than a full parse (the flood reads as many answers as kuzet
/// sends).
fn answer_of(bytes: &[u8]) -> Option<(u64, u16)> {
    let code = bytes.strip_prefix(b"SIP/2.0 ")?.get(..3)?;
    let code: u16 = std::str::from_utf8(code).ok()?.parse().ok()?;
    const KEY: &[u8] = b"\r\nCall-ID: flood-";
    let at = memchr::memmem::find(bytes, KEY)? + KEY.len();
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let n = std::str::from_utf8(&bytes[at..at + digits])
        .ok()?
        .parse()
        .ok()?;
    Some((n, code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuzet_sip::{self as sip, Hdr};

    #[test]
    fn invites_are_padded_to_one_size_and_parse() {
        let o = FloodOptions {
            target: "127.0.0.1:5060".parse().unwrap(),
            phases: vec![],
            bucket: Duration::from_secs(1),
            callers: vec!["+77011234567".into()],
            callees: vec!["+77020000001".into()],
            grace: Duration::ZERO,
        };
        let me = "127.0.0.1:40000".parse().unwrap();
        let mut buf = Vec::new();
        for i in [0, 7, 123_456_789] {
            write_invite(&mut buf, &o, i, me);
            assert_eq!(buf.len(), SEGMENT);
            let m = sip::parse(&buf, sip::Transport::Datagram).unwrap();
            assert_eq!(m.header(Hdr::CallId), Some(format!("flood-{i}").as_bytes()));
            let answer = String::from_utf8(buf.clone()).unwrap().replacen(
                "INVITE sip:+77020000001@127.0.0.1:5060 SIP/2.0",
                "SIP/2.0 302 Moved",
                1,
            );
            assert_eq!(answer_of(answer.as_bytes()), Some((i, 302)));
        }
    }

    #[test]
    fn a_bucket_with_losses_has_no_high_quantile() {
        let mut b = Bucket {
            start: Duration::ZERO,
            offered: 100,
            answered: 98,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 2).unwrap(),
        };
        for v in 1..=98 {
            b.latency_us.record(v).unwrap();
        }
        assert!(b.quantile_us(0.5).is_some());
        assert_eq!(b.quantile_us(0.99), None, "two lost: p99 is unknown");
        b.answered = 100;
        b.latency_us.record(99).unwrap();
        b.latency_us.record(100).unwrap();
        assert_eq!(b.quantile_us(0.99), Some(99));
    }
}
