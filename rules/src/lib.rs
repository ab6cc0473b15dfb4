//! kuzet's scoring core.
//!
//! Everything here is deterministic and free of I/O: no files, no sockets,
//! no clocks, no tokio and no SIP. The engine extracts a
//! [`CallInput`](ruleset::CallInput) from a call, and the [`ListSet`] in
//! force scores it with its [`RuleSet`](ruleset::RuleSet): the built-in
//! list rules (allowlist, blocklist, flaglist) and the behaviour rules of a
//! rule file, over bounded per-number state ([`state`]) whose clock the
//! caller supplies. Numbers are normalized by a [`NumberingPlan`] into
//! packed [`Number`]s, so scoring compares integers and allocates nothing.

#![forbid(unsafe_code)]

pub mod config;
pub mod facts;
pub mod list;
pub mod list_id;
pub mod number;
pub mod plan;
pub mod ruleset;
pub mod snapshot;
pub mod state;
pub mod toml_pos;

pub use facts::{Side, Sides, TrunkKind, Who};
pub use list::{ListBuilder, ListError, ListErrorKind, ListMatch, MatchKind, NumberList};
pub use list_id::{ByList, ListId};
pub use number::{Number, NumberingPlan, PlanError, Prefix};
pub use plan::{Class, Countries, NumberKind, Origin};
pub use ruleset::{Decision, ListPolicy};
pub use snapshot::ListSet;
pub use state::CallTime;
