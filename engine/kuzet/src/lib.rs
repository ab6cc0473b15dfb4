//! The `kuzet` binary's library half: the config file and the wiring.
//!
//! - [`config`]: the TOML config with embedded defaults; it turns into the
//!   data plane's [`Settings`](kuzet_dataplane::Settings) and the control
//!   plane's [`Sources`](kuzet_control::lists::Sources).
//! - [`server`]: opens the store, binds the sockets, starts the workers,
//!   the recorder and the control thread, and stops them.
//! - [`client`]: the investigators' commands (`kuzet calls`, `incidents`,
//!   `counts`, `audit`) over the control API, and `kuzet token`.
//! - [`publish_cli`]: the rule authors' commands (`kuzet lists ...`,
//!   `kuzet rules validate|stage|activate|...`) over the publishing APIs.
//! - [`nodes_cli`]: `kuzet nodes`, the cluster's nodes over
//!   `kuzet.cluster.v1`.
//! - [`cases_cli`]: `kuzet cases list|show|decide`, the National Bank
//!   Centre's cases over `kuzet.cases.v1`.
//!
//! The call path lives in `kuzet-dataplane`, loading and reloading in
//! `kuzet-control`, SIP in `kuzet-sip`, syscalls in `kuzet-net`, scoring in
//! `kuzet-rules`.

#![forbid(unsafe_code)]

pub mod cases_cli;
pub mod client;
pub mod config;
pub mod nodes_cli;
pub mod publish_cli;
pub mod server;
pub mod trends_cli;
