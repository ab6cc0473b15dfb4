//! Start-up, wiring and shutdown.
//!
//! [`start`] loads the lists (the same publisher a reload uses),
//! binds UDP and TCP on the listen address, and starts the threads: one
//! per UDP worker, one for TCP, and one control-plane thread that reloads
//! lists on change or SIGHUP and logs counters and service time. The
//! control plane never shares a runtime with the SIP workers, so a slow
//! reload of a 10M-number list never delays a call.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::watch;

use kuzet_control::lists::{FileSource, LoadError};
use kuzet_control::plane::{self, small_runtime, Timing};
use kuzet_control::publish::{self, Publisher};
use kuzet_dataplane::metrics::{Gauge, Metrics};
use kuzet_dataplane::records::RecordRing;
use kuzet_dataplane::transport::{tcp, Connections};
use kuzet_dataplane::{transport, Handler, SharedLists};
use kuzet_store::RecordWriter;

use crate::config::Config;

/// A running engine.
pub struct Running {
    /// The bound UDP address (the real port when the config said 0).
    pub udp_addr: SocketAddr,
    /// The bound TCP address, when TCP is on.
    pub tcp_addr: Option<SocketAddr>,
    /// The control API's bound address, when it is on.
    pub control_addr: Option<SocketAddr>,
    /// The admin HTTP address (`/metrics`, health), when it is on.
    pub admin_addr: Option<SocketAddr>,
    /// Shared counters and histogram.
    pub metrics: Arc<Metrics>,
    /// The list snapshot in force.
    pub lists: SharedLists,
    /// The record queue the workers write and the recorder reads.
    pub records: Arc<RecordRing>,
    /// The call path's handler (its state and counters, for tests).
    pub handler: Arc<Handler>,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    /// The recorder: told to finish once the workers have stopped, then
    /// joined last.
    events: Option<JoinHandle<()>>,
    recorder_stop: Arc<AtomicBool>,
    /// The journal's writer: told to finish once the workers have
    /// stopped.
    journal: Option<JoinHandle<()>>,
    journal_stop: Arc<AtomicBool>,
}

/// Why the engine could not start: a list problem is the operator's to fix
/// (exit code 2), anything else is an environment problem.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A list or rule file is wrong: the operator's to fix.
    #[error("lists: {0}")]
    Lists(#[from] LoadError),
    /// The data directory cannot hold the store: the operator's to fix.
    #[error("store: {0}")]
    Store(#[from] kuzet_store::StoreError),
    /// The environment refused: a port in use, no threads, and the like.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Options that are not part of the config file.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartOptions {
    /// Install the SIGHUP handler (off in tests, where many engines share a process).
    pub handle_sighup: bool,
}

/// Binds the SIP sockets: one UDP socket per worker (`SO_REUSEPORT`) and,
/// when TCP is on, a listener on the same port. With port 0 the kernel
/// picks the UDP port, and that port may already be taken for TCP by
/// someone else: then another port is tried, a few times, before giving up.
fn bind_sip(
    cfg: &Config,
    workers: usize,
) -> anyhow::Result<(Vec<std::net::UdpSocket>, Option<std::net::TcpListener>)> {
    let chosen_by_kernel = cfg.server.listen.port() == 0;
    let mut tries = 0;
    loop {
        tries += 1;
        let first = kuzet_net::bind_udp(cfg.server.listen, cfg.server.socket_buffer_bytes)
            .with_context(|| format!("binding UDP {}", cfg.server.listen))?;
        let udp_addr = first.local_addr().context("UDP local address")?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(
                kuzet_net::bind_udp(udp_addr, cfg.server.socket_buffer_bytes)
                    .with_context(|| format!("binding UDP {udp_addr} (SO_REUSEPORT)"))?,
            );
        }
        if !cfg.server.tcp {
            return Ok((sockets, None));
        }
        match tcp::listen(udp_addr, cfg.server.tcp_backlog) {
            Ok(l) => return Ok((sockets, Some(l))),
            Err(e)
                if chosen_by_kernel && tries < 16 && e.kind() == std::io::ErrorKind::AddrInUse =>
            {
                tracing::debug!(port = udp_addr.port(), "TCP port taken; picking another");
            }
            Err(e) => return Err(e).with_context(|| format!("binding TCP {udp_addr}")),
        }
    }
}

/// Starts the engine and returns once it is serving.
pub fn start(cfg: Config, opts: StartOptions) -> Result<Running, StartError> {
    // Every file kuzet makes is its user's alone, and the connection caps,
    // not a low descriptor limit, bound what it holds open.
    kuzet_net::private_umask();
    let open_files = kuzet_net::raise_open_files().unwrap_or(1024);
    // The control surfaces' connection caps stay well inside the
    // descriptor limit, so they can never take the descriptors SIP needs.
    let control_cap = |n: usize| n.min((open_files as usize / 8).max(8));
    let admin_cap = |n: usize| n.min((open_files as usize / 16).max(4));
    let control_caps = if cfg.control.enabled {
        control_cap(cfg.control.max_connections)
    } else {
        0
    } + if cfg.admin.enabled {
        admin_cap(cfg.admin.max_connections)
    } else {
        0
    };
    let plan = cfg.plan().context("numbering plan")?;
    let mode = cfg.server.mode;
    let started = std::time::Instant::now();
    let sources = cfg.sources();
    let metrics = Arc::new(Metrics::default());
    // The counters the control plane owns, beside the call path's.
    kuzet_control::register_counters(&metrics).context("counters")?;
    let lists: SharedLists = Arc::new(ArcSwap::from_pointee(kuzet_rules::ListSet::default()));
    // Published versions (`kuzet lists push`, `kuzet rules stage`) live
    // in the data directory; the ones in force come back after a restart.
    // With nothing published the source is empty (no folder is made),
    // and the publishing services answer that nothing is published.
    let dir = cfg.data_dir();
    if cfg.publishing.any() {
        kuzet_store::private::prepare_dir(&dir)
            .map_err(|e| anyhow::anyhow!("data directory {}: {e}", dir.display()))?;
    }
    let published = Arc::new(
        kuzet_control::publishing::PublishedSource::open(
            &dir.join("published"),
            &cfg.publishing.lists,
            cfg.publishing.rules,
        )
        .map_err(|e| anyhow::anyhow!("published versions: {e}"))?,
    );
    let mut inputs: Vec<Arc<dyn publish::Source>> = vec![
        Arc::new(FileSource::new(sources.clone())),
        published.clone(),
    ];
    // A store every node shares (PostgreSQL) with the nodes clustered:
    // each singleton (the Centre's puller and report outbox, the register
    // outbox) is led by one node at a time, and the store checks every
    // write of theirs against the lease's fence.
    let pg_url = match (cfg.store.enabled, cfg.store.backend, &cfg.store.url) {
        (true, kuzet_store::config::Backend::Postgres, Some(url)) => Some(url.0.clone()),
        _ => None,
    };
    let fences =
        (pg_url.is_some() && cfg.cluster.enabled()).then(kuzet_control::lease::Fences::new);
    let centre_port = centre_port(pg_url.as_deref(), fences.as_ref(), &dir);
    // The National Bank's feed is a layer of its own, back from the store
    // as it was before the first snapshot: a restart never drops it, and
    // a feed that is down now still has its last good layer enforced.
    let nb_feed = if cfg.nbank.enabled() {
        kuzet_store::private::prepare_dir(&dir)
            .map_err(|e| anyhow::anyhow!("data directory {}: {e}", dir.display()))?;
        let centre = centre_port.clone();
        let layer = Arc::new(kuzet_control::nbfeed::layer::FeedLayer::new(Arc::new(
            plan.clone(),
        )));
        let t = std::time::Instant::now();
        let now_s = layer.now();
        let (kept, skipped) = layer
            .restore(|each| centre.feed_load(now_s, each))
            .map_err(|e| anyhow::anyhow!("the National Bank feed's layer: {e}"))?;
        tracing::info!(
            entries = kept,
            batch = layer.cursor(),
            elapsed_ms = t.elapsed().as_millis() as u64,
            "National Bank feed layer restored"
        );
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "National Bank feed entries the numbering plan no longer reads were left out"
            );
        }
        inputs.push(layer.clone());
        Some((layer, centre))
    } else {
        None
    };
    let nudge = kuzet_control::publishing::Nudge::default();
    // A cluster's published versions are stored once in the shared store
    // and announced on Redis; each node follows them (and the shelves in
    // the data directory are its copy, read first at a restart).
    let versions = shared_versions(&cfg, &published, &plan, &nudge, &metrics);
    // The one writer of the snapshot, at start-up as at every reload.
    let mut publisher = Publisher::new(
        inputs,
        plan.clone(),
        sources.policy,
        lists.clone(),
        metrics.clone(),
        // A refused load is tried again after this, then twice as long
        // each time.
        Duration::from_millis(cfg.lists.reload_interval_ms).max(Duration::from_secs(1)),
    );
    // Each snapshot put in force is handed to the call journal, which
    // keeps every version its calls were judged under.
    let journal_versions = Arc::new(kuzet_journal::write::VersionFeed::default());
    if cfg.journal_dir().is_some() {
        let feed = journal_versions.clone();
        publisher.observe(move |set| feed.offer(set));
    }
    // Start-up has no lists to fall back on: it loads to the end (with
    // progress lines for a big list), and a SIGTERM meanwhile is handled
    // as soon as it is serving.
    let stats = publisher.publish_now()?;
    publish::log_files(&stats);
    tracing::info!(
        lines = stats.lines,
        exact = stats.exact,
        prefixes = stats.prefixes,
        heap_mb = stats.bytes / (1 << 20),
        elapsed_ms = started.elapsed().as_millis() as u64,
        embedded = cfg.embedded_lists,
        version = %lists.load().version,
        "lists loaded"
    );
    // The store is opened before serving: a data directory that cannot be
    // written (or that is not kuzet's alone) is an error now, not a silent
    // loss later. What an earlier process left in the record queue is
    // committed before the first call.
    let queue_bytes = cfg.store.queue_bytes();
    let reserve = cfg.store.queue_reserved_percent;
    // The writer (the recorder port) is opened here, and the other ports
    // on the same store are handed to the control plane; control sees
    // only the ports. SQLite: one file in the data directory. PostgreSQL:
    // one database every node shares; the data directory still holds the
    // record queue (the spool while the server is away) and its lock.
    let (mut store, ring, ports) = if cfg.store.enabled {
        let dir = cfg.data_dir();
        let (mut st, ports): (Box<dyn RecordWriter>, _) = match (cfg.store.backend, &cfg.store.url)
        {
            (kuzet_store::config::Backend::Postgres, Some(url)) => {
                let lock = kuzet_store::lock_dir(&dir)?;
                let st = kuzet_store::pg::open(&url.0, cfg.store_options(), cfg.store.partition)?
                    .holding(lock);
                tracing::info!(server = %st.location(), store_id = st.store_id(), partition = ?cfg.store.partition, "store open (PostgreSQL)");
                // The register outbox is fenced by its lease when the
                // nodes are clustered (one reporter drives it at a time).
                let outbox_fence = fences
                    .as_ref()
                    .map(|f| f.get(kuzet_control::lease::Singleton::RegisterOutbox));
                let ports = kuzet_store::pg::ports(&url.0, outbox_fence, centre_port.clone());
                (Box::new(st), ports)
            }
            _ => {
                let st = kuzet_store::open(&dir, cfg.store_options())?;
                tracing::info!(path = %st.path().display(), store_id = st.store_id(), "store open");
                (Box::new(st), kuzet_store::sqlite::ports(&dir))
            }
        };
        let ring = open_records(&dir, queue_bytes, reserve, st.as_mut(), &metrics)?;
        (Some(st), ring, Some(ports))
    } else {
        let ring = RecordRing::in_memory(queue_bytes, reserve)
            .map_err(|e| anyhow::anyhow!("the record queue: {e}"))?;
        (None, Arc::new(ring), None)
    };
    let store_id = store.as_ref().map(|s| s.store_id().to_string());
    // Verdict ids continue after the last one this store recorded, even
    // if the clock went back since; the public ids are made under the
    // store's own secret.
    let (first_verdict_seq, verdict_key) = match &store {
        Some(st) => {
            let prefix = format!(
                "{:08x}",
                kuzet_dataplane::handler::VerdictId::node_of(&cfg.node_name())
            );
            let seq = st
                .last_verdict_seq(&prefix)
                .map_err(|e| anyhow::anyhow!("reading the store's last verdict id: {e}"))?
                .map(|s| s + 1);
            let key = st
                .verdict_key()
                .map_err(|e| anyhow::anyhow!("reading the store's verdict key: {e}"))?;
            (seq, Some(kuzet_dataplane::handler::IdKey(key)))
        }
        None => (None, None),
    };
    // A full disk under a size limit (RLIMIT_FSIZE) must fail a write, not
    // kill the process.
    kuzet_net::ignore_sigxfsz();

    let workers = match cfg.server.udp_workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (sockets, tcp_listener) = bind_sip(&cfg, workers)?;
    // The control and admin addresses are bound before a call is served:
    // whoever sees kuzet answer SIP can reach them (their connections wait
    // in the backlog until the control threads take them).
    let control_listener = if cfg.control.enabled {
        Some(
            kuzet_control::investigate::bind(cfg.control.listen)
                .with_context(|| format!("binding the control address {}", cfg.control.listen))?,
        )
    } else {
        None
    };
    let admin_listener = if cfg.admin.enabled {
        Some(
            kuzet_control::admin::bind(cfg.admin.listen)
                .with_context(|| format!("binding the admin address {}", cfg.admin.listen))?,
        )
    } else {
        None
    };
    let udp_addr = sockets[0].local_addr().context("UDP local address")?;
    // The fail-open budget counts from when the kernel received a request,
    // so time spent queued in the socket under overload counts too.
    for s in &sockets {
        if let Err(e) = kuzet_net::enable_rx_timestamps(s) {
            tracing::warn!(error = %e, "no kernel receive timestamps: the fail-open budget counts from when a worker reads a request");
            break;
        }
    }
    let udp_out = Arc::new(sockets[0].try_clone().context("cloning UDP socket")?);
    let tcp_addr = tcp_listener.as_ref().and_then(|l| l.local_addr().ok());
    // kuzet's Via must carry the real port when the config said 0.
    let mut cfg = cfg;
    cfg.server.listen = udp_addr;
    // The store was opened (and checked writable) above, when it is on.
    metrics.set(Gauge::StoreWritable, i64::from(cfg.store.enabled));
    metrics.set(
        Gauge::StoreShared,
        i64::from(cfg.store.enabled && cfg.store.backend == kuzet_store::config::Backend::Postgres),
    );
    let hep = if cfg.hep.enabled {
        let h = kuzet_control::hep::HepSender::new(cfg.hep.sender_config(udp_addr), &metrics)
            .with_context(|| format!("a socket towards the HEP collector {}", cfg.hep.collector))?;
        Some(h)
    } else {
        None
    };
    // Verdicts are logged and recorded by a thread of their own, never on
    // the call path.
    let recorder_stop = Arc::new(AtomicBool::new(false));
    let m = metrics.clone();
    let (r, stop) = (ring.clone(), recorder_stop.clone());
    let st = store.take();
    let events = std::thread::Builder::new()
        .name("kuzet-verdicts".into())
        .spawn(move || {
            recorder_priority();
            kuzet_control::recorder::record_verdicts(r, m, st, hep, stop)
        })
        .context("spawning the verdict log thread")?;
    let mut settings = cfg.dataplane().context("numbering plan")?;
    settings.first_verdict_seq = first_verdict_seq;
    settings.verdict_key = verdict_key;
    let mut handler =
        Handler::new(settings, lists.clone(), metrics.clone()).with_records(ring.clone());
    // Answered calls feed the Centre's potential-victim reports: a queue
    // made up front (no allocation on the call path), dropped and counted
    // when full.
    let answers = if cfg.nbank.enabled() {
        let (tx, rx) = std::sync::mpsc::sync_channel(ANSWERS_QUEUE);
        handler = handler.with_answers(tx);
        Some(rx)
    } else {
        None
    };
    // Every call's facts go to the journal's writer through a queue made
    // up front, like the answers: full means dropped and counted.
    let journal_stop = Arc::new(AtomicBool::new(false));
    let journal = match cfg.journal_dir() {
        Some(root) => {
            let (tx, rx) = kuzet_dataplane::journal::queue(cfg.journal.queue);
            handler = handler.with_journal(tx);
            let setup = kuzet_journal::write::WriterSetup {
                root,
                node: cfg.node_name(),
                trunks: cfg.trunk_map().names().to_vec(),
                cfg: cfg.journal.clone(),
                lists: lists.clone(),
                versions: journal_versions.clone(),
                metrics: metrics.clone(),
            };
            Some(
                kuzet_journal::write::spawn(setup, rx, journal_stop.clone())
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            )
        }
        None => None,
    };
    let handler = Arc::new(handler);
    let handler_ref = handler.clone();

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
                    transport::udp::supervise(sock, h, batch, c, sd, &format!("udp-{i}"))
                })
                .context("spawning UDP worker")?,
        );
    }
    if let Some(listener) = tcp_listener {
        let h = handler.clone();
        let c = conns.clone();
        let sd = shutdown_rx.clone();
        // SIP over TCP never takes the descriptors the store, the lists and
        // the control surfaces need: its cap stays under the limit.
        let room = (open_files as usize)
            .saturating_sub(DESCRIPTORS_KEPT + control_caps)
            .max(16);
        let max_tcp = cfg.server.max_tcp_connections.min(room);
        if max_tcp < cfg.server.max_tcp_connections {
            tracing::warn!(
                open_files,
                max_tcp_connections = max_tcp,
                "the open-files limit caps SIP over TCP below server.max_tcp_connections; raise the limit (LimitNOFILE) for more"
            );
        }
        let settings = tcp::TcpSettings {
            max_connections: max_tcp,
            ..cfg.server.tcp_settings()
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
    let nbank = match nb_feed {
        Some((layer, centre)) => Some(nbank_parts(
            &cfg,
            NbInputs {
                layer,
                centre,
                queries: ports.as_ref().map(|p| p.queries.clone()),
                answers,
            },
            store_id.clone().unwrap_or_default(),
            nudge.clone(),
            metrics.clone(),
        )?),
        None => None,
    };
    let control = if let Some(l) = control_listener {
        let access = cfg.access().map_err(|e| anyhow::anyhow!(e))?;
        // kuzet's own user reaches the API without a token through a Unix
        // socket in the data directory; no token is written to disk.
        let uds = if cfg.store.enabled {
            let dir = cfg.data_dir();
            // A token file an older kuzet wrote is of no use any more.
            let _ = std::fs::remove_file(dir.join(OLD_LOCAL_TOKEN_FILE));
            match bind_control_socket(&dir)? {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "no control socket: kuzet's own user needs a token too (a path too long for a socket?)");
                    None
                }
            }
        } else {
            None
        };
        if access.is_empty() {
            tracing::info!("no [[control.tokens]]: only kuzet's own user can query, through the data directory's control.sock (`kuzet calls` run beside kuzet-data uses it)");
        }
        // Every request to the API is admitted and audited by the access
        // gate, which writes through the store's audit port.
        let gate = Arc::new(kuzet_control::gate::AccessGate::new(
            access,
            ports.as_ref().map(|p| p.audit.clone()),
        ));
        let svc = kuzet_control::investigate::Investigation::new(
            ports.as_ref().map(|p| p.queries.clone()),
            plan.clone(),
            gate,
        )
        .with_export_limits(cfg.control.export_limits());
        let guard = kuzet_control::guard::ConnGuard::new(kuzet_control::guard::Limits {
            max_connections: control_cap(cfg.control.max_connections),
            max_per_source: control_cap(cfg.control.max_connections_per_source),
            first_request: Duration::from_secs(5),
            idle: Duration::from_secs(300),
        });
        let publishing = Some(kuzet_control::publishing::Publishing::new(
            published.clone(),
            svc.gate().clone(),
            lists.clone(),
            plan.clone(),
            sources.policy,
            nudge.clone(),
            cfg.publishing.clone(),
        ));
        if let (Some(p), Some(n)) = (&publishing, &nbank) {
            p.set_feed(n.puller.layer.clone());
        }
        if let (Some(p), Some(v)) = (&publishing, &versions) {
            p.set_shared(v.clone());
        }
        // Backtests and trends read this node's journal, replaying with
        // state sized as the call path's.
        if let (Some(p), Some(root)) = (&publishing, cfg.journal_dir()) {
            p.set_journal(kuzet_control::publishing::backtest::JournalAccess {
                root,
                opts: kuzet_journal::replay::Options {
                    max_numbers: cfg.rules.max_tracked_numbers,
                    idle_ttl_s: cfg.rules.idle_ttl_secs,
                    max_call_s: cfg.rules.max_call_secs.max(1),
                    ..kuzet_journal::replay::Options::default()
                },
            });
        }
        let cases = Some(Arc::new(kuzet_control::nbfeed::service::CaseService::new(
            nbank.as_ref().map(|n| n.cases.clone()),
            ports.as_ref().map(|p| p.queries.clone()),
            svc.gate().clone(),
        )));
        let nodes = Some(Arc::new(kuzet_control::cluster::NodeService::new(
            cfg.cluster.clone(),
            svc.gate().clone(),
        )));
        Some(kuzet_control::plane::Api {
            listener: l,
            uds,
            svc,
            guard,
            publishing,
            cases,
            nodes,
            trend_watch: (cfg.journal_dir().is_some() && cfg.journal.trends_every_s > 0).then(
                || {
                    (
                        metrics.clone(),
                        kuzet_control::publishing::backtest::TrendWatch {
                            every: Duration::from_secs(u64::from(cfg.journal.trends_every_s)),
                            since_s: i64::from(cfg.journal.trends_since_h) * 3600,
                            recent_s: i64::from(cfg.journal.trends_recent_h) * 3600,
                        },
                    )
                },
            ),
        })
    } else {
        None
    };
    let control_addr = control.as_ref().and_then(|a| a.listener.local_addr().ok());
    let reporter = match (&cfg.register.endpoint, &ports) {
        (Some(endpoint), Some(ports)) => {
            let ca_pem = match &cfg.register.ca_file {
                Some(f) => {
                    let f = cfg.resolve(f);
                    Some(
                        std::fs::read(&f)
                            .with_context(|| format!("register.ca_file {}", f.display()))?,
                    )
                }
                None => None,
            };
            Some((
                kuzet_control::report::Target {
                    endpoint: endpoint.clone(),
                    ca_pem,
                    timeout: Duration::from_millis(cfg.register.timeout_ms.max(1)),
                    node: cfg.node_name(),
                    store_id: store_id.clone().unwrap_or_default(),
                },
                ports.outbox.clone(),
            ))
        }
        (Some(_), None) => {
            tracing::warn!("[register] is set but the store is off: incidents need the store, so nothing is reported");
            None
        }
        _ => None,
    };
    let admin = if let Some(l) = admin_listener {
        let guard = kuzet_control::guard::ConnGuard::new(kuzet_control::guard::Limits {
            max_connections: admin_cap(cfg.admin.max_connections),
            max_per_source: admin_cap(cfg.admin.max_connections_per_source),
            first_request: Duration::from_secs(5),
            idle: Duration::from_secs(30),
        });
        Some((
            l,
            kuzet_control::admin::Admin::new(
                metrics.clone(),
                cfg.store.enabled,
                Some(ring.clone()),
            ),
            guard,
        ))
    } else {
        None
    };
    let admin_addr = admin.as_ref().and_then(|(l, _, _)| l.local_addr().ok());
    if let Some(api) = control {
        let sd = shutdown_rx.clone();
        threads.push(
            std::thread::Builder::new()
                .name("kuzet-api".into())
                .spawn(move || {
                    background_priority("control API");
                    plane::serve_api(api, sd)
                })
                .context("spawning the control API thread")?,
        );
    }
    // One leader per singleton (the Centre's puller, case clock and
    // report outbox, the register outbox): only with [cluster] on and a
    // store every node shares, whose fences were made above; a store of
    // the node's own gives `None`: every singleton runs here, as on a
    // node alone.
    let shared_store = match (fences, &pg_url) {
        (Some(fences), Some(url)) => {
            let conn = Arc::new(kuzet_store::pg::PgConn::new(url));
            let claim: kuzet_control::lease::Claim =
                Arc::new(move |f| kuzet_store::pg::fence_claim(&conn, f));
            Some(kuzet_control::lease::SharedStore { fences, claim })
        }
        _ => None,
    };
    let leases = kuzet_control::lease::Leases::for_cluster(
        &cfg.cluster,
        &cfg.node_name(),
        shared_store,
        &metrics,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let services = plane::Services {
        reporter,
        admin,
        outbox: ports.as_ref().map(|p| p.outbox.clone()),
        nudge,
        nbank,
        cluster: cfg.cluster.enabled().then(|| {
            (
                cfg.cluster.clone(),
                kuzet_control::cluster::Me {
                    node: cfg.node_name(),
                    store_on: cfg.store.enabled,
                },
            )
        }),
        leases,
        versions,
    };
    let m = metrics.clone();
    let sd = shutdown_rx.clone();
    let h = handler.clone();
    let timing = Timing {
        reload_interval: Duration::from_millis(cfg.lists.reload_interval_ms),
        reload_timeout: Duration::from_millis(cfg.lists.reload_timeout_ms.max(1)),
        stats_interval: Duration::from_secs(cfg.server.stats_interval_secs),
        handle_sighup: opts.handle_sighup,
    };
    threads.push(
        std::thread::Builder::new()
            .name("kuzet-control".into())
            .spawn(move || {
                // Reload loads run on this runtime's blocking threads,
                // which inherit the priority.
                background_priority("control plane");
                plane::run(timing, publisher, m, sd, h, services)
            })
            .context("spawning control thread")?,
    );
    metrics.set(Gauge::SocketsBound, 1);
    tracing::info!(%udp_addr, ?tcp_addr, ?control_addr, ?admin_addr, workers, ?mode, "kuzet serving");
    Ok(Running {
        udp_addr,
        tcp_addr,
        control_addr,
        admin_addr,
        metrics,
        lists,
        records: ring,
        handler: handler_ref,
        shutdown,
        threads,
        events: Some(events),
        recorder_stop,
        journal,
        journal_stop,
    })
}

/// The cluster's shared published versions, when `[publishing]` shares
/// them (see [`Config::shared_versions_url`]) and something is published.
fn shared_versions(
    cfg: &Config,
    published: &Arc<kuzet_control::publishing::PublishedSource>,
    plan: &kuzet_rules::NumberingPlan,
    nudge: &kuzet_control::publishing::Nudge,
    metrics: &Arc<Metrics>,
) -> Option<Arc<kuzet_control::publishing::shared::SharedVersions>> {
    use kuzet_control::publishing::shared::{self, Follow, SharedVersions};
    let url = cfg.shared_versions_url()?;
    if !cfg.publishing.any() {
        return None;
    }
    let store = Arc::new(kuzet_store::pg::shelves::PgShelves::new(
        url,
        Default::default(),
    ));
    tracing::info!(store = %kuzet_store::pg::redacted(url), "published versions are shared by the cluster's nodes");
    Some(SharedVersions::new(
        store,
        published.clone(),
        plan.clone(),
        nudge.clone(),
        metrics.clone(),
        Follow {
            redis_url: cfg.cluster.redis_url.clone(),
            channel: shared::channel(&cfg.cluster.key_prefix),
            timeout: Duration::from_millis(cfg.cluster.timeout_ms),
            poll: Duration::from_millis(cfg.publishing.shared_poll_ms),
        },
    ))
}

/// The store's Centre port: the shared PostgreSQL's when the store is
/// there (its feed puller's and report sender's writes fenced when the
/// nodes are clustered; the alerts come with the feed's puller, so they
/// share its lease), else `centre.db` in the data directory.
fn centre_port(
    pg_url: Option<&str>,
    fences: Option<&kuzet_control::lease::Fences>,
    dir: &std::path::Path,
) -> Arc<dyn kuzet_store::Centre> {
    use kuzet_control::lease::Singleton;
    match pg_url {
        Some(url) => {
            let get = |s| fences.map(|f| f.get(s));
            Arc::new(kuzet_store::pg::centre::PgCentre::new(
                url,
                kuzet_store::pg::centre::CentreFences {
                    feed: get(Singleton::NbankFeed),
                    cases: get(Singleton::NbankFeed),
                    reports: get(Singleton::NbankReports),
                },
            ))
        }
        None => kuzet_store::sqlite::ports(dir).centre,
    }
}

/// What the Centre's parts are made from, besides the config.
struct NbInputs {
    /// The feed's layer, restored from the store.
    layer: Arc<kuzet_control::nbfeed::layer::FeedLayer>,
    /// The store's Centre port.
    centre: Arc<dyn kuzet_store::Centre>,
    /// The investigators' reads (incidents and calls), with the store on.
    queries: Option<Arc<dyn kuzet_store::Queries>>,
    /// Answered calls from the data plane.
    answers: Option<std::sync::mpsc::Receiver<kuzet_dataplane::handler::Answered>>,
}

/// The Centre's puller, case desk and report outbox, from `[nbank]`.
fn nbank_parts(
    cfg: &Config,
    inputs: NbInputs,
    store_id: String,
    nudge: kuzet_control::publishing::Nudge,
    metrics: Arc<Metrics>,
) -> anyhow::Result<kuzet_control::nbfeed::Nbank> {
    use kuzet_control::nbfeed::{cases::CaseDesk, pull};
    let NbInputs {
        layer,
        centre,
        queries,
        answers,
    } = inputs;
    let nb = &cfg.nbank;
    let read = |key: &str, p: &Option<std::path::PathBuf>| -> anyhow::Result<Option<Vec<u8>>> {
        match p {
            Some(p) => {
                let p = cfg.resolve(p);
                Ok(Some(
                    std::fs::read(&p).with_context(|| format!("nbank.{key} {}", p.display()))?,
                ))
            }
            None => Ok(None),
        }
    };
    let tls = pull::TlsFiles {
        ca_pem: read("ca_file", &nb.ca_file)?,
        identity_pem: match (
            read("client_cert_file", &nb.client_cert_file)?,
            read("client_key_file", &nb.client_key_file)?,
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => None,
        },
    };
    let url = nb.url.clone().unwrap_or_default();
    let http = pull::Http::new(&url, Duration::from_millis(nb.timeout_ms), &tls)
        .map_err(|e| anyhow::anyhow!(e))?;
    let keys: Arc<[_]> = nb.keys().map_err(|e| anyhow::anyhow!(e))?.into();
    let holidays = nb.holidays_file.as_ref().map(|p| cfg.resolve(p));
    let calendar = nb
        .calendar(holidays.as_deref())
        .map_err(|e| anyhow::anyhow!(e))?;
    let cases = Arc::new(CaseDesk {
        store: centre.clone(),
        calendar,
        working_days: nb.case_working_days,
        utc_offset_s: nb.utc_offset_s,
        warn: Duration::from_secs(nb.case_warn_s),
        store_id: store_id.clone(),
        metrics: metrics.clone(),
        late_after: Duration::from_secs(nb.victim_delay_s),
        refusals: Default::default(),
    });
    let watch = queries.map(|queries| {
        Arc::new(kuzet_control::nbfeed::watch::Watch {
            answers: std::sync::Mutex::new(answers),
            queries,
            store: centre.clone(),
            layer: layer.clone(),
            plan: Arc::new(
                cfg.plan()
                    .unwrap_or_else(|_| kuzet_rules::NumberingPlan::kazakhstan()),
            ),
            store_id: store_id.clone(),
            report_fraud_numbers: nb.report_fraud_numbers,
            lookback_s: nb.victim_lookback_s as i64,
            feedback_every_s: nb.feedback_every_s as i64,
            metrics: metrics.clone(),
        })
    });
    let puller = Arc::new(pull::Puller {
        http: http.clone(),
        keys,
        layer,
        store: centre.clone(),
        cases: cases.clone(),
        nudge,
        metrics: metrics.clone(),
        poll: Duration::from_millis(nb.poll_ms),
        stale_after: Duration::from_secs(nb.stale_after_s),
    });
    tracing::info!(url = %url, poll_ms = nb.poll_ms, keys = nb.keys.len(), "the National Bank's Anti-Fraud Centre is connected");
    Ok(kuzet_control::nbfeed::Nbank {
        puller,
        cases,
        http,
        store: centre,
        metrics,
        watch,
    })
}

/// Answered calls the Centre's potential-victim reports may fall behind
/// by before they are dropped (and counted).
const ANSWERS_QUEUE: usize = 65_536;

/// Descriptors kept out of every connection cap: the store, the audit
/// log, the record queue, list files being reloaded, the sockets.
const DESCRIPTORS_KEPT: usize = 64;

/// The file an older kuzet wrote its local token to; removed at start.
const OLD_LOCAL_TOKEN_FILE: &str = "local.token";

/// The record queue's file in the data directory.
pub const RECORDS_FILE: &str = "records.ring";

/// Opens the record queue in the data directory, commits whatever an
/// earlier process left in it (a crash, a SIGKILL) to the store, and
/// makes it the configured size.
fn open_records(
    dir: &std::path::Path,
    bytes: usize,
    reserve: u8,
    st: &mut dyn RecordWriter,
    metrics: &Metrics,
) -> anyhow::Result<Arc<RecordRing>> {
    let path = dir.join(RECORDS_FILE);
    let file = kuzet_store::private::open_private(&path)
        .with_context(|| format!("opening the record queue {}", path.display()))?;
    let ring = RecordRing::in_file(&file, bytes, reserve)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let (n, lost) = kuzet_control::recorder::replay(&ring, st, metrics)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if n > 0 || lost > 0 {
        tracing::warn!(
            records = n,
            unreadable_bytes = lost,
            path = %path.display(),
            "records the last run left in the record queue (it did not stop cleanly) are committed to the store"
        );
    }
    let ring = if ring.is_size(bytes) {
        ring
    } else {
        drop(ring);
        RecordRing::fresh(&file, bytes, reserve)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    };
    Ok(Arc::new(ring))
}

/// Binds the control API's Unix socket in the data directory, 0600: a
/// stale one (a socket kuzet's user left) is replaced; anything else there
/// is refused (the outer error). A socket that cannot be bound (a path
/// longer than a socket address holds) is the inner error: kuzet serves
/// without it.
fn bind_control_socket(
    dir: &std::path::Path,
) -> anyhow::Result<anyhow::Result<std::os::unix::net::UnixListener>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let path = dir.join(kuzet_control::investigate::SOCKET_FILE);
    if let Ok(m) = std::fs::symlink_metadata(&path) {
        let ours = Some(m.uid()) == kuzet_store::private::process_uid();
        if !(m.file_type().is_socket() && ours) {
            anyhow::bail!(
                "{} exists and is not a socket kuzet's user left; remove it",
                path.display()
            );
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    let l = match std::os::unix::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            return Ok(Err(anyhow::anyhow!(
                "binding the control socket {}: {e}",
                path.display()
            )))
        }
    };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))?;
    Ok(Ok(l))
}

/// Lowers the calling thread to nice 10: on a core it shares with a SIP
/// worker, the control plane and the verdict log take the worker's
/// leftovers rather than stalling calls (a sweep of a million numbers, a
/// reload of ten million).
fn background_priority(what: &str) {
    if let Err(e) = kuzet_net::lower_thread_priority(BACKGROUND_NICE) {
        tracing::warn!(thread = what, error = %e, "could not lower the thread's priority");
    }
}

/// Puts the verdict log in the idle scheduling class: a SIP worker that
/// wakes on its core takes the core at once (at nice 10 it could wait out
/// the rest of the recorder's slice, a millisecond or more in SQLite).
/// Under a load that leaves no idle time the queue fills and records are
/// dropped and counted (`store_dropped_total`), never calls. Falls back to
/// nice 10 where the class is refused.
fn recorder_priority() {
    if let Err(e) = kuzet_net::idle_thread_policy() {
        tracing::debug!(error = %e, "no idle scheduling class; the verdict log runs at nice 10");
        background_priority("verdict log");
    }
}

/// The nice value of kuzet's background threads.
const BACKGROUND_NICE: i32 = 10;

impl Running {
    /// Stops every thread and waits for them. The verdict log goes last:
    /// it drains every event still queued, then ends when the workers (the
    /// senders) are gone.
    pub fn stop(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The workers are gone: the journal and the recorder empty their
        // queues and end.
        self.journal_stop.store(true, Ordering::Release);
        if let Some(t) = self.journal.take() {
            let _ = t.join();
        }
        self.recorder_stop.store(true, Ordering::Release);
        if let Some(t) = self.events.take() {
            let _ = t.join();
        }
    }
}
