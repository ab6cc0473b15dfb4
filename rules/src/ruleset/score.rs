//! Scoring one call: every rule in scope that fires adds its score, the
//! capped sum meets the thresholds. Reads and updates per-number state
//! once per call; allocates nothing.

use super::*;
use crate::list::MatchKind;

/// A list hit as a verdict keeps it: 0 for an exact number or the
/// matched prefix's length, and the reason's id.
#[derive(Clone, Copy)]
struct Hit {
    value: u32,
    reason: u32,
}

/// List answers for this call, each looked up at most once however many
/// rules ask: by list, then caller/callee.
#[derive(Default)]
struct Looked {
    memo: [[Option<Option<Hit>>; 2]; ListId::COUNT],
}

impl Looked {
    fn get(
        &mut self,
        lists: &RuleLists<'_>,
        list: ListId,
        side: Side,
        n: Option<Number>,
    ) -> Option<Hit> {
        let slot = &mut self.memo[list.index()][side as usize];
        *slot.get_or_insert_with(|| {
            let m = lists.get(list)?.lookup(n?)?;
            Some(Hit {
                value: match m.kind {
                    MatchKind::Exact => 0,
                    MatchKind::Prefix(len) => u32::from(len),
                },
                reason: m.reason_id,
            })
        })
    }

    /// The first side in `sides` whose number is on `list`.
    fn find(
        &mut self,
        lists: &RuleLists<'_>,
        list: ListId,
        sides: Sides,
        call: &CallInput,
    ) -> Option<(Side, Hit)> {
        if sides.caller {
            if let Some(h) = self.get(lists, list, Side::Caller, call.a) {
                return Some((Side::Caller, h));
            }
        }
        if sides.callee {
            if let Some(h) = self.get(lists, list, Side::Callee, call.b) {
                return Some((Side::Callee, h));
            }
        }
        None
    }
}

impl CallInput {
    /// The caller identities the request claims that are numbers: From,
    /// PAI and a display name's digits.
    fn identities(&self) -> impl Iterator<Item = (Who, Number)> + '_ {
        // The same number in two identities is looked at once.
        let from = self.from.filter(|f| Some(*f) != self.pai);
        let display = self
            .display
            .filter(|d| Some(*d) != self.pai && Some(*d) != from);
        [
            (Who::Pai, self.pai),
            (Who::From, from),
            (Who::Display, display),
        ]
        .into_iter()
        .filter_map(|(w, n)| Some((w, n?)))
    }
}

impl RuleSet {
    /// Scores one call, updating the behaviour state in `st`.
    pub fn score(&self, call: &CallInput, lists: &RuleLists<'_>, st: &State) -> Scored {
        let mut out = Scored::ALLOW;
        let mut looked = Looked::default();
        // The allowlist exempts the call from the list and behaviour rules;
        // the caller-ID authenticity rules still judge it.
        for (i, r) in self.rules.iter().enumerate() {
            if let Kind::List {
                list: ListId::Allow,
                sides,
            } = r.kind
            {
                if let Some((side, hit)) = looked.find(lists, ListId::Allow, sides, call) {
                    out.allowlisted = true;
                    out.push(Fired {
                        rule: i as u16,
                        value: hit.value,
                        threshold: 0,
                        shadow: false,
                        who: Some(side.into()),
                        reason: hit.reason,
                        note: Note::None,
                    });
                    break;
                }
            }
        }
        let now = call.time.secs;
        let a = call.a.map(Number::raw);
        let b = call.b;
        // The caller's state is read and updated once; an allowlisted
        // caller leaves none.
        let state = a
            .filter(|_| self.needs_state && !out.allowlisted)
            .and_then(|a| {
                st.callers.with(a, now, |s| {
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
                    // Outcomes of a bucket that is over count as none.
                    let live = s.outcomes_live(now, self.outcomes.window_s);
                    let none = (0, 0);
                    (
                        vel,
                        fan,
                        run,
                        if live { s.rings() } else { none },
                        if live { s.answers() } else { none },
                        s.concurrent_now(now, st.max_call_s),
                        s.called_back_per_mille(),
                    )
                })
            });
        // Reciprocity: this call may be a callee of the B-number calling it
        // back. Only the B-number's state changes; it is not marked seen.
        if let (true, Some(a), Some(b), Some(w)) =
            (self.needs_reciprocity, a, b, self.fan_out_window)
        {
            st.callers.update_existing(b.raw(), |s| {
                if s.has_called(a, now, w) {
                    s.called_back();
                }
            });
        }
        let premium = match (lists.get(ListId::Premium), b) {
            (Some(l), Some(bn)) if self.needs_premium && !out.allowlisted => {
                l.lookup(bn).map(|m| (m, bn))
            }
            _ => None,
        };
        let (mut a_leads, mut b_leads) = (call.a.map(Leads::new), call.b.map(Leads::new));
        let (mut score, mut shadow_score) = (0u32, 0u32);
        let on = |l: Option<&NumberList>, n: Number| l.is_some_and(|l| l.lookup(n).is_some());
        for (i, r) in self.rules.iter().enumerate() {
            if out.allowlisted && !r.kind.is_authenticity() {
                continue;
            }
            if !r.scope.applies(call, &mut a_leads, &mut b_leads) {
                continue;
            }
            let mut who = None;
            let mut reason = 0;
            let mut note = Note::None;
            let hit: Option<(u32, u32)> = match &r.kind {
                Kind::List {
                    list: ListId::Allow,
                    ..
                } => None,
                Kind::List { list, sides } => {
                    looked.find(lists, *list, *sides, call).map(|(s, h)| {
                        who = Some(s.into());
                        reason = h.reason;
                        (h.value, 0)
                    })
                }
                Kind::DomesticOnInternational => {
                    if call.trunk == Some(TrunkKind::International) {
                        // Every identity that claims to be domestic counts,
                        // unless it is a subscriber roaming abroad now.
                        let mut roamer = None;
                        let mut spoofed = None;
                        for (w, n) in call.identities() {
                            if !n.is_e164()
                                || !self.plan.classify(n).looks_home(&self.plan.countries)
                            {
                                continue;
                            }
                            if on(lists.get(ListId::Roamers), n) {
                                roamer.get_or_insert(w);
                            } else {
                                spoofed.get_or_insert(w);
                            }
                        }
                        match (spoofed, roamer) {
                            (Some(w), _) => {
                                who = Some(w);
                                Some((1, 1))
                            }
                            (None, Some(w)) => {
                                who = Some(w);
                                note = Note::Roamer;
                                Some((1, 1))
                            }
                            (None, None) => None,
                        }
                    } else {
                        None
                    }
                }
                Kind::ProtectedCaller => call
                    .identities()
                    .find(|&(_, n)| on(lists.get(ListId::Protected), n))
                    .map(|(w, _)| {
                        who = Some(w);
                        (1, 1)
                    }),
                Kind::CliMismatch => match (call.from, call.pai) {
                    (Some(f), Some(p)) if f != p => Some((1, 1)),
                    _ => None,
                },
                Kind::InvalidCaller => match call.a {
                    None if call.a_present => {
                        who = Some(Who::Caller);
                        Some((0, 0))
                    }
                    Some(n) => {
                        let c = self.plan.classify(n);
                        c.invalid.map(|why| {
                            who = Some(Who::Caller);
                            (why as u32 + 1, 0)
                        })
                    }
                    None => None,
                },
                Kind::Velocity { max, slot, .. } => state.and_then(|s| {
                    let v = s.0[usize::from(*slot)];
                    (v > *max).then_some((v, *max))
                }),
                Kind::FanOut {
                    max,
                    max_called_back,
                    ..
                } => state.and_then(|s| {
                    let back = s.6;
                    reason = back + 1;
                    (s.1 > *max && max_called_back.is_none_or(|m| back <= m)).then_some((s.1, *max))
                }),
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
                    let key = destination_key(bn, lists.get(ListId::Premium));
                    let v = st
                        .destinations
                        .with(key, now, |s| s.add(now, *window_s, 1))?;
                    (v > *max).then_some((v, *max))
                }),
            };
            let Some((value, threshold)) = hit else {
                continue;
            };
            let shadow = r.mode == Mode::Shadow;
            let mut points = r.score;
            // A rule that keeps firing for one caller escalates to a block:
            // its firings are counted per caller and rule, over aligned
            // windows of `within_s`, like any other count.
            if let (Some(e), Some(a), false, Note::None) = (r.escalate, a, shadow, note) {
                let tag = self.tags.get(i).copied().unwrap_or(i as u64);
                let key = escalation_key(a, tag);
                let fired = st
                    .escalations
                    .with(key, now, |c| c.add(now, e.within_s, 1))
                    .unwrap_or(0);
                if fired >= e.after {
                    note = Note::Escalated;
                    points = points.max(self.thresholds.block);
                }
            }
            let f = Fired {
                rule: i as u16,
                value,
                threshold,
                shadow,
                who,
                reason,
                note,
            };
            if shadow {
                shadow_score = shadow_score.saturating_add(points);
            } else if f.counts() {
                score = score.saturating_add(points);
            }
            out.push(f);
        }
        let t = &self.thresholds;
        out.score = score.min(t.cap);
        out.decision = t.decide(out.score);
        out.shadow_decision = t.decide(score.saturating_add(shadow_score).min(t.cap));
        out
    }
}

/// The escalation counter of the rule tagged `tag` (see [`rule_tag`]) for
/// caller `a`: a hash of both, laid out in the bits the tracker's key
/// keeps (the low 50, the five from bit 56 and bit 63), so every rule of a
/// caller counts apart. (It once put the rule in bits 50-55, which the key
/// drops: every escalating rule of a caller shared one counter.) The tag
/// comes from the rule's id, not its place in the file, so every node and
/// every reload that keeps the rule keeps its counter.
pub(crate) fn escalation_key(a: u64, tag: u64) -> u64 {
    let mut h = a ^ tag.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64's finalizer.
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^= h >> 31;
    (h & ((1 << 50) - 1)) | ((h >> 50) & 0x1f) << 56 | ((h >> 55) & 1) << 63
}

/// A rule's tag for its escalation counters: FNV-1a of its id, the same
/// on every node.
pub(crate) fn rule_tag(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Thresholds {
    /// The decision a score meets.
    pub fn decide(&self, score: u32) -> Decision {
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
pub(super) fn over_ratio((total, short): (u32, u32), min: u32, ratio: f32) -> Option<(u32, u32)> {
    if total == 0 || total < min {
        return None;
    }
    let v = short * 1000 / total;
    let t = (ratio * 1000.0).round() as u32;
    (v >= t).then_some((v, t))
}

pub(super) fn destination_key(b: Number, premium: Option<&NumberList>) -> u64 {
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
