//! The Centre's alerts as cases. An alert names one of the operator's own
//! numbers; kuzet opens a case due at the end of the `case_working_days`th
//! working day after the Centre took the information (in the operator's
//! calendar and local time), and an operator records the outcome with a
//! note and a BSS reference (`kuzet cases decide`), which goes back to the
//! Centre through the outbox in the same transaction.
//!
//! Alerts are pulled like feed batches: verified over their raw bytes,
//! read strictly, applied in sequence only, and a case is opened once per
//! alert id whatever the Centre resends. kuzet keeps no personal data of
//! the subscriber: the BSS reference stands in for it.

use std::sync::Arc;
use std::time::Duration;

use kuzet_dataplane::metrics::{Gauge, Metrics};
use kuzet_store::centre::{Case, CaseDecision, NewCase, NewReport};
use kuzet_store::Centre;
use tokio::sync::watch;

use super::batch::{self, Key, Rejected};
use super::calendar::Calendar;
use super::pull::{Fetched, Http};
use super::{to_rfc3339, NbankCounters};

/// The longest note and BSS reference an operator may record.
pub const MAX_DECISION_TEXT: usize = 1024;

/// Opens, decides and counts cases.
pub struct CaseDesk {
    /// Where cases live.
    pub store: Arc<dyn Centre>,
    /// Working days.
    pub calendar: Calendar,
    /// Working days to answer.
    pub working_days: u32,
    /// Seconds east of UTC.
    pub utc_offset_s: i64,
    /// Due within this is due soon.
    pub warn: Duration,
    /// The store's id: the first part of every report key.
    pub store_id: String,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// A report to the Centre still waiting after this is late: logged
    /// at WARN and shown by `/readyz` (`[nbank] victim_delay_s`).
    pub late_after: Duration,
    /// Refused alerts batches, logged at most once a minute.
    pub refusals: std::sync::Mutex<super::pull::Quiet>,
}

impl CaseDesk {
    /// The same desk on `store` (a port fenced by a lease, for a
    /// singleton's use).
    pub fn with_store(&self, store: Arc<dyn Centre>) -> CaseDesk {
        CaseDesk {
            store,
            calendar: self.calendar.clone(),
            working_days: self.working_days,
            utc_offset_s: self.utc_offset_s,
            warn: self.warn,
            store_id: self.store_id.clone(),
            metrics: self.metrics.clone(),
            late_after: self.late_after,
            refusals: Default::default(),
        }
    }

    /// The deadline (µs) of an alert the Centre took at `reported_at` (s).
    pub fn due_us(&self, reported_at: i64) -> i64 {
        self.calendar
            .deadline(reported_at, self.utc_offset_s, self.working_days)
            .saturating_mul(1_000_000)
    }

    /// Pulls the alerts while they come, opening their cases.
    pub async fn pull(self: &Arc<Self>, http: &Http, keys: &Arc<[Key]>) {
        let c = self.metrics.counter_set::<NbankCounters>();
        for _ in 0..16 {
            let st = self.store.clone();
            let cursor = match tokio::task::spawn_blocking(move || st.cursor("alerts")).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the alerts' cursor failed");
                    return;
                }
                Err(_) => return,
            };
            let (body, signature) = match http.fetch("alerts", cursor).await {
                Ok(Fetched::Batch { body, signature }) => (body, signature),
                Ok(Fetched::Nothing) => return,
                Err(e) => {
                    c.fetch_errors.inc();
                    tracing::debug!(error = %e, "the Centre's alerts did not answer");
                    return;
                }
            };
            let (me, keys) = (self.clone(), keys.clone());
            let taken = tokio::task::spawn_blocking(move || {
                me.take_alerts(&body, &signature, &keys, cursor)
            })
            .await;
            match taken {
                Ok(Ok(opened)) => {
                    c.alerts_applied.inc();
                    c.cases_opened.add(opened.len() as u64);
                    for k in &opened {
                        tracing::info!(case = k.id, alert = %k.alert_id, number = %k.number, due = %to_rfc3339(k.due_at_us / 1_000_000), "the Centre's alert opened a case");
                    }
                }
                Ok(Err(r)) => {
                    super::pull::count_refusal(&c, &r);
                    let pass = self
                        .refusals
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .pass();
                    if let Some(held) = pass {
                        tracing::warn!(cursor, reason = %r, held_back = held, "the Centre's alerts batch refused; no case opened from it (asked again from the same cursor)");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "checking an alerts batch crashed");
                    return;
                }
            }
        }
    }

    /// Checks an alerts batch and opens its cases. Blocking.
    fn take_alerts(
        &self,
        body: &[u8],
        signature: &str,
        keys: &[Key],
        cursor: u64,
    ) -> Result<Vec<Case>, Rejected> {
        let now_s = kuzet_store::now_us() / 1_000_000;
        batch::verify(body, signature, keys, now_s)?;
        let b = batch::parse_alerts(body)?;
        batch::follows(b.seq, cursor)?;
        let opened_at_us = kuzet_store::now_us();
        let cases: Vec<NewCase> = b
            .alerts
            .iter()
            .map(|a| NewCase {
                alert_id: a.id.clone(),
                number: a.number.clone(),
                category: a.category.clone(),
                centre_note: a.note.clone(),
                reported_at_us: a.reported_at.saturating_mul(1_000_000),
                opened_at_us,
                due_at_us: self.due_us(a.reported_at),
            })
            .collect();
        self.store
            .open_cases(b.seq, &cases)
            .map_err(|e| Rejected::Malformed {
                line: 0,
                why: format!("the store did not keep it: {e}"),
            })
    }

    /// Records an operator's decision on case `id` and queues its report
    /// to the Centre, together. `Ok(Err(why))` for a case that does not
    /// exist or is decided already, or text that cannot be kept.
    pub fn decide(
        &self,
        id: i64,
        confirmed: bool,
        note: &str,
        bss_ref: &str,
        by: &str,
    ) -> Result<Result<Case, String>, kuzet_store::StoreError> {
        for (what, t) in [("note", note), ("BSS reference", bss_ref)] {
            if t.len() > MAX_DECISION_TEXT || t.chars().any(char::is_control) {
                return Ok(Err(format!(
                    "the {what} must be at most {MAX_DECISION_TEXT} bytes with no control characters"
                )));
            }
        }
        if bss_ref.trim().is_empty() {
            return Ok(Err("a decision needs the BSS reference (--bss-ref): it stands in for the subscriber, whose personal data kuzet does not hold".into()));
        }
        let Some(case) = self.store.case(id)? else {
            return Ok(Err(format!("no case {id}")));
        };
        let at_us = kuzet_store::now_us();
        let body = super::reports::body::decision(
            &case.alert_id,
            &case.number,
            confirmed,
            at_us / 1_000_000,
            bss_ref,
            note,
        );
        let report = NewReport {
            key: format!("{}/decision/{}", self.store_id, case.alert_id),
            kind: "decision".into(),
            body: body.to_string(),
            not_before_us: 0,
        };
        let d = CaseDecision {
            confirmed,
            note: note.into(),
            bss_ref: bss_ref.into(),
            by: by.into(),
            at_us,
        };
        let out = self.store.decide(id, &d, &report)?;
        if out.is_ok() {
            self.metrics
                .counter_set::<NbankCounters>()
                .reports_queued
                .inc();
        }
        Ok(out)
    }

    /// Keeps the cases' gauges, and warns of overdue cases, until
    /// `shutdown`.
    pub async fn gauges(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut last_warn: Option<std::time::Instant> = None;
        let mut last_late: Option<std::time::Instant> = None;
        loop {
            let st = self.store.clone();
            let warn_us = self.warn.as_micros() as i64;
            let counts = tokio::task::spawn_blocking(move || {
                (
                    st.case_counts(kuzet_store::now_us(), warn_us),
                    st.report_backlog(),
                )
            })
            .await;
            if let Ok((Ok(k), backlog)) = counts {
                let m = &self.metrics;
                m.set(Gauge::CasesOpen, k.open as i64);
                m.set(Gauge::CasesDueSoon, k.due_soon as i64);
                m.set(Gauge::CasesOverdue, k.overdue as i64);
                if k.overdue > 0
                    && last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(600))
                {
                    last_warn = Some(std::time::Instant::now());
                    tracing::warn!(
                        overdue = k.overdue,
                        due_soon = k.due_soon,
                        "the Centre's cases are past their deadline: `kuzet cases list --due`"
                    );
                }
                if let Ok(b) = backlog {
                    let now_us = kuzet_store::now_us();
                    let late = b
                        .oldest_pending_us
                        .is_some_and(|t| now_us - t > self.late_after.as_micros() as i64);
                    m.set(Gauge::CentreLate, i64::from(late));
                    if late && last_late.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        last_late = Some(std::time::Instant::now());
                        tracing::warn!(pending = b.pending, oldest_s = b.oldest_pending_us.map_or(0, |t| (now_us - t) / 1_000_000), late_after_s = self.late_after.as_secs(), "reports to the Centre are waiting longer than [nbank] victim_delay_s: potential victims are not reaching the banks in time");
                    }
                    m.set(Gauge::CentrePending, b.pending as i64);
                    m.set(Gauge::CentreDeadLetters, b.dead_letters as i64);
                    m.set(
                        Gauge::CentreOldestPendingUnix,
                        b.oldest_pending_us.map_or(0, |t| t / 1_000_000),
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
