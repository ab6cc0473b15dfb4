//! The run report: load figures and detection quality, from the driver's
//! per-call results joined with the labels only sim knows.
//!
//! Definitions (also in `sim/scenarios/README.md`):
//! - a call is **detected** when it was blocked (403, 603 or 607) or
//!   flagged (`X-Kuzet-Verdict: flag...`); **allowed** is any other final
//!   answer below 400 that is not flagged; **other** is any other final
//!   answer; timeouts are counted apart and are never detected;
//! - per fraud category: `recall = detected / calls`, and
//!   `precision = detected / (detected + detected legitimate calls)`: the
//!   precision a detector would have on traffic made of that category and
//!   the legitimate calls alone. It is null when nothing was detected;
//! - `false_positive_rate = detected legitimate calls / legitimate calls`;
//! - per legitimate kind, `false_positive_rate = detected / calls`;
//! - per campaign, `calls_before_detection` counts the campaign's calls
//!   sent before its first detected one (null if none was detected);
//!   per caller (A-number) of the campaign that was detected,
//!   `worst_calls_to_block` is the most calls any caller made from its
//!   first detected call to its first blocked one (0 when the first
//!   detection was a block), and `callers_never_blocked` counts the
//!   detected callers never blocked.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::driver::{CallResult, RunStats};
use crate::traffic::Traffic;

/// Load figures and detection quality of one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Calls started: first INVITEs sent (retransmissions are counted apart).
    pub sent: u64,
    /// Calls that got a final response before the timeout.
    pub answered: u64,
    /// Calls with no final response before the timeout (Timer B).
    pub timeouts: u64,
    /// INVITE retransmissions over UDP, all calls together.
    pub retransmissions: u64,
    /// Responses that could not be parsed or matched to a call.
    pub stray_responses: u64,
    /// Wall-clock length of the run, seconds.
    pub elapsed_s: f64,
    /// Final answers per second over the run.
    pub cps: f64,
    /// Time to the final response, microseconds; timed-out calls are left out.
    pub latency_us: Latency,
    /// Final answers by status code.
    pub status: BTreeMap<u16, u64>,
    /// Per traffic kind (by its scenario name): how its calls were answered.
    pub categories: BTreeMap<String, Category>,
    /// Share of legitimate calls that were detected; null without legitimate calls.
    pub false_positive_rate: Option<f64>,
    /// Per fraud campaign (by source name): how often and how soon it was detected.
    pub campaigns: BTreeMap<String, Campaign>,
}

/// Percentiles of the time to a final response, microseconds (0 when no call
/// was answered).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// The slowest answered call.
    pub max: u64,
}

/// How the calls of one traffic kind were answered.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Category {
    /// The kind is a fraud pattern; only these get precision and recall.
    pub fraud: bool,
    /// Calls of this kind made in the run.
    pub calls: u64,
    /// Calls rejected with 403, 603 or 607.
    pub blocked: u64,
    /// Calls not blocked whose answer carried `X-Kuzet-Verdict: flag...`.
    pub flagged: u64,
    /// Calls let through: a final answer below 400, not flagged.
    pub allowed: u64,
    /// Calls given any other final answer (an error other than a block).
    pub other: u64,
    /// Calls with no final answer before the timeout; never detected.
    pub timeouts: u64,
    /// Fraud kinds: detected / (detected + detected legitimate calls); null
    /// when nothing was detected and for legitimate kinds.
    pub precision: Option<f64>,
    /// Fraud kinds: share of this kind's calls that were detected; null for
    /// legitimate kinds.
    pub recall: Option<f64>,
    /// Legitimate kinds: share of this kind's calls that were detected;
    /// null for fraud kinds.
    pub false_positive_rate: Option<f64>,
}

/// How one fraud campaign fared.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Campaign {
    /// The campaign's fraud kind, as named in scenarios and reports.
    pub kind: String,
    /// Calls the campaign made in the run.
    pub calls: u64,
    /// Of those, the ones blocked or flagged.
    pub detected: u64,
    /// Calls sent before its first detected one; null if none was detected.
    pub calls_before_detection: Option<u64>,
    /// Of the campaign's callers that were detected, the most calls one
    /// made from its first detection to its first block (0: blocked at
    /// once); null when no caller was detected.
    pub worst_calls_to_block: Option<u64>,
    /// Detected callers never blocked in the run.
    pub callers_never_blocked: u64,
}

/// How one final answer counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Rejected with 403, 603 or 607.
    Blocked,
    /// Not blocked, but the answer carried `X-Kuzet-Verdict: flag...`.
    Flagged,
    /// Let through: a final answer below 400, not flagged.
    Allowed,
    /// Any other final answer.
    Other,
    /// No final answer before the timeout.
    Timeout,
}

impl Outcome {
    /// How the final answer of call result `r` counts.
    pub fn of(r: &CallResult) -> Outcome {
        match r.status {
            0 => Outcome::Timeout,
            403 | 603 | 607 => Outcome::Blocked,
            _ if r.flagged => Outcome::Flagged,
            100..=399 => Outcome::Allowed,
            _ => Outcome::Other,
        }
    }
    /// True when the call counts as detected: blocked or flagged.
    pub fn detected(self) -> bool {
        matches!(self, Outcome::Blocked | Outcome::Flagged)
    }
}

/// Builds the report of a run: `results[i]` is call `i` of the run, whose
/// label is `traffic.calls[i % len]`.
pub fn build(traffic: &Traffic, results: &[CallResult], stats: &RunStats) -> Report {
    let len = traffic.calls.len().max(1);
    let mut cats: BTreeMap<String, Category> = BTreeMap::new();
    let mut camps: BTreeMap<String, Campaign> = BTreeMap::new();
    let mut status: BTreeMap<u16, u64> = BTreeMap::new();
    for s in &traffic.sources {
        let c = cats.entry(s.kind.as_str().to_string()).or_default();
        c.fraud = s.kind.is_fraud();
        if s.kind.is_fraud() {
            camps.insert(
                s.name.clone(),
                Campaign {
                    kind: s.kind.as_str().to_string(),
                    ..Default::default()
                },
            );
        }
    }
    // Per campaign caller: calls since its first detection, and whether it
    // has been blocked since.
    // Callers are told apart by their normalized number: one caller's
    // number is written in several formats.
    let plan = kuzet_rules::NumberingPlan::kazakhstan();
    let mut callers: BTreeMap<(&str, String), (u64, bool)> = BTreeMap::new();
    for (i, r) in results.iter().enumerate() {
        let call = &traffic.calls[i % len];
        let src = &traffic.sources[call.source as usize];
        let o = Outcome::of(r);
        if r.status != 0 {
            *status.entry(r.status).or_default() += 1;
        }
        let c = cats.entry(src.kind.as_str().to_string()).or_default();
        c.calls += 1;
        match o {
            Outcome::Blocked => c.blocked += 1,
            Outcome::Flagged => c.flagged += 1,
            Outcome::Allowed => c.allowed += 1,
            Outcome::Other => c.other += 1,
            Outcome::Timeout => c.timeouts += 1,
        }
        if let Some(k) = camps.get_mut(&src.name) {
            if o.detected() && k.calls_before_detection.is_none() {
                k.calls_before_detection = Some(k.calls);
            }
            k.calls += 1;
            k.detected += u64::from(o.detected());
            let who = plan
                .normalize(call.a.as_bytes())
                .map_or_else(|| call.a.clone(), |n| n.to_string());
            let key = (src.name.as_str(), who);
            match callers.get_mut(&key) {
                Some((n, blocked)) if !*blocked => {
                    *n += 1;
                    *blocked = o == Outcome::Blocked;
                }
                Some(_) => {}
                None if o.detected() => {
                    callers.insert(key, (0, o == Outcome::Blocked));
                }
                None => {}
            }
        }
    }
    for ((name, _), (n, blocked)) in &callers {
        if let Some(k) = camps.get_mut(*name) {
            if *blocked {
                k.worst_calls_to_block = Some(k.worst_calls_to_block.unwrap_or(0).max(*n));
            } else {
                k.callers_never_blocked += 1;
            }
        }
    }
    let (legit_calls, legit_detected) = cats
        .values()
        .filter(|c| !c.fraud)
        .fold((0, 0), |(n, d), c| (n + c.calls, d + c.blocked + c.flagged));
    for c in cats.values_mut() {
        let det = c.blocked + c.flagged;
        if c.fraud {
            c.recall = ratio(det, c.calls);
            c.precision = ratio(det, det + legit_detected).filter(|_| det > 0);
        } else {
            c.false_positive_rate = ratio(det, c.calls);
        }
    }
    let h = &stats.latency;
    let q = |p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    let secs = stats.elapsed.as_secs_f64();
    Report {
        sent: stats.sent,
        answered: stats.answered,
        timeouts: stats.timeouts,
        retransmissions: stats.retransmissions,
        stray_responses: stats.stray,
        elapsed_s: secs,
        cps: if secs > 0.0 {
            stats.answered as f64 / secs
        } else {
            0.0
        },
        latency_us: Latency {
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            max: if h.is_empty() { 0 } else { h.max() },
        },
        status,
        categories: cats,
        false_positive_rate: ratio(legit_detected, legit_calls),
        campaigns: camps,
    }
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{:.2}%", v * 100.0))
}

impl Report {
    /// The report as a text table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "sent {}  answered {}  timeouts {}  retransmissions {}  stray {}",
            self.sent, self.answered, self.timeouts, self.retransmissions, self.stray_responses
        );
        let _ = writeln!(
            s,
            "elapsed {:.2} s  rate {:.0} calls/s",
            self.elapsed_s, self.cps
        );
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "latency us: p50 {}  p99 {}  p99.9 {}  max {}",
            l.p50, l.p99, l.p999, l.max
        );
        let codes: Vec<String> = self
            .status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(s, "answers: {}", codes.join("  "));
        let _ = writeln!(
            s,
            "\n{:<22} {:>5} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>9} {:>9} {:>9}",
            "category",
            "fraud",
            "calls",
            "blocked",
            "flagged",
            "allowed",
            "other",
            "t/o",
            "precision",
            "recall",
            "FP rate"
        );
        for (name, c) in &self.categories {
            let _ = writeln!(
                s,
                "{:<22} {:>5} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>9} {:>9} {:>9}",
                name,
                if c.fraud { "yes" } else { "no" },
                c.calls,
                c.blocked,
                c.flagged,
                c.allowed,
                c.other,
                c.timeouts,
                pct(c.precision),
                pct(c.recall),
                pct(c.false_positive_rate)
            );
        }
        let _ = writeln!(
            s,
            "\nfalse positive rate on legitimate calls: {}",
            pct(self.false_positive_rate)
        );
        let _ = writeln!(
            s,
            "\n{:<24} {:<16} {:>8} {:>9} {:>22} {:>14} {:>13}",
            "campaign",
            "kind",
            "calls",
            "detected",
            "calls before detection",
            "worst to block",
            "never blocked"
        );
        let never = || "never".to_string();
        for (name, c) in &self.campaigns {
            let _ = writeln!(
                s,
                "{:<24} {:<16} {:>8} {:>9} {:>22} {:>14} {:>13}",
                name,
                c.kind,
                c.calls,
                c.detected,
                c.calls_before_detection
                    .map_or_else(never, |v| v.to_string()),
                c.worst_calls_to_block.map_or_else(never, |v| v.to_string()),
                c.callers_never_blocked
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Kind;
    use crate::traffic::{Behaviour, Call, EngineFiles, SourceInfo};
    use std::time::Duration;

    /// Six calls worked out by hand: see the comments on each line.
    #[test]
    fn arithmetic_matches_a_hand_computed_run() {
        let src = |name: &str, kind| SourceInfo {
            name: name.into(),
            kind,
            trunk: 0,
        };
        let call = |source| Call {
            at_us: 0,
            source,
            trunk: 0,
            a: String::new(),
            from: None,
            display: None,
            b: String::new(),
            behaviour: Behaviour::NoAnswer,
        };
        let traffic = Traffic {
            calls: vec![
                call(0),
                call(1),
                call(1),
                call(1),
                call(0),
                call(2),
                call(0),
                call(0),
            ],
            sources: vec![
                src("people", Kind::Subscribers),
                src("bl", Kind::Blocklist),
                src("wg", Kind::Wangiri),
            ],
            trunks: vec![],
            files: EngineFiles::default(),
            duration_us: 1,
        };
        let r = |status, flagged, latency_us| CallResult {
            status,
            flagged,
            latency_us,
            retransmissions: 0,
        };
        let results = [
            r(302, false, 100), // people: allowed
            r(302, false, 200), // bl: missed (allowed)
            r(603, false, 300), // bl: blocked -> 1 call before detection
            r(302, true, 400),  // bl: flagged
            r(603, false, 500), // people: false positive (blocked)
            r(0, false, 0),     // wg: timeout, never detected
            r(302, false, 600), // people: allowed
            r(302, false, 700), // people: allowed
        ];
        let mut latency = Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for x in &results {
            if x.status != 0 {
                latency.record(u64::from(x.latency_us)).unwrap();
            }
        }
        let stats = RunStats {
            sent: 8,
            answered: 7,
            timeouts: 1,
            retransmissions: 6,
            stray: 0,
            cancels: 0,
            elapsed: Duration::from_secs(2),
            latency,
        };
        let rep = build(&traffic, &results, &stats);
        assert_eq!(rep.cps, 3.5);
        assert_eq!(rep.status, BTreeMap::from([(302, 5), (603, 2)]));
        let people = &rep.categories["subscribers"];
        assert_eq!((people.calls, people.blocked, people.allowed), (4, 1, 3));
        assert_eq!((people.precision, people.recall), (None, None));
        assert_eq!(rep.false_positive_rate, Some(0.25));
        let bl = &rep.categories["blocklist"];
        assert_eq!((bl.calls, bl.blocked, bl.flagged, bl.allowed), (3, 1, 1, 1));
        assert_eq!(bl.recall, Some(2.0 / 3.0));
        // 2 detected, 1 legitimate call detected: 2 / 3.
        assert_eq!(bl.precision, Some(2.0 / 3.0));
        let wg = &rep.categories["wangiri"];
        assert_eq!(
            (wg.calls, wg.timeouts, wg.recall, wg.precision),
            (1, 1, Some(0.0), None)
        );
        assert_eq!(rep.campaigns["bl"].calls_before_detection, Some(1));
        assert_eq!(rep.campaigns["bl"].detected, 2);
        assert_eq!(rep.campaigns["wg"].calls_before_detection, None);
        assert!(!rep.campaigns.contains_key("people"));
        assert_eq!(people.false_positive_rate, Some(0.25));
        assert_eq!(bl.false_positive_rate, None);
        assert_eq!(rep.campaigns["bl"].worst_calls_to_block, Some(0));
        // 7 samples 100..700: the median is the 4th, 400.
        assert_eq!(rep.latency_us.p50, 400);
        assert_eq!(rep.latency_us.max, 700);
        let table = rep.table();
        assert!(
            table.contains("false positive rate on legitimate calls: 25.00%"),
            "{table}"
        );
    }

    use hdrhistogram::Histogram;

    /// Per caller, in any written format of its number: calls from the
    /// first detection to the first block, and callers never blocked.
    #[test]
    fn calls_from_detection_to_block_are_counted_per_caller() {
        let call = |a: &str| Call {
            at_us: 0,
            source: 0,
            trunk: 0,
            a: a.into(),
            from: None,
            display: None,
            b: String::new(),
            behaviour: Behaviour::NoAnswer,
        };
        let traffic = Traffic {
            calls: vec![
                call("+77011234567"),
                call("87011234567"),
                call("+7 701 123 45 67"),
                call("8 701 123 45 67"),
                call("+77011234568"),
                call("+77011234568"),
            ],
            sources: vec![SourceInfo {
                name: "sims".into(),
                kind: Kind::Simbox,
                trunk: 0,
            }],
            trunks: vec![],
            files: EngineFiles::default(),
            duration_us: 1,
        };
        let r = |status, flagged| CallResult {
            status,
            flagged,
            latency_us: 1,
            retransmissions: 0,
        };
        let results = [
            r(302, false), // first caller: not detected
            r(302, true),  // detected (flag)
            r(302, true),  // flagged again: 1 call since detection
            r(603, false), // blocked: 2 calls from detection to block
            r(302, true),  // second caller: flagged
            r(302, true),  // never blocked
        ];
        let stats = RunStats {
            sent: 6,
            answered: 6,
            timeouts: 0,
            retransmissions: 0,
            stray: 0,
            cancels: 0,
            elapsed: Duration::from_secs(1),
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap(),
        };
        let rep = build(&traffic, &results, &stats);
        let c = &rep.campaigns["sims"];
        assert_eq!(c.calls_before_detection, Some(1));
        assert_eq!(c.worst_calls_to_block, Some(2));
        assert_eq!(c.callers_never_blocked, 1);
    }
}
