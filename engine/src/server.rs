//! Start-up, the control plane, and shutdown.
//!
//! [`start`] loads the lists (the same [`lists::load`] a reload uses),
//! binds UDP and TCP on the listen address, and starts the threads: one
//! per UDP worker, one for TCP, and one control-plane thread that reloads
//! lists on change or SIGHUP and logs counters and service time. The
//! control plane never shares a runtime with the SIP workers, so a slow
//! reload of a 10M-number list never delays a call.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::Config;
use crate::handler::{Handler, SharedLists};
use crate::lists::{self, LoadError, Reloader};
use crate::metrics::Metrics;
use crate::transport::{self, tcp, Connections};

/// A running engine.
pub struct Running {
    /// The bound UDP address (the real port when the config said 0).
    pub udp_addr: SocketAddr,
    /// The bound TCP address, when TCP is on.
    pub tcp_addr: Option<SocketAddr>,
    /// Shared counters and histogram.
    pub metrics: Arc<Metrics>,
    /// The list snapshot in force.
    pub lists: SharedLists,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

/// Why the engine could not start: a list problem is the operator's to fix
/// (exit code 2), anything else is an environment problem.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("lists: {0}")]
    Lists(#[from] LoadError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Options that are not part of the config file.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartOptions {
    /// Install the SIGHUP handler (off in tests, where many engines share a process).
    pub handle_sighup: bool,
}

/// Starts the engine and returns once it is serving.
pub fn start(cfg: Config, opts: StartOptions) -> Result<Running, StartError> {
    let plan = cfg.plan().context("numbering plan")?;
    let mode = cfg.server.mode;
    let started = std::time::Instant::now();
    let (set, stats) = lists::load(&cfg, &plan)?;
    tracing::info!(
        lines = stats.lines,
        exact = stats.exact,
        prefixes = stats.prefixes,
        heap_mb = stats.bytes / (1 << 20),
        elapsed_ms = started.elapsed().as_millis() as u64,
        embedded = cfg.embedded_lists,
        "lists loaded"
    );
    let lists: SharedLists = Arc::new(ArcSwap::from_pointee(set));

    let workers = match cfg.server.udp_workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let first = transport::bind_udp(cfg.server.listen, cfg.server.socket_buffer_bytes)
        .with_context(|| format!("binding UDP {}", cfg.server.listen))?;
    let udp_addr = first.local_addr().context("UDP local address")?;
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(
            transport::bind_udp(udp_addr, cfg.server.socket_buffer_bytes)
                .with_context(|| format!("binding UDP {udp_addr} (SO_REUSEPORT)"))?,
        );
    }
    let udp_out = Arc::new(sockets[0].try_clone().context("cloning UDP socket")?);
    let tcp_listener = if cfg.server.tcp {
        let l = std::net::TcpListener::bind(udp_addr)
            .with_context(|| format!("binding TCP {udp_addr}"))?;
        l.set_nonblocking(true).context("TCP nonblocking")?;
        Some(l)
    } else {
        None
    };
    let tcp_addr = tcp_listener.as_ref().and_then(|l| l.local_addr().ok());
    // kuzet's Via must carry the real port when the config said 0.
    let mut cfg = cfg;
    cfg.server.listen = udp_addr;
    let metrics = Arc::new(Metrics::default());
    // Rule verdicts are logged by the control thread, never on the call path.
    let (events_tx, events) = std::sync::mpsc::sync_channel(4096);
    let handler =
        Arc::new(Handler::new(&cfg, lists.clone(), metrics.clone())?.with_events(events_tx));

    let (shutdown, shutdown_rx) = watch::channel(false);
    let conns: Connections = Arc::default();
    let mut threads = Vec::new();
    for (i, sock) in sockets.into_iter().enumerate() {
        let h = handler.clone();
        let c = conns.clone();
        let sd = shutdown_rx.clone();
        let batch = cfg.server.udp_batch;
        threads.push(
            std::thread::Builder::new()
                .name(format!("kuzet-udp-{i}"))
                .spawn(move || {
                    if let Err(e) = transport::udp::run_worker(sock, h, batch, c, sd) {
                        tracing::error!(worker = i, error = %e, "UDP worker stopped");
                    }
                })
                .context("spawning UDP worker")?,
        );
    }
    if let Some(listener) = tcp_listener {
        let h = handler.clone();
        let c = conns.clone();
        let sd = shutdown_rx.clone();
        let settings = tcp::TcpSettings {
            max_connections: cfg.server.max_tcp_connections,
            idle_timeout: Duration::from_secs(cfg.server.tcp_idle_timeout_secs.max(1)),
        };
        threads.push(
            std::thread::Builder::new()
                .name("kuzet-tcp".into())
                .spawn(move || {
                    let Some(rt) = small_runtime("TCP") else {
                        return;
                    };
                    rt.block_on(async move {
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(l) => tcp::serve(l, h, udp_out, c, settings, sd).await,
                            Err(e) => tracing::error!(error = %e, "TCP listener failed"),
                        }
                    });
                })
                .context("spawning TCP thread")?,
        );
    }
    let cfg = Arc::new(cfg);
    let reloader = Reloader::new(cfg.clone(), plan, lists.clone(), metrics.clone());
    let m = metrics.clone();
    let sd = shutdown_rx.clone();
    let h = handler.clone();
    threads.push(
        std::thread::Builder::new()
            .name("kuzet-control".into())
            .spawn(move || control_plane(cfg, reloader, m, sd, opts, h, events))
            .context("spawning control thread")?,
    );
    tracing::info!(%udp_addr, ?tcp_addr, workers, ?mode, "kuzet serving");
    Ok(Running {
        udp_addr,
        tcp_addr,
        metrics,
        lists,
        shutdown,
        threads,
    })
}

fn control_plane(
    cfg: Arc<Config>,
    mut reloader: Reloader,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    opts: StartOptions,
    handler: Arc<Handler>,
    events: std::sync::mpsc::Receiver<crate::handler::RuleEvent>,
) {
    let Some(rt) = small_runtime("control") else {
        return;
    };
    rt.block_on(async move {
        let mut poll = tokio::time::interval(Duration::from_millis(cfg.lists.reload_interval_ms.max(50)));
        let mut stats = tokio::time::interval(Duration::from_secs(cfg.server.stats_interval_secs.max(1)));
        stats.tick().await;
        #[cfg(unix)]
        let mut hup = if opts.handle_sighup {
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
fn log_rule_events(events: &std::sync::mpsc::Receiver<crate::handler::RuleEvent>) {
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

impl Running {
    /// Stops every thread and waits for them.
    pub fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
