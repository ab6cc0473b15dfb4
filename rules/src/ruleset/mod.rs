//! Rule files and the scorer: every rule that fires adds its score, the
//! capped sum meets thresholds, and the verdict says why.
//!
//! A rule file is TOML (documented with examples in `deploy/rules/`):
//! `[thresholds]` maps the summed score to flag, redirect and block, and
//! each `[[rule]]` has an `id`, a `kind` with its parameters, a `score`, a
//! `mode` (`enforce` or `shadow`) and an optional `[rule.scope]` (trunk
//! kinds, caller and callee prefixes, hours, weekdays). Parsing reports
//! `file:line:col: reason` and checks everything a rule needs, so a file
//! that parses can be swapped in whole.
//!
//! [`RuleSet::score`] reads and updates per-number state in a [`Tracker`]
//! and returns a [`Scored`] with at most [`MAX_FIRED`] fired rules, each
//! with its measured value and threshold. It allocates nothing.

mod explain;
mod file;
mod scope;
mod score;

use std::fmt;

use serde::Deserialize;

use crate::list::NumberList;
use crate::number::{Number, NumberingPlan, Prefix};
use crate::state::{CallTime, OutcomePolicy, Tracker, VELOCITY_SLOTS};
use crate::verdict::TrunkKind;

use scope::Leads;
pub use scope::{PrefixSet, Scope};

/// Rules that can fire on one call and be explained.
pub const MAX_FIRED: usize = 16;

/// What the scorer decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Decision {
    Allow,
    Flag,
    /// Send the call to the configured announcement / anti-fraud desk.
    Redirect,
    Block,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Flag => "flag",
            Decision::Redirect => "redirect",
            Decision::Block => "block",
        }
    }
}

/// Enforce, or only log what would have happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Enforce,
    Shadow,
}

/// Which list a `list` rule looks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListName {
    /// The blocklist, either side (as `lists.match` says).
    Blocklist,
    /// The flaglist, either side.
    Flaglist,
    /// Premium-rate / IRSF destinations, callee side.
    Premium,
}

/// The kind of a rule with its parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    List {
        list: ListName,
    },
    /// A domestic A-number arriving on an international trunk. Domestic =
    /// in `ranges` when given (for Kazakhstan `+76`, `+77`: the plan's
    /// country code 7 is shared with Russia), else the plan's country code.
    DomesticOnInternational {
        ranges: PrefixSet,
    },
    /// An A-number on the protected (do-not-originate) list.
    ProtectedCaller,
    /// From and P-Asserted-Identity carry different numbers.
    CliMismatch,
    /// The A-number does not normalize, or is domestic outside the
    /// allocated national prefixes (when any are given).
    InvalidCaller {
        allocated: PrefixSet,
    },
    /// Calls per A-number in the last `window_s` above `max`.
    Velocity {
        window_s: u32,
        max: u32,
        slot: u8,
    },
    /// Distinct B-numbers per A-number in `window_s` above `max`.
    FanOut {
        window_s: u32,
        max: u32,
    },
    /// A run of at least `run` consecutive B-numbers from one A-number.
    Sequential {
        run: u32,
    },
    /// Of at least `min_calls` rings, the share cancelled within the short
    /// ring time is at least `ratio`.
    Wangiri {
        min_calls: u32,
        ratio: f32,
    },
    /// Of at least `min_calls` answered calls, the share shorter than the
    /// short talk time is at least `ratio`.
    ShortCalls {
        min_calls: u32,
        ratio: f32,
    },
    /// Calls in progress from the A-number above `max` (proxy mode).
    Concurrent {
        max: u32,
    },
    /// Calls to one premium destination (the matched premium prefix) in
    /// `window_s` above `max`.
    DestinationVelocity {
        window_s: u32,
        max: u32,
    },
}

/// One checked rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub id: Box<str>,
    pub kind: Kind,
    pub score: u32,
    pub mode: Mode,
    scope: Scope,
}

/// Score thresholds and where redirected calls go.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    pub flag: u32,
    pub redirect: Option<u32>,
    pub block: u32,
    pub cap: u32,
    pub redirect_uri: Option<Box<str>>,
}

/// The lists rules look in, beyond the engine's allow/block/flag.
#[derive(Default)]
pub struct RuleLists<'a> {
    pub block: Option<&'a NumberList>,
    pub flag: Option<&'a NumberList>,
    pub allow: Option<&'a NumberList>,
    pub protected: Option<&'a NumberList>,
    pub premium: Option<&'a NumberList>,
}

/// What the scorer knows of one call.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallInput {
    /// The A-number scoring uses (PAI or From, as configured).
    pub a: Option<Number>,
    /// The numbers in From and in P-Asserted-Identity, when present.
    pub from: Option<Number>,
    pub pai: Option<Number>,
    /// An A-number was present in the headers (normalized or not).
    pub a_present: bool,
    pub b: Option<Number>,
    pub trunk: Option<TrunkKind>,
    pub time: CallTime,
}

/// One rule that fired: its measured value against its threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fired {
    pub rule: u16,
    /// Calls, distinct numbers or run length; or a ratio in per mille.
    pub value: u32,
    pub threshold: u32,
    pub shadow: bool,
}

/// The verdict of the rule set on one call.
#[derive(Clone, Copy, Debug)]
pub struct Scored {
    pub decision: Decision,
    /// The capped sum of enforced rules that fired.
    pub score: u32,
    /// The decision shadow rules would have added to (for logs).
    pub shadow_decision: Decision,
    pub allowlisted: bool,
    fired: [Fired; MAX_FIRED],
    n: u8,
}

impl Scored {
    /// Every rule that fired, enforced and shadow.
    pub fn fired(&self) -> &[Fired] {
        &self.fired[..usize::from(self.n)]
    }
}

/// A parsed, checked rule file.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    plan: NumberingPlan,
    pub thresholds: Thresholds,
    pub outcomes: OutcomePolicy,
    /// What the state update needs, worked out once at load: the velocity
    /// windows by slot, the fan-out window, whether any rule needs the
    /// dialling run, the caller's state at all, or the premium lookup.
    windows: [u32; VELOCITY_SLOTS],
    fan_out_window: Option<u32>,
    needs_run: bool,
    needs_state: bool,
    needs_premium: bool,
}

/// A rule file that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct RuleError(pub String);

#[cfg(test)]
mod tests;
