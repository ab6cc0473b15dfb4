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
use tokio::sync::{mpsc, Semaphore};

/// Open TCP connections by id, so a UDP worker that routes a response
/// back to a TCP client (proxy mode) can hand it to that connection.
pub type Connections = Arc<DashMap<u64, Outbox>>;

/// Answers waiting for one TCP connection: at most [`OUTBOX_MESSAGES`]
/// of them and [`OUTBOX_BYTES`] in all (one answer larger than that still
/// fits alone), so a peer that does not read holds a bounded amount.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Vec<u8>>,
    room: Arc<Semaphore>,
}

/// Answers one connection may have waiting.
pub const OUTBOX_MESSAGES: usize = 32;
/// Bytes of answers one connection may have waiting.
pub const OUTBOX_BYTES: usize = 64 * 1024;

/// The byte permits one answer takes (all of them for one larger than the
/// budget, which then waits alone).
fn permits(len: usize) -> u32 {
    len.min(OUTBOX_BYTES) as u32
}

impl Outbox {
    /// A new outbox and the end its writer drains. The queue closes when
    /// every [`Outbox`] is gone.
    pub fn new() -> (Outbox, OutboxReceiver) {
        let (tx, rx) = mpsc::channel(OUTBOX_MESSAGES);
        let room = Arc::new(Semaphore::new(OUTBOX_BYTES));
        (
            Outbox {
                tx,
                room: room.clone(),
            },
            OutboxReceiver { rx, room },
        )
    }

    /// Queues an answer without waiting; false (and nothing queued) when
    /// the outbox is full or closed.
    pub fn try_push(&self, msg: Vec<u8>) -> bool {
        let Ok(p) = self.room.try_acquire_many(permits(msg.len())) else {
            return false;
        };
        if self.tx.try_send(msg).is_err() {
            return false;
        }
        p.forget();
        true
    }

    /// Queues an answer, waiting for room; an error when the writer is gone.
    pub async fn push(&self, msg: Vec<u8>) -> Result<(), ()> {
        let p = self
            .room
            .acquire_many(permits(msg.len()))
            .await
            .map_err(|_| ())?;
        self.tx.send(msg).await.map_err(|_| ())?;
        p.forget();
        Ok(())
    }
}

/// The writer's end of an [`Outbox`].
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Vec<u8>>,
    room: Arc<Semaphore>,
}

impl OutboxReceiver {
    /// The next answer, or `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.rx.recv().await
    }

    /// Gives back the room an answer of `len` bytes took, once written.
    pub fn sent(&self, len: usize) {
        self.room.add_permits(permits(len) as usize);
    }
}
