//! Rebuilding and swapping one changed layer of the snapshot through the
//! publisher's own path (`poll`, `job`, `Job::run`, `apply`): a 1M-entry
//! flaglist whose file was replaced, while a 10M-entry blocklist stays as
//! it is (shared by `Arc`, never read again; both are asserted on every
//! rebuild). Beside it, in the same run, a full rebuild of both layers:
//! what every reload cost before issue 19, when each one re-read every
//! file.
//!
//! Each rebuild is timed in parts (`iter_custom`): `poll` and `job`, the
//! job's run (reading and parsing the file, building the list, and its
//! digest), the digest alone (the publisher's canonical form through
//! SHA-256, recomputed afterwards on the list the run built, by the same
//! code: checked once against the version the publisher named), and
//! `apply` (the version's digest, the new snapshot, the store, the old
//! layer dropped); and the CPU time of the whole rebuild, steadier than
//! the wall clock on a shared machine. The peak resident memory of each
//! kind of rebuild is read from `VmHWM`, reset before each.

#![forbid(unsafe_code)]
// criterion_main! writes an undocumented `main`.
#![allow(missing_docs)]

use std::fs::File;
use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use kuzet_benches::{number, peak_rss_bytes, reset_peak_rss, rss_bytes, thread_cpu_time};
use kuzet_control::lists::{FileSource, ListFile, Sources};
use kuzet_control::publish::{Layers, Publisher};
use kuzet_dataplane::metrics::Metrics;
use kuzet_dataplane::SharedLists;
use kuzet_rules::{ListId, ListPolicy, ListSet, NumberList, NumberingPlan};
use sha2::{Digest, Sha256};

/// Exact numbers in the blocklist, which stays as it is.
const BLOCK: u64 = 10_000_000;
/// Prefixes in the blocklist.
const BLOCK_PREFIXES: u64 = 3_000;
/// Exact numbers in the flaglist, whose file changes.
const FLAG: u64 = 1_000_000;
/// Prefixes in the flaglist.
const FLAG_PREFIXES: u64 = 2_000;
/// Where the flaglist's numbers start in [`number`]'s spread.
const FLAG_BASE: u64 = 50_000_000;

const BLOCK_REASONS: [&str; 5] = [
    "bank fraud desk",
    "wangiri",
    "regulator order 2026-114",
    "sim box",
    "subscriber complaints",
];
const FLAG_REASONS: [&str; 4] = [
    "complaints: 3",
    "wangiri suspect",
    "short calls burst",
    "new sim, high fan-out",
];

/// A blocklist export: 10M Kazakh mobile numbers, one in 20 with a
/// reason, then 3,000 ranges (nine-digit mobile ranges and international
/// premium ones).
fn write_block(path: &Path) {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    writeln!(w, "# blocklist export, generated for benchmarks").unwrap();
    for i in 0..BLOCK {
        let n = number(i);
        if i % 20 == 0 {
            writeln!(w, "+{n},{}", BLOCK_REASONS[(i / 20 % 5) as usize]).unwrap();
        } else {
            writeln!(w, "+{n}").unwrap();
        }
    }
    for j in 0..BLOCK_PREFIXES {
        if j % 10 == 0 {
            writeln!(w, "+882{j:04}*,international premium").unwrap();
        } else {
            writeln!(w, "+{}*,range", 770_000_000 + (j * 104_729) % 10_000_000).unwrap();
        }
    }
    w.flush().unwrap();
}

/// The flaglist's export number `generation`: 1M numbers, a third with a
/// reason, then 2,000 ten-digit ranges; one entry in a hundred differs
/// from one export to the next.
fn write_flag(path: &Path, generation: u64) {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    writeln!(
        w,
        "# flaglist export {generation}, generated for benchmarks"
    )
    .unwrap();
    for i in 0..FLAG {
        let k = if i % 100 == 0 {
            FLAG_BASE + i + generation * 1_000_000_000
        } else {
            FLAG_BASE + i
        };
        let n = number(k);
        if i % 3 == 0 {
            writeln!(w, "+{n},{}", FLAG_REASONS[(i / 3 % 4) as usize]).unwrap();
        } else {
            writeln!(w, "+{n}").unwrap();
        }
    }
    for j in 0..FLAG_PREFIXES {
        let p = 7_700_000_000 + (j * 7_919) % 100_000_000;
        if j % 2 == 0 {
            writeln!(w, "+{p}*,suspect range").unwrap();
        } else {
            writeln!(w, "+{p}*").unwrap();
        }
    }
    w.flush().unwrap();
}

fn digest16(h: Sha256) -> [u8; 16] {
    let full = h.finalize();
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    d
}

/// A layer's digest, as the publisher computes it
/// (`kuzet_control::publish::list_digest`, private there): its name, then
/// its canonical form through SHA-256. [`check_version`] shows the two
/// agree.
fn list_digest(l: ListId, list: &NumberList) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"kuzet list\0");
    h.update(l.name().as_bytes());
    h.update([0]);
    list.write_canonical(|chunk| h.update(chunk));
    digest16(h)
}

/// Recomputes the version of a snapshot built from list files and the
/// built-in rules, the way the publisher names it, and checks it is the
/// one the publisher gave: the digest this benchmark times is the one
/// the publisher computes.
fn check_version(set: &ListSet, policy: &ListPolicy, plan: &NumberingPlan) {
    let mut r = Sha256::new();
    r.update(b"kuzet rules\0");
    r.update(b"builtin\0");
    r.update(format!("\0{policy:?}\0{plan:?}").as_bytes());
    let rules = digest16(r);
    let mut h = Sha256::new();
    h.update(b"kuzet snapshot\0");
    for (l, list) in set.lists.iter() {
        h.update(l.name().as_bytes());
        h.update(list_digest(l, list));
    }
    h.update(b"rules");
    h.update(rules);
    assert_eq!(
        digest16(h),
        set.version.digest,
        "the benchmark's digest is not the publisher's: keep list_digest in step with publish.rs"
    );
}

/// The lists' files in a directory of their own, and a publisher over them.
struct Fixture {
    dir: PathBuf,
    flag: PathBuf,
    generation: u64,
    publisher: Publisher,
    shared: SharedLists,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = std::env::temp_dir().join(format!("kuzet-bench-publish-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let block = dir.join("blocklist.txt");
        let flag = dir.join("flaglist.txt");
        let t = Instant::now();
        write_block(&block);
        write_flag(&flag, 0);
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len()) >> 20;
        eprintln!(
            "publish: wrote {} ({} MiB) and {} ({} MiB) in {:.1?}",
            block.display(),
            size(&block),
            flag.display(),
            size(&flag),
            t.elapsed()
        );
        let src = Sources {
            files: vec![
                ListFile {
                    path: block,
                    kind: ListId::Block,
                    allow_empty: false,
                },
                ListFile {
                    path: flag.clone(),
                    kind: ListId::Flag,
                    allow_empty: false,
                },
            ],
            ..Sources::default()
        };
        let plan = NumberingPlan::kazakhstan().validated().unwrap();
        let shared: SharedLists = Arc::new(arc_swap::ArcSwap::from_pointee(ListSet::default()));
        let mut publisher = Publisher::new(
            vec![Arc::new(FileSource::new(src.clone()))],
            plan.clone(),
            src.policy,
            shared.clone(),
            Arc::new(Metrics::default()),
            Duration::from_secs(1),
        );
        reset_peak_rss();
        let rss = rss_bytes().unwrap_or(0);
        let t = Instant::now();
        let stats = publisher.publish_now().unwrap();
        let took = t.elapsed();
        let set = shared.load_full();
        eprintln!(
            "publish: first publish of both layers ({} exact, {} prefixes, heap {} MiB) in {:.2?}; \
             resident {} MiB before, {} MiB after, peak {} MiB; version {}",
            stats.exact,
            stats.prefixes,
            stats.bytes >> 20,
            took,
            rss >> 20,
            rss_bytes().unwrap_or(0) >> 20,
            peak_rss_bytes().unwrap_or(0) >> 20,
            set.version
        );
        check_version(&set, &src.policy, &plan);
        Fixture {
            dir,
            flag,
            generation: 0,
            publisher,
            shared,
        }
    }

    /// Writes the flaglist's next export beside it and renames it over
    /// the file, as a deploy does.
    fn replace_flag(&mut self) {
        self.generation += 1;
        let tmp = self.flag.with_extension("new");
        write_flag(&tmp, self.generation);
        std::fs::rename(&tmp, &self.flag).unwrap();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One rebuild, in parts.
#[derive(Clone, Copy)]
struct Parts {
    /// `poll` and `job`: a stat per file.
    poll_job: Duration,
    /// `Job::run`: read, parse, build, digest.
    run: Duration,
    /// The new layers' digests alone (within `run`).
    digest: Duration,
    /// `apply`: version, snapshot, store, the old layers dropped.
    swap: Duration,
    /// CPU time of the whole rebuild (this thread's; 10 ms ticks).
    cpu: Duration,
}

impl Parts {
    fn total(&self) -> Duration {
        self.poll_job + self.run + self.swap
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Prints the median of each part over every rebuild of a kind (warm-up
/// included), and returns the median total and CPU time.
fn report(what: &str, parts: &[Parts], resident: u64) -> (Duration, Duration) {
    let m = |f: fn(&Parts) -> Duration| median(parts.iter().map(f).collect());
    let total = m(Parts::total);
    let run = m(|p| p.run);
    let digest = m(|p| p.digest);
    eprintln!(
        "publish: {what}: {} rebuilds, medians: total {:.2?} (CPU {:.2?}) = poll+job {:.1?} \
         + run {:.2?} (read+build {:.2?}, digest {:.1?}) + swap {:.1?}; \
         resident {} MiB before, peak {} MiB",
        parts.len(),
        total,
        m(|p| p.cpu),
        m(|p| p.poll_job),
        run,
        m(|p| p.run.saturating_sub(p.digest)),
        digest,
        m(|p| p.swap),
        resident >> 20,
        peak_rss_bytes().unwrap_or(0) >> 20,
    );
    (total, m(|p| p.cpu))
}

fn bench_publish(c: &mut Criterion) {
    let mut fx = Fixture::new();
    let mut g = c.benchmark_group("publish_10M_block_1M_flag");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1));

    // One changed 1M layer; the 10M layer stays.
    let mut layer = Vec::new();
    reset_peak_rss();
    let resident = rss_bytes().unwrap_or(0);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("flaglist_layer_only", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                fx.replace_flag();
                let before = fx.shared.load_full();
                let block = before.lists[ListId::Block].clone();
                let version = before.version;
                drop(before);
                let cpu = thread_cpu_time().unwrap_or_default();
                let t0 = Instant::now();
                fx.publisher.poll();
                let job = fx.publisher.job();
                let t1 = Instant::now();
                let built = job.run();
                let t2 = Instant::now();
                let applied = fx.publisher.apply("bench", built, t0);
                let t3 = Instant::now();
                let cpu = thread_cpu_time().unwrap_or_default().saturating_sub(cpu);
                took += t3 - t0;
                assert!(applied, "the new flaglist was refused");
                assert_eq!(
                    job.layers(),
                    Layers::list(ListId::Flag),
                    "only the flaglist"
                );
                let now = fx.shared.load_full();
                assert!(
                    Arc::ptr_eq(&block, &now.lists[ListId::Block]),
                    "the blocklist is shared, not rebuilt"
                );
                assert_ne!(now.version, version);
                let t = Instant::now();
                black_box(list_digest(ListId::Flag, &now.lists[ListId::Flag]));
                let digest = t.elapsed();
                layer.push(Parts {
                    poll_job: t1 - t0,
                    run: t2 - t1,
                    digest,
                    swap: t3 - t2,
                    cpu,
                });
            }
            took
        })
    });
    let layer_median = report("flaglist layer only", &layer, resident);

    // Every layer, as every reload did before issue 19.
    let mut full = Vec::new();
    reset_peak_rss();
    let resident = rss_bytes().unwrap_or(0);
    g.measurement_time(Duration::from_secs(30));
    g.bench_function("full_rebuild", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                fx.replace_flag();
                // The address only: holding the old list would keep it
                // from being dropped in `apply`, as it is in service.
                let block = Arc::as_ptr(&fx.shared.load().lists[ListId::Block]);
                let cpu = thread_cpu_time().unwrap_or_default();
                let t0 = Instant::now();
                fx.publisher.reload_all();
                fx.publisher.poll();
                let job = fx.publisher.job();
                let t1 = Instant::now();
                let built = job.run();
                let t2 = Instant::now();
                let applied = fx.publisher.apply("bench", built, t0);
                let t3 = Instant::now();
                let cpu = thread_cpu_time().unwrap_or_default().saturating_sub(cpu);
                took += t3 - t0;
                assert!(applied, "the rebuild was refused");
                assert_eq!(job.layers(), Layers::ALL);
                let now = fx.shared.load_full();
                assert_ne!(
                    Arc::as_ptr(&now.lists[ListId::Block]),
                    block,
                    "the blocklist was rebuilt"
                );
                let t = Instant::now();
                for (l, list) in now.lists.iter() {
                    black_box(list_digest(l, list));
                }
                let digest = t.elapsed();
                full.push(Parts {
                    poll_job: t1 - t0,
                    run: t2 - t1,
                    digest,
                    swap: t3 - t2,
                    cpu,
                });
            }
            took
        })
    });
    let full_median = report("full rebuild", &full, resident);
    g.finish();
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    eprintln!(
        "publish: layer only {:.1?} against full rebuild {:.2?}: {:.1}x faster \
         ({:.1}% of the time); CPU {:.2?} against {:.2?}: {:.1}x",
        layer_median.0,
        full_median.0,
        ratio(full_median.0, layer_median.0),
        100.0 * ratio(layer_median.0, full_median.0),
        layer_median.1,
        full_median.1,
        ratio(full_median.1, layer_median.1),
    );
}

criterion_group!(benches, bench_publish);
criterion_main!(benches);
