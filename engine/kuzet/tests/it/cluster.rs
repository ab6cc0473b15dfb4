//! Several nodes sharing their behaviour counts through a real
//! `redis-server` (issue 22's first part): a campaign spread round-robin
//! over three nodes is blocked at the count one node blocks it at, and
//! Redis dying under load delays no call.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kuzet::config::Config;

use crate::common::*;
use crate::ports::free_port;

/// A `redis-server` of the test's own on a free loopback port, stopped
/// when dropped.
struct Redis {
    child: Option<Reaped>,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let mut r = Redis { child: None, port };
        r.restart();
        r
    }

    /// Starts it (again) on its port, with nothing kept on disk.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Reaped)
            .expect("redis-server (scripts/install-deps.sh installs it)");
        self.child = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "redis-server did not come up"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills it (SIGKILL) and waits for it to be gone.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.0.kill();
            let _ = c.0.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

const RULES: &str = "[thresholds]\nflag = 40\nblock = 100\n\
    [[rule]]\nid = \"velocity_1m\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 10\nscore = 100\n";

/// A node: its own rules file and name, sharing counts through `redis`.
fn node(dir: &TempDir, name: &str, redis: Option<&Redis>) -> Config {
    let mut c = test_config();
    c.rules.file = Some(dir.write("rules.toml", RULES));
    c.store.node_name = Some(name.into());
    if let Some(r) = redis {
        c.cluster.redis_url = Some(r.url());
    }
    c
}

/// The status an INVITE from `a` gets at `to`.
fn call(to: SocketAddr, a: &str, id: &str) -> u16 {
    let sock = client();
    let port = sock.local_addr().unwrap().port();
    status(&ask(&sock, to, &invite(a, "+77021110000", id, port)))
}

/// Calls from `a` to `nodes` in turn, `gap` apart, until one is blocked;
/// returns that call's number (1-based).
fn calls_until_blocked(nodes: &[SocketAddr], a: &str, gap: Duration) -> usize {
    for i in 0..100 {
        let s = call(nodes[i % nodes.len()], a, &format!("{a}-{i}"));
        if s == 603 {
            return i + 1;
        }
        assert_eq!(s, 302, "call {i}");
        std::thread::sleep(gap);
    }
    panic!("{a} was never blocked");
}

#[test]
fn a_campaign_round_robin_over_three_nodes_is_blocked_at_the_count_one_node_blocks_it_at() {
    let dir = TempDir::new("cluster-rr");
    let gap = Duration::from_millis(350);
    // One node alone: the 11th call in a minute is blocked.
    let alone = start(node(&dir, "alone", None));
    let single = calls_until_blocked(&[alone.udp_addr], "+77015550001", gap);
    alone.stop();
    assert_eq!(single, 11);
    // Three nodes sharing counts, the campaign spread over them.
    let redis = Redis::start();
    let nodes: Vec<_> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| start(node(&dir, n, Some(&redis))))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.udp_addr).collect();
    wait("every node reaches Redis", || {
        nodes
            .iter()
            .all(|n| n.metrics.value("cluster_deltas_pushed_total").is_some())
            .then_some(())
    });
    let spread = calls_until_blocked(&addrs, "+77015550002", gap);
    eprintln!("blocked at call {spread} over three nodes, {single} on one");
    assert!(
        spread.abs_diff(single) <= 2,
        "three nodes blocked at call {spread}, one node at {single}"
    );
    // Each node merged the others' counts.
    for n in &nodes {
        assert!(n.metrics.value("cluster_deltas_merged_total").unwrap_or(0) > 0);
    }
    for n in nodes {
        n.stop();
    }
}

#[test]
fn redis_killed_under_load_delays_no_call_and_counts_converge_when_it_returns() {
    let dir = TempDir::new("cluster-kill");
    let mut redis = Redis::start();
    let nodes: Vec<_> = ["k1", "k2", "k3"]
        .iter()
        .map(|n| start(node(&dir, n, Some(&redis))))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.udp_addr).collect();
    // Load from many callers, none near a threshold; Redis dies in the
    // middle. Every call is answered (a client waits at most its own
    // timeout: a lost or late answer fails `ask`).
    let mut worst = Duration::ZERO;
    for i in 0..300 {
        if i == 100 {
            redis.kill();
        }
        let t = Instant::now();
        let s = call(
            addrs[i % 3],
            &format!("+7701600{:04}", i % 50),
            &format!("load-{i}"),
        );
        worst = worst.max(t.elapsed());
        assert!(s == 302 || s == 603, "call {i}: {s}");
    }
    eprintln!("the slowest answer while Redis died: {worst:?}");
    wait("the nodes see Redis gone", || {
        nodes
            .iter()
            .all(|n| n.metrics.value("cluster_redis_errors_total").unwrap_or(0) > 0)
            .then_some(())
    });
    // Back: a new campaign over the three is blocked as on one node.
    redis.restart();
    let spread = calls_until_blocked(&addrs, "+77015550003", Duration::from_millis(350));
    assert!(
        spread.abs_diff(11) <= 2,
        "blocked at call {spread} after Redis returned"
    );
    for n in nodes {
        n.stop();
    }
}
