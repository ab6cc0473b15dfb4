//! kuzet's control plane: everything that is not the call path.
//!
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
//! - [`recorder`]: reads the record queue, logs verdicts, sends them to
//!   HEP and commits them to the store; replays the queue after a crash.
//!
//! Nothing here runs on a SIP worker. The data plane reads what this crate
//! publishes (an `ArcSwap` snapshot) and hands it events through bounded
//! queues; it never waits on anything here.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod files;
pub mod gate;
pub mod guard;
pub mod hep;
pub mod investigate;
pub mod lists;
pub mod plane;
pub mod publish;
pub mod recorder;
pub mod report;
pub mod safe;
