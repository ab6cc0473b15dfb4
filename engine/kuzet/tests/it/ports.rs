//! Free loopback ports for the servers the tests start (kuzet, Kamailio,
//! SIPp), shared with the overload test through `#[path]`.
//!
//! A port the kernel hands out for `bind(0)` comes from its ephemeral
//! range, the same range every outgoing TCP connection (a gRPC client, a
//! Redis client, an HTTP scrape in a test running beside this one) takes
//! its source port from. Between the moment a test learns such a port and
//! the moment its server binds it, another connection may take it, and
//! kuzet, which binds UDP and TCP on one port, fails with "Address already
//! in use". So ports are picked below the ephemeral range, where only an
//! explicit bind can take one, at random (tests run in parallel, in
//! separate processes) and checked free on both UDP and TCP.
//!
//! The picking is `kuzet_sim::servers::free_port`'s, which the servers
//! the sim starts (Redis, PostgreSQL, the cluster's nodes) use too.

pub use kuzet_sim::servers::free_port;
