//! The reports kuzet makes to the Centre from what it sees: numbers that
//! made fraud-like calls, the people a fraud source reached, and hits on
//! the Centre's own numbers. Each is queued in the store's outbox under a
//! key that names the fact, so a fact seen twice (a restart, a second
//! look) is queued once, and [`super::reports`] delivers it exactly once
//! in effect.
//!
//! - **Fraud sources** are the `source` incidents whose number the
//!   network vouches for (basis `asserted` or `listed`); an impersonated
//!   number is a `campaign`'s victim, never a source, and is never
//!   reported. New incidents are read from the store each second.
//! - **Potential victims.** The data plane hands every answered call
//!   (caller, callee, time) to a bounded queue. The watch keeps the recent
//!   ones per caller for `victim_lookback_s` (bounded: 256 per caller,
//!   200,000 in all, oldest dropped first). When a caller becomes a fraud
//!   source, each callee it reached is reported; a call it gets answered
//!   afterwards (allowed or flagged) is reported on the next tick. A
//!   report is queued within a second of kuzet knowing both facts, well
//!   inside `victim_delay_s`.
//! - **Feedback.** Every `feedback_every_s`, the calls of the period that
//!   the `nb_feed` rule fired on are counted per feed entry (the number,
//!   or the range that covers it, with the Centre's case reference) and
//!   sent as one report keyed by the period.
//!
//! What the watch holds in memory (recent answers, known sources) is lost
//! on a restart: a callee answered just before a restart whose caller is
//! caught just after is not reported. Everything queued is in the store.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kuzet_dataplane::handler::Answered;
use kuzet_dataplane::metrics::Metrics;
use kuzet_rules::{Number, NumberingPlan};
use kuzet_store::centre::NewReport;
use kuzet_store::incident::Incident;
use kuzet_store::query::Filter;
use kuzet_store::{Centre, Queries};
use tokio::sync::watch;

use super::layer::FeedLayer;
use super::reports::body;
use super::NbankCounters;

/// Answered calls kept per caller.
const PER_CALLER: usize = 256;
/// Answered calls kept in all.
const REACH_MAX: usize = 200_000;
/// Fraud sources remembered.
const SOURCES_MAX: usize = 100_000;
/// Answered calls taken from the queue per tick.
const DRAIN_MAX: usize = 200_000;
/// Incidents read per page.
const PAGE: usize = 500;
/// Calls counted per feedback period, at most.
const FEEDBACK_CALLS_MAX: usize = 100_000;
/// Hits per feedback report, at most (a report stays well under the
/// Centre's 1 MiB).
const FEEDBACK_HITS_MAX: usize = 2_000;

/// A fraud source: its incident and why.
#[derive(Clone, Debug)]
struct Source {
    incident: i64,
    category: String,
    since_s: i64,
}

/// Recent answered calls by caller, bounded (see the module docs).
#[derive(Default)]
struct Reach {
    by_caller: HashMap<u64, VecDeque<(u64, i64)>>,
    order: VecDeque<(u64, i64)>,
}

impl Reach {
    fn add(&mut self, caller: u64, callee: u64, at_s: i64) {
        let q = self.by_caller.entry(caller).or_default();
        if q.len() >= PER_CALLER {
            q.pop_front();
        }
        q.push_back((callee, at_s));
        self.order.push_back((caller, at_s));
        while self.order.len() > REACH_MAX {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        let Some((caller, _)) = self.order.pop_front() else {
            return;
        };
        if let Some(q) = self.by_caller.get_mut(&caller) {
            q.pop_front();
            if q.is_empty() {
                self.by_caller.remove(&caller);
            }
        }
    }

    /// Drops what is older than `before_s`.
    fn age(&mut self, before_s: i64) {
        while self.order.front().is_some_and(|(_, at)| *at < before_s) {
            self.drop_oldest();
        }
    }

    fn take(&mut self, caller: u64) -> Vec<(u64, i64)> {
        self.by_caller
            .remove(&caller)
            .map(Vec::from)
            .unwrap_or_default()
    }
}

/// The watch (see the module docs).
pub struct Watch {
    /// Answered calls from the data plane.
    pub answers: Mutex<Option<Receiver<Answered>>>,
    /// Incidents and calls.
    pub queries: Arc<dyn Queries>,
    /// The outbox.
    pub store: Arc<dyn Centre>,
    /// The feed, for the entry a hit matched.
    pub layer: Arc<FeedLayer>,
    /// Reads numbers in incidents.
    pub plan: Arc<NumberingPlan>,
    /// The first part of every key.
    pub store_id: String,
    /// `[nbank] report_fraud_numbers`.
    pub report_fraud_numbers: bool,
    /// `[nbank] victim_lookback_s`.
    pub lookback_s: i64,
    /// `[nbank] feedback_every_s`.
    pub feedback_every_s: i64,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// What one tick found to report.
#[derive(Default)]
struct Found {
    reports: Vec<NewReport>,
    victims: u64,
}

impl Watch {
    /// Runs until `shutdown`, once a second.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(rx) = self
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let c = self.metrics.counter_set::<NbankCounters>();
        let mut reach = Reach::default();
        let mut sources: HashMap<u64, Source> = HashMap::new();
        let mut seen_incident: i64 = 0;
        let every = self.feedback_every_s.max(1);
        let mut next_feedback =
            (kuzet_store::now_us() / 1_000_000).div_euclid(every) * every + every;
        let mut quiet: Option<std::time::Instant> = None;
        loop {
            let now_s = kuzet_store::now_us() / 1_000_000;
            let mut found = Found::default();
            // Answered calls.
            for a in rx.try_iter().take(DRAIN_MAX) {
                // Reports name E.164 numbers only: a short code is no
                // subscriber a bank could hold transfers for.
                if !a.caller.is_e164() || !a.callee.is_e164() {
                    continue;
                }
                let (caller, callee) = (a.caller.raw(), a.callee.raw());
                match sources.get(&caller) {
                    Some(s) if a.at_s >= s.since_s - self.lookback_s => {
                        found.victim(&self.store_id, a.caller, a.callee, a.at_s, s);
                    }
                    _ => reach.add(caller, callee, a.at_s),
                }
            }
            reach.age(now_s - self.lookback_s);
            sources.retain(|_, s| s.since_s >= now_s - self.lookback_s);
            // New incidents.
            let (q, after) = (self.queries.clone(), seen_incident);
            let incidents = tokio::task::spawn_blocking(move || new_incidents(&*q, after)).await;
            match incidents {
                Ok(Ok(list)) => {
                    for inc in list {
                        seen_incident = seen_incident.max(inc.id);
                        self.incident(&inc, now_s, &mut found, &mut reach, &mut sources);
                    }
                }
                Ok(Err(e)) => {
                    if quiet.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        quiet = Some(std::time::Instant::now());
                        tracing::warn!(error = %e, "reading incidents for the Centre's reports failed; trying again");
                    }
                }
                Err(_) => {}
            }
            // Feedback on the feed's numbers, per period.
            if now_s >= next_feedback {
                let (from, to) = (next_feedback - every, next_feedback);
                next_feedback += every;
                let me = self.clone();
                if let Ok(r) = tokio::task::spawn_blocking(move || me.feedback(from, to)).await {
                    found.reports.extend(r);
                }
            }
            if !found.reports.is_empty() {
                let st = self.store.clone();
                let reports = std::mem::take(&mut found.reports);
                match tokio::task::spawn_blocking(move || st.queue_reports(&reports)).await {
                    Ok(Ok(n)) => c.reports_queued.add(n as u64),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, victims = found.victims, "queueing reports for the Centre failed; they are lost unless seen again")
                    }
                    Err(_) => {}
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// A new incident: a fraud source (reported when the policy says so,
    /// and the callees it reached), or nothing to report.
    fn incident(
        &self,
        inc: &Incident,
        now_s: i64,
        found: &mut Found,
        reach: &mut Reach,
        sources: &mut HashMap<u64, Source>,
    ) {
        let basis = inc.evidence.basis.as_str();
        if inc.kind != "source" || !matches!(basis, "asserted" | "listed") {
            return;
        }
        let Some(n) = self
            .plan
            .normalize(inc.key.as_bytes())
            .filter(|n| n.is_e164())
        else {
            return;
        };
        let category = inc
            .evidence
            .rules
            .iter()
            .next()
            .cloned()
            .unwrap_or_else(|| "fraud".into());
        let incident = format!("{}/{}", self.store_id, inc.id);
        if self.report_fraud_numbers {
            let rules: Vec<String> = inc.evidence.rules.iter().cloned().collect();
            let body = body::fraud_number(&body::FraudNumber {
                number: &inc.key,
                basis,
                incident: &incident,
                seen_s: (inc.first_seen_us / 1_000_000, inc.last_seen_us / 1_000_000),
                blocked: inc.blocked,
                flagged: inc.flagged,
                rules: &rules,
            });
            found.reports.push(NewReport {
                key: format!("{}/fraud_number/{}", self.store_id, inc.id),
                kind: "fraud_number".into(),
                body: body.to_string(),
                not_before_us: 0,
            });
        }
        let s = Source {
            incident: inc.id,
            category,
            since_s: now_s,
        };
        for (callee, at) in reach.take(n.raw()) {
            if let Some(callee) = Number::from_raw(callee) {
                found.victim(&self.store_id, n, callee, at, &s);
            }
        }
        if sources.len() < SOURCES_MAX || sources.contains_key(&n.raw()) {
            sources.insert(n.raw(), s);
        }
    }

    /// The feedback reports of period `[from, to)` (none when the feed was
    /// not hit; more than one past [`FEEDBACK_HITS_MAX`] entries hit).
    fn feedback(&self, from: i64, to: i64) -> Vec<NewReport> {
        let f = Filter {
            rule: Some(kuzet_rules::ListId::NbFeed.name().into()),
            since_us: Some(from * 1_000_000),
            until_us: Some(to * 1_000_000),
            ..Filter::default()
        };
        let mut per_entry: BTreeMap<String, u64> = BTreeMap::new();
        let mut before = None;
        let mut counted = 0;
        loop {
            let page = match self.queries.calls(&f, before, kuzet_store::query::MAX_PAGE) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "counting the feed's hits failed; this period's feedback is skipped");
                    return Vec::new();
                }
            };
            for call in &page.calls {
                let Some(n) = call
                    .a
                    .as_deref()
                    .and_then(|a| self.plan.normalize(a.as_bytes()))
                else {
                    continue;
                };
                let target = self
                    .layer
                    .covering(n)
                    .map_or_else(|| n.to_string(), |(t, _)| t);
                *per_entry.entry(target).or_default() += 1;
            }
            counted += page.calls.len();
            match page.next {
                Some(n) if counted < FEEDBACK_CALLS_MAX => before = Some(n),
                _ => break,
            }
        }
        if per_entry.is_empty() {
            return Vec::new();
        }
        let hits: Vec<serde_json::Value> = per_entry
            .into_iter()
            .map(|(target, calls)| {
                // An entry that left the layer before the period was
                // counted: its case is no longer held.
                let case = self.store.feed_entry(&target).ok().flatten();
                body::hit(&target, case.as_ref().map(|e| e.case_ref.as_str()), calls)
            })
            .collect();
        hits.chunks(FEEDBACK_HITS_MAX)
            .enumerate()
            .map(|(part, hits)| {
                let body = body::feedback(from, to, hits);
                NewReport {
                    key: if part == 0 {
                        format!("{}/feedback/{from}", self.store_id)
                    } else {
                        format!("{}/feedback/{from}/{part}", self.store_id)
                    },
                    kind: "feedback".into(),
                    body: body.to_string(),
                    not_before_us: 0,
                }
            })
            .collect()
    }
}

impl Found {
    fn victim(&mut self, store_id: &str, source: Number, callee: Number, at_s: i64, s: &Source) {
        let incident = format!("{store_id}/{}", s.incident);
        let body = body::potential_victim(
            &callee.to_string(),
            &source.to_string(),
            at_s,
            &incident,
            &s.category,
        );
        self.reports.push(NewReport {
            key: format!("{incident}/victim/{callee}"),
            kind: "potential_victim".into(),
            body: body.to_string(),
            not_before_us: 0,
        });
        self.victims += 1;
    }
}

/// Incidents with an id above `after`, oldest first (all of them on the
/// first look, up to a few pages: keys make a second look harmless).
fn new_incidents(q: &dyn Queries, after: i64) -> Result<Vec<Incident>, kuzet_store::StoreError> {
    let mut out = Vec::new();
    let mut before = None;
    for _ in 0..4 {
        let page = q.incidents(None, before, PAGE)?;
        let done = page.len() < PAGE;
        for v in page {
            if v.incident.id <= after {
                out.reverse();
                return Ok(out);
            }
            before = Some(v.incident.id);
            out.push(v.incident);
        }
        if done {
            break;
        }
    }
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reach_is_bounded_per_caller_and_by_age() {
        let mut r = Reach::default();
        for i in 0..(PER_CALLER as u64 + 10) {
            r.add(1, 100 + i, i as i64);
        }
        assert_eq!(r.by_caller[&1].len(), PER_CALLER);
        r.add(2, 7, 1_000);
        r.age(500);
        assert!(!r.by_caller.contains_key(&1), "older than the lookback");
        assert_eq!(r.take(2), vec![(7, 1_000)]);
        assert!(r.take(2).is_empty(), "taken once");
    }
}
