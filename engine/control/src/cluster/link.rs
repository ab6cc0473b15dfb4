//! The cluster's Redis as the counts, the node reports, `kuzet nodes` and
//! the lease keepers speak to it: one instance (`[cluster] redis_url`) or
//! a Redis Cluster named by seed nodes (`redis_cluster_urls`), behind
//! one [`Link`].
//!
//! A link connects on first use and runs each request (connecting
//! included) within its deadline. Every key kuzet writes carries the
//! hash tag `{key_prefix}` ([`super::ClusterConfig::tag`]), so on a Redis
//! Cluster all of them live in one slot, on one master: the counts'
//! stream, the node reports and their members' set, the leases and their
//! token counters. A pipeline and a script over several of them are then
//! one request to that master, as on a single instance.
//!
//! On one instance, a request that fails drops the connection and the
//! next one connects again. On a Redis Cluster the client keeps its
//! connections and its map of slots, and recovers from a failover by
//! itself (the master of kuzet's slot killed, its replica promoted, the
//! map refreshed: in the tests, with a 1 s `cluster-node-timeout`, the
//! replica takes over about 2.3 s after the kill and requests go through
//! again 2.5 to 4 s after the kill). Should it still fail [`REBUILD_AFTER`]
//! requests in a row, the link drops it and the next request makes a
//! new one from the seed nodes, so a client that lost its way (as an
//! earlier try found redis-rs 0.32's doing: it never left a dead master)
//! cannot stall the counts for good.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, FromRedisValue};

use super::ClusterCounters;

/// Consecutive failed requests after which a link to a Redis Cluster
/// drops its client's connections and starts again from the seed nodes.
pub const REBUILD_AFTER: u32 = 5;

/// Where the cluster's Redis is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// One instance: `redis://host:port/db`.
    Single(String),
    /// A Redis Cluster: its seed nodes' URLs (any of its nodes; the
    /// client learns the rest from them).
    Cluster(Vec<String>),
}

impl Endpoint {
    /// Whether it is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Endpoint::Cluster(_))
    }
}

/// An endpoint's client: the URLs checked, nothing connected.
#[derive(Clone)]
pub struct Client {
    inner: Inner,
    deadline: Duration,
}

#[derive(Clone)]
enum Inner {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner {
            Inner::Single(_) => "single",
            Inner::Cluster(_) => "cluster",
        };
        f.debug_struct("Client")
            .field("kind", &kind)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Client {
    /// The client of `endpoint`, every request within `deadline`. Errors
    /// name the URL that does not parse.
    pub fn open(endpoint: &Endpoint, deadline: Duration) -> Result<Client, String> {
        let inner = match endpoint {
            Endpoint::Single(url) => Inner::Single(
                redis::Client::open(url.as_str()).map_err(|e| format!("{url:?}: {e}"))?,
            ),
            Endpoint::Cluster(seeds) => {
                if seeds.is_empty() {
                    return Err("a Redis Cluster needs at least one seed node".into());
                }
                for u in seeds {
                    redis::Client::open(u.as_str()).map_err(|e| format!("{u:?}: {e}"))?;
                }
                Inner::Cluster(Box::new(
                    ClusterClient::builder(seeds.iter().map(String::as_str))
                        .connection_timeout(deadline)
                        .response_timeout(deadline)
                        .build()
                        .map_err(|e| format!("the seed nodes: {e}"))?,
                ))
            }
        };
        Ok(Client { inner, deadline })
    }

    /// A link through this client, not yet connected; with `counters`,
    /// it counts each time it starts a Redis Cluster's client again
    /// (`rebuilt`).
    pub fn link(&self, counters: Option<Arc<ClusterCounters>>) -> Link {
        Link {
            client: self.clone(),
            conn: None,
            failures: 0,
            counters,
        }
    }

    /// Whether it is a Redis Cluster's.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }

    /// A new connection (the caller bounds the time it takes).
    async fn connect(&self) -> Result<Conn, String> {
        match &self.inner {
            Inner::Single(c) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.deadline))
                    .set_response_timeout(Some(self.deadline));
                c.get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Single)
                    .map_err(|e| e.to_string())
            }
            Inner::Cluster(c) => c
                .get_async_connection()
                .await
                .map(|k| Conn::Cluster(Box::new(k)))
                .map_err(|e| e.to_string()),
        }
    }
}

enum Conn {
    Single(MultiplexedConnection),
    Cluster(Box<ClusterConnection>),
}

/// What a request is: one command or a pipeline.
enum Request<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

/// A connection to the cluster's Redis, made on first use (see the
/// module docs).
pub struct Link {
    client: Client,
    conn: Option<Conn>,
    /// Requests failed in a row.
    failures: u32,
    counters: Option<Arc<ClusterCounters>>,
}

impl Link {
    /// Runs `cmd` within the deadline (connecting first if need be).
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, String> {
        self.run(Request::Cmd(cmd)).await
    }

    /// Runs the pipeline `p` within the deadline; on a Redis Cluster its
    /// keys must share a slot (kuzet's all do: one hash tag).
    pub async fn pipe<T: FromRedisValue>(&mut self, p: &redis::Pipeline) -> Result<T, String> {
        self.run(Request::Pipe(p)).await
    }

    /// Whether it holds a connection now.
    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    async fn run<T: FromRedisValue>(&mut self, req: Request<'_>) -> Result<T, String> {
        let deadline = self.client.deadline;
        let (client, slot) = (&self.client, &mut self.conn);
        let work = async {
            if slot.is_none() {
                *slot = Some(client.connect().await?);
            }
            let out = match (slot.as_mut(), req) {
                (Some(Conn::Single(k)), Request::Cmd(c)) => c.query_async::<T>(k).await,
                (Some(Conn::Single(k)), Request::Pipe(p)) => p.query_async::<T>(k).await,
                (Some(Conn::Cluster(k)), Request::Cmd(c)) => c.query_async::<T>(&mut **k).await,
                (Some(Conn::Cluster(k)), Request::Pipe(p)) => p.query_async::<T>(&mut **k).await,
                (None, _) => return Err("no connection".to_string()),
            };
            out.map_err(|e| e.to_string())
        };
        let out = match tokio::time::timeout(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {deadline:?}")),
        };
        match &out {
            Ok(_) => self.failures = 0,
            Err(_) => self.failed(),
        }
        out
    }

    /// A request failed: one instance's connection is dropped at once, a
    /// Redis Cluster's after [`REBUILD_AFTER`] in a row.
    fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let cluster = matches!(self.conn, Some(Conn::Cluster(_)));
        if cluster && self.failures < REBUILD_AFTER {
            return;
        }
        if cluster {
            if let Some(c) = &self.counters {
                c.rebuilt.inc();
            }
            tracing::info!(
                failures = self.failures,
                "the Redis Cluster client failed every request of late: starting again from the seed nodes"
            );
        }
        self.conn = None;
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuzet_sim::servers::{RedisCluster, RedisServer};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn urls_that_do_not_parse_are_named() {
        let d = Duration::from_secs(1);
        let e = Client::open(&Endpoint::Single("http://x/".into()), d).unwrap_err();
        assert!(e.starts_with("\"http://x/\": "), "{e}");
        let e = Client::open(
            &Endpoint::Cluster(vec!["redis://127.0.0.1:1/".into(), "nope".into()]),
            d,
        )
        .unwrap_err();
        assert!(e.starts_with("\"nope\": "), "{e}");
        let e = Client::open(&Endpoint::Cluster(vec![]), d).unwrap_err();
        assert!(e.contains("at least one seed"), "{e}");
        assert!(
            Client::open(&Endpoint::Cluster(vec!["redis://127.0.0.1:1/".into()]), d)
                .unwrap()
                .is_cluster()
        );
    }

    /// The same requests, over keys of one hash tag: a pipeline, a script
    /// over two keys, a stream read.
    async fn exercise(link: &mut Link) {
        let mut p = redis::pipe();
        p.cmd("SET").arg("{t}:a").arg("1").ignore();
        p.cmd("XADD")
            .arg("{t}:s")
            .arg("*")
            .arg("n")
            .arg("x")
            .ignore();
        link.pipe::<()>(&p).await.unwrap();
        let mut eval = redis::cmd("EVAL");
        eval.arg("redis.call('SET', KEYS[2], redis.call('GET', KEYS[1]) + 1) return redis.call('GET', KEYS[2])")
            .arg(2)
            .arg("{t}:a")
            .arg("{t}:b");
        assert_eq!(link.query::<String>(&eval).await.unwrap(), "2");
        let mut read = redis::cmd("XREAD");
        read.arg("STREAMS").arg("{t}:s").arg("0");
        let r: redis::streams::StreamReadReply = link.query(&read).await.unwrap();
        assert_eq!(r.keys[0].ids.len(), 1);
    }

    #[test]
    fn a_link_runs_the_same_requests_on_one_redis_and_on_a_redis_cluster() {
        let d = Duration::from_secs(2);
        let one = RedisServer::start().unwrap();
        let cluster = RedisCluster::start().unwrap();
        let rt = rt();
        for e in [
            Endpoint::Single(one.url()),
            Endpoint::Cluster(cluster.seeds()),
        ] {
            let mut link = Client::open(&e, d).unwrap().link(None);
            rt.block_on(exercise(&mut link));
            assert!(link.connected());
        }
        // Two keys of different slots in one script: the cluster refuses.
        let mut link = Client::open(&Endpoint::Cluster(cluster.seeds()), d)
            .unwrap()
            .link(None);
        let mut eval = redis::cmd("EVAL");
        eval.arg("return redis.call('GET', KEYS[2])")
            .arg(2)
            .arg("{t}:a")
            .arg("{u}:a");
        let e = rt
            .block_on(link.query::<Option<String>>(&eval))
            .unwrap_err();
        assert!(e.contains("CROSSSLOT") || e.contains("slot"), "{e}");
    }

    #[test]
    fn a_failure_drops_one_instances_connection_and_a_clusters_after_several_in_a_row() {
        let d = Duration::from_millis(300);
        let rt = rt();
        // One instance: a failed request drops the connection.
        let ping = redis::cmd("PING");
        let mut one = RedisServer::start().unwrap();
        let mut link = Client::open(&Endpoint::Single(one.url()), d)
            .unwrap()
            .link(None);
        assert_eq!(rt.block_on(link.query::<String>(&ping)).unwrap(), "PONG");
        assert!(link.connected());
        one.kill();
        assert!(rt.block_on(link.query::<String>(&ping)).is_err());
        assert!(!link.connected());
        one.restart().unwrap();
        assert_eq!(rt.block_on(link.query::<String>(&ping)).unwrap(), "PONG");
        // A cluster: the connection kept through REBUILD_AFTER - 1
        // failures in a row (a nil read as a string fails), dropped at the
        // next, and made again from the seeds by the request after.
        let cluster = RedisCluster::start().unwrap();
        let counters = Arc::new(ClusterCounters::default());
        let mut link = Client::open(&Endpoint::Cluster(cluster.seeds()), d)
            .unwrap()
            .link(Some(counters.clone()));
        let mut get = redis::cmd("GET");
        get.arg("{t}:none");
        for i in 1..=REBUILD_AFTER {
            assert!(rt.block_on(link.query::<String>(&get)).is_err());
            assert_eq!(link.connected(), i < REBUILD_AFTER, "after {i} failures");
        }
        assert_eq!(counters.rebuilt.get(), 1);
        let v: Option<String> = rt.block_on(link.query(&get)).unwrap();
        assert_eq!(v, None);
        assert!(link.connected());
        // A success in between starts the count again.
        for _ in 1..REBUILD_AFTER {
            assert!(rt.block_on(link.query::<String>(&get)).is_err());
        }
        rt.block_on(link.query::<Option<String>>(&get)).unwrap();
        assert!(rt.block_on(link.query::<String>(&get)).is_err());
        assert!(link.connected());
        assert_eq!(counters.rebuilt.get(), 1);
    }
}
