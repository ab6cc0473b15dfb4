//! Real `redis-server` and PostgreSQL processes of one's own, on free
//! loopback ports, for the tests and the cluster tour: started from the
//! Debian packages' binaries (`scripts/install-deps.sh` installs them),
//! kept in a private temporary folder, and stopped and removed when
//! dropped. Each can be stopped, killed, paused (`SIGSTOP`) and started
//! again on the same port with the same data, which is what the failure
//! tests do to them.
//!
//! PostgreSQL refuses to run as root: under root, `initdb` and `postgres`
//! run as the `postgres` user (or `nobody`), and the data folder is
//! handed to that user.

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to take connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
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
