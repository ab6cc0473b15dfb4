//! A UDP worker: read a batch, handle each datagram, send the replies in one go.
//!
//! The worker is a plain thread on a blocking socket, not an async task:
//! `recvmmsg` with `MSG_WAITFORONE` sleeps until a datagram arrives and
//! then takes everything already queued, so a wake-up costs one system
//! call to read and one (`sendmmsg`) to answer the whole batch. A readiness
//! loop (epoll, read, read again until `EAGAIN`) costs three to read. The
//! socket's receive timeout bounds each sleep so the worker sees shutdown.
//!
//! Each request's clock starts when the kernel received it (its
//! `SO_TIMESTAMPNS` stamp, see [`arrived`]), not when the worker read it:
//! under overload a request that waited in the socket queue past the
//! fail-open budget is allowed at once, unscored, so the queue drains
//! instead of every caller waiting behind it.
//!
//! [`supervise`] runs the loop under `catch_unwind`: a panic anywhere in a
//! batch (outside scoring, which fails open on its own) costs that batch,
//! is counted in `worker_panics_total` and logged, and the worker starts
//! again on the same socket. It never dies silently.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kuzet_net::{send_all, RecvBatch, SendBatch};
use tokio::sync::watch;

use super::Connections;
use crate::handler::{Handler, Outcome};
use crate::metrics::{record, Counter, Latencies, Metrics, Stage};

/// How often a worker folds its latency histogram into the shared one.
const MERGE_EVERY: Duration = Duration::from_millis(500);
/// Longest sleep in `recvmmsg` before the worker looks at `shutdown`.
const WAKE_EVERY: Duration = Duration::from_millis(100);
/// Longest a worker waits, per batch, for room in a full send buffer before
/// it drops the rest of the batch's replies (counted in `send_errors_total`).
const SEND_WAIT: Duration = Duration::from_millis(50);
/// Pause before restarting a worker that panicked, so a panic on every
/// datagram cannot turn into a busy loop.
const RESTART_PAUSE: Duration = Duration::from_millis(10);

/// What a worker runs for each datagram: the [`Handler`], or a test double.
pub trait Service: Send + Sync + 'static {
    /// Handles one datagram from `src` that arrived at `received`; the reply
    /// or forwarded message is left in `out`.
    fn handle(
        &self,
        bytes: &[u8],
        src: SocketAddr,
        received: Instant,
        out: &mut Vec<u8>,
    ) -> Outcome;
    /// The counters the worker adds to.
    fn metrics(&self) -> &Arc<Metrics>;
}

impl Service for Handler {
    #[inline]
    fn handle(
        &self,
        bytes: &[u8],
        src: SocketAddr,
        received: Instant,
        out: &mut Vec<u8>,
    ) -> Outcome {
        Handler::handle(self, bytes, src, None, received, out)
    }

    fn metrics(&self) -> &Arc<Metrics> {
        Handler::metrics(self)
    }
}

/// Runs a worker on the current thread until `shutdown` turns true,
/// restarting it after a panic (counted and logged).
pub fn supervise<S: Service>(
    socket: std::net::UdpSocket,
    service: Arc<S>,
    batch: usize,
    conns: Connections,
    shutdown: watch::Receiver<bool>,
    name: &str,
) {
    let metrics = service.metrics().clone();
    loop {
        let run = catch_unwind(AssertUnwindSafe(|| {
            run_worker(&socket, &*service, batch, &conns, &shutdown)
        }));
        match run {
            Ok(Ok(())) => return,
            Ok(Err(e)) => {
                tracing::error!(worker = name, error = %e, "UDP worker stopped");
                return;
            }
            Err(panic) => {
                metrics.inc(Counter::WorkerPanics);
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(worker = name, panic = %what, "UDP worker panicked; restarting it");
                if *shutdown.borrow() {
                    return;
                }
                std::thread::sleep(RESTART_PAUSE);
            }
        }
    }
}

/// The longest a kernel timestamp may lie in the past and still be
/// believed: beyond it the real-time clock has been stepped (NTP, an
/// operator) between the stamp and now, and the read time is used.
const MAX_QUEUED: Duration = Duration::from_secs(10);

/// When a datagram really arrived, on the monotonic clock: the kernel's
/// real-time stamp carried over to `read_at` (the monotonic time the batch
/// was read, taken with `wall`). No stamp, or one that a clock step makes
/// nonsense, falls back to the read time; the error is then at most the
/// time the datagram queued, which is what the stamp is there to count.
pub fn arrived(stamp: Option<SystemTime>, read_at: Instant, wall: SystemTime) -> Instant {
    match stamp.and_then(|t| wall.duration_since(t).ok()) {
        Some(queued) if queued <= MAX_QUEUED => read_at.checked_sub(queued).unwrap_or(read_at),
        _ => read_at,
    }
}

/// The worker loop itself; returns when `shutdown` turns true.
pub fn run_worker<S: Service + ?Sized>(
    socket: &std::net::UdpSocket,
    service: &S,
    batch: usize,
    conns: &Connections,
    shutdown: &watch::Receiver<bool>,
) -> std::io::Result<()> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(WAKE_EVERY))?;
    let fd = socket.as_raw_fd();
    let mut recv = RecvBatch::new(batch);
    let mut send = SendBatch::new(batch);
    let mut hist = Latencies::default();
    // Each datagram's kernel arrival, for its service time: reserved once.
    let mut arrivals: Vec<Instant> = Vec::with_capacity(batch.max(1));
    let mut last_merge = Instant::now();
    let metrics = service.metrics().clone();
    while !*shutdown.borrow() {
        if last_merge.elapsed() >= MERGE_EVERY {
            metrics.merge_latency(&mut hist);
            last_merge = Instant::now();
        }
        let n = match recv.recv_wait(fd) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                // ECONNREFUSED from an earlier send, and the like: nothing
                // was read; go on.
                tracing::debug!(error = %e, "recvmmsg");
                continue;
            }
        };
        let t0 = Instant::now();
        let wall = SystemTime::now();
        send.clear();
        arrivals.clear();
        for i in 0..n {
            let Some((bytes, src)) = recv.get(i) else {
                metrics.inc(Counter::Unparseable);
                continue;
            };
            let Some(out) = send.next_buf() else { break };
            let received = arrived(recv.arrival(i), t0, wall);
            if arrivals.len() < arrivals.capacity() {
                arrivals.push(received);
            }
            match service.handle(bytes, src, received, out) {
                Outcome::Reply => send.commit(src),
                Outcome::Forward(to) => send.commit(to),
                Outcome::ToConnection(id) => {
                    let delivered = conns
                        .get(&id)
                        .map(|o| o.try_push(out.clone()))
                        .unwrap_or(false);
                    if !delivered {
                        metrics.inc(Counter::SendErrors);
                    }
                }
                Outcome::Drop => {}
            }
        }
        let handled = Instant::now();
        let sent = send_all(&mut send, fd, SEND_WAIT);
        let lost = sent.failed + sent.timed_out;
        if lost > 0 {
            metrics.add(Counter::SendErrors, lost as u64);
        }
        let done = Instant::now();
        for &a in &arrivals {
            record(&mut hist.service, done.saturating_duration_since(a), 1);
            hist.stage(Stage::Queue, t0.saturating_duration_since(a), 1);
        }
        hist.stage(Stage::Handle, handled - t0, n as u64);
        hist.stage(Stage::Send, done - handled, n as u64);
    }
    metrics.merge_latency(&mut hist);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers every datagram with its own bytes, and panics on `boom`.
    struct Echo(Arc<Metrics>);

    impl Service for Echo {
        fn handle(&self, bytes: &[u8], _: SocketAddr, _: Instant, out: &mut Vec<u8>) -> Outcome {
            assert!(bytes != b"boom", "told to panic");
            out.clear();
            out.extend_from_slice(bytes);
            Outcome::Reply
        }
        fn metrics(&self) -> &Arc<Metrics> {
            &self.0
        }
    }

    /// Regression: a panic outside scoring killed the UDP worker with no
    /// counter and no restart, and the port went deaf on that socket.
    #[test]
    fn a_panicking_worker_is_counted_and_restarted() {
        let sock = kuzet_net::bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let addr = sock.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        let service = Arc::new(Echo(metrics.clone()));
        let (stop, shutdown) = watch::channel(false);
        let worker = std::thread::spawn(move || {
            supervise(sock, service, 8, Connections::default(), shutdown, "test")
        });
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        c.send_to(b"hello", addr).unwrap();
        let n = c.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        c.send_to(b"boom", addr).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while metrics.get(Counter::WorkerPanics) == 0 {
            assert!(Instant::now() < deadline, "the panic was never counted");
            std::thread::yield_now();
        }
        // The restarted worker answers on the same socket.
        c.send_to(b"again", addr).unwrap();
        let n = c.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"again");
        assert_eq!(metrics.get(Counter::WorkerPanics), 1);
        stop.send(true).unwrap();
        worker.join().unwrap();
    }

    /// Answers every datagram with how long ago it arrived (µs), as the
    /// worker told it; stalls 100 ms on `stall`, as a worker under a burst.
    struct Age(Arc<Metrics>, std::sync::Mutex<std::sync::mpsc::Sender<()>>);

    impl Service for Age {
        fn handle(&self, bytes: &[u8], _: SocketAddr, at: Instant, out: &mut Vec<u8>) -> Outcome {
            if bytes == b"stall" {
                let _ = self.1.lock().unwrap().send(());
                std::thread::sleep(Duration::from_millis(100));
            }
            out.clear();
            out.extend_from_slice(at.elapsed().as_micros().to_string().as_bytes());
            Outcome::Reply
        }
        fn metrics(&self) -> &Arc<Metrics> {
            &self.0
        }
    }

    /// Regression: the fail-open budget counted from when a worker read a
    /// request, so time queued in the socket under overload never counted.
    /// A request that arrives while the worker is busy is now as old as
    /// the time it waited.
    #[test]
    fn a_request_queued_behind_a_busy_worker_is_as_old_as_its_wait() {
        let sock = kuzet_net::bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        kuzet_net::enable_rx_timestamps(&sock).unwrap();
        let addr = sock.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        let (stop, shutdown) = watch::channel(false);
        let (stalling, stalled) = std::sync::mpsc::channel();
        let service = Arc::new(Age(metrics, std::sync::Mutex::new(stalling)));
        let worker = std::thread::spawn(move || {
            supervise(sock, service, 8, Connections::default(), shutdown, "test")
        });
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let age = |buf: &[u8]| -> u64 { std::str::from_utf8(buf).unwrap().parse().unwrap() };
        let mut buf = [0u8; 64];
        // Idle: answered as soon as it arrives.
        c.send_to(b"fresh", addr).unwrap();
        let n = c.recv(&mut buf).unwrap();
        assert!(age(&buf[..n]) < 50_000, "{}", age(&buf[..n]));
        // Once the worker is busy with the stall, the next request queues
        // in the kernel for most of the 100 ms (and is read in a batch of
        // its own, after it).
        c.send_to(b"stall", addr).unwrap();
        stalled.recv_timeout(Duration::from_secs(5)).unwrap();
        let sent = Instant::now();
        c.send_to(b"queued", addr).unwrap();
        let mut ages = Vec::new();
        for _ in 0..2 {
            let n = c.recv(&mut buf).unwrap();
            ages.push(age(&buf[..n]));
        }
        let waited = sent.elapsed().as_micros() as u64;
        // The stalled request's own age is counted when it is handled,
        // after the stall: about 100 ms. The queued one is about as old.
        assert!(
            ages[1] >= 50_000,
            "queued {}µs, answered after {waited}µs",
            ages[1]
        );
        assert!(ages[1] <= waited, "{} > {waited}", ages[1]);
        stop.send(true).unwrap();
        worker.join().unwrap();
    }

    #[test]
    fn a_stamp_from_before_a_clock_step_falls_back_to_the_read_time() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let ms = Duration::from_millis;
        assert_eq!(arrived(None, now, wall), now);
        assert_eq!(arrived(Some(wall - ms(30)), now, wall), now - ms(30));
        // A stamp in the future (the clock stepped back) or an hour old
        // (stepped forward) says nothing about queueing.
        assert_eq!(arrived(Some(wall + ms(30)), now, wall), now);
        assert_eq!(arrived(Some(wall - ms(3_600_000)), now, wall), now);
    }
}
