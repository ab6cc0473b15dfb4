//! kuzet's engine: the data plane and control plane behind the `kuzet` binary.
//!
//! - [`sip`]: the zero-copy SIP layer.
//! - [`handler`]: the call path, one message in and one action out.
//! - [`config`]: the TOML config with embedded defaults, and trunks.
//! - [`lists`]: loading and hot-reloading list files (control plane).
//! - [`transport`]: UDP workers with batched syscalls, and TCP.
//! - [`metrics`]: counters and the service-time histogram.
//! - [`server`]: wires it together and runs until shutdown.

pub mod config;
pub mod handler;
pub mod lists;
pub mod metrics;
pub mod server;
pub mod sip;
pub mod transport;
