//! Connection guards for the control surfaces (the control API and the
//! admin HTTP address): nobody can hold them by connecting and waiting.
//!
//! A [`ConnGuard`] (not the access gate, [`crate::gate`], which decides
//! what a request may do) admits a connection only under its caps, in
//! total and per
//! source address; one over a cap is closed at once and counted. Each
//! admitted connection is a [`Guarded`] stream that closes itself when
//! its client has not completed a request within `first_request` of
//! connecting (a slowloris trickling its headers or its HTTP/2 preface),
//! or when nothing moved either way for `idle`. The server marks a
//! connection's first request through its [`ConnInfo`]. The accept loop
//! never spins: when the process is out of file descriptors, accepting
//! fails, and the loop waits before it tries again, so the control
//! surfaces refuse while SIP, whose sockets are already open, answers.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// How many connections, and for how long without progress.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once, at most.
    pub max_connections: usize,
    /// Connections open at once from one source address, at most.
    pub max_per_source: usize,
    /// A connection whose first request has not arrived this long after
    /// it connected is closed.
    pub first_request: Duration,
    /// A connection on which nothing moved for this long is closed.
    pub idle: Duration,
}

/// What the guard has refused and closed, for `/metrics`.
#[derive(Default, Debug)]
pub struct GuardStats {
    /// Connections refused at a cap.
    pub refused: AtomicU64,
    /// Connections closed: no request in time, or idle.
    pub timed_out: AtomicU64,
    /// Accepts that failed (out of file descriptors, say).
    pub accept_errors: AtomicU64,
}

/// Admits connections under the caps.
pub struct ConnGuard {
    limits: Limits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// What it refused and closed.
    pub stats: Arc<GuardStats>,
}

/// One admitted connection's place under the caps, given back on drop.
pub struct Permit {
    guard: Arc<ConnGuard>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut g) = self.guard.open.lock() {
            g.0 = g.0.saturating_sub(1);
            if let Some(n) = g.1.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    g.1.remove(&self.ip);
                }
            }
        }
    }
}

impl ConnGuard {
    /// A guard with these limits.
    pub fn new(limits: Limits) -> Arc<ConnGuard> {
        Arc::new(ConnGuard {
            limits,
            open: Mutex::new((0, HashMap::new())),
            stats: Arc::default(),
        })
    }

    /// The limits it applies.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A place for a connection from `ip`, or `None` over a cap (counted).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let mut g = self.open.lock().ok()?;
        let from = g.1.get(&ip).copied().unwrap_or(0);
        if g.0 >= self.limits.max_connections || from >= self.limits.max_per_source {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        g.0 += 1;
        *g.1.entry(ip).or_insert(0) += 1;
        Some(Permit {
            guard: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().map_or(0, |g| g.0)
    }
}

/// A connection's addresses and whether its first request has come; the
/// server gets it with every request (tonic puts it in the request's
/// extensions) and calls [`ConnInfo::mark_request`].
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    seen: Arc<AtomicBool>,
}

impl ConnInfo {
    /// A request arrived whole on this connection: from now on only the
    /// idle limit applies.
    pub fn mark_request(&self) {
        self.seen.store(true, Ordering::Relaxed);
    }
}

/// A tower layer that marks each request's connection ([`ConnInfo`], which
/// tonic puts in the request's extensions) as having had a request, for
/// every service behind it.
#[derive(Clone, Copy, Debug, Default)]
pub struct MarkRequests;

impl<S> tower::Layer<S> for MarkRequests {
    type Service = Marked<S>;

    fn layer(&self, inner: S) -> Marked<S> {
        Marked(inner)
    }
}

/// A service whose requests mark their connection.
#[derive(Clone, Debug)]
pub struct Marked<S>(S);

impl<S, B> tower::Service<tonic::codegen::http::Request<B>> for Marked<S>
where
    S: tower::Service<tonic::codegen::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> S::Future {
        if let Some(c) = req.extensions().get::<ConnInfo>() {
            c.mark_request();
        }
        self.0.call(req)
    }
}

/// An admitted TCP connection that closes itself when its client makes
/// no progress (see the module docs).
pub struct Guarded {
    io: TcpStream,
    info: ConnInfo,
    limits: Limits,
    connected: Instant,
    last: Instant,
    timer: Pin<Box<Sleep>>,
    stats: Arc<GuardStats>,
    _permit: Permit,
}

impl Guarded {
    /// Guards `io` under `permit`.
    pub fn new(io: TcpStream, remote: SocketAddr, permit: Permit) -> Guarded {
        let limits = permit.guard.limits;
        let stats = permit.guard.stats.clone();
        let now = Instant::now();
        Guarded {
            io,
            info: ConnInfo {
                remote,
                seen: Arc::new(AtomicBool::new(false)),
            },
            limits,
            connected: now,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + limits.first_request)),
            stats,
            _permit: permit,
        }
    }

    /// The connection's info (addresses, first-request mark).
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// When the connection must next show progress.
    fn deadline(&self) -> Instant {
        let idle = self.last + self.limits.idle;
        if self.info.seen.load(Ordering::Relaxed) {
            idle
        } else {
            idle.min(self.connected + self.limits.first_request)
        }
    }

    /// Called when the socket is not ready: an error once the deadline has
    /// passed, else the timer is armed for it (waking this task).
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let deadline = self.deadline();
            if Instant::now() >= deadline {
                self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                let why = if self.info.seen.load(Ordering::Relaxed) {
                    "connection idle too long"
                } else {
                    "no request in time"
                };
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, why));
            }
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // Fired: the loop checks the deadline again (it may have
                // moved since the timer was set).
                Poll::Ready(()) => continue,
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.check(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.check(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Accepts connections on `listener` under `guard` and hands each admitted
/// one to `each`, until `stop` resolves. A connection over a cap is closed
/// at once; a failed accept (no file descriptors left) waits 100 ms, so
/// the loop never spins and the process's other work goes on.
pub async fn accept_loop<F>(
    listener: TcpListener,
    guard: Arc<ConnGuard>,
    what: &'static str,
    stop: impl Future<Output = ()>,
    mut each: F,
) where
    F: FnMut(Guarded),
{
    tokio::pin!(stop);
    let mut last_warn: Option<std::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((io, remote)) => {
                let Some(permit) = guard.admit(remote.ip()) else {
                    // Closed at once: the client sees a reset or EOF.
                    drop(io);
                    continue;
                };
                let _ = io.set_nodelay(true);
                each(Guarded::new(io, remote, permit));
            }
            Err(e) => {
                guard.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(surface = what, error = %e, "accepting a connection failed (out of file descriptors?); refusing for now");
                    last_warn = Some(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 3,
            max_per_source: 2,
            first_request: Duration::from_millis(200),
            idle: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_guard_caps_connections_in_total_and_per_source() {
        let g = ConnGuard::new(limits());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = g.admit(a).unwrap();
        let _p2 = g.admit(a).unwrap();
        assert!(g.admit(a).is_none(), "a third from one source");
        let _p3 = g.admit(b).unwrap();
        assert!(g.admit(b).is_none(), "a fourth in total");
        drop(p1);
        assert!(g.admit(b).is_some(), "room again once one closed");
        assert_eq!(g.stats.refused.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_without_a_request_in_time_is_closed() {
        use tokio::io::AsyncReadExt;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let guard = ConnGuard::new(limits());
        let client = TcpStream::connect(addr).await.unwrap();
        let (io, remote) = l.accept().await.unwrap();
        let mut g = Guarded::new(io, remote, guard.admit(remote.ip()).unwrap());
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let e = g.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(guard.stats.timed_out.load(Ordering::Relaxed), 1);
        drop(client);
    }
}
