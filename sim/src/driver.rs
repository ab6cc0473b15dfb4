//! The load driver: real SIP over UDP or TCP, one INVITE client
//! transaction per call.
//!
//! One thread runs an event loop over one socket per trunk (each bound to
//! the trunk's source address), batching sends and receives with
//! `sendmmsg`/`recvmmsg`, so on a 2-core machine it leaves most of a core
//! to the system under test.
//!
//! - **Open loop** (`Pace::Rate`, `Pace::Scenario`): call `i` has a fixed
//!   scheduled send time. If the driver or the target falls behind, calls
//!   go out late, and latency is still measured from the *scheduled* time,
//!   so queueing is not hidden (no coordinated omission).
//! - **Saturation** (`Pace::Max`): a window of calls in flight; a new call
//!   goes out as soon as one completes. Latency is from the actual send.
//!
//! Per RFC 3261 §17.1.1, over UDP an INVITE is retransmitted after T1,
//! 2·T1, 4·T1, … until a response arrives; a provisional response stops
//! retransmission. A call with no final response within the timeout
//! (Timer B, 64·T1 by default) is a timeout. A non-2xx final response is
//! acknowledged with an ACK in the same transaction, and a retransmitted
//! final response is acknowledged again. A 2xx is acknowledged and the
//! call ended at once with BYE; a ringing call whose caller abandons
//! (Wangiri) is cancelled at its time. Talk time is not held: what is
//! measured is the verdict transaction.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kuzet_net::{send_all, wait, Interest, RecvBatch, SendBatch};
use kuzet_sip::{self as sip, Hdr};

use crate::traffic::{Behaviour, Call, Traffic};

/// How calls are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// At the scenario's own (Poisson) times.
    Scenario,
    /// Evenly, this many calls per second.
    Rate(f64),
    /// As fast as responses come back, with this many calls in flight.
    Max {
        /// Calls kept in flight at once (at least one).
        window: usize,
    },
}

/// Which transport the calls use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// SIP over UDP; INVITEs are retransmitted until a response arrives.
    Udp,
    /// SIP over one TCP connection per trunk; no retransmission.
    Tcp,
}

impl Proto {
    fn via(self) -> &'static [u8] {
        match self {
            Proto::Udp => b"UDP",
            Proto::Tcp => b"TCP",
        }
    }
}

/// Everything a run needs besides the traffic.
#[derive(Clone, Debug)]
pub struct Options {
    /// Address of the SIP server under test.
    pub target: SocketAddr,
    /// Transport every call uses.
    pub proto: Proto,
    /// How calls are paced.
    pub pace: Pace,
    /// Calls to make; the traffic is cycled when this exceeds it.
    pub calls: usize,
    /// RFC 3261 T1 (retransmission base).
    pub t1: Duration,
    /// No final response after this long = timeout (Timer B).
    pub timeout: Duration,
    /// Show a progress bar on stderr (hidden when stderr is no terminal).
    pub progress: bool,
    /// Play the switch in front of a redirect server: after each call let
    /// through, report how it ended (from the call's scripted behaviour)
    /// to kuzet's outcome API (`PUBLISH`, `Event: kuzet-outcome`).
    pub report_outcomes: bool,
    /// The host of each call's Request-URI and To: the far end a proxy in
    /// front of kuzet (Kamailio's router) sends a call on to. Unset: the
    /// target itself.
    pub callee_host: Option<SocketAddr>,
}

impl Options {
    /// Defaults: UDP, scenario pacing, T1 = 500 ms, timeout = 64·T1.
    pub fn new(target: SocketAddr, calls: usize) -> Options {
        Options {
            target,
            proto: Proto::Udp,
            pace: Pace::Scenario,
            calls,
            t1: Duration::from_millis(500),
            timeout: Duration::from_millis(32_000),
            progress: false,
            report_outcomes: false,
            callee_host: None,
        }
    }
}

/// What happened to one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallResult {
    /// Final status code; 0 = timed out (or never sent).
    pub status: u16,
    /// The response carried `X-Kuzet-Verdict: flag...`.
    pub flagged: bool,
    /// From scheduled send to final response, microseconds.
    pub latency_us: u32,
    /// INVITE retransmissions.
    pub retransmissions: u8,
}

/// Whole-run counters.
#[derive(Clone, Debug)]
pub struct RunStats {
    /// Calls started: first INVITEs sent (retransmissions are counted apart).
    pub sent: u64,
    /// Calls that got a final response before the timeout.
    pub answered: u64,
    /// Calls with no final response before the timeout (Timer B).
    pub timeouts: u64,
    /// INVITE retransmissions over UDP, all calls together.
    pub retransmissions: u64,
    /// Responses that could not be parsed or matched to a call.
    pub stray: u64,
    /// CANCELs sent for ringing calls whose caller abandons (Wangiri).
    pub cancels: u64,
    /// Wall-clock length of the whole run.
    pub elapsed: Duration,
    /// Latency to the final response, microseconds.
    pub latency: Histogram<u64>,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    sched_ns: u64,
    sent_ns: u64,
    rt_ms: u32,
    state: State,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum State {
    #[default]
    Idle,
    Calling,
    Proceeding,
    Done,
}

const TIMER_RETRANSMIT: u8 = 0;
const TIMER_CANCEL: u8 = 1;

enum Conn {
    Udp {
        sock: UdpSocket,
        out: SendBatch,
    },
    Tcp {
        stream: TcpStream,
        out: Vec<u8>,
        inb: Vec<u8>,
    },
}

impl Conn {
    /// Queues one message built by `f`.
    fn queue(&mut self, target: SocketAddr, f: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        match self {
            Conn::Udp { sock, out } => {
                if out.next_buf().is_none() {
                    flush_udp(sock, out)?;
                }
                if let Some(buf) = out.next_buf() {
                    buf.clear();
                    f(buf);
                    out.commit(target);
                }
                Ok(())
            }
            Conn::Tcp { out, .. } => {
                f(out);
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Udp { sock, out } => flush_udp(sock, out),
            Conn::Tcp { stream, out, .. } => {
                while !out.is_empty() {
                    match stream.write(out) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            out.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }

    fn backlog(&self) -> usize {
        match self {
            Conn::Udp { out, .. } => out.pending(),
            Conn::Tcp { out, .. } => out.len(),
        }
    }

    fn fd(&self) -> std::os::fd::RawFd {
        match self {
            Conn::Udp { sock, .. } => sock.as_raw_fd(),
            Conn::Tcp { stream, .. } => stream.as_raw_fd(),
        }
    }
}

fn flush_udp(sock: &UdpSocket, out: &mut SendBatch) -> io::Result<()> {
    // A datagram the kernel refuses (ECONNREFUSED and the like) or that
    // finds the socket full for a second is dropped here; the call will be
    // retransmitted or time out, as on a real network.
    send_all(out, sock.as_raw_fd(), Duration::from_secs(1));
    Ok(())
}

/// Keeps TCP output bounded: past this, no new calls are queued until the
/// target reads.
const TCP_BACKLOG: usize = 4 << 20;
const BATCH: usize = 64;

struct Driver<'t> {
    traffic: &'t Traffic,
    opts: Options,
    conns: Vec<Conn>,
    locals: Vec<SocketAddr>,
    slots: Vec<Slot>,
    results: Vec<CallResult>,
    timers: BinaryHeap<Reverse<(u64, u32, u8)>>,
    run: u32,
    start: Instant,
    done: usize,
    in_flight: usize,
    stats: RunStats,
}

/// Drives `opts.calls` calls of `traffic` at `opts.target`; returns one
/// result per call, in call order, and the run's counters.
pub fn drive(traffic: &Traffic, opts: Options) -> io::Result<(Vec<CallResult>, RunStats)> {
    if traffic.calls.is_empty() || opts.calls == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no calls to make",
        ));
    }
    let mut conns = Vec::new();
    let mut locals = Vec::new();
    for (name, ip) in &traffic.trunks {
        let conn = match opts.proto {
            Proto::Udp => {
                let sock = kuzet_net::bind_udp_client(SocketAddr::new((*ip).into(), 0), 4 << 20)
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("trunk {name}: bind {ip}: {e}"))
                    })?;
                Conn::Udp {
                    sock,
                    out: SendBatch::new(BATCH),
                }
            }
            Proto::Tcp => {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                s.bind(&SocketAddr::new((*ip).into(), 0).into())?;
                s.connect(&opts.target.into()).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("trunk {name}: connect {}: {e}", opts.target),
                    )
                })?;
                let stream: TcpStream = s.into();
                stream.set_nodelay(true)?;
                stream.set_nonblocking(true)?;
                Conn::Tcp {
                    stream,
                    out: Vec::new(),
                    inb: Vec::new(),
                }
            }
        };
        locals.push(match &conn {
            Conn::Udp { sock, .. } => sock.local_addr()?,
            Conn::Tcp { stream, .. } => stream.local_addr()?,
        });
        conns.push(conn);
    }
    let n = opts.calls;
    let mut d = Driver {
        traffic,
        conns,
        locals,
        slots: vec![Slot::default(); n],
        results: vec![CallResult::default(); n],
        timers: BinaryHeap::new(),
        run: run_id(),
        start: Instant::now(),
        done: 0,
        in_flight: 0,
        stats: RunStats {
            sent: 0,
            answered: 0,
            timeouts: 0,
            retransmissions: 0,
            stray: 0,
            cancels: 0,
            elapsed: Duration::ZERO,
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).map_err(io::Error::other)?,
        },
        opts,
    };
    d.schedule();
    // Wake-ups within a few µs of the schedule (the default slack is 50 µs).
    let _ = kuzet_net::set_timer_slack(1_000);
    d.run_loop()?;
    d.stats.elapsed = d.start.elapsed();
    Ok((d.results, d.stats))
}

impl Driver<'_> {
    fn call(&self, i: usize) -> &Call {
        &self.traffic.calls[i % self.traffic.calls.len()]
    }

    /// Fixes every call's scheduled time (open loop) up front.
    fn schedule(&mut self) {
        let len = self.traffic.calls.len();
        let cycle_ns = self.traffic.duration_us.max(1) * 1000;
        for i in 0..self.slots.len() {
            self.slots[i].sched_ns = match self.opts.pace {
                Pace::Scenario => {
                    (i / len) as u64 * cycle_ns + self.traffic.calls[i % len].at_us * 1000
                }
                Pace::Rate(r) => (i as f64 * 1e9 / r.max(1e-3)) as u64,
                Pace::Max { .. } => 0,
            };
        }
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn run_loop(&mut self) -> io::Result<()> {
        let n = self.slots.len();
        let mut next = 0usize;
        let mut recv = RecvBatch::new(BATCH);
        let bar = progress_bar(self.opts.progress, n as u64);
        let mut last_bar = Instant::now();
        while self.done < n {
            let mut now = self.now_ns();
            // 1. New calls that are due.
            let mut sent_now = 0;
            while next < n && sent_now < 4 * BATCH {
                let due = match self.opts.pace {
                    Pace::Max { window } => self.in_flight < window.max(1),
                    _ => self.slots[next].sched_ns <= now,
                };
                if !due || self.conns.iter().any(|c| c.backlog() > TCP_BACKLOG) {
                    break;
                }
                if matches!(self.opts.pace, Pace::Max { .. }) {
                    self.slots[next].sched_ns = now;
                }
                self.send_invite(next, now)?;
                next += 1;
                sent_now += 1;
            }
            // 2. Timers.
            while let Some(&Reverse((at, i, kind))) = self.timers.peek() {
                if at > now {
                    break;
                }
                self.timers.pop();
                self.on_timer(i as usize, kind, now)?;
            }
            // 3. Out, then in.
            for c in &mut self.conns {
                c.flush()?;
            }
            let mut got = 0;
            for t in 0..self.conns.len() {
                got += self.receive(t, &mut recv)?;
            }
            for c in &mut self.conns {
                c.flush()?;
            }
            if bar.is_some() && last_bar.elapsed() >= Duration::from_millis(100) {
                if let Some(b) = &bar {
                    b.set_position(self.done as u64);
                    b.set_message(format!("timeouts {}", self.stats.timeouts));
                }
                last_bar = Instant::now();
            }
            // 4. Nothing happened: wait for the next event.
            if got == 0 && sent_now == 0 && self.done < n {
                now = self.now_ns();
                let mut until = u64::MAX;
                if next < n && !matches!(self.opts.pace, Pace::Max { .. }) {
                    until = self.slots[next].sched_ns;
                }
                if let Some(&Reverse((at, _, _))) = self.timers.peek() {
                    until = until.min(at);
                }
                // Sleep (never spin: on 2 cores a spinning driver steals
                // the server's CPU) until the next send, timer or answer.
                let gap = until.saturating_sub(now).min(50_000_000);
                if gap > 2_000 {
                    let fds: Vec<(i32, Interest)> = self
                        .conns
                        .iter()
                        .map(|c| {
                            let want = if c.backlog() > 0 {
                                Interest::Both
                            } else {
                                Interest::Read
                            };
                            (c.fd(), want)
                        })
                        .collect();
                    wait(&fds, Duration::from_nanos(gap))?;
                }
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok(())
    }

    /// Queues `msg` of call `i` on the call's trunk connection.
    fn send(&mut self, i: usize, msg: Msg<'_>) -> io::Result<()> {
        let call = &self.traffic.calls[i % self.traffic.calls.len()];
        let trunk = call.trunk as usize;
        let leg = Leg {
            call,
            i,
            run: self.run,
            local: self.locals[trunk],
            target: self.opts.target,
            uri_host: self.opts.callee_host.unwrap_or(self.opts.target),
            proto: self.opts.proto,
        };
        self.conns[trunk].queue(leg.target, |b| leg.write(b, msg))
    }

    fn send_invite(&mut self, i: usize, now: u64) -> io::Result<()> {
        self.send(i, Msg::Invite)?;
        let s = &mut self.slots[i];
        s.sent_ns = now;
        s.state = State::Calling;
        s.rt_ms = self.opts.t1.as_millis() as u32;
        self.in_flight += 1;
        self.stats.sent += 1;
        let first = match self.opts.proto {
            Proto::Udp => now + self.opts.t1.as_nanos() as u64,
            Proto::Tcp => now + self.opts.timeout.as_nanos() as u64,
        };
        self.timers
            .push(Reverse((first, i as u32, TIMER_RETRANSMIT)));
        Ok(())
    }

    fn on_timer(&mut self, i: usize, kind: u8, now: u64) -> io::Result<()> {
        let s = self.slots[i];
        if s.state == State::Done {
            return Ok(());
        }
        let deadline = s.sent_ns + self.opts.timeout.as_nanos() as u64;
        if now >= deadline {
            self.finish(i, 0, false, now);
            self.stats.timeouts += 1;
            return Ok(());
        }
        if kind == TIMER_CANCEL {
            if s.state == State::Proceeding {
                self.send(i, Msg::Cancel)?;
                self.stats.cancels += 1;
            }
            return Ok(());
        }
        if s.state == State::Calling && self.opts.proto == Proto::Udp {
            self.send(i, Msg::Invite)?;
            self.results[i].retransmissions = self.results[i].retransmissions.saturating_add(1);
            self.stats.retransmissions += 1;
            let rt = s.rt_ms.saturating_mul(2);
            self.slots[i].rt_ms = rt;
            let at = (now + u64::from(s.rt_ms) * 1_000_000).min(deadline);
            self.timers.push(Reverse((at, i as u32, TIMER_RETRANSMIT)));
        } else {
            self.timers
                .push(Reverse((deadline, i as u32, TIMER_RETRANSMIT)));
        }
        Ok(())
    }

    fn finish(&mut self, i: usize, status: u16, flagged: bool, now: u64) {
        let s = &mut self.slots[i];
        s.state = State::Done;
        let lat = (now.saturating_sub(s.sched_ns) / 1000).max(1);
        let r = &mut self.results[i];
        r.status = status;
        r.flagged = flagged;
        r.latency_us = lat.min(u64::from(u32::MAX)) as u32;
        if status != 0 {
            let _ = self.stats.latency.record(lat);
            self.stats.answered += 1;
        }
        self.done += 1;
        self.in_flight -= 1;
    }

    /// Reads what waits on connection `t`; returns how many messages.
    fn receive(&mut self, t: usize, recv: &mut RecvBatch) -> io::Result<usize> {
        let mut total = 0;
        match &mut self.conns[t] {
            Conn::Udp { sock, .. } => {
                let fd = sock.as_raw_fd();
                loop {
                    let n = match recv.recv(fd) {
                        Ok(n) => n,
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                            ) =>
                        {
                            0
                        }
                        // An ICMP error from an earlier send: nothing to read.
                        Err(_) => 0,
                    };
                    for k in 0..n {
                        if let Some((bytes, _)) = recv.get(k) {
                            self.on_message(t, bytes, sip::Transport::Datagram)?;
                        }
                    }
                    total += n;
                    if n < BATCH {
                        break;
                    }
                }
            }
            Conn::Tcp { stream, inb, .. } => {
                let mut buf = [0u8; 65536];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => {
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                "target closed the TCP connection",
                            ))
                        }
                        Ok(k) => inb.extend_from_slice(&buf[..k]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                let mut data = std::mem::take(inb);
                let mut at = 0;
                loop {
                    // CRLF keep-alives between messages.
                    while at < data.len() && matches!(data[at], b'\r' | b'\n') {
                        at += 1;
                    }
                    match sip::parse(&data[at..], sip::Transport::Stream) {
                        Ok(m) => {
                            let len = m.len();
                            let bytes = data[at..at + len].to_vec();
                            self.on_message(t, &bytes, sip::Transport::Stream)?;
                            at += len;
                            total += 1;
                        }
                        Err(sip::ParseError::Incomplete | sip::ParseError::Empty) => break,
                        Err(_) => {
                            // Unframeable: drop what we hold.
                            self.stats.stray += 1;
                            at = data.len();
                            break;
                        }
                    }
                }
                data.drain(..at);
                if let Conn::Tcp { inb, .. } = &mut self.conns[t] {
                    *inb = data;
                }
            }
        }
        Ok(total)
    }

    fn on_message(&mut self, t: usize, bytes: &[u8], tr: sip::Transport) -> io::Result<()> {
        let Ok(m) = sip::parse(bytes, tr) else {
            self.stats.stray += 1;
            return Ok(());
        };
        if m.is_request() {
            // A UAS behind a proxy may send BYE; this driver ends calls itself.
            return Ok(());
        }
        let cseq = m
            .header(Hdr::CSeq)
            .and_then(|v| sip::syntax::parse_cseq(v).ok());
        let Some(cseq) = cseq else {
            self.stats.stray += 1;
            return Ok(());
        };
        if cseq.1 != b"INVITE" {
            return Ok(()); // responses to our ACK-less BYE/CANCEL
        }
        let Some(i) = m.header(Hdr::CallId).and_then(|c| call_index(c, self.run)) else {
            self.stats.stray += 1;
            return Ok(());
        };
        if i >= self.slots.len() || self.call(i).trunk as usize != t {
            self.stats.stray += 1;
            return Ok(());
        }
        let status = m.status();
        let now = self.now_ns();
        let state = self.slots[i].state;
        if status < 200 {
            if state == State::Calling {
                self.slots[i].state = State::Proceeding;
                if let Behaviour::Cancel { after_ms } = self.call(i).behaviour {
                    let at = self.slots[i].sent_ns + u64::from(after_ms) * 1_000_000;
                    self.timers.push(Reverse((at, i as u32, TIMER_CANCEL)));
                }
            }
            return Ok(());
        }
        let to = m.header(Hdr::To).unwrap_or_default();
        if self.opts.report_outcomes && state != State::Done && (200..400).contains(&status) {
            self.send(i, Msg::Outcome)?;
        }
        if status >= 300 {
            self.send(i, Msg::Ack { to, for_2xx: false })?;
        } else if state != State::Done {
            self.send(i, Msg::Ack { to, for_2xx: true })?;
            self.send(i, Msg::Bye { to })?;
        }
        if state != State::Done {
            // A flag, or a redirect to the anti-fraud desk: detected, not
            // blocked.
            let flagged = m
                .header_named(b"X-Kuzet-Verdict")
                .is_some_and(|v| v.starts_with(b"flag") || v.starts_with(b"redirect"));
            self.finish(i, status, flagged, now);
        }
        Ok(())
    }
}

fn progress_bar(on: bool, total: u64) -> Option<indicatif::ProgressBar> {
    if !on {
        return None;
    }
    let b = indicatif::ProgressBar::new(total);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} calls, {per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    Some(b)
}

/// A run's id, in its Call-IDs and branches: another for every run, in
/// this process and across processes, so a run's calls never pose as
/// another run's (retransmissions, to a server that remembers them).
fn run_id() -> u32 {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (std::process::id() ^ nanos).wrapping_add(n.wrapping_mul(0x9E37_79B9))
}

/// The call index in a Call-ID `<index>-<run>@kuzet-sim`.
fn call_index(call_id: &[u8], run: u32) -> Option<usize> {
    let dash = call_id.iter().position(|&b| b == b'-')?;
    let idx = sip::parse_u32(&call_id[..dash])?;
    let rest = &call_id[dash + 1..];
    let at = rest.iter().position(|&b| b == b'@')?;
    (sip::parse_u32(&rest[..at])? == run).then_some(idx as usize)
}

fn push_addr(out: &mut Vec<u8>, a: SocketAddr) {
    let _ = write!(out, "{a}");
}

const SDP: &[u8] = b"v=0\r\no=sim 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n";

/// The requests the driver sends.
#[derive(Clone, Copy)]
enum Msg<'a> {
    Invite,
    /// ACK to a final answer whose To (with tag) is given; a 2xx ACK is a
    /// transaction of its own (new branch).
    Ack {
        to: &'a [u8],
        for_2xx: bool,
    },
    Bye {
        to: &'a [u8],
    },
    Cancel,
    /// The call's outcome, for kuzet's outcome API.
    Outcome,
}

/// Everything the requests of call `i` are built from.
#[derive(Clone, Copy)]
struct Leg<'a> {
    call: &'a Call,
    i: usize,
    run: u32,
    local: SocketAddr,
    target: SocketAddr,
    /// The Request-URI's and To's host.
    uri_host: SocketAddr,
    proto: Proto,
}

impl Leg<'_> {
    /// Writes `msg` into `out`. Branch, tags and Call-ID derive from the
    /// call index and run, so a retransmission is byte-identical.
    fn write(&self, out: &mut Vec<u8>, msg: Msg<'_>) {
        let (method, branch, cseq): (&[u8], &[u8], &[u8]) = match msg {
            Msg::Invite => (b"INVITE", b"", b"1 INVITE"),
            Msg::Ack { for_2xx: false, .. } => (b"ACK", b"", b"1 ACK"),
            Msg::Ack { for_2xx: true, .. } => (b"ACK", b"-a", b"1 ACK"),
            Msg::Bye { .. } => (b"BYE", b"-b", b"2 BYE"),
            Msg::Cancel => (b"CANCEL", b"", b"1 CANCEL"),
            Msg::Outcome => (b"PUBLISH", b"-o", b"1 PUBLISH"),
        };
        let (a, b) = (self.call.a.as_bytes(), self.call.b.as_bytes());
        out.extend_from_slice(method);
        out.extend_from_slice(b" sip:");
        out.extend_from_slice(b);
        out.push(b'@');
        push_addr(out, self.uri_host);
        out.extend_from_slice(b" SIP/2.0\r\nVia: SIP/2.0/");
        out.extend_from_slice(self.proto.via());
        out.push(b' ');
        push_addr(out, self.local);
        out.extend_from_slice(b";branch=z9hG4bK-s");
        kuzet_sip::push_u64(out, self.i as u64);
        out.push(b'-');
        kuzet_sip::push_u64(out, u64::from(self.run));
        out.extend_from_slice(branch);
        out.extend_from_slice(b"\r\nMax-Forwards: 70\r\nFrom: ");
        if let Some(d) = &self.call.display {
            out.push(b'"');
            out.extend_from_slice(d.as_bytes());
            out.extend_from_slice(b"\" ");
        }
        out.extend_from_slice(b"<sip:");
        out.extend_from_slice(self.call.from.as_deref().map_or(a, str::as_bytes));
        out.push(b'@');
        push_addr(out, self.local);
        out.extend_from_slice(b">;tag=f");
        kuzet_sip::push_u64(out, self.i as u64);
        out.extend_from_slice(b"\r\nCall-ID: ");
        kuzet_sip::push_u64(out, self.i as u64);
        out.push(b'-');
        kuzet_sip::push_u64(out, u64::from(self.run));
        out.extend_from_slice(b"@kuzet-sim\r\nTo: ");
        match msg {
            Msg::Ack { to, .. } | Msg::Bye { to } => out.extend_from_slice(to),
            Msg::Invite | Msg::Cancel | Msg::Outcome => {
                out.extend_from_slice(b"<sip:");
                out.extend_from_slice(b);
                out.push(b'@');
                push_addr(out, self.uri_host);
                out.push(b'>');
            }
        }
        out.extend_from_slice(b"\r\nCSeq: ");
        out.extend_from_slice(cseq);
        out.extend_from_slice(b"\r\n");
        if let Msg::Invite = msg {
            out.extend_from_slice(b"P-Asserted-Identity: <sip:");
            out.extend_from_slice(a);
            out.push(b'@');
            push_addr(out, self.local);
            out.extend_from_slice(b">\r\nContact: <sip:sim@");
            push_addr(out, self.local);
            out.extend_from_slice(b">\r\nContent-Type: application/sdp\r\nContent-Length: ");
            kuzet_sip::push_u64(out, SDP.len() as u64);
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(SDP);
        } else if let Msg::Outcome = msg {
            let mut body = Vec::with_capacity(64);
            body.extend_from_slice(b"caller=");
            body.extend_from_slice(a);
            match self.call.behaviour {
                Behaviour::Cancel { after_ms } => {
                    body.extend_from_slice(b"\noutcome=cancelled\nring_ms=");
                    kuzet_sip::push_u64(&mut body, u64::from(after_ms));
                }
                Behaviour::Answer { talk_ms, .. } => {
                    body.extend_from_slice(b"\noutcome=answered\ntalk_ms=");
                    kuzet_sip::push_u64(&mut body, u64::from(talk_ms));
                }
                // Rang out unanswered: a ring, not a short one.
                Behaviour::NoAnswer => {
                    body.extend_from_slice(b"\noutcome=cancelled\nring_ms=30000")
                }
            }
            body.push(b'\n');
            out.extend_from_slice(
                b"Event: kuzet-outcome\r\nContent-Type: text/plain\r\nContent-Length: ",
            );
            kuzet_sip::push_u64(out, body.len() as u64);
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(&body);
        } else {
            out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> Call {
        Call {
            at_us: 0,
            source: 0,
            trunk: 0,
            a: "+77011234567".into(),
            from: None,
            display: None,
            b: "87021234567".into(),
            behaviour: Behaviour::NoAnswer,
        }
    }

    #[test]
    fn from_and_display_name_are_written_as_the_call_says() {
        let mut c = call();
        c.from = Some("+77272595555".into());
        c.display = Some("+7 727 259 5555".into());
        let leg = Leg {
            call: &c,
            i: 1,
            run: 0,
            local: "127.0.0.1:5000".parse().unwrap(),
            target: "127.0.0.1:5060".parse().unwrap(),
            uri_host: "127.0.0.1:5060".parse().unwrap(),
            proto: Proto::Udp,
        };
        let mut out = Vec::new();
        leg.write(&mut out, Msg::Invite);
        let m = sip::parse(&out, sip::Transport::Datagram).unwrap();
        assert_eq!(
            m.header(Hdr::From),
            Some(&b"\"+7 727 259 5555\" <sip:+77272595555@127.0.0.1:5000>;tag=f1"[..])
        );
        assert_eq!(
            m.header(Hdr::PAssertedIdentity),
            Some(&b"<sip:+77011234567@127.0.0.1:5000>"[..])
        );
    }

    #[test]
    fn messages_parse_as_sip() {
        let (l, t): (SocketAddr, SocketAddr) = (
            "127.0.0.2:4000".parse().unwrap(),
            "127.0.0.1:5060".parse().unwrap(),
        );
        let c = call();
        let leg = Leg {
            call: &c,
            i: 17,
            run: 99,
            local: l,
            target: t,
            uri_host: t,
            proto: Proto::Udp,
        };
        let mut out = Vec::new();
        leg.write(&mut out, Msg::Invite);
        let m = sip::parse(&out, sip::Transport::Stream).unwrap();
        assert_eq!(m.len(), out.len());
        assert_eq!(m.method(), b"INVITE");
        assert_eq!(m.request_uri(), b"sip:87021234567@127.0.0.1:5060");
        assert_eq!(call_index(m.header(Hdr::CallId).unwrap(), 99), Some(17));
        assert_eq!(call_index(m.header(Hdr::CallId).unwrap(), 98), None);
        assert_eq!(m.body(), SDP);
        out.clear();
        leg.write(
            &mut out,
            Msg::Ack {
                to: b"<sip:x@y>;tag=9",
                for_2xx: false,
            },
        );
        let m = sip::parse(&out, sip::Transport::Stream).unwrap();
        assert_eq!(m.method(), b"ACK");
        assert_eq!(m.header(Hdr::To), Some(&b"<sip:x@y>;tag=9"[..]));
        assert_eq!(m.header(Hdr::CSeq), Some(&b"1 ACK"[..]));
        assert!(m
            .header(Hdr::Via)
            .unwrap()
            .ends_with(b"branch=z9hG4bK-s17-99"));
        // CANCEL shares the INVITE's branch; BYE is a new transaction.
        for (msg, method, branch) in [
            (Msg::Cancel, &b"CANCEL"[..], &b"branch=z9hG4bK-s17-99"[..]),
            (
                Msg::Bye {
                    to: b"<sip:x@y>;tag=9",
                },
                b"BYE",
                b"branch=z9hG4bK-s17-99-b",
            ),
        ] {
            out.clear();
            leg.write(&mut out, msg);
            let m = sip::parse(&out, sip::Transport::Stream).unwrap();
            assert_eq!(m.method(), method);
            assert!(m.header(Hdr::Via).unwrap().ends_with(branch));
        }
    }
}
