//! Rule file parsing and scoring, each kind at its edges, with an injected
//! clock.

use super::*;
use crate::list::ListBuilder;
use crate::state::Outcome;
use crate::state::State;

fn plan() -> NumberingPlan {
    NumberingPlan::kazakhstan().validated().unwrap()
}

fn n(s: &str) -> Option<Number> {
    plan().normalize(s.as_bytes())
}

fn list(text: &str) -> NumberList {
    let p = plan();
    let mut b = ListBuilder::new(&p);
    b.add_text("t", text).unwrap();
    b.finish()
}

fn rules(body: &str) -> RuleSet {
    let text = format!("[thresholds]\nflag = 40\nredirect = 70\nredirect_uri = \"sip:desk@x\"\nblock = 100\ncap = 150\n{body}");
    RuleSet::from_toml_str(&text, "t.toml", &plan(), &ListPolicy::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn call(a: &str, b: &str, secs: u32) -> CallInput {
    CallInput {
        a: n(a),
        from: n(a),
        pai: n(a),
        display: None,
        a_present: true,
        b: n(b),
        trunk: Some(TrunkKind::Mobile),
        time: CallTime {
            secs,
            hour: 12,
            weekday: 2,
        },
    }
}

struct World {
    st: State,
    block: NumberList,
    allow: NumberList,
    protected: NumberList,
    premium: NumberList,
    roamers: NumberList,
}

impl World {
    fn new() -> World {
        World {
            st: State::new(1000, 86_400),
            block: list("+77770000001\n"),
            allow: list("+77270000001,bank\n"),
            protected: list("+77272595555\n102\n"),
            premium: list("+88216*\n+2392*\n"),
            roamers: list("+77051112233\n"),
        }
    }
    fn lists(&self) -> RuleLists<'_> {
        RuleLists::default()
            .with(ListId::Block, &self.block)
            .with(ListId::Allow, &self.allow)
            .with(ListId::Protected, &self.protected)
            .with(ListId::Premium, &self.premium)
            .with(ListId::Roamers, &self.roamers)
    }
    fn score(&self, r: &RuleSet, c: &CallInput) -> Scored {
        r.score(c, &self.lists(), &self.st)
    }
}

/// The error a rule file text gets, as printed.
fn file_error(text: &str) -> String {
    RuleSet::from_toml_str(text, "r.toml", &plan(), &ListPolicy::default())
        .unwrap_err()
        .to_string()
}

fn ids(r: &RuleSet, s: &Scored) -> Vec<String> {
    s.fired()
        .iter()
        .map(|f| r.rules[usize::from(f.rule)].id.to_string())
        .collect()
}

#[test]
fn the_shipped_example_file_is_valid() {
    let text = include_str!("../../../deploy/rules/default.toml");
    let r = RuleSet::from_toml_str(text, "default.toml", &plan(), &ListPolicy::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(r.rules.len() >= 15);
    let kinds: std::collections::HashSet<_> = r
        .rules
        .iter()
        .map(|r| std::mem::discriminant(&r.kind))
        .collect();
    assert_eq!(kinds.len(), 12, "every kind is shown");
}

#[test]
fn errors_name_file_line_col_and_reason() {
    let e = file_error;
    let head = "[thresholds]\nflag = 40\nblock = 100\n";
    assert_eq!(
        e(&format!(
            "{head}[[rule]]\nid = \"x\"\nkind = \"telepathy\"\nscore = 1\n"
        )),
        "r.toml:4:1: rule \"x\": unknown kind \"telepathy\""
    );
    assert_eq!(
        e(&format!(
            "{head}[[rule]]\nid = \"v\"\nkind = \"velocity\"\nscore = 1\nmax = 3\n"
        )),
        "r.toml:4:1: rule \"v\": kind velocity needs window_s"
    );
    assert!(e(&format!(
        "{head}[[rule]]\nid = \"v\"\nkind = \"list\"\nscore = 1\nlist = \"greylist\"\n"
    ))
    .starts_with("r.toml:8:8: unknown variant `greylist`"));
    assert!(e(&format!(
        "{head}[[rule]]\nid = \"v\"\nkind = \"list\"\nscore = 1\nlist = \"blocklist\"\nmaxx = 1\n"
    ))
    .starts_with("r.toml:9:1: unknown field `maxx`"));
    let dup = format!("{head}[[rule]]\nid = \"a\"\nkind = \"cli_mismatch\"\nscore = 1\n[[rule]]\nid = \"a\"\nkind = \"cli_mismatch\"\nscore = 1\n");
    assert_eq!(e(&dup), "r.toml:8:1: rule \"a\": id is used twice");
    let hours = format!("{head}[[rule]]\nid = \"h\"\nkind = \"cli_mismatch\"\nscore = 1\n[rule.scope]\nhours = [\"25-3\"]\n");
    assert!(
        e(&hours).contains("scope hours \"25-3\" must be"),
        "{}",
        e(&hours)
    );
    assert_eq!(
        e("[thresholds]\nflag = 80\nblock = 50\n"),
        "r.toml: [thresholds] must satisfy flag <= redirect <= block"
    );
    let mut four = head.to_string();
    for i in 0..4 {
        four += &format!(
            "[[rule]]\nid = \"v{i}\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 1\nscore = 1\n"
        );
    }
    assert!(e(&four).ends_with("at most 3 velocity rules per file"));
}

#[test]
fn velocity_fires_one_above_max_not_at_it() {
    let r = rules(
        "[[rule]]\nid = \"velocity_1m\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 3\nscore = 50\n",
    );
    let w = World::new();
    for t in 0..3 {
        let s = w.score(
            &r,
            &call("+77011234567", &format!("+7702000000{t}"), 100 + t),
        );
        assert!(s.fired().is_empty(), "call {} of max 3", t + 1);
        assert_eq!(s.decision, Decision::Allow);
    }
    let s = w.score(&r, &call("+77011234567", "+77020000009", 103));
    assert_eq!(s.fired()[0].value, 4);
    assert_eq!(s.fired()[0].threshold, 3);
    assert_eq!((s.score, s.decision), (50, Decision::Flag));
    let mut text = String::new();
    r.explain(&s, &w.lists(), &mut text).unwrap();
    assert_eq!(text, "velocity_1m: 4 calls > 3");
    // Another caller is counted apart; after two windows it is forgotten.
    assert!(w
        .score(&r, &call("+77011234568", "+77020000009", 104))
        .fired()
        .is_empty());
    assert!(w
        .score(&r, &call("+77011234567", "+77020000009", 300))
        .fired()
        .is_empty());
}

#[test]
fn fan_out_counts_distinct_callees() {
    let r =
        rules("[[rule]]\nid = \"f\"\nkind = \"fan_out\"\nwindow_s = 3600\nmax = 2\nscore = 60\n");
    let w = World::new();
    let a = "+77011234567";
    assert!(w.score(&r, &call(a, "+77020000001", 10)).fired().is_empty());
    assert!(
        w.score(&r, &call(a, "+77020000001", 11)).fired().is_empty(),
        "same callee again"
    );
    assert!(
        w.score(&r, &call(a, "+77020000002", 12)).fired().is_empty(),
        "2 distinct = max"
    );
    let s = w.score(&r, &call(a, "+77020000003", 13));
    assert_eq!((s.fired()[0].value, s.fired()[0].threshold), (3, 2));
}

#[test]
fn sequential_fires_at_the_run_length() {
    let r = rules("[[rule]]\nid = \"s\"\nkind = \"sequential\"\nrun = 3\nscore = 100\n");
    let w = World::new();
    let a = "+77011234567";
    assert!(w.score(&r, &call(a, "+77020000100", 1)).fired().is_empty());
    assert!(w.score(&r, &call(a, "+77020000101", 2)).fired().is_empty());
    let s = w.score(&r, &call(a, "+77020000102", 3));
    assert_eq!((s.fired()[0].value, s.decision), (3, Decision::Block));
    assert!(
        w.score(&r, &call(a, "+77020000500", 4)).fired().is_empty(),
        "a jump breaks the run"
    );
}

#[test]
fn wangiri_and_short_calls_use_outcome_ratios() {
    let r = rules(
        "[[rule]]\nid = \"w\"\nkind = \"wangiri\"\nmin_calls = 4\nratio = 0.75\nscore = 100\n\
         [[rule]]\nid = \"sc\"\nkind = \"short_calls\"\nmin_calls = 2\nratio = 0.5\nscore = 40\n",
    );
    let w = World::new();
    let a = "+88216000001";
    let an = n(a).unwrap().raw();
    let p = r.outcomes;
    // Outcomes are recorded only for numbers seen calling.
    for x in ["+88216000001", "+77011112222", "+77011113333"] {
        w.st.callers.with(n(x).unwrap().raw(), 1, |_| ());
    }
    for t in 0..3 {
        w.st.callers
            .outcome(an, 10 + t, Outcome::Cancelled { ring_ms: 1500 }, &p);
    }
    assert!(
        w.score(&r, &call(a, "+77020000001", 20)).fired().is_empty(),
        "3 rings < min_calls 4"
    );
    w.st.callers
        .outcome(an, 21, Outcome::Cancelled { ring_ms: 20_000 }, &p);
    // 3 short of 4 = 75.0%: at the ratio, fires.
    let s = w.score(&r, &call(a, "+77020000002", 22));
    assert_eq!(ids(&r, &s), ["w"]);
    assert_eq!((s.fired()[0].value, s.fired()[0].threshold), (750, 750));
    w.st.callers
        .outcome(an, 23, Outcome::Cancelled { ring_ms: 20_000 }, &p);
    // 3 of 5 = 60%: below.
    assert!(w.score(&r, &call(a, "+77020000003", 24)).fired().is_empty());
    let b = "+77011112222";
    let bn = n(b).unwrap().raw();
    w.st.callers
        .outcome(bn, 30, Outcome::Answered { talk_ms: 5_000 }, &p);
    w.st.callers
        .outcome(bn, 31, Outcome::Answered { talk_ms: 50_000 }, &p);
    let s = w.score(&r, &call(b, "+77020000001", 32));
    assert_eq!(ids(&r, &s), ["sc"]);
    let mut text = String::new();
    r.explain(&s, &w.lists(), &mut text).unwrap();
    assert_eq!(text, "sc: 50.0% >= 50.0%");
    // One more long call: 1 short of 3 = 33.3%, below the ratio.
    w.st.callers
        .outcome(bn, 33, Outcome::Answered { talk_ms: 90_000 }, &p);
    assert!(w.score(&r, &call(b, "+77020000001", 34)).fired().is_empty());
    // One answered call only: below min_calls, whatever the ratio.
    let c = "+77011113333";
    w.st.callers.outcome(
        n(c).unwrap().raw(),
        35,
        Outcome::Answered { talk_ms: 1_000 },
        &p,
    );
    assert!(w.score(&r, &call(c, "+77020000001", 36)).fired().is_empty());
}

#[test]
fn concurrent_calls_above_max() {
    let r = rules("[[rule]]\nid = \"c\"\nkind = \"concurrent\"\nmax = 2\nscore = 60\n");
    let w = World::new();
    let a = "+77011234567";
    let an = n(a).unwrap().raw();
    let m = crate::state::MAX_CALL_S;
    w.st.callers.with(an, 1, |_| ());
    w.st.callers.concurrent(an, 1, 1, m);
    w.st.callers.concurrent(an, 1, 1, m);
    assert!(w.score(&r, &call(a, "+77020000001", 2)).fired().is_empty());
    w.st.callers.concurrent(an, 3, 1, m);
    assert_eq!(w.score(&r, &call(a, "+77020000001", 4)).fired()[0].value, 3);
    w.st.callers.concurrent(an, 5, -1, m);
    assert!(w.score(&r, &call(a, "+77020000001", 6)).fired().is_empty());
    // Three stale starts (no end) after the longest call: no longer busy.
    w.st.callers.concurrent(an, 7, 1, m);
    let later = 7 + m;
    assert!(w
        .score(&r, &call(a, "+77020000001", later))
        .fired()
        .is_empty());
}

#[test]
fn premium_destinations_and_their_velocity() {
    let r = rules(
        "[[rule]]\nid = \"p\"\nkind = \"list\"\nlist = \"premium\"\nscore = 10\n\
         [[rule]]\nid = \"pv\"\nkind = \"destination_velocity\"\nwindow_s = 600\nmax = 2\nscore = 60\n",
    );
    let w = World::new();
    assert!(w
        .score(&r, &call("+77011234567", "+77020000001", 1))
        .fired()
        .is_empty());
    // Different callers, different numbers, one destination (+88216).
    assert_eq!(
        ids(&r, &w.score(&r, &call("+77011234561", "+882160000001", 2))),
        ["p"]
    );
    assert_eq!(
        ids(&r, &w.score(&r, &call("+77011234562", "+882160000002", 3))),
        ["p"]
    );
    let s = w.score(&r, &call("+77011234563", "+882160000003", 4));
    assert_eq!(ids(&r, &s), ["p", "pv"]);
    assert_eq!((s.score, s.decision), (70, Decision::Redirect));
    // Another destination has its own count.
    assert_eq!(
        ids(&r, &w.score(&r, &call("+77011234563", "+23920000001", 5))),
        ["p"]
    );
}

const SPOOFING: &str =
    "[[rule]]\nid = \"doi\"\nkind = \"domestic_on_international\"\nscore = 100\n\
     [[rule]]\nid = \"prot\"\nkind = \"protected_caller\"\nscore = 100\n\
     [[rule]]\nid = \"mm\"\nkind = \"cli_mismatch\"\nscore = 30\n\
     [[rule]]\nid = \"inv\"\nkind = \"invalid_caller\"\nscore = 50\n";

fn explain(r: &RuleSet, w: &World, s: &Scored) -> String {
    let mut t = String::new();
    r.explain(s, &w.lists(), &mut t).unwrap();
    t
}

#[test]
fn domestic_caller_ids_on_the_international_trunk_are_spoofs_but_russia_is_not() {
    let r = rules(SPOOFING);
    let w = World::new();
    let mut c = call("+77011234567", "+77020000001", 1);
    assert!(
        w.score(&r, &c).fired().is_empty(),
        "domestic caller on the mobile trunk"
    );
    c.trunk = Some(TrunkKind::International);
    let s = w.score(&r, &c);
    assert_eq!(ids(&r, &s), ["doi"]);
    assert_eq!(
        explain(&r, &w, &s),
        "doi: PAI is domestic on an international trunk"
    );
    // Russia shares +7: +7 9xx, 4xx are foreign, valid, on either trunk.
    for ru in ["+79161234567", "+74951234567"] {
        for trunk in [TrunkKind::International, TrunkKind::Mobile] {
            let mut c = call(ru, "+77020000001", 1);
            c.trunk = Some(trunk);
            assert!(w.score(&r, &c).fired().is_empty(), "{ru} on {trunk:?}");
        }
    }
    // A Kazakhstani number in From with a foreign PAI: still a spoof.
    let mut c = call("+442079460000", "+77020000001", 1);
    c.from = n("+77011234567");
    c.trunk = Some(TrunkKind::International);
    let s = w.score(&r, &c);
    assert!(ids(&r, &s).contains(&"doi".to_string()));
    assert!(
        explain(&r, &w, &s).starts_with("doi: From is domestic"),
        "{}",
        explain(&r, &w, &s)
    );
}

#[test]
fn known_outbound_roamers_calling_home_are_allowed_and_explained() {
    let r = rules(SPOOFING);
    let w = World::new();
    let mut c = call("+77051112233", "+77020000001", 1);
    c.trunk = Some(TrunkKind::International);
    let s = w.score(&r, &c);
    assert_eq!((s.decision, s.score), (Decision::Allow, 0));
    assert_eq!(
        explain(&r, &w, &s),
        "doi: PAI is a known outbound roamer, not counted"
    );
    // A roamer's number with a second, non-roaming domestic identity is not
    // let off.
    c.display = n("+77011234567");
    assert_eq!(w.score(&r, &c).decision, Decision::Block);
}

#[test]
fn protected_numbers_are_caught_in_every_identity() {
    let r = rules(SPOOFING);
    let w = World::new();
    // In PAI (the A-number).
    let s = w.score(&r, &call("+77272595555", "+77020000001", 1));
    assert_eq!(ids(&r, &s), ["prot"]);
    assert_eq!(
        ids(&r, &w.score(&r, &call("102", "+77020000001", 1))),
        ["prot"]
    );
    // Only in From, with a clean PAI.
    let mut c = call("+77011234567", "+77020000001", 1);
    c.from = n("+77272595555");
    let s = w.score(&r, &c);
    assert!(ids(&r, &s).contains(&"prot".to_string()));
    assert!(explain(&r, &w, &s).contains("prot: From is a protected number"));
    // Only in a display name.
    let mut c = call("+77011234567", "+77020000001", 1);
    c.display = n("+7 727 259 5555");
    let s = w.score(&r, &c);
    assert_eq!(ids(&r, &s), ["prot"]);
    assert!(explain(&r, &w, &s).contains("display name is a protected number"));
}

#[test]
fn the_allowlist_does_not_hide_a_spoofed_trusted_number() {
    let r = rules(&format!(
        "{SPOOFING}[[rule]]\nid = \"v\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 0\nscore = 100\n"
    ));
    let w = World::new();
    // The bank's allowlisted number at home: exempt from behaviour rules.
    let c = call("+77270000001", "+77020000001", 1);
    let s = w.score(&r, &c);
    assert_eq!((s.decision, s.allowlisted), (Decision::Allow, true));
    assert_eq!(ids(&r, &s), ["allowlist"]);
    // The same number from abroad: allowlisted, and still a spoof.
    let mut c = c;
    c.trunk = Some(TrunkKind::International);
    let s = w.score(&r, &c);
    assert!(s.allowlisted);
    assert_eq!(ids(&r, &s), ["allowlist", "doi"]);
    assert_eq!(s.decision, Decision::Block);
}

#[test]
fn cli_mismatch_adds_to_other_evidence_and_invalid_numbers_are_facts_of_the_plan() {
    let r = rules(SPOOFING);
    let w = World::new();
    let mut c = call("+77011234567", "+77020000001", 1);
    c.pai = n("+77011234568");
    let s = w.score(&r, &c);
    assert_eq!(ids(&r, &s), ["mm"]);
    assert_eq!(
        (s.score, s.decision),
        (30, Decision::Allow),
        "alone, below flag"
    );
    c.pai = None;
    assert!(
        w.score(&r, &c).fired().is_empty(),
        "one of the two missing is no mismatch"
    );
    let mut c = call("+77011234567", "+77020000001", 1);
    c.a = None;
    let s = w.score(&r, &c);
    assert_eq!(ids(&r, &s), ["inv"], "present but not a number");
    assert_eq!(
        explain(&r, &w, &s),
        "inv: caller number claimed but not a number"
    );
    // Unallocated, one digit short, two digits long.
    for (bad, why) in [
        ("+77991234567", "unallocated"),
        ("+7701123456", "wrong length"),
        ("+770112345678", "wrong length"),
    ] {
        let s = w.score(&r, &call(bad, "+77020000001", 1));
        assert_eq!(ids(&r, &s), ["inv"], "{bad}");
        assert_eq!(
            explain(&r, &w, &s),
            format!("inv: caller number invalid ({why})")
        );
    }
    for good in ["+442079460000", "+79161234567", "+77272500000"] {
        assert!(
            w.score(&r, &call(good, "+77020000001", 1))
                .fired()
                .is_empty(),
            "{good}"
        );
    }
}

#[test]
fn old_range_keys_point_at_the_numbering_plan() {
    let e = file_error("[thresholds]\nflag = 40\nblock = 100\n[[rule]]\nid = \"d\"\nkind = \"domestic_on_international\"\nranges = [\"+77\"]\nscore = 1\n");
    assert!(
        e.contains("ranges is no longer a rule key: the numbering plan"),
        "{e}"
    );
}

/// Regression: all escalating rules of a caller shared one counter (the
/// rule's bits fell out of the tracker's key), so firings of different
/// rules added up and a caller was blocked before any one rule reached
/// its `after`. Two rules, each firing twice with `after = 3`: neither
/// escalates; a third firing of one does, and only that one.
#[test]
fn escalation_counts_each_rule_apart() {
    let r = rules(
        "[[rule]]\nid = \"velocity_1m\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 1\nscore = 10\nescalate = { after = 3, within_s = 600 }\n\
         [[rule]]\nid = \"fan_out\"\nkind = \"fan_out\"\nwindow_s = 3600\nmax = 1\nscore = 10\nescalate = { after = 3, within_s = 600 }\n",
    );
    let w = World::new();
    let a = "+77011234567";
    // The first call fires nothing; calls 2 and 3 fire both rules.
    for t in 0..3u32 {
        let s = w.score(&r, &call(a, &format!("+7702000001{t}"), 10 + t));
        assert!(
            s.fired().iter().all(|f| f.note != Note::Escalated),
            "call {t}: {}",
            explain(&r, &w, &s)
        );
        assert_ne!(s.decision, Decision::Block, "call {t}");
    }
    // The fourth: each rule's third firing escalates it.
    let s = w.score(&r, &call(a, "+77020000019", 13));
    assert_eq!(
        s.fired()
            .iter()
            .filter(|f| f.note == Note::Escalated)
            .count(),
        2
    );
    assert_eq!(s.decision, Decision::Block);
    for rule in 0..40 {
        let tag = super::score::rule_tag(&format!("rule_{rule}"));
        for a in [1u64, 77_011_234_567, 77_011_234_568] {
            let k = super::score::escalation_key(a, tag);
            assert_eq!(k & !(((1 << 50) - 1) | (0x1f << 56) | (1 << 63)), 0);
        }
    }
    let key = |id| {
        crate::state::state_key(super::score::escalation_key(
            77_011_234_567,
            super::score::rule_tag(id),
        ))
    };
    assert_ne!(key("velocity_1m"), key("fan_out"));
}

#[test]
fn a_rule_that_keeps_firing_escalates_to_a_block() {
    let r = rules(
        "[[rule]]\nid = \"velocity_1m\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 2\nscore = 50\nescalate = { after = 3, within_s = 600 }\n",
    );
    let w = World::new();
    let a = "+77011234567";
    let mut decisions = Vec::new();
    for t in 0..7u32 {
        let s = w.score(&r, &call(a, &format!("+7702000001{t}"), 10 + t));
        decisions.push(s.decision);
        if t == 5 {
            assert_eq!(
                explain(&r, &w, &s),
                "velocity_1m: 6 calls > 2, escalated: fired 3+ times in 600 s"
            );
        }
    }
    use Decision::*;
    // Two allowed, then flagged twice, then the third firing blocks.
    assert_eq!(decisions, [Allow, Allow, Flag, Flag, Block, Block, Block]);
    // Another caller starts from nothing.
    let s = w.score(&r, &call("+77011234568", "+77020000001", 20));
    assert_eq!(s.decision, Allow);
    assert!(file_error("[thresholds]\nflag = 40\nblock = 100\n[[rule]]\nid = \"v\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 2\nscore = 5\nescalate = { after = 0, within_s = 60 }\n").contains("escalate needs after"));
}

#[test]
fn fan_out_spares_a_number_its_callees_call_back() {
    let r = rules(
        "[[rule]]\nid = \"fan\"\nkind = \"fan_out\"\nwindow_s = 3600\nmax = 10\nmax_called_back = 0.1\nscore = 60\n",
    );
    let w = World::new();
    let (business, simbox) = ("+77272500001", "+77011110000");
    let mut t = 100;
    let mut last = (Scored::ALLOW, Scored::ALLOW);
    for k in 0..15u64 {
        let callee = format!("+770200{:05}", k);
        last.0 = w.score(&r, &call(business, &callee, t));
        last.1 = w.score(&r, &call(simbox, &format!("+770300{:05}", k), t));
        // Every third of the business's customers calls it back.
        if k % 3 == 0 {
            w.score(&r, &call(&callee, business, t + 1));
        }
        t += 2;
    }
    assert!(last.0.fired().is_empty(), "the business is called back");
    assert_eq!(ids(&r, &last.1), ["fan"]);
    assert_eq!(
        explain(&r, &w, &last.1),
        "fan: 15 numbers > 10, 0.0% called back"
    );
}

#[test]
fn thresholds_cap_allowlist_and_shadow() {
    let r = rules(
        "[[rule]]\nid = \"bl\"\nkind = \"list\"\nlist = \"blocklist\"\nscore = 100\n\
         [[rule]]\nid = \"mm\"\nkind = \"cli_mismatch\"\nscore = 39\n\
         [[rule]]\nid = \"mm2\"\nkind = \"cli_mismatch\"\nscore = 1\n\
         [[rule]]\nid = \"sh\"\nkind = \"cli_mismatch\"\nscore = 100\nmode = \"shadow\"\n",
    );
    let w = World::new();
    let mut c = call("+77770000001", "+77020000001", 1);
    c.pai = n("+77011234568");
    let s = w.score(&r, &c);
    assert_eq!(s.score, 140, "100 + 39 + 1, shadow not counted");
    assert_eq!(s.decision, Decision::Block);
    assert_eq!(s.shadow_decision, Decision::Block);
    let mut c = call("+77011234567", "+77020000001", 1);
    c.pai = n("+77011234568");
    let s = w.score(&r, &c);
    assert_eq!(
        (s.score, s.decision),
        (40, Decision::Flag),
        "exactly at flag"
    );
    assert_eq!(
        s.shadow_decision,
        Decision::Block,
        "the shadow rule would have blocked"
    );
    let mut text = String::new();
    r.explain(&s, &w.lists(), &mut text).unwrap();
    assert_eq!(
        text,
        "mm: From and PAI differ; mm2: From and PAI differ; sh: From and PAI differ (shadow)"
    );
    // Cap: 150.
    let many = rules(
        "[[rule]]\nid = \"a\"\nkind = \"list\"\nlist = \"blocklist\"\nscore = 100\n\
         [[rule]]\nid = \"b\"\nkind = \"list\"\nlist = \"blocklist\"\nscore = 100\n",
    );
    assert_eq!(
        w.score(&many, &call("+77770000001", "+77020000001", 1))
            .score,
        150
    );
    // The allowlist exempts from the lists (the callee is blocklisted),
    // and says so.
    let mut c = call("+77270000001", "+77770000001", 1);
    let s = w.score(&r, &c);
    assert!(s.allowlisted && s.decision == Decision::Allow);
    assert_eq!(ids(&r, &s), ["allowlist"]);
    let mut text = String::new();
    r.explain(&s, &w.lists(), &mut text).unwrap();
    assert_eq!(text, "allowlist: caller listed (bank)");
    // But not from the caller-ID rules: a mismatch still counts.
    c.from = n("+77011234568");
    let s = w.score(&r, &c);
    assert_eq!(ids(&r, &s), ["allowlist", "mm", "mm2", "sh"]);
    assert_eq!(s.decision, Decision::Flag);
}

#[test]
fn one_below_flag_is_allowed() {
    let r = rules("[[rule]]\nid = \"mm\"\nkind = \"cli_mismatch\"\nscore = 39\n");
    let w = World::new();
    let mut c = call("+77011234567", "+77020000001", 1);
    c.pai = n("+77011234568");
    let s = w.score(&r, &c);
    assert_eq!((s.score, s.decision), (39, Decision::Allow));
}

#[test]
fn scopes_limit_trunks_prefixes_hours_and_days() {
    let r = rules(
        "[[rule]]\nid = \"mm\"\nkind = \"cli_mismatch\"\nscore = 40\n[rule.scope]\n\
         trunks = [\"international\"]\ncaller_prefixes = [\"+7701\"]\nhours = [\"22-06\"]\nweekdays = [\"sat\", \"sun\"]\n",
    );
    let w = World::new();
    let mut c = call("+77011234567", "+77020000001", 1);
    c.pai = n("+77011234568");
    c.trunk = Some(TrunkKind::International);
    c.time.hour = 23;
    c.time.weekday = 5;
    assert_eq!(ids(&r, &w.score(&r, &c)), ["mm"]);
    c.time.hour = 5;
    assert_eq!(
        ids(&r, &w.score(&r, &c)),
        ["mm"],
        "the hour range wraps midnight"
    );
    for change in 0..4 {
        let mut d = c;
        match change {
            0 => d.trunk = Some(TrunkKind::Mobile),
            1 => d.time.hour = 6,
            2 => d.time.weekday = 0,
            _ => {
                d.a = n("+77771234567");
            }
        }
        assert!(w.score(&r, &d).fired().is_empty(), "change {change}");
    }
}

fn with_flag(w: &World) -> (NumberList, RuleLists<'_>) {
    let flag = list("+77009990001,watch\n+7700998*\n");
    let mut l = w.lists();
    l.0[ListId::Flag] = None;
    (flag, l)
}

fn builtin() -> RuleSet {
    RuleSet::builtin(&ListPolicy::default(), &plan())
}

#[test]
fn without_a_rule_file_the_lists_decide_as_the_config_says() {
    let w = World::new();
    let (flag, mut l) = with_flag(&w);
    l.0[ListId::Flag] = Some(&flag);
    let r = builtin();
    assert!(r.is_builtin());
    let score = |c: &CallInput| r.score(c, &l, &w.st);
    let explain = |s: &Scored| {
        let mut t = String::new();
        r.explain(s, &l, &mut t).unwrap();
        t
    };
    // A blocklisted caller: blocked with the policy's score, side named.
    let s = score(&call("+77770000001", "+77020000001", 1));
    assert_eq!((s.decision, s.score), (Decision::Block, 100));
    assert_eq!(s.fired()[0].who, Some(Who::Caller));
    assert_eq!(explain(&s), "blocklist: caller listed");
    // A blocklisted callee.
    let s = score(&call("+77020000001", "+77770000001", 1));
    assert_eq!(
        (s.decision, s.fired()[0].who),
        (Decision::Block, Some(Who::Callee))
    );
    // Flaglisted, exactly and by range: flagged with the policy's score.
    let s = score(&call("+77009990001", "+77020000001", 1));
    assert_eq!((s.decision, s.score), (Decision::Flag, 50));
    assert_eq!(explain(&s), "flaglist: caller listed (watch)");
    let s = score(&call("+77009981234", "+77020000001", 1));
    assert_eq!(explain(&s), "flaglist: caller in a listed 7-digit range");
    // Both lists: the block wins.
    let s = score(&call("+77009990001", "+77770000001", 1));
    assert_eq!(s.decision, Decision::Block);
    // The allowlist overrides both.
    let s = score(&call("+77270000001", "+77770000001", 1));
    assert_eq!((s.decision, s.allowlisted), (Decision::Allow, true));
    // A number on no list, or no number at all, is allowed.
    assert_eq!(
        score(&call("+77020000002", "+77020000001", 1)).decision,
        Decision::Allow
    );
    let mut c = call("alice", "bob", 1);
    c.a_present = false;
    assert!(score(&c).fired().is_empty());
}

#[test]
fn list_sides_follow_the_policy() {
    let w = World::new();
    let caller_only = ListPolicy {
        sides: Sides::from_name("caller").unwrap(),
        ..ListPolicy::default()
    };
    let r = RuleSet::builtin(&caller_only, &plan());
    let s = r.score(&call("+77020000001", "+77770000001", 1), &w.lists(), &w.st);
    assert_eq!(s.decision, Decision::Allow, "the callee is not checked");
    // A rule file's list rule may say otherwise, on purpose.
    let text = "[thresholds]\nflag = 40\nblock = 100\n[[rule]]\nid = \"bl_callee\"\nkind = \"list\"\nlist = \"blocklist\"\nside = \"callee\"\nscore = 100\n";
    let r = RuleSet::from_toml_str(text, "t.toml", &plan(), &caller_only).unwrap();
    let s = r.score(&call("+77020000001", "+77770000001", 1), &w.lists(), &w.st);
    assert_eq!(s.decision, Decision::Block);
}

#[test]
fn a_rule_file_without_list_rules_keeps_the_lists_blocking() {
    // Regression: enabling a rule file with no `kind = "list"` rule used to
    // stop list blocking silently.
    let w = World::new();
    let (flag, mut l) = with_flag(&w);
    l.0[ListId::Flag] = Some(&flag);
    let r = rules(
        "[[rule]]\nid = \"velocity_1m\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 3\nscore = 50\n",
    );
    assert!(!r.is_builtin() && r.overrides.is_empty());
    let s = r.score(&call("+77770000001", "+77020000001", 1), &l, &w.st);
    assert_eq!((s.decision, s.score), (Decision::Block, 100));
    let s = r.score(&call("+77009990001", "+77020000001", 2), &l, &w.st);
    assert_eq!((s.decision, s.score), (Decision::Flag, 50));
}

#[test]
fn a_rule_file_whose_thresholds_would_undercut_a_list_is_refused() {
    let e = file_error;
    let msg = e("[thresholds]\nflag = 40\nblock = 150\n");
    assert!(
        msg.starts_with("r.toml: the blocklist scores 100 (config [verdict]), so under these [thresholds] a blocklisted number would not be blocked"),
        "{msg}"
    );
    let msg = e("[thresholds]\nflag = 60\nblock = 100\n");
    assert!(
        msg.contains("a flaglisted number would be allowed unmarked"),
        "{msg}"
    );
    let msg = e("[thresholds]\nflag = 10\nblock = 50\n");
    assert!(
        msg.contains("a flaglisted number would be blocked"),
        "{msg}"
    );
    // The National Bank's feed scores as the blocklist does, and is
    // guarded the same way: overriding the blocklist alone leaves it
    // undercut.
    let bl = "[[rule]]\nid = \"blocklist\"\nkind = \"list\"\nlist = \"blocklist\"\nscore = 150\n";
    let msg = e(&format!("[thresholds]\nflag = 40\nblock = 150\n{bl}"));
    assert!(
        msg.contains("the nb_feed scores 100")
            && msg.contains("a number on the National Bank's feed would not be blocked"),
        "{msg}"
    );
    // Overriding the lists on purpose is accepted, and recorded.
    let r = RuleSet::from_toml_str(
        &format!("[thresholds]\nflag = 40\nblock = 150\n{bl}[[rule]]\nid = \"nb\"\nkind = \"list\"\nlist = \"nb_feed\"\nscore = 150\n"),
        "r.toml",
        &plan(),
        &ListPolicy::default(),
    )
    .unwrap();
    assert_eq!(
        r.overrides,
        [
            Override {
                list: ListId::Block,
                builtin_score: 100,
                by: "blocklist".into(),
                score: 150
            },
            Override {
                list: ListId::NbFeed,
                builtin_score: 100,
                by: "nb".into(),
                score: 150
            }
        ]
    );
    assert_eq!(
        r.rules
            .iter()
            .filter(|r| r.id.as_ref() == "blocklist")
            .count(),
        1,
        "the built-in blocklist rule is replaced, not doubled"
    );
}

#[test]
fn built_in_rule_ids_are_reserved_and_the_allowlist_has_no_score() {
    let e = file_error;
    let head = "[thresholds]\nflag = 40\nblock = 100\n";
    assert!(e(&format!(
        "{head}[[rule]]\nid = \"blocklist\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 3\nscore = 1\n"
    ))
    .starts_with("r.toml:4:1: rule \"blocklist\": id \"blocklist\" belongs to the built-in blocklist rule"));
    assert!(e(&format!(
        "{head}[[rule]]\nid = \"al\"\nkind = \"list\"\nlist = \"allowlist\"\nscore = 1\n"
    ))
    .contains("the allowlist exempts numbers"));
    assert!(e(&format!(
        "{head}[[rule]]\nid = \"bl\"\nkind = \"list\"\nlist = \"blocklist\"\nside = \"up\"\nscore = 1\n"
    ))
    .contains("side \"up\" must be caller, callee or both"));
}

#[test]
fn a_packed_verdict_explains_itself_the_same_way() {
    let r = rules(SPOOFING);
    let w = World::new();
    let mut c = call("+77011234567", "+77020000001", 1);
    c.display = n("+77272595555");
    c.trunk = Some(TrunkKind::International);
    let s = w.score(&r, &c);
    assert!(s.fired().len() >= 2);
    let mut words = [0u64; Scored::PACKED_WORDS];
    s.pack(&mut words);
    let back = Scored::unpack(&words);
    assert_eq!(
        (
            back.decision,
            back.score,
            back.shadow_decision,
            back.allowlisted
        ),
        (s.decision, s.score, s.shadow_decision, s.allowlisted)
    );
    assert_eq!(back.fired(), s.fired());
    assert_eq!(explain(&r, &w, &back), explain(&r, &w, &s));
}

/// Regression: `redirect_uri` was not validated, so a CR/LF in it
/// injected SIP headers into every redirect. It is refused with the file,
/// line and column.
#[test]
fn a_redirect_uri_with_cr_lf_is_refused_with_file_and_line() {
    let e = file_error(
        "[thresholds]\nflag = 40\nredirect = 60\nblock = 100\n\
         redirect_uri = \"sip:desk@antifraud.example\\r\\nX-Injected: 1\"\n",
    );
    assert!(e.starts_with("r.toml:5:"), "{e}");
    assert!(e.contains("Contact header"), "{e}");
    for bad in ["http://x", "sip:a b@x", "sip:a>@x", "sip:\\\"x"] {
        let e = file_error(&format!(
            "[thresholds]\nflag = 40\nredirect = 60\nblock = 100\nredirect_uri = {bad:?}\n"
        ));
        assert!(e.contains("redirect_uri"), "{bad}: {e}");
    }
    RuleSet::from_toml_str(
        "[thresholds]\nflag = 40\nredirect = 60\nblock = 100\nredirect_uri = \"sip:desk@antifraud.example;user=phone\"\n",
        "r.toml",
        &plan(),
        &ListPolicy::default(),
    )
    .unwrap();
}

/// A realistic Unix time (2026-11) 200 seconds before an hour begins.
const BEFORE_HOUR: u32 = 1_796_000_017 - 1_796_000_017 % 3600 + 3600 - 200;

/// What fired, as comparable values: rule id, value, threshold, note.
fn fired(r: &RuleSet, s: &Scored) -> Vec<(String, u32, u32, Note)> {
    s.fired()
        .iter()
        .map(|f| {
            (
                r.rules[usize::from(f.rule)].id.to_string(),
                f.value,
                f.threshold,
                f.note,
            )
        })
        .collect()
}

/// Each node exports what it counted since its last export and merges
/// the other's.
fn exchange(r: &RuleSet, x: &World, y: &World, now: u32) {
    let w = r.windows();
    let (dx, dy) = (x.st.export(now, &w), y.st.export(now, &w));
    x.st.merge(&dy, &w).unwrap();
    y.st.merge(&dx, &w).unwrap();
}

/// The calls of the merge tests: three callers, interleaved, with runs of
/// three calls on one node and then the other, a premium callee now and
/// then, 1-11 seconds apart from 200 s before an hour (so over minute
/// boundaries and an hour boundary).
fn traffic() -> impl Iterator<Item = (usize, CallInput)> {
    let callers = ["+77011234561", "+77011234562", "+77011234563"];
    let mut t = BEFORE_HOUR;
    (0..240usize).map(move |i| {
        t += [1, 2, 3, 7, 11][i % 5];
        let b = if i % 7 == 0 {
            format!("+8821600000{}", i % 4)
        } else {
            format!("+770200{:05}", (i * 13) % 45)
        };
        ((i / 3) % 2, call(callers[i % 3], &b, t))
    })
}

/// Two nodes, each fed half the calls of the same callers, exchange their
/// deltas after every call: every call is scored exactly as one node fed
/// all of it scores it (two velocity windows, fan-out, the premium
/// destination's velocity, escalation), over minute and hour boundaries.
/// Without the exchange they would not be.
#[test]
fn two_nodes_fed_halves_score_like_one_fed_everything() {
    let r = rules(
        "[[rule]]\nid = \"v1m\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 3\nscore = 40\nescalate = { after = 3, within_s = 600 }\n\
         [[rule]]\nid = \"v1h\"\nkind = \"velocity\"\nwindow_s = 3600\nmax = 60\nscore = 40\n\
         [[rule]]\nid = \"fan\"\nkind = \"fan_out\"\nwindow_s = 3600\nmax = 12\nscore = 40\nescalate = { after = 5, within_s = 600 }\n\
         [[rule]]\nid = \"pv\"\nkind = \"destination_velocity\"\nwindow_s = 600\nmax = 4\nscore = 70\n",
    );
    let (x, y, all) = (World::new(), World::new(), World::new());
    let (lone_x, lone_y) = (World::new(), World::new());
    let (mut kinds, mut differs) = (std::collections::BTreeSet::new(), 0);
    for (i, (node, c)) in traffic().enumerate() {
        let (n, lone) = if node == 0 {
            (&x, &lone_x)
        } else {
            (&y, &lone_y)
        };
        let want = all.score(&r, &c);
        let got = n.score(&r, &c);
        assert_eq!(
            (fired(&r, &got), got.decision),
            (fired(&r, &want), want.decision),
            "call {i} at {}",
            c.time.secs
        );
        if fired(&r, &lone.score(&r, &c)) != fired(&r, &want) {
            differs += 1;
        }
        kinds.extend(
            fired(&r, &want)
                .into_iter()
                .map(|f| (f.0, f.3 == Note::Escalated)),
        );
        exchange(&r, &x, &y, c.time.secs);
    }
    // Every rule fired, escalation included, and alone the nodes would
    // have judged many calls otherwise.
    let ids: std::collections::BTreeSet<_> = kinds.iter().map(|k| k.0.as_str()).collect();
    assert_eq!(ids, ["fan", "pv", "v1h", "v1m"].into_iter().collect());
    assert!(kinds.contains(&("v1m".to_string(), true)));
    assert!(kinds.contains(&("fan".to_string(), true)));
    assert!(differs > 50, "{differs}");
}

/// With deltas exchanged only every fifth call, a node sees each
/// caller's velocity short by at most that caller's calls the other node
/// took since the last exchange, and never more than one node fed
/// everything: the push interval's error, on top of the window-edge
/// error both share.
#[test]
fn lagging_exchanges_undercount_by_at_most_the_calls_not_yet_exchanged() {
    let r = rules(
        "[[rule]]\nid = \"v1m\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 0\nscore = 1\n\
         [[rule]]\nid = \"v1h\"\nkind = \"velocity\"\nwindow_s = 3600\nmax = 0\nscore = 1\n",
    );
    let (x, y, all) = (World::new(), World::new(), World::new());
    // Calls per caller each node took since the last exchange.
    let mut unsent = [[0u32; 3]; 2];
    let mut short = 0;
    for (i, (node, c)) in traffic().enumerate() {
        let caller = i % 3;
        let n = if node == 0 { &x } else { &y };
        let (got, want) = (n.score(&r, &c), all.score(&r, &c));
        let (got, want) = (fired(&r, &got), fired(&r, &want));
        assert_eq!(got.len(), 2, "max 0: both always fire");
        for (g, w) in got.iter().zip(&want) {
            let missing = unsent[1 - node][caller];
            assert!(
                g.1 <= w.1 && w.1 - g.1 <= missing,
                "call {i}, {}: {} of {}, {missing} not yet exchanged",
                g.0,
                g.1,
                w.1
            );
            short += w.1 - g.1;
        }
        unsent[node][caller] += 1;
        if i % 5 == 4 {
            exchange(&r, &x, &y, c.time.secs);
            unsent = [[0; 3]; 2];
        }
    }
    assert!(short > 0, "the lag showed");
}

/// Escalation counts each rule's firings per caller in windows aligned
/// to `within_s`, keyed by the rule's id (a reordered rule file keeps the
/// counts), and merges them across nodes: two firings on one node and a
/// third on another escalate.
#[test]
fn escalation_counts_per_rule_per_aligned_window_and_across_nodes() {
    let v = "[[rule]]\nid = \"v\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 0\nscore = 10\nescalate = { after = 3, within_s = 600 }\n";
    let f = "[[rule]]\nid = \"f\"\nkind = \"fan_out\"\nwindow_s = 3600\nmax = 0\nscore = 10\nescalate = { after = 4, within_s = 600 }\n";
    let (r, reordered) = (rules(&format!("{v}{f}")), rules(&format!("{f}{v}")));
    let a = "+77011234567";
    let ten = BEFORE_HOUR - BEFORE_HOUR % 600 + 600;
    let notes = |r: &RuleSet, s: &Scored| -> Vec<(String, Note)> {
        fired(r, s).into_iter().map(|f| (f.0, f.3)).collect()
    };
    let none = |id: &str| (id.to_string(), Note::None);
    let up = |id: &str| (id.to_string(), Note::Escalated);
    let (x, y, lone) = (World::new(), World::new(), World::new());
    for t in [1, 2] {
        let s = x.score(&r, &call(a, "+77020000001", ten + t));
        assert_eq!(notes(&r, &s), [none("v"), none("f")]);
        lone.score(&r, &call(a, "+77020000001", ten + t));
    }
    exchange(&r, &x, &y, ten + 2);
    // y's first call is the third firing of each: v escalates, f not yet.
    let s = y.score(&reordered, &call(a, "+77020000001", ten + 3));
    assert_eq!(notes(&reordered, &s), [none("f"), up("v")]);
    assert_eq!(s.decision, Decision::Block);
    // The same call on a node that never heard of the others: no.
    let s = World::new().score(&r, &call(a, "+77020000001", ten + 3));
    assert_eq!(notes(&r, &s), [none("v"), none("f")]);
    // Counted in aligned windows, per rule.
    let count = |w: &World, id: &str| {
        let key = super::score::escalation_key(n(a).unwrap().raw(), super::score::rule_tag(id));
        w.st.escalations.get(key).unwrap()
    };
    for id in ["v", "f"] {
        let c = count(&y, id);
        assert_eq!((c.len, c.window.start()), (600, ten), "{id}");
        assert_eq!(c.window.count(ten + 3, 600), 3, "{id}");
    }
    // The reordered file on a node fed alone: f's fourth firing is its
    // own; the counts followed the ids.
    let s = lone.score(&reordered, &call(a, "+77020000002", ten + 4));
    assert_eq!(notes(&reordered, &s), [none("f"), up("v")]);
    let s = lone.score(&reordered, &call(a, "+77020000003", ten + 5));
    assert_eq!(notes(&reordered, &s), [up("f"), up("v")]);
    // Two windows on, each rule starts again from one firing.
    let s = lone.score(&r, &call(a, "+77020000004", ten + 1200));
    assert_eq!(notes(&r, &s), [none("v"), none("f")]);
    assert_eq!(count(&lone, "v").window.start(), ten + 1200);
    assert_eq!(count(&lone, "v").window.count(ten + 1200, 600), 1);
}
