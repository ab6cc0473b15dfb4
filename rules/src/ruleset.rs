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

use std::fmt;

use serde::Deserialize;

use crate::list::NumberList;
use crate::number::{Number, NumberingPlan, Prefix};
use crate::state::{CallTime, OutcomePolicy, Tracker, VELOCITY_SLOTS};
use crate::verdict::TrunkKind;

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

/// When and to what a rule applies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scope {
    trunks: Vec<TrunkKind>,
    caller_prefixes: PrefixSet,
    callee_prefixes: PrefixSet,
    /// Bit h set = applies during hour h.
    hours: u32,
    /// Bit d set = applies on weekday d (0 = Monday).
    weekdays: u8,
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

// ---- file format ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    thresholds: ThresholdSpec,
    #[serde(default)]
    outcomes: Option<OutcomeSpec>,
    #[serde(default)]
    rule: Vec<toml::Spanned<RuleSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdSpec {
    flag: u32,
    #[serde(default)]
    redirect: Option<u32>,
    block: u32,
    #[serde(default)]
    cap: Option<u32>,
    #[serde(default)]
    redirect_uri: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutcomeSpec {
    #[serde(default = "hour")]
    window_s: u32,
    #[serde(default = "three_s")]
    short_ring_ms: u32,
    #[serde(default = "ten_s")]
    short_talk_ms: u32,
}

fn hour() -> u32 {
    3600
}
fn three_s() -> u32 {
    3000
}
fn ten_s() -> u32 {
    10_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    id: String,
    kind: String,
    score: u32,
    #[serde(default = "enforce")]
    mode: Mode,
    #[serde(default)]
    list: Option<ListName>,
    #[serde(default)]
    window_s: Option<u32>,
    #[serde(default)]
    max: Option<u32>,
    #[serde(default)]
    run: Option<u32>,
    #[serde(default)]
    min_calls: Option<u32>,
    #[serde(default)]
    ratio: Option<f32>,
    #[serde(default)]
    allocated: Vec<String>,
    #[serde(default)]
    ranges: Vec<String>,
    #[serde(default)]
    scope: Option<ScopeSpec>,
}

fn enforce() -> Mode {
    Mode::Enforce
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ScopeSpec {
    #[serde(default)]
    trunks: Vec<String>,
    #[serde(default)]
    caller_prefixes: Vec<String>,
    #[serde(default)]
    callee_prefixes: Vec<String>,
    /// "HH-HH" ranges, end exclusive, may wrap midnight: ["22-06"].
    #[serde(default)]
    hours: Vec<String>,
    /// "mon".."sun".
    #[serde(default)]
    weekdays: Vec<String>,
}

fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

impl RuleSet {
    /// Parses and checks rule file text; `name` prefixes errors.
    pub fn from_toml_str(
        text: &str,
        name: &str,
        plan: &NumberingPlan,
    ) -> Result<RuleSet, RuleError> {
        let spec: FileSpec = toml::from_str(text).map_err(|e| {
            let (l, c) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            RuleError(format!("{name}:{l}:{c}: {}", e.message()))
        })?;
        let t = &spec.thresholds;
        let cap = t.cap.unwrap_or(t.block.saturating_mul(2).max(100));
        if !(t.flag <= t.block && t.redirect.is_none_or(|r| t.flag <= r && r <= t.block)) {
            return Err(RuleError(format!(
                "{name}: [thresholds] must satisfy flag <= redirect <= block"
            )));
        }
        if t.redirect.is_some() && t.redirect_uri.is_none() {
            return Err(RuleError(format!(
                "{name}: [thresholds] redirect needs redirect_uri"
            )));
        }
        let thresholds = Thresholds {
            flag: t.flag,
            redirect: t.redirect,
            block: t.block,
            cap,
            redirect_uri: t.redirect_uri.as_deref().map(Into::into),
        };
        let outcomes = spec
            .outcomes
            .map_or_else(OutcomePolicy::default, |o| OutcomePolicy {
                window_s: o.window_s,
                short_ring_ms: o.short_ring_ms,
                short_talk_ms: o.short_talk_ms,
            });
        let mut rules = Vec::new();
        let mut slots = 0u8;
        let mut ids = std::collections::HashSet::new();
        for spanned in spec.rule {
            let (l, c) = line_col(text, spanned.span().start);
            let at = format!("{name}:{l}:{c}");
            let r = spanned.into_inner();
            let err = |why: String| RuleError(format!("{at}: rule {:?}: {why}", r.id));
            if r.id.is_empty()
                || !r
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(err("id must be letters, digits, '_' or '-'".into()));
            }
            if !ids.insert(r.id.clone()) {
                return Err(err("id is used twice".into()));
            }
            let need = |v: Option<u32>, what: &str| {
                v.ok_or_else(|| err(format!("kind {} needs {what}", r.kind)))
            };
            let window = |v: Option<u32>| -> Result<u32, RuleError> {
                match v {
                    Some(w) if w > 0 => Ok(w),
                    Some(_) => Err(err("window_s must be above 0".into())),
                    None => Err(err(format!("kind {} needs window_s", r.kind))),
                }
            };
            let ratio = |v: Option<f32>| -> Result<f32, RuleError> {
                match v {
                    Some(x) if (0.0..=1.0).contains(&x) => Ok(x),
                    Some(_) => Err(err("ratio must be between 0 and 1".into())),
                    None => Err(err(format!("kind {} needs ratio", r.kind))),
                }
            };
            let kind = match r.kind.as_str() {
                "list" => Kind::List {
                    list: r.list.ok_or_else(|| {
                        err(
                            "kind list needs list = \"blocklist\" | \"flaglist\" | \"premium\""
                                .into(),
                        )
                    })?,
                },
                "domestic_on_international" => Kind::DomesticOnInternational {
                    ranges: PrefixSet::new(prefixes(&r.ranges, plan).map_err(err)?),
                },
                "protected_caller" => Kind::ProtectedCaller,
                "cli_mismatch" => Kind::CliMismatch,
                "invalid_caller" => Kind::InvalidCaller {
                    allocated: PrefixSet::new(prefixes(&r.allocated, plan).map_err(err)?),
                },
                "velocity" => {
                    if usize::from(slots) >= VELOCITY_SLOTS {
                        return Err(err(format!(
                            "at most {VELOCITY_SLOTS} velocity rules per file"
                        )));
                    }
                    slots += 1;
                    Kind::Velocity {
                        window_s: window(r.window_s)?,
                        max: need(r.max, "max")?,
                        slot: slots - 1,
                    }
                }
                "fan_out" => {
                    if rules
                        .iter()
                        .any(|x: &Rule| matches!(x.kind, Kind::FanOut { .. }))
                    {
                        return Err(err("at most one fan_out rule per file (one distinct-callee window per number)".into()));
                    }
                    Kind::FanOut {
                        window_s: window(r.window_s)?,
                        max: need(r.max, "max")?,
                    }
                }
                "sequential" => {
                    let run = need(r.run, "run")?;
                    if run < 2 {
                        return Err(err("run must be at least 2".into()));
                    }
                    Kind::Sequential { run }
                }
                "wangiri" => Kind::Wangiri {
                    min_calls: need(r.min_calls, "min_calls")?,
                    ratio: ratio(r.ratio)?,
                },
                "short_calls" => Kind::ShortCalls {
                    min_calls: need(r.min_calls, "min_calls")?,
                    ratio: ratio(r.ratio)?,
                },
                "concurrent" => Kind::Concurrent {
                    max: need(r.max, "max")?,
                },
                "destination_velocity" => Kind::DestinationVelocity {
                    window_s: window(r.window_s)?,
                    max: need(r.max, "max")?,
                },
                other => return Err(err(format!("unknown kind {other:?}"))),
            };
            let scope = match r.scope {
                None => Scope::default(),
                Some(s) => scope(s, plan).map_err(err)?,
            };
            rules.push(Rule {
                id: r.id.into(),
                kind,
                score: r.score,
                mode: r.mode,
                scope,
            });
        }
        if rules.len() > usize::from(u16::MAX) {
            return Err(RuleError(format!("{name}: too many rules")));
        }
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
                    list: ListName::Premium
                } | Kind::DestinationVelocity { .. }
            )
        });
        Ok(RuleSet {
            rules,
            plan: plan.clone(),
            thresholds,
            outcomes,
            windows,
            fan_out_window,
            needs_run,
            needs_state,
            needs_premium,
        })
    }

    /// Scores one call, updating the caller's (and destination's) state.
    pub fn score(
        &self,
        call: &CallInput,
        lists: &RuleLists<'_>,
        callers: &Tracker,
        destinations: &Tracker,
    ) -> Scored {
        let mut out = Scored {
            decision: Decision::Allow,
            score: 0,
            shadow_decision: Decision::Allow,
            allowlisted: false,
            fired: [Fired {
                rule: 0,
                value: 0,
                threshold: 0,
                shadow: false,
            }; MAX_FIRED],
            n: 0,
        };
        let on = |l: Option<&NumberList>, n: Option<Number>| matches!((l, n), (Some(l), Some(n)) if l.lookup(n).is_some());
        if on(lists.allow, call.a) || on(lists.allow, call.b) {
            out.allowlisted = true;
            return out;
        }
        let now = call.time.secs;
        let a = call.a.map(Number::raw);
        let b = call.b;
        // The caller's state is read and updated once, under one lock.
        let state = a.filter(|_| self.needs_state).and_then(|a| {
            callers.with(a, now, |s| {
                let mut vel = [0u32; VELOCITY_SLOTS];
                for (slot, &w) in self.windows.iter().enumerate() {
                    if w > 0 {
                        vel[slot] = s.velocity[slot].add(now, w, 1);
                    }
                }
                let (mut fan, mut run) = (0, 0);
                if let Some(b) = b {
                    if let Some(w) = self.fan_out_window {
                        fan = s.fan_out(now, w, b.raw());
                    }
                    if self.needs_run {
                        run = s.sequential(b.value());
                    }
                }
                (
                    vel,
                    fan,
                    run,
                    s.rings(),
                    s.answers(),
                    u32::from(s.concurrent),
                )
            })
        });
        let premium = match (lists.premium, b) {
            (Some(l), Some(bn)) if self.needs_premium => l.lookup(bn).map(|m| (m, bn)),
            _ => None,
        };
        // List answers are looked up at most once per call, however many
        // rules ask.
        let (mut blocked, mut flagged, mut protected) = (None, None, None);
        let (mut a_leads, mut b_leads) = (call.a.map(Leads::new), call.b.map(Leads::new));
        let (mut score, mut shadow_score) = (0u32, 0u32);
        for (i, r) in self.rules.iter().enumerate() {
            if !r.scope.applies(call, &mut a_leads, &mut b_leads) {
                continue;
            }
            let hit: Option<(u32, u32)> = match &r.kind {
                Kind::List { list } => {
                    let hit = match list {
                        ListName::Blocklist => *blocked.get_or_insert_with(|| {
                            on(lists.block, call.a) || on(lists.block, call.b)
                        }),
                        ListName::Flaglist => *flagged.get_or_insert_with(|| {
                            on(lists.flag, call.a) || on(lists.flag, call.b)
                        }),
                        ListName::Premium => premium.is_some(),
                    };
                    hit.then_some((1, 1))
                }
                Kind::DomesticOnInternational { ranges } => (call.trunk
                    == Some(TrunkKind::International)
                    && call.a.is_some_and(|n| {
                        n.is_e164()
                            && if ranges.is_empty() {
                                self.plan.is_domestic(n)
                            } else {
                                a_leads.as_mut().is_some_and(|l| ranges.contains_leads(l))
                            }
                    }))
                .then_some((1, 1)),
                Kind::ProtectedCaller => protected
                    .get_or_insert_with(|| on(lists.protected, call.a))
                    .then_some((1, 1)),
                Kind::CliMismatch => match (call.from, call.pai) {
                    (Some(f), Some(p)) if f != p => Some((1, 1)),
                    _ => None,
                },
                Kind::InvalidCaller { allocated } => match call.a {
                    None if call.a_present => Some((1, 1)),
                    Some(n)
                        if !allocated.is_empty()
                            && n.is_e164()
                            && self.plan.is_domestic(n)
                            && !a_leads
                                .as_mut()
                                .is_some_and(|l| allocated.contains_leads(l)) =>
                    {
                        Some((1, 1))
                    }
                    _ => None,
                },
                Kind::Velocity { max, slot, .. } => state.and_then(|s| {
                    let v = s.0[usize::from(*slot)];
                    (v > *max).then_some((v, *max))
                }),
                Kind::FanOut { max, .. } => state.and_then(|s| (s.1 > *max).then_some((s.1, *max))),
                Kind::Sequential { run } => {
                    state.and_then(|s| (s.2 >= *run).then_some((s.2, *run)))
                }
                Kind::Wangiri { min_calls, ratio } => {
                    state.and_then(|s| over_ratio(s.3, *min_calls, *ratio))
                }
                Kind::ShortCalls { min_calls, ratio } => {
                    state.and_then(|s| over_ratio(s.4, *min_calls, *ratio))
                }
                Kind::Concurrent { max } => state.and_then(|s| (s.5 > *max).then_some((s.5, *max))),
                Kind::DestinationVelocity { window_s, max } => premium.and_then(|(_, bn)| {
                    // Calls to this destination: keyed by the B-number's
                    // leading digits down to the premium prefix matched.
                    let key = destination_key(bn, lists.premium);
                    let v =
                        destinations.with(key, now, |s| s.velocity[0].add(now, *window_s, 1))?;
                    (v > *max).then_some((v, *max))
                }),
            };
            let Some((value, threshold)) = hit else {
                continue;
            };
            let shadow = r.mode == Mode::Shadow;
            if shadow {
                shadow_score = shadow_score.saturating_add(r.score);
            } else {
                score = score.saturating_add(r.score);
            }
            if usize::from(out.n) < MAX_FIRED {
                out.fired[usize::from(out.n)] = Fired {
                    rule: i as u16,
                    value,
                    threshold,
                    shadow,
                };
                out.n += 1;
            }
        }
        let t = &self.thresholds;
        out.score = score.min(t.cap);
        out.decision = t.decide(out.score);
        out.shadow_decision = t.decide(score.saturating_add(shadow_score).min(t.cap));
        out
    }

    /// Writes the explanation of `s`, e.g.
    /// `velocity_1m: 37 calls > 20; fan_out_1h: 31 numbers > 30`.
    pub fn explain(&self, s: &Scored, out: &mut impl fmt::Write) -> fmt::Result {
        for (k, f) in s.fired().iter().enumerate() {
            let Some(r) = self.rules.get(usize::from(f.rule)) else {
                continue;
            };
            if k > 0 {
                out.write_str("; ")?;
            }
            out.write_str(&r.id)?;
            out.write_str(": ")?;
            match r.kind {
                Kind::Velocity { .. }
                | Kind::Concurrent { .. }
                | Kind::DestinationVelocity { .. } => {
                    write!(out, "{} calls > {}", f.value, f.threshold)?
                }
                Kind::FanOut { .. } => write!(out, "{} numbers > {}", f.value, f.threshold)?,
                Kind::Sequential { .. } => write!(out, "{} in a row >= {}", f.value, f.threshold)?,
                Kind::Wangiri { .. } | Kind::ShortCalls { .. } => write!(
                    out,
                    "{:.1}% >= {:.1}%",
                    f64::from(f.value) / 10.0,
                    f64::from(f.threshold) / 10.0
                )?,
                _ => out.write_str("matched")?,
            }
            if f.shadow {
                out.write_str(" (shadow)")?;
            }
        }
        Ok(())
    }
}

impl Thresholds {
    fn decide(&self, score: u32) -> Decision {
        if score >= self.block {
            Decision::Block
        } else if self.redirect.is_some_and(|r| score >= r) {
            Decision::Redirect
        } else if score >= self.flag && score > 0 {
            Decision::Flag
        } else {
            Decision::Allow
        }
    }
}

/// Fires when at least `min` events were seen and the short share (per
/// mille) is at least `ratio`.
fn over_ratio((total, short): (u32, u32), min: u32, ratio: f32) -> Option<(u32, u32)> {
    if total == 0 || total < min {
        return None;
    }
    let v = short * 1000 / total;
    let t = (ratio * 1000.0).round() as u32;
    (v >= t).then_some((v, t))
}

fn destination_key(b: Number, premium: Option<&NumberList>) -> u64 {
    // The premium list's longest matching prefix identifies the
    // destination; fall back to the number itself.
    match premium.and_then(|l| l.lookup(b)) {
        Some(m) => match m.kind {
            crate::list::MatchKind::Prefix(len) => {
                b.leading(usize::from(len)) | (u64::from(len) << 56)
            }
            crate::list::MatchKind::Exact => b.raw(),
        },
        None => b.raw(),
    }
}

fn scope(s: ScopeSpec, plan: &NumberingPlan) -> Result<Scope, String> {
    let mut out = Scope::default();
    for t in &s.trunks {
        out.trunks.push(TrunkKind::from_name(t).ok_or_else(|| {
            format!("scope trunk {t:?} is not international, domestic, mobile or other")
        })?);
    }
    out.caller_prefixes = PrefixSet::new(prefixes(&s.caller_prefixes, plan)?);
    out.callee_prefixes = PrefixSet::new(prefixes(&s.callee_prefixes, plan)?);
    for h in &s.hours {
        let (from, to) = h
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)))
            .filter(|(a, b)| *a < 24 && *b <= 24 && a != b)
            .ok_or_else(|| format!("scope hours {h:?} must be \"HH-HH\" (0-24, end exclusive)"))?;
        // "22-06" wraps midnight: 22..24 and 0..6.
        let hours = if from < to { from..to } else { from..24 };
        for x in hours.chain(if from < to { 0..0 } else { 0..to }) {
            out.hours |= 1 << x;
        }
    }
    for d in &s.weekdays {
        let i = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            .iter()
            .position(|x| x.eq_ignore_ascii_case(d))
            .ok_or_else(|| format!("scope weekday {d:?} must be mon..sun"))?;
        out.weekdays |= 1 << i;
    }
    Ok(out)
}

impl Scope {
    fn applies(&self, c: &CallInput, a: &mut Option<Leads>, b: &mut Option<Leads>) -> bool {
        if !self.trunks.is_empty() && !c.trunk.is_some_and(|t| self.trunks.contains(&t)) {
            return false;
        }
        let any = |ps: &PrefixSet, l: &mut Option<Leads>| {
            ps.is_empty() || l.as_mut().is_some_and(|l| ps.contains_leads(l))
        };
        if !any(&self.caller_prefixes, a) || !any(&self.callee_prefixes, b) {
            return false;
        }
        (self.hours == 0 || self.hours & (1 << c.time.hour.min(23)) != 0)
            && (self.weekdays == 0 || self.weekdays & (1 << c.time.weekday.min(6)) != 0)
    }
}

fn prefixes(list: &[String], plan: &NumberingPlan) -> Result<Vec<Prefix>, String> {
    list.iter()
        .map(|p| {
            plan.normalize_prefix(p.trim_end_matches('*').as_bytes())
                .ok_or_else(|| format!("{p:?} is not a number prefix"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
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
        RuleSet::from_toml_str(&text, "t.toml", &plan()).unwrap_or_else(|e| panic!("{e}"))
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
                allow: list("+77270000001\n"),
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

    fn ids(r: &RuleSet, s: &Scored) -> Vec<String> {
        s.fired()
            .iter()
            .map(|f| r.rules[usize::from(f.rule)].id.to_string())
            .collect()
    }

    #[test]
    fn the_shipped_example_file_is_valid() {
        let text = include_str!("../../deploy/rules/default.toml");
        let r =
            RuleSet::from_toml_str(text, "default.toml", &plan()).unwrap_or_else(|e| panic!("{e}"));
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
        let p = plan();
        let e = |t: &str| RuleSet::from_toml_str(t, "r.toml", &p).unwrap_err().0;
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
        assert!(e(&format!("{head}[[rule]]\nid = \"v\"\nkind = \"list\"\nscore = 1\nlist = \"blocklist\"\nmaxx = 1\n"))
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
        let r = rules("[[rule]]\nid = \"velocity_1m\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 3\nscore = 50\n");
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
        r.explain(&s, &mut text).unwrap();
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
        let r = rules(
            "[[rule]]\nid = \"f\"\nkind = \"fan_out\"\nwindow_s = 3600\nmax = 2\nscore = 60\n",
        );
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
        r.explain(&s, &mut text).unwrap();
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
        r.explain(&s, &mut text).unwrap();
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
        // The allowlist overrides everything.
        let mut c = call("+77270000001", "+77770000001", 1);
        c.pai = n("+77011234568");
        let s = w.score(&r, &c);
        assert!(s.allowlisted && s.fired().is_empty() && s.decision == Decision::Allow);
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
}

/// A set of number prefixes, grouped by length: a membership test costs one
/// `leading` and one binary search per distinct length, however many
/// prefixes there are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixSet {
    by_len: Vec<(u8, Vec<u64>)>,
}

impl PrefixSet {
    fn new(prefixes: Vec<Prefix>) -> PrefixSet {
        let mut by_len: Vec<(u8, Vec<u64>)> = Vec::new();
        for p in prefixes {
            match by_len.iter_mut().find(|(l, _)| *l == p.len) {
                Some((_, v)) => v.push(p.value),
                None => by_len.push((p.len, vec![p.value])),
            }
        }
        for (_, v) in &mut by_len {
            v.sort_unstable();
            v.dedup();
        }
        PrefixSet { by_len }
    }

    /// True when no prefix was given.
    pub fn is_empty(&self) -> bool {
        self.by_len.is_empty()
    }

    /// Whether `n` lies in one of the ranges.
    pub fn contains(&self, n: Number) -> bool {
        self.contains_leads(&mut Leads::new(n))
    }

    /// [`contains`](Self::contains), reusing the leading digits already
    /// worked out for this number (a 64-bit division each).
    fn contains_leads(&self, l: &mut Leads) -> bool {
        l.n.is_e164()
            && self.by_len.iter().any(|(len, v)| {
                l.n.len() >= usize::from(*len) && v.binary_search(&l.get(usize::from(*len))).is_ok()
            })
    }
}

/// A number's leading digits by length, each worked out at most once per
/// call: thirty rules with prefix scopes cost one division per distinct
/// prefix length, not one per rule.
struct Leads {
    n: Number,
    vals: [u64; 16],
    known: u16,
}

impl Leads {
    fn new(n: Number) -> Leads {
        Leads {
            n,
            vals: [0; 16],
            known: 0,
        }
    }

    fn get(&mut self, len: usize) -> u64 {
        if len >= 16 {
            return self.n.leading(len);
        }
        if self.known & (1 << len) == 0 {
            self.vals[len] = self.n.leading(len);
            self.known |= 1 << len;
        }
        self.vals[len]
    }
}
