//! The rule file format: TOML parsed with serde, then checked rule by rule
//! so that a file that parses can be swapped in whole. Errors name the
//! file, line and column.
//!
//! The file's rules join the built-in list rules ([`RuleSet::builtin`]). A
//! file rule `kind = "list"` on the blocklist or flaglist replaces that
//! list's built-in rule, and [`RuleSet::overrides`] records it. A file whose
//! thresholds would make a built-in list rule miss its decision (a
//! blocklisted number only flagged, say) is refused: a rule file never
//! silently switches the lists off.

use serde::Deserialize;

use super::error::FileProblem;
use super::*;
use crate::toml_pos::{error_at, line_col};

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
    redirect_uri: Option<toml::Spanned<String>>,
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
    list: Option<ListId>,
    #[serde(default)]
    side: Option<String>,
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
    max_called_back: Option<f32>,
    #[serde(default)]
    escalate: Option<EscalateSpec>,
    /// No longer rule keys: the numbering plan decides what is domestic
    /// and allocated. Read only to say so.
    #[serde(default)]
    allocated: Option<toml::Value>,
    #[serde(default)]
    ranges: Option<toml::Value>,
    #[serde(default)]
    scope: Option<ScopeSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EscalateSpec {
    after: u32,
    within_s: u32,
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

const RESERVED: [ListId; 4] = [ListId::Allow, ListId::Block, ListId::NbFeed, ListId::Flag];

impl RuleSet {
    /// Parses and checks rule file text, and joins its rules to the
    /// built-in list rules `policy` describes. `name` labels errors.
    pub fn from_toml_str(
        text: &str,
        name: &str,
        plan: &NumberingPlan,
        policy: &ListPolicy,
    ) -> Result<RuleSet, RuleError> {
        let file_err = |problem| RuleError::File {
            file: name.to_string(),
            problem,
        };
        let spec: FileSpec = toml::from_str(text).map_err(|e| {
            let (line, col) = error_at(text, &e);
            RuleError::Syntax {
                file: name.to_string(),
                line,
                col,
                message: e.message().to_string(),
            }
        })?;
        let t = &spec.thresholds;
        let cap = t.cap.unwrap_or(t.block.saturating_mul(2).max(100));
        if !(t.flag <= t.block && t.redirect.is_none_or(|r| t.flag <= r && r <= t.block)) {
            return Err(file_err(FileProblem::ThresholdOrder));
        }
        if t.redirect.is_some() && t.redirect_uri.is_none() {
            return Err(file_err(FileProblem::RedirectNeedsUri));
        }
        if let Some(uri) = &t.redirect_uri {
            if let Err(why) = check_redirect_uri(uri.get_ref()) {
                let (line, col) = crate::toml_pos::line_col(text, uri.span().start);
                return Err(RuleError::Syntax {
                    file: name.to_string(),
                    line,
                    col,
                    message: why,
                });
            }
        }
        let thresholds = Thresholds {
            flag: t.flag,
            redirect: t.redirect,
            block: t.block,
            cap,
            redirect_uri: t.redirect_uri.as_ref().map(|u| u.get_ref().as_str().into()),
        };
        let outcomes = spec
            .outcomes
            .map_or_else(OutcomePolicy::default, |o| OutcomePolicy {
                window_s: o.window_s,
                short_ring_ms: o.short_ring_ms,
                short_talk_ms: o.short_talk_ms,
            });
        let mut rules: Vec<Rule> = Vec::new();
        let mut slots = 0u8;
        let mut ids = std::collections::HashSet::new();
        for spanned in spec.rule {
            let (line, col) = line_col(text, spanned.span().start);
            let r = spanned.into_inner();
            let err = |problem| RuleError::Rule {
                file: name.to_string(),
                line,
                col,
                id: r.id.clone(),
                problem,
            };
            if r.id.is_empty()
                || !r
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(err(RuleProblem::BadId));
            }
            if !ids.insert(r.id.clone()) {
                return Err(err(RuleProblem::DuplicateId));
            }
            let need = |v: Option<u32>, key: &'static str| {
                v.ok_or_else(|| {
                    err(RuleProblem::Needs {
                        kind: r.kind.clone(),
                        key,
                    })
                })
            };
            let window = |v: Option<u32>| -> Result<u32, RuleError> {
                match v {
                    Some(0) => Err(err(RuleProblem::ZeroWindow)),
                    v => need(v, "window_s"),
                }
            };
            let ratio = |v: Option<f32>| -> Result<f32, RuleError> {
                match v {
                    Some(x) if (0.0..=1.0).contains(&x) => Ok(x),
                    Some(_) => Err(err(RuleProblem::RatioRange)),
                    None => Err(err(RuleProblem::Needs {
                        kind: r.kind.clone(),
                        key: "ratio",
                    })),
                }
            };
            for (key, set) in [
                ("ranges", r.ranges.is_some()),
                ("allocated", r.allocated.is_some()),
            ] {
                if set {
                    return Err(err(RuleProblem::MovedToPlan(key)));
                }
            }
            let kind = match r.kind.as_str() {
                "list" => {
                    let list = match r.list {
                        None => {
                            return Err(err(RuleProblem::Needs {
                                kind: r.kind.clone(),
                                key: "list = \"blocklist\" | \"flaglist\" | \"premium\" | ...",
                            }))
                        }
                        Some(ListId::Allow) => return Err(err(RuleProblem::AllowlistNotScored)),
                        Some(l) => l,
                    };
                    let sides = match (r.side.as_deref(), list) {
                        (_, ListId::Premium) => Sides {
                            caller: false,
                            callee: true,
                        },
                        (None, _) => policy.sides,
                        (Some(s), _) => Sides::from_name(s)
                            .ok_or_else(|| err(RuleProblem::BadSide(s.into())))?,
                    };
                    Kind::List { list, sides }
                }
                "domestic_on_international" => Kind::DomesticOnInternational,
                "protected_caller" => Kind::ProtectedCaller,
                "cli_mismatch" => Kind::CliMismatch,
                "invalid_caller" => Kind::InvalidCaller,
                "velocity" => {
                    if usize::from(slots) >= VELOCITY_SLOTS {
                        return Err(err(RuleProblem::TooManyVelocity(VELOCITY_SLOTS)));
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
                        return Err(err(RuleProblem::TooManyFanOut));
                    }
                    let max_called_back = match r.max_called_back {
                        None => None,
                        Some(x) if (0.0..=1.0).contains(&x) => Some((x * 1000.0).round() as u32),
                        Some(_) => return Err(err(RuleProblem::RatioRange)),
                    };
                    Kind::FanOut {
                        window_s: window(r.window_s)?,
                        max: need(r.max, "max")?,
                        max_called_back,
                    }
                }
                "sequential" => {
                    let run = need(r.run, "run")?;
                    if run < 2 {
                        return Err(err(RuleProblem::RunTooShort));
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
                other => return Err(err(RuleProblem::UnknownKind(other.into()))),
            };
            // The built-in list rules' ids are theirs, unless the rule
            // replaces that very list.
            if let Some(reserved) = RESERVED.iter().find(|l| l.as_str() == r.id) {
                let replaces_it = matches!(&kind, Kind::List { list, .. } if list == reserved);
                if !replaces_it {
                    return Err(err(RuleProblem::ReservedId(reserved.as_str())));
                }
            }
            if r.max_called_back.is_some() && !matches!(kind, Kind::FanOut { .. }) {
                return Err(err(RuleProblem::NotForKind {
                    key: "max_called_back",
                    kind: r.kind.clone(),
                }));
            }
            let escalate = match r.escalate {
                None => None,
                Some(e) if e.after >= 1 && e.within_s > 0 => Some(Escalate {
                    after: e.after,
                    within_s: e.within_s,
                }),
                Some(_) => return Err(err(RuleProblem::BadEscalate)),
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
                escalate,
                builtin: false,
            });
        }
        // Which built-in list rules the file replaces.
        let replacing = |name: ListId| {
            rules
                .iter()
                .filter(move |r| matches!(r.kind, Kind::List { list, .. } if list == name))
        };
        let mut overrides = Vec::new();
        for (list, builtin_score) in [
            (ListId::Block, policy.block_score),
            (ListId::NbFeed, policy.block_score),
            (ListId::Flag, policy.flag_score),
        ] {
            for r in replacing(list) {
                overrides.push(Override {
                    list,
                    builtin_score,
                    by: r.id.clone(),
                    score: r.score,
                });
            }
        }
        let keep_block = replacing(ListId::Block).next().is_none();
        let keep_nb = replacing(ListId::NbFeed).next().is_none();
        let keep_flag = replacing(ListId::Flag).next().is_none();
        // A built-in list rule must still do what the config says.
        let decide = |score: u32| thresholds.decide(score.min(thresholds.cap));
        if (keep_block || keep_nb) && decide(policy.block_score) != Decision::Block {
            return Err(file_err(FileProblem::ListUndercut {
                list: if keep_block { "blocklist" } else { "nb_feed" },
                score: policy.block_score,
                consequence: if keep_block {
                    "a blocklisted number would not be blocked"
                } else {
                    "a number on the National Bank's feed would not be blocked"
                },
            }));
        }
        if keep_flag {
            let consequence = match decide(policy.flag_score) {
                Decision::Allow => Some("a flaglisted number would be allowed unmarked"),
                Decision::Block => Some("a flaglisted number would be blocked"),
                Decision::Flag | Decision::Redirect => None,
            };
            if let Some(consequence) = consequence {
                return Err(file_err(FileProblem::ListUndercut {
                    list: "flaglist",
                    score: policy.flag_score,
                    consequence,
                }));
            }
        }
        let mut all = builtin_rules(policy, keep_block, keep_nb, keep_flag);
        all.extend(rules);
        if all.len() > usize::from(u16::MAX) {
            return Err(file_err(FileProblem::TooManyRules));
        }
        let mut set = RuleSet::assemble(all, plan, thresholds, outcomes, overrides, name.into());
        set.text = Some(text.into());
        Ok(set)
    }
}

fn scope(s: ScopeSpec, plan: &NumberingPlan) -> Result<Scope, RuleProblem> {
    let mut out = Scope::default();
    for t in &s.trunks {
        out.trunks
            .push(TrunkKind::from_name(t).ok_or_else(|| RuleProblem::BadTrunk(t.clone()))?);
    }
    out.caller_prefixes = PrefixSet::new(prefixes(&s.caller_prefixes, plan)?);
    out.callee_prefixes = PrefixSet::new(prefixes(&s.callee_prefixes, plan)?);
    for h in &s.hours {
        let (from, to) = h
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)))
            .filter(|(a, b)| *a < 24 && *b <= 24 && a != b)
            .ok_or_else(|| RuleProblem::BadHours(h.clone()))?;
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
            .ok_or_else(|| RuleProblem::BadWeekday(d.clone()))?;
        out.weekdays |= 1 << i;
    }
    Ok(out)
}

fn prefixes(list: &[String], plan: &NumberingPlan) -> Result<Vec<Prefix>, RuleProblem> {
    list.iter()
        .map(|p| {
            plan.normalize_prefix(p.trim_end_matches('*').as_bytes())
                .ok_or_else(|| RuleProblem::BadPrefix(p.clone()))
        })
        .collect()
}

/// A redirect target is written into a `Contact: <...>` header as it is:
/// it must be a SIP, SIPS or tel URI of visible ASCII with nothing that
/// could end the header or the angle brackets (a CR/LF would inject
/// headers, and rule files will arrive over the network).
fn check_redirect_uri(uri: &str) -> Result<(), String> {
    let scheme_ok = ["sip:", "sips:", "tel:"]
        .iter()
        .any(|s| uri.len() > s.len() && uri[..s.len()].eq_ignore_ascii_case(s));
    if !scheme_ok {
        return Err(format!(
            "redirect_uri {uri:?} must be a sip:, sips: or tel: URI"
        ));
    }
    if uri.len() > 256 {
        return Err("redirect_uri must be at most 256 characters".into());
    }
    if let Some(c) = uri
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '<' | '>' | '"' | '\\'))
    {
        return Err(format!(
            "redirect_uri {uri:?} holds {c:?}: it is written into a Contact header, so no spaces, control characters, quotes, backslashes or angle brackets"
        ));
    }
    Ok(())
}
