//! Hot-path microbenchmarks, each beside a naive baseline:
//! - parsing a 700-byte INVITE: kuzet's indexer vs rsip 0.4;
//! - parse + normalize + list lookup against 10M exact numbers and 100k
//!   prefixes: kuzet's lists vs a `HashSet<String>` of E.164 strings;
//! - the whole redirect handler, datagram in, 302 out.

#![forbid(unsafe_code)]
// criterion_main! writes an undocumented `main`.
#![allow(missing_docs)]

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use kuzet::config::Config;
use kuzet_benches::{number, INVITE};
use kuzet_dataplane::metrics::Metrics;
use kuzet_dataplane::Handler;
use kuzet_rules::ruleset::{CallInput, Decision};
use kuzet_rules::state::State;
use kuzet_rules::{ListBuilder, ListSet, NumberingPlan};
use kuzet_sip::{parse, syntax, Hdr, Transport};

const EXACT: u64 = 10_000_000;
const PREFIXES: u64 = 100_000;

fn big_lists(plan: &NumberingPlan) -> ListSet {
    let t = Instant::now();
    let mut b = ListBuilder::new(plan);
    b.reserve(EXACT as usize);
    let mut line = String::new();
    for i in 0..EXACT {
        line.clear();
        use std::fmt::Write;
        let _ = write!(line, "+{}", number(i));
        b.add_line("bench", 1, &line).unwrap();
    }
    // 100k prefixes of 6 to 9 digits in foreign (IRSF-like) ranges.
    for i in 0..PREFIXES {
        let len = 6 + (i % 4) as u32;
        let p = 880_000_000 + i * 37;
        let p = p / 10u64.pow(9 - len);
        b.add_line("bench", 1, &format!("+{p}*")).unwrap();
    }
    let block = b.finish();
    eprintln!("built 10M+100k list in {:?}", t.elapsed());
    ListSet::default().with_list(kuzet_rules::ListId::Block, block)
}

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_700B_invite");
    g.bench_function("kuzet_index", |b| {
        b.iter(|| {
            let m = parse(black_box(INVITE), Transport::Datagram).unwrap();
            black_box(m.header(Hdr::CallId));
        })
    });
    g.bench_function("kuzet_index_and_numbers", |b| {
        b.iter(|| {
            let m = parse(black_box(INVITE), Transport::Datagram).unwrap();
            let pai = m.header(Hdr::PAssertedIdentity).unwrap();
            let na = syntax::parse_name_addr(pai).unwrap();
            let a = syntax::parse_uri(na.uri).unwrap();
            let bu = syntax::parse_uri(m.request_uri()).unwrap();
            black_box((a.user_number(), bu.user_number()));
        })
    });
    g.bench_function("rsip_baseline", |b| {
        b.iter(|| {
            let m = rsip::SipMessage::try_from(black_box(INVITE)).unwrap();
            black_box(m);
        })
    });
    g.finish();
}

fn bench_lookup(c: &mut Criterion) {
    let plan = NumberingPlan::kazakhstan().validated().unwrap();
    let lists = big_lists(&plan);
    let cfg = Config::default();
    let handler = Handler::new(
        cfg.dataplane().unwrap(),
        Arc::new(ArcSwap::from_pointee(ListSet::default())),
        Arc::new(Metrics::default()),
    );
    // The built-in list rules read no behaviour state; empty trackers.
    let st = State::new(16, 60);
    let facts = |m: &kuzet_sip::Message<'_>| {
        let a = handler.a_number(m);
        CallInput {
            a,
            from: a,
            pai: a,
            a_present: a.is_some(),
            b: handler.b_number(m),
            ..CallInput::default()
        }
    };
    let mut g = c.benchmark_group("parse_normalize_lookup_10M_100k");
    g.bench_function("kuzet_miss", |b| {
        b.iter(|| {
            let m = parse(black_box(INVITE), Transport::Datagram).unwrap();
            black_box(lists.score(&facts(&m), &st));
        })
    });
    // A hit: the caller is on the list.
    let hit_msg = String::from_utf8_lossy(INVITE)
        .replace("+77019876543", &format!("+{}", number(4_242_424)))
        .into_bytes();
    g.bench_function("kuzet_hit", |b| {
        b.iter(|| {
            let m = parse(black_box(&hit_msg), Transport::Datagram).unwrap();
            let v = lists.score(&facts(&m), &st);
            assert_eq!(v.decision, Decision::Block);
            black_box(v);
        })
    });
    g.finish();
    drop(lists);

    // Baseline: the obvious design, E.164 strings in a HashSet.
    let mut naive: HashSet<String> = HashSet::with_capacity(EXACT as usize);
    for i in 0..EXACT {
        naive.insert(format!("+{}", number(i)));
    }
    let mut g = c.benchmark_group("parse_normalize_lookup_10M_100k");
    g.bench_function("hashset_string_baseline_miss", |b| {
        b.iter(|| {
            let m = parse(black_box(INVITE), Transport::Datagram).unwrap();
            let a = handler.a_number(&m).map(|n| n.to_string());
            let bn = handler.b_number(&m).map(|n| n.to_string());
            black_box(
                a.is_some_and(|a| naive.contains(&a)) || bn.is_some_and(|b| naive.contains(&b)),
            );
        })
    });
    g.finish();
}

fn bench_handler(c: &mut Criterion) {
    let plan = NumberingPlan::kazakhstan().validated().unwrap();
    let lists = Arc::new(ArcSwap::from_pointee(big_lists(&plan)));
    let cfg = Config::default();
    let handler = Handler::new(
        cfg.dataplane().unwrap(),
        lists,
        Arc::new(Metrics::default()),
    );
    let src = "10.10.0.9:5060".parse().unwrap();
    let mut out = Vec::with_capacity(2048);
    c.bench_function("handler_redirect_invite_10M_lists", |b| {
        b.iter(|| {
            let o = handler.handle(black_box(INVITE), src, None, Instant::now(), &mut out);
            black_box((o, out.len()));
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3));
    targets = bench_parse, bench_lookup, bench_handler
}
criterion_main!(benches);
