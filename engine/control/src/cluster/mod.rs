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
//! calls before every node knows (ARCHITECTURE.md, `cluster/`).
//!
//! The Redis is one instance (`redis_url`) or a Redis Cluster named by
//! seed nodes (`redis_cluster_urls`), reached through [`link`]. Every key
//! carries the hash tag `{key_prefix}`, so on a cluster they all live on
//! the master of one slot. When that master fails, its replica takes over
//! (Redis's own failover, a few seconds): meanwhile the nodes count
//! alone exactly as with a single Redis down, and they trade again once
//! the client has found the new master. What the old master had not yet
//! passed to its replica (Redis replicates asynchronously) is lost: at
//! most the last push interval's deltas of each node, which the other
//! nodes then never count.

pub mod link;

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
    /// One Redis instance, `redis://host:port/db`. Unset, and
    /// `redis_cluster_urls` empty: this node counts alone.
    pub redis_url: Option<String>,
    /// A Redis Cluster instead: seed nodes, `redis://host:port/` each
    /// (any of its nodes; the client learns the others from them).
    pub redis_cluster_urls: Vec<String>,
    /// How often deltas are pushed and read.
    pub push_interval_ms: u64,
    /// A contribution older than this is ignored, and unsent deltas older
    /// than this are dropped.
    pub max_age_ms: u64,
    /// The Redis key prefix (several kuzet clusters may share a Redis);
    /// every key is under the hash tag `{key_prefix}` ([`Self::tag`]).
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
            redis_cluster_urls: Vec::new(),
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
        self.endpoint().is_some()
    }

    /// Where the cluster's Redis is, if the node shares its counts.
    pub fn endpoint(&self) -> Option<link::Endpoint> {
        match (&self.redis_url, self.redis_cluster_urls.is_empty()) {
            (Some(u), _) => Some(link::Endpoint::Single(u.clone())),
            (None, false) => Some(link::Endpoint::Cluster(self.redis_cluster_urls.clone())),
            (None, true) => None,
        }
    }

    /// Checks the section; errors name the key.
    pub fn check(&self) -> Result<(), String> {
        if self.redis_url.is_some() && !self.redis_cluster_urls.is_empty() {
            return Err("cluster.redis_url and cluster.redis_cluster_urls are both set: set redis_url for one Redis, or redis_cluster_urls for a Redis Cluster's seed nodes, not both".into());
        }
        if let Some(u) = &self.redis_url {
            redis::Client::open(u.as_str()).map_err(|e| format!("cluster.redis_url {u:?}: {e}"))?;
        }
        for (i, u) in self.redis_cluster_urls.iter().enumerate() {
            let at = format!("cluster.redis_cluster_urls[{i}] {u:?}");
            let c = redis::Client::open(u.as_str()).map_err(|e| format!("{at}: {e}"))?;
            if c.get_connection_info().redis_settings().db() != 0 {
                return Err(format!(
                    "{at}: a Redis Cluster has database 0 only (leave the path empty or /0)"
                ));
            }
            if self.redis_cluster_urls[..i].contains(u) {
                return Err(format!("{at}: listed twice"));
            }
        }
        if let Some(e @ link::Endpoint::Cluster(_)) = self.endpoint() {
            link::Client::open(&e, Duration::from_millis(self.timeout_ms.max(1)))
                .map_err(|e| format!("cluster.redis_cluster_urls: {e}"))?;
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

    /// The hash tag every key of this kuzet cluster starts with,
    /// `{key_prefix}`: on a Redis Cluster, all of them in one slot.
    pub fn tag(&self) -> String {
        tag(&self.key_prefix)
    }

    /// The stream every node appends to, `{prefix}:counts`.
    pub fn stream(&self) -> String {
        format!("{}:counts", self.tag())
    }

    /// The set of the nodes that reported themselves, `{prefix}:nodes`,
    /// scored by when each last did (ms since the epoch).
    pub fn members(&self) -> String {
        format!("{}:nodes", self.tag())
    }
}

/// The hash tag of the keys under `prefix`: `{prefix}`.
pub fn tag(prefix: &str) -> String {
    format!("{{{prefix}}}")
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
        rebuilt => "cluster_redis_cluster_rebuilds_total", "Times the Redis Cluster client failed every request of 5 in a row and was made again from the seed nodes",
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
    let Some(endpoint) = cfg.endpoint() else {
        return;
    };
    let deadline = Duration::from_millis(cfg.timeout_ms);
    let mut link = match link::Client::open(&endpoint, deadline) {
        Ok(client) => client.link(Some(c.clone())),
        Err(e) => {
            tracing::error!(error = %e, "cluster.redis_url or redis_cluster_urls; counting alone");
            return;
        }
    };
    let keys = Keys {
        stream: cfg.stream(),
        members: cfg.members(),
    };
    let max_age_ms = cfg.max_age_ms as i64;
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
        let ok = trade(
            &mut link,
            &keys,
            &me,
            &mut unsent,
            &mut last_id,
            max_age_ms,
            &handler,
            &c,
            &metrics,
        )
        .await;
        if !ok {
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

/// The keys the counts and the node reports use.
struct Keys {
    /// `{prefix}:counts`.
    stream: String,
    /// `{prefix}:nodes`.
    members: String,
}

/// One round with Redis: this node's report of itself and the unsent
/// deltas appended (one pipeline, the stream trimmed to `max_age_ms`),
/// then the others' new entries read and merged. False when Redis failed
/// or passed the deadline.
#[allow(clippy::too_many_arguments)]
async fn trade(
    k: &mut link::Link,
    keys: &Keys,
    me: &Me,
    unsent: &mut VecDeque<(i64, Vec<u8>)>,
    last_id: &mut String,
    max_age_ms: i64,
    handler: &Arc<Handler>,
    c: &ClusterCounters,
    metrics: &Metrics,
) -> bool {
    // This node's report of itself (expiring with max_age), with what it
    // sends, and its name in the members' set scored by the time (the
    // set trimmed to max_age, and gone with it when every node is):
    // `kuzet nodes` reads them.
    let node = me.node.as_str();
    let stream = keys.stream.as_str();
    let now = now_ms();
    let mut p = redis::pipe();
    let key = node_key(stream, node);
    p.cmd("HSET")
        .arg(&key)
        .arg("version")
        .arg(handler.version().to_string())
        .arg("lag_ms")
        .arg(metrics.gauge(Gauge::ClusterLagMs))
        .arg("seen_us")
        .arg(now * 1_000)
        .arg("redis_up")
        .arg(1)
        .arg("ready")
        .arg(i64::from(crate::admin::is_ready(metrics, me.store_on)))
        .ignore();
    p.cmd("PEXPIRE").arg(&key).arg(max_age_ms).ignore();
    p.cmd("ZADD").arg(&keys.members).arg(now).arg(node).ignore();
    p.cmd("ZREMRANGEBYSCORE")
        .arg(&keys.members)
        .arg("-inf")
        .arg(now - max_age_ms)
        .ignore();
    p.cmd("PEXPIRE").arg(&keys.members).arg(max_age_ms).ignore();
    if !unsent.is_empty() {
        let min_id = format!("{}-0", now - max_age_ms);
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
    match k.pipe::<()>(&p).await {
        Ok(()) => {
            c.pushed.add(unsent.len() as u64);
            unsent.clear();
        }
        Err(_) => return false,
    }
    // The others' entries since the last read.
    let mut read = redis::cmd("XREAD");
    read.arg("COUNT")
        .arg(4096)
        .arg("STREAMS")
        .arg(stream)
        .arg(last_id.as_str());
    let reply = match k
        .query::<Option<redis::streams::StreamReadReply>>(&read)
        .await
    {
        Ok(r) => r,
        Err(_) => return false,
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

    /// The nodes' reports, by name: the members' set read, then every
    /// member's report and every lease's holder in one pipeline (one
    /// slot: on a Redis Cluster, two requests to one master).
    async fn nodes(&self) -> Result<Vec<kuzet_api::cluster::Node>, tonic::Status> {
        let Some(endpoint) = self.cfg.endpoint() else {
            return Err(tonic::Status::failed_precondition(
                "this node counts alone: [cluster] redis_url or redis_cluster_urls is not set",
            ));
        };
        let unavailable = |e: String| tonic::Status::unavailable(format!("Redis: {e}"));
        let deadline = Duration::from_millis(self.cfg.timeout_ms);
        let mut k = link::Client::open(&endpoint, deadline)
            .map_err(unavailable)?
            .link(None);
        // The members, at most 10,000 (by when they last reported).
        let mut names: Vec<String> = k
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.cfg.members())
                    .arg(0)
                    .arg(9_999),
            )
            .await
            .map_err(unavailable)?;
        names.sort();
        names.dedup();
        let stream = self.cfg.stream();
        let mut p = redis::pipe();
        for name in &names {
            p.cmd("HGETALL").arg(node_key(&stream, name));
        }
        for s in crate::lease::Singleton::ALL {
            p.cmd("GET")
                .arg(crate::lease::lease_key(&self.cfg.key_prefix, s.name()));
        }
        // The reports, then the leases' holders.
        let mut replies = k
            .pipe::<Vec<redis::Value>>(&p)
            .await
            .map_err(unavailable)?
            .into_iter();
        let bad = |e: redis::ParsingError| unavailable(e.to_string());
        let mut reports = Vec::new();
        for _ in &names {
            let v = replies.next().unwrap_or(redis::Value::Nil);
            reports.push(
                redis::from_redis_value::<std::collections::HashMap<String, String>>(v)
                    .map_err(bad)?,
            );
        }
        let mut held = Vec::new();
        for v in replies {
            held.push(redis::from_redis_value::<Option<String>>(v).map_err(bad)?);
        }
        let mut out = Vec::new();
        for (name, h) in names.into_iter().zip(reports) {
            // A member whose report expired (it stopped reporting) is
            // left out.
            if h.is_empty() {
                continue;
            }
            let num = |f: &str| h.get(f).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            out.push(kuzet_api::cluster::Node {
                name,
                version: h.get("version").cloned().unwrap_or_default(),
                lag_ms: num("lag_ms"),
                seen_us: num("seen_us"),
                redis_up: num("redis_up") == 1,
                ready: num("ready") == 1,
                leases: Vec::new(),
            });
        }
        // Who holds each singleton's lease (none without a shared store).
        for (s, held) in crate::lease::Singleton::ALL.iter().zip(held) {
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
    fn one_redis_or_a_redis_cluster_is_named_never_both_and_each_url_is_checked() {
        let seeds = || {
            vec![
                "redis://127.0.0.1:7000/".to_string(),
                "redis://127.0.0.1:7001".to_string(),
            ]
        };
        let mut c = ClusterConfig::default();
        assert_eq!(c.endpoint(), None);
        assert!(!c.enabled());
        c.redis_cluster_urls = seeds();
        c.check().unwrap();
        assert_eq!(c.endpoint(), Some(link::Endpoint::Cluster(seeds())));
        c.redis_url = Some("redis://127.0.0.1:6379/".into());
        let e = c.check().unwrap_err();
        assert!(
            e.starts_with("cluster.redis_url and cluster.redis_cluster_urls are both set"),
            "{e}"
        );
        c.redis_cluster_urls.clear();
        c.check().unwrap();
        assert_eq!(
            c.endpoint(),
            Some(link::Endpoint::Single("redis://127.0.0.1:6379/".into()))
        );
        let bad = |urls: &[&str]| {
            let c = ClusterConfig {
                redis_cluster_urls: urls.iter().map(|u| u.to_string()).collect(),
                ..ClusterConfig::default()
            };
            c.check().unwrap_err()
        };
        let e = bad(&["redis://127.0.0.1:7000/", "http://127.0.0.1:7001/"]);
        assert!(
            e.starts_with("cluster.redis_cluster_urls[1] \"http://127.0.0.1:7001/\": "),
            "{e}"
        );
        let e = bad(&["redis://127.0.0.1:7000/2"]);
        assert!(e.contains("[0]") && e.contains("database 0 only"), "{e}");
        let e = bad(&["redis://127.0.0.1:7000/", "redis://127.0.0.1:7000/"]);
        assert!(e.contains("[1]") && e.ends_with("listed twice"), "{e}");
        // Seeds whose credentials differ: the client refuses them.
        let e = bad(&["redis://:a@127.0.0.1:7000/", "redis://:b@127.0.0.1:7001/"]);
        assert!(e.starts_with("cluster.redis_cluster_urls: "), "{e}");
    }

    #[test]
    fn every_key_carries_the_prefix_as_its_hash_tag() {
        let c = ClusterConfig {
            key_prefix: "kz-a".into(),
            ..ClusterConfig::default()
        };
        assert_eq!(c.tag(), "{kz-a}");
        assert_eq!(c.stream(), "{kz-a}:counts");
        assert_eq!(c.members(), "{kz-a}:nodes");
        assert_eq!(node_key(&c.stream(), "n1"), "{kz-a}:counts:node:n1");
        assert_eq!(
            crate::lease::lease_key(&c.key_prefix, "nbank-feed"),
            "{kz-a}:lease:nbank-feed"
        );
        assert_eq!(
            crate::lease::token_key(&c.key_prefix, "nbank-feed"),
            "{kz-a}:lease:nbank-feed:token"
        );
        // No brace can come in through the prefix.
        let c = ClusterConfig {
            key_prefix: "a}b".into(),
            ..ClusterConfig::default()
        };
        assert!(c.check().unwrap_err().starts_with("cluster.key_prefix"));
    }

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
