//! What changes between two versions: a list's entries (merged in order,
//! never loaded twice), and a rule set's rules and thresholds, each
//! change marked when it makes kuzet block or redirect more.

use kuzet_rules::ruleset::{Kind, Mode, Rule, RuleSet};
use kuzet_rules::{ListId, NumberList, Prefix};

/// One entry of a list, as a diff names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// An exact number (its raw key).
    Exact(u64),
    /// A range.
    Range(Prefix),
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Exact(k) => match kuzet_rules::Number::from_raw(*k) {
                Some(n) => write!(f, "{n}"),
                None => write!(f, "#{k}"),
            },
            Entry::Range(p) => write!(f, "{p}"),
        }
    }
}

/// Walks the entries of `from` and `to` in order and calls `emit(added,
/// entry, reason)` for each one only one of them holds (an entry whose
/// reason changed is removed with the old reason and added with the new);
/// `emit` returns false to stop. Returns (added, removed) counted until
/// then.
pub fn lists(
    from: &NumberList,
    to: &NumberList,
    mut emit: impl FnMut(bool, Entry, &str) -> bool,
) -> (u64, u64) {
    let (mut added, mut removed) = (0u64, 0u64);
    let mut go = true;
    let mut out = |is_add: bool, e: Entry, r: &str, go: &mut bool| {
        if is_add {
            added += 1;
        } else {
            removed += 1;
        }
        if *go {
            *go = emit(is_add, e, r);
        }
    };
    // Exact numbers: both sorted by key.
    let mut a = from.exact_entries().peekable();
    let mut b = to.exact_entries().peekable();
    loop {
        match (a.peek().copied(), b.peek().copied()) {
            (None, None) => break,
            (Some((ka, ra)), None) => {
                out(false, Entry::Exact(ka), ra, &mut go);
                a.next();
            }
            (None, Some((kb, rb))) => {
                out(true, Entry::Exact(kb), rb, &mut go);
                b.next();
            }
            (Some((ka, ra)), Some((kb, rb))) => {
                if ka < kb {
                    out(false, Entry::Exact(ka), ra, &mut go);
                    a.next();
                } else if kb < ka {
                    out(true, Entry::Exact(kb), rb, &mut go);
                    b.next();
                } else {
                    if ra != rb {
                        out(false, Entry::Exact(ka), ra, &mut go);
                        out(true, Entry::Exact(kb), rb, &mut go);
                    }
                    a.next();
                    b.next();
                }
            }
        }
        if !go {
            return (added, removed);
        }
    }
    let pa = from.prefix_entries();
    let pb = to.prefix_entries();
    let (mut i, mut j) = (0, 0);
    let key = |p: &Prefix| (p.len, p.value);
    while go && (i < pa.len() || j < pb.len()) {
        match (pa.get(i), pb.get(j)) {
            (Some((p, r)), None) => {
                out(false, Entry::Range(*p), r, &mut go);
                i += 1;
            }
            (None, Some((p, r))) => {
                out(true, Entry::Range(*p), r, &mut go);
                j += 1;
            }
            (Some((p, r)), Some((q, s))) => {
                if key(p) < key(q) {
                    out(false, Entry::Range(*p), r, &mut go);
                    i += 1;
                } else if key(q) < key(p) {
                    out(true, Entry::Range(*q), s, &mut go);
                    j += 1;
                } else {
                    if r != s {
                        out(false, Entry::Range(*p), r, &mut go);
                        out(true, Entry::Range(*q), s, &mut go);
                    }
                    i += 1;
                    j += 1;
                }
            }
            (None, None) => break,
        }
    }
    (added, removed)
}

/// Whether a number added to list `l` can turn a call kuzet let through
/// into one it blocks: the blocklist, the protected numbers (a call
/// claiming one is spoofed), the premium destinations, and any list an
/// enforced rule in force reads with a score (scores add up: a flaglist
/// hit and another rule's can reach the block threshold together).
pub fn adding_blocks(l: ListId, rules: &RuleSet) -> bool {
    matches!(l, ListId::Block | ListId::Protected | ListId::Premium)
        || rules.rules.iter().any(|r| {
            r.mode == Mode::Enforce
                && r.score > 0
                && matches!(r.kind, Kind::List { list, .. } if list == l)
        })
}

/// Whether a number taken off list `l` can do so: the lists that exempt
/// (the allowlist, the roamers whose domestic caller ID abroad is genuine).
pub fn removing_blocks(l: ListId) -> bool {
    matches!(l, ListId::Allow | ListId::Roamers)
}

/// Whether moving list `l` by `added` and `removed` entries blocks more,
/// under the rules in force.
pub fn list_blocks_more(l: ListId, rules: &RuleSet, added: u64, removed: u64) -> bool {
    (adding_blocks(l, rules) && added > 0) || (removing_blocks(l) && removed > 0)
}

/// One change of a rule set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The rule's id, or `thresholds.block` and the like.
    pub what: String,
    /// `added`, `removed`, `mode`, `score`, `kind`, `scope`, `escalate`,
    /// `threshold`, `redirect_uri`.
    pub change: &'static str,
    /// Before and after, as text.
    pub before: String,
    /// See `before`.
    pub after: String,
    /// The change makes kuzet block or redirect more.
    pub blocks_more: bool,
}

/// A rule's kind as a short name: `velocity`, `list`.
pub fn kind_name(k: &Kind) -> String {
    let d = format!("{k:?}");
    let head: String = d.chars().take_while(|c| c.is_alphanumeric()).collect();
    let mut out = String::new();
    for (i, c) in head.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// `shadow` or `enforce`.
pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Enforce => "enforce",
        Mode::Shadow => "shadow",
    }
}

fn summary(r: &Rule) -> String {
    format!(
        "{} {} score {}",
        kind_name(&r.kind),
        mode_name(r.mode),
        r.score
    )
}

/// Every change from `from` to `to`. Conservative on what blocks more: a
/// rule enforced now that was in shadow or absent, an enforced rule whose
/// score rose, whose parameters or scope changed (kuzet cannot tell a
/// wider scope or a lower count from a narrower one in general), or whose
/// escalation came earlier; a block or redirect threshold lowered, or a
/// redirect threshold set.
pub fn rules(from: &RuleSet, to: &RuleSet) -> Vec<Change> {
    let mut out = Vec::new();
    let enforced = |r: &Rule| r.mode == Mode::Enforce;
    for r in &to.rules {
        let Some(o) = from.rules.iter().find(|o| o.id == r.id) else {
            out.push(Change {
                what: r.id.to_string(),
                change: "added",
                before: String::new(),
                after: summary(r),
                blocks_more: enforced(r),
            });
            continue;
        };
        let mut push = |change, before: String, after: String, more: bool| {
            if before != after {
                out.push(Change {
                    what: r.id.to_string(),
                    change,
                    before,
                    after,
                    blocks_more: more,
                })
            }
        };
        push(
            "mode",
            mode_name(o.mode).into(),
            mode_name(r.mode).into(),
            enforced(r),
        );
        push(
            "score",
            o.score.to_string(),
            r.score.to_string(),
            enforced(r) && r.score > o.score,
        );
        push(
            "kind",
            format!("{:?}", o.kind),
            format!("{:?}", r.kind),
            enforced(r),
        );
        push(
            "scope",
            format!("{:?}", o.scope),
            format!("{:?}", r.scope),
            enforced(r),
        );
        let earlier = match (o.escalate, r.escalate) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(a), Some(b)) => b.after < a.after || b.within_s > a.within_s,
        };
        push(
            "escalate",
            format!("{:?}", o.escalate),
            format!("{:?}", r.escalate),
            enforced(r) && earlier,
        );
    }
    for o in &from.rules {
        if !to.rules.iter().any(|r| r.id == o.id) {
            out.push(Change {
                what: o.id.to_string(),
                change: "removed",
                before: summary(o),
                after: String::new(),
                blocks_more: false,
            });
        }
    }
    let (a, b) = (&from.thresholds, &to.thresholds);
    let mut th = |what: &str, before: Option<u32>, after: Option<u32>, more: bool| {
        if before != after {
            let show = |v: Option<u32>| v.map_or_else(|| "none".to_string(), |v| v.to_string());
            out.push(Change {
                what: format!("thresholds.{what}"),
                change: "threshold",
                before: show(before),
                after: show(after),
                blocks_more: more,
            });
        }
    };
    th("block", Some(a.block), Some(b.block), b.block < a.block);
    th(
        "redirect",
        a.redirect,
        b.redirect,
        match (a.redirect, b.redirect) {
            (None, Some(_)) => true,
            (Some(x), Some(y)) => y < x,
            _ => false,
        },
    );
    th("flag", Some(a.flag), Some(b.flag), false);
    // A cap below the block threshold held every call under it: raising
    // it lets calls reach a block.
    th(
        "cap",
        Some(a.cap),
        Some(b.cap),
        b.cap > a.cap && a.cap < b.block,
    );
    if a.redirect_uri != b.redirect_uri {
        out.push(Change {
            what: "thresholds.redirect_uri".into(),
            change: "redirect_uri",
            before: a.redirect_uri.as_deref().unwrap_or("none").into(),
            after: b.redirect_uri.as_deref().unwrap_or("none").into(),
            blocks_more: false,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuzet_rules::{ListBuilder, ListPolicy, NumberingPlan, Sides};

    fn list(plan: &NumberingPlan, text: &str) -> NumberList {
        let mut b = ListBuilder::new(plan);
        b.add_text("t", text).unwrap();
        b.finish()
    }

    #[test]
    fn a_list_diff_names_added_removed_and_changed_entries_in_order() {
        let plan = NumberingPlan::kazakhstan();
        let a = list(
            &plan,
            "+77010000001\n+77010000002, old\n+7702*\n+77010000009\n",
        );
        let b = list(
            &plan,
            "+77010000002, new\n+77010000003\n+7703*\n+77010000009\n",
        );
        let mut seen = Vec::new();
        let (added, removed) = lists(&a, &b, |add, e, r| {
            seen.push(format!("{}{e} {r}", if add { '+' } else { '-' }));
            true
        });
        assert_eq!(
            seen,
            [
                "-+77010000001 ",
                "-+77010000002 old",
                "++77010000002 new",
                "++77010000003 ",
                "-+7702* ",
                "++7703* ",
            ]
        );
        assert_eq!((added, removed), (3, 3));
        // Stopping early still counts what was walked.
        let (ad, re) = lists(&a, &b, |_, _, _| false);
        assert_eq!((ad, re), (0, 1));
        let rules = RuleSet::builtin(
            &ListPolicy {
                block_score: 100,
                flag_score: 50,
                sides: Sides::BOTH,
            },
            &plan,
        );
        assert!(list_blocks_more(ListId::Block, &rules, 1, 0));
        assert!(!list_blocks_more(ListId::Block, &rules, 0, 5));
        assert!(list_blocks_more(ListId::Allow, &rules, 0, 1));
        assert!(!list_blocks_more(ListId::Allow, &rules, 7, 0));
        // The flaglist scores in force: with another rule it can block.
        assert!(list_blocks_more(ListId::Flag, &rules, 1, 0));
        assert!(!list_blocks_more(ListId::Flag, &rules, 0, 9));
    }

    #[test]
    fn enforcing_a_shadow_rule_or_lowering_the_block_threshold_blocks_more() {
        let plan = NumberingPlan::kazakhstan();
        let policy = ListPolicy {
            block_score: 100,
            flag_score: 50,
            sides: Sides::BOTH,
        };
        let base = r#"
[thresholds]
flag = 50
block = 100

[[rule]]
id = "velocity_1m"
kind = "velocity"
window_s = 60
max = 30
score = 100
mode = "shadow"
"#;
        let parse = |t: &str| RuleSet::from_toml_str(t, "t.toml", &plan, &policy).unwrap();
        let a = parse(base);
        assert!(rules(&a, &a).is_empty());
        let b = parse(&base.replace("mode = \"shadow\"", "mode = \"enforce\""));
        let c = rules(&a, &b);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!((c[0].change, c[0].blocks_more), ("mode", true));
        let lower = parse(&base.replace("block = 100", "block = 90"));
        let c = rules(&a, &lower);
        assert!(
            c.iter()
                .any(|c| c.what == "thresholds.block" && c.blocks_more),
            "{c:?}"
        );
        // Back to shadow, or a higher threshold: no more blocking.
        let c = rules(&b, &a);
        assert!(c.iter().all(|c| !c.blocks_more), "{c:?}");
        let c = rules(&lower, &a);
        assert!(c.iter().all(|c| !c.blocks_more), "{c:?}");
    }
}
