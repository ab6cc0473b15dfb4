//! The call journal's per-entry costs, each beside what it is measured
//! against:
//! - the call path's hand-off: one scored call's `CallFact` queued with
//!   `try_send` (and taken off again, as the writer does), beside the
//!   scoring it follows (the shipped rules, every rule enforced);
//! - the writer: entries taken into Arrow builders and written to
//!   Parquet (Snappy) in a folder of its own, per entry, with and
//!   without the files' closing (a file is closed a minute after it
//!   opened, `roll_s`).
//!
//! The whole-journal figures (bytes per call, throughput through the
//! queue, backtest and trends speed, 24 hours of a 2,000 calls/s
//! network) come from `journal_bench` (`benches/src/bin`).

#![forbid(unsafe_code)]
// criterion_main! writes an undocumented `main`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use kuzet_benches::number;
use kuzet_dataplane::journal::{self as dj, Entry, OutcomeWhat};
use kuzet_journal::synth::{self, Scorer};
use kuzet_journal::write::{VersionFeed, Writer, WriterSetup};
use kuzet_journal::JournalConfig;
use kuzet_rules::ruleset::CallInput;
use kuzet_rules::state::State;
use kuzet_rules::{ListId, NumberingPlan, TrunkKind};

/// Unix seconds the calls start at (2026-11-28).
const EPOCH: i64 = 1_796_000_000;

fn plan() -> NumberingPlan {
    NumberingPlan::kazakhstan().validated().unwrap()
}

/// 4,096 calls of 1,000 callers, scored into journal entries, each with
/// its outcome.
fn entries() -> (Vec<Entry>, Arc<kuzet_rules::ListSet>) {
    let rules = include_str!("../../deploy/rules/default.toml")
        .replace("mode = \"shadow\"   #", "mode = \"enforce\"   #");
    let mut block = String::new();
    for i in 0..10_000 {
        block += &format!("+{}\n", number(5_000_000 + i));
    }
    let set = Arc::new(synth::snapshot(&[(ListId::Block, &[&block])], &rules, &plan()).unwrap());
    let mut scorer = Scorer::new(set.clone(), plan(), 1 << 16);
    let mut out = Vec::new();
    let texts: Vec<(String, String)> = (0..4096u64)
        .map(|k| {
            (
                format!("+{}", number(k % 1000)),
                format!("+{}", number(100_000 + k)),
            )
        })
        .collect();
    for (k, (a, b)) in texts.iter().enumerate() {
        scorer.score(
            &synth::Call {
                ts_us: (EPOCH + k as i64 / 4) * 1_000_000 + k as i64,
                trunk: 1,
                trunk_kind: Some(TrunkKind::Mobile),
                source: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
                a,
                from: None,
                display: None,
                b,
                outcome: Some(OutcomeWhat::Answered(40_000)),
            },
            &mut out,
        );
    }
    (out, set)
}

fn bench_handoff(c: &mut Criterion) {
    let (entries, set) = entries();
    let calls: Vec<Entry> = entries
        .iter()
        .filter(|e| matches!(e, Entry::Call(_)))
        .copied()
        .collect();
    let (tx, rx) = dj::queue(65_536);
    let st = State::new(1 << 16, 3600);
    let inputs: Vec<CallInput> = calls
        .iter()
        .filter_map(|e| match e {
            Entry::Call(f) => Some(f.input),
            Entry::Outcome(_) => None,
        })
        .collect();
    let mut g = c.benchmark_group("journal_handoff");
    let mut k = 0usize;
    g.bench_function("score_one_call", |b| {
        b.iter(|| {
            k = (k + 1) % inputs.len();
            black_box(set.score(black_box(&inputs[k]), &st))
        })
    });
    g.bench_function("queue_one_call_fact_and_take_it", |b| {
        b.iter(|| {
            k = (k + 1) % calls.len();
            let _ = tx.send(black_box(calls[k]));
            black_box(rx.try_recv().ok())
        })
    });
    g.finish();
}

fn setup(root: &std::path::Path, set: &Arc<kuzet_rules::ListSet>) -> WriterSetup {
    WriterSetup {
        root: root.to_path_buf(),
        node: "bench".into(),
        trunks: vec![Arc::from("mobile")],
        cfg: JournalConfig::default(),
        lists: Arc::new(arc_swap::ArcSwap::new(set.clone())),
        versions: Arc::new(VersionFeed::default()),
        metrics: Arc::default(),
    }
}

fn bench_writer(c: &mut Criterion) {
    let (entries, set) = entries();
    let dir = std::env::temp_dir().join(format!("kuzet-journal-crit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut g = c.benchmark_group("journal_writer");
    g.throughput(criterion::Throughput::Elements(entries.len() as u64));
    // One writer for the whole run: files stay open, closed each minute
    // of the run or at its hour's end, as in a node.
    let mut w = Writer::new(setup(&dir.join("open"), &set)).unwrap();
    g.bench_function("take_4096_calls_and_outcomes", |b| {
        b.iter(|| {
            for e in &entries {
                w.take(*e);
            }
        })
    });
    // A writer per batch, closed with it: 4,096 calls and their outcomes,
    // and the cost of making and closing the two files.
    let mut n = 0u32;
    g.bench_function("take_4096_calls_and_outcomes_and_close", |b| {
        b.iter_batched(
            || {
                n += 1;
                Writer::new(setup(&dir.join(format!("w{n}")), &set)).unwrap()
            },
            |mut w| {
                for e in &entries {
                    w.take(*e);
                }
                w.close_all();
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    w.close_all();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_handoff, bench_writer);
criterion_main!(benches);
