//! The control plane's thread: list and rule reloads, stats, behaviour
//! state sweeps and verdict logs, on a runtime of its own.
//!
//! [`run`] owns a current-thread tokio runtime on the `kuzet-control`
//! thread. It never shares a scheduler with a SIP worker, so a slow reload
//! of a 10M-number list never delays a call. [`log_verdicts`] runs on a
//! thread of its own and drains the verdict queue until the workers stop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kuzet_dataplane::handler::VerdictEvent;
use kuzet_dataplane::metrics::{Counter, Metrics};
use kuzet_dataplane::Handler;
use tokio::sync::watch;

use crate::lists::{LoadError, Reloader};

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

/// Runs the control plane on the current thread until `shutdown` turns
/// true. Reloading and the periodic work (stats, sweeps) are separate
/// tasks, so a reload that takes seconds never holds up a sweep; and
/// shutdown does not wait for a reload in progress.
pub fn run(
    timing: Timing,
    reloader: Reloader,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    handler: Arc<Handler>,
) {
    let Some(rt) = small_runtime("control") else {
        return;
    };
    rt.block_on(async move {
        tokio::spawn(reload_loop(timing, reloader, shutdown.clone()));
        tokio::spawn(stats_loop(timing, metrics, handler));
        let _ = shutdown.changed().await;
    });
    // A reload still running on the blocking pool is abandoned, not waited
    // for: it swaps nothing once nobody holds the snapshot.
    rt.shutdown_background();
}

async fn reload_loop(timing: Timing, mut reloader: Reloader, mut shutdown: watch::Receiver<bool>) {
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
        let why = tokio::select! {
            _ = shutdown.changed() => return,
            _ = poll.tick() => "file change",
            _ = hup_fut => "SIGHUP",
        };
        // A stat per file: cheap, and it never blocks on a FIFO.
        if why == "file change" && !reloader.changed() {
            continue;
        }
        // Loading a big list takes seconds: run it on a blocking thread so
        // this runtime's timers keep running.
        let job = reloader.job();
        let cancel = job.cancel.clone();
        let started = std::time::Instant::now();
        let mut task = tokio::task::spawn_blocking(move || job.run());
        let outcome = tokio::select! {
            _ = shutdown.changed() => {
                cancel.store(true, Ordering::Relaxed);
                return;
            }
            r = tokio::time::timeout(timing.reload_timeout, &mut task) => r,
        };
        match outcome {
            Ok(Ok(loaded)) => {
                reloader.apply(why, loaded, started);
            }
            Ok(Err(e)) => {
                // A panic in a loader is a bug; the lists in force stay.
                tracing::error!(error = %e, "list reload task failed; the lists in force stay");
            }
            Err(_) => {
                cancel.store(true, Ordering::Relaxed);
                reloader.apply(why, Err(LoadError::Abandoned(started.elapsed())), started);
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

async fn stats_loop(timing: Timing, metrics: Arc<Metrics>, handler: Arc<Handler>) {
    let mut stats = tokio::time::interval(timing.stats_interval.max(Duration::from_secs(1)));
    stats.tick().await;
    loop {
        stats.tick().await;
        let dropped = handler.sweep();
        let (callers, destinations, untracked) = handler.tracked();
        tracing::info!(callers, destinations, dropped, untracked, "behaviour state");
        tracing::info!("{}", metrics.counters_line());
        tracing::info!("{}", metrics.latency_line());
    }
}

/// Logs every verdict the workers queue, on its own thread, until every
/// sender is gone (the workers have stopped): nothing queued is lost at
/// shutdown. Each line carries what matches it to the switch's records:
/// Call-ID, source, transport and trunk, with the decision, score, numbers
/// and the explanation of every rule that fired.
pub fn log_verdicts(events: std::sync::mpsc::Receiver<VerdictEvent>, metrics: Arc<Metrics>) {
    // Woken by the first event, the thread lets more gather before it
    // drains them: at most one wake-up per pause instead of one per event,
    // so a burst of blocked calls costs the call path's core no context
    // switches (the queue holds far more than a pause's worth).
    while let Ok(first) = events.recv() {
        log_one(first, &metrics);
        std::thread::sleep(LOG_PAUSE);
        while let Ok(ev) = events.try_recv() {
            log_one(ev, &metrics);
        }
    }
}

/// How long the verdict log lets events gather after a wake-up.
const LOG_PAUSE: Duration = Duration::from_millis(5);

fn log_one(ev: VerdictEvent, metrics: &Metrics) {
    metrics.inc(Counter::VerdictsLogged);
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let show =
        |n: Option<kuzet_rules::Number>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    let mut why = String::new();
    let _ = ev.set.explain(&ev.scored, &mut why);
    tracing::info!(
        decision = ev.scored.decision.as_str(),
        shadow_decision = ev.scored.shadow_decision.as_str(),
        score = ev.scored.score,
        caller = %show(ev.a),
        callee = %show(ev.b),
        call_id = %ev.call_id,
        source = %ev.source,
        transport = if ev.tcp { "tcp" } else { "udp" },
        trunk = ev.trunk.as_deref().unwrap_or("-"),
        rules = %why,
        "verdict"
    );
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
