//! Rule sets and the scorer: every rule that fires adds its score, the
//! capped sum meets thresholds, and the verdict says why.
//!
//! There is one way to judge a call. The lists are rules too: the
//! allowlist exempts, the blocklist and the flaglist score what the
//! engine's `[verdict]` section says, on the sides `[lists] match` says
//! ([`RuleSet::builtin`]). A rule file (TOML, documented in
//! `deploy/rules/`) adds behaviour rules to those built-in list rules, and
//! may deliberately override a list's score with a `kind = "list"` rule of
//! its own ([`RuleSet::overrides`] says which). Each `[[rule]]` has an `id`,
//! a `kind` with its parameters, a `score`, a `mode` (`enforce` or
//! `shadow`) and an optional `[rule.scope]` (trunk kinds, caller and callee
//! prefixes, hours, weekdays). Parsing reports `file:line:col: reason` and
//! checks everything a rule needs, so a file that parses can be swapped in
//! whole.
//!
//! [`RuleSet::score`] reads and updates per-number state in a [`State`]
//! and returns a [`Scored`] with at most [`MAX_FIRED`] fired rules, each
//! with its measured value and threshold. It allocates nothing. A rule
//! with `escalate` counts its firings per caller and rule id over aligned
//! windows of `within_s`, like every other count, so the counts merge
//! across nodes; [`RuleSet::windows`] tells the state which window
//! lengths the set counts over, for that merge.

mod error;
mod explain;
mod file;
mod scope;
mod score;

use std::fmt;

use crate::facts::{Side, Sides, TrunkKind, Who};
use crate::list::NumberList;
use crate::list_id::ByList;
use crate::number::{Number, NumberingPlan, Prefix};
use crate::state::{CallTime, OutcomePolicy, State, Windows, VELOCITY_SLOTS};

pub use error::{FileProblem, RuleError, RuleProblem};
use scope::Leads;
pub use scope::{PrefixSet, Scope};

/// Rules that can fire on one call and be explained.
pub const MAX_FIRED: usize = 16;

/// What the scorer decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    /// Let the call through untouched.
    Allow,
    /// Let it through, marked with the verdict header.
    Flag,
    /// Send the call to the configured announcement / anti-fraud desk.
    Redirect,
    /// Refuse it.
    Block,
}

impl Decision {
    /// The lowercase name used in headers and logs.
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The rule's score counts.
    Enforce,
    /// The rule is evaluated and reported, never counted.
    Shadow,
}

pub use crate::list_id::ListId;

/// The kind of a rule with its parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// A number on a list, on the given sides.
    List {
        /// The list looked in.
        list: ListId,
        /// Which numbers are looked up.
        sides: Sides,
    },
    /// A caller identity (From, PAI or a display name's digits) that the
    /// numbering plan places in the home country, arriving on an
    /// international trunk, unless it is a known outbound roamer.
    DomesticOnInternational,
    /// A caller identity (From, PAI or a display name's digits) on the
    /// protected (do-not-originate) list.
    ProtectedCaller,
    /// From and P-Asserted-Identity carry different numbers: evidence that
    /// adds to other evidence (many PBXs do it honestly).
    CliMismatch,
    /// A caller identity was claimed but is not a number, or the numbering
    /// plan says the A-number is invalid (wrong length, unallocated,
    /// unassigned).
    InvalidCaller,
    /// Calls per A-number in the last `window_s` above `max`.
    Velocity {
        /// Window length, seconds.
        window_s: u32,
        /// Calls allowed in the window.
        max: u32,
        /// Which of the caller's velocity windows counts them.
        slot: u8,
    },
    /// Distinct B-numbers per A-number in `window_s` above `max`, unless
    /// more than `max_called_back` of them called back (a business is
    /// called back, a SIM box is not).
    FanOut {
        /// Window length, seconds.
        window_s: u32,
        /// Distinct callees allowed in the window.
        max: u32,
        /// Per mille of callees calling back above which the rule holds
        /// its fire; `None`: callbacks do not matter.
        max_called_back: Option<u32>,
    },
    /// A run of at least `run` consecutive B-numbers from one A-number.
    Sequential {
        /// Run length that fires.
        run: u32,
    },
    /// Of at least `min_calls` rings, the share cancelled within the short
    /// ring time is at least `ratio`.
    Wangiri {
        /// Rings needed before the ratio counts.
        min_calls: u32,
        /// Share of short rings that fires.
        ratio: f32,
    },
    /// Of at least `min_calls` answered calls, the share shorter than the
    /// short talk time is at least `ratio`.
    ShortCalls {
        /// Answered calls needed before the ratio counts.
        min_calls: u32,
        /// Share of short calls that fires.
        ratio: f32,
    },
    /// Calls in progress from the A-number above `max` (proxy mode).
    Concurrent {
        /// Calls in progress allowed.
        max: u32,
    },
    /// Calls to one premium destination (the matched premium prefix) in
    /// `window_s` above `max`.
    DestinationVelocity {
        /// Window length, seconds.
        window_s: u32,
        /// Calls allowed in the window.
        max: u32,
    },
}

/// One checked rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Written in explanations and logs.
    pub id: Box<str>,
    /// What it tests.
    pub kind: Kind,
    /// Added to the call's score when it fires (and is enforced).
    pub score: u32,
    /// Enforce or shadow.
    pub mode: Mode,
    /// When and to what it applies.
    pub scope: Scope,
    /// Firing this often for one caller turns the rule into a block.
    pub escalate: Option<Escalate>,
    /// True for the list rules built from the engine's config.
    pub builtin: bool,
}

impl Kind {
    /// True for the rules that judge whether the caller ID is authentic:
    /// the allowlist does not exempt a number from them, because spoofing
    /// a trusted number is the most valuable spoof there is.
    pub fn is_authenticity(&self) -> bool {
        matches!(
            self,
            Kind::DomesticOnInternational
                | Kind::ProtectedCaller
                | Kind::CliMismatch
                | Kind::InvalidCaller
        )
    }
}

/// A rule that keeps firing for one caller escalates: the `after`th time
/// within `within_s` seconds, and every time after, it scores at least the
/// block threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Escalate {
    /// Firings that escalate.
    pub after: u32,
    /// Over how many seconds they are counted.
    pub within_s: u32,
}

/// Score thresholds and where redirected calls go.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    /// A score at least this flags.
    pub flag: u32,
    /// A score at least this redirects (when set).
    pub redirect: Option<u32>,
    /// A score at least this blocks.
    pub block: u32,
    /// The sum of scores never exceeds this.
    pub cap: u32,
    /// Where redirected calls go.
    pub redirect_uri: Option<Box<str>>,
}

/// How list hits score when no rule file says otherwise: the engine's
/// `[verdict]` scores and `[lists] match` sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListPolicy {
    /// Score of a blocklist hit; also the block threshold without a rule file.
    pub block_score: u32,
    /// Score of a flaglist hit; also the flag threshold without a rule file.
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

/// A built-in list rule that a rule file replaced with one of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    /// The list whose built-in rule was replaced.
    pub list: ListId,
    /// The score the config gives that list.
    pub builtin_score: u32,
    /// The id of the file's rule that replaced it.
    pub by: Box<str>,
    /// That rule's score.
    pub score: u32,
}

/// The lists rules look in: one per [`ListId`], `None` for a list a
/// test leaves out.
#[derive(Default, Clone, Copy)]
pub struct RuleLists<'a>(pub ByList<Option<&'a NumberList>>);

impl<'a> RuleLists<'a> {
    /// The list `list`, if there is one.
    #[inline]
    pub fn get(&self, list: ListId) -> Option<&'a NumberList> {
        self.0[list]
    }

    /// These lists with `list` set to `l`.
    pub fn with(mut self, list: ListId, l: &'a NumberList) -> Self {
        self.0[list] = Some(l);
        self
    }
}

/// What the scorer knows of one call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CallInput {
    /// The A-number scoring uses (PAI or From, as configured).
    pub a: Option<Number>,
    /// The number in From, when present and a number.
    pub from: Option<Number>,
    /// The number in P-Asserted-Identity, when present and a number.
    pub pai: Option<Number>,
    /// The digits of the From or PAI display name, when they are a number.
    pub display: Option<Number>,
    /// An A-number was present in the headers (normalized or not).
    pub a_present: bool,
    /// The B-number, from the Request-URI.
    pub b: Option<Number>,
    /// The trunk kind the call arrived on, when the source is known.
    pub trunk: Option<TrunkKind>,
    /// When the call happens.
    pub time: CallTime,
}

/// One rule that fired: its measured value against its threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fired {
    /// Index of the rule in [`RuleSet::rules`].
    pub rule: u16,
    /// Calls, distinct numbers or run length; a ratio in per mille; for a
    /// list hit, 0 for an exact number or the matched prefix's length.
    pub value: u32,
    /// The rule's threshold, in the same unit.
    pub threshold: u32,
    /// A shadow rule: reported, not counted.
    pub shadow: bool,
    /// Which number it looked at: the side of a list hit, the identity of
    /// a caller-ID rule.
    pub who: Option<Who>,
    /// For a list hit, the id of the list line's reason (0: none); for a
    /// fan-out rule, 1 + the per mille of callees that called back.
    pub reason: u32,
    /// Anything more the explanation must say.
    pub note: Note,
}

/// What else an explanation says about a rule that fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// Nothing.
    None,
    /// It would have fired, but the number is a known outbound roamer:
    /// reported, not counted.
    Roamer,
    /// It fired often enough for this caller to escalate to a block.
    Escalated,
}

impl Fired {
    const NONE: Fired = Fired {
        rule: 0,
        value: 0,
        threshold: 0,
        shadow: false,
        who: None,
        reason: 0,
        note: Note::None,
    };

    /// True when the rule adds to the score (neither shadow nor a note).
    pub fn counts(&self) -> bool {
        !self.shadow && self.note != Note::Roamer
    }
}

/// The verdict of the rule set on one call.
#[derive(Clone, Copy, Debug)]
pub struct Scored {
    /// What to do.
    pub decision: Decision,
    /// The capped sum of enforced rules that fired.
    pub score: u32,
    /// The decision shadow rules would have added to (for logs).
    pub shadow_decision: Decision,
    /// The allowlist matched: every other rule was skipped.
    pub allowlisted: bool,
    fired: [Fired; MAX_FIRED],
    n: u8,
}

impl Scored {
    /// Allow with nothing fired: also the fail-open verdict.
    pub const ALLOW: Scored = Scored {
        decision: Decision::Allow,
        score: 0,
        shadow_decision: Decision::Allow,
        allowlisted: false,
        fired: [Fired::NONE; MAX_FIRED],
        n: 0,
    };

    /// Every rule that fired, enforced and shadow.
    pub fn fired(&self) -> &[Fired] {
        &self.fired[..usize::from(self.n)]
    }

    fn push(&mut self, f: Fired) {
        if usize::from(self.n) < MAX_FIRED {
            self.fired[usize::from(self.n)] = f;
            self.n += 1;
        }
    }

    /// Fired rules a packed verdict keeps ([`Scored::pack`]).
    pub const PACKED_FIRED: usize = 7;
    /// Words a packed verdict takes.
    pub const PACKED_WORDS: usize = 2 + 2 * Self::PACKED_FIRED;

    /// Packs the verdict into [`Scored::PACKED_WORDS`] words, keeping the
    /// first [`Scored::PACKED_FIRED`] fired rules: how a verdict is kept to
    /// answer a retransmission the same way without scoring it again.
    pub fn pack(&self, w: &mut [u64]) {
        let d = |d: Decision| d as u64;
        let n = self.fired().len().min(Self::PACKED_FIRED);
        w[0] = d(self.decision)
            | d(self.shadow_decision) << 2
            | u64::from(self.allowlisted) << 4
            | (n as u64) << 5;
        w[1] = u64::from(self.score);
        for (k, f) in self.fired().iter().take(n).enumerate() {
            let who = f.who.map_or(0, |w| w as u64 + 1);
            let note = match f.note {
                Note::None => 0,
                Note::Roamer => 1,
                Note::Escalated => 2,
            };
            w[2 + 2 * k] = u64::from(f.rule)
                | u64::from(f.value) << 16
                | who << 48
                | u64::from(f.shadow) << 52
                | note << 53;
            w[3 + 2 * k] = u64::from(f.threshold) | u64::from(f.reason) << 32;
        }
    }

    /// The verdict [`Scored::pack`] packed.
    pub fn unpack(w: &[u64]) -> Scored {
        const DECISIONS: [Decision; 4] = [
            Decision::Allow,
            Decision::Flag,
            Decision::Redirect,
            Decision::Block,
        ];
        const WHO: [Who; 5] = [Who::Caller, Who::Callee, Who::From, Who::Pai, Who::Display];
        let mut s = Scored {
            decision: DECISIONS[(w[0] & 3) as usize],
            shadow_decision: DECISIONS[(w[0] >> 2 & 3) as usize],
            allowlisted: w[0] >> 4 & 1 == 1,
            score: w[1] as u32,
            ..Scored::ALLOW
        };
        let n = ((w[0] >> 5) as usize).min(Self::PACKED_FIRED);
        for k in 0..n {
            let (a, b) = (w[2 + 2 * k], w[3 + 2 * k]);
            s.push(Fired {
                rule: a as u16,
                value: (a >> 16) as u32,
                threshold: b as u32,
                shadow: a >> 52 & 1 == 1,
                who: match (a >> 48 & 0xf) as usize {
                    0 => None,
                    i => WHO.get(i - 1).copied(),
                },
                reason: (b >> 32) as u32,
                note: match a >> 53 & 3 {
                    1 => Note::Roamer,
                    2 => Note::Escalated,
                    _ => Note::None,
                },
            });
        }
        s
    }
}

/// A checked rule set: the built-in list rules and a rule file's rules.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleSet {
    /// Every rule, built-in list rules first.
    pub rules: Vec<Rule>,
    plan: NumberingPlan,
    /// Score to decision.
    pub thresholds: Thresholds,
    /// How outcomes are classified (short ring, short talk).
    pub outcomes: OutcomePolicy,
    /// Built-in list rules the rule file replaced.
    pub overrides: Vec<Override>,
    /// The rule file's name, or `built-in`.
    pub source: Box<str>,
    /// The rule file's text (none: the built-in rules), so the set can be
    /// kept beside the calls it judged and built again.
    pub text: Option<std::sync::Arc<str>>,
    /// What the state update needs, worked out once at load: the velocity
    /// windows by slot, the fan-out window, whether any rule needs the
    /// dialling run, the caller's state at all, or the premium lookup.
    windows: [u32; VELOCITY_SLOTS],
    fan_out_window: Option<u32>,
    needs_run: bool,
    needs_state: bool,
    needs_premium: bool,
    needs_identities: bool,
    needs_clock: bool,
    needs_reciprocity: bool,
    /// Each rule's escalation tag (from its id), by rule index.
    tags: Box<[u64]>,
}

impl RuleSet {
    /// The rule set without a rule file: the allowlist exempts, the
    /// blocklist blocks and the flaglist flags, with the policy's scores
    /// (which are also the thresholds) and sides.
    pub fn builtin(policy: &ListPolicy, plan: &NumberingPlan) -> RuleSet {
        let thresholds = Thresholds {
            flag: policy.flag_score.min(policy.block_score),
            redirect: None,
            block: policy.block_score,
            cap: policy.block_score.saturating_add(policy.flag_score),
            redirect_uri: None,
        };
        RuleSet::assemble(
            builtin_rules(policy, true, true, true),
            plan,
            thresholds,
            OutcomePolicy::default(),
            Vec::new(),
            "built-in".into(),
        )
    }

    /// Works out what the state update needs and builds the set.
    fn assemble(
        rules: Vec<Rule>,
        plan: &NumberingPlan,
        thresholds: Thresholds,
        outcomes: OutcomePolicy,
        overrides: Vec<Override>,
        source: Box<str>,
    ) -> RuleSet {
        let mut windows = [0u32; VELOCITY_SLOTS];
        let mut fan_out_window = None;
        for r in &rules {
            match r.kind {
                Kind::Velocity { window_s, slot, .. } => windows[usize::from(slot)] = window_s,
                Kind::FanOut { window_s, .. } => fan_out_window = Some(window_s),
                _ => {}
            }
        }
        let has = |f: fn(&Kind) -> bool| rules.iter().any(|r| f(&r.kind));
        let needs_run = has(|k| matches!(k, Kind::Sequential { .. }));
        let needs_state = has(|k| {
            matches!(
                k,
                Kind::Velocity { .. }
                    | Kind::FanOut { .. }
                    | Kind::Sequential { .. }
                    | Kind::Wangiri { .. }
                    | Kind::ShortCalls { .. }
                    | Kind::Concurrent { .. }
            )
        });
        let needs_premium = has(|k| {
            matches!(
                k,
                Kind::List {
                    list: ListId::Premium,
                    ..
                } | Kind::DestinationVelocity { .. }
            )
        });
        let needs_identities = has(|k| {
            matches!(
                k,
                Kind::CliMismatch
                    | Kind::InvalidCaller
                    | Kind::DomesticOnInternational
                    | Kind::ProtectedCaller
            )
        });
        let needs_reciprocity = has(|k| {
            matches!(
                k,
                Kind::FanOut {
                    max_called_back: Some(_),
                    ..
                }
            )
        });
        let needs_clock = needs_state
            || has(|k| matches!(k, Kind::DestinationVelocity { .. }))
            || rules
                .iter()
                .any(|r| r.scope.hours != 0 || r.scope.weekdays != 0 || r.escalate.is_some());
        let tags = rules.iter().map(|r| score::rule_tag(&r.id)).collect();
        RuleSet {
            rules,
            plan: plan.clone(),
            thresholds,
            outcomes,
            overrides,
            source,
            text: None,
            windows,
            fan_out_window,
            needs_run,
            needs_state,
            needs_premium,
            needs_identities,
            needs_clock,
            needs_reciprocity,
            tags,
        }
    }

    /// The window lengths behaviour state counts over for this set: what
    /// [`State::export`] labels counts with and [`State::merge`] places
    /// them by.
    pub fn windows(&self) -> Windows {
        Windows {
            velocity: self.windows,
            fan_out: self.fan_out_window.unwrap_or(0),
            outcomes: self.outcomes.window_s,
        }
    }

    /// True when some rule reads more than the A-number: From and PAI
    /// apart, or whether a caller identity was claimed at all. When false,
    /// the engine decodes only the header the A-number comes from.
    pub fn needs_identities(&self) -> bool {
        self.needs_identities
    }

    /// True when some rule reads the time (behaviour state, time-of-day
    /// scopes). When false, the engine does not read a clock per call.
    pub fn needs_clock(&self) -> bool {
        self.needs_clock
    }

    /// True when the set is the built-in list rules alone (no rule file).
    pub fn is_builtin(&self) -> bool {
        self.rules.iter().all(|r| r.builtin)
    }

    /// True when some rule reads call outcomes (Wangiri, short calls,
    /// concurrency), so they are worth learning.
    pub fn uses_outcomes(&self) -> bool {
        self.rules.iter().any(|r| {
            matches!(
                r.kind,
                Kind::Wangiri { .. } | Kind::ShortCalls { .. } | Kind::Concurrent { .. }
            )
        })
    }
}

/// The built-in list rules, in scoring order: the allowlist, then the
/// blocklist, the National Bank's feed (scored as the blocklist) and the
/// flaglist, each unless a rule file replaces it.
fn builtin_rules(policy: &ListPolicy, block: bool, nb_feed: bool, flag: bool) -> Vec<Rule> {
    let rule = |list: ListId, score| Rule {
        id: list.as_str().into(),
        kind: Kind::List {
            list,
            sides: policy.sides,
        },
        score,
        mode: Mode::Enforce,
        scope: Scope::default(),
        escalate: None,
        builtin: true,
    };
    let mut v = vec![rule(ListId::Allow, 0)];
    if block {
        v.push(rule(ListId::Block, policy.block_score));
    }
    if nb_feed {
        v.push(rule(ListId::NbFeed, policy.block_score));
    }
    if flag {
        v.push(rule(ListId::Flag, policy.flag_score));
    }
    v
}

#[cfg(test)]
mod tests;
