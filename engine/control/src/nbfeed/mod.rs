//! The National Bank's Anti-Fraud Centre feed (docs/nb-feed.md): what a
//! batch is, how it is verified and read, and which batch may follow
//! which ([`batch`]). The puller, the layer it feeds, cases and reports
//! to the Centre come with the rest of issue 21.

pub mod batch;
pub mod calendar;
