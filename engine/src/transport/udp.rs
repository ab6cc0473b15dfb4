//! A UDP worker: read a batch, handle each datagram, send the replies in one go.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::sync::watch;

use super::mmsg::{RecvBatch, SendBatch};
use super::Connections;
use crate::handler::{Handler, Outcome};
use crate::metrics::{new_histogram, record, Counter};

/// How often a worker folds its latency histogram into the shared one.
const MERGE_EVERY: Duration = Duration::from_millis(500);

/// Runs one worker on the current thread until `shutdown` turns true.
pub fn run_worker(
    socket: std::net::UdpSocket,
    handler: Arc<Handler>,
    batch: usize,
    conns: Connections,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let sock = tokio::net::UdpSocket::from_std(socket)?;
        let fd = sock.as_raw_fd();
        let mut recv = RecvBatch::new(batch);
        let mut send = SendBatch::new(batch);
        let mut hist = new_histogram();
        let mut last_merge = Instant::now();
        let metrics = handler.metrics().clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                r = sock.readable() => r?,
            }
            let n = match sock.try_io(Interest::READABLE, || recv.recv(fd)) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "recvmmsg failed");
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
                match sock.try_io(Interest::WRITABLE, || send.send(fd)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        sock.writable().await?;
                    }
                    Err(_) => {
                        // A hard error for one destination (ICMP unreachable
                        // reported late, say): skip it, keep the rest.
                        metrics.inc(Counter::SendErrors);
                        send.skip_one();
                    }
                }
            }
            record(&mut hist, t0.elapsed(), n as u64);
            if last_merge.elapsed() >= MERGE_EVERY {
                metrics.merge_latency(&mut hist);
                last_merge = Instant::now();
            }
        }
        metrics.merge_latency(&mut hist);
        Ok::<(), std::io::Error>(())
    })
}
