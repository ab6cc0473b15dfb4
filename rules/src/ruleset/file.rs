//! The rule file format: TOML parsed with serde, then checked rule by rule
//! so that a file that parses can be swapped in whole. Errors name the
//! file, line and column.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSpec {
    pub(super) thresholds: ThresholdSpec,
    #[serde(default)]
    pub(super) outcomes: Option<OutcomeSpec>,
    #[serde(default)]
    pub(super) rule: Vec<toml::Spanned<RuleSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ThresholdSpec {
    pub(super) flag: u32,
    #[serde(default)]
    pub(super) redirect: Option<u32>,
    pub(super) block: u32,
    #[serde(default)]
    pub(super) cap: Option<u32>,
    #[serde(default)]
    pub(super) redirect_uri: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OutcomeSpec {
    #[serde(default = "hour")]
    pub(super) window_s: u32,
    #[serde(default = "three_s")]
    pub(super) short_ring_ms: u32,
    #[serde(default = "ten_s")]
    pub(super) short_talk_ms: u32,
}

pub(super) fn hour() -> u32 {
    3600
}

pub(super) fn three_s() -> u32 {
    3000
}

pub(super) fn ten_s() -> u32 {
    10_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleSpec {
    pub(super) id: String,
    pub(super) kind: String,
    pub(super) score: u32,
    #[serde(default = "enforce")]
    pub(super) mode: Mode,
    #[serde(default)]
    pub(super) list: Option<ListName>,
    #[serde(default)]
    pub(super) window_s: Option<u32>,
    #[serde(default)]
    pub(super) max: Option<u32>,
    #[serde(default)]
    pub(super) run: Option<u32>,
    #[serde(default)]
    pub(super) min_calls: Option<u32>,
    #[serde(default)]
    pub(super) ratio: Option<f32>,
    #[serde(default)]
    pub(super) allocated: Vec<String>,
    #[serde(default)]
    pub(super) ranges: Vec<String>,
    #[serde(default)]
    pub(super) scope: Option<ScopeSpec>,
}

pub(super) fn enforce() -> Mode {
    Mode::Enforce
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ScopeSpec {
    #[serde(default)]
    pub(super) trunks: Vec<String>,
    #[serde(default)]
    pub(super) caller_prefixes: Vec<String>,
    #[serde(default)]
    pub(super) callee_prefixes: Vec<String>,
    /// "HH-HH" ranges, end exclusive, may wrap midnight: ["22-06"].
    #[serde(default)]
    pub(super) hours: Vec<String>,
    /// "mon".."sun".
    #[serde(default)]
    pub(super) weekdays: Vec<String>,
}

pub(super) fn line_col(text: &str, at: usize) -> (usize, usize) {
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
}

pub(super) fn scope(s: ScopeSpec, plan: &NumberingPlan) -> Result<Scope, String> {
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

pub(super) fn prefixes(list: &[String], plan: &NumberingPlan) -> Result<Vec<Prefix>, String> {
    list.iter()
        .map(|p| {
            plan.normalize_prefix(p.trim_end_matches('*').as_bytes())
                .ok_or_else(|| format!("{p:?} is not a number prefix"))
        })
        .collect()
}
