//! Loading a 10M-number list file through the engine's own loader (the
//! same code as start-up and reload), with the resident memory it keeps.

#![forbid(unsafe_code)]
// criterion_main! writes an undocumented `main`.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use kuzet_benches::{list_file, rss_bytes};
use kuzet_control::lists::load_file;
use kuzet_rules::{ListBuilder, NumberingPlan};

const N: u64 = 10_000_000;

fn bench_load(c: &mut Criterion) {
    let path = list_file(N);
    let plan = NumberingPlan::kazakhstan().validated().unwrap();
    // One measured load first, for memory.
    let before = rss_bytes().unwrap_or(0);
    let t = Instant::now();
    let mut b = ListBuilder::new(&plan);
    load_file(&path, &mut b).unwrap();
    let list = b.finish();
    let took = t.elapsed();
    let after = rss_bytes().unwrap_or(0);
    eprintln!(
        "list_load: {} numbers in {:.2?}; resident for the list {} MiB (heap estimate {} MiB)",
        list.exact_count(),
        took,
        after.saturating_sub(before) >> 20,
        list.heap_bytes() >> 20
    );
    drop(list);
    let mut g = c.benchmark_group("list_load_10M");
    g.sample_size(10).measurement_time(Duration::from_secs(30));
    g.bench_function("kuzet_load_file", |bch| {
        bch.iter(|| {
            let mut b = ListBuilder::new(&plan);
            load_file(&path, &mut b).unwrap();
            b.finish()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_load);
criterion_main!(benches);
