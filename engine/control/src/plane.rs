//! The control plane's thread: list and rule reloads, stats, behaviour
//! state sweeps and verdict logs, on a runtime of its own.
//!
//! [`run`] owns a current-thread tokio runtime on the `kuzet-control`
//! thread. It never shares a scheduler with a SIP worker, so a slow reload
//! of a 10M-number list never delays a call.

use std::sync::Arc;
use std::time::Duration;

use kuzet_dataplane::handler::RuleEvent;
use kuzet_dataplane::metrics::Metrics;
use kuzet_dataplane::Handler;
use tokio::sync::watch;

use crate::lists::Reloader;

/// How often the control plane does its periodic work.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How often list and rule files are checked for changes.
    pub reload_interval: Duration,
    /// How often counters are logged and behaviour state is swept.
    pub stats_interval: Duration,
    /// Reload on SIGHUP (off in tests, where many engines share a process).
    pub handle_sighup: bool,
}

/// Runs the control plane on the current thread until `shutdown` turns true.
pub fn run(
    timing: Timing,
    mut reloader: Reloader,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    handler: Arc<Handler>,
    events: std::sync::mpsc::Receiver<RuleEvent>,
) {
    let Some(rt) = small_runtime("control") else {
        return;
    };
    rt.block_on(async move {
        let mut poll = tokio::time::interval(timing.reload_interval.max(Duration::from_millis(50)));
        let mut stats = tokio::time::interval(timing.stats_interval.max(Duration::from_secs(1)));
        stats.tick().await;
        #[cfg(unix)]
        let mut hup = if timing.handle_sighup {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
        } else {
            None
        };
        loop {
            #[cfg(unix)]
            let hup_fut = signal_or_never(hup.as_mut());
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = poll.tick() => {
                    log_rule_events(&events);
                    // Loading a big list takes seconds: keep it off this
                    // runtime's timer by running it on a blocking thread.
                    reloader = tokio::task::spawn_blocking(move || { reloader.poll(); reloader })
                        .await
                        .expect("reload task does not panic");
                }
                _ = hup_fut => {
                    reloader = tokio::task::spawn_blocking(move || { reloader.reload("SIGHUP"); reloader })
                        .await
                        .expect("reload task does not panic");
                }
                _ = stats.tick() => {
                    let dropped = handler.sweep();
                    let (callers, destinations, untracked) = handler.tracked();
                    tracing::info!(callers, destinations, dropped, untracked, "behaviour state");
                    tracing::info!("{}", metrics.counters_line());
                    tracing::info!("{}", metrics.latency_line());
                }
            }
        }
    });
}

/// Logs every rule verdict the workers queued: decision, score, the
/// rules that fired with their values, and shadow results.
fn log_rule_events(events: &std::sync::mpsc::Receiver<RuleEvent>) {
    while let Ok(ev) = events.try_recv() {
        let Some(rules) = ev.set.rules.as_deref() else {
            continue;
        };
        let mut why = String::new();
        let _ = rules.explain(&ev.scored, &mut why);
        let show =
            |n: Option<kuzet_rules::Number>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
        tracing::info!(
            decision = ev.scored.decision.as_str(),
            shadow_decision = ev.scored.shadow_decision.as_str(),
            score = ev.scored.score,
            caller = %show(ev.a),
            callee = %show(ev.b),
            rules = %why,
            "rule verdict"
        );
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
