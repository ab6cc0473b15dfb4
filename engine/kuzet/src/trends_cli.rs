//! `kuzet trends`: early warnings read from the running kuzet's call
//! journal (`kuzet.rules.v1` Trends): foreign ranges and trunks whose
//! calls to distinct subscribers surge against the days before, numbers
//! that stay under every threshold yet reach many subscribers who never
//! call back (slow SIM boxes), and groups of callers sharing a trunk or
//! source and a timing. Each finding carries its figures and a list line
//! or rule to backtest (`kuzet rules backtest`).

use std::process::ExitCode;

use kuzet_api::rules as pb;

use crate::client::{finish, runtime, Conn};
use crate::publish_cli::{print, refused, rule_client, ReportFormat};

/// `kuzet trends`.
#[derive(clap::Args, Debug)]
pub struct TrendsArgs {
    /// How far back to read (7d); the last day is compared with the days
    /// before it.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub since: std::time::Duration,
    /// The recent part compared with the rest.
    #[arg(long, value_name = "DURATION", default_value = "1d", value_parser = humantime::parse_duration)]
    pub recent: std::time::Duration,
    /// Output format: text, or json (the whole report).
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
    /// How to reach kuzet.
    #[command(flatten)]
    pub conn: Conn,
}

/// Runs `kuzet trends`.
pub fn trends(a: TrendsArgs) -> ExitCode {
    finish((|| {
        let rt = runtime()?;
        rt.block_on(async {
            let r = rule_client(&a.conn)
                .await?
                .trends(pb::TrendsRequest {
                    since_s: a.since.as_secs() as i64,
                    recent_s: a.recent.as_secs() as i64,
                })
                .await
                .map_err(|s| refused(&a.conn, s))?
                .into_inner();
            match a.format {
                ReportFormat::Json => print(&format!("{}\n", r.report_json)),
                ReportFormat::Text => {
                    let report: kuzet_journal::trends::TrendReport =
                        serde_json::from_str(&r.report_json).map_err(|e| {
                            crate::client::Failure(1, format!("kuzet's report did not parse: {e}"))
                        })?;
                    let mut out = String::new();
                    let _ = report.write_text(&mut out);
                    print(&out)
                }
            }
        })
    })())
}
