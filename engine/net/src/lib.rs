//! kuzet's syscall layer: batched datagram I/O with `recvmmsg(2)` and
//! `sendmmsg(2)`, with the kernel's receive timestamp of each datagram
//! (`SO_TIMESTAMPNS`), `ppoll(2)` and the timer slack for loops that wait
//! on sockets without an async runtime, and the UDP socket set-up every
//! kuzet process shares (`SO_REUSEPORT`, buffer sizes). For tests, it
//! also holds [`alloc_count`], a counting global allocator (installing
//! one takes an `unsafe impl`).
//!
//! One system call moves up to a batch of datagrams each way, which is how
//! a UDP server gets below one syscall per call. The standard library and
//! tokio expose only one datagram per call, and `nix`'s wrappers allocate
//! per call, so this module talks to libc directly.
//!
//! `unsafe` is allowed here, and only here, because the kernel interface
//! takes raw pointers. The invariants are local and simple: every pointer
//! handed to the kernel points into a buffer owned by the batch struct,
//! the buffers do not move while the call runs (boxed slices for receive;
//! send pointers are set right before the call), and every length given is
//! the length of the buffer it describes.
#![allow(unsafe_code)]

pub mod alloc_count;

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// The largest datagram kuzet reads: the most a UDP payload can carry.
pub const MAX_DATAGRAM: usize = 65_535;

/// Size of each receive buffer: one byte over [`MAX_DATAGRAM`], so an
/// oversized datagram shows as truncated.
pub const RECV_BUF: usize = MAX_DATAGRAM + 1;

/// Control-message room per datagram: one `SCM_TIMESTAMPNS` (a 16-byte
/// header and a 16-byte timespec) with room to spare, 8-byte aligned as
/// `cmsghdr` needs.
const CONTROL_WORDS: usize = 8;

/// Receive side: a batch of buffers the kernel fills in one call.
pub struct RecvBatch {
    bufs: Vec<Box<[u8]>>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    control: Vec<[u64; CONTROL_WORDS]>,
}

// SAFETY: the raw pointers inside point only into the struct's own boxed
// buffers, which move with it; nothing else holds them.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// A batch of `n` receive buffers.
    pub fn new(n: usize) -> Self {
        let mut bufs: Vec<Box<[u8]>> = (0..n)
            .map(|_| vec![0u8; RECV_BUF].into_boxed_slice())
            .collect();
        // SAFETY: sockaddr_storage and mmsghdr are plain C structs for
        // which all-zero bytes are a valid value.
        let mut addrs: Vec<libc::sockaddr_storage> = (0..n).map(|_| unsafe { zeroed() }).collect();
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let hdrs = (0..n)
            .map(|i| {
                // SAFETY: as above; every pointer field is set just below.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_hdr.msg_iov = &mut iovs[i];
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        RecvBatch {
            bufs,
            addrs,
            iovs,
            hdrs,
            control: vec![[0u64; CONTROL_WORDS]; n],
        }
    }

    /// Reads up to a batch without blocking; `WouldBlock` when nothing waits.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_flags(fd, libc::MSG_DONTWAIT)
    }

    /// On a blocking socket: waits for the first datagram (at most the
    /// socket's `SO_RCVTIMEO`, then `WouldBlock`), then takes whatever else
    /// is already queued, up to a batch (`MSG_WAITFORONE`). One system call
    /// per wake-up, where poll-then-read needs three.
    pub fn recv_wait(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_flags(fd, libc::MSG_WAITFORONE)
    }

    fn recv_flags(&mut self, fd: RawFd, flags: libc::c_int) -> io::Result<usize> {
        for (i, h) in self.hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_control = self.control[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = size_of::<[u64; CONTROL_WORDS]>() as _;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: hdrs holds hdrs.len() initialized headers whose name,
        // iovec and control pointers point into self.addrs / self.iovs /
        // self.bufs / self.control, which live as long as self and are not
        // touched during the call; each length is its buffer's.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last receive and its source; `None` when it was
    /// truncated (over [`RECV_BUF`]) or came from an unknown address family.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let h = self.hdrs.get(i)?;
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let len = (h.msg_len as usize).min(RECV_BUF);
        if len >= RECV_BUF {
            return None;
        }
        Some((&self.bufs[i][..len], from_storage(&self.addrs[i])?))
    }

    /// When the kernel received datagram `i` of the last receive, on the
    /// real-time clock; `None` unless [`enable_rx_timestamps`] was called
    /// on the socket (or the kernel gave no stamp).
    pub fn arrival(&self, i: usize) -> Option<std::time::SystemTime> {
        let h = &self.hdrs.get(i)?.msg_hdr;
        if h.msg_controllen == 0 || h.msg_flags & libc::MSG_CTRUNC != 0 {
            return None;
        }
        // SAFETY: the kernel wrote msg_controllen bytes of well-formed
        // control messages into self.control[i], which msg_control points
        // to; CMSG_FIRSTHDR/NXTHDR stay within msg_controllen, and the
        // timespec is read unaligned from inside the message found.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(h);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET
                    && (*c).cmsg_type == libc::SCM_TIMESTAMPNS
                    && (*c).cmsg_len as usize
                        >= libc::CMSG_LEN(size_of::<libc::timespec>() as u32) as usize
                {
                    let ts: libc::timespec =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                    let d = std::time::Duration::new(
                        u64::try_from(ts.tv_sec).ok()?,
                        u32::try_from(ts.tv_nsec).ok()?,
                    );
                    return std::time::UNIX_EPOCH.checked_add(d);
                }
                c = libc::CMSG_NXTHDR(h, c);
            }
        }
        None
    }
}

/// Turns on UDP segmentation offload for sends on `sock` (`UDP_SEGMENT`):
/// one `send` of a buffer holding several datagrams of exactly `segment`
/// bytes each (the last may be shorter) goes out as that many datagrams,
/// for one trip through the stack. Load generators use it to offer more
/// datagrams per core than the server under test can take.
pub fn set_udp_segment(sock: &std::net::UdpSocket, segment: u16) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = segment.into();
    // SAFETY: UDP_SEGMENT takes an int, passed by pointer with its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&size as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lowers the calling thread's scheduling priority to `nice` (0 to 19).
/// The control plane and the verdict log run so: on a core they share with
/// a SIP worker, a sweep or a reload takes the worker's leftovers instead
/// of stalling calls. Threads the caller starts later inherit it.
pub fn lower_thread_priority(nice: i32) -> io::Result<()> {
    // SAFETY: gettid takes nothing; setpriority takes plain integers and
    // touches no memory of ours. On Linux, PRIO_PROCESS with a thread id
    // sets that one thread's nice value.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice.clamp(0, 19))
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts the calling thread in the `SCHED_IDLE` policy: it runs only on
/// time no normal thread wants, and any normal thread that wakes on its
/// core takes the core at once.
pub fn idle_thread_policy() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call;
    // pid 0 is the calling thread.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ignores `SIGXFSZ`, so a write past a file-size limit (`RLIMIT_FSIZE`)
/// fails with `EFBIG`, which the store counts and recovers from, instead
/// of killing the process.
pub fn ignore_sigxfsz() {
    // SAFETY: installing SIG_IGN for one signal takes no pointers of ours
    // and runs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Asks the kernel to stamp each datagram received on `sock` with the
/// time it arrived (`SO_TIMESTAMPNS`, real-time clock), read back with
/// [`RecvBatch::arrival`]: the time a request waited in the socket queue
/// then counts against its budget.
pub fn enable_rx_timestamps(sock: &std::net::UdpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: SO_TIMESTAMPNS takes an int, passed by pointer with its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Send side: replies queued during a batch, sent in one call.
pub struct SendBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<libc::socklen_t>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    queued: usize,
    sent: usize,
}

// SAFETY: the raw pointers inside point only into the struct's own
// buffers and addresses, set right before each send; nothing else holds
// them.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// Room for `n` queued datagrams.
    pub fn new(n: usize) -> Self {
        SendBatch {
            bufs: (0..n).map(|_| Vec::with_capacity(1024)).collect(),
            // SAFETY: sockaddr_storage is a plain C struct for which
            // all-zero bytes are a valid value.
            addrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            lens: vec![0; n],
            iovs: (0..n)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: likewise for mmsghdr (null pointers, zero lengths);
            // `send` points each at this batch's buffers before the call.
            hdrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            queued: 0,
            sent: 0,
        }
    }

    /// The buffer the next datagram is written into, or `None` when full.
    pub fn next_buf(&mut self) -> Option<&mut Vec<u8>> {
        self.bufs.get_mut(self.queued)
    }

    /// Queues the buffer last returned by [`next_buf`](Self::next_buf) for `to`.
    pub fn commit(&mut self, to: SocketAddr) {
        if self.queued < self.bufs.len() {
            self.lens[self.queued] = to_storage(to, &mut self.addrs[self.queued]);
            self.queued += 1;
        }
    }

    /// How many datagrams wait to be sent.
    pub fn pending(&self) -> usize {
        self.queued - self.sent
    }

    /// Sends what is pending without blocking; returns how many went out.
    pub fn send(&mut self, fd: RawFd) -> io::Result<usize> {
        let (from, to) = (self.sent, self.queued);
        if from == to {
            return Ok(0);
        }
        for i in from..to {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.bufs[i].len(),
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = self.lens[i];
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_len = 0;
        }
        // SAFETY: headers from..to were just pointed at this batch's own
        // buffers and addresses, which are not resized during the call.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs[from..].as_mut_ptr(),
                (to - from) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.sent += n as usize;
        Ok(n as usize)
    }

    /// Skips the datagram at the head of the queue (after a hard error).
    pub fn skip_one(&mut self) {
        if self.sent < self.queued {
            self.sent += 1;
        }
    }

    /// Empties the queue for the next batch.
    pub fn clear(&mut self) {
        self.queued = 0;
        self.sent = 0;
    }
}

/// What a [`wait`] waits for on one descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    /// Something to read.
    Read,
    /// Room to write.
    Write,
    /// Either.
    Both,
}

/// Waits until one of `fds` is ready as its [`Interest`] asks, or
/// `timeout` passes, with microsecond resolution (`ppoll(2)`). Returns how
/// many descriptors are ready. Used by loops that run without an async
/// runtime: the UDP workers' send path, the load driver and the null
/// responder in `sim/`.
pub fn wait(fds: &[(RawFd, Interest)], timeout: std::time::Duration) -> io::Result<usize> {
    const MAX: usize = 16;
    if fds.len() > MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "at most 16 descriptors",
        ));
    }
    let mut p = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX];
    for (slot, &(fd, interest)) in p.iter_mut().zip(fds) {
        slot.fd = fd;
        slot.events = match interest {
            Interest::Read => libc::POLLIN,
            Interest::Write => libc::POLLOUT,
            Interest::Both => libc::POLLIN | libc::POLLOUT,
        };
    }
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: p holds fds.len() initialized pollfd structs and ts is a
    // valid timespec; both live across the call; no signal mask is given.
    let n = unsafe {
        libc::ppoll(
            p.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    Ok(n as usize)
}

/// What [`send_all`] did with a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams the kernel took.
    pub sent: usize,
    /// Datagrams skipped after a hard error for their destination.
    pub failed: usize,
    /// Datagrams given up on because the socket stayed full past the
    /// deadline.
    pub timed_out: usize,
}

/// Sends everything `batch` holds on `fd` and empties it. When the send
/// buffer is full it sleeps until the socket is *writable* (a socket with
/// something to read does not wake it, so it never spins), for at most
/// `max_wait` in all; what is still queued then is dropped and counted. A
/// hard error for one destination (an ICMP unreachable reported late, say)
/// skips that datagram and keeps the rest. The one send loop the workers,
/// the null responder and the load driver share.
pub fn send_all(batch: &mut SendBatch, fd: RawFd, max_wait: std::time::Duration) -> Sent {
    let mut r = Sent::default();
    let deadline = std::time::Instant::now() + max_wait;
    while batch.pending() > 0 {
        match batch.send(fd) {
            Ok(n) => r.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    r.timed_out += batch.pending();
                    break;
                }
                let _ = wait(&[(fd, Interest::Write)], left);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                r.failed += 1;
                batch.skip_one();
            }
        }
    }
    batch.clear();
    r
}

/// Asks the kernel to wake this thread within about `ns` nanoseconds of a
/// timeout it asked for (`PR_SET_TIMERSLACK`; the default slack is 50 µs).
/// A pacing loop (the load driver) uses it to sleep between sends instead
/// of spinning, which on a 2-core machine would steal a core from the
/// server it measures.
pub fn set_timer_slack(ns: u64) -> io::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches no
    // memory of ours.
    let r = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Binds one UDP socket on `addr` with `SO_REUSEPORT` and `buffer`-byte
/// send and receive buffers, non-blocking. Several sockets bound this way
/// on one address share its traffic, spread by the kernel.
pub fn bind_udp(addr: SocketAddr, buffer: usize) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // The kernel caps these at net.core.{r,w}mem_max; a smaller buffer is
    // not an error.
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A client's UDP socket: like [`bind_udp`] but its port is its own (no
/// `SO_REUSEPORT`). With `SO_REUSEPORT`, a bind to port 0 may be given a
/// port another socket of the same user already holds, and the kernel
/// then shares the answers between the two: a load driver's whole run of
/// answers could go to another process's socket.
pub fn bind_udp_client(addr: SocketAddr, buffer: usize) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_storage(addr: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any
            // sockaddr type; we write a complete sockaddr_in into it.
            let sin: &mut libc::sockaddr_in =
                unsafe { &mut *(s as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: &mut libc::sockaddr_in6 =
                unsafe { &mut *(s as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Makes every file the process creates from now on private to its user
/// (`umask 077`), whatever the umask it was started with: the data
/// directory's store, WAL and audit log are never readable by others.
pub fn private_umask() {
    // SAFETY: umask takes a mode and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// The process's effective user id.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}

/// Raises the soft limit on open files to the hard limit, so the TCP
/// connection caps, not the limit, bound what kuzet holds; returns the
/// soft limit now in force.
pub fn raise_open_files() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass by pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// Memory shared with a file (or, with no file, anonymous), seen as an
/// array of 64-bit atomics: the record queue lives in one, so what the
/// call path puts there outlives a crash of the process (the kernel keeps
/// a shared mapping's pages and writes them to the file). Only atomic
/// loads and stores touch it: several threads write it at once, each in
/// its own reserved range.
pub struct SharedWords {
    ptr: *mut libc::c_void,
    words: usize,
}

// SAFETY: the mapping is only reached through `&[AtomicU64]`, which is
// Sync; the pointer itself is never handed out mutably.
unsafe impl Send for SharedWords {}
// SAFETY: as above.
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// Maps the first `words` × 8 bytes of `file`, shared and read-write,
    /// after setting its length to exactly that.
    pub fn map_file(file: &std::fs::File, words: usize) -> io::Result<SharedWords> {
        use std::os::fd::AsRawFd;
        let len = words
            .checked_mul(8)
            .ok_or_else(|| io::Error::other("mapping too large"))?;
        file.set_len(len as u64)?;
        // SAFETY: a fresh shared mapping of a file we hold open, of the
        // length we just gave it; no Rust object aliases the memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedWords { ptr, words })
    }

    /// Anonymous zeroed memory of `words` words (no file behind it).
    pub fn anonymous(words: usize) -> io::Result<SharedWords> {
        let len = words
            .checked_mul(8)
            .ok_or_else(|| io::Error::other("mapping too large"))?;
        // SAFETY: a fresh private anonymous mapping; nothing aliases it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedWords { ptr, words })
    }

    /// The memory as atomics.
    pub fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: mmap returns page-aligned memory (so 8-byte aligned) of
        // `words * 8` bytes, valid until munmap in Drop; AtomicU64 has
        // the size and alignment of u64 and every bit pattern is valid;
        // all access goes through the atomics.
        unsafe {
            std::slice::from_raw_parts(self.ptr as *const std::sync::atomic::AtomicU64, self.words)
        }
    }

    /// Asks the kernel to write the mapping's dirty pages to the file now,
    /// without waiting (what a power cut would otherwise lose).
    pub fn flush_async(&self) -> io::Result<()> {
        // SAFETY: the range is exactly our mapping.
        let r = unsafe { libc::msync(self.ptr, self.words * 8, libc::MS_ASYNC) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in the constructor; the
        // slices handed out borrow self, so none outlives this.
        unsafe {
            libc::munmap(self.ptr, self.words * 8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_round_trip_over_real_sockets() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        let mut send = SendBatch::new(8);
        for i in 0..5u8 {
            let buf = send.next_buf().unwrap();
            buf.clear();
            buf.extend_from_slice(&[b'x', i]);
            send.commit(b.local_addr().unwrap());
        }
        assert_eq!(send.send(a.as_raw_fd()).unwrap(), 5);
        b.set_nonblocking(false).unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut got = 0;
        let mut recv = RecvBatch::new(8);
        while got < 5 {
            let mut one = [0u8; 4];
            // Wait for the first datagram, then take the rest in a batch.
            let _ = b.peek_from(&mut one).unwrap();
            let n = recv.recv(b.as_raw_fd()).unwrap();
            for i in 0..n {
                let (d, src) = recv.get(i).unwrap();
                assert_eq!(d, &[b'x', (got + i) as u8]);
                assert_eq!(src, a.local_addr().unwrap());
            }
            got += n;
        }
        assert!(
            matches!(recv.recv(b.as_raw_fd()), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        );
    }

    #[test]
    fn kernel_receive_timestamps_come_with_each_datagram() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut recv = RecvBatch::new(4);
        // Without the option: no stamp.
        a.send_to(b"one", b.local_addr().unwrap()).unwrap();
        let _ = b.peek_from(&mut [0u8; 4]).unwrap();
        assert_eq!(recv.recv(b.as_raw_fd()).unwrap(), 1);
        assert!(recv.arrival(0).is_none());
        enable_rx_timestamps(&b).unwrap();
        let before = std::time::SystemTime::now();
        a.send_to(b"two", b.local_addr().unwrap()).unwrap();
        // Once a peek sees it, the datagram is queued (on a loaded machine
        // loopback delivery can lag the send); then it waits in the queue,
        // and the stamp says when it came, not when it was read.
        let _ = b.peek_from(&mut [0u8; 4]).unwrap();
        let queued = std::time::SystemTime::now();
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert_eq!(recv.recv(b.as_raw_fd()).unwrap(), 1);
        let read = std::time::SystemTime::now();
        assert_eq!(recv.get(0).unwrap().0, b"two");
        let at = recv.arrival(0).expect("a kernel timestamp");
        assert!(
            at >= before - std::time::Duration::from_millis(5),
            "{at:?} {before:?}"
        );
        assert!(
            at <= queued && at + std::time::Duration::from_millis(25) <= read,
            "stamped on arrival, not on reading: {at:?} {queued:?} {read:?}"
        );
    }

    /// Regression: the send path waited for "readable or writable", so a
    /// worker whose send buffer was full and whose socket had datagrams to
    /// read woke at once, again and again: a busy spin. A socket that is
    /// readable but full must put a `Write` wait to sleep.
    #[test]
    fn a_full_socket_with_input_waiting_sleeps_instead_of_spinning() {
        use std::os::unix::net::UnixDatagram;
        use std::time::{Duration, Instant};
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        // `a` is readable: b sent it something.
        b.send(b"ping").unwrap();
        // `a` is full: b never reads, so its queue fills and a's sends fail.
        let mut n = 0;
        while a.send(&[0u8; 1024]).is_ok() {
            n += 1;
            assert!(n < 1_000_000, "the peer's queue never filled");
        }
        let fd = a.as_raw_fd();
        assert_eq!(
            wait(&[(fd, Interest::Read)], Duration::from_secs(1)).unwrap(),
            1
        );
        assert_eq!(
            wait(&[(fd, Interest::Both)], Duration::from_secs(1)).unwrap(),
            1
        );
        let t0 = Instant::now();
        let ready = wait(&[(fd, Interest::Write)], Duration::from_millis(200)).unwrap();
        assert_eq!(ready, 0, "not writable: the wait must time out");
        assert!(
            t0.elapsed() >= Duration::from_millis(150),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn send_all_sends_skips_failures_and_empties_the_batch() {
        use std::time::Duration;
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut batch = SendBatch::new(8);
        for i in 0..3u8 {
            let buf = batch.next_buf().unwrap();
            buf.clear();
            buf.push(i);
            batch.commit(b.local_addr().unwrap());
        }
        // An IPv6 destination on an IPv4 socket: a hard error for that one.
        let buf = batch.next_buf().unwrap();
        buf.clear();
        buf.push(9);
        batch.commit("[::1]:9".parse().unwrap());
        let r = send_all(&mut batch, a.as_raw_fd(), Duration::from_millis(100));
        assert_eq!((r.sent, r.failed, r.timed_out), (3, 1, 0));
        assert_eq!(batch.pending(), 0);
        let mut got = [0u8; 4];
        for i in 0..3u8 {
            assert_eq!(b.recv(&mut got).unwrap(), 1);
            assert_eq!(got[0], i);
        }
    }

    #[test]
    fn a_client_socket_keeps_its_port_to_itself() {
        let c = bind_udp_client("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        assert!(!socket2::SockRef::from(&c).reuse_port().unwrap());
        // So no server socket can join it on its port.
        let port = c.local_addr().unwrap();
        assert!(bind_udp(port, 1 << 20).is_err());
        // The servers' own sockets share theirs, as the workers do.
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        assert!(bind_udp(a.local_addr().unwrap(), 1 << 20).is_ok());
    }
}
