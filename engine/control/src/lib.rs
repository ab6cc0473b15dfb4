//! kuzet's control plane: everything that is not the call path.
//!
//! - [`config`]: the config sections control owns (`[lists]`,
//!   `[control]`, `[admin]`, `[hep]`, `[register]`).
//! - [`admin`]: the admin HTTP address: Prometheus `/metrics`, `/healthz`
//!   and `/readyz`.
//! - [`access`]: bearer tokens with roles, kept as hashes and compared in
//!   constant time.
//! - [`gate`]: the access gate every control surface asks, gRPC and HTTP
//!   alike: who is asking, whether their role may do this operation, and
//!   the audit entry for every request, allowed or refused.
//! - [`investigate`]: the investigators' gRPC API on the control address,
//!   behind the gate.
//! - [`report`]: delivers incidents from the store's outbox to the
//!   pre-trial register, exactly once in effect.
//! - [`hep`]: each decision as a HEPv3 packet to Homer, from the verdict
//!   thread.
//! - [`guard`]: caps and deadlines for the control surfaces'
//!   connections (`ConnGuard`), so nobody holds them by connecting and
//!   waiting.
//! - [`files`]: reading operator files safely: regular files only, sizes
//!   and lines capped, non-UTF-8 named by line.
//! - [`publish`]: the one writer of the data plane's snapshot: sources of
//!   lists and rules in, checked, versioned snapshots out; only changed
//!   layers rebuilt, failed loads retried.
//! - [`lists`]: the config's list files, compiled-in lists and rule file
//!   as a source.
//! - [`safe`]: text safe to show a person: control characters escaped
//!   visibly, CSV formulas neutralised, the text log's line writer.
//! - [`plane`]: the control thread and its own runtime: reloads, stats,
//!   behaviour-state sweeps, the loss watch; and the investigators' API
//!   on a runtime of its own.
//! - [`cluster`]: behaviour counts shared with the other nodes through
//!   Redis (one instance or a Redis Cluster, every key under one hash
//!   tag), as per-node deltas, off the call path.
//! - [`lease`]: one leader per singleton (the Centre's puller, case clock
//!   and report outbox, the register outbox) when the store is shared: a
//!   lease in Redis with a fencing token the store checks.
//! - [`nbfeed`]: the National Bank's Anti-Fraud Centre: its signed feed
//!   as the `nb_feed` layer, its alerts as cases with deadlines, and the
//!   reports kuzet sends it through a durable outbox.
//! - [`recorder`]: reads the record queue, logs verdicts, sends them to
//!   HEP and commits them to the store; replays the queue after a crash.
//!
//! Each part that counts something the call path does not declares its own
//! counters beside the code that counts (`ReloadCounters` in [`publish`],
//! `RecorderCounters`, `RegisterCounters` in [`report`], `HepCounters`,
//! `SweepCounters` in [`plane`]); [`register_counters`] hands them all to
//! the shared [`Metrics`] in the order they are reported.
//!
//! Nothing here runs on a SIP worker. The data plane reads what this crate
//! publishes (an `ArcSwap` snapshot) and hands it events through bounded
//! queues; it never waits on anything here.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod cluster;
pub mod config;
pub mod files;
pub mod gate;
pub mod guard;
pub mod hep;
pub mod investigate;
pub mod lease;
pub mod lists;
pub mod nbfeed;
pub mod plane;
pub mod publish;
pub mod publishing;
pub mod recorder;
pub mod report;
pub mod safe;

use std::sync::Arc;

use kuzet_dataplane::metrics::{DuplicateCounter, Metrics};

/// Registers every counter set of the control plane with `metrics`, once
/// at start-up and before anything counts, so the counters line, the
/// shutdown summary and `/metrics` always show every one of them (zero
/// until it moves), in this order: sweeps, recorder, register, reloads,
/// HEP. Each part then finds its own set with
/// [`Metrics::counter_set`].
pub fn register_counters(metrics: &Metrics) -> Result<(), DuplicateCounter> {
    metrics.register(Arc::new(plane::SweepCounters::default()))?;
    metrics.register(Arc::new(recorder::RecorderCounters::default()))?;
    metrics.register(Arc::new(report::RegisterCounters::default()))?;
    metrics.register(Arc::new(publish::ReloadCounters::default()))?;
    metrics.register(Arc::new(hep::HepCounters::default()))?;
    metrics.register(Arc::new(nbfeed::NbankCounters::default()))?;
    metrics.register(Arc::new(cluster::ClusterCounters::default()))?;
    metrics.register(Arc::new(lease::LeaseCounters::default()))?;
    metrics.register(Arc::new(publishing::shared::VersionCounters::default()))?;
    metrics.register(Arc::new(kuzet_journal::write::JournalCounters::default()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_control_counter_set_registers_without_a_clash() {
        let m = Metrics::default();
        register_counters(&m).unwrap();
        for name in [
            "state_sweeps_total",
            "records_unreadable_total",
            "store_records_total",
            "register_dead_letters_total",
            "list_reload_failures_total",
            "hep_send_errors_total",
            "lease_fenced_total",
        ] {
            assert_eq!(m.value(name), Some(0), "{name}");
        }
        // Owners asking later get the registered sets.
        m.counter_set::<publish::ReloadCounters>().failures.inc();
        assert_eq!(m.value("list_reload_failures_total"), Some(1));
        // Twice is refused: every name is taken.
        assert!(register_counters(&m).is_err());
    }
}
