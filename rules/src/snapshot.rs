//! The snapshot of lists and rules in force: swapped whole on reload, so a
//! call never sees lists and rules from two different loads.

use std::fmt;

use crate::list::NumberList;
use crate::number::NumberingPlan;
use crate::ruleset::{CallInput, ListPolicy, RuleLists, RuleSet, Scored};
use crate::state::Tracker;

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
    /// The rules: the built-in list rules, and a rule file's when there is one.
    pub rules: RuleSet,
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
            rules: RuleSet::builtin(&ListPolicy::default(), &plan),
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
        }
    }

    /// Scores one call under this snapshot's rules.
    pub fn score(&self, call: &CallInput, callers: &Tracker, destinations: &Tracker) -> Scored {
        self.rules.score(call, &self.lists(), callers, destinations)
    }

    /// Writes the explanation of `s` (what fired, with values and list
    /// reasons).
    pub fn explain(&self, s: &Scored, out: &mut impl fmt::Write) -> fmt::Result {
        self.rules.explain(s, &self.lists(), out)
    }
}
