//! A UDP worker: read a batch, handle each datagram, send the replies in one go.
//!
//! The worker is a plain thread on a blocking socket, not an async task:
//! `recvmmsg` with `MSG_WAITFORONE` sleeps until a datagram arrives and
//! then takes everything already queued, so a wake-up costs one system
//! call to read and one (`sendmmsg`) to answer the whole batch. A readiness
//! loop (epoll, read, read again until `EAGAIN`) costs three to read. The
//! socket's receive timeout bounds each sleep so the worker sees shutdown.

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Connections;
use crate::handler::{Handler, Outcome};
use crate::metrics::{new_histogram, record, Counter};
use kuzet_net::{wait, RecvBatch, SendBatch};

/// How often a worker folds its latency histogram into the shared one.
const MERGE_EVERY: Duration = Duration::from_millis(500);
/// Longest sleep in `recvmmsg` before the worker looks at `shutdown`.
const WAKE_EVERY: Duration = Duration::from_millis(100);

/// Runs one worker on the current thread until `shutdown` turns true.
pub fn run_worker(
    socket: std::net::UdpSocket,
    handler: Arc<Handler>,
    batch: usize,
    conns: Connections,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(WAKE_EVERY))?;
    let fd = socket.as_raw_fd();
    let mut recv = RecvBatch::new(batch);
    let mut send = SendBatch::new(batch);
    let mut hist = new_histogram();
    let mut last_merge = Instant::now();
    let metrics = handler.metrics().clone();
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
        send.clear();
        for i in 0..n {
            let Some((bytes, src)) = recv.get(i) else {
                metrics.inc(Counter::Unparseable);
                continue;
            };
            let Some(out) = send.next_buf() else { break };
            match handler.handle(bytes, src, None, t0, out) {
                Outcome::Reply => send.commit(src),
                Outcome::Forward(to) => send.commit(to),
                Outcome::ToConnection(id) => {
                    let delivered = conns
                        .get(&id)
                        .map(|tx| tx.try_send(out.clone()).is_ok())
                        .unwrap_or(false);
                    if !delivered {
                        metrics.inc(Counter::SendErrors);
                    }
                }
                Outcome::Drop => {}
            }
        }
        while send.pending() > 0 {
            match send.send(fd) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let _ = wait(&[(fd, true)], Duration::from_millis(10));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    // A hard error for one destination (ICMP unreachable
                    // reported late, say): skip it, keep the rest.
                    metrics.inc(Counter::SendErrors);
                    send.skip_one();
                }
            }
        }
        record(&mut hist, t0.elapsed(), n as u64);
    }
    metrics.merge_latency(&mut hist);
    Ok(())
}
