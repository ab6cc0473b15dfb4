//! Transports: UDP workers with batched syscalls, and SIP over TCP.
//!
//! Each UDP worker is a plain OS thread (no async runtime) blocked in
//! `recvmmsg` on its own `SO_REUSEPORT` socket on the listen address, so the
//! kernel spreads sources across cores and no worker shares a scheduler
//! with another. TCP runs on its own thread with a current-thread tokio
//! runtime. Both call the same [`Handler`](crate::handler::Handler);
//! neither ever awaits anything but its own socket.

pub mod tcp;
pub mod udp;

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::mpsc;

/// Open TCP connections by id, so a UDP worker that routes a response
/// back to a TCP client (proxy mode) can hand it to that connection.
pub type Connections = Arc<DashMap<u64, mpsc::Sender<Vec<u8>>>>;
