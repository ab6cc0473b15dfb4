//! `kuzet-sim null`: the physical reference. It answers every INVITE with
//! a canned 302 as fast as the machine allows and does nothing else.
//!
//! Each thread owns one `SO_REUSEPORT` UDP socket and moves datagrams in
//! blocking `recvmmsg`/`sendmmsg` batches, the same I/O kuzet uses, so the gap
//! between kuzet and null is the cost of kuzet's own work (parsing,
//! checking, scoring), not of a different I/O model. The 302 echoes the
//! Via, From, To (with a tag), Call-ID and CSeq a client needs to match
//! it, with `Contact: <Request-URI>`. ACKs are absorbed, OPTIONS get 200,
//! anything else is ignored.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use kuzet_net::{send_all, RecvBatch, SendBatch};
use kuzet_sip::{self as sip, write};

/// A running null responder.
pub struct Null {
    /// The address it listens on (the real port when port 0 was asked for).
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Null {
    /// INVITEs answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Stops the threads and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Starts `threads` responder threads on `listen` (port 0 picks one).
pub fn start(listen: SocketAddr, threads: usize) -> io::Result<Null> {
    let first = kuzet_net::bind_udp(listen, 4 << 20)?;
    let addr = first.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut socks = vec![first];
    for _ in 1..threads.max(1) {
        socks.push(kuzet_net::bind_udp(addr, 4 << 20)?);
    }
    let threads = socks
        .into_iter()
        .enumerate()
        .map(|(k, sock)| {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::Builder::new()
                .name(format!("null-{k}"))
                .spawn(move || serve(&sock, &stop, &answered))
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(Null {
        addr,
        stop,
        answered,
        threads,
    })
}

fn serve(sock: &std::net::UdpSocket, stop: &AtomicBool, answered: &AtomicU64) {
    // Blocking reads with MSG_WAITFORONE: one system call per wake-up, as
    // kuzet's workers do; the timeout lets the thread see `stop`.
    if sock.set_nonblocking(false).is_err()
        || sock
            .set_read_timeout(Some(Duration::from_millis(100)))
            .is_err()
    {
        return;
    }
    let fd = sock.as_raw_fd();
    let mut rx = RecvBatch::new(64);
    let mut tx = SendBatch::new(64);
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = rx.recv_wait(fd) else { continue };
        let mut k = 0;
        for i in 0..n {
            let Some((bytes, from)) = rx.get(i) else {
                continue;
            };
            let Some(buf) = tx.next_buf() else { break };
            buf.clear();
            if answer(bytes, buf) {
                tx.commit(from);
                k += 1;
            }
        }
        answered.fetch_add(k, Ordering::Relaxed);
        send_all(&mut tx, fd, Duration::from_millis(100));
    }
}

/// Writes the canned answer to `req` into `out`; false when there is none.
pub fn answer(req: &[u8], out: &mut Vec<u8>) -> bool {
    let Ok(m) = sip::parse(req, sip::Transport::Datagram) else {
        return false;
    };
    let (code, reason) = match m.method() {
        b"INVITE" => (302, "Moved Temporarily"),
        b"OPTIONS" => (200, "OK"),
        _ => return false,
    };
    write::response(out, &m, code, reason, None, |o| {
        o.extend_from_slice(b"null")
    });
    if code == 302 {
        out.extend_from_slice(b"Contact: <");
        out.extend_from_slice(m.request_uri());
        out.extend_from_slice(b">\r\n");
    }
    write::end_empty(out);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuzet_sip::Hdr;

    #[test]
    fn answers_invite_with_302_over_a_real_socket() {
        let null = start("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req = b"INVITE sip:+77011234567@x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
        c.send_to(req, null.addr).unwrap();
        let mut buf = [0u8; 2048];
        let n = c.recv(&mut buf).unwrap();
        let m = sip::parse(&buf[..n], sip::Transport::Datagram).unwrap();
        assert_eq!(m.status(), 302);
        assert_eq!(m.header(Hdr::Contact), Some(&b"<sip:+77011234567@x>"[..]));
        assert_eq!(m.header(Hdr::To), Some(&b"<sip:b@x>;tag=null"[..]));
        assert_eq!(m.header(Hdr::CallId), Some(&b"c1"[..]));
        // An ACK gets nothing.
        let mut out = Vec::new();
        assert!(!answer(b"ACK sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n", &mut out));
        assert_eq!(null.answered(), 1);
        null.stop();
    }
}
