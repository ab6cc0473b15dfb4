//! The call journal: the scoring facts of every call kuzet judged, allowed
//! ones included, and every outcome it applied, kept off the call path in
//! hourly Parquet files that analytics engines read as they are; the
//! snapshot versions those calls were judged under, kept beside them; the
//! backtest that replays a window of the journal through candidate rules
//! and lists with behaviour state rebuilt from its start; and the early
//! warnings read from it.
//!
//! - [`config`]: the `[journal]` section.
//! - [`write`]: the writer thread, draining the data plane's journal queue
//!   into files (`calls/day=…/hour=…/…parquet`, `outcomes/…`), rolling,
//!   pruning by age and size, every loss counted.
//! - [`archive`]: every snapshot version in force while the journal ran,
//!   its lists and rules kept by content digest, so a replay builds each
//!   call's own version again.
//! - [`read`]: the files of a window, read back in journal order.
//! - [`replay`]: the backtest.
//! - [`trends`]: surges, slow SIM boxes and groups.
//! - [`synth`]: calls scored as the call path scores them, into journal
//!   entries, for benches and tests that need days of journal at once.
//! - [`text`]: the escaping every printed report goes through.
//!
//! Nothing here runs on the call path; the only link to it is the bounded
//! queue of `kuzet_dataplane::journal`.

#![forbid(unsafe_code)]

pub mod archive;
pub mod config;
pub mod read;
pub mod replay;
pub mod row;
pub mod schema;
pub mod synth;
pub mod text;
pub mod trends;

pub mod write;

pub use config::JournalConfig;
pub use row::{CallRow, OutcomeKind, OutcomeRow, Row};
