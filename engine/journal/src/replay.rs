//! The backtest: a window of the journal replayed, in journal order,
//! through a candidate rule set and list versions, with behaviour state
//! rebuilt from the window's start (every call scored again, every
//! outcome applied again, as the node did).
//!
//! Each call is judged under its own version (kept by [`crate::archive`])
//! with the candidate's layers put in place of that version's: the
//! candidate's rules instead of the version's, and each list named on the
//! command line instead of the version's copy of it; every other list is
//! the one the call met. With no candidate layers at all, the replay is
//! the fidelity check: every call must come out as it did live.
//!
//! The report compares each call's replayed verdict with the one kuzet
//! gave live (the journal's): the verdicts that change, by transition and
//! by rule, with example calls; what would be blocked, flagged and
//! redirected, in calls and distinct callers; the sources a change would
//! touch that were allowlisted, high-volume or called back; and for each
//! rule in shadow, what enforcing it alone would have done (its score
//! added to the enforced score; the state it reads is the same either
//! way).
//!
//! Bounded memory: behaviour state is the tracker's fixed table; per
//! caller, one count (a hash map, capped by `max_callers`, beyond which
//! callers are counted but not told apart); callbacks are found with a
//! fixed 16 MiB bitmap of (caller, callee) pairs, which can mistake an
//! unrelated pair for a callback (about 1% at 10 million pairs).

use std::collections::{BTreeMap, HashMap};

use rustc_hash::{FxHashMap, FxHashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use kuzet_rules::ruleset::{CallInput, Decision, RuleSet};
use kuzet_rules::state::{Outcome as CallOutcome, State};
use kuzet_rules::{ListId, ListSet, NumberList};
use serde::{Deserialize, Serialize};

use crate::archive::{with_lists, Loader};
use crate::read::{CallRef, ReadError, Reader, RowRef};
use crate::row::OutcomeKind;
use crate::text::{Safe, Utc};

/// What is replayed in place of what was in force.
#[derive(Clone, Default)]
pub struct Candidate {
    /// The candidate's name for the report (`rules v7`, a file name).
    pub label: String,
    /// Its rules (none: each call's own).
    pub rules: Option<Arc<RuleSet>>,
    /// Lists put in place of each call's own, with their labels
    /// (`blocklist v12`).
    pub lists: Vec<(ListId, Arc<NumberList>, String)>,
}

/// How a backtest runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The window's start, µs.
    pub since_us: i64,
    /// Its end, µs (exclusive).
    pub until_us: i64,
    /// Example calls kept per transition and rule.
    pub examples: usize,
    /// Numbers behaviour state can track (as `[server]
    /// max_tracked_numbers`).
    pub max_numbers: usize,
    /// State's idle time-to-live, s.
    pub idle_ttl_s: u32,
    /// The longest call concurrency counts, s.
    pub max_call_s: u32,
    /// Callers told apart in the report's counts.
    pub max_callers: usize,
    /// A source with at least this many calls a day in the window is
    /// high-volume.
    pub high_volume_per_day: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            since_us: 0,
            until_us: i64::MAX,
            examples: 5,
            max_numbers: 1 << 20,
            idle_ttl_s: 3600,
            max_call_s: 4 * 3600,
            max_callers: 4_000_000,
            high_volume_per_day: 1000,
        }
    }
}

/// Calls and distinct callers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Count {
    /// Calls.
    pub calls: u64,
    /// Distinct callers among them.
    pub callers: u64,
}

/// Calls by decision.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ByDecision {
    /// Allowed.
    pub allow: u64,
    /// Flagged.
    pub flag: u64,
    /// Redirected.
    pub redirect: u64,
    /// Blocked.
    pub block: u64,
}

impl ByDecision {
    fn add(&mut self, d: Decision) {
        *match d {
            Decision::Allow => &mut self.allow,
            Decision::Flag => &mut self.flag,
            Decision::Redirect => &mut self.redirect,
            Decision::Block => &mut self.block,
        } += 1;
    }
}

/// One call, as an example.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Example {
    /// Arrival, µs since the epoch.
    pub ts_us: i64,
    /// The caller (E.164), if any.
    pub caller: String,
    /// The callee.
    pub callee: String,
    /// The trunk.
    pub trunk: String,
    /// Live decision.
    pub before: String,
    /// Replayed decision.
    pub after: String,
    /// Enforced rules that fired live.
    pub rules_before: Vec<String>,
    /// Enforced rules that fired in the replay.
    pub rules_after: Vec<String>,
}

/// Calls whose verdict went from one decision to another.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Transition {
    /// Live decision.
    pub from: String,
    /// Replayed decision.
    pub to: String,
    /// How many.
    pub count: Count,
    /// Some of them.
    pub examples: Vec<Example>,
}

/// One rule's firings, live and replayed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleChange {
    /// The rule's id.
    pub rule: String,
    /// Its mode in the candidate (`enforce`, `shadow`, `absent`).
    pub mode: String,
    /// Calls it fired on (enforced) live.
    pub fired_before: u64,
    /// Calls it fired on (enforced) in the replay.
    pub fired_after: u64,
    /// Calls whose verdict changed and on which it fired only in the
    /// replay.
    pub changed_by: Count,
    /// Some of those.
    pub examples: Vec<Example>,
}

/// What enforcing one shadow rule would have done.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShadowEffect {
    /// The rule's id.
    pub rule: String,
    /// Calls it fired on, in shadow.
    pub fired: u64,
    /// Calls whose verdict enforcing it would change.
    pub would_change: Count,
    /// Their decisions if it were enforced.
    pub to: ByDecision,
    /// Some of them.
    pub examples: Vec<Example>,
}

/// A source a change touches.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Source {
    /// The number.
    pub number: String,
    /// Its calls in the window.
    pub calls: u64,
    /// Its calls whose verdict gets stricter.
    pub stricter: u64,
}

/// The sources a change would touch that deserve a second look.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Touched {
    /// Allowlisted live on some call of the window.
    pub allowlisted: Vec<Source>,
    /// At least `high_volume_per_day` calls a day.
    pub high_volume: Vec<Source>,
    /// Called back by some of their callees.
    pub called_back: Vec<Source>,
}

/// A version the window's calls were judged under.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionUse {
    /// `SEQ.DIGEST`.
    pub version: String,
    /// Calls judged under it.
    pub calls: u64,
    /// Whether it was kept (calls under a version not kept are not
    /// replayed).
    pub kept: bool,
}

/// A backtest's findings.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// What was replayed in place of what was in force.
    pub candidate: String,
    /// The window asked for, µs.
    pub since_us: i64,
    /// See `since_us`.
    pub until_us: i64,
    /// The first and last call replayed, µs (0: none).
    pub first_call_us: i64,
    /// See `first_call_us`.
    pub last_call_us: i64,
    /// Hours between them: what a promotion counts as evidence.
    pub hours: f64,
    /// Calls replayed.
    pub calls: u64,
    /// Distinct callers among them.
    pub callers: u64,
    /// Outcomes applied.
    pub outcomes: u64,
    /// Calls not replayed: their version was not kept.
    pub skipped: u64,
    /// The versions met.
    pub versions: Vec<VersionUse>,
    /// Live decisions.
    pub before: ByDecision,
    /// Replayed decisions.
    pub after: ByDecision,
    /// Calls whose decision changed.
    pub changed: u64,
    /// Replayed: blocked.
    pub blocked: Count,
    /// Replayed: flagged.
    pub flagged: Count,
    /// Replayed: redirected.
    pub redirected: Count,
    /// Changes by transition.
    pub transitions: Vec<Transition>,
    /// Changes by rule.
    pub rules: Vec<RuleChange>,
    /// Shadow rules, enforced one at a time.
    pub shadow: Vec<ShadowEffect>,
    /// Sources touched that deserve a look.
    pub touched: Touched,
    /// Calls replayed a second.
    pub calls_per_s: f64,
}

fn rank(d: Decision) -> u8 {
    match d {
        Decision::Allow => 0,
        Decision::Flag => 1,
        Decision::Redirect => 2,
        Decision::Block => 3,
    }
}

/// Distinct callers, counted exactly up to a cap.
struct Distinct {
    set: FxHashSet<u64>,
    cap: usize,
    over: u64,
}

impl Distinct {
    fn new(cap: usize) -> Distinct {
        Distinct {
            set: FxHashSet::default(),
            cap,
            over: 0,
        }
    }
    fn add(&mut self, k: u64) {
        if self.set.len() < self.cap || self.set.contains(&k) {
            self.set.insert(k);
        } else {
            self.over += 1;
        }
    }
    fn len(&self) -> u64 {
        self.set.len() as u64 + self.over
    }
}

/// A fixed bitmap of (caller, callee) pairs seen.
struct Pairs {
    bits: Vec<u64>,
}

impl Pairs {
    const BITS: u64 = 1 << 27;
    fn new() -> Pairs {
        Pairs {
            bits: vec![0; (Self::BITS / 64) as usize],
        }
    }
    fn slot(a: u64, b: u64) -> (usize, u64) {
        let mut h = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.rotate_left(29);
        h = (h ^ (h >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 29;
        let bit = h % Self::BITS;
        ((bit / 64) as usize, 1 << (bit % 64))
    }
    fn insert(&mut self, a: u64, b: u64) {
        let (i, m) = Self::slot(a, b);
        self.bits[i] |= m;
    }
    fn contains(&self, a: u64, b: u64) -> bool {
        let (i, m) = Self::slot(a, b);
        self.bits[i] & m != 0
    }
}

#[derive(Default)]
struct CallerStat {
    calls: u64,
    stricter: u64,
    allowlisted: bool,
    called_back: bool,
}

struct Acc {
    report: Report,
    callers: Distinct,
    per_caller: FxHashMap<u64, CallerStat>,
    by_decision: [Distinct; 4],
    transitions: BTreeMap<(u8, u8), (Transition, Distinct)>,
    rules: BTreeMap<String, (RuleChange, Distinct)>,
    shadow: BTreeMap<String, (ShadowEffect, Distinct)>,
    versions: BTreeMap<String, VersionUse>,
    pairs: Pairs,
    examples: usize,
    cap: usize,
}

fn example(c: &CallRef<'_>, after: Decision, rules_after: Vec<String>) -> Example {
    Example {
        ts_us: c.ts_us(),
        caller: c.caller().map(|n| n.to_string()).unwrap_or_default(),
        callee: c.callee().map(|n| n.to_string()).unwrap_or_default(),
        trunk: c.trunk().unwrap_or("").to_string(),
        before: c.decision().as_str().to_string(),
        after: after.as_str().to_string(),
        rules_before: c.fired(false).map(str::to_string).collect(),
        rules_after,
    }
}

/// Replays `[opts.since_us, opts.until_us)` of the journal under `root`
/// through `cand`; `progress(done, total)` is told the bytes read.
pub fn backtest(
    root: &Path,
    loader: &mut Loader,
    cand: &Candidate,
    opts: &Options,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report, ReadError> {
    let started = Instant::now();
    let state = State::new(opts.max_numbers, opts.idle_ttl_s).with_max_call(opts.max_call_s);
    let mut acc = Acc {
        report: Report {
            candidate: cand.label.clone(),
            since_us: opts.since_us,
            until_us: opts.until_us,
            ..Report::default()
        },
        callers: Distinct::new(opts.max_callers),
        per_caller: FxHashMap::default(),
        by_decision: std::array::from_fn(|_| Distinct::new(opts.max_callers)),
        transitions: BTreeMap::new(),
        rules: BTreeMap::new(),
        shadow: BTreeMap::new(),
        versions: BTreeMap::new(),
        pairs: Pairs::new(),
        examples: opts.examples,
        cap: opts.max_callers,
    };
    let mut reader = Reader::open(root, opts.since_us, opts.until_us);
    let total = reader.total_bytes;
    // The snapshot of the version last met, and the candidate's over it.
    let mut last: Option<(String, Option<Arc<ListSet>>)> = None;
    let mut candidates: HashMap<String, Arc<ListSet>> = HashMap::new();
    let mut policy = cand.rules.as_ref().map(|r| r.outcomes);
    let mut rows = 0u64;
    let mut last_sweep = 0u32;
    loop {
        let more = reader.next(&mut |row| match row {
            RowRef::Outcome(o) => {
                let Some(p) = policy else { return };
                acc.report.outcomes += 1;
                let now = o.secs();
                let k = o.caller_key();
                match o.kind() {
                    Some(OutcomeKind::Cancelled) => {
                        state.callers.outcome(
                            k,
                            now,
                            CallOutcome::Cancelled { ring_ms: o.ms() },
                            &p,
                        );
                    }
                    Some(OutcomeKind::Answered) => {
                        state.callers.outcome(
                            k,
                            now,
                            CallOutcome::Answered { talk_ms: o.ms() },
                            &p,
                        );
                    }
                    Some(OutcomeKind::Started) => {
                        state.callers.concurrent(k, now, 1, opts.max_call_s);
                    }
                    Some(OutcomeKind::Ended) => {
                        state.callers.concurrent(k, now, -1, opts.max_call_s);
                    }
                    None => {}
                }
            }
            RowRef::Call(c) => {
                let v = c.version();
                if last.as_ref().is_none_or(|(name, _)| name != v) {
                    let base = loader.get(v);
                    let set = base.map(|b| {
                        if cand.rules.is_none() && cand.lists.is_empty() {
                            return b;
                        }
                        candidates
                            .entry(v.to_string())
                            .or_insert_with(|| {
                                let lists: Vec<_> =
                                    cand.lists.iter().map(|(l, x, _)| (*l, x.clone())).collect();
                                Arc::new(with_lists(&b, &lists, cand.rules.as_ref()))
                            })
                            .clone()
                    });
                    last = Some((v.to_string(), set));
                }
                let set = last.as_ref().and_then(|(_, s)| s.as_ref());
                if !acc.versions.contains_key(v) {
                    let fresh = VersionUse {
                        version: v.to_string(),
                        calls: 0,
                        kept: set.is_some(),
                    };
                    acc.versions.insert(v.to_string(), fresh);
                }
                if let Some(u) = acc.versions.get_mut(v) {
                    u.calls += 1;
                }
                let Some(set) = set else {
                    acc.report.skipped += 1;
                    return;
                };
                if cand.rules.is_none() {
                    policy = Some(set.rules.outcomes);
                }
                let time = c.time();
                // The tracker forgets idle numbers as the node's sweep does.
                if time.secs >= last_sweep.saturating_add(60) {
                    state.sweep(time.secs);
                    last_sweep = time.secs;
                }
                let input = CallInput {
                    a: c.caller(),
                    from: c.from(),
                    pai: c.pai(),
                    display: c.display(),
                    a_present: c.a_present(),
                    b: c.callee(),
                    trunk: c.trunk_kind(),
                    time,
                };
                let scored = set.score(&input, &state);
                acc.call(&c, set, &scored);
            }
        })?;
        rows += 1;
        if rows.is_multiple_of(65_536) {
            progress(reader.bytes_done(), total);
        }
        if !more {
            break;
        }
    }
    progress(total, total);
    Ok(acc.finish(opts, started))
}

/// The entry of rule `id`, made on first sight (a name is allocated once
/// per rule, not per call).
fn rule_entry<'m>(
    rules: &'m mut BTreeMap<String, (RuleChange, Distinct)>,
    id: &str,
    cap: usize,
) -> Option<&'m mut (RuleChange, Distinct)> {
    if !rules.contains_key(id) {
        let fresh = RuleChange {
            rule: id.to_string(),
            ..RuleChange::default()
        };
        rules.insert(id.to_string(), (fresh, Distinct::new(cap)));
    }
    rules.get_mut(id)
}

impl Acc {
    fn call(&mut self, c: &CallRef<'_>, set: &ListSet, s: &kuzet_rules::ruleset::Scored) {
        let r = &mut self.report;
        let ts = c.ts_us();
        if r.calls == 0 {
            r.first_call_us = ts;
        }
        r.last_call_us = r.last_call_us.max(ts);
        r.calls += 1;
        let caller = c.caller().map(|n| n.raw());
        let (before, after) = (c.decision(), s.decision);
        r.before.add(before);
        r.after.add(after);
        if let Some(a) = caller {
            self.callers.add(a);
            self.by_decision[rank(after) as usize].add(a);
        }
        let stricter = rank(after) > rank(before);
        if let Some(a) = caller {
            // A callee of `b` calling it back: `b` called `a` before.
            let called_back = c.callee().is_some_and(|b| self.pairs.contains(b.raw(), a));
            if let Some(b) = c.callee() {
                self.pairs.insert(a, b.raw());
            }
            if self.per_caller.len() < self.cap || self.per_caller.contains_key(&a) {
                let st = self.per_caller.entry(a).or_default();
                st.calls += 1;
                st.stricter += u64::from(stricter);
                st.allowlisted |= c.allowlisted();
            }
            if called_back {
                if let Some(b) = c.callee() {
                    if let Some(st) = self.per_caller.get_mut(&b.raw()) {
                        st.called_back = true;
                    }
                }
            }
        }
        let name = |i: u16| set.rules.rules.get(usize::from(i)).map(|r| &*r.id);
        // Rules that fired, enforced, before and after.
        for f in s.fired() {
            let Some(id) = name(f.rule) else { continue };
            if f.shadow {
                let decided = set.rules.thresholds.decide(
                    s.score
                        .saturating_add(set.rules.rules[usize::from(f.rule)].score)
                        .min(set.rules.thresholds.cap),
                );
                if !self.shadow.contains_key(id) {
                    let fresh = ShadowEffect {
                        rule: id.to_string(),
                        ..ShadowEffect::default()
                    };
                    self.shadow
                        .insert(id.to_string(), (fresh, Distinct::new(self.cap)));
                }
                let Some(e) = self.shadow.get_mut(id) else {
                    continue;
                };
                e.0.fired += 1;
                if rank(decided) > rank(after) {
                    e.0.would_change.calls += 1;
                    e.0.to.add(decided);
                    if let Some(a) = caller {
                        e.1.add(a);
                    }
                    if e.0.examples.len() < self.examples {
                        e.0.examples.push(example(c, decided, Vec::new()));
                    }
                }
                continue;
            }
            let Some(e) = rule_entry(&mut self.rules, id, self.cap) else {
                continue;
            };
            e.0.fired_after += 1;
        }
        for id in c.fired(false) {
            let Some(e) = rule_entry(&mut self.rules, id, self.cap) else {
                continue;
            };
            e.0.fired_before += 1;
        }
        if before == after {
            return;
        }
        self.report.changed += 1;
        let after_rules: Vec<String> = s
            .fired()
            .iter()
            .filter(|f| !f.shadow)
            .filter_map(|f| name(f.rule).map(str::to_string))
            .collect();
        let t = self
            .transitions
            .entry((rank(before), rank(after)))
            .or_insert_with(|| {
                (
                    Transition {
                        from: before.as_str().to_string(),
                        to: after.as_str().to_string(),
                        ..Transition::default()
                    },
                    Distinct::new(self.cap),
                )
            });
        t.0.count.calls += 1;
        if let Some(a) = caller {
            t.1.add(a);
        }
        if t.0.examples.len() < self.examples {
            t.0.examples.push(example(c, after, after_rules.clone()));
        }
        for id in &after_rules {
            if c.fired(false).any(|b| b == id) {
                continue;
            }
            if let Some(e) = self.rules.get_mut(id) {
                e.0.changed_by.calls += 1;
                if let Some(a) = caller {
                    e.1.add(a);
                }
                if e.0.examples.len() < self.examples {
                    e.0.examples.push(example(c, after, after_rules.clone()));
                }
            }
        }
    }

    fn finish(mut self, opts: &Options, started: Instant) -> Report {
        let mut r = self.report;
        r.callers = self.callers.len();
        let [_, flag, redirect, block] = &self.by_decision;
        r.flagged = Count {
            calls: r.after.flag,
            callers: flag.len(),
        };
        r.redirected = Count {
            calls: r.after.redirect,
            callers: redirect.len(),
        };
        r.blocked = Count {
            calls: r.after.block,
            callers: block.len(),
        };
        r.hours = (r.last_call_us - r.first_call_us).max(0) as f64 / 3.6e9;
        r.transitions = self
            .transitions
            .into_values()
            .map(|(mut t, d)| {
                t.count.callers = d.len();
                t
            })
            .collect();
        r.rules = self
            .rules
            .into_values()
            .filter(|(e, _)| e.fired_before != e.fired_after || e.changed_by.calls > 0)
            .map(|(mut e, d)| {
                e.changed_by.callers = d.len();
                e
            })
            .collect();
        r.shadow = self
            .shadow
            .into_values()
            .map(|(mut e, d)| {
                e.would_change.callers = d.len();
                e
            })
            .collect();
        let days = (r.hours / 24.0).max(1.0 / 24.0);
        let mut touched = Touched::default();
        let mut stricter: Vec<(u64, CallerStat)> = self
            .per_caller
            .drain()
            .filter(|(_, s)| s.stricter > 0)
            .collect();
        stricter.sort_by(|a, b| b.1.stricter.cmp(&a.1.stricter).then(a.0.cmp(&b.0)));
        for (k, s) in stricter {
            let src = Source {
                number: kuzet_rules::Number::from_raw(k)
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
                calls: s.calls,
                stricter: s.stricter,
            };
            if s.allowlisted && touched.allowlisted.len() < 50 {
                touched.allowlisted.push(src.clone());
            }
            if s.calls as f64 / days >= opts.high_volume_per_day as f64
                && touched.high_volume.len() < 50
            {
                touched.high_volume.push(src.clone());
            }
            if s.called_back && touched.called_back.len() < 50 {
                touched.called_back.push(src);
            }
        }
        r.touched = touched;
        r.versions = self.versions.into_values().collect();
        let secs = started.elapsed().as_secs_f64();
        r.calls_per_s = if secs > 0.0 {
            r.calls as f64 / secs
        } else {
            0.0
        };
        r
    }
}

impl Report {
    /// The report as plain text.
    pub fn write_text(&self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        writeln!(out, "Backtest of {}", Safe(&self.candidate))?;
        if self.calls == 0 {
            writeln!(
                out,
                "  no calls in the journal between {} and {}",
                Utc(self.since_us),
                Utc(self.until_us)
            )?;
            return Ok(());
        }
        writeln!(
            out,
            "  {} calls from {} callers, {} to {} ({:.1} h), {} outcomes",
            self.calls,
            self.callers,
            Utc(self.first_call_us),
            Utc(self.last_call_us),
            self.hours,
            self.outcomes
        )?;
        if self.skipped > 0 {
            writeln!(
                out,
                "  {} calls not replayed: their version was not kept",
                self.skipped
            )?;
        }
        let d = |b: &ByDecision| {
            format!(
                "allow {}, flag {}, redirect {}, block {}",
                b.allow, b.flag, b.redirect, b.block
            )
        };
        writeln!(out, "  live:     {}", d(&self.before))?;
        writeln!(out, "  replayed: {}", d(&self.after))?;
        writeln!(
            out,
            "  would block {} calls ({} callers), redirect {} ({}), flag {} ({})",
            self.blocked.calls,
            self.blocked.callers,
            self.redirected.calls,
            self.redirected.callers,
            self.flagged.calls,
            self.flagged.callers
        )?;
        writeln!(out, "\nVerdicts that change: {}", self.changed)?;
        for t in &self.transitions {
            writeln!(
                out,
                "  {} -> {}: {} calls, {} callers",
                t.from, t.to, t.count.calls, t.count.callers
            )?;
            for e in &t.examples {
                write_example(out, e)?;
            }
        }
        if !self.rules.is_empty() {
            writeln!(
                out,
                "\nBy rule (enforced firings live -> replayed; verdicts it changed)"
            )?;
            for r in &self.rules {
                writeln!(
                    out,
                    "  {}: {} -> {}; changed {} calls, {} callers",
                    Safe(&r.rule),
                    r.fired_before,
                    r.fired_after,
                    r.changed_by.calls,
                    r.changed_by.callers
                )?;
                for e in &r.examples {
                    write_example(out, e)?;
                }
            }
        }
        if !self.shadow.is_empty() {
            writeln!(out, "\nShadow rules, if enforced one at a time")?;
            for s in &self.shadow {
                writeln!(
                    out,
                    "  {}: fired on {} calls; enforcing it would change {} calls from {} callers ({})",
                    Safe(&s.rule),
                    s.fired,
                    s.would_change.calls,
                    s.would_change.callers,
                    d(&s.to)
                )?;
                for e in &s.examples {
                    write_example(out, e)?;
                }
            }
        }
        let t = &self.touched;
        for (what, list) in [
            ("allowlisted", &t.allowlisted),
            ("high-volume", &t.high_volume),
            ("called back by their callees", &t.called_back),
        ] {
            if list.is_empty() {
                continue;
            }
            writeln!(out, "\nSources made stricter that are {what}")?;
            for s in list {
                writeln!(
                    out,
                    "  {}: {} of {} calls stricter",
                    Safe(&s.number),
                    s.stricter,
                    s.calls
                )?;
            }
        }
        writeln!(out, "\nVersions met")?;
        for v in &self.versions {
            writeln!(
                out,
                "  {}: {} calls{}",
                Safe(&v.version),
                v.calls,
                if v.kept {
                    ""
                } else {
                    " (not kept: not replayed)"
                }
            )?;
        }
        Ok(())
    }
}

fn write_example(out: &mut impl std::fmt::Write, e: &Example) -> std::fmt::Result {
    writeln!(
        out,
        "    {} {} -> {} via {}: {} -> {} [{}] -> [{}]",
        Utc(e.ts_us),
        Safe(&e.caller),
        Safe(&e.callee),
        Safe(if e.trunk.is_empty() { "-" } else { &e.trunk }),
        e.before,
        e.after,
        Safe(&e.rules_before.join(", ")),
        Safe(&e.rules_after.join(", "))
    )
}
