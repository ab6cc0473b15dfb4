//! `kuzet cases list|show|decide`: the National Bank Anti-Fraud Centre's
//! cases on a running kuzet (`kuzet.cases.v1`). It connects like the other
//! commands ([`crate::client`]): a token over TCP, or none as kuzet's own
//! user through the data directory's socket (an investigator, who may
//! read and decide cases). The server checks, stores and audits; this
//! client shows what it answers, every text the Centre or an operator
//! wrote escaped.

use std::process::ExitCode;

use kuzet_api::cases as pb;
use kuzet_api::cases::case_service_client::CaseServiceClient;
use kuzet_control::safe::visible;
use serde_json::json;

use crate::client::{channel, dash, finish, runtime, time_text, Conn, Failure, MAX_ANSWER};
use crate::publish_cli::{print, print_json, refused, table, Authed, Output};

/// `kuzet cases`.
#[derive(clap::Subcommand, Debug)]
pub enum CasesCommand {
    /// The Centre's cases, soonest due first.
    ///
    /// A case is opened for each alert the Centre sends on one of the
    /// operator's numbers, due at the end of the second working day
    /// ([nbank] case_working_days) after the Centre took the information.
    /// `--due` lists the open cases due within [nbank] case_warn_s or past
    /// their deadline: the morning's work.
    List {
        /// Only open cases due soon or overdue.
        #[arg(long)]
        due: bool,
        /// Only cases in this state.
        #[arg(long, value_parser = ["open", "confirmed", "not_confirmed"])]
        state: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        format: Output,
        /// How to reach kuzet.
        #[command(flatten)]
        conn: Conn,
    },
    /// One case with everything kuzet holds on its number: its calls, the
    /// rules that fired on them, and its incidents.
    Show {
        /// The case id (from `kuzet cases list`).
        id: i64,
        /// Calls to show, newest first (at most 200).
        #[arg(long, default_value_t = 20)]
        calls: u32,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        format: Output,
        /// How to reach kuzet.
        #[command(flatten)]
        conn: Conn,
    },
    /// kuzet's reports to the Centre as its outbox holds them, newest
    /// first: decisions, fraud numbers, potential victims and feedback,
    /// pending, delivered, or refused by the Centre (`dead_letter`, with
    /// its reason; never retried).
    Reports {
        /// Only reports in this state.
        #[arg(long, value_parser = ["pending", "delivered", "dead_letter"])]
        state: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        format: Output,
        /// How to reach kuzet.
        #[command(flatten)]
        conn: Conn,
    },
    /// Record the outcome of a case; it goes to the Centre.
    ///
    /// `--confirmed`: the fraud is confirmed and the number was suspended.
    /// `--not-confirmed`: the check found no fraud. Either way give the
    /// BSS reference of the subscriber's record: it stands in for the
    /// subscriber, whose personal data kuzet does not hold. The decision
    /// is final; the Centre gets it exactly once, even across a restart.
    Decide {
        /// The case id.
        id: i64,
        /// Fraud confirmed; the number was suspended.
        #[arg(
            long,
            conflicts_with = "not_confirmed",
            required_unless_present = "not_confirmed"
        )]
        confirmed: bool,
        /// No fraud found.
        #[arg(long)]
        not_confirmed: bool,
        /// What was found (at most 1024 bytes).
        #[arg(long, default_value = "")]
        note: String,
        /// The BSS reference of the subscriber's record.
        #[arg(long, value_name = "REF")]
        bss_ref: String,
        /// How to reach kuzet.
        #[command(flatten)]
        conn: Conn,
    },
}

async fn client(c: &Conn) -> Result<CaseServiceClient<Authed>, Failure> {
    let (channel, bearer) = channel(c).await?;
    Ok(CaseServiceClient::with_interceptor(channel, bearer).max_decoding_message_size(MAX_ANSWER))
}

const HEAD: [&str; 7] = [
    "ID",
    "DUE (UTC)",
    "",
    "STATE",
    "NUMBER",
    "CATEGORY",
    "ALERT",
];

/// "in 5h" / "overdue 2h" / "-" for a decided case.
fn due_in(c: &pb::Case, now_us: i64) -> String {
    if c.state != "open" {
        return "-".into();
    }
    let left = (c.due_at_us - now_us) / 1_000_000;
    let span = |s: i64| {
        if s >= 86_400 {
            format!("{}d{}h", s / 86_400, s % 86_400 / 3600)
        } else if s >= 3600 {
            format!("{}h{}m", s / 3600, s % 3600 / 60)
        } else {
            format!("{}m", s / 60)
        }
    };
    if left < 0 {
        format!("OVERDUE {}", span(-left))
    } else {
        format!("in {}", span(left))
    }
}

fn case_json(c: &pb::Case) -> serde_json::Value {
    json!({
        "id": c.id,
        "alert_id": c.alert_id,
        "number": c.number,
        "category": c.category,
        "centre_note": c.centre_note,
        "reported_at": time_text(c.reported_at_us),
        "opened_at": time_text(c.opened_at_us),
        "due_at": time_text(c.due_at_us),
        "state": c.state,
        "decided_at": if c.decided_at_us > 0 { time_text(c.decided_at_us) } else { String::new() },
        "decided_by": c.decided_by,
        "note": c.note,
        "bss_ref": c.bss_ref,
    })
}

/// Runs `kuzet cases`.
pub fn cases(c: CasesCommand) -> ExitCode {
    finish((|| {
        let rt = runtime()?;
        rt.block_on(async {
            match c {
                CasesCommand::List {
                    due,
                    state,
                    limit,
                    format,
                    conn,
                } => {
                    let r = client(&conn)
                        .await?
                        .list_cases(pb::ListCasesRequest {
                            due,
                            state: state.unwrap_or_default(),
                            limit,
                        })
                        .await
                        .map_err(|s| refused(&conn, s))?
                        .into_inner();
                    match format {
                        Output::Jsonl => {
                            for k in &r.cases {
                                print_json(&case_json(k))?;
                            }
                        }
                        Output::Table if r.cases.is_empty() => {
                            eprintln!("{}", if due { "no case is due" } else { "no cases" });
                        }
                        Output::Table => {
                            let rows: Vec<Vec<String>> = r
                                .cases
                                .iter()
                                .map(|k| {
                                    vec![
                                        k.id.to_string(),
                                        time_text(k.due_at_us),
                                        due_in(k, r.now_us),
                                        visible(&k.state).into_owned(),
                                        visible(&k.number).into_owned(),
                                        visible(&k.category).into_owned(),
                                        visible(&k.alert_id).into_owned(),
                                    ]
                                })
                                .collect();
                            print(&table(&HEAD, &rows))?;
                        }
                    }
                }
                CasesCommand::Show {
                    id,
                    calls,
                    format,
                    conn,
                } => {
                    let r = client(&conn)
                        .await?
                        .get_case(pb::GetCaseRequest {
                            id,
                            max_calls: calls,
                        })
                        .await
                        .map_err(|s| refused(&conn, s))?
                        .into_inner();
                    let k = r.case.clone().unwrap_or_default();
                    match format {
                        Output::Jsonl => {
                            let mut v = case_json(&k);
                            v["calls"] = json!(r
                                .calls
                                .iter()
                                .map(|c| json!({
                                    "time": time_text(c.ts_us),
                                    "verdict_id": c.verdict_id,
                                    "decision": c.decision,
                                    "caller": c.caller,
                                    "callee": c.callee,
                                    "rules": c.rules,
                                }))
                                .collect::<Vec<_>>());
                            v["rules_fired"] = json!(r.rules_fired);
                            v["incidents"] = json!(r
                                .incidents
                                .iter()
                                .map(|i| json!({"id": i.id, "kind": i.kind, "key": i.key, "state": i.state, "blocked": i.blocked, "flagged": i.flagged}))
                                .collect::<Vec<_>>());
                            print_json(&v)?;
                        }
                        Output::Table => {
                            let mut out = String::new();
                            let now = kuzet_store::now_us();
                            for (label, value) in [
                                ("case", k.id.to_string()),
                                ("alert", k.alert_id.clone()),
                                ("number", k.number.clone()),
                                ("category", k.category.clone()),
                                ("centre's note", k.centre_note.clone()),
                                ("reported", time_text(k.reported_at_us)),
                                ("due", format!("{} ({})", time_text(k.due_at_us), due_in(&k, now))),
                                ("state", k.state.clone()),
                                ("decided by", k.decided_by.clone()),
                                ("note", k.note.clone()),
                                ("BSS reference", k.bss_ref.clone()),
                            ] {
                                out.push_str(&format!("{label:<14} {}\n", visible(dash(&value))));
                            }
                            out.push_str(&format!("\ncalls from or to {} (newest {}):\n", visible(&k.number), r.calls.len()));
                            let rows: Vec<Vec<String>> = r
                                .calls
                                .iter()
                                .map(|c| {
                                    vec![
                                        time_text(c.ts_us),
                                        visible(&c.decision).into_owned(),
                                        visible(dash(&c.caller)).into_owned(),
                                        visible(dash(&c.callee)).into_owned(),
                                        visible(&c.rules.join(",")).into_owned(),
                                        visible(&c.verdict_id).into_owned(),
                                    ]
                                })
                                .collect();
                            out.push_str(&table(&["TIME", "DECISION", "CALLER", "CALLEE", "RULES", "VERDICT ID"], &rows));
                            if !r.rules_fired.is_empty() {
                                out.push_str("\nrules fired: ");
                                let mut rf: Vec<_> = r.rules_fired.iter().collect();
                                rf.sort();
                                let parts: Vec<String> = rf
                                    .iter()
                                    .map(|(id, n)| format!("{} ({n})", visible(id)))
                                    .collect();
                                out.push_str(&parts.join(", "));
                                out.push('\n');
                            }
                            for i in &r.incidents {
                                out.push_str(&format!(
                                    "incident {} ({} {}, {}): {} blocked, {} flagged\n",
                                    i.id,
                                    visible(&i.kind),
                                    visible(&i.key),
                                    visible(&i.state),
                                    i.blocked,
                                    i.flagged
                                ));
                            }
                            print(&out)?;
                        }
                    }
                }
                CasesCommand::Reports {
                    state,
                    limit,
                    format,
                    conn,
                } => {
                    let r = client(&conn)
                        .await?
                        .list_reports(pb::ListReportsRequest {
                            state: state.unwrap_or_default(),
                            limit,
                        })
                        .await
                        .map_err(|s| refused(&conn, s))?
                        .into_inner();
                    match format {
                        Output::Jsonl => {
                            for x in &r.reports {
                                print_json(&json!({
                                    "id": x.id,
                                    "key": x.key,
                                    "kind": x.kind,
                                    "state": x.state,
                                    "attempts": x.attempts,
                                    "queued_at": time_text(x.queued_at_us),
                                    "delivered_at": if x.delivered_at_us > 0 { time_text(x.delivered_at_us) } else { String::new() },
                                    "last_error": x.last_error,
                                }))?;
                            }
                        }
                        Output::Table if r.reports.is_empty() => eprintln!("no reports"),
                        Output::Table => {
                            let rows: Vec<Vec<String>> = r
                                .reports
                                .iter()
                                .map(|x| {
                                    vec![
                                        x.id.to_string(),
                                        time_text(x.queued_at_us),
                                        visible(&x.kind).into_owned(),
                                        visible(&x.state).into_owned(),
                                        x.attempts.to_string(),
                                        visible(&x.key).into_owned(),
                                        visible(dash(&x.last_error)).into_owned(),
                                    ]
                                })
                                .collect();
                            print(&table(
                                &["ID", "QUEUED (UTC)", "KIND", "STATE", "TRIES", "KEY", "LAST ERROR"],
                                &rows,
                            ))?;
                        }
                    }
                }
                CasesCommand::Decide {
                    id,
                    confirmed,
                    not_confirmed: _,
                    note,
                    bss_ref,
                    conn,
                } => {
                    let k = client(&conn)
                        .await?
                        .decide_case(pb::DecideCaseRequest {
                            id,
                            confirmed,
                            note,
                            bss_ref,
                        })
                        .await
                        .map_err(|s| refused(&conn, s))?
                        .into_inner();
                    print(&format!(
                        "case {} decided: {} (BSS {}); the decision is queued for the Centre\n",
                        k.id,
                        visible(&k.state),
                        visible(&k.bss_ref)
                    ))?;
                }
            }
            Ok(())
        })
    })())
}
