//! The snapshot of lists and rules in force: swapped whole on reload, so a
//! call never sees lists and rules from two different loads.

use std::fmt;

use crate::list::NumberList;
use crate::number::NumberingPlan;
use crate::ruleset::{CallInput, ListPolicy, RuleLists, RuleSet, Scored};
use crate::state::State;

/// The lists in force and the rule set that reads them.
#[derive(Debug)]
pub struct ListSet {
    /// Numbers whose calls are blocked.
    pub block: NumberList,
    /// Numbers exempt from the list and behaviour rules.
    pub allow: NumberList,
    /// Numbers whose calls are let through but flagged.
    pub flag: NumberList,
    /// Protected (do-not-originate) numbers, for the rules.
    pub protected: NumberList,
    /// Premium-rate and IRSF destinations, for the rules.
    pub premium: NumberList,
    /// The operator's own subscribers roaming abroad now: their domestic
    /// caller ID on an international trunk is genuine.
    pub roamers: NumberList,
    /// The rules: the built-in list rules, and a rule file's when there is one.
    pub rules: RuleSet,
    /// Which load this is (each load gets a new one): a verdict kept from
    /// an older snapshot is not reused.
    pub generation: u64,
}

impl Default for ListSet {
    /// Empty lists under the built-in rules with the default policy.
    fn default() -> Self {
        let plan = NumberingPlan::kazakhstan()
            .validated()
            .unwrap_or_else(|_| NumberingPlan::kazakhstan());
        ListSet {
            block: NumberList::default(),
            allow: NumberList::default(),
            flag: NumberList::default(),
            protected: NumberList::default(),
            premium: NumberList::default(),
            roamers: NumberList::default(),
            rules: RuleSet::builtin(&ListPolicy::default(), &plan),
            generation: 0,
        }
    }
}

impl ListSet {
    /// The lists as the rules read them.
    pub fn lists(&self) -> RuleLists<'_> {
        RuleLists {
            block: Some(&self.block),
            flag: Some(&self.flag),
            allow: Some(&self.allow),
            protected: Some(&self.protected),
            premium: Some(&self.premium),
            roamers: Some(&self.roamers),
        }
    }

    /// Scores one call under this snapshot's rules.
    pub fn score(&self, call: &CallInput, state: &State) -> Scored {
        self.rules.score(call, &self.lists(), state)
    }

    /// For a list rule that fired: the list's name, the side it matched,
    /// whether the match was exact, and the list line's reason (`""` when
    /// the line gave none). `None` for a behaviour rule.
    pub fn list_hit(&self, f: &crate::ruleset::Fired) -> Option<ListHit<'_>> {
        let r = self.rules.rules.get(usize::from(f.rule))?;
        let crate::ruleset::Kind::List { list, .. } = r.kind else {
            return None;
        };
        Some(ListHit {
            list: list.as_str(),
            side: f.who.map_or("", |w| w.as_str()),
            exact: f.value == 0,
            reason: self.lists().get(list).map_or("", |l| l.reason(f.reason)),
        })
    }

    /// Writes the explanation of `s` (what fired, with values and list
    /// reasons).
    pub fn explain(&self, s: &Scored, out: &mut impl fmt::Write) -> fmt::Result {
        self.rules.explain(s, &self.lists(), out)
    }
}

/// A list rule's hit, as evidence: which list, which side, and why the
/// number is on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListHit<'l> {
    /// The list: `blocklist`, `flaglist`, `allowlist` or `premium`.
    pub list: &'static str,
    /// The side that matched (`caller`, `callee`, ...), `""` if unknown.
    pub side: &'static str,
    /// The number itself is listed (not a range holding it).
    pub exact: bool,
    /// The list line's reason, `""` when none was given.
    pub reason: &'l str,
}
