//! Overload, as issue 10 asks for it: kuzet on one core (one worker,
//! pinned with `taskset`) is offered more than three times the rate that
//! core can score, for 20 s, by the sim's flood on another core. Then the
//! rate falls back to normal. It must not crash, its memory must stay
//! flat, it must count the calls it let through unscored, and the callers'
//! p99 must be back to normal within 1 s of the overload's end.
//!
//! A test binary of its own: `cargo test` runs test binaries one after
//! another, so nothing else competes for the two cores while it runs.

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kuzet_sim::flood::{flood, Bucket, FloodOptions, FloodReport, Phase};

#[path = "it/ports.rs"]
mod ports;
use ports::free_port;

/// Calls offered during the overload, as a multiple of measured capacity.
const OVERLOAD: f64 = 3.5;
/// The normal load before and after it, as a fraction of capacity.
const NORMAL: f64 = 0.3;
const OVERLOAD_SECS: u64 = 20;
const BUCKET: Duration = Duration::from_millis(100);

struct Kuzet {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Kuzet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Kuzet {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The CPUs this process may use, from /proc/self/status.
fn allowed_cpus() -> Vec<usize> {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = s
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// Pins the calling thread (and the threads it starts) to `cpu`.
fn pin_this_thread(cpu: usize) {
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    let tid = link.file_name().unwrap().to_string_lossy().to_string();
    let ok = Command::new("taskset")
        .args(["-p", "-c", &cpu.to_string(), &tid])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "taskset -p -c {cpu} {tid}");
}

fn wait_answering(addr: SocketAddr) {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let me = c.local_addr().unwrap();
    let ping = format!(
        "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKping\r\n\
         From: <sip:ping@{me}>;tag=1\r\nTo: <sip:{addr}>\r\nCall-ID: ping\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 2048];
    loop {
        assert!(Instant::now() < deadline, "kuzet did not come up");
        c.send_to(ping.as_bytes(), addr).unwrap();
        if let Ok((n, _)) = c.recv_from(&mut buf) {
            if buf[..n].starts_with(b"SIP/2.0 200") {
                return;
            }
        }
    }
}

fn callers() -> Vec<String> {
    (0..1_000_000u64).map(|i| format!("+7705{i:07}")).collect()
}

/// Starts kuzet pinned to `cpu`; `budget_us` replaces the fail-open budget.
fn start_kuzet(dir: &Path, cpu: usize, budget_us: Option<u64>) -> Kuzet {
    // Every 20th caller is on the blocklist: 5% of calls are blocked and
    // logged, as in bench.toml.
    let mut block = std::fs::File::create(dir.join("block.txt")).unwrap();
    for i in (0..1_000_000u64).step_by(20) {
        writeln!(block, "+7705{i:07},flood test").unwrap();
    }
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/rules/default.toml"
        ),
        dir.join("rules.toml"),
    )
    .unwrap();
    // The tracker is smaller than the callers: it fills during the
    // calibration and then evicts, so memory is at its bound before the
    // overload starts.
    let mut config = String::from(
        "[server]\nudp_workers = 1\ntcp = false\n\n\
         [lists]\nblocklist = [\"block.txt\"]\n\n\
         [rules]\nfile = \"rules.toml\"\nmax_tracked_numbers = 100000\n",
    );
    if let Some(b) = budget_us {
        config += &format!("\n[verdict]\nfailopen_budget_us = {b}\n");
    }
    std::fs::write(dir.join("kuzet.toml"), config).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = dir.join("kuzet.log");
    let child = Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .arg(env!("CARGO_BIN_EXE_kuzet"))
        // The call path's shedding and recovery are measured alone: the
        // store's own cost to the tail on this machine's disk is issue
        // 11's open item, measured by benches/e2e/store.sh.
        .args([
            "run",
            "-c",
            "kuzet.toml",
            "--control",
            "127.0.0.1:0",
            "--no-store",
        ])
        .args(["--listen", &addr.to_string()])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let k = Kuzet { child, addr, log };
    wait_answering(addr);
    k
}

fn options(target: SocketAddr, callers: &[String], phases: Vec<Phase>) -> FloodOptions {
    FloodOptions {
        target,
        phases,
        bucket: BUCKET,
        callers: callers.to_vec(),
        callees: (0..1000).map(|i| format!("+7702{i:07}")).collect(),
        grace: Duration::from_secs(2),
    }
}

fn phase(rate: f64, secs: f64) -> Phase {
    Phase {
        rate,
        duration: Duration::from_secs_f64(secs),
    }
}

/// p99 over several buckets (merged), in µs; `None` if calls were lost.
fn p99(buckets: &[&Bucket]) -> Option<u64> {
    let mut merged = buckets.first()?.latency_us.clone();
    merged.reset();
    let mut offered = 0;
    let mut answered = 0;
    for b in buckets {
        merged.add(&b.latency_us).unwrap();
        offered += b.offered;
        answered += b.answered;
    }
    Bucket {
        start: Duration::ZERO,
        offered,
        answered,
        latency_us: merged,
    }
    .quantile_us(0.99)
}

#[test]
fn three_times_capacity_on_one_core_sheds_and_recovers_within_a_second() {
    let cpus = allowed_cpus();
    assert!(
        cpus.len() >= 2,
        "the overload test needs two CPUs (kuzet on one, the flood on another); this process may use {cpus:?}"
    );
    let dir = std::env::temp_dir().join(format!("kuzet-overload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    pin_this_thread(cpus[1]);
    let callers = callers();

    // Capacity: the rate the core can score, measured with fail-open off
    // (a budget of ten minutes) and more offered than it can take: every
    // call it answers is scored, the rest wait or are dropped by the
    // kernel, and the answered rate once the queue is full is its
    // capacity.
    let capacity = {
        let cal = start_kuzet(&dir, cpus[0], Some(600_000_000));
        let offered = 150_000.0;
        let r = flood(&options(cal.addr, &callers, vec![phase(offered, 3.0)])).unwrap();
        let (_, answered) = r.rates(Duration::from_secs(1), Duration::from_secs(3));
        assert!(
            answered < 0.8 * offered,
            "{offered}/s did not saturate kuzet (it answered {answered:.0}/s)"
        );
        answered
    };
    let k = start_kuzet(&dir, cpus[0], None);

    // Normal, overload, normal; memory sampled meanwhile.
    let normal = NORMAL * capacity;
    let over = OVERLOAD * capacity;
    let (pre, post) = (3.0, 5.0);
    let pid = k.pid();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let s = sampling.clone();
    let sampler = std::thread::spawn(move || {
        let mut rss = Vec::new();
        let k = Kuzet::rss_sampler(pid);
        while s.load(std::sync::atomic::Ordering::Relaxed) {
            rss.push((Instant::now(), k()));
            std::thread::sleep(Duration::from_millis(250));
        }
        rss
    });
    let started = Instant::now();
    let report: FloodReport = flood(&options(
        k.addr,
        &callers,
        vec![
            phase(normal, pre),
            phase(over, OVERLOAD_SECS as f64),
            phase(normal, post),
        ],
    ))
    .unwrap();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let rss = sampler.join().unwrap();

    // Still alive and answering, then a clean stop with its counters.
    wait_answering(k.addr);
    let mut k = k;
    Command::new("kill")
        .args(["-TERM", &k.pid().to_string()])
        .status()
        .unwrap();
    let status = k.child.wait().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut k.child.stdout.take().unwrap(), &mut out).unwrap();
    let log = std::fs::read_to_string(&k.log).unwrap_or_default();
    assert!(
        status.success(),
        "kuzet did not stop cleanly: {status:?}\n{log}"
    );
    let counter = |name: &str| -> u64 {
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };

    // The figures.
    let t_over = Duration::from_secs_f64(pre);
    let t_end = t_over + Duration::from_secs(OVERLOAD_SECS);
    let t_done = t_end + Duration::from_secs_f64(post);
    let (offered, answered) = report.rates(t_over, t_end);
    let normal_buckets: Vec<&Bucket> = report.window(Duration::from_millis(500), t_over).collect();
    let normal_p99 = p99(&normal_buckets).expect("no calls lost under normal load");
    // Normal, as opposed to overloaded: within a few times the normal p99
    // and under half the fail-open budget (a queue left by the overload
    // holds requests up to the budget, 50 ms). A debug build on a shared
    // machine has 10-15 ms hiccups under normal load too.
    let threshold = (3 * normal_p99).max(25_000);
    let after: Vec<&Bucket> = report.window(t_end, t_done).collect();
    // Recovery: the first bucket from which every later one has a normal
    // p99 again.
    let mut recovered = None;
    for i in 0..after.len() {
        if after[i..]
            .iter()
            .all(|b| b.quantile_us(0.99).is_some_and(|q| q <= threshold))
        {
            recovered = Some(BUCKET * i as u32);
            break;
        }
    }
    let over_rss: Vec<u64> = rss
        .iter()
        .filter(|(t, _)| {
            let d = t.saturating_duration_since(started);
            d >= t_over + Duration::from_secs(1) && d < t_end
        })
        .map(|(_, r)| *r)
        .collect();
    let (rss_min, rss_max) = (
        *over_rss.iter().min().unwrap(),
        *over_rss.iter().max().unwrap(),
    );
    let failopen = counter("failopen_overload_total");
    eprintln!(
        "after the overload, p99 per {BUCKET:?} (us): {:?}",
        after
            .iter()
            .take(20)
            .map(|b| b.quantile_us(0.99))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "overload: capacity {capacity:.0} calls/s (scored, fail-open off); offered {offered:.0}/s \
         ({:.2}x) for {OVERLOAD_SECS} s, answered {answered:.0}/s; fail-open {failopen}; \
         normal p99 {normal_p99} us; recovered {recovered:?} after the overload; \
         RSS during it {rss_min}-{rss_max} KiB; flood lag at most {:?}; answered by code {:?}",
        offered / capacity,
        report.max_lag,
        report.codes,
    );

    assert!(
        offered >= 3.0 * capacity && report.max_lag < Duration::from_millis(500),
        "the flood offered only {offered:.0}/s, not 3x the {capacity:.0}/s capacity \
         (it fell behind by up to {:?}): this machine cannot run the test",
        report.max_lag
    );
    assert!(failopen > 0, "no call was let through unscored:\n{out}");
    assert!(
        rss_max - rss_min <= (rss_min / 20).max(8 * 1024),
        "RSS moved from {rss_min} to {rss_max} KiB during the overload"
    );
    let recovered = recovered.unwrap_or_else(|| {
        panic!(
            "p99 never came back under {threshold} us after the overload; buckets: {:?}",
            after
                .iter()
                .map(|b| b.quantile_us(0.99))
                .collect::<Vec<_>>()
        )
    });
    assert!(
        recovered <= Duration::from_secs(1),
        "p99 took {recovered:?} to come back after the overload"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

impl Kuzet {
    /// A closure reading a process's RSS (for a sampler thread).
    fn rss_sampler(pid: u32) -> impl Fn() -> u64 {
        move || {
            let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        }
    }
}
