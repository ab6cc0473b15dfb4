//! Shared fixtures for kuzet's criterion benchmarks: a typical INVITE and
//! big generated lists, built the same way for kuzet and its baselines.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::PathBuf;

/// A typical 700-byte INVITE from an SBC, with SDP.
pub const INVITE: &[u8] = b"INVITE sip:+77015550123@10.20.0.5:5060;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.10.0.9:5060;branch=z9hG4bK-524287-1---5fd3a3c2b0c1;rport\r\n\
Max-Forwards: 69\r\n\
Contact: <sip:+77019876543@10.10.0.9:5060;transport=udp>\r\n\
To: <sip:+77015550123@10.20.0.5;user=phone>\r\n\
From: \"Subscriber\" <sip:87019876543@10.10.0.9;user=phone>;tag=8b0c2e31\r\n\
Call-ID: 3c26701bd8a1-4d5e@10.10.0.9\r\n\
CSeq: 1 INVITE\r\n\
P-Asserted-Identity: <sip:+77019876543@10.10.0.9;user=phone>\r\n\
Supported: replaces, timer\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 202\r\n\
\r\n\
v=0\r\n\
o=- 1705334 1705334 IN IP4 10.10.0.9\r\n\
s=-\r\n\
c=IN IP4 10.10.0.9\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 8 0 101\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=sendrecv\r\n";

/// The `i`th of a spread of Kazakh mobile numbers (E.164 digits, no '+').
pub fn number(i: u64) -> u64 {
    // Spread over 700..779 ranges so the sets are not one dense block.
    let x = i.wrapping_mul(2_654_435_761) % 800_000_000;
    77_000_000_000 + (x / 8) * 8 + (i % 8)
}

/// Writes a list file of `n` numbers and returns its path (cached by size).
pub fn list_file(n: u64) -> PathBuf {
    let dir = std::env::temp_dir().join("kuzet-bench");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("numbers-{n}.txt"));
    if path.exists() {
        return path;
    }
    let mut text = String::with_capacity(n as usize * 14);
    text.push_str("# generated for benchmarks\n");
    for i in 0..n {
        let _ = writeln!(text, "+{}", number(i));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write bench list");
    std::fs::rename(&tmp, &path).expect("rename bench list");
    path
}

/// Resident memory of this process, from /proc (Linux), in bytes.
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// The most resident memory this process has had (`VmHWM`, Linux), in
/// bytes: since it started, or since [`reset_peak_rss`].
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// Starts [`peak_rss_bytes`] again from the memory resident now (writes
/// `5` to `/proc/self/clear_refs`, Linux 4.0 and later); false when the
/// kernel refused, and the peak then still counts from the start.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// CPU time (user and system) the calling thread has used, from
/// `/proc/thread-self/stat` (Linux; in clock ticks of 10 ms): on a shared
/// machine, steadier than the wall clock for work that runs on one thread.
pub fn thread_cpu_time() -> Option<std::time::Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // After the command name (in parentheses, which may hold spaces) come
    // fields 3 onward; utime and stime are fields 14 and 15.
    let mut rest = s.get(s.rfind(')')? + 1..)?.split_whitespace().skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some(std::time::Duration::from_millis((utime + stime) * 10))
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fixture_is_a_typical_size_and_parses() {
        assert!(
            (650..=800).contains(&super::INVITE.len()),
            "{}",
            super::INVITE.len()
        );
        let m = kuzet_sip::parse(super::INVITE, kuzet_sip::Transport::Datagram).unwrap();
        assert_eq!(m.defect(), None);
        assert_eq!(m.body().len(), 202);
    }
}

/// The behaviour-state tracker as it was before the lock-free table: a
/// `DashMap` whose `len()` read-locks every shard and whose sweep holds
/// each shard's write lock while it walks it. Kept as the baseline the
/// contention benchmark measures the table against.
pub mod dashmap_tracker {
    use dashmap::DashMap;
    use kuzet_rules::state::CallerState;

    /// Per-number state in a `DashMap`, bounded by a cap.
    pub struct DashTracker {
        map: DashMap<u64, CallerState>,
        cap: usize,
    }

    impl DashTracker {
        /// At most `cap` numbers.
        pub fn new(cap: usize) -> DashTracker {
            DashTracker {
                map: DashMap::with_capacity(cap),
                cap,
            }
        }

        /// Runs `f` on the state of `number`, creating it if there is room.
        pub fn with<R>(
            &self,
            number: u64,
            now: u32,
            f: impl FnOnce(&mut CallerState) -> R,
        ) -> Option<R> {
            if let Some(mut s) = self.map.get_mut(&number) {
                s.last_seen = now;
                return Some(f(&mut s));
            }
            if self.map.len() >= self.cap {
                return None;
            }
            let mut e = self.map.entry(number).or_default();
            e.last_seen = now;
            Some(f(&mut e))
        }

        /// Drops numbers idle for `ttl` seconds.
        pub fn sweep(&self, now: u32, ttl: u32) {
            self.map
                .retain(|_, s| now.saturating_sub(s.last_seen) < ttl);
        }

        /// Numbers tracked.
        pub fn len(&self) -> usize {
            self.map.len()
        }

        /// True when empty.
        pub fn is_empty(&self) -> bool {
            self.map.is_empty()
        }
    }
}

pub mod process {
    //! A release `kuzet` binary as a process of its own, judging real UDP
    //! INVITEs: what the end-to-end benchmarks (`nbfeed_bench`,
    //! `convergence`) measure against. Killed when dropped.

    use std::net::{SocketAddr, UdpSocket};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// A kuzet process and where it answers.
    pub struct KuzetProc {
        child: Child,
        /// Its SIP address.
        pub sip: SocketAddr,
        sock: UdpSocket,
        n: u64,
    }

    impl Drop for KuzetProc {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub use kuzet_sim::servers::free_port;

    impl KuzetProc {
        /// Starts `$KUZET_BIN` (default `target/release/kuzet`) in a fresh
        /// `dir` with the config `toml(port)` (its SIP port given), and
        /// returns once it answers an INVITE.
        pub fn start(dir: &Path, toml: impl FnOnce(u16) -> String) -> KuzetProc {
            KuzetProc::start_with(dir, toml, &[])
        }

        /// As [`start`](Self::start), with more `kuzet run` arguments.
        pub fn start_with(
            dir: &Path,
            toml: impl FnOnce(u16) -> String,
            args: &[&str],
        ) -> KuzetProc {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir).unwrap();
            let port = free_port();
            std::fs::write(dir.join("kuzet.toml"), toml(port)).unwrap();
            let bin = std::env::var("KUZET_BIN").unwrap_or_else(|_| "target/release/kuzet".into());
            let bin = std::fs::canonicalize(&bin).unwrap_or_else(|e| {
                panic!("{bin}: {e} (build it: cargo build --release -p kuzet, or set KUZET_BIN)")
            });
            let child = Command::new(bin)
                .args(["run", "--config", "kuzet.toml"])
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut k = KuzetProc {
                child,
                sip: format!("127.0.0.1:{port}").parse().unwrap(),
                sock,
                n: 0,
            };
            let t = Instant::now();
            while k.status("+77019999999").is_none() {
                assert!(t.elapsed() < Duration::from_secs(60), "kuzet did not start");
            }
            k
        }

        /// The status kuzet answers an INVITE from `a` (None: no answer).
        pub fn status(&mut self, a: &str) -> Option<u16> {
            self.n += 1;
            let port = self.sock.local_addr().unwrap().port();
            let id = self.n;
            let msg = format!(
                "INVITE sip:+77019990000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKnb{id};rport\r\n\
                 From: <sip:{a}@127.0.0.1>;tag=t{id}\r\nTo: <sip:+77019990000@127.0.0.1>\r\nCall-ID: nb-{id}\r\n\
                 CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContact: <sip:{a}@127.0.0.1:{port}>\r\nContent-Length: 0\r\n\r\n"
            );
            self.sock.send_to(msg.as_bytes(), self.sip).ok()?;
            let mut buf = [0u8; 4096];
            loop {
                let (n, _) = self.sock.recv_from(&mut buf).ok()?;
                let text = std::str::from_utf8(&buf[..n]).ok()?;
                if !text.contains(&format!("branch=z9hG4bKnb{id};")) {
                    continue;
                }
                let code = text.get(8..11)?.parse().ok()?;
                if code >= 200 {
                    return Some(code);
                }
            }
        }

        /// Waits until a call from `a` is blocked, asking every `every`;
        /// returns when.
        pub fn until_blocked_every(
            &mut self,
            a: &str,
            limit: Duration,
            every: Duration,
        ) -> Instant {
            let t = Instant::now();
            loop {
                if self.status(a) == Some(603) {
                    return Instant::now();
                }
                assert!(t.elapsed() < limit, "{a} was never blocked");
                std::thread::sleep(every);
            }
        }

        /// Waits until a call from `a` is blocked (asking every 5 ms);
        /// returns when.
        pub fn until_blocked(&mut self, a: &str, limit: Duration) -> Instant {
            self.until_blocked_every(a, limit, Duration::from_millis(5))
        }

        /// A field of /proc/PID/status, in KiB.
        pub fn proc_kib(&self, field: &str) -> u64 {
            let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        }

        /// Resets the peak RSS (VmHWM) to the RSS now.
        pub fn reset_peak(&self) {
            let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
        }
    }
}
