//! kuzet integration tests: one binary, a module per area.
//!
//! Everything here runs against real sockets on 127.0.0.1 with the engine
//! started in-process on port 0, except `sipp`, `sim` and `kamailio`, which
//! drive the `kuzet` binary (and Kamailio) with SIPp and kuzet-sim's load
//! driver as real SIP clients.

#![forbid(unsafe_code)]

mod architecture;
pub(crate) mod attacks;
mod chain;
mod cluster;
mod cluster_store;
mod common;
mod deploy;
mod hardening;
mod hep;
mod identity;
mod investigate;
mod journal;
mod kamailio;
mod nbank;
mod nbfeed_stand_in;
pub(crate) mod operations;
pub(crate) mod ports;
mod promtool;
mod publish_load;
mod publishing;
mod register;
mod rfc4475;
mod rules;
mod seams;
mod sim;
mod sipp;
mod sockets;
mod store;
mod store_pg;
mod store_ports;
mod versions;
