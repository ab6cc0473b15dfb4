//! The hot path stage by stage, each beside the naive way to do it:
//! - normalize four written forms of a number: kuzet's digit scanner vs
//!   `String` filtering and `format!`;
//! - B-number from the Request-URI: kuzet's URI decoder + normalize vs
//!   string splitting;
//! - verdict: the built-in list rules over a 100k blocklist (bloom + sorted `u64`s) vs
//!   three `HashMap<String, String>` lookups per side;
//! - whole redirect answer: kuzet's handler vs a naive redirect server
//!   built from rsip parsing and a `format!`ed 302;
//! - the retransmission digest (is a repeated INVITE the same request?):
//!   kuzet's keyed SipHash over the borrowed fields vs copying them into a
//!   `String` and hashing that.
//!
//! Parsing against rsip and the 10M-number lookup are in `hot_path`.

#![forbid(unsafe_code)]
// criterion_main! writes an undocumented `main`.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use kuzet::config::Config;
use kuzet_benches::{number, INVITE};
use kuzet_dataplane::metrics::Metrics;
use kuzet_dataplane::Handler;
use kuzet_rules::ruleset::CallInput;
use kuzet_rules::state::State;
use kuzet_rules::{ListBuilder, ListSet, NumberingPlan};
use kuzet_sip::{parse, syntax, Transport};

const FORMS: [&str; 4] = [
    "+77019876543",
    "87019876543",
    "8 (701) 987-65-43",
    "7019876543",
];
const LIST: u64 = 100_000;

/// The obvious normalizer: keep digits, then fix up the prefix.
fn naive_normalize(s: &str) -> Option<String> {
    let digits: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
    if s.trim_start().starts_with('+') {
        return Some(format!("+{digits}"));
    }
    match digits.len() {
        11 if digits.starts_with('8') => Some(format!("+7{}", &digits[1..])),
        10 => Some(format!("+7{digits}")),
        _ => None,
    }
}

fn bench_normalize(c: &mut Criterion) {
    let plan = NumberingPlan::kazakhstan().validated().unwrap();
    let mut g = c.benchmark_group("normalize_4_forms");
    g.bench_function("kuzet", |b| {
        b.iter(|| {
            for f in FORMS {
                black_box(plan.normalize(black_box(f.as_bytes())));
            }
        })
    });
    g.bench_function("naive_string_baseline", |b| {
        b.iter(|| {
            for f in FORMS {
                black_box(naive_normalize(black_box(f)));
            }
        })
    });
    g.finish();
}

fn bench_ruri_number(c: &mut Criterion) {
    let plan = NumberingPlan::kazakhstan().validated().unwrap();
    let ruri = "sip:+77015550123@10.20.0.5:5060;user=phone";
    let mut g = c.benchmark_group("b_number_from_request_uri");
    g.bench_function("kuzet", |b| {
        b.iter(|| {
            let u = syntax::parse_uri(black_box(ruri.as_bytes())).unwrap();
            black_box(u.user_number().and_then(|d| plan.normalize(d)));
        })
    });
    g.bench_function("naive_split_baseline", |b| {
        b.iter(|| {
            let s = black_box(ruri);
            let user = s.split_once(':').map(|x| x.1).unwrap_or(s);
            let user = user.split(['@', ';']).next().unwrap_or("");
            black_box(naive_normalize(user));
        })
    });
    g.finish();
}

fn bench_evaluate(c: &mut Criterion) {
    let plan = NumberingPlan::kazakhstan().validated().unwrap();
    let mut b = ListBuilder::new(&plan);
    let mut naive_block: HashMap<String, String> = HashMap::new();
    for i in 0..LIST {
        b.add_line("bench", 1, &format!("+{},reported", number(i)))
            .unwrap();
        naive_block.insert(format!("+{}", number(i)), "reported".into());
    }
    let lists = ListSet::default().with_list(kuzet_rules::ListId::Block, b.finish());
    let st = State::new(16, 60);
    let naive_allow: HashMap<String, String> = HashMap::new();
    let naive_flag: HashMap<String, String> = HashMap::new();
    let a = plan.normalize(b"+77019876543");
    let facts = CallInput {
        a,
        from: a,
        pai: a,
        display: None,
        a_present: true,
        b: plan.normalize(b"+77015550123"),
        ..CallInput::default()
    };
    let (a, bn) = ("+77019876543".to_string(), "+77015550123".to_string());
    let mut g = c.benchmark_group("verdict_100k_list_miss");
    g.bench_function("kuzet_builtin_list_rules", |bch| {
        bch.iter(|| black_box(lists.score(black_box(&facts), &st)))
    });
    g.bench_function("hashmap_string_baseline", |bch| {
        bch.iter(|| {
            let hit = |m: &HashMap<String, String>| {
                m.get(black_box(&a))
                    .or_else(|| m.get(black_box(&bn)))
                    .cloned()
            };
            let v = if hit(&naive_allow).is_some() {
                0
            } else if hit(&naive_block).is_some() {
                2
            } else {
                u8::from(hit(&naive_flag).is_some())
            };
            black_box(v)
        })
    });
    g.finish();
}

/// A naive redirect server's whole answer: parse with rsip, look the
/// caller up in a `HashMap<String, _>`, `format!` the 302.
fn naive_redirect(msg: &[u8], block: &HashMap<String, String>) -> String {
    use rsip::prelude::*;
    let Ok(rsip::SipMessage::Request(req)) = rsip::SipMessage::try_from(msg) else {
        return String::new();
    };
    let from = req
        .from_header()
        .map(|h| h.value().to_string())
        .unwrap_or_default();
    let to = req
        .to_header()
        .map(|h| h.value().to_string())
        .unwrap_or_default();
    let via = req
        .via_header()
        .map(|h| h.value().to_string())
        .unwrap_or_default();
    let call_id = req
        .call_id_header()
        .map(|h| h.value().to_string())
        .unwrap_or_default();
    let cseq = req
        .cseq_header()
        .map(|h| h.value().to_string())
        .unwrap_or_default();
    let user = req
        .uri
        .auth
        .as_ref()
        .map(|a| a.user.clone())
        .unwrap_or_default();
    let blocked = naive_normalize(&user).is_some_and(|n| block.contains_key(&n));
    let status = if blocked {
        "603 Decline"
    } else {
        "302 Moved Temporarily"
    };
    format!(
        "SIP/2.0 {status}\r\nVia: {via}\r\nFrom: {from}\r\nTo: {to};tag=n\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\nContact: <{}>\r\nContent-Length: 0\r\n\r\n",
        req.uri
    )
}

fn bench_redirect(c: &mut Criterion) {
    let plan = NumberingPlan::kazakhstan().validated().unwrap();
    let mut b = ListBuilder::new(&plan);
    let mut naive: HashMap<String, String> = HashMap::new();
    for i in 0..LIST {
        b.add_line("bench", 1, &format!("+{}", number(i))).unwrap();
        naive.insert(format!("+{}", number(i)), String::new());
    }
    let lists = Arc::new(ArcSwap::from_pointee(
        ListSet::default().with_list(kuzet_rules::ListId::Block, b.finish()),
    ));
    let handler = Handler::new(
        Config::default().dataplane().unwrap(),
        lists,
        Arc::new(Metrics::default()),
    );
    let src = "10.10.0.9:5060".parse().unwrap();
    let mut out = Vec::with_capacity(2048);
    assert!(parse(INVITE, Transport::Datagram).is_ok());
    assert!(naive_redirect(INVITE, &naive).starts_with("SIP/2.0 302"));
    let mut g = c.benchmark_group("redirect_answer_100k_list");
    g.bench_function("kuzet_handler", |bch| {
        bch.iter(|| {
            let o = handler.handle(black_box(INVITE), src, None, Instant::now(), &mut out);
            black_box((o, out.len()));
        })
    });
    g.bench_function("rsip_format_baseline", |bch| {
        bch.iter(|| black_box(naive_redirect(black_box(INVITE), &naive)))
    });
    g.finish();
}

fn bench_digest(c: &mut Criterion) {
    use std::hash::{Hash, Hasher};
    let handler = Handler::new(
        Config::default().dataplane().unwrap(),
        Arc::new(ArcSwap::from_pointee(ListSet::default())),
        Arc::new(Metrics::default()),
    );
    let m = parse(INVITE, Transport::Datagram).unwrap();
    let naive = |m: &kuzet_sip::Message<'_>| -> u64 {
        let mut s = String::new();
        s.push_str(&String::from_utf8_lossy(m.request_uri()));
        for h in [
            kuzet_sip::Hdr::From,
            kuzet_sip::Hdr::To,
            kuzet_sip::Hdr::PAssertedIdentity,
            kuzet_sip::Hdr::Privacy,
        ] {
            for v in m.all(h) {
                s.push('\n');
                s.push_str(&String::from_utf8_lossy(v));
            }
        }
        let via = String::from_utf8_lossy(m.header(kuzet_sip::Hdr::Via).unwrap_or_default());
        s.push_str(via.split(';').next().unwrap_or_default());
        let mut h = std::collections::hash_map::DefaultHasher::new();
        s.hash(&mut h);
        h.finish()
    };
    assert_eq!(handler.request_digest(&m), handler.request_digest(&m));
    let mut g = c.benchmark_group("retransmission_digest");
    g.bench_function("kuzet_keyed_siphash", |b| {
        b.iter(|| black_box(handler.request_digest(black_box(&m))))
    });
    g.bench_function("string_copy_baseline", |b| {
        b.iter(|| black_box(naive(black_box(&m))))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2));
    targets = bench_normalize, bench_ruri_number, bench_evaluate, bench_redirect, bench_digest
}
criterion_main!(benches);
