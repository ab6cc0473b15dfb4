//! The control plane's thread: list and rule reloads, stats, behaviour
//! state sweeps and the watch on lost records, on a runtime of its own;
//! and the investigators' API, on another.
//!
//! [`run`] owns a current-thread tokio runtime on the `kuzet-control`
//! thread. It never shares a scheduler with a SIP worker, so a slow reload
//! of a 10M-number list never delays a call; each reload runs on a thread
//! of its own. [`serve_api`] runs the investigators' API on the
//! `kuzet-api` thread's own runtime, so no amount of queries or exports
//! holds up a reload, `/readyz` or the reporter. The recorder is in
//! [`crate::recorder`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kuzet_dataplane::counter_set;
use kuzet_dataplane::metrics::{Counter, Gauge, Metrics};
use kuzet_dataplane::Handler;
use tokio::sync::watch;

use crate::lists::LoadError;
use crate::publish::Publisher;
use crate::recorder::RecorderCounters;

counter_set! {
    /// The behaviour state sweeps the stats loop runs.
    pub struct SweepCounters {
        started => "state_sweeps_started_total", "Sweeps of the behaviour state begun (off the control runtime)",
        finished => "state_sweeps_total", "Sweeps of the behaviour state finished",
    }
}

/// How often the control plane does its periodic work.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How often list and rule files are checked for changes.
    pub reload_interval: Duration,
    /// A reload still running after this long is abandoned; the lists in
    /// force stay.
    pub reload_timeout: Duration,
    /// How often counters are logged and behaviour state is swept.
    pub stats_interval: Duration,
    /// Reload on SIGHUP (off in tests, where many engines share a process).
    pub handle_sighup: bool,
}

/// The investigators' API: its TCP listener (under the connection guard), the
/// Unix socket in the data directory when there is one, and the service.
pub struct Api {
    /// The control address, bound.
    pub listener: std::net::TcpListener,
    /// The data directory's `control.sock`, bound.
    pub uds: Option<std::os::unix::net::UnixListener>,
    /// The service.
    pub svc: crate::investigate::Investigation,
    /// Caps and deadlines for the TCP connections.
    pub guard: Arc<crate::guard::ConnGuard>,
    /// The rule authors' publishing services, when anything is published.
    pub publishing: Option<Arc<crate::publishing::Publishing>>,
    /// The Centre's cases (`kuzet.cases.v1`).
    pub cases: Option<Arc<crate::nbfeed::service::CaseService>>,
    /// The cluster's nodes (`kuzet.cluster.v1`).
    pub nodes: Option<Arc<crate::cluster::NodeService>>,
    /// The journal's trends read on a timer, their counts served as
    /// gauges (with a journal and `[journal] trends_every_s`).
    pub trend_watch: Option<(Arc<Metrics>, crate::publishing::backtest::TrendWatch)>,
}

/// Serves the investigators' API on a runtime of its own (the calling
/// thread's), until `shutdown`: however many queries and exports arrive,
/// they never hold up reloads, the admin address or the reporter, which
/// live on the control runtime. Its blocking pool, where SQLite runs, is
/// bounded.
pub fn serve_api(api: Api, shutdown: watch::Receiver<bool>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(API_BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "control API runtime failed to start");
            return;
        }
    };
    rt.block_on(async move {
        let uds = match api.uds {
            Some(u) => match u
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UnixListener::from_std(u))
            {
                Ok(u) => Some(u),
                Err(e) => {
                    tracing::error!(error = %e, "the control socket failed; local access is off");
                    None
                }
            },
            None => None,
        };
        let flusher = tokio::spawn(crate::gate::flush_refusals(
            api.svc.gate().clone(),
            shutdown.clone(),
        ));
        if let (Some(p), Some((m, w))) = (&api.publishing, api.trend_watch) {
            p.spawn_trend_watch(m, w);
        }
        let server = tokio::spawn(crate::investigate::serve(
            api.listener,
            uds,
            api.svc,
            crate::investigate::Beside {
                publishing: api.publishing,
                cases: api.cases,
                nodes: api.nodes,
            },
            api.guard,
            shutdown.clone(),
        ));
        let mut stop = shutdown;
        let _ = stop.wait_for(|s| *s).await;
        // The last refusals reach the audit log; open connections (an
        // idle client, an export nobody reads) get a moment to finish and
        // are then dropped: shutdown never waits on a client.
        let _ = tokio::time::timeout(Duration::from_secs(5), flusher).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    });
    rt.shutdown_background();
}

/// Threads the control API's queries and exports may use at once.
pub(crate) const API_BLOCKING_THREADS: usize = 24;

/// The services the control plane runs besides reloads and stats.
#[derive(Default)]
pub struct Services {
    /// The register and the outbox that feeds it.
    pub reporter: Option<(crate::report::Target, Arc<dyn kuzet_store::Outbox>)>,
    /// `/metrics` and health checks, on their bound listener, with the
    /// guard that caps its connections.
    pub admin: Option<(
        std::net::TcpListener,
        crate::admin::Admin,
        Arc<crate::guard::ConnGuard>,
    )>,
    /// The store's outbox, for its gauges.
    pub outbox: Option<Arc<dyn kuzet_store::Outbox>>,
    /// Wakes the reload loop at once (a published version went into
    /// force), instead of at its next poll.
    pub nudge: crate::publishing::Nudge,
    /// The National Bank's Anti-Fraud Centre, when `[nbank]` is set.
    pub nbank: Option<crate::nbfeed::Nbank>,
    /// Shared counts through Redis, when `[cluster] redis_url` or
    /// `redis_cluster_urls` is set:
    /// the section and this node.
    pub cluster: Option<(crate::cluster::ClusterConfig, crate::cluster::Me)>,
    /// The singletons' leases, when `[cluster]` is on and the store is
    /// shared by every node ([`crate::lease::Leases::for_cluster`]): the
    /// register reporter and the Centre's singletons run only while this
    /// node leads them. None: they run here as on a node alone.
    pub leases: Option<Arc<crate::lease::Leases>>,
    /// Published versions shared by the cluster's nodes: their follower.
    pub versions: Option<Arc<crate::publishing::shared::SharedVersions>>,
}

/// Runs the control plane on the current thread until `shutdown` turns
/// true. Reloading and the periodic work (stats, sweeps) are separate
/// tasks, so a reload that takes seconds never holds up a sweep; and
/// shutdown does not wait for a reload in progress.
pub fn run(
    timing: Timing,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    handler: Arc<Handler>,
    services: Services,
) {
    let Some(rt) = small_runtime("control") else {
        return;
    };
    let Services {
        reporter,
        admin,
        outbox,
        nudge,
        nbank,
        cluster,
        leases,
        versions,
    } = services;
    let follower = rt.block_on(async move {
        tokio::spawn(reload_loop(timing, publisher, shutdown.clone(), nudge));
        tokio::spawn(stats_loop(timing, metrics.clone(), handler.clone()));
        tokio::spawn(loss_watch(metrics.clone()));
        if let Some((listener, admin, guard)) = admin {
            tokio::spawn(crate::admin::serve(
                listener,
                admin,
                guard,
                shutdown.clone(),
            ));
        }
        if let Some(nb) = nbank {
            nb.spawn(shutdown.clone(), leases.clone());
        }
        if let Some((cfg, me)) = cluster {
            tokio::spawn(crate::cluster::run(
                cfg,
                me,
                handler.clone(),
                metrics.clone(),
                shutdown.clone(),
            ));
        }
        let follower = versions.and_then(|v| match v.start(shutdown.clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "no thread for the shared versions' follower: this node does not follow them");
                None
            }
        });
        if let Some(outbox) = outbox {
            tokio::spawn(outbox_gauges(outbox, metrics.clone()));
        }
        if let Some((target, outbox)) = reporter {
            match leases.map(|l| l.get(crate::lease::Singleton::RegisterOutbox)) {
                None => {
                    tokio::spawn(crate::report::run(
                        target,
                        outbox,
                        metrics.clone(),
                        shutdown.clone(),
                    ));
                }
                Some(lease) => {
                    let outbox = crate::lease::fenced::outbox(outbox, lease.clone());
                    let m = metrics.clone();
                    crate::lease::singleton::spawn(
                        "the register reporter",
                        Some(lease),
                        shutdown.clone(),
                        move |sd| crate::report::run(target.clone(), outbox.clone(), m.clone(), sd),
                        || {},
                    );
                }
            }
        }
        let _ = shutdown.changed().await;
        follower
    });
    // A reload still running on the blocking pool is abandoned, not waited
    // for: it swaps nothing once nobody holds the snapshot.
    rt.shutdown_background();
    // The follower ends its step (it checks the shutdown between
    // contents), so no shelf is written once kuzet has stopped.
    if let Some(t) = follower {
        let _ = t.join();
    }
}

/// Polls the sources every reload interval (and reloads everything on
/// SIGHUP); when the publisher has dirty layers and no back-off holds
/// them, builds them on a thread of its own, abandoning the build past the
/// reload timeout. A failed or abandoned build leaves its layers dirty, so
/// it is tried again (see [`Publisher::apply`]).
pub(crate) async fn reload_loop(
    timing: Timing,
    mut publisher: Publisher,
    mut shutdown: watch::Receiver<bool>,
    nudge: crate::publishing::Nudge,
) {
    let mut poll = tokio::time::interval(timing.reload_interval.max(Duration::from_millis(50)));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    #[cfg(unix)]
    let mut hup = if timing.handle_sighup {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    } else {
        None
    };
    loop {
        #[cfg(unix)]
        let hup_fut = signal_or_never(hup.as_mut());
        let hupped = tokio::select! {
            _ = shutdown.changed() => return,
            _ = poll.tick() => false,
            _ = nudge.notified() => false,
            _ = hup_fut => true,
        };
        let retrying = !publisher.dirty().is_empty();
        if hupped {
            publisher.reload_all();
        } else {
            // A stat per file: cheap, and it never blocks on a FIFO.
            publisher.poll();
        }
        if !publisher.due(std::time::Instant::now()) {
            continue;
        }
        let why = match (hupped, retrying) {
            (true, _) => "SIGHUP",
            (false, true) => "retry",
            (false, false) => "change",
        };
        // Loading a big list takes seconds: it runs on a thread of its
        // own (at this thread's priority), never on a shared pool, so no
        // amount of other work (queries, exports) can hold a reload back,
        // and this runtime's timers keep running.
        let job = publisher.job();
        let cancel = job.cancel.clone();
        let started = std::time::Instant::now();
        let (done, mut task) = tokio::sync::oneshot::channel();
        if let Err(e) = std::thread::Builder::new()
            .name("kuzet-reload".into())
            .spawn(move || {
                let _ = done.send(job.run());
            })
        {
            publisher.apply(
                why,
                Err(LoadError::Crashed(format!("no reload thread: {e}"))),
                started,
            );
            continue;
        }
        let outcome = tokio::select! {
            _ = shutdown.changed() => {
                cancel.store(true, Ordering::Relaxed);
                return;
            }
            r = tokio::time::timeout(timing.reload_timeout, &mut task) => r,
        };
        match outcome {
            Ok(Ok(built)) => {
                publisher.apply(why, built, started);
            }
            Ok(Err(_)) => {
                // A panic in a loader is a bug; the lists in force stay.
                publisher.apply(
                    why,
                    Err(LoadError::Crashed("the reload thread panicked".into())),
                    started,
                );
            }
            Err(_) => {
                cancel.store(true, Ordering::Relaxed);
                publisher.apply(why, Err(LoadError::Abandoned(started.elapsed())), started);
                // The abandoned load sees the flag within a few thousand
                // lines; until it has stopped no other load starts, so two
                // copies of a big list never sit in memory at once. A read
                // that never returns (a hung network mount) stops reloads,
                // but never calls, stats or shutdown.
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = &mut task => {}
                }
            }
        }
    }
}

/// Reads the outbox's backlog and dead letters for `/metrics`, every
/// few seconds, on a blocking thread (a count over an index: quick, but
/// the outbox port blocks all the same).
async fn outbox_gauges(outbox: Arc<dyn kuzet_store::Outbox>, metrics: Arc<Metrics>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let o = outbox.clone();
        match tokio::task::spawn_blocking(move || o.backlog()).await {
            Ok(Ok(b)) => {
                metrics.set(Gauge::OutboxPending, b.pending as i64);
                metrics.set(Gauge::OutboxDeadLetters, b.dead_letters as i64);
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "reading the outbox gauges"),
            Err(_) => {}
        }
    }
}

/// Watches what is lost, once a second. Every loss of a record (or of a
/// sample, a low-value record, an unreadable queue entry) is logged at
/// WARN with its counts, at most one line per ten seconds while it goes
/// on; records lost in 5 of the last 10 seconds make the node unready
/// until a quiet stretch. The counters and the alert rules say the same
/// to Prometheus.
async fn loss_watch(metrics: Arc<Metrics>) {
    const WATCHED: [Counter; 4] = [
        Counter::StoreDropped,
        Counter::VerdictIdsWithheld,
        Counter::StoreLowValueRefused,
        Counter::StoreSamplesSkipped,
    ];
    let recorder = metrics.counter_set::<RecorderCounters>();
    // The call path's losses, then the recorder's unreadable entries.
    let read = || {
        let c = WATCHED.map(|c| metrics.get(c));
        [c[0], c[1], c[2], c[3], recorder.unreadable.get()]
    };
    let mut journal = JournalLoss::new(metrics.get(Counter::JournalDropped));
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = read();
    let mut pending = [0u64; 5];
    let mut logged_at: Option<std::time::Instant> = None;
    let mut window = [false; 10];
    let mut slot = 0usize;
    loop {
        every.tick().await;
        journal.watch(&metrics);
        let now = read();
        let mut lost_now = false;
        for i in 0..now.len() {
            let d = now[i].saturating_sub(last[i]);
            pending[i] += d;
            if i == 0 && d > 0 {
                lost_now = true;
            }
        }
        last = now;
        window[slot] = lost_now;
        slot = (slot + 1) % window.len();
        let sustained = window.iter().filter(|l| **l).count() >= 5;
        if sustained != (metrics.gauge(Gauge::RecordLossSustained) == 1) {
            metrics.set(Gauge::RecordLossSustained, i64::from(sustained));
            if sustained {
                tracing::warn!("records are being lost in most of the last 10 seconds: the node reports not ready until they stop");
            } else {
                tracing::warn!(
                    "no records lost for a while: the node is ready again as far as records go"
                );
            }
        }
        if pending.iter().any(|p| *p > 0)
            && logged_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                records_lost = pending[0],
                verdict_ids_withheld = pending[1],
                low_value_refused = pending[2],
                samples_skipped = pending[3],
                unreadable = pending[4],
                lost_total = now[0],
                "records not kept since the last report (see store_dropped_total and the store's size and queue)"
            );
            pending = [0; 5];
            logged_at = Some(std::time::Instant::now());
        }
    }
}

/// The call journal's queue overflowing (`journal_dropped_total`): said
/// at WARN with its count at most every ten seconds, and, while entries
/// were dropped in 5 of the last 10 seconds, a `/readyz` warning (calls
/// are not affected, so the node stays ready).
struct JournalLoss {
    last: u64,
    pending: u64,
    logged_at: Option<std::time::Instant>,
    window: [bool; 10],
    slot: usize,
}

impl JournalLoss {
    fn new(now: u64) -> JournalLoss {
        JournalLoss {
            last: now,
            pending: 0,
            logged_at: None,
            window: [false; 10],
            slot: 0,
        }
    }

    fn watch(&mut self, metrics: &Metrics) {
        let now = metrics.get(Counter::JournalDropped);
        let d = now.saturating_sub(self.last);
        self.last = now;
        self.pending += d;
        self.window[self.slot] = d > 0;
        self.slot = (self.slot + 1) % self.window.len();
        let sustained = self.window.iter().filter(|l| **l).count() >= 5;
        metrics.set(Gauge::JournalDropping, i64::from(sustained));
        if self.pending > 0
            && self
                .logged_at
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                dropped = self.pending,
                dropped_total = now,
                "call journal entries dropped since the last report: its queue was full (journal_dropped_total); the writer runs only on idle CPU, and calls are not affected"
            );
            self.pending = 0;
            self.logged_at = Some(std::time::Instant::now());
        }
    }
}

/// Every stats interval: sweeps the behaviour state and logs counters and
/// service time. The sweep walks every slot of the tables (O(capacity):
/// about 170 MB at the default cap), so it runs on a blocking thread and
/// this runtime (reloads, `/metrics`, `/readyz`, the reporter, SIGHUP)
/// goes on meanwhile; the next sweep waits for the last.
async fn stats_loop(timing: Timing, metrics: Arc<Metrics>, handler: Arc<Handler>) {
    let mut stats = tokio::time::interval(timing.stats_interval.max(Duration::from_secs(1)));
    stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    stats.tick().await;
    let mut calls_untracked = 0;
    let sweeps = metrics.counter_set::<SweepCounters>();
    loop {
        stats.tick().await;
        let (h, s) = (handler.clone(), sweeps.clone());
        let swept = tokio::task::spawn_blocking(move || {
            s.started.inc();
            let started = std::time::Instant::now();
            let dropped = h.sweep();
            s.finished.inc();
            (dropped, started.elapsed())
        })
        .await;
        let (dropped, took) = match swept {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "the behaviour state sweep failed");
                (0, Duration::ZERO)
            }
        };
        let (callers, destinations, untracked) = handler.tracked();
        let calls = handler.calls_in_progress();
        metrics.set(Gauge::CallsInProgress, calls as i64);
        let not_followed = metrics.get(Counter::CallsUntracked);
        if not_followed > calls_untracked {
            tracing::warn!(
                calls_not_followed = not_followed - calls_untracked,
                total = not_followed,
                calls_in_progress = calls,
                "the call table is full: new calls are not followed to their end (their outcomes are not learnt); raise [rules] max_tracked_numbers"
            );
            calls_untracked = not_followed;
        }
        tracing::info!(
            callers,
            destinations,
            dropped,
            untracked,
            sweep_ms = took.as_millis() as u64,
            "behaviour state"
        );
        tracing::info!("{}", metrics.counters_line());
        tracing::info!("{}", metrics.latency_line());
    }
}

/// Waits for the next delivery of a signal, or forever when none was
/// installed, so `select!` arms stay uniform.
#[cfg(unix)]
pub async fn signal_or_never(sig: Option<&mut tokio::signal::unix::Signal>) {
    match sig {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// A single-threaded runtime for one of kuzet's own threads; logs and
/// returns `None` if the OS refuses one.
pub fn small_runtime(what: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            tracing::error!(error = %e, "{what} runtime failed to start");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Journal entries dropped in most of ten seconds raise the flag
    /// `/readyz` warns on; a quiet stretch lowers it, and a dropped entry
    /// now and then never raises it.
    #[test]
    fn journal_drops_that_persist_raise_the_readyz_flag_and_quiet_lowers_it() {
        let m = Metrics::default();
        let mut w = JournalLoss::new(0);
        let second = |w: &mut JournalLoss, dropped: u64| {
            for _ in 0..dropped {
                m.inc(Counter::JournalDropped);
            }
            w.watch(&m);
            m.gauge(Gauge::JournalDropping)
        };
        // One second in three: never most of ten.
        for s in 0..30 {
            assert_eq!(second(&mut w, u64::from(s % 3 == 0)), 0, "second {s}");
        }
        // Every second: the flag is up once 5 of the last 10 dropped.
        let raised: Vec<i64> = (0..6).map(|_| second(&mut w, 100)).collect();
        assert_eq!(raised.last(), Some(&1), "{raised:?}");
        assert!(
            raised.iter().filter(|f| **f == 1).count() >= 2,
            "{raised:?}"
        );
        // The first drop was said at once; the rest wait, counted, for the
        // next line ten seconds on.
        assert_eq!(w.pending, 9 + 600);
        // Quiet: down again within ten seconds.
        let lowered: Vec<i64> = (0..10).map(|_| second(&mut w, 0)).collect();
        assert_eq!(lowered.last(), Some(&0), "{lowered:?}");
    }
}
