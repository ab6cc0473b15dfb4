//! Running a singleton's task only while this node leads its lease.
//!
//! [`spawn`] starts the lease's keeper and, each time the node comes to
//! lead, a fresh task; when the lead ends (not renewed in time, taken
//! over, or a write refused as fenced) the task is aborted at its next
//! await, and the node waits to lead again. A task aborted mid-way leaves
//! what a SIGKILL would: every singleton is written to survive one (an
//! entry claimed but not marked delivered is sent again under its
//! idempotency key, a batch not yet kept is fetched again), and a write
//! it had already handed to a blocking thread carries the old token,
//! which the store refuses. [`spawn_follower`] is the other side: work
//! that runs while the node does *not* lead (keeping the feed's layer in
//! step with what the leader stored).
//!
//! Without a lease, [`spawn`] runs the task as it always ran: supervised
//! ([`supervise`]), started again a second after a panic.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Lease;

/// Runs the task `make` makes: while this node leads `lease`, or, with
/// no lease, always (see the module docs). `on_lost` runs each time a
/// lead ends and its task is stopped (to zero what only the leader
/// reports, say).
pub fn spawn<F, Fut>(
    what: &'static str,
    lease: Option<Arc<Lease>>,
    shutdown: watch::Receiver<bool>,
    make: F,
    on_lost: impl Fn() + Send + 'static,
) where
    F: Fn(watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(lease) = lease else {
        supervise(what, shutdown, make);
        return;
    };
    lease.keep(shutdown.clone());
    tokio::spawn(async move {
        let mut sd = shutdown.clone();
        loop {
            let Some(mut term) = lease.wait_leader(&mut sd).await else {
                return;
            };
            tracing::info!(
                task = what,
                lease = lease.name(),
                token = term.token(),
                "started: this node leads"
            );
            match run_until(what, &make, &shutdown, term.lost()).await {
                Ended::Shutdown => return,
                Ended::Stopped => {
                    tracing::info!(
                        task = what,
                        lease = lease.name(),
                        "stopped: this node no longer leads"
                    );
                    on_lost();
                }
            }
        }
    });
}

/// Runs the task `make` makes while this node does not lead `lease`,
/// stopping it when the node comes to lead.
pub fn spawn_follower<F, Fut>(
    what: &'static str,
    lease: Arc<Lease>,
    shutdown: watch::Receiver<bool>,
    make: F,
) where
    F: Fn(watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    lease.keep(shutdown.clone());
    tokio::spawn(async move {
        let mut sd = shutdown.clone();
        loop {
            if !lease.wait_follower(&mut sd).await {
                return;
            }
            let leads = {
                let (lease, mut sd) = (lease.clone(), shutdown.clone());
                async move {
                    let _ = lease.wait_leader(&mut sd).await;
                }
            };
            if let Ended::Shutdown = run_until(what, &make, &shutdown, leads).await {
                return;
            }
        }
    });
}

/// Why [`run_until`] returned.
enum Ended {
    /// The process is shutting down (the task was told, and ends itself).
    Shutdown,
    /// `stop` resolved: the task was aborted.
    Stopped,
}

/// Runs `make`'s task, again a second after a panic, until `stop`
/// resolves (the task aborted) or shutdown. A task that ends on its own
/// is not started again until the next call.
async fn run_until<F, Fut>(
    what: &'static str,
    make: &F,
    shutdown: &watch::Receiver<bool>,
    stop: impl Future<Output = ()>,
) -> Ended
where
    F: Fn(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(stop);
    let mut sd = shutdown.clone();
    loop {
        if *sd.borrow_and_update() {
            return Ended::Shutdown;
        }
        let mut task = tokio::spawn(make(shutdown.clone()));
        let r = tokio::select! {
            r = &mut task => r,
            _ = &mut stop => {
                task.abort();
                let _ = task.await;
                return Ended::Stopped;
            }
            _ = sd.changed() => return Ended::Shutdown,
        };
        if *shutdown.borrow() {
            return Ended::Shutdown;
        }
        let pause = match r {
            Err(e) if e.is_panic() => {
                tracing::error!(task = what, "panicked (a bug); started again in a second");
                Duration::from_secs(1)
            }
            // Ended on its own: nothing to run until the next term.
            _ => Duration::MAX,
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = &mut stop => return Ended::Stopped,
            _ = sd.changed() => return Ended::Shutdown,
        }
    }
}

/// Runs the task `make` makes until `shutdown`; a task that panics (a
/// bug) is logged at ERROR and started again a second later, so one bad
/// batch or report never stops the feed, its expiry or the outbox for the
/// rest of the process's life.
pub fn supervise<F, Fut>(name: &'static str, shutdown: watch::Receiver<bool>, make: F)
where
    F: Fn(watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let r = tokio::spawn(make(shutdown.clone())).await;
            if *shutdown.borrow() {
                return;
            }
            match r {
                Err(e) if e.is_panic() => {
                    tracing::error!(task = name, "panicked (a bug); started again in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                _ => return,
            }
        }
    });
}
