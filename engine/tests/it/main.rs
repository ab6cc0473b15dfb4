//! kuzet-engine integration tests: one binary, a module per area.
//!
//! Everything here runs against real sockets on 127.0.0.1 with the engine
//! started in-process on port 0, except `sipp`, which drives the `kuzet`
//! binary with SIPp as a real SIP client.

mod common;
mod rfc4475;
mod sipp;
mod sockets;
