//! `kuzet-sim cluster`: the cluster of `deploy/cluster/` on one host, for
//! the README's tour and the tests: a `redis-server` and a PostgreSQL of
//! its own (Debian's packages, [`crate::servers`]), several kuzet nodes
//! sharing them (each with its name, its SIP, control and admin
//! addresses and its data directory), and Kamailio in front with
//! `deploy/kamailio/router.cfg`, whose dispatcher spreads new calls over
//! the nodes, probes them with OPTIONS and skips a dead one. Everything
//! runs on loopback in one folder, and everything stops when the
//! [`Cluster`] is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::servers::{free_port, sip_ping, PgServer, RedisServer};

/// The router's config, as shipped.
pub const ROUTER_CFG: &str = include_str!("../../deploy/kamailio/router.cfg");
/// The nodes' config, as shipped (`deploy/cluster/kuzet.toml`).
pub const NODE_CONFIG: &str = include_str!("../../deploy/cluster/kuzet.toml");

/// The files the shipped config names beside itself: the sample lists
/// and the default rules.
pub const BESIDE_CONFIG: &[(&str, &str)] = &[
    (
        "blocklist.txt",
        include_str!("../../deploy/lists/blocklist.txt"),
    ),
    (
        "allowlist.txt",
        include_str!("../../deploy/lists/allowlist.txt"),
    ),
    (
        "flaglist.txt",
        include_str!("../../deploy/lists/flaglist.txt"),
    ),
    (
        "rules.toml",
        include_str!("../../deploy/rules/default.toml"),
    ),
];

/// How long a node or the router may take to answer OPTIONS.
const UP_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The kuzet binary.
    pub kuzet: PathBuf,
    /// The kamailio binary.
    pub kamailio: PathBuf,
    /// The folder everything lives in (created; must be empty or new).
    pub dir: PathBuf,
    /// How many kuzet nodes.
    pub nodes: usize,
    /// Where the router takes calls (port 0: any free port).
    pub router: SocketAddr,
    /// The nodes' config (TOML); its `[store]` URL and `[cluster]` Redis
    /// URL are replaced by this cluster's own.
    pub config: String,
    /// One PostgreSQL store for every node; false: each node keeps its
    /// own SQLite store (counts are still shared through Redis).
    pub shared_store: bool,
    /// The folder the nodes' config is written into, so the relative list
    /// paths in it resolve there [default: `dir`].
    pub config_dir: Option<PathBuf>,
}

impl Options {
    /// Three nodes, the shipped config, the binaries found on the `PATH`
    /// (kuzet first beside this executable).
    pub fn new(dir: &Path) -> Options {
        Options {
            kuzet: find_kuzet(),
            kamailio: find_kamailio(),
            dir: dir.to_path_buf(),
            nodes: 3,
            router: SocketAddr::from(([127, 0, 0, 1], 0)),
            config: NODE_CONFIG.to_string(),
            shared_store: true,
            config_dir: None,
        }
    }
}

/// `kuzet` beside this executable (`target/release/`), else on the PATH.
pub fn find_kuzet() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("kuzet")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("kuzet"))
}

/// `kamailio` on the PATH, else Debian's `/usr/sbin/kamailio`.
pub fn find_kamailio() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("kamailio"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/kamailio"))
}

/// One kuzet node of the cluster.
pub struct Node {
    /// Its name (`kuzet-1`, ...).
    pub name: String,
    /// Where it takes SIP.
    pub sip: SocketAddr,
    /// Its control API (gRPC).
    pub control: SocketAddr,
    /// Its admin address (`/metrics`, `/readyz`).
    pub admin: SocketAddr,
    /// Its data directory.
    pub data: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    child: Option<Child>,
}

/// A running cluster; dropping it stops everything.
pub struct Cluster {
    /// The nodes, in the dispatcher's order.
    pub nodes: Vec<Node>,
    /// Where the router takes calls.
    pub router: SocketAddr,
    /// The far end the router sends a call on to once kuzet lets it
    /// through: a responder that answers every INVITE with a 302 (the
    /// callers' Request-URI host, `kuzet-sim run --callee-host`).
    pub far_end: SocketAddr,
    /// The nodes' config file.
    pub config: PathBuf,
    /// The shared Redis.
    pub redis: RedisServer,
    /// The shared store, if one.
    pub pg: Option<PgServer>,
    router_child: Option<Child>,
    far: Option<crate::null::Null>,
    kuzet: PathBuf,
}

/// `text` with `[store] backend/url` and `[cluster] redis_url` set to
/// this cluster's (or the store's keys removed, for a store per node).
fn node_config(text: &str, store_url: Option<&str>, redis_url: &str) -> Result<String, String> {
    let mut t: toml::Table = text
        .parse()
        .map_err(|e| format!("the nodes' config: {e}"))?;
    let section = |t: &mut toml::Table, name: &str| -> Result<toml::Table, String> {
        match t.remove(name) {
            None => Ok(toml::Table::new()),
            Some(toml::Value::Table(s)) => Ok(s),
            Some(_) => Err(format!("the nodes' config: [{name}] is not a table")),
        }
    };
    let mut store = section(&mut t, "store")?;
    match store_url {
        Some(url) => {
            store.insert("backend".into(), "postgres".into());
            store.insert("url".into(), url.into());
        }
        None => {
            store.remove("backend");
            store.remove("url");
        }
    }
    t.insert("store".into(), store.into());
    let mut cluster = section(&mut t, "cluster")?;
    cluster.insert("redis_url".into(), redis_url.into());
    t.insert("cluster".into(), cluster.into());
    toml::to_string(&t).map_err(|e| format!("the nodes' config: {e}"))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Cluster {
    /// Starts Redis, the store, the nodes and the router, and returns once
    /// each node and the router answer OPTIONS.
    pub fn up(opts: &Options) -> Result<Cluster, String> {
        if opts.nodes == 0 || opts.nodes > 32 {
            return Err(format!("{} nodes: 1 to 32", opts.nodes));
        }
        std::fs::create_dir_all(&opts.dir).map_err(|e| format!("{}: {e}", opts.dir.display()))?;
        let redis = RedisServer::start()?;
        let pg = if opts.shared_store {
            let pg = PgServer::start()?;
            pg.create_db("kuzet")?;
            Some(pg)
        } else {
            None
        };
        let store_url = pg.as_ref().map(|p| p.url("kuzet"));
        let text = node_config(&opts.config, store_url.as_deref(), &redis.url())?;
        let config = match &opts.config_dir {
            Some(d) => d.join("kuzet-cluster.toml"),
            None => {
                for (name, text) in BESIDE_CONFIG {
                    let p = opts.dir.join(name);
                    std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
                }
                opts.dir.join("kuzet.toml")
            }
        };
        std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
        let far = crate::null::start(loopback(0), 1).map_err(|e| format!("the far end: {e}"))?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            router: opts.router,
            far_end: far.addr,
            config,
            redis,
            pg,
            router_child: None,
            far: Some(far),
            kuzet: opts.kuzet.clone(),
        };
        for i in 1..=opts.nodes {
            cluster.nodes.push(Node {
                name: format!("kuzet-{i}"),
                sip: loopback(free_port()),
                control: loopback(free_port()),
                admin: loopback(free_port()),
                data: opts.dir.join(format!("node-{i}")),
                log: opts.dir.join(format!("node-{i}.log")),
                child: None,
            });
        }
        for i in 0..cluster.nodes.len() {
            cluster.start_node(i)?;
        }
        cluster.start_router(opts)?;
        Ok(cluster)
    }

    /// Starts node `i` (again, after [`kill_node`](Self::kill_node)) and
    /// waits until it answers OPTIONS.
    pub fn start_node(&mut self, i: usize) -> Result<(), String> {
        let kuzet = self.kuzet.clone();
        let config = self.config.clone();
        let n = self
            .nodes
            .get_mut(i)
            .ok_or_else(|| format!("no node {i}"))?;
        let log = std::fs::File::create(&n.log).map_err(|e| format!("{}: {e}", n.log.display()))?;
        let child = Command::new(&kuzet)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--node", &n.name])
            .args(["--listen", &n.sip.to_string()])
            .args(["--control", &n.control.to_string()])
            .args(["--admin", &n.admin.to_string()])
            .arg("--data")
            .arg(&n.data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", kuzet.display()))?;
        n.child = Some(child);
        if !sip_ping(n.sip, UP_TIMEOUT).map_err(|e| e.to_string())? {
            let tail = std::fs::read_to_string(&n.log).unwrap_or_default();
            return Err(format!("{} did not come up; its log:\n{tail}", n.name));
        }
        Ok(())
    }

    /// Kills node `i` (`SIGKILL`): the router's probes mark it down.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes.get_mut(i).and_then(|n| n.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn start_router(&mut self, opts: &Options) -> Result<(), String> {
        let cfg = opts.dir.join("router.cfg");
        std::fs::write(&cfg, ROUTER_CFG).map_err(|e| format!("{}: {e}", cfg.display()))?;
        let list: String = self
            .nodes
            .iter()
            .map(|n| format!("1 sip:{} 0 0\n", n.sip))
            .collect();
        let list_path = opts.dir.join("kuzet.list");
        std::fs::write(&list_path, list).map_err(|e| format!("{}: {e}", list_path.display()))?;
        if self.router.port() == 0 {
            self.router = loopback(free_port());
        }
        let log_path = opts.dir.join("router.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let child = Command::new(&opts.kamailio)
            .arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-m", "64", "-M", "8", "-l"])
            .arg(format!("udp:{}", self.router))
            .arg("-A")
            .arg(format!("KZ_DSLIST=\"{}\"", list_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!(
                    "{} (package kamailio; scripts/install-deps.sh installs it): {e}",
                    opts.kamailio.display()
                )
            })?;
        self.router_child = Some(child);
        if !sip_ping(self.router, UP_TIMEOUT).map_err(|e| e.to_string())? {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("the router did not come up; its log:\n{tail}"));
        }
        Ok(())
    }

    /// What runs where, for a person.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "router     SIP udp:{}  (Kamailio's dispatcher over the nodes)\nfar end    SIP udp:{}  (where let-through calls go: a 302 to each)\n",
            self.router, self.far_end
        );
        for n in &self.nodes {
            s += &format!(
                "{:<10} SIP {}  control {}  admin http://{}/metrics  data {}\n",
                n.name,
                n.sip,
                n.control,
                n.admin,
                n.data.display()
            );
        }
        s += &format!("redis      {}\n", self.redis.url());
        if let Some(pg) = &self.pg {
            s += &format!("postgres   {}\n", pg.url("kuzet"));
        }
        s += &format!("config     {}\n", self.config.display());
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.router_child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        if let Some(f) = self.far.take() {
            f.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_node_config_gets_this_clusters_servers() {
        let t = node_config(
            NODE_CONFIG,
            Some("postgres://kuzet@127.0.0.1:1/kuzet"),
            "redis://127.0.0.1:2/",
        )
        .unwrap();
        let v: toml::Table = t.parse().unwrap();
        assert_eq!(v["store"]["backend"].as_str(), Some("postgres"));
        assert_eq!(
            v["store"]["url"].as_str(),
            Some("postgres://kuzet@127.0.0.1:1/kuzet")
        );
        assert_eq!(
            v["cluster"]["redis_url"].as_str(),
            Some("redis://127.0.0.1:2/")
        );
        let per_node = node_config(NODE_CONFIG, None, "redis://127.0.0.1:2/").unwrap();
        let v: toml::Table = per_node.parse().unwrap();
        assert!(v["store"].get("url").is_none() && v["store"].get("backend").is_none());
        assert!(node_config("store = 1", None, "redis://x/").is_err());
    }
}
