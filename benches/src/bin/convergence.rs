//! How fast three nodes converge (issue 22): three release `kuzet`
//! processes sharing their behaviour counts through a `redis-server` of
//! this program's own, and real UDP INVITEs.
//!
//! Each round takes a caller of its own. Its calls go to node A until A
//! has counted `MAX` of them (the rule blocks past `MAX` a minute), then
//! one call every 2 ms goes to node B (or C) until B blocks it: B blocks
//! once it has merged A's count, so the time from A's last answer to B's
//! first 603 is how long a count takes to reach another node (A's push
//! interval, Redis, B's read). B's own probes add to the count too, but
//! at one every 2 ms they alone would need `MAX` / 500 s, far past any
//! figure here. Each round starts at a random moment of the push cycle.
//! Prints the median, p90 and worst for B and C.
//!
//! `cargo build --release -p kuzet && cargo run --release -p kuzet-benches
//! --bin convergence -- [ROUNDS] [PUSH_MS]` (from the repository's root;
//! defaults 20 rounds, the default 200 ms push interval).

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use kuzet_benches::process::KuzetProc;
use kuzet_sim::servers::RedisServer;

/// Calls a minute past which the round's caller is blocked.
const MAX: u32 = 1000;

fn config(port: u16, name: &str, redis: &str, push_ms: u64) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nudp_workers = 1\n[control]\nenabled = false\n\
         [admin]\nenabled = false\n[store]\nenabled = false\nnode_name = \"{name}\"\n\
         [rules]\nfile = \"rules.toml\"\n\
         [cluster]\nredis_url = \"{redis}\"\npush_interval_ms = {push_ms}\n"
    )
}

const RULES: &str = "[thresholds]\nflag = 40\nblock = 100\n\
    [[rule]]\nid = \"velocity_1m\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 1000\nscore = 100\n\
    [rule.scope]\ncaller_prefixes = [\"+7701777\"]\n";

fn quantiles(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (p(0.5), p(0.9), v[v.len() - 1])
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let rounds = arg(0, 20);
    let push_ms = arg(1, 200);
    let redis = RedisServer::start().expect("redis-server (scripts/install-deps.sh installs it)");
    let base = std::env::temp_dir().join(format!("kuzet-convergence-{}", std::process::id()));
    let mut nodes: Vec<KuzetProc> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let dir = base.join(name);
            KuzetProc::start(&dir, |port| {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("rules.toml"), RULES).unwrap();
                config(port, name, &redis.url(), push_ms)
            })
        })
        .collect();
    let mut to_b = Vec::new();
    let mut to_c = Vec::new();
    let mut jitter = 0x9e37_79b9u64;
    for r in 0..rounds {
        // A random moment of the push cycle.
        jitter ^= jitter << 13;
        jitter ^= jitter >> 7;
        jitter ^= jitter << 17;
        std::thread::sleep(Duration::from_millis(jitter % push_ms.max(1)));
        let caller = format!("+7701777{:04}", r);
        for i in 0..MAX {
            let s = nodes[0].status(&caller);
            assert_eq!(s, Some(302), "call {i} of round {r} at A");
        }
        let done = Instant::now();
        let (probe, into) = if r % 2 == 0 {
            (1, &mut to_b)
        } else {
            (2, &mut to_c)
        };
        let at = nodes[probe].until_blocked_every(
            &caller,
            Duration::from_secs(30),
            Duration::from_millis(2),
        );
        into.push(at.duration_since(done).as_secs_f64() * 1e3);
    }
    for (name, v) in [("B", &mut to_b), ("C", &mut to_c)] {
        let (p50, p90, worst) = quantiles(v);
        println!(
            "A's count reached {name} (push every {push_ms} ms, {} rounds): median {p50:.0} ms, p90 {p90:.0} ms, worst {worst:.0} ms",
            v.len()
        );
    }
    drop(nodes.drain(..));
    let _ = std::fs::remove_dir_all(&base);
}
