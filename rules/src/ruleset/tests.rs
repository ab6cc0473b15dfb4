//! Rule file parsing and scoring, each kind at its edges, with an injected
//! clock.

use super::*;
use crate::list::ListBuilder;
use crate::state::Outcome;

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
    callers: Tracker,
    dest: Tracker,
    block: NumberList,
    allow: NumberList,
    protected: NumberList,
    premium: NumberList,
}

impl World {
    fn new() -> World {
        World {
            callers: Tracker::new(1000, 86_400),
            dest: Tracker::new(1000, 86_400),
            block: list("+77770000001\n"),
            allow: list("+77270000001,bank\n"),
            protected: list("+77272595555\n102\n"),
            premium: list("+88216*\n+2392*\n"),
        }
    }
    fn lists(&self) -> RuleLists<'_> {
        RuleLists {
            block: Some(&self.block),
            flag: None,
            allow: Some(&self.allow),
            protected: Some(&self.protected),
            premium: Some(&self.premium),
        }
    }
    fn score(&self, r: &RuleSet, c: &CallInput) -> Scored {
        r.score(c, &self.lists(), &self.callers, &self.dest)
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
    for t in 0..3 {
        w.callers
            .outcome(an, 10 + t, Outcome::Cancelled { ring_ms: 1500 }, &p);
    }
    assert!(
        w.score(&r, &call(a, "+77020000001", 20)).fired().is_empty(),
        "3 rings < min_calls 4"
    );
    w.callers
        .outcome(an, 21, Outcome::Cancelled { ring_ms: 20_000 }, &p);
    // 3 short of 4 = 75.0%: at the ratio, fires.
    let s = w.score(&r, &call(a, "+77020000002", 22));
    assert_eq!(ids(&r, &s), ["w"]);
    assert_eq!((s.fired()[0].value, s.fired()[0].threshold), (750, 750));
    w.callers
        .outcome(an, 23, Outcome::Cancelled { ring_ms: 20_000 }, &p);
    // 3 of 5 = 60%: below.
    assert!(w.score(&r, &call(a, "+77020000003", 24)).fired().is_empty());
    let b = "+77011112222";
    let bn = n(b).unwrap().raw();
    w.callers
        .outcome(bn, 30, Outcome::Answered { talk_ms: 5_000 }, &p);
    w.callers
        .outcome(bn, 31, Outcome::Answered { talk_ms: 50_000 }, &p);
    let s = w.score(&r, &call(b, "+77020000001", 32));
    assert_eq!(ids(&r, &s), ["sc"]);
    let mut text = String::new();
    r.explain(&s, &w.lists(), &mut text).unwrap();
    assert_eq!(text, "sc: 50.0% >= 50.0%");
    // One more long call: 1 short of 3 = 33.3%, below the ratio.
    w.callers
        .outcome(bn, 33, Outcome::Answered { talk_ms: 90_000 }, &p);
    assert!(w.score(&r, &call(b, "+77020000001", 34)).fired().is_empty());
    // One answered call only: below min_calls, whatever the ratio.
    let c = "+77011113333";
    w.callers.outcome(
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
    w.callers.concurrent(an, 1, 1);
    w.callers.concurrent(an, 1, 1);
    assert!(w.score(&r, &call(a, "+77020000001", 2)).fired().is_empty());
    w.callers.concurrent(an, 3, 1);
    assert_eq!(w.score(&r, &call(a, "+77020000001", 4)).fired()[0].value, 3);
    w.callers.concurrent(an, 5, -1);
    assert!(w.score(&r, &call(a, "+77020000001", 6)).fired().is_empty());
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

#[test]
fn spoofing_rules() {
    let r = rules(
        "[[rule]]\nid = \"doi\"\nkind = \"domestic_on_international\"\nranges = [\"+76\", \"+77\"]\nscore = 100\n\
         [[rule]]\nid = \"prot\"\nkind = \"protected_caller\"\nscore = 100\n\
         [[rule]]\nid = \"mm\"\nkind = \"cli_mismatch\"\nscore = 30\n\
         [[rule]]\nid = \"inv\"\nkind = \"invalid_caller\"\nallocated = [\"+7701\", \"+7727\"]\nscore = 50\n",
    );
    let w = World::new();
    let mut c = call("+77011234567", "+77020000001", 1);
    assert!(
        w.score(&r, &c).fired().is_empty(),
        "domestic caller on the mobile trunk"
    );
    c.trunk = Some(TrunkKind::International);
    assert_eq!(ids(&r, &w.score(&r, &c)), ["doi"]);
    let mut ru = call("+79161234567", "+77020000001", 1);
    ru.trunk = Some(TrunkKind::International);
    let fired = ids(&r, &w.score(&r, &ru));
    assert!(
        !fired.contains(&"doi".to_string()),
        "+7 9xx is Russia, not a Kazakh range"
    );
    let c = call("+77272595555", "+77020000001", 1);
    assert_eq!(ids(&r, &w.score(&r, &c)), ["prot"]);
    assert_eq!(
        ids(&r, &w.score(&r, &call("102", "+77020000001", 1))),
        ["prot"]
    );
    let mut c = call("+77011234567", "+77020000001", 1);
    c.pai = n("+77011234568");
    assert_eq!(ids(&r, &w.score(&r, &c)), ["mm"]);
    c.pai = None;
    assert!(
        w.score(&r, &c).fired().is_empty(),
        "one of the two missing is no mismatch"
    );
    let mut c = call("+77011234567", "+77020000001", 1);
    c.a = None;
    assert_eq!(
        ids(&r, &w.score(&r, &c)),
        ["inv"],
        "present but not a number"
    );
    assert_eq!(
        ids(&r, &w.score(&r, &call("+77991234567", "+77020000001", 1))),
        ["inv"]
    );
    assert!(w
        .score(&r, &call("+442079460000", "+77020000001", 1))
        .fired()
        .is_empty());
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
    assert_eq!(text, "mm: matched; mm2: matched; sh: matched (shadow)");
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
    // The allowlist overrides everything, and says so.
    let mut c = call("+77270000001", "+77770000001", 1);
    c.pai = n("+77011234568");
    let s = w.score(&r, &c);
    assert!(s.allowlisted && s.decision == Decision::Allow);
    assert_eq!(ids(&r, &s), ["allowlist"]);
    let mut text = String::new();
    r.explain(&s, &w.lists(), &mut text).unwrap();
    assert_eq!(text, "allowlist: caller listed (bank)");
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
    l.flag = None;
    (flag, l)
}

fn builtin() -> RuleSet {
    RuleSet::builtin(&ListPolicy::default(), &plan())
}

#[test]
fn without_a_rule_file_the_lists_decide_as_the_config_says() {
    let w = World::new();
    let (flag, mut l) = with_flag(&w);
    l.flag = Some(&flag);
    let r = builtin();
    assert!(r.is_builtin());
    let score = |c: &CallInput| r.score(c, &l, &w.callers, &w.dest);
    let explain = |s: &Scored| {
        let mut t = String::new();
        r.explain(s, &l, &mut t).unwrap();
        t
    };
    // A blocklisted caller: blocked with the policy's score, side named.
    let s = score(&call("+77770000001", "+77020000001", 1));
    assert_eq!((s.decision, s.score), (Decision::Block, 100));
    assert_eq!(s.fired()[0].side, Some(Side::Caller));
    assert_eq!(explain(&s), "blocklist: caller listed");
    // A blocklisted callee.
    let s = score(&call("+77020000001", "+77770000001", 1));
    assert_eq!(
        (s.decision, s.fired()[0].side),
        (Decision::Block, Some(Side::Callee))
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
    let s = r.score(
        &call("+77020000001", "+77770000001", 1),
        &w.lists(),
        &w.callers,
        &w.dest,
    );
    assert_eq!(s.decision, Decision::Allow, "the callee is not checked");
    // A rule file's list rule may say otherwise, on purpose.
    let text = "[thresholds]\nflag = 40\nblock = 100\n[[rule]]\nid = \"bl_callee\"\nkind = \"list\"\nlist = \"blocklist\"\nside = \"callee\"\nscore = 100\n";
    let r = RuleSet::from_toml_str(text, "t.toml", &plan(), &caller_only).unwrap();
    let s = r.score(
        &call("+77020000001", "+77770000001", 1),
        &w.lists(),
        &w.callers,
        &w.dest,
    );
    assert_eq!(s.decision, Decision::Block);
}

#[test]
fn a_rule_file_without_list_rules_keeps_the_lists_blocking() {
    // Regression: enabling a rule file with no `kind = "list"` rule used to
    // stop list blocking silently.
    let w = World::new();
    let (flag, mut l) = with_flag(&w);
    l.flag = Some(&flag);
    let r = rules(
        "[[rule]]\nid = \"velocity_1m\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 3\nscore = 50\n",
    );
    assert!(!r.is_builtin() && r.overrides.is_empty());
    let s = r.score(
        &call("+77770000001", "+77020000001", 1),
        &l,
        &w.callers,
        &w.dest,
    );
    assert_eq!((s.decision, s.score), (Decision::Block, 100));
    let s = r.score(
        &call("+77009990001", "+77020000001", 2),
        &l,
        &w.callers,
        &w.dest,
    );
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
    // Overriding the list on purpose is accepted, and recorded.
    let r = RuleSet::from_toml_str(
        "[thresholds]\nflag = 40\nblock = 150\n[[rule]]\nid = \"blocklist\"\nkind = \"list\"\nlist = \"blocklist\"\nscore = 150\n",
        "r.toml",
        &plan(),
        &ListPolicy::default(),
    )
    .unwrap();
    assert_eq!(
        r.overrides,
        [Override {
            list: ListName::Blocklist,
            builtin_score: 100,
            by: "blocklist".into(),
            score: 150
        }]
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
