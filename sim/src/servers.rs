//! Real `redis-server` and PostgreSQL processes of one's own, on free
//! loopback ports, for the tests and the cluster tour: started from the
//! Debian packages' binaries (`scripts/install-deps.sh` installs them),
//! kept in a private temporary folder, and stopped and removed when
//! dropped. Each can be stopped, killed, paused (`SIGSTOP`) and started
//! again on the same port with the same data, which is what the failure
//! tests do to them. [`RedisCluster`] makes six `redis-server`s a Redis
//! Cluster (three masters, a replica each) and kills a master for the
//! failover tests.
//!
//! PostgreSQL refuses to run as root: under root, `initdb` and `postgres`
//! run as the `postgres` user (or `nobody`), and the data folder is
//! handed to that user.

use std::net::TcpStream;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to take connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

// A port the kernel hands out for `bind(0)` comes from its ephemeral
// range, the range every outgoing TCP connection (a gRPC or Redis client,
// an HTTP scrape in a test beside this one) takes its source port from:
// between a test learning such a port and its server binding it, another
// connection may take it ("Address already in use"). So ports are drawn
// at random below that range, where only an explicit bind takes one, and
// checked free on both UDP and TCP.
/// The kernel's ephemeral range, `(low, high)`.
fn ephemeral() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A loopback port free for both UDP and TCP, outside the ephemeral
/// range when the system leaves room below it.
pub fn free_port() -> u16 {
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let (low, _) = ephemeral();
    if low >= 12_000 {
        let span = u64::from(low - 10_000);
        let seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        for _ in 0..2_000 {
            let n = DRAWS.fetch_add(1, Ordering::Relaxed);
            // splitmix64: well spread whatever the seed.
            let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let port = 10_000 + (z % span) as u16;
            if free_both(port) {
                return port;
            }
        }
    }
    // No room below the ephemeral range: the kernel's pick, checked.
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket on loopback");
        let port = u.local_addr().expect("its address").port();
        drop(u);
        if free_both(port) {
            return port;
        }
    }
}

fn free_both(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Waits until something takes TCP connections on `port`, or the child
/// exits, or the timeout: the error says which.
fn wait_listening(child: &mut Child, port: u16, what: &str) -> Result<(), String> {
    let t = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited at start-up ({status})"));
        }
        if t.elapsed() > START_TIMEOUT {
            return Err(format!(
                "{what} took no connection on port {port} within {START_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends signal `sig` (`STOP`, `CONT`, `INT`) to a process with kill(1);
/// false if it is gone.
fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A server process of one's own: paused, resumed and killed by signal.
#[derive(Default)]
struct Proc(Option<Child>);

impl Proc {
    fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "STOP");
        }
    }

    fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "CONT");
        }
    }

    /// Sends `sig` and waits until the process is gone (`KILL`: at once).
    fn end(&mut self, sig: &str) -> bool {
        let Some(mut c) = self.0.take() else {
            return false;
        };
        if sig == "KILL" {
            let _ = c.kill();
        } else {
            signal(c.id(), sig);
        }
        let _ = c.wait();
        true
    }
}

/// Whether this process runs as root (its effective uid, from /proc).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// OPTIONS every 100 ms until a 200 comes back or `limit` passes.
pub fn sip_ping(target: std::net::SocketAddr, limit: Duration) -> std::io::Result<bool> {
    let sock = std::net::UdpSocket::bind(if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let local = sock.local_addr()?;
    let req = format!(
        "OPTIONS sip:{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK-ping\r\n\
         Max-Forwards: 70\r\nFrom: <sip:ping@kuzet-sim>;tag=p\r\nTo: <sip:{target}>\r\n\
         Call-ID: ping-{}@kuzet-sim\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        std::process::id()
    );
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        sock.send_to(req.as_bytes(), target)?;
        match sock.recv(&mut buf) {
            Ok(n) if buf[..n].starts_with(b"SIP/2.0 200") => return Ok(true),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // Nothing listens yet (ICMP port unreachable): wait a little.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    Ok(false)
}

/// A private scratch folder (0700 unless handed on), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Result<Scratch, String> {
        let base = std::env::temp_dir();
        for n in 0..1000u32 {
            let p = base.join(format!("kuzet-{what}-{}-{n}", std::process::id()));
            match std::fs::create_dir(&p) {
                Ok(()) => return Ok(Scratch(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("{}: {e}", p.display())),
            }
        }
        Err(format!("no free scratch folder under {}", base.display()))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` of one's own on a free loopback port, keeping
/// nothing on disk; stopped when dropped.
pub struct RedisServer {
    child: Proc,
    port: u16,
    args: Vec<String>,
}

impl RedisServer {
    /// Starts one.
    pub fn start() -> Result<RedisServer, String> {
        RedisServer::start_with(&[])
    }

    /// Starts one with extra `redis-server` arguments (`--cluster-enabled
    /// yes`, say).
    pub fn start_with(extra: &[&str]) -> Result<RedisServer, String> {
        let mut r = RedisServer {
            child: Proc::default(),
            port: free_port(),
            args: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.restart()?;
        Ok(r)
    }

    /// Starts it (again) on its port.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server (scripts/install-deps.sh installs it): {e}"))?;
        let up = wait_listening(&mut child, self.port, "redis-server");
        self.child = Proc(Some(child));
        up
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL, `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Pauses it (`SIGSTOP`): it keeps its connections and answers none.
    pub fn pause(&self) {
        self.child.pause();
    }

    /// Lets a paused one go on (`SIGCONT`).
    pub fn resume(&self) {
        self.child.resume();
    }

    /// Kills it (`SIGKILL`) and waits until it is gone.
    pub fn kill(&mut self) {
        self.child.end("KILL");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How long a cluster node may go unanswered before the others count it
/// failed and its replica takes over (`cluster-node-timeout`): short, so
/// a test's failover takes a few seconds, not Redis's default 15.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1_000;

/// A Redis Cluster of one's own on loopback: three masters and a replica
/// of each, six `redis-server --cluster-enabled yes` processes on free
/// ports (each with its cluster bus on a free port of its own, so no port
/// needs to be below 55535), joined by `redis-cli --cluster create`, with
/// a node timeout of [`CLUSTER_NODE_TIMEOUT_MS`]. Each node keeps its
/// `nodes.conf` and its log in a folder of a scratch folder removed on
/// drop. Asked through `redis-cli`: which master serves a key's slot,
/// and whether a replica has taken over a killed master.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    dead: Vec<u16>,
    scratch: Scratch,
}

impl RedisCluster {
    /// Starts six nodes, makes them a cluster of three masters with a
    /// replica each, and waits until every node says the cluster is ok
    /// and every replica is in step with its master.
    pub fn start() -> Result<RedisCluster, String> {
        let scratch = Scratch::new("redis-cluster")?;
        let mut nodes = Vec::new();
        for i in 0..6 {
            let dir = scratch.0.join(format!("node{i}"));
            std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let dir = dir.display().to_string();
            let bus = free_port().to_string();
            let timeout = CLUSTER_NODE_TIMEOUT_MS.to_string();
            nodes.push(RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-node-timeout",
                &timeout,
                "--dir",
                &dir,
                "--logfile",
                "redis.log",
            ])?);
        }
        let c = RedisCluster {
            nodes,
            dead: Vec::new(),
            scratch,
        };
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for p in c.ports() {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("redis-cli (it comes with redis-server): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        c.wait_ok(START_TIMEOUT)?;
        Ok(c)
    }

    /// Every node's port, in the order they were started (dead ones
    /// included).
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port()).collect()
    }

    /// The nodes' URLs, `redis://127.0.0.1:PORT/`: a client's seed nodes.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// The ports of the nodes not killed.
    pub fn live_ports(&self) -> Vec<u16> {
        self.ports()
            .into_iter()
            .filter(|p| !self.dead.contains(p))
            .collect()
    }

    /// Runs one command with `redis-cli` on the node at `port` (no
    /// redirections followed); its output, trimmed (an error reply other
    /// than `ERR`, such as `MOVED`, is output too).
    pub fn cli(&self, port: u16, args: &[&str]) -> Result<String, String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || text.starts_with("ERR") || text.starts_with("Could not") {
            return Err(format!(
                "redis-cli -p {port} {args:?}: {text}{}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(text)
    }

    /// A command on the first live node that answers it.
    fn ask(&self, args: &[&str]) -> Result<String, String> {
        let mut last = "no live node".to_string();
        for p in self.live_ports() {
            match self.cli(p, args) {
                Ok(t) => return Ok(t),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`: a `{tag}` in it decides).
    pub fn slot_of(&self, key: &str) -> Result<u16, String> {
        let t = self.ask(&["CLUSTER", "KEYSLOT", key])?;
        t.parse()
            .map_err(|_| format!("CLUSTER KEYSLOT {key}: {t:?}"))
    }

    /// The port of the master serving `slot`, as the node at `asked`
    /// sees it (`CLUSTER NODES`); none when no master it counts alive
    /// serves it.
    fn master_seen_by(&self, asked: u16, slot: u16) -> Result<Option<u16>, String> {
        let text = self.cli(asked, &["CLUSTER", "NODES"])?;
        Ok(text.lines().find_map(|l| master_line_serves(l, slot)))
    }

    /// The port of the master serving `key`'s slot, as a live node sees
    /// it.
    pub fn master_of(&self, key: &str) -> Result<u16, String> {
        let slot = self.slot_of(key)?;
        self.live_ports()
            .into_iter()
            .find_map(|p| self.master_seen_by(p, slot).ok().flatten())
            .ok_or_else(|| format!("no master serves slot {slot}"))
    }

    /// Kills the node at `port` (`SIGKILL`) and waits until it is gone.
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port() == port) {
            n.kill();
            if !self.dead.contains(&port) {
                self.dead.push(port);
            }
        }
    }

    /// Waits until a live replica serves `key`'s slot in place of the
    /// killed master at `dead`, as every live node sees it, and every
    /// live node says the cluster is ok; the new master's port.
    pub fn wait_failover(&self, key: &str, dead: u16, within: Duration) -> Result<u16, String> {
        let slot = self.slot_of(key)?;
        let t = Instant::now();
        loop {
            let seen: Vec<Option<u16>> = self
                .live_ports()
                .into_iter()
                .map(|p| self.master_seen_by(p, slot).ok().flatten())
                .collect();
            if let Some(Some(m)) = seen.first() {
                let agreed = seen.iter().all(|s| *s == Some(*m));
                if *m != dead && agreed && self.all_ok().is_ok() {
                    return Ok(*m);
                }
            }
            if t.elapsed() > within {
                return Err(format!(
                    "slot {slot} not taken over from port {dead} within {within:?}: masters seen {seen:?}; {}",
                    self.all_ok().err().unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every live node says `cluster_state:ok`, and every live replica
    /// is in step with its master; else what is not.
    fn all_ok(&self) -> Result<(), String> {
        for p in self.live_ports() {
            let info = self.cli(p, &["CLUSTER", "INFO"])?;
            if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                return Err(format!("node {p}: cluster state not ok"));
            }
            let repl = self.cli(p, &["INFO", "replication"])?;
            let replica = repl.lines().any(|l| l.trim() == "role:slave");
            if replica && !repl.lines().any(|l| l.trim() == "master_link_status:up") {
                return Err(format!("replica {p}: not in step with its master"));
            }
        }
        Ok(())
    }

    /// Waits until every live node says the cluster is ok, knows every
    /// node, and every live replica is in step with its master.
    pub fn wait_ok(&self, within: Duration) -> Result<(), String> {
        let t = Instant::now();
        let all = self.nodes.len().to_string();
        loop {
            let known = self.live_ports().into_iter().all(|p| {
                self.cli(p, &["CLUSTER", "INFO"]).is_ok_and(|i| {
                    i.lines()
                        .any(|l| l.trim().strip_prefix("cluster_known_nodes:") == Some(&all))
                })
            });
            let ok = self.all_ok();
            if known && ok.is_ok() {
                return Ok(());
            }
            if t.elapsed() > within {
                return Err(format!(
                    "the Redis Cluster was not ok within {within:?}: {}",
                    ok.err()
                        .unwrap_or_else(|| "a node does not know every node".into())
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the log of the node at `port` (for a test's
    /// failure message).
    pub fn log_tail(&self, port: u16, lines: usize) -> String {
        let Some(i) = self.nodes.iter().position(|n| n.port() == port) else {
            return String::new();
        };
        let path = self.scratch.0.join(format!("node{i}")).join("redis.log");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The port of the master on `line` of `CLUSTER NODES` if it serves
/// `slot` and is not counted failed.
fn master_line_serves(line: &str, slot: u16) -> Option<u16> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 9 {
        return None;
    }
    let flags: Vec<&str> = f[2].split(',').collect();
    if !flags.contains(&"master") || flags.iter().any(|x| *x == "fail" || *x == "fail?") {
        return None;
    }
    let serves = f[8..].iter().any(|r| match r.split_once('-') {
        _ if r.starts_with('[') => false,
        Some((a, b)) => {
            a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b)
        }
        None => r.parse::<u16>() == Ok(slot),
    });
    let addr = f[1].split('@').next()?;
    serves
        .then(|| addr.rsplit_once(':')?.1.parse().ok())
        .flatten()
}

/// Where the PostgreSQL server binaries are: on the `PATH`, or the
/// newest `/usr/lib/postgresql/N/bin` (Debian keeps them off the `PATH`).
fn pg_bin(name: &str) -> Result<PathBuf, String> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(
            std::env::split_paths(&path)
                .collect::<Vec<_>>()
                .into_iter()
                .rev(),
        );
    }
    dirs.iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("{name}: not found (package postgresql; scripts/install-deps.sh installs it)")
        })
}

/// The user a root process runs PostgreSQL as: `postgres`, else `nobody`.
fn pg_user() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let find = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
    };
    find("postgres")
        .or_else(|| find("nobody"))
        .or(Some((65534, 65534)))
}

/// A PostgreSQL server of one's own on a free loopback port: a fresh
/// cluster made by `initdb` in a scratch folder, trust authentication for
/// the user `kuzet` on loopback only, fsync off (a test's data need not
/// survive the machine). Stopped and removed when dropped.
pub struct PgServer {
    child: Proc,
    port: u16,
    data: PathBuf,
    user: Option<(u32, u32)>,
    _scratch: Scratch,
}

impl PgServer {
    /// Makes and starts one.
    pub fn start() -> Result<PgServer, String> {
        let scratch = Scratch::new("pg")?;
        let user = pg_user();
        let data = scratch.0.join("data");
        std::fs::create_dir(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", data.display()))?;
        if let Some((uid, gid)) = user {
            // The scratch folder must be passable by that user.
            std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| format!("{}: {e}", scratch.0.display()))?;
            std::os::unix::fs::chown(&data, Some(uid), Some(gid))
                .map_err(|e| format!("{}: {e}", data.display()))?;
        }
        let mut initdb = Command::new(pg_bin("initdb")?);
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "kuzet", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .args(["--locale=C"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let mut pg = PgServer {
            child: Proc::default(),
            port: free_port(),
            data,
            user,
            _scratch: scratch,
        };
        pg.restart()?;
        Ok(pg)
    }

    /// Starts it (again) on its port with its data.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let mut cmd = Command::new(pg_bin("postgres")?);
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.data.display()))
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=64MB"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().map_err(|e| format!("postgres: {e}"))?;
        let up = wait_listening(&mut child, self.port, "postgres");
        self.child = Proc(Some(child));
        up?;
        // Taking connections is not yet accepting queries (recovery after
        // a kill): wait until a query answers.
        let t = Instant::now();
        loop {
            match self.psql("postgres", "SELECT 1") {
                Ok(_) => return Ok(()),
                Err(e) if t.elapsed() > START_TIMEOUT => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data folder.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The URL of database `db` as the user `kuzet`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://kuzet@127.0.0.1:{}/{db}", self.port)
    }

    /// Makes a new, empty database `db` and returns its URL.
    pub fn create_db(&self, db: &str) -> Result<String, String> {
        if db.is_empty() || !db.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("database name {db:?}: letters, digits and _ only"));
        }
        self.psql("postgres", &format!("CREATE DATABASE {db}"))?;
        Ok(self.url(db))
    }

    /// Runs one SQL command with `psql` on database `db`; its output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(pg_bin("psql")?)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "kuzet", "-d", db, "-X", "-A", "-t", "-q"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "psql {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Stops it the fast way (`SIGINT`: connections cut, a clean
    /// shutdown) and waits until it is gone.
    pub fn stop(&mut self) {
        self.child.end("INT");
    }

    /// Pauses the postmaster (`SIGSTOP`): new connections hang.
    pub fn pause(&self) {
        self.child.pause();
    }

    /// Lets a paused one go on (`SIGCONT`).
    pub fn resume(&self) {
        self.child.resume();
    }

    /// Kills the postmaster (`SIGKILL`), waits until it is gone, and then
    /// until what it left behind has gone too (its backends end once it
    /// has), so a restart may proceed.
    pub fn kill(&mut self) {
        if self.child.end("KILL") {
            let t = Instant::now();
            while TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && t.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_comes_up_is_killed_and_comes_back() {
        let mut r = RedisServer::start().unwrap();
        assert!(TcpStream::connect(("127.0.0.1", r.port())).is_ok());
        r.kill();
        assert!(TcpStream::connect(("127.0.0.1", r.port())).is_err());
        r.restart().unwrap();
        assert!(TcpStream::connect(("127.0.0.1", r.port())).is_ok());
    }

    #[test]
    fn a_redis_cluster_comes_up_and_a_replica_takes_over_a_killed_master() {
        let mut c = RedisCluster::start().unwrap();
        assert_eq!(c.seeds().len(), 6);
        // A hash tag decides the slot: the braced part only.
        let slot = c.slot_of("{kuzet}:counts").unwrap();
        assert_eq!(c.slot_of("{kuzet}:lease:nbank-feed").unwrap(), slot);
        let master = c.master_of("{kuzet}:counts").unwrap();
        assert_eq!(
            c.cli(master, &["SET", "{kuzet}:x", "1"]).unwrap(),
            "OK",
            "the master serving the slot takes the write"
        );
        let killed = Instant::now();
        c.kill(master);
        assert!(!c.live_ports().contains(&master));
        let next = c
            .wait_failover("{kuzet}:counts", master, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(c.live_ports()[0], 30)));
        eprintln!(
            "port {master} killed; port {next} serves the slot after {:?}",
            killed.elapsed()
        );
        assert_ne!(next, master);
        assert_eq!(c.master_of("{kuzet}:counts").unwrap(), next);
        assert_eq!(c.cli(next, &["SET", "{kuzet}:x", "2"]).unwrap(), "OK");
        // Another node redirects to it.
        let other = c.live_ports().into_iter().find(|p| *p != next).unwrap();
        assert_eq!(
            c.cli(other, &["GET", "{kuzet}:x"]).unwrap(),
            format!("MOVED {slot} 127.0.0.1:{next}")
        );
    }

    #[test]
    fn cluster_nodes_lines_name_the_master_serving_a_slot() {
        let l = "07c3 127.0.0.1:30004@31004 master - 0 1426238316232 3 connected 0-5460 12000 [5461->-e7d1]";
        assert_eq!(master_line_serves(l, 0), Some(30004));
        assert_eq!(master_line_serves(l, 5460), Some(30004));
        assert_eq!(master_line_serves(l, 12000), Some(30004));
        assert_eq!(master_line_serves(l, 5461), None);
        let myself = "67ed 127.0.0.1:30002@31002 myself,master - 0 0 2 connected 5461-10922";
        assert_eq!(master_line_serves(myself, 6000), Some(30002));
        let failed = "67ed 127.0.0.1:30002@31002 master,fail - 0 0 2 connected 5461-10922";
        assert_eq!(master_line_serves(failed, 6000), None);
        let replica = "292f 127.0.0.1:30005@31005 slave 67ed 0 0 2 connected";
        assert_eq!(master_line_serves(replica, 6000), None);
    }

    #[test]
    fn postgres_keeps_its_data_across_a_kill() {
        let mut pg = PgServer::start().unwrap();
        pg.create_db("t1").unwrap();
        pg.psql("t1", "CREATE TABLE x (v int); INSERT INTO x VALUES (7)")
            .unwrap();
        pg.kill();
        assert!(pg.psql("t1", "SELECT v FROM x").is_err());
        pg.restart().unwrap();
        assert_eq!(pg.psql("t1", "SELECT v FROM x").unwrap(), "7");
        assert!(pg.create_db("bad name").is_err());
        let dir = pg.data_dir().to_path_buf();
        drop(pg);
        assert!(!dir.exists(), "the scratch folder is removed");
    }
}
