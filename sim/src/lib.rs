//! kuzet-sim: traffic for kuzet, and the instruments that measure it.
//!
//! Today this crate holds [`population`], which makes deterministic,
//! labelled call sets and the list files they assume, so end-to-end tests
//! (SIPp against the real `kuzet` binary) can check verdict counts exactly.
//! The load driver, scenario files and mock peers grow here next.

pub mod population;
