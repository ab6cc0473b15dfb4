//! kuzet's control plane: everything that is not the call path.
//!
//! - [`admin`]: the admin HTTP address: Prometheus `/metrics`, `/healthz`
//!   and `/readyz`.
//! - [`access`]: bearer tokens with roles, kept as hashes and compared in
//!   constant time.
//! - [`investigate`]: the investigators' gRPC API on the control address,
//!   every request checked and audited.
//! - [`report`]: delivers incidents from the store's outbox to the
//!   pre-trial register, exactly once in effect.
//! - [`hep`]: each decision as a HEPv3 packet to Homer, from the verdict
//!   thread.
//! - [`files`]: reading operator files safely: regular files only, sizes
//!   and lines capped, non-UTF-8 named by line.
//! - [`lists`]: loading list files and the rule file into one snapshot, and
//!   reloading them on change or SIGHUP (the same function at start-up and
//!   at reload).
//! - [`plane`]: the control thread and its own runtime: reloads, stats,
//!   behaviour-state sweeps, and the recorder that logs verdicts and
//!   commits them to the store.
//!
//! Nothing here runs on a SIP worker. The data plane reads what this crate
//! publishes (an `ArcSwap` snapshot) and hands it events through bounded
//! queues; it never waits on anything here.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod files;
pub mod hep;
pub mod investigate;
pub mod lists;
pub mod plane;
pub mod report;
