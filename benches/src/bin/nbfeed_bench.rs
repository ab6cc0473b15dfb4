//! The National Bank feed's figures (issue 21), end to end: the stand-in
//! Centre (`kuzet_sim::nbfeed`) in this process, a release `kuzet` binary
//! as a process of its own (its memory is its own), and real UDP INVITEs
//! asking whether a number is blocked yet.
//!
//! - `latency [ROUNDS]`: with a 1 s poll, a one-entry batch is published
//!   at a random moment of the poll cycle and a call from its number is
//!   sent every 5 ms until kuzet answers 603: publish to blocked, median,
//!   p90 and worst.
//! - `first [N]`: a fresh kuzet, then a first batch of N entries (default
//!   1,000,000): publish to blocked (its last entry), and kuzet's peak RSS
//!   over its RSS before.
//! - `delta [LAYER] [DELTA]`: a layer of LAYER entries (default 10M, in
//!   batches of 1M), then a DELTA-entry batch (default 10,000): publish to
//!   blocked, and peak RSS (VmHWM reset just before) over RSS before.
//!
//! `cargo build --release -p kuzet && cargo run --release -p kuzet-benches
//! --bin nbfeed_bench -- latency 20` (from the repository's root).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kuzet_sim::nbfeed::{FeedEntry, NbFeed};

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A kuzet process judging calls, pulling from the stand-in Centre.
type Kuzet = kuzet_benches::process::KuzetProc;

/// kuzet's config for pulling the stand-in Centre at `centre` every
/// `poll_ms`, trusting its keys.
fn config(port: u16, feed: &NbFeed, centre: SocketAddr, poll_ms: u64) -> String {
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nudp_workers = 1\n[control]\nenabled = false\n[admin]\nenabled = false\n\
         [lists]\nreload_interval_ms = 1000\n[nbank]\nurl = \"http://{centre}\"\npoll_ms = {poll_ms}\ntimeout_ms = 60000\n"
    );
    for k in feed.keys() {
        toml.push_str(&format!(
            "[[nbank.keys]]\nid = \"{}\"\npublic = \"{}\"\nvalid_from = \"{}\"\n",
            k.id, k.public_hex, k.valid_from_rfc3339
        ));
    }
    toml
}

fn start(dir: &Path, feed: &NbFeed, centre: SocketAddr, poll_ms: u64) -> Kuzet {
    Kuzet::start(dir, |port| config(port, feed, centre, poll_ms))
}

fn entries(from: u64, n: u64, expires: i64) -> Vec<FeedEntry> {
    (from..from + n)
        .map(|i| FeedEntry::add(number(i), "bank-impersonation", expires))
        .collect()
}

/// The ith fraud number: +7 70x xxx xx xx, distinct for i < 80M.
fn number(i: u64) -> String {
    format!("+77{:09}", 100_000_000 + i)
}

fn median(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (p(0.5), p(0.9), v[v.len() - 1])
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map_or("latency", String::as_str);
    let arg = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let feed = NbFeed::new("bench");
    let centre = rt
        .block_on(feed.spawn("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let dir: PathBuf =
        std::env::temp_dir().join(format!("kuzet-nbfeed-bench-{}", std::process::id()));
    let far = now_s() + 30 * 86_400;
    match what {
        "latency" => {
            let rounds = arg(1, 20);
            let mut k = start(&dir, &feed, centre, 1_000);
            let mut ms = Vec::new();
            let mut jitter = 0x9e37_79b9u64;
            for i in 0..rounds {
                // A random moment of the poll cycle.
                jitter ^= jitter << 13;
                jitter ^= jitter >> 7;
                jitter ^= jitter << 17;
                std::thread::sleep(Duration::from_millis(jitter % 1_000));
                let n = number(i);
                let t = Instant::now();
                feed.publish(&entries(i, 1, far));
                let at = k.until_blocked(&n, Duration::from_secs(30));
                ms.push(at.duration_since(t).as_secs_f64() * 1e3);
            }
            let (p50, p90, max) = median(&mut ms);
            println!("publish to blocked, 1 s poll, {rounds} rounds: median {p50:.0} ms, p90 {p90:.0} ms, worst {max:.0} ms");
        }
        "first" => {
            let n = arg(1, 1_000_000);
            let mut k = start(&dir, &feed, centre, 1_000);
            let before = k.proc_kib("VmRSS:");
            let batch = entries(0, n, far);
            let t = Instant::now();
            feed.publish(&batch);
            let made = t.elapsed();
            drop(batch);
            let t = Instant::now();
            let at = k.until_blocked(&number(n - 1), Duration::from_secs(600));
            let peak = k.proc_kib("VmHWM:");
            println!(
                "first batch of {n}: publish to blocked {:.2} s (the stand-in took {:.2} s to sign it); kuzet RSS {} MiB before, peak {} MiB (+{} MiB, {} B an entry)",
                at.duration_since(t).as_secs_f64(),
                made.as_secs_f64(),
                before / 1024,
                peak / 1024,
                (peak - before) / 1024,
                (peak - before) * 1024 / n.max(1)
            );
        }
        "delta" => {
            let layer = arg(1, 10_000_000);
            let delta = arg(2, 10_000);
            let per = 1_000_000u64.min(layer);
            let mut k = start(&dir, &feed, centre, 1_000);
            let t = Instant::now();
            let mut from = 0;
            while from < layer {
                let n = per.min(layer - from);
                feed.publish(&entries(from, n, far));
                from += n;
                k.until_blocked(&number(from - 1), Duration::from_secs(900));
                eprintln!(
                    "layer: {from} entries in force after {:.0} s",
                    t.elapsed().as_secs_f64()
                );
            }
            let rss = k.proc_kib("VmRSS:");
            k.reset_peak();
            let batch = entries(layer, delta, far);
            let t = Instant::now();
            feed.publish(&batch);
            let at = k.until_blocked(&number(layer + delta - 1), Duration::from_secs(600));
            let peak = k.proc_kib("VmHWM:");
            println!(
                "a {delta}-entry batch on a {layer}-entry layer: publish to blocked {:.2} s; kuzet RSS {} MiB before, peak {} MiB during (+{} MiB)",
                at.duration_since(t).as_secs_f64(),
                rss / 1024,
                peak / 1024,
                peak.saturating_sub(rss) / 1024
            );
        }
        other => {
            eprintln!("usage: nbfeed_bench latency [ROUNDS] | first [N] | delta [LAYER] [DELTA] (not {other:?})");
            std::process::exit(2);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
