//! Call facts in, verdict out.
//!
//! [`evaluate`] is the scoring core: a pure function of the facts the engine
//! extracted from one call and the list snapshot in force. It allocates
//! nothing and cannot fail, so the engine only has to guard against its own
//! errors around it.

use crate::list::{ListMatch, NumberList};
use crate::number::Number;

/// What kuzet does with a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Let the call through untouched.
    Allow,
    /// Let it through, marked with the verdict header.
    Flag,
    /// Refuse it.
    Block,
}

impl Action {
    /// The lowercase name used in headers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Flag => "flag",
            Action::Block => "block",
        }
    }
}

/// The kind of interconnect a call arrived on; from the engine's trunk map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrunkKind {
    /// International gateway.
    International,
    /// Another domestic operator.
    Domestic,
    /// The operator's own mobile network.
    Mobile,
    /// Any other named kind (enterprise PBX, test...).
    Other,
}

impl TrunkKind {
    /// Every kind, in the order configs list them.
    pub const ALL: [TrunkKind; 4] = [
        TrunkKind::International,
        TrunkKind::Domestic,
        TrunkKind::Mobile,
        TrunkKind::Other,
    ];

    /// The name configs, rule scopes and scenarios use.
    pub fn as_str(self) -> &'static str {
        match self {
            TrunkKind::International => "international",
            TrunkKind::Domestic => "domestic",
            TrunkKind::Mobile => "mobile",
            TrunkKind::Other => "other",
        }
    }

    /// The kind with this name (`international`, `domestic`, `mobile`,
    /// `other`): the one parser every config, rule file and scenario uses.
    pub fn from_name(name: &str) -> Option<TrunkKind> {
        TrunkKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// Which side of the call a list entry matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The A-number (calling party).
    Caller,
    /// The B-number (called party).
    Callee,
}

impl Side {
    /// `caller` or `callee`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Caller => "caller",
            Side::Callee => "callee",
        }
    }
}

/// Which numbers a list is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sides {
    /// Check the A-number.
    pub caller: bool,
    /// Check the B-number.
    pub callee: bool,
}

impl Sides {
    /// Both numbers.
    pub const BOTH: Sides = Sides {
        caller: true,
        callee: true,
    };
}

/// What the engine knows about one call, borrowed from its buffers.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallFacts {
    /// The normalized A-number, if it normalized.
    pub a_number: Option<Number>,
    /// The normalized B-number, if it normalized.
    pub b_number: Option<Number>,
    /// The kind of trunk the call came in on, if the source is known.
    pub trunk_kind: Option<TrunkKind>,
}

/// The lists in force, with their policy, and the behaviour rule set when
/// one is configured. Swapped whole on reload, so a call never sees lists
/// and rules from two different loads.
#[derive(Debug, Default)]
pub struct ListSet {
    /// Numbers whose calls are blocked.
    pub block: NumberList,
    /// Numbers whose calls are always allowed, whatever else matches.
    pub allow: NumberList,
    /// Numbers whose calls are let through but flagged.
    pub flag: NumberList,
    /// Protected (do-not-originate) numbers, for the rules.
    pub protected: NumberList,
    /// Premium-rate and IRSF destinations, for the rules.
    pub premium: NumberList,
    /// Scores and sides.
    pub policy: ListPolicy,
    /// Behaviour rules; when present they decide instead of [`evaluate`].
    pub rules: Option<Box<crate::ruleset::RuleSet>>,
}

/// How list hits turn into scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListPolicy {
    /// Score of a blocklist hit.
    pub block_score: u32,
    /// Score of a flaglist hit.
    pub flag_score: u32,
    /// Which numbers the lists are checked against.
    pub sides: Sides,
}

impl Default for ListPolicy {
    fn default() -> Self {
        ListPolicy {
            block_score: 100,
            flag_score: 50,
            sides: Sides::BOTH,
        }
    }
}

/// The rule that decided a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleId {
    /// No rule fired.
    None,
    /// The blocklist matched.
    Blocklist,
    /// The allowlist matched.
    Allowlist,
    /// The flaglist matched.
    Flaglist,
}

impl RuleId {
    /// The id written into headers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleId::None => "none",
            RuleId::Blocklist => "blocklist",
            RuleId::Allowlist => "allowlist",
            RuleId::Flaglist => "flaglist",
        }
    }
}

/// The outcome of scoring one call, explaining itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict<'l> {
    /// What to do.
    pub action: Action,
    /// The score that led there.
    pub score: u32,
    /// The rule that decided it.
    pub rule: RuleId,
    /// Which number matched, when a list did.
    pub side: Option<Side>,
    /// The list entry that matched, when one did.
    pub hit: Option<ListMatch<'l>>,
}

impl Verdict<'static> {
    /// Allow with nothing matched: also the fail-open verdict.
    pub const ALLOW: Verdict<'static> = Verdict {
        action: Action::Allow,
        score: 0,
        rule: RuleId::None,
        side: None,
        hit: None,
    };
}

fn find<'l>(
    list: &'l NumberList,
    facts: &CallFacts,
    sides: Sides,
) -> Option<(Side, ListMatch<'l>)> {
    if list.is_empty() {
        return None;
    }
    if sides.caller {
        if let Some(m) = facts.a_number.and_then(|n| list.lookup(n)) {
            return Some((Side::Caller, m));
        }
    }
    if sides.callee {
        if let Some(m) = facts.b_number.and_then(|n| list.lookup(n)) {
            return Some((Side::Callee, m));
        }
    }
    None
}

/// Scores one call against the lists: the allowlist overrides everything,
/// then a blocklist hit blocks, then a flaglist hit flags.
pub fn evaluate<'l>(facts: &CallFacts, lists: &'l ListSet) -> Verdict<'l> {
    let p = lists.policy;
    let make = |action, score, rule, (side, hit): (Side, ListMatch<'l>)| Verdict {
        action,
        score,
        rule,
        side: Some(side),
        hit: Some(hit),
    };
    if let Some(h) = find(&lists.allow, facts, p.sides) {
        return make(Action::Allow, 0, RuleId::Allowlist, h);
    }
    if let Some(h) = find(&lists.block, facts, p.sides) {
        return make(Action::Block, p.block_score, RuleId::Blocklist, h);
    }
    if let Some(h) = find(&lists.flag, facts, p.sides) {
        return make(Action::Flag, p.flag_score, RuleId::Flaglist, h);
    }
    Verdict::ALLOW
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::list::ListBuilder;
    use crate::number::NumberingPlan;

    fn set(block: &str, allow: &str, flag: &str) -> (NumberingPlan, ListSet) {
        let p = NumberingPlan::kazakhstan().validated().unwrap();
        let mk = |t: &str| {
            let mut b = ListBuilder::new(&p);
            b.add_text("t", t).unwrap();
            b.finish()
        };
        let s = ListSet {
            block: mk(block),
            allow: mk(allow),
            flag: mk(flag),
            policy: ListPolicy::default(),
            ..ListSet::default()
        };
        (p, s)
    }

    fn facts(p: &NumberingPlan, a: &str, b: &str) -> CallFacts {
        CallFacts {
            a_number: p.normalize(a.as_bytes()),
            b_number: p.normalize(b.as_bytes()),
            trunk_kind: None,
        }
    }

    #[test]
    fn allowlist_overrides_block_and_flag() {
        let (p, s) = set("+7701*,range", "+77011112233,bank", "+77011112233");
        let v = evaluate(&facts(&p, "+77011112233", "+77070000000"), &s);
        assert_eq!(v.action, Action::Allow);
        assert_eq!(v.rule, RuleId::Allowlist);
        assert_eq!(v.hit.unwrap().reason, "bank");
    }

    #[test]
    fn block_beats_flag_and_reports_side() {
        let (p, s) = set("+77079990000,irsf", "", "+77011112233");
        let v = evaluate(&facts(&p, "+77011112233", "87079990000"), &s);
        assert_eq!(v.action, Action::Block);
        assert_eq!(v.score, 100);
        assert_eq!(v.side, Some(Side::Callee));
        assert_eq!(v.rule.as_str(), "blocklist");
        let v = evaluate(&facts(&p, "+77011112233", "+77070000000"), &s);
        assert_eq!(
            (v.action, v.score, v.rule),
            (Action::Flag, 50, RuleId::Flaglist)
        );
    }

    #[test]
    fn unknown_numbers_are_allowed() {
        let (p, s) = set("+7701*", "", "");
        let mut f = facts(&p, "alice", "bob");
        assert!(f.a_number.is_none());
        assert_eq!(evaluate(&f, &s), Verdict::ALLOW);
        f.a_number = p.normalize(b"87011234567");
        assert_eq!(evaluate(&f, &s).action, Action::Block);
    }

    #[test]
    fn sides_limit_which_number_is_checked() {
        let (p, mut s) = set("+77079990000", "", "");
        s.policy.sides = Sides {
            caller: true,
            callee: false,
        };
        let v = evaluate(&facts(&p, "+77011112233", "+77079990000"), &s);
        assert_eq!(v.action, Action::Allow);
    }
}
