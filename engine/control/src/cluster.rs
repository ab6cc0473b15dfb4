//! Behaviour counts shared between nodes through Redis (issue 22, its
//! first part): each node scores from its own state and, off the call
//! path, trades per-node deltas with the others.
//!
//! Every `push_interval_ms` (200) the node exports what it counted since
//! its last export ([`kuzet_rules::state::Delta`], the wire form in
//! `kuzet_rules::state::wire`) and appends it to one Redis stream with
//! its node name, trimmed to the last `max_age_ms` (10 s) of entries. It
//! reads the entries the other nodes appended since it last read, and
//! merges each into its state: per node, per bucket, counts are added (a
//! G-counter), never replaced by totals, so one busy node never makes
//! another reject its own traffic. An entry older than `max_age_ms` is
//! ignored: a node back from a partition does not replay stale counts.
//! A node that starts reads the last `max_age_ms` of entries first.
//!
//! Redis down, stalled or unreachable changes nothing for a call: the
//! call path never touches this module. Every Redis request has a
//! deadline; the node goes on with its local state, keeps the deltas it
//! could not send (bounded: those younger than `max_age_ms`) and sends
//! them when Redis is back, says so at WARN once a minute, and shows it as
//! a `/readyz` warning (the node stays ready).
//!
//! What is approximate: a node sees the others' calls up to two push
//! intervals (plus Redis's round trips) late: a count made just after a
//! node's push goes out with its next one, and another node reads it on
//! its next round after that. So a campaign spread over N nodes at R
//! calls/s per node can pass a threshold by about N × R × 2 × interval
//! calls before every node knows (ARCHITECTURE.md, `cluster.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kuzet_dataplane::counter_set;
use kuzet_dataplane::handler::Handler;
use kuzet_dataplane::metrics::{Gauge, Metrics};
use kuzet_rules::state::Delta;
use serde::Deserialize;
use tokio::sync::watch;

/// `[cluster]`: the nodes' shared Redis.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://host:port/db` (or `rediss://` for TLS). Unset: this node
    /// counts alone.
    pub redis_url: Option<String>,
    /// How often deltas are pushed and read.
    pub push_interval_ms: u64,
    /// A contribution older than this is ignored, and unsent deltas older
    /// than this are dropped.
    pub max_age_ms: u64,
    /// The Redis key prefix (several kuzet clusters may share a Redis).
    pub key_prefix: String,
    /// Deadline of each Redis request.
    pub timeout_ms: u64,
    /// How long a singleton's lease lasts without renewal (the National
    /// Bank feed's puller, its case clock and report outbox, the register
    /// outbox), with a store every node shares: its holder renews it
    /// every third of this, and another node takes over within about
    /// this plus a third of it after the holder dies.
    pub lease_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: None,
            push_interval_ms: 200,
            max_age_ms: 10_000,
            key_prefix: "kuzet".into(),
            timeout_ms: 1_000,
            lease_ms: 5_000,
        }
    }
}

impl ClusterConfig {
    /// Whether the node shares its counts.
    pub fn enabled(&self) -> bool {
        self.redis_url.is_some()
    }

    /// Checks the section; errors name the key.
    pub fn check(&self) -> Result<(), String> {
        if let Some(u) = &self.redis_url {
            redis::Client::open(u.as_str()).map_err(|e| format!("cluster.redis_url {u:?}: {e}"))?;
        }
        if self.push_interval_ms == 0 || self.push_interval_ms > 60_000 {
            return Err("cluster.push_interval_ms: between 1 and 60000".into());
        }
        if self.max_age_ms < self.push_interval_ms {
            return Err("cluster.max_age_ms must be at least cluster.push_interval_ms".into());
        }
        if self.timeout_ms == 0 {
            return Err("cluster.timeout_ms must be above 0".into());
        }
        if self.lease_ms > 600_000 || self.lease_ms < self.timeout_ms.saturating_mul(3) {
            return Err(format!(
                "cluster.lease_ms = {}: between 3 x cluster.timeout_ms ({}) and 600000 (a renewal that waits out its deadline must leave time for another before the lease lapses)",
                self.lease_ms,
                self.timeout_ms.saturating_mul(3)
            ));
        }
        if self.key_prefix.is_empty()
            || !self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b))
        {
            return Err("cluster.key_prefix: letters, digits and - _ : .".into());
        }
        Ok(())
    }

    /// The stream every node appends to.
    pub fn stream(&self) -> String {
        format!("{}:counts", self.key_prefix)
    }
}

counter_set! {
    /// The shared counts' counters.
    pub struct ClusterCounters {
        pushed => "cluster_deltas_pushed_total", "Behaviour deltas this node appended to Redis",
        merged => "cluster_deltas_merged_total", "Other nodes' behaviour deltas merged into this node's state",
        stale => "cluster_deltas_stale_total", "Other nodes' deltas ignored as older than cluster.max_age_ms",
        refused => "cluster_deltas_refused_total", "Deltas that did not decode (another version, damaged)",
        dropped => "cluster_deltas_dropped_total", "This node's deltas never sent: Redis was away longer than cluster.max_age_ms",
        errors => "cluster_redis_errors_total", "Redis requests that failed or passed their deadline",
    }
}

/// This node in the cluster: its name, and whether its store is on (for
/// the health it reports).
#[derive(Clone, Debug)]
pub struct Me {
    /// The node's name.
    pub node: String,
    /// Whether the store is on (readiness needs it writable then).
    pub store_on: bool,
}

/// Shares `handler`'s counts through Redis as `me` until `shutdown`.
pub async fn run(
    cfg: ClusterConfig,
    me: Me,
    handler: Arc<Handler>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let c = metrics.counter_set::<ClusterCounters>();
    let Some(url) = cfg.redis_url.clone() else {
        return;
    };
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cluster.redis_url; counting alone");
            return;
        }
    };
    let stream = cfg.stream();
    let deadline = Duration::from_millis(cfg.timeout_ms);
    let max_age_ms = cfg.max_age_ms as i64;
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    // Read from max_age ago: a node that starts takes the others' recent
    // counts.
    let mut last_id = format!("{}-0", now_ms() - max_age_ms);
    let mut unsent: VecDeque<(i64, Vec<u8>)> = VecDeque::new();
    let mut last_warn: Option<Instant> = None;
    metrics.set(Gauge::ClusterOn, 1);
    loop {
        // Export what this node counted since the last push.
        let h = handler.clone();
        if let Ok(d) = tokio::task::spawn_blocking(move || h.export_state()).await {
            if !d.is_empty() {
                unsent.push_back((now_ms(), d.encode()));
            }
        }
        while unsent
            .front()
            .is_some_and(|(t, _)| now_ms() - t > max_age_ms)
        {
            unsent.pop_front();
            c.dropped.inc();
        }
        if conn.is_none() {
            match tokio::time::timeout(deadline, client.get_multiplexed_async_connection()).await {
                Ok(Ok(k)) => conn = Some(k),
                _ => c.errors.inc(),
            }
        }
        let ok = match conn.as_mut() {
            Some(k) => {
                trade(
                    k,
                    &stream,
                    &me,
                    &mut unsent,
                    &mut last_id,
                    max_age_ms,
                    deadline,
                    &handler,
                    &c,
                    &metrics,
                )
                .await
            }
            None => false,
        };
        if !ok {
            conn = None;
            c.errors.inc();
            if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                last_warn = Some(Instant::now());
                tracing::warn!(unsent = unsent.len(), "Redis is unreachable: this node counts on its own state until it is back (calls are not affected)");
            }
        }
        metrics.set(Gauge::ClusterRedisUp, i64::from(ok));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(cfg.push_interval_ms)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One round with Redis: the unsent deltas appended (pipelined, the
/// stream trimmed to `max_age_ms`), then the others' new entries read
/// and merged. False when Redis failed or passed the deadline.
#[allow(clippy::too_many_arguments)]
async fn trade(
    k: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    me: &Me,
    unsent: &mut VecDeque<(i64, Vec<u8>)>,
    last_id: &mut String,
    max_age_ms: i64,
    deadline: Duration,
    handler: &Arc<Handler>,
    c: &ClusterCounters,
    metrics: &Metrics,
) -> bool {
    // This node's report of itself (expiring with max_age), with what it
    // sends: `kuzet nodes` reads them.
    let node = me.node.as_str();
    let mut p = redis::pipe();
    let key = node_key(stream, node);
    p.cmd("HSET")
        .arg(&key)
        .arg("version")
        .arg(handler.version().to_string())
        .arg("lag_ms")
        .arg(metrics.gauge(Gauge::ClusterLagMs))
        .arg("seen_us")
        .arg(now_ms() * 1_000)
        .arg("redis_up")
        .arg(1)
        .arg("ready")
        .arg(i64::from(crate::admin::is_ready(metrics, me.store_on)))
        .ignore();
    p.cmd("PEXPIRE").arg(&key).arg(max_age_ms).ignore();
    if !unsent.is_empty() {
        let min_id = format!("{}-0", now_ms() - max_age_ms);
        for (_, d) in unsent.iter() {
            p.cmd("XADD")
                .arg(stream)
                .arg("MINID")
                .arg("~")
                .arg(&min_id)
                .arg("*")
                .arg("n")
                .arg(node)
                .arg("d")
                .arg(d.as_slice())
                .ignore();
        }
    }
    match tokio::time::timeout(deadline, p.query_async::<()>(k)).await {
        Ok(Ok(())) => {
            c.pushed.add(unsent.len() as u64);
            unsent.clear();
        }
        _ => return false,
    }
    // The others' entries since the last read.
    let mut read = redis::cmd("XREAD");
    read.arg("COUNT")
        .arg(4096)
        .arg("STREAMS")
        .arg(stream)
        .arg(last_id.as_str());
    let reply = match tokio::time::timeout(
        deadline,
        read.query_async::<Option<redis::streams::StreamReadReply>>(k),
    )
    .await
    {
        Ok(Ok(r)) => r,
        _ => return false,
    };
    let now = now_ms();
    let mut deltas = Vec::new();
    let mut newest_ms = None;
    for key in reply.map(|r| r.keys).unwrap_or_default() {
        for e in key.ids {
            *last_id = e.id.clone();
            let at_ms: i64 =
                e.id.split('-')
                    .next()
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(0);
            let from: Option<String> = e.get("n");
            if from.as_deref() == Some(node) {
                continue;
            }
            if now - at_ms > max_age_ms {
                c.stale.inc();
                continue;
            }
            let Some(bytes) = e.get::<Vec<u8>>("d") else {
                c.refused.inc();
                continue;
            };
            match Delta::decode(&bytes) {
                Ok(d) => {
                    deltas.push(d);
                    newest_ms = Some(at_ms);
                }
                Err(_) => c.refused.inc(),
            }
        }
    }
    if !deltas.is_empty() {
        let n = deltas.len() as u64;
        let h = handler.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for d in &deltas {
                let _ = h.merge_state(d);
            }
        })
        .await;
        c.merged.add(n);
    }
    if let Some(t) = newest_ms {
        metrics.set(Gauge::ClusterLagMs, (now - t).max(0));
    }
    true
}

fn now_ms() -> i64 {
    kuzet_store::now_us() / 1_000
}

/// The key of `node`'s report of itself.
fn node_key(stream: &str, node: &str) -> String {
    format!("{stream}:node:{node}")
}

/// `kuzet.cluster.v1`: the nodes as they last reported themselves in
/// Redis, behind the access gate.
pub struct NodeService {
    cfg: ClusterConfig,
    gate: Arc<crate::gate::AccessGate>,
}

impl NodeService {
    /// The service over `[cluster]` (unset: every call says this node
    /// counts alone).
    pub fn new(cfg: ClusterConfig, gate: Arc<crate::gate::AccessGate>) -> NodeService {
        NodeService { cfg, gate }
    }

    /// The nodes' reports, by name.
    async fn nodes(&self) -> Result<Vec<kuzet_api::cluster::Node>, tonic::Status> {
        let Some(url) = &self.cfg.redis_url else {
            return Err(tonic::Status::failed_precondition(
                "this node counts alone: [cluster] redis_url is not set",
            ));
        };
        let unavailable = |e: String| tonic::Status::unavailable(format!("Redis: {e}"));
        let deadline = Duration::from_millis(self.cfg.timeout_ms);
        let client = redis::Client::open(url.as_str()).map_err(|e| unavailable(e.to_string()))?;
        let mut k = tokio::time::timeout(deadline, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| unavailable("no answer".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        let prefix = node_key(&self.cfg.stream(), "");
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = tokio::time::timeout(
                deadline,
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut k),
            )
            .await
            .map_err(|_| unavailable("no answer".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 || keys.len() > 10_000 {
                break;
            }
        }
        keys.sort();
        keys.dedup();
        let mut out = Vec::new();
        for key in keys {
            let h: std::collections::HashMap<String, String> = tokio::time::timeout(
                deadline,
                redis::cmd("HGETALL").arg(&key).query_async(&mut k),
            )
            .await
            .map_err(|_| unavailable("no answer".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
            if h.is_empty() {
                continue;
            }
            let num = |f: &str| h.get(f).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            out.push(kuzet_api::cluster::Node {
                name: key[prefix.len()..].to_string(),
                version: h.get("version").cloned().unwrap_or_default(),
                lag_ms: num("lag_ms"),
                seen_us: num("seen_us"),
                redis_up: num("redis_up") == 1,
                ready: num("ready") == 1,
                leases: Vec::new(),
            });
        }
        // Who holds each singleton's lease (none without a shared store).
        for s in crate::lease::Singleton::ALL {
            let key = crate::lease::lease_key(&self.cfg.key_prefix, s.name());
            let held: Option<String> =
                tokio::time::timeout(deadline, redis::cmd("GET").arg(&key).query_async(&mut k))
                    .await
                    .map_err(|_| unavailable("no answer".into()))?
                    .map_err(|e| unavailable(e.to_string()))?;
            let Some((holder, token)) = held.as_deref().and_then(crate::lease::parse_holder) else {
                continue;
            };
            if let Some(n) = out.iter_mut().find(|n| n.name == holder) {
                n.leases.push(kuzet_api::cluster::Lease {
                    name: s.name().to_string(),
                    token,
                });
            }
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl kuzet_api::cluster::node_service_server::NodeService for NodeService {
    async fn list_nodes(
        &self,
        req: tonic::Request<kuzet_api::cluster::ListNodesRequest>,
    ) -> Result<tonic::Response<kuzet_api::cluster::ListNodesResponse>, tonic::Status> {
        let creds = crate::gate::Credentials::grpc(&req);
        let filter = crate::publishing::Filter::new(serde_json::json!({}));
        crate::publishing::answer(
            &self.gate,
            &creds,
            &crate::gate::ops::LIST_NODES,
            &filter,
            |_| async {
                let nodes = self.nodes().await?;
                let n = nodes.len() as u64;
                Ok((
                    kuzet_api::cluster::ListNodesResponse {
                        nodes,
                        now_us: kuzet_store::now_us(),
                    },
                    n,
                ))
            },
        )
        .await
        .map(tonic::Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_leaves_room_for_a_renewal_that_waits_out_its_deadline() {
        let mut c = ClusterConfig {
            redis_url: Some("redis://127.0.0.1:6379/".into()),
            ..ClusterConfig::default()
        };
        c.check().unwrap();
        c.lease_ms = 2_999;
        let e = c.check().unwrap_err();
        assert!(
            e.starts_with("cluster.lease_ms = 2999: between 3 x cluster.timeout_ms (3000)"),
            "{e}"
        );
        c.lease_ms = 3_000;
        c.check().unwrap();
        c.lease_ms = 600_001;
        assert!(c.check().unwrap_err().starts_with("cluster.lease_ms"));
        // A deadline too long for any lease is refused, not overflowed.
        c.timeout_ms = u64::MAX;
        c.lease_ms = 5_000;
        assert!(c.check().unwrap_err().starts_with("cluster.lease_ms"));
    }
}
