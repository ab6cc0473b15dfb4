//! kuzet's control plane: everything that is not the call path.
//!
//! - [`files`]: reading operator files safely: regular files only, sizes
//!   and lines capped, non-UTF-8 named by line.
//! - [`lists`]: loading list files and the rule file into one snapshot, and
//!   reloading them on change or SIGHUP (the same function at start-up and
//!   at reload).
//! - [`plane`]: the control thread and its own runtime: reloads, stats,
//!   behaviour-state sweeps, verdict logs.
//!
//! Nothing here runs on a SIP worker. The data plane reads what this crate
//! publishes (an `ArcSwap` snapshot) and hands it events through bounded
//! queues; it never waits on anything here.

#![forbid(unsafe_code)]

pub mod files;
pub mod lists;
pub mod plane;
