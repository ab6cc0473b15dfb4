//! Behaviour rules: scoring one call with 30 rules active while 1M numbers
//! are tracked, beside the list-only verdict; and the memory per tracked
//! number (resident-set growth while 1M numbers are added).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use kuzet_benches::{number, rss_bytes};
use kuzet_rules::ruleset::{CallInput, RuleLists, RuleSet};
use kuzet_rules::state::{CallTime, Tracker};
use kuzet_rules::{
    evaluate, CallFacts, ListBuilder, ListPolicy, ListSet, Number, NumberingPlan, TrunkKind,
};

const TRACKED: u64 = 1_000_000;

/// The example file's 17 rules plus 13 scoped variants: 30 in all.
fn thirty_rules(plan: &NumberingPlan) -> RuleSet {
    let mut text = include_str!("../../deploy/rules/default.toml").to_string();
    for i in 0..13 {
        text += &format!(
            "\n[[rule]]\nid = \"extra_{i}\"\nkind = \"{}\"\nscore = 5\n[rule.scope]\ncaller_prefixes = [\"+770{}\"]\nhours = [\"{}-{}\"]\n",
            if i % 2 == 0 { "cli_mismatch" } else { "protected_caller" },
            i % 10,
            i % 24,
            (i + 8) % 24
        );
    }
    let r = RuleSet::from_toml_str(&text, "bench", plan).unwrap();
    assert_eq!(r.rules.len(), 30);
    r
}

fn bench_rules(c: &mut Criterion) {
    let plan = NumberingPlan::kazakhstan().validated().unwrap();
    let rules = thirty_rules(&plan);
    let build = |text: &str| {
        let mut b = ListBuilder::new(&plan);
        b.add_text("bench", text).unwrap();
        b.finish()
    };
    let mut block_text = String::new();
    for i in 0..100_000 {
        block_text += &format!("+{}\n", number(TRACKED + i));
    }
    let lists = ListSet {
        block: build(&block_text),
        policy: ListPolicy::default(),
        ..ListSet::default()
    };
    let protected = build("+77272595555\n102\n112\n");
    let premium = build("+88216*\n+2392*\n+6760*\n");
    let rl = RuleLists {
        block: Some(&lists.block),
        flag: None,
        allow: Some(&lists.allow),
        protected: Some(&protected),
        premium: Some(&premium),
    };
    let callers = Tracker::new(TRACKED as usize + 1000, 86_400);
    let dest = Tracker::new(10_000, 86_400);
    let input = |i: u64, secs: u32| {
        let a = Number::e164(number(i).to_string().as_bytes());
        CallInput {
            a,
            from: a,
            pai: a,
            a_present: true,
            b: Number::e164(number(i + 7).to_string().as_bytes()),
            trunk: Some(TrunkKind::Mobile),
            time: CallTime {
                secs,
                hour: 12,
                weekday: 2,
            },
        }
    };
    let before = rss_bytes().unwrap_or(0);
    for i in 0..TRACKED {
        black_box(rules.score(&input(i, 10), &rl, &callers, &dest));
    }
    let after = rss_bytes().unwrap_or(0);
    eprintln!(
        "tracked {} numbers: resident set grew {:.1} MiB, {:.0} bytes per tracked number",
        callers.len(),
        (after.saturating_sub(before)) as f64 / (1 << 20) as f64,
        after.saturating_sub(before) as f64 / callers.len().max(1) as f64
    );
    // Inputs prepared up front, so the loop times scoring only.
    let inputs: Vec<CallInput> = (0..4096u64).map(|k| input(k * 241 % TRACKED, 20)).collect();
    let mut g = c.benchmark_group("score_one_call_1M_tracked");
    let mut k = 0usize;
    g.bench_function("rules_30", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            black_box(rules.score(black_box(&inputs[k]), &rl, &callers, &dest))
        })
    });
    g.bench_function("lists_only_baseline", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            let f = CallFacts {
                a_number: inputs[k].a,
                b_number: inputs[k].b,
                trunk_kind: inputs[k].trunk,
            };
            black_box(evaluate(black_box(&f), &lists))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = bench_rules
}
criterion_main!(benches);
