//! SIP over TCP: framing by Content-Length, and every resource a peer can
//! hold bounded in size and in time.
//!
//! - Memory: each connection reads into one buffer capped at the largest
//!   message plus one read, so a peer that sends endless headers or a
//!   huge body is closed without growing memory; an [`Outbox`] bounds the
//!   answers waiting for it, and while it is full kuzet reads no more of
//!   that peer's requests.
//! - Time: a message must be complete within the message deadline,
//!   counted from its first byte, not from the last read, so a peer that
//!   sends a byte a second is closed all the same. An answer must be
//!   taken by the peer within the write deadline, or the connection is
//!   closed: a peer that pipelines requests and never reads holds nothing
//!   for long. A connection with no message in progress is closed after
//!   the idle timeout.
//! - Slots: connections are capped in total and per source address, so a
//!   few hosts holding slow connections cannot shut out real routers.
//!
//! Requests kuzet forwards in proxy mode go out over UDP from the listen
//! port; their responses come back to a UDP worker, which hands them to
//! the connection through [`Connections`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::{Connections, Outbox};
use crate::handler::{Handler, Outcome};
use crate::metrics::{Counter, Gauge};
use kuzet_sip::{parse, ParseError, Transport, MAX_MESSAGE};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// What the bytes at the head of a TCP stream hold.
// The message's header index is large, but a frame lives on the stack for
// one step of the read loop; boxing it would allocate per message.
#[allow(clippy::large_enum_variant)]
pub enum Frame<'a> {
    /// An RFC 5626 keep-alive ping (double CRLF, 4 bytes): answered with a pong.
    Ping,
    /// A lone CRLF (2 bytes): a pong, or padding between messages; skipped.
    Pong,
    /// A whole message (its length is `m.len()`).
    Message(kuzet_sip::Message<'a>),
    /// Not enough bytes yet to tell.
    Incomplete,
    /// Not SIP, or larger than any message may be: the stream cannot be
    /// resynchronized and the connection closes.
    Bad,
}

/// Nothing yet, or the start of a keep-alive ping (at most 3 bytes): all a
/// stream may hold between messages that `next_frame` does not consume.
fn may_become_ping(rest: &[u8]) -> bool {
    matches!(rest, b"" | b"\r" | b"\r\n" | b"\r\n\r")
}

/// Frames the head of a TCP stream: the message boundaries come from
/// Content-Length (RFC 3261 §18.3), between messages only CRLF keep-alives
/// may stand. Pure, so it is fuzzed on its own (fuzz/, target `tcp`).
pub fn next_frame(rest: &[u8]) -> Frame<'_> {
    if rest.starts_with(b"\r\n\r\n") {
        return Frame::Ping;
    }
    // What may still become a ping waits for its next bytes: a ping split
    // across reads must not be taken for two pongs (and go unanswered).
    if may_become_ping(rest) {
        return Frame::Incomplete;
    }
    if rest.starts_with(b"\r\n") {
        return Frame::Pong;
    }
    match parse(rest, Transport::Stream) {
        Ok(m) => Frame::Message(m),
        Err(ParseError::Incomplete) => Frame::Incomplete,
        Err(_) => Frame::Bad,
    }
}

/// Settings for the TCP side.
#[derive(Clone, Debug)]
pub struct TcpSettings {
    /// Connections beyond this are refused at accept.
    pub max_connections: usize,
    /// Connections from one source address beyond this are refused.
    pub max_per_source: usize,
    /// A connection with no message in progress this long is closed.
    pub idle_timeout: Duration,
    /// A message not complete this long after its first byte arrived
    /// closes the connection.
    pub message_timeout: Duration,
    /// An answer the peer has not taken this long closes the connection.
    pub write_timeout: Duration,
}

/// Open connections per source address, shared by the accept loop and
/// the connections; an entry goes when its last connection does.
#[derive(Default)]
struct PerSource(Mutex<HashMap<IpAddr, usize>>);

/// One connection's hold on its source's count, given back on drop.
struct SourceSlot {
    table: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = t.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = t.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

/// A listening TCP socket with an explicit backlog (std's is 128, which
/// turns away a burst of routers reconnecting at once). The kernel caps
/// it at `net.core.somaxconn`.
pub fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    s.set_nonblocking(true)?;
    Ok(s.into())
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
    let per_source = Arc::new(PerSource::default());
    let next_id = AtomicU64::new(1);
    let mut accept_errors = 0u64;
    let mut last_warn: Option<std::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin,
                    // and say so once in a while, not per try.
                    accept_errors += 1;
                    if last_warn.is_none_or(|t: std::time::Instant| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %e, failed = accept_errors, "accepting a SIP TCP connection failed; UDP and open connections go on");
                        last_warn = Some(std::time::Instant::now());
                        accept_errors = 0;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            handler.metrics().inc(Counter::TcpRefused);
            drop(stream);
            continue;
        };
        let Some(slot) = per_source.take(peer.ip(), settings.max_per_source) else {
            handler.metrics().inc(Counter::TcpRefusedPerSource);
            drop(stream);
            continue;
        };
        handler.metrics().inc(Counter::TcpConnections);
        handler.metrics().shift(Gauge::TcpConnections, 1);
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let h = handler.clone();
        let u = udp_out.clone();
        let c = conns.clone();
        let st = settings.clone();
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let metrics = h.metrics().clone();
            // The connection runs as its own task so that a panic in it is
            // caught by the runtime, counted here, and cleaned up after.
            let run = tokio::spawn(connection(stream, peer, id, h, u, c.clone(), st, sd)).await;
            if run.is_err_and(|e| e.is_panic()) {
                metrics.inc(Counter::WorkerPanics);
                tracing::error!(%peer, "TCP connection task panicked; connection closed");
            }
            c.remove(&id);
            metrics.shift(Gauge::TcpConnections, -1);
            drop(slot);
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
    settings: TcpSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = Outbox::new();
    conns.insert(id, tx.clone());
    let metrics = handler.metrics().clone();
    let write_timeout = settings.write_timeout;
    let m = metrics.clone();
    let mut writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            match tokio::time::timeout(write_timeout, wr.write_all(&b)).await {
                Ok(Ok(())) => rx.sent(b.len()),
                Ok(Err(_)) => break,
                Err(_) => {
                    // The peer has not taken an answer in time: it is not
                    // reading. Closing frees its slot and its queue.
                    m.inc(Counter::TcpClosedNotReading);
                    break;
                }
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(1024);
    // When the first byte of the message in progress arrived (None: no
    // message in progress, only the idle timeout applies).
    let mut message_since: Option<Instant> = None;
    'conn: loop {
        if buf.len() + READ_CHUNK > buf.capacity() {
            // Exact: the buffer never passes MAX_MESSAGE + 2 reads.
            buf.reserve_exact(READ_CHUNK);
        }
        let deadline = match message_since {
            Some(t) => t + settings.message_timeout,
            None => Instant::now() + settings.idle_timeout,
        };
        let read = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            // The writer ends only when the peer stopped reading (or the
            // socket failed): nothing more can be answered.
            _ = &mut writer => break,
            r = tokio::time::timeout_at(deadline.into(), rd.read_buf(&mut buf)) => r,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_) => {
                if message_since.is_some() {
                    metrics.inc(Counter::TcpClosedSlowMessage);
                }
                break;
            }
            Ok(Ok(_)) => {}
        }
        let received = Instant::now();
        let mut used = 0;
        loop {
            let m = match next_frame(&buf[used..]) {
                Frame::Ping => {
                    used += 4;
                    let _ = tx.try_push(b"\r\n".to_vec());
                    continue;
                }
                Frame::Pong => {
                    used += 2;
                    continue;
                }
                Frame::Incomplete => break,
                Frame::Bad => {
                    // Oversized or not SIP: the stream cannot be resynchronized.
                    // Nothing valid can be answered to it; close.
                    metrics.inc(Counter::TcpClosedBadInput);
                    break 'conn;
                }
                Frame::Message(m) => m,
            };
            used += m.len();
            match handler.handle_message(&m, peer, Some(id), received, &mut out) {
                Outcome::Reply | Outcome::ToConnection(_) => {
                    // Wait for room rather than drop the answer: a client
                    // that reads slowly slows only its own connection (we
                    // stop reading it meanwhile), and one that does not
                    // read at all is closed.
                    match tokio::time::timeout(write_timeout, tx.push(out.clone())).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break 'conn,
                        Err(_) => {
                            metrics.inc(Counter::TcpClosedNotReading);
                            break 'conn;
                        }
                    }
                }
                Outcome::Forward(to) => {
                    // The UDP workers keep this socket in blocking mode;
                    // never block here.
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
        buf.drain(..used);
        // What is left is the start of the next message: its clock runs
        // from now if a message just completed, or keeps running if not.
        // A keep-alive arriving in pieces is no message.
        let in_progress = !may_become_ping(&buf);
        message_since = match (in_progress, used > 0) {
            (false, _) => None,
            (true, true) => Some(received),
            (true, false) => message_since.or(Some(received)),
        };
        if buf.len() > MAX_MESSAGE {
            metrics.inc(Counter::TcpClosedBadInput);
            break;
        }
        // A big message grew the buffer; an idle connection gives it back.
        if buf.is_empty() && buf.capacity() > 2 * READ_CHUNK {
            buf.shrink_to(READ_CHUNK);
        }
    }
    conns.remove(&id);
    drop(tx);
    // The writer finishes what is queued within its deadline, or gives up.
    if !writer.is_finished() {
        let _ = writer.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(stream: &[&[u8]]) -> Vec<&'static str> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for piece in stream {
            buf.extend_from_slice(piece);
            loop {
                let (k, n) = match next_frame(&buf) {
                    Frame::Ping => ("ping", 4),
                    Frame::Pong => ("pong", 2),
                    Frame::Message(m) => ("message", m.len()),
                    Frame::Incomplete => break,
                    Frame::Bad => {
                        out.push("bad");
                        return out;
                    }
                };
                out.push(k);
                buf.drain(..n);
            }
        }
        out
    }

    /// Regression (found by fuzzing, fuzz/regressions/tcp/): a keep-alive
    /// ping split across two reads was taken for two pongs and never
    /// answered, so the client (RFC 5626) took the flow for dead.
    #[test]
    fn a_keep_alive_split_across_reads_is_still_a_ping() {
        assert_eq!(kinds(&[b"\r\n\r\n"]), ["ping"]);
        assert_eq!(kinds(&[b"\r\n", b"\r\n"]), ["ping"]);
        assert_eq!(kinds(&[b"\r\n\r", b"\n"]), ["ping"]);
        assert_eq!(kinds(&[b"\r", b"\n\r\n"]), ["ping"]);
        // A lone CRLF before a message is skipped, as RFC 3261 allows.
        let invite = b"OPTIONS sip:k SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\
                       From: <sip:a@h>;tag=1\r\nTo: <sip:k>\r\nCall-ID: 1\r\n\
                       CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(kinds(&[b"\r\n", invite]), ["pong", "message"]);
    }
}
