//! The store's figures, measured on a real SQLite file:
//!
//! - `fill DIR N`: writes N synthetic records (1M callers, 900-byte header
//!   sections) through the writer's own path, in batches of 16384 (the recorder's), with
//!   incident grouping on and the incidents' upkeep once a second, and prints records/s;
//! - `query DIR [ROUNDS]`: first pages of queries by number (either side)
//!   for numbers that are in the store, and prints the median and worst;
//! - `export DIR`: streams every record, and prints records/s.
//!
//! `cargo run --release -p kuzet-benches --bin store_bench -- fill /tmp/s 10000000`

#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use kuzet_store::query::{calls, export, Filter};
use kuzet_store::{Record, RecordWriter, RuleHit};

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("fill") if args.len() == 4 => fill(Path::new(&args[2]), args[3].parse().unwrap()),
        Some("query") if args.len() >= 3 => query(
            Path::new(&args[2]),
            args.get(3).map_or(200, |n| n.parse().unwrap()),
        ),
        Some("export") if args.len() == 3 => exporting(Path::new(&args[2])),
        _ => {
            eprintln!("usage: store_bench fill DIR N | query DIR [ROUNDS] | export DIR");
            std::process::exit(2);
        }
    }
}
