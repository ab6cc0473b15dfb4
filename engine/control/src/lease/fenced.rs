//! The store's ports as a singleton sees them: [`Fenced`] wraps a port
//! and a lease. Every call first asks the lease whether this node still
//! leads ([`Lease::check`], which reads the monotonic clock, so a process
//! that wakes from a pause finds its lead over before its first call),
//! and is refused as [`StoreError::Fenced`] when it does not; a call the
//! store itself refuses as fenced (another node leads with a higher
//! token) ends the lead ([`Lease::fenced`]: counted, said at WARN), and
//! the singleton's task is stopped by [`super::singleton::spawn`].
//!
//! Only a singleton's own handle on a port is wrapped: the API, the
//! gauges and the other nodes' work use the port as it is.

use std::sync::Arc;

use kuzet_store::centre::{
    Case, CaseCounts, CaseDecision, CentreBacklog, FeedChange, FeedRow, NewCase, NewReport,
    ReportDue, ReportRow,
};
use kuzet_store::outbox::{Due, Payload};
use kuzet_store::ports::Backlog;
use kuzet_store::{Centre, Outbox, StoreError};

use super::Lease;

/// A port `P` used only while this node leads `lease`.
pub struct Fenced<P: ?Sized> {
    inner: Arc<P>,
    lease: Arc<Lease>,
}

impl<P: ?Sized> Fenced<P> {
    /// `inner`, used only while this node leads `lease`.
    pub fn new(inner: Arc<P>, lease: Arc<Lease>) -> Fenced<P> {
        Fenced { inner, lease }
    }

    /// Runs `f` on the port if this node leads, and ends the lead if the
    /// store refuses it as fenced.
    fn run<T>(&self, f: impl FnOnce(&P) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.lease.check()?;
        let out = f(&self.inner);
        if let Err(e @ StoreError::Fenced { .. }) = &out {
            self.lease.fenced(e);
        }
        out
    }
}

/// The Centre port of the feed's puller, the case clock or the Centre's
/// report outbox, fenced by its lease.
pub fn centre(inner: Arc<dyn Centre>, lease: Arc<Lease>) -> Arc<dyn Centre> {
    Arc::new(Fenced::new(inner, lease))
}

/// The register outbox's port, fenced by its lease.
pub fn outbox(inner: Arc<dyn Outbox>, lease: Arc<Lease>) -> Arc<dyn Outbox> {
    Arc::new(Fenced::new(inner, lease))
}

impl Centre for Fenced<dyn Centre> {
    fn cursor(&self, stream: &str) -> Result<u64, StoreError> {
        self.run(|p| p.cursor(stream))
    }

    fn feed_load(&self, now_s: i64, each: &mut dyn FnMut(FeedRow)) -> Result<u64, StoreError> {
        self.run(|p| p.feed_load(now_s, each))
    }

    fn feed_apply(&self, seq: u64, changes: &[FeedChange]) -> Result<(), StoreError> {
        self.run(|p| p.feed_apply(seq, changes))
    }

    fn feed_expire(&self, now_s: i64) -> Result<u64, StoreError> {
        self.run(|p| p.feed_expire(now_s))
    }

    fn feed_entry(&self, target: &str) -> Result<Option<FeedRow>, StoreError> {
        self.run(|p| p.feed_entry(target))
    }

    fn open_cases(&self, seq: u64, cases: &[NewCase]) -> Result<Vec<Case>, StoreError> {
        self.run(|p| p.open_cases(seq, cases))
    }

    fn case(&self, id: i64) -> Result<Option<Case>, StoreError> {
        self.run(|p| p.case(id))
    }

    fn cases(
        &self,
        state: Option<&str>,
        due_before_us: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Case>, StoreError> {
        self.run(|p| p.cases(state, due_before_us, limit))
    }

    fn decide(
        &self,
        id: i64,
        d: &CaseDecision,
        report: &NewReport,
    ) -> Result<Result<Case, String>, StoreError> {
        self.run(|p| p.decide(id, d, report))
    }

    fn case_counts(&self, now_us: i64, near_us: i64) -> Result<CaseCounts, StoreError> {
        self.run(|p| p.case_counts(now_us, near_us))
    }

    fn queue_reports(&self, reports: &[NewReport]) -> Result<usize, StoreError> {
        self.run(|p| p.queue_reports(reports))
    }

    fn due_reports(&self, now_us: i64, limit: usize) -> Result<Vec<ReportDue>, StoreError> {
        self.run(|p| p.due_reports(now_us, limit))
    }

    fn report_tried(&self, id: i64) -> Result<(), StoreError> {
        self.run(|p| p.report_tried(id))
    }

    fn report_delivered(&self, id: i64, at_us: i64) -> Result<(), StoreError> {
        self.run(|p| p.report_delivered(id, at_us))
    }

    fn report_retry(&self, id: i64, next_at_us: i64, error: &str) -> Result<(), StoreError> {
        self.run(|p| p.report_retry(id, next_at_us, error))
    }

    fn report_dead_letter(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.run(|p| p.report_dead_letter(id, error))
    }

    fn report_backlog(&self) -> Result<CentreBacklog, StoreError> {
        self.run(|p| p.report_backlog())
    }

    fn reports(&self, state: Option<&str>, limit: usize) -> Result<Vec<ReportRow>, StoreError> {
        self.run(|p| p.reports(state, limit))
    }
}

impl Outbox for Fenced<dyn Outbox> {
    fn due(&self, now_us: i64, limit: usize) -> Result<Vec<Due>, StoreError> {
        self.run(|p| p.due(now_us, limit))
    }

    fn claim(&self, id: i64) -> Result<Result<Payload, String>, StoreError> {
        self.run(|p| p.claim(id))
    }

    fn delivered(&self, d: &Due, case: &str) -> Result<(), StoreError> {
        self.run(|p| p.delivered(d, case))
    }

    fn retry(&self, d: &Due, next_at_us: i64, error: &str) -> Result<(), StoreError> {
        self.run(|p| p.retry(d, next_at_us, error))
    }

    fn dead_letter(&self, d: &Due, error: &str) -> Result<(), StoreError> {
        self.run(|p| p.dead_letter(d, error))
    }

    fn backlog(&self) -> Result<Backlog, StoreError> {
        self.run(|p| p.backlog())
    }
}
