//! The control plane's thread: list and rule reloads, stats, behaviour
//! state sweeps and verdict logs, on a runtime of its own.
//!
//! [`run`] owns a current-thread tokio runtime on the `kuzet-control`
//! thread. It never shares a scheduler with a SIP worker, so a slow reload
//! of a 10M-number list never delays a call. [`record_verdicts`] runs on a
//! thread of its own and drains the verdict queue into the log, HEP and
//! batches of records until the workers stop; a writer thread beside it
//! commits the batches to the store and retires old records between them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kuzet_dataplane::handler::evidence::unix_us;
use kuzet_dataplane::handler::VerdictEvent;
use kuzet_dataplane::metrics::{Counter, Gauge, Metrics};
use kuzet_dataplane::Handler;
use kuzet_store::{ListHitRec, Record, RuleHit, Store};
use tokio::sync::watch;

use crate::hep::HepSender;
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

/// The services the control plane runs besides reloads and stats.
#[derive(Default)]
pub struct Services {
    /// The investigators' gRPC API, on its bound listener.
    pub api: Option<(std::net::TcpListener, crate::investigate::Investigation)>,
    /// The register and the data directory whose outbox feeds it.
    pub reporter: Option<(crate::report::Target, std::path::PathBuf)>,
    /// `/metrics` and health checks, on their bound listener.
    pub admin: Option<(std::net::TcpListener, crate::admin::Admin)>,
    /// The store's directory, for the outbox gauges.
    pub store_dir: Option<std::path::PathBuf>,
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
    services: Services,
) {
    let Some(rt) = small_runtime("control") else {
        return;
    };
    let Services {
        api,
        reporter,
        admin,
        store_dir,
    } = services;
    rt.block_on(async move {
        tokio::spawn(reload_loop(timing, reloader, shutdown.clone()));
        tokio::spawn(stats_loop(timing, metrics.clone(), handler));
        if let Some((listener, svc)) = api {
            tokio::spawn(crate::investigate::serve(listener, svc, shutdown.clone()));
        }
        if let Some((listener, admin)) = admin {
            tokio::spawn(crate::admin::serve(listener, admin, shutdown.clone()));
        }
        if let Some(dir) = store_dir {
            tokio::spawn(outbox_gauges(dir, metrics.clone()));
        }
        if let Some((target, dir)) = reporter {
            tokio::spawn(crate::report::run(
                target,
                dir,
                metrics.clone(),
                shutdown.clone(),
            ));
        }
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

/// Reads the outbox's backlog and dead letters for `/metrics`, every
/// few seconds, on a blocking thread (a count over an index: quick, but
/// SQLite is blocking I/O all the same).
async fn outbox_gauges(dir: std::path::PathBuf, metrics: Arc<Metrics>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn = None;
    loop {
        every.tick().await;
        let d = dir.clone();
        let c = conn.take();
        let res = tokio::task::spawn_blocking(move || {
            let c = match c {
                Some(c) => c,
                None => kuzet_store::open_reader(&d).map_err(|e| e.to_string())?,
            };
            let pending = kuzet_store::incident::backlog(&c).map_err(|e| e.to_string())?;
            let dead = kuzet_store::incident::dead_letters(&c).map_err(|e| e.to_string())?;
            Ok::<_, String>((c, pending, dead))
        })
        .await;
        match res {
            Ok(Ok((c, pending, dead))) => {
                metrics.set(Gauge::OutboxPending, pending as i64);
                metrics.set(Gauge::OutboxDeadLetters, dead as i64);
                conn = Some(c);
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "reading the outbox gauges"),
            Err(_) => {}
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

/// Logs and records every verdict the workers queue, on its own thread,
/// until every sender is gone (the workers have stopped): nothing queued is
/// lost at shutdown. Each log line carries what matches it to the switch's
/// records: Call-ID, source, transport and trunk, with the decision, score,
/// numbers and the explanation of every rule that fired. With a store, each
/// verdict is also committed to the intercepted-call log, in batches, and
/// old records are retired a chunk at a time between batches.
pub fn record_verdicts(
    events: std::sync::mpsc::Receiver<VerdictEvent>,
    metrics: Arc<Metrics>,
    store: Option<Store>,
    mut hep: Option<HepSender>,
) {
    let version_base = unix_us() / 1_000_000;
    // The store has a thread of its own (it inherits this one's idle
    // class): while SQLite commits one batch, this thread goes on draining
    // the queue into the next, so a commit seldom backs the queue up into
    // the call path. At most WRITER_QUEUE batches wait for the writer;
    // past that this thread keeps gathering, and with a full batch waits,
    // and the queue in front fills (a call that finds it full is counted
    // in store_dropped_total, never delayed).
    let (to_writer, writer) = match store {
        Some(st) => {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Record>>(WRITER_QUEUE);
            let m = metrics.clone();
            match std::thread::Builder::new()
                .name("kuzet-store".into())
                .spawn(move || write_batches(rx, st, m))
            {
                Ok(h) => (Some(tx), Some(h)),
                Err(e) => {
                    tracing::error!(error = %e, "could not start the store's writer thread; verdicts are logged, not recorded");
                    (None, None)
                }
            }
        }
        None => (None, None),
    };
    let recording = to_writer.is_some();
    let mut batch: Vec<Record> = Vec::with_capacity(if recording { BATCH } else { 0 });
    loop {
        let mut closed = false;
        // Woken by the first event, the thread lets more gather before it
        // drains them: at most one wake-up per pause instead of one per
        // event, so a burst of blocked calls costs the call path's core no
        // context switches. With nothing new for a second, a batch kept
        // back while the writer was busy is offered again.
        match events.recv_timeout(Duration::from_secs(1)) {
            Ok(first) => {
                take(
                    first,
                    &metrics,
                    recording,
                    version_base,
                    &mut batch,
                    &mut hep,
                );
                // With a store, records gather for up to COMMIT_EVERY (or a
                // full batch): each commit rewrites the index pages it
                // touches, so a few large commits a second write a
                // fraction of what one per pause would, and the
                // checkpoints that follow (whose fsync holds a core in the
                // kernel) shrink with them.
                let gather = if recording { COMMIT_EVERY } else { LOG_PAUSE };
                let deadline = std::time::Instant::now() + gather;
                loop {
                    std::thread::sleep(LOG_PAUSE);
                    while batch.len() < BATCH {
                        match events.try_recv() {
                            Ok(ev) => {
                                take(ev, &metrics, recording, version_base, &mut batch, &mut hep)
                            }
                            Err(std::sync::mpsc::TryRecvError::Empty) => break,
                            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                    if closed || batch.len() >= BATCH || std::time::Instant::now() >= deadline {
                        break;
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => closed = true,
        }
        if let Some(tx) = &to_writer {
            if !batch.is_empty() {
                // A full batch, or the last one, waits for the writer
                // (the queue in front absorbs the wait: a call never
                // does); a partial one keeps gathering while the writer
                // is busy.
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                let sent = if closed || full.len() >= BATCH {
                    tx.send(full).map_err(|e| e.0)
                } else {
                    match tx.try_send(full) {
                        Ok(()) => Ok(()),
                        Err(std::sync::mpsc::TrySendError::Full(b)) => {
                            batch = b;
                            Ok(())
                        }
                        Err(std::sync::mpsc::TrySendError::Disconnected(b)) => Err(b),
                    }
                };
                if let Err(lost) = sent {
                    writer_gone(&metrics, lost.len());
                }
            }
        }
        if closed {
            break;
        }
    }
    drop(to_writer);
    if let Some(h) = writer {
        if h.join().is_err() {
            tracing::error!("the store's writer thread panicked");
        }
    }
}

/// The writer thread is gone (it panicked): its records are lost and
/// counted, and the node is not ready.
fn writer_gone(metrics: &Metrics, lost: usize) {
    metrics.add(Counter::StoreDropped, lost as u64);
    metrics.set(Gauge::StoreWritable, 0);
    tracing::error!(
        lost,
        "the store's writer thread is gone; records are lost and counted in store_dropped_total"
    );
}

/// The store's writer thread: commits each batch it is handed, and once a
/// second (between batches) does the incidents' upkeep and retires one
/// chunk of old records. Ends when the recorder hangs up, after the last
/// batch.
fn write_batches(
    batches: std::sync::mpsc::Receiver<Vec<Record>>,
    mut st: Store,
    metrics: Arc<Metrics>,
) {
    let mut last_error: Option<std::time::Instant> = None;
    let mut next_retire = std::time::Instant::now();
    let mut next_tick = std::time::Instant::now();
    loop {
        match batches.recv_timeout(Duration::from_secs(1)) {
            Ok(mut b) => commit(&mut st, &mut b, &metrics, &mut last_error),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // No batch for a second after a failed commit: ask the
                // store itself whether it takes commits again.
                if metrics.gauge(Gauge::StoreWritable) == 0 && st.probe(unix_us()).is_ok() {
                    metrics.set(Gauge::StoreWritable, 1);
                    last_error.take();
                    tracing::warn!(path = %st.path().display(), "the store is writable again");
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if std::time::Instant::now() >= next_tick {
            // Once a second, whatever retention is doing: delayed
            // incident updates, closing quiet incidents.
            if let Err(e) = st.tick(unix_us()) {
                tracing::warn!(error = %e, "incident upkeep failed; retrying in a second");
            }
            next_tick = std::time::Instant::now() + Duration::from_secs(1);
        }
        if std::time::Instant::now() >= next_retire {
            // One chunk per turn, so a batch never waits on more.
            match st.retire_chunk(unix_us()) {
                Ok(0) => next_retire = std::time::Instant::now() + Duration::from_secs(1),
                Ok(n) => metrics.add(Counter::StoreRetired, n as u64),
                Err(e) => {
                    tracing::warn!(error = %e, "retiring old records failed; retrying in a second");
                    next_retire = std::time::Instant::now() + Duration::from_secs(1);
                }
            }
        }
    }
}

/// Records committed in one transaction, at most: with the indexes on
/// numbers, a commit rewrites the index pages its records land on, so a
/// bigger batch writes fewer pages a record (16384 fills the store 1.8
/// times as fast as 4096 in `store_bench fill`).
const BATCH: usize = 16384;

/// Full batches that may wait for the store's writer, besides the one it
/// is committing.
const WRITER_QUEUE: usize = 1;

/// How long the verdict log lets events gather after a wake-up.
const LOG_PAUSE: Duration = Duration::from_millis(5);

/// How long records gather before they are committed, at most.
const COMMIT_EVERY: Duration = Duration::from_millis(200);

fn take(
    ev: VerdictEvent,
    metrics: &Metrics,
    store: bool,
    version_base: i64,
    batch: &mut Vec<Record>,
    hep: &mut Option<HepSender>,
) {
    metrics.shift(Gauge::StoreQueueDepth, -1);
    // A sample of allowed calls is recorded, not logged; a plain allow
    // queued for HEP alone is neither.
    let logged = ev.record && !ev.evidence.sampled;
    if logged {
        metrics.inc(Counter::VerdictsLogged);
    }
    let log = logged && tracing::enabled!(tracing::Level::INFO);
    let store = store && ev.record;
    if !log && !store && hep.is_none() {
        return;
    }
    // One explanation serves the log line, the record and HEP.
    let mut why = String::new();
    let _ = ev.set.explain(&ev.scored, &mut why);
    if log {
        log_line(&ev, &why);
    }
    if !store && hep.is_none() {
        return;
    }
    let rec = to_record(&ev, version_base, why);
    if let Some(h) = hep.as_mut() {
        h.send(&ev, &rec, metrics);
    }
    if store {
        batch.push(rec);
    }
}

/// Commits the batch; on failure (a full disk) the records are counted
/// lost, and the next batch tries again, so the store recovers by itself
/// when space returns.
fn commit(
    st: &mut Store,
    batch: &mut Vec<Record>,
    metrics: &Metrics,
    last_error: &mut Option<std::time::Instant>,
) {
    if batch.is_empty() {
        return;
    }
    match st.insert(batch) {
        Ok(()) => {
            metrics.add(Counter::StoreRecorded, batch.len() as u64);
            metrics.set(Gauge::StoreWritable, 1);
            if last_error.take().is_some() {
                tracing::warn!(path = %st.path().display(), "the store is writable again");
            }
        }
        Err(e) => {
            metrics.set(Gauge::StoreWritable, 0);
            metrics.add(Counter::StoreDropped, batch.len() as u64);
            metrics.inc(Counter::StoreErrors);
            // One line per ten seconds while it lasts, not one per batch.
            if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                tracing::error!(path = %st.path().display(), error = %e, lost = batch.len(), "store write failed; calls go on, records are lost and counted in store_dropped_total");
                *last_error = Some(std::time::Instant::now());
            }
        }
    }
    batch.clear();
}

/// The store's record of a verdict: the event's evidence, with every rule
/// that fired explained (`explanation` is the whole verdict's).
pub fn to_record(ev: &VerdictEvent, version_base: i64, explanation: String) -> Record {
    let set = &ev.set;
    let s = &ev.scored;
    let num = |n: Option<kuzet_rules::Number>| n.map(|n| n.to_string());
    let lists = set.lists();
    let mut list_hit = None;
    let rules = s
        .fired()
        .iter()
        .filter_map(|f| {
            let r = set.rules.rules.get(usize::from(f.rule))?;
            let mut why = String::new();
            let _ = set.rules.explain_fired(f, &lists, &mut why);
            if list_hit.is_none() {
                list_hit = set.list_hit(f).map(|h| ListHitRec {
                    list: h.list.into(),
                    side: h.side.into(),
                    exact: h.exact,
                    reason: h.reason.into(),
                });
            }
            Some(RuleHit {
                id: r.id.to_string(),
                value: f.value,
                threshold: f.threshold,
                shadow: f.shadow,
                why,
            })
        })
        .collect();
    let e = &ev.evidence;
    Record {
        id: 0,
        verdict_id: e.verdict_id.to_string(),
        ts_us: e.unix_us,
        node: String::new(),
        call_id: ev.call_id.to_text(),
        ruri: e.ruri.to_text(),
        from_hdr: e.from_raw.to_text(),
        pai_hdr: e.pai_raw.to_text(),
        a: num(ev.a),
        b: num(ev.b),
        from_num: num(e.from),
        pai_num: num(e.pai),
        trunk: ev.trunk.as_deref().map(str::to_string),
        trunk_kind: ev.trunk_kind.map(str::to_string),
        source: ev.source.to_string(),
        transport: if ev.tcp { "tcp" } else { "udp" }.into(),
        decision: s.decision.as_str().into(),
        shadow_decision: s.shadow_decision.as_str().into(),
        code: e.code,
        score: s.score,
        sampled: e.sampled,
        explanation,
        rules,
        list_hit,
        lists_version: format!("{version_base}.{}", set.generation),
        headers: e.head.as_bytes().to_vec(),
        incident: None,
    }
}

fn log_line(ev: &VerdictEvent, why: &str) {
    let show =
        |n: Option<kuzet_rules::Number>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    tracing::info!(
        decision = ev.scored.decision.as_str(),
        shadow_decision = ev.scored.shadow_decision.as_str(),
        score = ev.scored.score,
        caller = %show(ev.a),
        callee = %show(ev.b),
        call_id = %ev.call_id,
        verdict_id = %ev.evidence.verdict_id,
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
