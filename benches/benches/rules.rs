//! Behaviour rules:
//! - scoring one call with 30 rules active while 1M numbers are tracked,
//!   beside the built-in list rules alone (no rule file);
//! - the memory per tracked number (resident-set growth while 1M numbers
//!   are added);
//! - contention: two threads updating per-number state while a third
//!   sweeps the tracker over and over, for the lock-free table and for the
//!   `DashMap` tracker it replaced;
//! - sharing counts between nodes: an export pass over 1M tracked numbers
//!   of which 10k called since the last one, and a merge of another
//!   node's delta for 10k numbers.
//!
//! The clock is Unix time (behaviour windows are aligned on it), from
//! [`EPOCH`], a moment in 2026-11.

#![forbid(unsafe_code)]
// criterion_main! writes an undocumented `main`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use kuzet_benches::dashmap_tracker::DashTracker;
use kuzet_benches::{number, rss_bytes};
use kuzet_rules::ruleset::{CallInput, RuleLists, RuleSet};
use kuzet_rules::state::{CallTime, State, Tracker};
use kuzet_rules::ListId;
use kuzet_rules::{ListBuilder, ListPolicy, ListSet, Number, NumberingPlan, TrunkKind};

const TRACKED: u64 = 1_000_000;
/// Unix seconds the benchmarks' calls start at (2026-11-28).
const EPOCH: u32 = 1_796_000_000;

/// The example file's rules, the built-in list rules and scoped variants:
/// 30 in all.
fn thirty_rules(plan: &NumberingPlan) -> RuleSet {
    let mut text = include_str!("../../deploy/rules/default.toml").to_string();
    let base = RuleSet::from_toml_str(&text, "bench", plan, &ListPolicy::default())
        .unwrap()
        .rules
        .len();
    for i in 0..30 - base {
        text += &format!(
            "\n[[rule]]\nid = \"extra_{i}\"\nkind = \"{}\"\nscore = 5\n[rule.scope]\ncaller_prefixes = [\"+770{}\"]\nhours = [\"{}-{}\"]\n",
            if i % 2 == 0 { "cli_mismatch" } else { "protected_caller" },
            i % 10,
            i % 24,
            (i + 8) % 24
        );
    }
    let r = RuleSet::from_toml_str(&text, "bench", plan, &ListPolicy::default()).unwrap();
    assert_eq!(r.rules.len(), 30);
    r
}

fn input(i: u64, secs: u32) -> CallInput {
    let a = Number::e164(number(i).to_string().as_bytes());
    CallInput {
        a,
        from: a,
        pai: a,
        display: None,
        a_present: true,
        b: Number::e164(number(i + 7).to_string().as_bytes()),
        trunk: Some(TrunkKind::Mobile),
        time: CallTime {
            secs,
            hour: 12,
            weekday: 2,
        },
    }
}

fn bench_rules(c: &mut Criterion) {
    let plan = NumberingPlan::kazakhstan().validated().unwrap();
    let rules = thirty_rules(&plan);
    let builtin = RuleSet::builtin(&ListPolicy::default(), &plan);
    let build = |text: &str| {
        let mut b = ListBuilder::new(&plan);
        b.add_text("bench", text).unwrap();
        b.finish()
    };
    let mut block_text = String::new();
    for i in 0..100_000 {
        block_text += &format!("+{}\n", number(TRACKED + i));
    }
    let lists = ListSet::default()
        .with_list(ListId::Block, build(&block_text))
        .with_list(ListId::Protected, build("+77272595555\n102\n112\n"))
        .with_list(ListId::Premium, build("+88216*\n+2392*\n+6760*\n"));
    let rl: RuleLists<'_> = lists.lists();
    let st = State::new(TRACKED as usize + 1000, 86_400);
    let callers = &st.callers;
    let before = rss_bytes().unwrap_or(0);
    for i in 0..TRACKED {
        black_box(rules.score(&input(i, EPOCH + 10), &rl, &st));
    }
    let after = rss_bytes().unwrap_or(0);
    eprintln!(
        "tracked {} numbers: table {:.1} MiB allocated at start ({:.0} bytes per number of the cap); \
         resident set grew {:.1} MiB while filling it, {:.0} bytes per tracked number",
        callers.len(),
        callers.heap_bytes() as f64 / (1 << 20) as f64,
        callers.heap_bytes() as f64 / (TRACKED + 1000) as f64,
        (after.saturating_sub(before)) as f64 / (1 << 20) as f64,
        after.saturating_sub(before) as f64 / callers.len().max(1) as f64
    );
    // Inputs prepared up front, so the loop times scoring only.
    let inputs: Vec<CallInput> = (0..4096u64)
        .map(|k| input(k * 241 % TRACKED, EPOCH + 20))
        .collect();
    let mut g = c.benchmark_group("score_one_call_1M_tracked");
    let mut k = 0usize;
    g.bench_function("rules_30", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            black_box(rules.score(black_box(&inputs[k]), &rl, &st))
        })
    });
    g.bench_function("builtin_list_rules_only", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            black_box(builtin.score(black_box(&inputs[k]), &rl, &st))
        })
    });
    g.finish();
    bench_sharing(c, &rules, &rl, &st);
}

/// An export pass and a merge on the 1M-number state: 10k numbers called
/// since the last export (a few hundred ms of a busy node's traffic).
fn bench_sharing(c: &mut Criterion, rules: &RuleSet, rl: &RuleLists<'_>, st: &State) {
    const ACTIVE: u64 = 10_000;
    let w = rules.windows();
    // What the filling left: every number has news once.
    let first = Instant::now();
    let all = st.export(EPOCH + 30, &w);
    eprintln!(
        "first export: {} callers in {:.1} ms",
        all.callers.len(),
        first.elapsed().as_secs_f64() * 1e3
    );
    drop(all);
    let calls: Vec<CallInput> = (0..ACTIVE)
        .map(|k| input(k * 97 % TRACKED, EPOCH + 40))
        .collect();
    let other = State::new(ACTIVE as usize * 2, 86_400);
    for c in &calls {
        black_box(rules.score(c, rl, &other));
    }
    let delta = other.export(EPOCH + 40, &w);
    assert!(delta.callers.len() >= ACTIVE as usize);
    let mut g = c.benchmark_group("share_counts_1M_tracked");
    g.bench_function("export_pass_10k_with_news", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                for c in &calls {
                    black_box(rules.score(c, rl, st));
                }
                let t = Instant::now();
                let d = st.export(EPOCH + 40, &w);
                spent += t.elapsed();
                assert!(d.callers.len() >= ACTIVE as usize);
            }
            spent
        })
    });
    g.bench_function("merge_10k_callers", |b| {
        b.iter(|| black_box(st.merge(&delta, &w).unwrap()))
    });
    g.finish();
}

/// Runs `per_call` on two threads, `iters` calls in all, while a third
/// thread runs `sweep` back to back; returns the wall time of the calls.
fn contended(iters: u64, per_call: impl Fn(u64) + Sync, sweep: impl Fn() + Sync) -> Duration {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                sweep();
            }
        });
        let t0 = Instant::now();
        let workers: Vec<_> = (0..2u64)
            .map(|w| {
                let per_call = &per_call;
                s.spawn(move || {
                    for i in 0..iters / 2 {
                        per_call(w * 1_000_003 + i * 7919);
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        let d = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        d
    })
}

fn bench_contention(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let table: Arc<Tracker> = Arc::new(Tracker::new(N as usize, 3600));
    let dash = Arc::new(DashTracker::new(N as usize));
    // The state update scoring does: one velocity window and the fan-out.
    let update = |s: &mut kuzet_rules::state::CallerState, i: u64| {
        s.velocity[0].add(EPOCH + 100, 60, 1);
        s.fan_out(EPOCH + 100, 3600, i);
    };
    for i in 0..N {
        table.with(number(i), EPOCH + 100, |s| update(s, i));
        dash.with(number(i), EPOCH + 100, |s| update(s, i));
    }
    let mut g = c.benchmark_group("state_update_2_threads_while_sweeping_1M");
    g.bench_function("lockfree_table", |b| {
        b.iter_custom(|iters| {
            contended(
                iters,
                |i| {
                    let n = number(i % N);
                    black_box(table.with(n, EPOCH + 100, |s| update(s, i)));
                },
                // Nothing is idle: the sweep walks everything and keeps it.
                || {
                    black_box(table.sweep(EPOCH + 101, 14_400));
                },
            )
        })
    });
    g.bench_function("dashmap_baseline", |b| {
        b.iter_custom(|iters| {
            contended(
                iters,
                |i| {
                    let n = number(i % N);
                    black_box(dash.with(n, EPOCH + 100, |s| update(s, i)));
                },
                || dash.sweep(EPOCH + 101, 3600),
            )
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = bench_rules, bench_contention
}
criterion_main!(benches);
