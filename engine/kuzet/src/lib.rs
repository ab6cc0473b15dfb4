//! The `kuzet` binary's library half: the config file and the wiring.
//!
//! - [`config`]: the TOML config with embedded defaults; it turns into the
//!   data plane's [`Settings`](kuzet_dataplane::Settings) and the control
//!   plane's [`Sources`](kuzet_control::lists::Sources).
//! - [`server`]: binds the sockets, starts the workers and the control
//!   thread, and stops them.
//!
//! The call path lives in `kuzet-dataplane`, loading and reloading in
//! `kuzet-control`, SIP in `kuzet-sip`, syscalls in `kuzet-net`, scoring in
//! `kuzet-rules`.

#![forbid(unsafe_code)]

pub mod config;
pub mod server;
