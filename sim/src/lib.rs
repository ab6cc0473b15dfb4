//! kuzet-sim: labelled traffic for kuzet, and the instruments that measure
//! it.
//!
//! - [`scenario`]: TOML scenario files (population, legitimate sources,
//!   fraud campaigns), checked with `file:line` errors;
//! - [`traffic`]: deterministic labelled calls from a scenario, and the
//!   list files and engine config that traffic assumes;
//! - [`cluster`]: the cluster of `deploy/cluster/` on one host (Redis,
//!   PostgreSQL, kuzet nodes, Kamailio's dispatcher in front);
//! - [`driver`]: the load driver (real SIP over UDP or TCP, open loop or
//!   saturating, RFC 3261 retransmissions, HDR latency);
//! - [`flood`]: open-loop phases of fixed rate without transaction state,
//!   latency filed by send time: overload and recovery;
//! - [`report`]: load figures and detection quality (precision, recall,
//!   false-positive rate, calls before detection);
//! - [`export`]: the same traffic as SIPp injection files;
//! - [`kamailio`]: the lists as Kamailio `db_text` tables;
//! - [`null`]: the canned-302 responder, the physical reference;
//! - [`register`]: the stand-in pre-trial register (gRPC, deduping by
//!   idempotency key, a file of what it accepted);
//! - [`nbfeed`]: the stand-in National Bank Anti-Fraud Centre (signed
//!   feed and alert batches over HTTP, reports deduped by idempotency
//!   key, and faults on demand: tampering, replays, gaps, stalls, key
//!   rotation, a dead feed);
//! - [`pki`]: a CA and the certificates it signs, made with openssl, for
//!   the stand-ins' TLS and mTLS in tests and tours;
//! - [`servers`]: real `redis-server` and PostgreSQL processes of one's
//!   own on free loopback ports (and a Redis Cluster of six
//!   `redis-server`s), for tests and the cluster tour;
//! - [`population`]: small fixed call mixes for the engine's SIPp tests;
//! - [`tour`]: a dozen calls that show a newcomer every kind of verdict.
//!
//! Labels never leave this crate: the SIP it sends carries numbers only.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod driver;
pub mod export;
pub mod flood;
pub mod kamailio;
pub mod nbfeed;
pub mod null;
pub mod pki;
pub mod population;
pub mod register;
pub mod report;
pub mod scenario;
pub mod servers;
pub mod tour;
pub mod traffic;
