//! `Backtest` and `Trends` of `kuzet.rules.v1`, and the evidence a
//! promotion needs: a rule version that enforces more than the one in
//! force (a rule moved from shadow to enforce, a threshold lowered, a
//! score raised; what [`super::diff::rules`] marks `blocks_more`) is put
//! in force only with a backtest attached to it that replayed at least
//! `[publishing] backtest_min_hours` of the last seven days, or by an
//! admin with `--without-backtest` (audited). A rollback needs none: it
//! puts back what was in force before.
//!
//! Both read the node's call journal on an idle thread, one whole-journal
//! job at a time (the publishing service's heavy turn); the backtest
//! streams its progress.

use std::path::PathBuf;
use std::sync::Arc;

use kuzet_api::rules as pb;
use kuzet_journal::replay::{self, Candidate};
use kuzet_rules::ListId;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::Status;

use super::shelf::Meta;
use super::source::{lock, Which};
use super::{hex, now_us, version_id, Filter, Publishing};
use crate::gate::Principal;

/// The journal the node writes, and how a replay sizes its state.
#[derive(Clone, Debug)]
pub struct JournalAccess {
    /// The journal's folder.
    pub root: PathBuf,
    /// State sizes and the like (the window is set per request).
    pub opts: replay::Options,
}

/// A backtest as a version keeps it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Mark {
    /// Who ran it.
    pub by: String,
    /// When, µs.
    pub at_us: i64,
    /// The first and last call replayed, µs.
    pub first_call_us: i64,
    /// See `first_call_us`.
    pub last_call_us: i64,
    /// Calls replayed.
    pub calls: u64,
    /// Calls whose verdict changed.
    pub changed: u64,
    /// What would be blocked, flagged and redirected.
    pub summary: String,
}

impl Mark {
    /// Hours of calls it replayed.
    pub fn hours(&self) -> f64 {
        (self.last_call_us - self.first_call_us).max(0) as f64 / 3.6e9
    }

    /// As the API shows it.
    pub fn to_pb(&self) -> pb::Backtest {
        pb::Backtest {
            by: self.by.clone(),
            at_us: self.at_us,
            hours: (self.hours() * 100.0).round() / 100.0,
            calls: self.calls,
            changed: self.changed,
            first_call_us: self.first_call_us,
            last_call_us: self.last_call_us,
            summary: self.summary.clone(),
        }
    }
}

/// Backtests a version keeps.
const KEEP_MARKS: usize = 5;

/// The look-back a backtest must fall in to count for a promotion.
const EVIDENCE_WINDOW_US: i64 = 7 * 86_400 * 1_000_000;

/// The backtest attached to `m` that a promotion can rest on: replayed
/// calls within the last seven days, over at least `min_hours`.
pub fn evidence(m: &Meta, min_hours: f64, now_us: i64) -> Option<&Mark> {
    m.backtests
        .iter()
        .find(|b| b.last_call_us >= now_us - EVIDENCE_WINDOW_US && b.hours() >= min_hours)
}

fn summary(r: &replay::Report) -> String {
    format!(
        "{} calls replayed over {:.1} h; {} verdicts change; would block {} calls ({} callers), redirect {} ({}), flag {} ({})",
        r.calls,
        r.hours,
        r.changed,
        r.blocked.calls,
        r.blocked.callers,
        r.redirected.calls,
        r.redirected.callers,
        r.flagged.calls,
        r.flagged.callers
    )
}

impl Publishing {
    /// The journal backtests and trends read (set at start when the
    /// journal is on).
    pub fn set_journal(&self, j: JournalAccess) {
        let _ = self.journal.set(j);
    }

    fn journal_access(&self) -> Result<JournalAccess, Status> {
        self.journal.get().cloned().ok_or_else(|| {
            Status::failed_precondition(
                "this node keeps no call journal ([journal] enabled needs [store] enabled): there is nothing to replay",
            )
        })
    }

    /// Runs a backtest for `p`, sending progress to `tx`; the last
    /// message (returned) carries the report.
    pub(crate) async fn run_backtest(
        self: &Arc<Self>,
        p: &Principal,
        r: pb::BacktestRequest,
        tx: mpsc::Sender<Result<pb::BacktestProgress, Status>>,
        f: &Filter,
    ) -> Result<(pb::BacktestProgress, u64), Status> {
        let j = self.journal_access()?;
        // The candidate's rules, and the staged version they are (to
        // attach the backtest to).
        let (rules, label, attach) = match &r.rules {
            None => (None, "the versions in force".to_string(), None),
            Some(pb::backtest_request::Rules::Text(t)) => {
                let name = if t.name.is_empty() {
                    "rules.toml"
                } else {
                    &t.name
                };
                let set = kuzet_rules::ruleset::RuleSet::from_toml_str(
                    &t.toml,
                    name,
                    &self.plan,
                    &self.policy,
                )
                .map_err(|e| Status::invalid_argument(format!("{e}; nothing was replayed")))?;
                let digest = hex(&Sha256::digest(t.toml.as_bytes())[..16]);
                let attach = self.source.rules.as_ref().and_then(|s| {
                    lock(s)
                        .index
                        .versions
                        .iter()
                        .find(|m| m.digest == digest)
                        .map(|m| m.id)
                });
                (Some(Arc::new(set)), name.to_string(), attach)
            }
            Some(pb::backtest_request::Rules::Version(v)) => {
                let id = version_id(v)?;
                if self.source.rules.is_none() {
                    return Err(Status::failed_precondition(
                        "the rules are read from [rules] file, not published: backtest the file itself",
                    ));
                }
                let me = self.clone();
                let set = super::blocking(move || {
                    let shelf = me
                        .source
                        .rules
                        .as_ref()
                        .ok_or_else(|| Status::internal("no rules shelf"))?;
                    let s = lock(shelf);
                    super::rules::Rules(me.clone()).version_rules(&s, Some(id))
                })
                .await?;
                (Some(Arc::new(set)), format!("rules v{id}"), Some(id))
            }
        };
        let mut lists = Vec::new();
        for spec in &r.lists {
            let (name, v) = spec.split_once('=').ok_or_else(|| {
                Status::invalid_argument(format!(
                    "--lists {spec}: write LIST=VERSION, as blocklist=v3"
                ))
            })?;
            let l = ListId::from_name(name).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "--lists {spec}: no list {name} ({})",
                    ListId::names()
                ))
            })?;
            if self.source.lists[l].is_none() {
                return Err(Status::failed_precondition(format!(
                    "--lists {spec}: {name} is not published ([publishing] lists)"
                )));
            }
            let id = version_id(v)?;
            let me = self.clone();
            let list = super::idle("backtest", move || {
                super::lists::version_list(&me, l, Some(id))
            })
            .await?;
            lists.push((l, list, format!("{name} v{id}")));
        }
        let label = std::iter::once(label)
            .chain(lists.iter().map(|(_, _, n)| n.clone()))
            .collect::<Vec<_>>()
            .join(" + ");
        let since_s = if r.since_s > 0 { r.since_s } else { 86_400 };
        let until_us = now_us();
        let mut opts = j.opts.clone();
        opts.since_us = until_us - since_s.saturating_mul(1_000_000);
        opts.until_us = until_us + 1;
        if r.examples > 0 {
            opts.examples = r.examples.min(50) as usize;
        }
        let cand = Candidate {
            label,
            rules,
            lists,
        };
        let _turn = self.heavy().await?;
        let (plan, policy) = ((*self.plan).clone(), self.policy);
        let progress_tx = tx.clone();
        let report = super::idle("backtest", move || {
            let mut loader = kuzet_journal::archive::Loader::new(&j.root, plan, policy);
            let mut last = std::time::Instant::now();
            let mut progress = |done: u64, total: u64| {
                if last.elapsed() >= std::time::Duration::from_millis(250) {
                    last = std::time::Instant::now();
                    let _ = progress_tx.try_send(Ok(pb::BacktestProgress {
                        bytes_done: done,
                        bytes_total: total,
                        ..Default::default()
                    }));
                }
            };
            replay::backtest(&j.root, &mut loader, &cand, &opts, &mut progress)
                .map_err(|e| Status::internal(format!("reading the journal: {e}")))
        })
        .await?;
        let mut attached_to = String::new();
        if let (Some(id), true) = (attach, report.calls > 0) {
            let mark = Mark {
                by: p.who.clone(),
                at_us: now_us(),
                first_call_us: report.first_call_us,
                last_call_us: report.last_call_us,
                calls: report.calls,
                changed: report.changed,
                summary: summary(&report),
            };
            let me = self.clone();
            super::blocking(move || {
                let shelf = me
                    .source
                    .rules
                    .as_ref()
                    .ok_or_else(|| Status::internal("no rules shelf"))?;
                let mut s = lock(shelf);
                me.commit(Which::Rules, &mut s, |idx| {
                    let Some(m) = idx.versions.iter_mut().find(|m| m.id == id) else {
                        return Ok(());
                    };
                    m.backtests.insert(0, mark.clone());
                    m.backtests.truncate(KEEP_MARKS);
                    Ok(())
                })
            })
            .await?;
            attached_to = format!("v{id}");
        }
        f.set(json!({
            "candidate": report.candidate,
            "since_s": since_s,
            "lists": r.lists,
            "calls": report.calls,
            "changed": report.changed,
            "attached_to": attached_to,
        }));
        let json = serde_json::to_string(&report)
            .map_err(|e| Status::internal(format!("the report: {e}")))?;
        let n = report.calls;
        Ok((
            pb::BacktestProgress {
                bytes_done: 0,
                bytes_total: 0,
                report_json: json,
                attached_to,
            },
            n,
        ))
    }

    /// Reads the journal's trends.
    pub(crate) async fn run_trends(
        self: &Arc<Self>,
        r: pb::TrendsRequest,
    ) -> Result<(pb::TrendsResponse, u64), Status> {
        let j = self.journal_access()?;
        let _turn = self.heavy().await?;
        let plan = (*self.plan).clone();
        let report = super::idle("trends", move || {
            Ok(trends(&j.root, &plan, r.since_s, r.recent_s))
        })
        .await?;
        let report = report.map_err(|e| Status::internal(format!("reading the journal: {e}")))?;
        let n = report.calls;
        let json = serde_json::to_string(&report)
            .map_err(|e| Status::internal(format!("the report: {e}")))?;
        Ok((pb::TrendsResponse { report_json: json }, n))
    }
}

/// Trends over the last `since_s` (0: seven days) of the journal under
/// `root`, the last `recent_s` (0: a day) against the days before.
pub fn trends(
    root: &std::path::Path,
    plan: &kuzet_rules::NumberingPlan,
    since_s: i64,
    recent_s: i64,
) -> Result<kuzet_journal::trends::TrendReport, String> {
    let until_us = now_us() + 1;
    let since_s = if since_s > 0 { since_s } else { 7 * 86_400 };
    let since_us = until_us - since_s.saturating_mul(1_000_000);
    let mut opts = kuzet_journal::trends::TrendOptions {
        since_us,
        until_us,
        ..Default::default()
    };
    if recent_s > 0 {
        opts.recent_s = recent_s;
    }
    let mut rows = kuzet_journal::read::Rows::open(root, since_us, until_us);
    let report = kuzet_journal::trends::trends(&mut rows, plan, &opts);
    match rows.error {
        Some(e) => Err(e.to_string()),
        None => Ok(report),
    }
}

/// How often, and over what, the trend watch reads the journal.
#[derive(Clone, Copy, Debug)]
pub struct TrendWatch {
    /// Between reads.
    pub every: std::time::Duration,
    /// The window each read covers, s.
    pub since_s: i64,
    /// Its recent period, s.
    pub recent_s: i64,
}

impl Publishing {
    /// Reads the journal's trends every `w.every` (the first read a
    /// minute after start, or sooner when `every` is shorter), on an idle
    /// thread in the heavy turn, and serves their counts as
    /// `kuzet_trend_findings{kind}` with the read's time and length. A
    /// read that fails is logged at WARN and leaves the last counts and
    /// time as they were (the time then grows old: the alert on it says
    /// so). Ends with the runtime.
    pub fn spawn_trend_watch(
        self: &Arc<Self>,
        metrics: Arc<kuzet_dataplane::metrics::Metrics>,
        w: TrendWatch,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let first = w.every.min(std::time::Duration::from_secs(60));
            tokio::time::sleep(first).await;
            loop {
                me.read_trends_once(&metrics, w).await;
                tokio::time::sleep(w.every).await;
            }
        });
    }

    async fn read_trends_once(&self, metrics: &kuzet_dataplane::metrics::Metrics, w: TrendWatch) {
        use kuzet_dataplane::metrics::Gauge;
        let Some(j) = self.journal.get().cloned() else {
            return;
        };
        let Ok(_turn) = self.heavy().await else {
            // Another heavy job ran the whole wait: the next tick reads.
            return;
        };
        let plan = (*self.plan).clone();
        let started = std::time::Instant::now();
        let report = super::idle("trends", move || {
            Ok(trends(&j.root, &plan, w.since_s, w.recent_s))
        })
        .await;
        match report {
            Ok(Ok(r)) => {
                // counts() is in this order: surges, slow SIM boxes, groups.
                let gauges = [
                    Gauge::TrendSurges,
                    Gauge::TrendSlowSimboxes,
                    Gauge::TrendGroups,
                ];
                for (g, (_, n)) in gauges.into_iter().zip(r.counts()) {
                    metrics.set(g, n as i64);
                }
                metrics.set(Gauge::TrendLastRunUnix, now_us() / 1_000_000);
                metrics.set(
                    Gauge::TrendLastRunMs,
                    started.elapsed().as_millis().min(i64::MAX as u128) as i64,
                );
                let [s, b, g] = r.counts().map(|x| x.1);
                if s + b + g > 0 {
                    tracing::info!(
                        surges = s,
                        slow_simboxes = b,
                        groups = g,
                        calls = r.calls,
                        "the journal's trends show findings: `kuzet trends` lists them with a rule or list entry to backtest"
                    );
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the journal's trends failed; kuzet_trend_findings keeps the last read's counts")
            }
            Err(e) => {
                tracing::warn!(error = %e.message(), "reading the journal's trends failed; kuzet_trend_findings keeps the last read's counts")
            }
        }
    }
}
