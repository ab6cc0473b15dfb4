//! SIP over TCP: framing by Content-Length, bounded buffers, idle timeouts.
//!
//! Each connection reads into one buffer capped at the largest message
//! plus one read, so a peer that sends endless headers or a huge body is
//! answered 400 (when the headers allow it) and closed without growing
//! memory. A peer that stops mid-message is closed by the idle timeout.
//! Requests kuzet forwards in proxy mode go out over UDP from the listen
//! port; their responses come back to a UDP worker, which hands them to
//! the connection through [`Connections`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use super::Connections;
use crate::handler::{Handler, Outcome};
use crate::metrics::Counter;
use kuzet_sip::{parse, ParseError, Transport, MAX_MESSAGE};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Replies queued for one connection before it counts as stuck.
const OUTBOX: usize = 256;

/// Settings for the TCP side.
#[derive(Clone)]
pub struct TcpSettings {
    /// Connections beyond this are refused at accept.
    pub max_connections: usize,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
}

/// Accepts connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<Handler>,
    udp_out: Arc<std::net::UdpSocket>,
    conns: Connections,
    settings: TcpSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let next_id = AtomicU64::new(1);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            handler.metrics().inc(Counter::TcpRefused);
            drop(stream);
            continue;
        };
        handler.metrics().inc(Counter::TcpConnections);
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let h = handler.clone();
        let u = udp_out.clone();
        let c = conns.clone();
        let idle = settings.idle_timeout;
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let metrics = h.metrics().clone();
            // The connection runs as its own task so that a panic in it is
            // caught by the runtime, counted here, and cleaned up after.
            let run = tokio::spawn(connection(stream, peer, id, h, u, c.clone(), idle, sd)).await;
            if run.is_err_and(|e| e.is_panic()) {
                metrics.inc(Counter::WorkerPanics);
                tracing::error!(%peer, "TCP connection task panicked; connection closed");
            }
            c.remove(&id);
            drop(permit);
        });
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    handler: Arc<Handler>,
    udp_out: Arc<std::net::UdpSocket>,
    conns: Connections,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(OUTBOX);
    conns.insert(id, tx.clone());
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let metrics = handler.metrics().clone();
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(1024);
    'conn: loop {
        if buf.len() + READ_CHUNK > buf.capacity() {
            buf.reserve(READ_CHUNK);
        }
        let read = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            r = tokio::time::timeout(idle, rd.read_buf(&mut buf)) => r,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
        let received = Instant::now();
        let mut used = 0;
        loop {
            // RFC 5626 keep-alive: a double CRLF ping gets a single CRLF pong.
            let rest = &buf[used..];
            if rest.starts_with(b"\r\n\r\n") {
                used += 4;
                let _ = tx.try_send(b"\r\n".to_vec());
                continue;
            }
            if rest.starts_with(b"\r\n") {
                used += 2;
                continue;
            }
            if rest.is_empty() || rest == b"\r" {
                break;
            }
            match parse(rest, Transport::Stream) {
                Ok(m) => {
                    used += m.len();
                    match handler.handle_message(&m, peer, Some(id), received, &mut out) {
                        Outcome::Reply | Outcome::ToConnection(_) => {
                            // Wait for room rather than drop the answer: a
                            // client that reads slowly slows only its own
                            // connection (we stop reading it meanwhile).
                            if tx.send(out.clone()).await.is_err() {
                                metrics.inc(Counter::SendErrors);
                                break 'conn;
                            }
                        }
                        Outcome::Forward(to) => {
                            // The UDP workers keep this socket in blocking
                            // mode; never block here.
                            let sent = socket2::SockRef::from(&*udp_out).send_to_with_flags(
                                &out,
                                &to.into(),
                                libc::MSG_DONTWAIT,
                            );
                            if sent.is_err() {
                                metrics.inc(Counter::SendErrors);
                            }
                        }
                        Outcome::Drop => {}
                    }
                }
                Err(ParseError::Incomplete) => break,
                Err(_) => {
                    // Oversized or not SIP: the stream cannot be resynchronized.
                    // Nothing valid can be answered to it; close.
                    metrics.inc(Counter::TcpClosedBadInput);
                    break 'conn;
                }
            }
        }
        buf.drain(..used);
        if buf.len() > MAX_MESSAGE {
            metrics.inc(Counter::TcpClosedBadInput);
            break;
        }
    }
    conns.remove(&id);
    drop(tx);
    let _ = writer.await;
}
