//! Transports: UDP workers with batched syscalls, and SIP over TCP.
//!
//! Each UDP worker is an OS thread with a single-threaded tokio runtime and
//! its own `SO_REUSEPORT` socket on the listen address, so the kernel
//! spreads sources across cores and no worker shares a scheduler or a lock
//! with another. TCP runs on its own thread. Both call the same
//! [`Handler`](crate::handler::Handler); neither ever awaits anything but
//! its own socket.

pub mod mmsg;
pub mod tcp;
pub mod udp;

use std::net::SocketAddr;
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::mpsc;

/// Open TCP connections by id, so a UDP worker that routes a response
/// back to a TCP client (proxy mode) can hand it to that connection.
pub type Connections = Arc<DashMap<u64, mpsc::Sender<Vec<u8>>>>;

/// Binds one UDP socket on `addr` with `SO_REUSEPORT` and big buffers.
pub fn bind_udp(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
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
