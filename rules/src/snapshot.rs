//! The snapshot of lists and rules in force: swapped whole on reload, so a
//! call never sees lists and rules from two different loads.
//!
//! A snapshot is made of layers: one [`NumberList`] per [`ListId`] and the
//! [`RuleSet`], each behind an `Arc`, so a new snapshot in which one list
//! changed shares every other layer with the one before. Its [`Version`]
//! names its content (a digest of every layer and the rules, computed by
//! the control plane's publisher) and the highest sequence of the inputs
//! it was made from: two nodes given the same inputs report the same
//! version.

use std::fmt;
use std::sync::Arc;

use crate::list::NumberList;
use crate::list_id::{ByList, ListId};
use crate::number::NumberingPlan;
use crate::ruleset::{CallInput, ListPolicy, RuleLists, RuleSet, Scored};
use crate::state::State;

/// What a snapshot holds, named by content: the highest sequence of its
/// inputs (a published version's number, a feed batch's; files have
/// none, 0) and a 128-bit digest of its layers and rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Version {
    /// The highest sequence among the inputs.
    pub seq: u64,
    /// The content digest (the publisher's; all zeros for a snapshot no
    /// publisher made, such as the empty one at start).
    pub digest: [u8; 16],
}

impl fmt::Display for Version {
    /// `SEQ.DIGEST`, the digest as 32 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.", self.seq)?;
        for b in self.digest {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The lists in force and the rule set that reads them.
#[derive(Debug, Clone)]
pub struct ListSet {
    /// One list per kind.
    pub lists: ByList<Arc<NumberList>>,
    /// The rules: the built-in list rules, and a rule file's when there is one.
    pub rules: Arc<RuleSet>,
    /// What this snapshot holds, by content.
    pub version: Version,
    /// Which swap on this node this is (each one gets a new one): a
    /// verdict kept from an older snapshot is not reused, and rule hit
    /// counters follow the rules in force.
    pub generation: u64,
}

impl Default for ListSet {
    /// Empty lists under the built-in rules with the default policy.
    fn default() -> Self {
        let plan = NumberingPlan::kazakhstan()
            .validated()
            .unwrap_or_else(|_| NumberingPlan::kazakhstan());
        ListSet::new(
            ByList::default(),
            RuleSet::builtin(&ListPolicy::default(), &plan),
        )
    }
}

impl ListSet {
    /// A snapshot of these lists and rules, at version and generation 0.
    pub fn new(lists: ByList<NumberList>, rules: RuleSet) -> ListSet {
        let ByList(l) = lists;
        ListSet {
            lists: ByList(l.map(Arc::new)),
            rules: Arc::new(rules),
            version: Version::default(),
            generation: 0,
        }
    }

    /// This snapshot with list `l` replaced.
    #[must_use]
    pub fn with_list(mut self, l: ListId, list: NumberList) -> ListSet {
        self.lists[l] = Arc::new(list);
        self
    }

    /// This snapshot with its rules replaced.
    #[must_use]
    pub fn with_rules(mut self, rules: RuleSet) -> ListSet {
        self.rules = Arc::new(rules);
        self
    }

    /// The list `l`.
    #[inline]
    pub fn list(&self, l: ListId) -> &NumberList {
        &self.lists[l]
    }

    /// The lists as the rules read them.
    pub fn lists(&self) -> RuleLists<'_> {
        RuleLists(self.lists.map(|_, l| Some(&**l)))
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
