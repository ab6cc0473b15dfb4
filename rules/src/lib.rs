//! kuzet's scoring core.
//!
//! Everything here is deterministic and free of I/O: no files, no sockets,
//! no clocks, no tokio and no SIP. The engine extracts [`CallFacts`] from a
//! call, and [`evaluate`] turns them into a [`Verdict`] against the
//! [`ListSet`] in force. Numbers are normalized by a [`NumberingPlan`] into
//! packed [`Number`]s, so scoring compares integers and allocates nothing.
//!
//! Behaviour rules ([`ruleset`]) add scores for spoofing, velocity,
//! fan-out, sequential dialling, Wangiri, short calls, concurrency and
//! premium destinations, over bounded per-number state ([`state`]) whose
//! clock the caller supplies.

pub mod list;
pub mod number;
pub mod ruleset;
pub mod state;
pub mod verdict;

pub use list::{ListBuilder, ListError, ListErrorKind, ListMatch, MatchKind, NumberList};
pub use number::{Number, NumberingPlan, PlanError, Prefix};
pub use verdict::{
    evaluate, Action, CallFacts, ListPolicy, ListSet, RuleId, Side, Sides, TrunkKind, Verdict,
};
