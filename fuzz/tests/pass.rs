//! The suite's fuzz pass: each target over its seed corpus (RFC 4475, the
//! shipped samples, fuzz/corpus, and every regression under
//! fuzz/regressions), then seeded mutations for a few seconds. The inputs
//! are the same on every run; the time box only decides how many of them
//! a slow machine gets through. A failure prints the input that failed.

#![forbid(unsafe_code)]

use std::time::Duration;

/// Mutations per target at most, and the time box.
const MUTATIONS: u64 = 200_000;
const BUDGET: Duration = Duration::from_secs(4);

fn run(name: &str) {
    let t = kuzet_fuzz::target(name).expect("a target");
    match kuzet_fuzz::pass(&t, 0x6b757a6574, MUTATIONS, BUDGET) {
        Ok(s) => {
            assert!(s.seeds > 0, "{name} has no seeds");
            assert!(s.mutations > 0, "{name} ran no mutation");
            eprintln!("{name}: {} seeds, {} mutations", s.seeds, s.mutations);
        }
        Err(f) => panic!("{f}"),
    }
}

#[test]
fn fuzz_pass_sip() {
    run("sip");
}

#[test]
fn fuzz_pass_handler_redirect() {
    run("handler_redirect");
}

#[test]
fn fuzz_pass_handler_proxy() {
    run("handler_proxy");
}

#[test]
fn fuzz_pass_tcp() {
    run("tcp");
}

#[test]
fn fuzz_pass_list() {
    run("list");
}

#[test]
fn fuzz_pass_rules() {
    run("rules");
}

#[test]
fn fuzz_pass_config() {
    run("config");
}

#[test]
fn fuzz_pass_numbers() {
    run("numbers");
}

#[test]
fn fuzz_pass_nbfeed() {
    run("nbfeed");
}

#[test]
fn fuzz_pass_nbalerts() {
    run("nbalerts");
}

#[test]
fn fuzz_pass_nbreport() {
    run("nbreport");
}

#[test]
fn fuzz_pass_delta() {
    run("delta");
}

#[test]
fn every_target_has_a_test_here() {
    let here = include_str!("pass.rs");
    for t in kuzet_fuzz::TARGETS {
        assert!(
            here.contains(&format!("fn fuzz_pass_{}()", t.name)),
            "target {} has no fuzz_pass_ test",
            t.name
        );
    }
}
