//! Helpers shared by the integration tests.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use kuzet::config::{Config, Mode};
use kuzet::server::{self, Running, StartOptions};
use kuzet_dataplane::handler::Handler;
use kuzet_dataplane::metrics::Metrics;
use kuzet_rules::ListSet;

/// A config for tests: loopback, port 0, one worker, no embedded lists.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.udp_workers = 1;
    c.lists.reload_interval_ms = 50;
    // Behaviour state is reserved up front; tests need little of it.
    c.rules.max_tracked_numbers = 50_000;
    // Engines started in one test process must not share ./kuzet-data;
    // the store's own tests give each engine a temporary directory.
    c.store.enabled = false;
    c.control.listen = "127.0.0.1:0".parse().unwrap();
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
    c
}

/// `[[control.tokens]]` for each (name, role), the token of each made
/// by `token_of`.
pub fn tokens_for(
    roles: &[(&str, &str)],
    token_of: fn(&str) -> String,
) -> Vec<kuzet::config::TokenConfig> {
    roles
        .iter()
        .map(|(name, role)| kuzet::config::TokenConfig {
            name: (*name).into(),
            role: (*role).into(),
            sha256: kuzet_control::access::hash_token(&token_of(name)),
        })
        .collect()
}

/// Starts an engine from `cfg`.
pub fn start(cfg: Config) -> Running {
    server::start(cfg, StartOptions::default()).expect("engine starts")
}

/// A handler with empty lists, for feeding messages without sockets.
pub fn bare_handler(mode: Mode) -> Handler {
    let mut c = test_config();
    c.server.mode = mode;
    if mode == Mode::Proxy {
        c.proxy.next_hop = Some("127.0.0.1:5999".parse().unwrap());
    }
    let lists = Arc::new(ArcSwap::from_pointee(ListSet::default()));
    Handler::new(c.dataplane().unwrap(), lists, Arc::new(Metrics::default()))
}

/// A handler whose snapshot has empty lists and the rules of `rules_toml`
/// (TOML text), for feeding messages without sockets or clocks.
pub fn handler_with_rules(mode: Mode, rules_toml: &str) -> Handler {
    let mut c = test_config();
    c.server.mode = mode;
    if mode == Mode::Proxy {
        c.proxy.next_hop = Some("127.0.0.1:5999".parse().unwrap());
    }
    let plan = c.plan().unwrap();
    let rules = kuzet_rules::ruleset::RuleSet::from_toml_str(
        rules_toml,
        "test.toml",
        &plan,
        &c.sources().policy,
    )
    .unwrap();
    let set = ListSet::default().with_rules(rules);
    Handler::new(
        c.dataplane().unwrap(),
        Arc::new(ArcSwap::from_pointee(set)),
        Arc::new(Metrics::default()),
    )
}

/// Polls `f` every 20 ms until it gives a value, for at most 30 s.
pub fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "kuzet-test-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A UDP client socket with a read timeout.
pub fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// A minimal INVITE from `a` to `b`.
pub fn invite(a: &str, b: &str, call_id: &str, via_port: u16) -> String {
    format!(
        "INVITE sip:{b}@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{via_port};branch=z9hG4bK{call_id};rport\r\n\
         From: <sip:{a}@127.0.0.1>;tag=a{call_id}\r\n\
         To: <sip:{b}@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Sends `msg` and returns the reply text: the first reply with the
/// request's Call-ID (a late answer to an earlier request is skipped).
pub fn ask(sock: &UdpSocket, to: SocketAddr, msg: &str) -> String {
    sock.send_to(msg.as_bytes(), to).unwrap();
    let want = header(msg, "Call-ID").map(str::to_string);
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, _) = sock.recv_from(&mut buf).expect("a reply");
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        if want.is_none() || header(&reply, "Call-ID").map(str::to_string) == want {
            return reply;
        }
    }
}

/// The text of a block's Reason without its verdict id: `Q.850;cause=21;
/// text="RULE"` (the id is checked where it matters).
pub fn reason_without_id(resp: &str) -> Option<String> {
    let r = header(resp, "Reason")?;
    Some(match r.find("; verdict ") {
        Some(at) => format!("{}\"", &r[..at]),
        None => r.to_string(),
    })
}

/// The status code of a response text.
pub fn status(resp: &str) -> u16 {
    resp.get(8..11).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The value of the first header `name` in a response text.
pub fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub use crate::ports::free_port;

/// Waits until a kuzet at `addr` answers an OPTIONS ping 200 (it is a
/// separate process still starting), for at most 20 s. Leaves `c` with a
/// 5 s read timeout.
pub fn wait_until_answering(c: &UdpSocket, addr: SocketAddr) {
    let port = c.local_addr().unwrap().port();
    // No user part: even a proxy-mode kuzet answers this itself.
    let ping = invite("0", "0", "ping", port)
        .replace("INVITE sip:0@127.0.0.1", "OPTIONS sip:127.0.0.1")
        .replace("1 INVITE", "1 OPTIONS");
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "kuzet did not come up"
        );
        c.send_to(ping.as_bytes(), addr).unwrap();
        if let Ok((n, _)) = c.recv_from(&mut buf) {
            if status(&String::from_utf8_lossy(&buf[..n])) == 200 {
                break;
            }
        }
    }
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
}

/// A child process killed and reaped when dropped, so a failing test never
/// leaves a kuzet running.
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The kuzet binary running in a folder, its log lines streamed to the
/// test as they come, so a test waits for what kuzet says rather than
/// sleeping. Killed and reaped if the test fails.
pub struct Watched {
    child: Reaped,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every log line seen so far.
    pub log: Vec<String>,
    /// The SIP address it listens on (known once it is serving).
    pub addr: SocketAddr,
}

impl Watched {
    /// Starts `kuzet run --listen 127.0.0.1:0 ARGS` in `dir`; returns once
    /// it logs "kuzet serving" (with `addr` set to where it listens), or
    /// panics with its log if it exits first.
    pub fn start(args: &[&str], dir: &Path) -> Watched {
        let mut w = Self::spawn(args, dir);
        w.wait_serving();
        w
    }

    /// Waits for "kuzet serving" and takes the SIP address from it: kuzet
    /// is started on port 0 and the kernel picks a port free for both UDP
    /// and TCP (a port the test picked could be taken for TCP by another
    /// test's connection before kuzet binds it).
    fn wait_serving(&mut self) {
        let line = self.wait_for("kuzet serving", Duration::from_secs(30));
        // `udp_addr=127.0.0.1:5060` in text logs, `"udp_addr":"..."` in JSON.
        self.addr = ["udp_addr=", "\"udp_addr\":\""]
            .iter()
            .find_map(|k| line.split(k).nth(1))
            .and_then(|r| r.split([' ', '"']).next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no udp_addr in {line:?}"));
    }

    /// Starts it without waiting for anything.
    pub fn spawn(args: &[&str], dir: &Path) -> Watched {
        Self::spawn_with(env!("CARGO_BIN_EXE_kuzet"), &[], args, dir)
    }

    /// [`Self::start`] on a SIP address the caller chose (to send to it
    /// before kuzet is up).
    pub fn start_on(listen: SocketAddr, args: &[&str], dir: &Path) -> Watched {
        let mut w = Self::spawn_on(env!("CARGO_BIN_EXE_kuzet"), &[], listen, args, dir);
        w.wait_serving();
        w
    }

    /// [`Self::start`] through a wrapper: `PROGRAM PRE... run --listen
    /// ADDR ARGS` (the wrapper ends by exec'ing kuzet, so the pid is
    /// kuzet's).
    pub fn start_with(program: &str, pre: &[&str], args: &[&str], dir: &Path) -> Watched {
        let mut w = Self::spawn_with(program, pre, args, dir);
        w.wait_serving();
        w
    }

    fn spawn_with(program: &str, pre: &[&str], args: &[&str], dir: &Path) -> Watched {
        Self::spawn_on(program, pre, "127.0.0.1:0".parse().unwrap(), args, dir)
    }

    fn spawn_on(
        program: &str,
        pre: &[&str],
        addr: SocketAddr,
        args: &[&str],
        dir: &Path,
    ) -> Watched {
        use std::io::BufRead;
        let mut child = std::process::Command::new(program)
            .args(pre)
            .args(["run", "--control", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map(Reaped)
            .expect("kuzet starts");
        let err = child.0.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Watched {
            child,
            lines,
            log: Vec::new(),
            addr,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Waits for a log line containing `text` and returns it; panics with
    /// the log so far if none comes within `limit` or kuzet exits.
    pub fn wait_for(&mut self, text: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.log.push(l.clone());
                    if l.contains(text) {
                        return l;
                    }
                }
                Err(e) => panic!(
                    "no log line with {text:?} ({e:?}); the log:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Sends a signal by name ("TERM", "HUP").
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits (at most 20 s) for kuzet to exit; returns its exit code, its
    /// stdout, and its whole log.
    pub fn wait_exit(mut self) -> (Option<i32>, String, String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = self.child.0.try_wait().unwrap() {
                break st;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kuzet did not exit; the log:\n{}",
                self.log.join("\n")
            );
            // Keep the log flowing while waiting.
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(20)) {
                self.log.push(l);
            }
        };
        // The pipe closes at exit: the reader thread ends the channel.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.log.push(l);
        }
        let mut out = String::new();
        if let Some(mut o) = self.child.0.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut o, &mut out);
        }
        (status.code(), out, self.log.join("\n"))
    }

    /// SIGTERM, then [`Self::wait_exit`].
    pub fn stop(self) -> (Option<i32>, String, String) {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("the field is in /proc/PID/status")
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A file of the repository, by its path from the root.
pub fn read_repo(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A program from a Debian package the tests need, on PATH or in
/// /usr/sbin or /usr/bin; panics naming the package when it is missing.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/bin".into());
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: run scripts/install-deps.sh (Debian package {package})")
        })
}

/// The stand-in register, served in this process on its own runtime.
pub struct Reg {
    rt: Option<tokio::runtime::Runtime>,
}

impl Reg {
    pub fn start(
        addr: SocketAddr,
        file: &Path,
        mode: kuzet_sim::register::Mode,
        stall: Duration,
    ) -> Reg {
        Self::start_tls(addr, file, mode, stall, None)
    }

    pub fn start_tls(
        addr: SocketAddr,
        file: &Path,
        mode: kuzet_sim::register::Mode,
        stall: Duration,
        tls: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Reg {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let reg = kuzet_sim::register::Register::open(file.to_path_buf(), mode, stall).unwrap();
        rt.spawn(async move {
            kuzet_sim::register::serve(addr, reg, tls).await.unwrap();
        });
        // Bound when a connection is accepted.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the register did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
        Reg { rt: Some(rt) }
    }
}

impl Drop for Reg {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

pub use kuzet_sim::pki::{Issued, Pki};
