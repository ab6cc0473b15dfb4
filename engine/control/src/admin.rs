//! The admin HTTP address: Prometheus `/metrics`, `/healthz` and `/readyz`.
//!
//! Served by axum on the control plane's runtime, never a SIP worker's.
//! A scrape reads the call path's atomics and copies the merged latency
//! histograms; it never takes a lock a worker waits on (workers merge with
//! `try_lock` and try again later). The exposition is written by
//! `prometheus-client` (OpenMetrics text), from a collector that reads
//! kuzet's own counters at scrape time, so the call path keeps its plain
//! relaxed atomics. The classic text format (0.0.4) is derived from it
//! for the clients that ask for it, or ask for nothing in particular
//! ([`exposition`] has the rules and the negotiation). Labels come from
//! bounded sets only: a rule id from the operator's rule file, a list
//! name, a stage name; never a number or a Call-ID. `/readyz` is 200 only when the lists are loaded, the SIP
//! sockets are bound and the store (when it is on) took its last commit.

use std::fmt::Write as _;
use std::sync::Arc;

pub mod exposition;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hdrhistogram::Histogram;
use kuzet_dataplane::metrics::{Gauge, Metrics, Stage};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

/// Seconds of failed journal writing before `/readyz` warns.
const JOURNAL_WARN_S: i64 = 30;

/// What the admin address reads.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    metrics: Arc<Metrics>,
    store_on: bool,
}

impl Admin {
    /// Serves `metrics` and the record queue's fill; `store_on` says
    /// whether readiness needs the store.
    pub fn new(
        metrics: Arc<Metrics>,
        store_on: bool,
        ring: Option<Arc<kuzet_dataplane::records::RecordRing>>,
    ) -> Admin {
        let mut registry = Registry::with_prefix("kuzet");
        registry.register_collector(Box::new(Exposition {
            metrics: metrics.clone(),
            store_on,
            ring,
            started: std::time::Instant::now(),
        }));
        Admin {
            inner: Arc::new(Inner {
                registry,
                metrics,
                store_on,
            }),
        }
    }

    /// The exposition text in OpenMetrics, as a Prometheus scrape gets it.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    /// The exposition text in `format`.
    pub fn render_as(&self, format: exposition::Format) -> String {
        match format {
            exposition::Format::OpenMetrics => self.render(),
            exposition::Format::Classic => exposition::to_classic(&self.render()),
        }
    }

    /// Why kuzet is not ready, one reason per line; empty when it is.
    pub fn not_ready(&self) -> Vec<&'static str> {
        reasons(&self.inner.metrics, self.inner.store_on)
    }
}

/// Whether `/readyz` answers 200 now, on a node whose store is on or off.
pub fn is_ready(m: &Metrics, store_on: bool) -> bool {
    reasons(m, store_on).is_empty()
}

fn reasons(m: &Metrics, store_on: bool) -> Vec<&'static str> {
    let mut why = Vec::new();
    if m.gauge(Gauge::ListsLoadedUnix) <= 0 {
        why.push("lists not loaded");
    }
    if m.gauge(Gauge::SocketsBound) != 1 {
        why.push("SIP sockets not bound");
    }
    // A store of the node's own that fails takes the node out, so calls
    // go where evidence is kept; a shared store fails for every node at
    // once, and taking them all out would help nothing: a warning, while
    // the record queue holds what the store does not take (a queue that
    // loses records makes the node unready below).
    if store_on && m.gauge(Gauge::StoreWritable) != 1 && m.gauge(Gauge::StoreShared) != 1 {
        why.push("store not writable");
    }
    match m.gauge(Gauge::StorePressure) {
        1 => why.push("store over its size limit: sampled allows are not recorded"),
        2 => why.push("store over its size limit: flags and shadow verdicts are not recorded"),
        _ => {}
    }
    if m.gauge(Gauge::RecordLossSustained) == 1 {
        why.push("records lost in most of the last 10 seconds (store_dropped_total)");
    }
    why
}

/// Binds the admin address (it fails the start when taken).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// How long a client may take to send a request's headers.
const HEADER_READ: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves until `shutdown` turns true: each connection the guard admits
/// gets HTTP/1 with a header-read deadline (a client trickling its
/// headers is cut off) and, through the guard, an idle limit; a connection
/// over the guard's caps is closed at once.
pub async fn serve(
    listener: std::net::TcpListener,
    admin: Admin,
    guard: Arc<crate::guard::ConnGuard>,
    shutdown: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin address failed; /metrics and health checks are off");
            return;
        }
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(admin);
    let mut stop = shutdown.clone();
    crate::guard::accept_loop(
        listener,
        guard,
        "admin address",
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
        move |io| {
            // hyper's header deadline covers every request on the
            // connection, the guard's idle limit the time between them.
            io.info().mark_request();
            let svc = hyper_util::service::TowerToHyperService::new(app.clone());
            let mut sd = shutdown.clone();
            tokio::spawn(async move {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ)
                    .max_buf_size(16 * 1024);
                let conn = b.serve_connection(hyper_util::rt::TokioIo::new(io), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = async { let _ = sd.wait_for(|s| *s).await; } => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn).await;
                    }
                }
            });
        },
    )
    .await;
}

/// `/metrics` in the format the request's `Accept` asks for.
async fn metrics(State(a): State<Admin>, headers: HeaderMap) -> Response {
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    let format = exposition::negotiate(&accept);
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "Accept"),
        ],
        a.render_as(format),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// What is wrong without making the node unready: the node still serves
/// every call as it should, but someone should look.
fn warnings(m: &Metrics) -> Vec<String> {
    let mut w = Vec::new();
    if m.gauge(Gauge::StoreShared) == 1 && m.gauge(Gauge::StoreWritable) != 1 {
        w.push("the shared store is not taking commits: records wait in the record queue and are committed when it returns (kuzet_record_queue_used_bytes)".to_string());
    }
    if m.gauge(Gauge::NbankOn) == 1 && m.gauge(Gauge::NbankStale) == 1 {
        let last = m.gauge(Gauge::NbankLastOkUnix);
        w.push(if last > 0 {
            format!(
                "the National Bank feed is stale: last good answer {} s ago (the last good layer stays in force)",
                (kuzet_store::now_us() / 1_000_000 - last).max(0)
            )
        } else {
            "the National Bank feed has not answered since start (the layer kept in the store is in force)".to_string()
        });
    }
    if m.gauge(Gauge::ClusterOn) == 1 && m.gauge(Gauge::ClusterRedisUp) != 1 {
        w.push(
            "Redis is unreachable: this node counts on its own state (calls are not affected)"
                .to_string(),
        );
    }
    if m.gauge(Gauge::VersionsShared) == 1 {
        let behind = m.gauge(Gauge::VersionsBehindS);
        if behind > crate::publishing::shared::BEHIND_WARN_S {
            w.push(if m.gauge(Gauge::VersionsStoreUp) == 1 {
                format!("this node has been behind the shared published versions for {behind} s: a version in force elsewhere is not in force here (kuzet_versions_fetch_failures_total, the log)")
            } else {
                format!("the shared store of published versions has been unreachable for {behind} s: this node keeps the versions it has, and no version can be published")
            });
        }
    }
    if m.gauge(Gauge::JournalFailingS) > JOURNAL_WARN_S {
        w.push(format!(
            "the call journal has not been written for {} s: its rows are lost (journal_write_failed_total; calls are not affected)",
            m.gauge(Gauge::JournalFailingS)
        ));
    }
    if m.gauge(Gauge::JournalDropping) == 1 {
        w.push("the call journal is dropping entries: its queue is full, the node has no idle CPU left for its writer (journal_dropped_total; calls are not affected)".to_string());
    }
    if m.gauge(Gauge::CasesOverdue) > 0 {
        w.push(format!(
            "{} of the Centre's cases are past their deadline (kuzet cases list --due)",
            m.gauge(Gauge::CasesOverdue)
        ));
    }
    if m.gauge(Gauge::CentreLate) == 1 {
        w.push("reports to the Centre are waiting longer than [nbank] victim_delay_s (kuzet cases reports --state pending)".to_string());
    }
    if m.gauge(Gauge::CentreDeadLetters) > 0 {
        w.push(format!(
            "{} reports the Centre refused (dead letters)",
            m.gauge(Gauge::CentreDeadLetters)
        ));
    }
    w
}

async fn readyz(State(a): State<Admin>) -> Response {
    let why = a.not_ready();
    if why.is_empty() {
        let mut body = String::from("ready\n");
        for w in warnings(&a.inner.metrics) {
            let _ = writeln!(body, "warning: {w}");
        }
        return (StatusCode::OK, body).into_response();
    }
    let mut body = String::new();
    for w in why {
        let _ = writeln!(body, "not ready: {w}");
    }
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

/// Reads kuzet's counters, gauges and histograms at each scrape.
struct Exposition {
    metrics: Arc<Metrics>,
    store_on: bool,
    ring: Option<Arc<kuzet_dataplane::records::RecordRing>>,
    /// When the admin surface was made (the feed's staleness before its
    /// first good answer counts from it).
    started: std::time::Instant,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("kuzet metrics")
    }
}

/// Bucket bounds of the latency histograms, in µs: 10 µs to 1 s.
const BUCKETS_US: [u64; 16] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000,
];

/// Prometheus buckets (per bucket, not cumulative; the encoder sums them)
/// with the sum and count, in seconds, from an HDR histogram of µs.
fn buckets(h: &Histogram<u64>) -> (f64, u64, Vec<(f64, u64)>) {
    let mut out = Vec::with_capacity(BUCKETS_US.len() + 1);
    let mut below = 0u64;
    for &le in &BUCKETS_US {
        let upto = if h.is_empty() {
            0
        } else {
            h.count_between(0, le)
        };
        out.push((le as f64 / 1e6, upto.saturating_sub(below)));
        below = below.max(upto);
    }
    let total = h.len();
    out.push((f64::INFINITY, total.saturating_sub(below)));
    let sum = if total == 0 {
        0.0
    } else {
        h.mean() * total as f64 / 1e6
    };
    (sum, total, out)
}

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &*self.metrics;
        for (name, help, v) in m.described() {
            let base = name.strip_suffix("_total").unwrap_or(name);
            let e = enc.encode_descriptor(base, help, None, MetricType::Counter)?;
            ConstCounter::new(v).encode(e)?;
        }
        let hits = m.rule_hits();
        if !hits.is_empty() {
            let mut e = enc.encode_descriptor(
                "rule_hits",
                "Calls each rule fired on, by rule id and mode",
                None,
                MetricType::Counter,
            )?;
            for h in &hits {
                let labels = [("rule", &*h.id), ("mode", h.mode)];
                let fam = e.encode_family(&labels)?;
                ConstCounter::new(h.hits.load(std::sync::atomic::Ordering::Relaxed)).encode(fam)?;
            }
        }
        let lat = m.latencies();
        {
            let (sum, count, b) = buckets(&lat.service);
            let mut e = enc.encode_descriptor(
                "call_service",
                "Kernel arrival of a request to its answer sent (UDP)",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            e.encode_histogram::<NoLabelSet>(sum, count, &b, None)?;
        }
        {
            let mut e = enc.encode_descriptor(
                "stage",
                "Service time by stage: queue (kernel arrival to read), handle (parse, lists, rules, answer), send",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for s in Stage::ALL {
                let (sum, count, b) = buckets(&lat.stages[s as usize]);
                let labels = [("stage", s.as_str())];
                let mut fam = e.encode_family(&labels)?;
                fam.encode_histogram::<NoLabelSet>(sum, count, &b, None)?;
            }
        }
        {
            let mut e = enc.encode_descriptor(
                "list_entries",
                "Entries (numbers and prefixes) per list in force",
                None,
                MetricType::Gauge,
            )?;
            for (list, n) in m.list_entries() {
                let labels = [("list", list)];
                ConstGauge::new(n as i64).encode(e.encode_family(&labels)?)?;
            }
        }
        let ring = |f: fn(&kuzet_dataplane::records::RecordRing) -> u64| {
            self.ring.as_deref().map_or(0, f) as i64
        };
        let now_s = kuzet_store::now_us() / 1_000_000;
        let nb_on = m.gauge(Gauge::NbankOn) == 1;
        let oldest = m.gauge(Gauge::CentreOldestPendingUnix);
        let gauges: [(&str, &str, i64); 32] = [
            (
                "journal_on",
                "1 when the call journal is written ([journal] enabled, with a data directory)",
                m.gauge(Gauge::JournalOn),
            ),
            (
                "journal_bytes",
                "Bytes of the call journal's closed files",
                m.gauge(Gauge::JournalBytes),
            ),
            (
                "journal_failing_seconds",
                "How long writing the call journal has been failing (0: it is not)",
                m.gauge(Gauge::JournalFailingS),
            ),
            (
                "versions_shared",
                "1 when published versions are shared by the cluster's nodes ([publishing] shared_url and [cluster] redis_url)",
                m.gauge(Gauge::VersionsShared),
            ),
            (
                "versions_store_up",
                "1 when this node's last look at the shared published versions went through (0 also when not shared)",
                m.gauge(Gauge::VersionsStoreUp),
            ),
            (
                "versions_behind_seconds",
                "How long this node has been behind the shared published versions (0: it holds every change, or they are not shared)",
                m.gauge(Gauge::VersionsBehindS),
            ),
            (
                "cluster_configured",
                "1 when the node shares its behaviour counts through Redis ([cluster] redis_url or redis_cluster_urls)",
                m.gauge(Gauge::ClusterOn),
            ),
            (
                "cluster_redis_up",
                "1 when the last exchange with Redis went through (0 also when not configured)",
                m.gauge(Gauge::ClusterRedisUp),
            ),

            (
                "nbank_feed_configured",
                "1 when the National Bank feed is configured ([nbank] url)",
                i64::from(nb_on),
            ),
            (
                "nbank_feed_staleness_seconds",
                "Seconds since the National Bank feed last answered well (since start when it never has; 0 when not configured)",
                if !nb_on {
                    0
                } else {
                    match m.gauge(Gauge::NbankLastOkUnix) {
                        0 => self.started.elapsed().as_secs() as i64,
                        t => (now_s - t).max(0),
                    }
                },
            ),
            (
                "nbank_feed_stale",
                "1 while the National Bank feed is staler than [nbank] stale_after_s",
                m.gauge(Gauge::NbankStale),
            ),
            (
                "nbank_feed_sequence",
                "The feed batch the nb_feed layer reflects",
                m.gauge(Gauge::NbankSeq),
            ),
            (
                "nbank_cases_open",
                "The Centre's cases still open",
                m.gauge(Gauge::CasesOpen),
            ),
            (
                "nbank_cases_due_soon",
                "Open cases due within [nbank] case_warn_s",
                m.gauge(Gauge::CasesDueSoon),
            ),
            (
                "nbank_cases_overdue",
                "Open cases past their deadline",
                m.gauge(Gauge::CasesOverdue),
            ),
            (
                "nbank_reports_pending",
                "Reports waiting for delivery to the Centre",
                m.gauge(Gauge::CentrePending),
            ),
            (
                "nbank_reports_dead_letters",
                "Reports the Centre refused",
                m.gauge(Gauge::CentreDeadLetters),
            ),
            (
                "nbank_reports_late",
                "1 while a report to the Centre has waited longer than [nbank] victim_delay_s",
                m.gauge(Gauge::CentreLate),
            ),
            (
                "nbank_reports_oldest_pending_age_seconds",
                "Age of the oldest report still waiting for the Centre (0: none)",
                if oldest > 0 { (now_s - oldest).max(0) } else { 0 },
            ),
            (
                "lists_generation",
                "Generation of the lists in force (rises at each reload)",
                m.gauge(Gauge::ListsGeneration),
            ),
            (
                "lists_loaded_timestamp_seconds",
                "Unix time the lists in force were loaded",
                m.gauge(Gauge::ListsLoadedUnix),
            ),
            (
                "record_queue_used_bytes",
                "Bytes of the record queue holding records not yet committed to the store",
                ring(|r| r.used_bytes()),
            ),
            (
                "record_queue_capacity_bytes",
                "Bytes the record queue holds in all",
                ring(|r| r.capacity_bytes()),
            ),
            (
                "record_queue_reserved_bytes",
                "Bytes of the record queue only blocks and redirects may use",
                ring(|r| r.reserved_bytes()),
            ),
            (
                "store_pressure",
                "0 within the store's size limit; 1 over it (samples skipped); 2 still over (low-value records refused)",
                m.gauge(Gauge::StorePressure),
            ),
            (
                "store_writable",
                "1 when the store took its last commit; 0 after a failed one, or with the store off",
                if self.store_on {
                    m.gauge(Gauge::StoreWritable)
                } else {
                    0
                },
            ),
            (
                "outbox_pending",
                "Incidents waiting for delivery to the register",
                m.gauge(Gauge::OutboxPending),
            ),
            (
                "outbox_dead_letters",
                "Incidents the register refused",
                m.gauge(Gauge::OutboxDeadLetters),
            ),
            (
                "tcp_connections_open",
                "TCP connections open",
                m.gauge(Gauge::TcpConnections),
            ),
            (
                "sip_sockets_bound",
                "1 when the SIP sockets are bound",
                m.gauge(Gauge::SocketsBound),
            ),
            (
                "proxy_calls_in_progress",
                "Calls proxy mode follows now, from INVITE to BYE (each stats interval)",
                m.gauge(Gauge::CallsInProgress),
            ),
            (
                "ready",
                "1 when /readyz answers 200",
                i64::from(reasons(m, self.store_on).is_empty()),
            ),
        ];
        for (name, help, v) in gauges {
            // A name that ends in a base unit carries it as its unit.
            let (name, unit) = match (name.strip_suffix("_seconds"), name.strip_suffix("_bytes")) {
                (Some(base), _) => (base, Some(Unit::Seconds)),
                (_, Some(base)) => (base, Some(Unit::Bytes)),
                _ => (name, None),
            };
            let e = enc.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
            ConstGauge::new(v).encode(e)?;
        }
        {
            let e = enc.encode_descriptor(
                "cluster_replication_lag",
                "Age of the newest other node's behaviour delta when this node merged it (0 when not clustered)",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            ConstGauge::new(m.gauge(Gauge::ClusterLagMs) as f64 / 1e3).encode(e)?;
        }
        {
            let mut e = enc.encode_descriptor(
                "trend_findings",
                "Findings of the last read of the journal's trends ([journal] trends_every_s), by kind: surging ranges and trunks, slow SIM boxes, groups of callers with one cadence",
                None,
                MetricType::Gauge,
            )?;
            for (kind, g) in [
                ("surge", Gauge::TrendSurges),
                ("slow_simbox", Gauge::TrendSlowSimboxes),
                ("group", Gauge::TrendGroups),
            ] {
                let labels = [("kind", kind)];
                ConstGauge::new(m.gauge(g)).encode(e.encode_family(&labels)?)?;
            }
        }
        {
            let e = enc.encode_descriptor(
                "trend_last_read_timestamp_seconds",
                "When the last read of the journal's trends ended, Unix time (0: none yet)",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(m.gauge(Gauge::TrendLastRunUnix)).encode(e)?;
        }
        {
            let e = enc.encode_descriptor(
                "trend_last_read_duration",
                "How long the last read of the journal's trends took",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            ConstGauge::new(m.gauge(Gauge::TrendLastRunMs) as f64 / 1e3).encode(e)?;
        }
        let lag = m.versions_lag();
        if !lag.is_empty() {
            let mut e = enc.encode_descriptor(
                "versions_lag",
                "Changes of each shared published shelf (list or rules) this node does not hold yet",
                None,
                MetricType::Gauge,
            )?;
            for (shelf, n) in &lag {
                let labels = [("shelf", shelf.as_str())];
                ConstGauge::new(*n as i64).encode(e.encode_family(&labels)?)?;
            }
        }
        if let Some(leases) = m.find::<crate::lease::LeaseCounters>() {
            let states = leases.states();
            type Value = fn(&crate::lease::LeaseState) -> i64;
            let families: [(&str, &str, Value); 3] = [
                (
                    "lease_configured",
                    "1 when this node competes for the singleton's lease ([cluster] on, a shared store, the singleton configured)",
                    |s| i64::from(s.configured),
                ),
                (
                    "lease_held",
                    "1 while this node leads the singleton (holds its lease, its fencing token claimed in the store)",
                    |s| i64::from(s.held),
                ),
                (
                    "lease_token",
                    "The fencing token this node leads the singleton with (0 when it does not)",
                    |s| s.token as i64,
                ),
            ];
            for (name, help, value) in families {
                let mut e = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for s in &states {
                    let labels = [("lease", s.name)];
                    ConstGauge::new(value(s)).encode(e.encode_family(&labels)?)?;
                }
            }
        }
        let mut e = enc.encode_descriptor(
            "build_info",
            "kuzet's version (always 1)",
            None,
            MetricType::Gauge,
        )?;
        let labels = [("version", env!("CARGO_PKG_VERSION"))];
        ConstGauge::new(1i64).encode(e.encode_family(&labels)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node with lists loaded and sockets bound, its store failing.
    fn failing_store(shared: bool) -> Metrics {
        let m = Metrics::default();
        m.set(Gauge::ListsLoadedUnix, 1);
        m.set(Gauge::SocketsBound, 1);
        m.set(Gauge::StoreWritable, 0);
        m.set(Gauge::StoreShared, i64::from(shared));
        m
    }

    #[test]
    fn a_journal_dropping_entries_warns_and_keeps_the_node_ready() {
        let m = failing_store(true);
        m.set(Gauge::StoreWritable, 1);
        assert!(warnings(&m).is_empty());
        m.set(Gauge::JournalDropping, 1);
        assert!(reasons(&m, true).is_empty());
        let w = warnings(&m);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("the call journal is dropping entries"),
            "{w:?}"
        );
    }

    #[test]
    fn a_failing_store_of_the_nodes_own_makes_it_unready_a_shared_one_warns() {
        let own = failing_store(false);
        assert_eq!(reasons(&own, true), ["store not writable"]);
        assert!(warnings(&own).is_empty());
        let shared = failing_store(true);
        assert!(
            reasons(&shared, true).is_empty(),
            "every node would be out at once"
        );
        let w = warnings(&shared);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("the shared store is not taking commits"),
            "{w:?}"
        );
        // Once records are being lost, the node is unready either way.
        shared.set(Gauge::RecordLossSustained, 1);
        assert_eq!(
            reasons(&shared, true),
            ["records lost in most of the last 10 seconds (store_dropped_total)"]
        );
        // Writable again: neither.
        shared.set(Gauge::RecordLossSustained, 0);
        shared.set(Gauge::StoreWritable, 1);
        assert!(reasons(&shared, true).is_empty() && warnings(&shared).is_empty());
    }
}
