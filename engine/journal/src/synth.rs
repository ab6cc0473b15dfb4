//! Journal entries for calls that never crossed a socket: each call scored
//! as the call path scores it (its identities normalized, the snapshot's
//! rules over behaviour state) and its outcome applied as the outcome API
//! applies it, so the entries are what a node would have journalled.
//! Benchmarks and tests use it to lay down days of journal in seconds; a
//! replay of what it writes under the same snapshot changes no verdict.
//!
//! Time is the caller's: the clock is each call's `ts_us` (UTC), and state
//! forgets idle numbers every minute of it, as the replay does.

use std::net::IpAddr;
use std::sync::Arc;

use kuzet_dataplane::journal::{Arrival, CallFact, Entry, OutcomeFact, OutcomeWhat};
use kuzet_dataplane::records::trust;
use kuzet_rules::ruleset::{CallInput, Decision, ListPolicy, RuleSet};
use kuzet_rules::snapshot::Version;
use kuzet_rules::state::{Outcome, State};
use kuzet_rules::{CallTime, ListBuilder, ListId, ListSet, NumberingPlan, TrunkKind};

/// One call as the switch offered it, its numbers as written.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// When, µs since the epoch.
    pub ts_us: i64,
    /// The trunk's index in the config + 1 (0: on no trunk).
    pub trunk: u16,
    /// Its kind.
    pub trunk_kind: Option<TrunkKind>,
    /// The source address.
    pub source: IpAddr,
    /// The number in P-Asserted-Identity (and From, unless `from`).
    pub a: &'a str,
    /// A From number that differs.
    pub from: Option<&'a str>,
    /// A display name.
    pub display: Option<&'a str>,
    /// The B-number.
    pub b: &'a str,
    /// What the switch reports once the call is let through.
    pub outcome: Option<OutcomeWhat>,
}

/// Scores calls under one snapshot into journal entries.
pub struct Scorer {
    set: Arc<ListSet>,
    plan: NumberingPlan,
    state: State,
    last_sweep: u32,
    digest: u64,
}

impl Scorer {
    /// Scoring under `set` (its version and generation go in every
    /// entry), with state for `max_numbers` numbers (a replay must be
    /// given the same to agree: `replay::Options::max_numbers`), an
    /// idle time-to-live of an hour and calls of up to four hours, as the
    /// replay's defaults.
    pub fn new(set: Arc<ListSet>, plan: NumberingPlan, max_numbers: usize) -> Scorer {
        Scorer {
            set,
            plan,
            state: State::new(max_numbers, 3600).with_max_call(4 * 3600),
            last_sweep: 0,
            digest: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// The snapshot calls are scored under.
    pub fn set(&self) -> &Arc<ListSet> {
        &self.set
    }

    /// Scores `c` and appends its entries to `out`: the call, then, when
    /// it was not blocked and has a caller and an outcome, the outcome.
    /// Returns the decision.
    pub fn score(&mut self, c: &Call<'_>, out: &mut Vec<Entry>) -> Decision {
        let secs = (c.ts_us.max(0) / 1_000_000) as u32;
        let time = CallTime {
            secs,
            hour: ((c.ts_us.max(0) / 3_600_000_000) % 24) as u8,
            // 1970-01-01 was a Thursday; 0 = Monday.
            weekday: ((c.ts_us.max(0) / 86_400_000_000 + 3) % 7) as u8,
        };
        if secs >= self.last_sweep.saturating_add(60) {
            self.state.sweep(secs);
            self.last_sweep = secs;
        }
        let norm = |s: &str| self.plan.normalize(s.as_bytes());
        let pai = norm(c.a);
        let from = c.from.map_or(pai, norm);
        let display = c.display.and_then(norm);
        let input = CallInput {
            a: pai.or(from),
            from,
            pai,
            display,
            a_present: true,
            b: norm(c.b),
            trunk: c.trunk_kind,
            time,
        };
        let scored = self.set.score(&input, &self.state);
        self.digest = self
            .digest
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let at = Arrival {
            ts_us: c.ts_us,
            trunk: c.trunk,
            source: c.source,
            a_trust: match (input.a, input.trunk) {
                (None, _) => trust::NONE,
                (Some(_), Some(TrunkKind::Mobile)) => trust::NETWORK,
                _ => trust::CLAIMED,
            },
            digest: self.digest,
        };
        out.push(Entry::Call(CallFact::of(at, &input, &scored, &self.set)));
        let (Some(a), Some(what)) = (input.a, c.outcome) else {
            return scored.decision;
        };
        if scored.decision == Decision::Block {
            return scored.decision;
        }
        // Applied at once, at the call's own second: the replay applies
        // it in journal order, right after the call.
        let o = match what {
            OutcomeWhat::Answered(talk_ms) => Some(Outcome::Answered { talk_ms }),
            OutcomeWhat::Cancelled(ring_ms) => Some(Outcome::Cancelled { ring_ms }),
            OutcomeWhat::Started | OutcomeWhat::Ended => None,
        };
        let policy = self.set.rules.outcomes;
        let known = match (o, what) {
            (Some(o), _) => self.state.callers.outcome(a.raw(), secs, o, &policy),
            (None, w) => {
                let delta = if w == OutcomeWhat::Started { 1 } else { -1 };
                self.state
                    .callers
                    .concurrent(a.raw(), secs, delta, self.state.max_call_s)
            }
        };
        out.push(Entry::Outcome(OutcomeFact {
            ts_us: c.ts_us,
            secs,
            caller: a.raw(),
            callee: input.b.map_or(0, |n| n.raw()),
            what,
            proxy: false,
            known,
        }));
        scored.decision
    }
}

/// A snapshot of `lists` (each list's files' texts, in order) and the
/// rule file `rules`, at version 1 with a digest of its inputs and
/// generation 1: what a node started on those files would score under.
pub fn snapshot(
    lists: &[(ListId, &[&str])],
    rules: &str,
    plan: &NumberingPlan,
) -> Result<ListSet, String> {
    use sha2::{Digest, Sha256};
    let policy = ListPolicy::default();
    let mut digest = Sha256::new();
    let mut set = ListSet::default().with_rules(
        RuleSet::from_toml_str(rules, "rules.toml", plan, &policy).map_err(|e| e.to_string())?,
    );
    digest.update(rules.as_bytes());
    for (id, texts) in lists {
        let mut b = ListBuilder::new(plan);
        for (i, t) in texts.iter().enumerate() {
            b.add_text(&format!("{}-{i}.txt", id.name()), t)
                .map_err(|e| e.to_string())?;
            digest.update(id.name().as_bytes());
            digest.update(t.as_bytes());
        }
        set = set.with_list(*id, b.finish());
    }
    let mut d = [0u8; 16];
    d.copy_from_slice(&digest.finalize()[..16]);
    set.version = Version { seq: 1, digest: d };
    set.generation = 1;
    Ok(set)
}
