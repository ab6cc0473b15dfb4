//! kuzet's data plane: the call path and the workers that run it.
//!
//! - [`handler`]: one SIP message in, one action out (validate, extract the
//!   numbers, judge, then redirect, proxy or answer the outcome API).
//! - [`transport`]: the UDP workers (batched syscalls from `kuzet-net`) and
//!   SIP over TCP.
//! - [`trunks`]: source address to trunk name and kind.
//! - [`metrics`]: `*_total` counters (the call path's, and the registry
//!   other crates' counter sets join) and the service-time histogram.
//! - [`records`]: the record queue, a ring in a memory-mapped file that
//!   the workers write verdicts into and the recorder reads; it outlives
//!   the process.
//! - [`journal`]: the call journal's queue, every scored call's facts and
//!   every outcome, handed off the call path like the records.
//! - [`config`]: the config sections the call path owns (`[server]`,
//!   `[proxy]`, `[verdict]`, `[numbers]`, `[outcomes]`, `[[trunks]]`).
//!
//! This crate links nothing slow: no gRPC, no database, no HTTP client. The
//! control plane swaps the list snapshot the handler reads, and reads the
//! records the handler leaves in the record queue; nothing here ever waits
//! on it.

#![forbid(unsafe_code)]

pub mod config;
pub mod handler;
pub mod journal;
pub mod metrics;
pub mod records;
pub mod transport;
pub mod trunks;

pub use handler::{Handler, Outcome, Settings, SharedLists};
