//! The store's figures, measured on a real SQLite file and a real
//! PostgreSQL server:
//!
//! - `fill DIR N`: writes N synthetic records (1M callers, 900-byte header
//!   sections) through the writer's own path, in batches of 16384 (the recorder's), with
//!   incident grouping on and the incidents' upkeep once a second, and prints records/s;
//! - `query DIR [ROUNDS]`: first pages of queries by number (either side)
//!   for numbers that are in the store, and prints the median and worst;
//! - `export DIR`: streams every record, and prints records/s;
//! - `compare N [--url URL] [--minutes M] [--rounds R] [--dir DIR]`: the
//!   same N records through SQLite's writer (a store in a fresh folder
//!   under DIR, removed after) and then PostgreSQL's (`PgStore`: the
//!   server at URL, whose database must be empty, or else a server of the
//!   bench's own, `kuzet_sim::servers::PgServer`), each followed by R
//!   queries by number of one page of 50 through the investigators' port
//!   (`query::calls`, `PgQueries::calls`); PostgreSQL's fill stops after
//!   M minutes if it has not reached N (the figures say how far it got).
//!   Prints records/s overall and over the last tenth of the fill (the
//!   sustained rate as the store grows), and each backend's query median,
//!   p99 and worst.
//!
//! `cargo run --release -p kuzet-benches --bin store_bench -- fill /tmp/s 10000000`
//! `target/release/store_bench compare 1000000 --url postgres://postgres@127.0.0.1:5432/kuzet_bench`

#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use kuzet_store::query::{calls, export, Filter};
use kuzet_store::{Queries, Record, RecordWriter, RuleHit};

const CALLERS: u64 = 1_000_000;

fn number(n: u64) -> String {
    format!("+7701{:07}", n % 10_000_000)
}

fn record(i: u64, t0: i64) -> Record {
    let a = number((i * 7919) % CALLERS);
    let b = format!("+7702{:07}", (i * 104_729) % 10_000_000);
    let head = format!(
        "INVITE sip:{b}@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bK{i:016x};rport\r\n\
         From: <sip:{a}@10.1.2.3>;tag={i:x}\r\nTo: <sip:{b}@10.0.0.1>\r\nCall-ID: {i:x}@10.1.2.3\r\n\
         CSeq: 1 INVITE\r\nMax-Forwards: 69\r\nP-Asserted-Identity: <sip:{a}@10.1.2.3>\r\n\
         Contact: <sip:{a}@10.1.2.3:5060>\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n\
         Supported: timer, 100rel\r\nUser-Agent: carrier-sbc/4.2\r\nContent-Type: application/sdp\r\n\
         Content-Length: 212\r\n\r\n"
    );
    Record {
        verdict_id: format!("{:08x}{:016x}", 0x1d7e_a713u32, i),
        ts_us: t0 + i as i64 * 20,
        call_id: format!("{i:x}@10.1.2.3"),
        ruri: format!("sip:{b}@10.0.0.1"),
        from_hdr: format!("<sip:{a}@10.1.2.3>;tag={i:x}"),
        pai_hdr: format!("<sip:{a}@10.1.2.3>"),
        a: Some(a.clone()),
        b: Some(b),
        from_num: Some(a.clone()),
        pai_num: Some(a),
        trunk: Some("intl-1".into()),
        trunk_kind: Some("international".into()),
        source: "10.1.2.3:5060".into(),
        transport: "udp".into(),
        decision: "block".into(),
        shadow_decision: "block".into(),
        code: 603,
        score: 100,
        explanation: "blocklist: caller listed (bank fraud desk)".into(),
        rules: vec![RuleHit {
            id: "blocklist".into(),
            value: 0,
            threshold: 100,
            shadow: false,
            why: "caller listed (bank fraud desk)".into(),
        }],
        lists_version: "1795300000.1".into(),
        headers: head.into_bytes(),
        ..Record::default()
    }
}

fn fill(dir: &Path, n: u64) {
    let mut o = kuzet_store::Options {
        node: "bench".into(),
        max_age: Duration::ZERO,
        ..kuzet_store::Options::default()
    };
    o.incidents.report = false;
    let mut s = kuzet_store::open(dir, o).unwrap();
    let have = s.count().unwrap();
    let t0 = kuzet_store::now_us() - 86_400_000_000;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(16384);
    let mut last = Instant::now();
    let mut ticked = Instant::now();
    for i in have..have + n {
        batch.push(record(i, t0));
        if batch.len() == 16384 {
            s.insert(&batch).unwrap();
            batch.clear();
            // The recorder's upkeep between batches, once a second.
            if ticked.elapsed() >= Duration::from_secs(1) {
                s.tick(kuzet_store::now_us()).unwrap();
                ticked = Instant::now();
            }
            if last.elapsed() > Duration::from_secs(10) {
                let done = i + 1 - have;
                eprintln!(
                    "{done} records, {:.0}/s",
                    done as f64 / started.elapsed().as_secs_f64()
                );
                last = Instant::now();
            }
        }
    }
    s.insert(&batch).unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fill: {n} records in {secs:.1} s: {:.0} records/s; store {} MiB",
        n as f64 / secs,
        s.used_bytes().unwrap() >> 20
    );
}

fn query(dir: &Path, rounds: usize) {
    let c = kuzet_store::open_reader(dir).unwrap();
    let total: i64 = c
        .query_row("SELECT max(id) FROM calls", [], |r| r.get(0))
        .unwrap();
    let mut times = Vec::new();
    let mut rows = 0;
    for k in 0..rounds as u64 {
        // A caller that is in the store, spread over the whole id range.
        let i = (k * 2_654_435_761) % total as u64;
        let f = Filter {
            number: Some(number((i * 7919) % CALLERS)),
            ..Filter::default()
        };
        let t = Instant::now();
        let p = calls(&c, &f, None, 100).unwrap();
        times.push(t.elapsed());
        rows += p.calls.len();
    }
    times.sort();
    println!(
        "query by number over {total} records, first page of up to 100: median {:.2} ms, p99 {:.2} ms, max {:.2} ms ({rounds} numbers, {:.1} rows each)",
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() * 99 / 100].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        rows as f64 / rounds as f64
    );
}

fn exporting(dir: &Path) {
    let c = kuzet_store::open_reader(dir).unwrap();
    let t = Instant::now();
    let mut bytes = 0usize;
    let n = export(&c, &Filter::default(), |r| {
        bytes += r.headers.len();
        true
    })
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "export: {n} records in {secs:.1} s: {:.0} records/s ({} MiB of headers)",
        n as f64 / secs,
        bytes >> 20
    );
}

/// A fill's figures: records written, seconds taken, and the rate over
/// its last tenth.
struct Filled {
    n: u64,
    secs: f64,
    tail_rate: f64,
    mib: u64,
}

/// Writes records `0..n` (stamped from `t0`) through `s` in the
/// recorder's batches, with the upkeep once a second, stopping early once
/// `budget` has passed; progress every 10 s on stderr.
fn fill_writer(s: &mut dyn RecordWriter, n: u64, t0: i64, budget: Duration, what: &str) -> Filled {
    let started = Instant::now();
    let mut batch = Vec::with_capacity(16384);
    let mut last = Instant::now();
    let mut ticked = Instant::now();
    // When the last tenth began, and how many were written by then.
    let tail_from = n - n / 10;
    let mut tail: Option<(Instant, u64)> = None;
    let mut done = 0u64;
    while done < n {
        let i = done;
        batch.push(record(i, t0));
        done += 1;
        if batch.len() == 16384 || done == n {
            s.insert(&batch).unwrap();
            batch.clear();
            if tail.is_none() && done >= tail_from {
                tail = Some((Instant::now(), done));
            }
            // The recorder's upkeep between batches, once a second.
            if ticked.elapsed() >= Duration::from_secs(1) {
                s.tick(kuzet_store::now_us()).unwrap();
                ticked = Instant::now();
            }
            if last.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "{what}: {done} records, {:.0}/s",
                    done as f64 / started.elapsed().as_secs_f64()
                );
                last = Instant::now();
            }
            if started.elapsed() >= budget && done < n {
                eprintln!("{what}: stopped at {done} records: the time given ran out");
                break;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // A fill cut short has no last tenth of N: its last tenth of what it
    // wrote is measured from the progress it made (the overall rate).
    let tail_rate = match tail {
        Some((at, from)) if done > from => (done - from) as f64 / at.elapsed().as_secs_f64(),
        _ => done as f64 / secs,
    };
    Filled {
        n: done,
        secs,
        tail_rate,
        mib: s.used_bytes().unwrap() >> 20,
    }
}

/// Query times in ms, sorted: `rounds` first pages of 50 by number, for
/// callers that are in a store of `n` records, through `page`.
fn query_rounds(n: u64, rounds: usize, mut page: impl FnMut(&Filter) -> usize) -> (Vec<f64>, f64) {
    let mut times = Vec::with_capacity(rounds);
    let mut rows = 0;
    for k in 0..rounds as u64 {
        let i = (k * 2_654_435_761) % n;
        let f = Filter {
            number: Some(number((i * 7919) % CALLERS)),
            ..Filter::default()
        };
        let t = Instant::now();
        rows += page(&f);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (times, rows as f64 / rounds as f64)
}

fn summary(name: &str, f: &Filled, q: &(Vec<f64>, f64)) -> String {
    let (t, rows) = q;
    format!(
        "{name}: fill {} records in {:.1} s: {:.0} records/s, {:.0}/s over the last tenth; {} MiB\n\
         {name}: query by number, first page of up to 50 over {} records: median {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} numbers, {rows:.1} rows each)",
        f.n,
        f.secs,
        f.n as f64 / f.secs,
        f.tail_rate,
        f.mib,
        f.n,
        t[t.len() / 2],
        t[t.len() * 99 / 100],
        t[t.len() - 1],
        t.len(),
    )
}

/// SQLite and then PostgreSQL, the same records and queries, one run.
fn compare(n: u64, args: &[String]) {
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let minutes: f64 = opt("--minutes").map_or(10.0, |m| m.parse().unwrap());
    let rounds: usize = opt("--rounds").map_or(1000, |r| r.parse().unwrap());
    let base = opt("--dir").map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let budget = Duration::from_secs_f64(minutes * 60.0);
    let mut o = kuzet_store::Options {
        node: "bench".into(),
        max_age: Duration::ZERO,
        ..kuzet_store::Options::default()
    };
    o.incidents.report = false;
    // Every record within the last hours, as the recorder writes them:
    // PostgreSQL's are in the partitions it makes ahead.
    let t0 = kuzet_store::now_us() - n as i64 * 20 - 1_000_000;

    let dir = base.join(format!("kuzet-store-bench-{}", std::process::id()));
    let sqlite = {
        let mut s = kuzet_store::open(&dir, o.clone()).unwrap();
        let f = fill_writer(&mut s, n, t0, Duration::MAX, "sqlite");
        drop(s);
        let c = kuzet_store::open_reader(&dir).unwrap();
        let q = query_rounds(f.n, rounds, |flt| {
            calls(&c, flt, None, 50).unwrap().calls.len()
        });
        let line = summary("sqlite", &f, &q);
        println!("{line}");
        line
    };
    // The folder is removed before PostgreSQL fills: the disk holds one
    // store at a time.
    let _ = std::fs::remove_dir_all(&dir);

    let own;
    let url = match opt("--url") {
        Some(u) => u,
        None => {
            own = kuzet_sim::servers::PgServer::start()
                .expect("PostgreSQL (scripts/install-deps.sh)");
            own.create_db("store_bench").unwrap()
        }
    };
    let mut s = kuzet_store::pg::open(&url, o, kuzet_store::pg::Partitioning::Daily).unwrap();
    assert_eq!(s.count().unwrap(), 0, "the database must be empty");
    let f = fill_writer(&mut s, n, t0, budget, "postgres");
    drop(s);
    let pq = kuzet_store::pg::PgQueries::new(&url);
    let q = query_rounds(f.n, rounds, |flt| {
        pq.calls(flt, None, 50).unwrap().calls.len()
    });
    println!("{}", summary("postgres", &f, &q));
    eprintln!("\n{sqlite}\n{}", summary("postgres", &f, &q));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("fill") if args.len() == 4 => fill(Path::new(&args[2]), args[3].parse().unwrap()),
        Some("query") if args.len() >= 3 => query(
            Path::new(&args[2]),
            args.get(3).map_or(200, |n| n.parse().unwrap()),
        ),
        Some("export") if args.len() == 3 => exporting(Path::new(&args[2])),
        Some("compare") if args.len() >= 3 => compare(args[2].parse().unwrap(), &args[3..]),
        _ => {
            eprintln!("usage: store_bench fill DIR N | query DIR [ROUNDS] | export DIR | compare N [--url URL] [--minutes M] [--rounds R] [--dir DIR]");
            std::process::exit(2);
        }
    }
}
