//! The call journal's figures (issue 23): what a call costs on disk, how
//! fast the writer keeps up, and how fast a backtest replays.
//!
//! The calls are the day scenario's (`sim/scenarios/day.toml`: a million
//! subscribers, every legitimate kind and every fraud campaign), scored as
//! the call path scores them under the shipped rules with every rule
//! enforced (every rule kind on), with their outcomes applied to
//! behaviour state and journalled, and spaced to the rate asked for. The
//! scenario's ten minutes are played again and again to fill longer
//! windows, moved on in time each round.
//!
//! - `write [--calls N] [--rates R,R…]`: N calls (default 1,000,000) and
//!   their outcomes, prepared up front, then
//!   1. given to one writer on this thread, nothing else running: rows a
//!      second of its CPU time, and the journal's bytes per call;
//!   2. offered to the writer thread (`SCHED_IDLE`, as the engine starts it)
//!      through the engine's queue (65,536 entries) at each rate R
//!      (default 50,000 and 200,000 calls/s) with `try_send`: entries
//!      dropped;
//!   3. the same, offered as fast as one thread can: where drops begin.
//!
//!   Run it under `taskset -c 0` for one core (the writer, the sender and
//!   the generator then share it).
//! - `backtest [--hours H] [--rate R] [--dir D]`: writes H hours (one by
//!   default) of R calls/s (default 2,000) ending now, then replays the window
//!   twice: with the versions in force (every call must come out as it
//!   went in: the generator scores as the replay does), and through the
//!   shipped rules (shadow rules in shadow), a candidate that changes
//!   verdicts. Prints calls replayed a second and the peak resident set.
//!   `--dir` keeps the journal there (and reuses one already written with
//!   the same hours and rate). Then reads the window's trends (its last
//!   quarter against the rest) and prints calls read a second and the
//!   groups found (the scenario played round after round gives its
//!   callers a cadence of the round's length: those groups are the
//!   bench's, not the network's).
//!
//! `cargo build --release -p kuzet-benches --bin journal_bench &&
//! taskset -c 0 target/release/journal_bench write` (from the root).

#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use kuzet_dataplane::journal::{self as dj, Entry, OutcomeWhat};
use kuzet_dataplane::metrics::Metrics;
use kuzet_journal::archive::Loader;
use kuzet_journal::replay::{self, Candidate, Options};
use kuzet_journal::synth::{self, Scorer};
use kuzet_journal::write::{self, VersionFeed, Writer, WriterSetup};
use kuzet_journal::JournalConfig;
use kuzet_rules::ruleset::{ListPolicy, RuleSet};
use kuzet_rules::{Decision, ListId, ListSet, NumberingPlan, TrunkKind};
use kuzet_sim::scenario::Scenario;
use kuzet_sim::traffic::{Behaviour, Traffic};

const SHIPPED: &str = include_str!("../../../deploy/rules/default.toml");
const DAY: &str = include_str!("../../../sim/scenarios/day.toml");

/// The shipped rules with every rule that ships in shadow enforced.
fn every_rule_enforced() -> String {
    SHIPPED.replace("mode = \"shadow\"   #", "mode = \"enforce\"   #")
}

fn plan() -> NumberingPlan {
    NumberingPlan::kazakhstan()
        .validated()
        .expect("the built-in plan is valid")
}

fn rules(text: &str) -> RuleSet {
    RuleSet::from_toml_str(text, "rules.toml", &plan(), &ListPolicy::default())
        .expect("the shipped rules parse")
}

/// The day scenario's traffic and the snapshot the engine would run it
/// under (the lists its files hold, every rule enforced).
fn scenario() -> (Traffic, Arc<ListSet>) {
    let sc = Scenario::from_toml_str(DAY, "day.toml").expect("the day scenario parses");
    let t = Traffic::generate(&sc).expect("the day scenario generates");
    let f = &t.files;
    let set = synth::snapshot(
        &[
            (ListId::Block, &[&f.blocklist, &f.nbfeed]),
            (ListId::Allow, &[&f.allowlist]),
            (ListId::Protected, &[&f.protected]),
            (ListId::Premium, &[&f.premium]),
            (ListId::Roamers, &[&f.roamers]),
        ],
        &every_rule_enforced(),
        &plan(),
    )
    .expect("the day scenario's lists and the rules load");
    (t, Arc::new(set))
}

/// The day scenario's calls, scored into journal entries at a given rate.
struct Gen {
    t: Traffic,
    scorer: Scorer,
    kinds: Vec<Option<TrunkKind>>,
    sources: Vec<IpAddr>,
    start_us: i64,
    /// Scenario µs to journal µs.
    scale: f64,
    round: u64,
    i: usize,
    made: u64,
    /// The last call's time, µs.
    last_us: i64,
}

impl Gen {
    /// Calls at `rate` a second from `start_us` on.
    fn new(rate: f64, start_us: i64) -> Gen {
        let (t, set) = scenario();
        let native = t.calls.len() as f64 / (t.duration_us as f64 / 1e6);
        let kinds = t
            .trunks
            .iter()
            .map(|(n, _)| Some(TrunkKind::from_name(n).unwrap_or(TrunkKind::Other)))
            .collect();
        let sources = t.trunks.iter().map(|(_, ip)| IpAddr::V4(*ip)).collect();
        Gen {
            scorer: Scorer::new(set, plan(), Options::default().max_numbers),
            kinds,
            sources,
            start_us,
            scale: native / rate,
            round: 0,
            i: 0,
            made: 0,
            last_us: start_us,
            t,
        }
    }

    fn set(&self) -> &Arc<ListSet> {
        self.scorer.set()
    }

    /// The next call's entries (the call, and its outcome when it went
    /// through) into `out`.
    fn next(&mut self, out: &mut Vec<Entry>) {
        if self.i == self.t.calls.len() {
            self.i = 0;
            self.round += 1;
        }
        let c = &self.t.calls[self.i];
        self.i += 1;
        self.made += 1;
        let at = (self.round * self.t.duration_us + c.at_us) as f64 * self.scale;
        let outcome = match c.behaviour {
            Behaviour::Answer { talk_ms, .. } => OutcomeWhat::Answered(talk_ms),
            Behaviour::Cancel { after_ms } => OutcomeWhat::Cancelled(after_ms),
            Behaviour::NoAnswer => OutcomeWhat::Cancelled(30_000),
        };
        self.last_us = self.start_us + at as i64;
        self.scorer.score(
            &synth::Call {
                ts_us: self.last_us,
                trunk: u16::from(c.trunk) + 1,
                trunk_kind: self.kinds[usize::from(c.trunk)],
                source: self.sources[usize::from(c.trunk)],
                a: &c.a,
                from: c.from.as_deref(),
                display: c.display.as_deref(),
                b: &c.b,
                outcome: Some(outcome),
            },
            out,
        );
    }
}

fn setup(root: &Path, set: &Arc<ListSet>, trunks: &Traffic, cfg: JournalConfig) -> WriterSetup {
    WriterSetup {
        root: root.to_path_buf(),
        node: "bench".into(),
        trunks: trunks
            .trunks
            .iter()
            .map(|(n, _)| Arc::from(n.as_str()))
            .collect(),
        cfg,
        lists: Arc::new(ArcSwap::new(set.clone())),
        versions: Arc::new(VersionFeed::default()),
        metrics: Arc::new(Metrics::default()),
    }
}

fn journal_config() -> JournalConfig {
    JournalConfig {
        max_mb: 1 << 30,
        ..JournalConfig::default()
    }
}

/// Bytes of the journal's closed files of `kind` under `root`.
fn bytes_of(root: &Path, kind: kuzet_journal::schema::Kind) -> u64 {
    write::files_of(root, kind, false).iter().map(|f| f.2).sum()
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn fresh_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kuzet-journal-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
        })
        .unwrap_or(default)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn write_bench(args: &[String]) {
    let calls: u64 = arg(args, "--calls", 1_000_000);
    let rates: String = arg(args, "--rates", "50000,200000".to_string());
    let rates: Vec<f64> = rates
        .split(',')
        .map(|r| {
            r.parse()
                .unwrap_or_else(|_| panic!("--rates: not a number: {r}"))
        })
        .collect();
    let t0 = Instant::now();
    // Spaced at 2k calls/s, as a network of that size would write them.
    let mut g = Gen::new(2000.0, now_us() - (calls as i64 / 2000 + 60) * 1_000_000);
    let mut entries = Vec::with_capacity(calls as usize * 2);
    while g.made < calls {
        g.next(&mut entries);
    }
    let outcomes = entries.len() as u64 - calls;
    let blocked = entries
        .iter()
        .filter(|e| matches!(e, Entry::Call(c) if c.decision == Decision::Block))
        .count();
    println!(
        "prepared {calls} calls ({blocked} blocked) and {outcomes} outcomes of the day scenario in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // 1. The writer alone on this thread.
    let dir = fresh_dir("alone");
    let s = setup(&dir, g.set(), &g.t, journal_config());
    let metrics = s.metrics.clone();
    let mut w = Writer::new(s).expect("a writer in a fresh folder");
    let (cpu0, wall0) = (kuzet_benches::thread_cpu_time(), Instant::now());
    for e in &entries {
        w.take(*e);
    }
    w.close_all();
    let wall = wall0.elapsed();
    let cpu = kuzet_benches::thread_cpu_time()
        .zip(cpu0)
        .map_or(wall, |(b, a)| b.saturating_sub(a));
    let call_bytes = bytes_of(&dir, kuzet_journal::schema::Kind::Calls);
    let outcome_bytes = bytes_of(&dir, kuzet_journal::schema::Kind::Outcomes);
    println!(
        "writer alone: {} entries in {:.2} s wall, {:.2} s CPU: {:.0} calls/s of CPU ({:.0} entries/s), {:.0} calls/s wall",
        entries.len(),
        wall.as_secs_f64(),
        cpu.as_secs_f64(),
        calls as f64 / cpu.as_secs_f64().max(1e-9),
        entries.len() as f64 / cpu.as_secs_f64().max(1e-9),
        calls as f64 / wall.as_secs_f64()
    );
    println!(
        "on disk: calls {:.1} MiB ({:.1} bytes/call), outcomes {:.1} MiB ({:.1} bytes/outcome), {:.1} bytes/call in all; losses counted: {}",
        mib(call_bytes),
        call_bytes as f64 / calls as f64,
        mib(outcome_bytes),
        outcome_bytes as f64 / outcomes.max(1) as f64,
        (call_bytes + outcome_bytes) as f64 / calls as f64,
        lost(&metrics)
    );
    let _ = std::fs::remove_dir_all(&dir);

    // 2. and 3. Through the engine's queue, to the writer's own thread.
    let paces = rates
        .iter()
        .map(|r| (format!("{r:.0} calls/s"), Some(*r)))
        .chain([("as fast as one sender can".to_string(), None)]);
    for (label, pace) in paces {
        let dir = fresh_dir("queued");
        let cfg = journal_config();
        let (tx, rx) = dj::queue(cfg.queue);
        let s = setup(&dir, g.set(), &g.t, cfg);
        let metrics = s.metrics.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = write::spawn(s, rx, stop.clone()).expect("the writer starts");
        let (mut sent_calls, mut dropped, mut dropped_calls) = (0u64, 0u64, 0u64);
        let t0 = Instant::now();
        for e in &entries {
            if let (Entry::Call(_), Some(r)) = (e, pace) {
                // Calls at `r` a second; their outcomes go with them.
                let due = t0 + Duration::from_secs_f64(sent_calls as f64 / r);
                let now = Instant::now();
                if due > now + Duration::from_micros(200) {
                    std::thread::sleep(due - now);
                }
            }
            let call = matches!(e, Entry::Call(_));
            sent_calls += u64::from(call);
            if tx.send(*e).is_err() {
                dropped += 1;
                dropped_calls += u64::from(call);
            }
        }
        let offered = t0.elapsed();
        drop(tx);
        writer.join().expect("the writer ends");
        let drained = t0.elapsed();
        println!(
            "queued at {label}: {calls} calls offered in {:.2} s ({:.0} calls/s), written by {:.2} s; dropped {dropped} entries ({dropped_calls} calls, {:.3}%); losses counted: {}",
            offered.as_secs_f64(),
            calls as f64 / offered.as_secs_f64(),
            drained.as_secs_f64(),
            dropped as f64 * 100.0 / entries.len() as f64,
            lost(&metrics)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The writer's own loss counters, summed.
fn lost(m: &Metrics) -> u64 {
    let c: Arc<write::JournalCounters> = m.counter_set();
    c.write_failed.get() + c.capped.get() + c.cut_short.get()
}

fn backtest_bench(args: &[String]) {
    let hours: f64 = arg(args, "--hours", 1.0);
    let rate: f64 = arg(args, "--rate", 2000.0);
    let keep = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let dir = keep.clone().unwrap_or_else(|| fresh_dir("backtest"));
    let calls = (hours * 3600.0 * rate) as u64;
    let stamp = dir.join(format!("bench-{hours}h-{rate}.done"));
    let (since_us, until_us);
    if stamp.exists() {
        let text = std::fs::read_to_string(&stamp).unwrap_or_default();
        let mut it = text
            .split_whitespace()
            .map(|x| x.parse::<i64>().unwrap_or(0));
        since_us = it.next().unwrap_or(0);
        until_us = it.next().unwrap_or(i64::MAX);
        println!("reusing the journal in {} ({calls} calls)", dir.display());
    } else {
        let end = now_us();
        since_us = end - (hours * 3600e6) as i64;
        let mut g = Gen::new(rate, since_us);
        let s = setup(&dir, g.set(), &g.t, journal_config());
        let mut w = Writer::new(s).expect("a writer in a fresh folder");
        let t0 = Instant::now();
        let mut buf = Vec::with_capacity(4);
        let step = (calls / 20).max(1);
        while g.made < calls {
            buf.clear();
            g.next(&mut buf);
            for e in &buf {
                w.take(*e);
            }
            if g.made.is_multiple_of(step) {
                w.tick();
                eprintln!(
                    "  written {:.0}% ({} calls, {:.0} calls/s)",
                    g.made as f64 * 100.0 / calls as f64,
                    g.made,
                    g.made as f64 / t0.elapsed().as_secs_f64()
                );
            }
        }
        w.close_all();
        until_us = end.max(g.last_us) + 1;
        let _ = std::fs::write(&stamp, format!("{since_us} {until_us}"));
        println!(
            "wrote {calls} calls ({hours} h at {rate} calls/s) in {:.1} s: {:.0} MiB",
            t0.elapsed().as_secs_f64(),
            mib(bytes_of(&dir, kuzet_journal::schema::Kind::Calls)
                + bytes_of(&dir, kuzet_journal::schema::Kind::Outcomes))
        );
    }
    let opts = Options {
        since_us,
        until_us,
        ..Options::default()
    };
    let shipped = Candidate {
        label: "the shipped rules".into(),
        rules: Some(Arc::new(rules(SHIPPED))),
        lists: Vec::new(),
    };
    for cand in [Candidate::default(), shipped] {
        let label = if cand.label.is_empty() {
            "in force (every rule enforced)".to_string()
        } else {
            cand.label.clone()
        };
        let mut loader = Loader::new(&dir, plan(), ListPolicy::default());
        kuzet_benches::reset_peak_rss();
        let rss0 = kuzet_benches::rss_bytes().unwrap_or(0);
        let t0 = Instant::now();
        let mut shown = Instant::now();
        let r = replay::backtest(&dir, &mut loader, &cand, &opts, &mut |done, total| {
            if shown.elapsed() >= Duration::from_secs(10) {
                shown = Instant::now();
                eprintln!(
                    "  replayed {:.0}%",
                    done as f64 * 100.0 / total.max(1) as f64
                );
            }
        })
        .expect("the journal reads back");
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "backtest, {label}: {} calls and {} outcomes in {secs:.1} s: {:.0} calls/s ({:.0} rows/s); {} changed, {} skipped; peak RSS {:.0} MiB over {:.0} MiB before",
            r.calls,
            r.outcomes,
            r.calls as f64 / secs,
            (r.calls + r.outcomes) as f64 / secs,
            r.changed,
            r.skipped,
            mib(kuzet_benches::peak_rss_bytes().unwrap_or(0).saturating_sub(rss0)),
            mib(rss0)
        );
        if cand.rules.is_none() && r.changed != 0 {
            println!(
                "  (the in-force replay changed calls: the generator and the replay disagree)"
            );
        }
    }
    // The early warnings over the same window: the last quarter against
    // the rest.
    let t0 = Instant::now();
    let mut rows = kuzet_journal::read::Rows::open(&dir, since_us, until_us);
    let topts = kuzet_journal::trends::TrendOptions {
        since_us,
        until_us,
        recent_s: ((until_us - since_us) / 4_000_000).max(1),
        ..Default::default()
    };
    let tr = kuzet_journal::trends::trends(&mut rows, &plan(), &topts);
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "trends: {} calls in {secs:.1} s: {:.0} calls/s; findings {:?}",
        tr.calls,
        tr.calls as f64 / secs,
        tr.counts()
    );
    for g in &tr.groups {
        println!(
            "  group: {} callers on {}, {}, e.g. {}",
            g.size,
            g.shared,
            g.pattern,
            g.numbers
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("write") => write_bench(&args[1..]),
        Some("backtest") => backtest_bench(&args[1..]),
        _ => {
            eprintln!(
                "usage: journal_bench write [--calls N] [--rates R,R...]\n       journal_bench backtest [--hours H] [--rate R] [--dir D]"
            );
            std::process::exit(2);
        }
    }
}
