//! The rule authors' command line: `kuzet lists push|versions|diff|
//! activate|rollback|lookup` and `kuzet rules validate|stage|activate|
//! versions|diff|rollback`, clients of a running kuzet's publishing
//! services (`kuzet.lists.v1` and `kuzet.rules.v1`, beside the
//! investigators' API on its control address). It connects the way the
//! investigators' commands do ([`crate::client`]): with a bearer token over
//! TCP, or with none as kuzet's own user through the data directory's
//! socket, which answers as an investigator (lookups, versions and diffs
//! only). A list is pushed as a stream of chunks read from the file as
//! they go out, so a list of ten million numbers never sits whole in
//! memory; a read that fails midway abandons the push instead of ending it,
//! so kuzet never takes a cut-off file for the whole list. The server
//! checks, stores, approves and audits everything; this client only asks
//! and shows the answers, with every text the server or anyone else wrote
//! (notes, reasons, rule ids, error messages) escaped.

use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, UNIX_EPOCH};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use kuzet_api::lists as lpb;
use kuzet_api::lists::list_service_client::ListServiceClient;
use kuzet_api::rules as rpb;
use kuzet_api::rules::rule_service_client::RuleServiceClient;
use kuzet_control::safe::{json_line, visible};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tonic::codegen::tokio_stream::Stream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::client::{
    channel, dash, finish, io, runtime, time_text, Bearer, Conn, Failure, MAX_ANSWER,
};

/// Output formats of the publishing commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns and lines for a person.
    Table,
    /// One JSON object a line.
    Jsonl,
}

/// `kuzet lists`.
#[derive(clap::Subcommand, Debug)]
pub enum ListsCommand {
    /// Push a new version of a published list from a list file.
    ///
    /// The file is in the list format (one number or `prefix*` a line, an
    /// optional `, reason`, `#` comments) and is streamed as it is read,
    /// so a list of millions of numbers is fine. kuzet checks every line:
    /// the first bad one fails the push (exit 2, with its line number) and
    /// nothing changes. The new version is stored, not in force, unless
    /// --activate is given. Needs a rule-author or admin token.
    Push(PushArgs),
    /// A list's stored versions, newest first.
    Versions {
        /// The list (blocklist, flaglist, ...).
        #[arg(long, value_name = "NAME")]
        list: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        format: Output,
        /// How the control API is reached.
        #[command(flatten)]
        conn: Conn,
    },
    /// The entries one version of a list has and another has not.
    ///
    /// `kuzet lists diff --list blocklist v3 v4`, or `... v4` to compare
    /// v4 with the version in force. Added entries print as
    /// `+ ENTRY  REASON`, removed ones as `- ENTRY  REASON`, then the
    /// totals; an entry whose reason changed shows as removed and added.
    #[command(allow_missing_positional = true)]
    Diff {
        /// The list (blocklist, flaglist, ...).
        #[arg(long, value_name = "NAME")]
        list: String,
        /// The version to compare from (v3, or 3 for short) [default: the
        /// version in force].
        #[arg(value_name = "FROM")]
        from: Option<String>,
        /// The version to compare to.
        #[arg(value_name = "TO")]
        to: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        format: Output,
        /// How the control API is reached.
        #[command(flatten)]
        conn: Conn,
    },
    /// Put a stored version of a list in force.
    ///
    /// The answer comes once calls are scored with it. A version that
    /// blocks more than the one in force (more numbers on a list that
    /// blocks, fewer on one that exempts) needs an approver's token.
    Activate {
        /// The list (blocklist, flaglist, ...).
        #[arg(long, value_name = "NAME")]
        list: String,
        /// The version to put in force (v7, or 7 for short).
        #[arg(value_name = "VERSION")]
        id: String,
        /// Refuse unless this version is in force now (v0: none is), so
        /// two people cannot overwrite each other's change unseen.
        #[arg(long, value_name = "VERSION")]
        expect: Option<String>,
        /// How the control API is reached.
        #[command(flatten)]
        conn: Conn,
    },
    /// Put a list's previous version back in force.
    ///
    /// The version in force before the current one, with the same checks
    /// as activate.
    Rollback {
        /// The list (blocklist, flaglist, ...).
        #[arg(long, value_name = "NAME")]
        list: String,
        /// Refuse unless this version is in force now.
        #[arg(long, value_name = "VERSION")]
        expect: Option<String>,
        /// How the control API is reached.
        #[command(flatten)]
        conn: Conn,
    },
    /// Where a number stands: its lists, and kuzet's answer for it.
    ///
    /// The lists, versions and entries that hold the number, and what the
    /// snapshot in force answers for a call from it and for a call to it
    /// (from the lists alone, without behaviour history).
    Lookup {
        /// The number, in any written form ("8 701 123 45 67",
        /// "+7 (701) 123-45-67", "tel:+77011234567").
        number: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        format: Output,
        /// How the control API is reached.
        #[command(flatten)]
        conn: Conn,
    },
}

/// `kuzet lists push`.
#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// The list file, or - for standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The list to push to (blocklist, flaglist, ...): one that
    /// `[publishing] lists` in kuzet.toml declares published.
    #[arg(long, value_name = "NAME")]
    pub list: String,
    /// Put the version in force once it is stored (a version that blocks
    /// more needs an approver: it is stored, and the answer says why it
    /// is not in force).
    #[arg(long)]
    pub activate: bool,
    /// Refuse unless this is the list's newest version now (v0: it has
    /// none), so two pushes cannot overwrite each other unseen.
    #[arg(long, value_name = "VERSION")]
    pub expect: Option<String>,
    /// A note kept with the version (why it was pushed, a ticket).
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
    /// Accept a file with no entries (otherwise kuzet refuses it: a
    /// truncated upload must not silently empty a list).
    #[arg(long)]
    pub allow_empty: bool,
    /// How the control API is reached.
    #[command(flatten)]
    pub conn: Conn,
}

/// `kuzet rules` on a running kuzet (beside the offline `kuzet rules
/// check`).
#[derive(clap::Subcommand, Debug)]
pub enum RulesCommand {
    /// Check a rule file on the running kuzet, storing nothing.
    ///
    /// kuzet checks it as it would load it (with its numbering plan and
    /// lists): exit 0 with the rules, or exit 2 with file:line:col and the
    /// reason. With --offline it is checked here instead, as `kuzet rules
    /// check` does.
    Validate(ValidateArgs),
    /// Store a rule file as a new version, not yet in force.
    ///
    /// kuzet checks it first, as validate does. The answer shows what it
    /// changes against the rules in force, and whether putting it in force
    /// needs an approver. Needs a rule-author or admin token.
    Stage {
        /// The rule file (TOML, at most 1 MiB).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Refuse unless this is the newest stored version now (v0: none
        /// is), so two authors cannot overwrite each other unseen.
        #[arg(long, value_name = "VERSION")]
        expect: Option<String>,
        /// A note kept with the version.
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
        /// How the control API is reached.
        #[command(flatten)]
        conn: Conn,
    },
    /// Put a staged version of the rules in force.
    ///
    /// The answer comes once calls are scored with it. A version that
    /// blocks more (it enforces a rule that was in shadow or absent, raises
    /// an enforced rule's score or lowers the block threshold) needs an
    /// approver's token.
    Activate {
        /// The version to put in force (v7, or 7 for short).
        #[arg(value_name = "VERSION")]
        id: String,
        /// Refuse unless this version is in force now (v0: none is).
        #[arg(long, value_name = "VERSION")]
        expect: Option<String>,
        /// Put in force a version that enforces more with no backtest
        /// attached: takes an admin's token, and is audited.
        #[arg(long)]
        without_backtest: bool,
        /// How the control API is reached.
        #[command(flatten)]
        conn: Conn,
    },
    /// Replay the call journal through a candidate and report what changes.
    ///
    /// `kuzet rules backtest FILE|VERSION [--lists blocklist=v3 ...] --since 24h`:
    /// the journal's last SINCE is replayed in call order through the
    /// candidate rules (a rule file, or a staged version) and list
    /// versions, with behaviour state rebuilt from the window's start.
    /// The report: the verdicts that would change, by decision and by
    /// rule, with example calls; how many calls and callers would be
    /// blocked, flagged or redirected; the allowlisted, high-volume and
    /// called-back sources touched; what enforcing each shadow rule would
    /// do. `in-force` replays the versions that were in force (every call
    /// must come out as it did). A backtest of a staged version (or of a
    /// file equal to one) is attached to it: the evidence `activate` asks
    /// for when the version enforces more. Needs a rule-author or admin
    /// token.
    Backtest {
        /// A rule file, a staged version (v7), or `in-force`.
        #[arg(value_name = "FILE|VERSION")]
        candidate: String,
        /// Published list versions to replay instead of each call's own
        /// (LIST=VERSION, as blocklist=v3); repeat for several.
        #[arg(long, value_name = "LIST=VERSION", num_args = 1..)]
        lists: Vec<String>,
        /// How far back to replay (24h, 7d).
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
        since: std::time::Duration,
        /// Example calls per change.
        #[arg(long, value_name = "N", default_value_t = 5)]
        examples: u32,
        /// Output format: text, or json (the whole report).
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        /// How the control API is reached.
        #[command(flatten)]
        conn: Conn,
    },
    /// The stored versions of the rules, newest first.
    Versions {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        format: Output,
        /// How the control API is reached.
        #[command(flatten)]
        conn: Conn,
    },
    /// What changes, rule by rule, from one version to another.
    ///
    /// `kuzet rules diff v3 v4`, or `kuzet rules diff v4` from the version
    /// in force: a line per change, `[blocks more]` on those that make
    /// kuzet block more, and last whether putting TO in force needs an
    /// approver.
    #[command(allow_missing_positional = true)]
    Diff {
        /// The version to compare from (v3, or 3 for short) [default: the
        /// version in force].
        #[arg(value_name = "FROM")]
        from: Option<String>,
        /// The version to compare to.
        #[arg(value_name = "TO")]
        to: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        format: Output,
        /// How the control API is reached.
        #[command(flatten)]
        conn: Conn,
    },
    /// Put the previous version of the rules back in force.
    ///
    /// The version in force before the current one, with the same checks
    /// as activate.
    Rollback {
        /// Refuse unless this version is in force now.
        #[arg(long, value_name = "VERSION")]
        expect: Option<String>,
        /// How the control API is reached.
        #[command(flatten)]
        conn: Conn,
    },
}

/// `kuzet rules validate`.
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// The rule file (TOML).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Check the file here, without asking a running kuzet (what `kuzet
    /// rules check` does).
    #[arg(long)]
    pub offline: bool,
    /// With --offline: the config whose numbering plan normalizes the
    /// file's prefixes [default: the embedded config].
    #[arg(long, short = 'c', value_name = "FILE", requires = "offline")]
    pub config: Option<PathBuf>,
    /// How the control API is reached.
    #[command(flatten)]
    pub conn: Conn,
}

/// The largest rule file the services take (`RuleText.toml`).
const MAX_RULE_TEXT: u64 = 1 << 20;

/// Bytes of list text per pushed chunk.
const CHUNK: usize = 256 << 10;

/// Chunks read ahead of what has been sent.
const READ_AHEAD: usize = 4;

pub(crate) type Authed = InterceptedService<Channel, Bearer>;

async fn list_client(c: &Conn) -> Result<ListServiceClient<Authed>, Failure> {
    let (channel, bearer) = channel(c).await?;
    Ok(ListServiceClient::with_interceptor(channel, bearer).max_decoding_message_size(MAX_ANSWER))
}

pub(crate) async fn rule_client(c: &Conn) -> Result<RuleServiceClient<Authed>, Failure> {
    let (channel, bearer) = channel(c).await?;
    Ok(RuleServiceClient::with_interceptor(channel, bearer).max_decoding_message_size(MAX_ANSWER))
}

/// A refusal as the investigators' commands print it, with a hint when no
/// token was given: the data directory's socket answers as an
/// investigator, who may look but not publish.
pub(crate) fn refused(c: &Conn, s: Status) -> Failure {
    let hint = c.token.is_none() && s.code() == Code::PermissionDenied;
    let mut f = Failure::from(s);
    if hint {
        f.1.push_str(
            " (with no token the CLI asks as an investigator, through the data directory's socket: pass a rule author's --token, or set KUZET_TOKEN)",
        );
    }
    f
}

/// A version as typed: `v7`, or `7` for short; empty stays empty.
fn version_id(s: &str) -> String {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        format!("v{s}")
    } else {
        s.to_string()
    }
}

/// `diff [FROM] TO`'s versions in their long form; no FROM (or an empty
/// one) is the version in force, sent as empty.
fn from_to(from: Option<&str>, to: &str) -> Result<(String, String), Failure> {
    let to = version_id(to);
    if to.is_empty() {
        return Err(Failure(2, "diff: TO names no version".into()));
    }
    Ok((from.map(version_id).unwrap_or_default(), to))
}

/// `FROM` for a person: the version in force when empty.
fn from_text(from: &str) -> String {
    if from.is_empty() {
        "the version in force".into()
    } else {
        visible(from).into_owned()
    }
}

/// The first 12 hex digits of a digest.
fn short(digest: &str) -> String {
    visible(&digest.chars().take(12).collect::<String>()).into_owned()
}

/// `2026-11-22T08:15:03Z`, or `-` for no time.
fn seconds(us: i64) -> String {
    if us <= 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_micros(us as u64)).to_string()
}

/// A time for JSON: RFC 3339 with µs, or null for none.
fn json_time(us: i64) -> serde_json::Value {
    if us <= 0 {
        serde_json::Value::Null
    } else {
        json!(time_text(us))
    }
}

/// A text the server wrote, escaped, or `-` when empty.
fn e(s: &str) -> String {
    visible(dash(s)).into_owned()
}

/// Columns aligned on what they hold (cells already escaped), with the
/// header first; trailing spaces trimmed.
pub(crate) fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let pad = w.get(i).copied().unwrap_or(0);
            let _ = write!(l, "{c:<pad$}");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut head.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// `active`, `previous`, or `-`.
fn flags(active: bool, previous: bool) -> String {
    match (active, previous) {
        (true, _) => "active".into(),
        (false, true) => "previous".into(),
        _ => "-".into(),
    }
}

pub(crate) fn print(text: &str) -> Result<(), Failure> {
    let stdout = std::io::stdout();
    let mut o = stdout.lock();
    o.write_all(text.as_bytes()).map_err(io)?;
    o.flush().map_err(io)
}

pub(crate) fn print_json(v: &serde_json::Value) -> Result<(), Failure> {
    print(&format!("{}\n", json_line(v)))
}

// --- lists -----------------------------------------------------------------

const LIST_VERSIONS_HEAD: [&str; 11] = [
    "ID",
    "CREATED (UTC)",
    "AUTHOR",
    "EXACT",
    "RANGES",
    "+ADDED",
    "-REMOVED",
    "BASE",
    "FLAGS",
    "ACTIVATED BY",
    "NOTE",
];

/// One row of `kuzet lists versions`, every text escaped.
fn list_version_row(v: &lpb::Version) -> Vec<String> {
    vec![
        e(&v.id),
        seconds(v.created_us),
        e(&v.author),
        v.exact.to_string(),
        v.ranges.to_string(),
        format!("+{}", v.added),
        format!("-{}", v.removed),
        e(&v.base),
        flags(v.active, v.previous),
        e(&v.activated_by),
        e(&v.note),
    ]
}

fn list_version_json(v: &lpb::Version) -> serde_json::Value {
    json!({
        "list": v.list, "id": v.id, "digest": v.digest,
        "exact": v.exact, "ranges": v.ranges, "lines": v.lines,
        "author": v.author, "created": json_time(v.created_us),
        "added": v.added, "removed": v.removed, "base": v.base,
        "active": v.active, "previous": v.previous, "note": v.note,
        "activated_by": v.activated_by, "activated": json_time(v.activated_us),
    })
}

/// A list version in two lines: what it holds, and where it came from.
fn list_version_text(v: &lpb::Version) -> String {
    let mut out = format!(
        "{} {}  digest {}  {} exact, {} ranges",
        e(&v.list),
        e(&v.id),
        short(&v.digest),
        v.exact,
        v.ranges
    );
    if v.lines > 0 {
        let _ = write!(out, " ({} lines)", v.lines);
    }
    let base = if v.base.is_empty() {
        "no version in force".into()
    } else {
        visible(&v.base).into_owned()
    };
    let _ = write!(
        out,
        "\n  +{} -{} against {base}, pushed by {} at {}",
        v.added,
        v.removed,
        e(&v.author),
        seconds(v.created_us)
    );
    if !v.note.is_empty() {
        let _ = write!(out, "\n  note: {}", visible(&v.note));
    }
    out.push('\n');
    out
}

/// What `kuzet lists push` prints once kuzet answers.
fn push_text(r: &lpb::PushResponse, asked_to_activate: bool) -> String {
    let Some(v) = &r.version else {
        return "kuzet answered with no version\n".into();
    };
    let mut out = String::new();
    if r.unchanged {
        let _ = writeln!(
            out,
            "unchanged: the text holds what {} {} holds; no new version was made",
            e(&v.list),
            e(&v.id)
        );
    }
    out.push_str(&list_version_text(v));
    if r.activated {
        let _ = writeln!(out, "in force now: snapshot {}", e(&r.snapshot));
    } else if !r.needs_approval.is_empty() {
        let _ = writeln!(
            out,
            "stored, not in force: it needs approval: {}\n  an approver puts it in force with `kuzet lists activate --list {} {}`",
            visible(&r.needs_approval),
            e(&v.list),
            e(&v.id)
        );
    } else if v.active {
        let _ = writeln!(out, "in force (snapshot {})", e(&r.snapshot));
    } else {
        let _ = writeln!(
            out,
            "stored, not in force{}: `kuzet lists activate --list {} {}` puts it in force",
            if asked_to_activate {
                " (kuzet did not say why)"
            } else {
                ""
            },
            e(&v.list),
            e(&v.id)
        );
    }
    out
}

/// What activate and rollback print, for a list or the rules.
fn activated_text(version: &str, replaced: &str, snapshot: &str) -> String {
    format!(
        "{version} in force, replacing {}; snapshot {}\n",
        if replaced.is_empty() {
            "none".into()
        } else {
            visible(replaced).into_owned()
        },
        e(snapshot)
    )
}

/// One line of a list diff: `+ +77011234567  reason`.
fn diff_entry_line(d: &lpb::DiffEntry) -> String {
    let sign = if d.added { '+' } else { '-' };
    if d.reason.is_empty() {
        format!("{sign} {}\n", visible(&d.entry))
    } else {
        format!("{sign} {}  {}\n", visible(&d.entry), visible(&d.reason))
    }
}

fn answer_text(side: &str, a: Option<&lpb::Answer>) -> String {
    let Some(a) = a else {
        return format!("as {side}: no answer\n");
    };
    let mut out = format!("as {side}: {} (score {})", e(&a.decision), a.score);
    if a.allowlisted {
        out.push_str(", allowlisted");
    }
    if !a.rules.is_empty() {
        let rules: Vec<String> = a.rules.iter().map(|r| visible(r).into_owned()).collect();
        let _ = write!(out, ", rules {}", rules.join(", "));
    }
    out.push('\n');
    if !a.explanation.is_empty() {
        let _ = writeln!(out, "  why: {}", visible(&a.explanation));
    }
    out
}

/// What `kuzet lists lookup` prints.
fn lookup_text(r: &lpb::LookupResponse) -> String {
    let mut out = format!("number   {}\n", e(&r.normalized));
    if r.hits.is_empty() {
        out.push_str("on no list\n");
    }
    for h in &r.hits {
        let version = if h.version.is_empty() {
            String::new()
        } else {
            format!(" {}", visible(&h.version))
        };
        let _ = write!(
            out,
            "on {} ({}{version}): {} {}",
            e(&h.list),
            e(&h.source),
            e(&h.r#match),
            e(&h.entry)
        );
        if !h.reason.is_empty() {
            let _ = write!(out, ", {}", visible(&h.reason));
        }
        out.push('\n');
    }
    out.push_str(&answer_text("caller", r.as_caller.as_ref()));
    out.push_str(&answer_text("callee", r.as_callee.as_ref()));
    let _ = writeln!(out, "snapshot {}", e(&r.snapshot));
    out
}

fn answer_json(a: Option<&lpb::Answer>) -> serde_json::Value {
    a.map_or(serde_json::Value::Null, |a| {
        json!({"decision": a.decision, "score": a.score, "allowlisted": a.allowlisted,
            "rules": a.rules, "explanation": a.explanation})
    })
}

fn lookup_json(r: &lpb::LookupResponse) -> serde_json::Value {
    json!({
        "normalized": r.normalized,
        "hits": r.hits.iter().map(|h| json!({"list": h.list, "source": h.source,
            "version": h.version, "match": h.r#match, "entry": h.entry, "reason": h.reason}))
            .collect::<Vec<_>>(),
        "as_caller": answer_json(r.as_caller.as_ref()),
        "as_callee": answer_json(r.as_callee.as_ref()),
        "snapshot": r.snapshot,
    })
}

/// `kuzet lists ...`.
pub fn lists(c: ListsCommand) -> ExitCode {
    finish((|| {
        if let ListsCommand::Push(a) = c {
            return push(a);
        }
        let rt = runtime()?;
        rt.block_on(async {
            match c {
                ListsCommand::Push(_) => unreachable!("pushed above"),
                ListsCommand::Versions { list, format, conn } => {
                    let r = list_client(&conn)
                        .await?
                        .list_versions(lpb::ListVersionsRequest { list: list.clone() })
                        .await
                        .map_err(|s| refused(&conn, s))?
                        .into_inner();
                    match format {
                        Output::Jsonl => {
                            for v in &r.versions {
                                print_json(&list_version_json(v))?;
                            }
                        }
                        Output::Table if r.versions.is_empty() => {
                            eprintln!("{} has no versions", visible(&list));
                        }
                        Output::Table => {
                            let rows: Vec<_> = r.versions.iter().map(list_version_row).collect();
                            print(&table(&LIST_VERSIONS_HEAD, &rows))?;
                        }
                    }
                }
                ListsCommand::Diff {
                    list,
                    from,
                    to,
                    format,
                    conn,
                } => {
                    let (from, to) = from_to(from.as_deref(), &to)?;
                    let mut stream = list_client(&conn)
                        .await?
                        .diff(lpb::DiffRequest {
                            list,
                            from: from.clone(),
                            to: to.clone(),
                        })
                        .await
                        .map_err(|s| refused(&conn, s))?
                        .into_inner();
                    // The totals come on the last chunk; counted here too,
                    // in case it carries none.
                    let (mut added, mut removed) = (0u64, 0u64);
                    let mut totals = (0u64, 0u64);
                    while let Some(chunk) = stream.message().await.map_err(|s| refused(&conn, s))? {
                        let mut text = String::new();
                        for d in &chunk.entries {
                            if d.added {
                                added += 1;
                            } else {
                                removed += 1;
                            }
                            match format {
                                Output::Table => text.push_str(&diff_entry_line(d)),
                                Output::Jsonl => {
                                    text.push_str(&json_line(&json!({"added": d.added,
                                        "entry": d.entry, "reason": d.reason})));
                                    text.push('\n');
                                }
                            }
                        }
                        print(&text)?;
                        totals = (chunk.added, chunk.removed);
                    }
                    if totals == (0, 0) {
                        totals = (added, removed);
                    }
                    match format {
                        Output::Table => print(&format!(
                            "+{} -{} from {} to {}\n",
                            totals.0,
                            totals.1,
                            from_text(&from),
                            visible(&to)
                        ))?,
                        Output::Jsonl => print_json(&json!({"from": from, "to": to,
                            "totals": {"added": totals.0, "removed": totals.1}}))?,
                    }
                }
                ListsCommand::Activate {
                    list,
                    id,
                    expect,
                    conn,
                } => {
                    let r = list_client(&conn)
                        .await?
                        .activate(lpb::ActivateRequest {
                            list,
                            version: version_id(&id),
                            expect: expect.as_deref().map(version_id).unwrap_or_default(),
                        })
                        .await
                        .map_err(|s| refused(&conn, s))?
                        .into_inner();
                    print_list_activated(&r)?;
                }
                ListsCommand::Rollback { list, expect, conn } => {
                    let r = list_client(&conn)
                        .await?
                        .rollback(lpb::RollbackRequest {
                            list,
                            expect: expect.as_deref().map(version_id).unwrap_or_default(),
                        })
                        .await
                        .map_err(|s| refused(&conn, s))?
                        .into_inner();
                    print_list_activated(&r)?;
                }
                ListsCommand::Lookup {
                    number,
                    format,
                    conn,
                } => {
                    let r = list_client(&conn)
                        .await?
                        .lookup(lpb::LookupRequest { number })
                        .await
                        .map_err(|s| refused(&conn, s))?
                        .into_inner();
                    match format {
                        Output::Table => print(&lookup_text(&r))?,
                        Output::Jsonl => print_json(&lookup_json(&r))?,
                    }
                }
            }
            Ok(())
        })
    })())
}

fn print_list_activated(r: &lpb::ActivateResponse) -> Result<(), Failure> {
    let Some(v) = &r.version else {
        return Err(Failure(1, "kuzet answered with no version".into()));
    };
    let name = format!("{} {}", e(&v.list), e(&v.id));
    print(&format!(
        "{}{}",
        activated_text(&name, &r.replaced, &r.snapshot),
        list_version_text(v)
    ))
}

/// How far a push has gone, on stderr: a bar on a terminal, else a line
/// at each tenth of the file (each doubling when its size is unknown).
enum Progress {
    Bar(ProgressBar),
    Lines {
        total: Option<u64>,
        sent: u64,
        done: bool,
    },
}

impl Progress {
    fn new(total: Option<u64>) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::Lines {
                total,
                sent: 0,
                done: false,
            };
        }
        let bar = match total {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(
                    "{spinner} sent {bytes}/{total_bytes} [{wide_bar}] {binary_bytes_per_sec}, {eta} left",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} sent {bytes} ({binary_bytes_per_sec})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        Progress::Bar(bar)
    }

    /// `n` more bytes went out.
    fn sent(&mut self, n: usize) {
        match self {
            Progress::Bar(b) => b.inc(n as u64),
            Progress::Lines { total, sent, .. } => {
                let before = *sent;
                *sent += n as u64;
                if let Some(l) = progress_line(*total, before, *sent) {
                    eprintln!("{l}");
                }
            }
        }
    }

    /// All of it went out: kuzet checks and stores it now.
    fn done(&mut self) {
        const WAIT: &str = "kuzet is checking and storing the version";
        match self {
            Progress::Bar(b) => {
                if b.message().is_empty() {
                    b.set_style(
                        ProgressStyle::with_template("{spinner} sent {bytes}; {msg} ({elapsed})")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    b.set_message(WAIT);
                    b.enable_steady_tick(Duration::from_millis(120));
                }
            }
            Progress::Lines { sent, done, .. } => {
                if !*done {
                    *done = true;
                    eprintln!("sent {}; {WAIT}", HumanBytes(*sent));
                }
            }
        }
    }
}

/// The progress line due when a push's bytes sent go from `before` to
/// `after`: at each tenth of `total`, or, with no total, at each doubling
/// from 16 MiB on.
fn progress_line(total: Option<u64>, before: u64, after: u64) -> Option<String> {
    match total {
        Some(0) => None,
        Some(t) => {
            let tenth = |n: u64| (u128::from(n) * 10 / u128::from(t)).min(10);
            // The last tenth is the "sent ...; kuzet is checking" line.
            (tenth(after) > tenth(before) && tenth(after) < 10).then(|| {
                format!(
                    "sent {} of {} ({}%)",
                    HumanBytes(after),
                    HumanBytes(t),
                    tenth(after) * 10
                )
            })
        }
        None => {
            const FIRST: u64 = 16 << 20;
            let crossed = after >= FIRST && (before < FIRST || after.ilog2() > before.ilog2());
            crossed.then(|| format!("sent {}", HumanBytes(after)))
        }
    }
}

/// The request stream of a push: chunks as the reader thread hands them
/// over, the first one carrying the list, expect, activate and note. A
/// read error is handed to the caller and the stream then never ends: an
/// ended stream is a whole list to kuzet, so a cut-off file must be
/// abandoned (the call dropped), never finished.
struct PushBody {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    head: Option<lpb::PushChunk>,
    progress: Progress,
    failed: Option<oneshot::Sender<std::io::Error>>,
    broken: bool,
}

impl Stream for PushBody {
    type Item = lpb::PushChunk;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<lpb::PushChunk>> {
        let this = self.get_mut();
        if this.broken {
            return Poll::Pending;
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => {
                this.progress.sent(data.len());
                let mut chunk = this.head.take().unwrap_or_default();
                chunk.data = data;
                Poll::Ready(Some(chunk))
            }
            Poll::Ready(Some(Err(err))) => {
                this.broken = true;
                if let Some(f) = this.failed.take() {
                    let _ = f.send(err);
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.progress.done();
                // An empty text still names its list: the head alone.
                Poll::Ready(this.head.take())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Reads `r` on a thread of its own, in chunks of [`CHUNK`] bytes, a few
/// ahead of the network.
fn spawn_reader(
    r: Box<dyn Read + Send>,
    tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
) -> Result<(), Failure> {
    std::thread::Builder::new()
        .name("kuzet-push-read".into())
        .spawn(move || {
            let mut r = std::io::BufReader::with_capacity(CHUNK, r);
            loop {
                let mut buf = Vec::with_capacity(CHUNK);
                match (&mut r).take(CHUNK as u64).read_to_end(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => {
                        if tx.blocking_send(Ok(buf)).is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        let _ = tx.blocking_send(Err(err));
                        return;
                    }
                }
            }
        })
        .map(drop)
        .map_err(|err| Failure(1, format!("cannot start the reader thread: {err}")))
}

/// The file to push, opened, with its size when it has one.
fn open_list_file(path: &Path) -> Result<(Box<dyn Read + Send>, Option<u64>), Failure> {
    if path == Path::new("-") {
        return Ok((Box::new(std::io::stdin()), None));
    }
    let bad = |why: String| Failure(2, format!("{}: {why}", path.display()));
    let f = std::fs::File::open(path).map_err(|err| bad(err.to_string()))?;
    let m = f.metadata().map_err(|err| bad(err.to_string()))?;
    if m.is_dir() {
        return Err(bad("a directory, not a list file".into()));
    }
    let size = m.is_file().then_some(m.len());
    Ok((Box::new(f), size))
}

/// `kuzet lists push`.
fn push(a: PushArgs) -> Result<(), Failure> {
    let started = Instant::now();
    let shown = if a.file == Path::new("-") {
        "standard input".to_string()
    } else {
        a.file.display().to_string()
    };
    let (reader, size) = open_list_file(&a.file)?;
    let rt = runtime()?;
    rt.block_on(async {
        let mut client = list_client(&a.conn).await?;
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        spawn_reader(reader, tx)?;
        let (failed, mut read_error) = oneshot::channel();
        let progress = Progress::new(size);
        let bar = match &progress {
            Progress::Bar(b) => Some(b.clone()),
            Progress::Lines { .. } => None,
        };
        let body = PushBody {
            rx,
            head: Some(lpb::PushChunk {
                list: a.list.clone(),
                expect: a.expect.as_deref().map(version_id).unwrap_or_default(),
                activate: a.activate,
                note: a.note.clone().unwrap_or_default(),
                data: Vec::new(),
                allow_empty: a.allow_empty,
            }),
            progress,
            failed: Some(failed),
            broken: false,
        };
        let call = client.push(body);
        tokio::pin!(call);
        // A read error wins over the call, which is then dropped with the
        // connection, its stream unfinished; a dropped sender (the stream
        // ended well) leaves the call to answer.
        let outcome = tokio::select! {
            r = &mut call => r.map(tonic::Response::into_inner).map_err(|s| {
                let f = refused(&a.conn, s);
                if f.0 == 2 { Failure(2, format!("{shown}: {}", f.1)) } else { f }
            }),
            Ok(err) = &mut read_error => Err(Failure(
                1,
                format!("reading {shown}: {err}; the push was abandoned before its end, so nothing is stored"),
            )),
        };
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        let r = outcome?;
        print(&push_text(&r, a.activate))?;
        print(&format!(
            "took {:.1} s\n",
            started.elapsed().as_secs_f64()
        ))
    })
}

// --- rules -----------------------------------------------------------------

/// `12 rules (9 enforced, 3 shadow)`.
fn rule_count(rules: &[rpb::Rule]) -> String {
    let shadow = rules.iter().filter(|r| r.mode == "shadow").count();
    format!(
        "{} rules ({} enforced, {shadow} shadow)",
        rules.len(),
        rules.len() - shadow
    )
}

fn rules_table(rules: &[rpb::Rule]) -> String {
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| vec![e(&r.id), e(&r.kind), e(&r.mode), r.score.to_string()])
        .collect();
    table(&["RULE", "KIND", "MODE", "SCORE"], &rows)
}

/// `flag 30, redirect 50, block 70`.
fn thresholds_text(t: Option<&rpb::Thresholds>) -> String {
    match t {
        None => "-".into(),
        Some(t) if t.redirect == 0 => format!("flag {}, block {}", t.flag, t.block),
        Some(t) => format!(
            "flag {}, redirect {}, block {}",
            t.flag, t.redirect, t.block
        ),
    }
}

/// One change between two rule versions:
/// `velocity: mode shadow -> enforce  [blocks more]`.
fn change_line(c: &rpb::Change) -> String {
    format!(
        "{}: {} {} -> {}{}\n",
        e(&c.what),
        e(&c.change),
        e(&c.before),
        e(&c.after),
        if c.blocks_more { "  [blocks more]" } else { "" }
    )
}

fn change_json(c: &rpb::Change) -> serde_json::Value {
    json!({"what": c.what, "change": c.change, "before": c.before, "after": c.after,
        "blocks_more": c.blocks_more})
}

const RULE_VERSIONS_HEAD: [&str; 9] = [
    "ID",
    "CREATED (UTC)",
    "AUTHOR",
    "FILE",
    "RULES",
    "THRESHOLDS",
    "FLAGS",
    "ACTIVATED BY",
    "NOTE",
];

fn rule_version_row(v: &rpb::Version) -> Vec<String> {
    vec![
        e(&v.id),
        seconds(v.created_us),
        e(&v.author),
        e(&v.name),
        rule_count(&v.rules),
        thresholds_text(v.thresholds.as_ref()),
        flags(v.active, v.previous),
        e(&v.activated_by),
        e(&v.note),
    ]
}

fn rule_version_json(v: &rpb::Version) -> serde_json::Value {
    json!({
        "id": v.id, "digest": v.digest, "author": v.author,
        "created": json_time(v.created_us), "name": v.name,
        "rules": v.rules.iter().map(|r| json!({"id": r.id, "kind": r.kind, "mode": r.mode,
            "score": r.score})).collect::<Vec<_>>(),
        "thresholds": v.thresholds.as_ref().map(|t| json!({"flag": t.flag,
            "redirect": t.redirect, "block": t.block})),
        "active": v.active, "previous": v.previous, "note": v.note,
        "activated_by": v.activated_by, "activated": json_time(v.activated_us),
        "changes": v.changes.iter().map(change_json).collect::<Vec<_>>(),
    })
}

/// A rules version in a few lines.
fn rule_version_text(v: &rpb::Version) -> String {
    let mut out = format!(
        "rules {}  digest {}  {}  thresholds {}\n  from {}, staged by {} at {}\n",
        e(&v.id),
        short(&v.digest),
        rule_count(&v.rules),
        thresholds_text(v.thresholds.as_ref()),
        e(&v.name),
        e(&v.author),
        seconds(v.created_us)
    );
    if !v.note.is_empty() {
        let _ = writeln!(out, "  note: {}", visible(&v.note));
    }
    for b in &v.backtests {
        let _ = writeln!(out, "  backtested: {}", backtest_line(b));
    }
    out
}

/// What `kuzet rules stage` prints.
fn stage_text(r: &rpb::StageResponse) -> String {
    let Some(v) = &r.version else {
        return "kuzet answered with no version\n".into();
    };
    let mut out = String::new();
    if r.unchanged {
        let _ = writeln!(
            out,
            "unchanged: the file is what rules {} holds; nothing new was stored",
            e(&v.id)
        );
    }
    out.push_str(&rule_version_text(v));
    if v.changes.is_empty() {
        out.push_str("no changes against the rules in force\n");
    } else {
        out.push_str("changes against the rules in force:\n");
        for c in &v.changes {
            out.push_str("  ");
            out.push_str(&change_line(c));
        }
    }
    if !v.active {
        let approval = if v.changes.iter().any(|c| c.blocks_more) {
            "it blocks more, so an approver must put it in force"
        } else {
            "it blocks no more, so a rule author may put it in force"
        };
        let _ = writeln!(
            out,
            "not in force: `kuzet rules activate {}` ({approval})",
            e(&v.id)
        );
    }
    out
}

/// The last line of `kuzet rules diff`.
fn approval_line(from: &str, to: &str, blocks_more: bool) -> String {
    if blocks_more {
        format!(
            "{} blocks more than {}: putting it in force needs an approver\n",
            visible(to),
            from_text(from)
        )
    } else {
        format!(
            "{} blocks no more than {}: a rule author may put it in force\n",
            visible(to),
            from_text(from)
        )
    }
}

fn read_rule_text(file: &Path) -> Result<rpb::RuleText, Failure> {
    let toml = kuzet_control::files::read_text(file, MAX_RULE_TEXT)
        .map_err(|err| Failure(2, err.to_string()))?;
    Ok(rpb::RuleText {
        name: file.display().to_string(),
        toml,
    })
}

/// `kuzet rules validate|stage|activate|versions|diff|rollback`;
/// `validate --offline` goes to `offline` (what `kuzet rules check` runs).
pub fn rules(c: RulesCommand, offline: impl FnOnce(&Path, Option<&Path>) -> ExitCode) -> ExitCode {
    if let RulesCommand::Validate(a) = &c {
        if a.offline {
            return offline(&a.file, a.config.as_deref());
        }
    }
    finish((|| {
        let rt = runtime()?;
        rt.block_on(async {
            match c {
                RulesCommand::Validate(a) => {
                    let text = read_rule_text(&a.file)?;
                    let r = rule_client(&a.conn)
                        .await?
                        .validate(text)
                        .await
                        .map_err(|s| refused(&a.conn, s))?
                        .into_inner();
                    if !r.ok {
                        return Err(Failure(2, r.error));
                    }
                    print(&format!(
                        "{}: ok, {}, thresholds {}\n{}",
                        visible(&a.file.display().to_string()),
                        rule_count(&r.rules),
                        thresholds_text(r.thresholds.as_ref()),
                        rules_table(&r.rules)
                    ))?;
                }
                RulesCommand::Stage {
                    file,
                    expect,
                    note,
                    conn,
                } => {
                    let text = read_rule_text(&file)?;
                    let r = rule_client(&conn)
                        .await?
                        .stage(rpb::StageRequest {
                            text: Some(text),
                            expect: expect.as_deref().map(version_id).unwrap_or_default(),
                            note: note.unwrap_or_default(),
                        })
                        .await
                        .map_err(|s| refused(&conn, s))?
                        .into_inner();
                    print(&stage_text(&r))?;
                }
                RulesCommand::Activate {
                    id,
                    expect,
                    without_backtest,
                    conn,
                } => {
                    let r = rule_client(&conn)
                        .await?
                        .activate(rpb::ActivateRequest {
                            version: version_id(&id),
                            expect: expect.as_deref().map(version_id).unwrap_or_default(),
                            without_backtest,
                        })
                        .await
                        .map_err(|s| refused(&conn, s))?
                        .into_inner();
                    print_rules_activated(&r)?;
                }
                RulesCommand::Backtest {
                    candidate,
                    lists,
                    since,
                    examples,
                    format,
                    conn,
                } => {
                    let rules = if candidate == "in-force" {
                        None
                    } else if std::path::Path::new(&candidate).exists() {
                        let text = read_rule_text(std::path::Path::new(&candidate))?;
                        Some(rpb::backtest_request::Rules::Text(text))
                    } else {
                        Some(rpb::backtest_request::Rules::Version(version_id(
                            &candidate,
                        )))
                    };
                    let mut stream = rule_client(&conn)
                        .await?
                        .backtest(rpb::BacktestRequest {
                            rules,
                            lists,
                            since_s: since.as_secs() as i64,
                            examples,
                        })
                        .await
                        .map_err(|s| refused(&conn, s))?
                        .into_inner();
                    let bar = crate::publish_cli::progress_bar();
                    let last = loop {
                        match stream.message().await.map_err(|s| refused(&conn, s))? {
                            Some(m) if m.report_json.is_empty() => {
                                if let Some(b) = &bar {
                                    b.set_length(m.bytes_total);
                                    b.set_position(m.bytes_done);
                                }
                            }
                            Some(m) => break m,
                            None => {
                                return Err(Failure(
                                    1,
                                    "kuzet ended the backtest with no report".into(),
                                ))
                            }
                        }
                    };
                    if let Some(b) = bar {
                        b.finish_and_clear();
                    }
                    let report: kuzet_journal::replay::Report =
                        serde_json::from_str(&last.report_json).map_err(|e| {
                            Failure(1, format!("kuzet's report did not parse: {e}"))
                        })?;
                    match format {
                        ReportFormat::Json => print(&format!("{}\n", last.report_json))?,
                        ReportFormat::Text => {
                            let mut out = String::new();
                            let _ = report.write_text(&mut out);
                            if !last.attached_to.is_empty() {
                                let _ = writeln!(
                                    out,
                                    "\nAttached to rules {} as the evidence for its activation.",
                                    e(&last.attached_to)
                                );
                            }
                            print(&out)?;
                        }
                    }
                }
                RulesCommand::Rollback { expect, conn } => {
                    let r = rule_client(&conn)
                        .await?
                        .rollback(rpb::RollbackRequest {
                            expect: expect.as_deref().map(version_id).unwrap_or_default(),
                        })
                        .await
                        .map_err(|s| refused(&conn, s))?
                        .into_inner();
                    print_rules_activated(&r)?;
                }
                RulesCommand::Versions { format, conn } => {
                    let r = rule_client(&conn)
                        .await?
                        .list_versions(rpb::ListVersionsRequest {})
                        .await
                        .map_err(|s| refused(&conn, s))?
                        .into_inner();
                    match format {
                        Output::Jsonl => {
                            for v in &r.versions {
                                print_json(&rule_version_json(v))?;
                            }
                        }
                        Output::Table if r.versions.is_empty() => {
                            eprintln!("no rule versions are stored");
                        }
                        Output::Table => {
                            let rows: Vec<_> = r.versions.iter().map(rule_version_row).collect();
                            print(&table(&RULE_VERSIONS_HEAD, &rows))?;
                        }
                    }
                }
                RulesCommand::Diff {
                    from,
                    to,
                    format,
                    conn,
                } => {
                    let (from, to) = from_to(from.as_deref(), &to)?;
                    let r = rule_client(&conn)
                        .await?
                        .diff(rpb::DiffRequest {
                            from: from.clone(),
                            to: to.clone(),
                        })
                        .await
                        .map_err(|s| refused(&conn, s))?
                        .into_inner();
                    match format {
                        Output::Table => {
                            let mut out: String = r.changes.iter().map(change_line).collect();
                            if r.changes.is_empty() {
                                out.push_str("no changes\n");
                            }
                            out.push_str(&approval_line(&from, &to, r.blocks_more));
                            print(&out)?;
                        }
                        Output::Jsonl => {
                            for c in &r.changes {
                                print_json(&change_json(c))?;
                            }
                            print_json(&json!({"from": from, "to": to,
                                "blocks_more": r.blocks_more}))?;
                        }
                    }
                }
            }
            Ok(())
        })
    })())
}

fn print_rules_activated(r: &rpb::ActivateResponse) -> Result<(), Failure> {
    let Some(v) = &r.version else {
        return Err(Failure(1, "kuzet answered with no version".into()));
    };
    let name = format!("rules {}", e(&v.id));
    let evidence = match &r.backtest {
        Some(b) => format!("  on the evidence of {}\n", backtest_line(b)),
        None => String::new(),
    };
    print(&format!(
        "{}{}{}",
        activated_text(&name, &r.replaced, &r.snapshot),
        rule_version_text(v),
        evidence
    ))
}

/// A backtest attached to a version, in one line.
fn backtest_line(b: &rpb::Backtest) -> String {
    format!(
        "a backtest by {} at {} ({:.1} h of calls): {}",
        e(&b.by),
        seconds(b.at_us),
        b.hours,
        visible(&b.summary)
    )
}

/// A progress bar on a terminal (none when stderr is not one).
pub(crate) fn progress_bar() -> Option<ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = ProgressBar::new(0);
    if let Ok(s) = ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})") {
        b.set_style(s.progress_chars("=> "));
    }
    b.set_message("replaying");
    Some(b)
}

/// How a report is printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    /// Plain text for a terminal.
    Text,
    /// The whole report as JSON.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The subcommands as main.rs mounts them (with `--version`
    /// propagated, so no argument may be called `version`).
    #[derive(clap::Parser, Debug)]
    #[command(name = "kuzet", version, propagate_version = true)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Top {
        #[command(subcommand)]
        Lists(ListsCommand),
        #[command(subcommand)]
        Rules(RulesCommand),
    }

    fn parse(args: &[&str]) -> Result<Top, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("kuzet").chain(args.iter().copied())).map(|c| c.command)
    }

    /// `diff`'s FROM and TO as parsed and then sent.
    fn diff_versions(args: &[&str]) -> (String, String) {
        let (from, to) = match parse(args).unwrap() {
            Top::Lists(ListsCommand::Diff { from, to, .. })
            | Top::Rules(RulesCommand::Diff { from, to, .. }) => (from, to),
            other => panic!("{other:?}"),
        };
        let Ok(sent) = from_to(from.as_deref(), &to) else {
            panic!("{args:?} refused");
        };
        sent
    }

    #[test]
    fn diff_takes_an_optional_from_before_to() {
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            diff_versions(&["lists", "diff", "--list", "blocklist", "v3", "v4"]),
            pair("v3", "v4")
        );
        assert_eq!(
            diff_versions(&["lists", "diff", "--list", "blocklist", "v4"]),
            pair("", "v4")
        );
        assert_eq!(
            diff_versions(&[
                "lists",
                "diff",
                "v4",
                "--list",
                "blocklist",
                "--format",
                "jsonl"
            ]),
            pair("", "v4")
        );
        // Short forms, and an explicitly empty FROM: the version in force.
        assert_eq!(
            diff_versions(&["lists", "diff", "--list", "b", "3", "4"]),
            pair("v3", "v4")
        );
        assert_eq!(diff_versions(&["rules", "diff", "", "v4"]), pair("", "v4"));
        assert_eq!(diff_versions(&["rules", "diff", "v2"]), pair("", "v2"));
        assert_eq!(
            diff_versions(&["rules", "diff", "v2", "7"]),
            pair("v2", "v7")
        );
        // Bad usage: no TO, three versions, an empty TO.
        for bad in [
            &["lists", "diff", "--list", "blocklist"][..],
            &["lists", "diff", "--list", "blocklist", "v1", "v2", "v3"][..],
            &["rules", "diff"][..],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let Err(Failure(code, _)) = from_to(Some("v1"), " ") else {
            panic!("an empty TO accepted");
        };
        assert_eq!(code, 2);
        assert_eq!(from_text(""), "the version in force");
    }

    #[test]
    fn the_commands_are_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn the_other_commands_parse_as_documented() {
        let Top::Lists(ListsCommand::Push(p)) = parse(&[
            "lists",
            "push",
            "-",
            "--list",
            "blocklist",
            "--activate",
            "--expect",
            "v3",
        ])
        .unwrap() else {
            panic!("not a push");
        };
        assert_eq!(p.file, Path::new("-"));
        assert!(p.activate && p.expect.as_deref() == Some("v3") && p.note.is_none());
        assert!(
            parse(&["lists", "push", "f.txt"]).is_err(),
            "--list is required"
        );
        let Top::Rules(RulesCommand::Validate(v)) =
            parse(&["rules", "validate", "r.toml", "--offline", "-c", "k.toml"]).unwrap()
        else {
            panic!("not a validate");
        };
        assert!(v.offline && v.config.is_some());
        assert!(
            parse(&["rules", "validate", "r.toml", "-c", "k.toml"]).is_err(),
            "-c needs --offline"
        );
        let Top::Lists(ListsCommand::Activate { id, .. }) =
            parse(&["lists", "activate", "--list", "blocklist", "v4"]).unwrap()
        else {
            panic!("not an activate");
        };
        assert_eq!(id, "v4");
        assert!(parse(&["rules", "activate", "4", "--expect", "v3"]).is_ok());
        assert!(parse(&["lists", "lookup", "8 701 123 45 67", "--format", "jsonl"]).is_ok());
        assert!(parse(&["rules", "rollback", "--expect", "v2"]).is_ok());
    }

    #[test]
    fn version_ids_take_a_bare_number() {
        assert_eq!(version_id("7"), "v7");
        assert_eq!(version_id("v0"), "v0");
        assert_eq!(version_id(""), "");
        assert_eq!(version_id("latest"), "latest");
    }

    fn hostile_version() -> lpb::Version {
        lpb::Version {
            list: "blocklist".into(),
            id: "v4".into(),
            digest: "3fa2c1d09e12aabbccddeeff".into(),
            exact: 10_000_000,
            ranges: 12,
            author: "ana\u{1b}]0;pwned\u{7}".into(),
            created_us: 1_795_000_000_000_000,
            added: 1200,
            removed: 30,
            base: "v3".into(),
            active: true,
            previous: false,
            note: "fix\u{1b}[31m red\nforged line".into(),
            activated_by: "bo\r".into(),
            activated_us: 1_795_000_100_000_000,
            lines: 10_000_014,
        }
    }

    #[test]
    fn a_version_row_escapes_what_others_wrote() {
        let row = list_version_row(&hostile_version());
        assert_eq!(
            row,
            [
                "v4",
                "2026-11-18T11:06:40Z",
                "ana\\x1b]0;pwned\\x07",
                "10000000",
                "12",
                "+1200",
                "-30",
                "v3",
                "active",
                "bo\\r",
                "fix\\x1b[31m red\\nforged line",
            ]
        );
        let t = table(&LIST_VERSIONS_HEAD, &[row]);
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(!t.contains('\u{1b}') && !t.contains('\r'), "{t}");
        assert!(t.lines().next().unwrap().starts_with("ID  CREATED (UTC)  "));
        // Empty fields show as a dash, the previous version's flag too.
        let mut v = hostile_version();
        (v.base, v.note, v.activated_by, v.active, v.previous) =
            (String::new(), String::new(), String::new(), false, true);
        let row = list_version_row(&v);
        assert_eq!(row[7..], ["-", "previous", "-", "-"]);
        // The two-line form escapes too, and the JSON line keeps the text
        // whole (JSON escapes C0 itself).
        let text = list_version_text(&hostile_version());
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(
            text.contains("digest 3fa2c1d09e12  10000000 exact"),
            "{text}"
        );
        assert!(
            text.contains("note: fix\\x1b[31m red\\nforged line"),
            "{text}"
        );
        let j = json_line(&list_version_json(&hostile_version()));
        assert!(
            j.contains(r#""note":"fix\u001b[31m red\nforged line""#),
            "{j}"
        );
    }

    #[test]
    fn columns_align_on_the_widest_cell() {
        let t = table(&["A", "BB"], &[strings(&["xyz", "1"]), strings(&["q", ""])]);
        assert_eq!(t, "A    BB\nxyz  1\nq\n");
    }

    #[test]
    fn push_answers_read_as_they_should() {
        let mut r = lpb::PushResponse {
            version: Some(hostile_version()),
            activated: true,
            snapshot: "42.3fa2c1".into(),
            unchanged: false,
            needs_approval: String::new(),
        };
        let t = push_text(&r, true);
        assert!(t.ends_with("in force now: snapshot 42.3fa2c1\n"), "{t}");
        assert!(
            t.contains("+1200 -30 against v3, pushed by ana\\x1b"),
            "{t}"
        );
        r.activated = false;
        r.needs_approval = "adds 1200 numbers\u{1b}[2J to a blocking list".into();
        let t = push_text(&r, true);
        assert!(
            t.contains("it needs approval: adds 1200 numbers\\x1b[2J to a blocking list"),
            "{t}"
        );
        assert!(
            t.contains("`kuzet lists activate --list blocklist v4`"),
            "{t}"
        );
        r.needs_approval.clear();
        r.unchanged = true;
        if let Some(v) = r.version.as_mut() {
            v.active = false;
        }
        let t = push_text(&r, false);
        assert!(
            t.starts_with("unchanged: the text holds what blocklist v4 holds"),
            "{t}"
        );
        assert!(t.ends_with("puts it in force\n"), "{t}");
    }

    #[test]
    fn diff_and_lookup_lines_escape_entries_and_reasons() {
        let d = lpb::DiffEntry {
            added: true,
            entry: "+77011234567".into(),
            reason: "scam\ncaller".into(),
        };
        assert_eq!(diff_entry_line(&d), "+ +77011234567  scam\\ncaller\n");
        let d = lpb::DiffEntry {
            added: false,
            entry: "+7701*".into(),
            reason: String::new(),
        };
        assert_eq!(diff_entry_line(&d), "- +7701*\n");

        let r = lpb::LookupResponse {
            normalized: "+77011234567".into(),
            hits: vec![lpb::ListHit {
                list: "blocklist".into(),
                source: "published".into(),
                version: "v4".into(),
                r#match: "exact".into(),
                entry: "+77011234567".into(),
                reason: "reported\u{202e}".into(),
            }],
            as_caller: Some(lpb::Answer {
                decision: "block".into(),
                score: 100,
                allowlisted: false,
                rules: strings(&["blocklist", "velocity (shadow)"]),
                explanation: "listed".into(),
            }),
            as_callee: None,
            snapshot: "42.3fa2c1".into(),
        };
        assert_eq!(
            lookup_text(&r),
            "number   +77011234567\n\
             on blocklist (published v4): exact +77011234567, reported\\u{202e}\n\
             as caller: block (score 100), rules blocklist, velocity (shadow)\n  why: listed\n\
             as callee: no answer\n\
             snapshot 42.3fa2c1\n"
        );
        let none = lpb::LookupResponse {
            normalized: "+77010000000".into(),
            ..Default::default()
        };
        assert!(lookup_text(&none).contains("\non no list\n"));
    }

    #[test]
    fn rule_changes_and_approval() {
        let c = rpb::Change {
            what: "velocity".into(),
            change: "mode".into(),
            before: "shadow".into(),
            after: "enforce".into(),
            blocks_more: true,
        };
        assert_eq!(
            change_line(&c),
            "velocity: mode shadow -> enforce  [blocks more]\n"
        );
        let c = rpb::Change {
            what: "new\u{1b}[1m".into(),
            change: "added".into(),
            before: String::new(),
            after: "shadow".into(),
            blocks_more: false,
        };
        assert_eq!(change_line(&c), "new\\x1b[1m: added - -> shadow\n");
        assert_eq!(
            approval_line("", "v4", true),
            "v4 blocks more than the version in force: putting it in force needs an approver\n"
        );
        assert!(approval_line("v3", "v4", false).starts_with("v4 blocks no more than v3:"));
        let t = rpb::Thresholds {
            flag: 30,
            redirect: 0,
            block: 70,
        };
        assert_eq!(thresholds_text(Some(&t)), "flag 30, block 70");
    }

    fn body() -> (
        PushBody,
        mpsc::Sender<std::io::Result<Vec<u8>>>,
        oneshot::Receiver<std::io::Error>,
    ) {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let (failed, read_error) = oneshot::channel();
        let head = lpb::PushChunk {
            list: "blocklist".into(),
            expect: "v3".into(),
            activate: true,
            note: "n".into(),
            data: Vec::new(),
            allow_empty: false,
        };
        let body = PushBody {
            rx,
            head: Some(head),
            progress: Progress::Lines {
                total: None,
                sent: 0,
                done: false,
            },
            failed: Some(failed),
            broken: false,
        };
        (body, tx, read_error)
    }

    fn poll(b: &mut PushBody) -> Poll<Option<lpb::PushChunk>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(b).poll_next(&mut cx)
    }

    #[test]
    fn a_push_names_its_list_first_and_ends_only_when_the_file_does() {
        let (mut b, tx, _) = body();
        assert!(poll(&mut b).is_pending());
        tx.try_send(Ok(b"+77011234567\n+770".to_vec())).unwrap();
        tx.try_send(Ok(b"2*, range\n".to_vec())).unwrap();
        let Poll::Ready(Some(first)) = poll(&mut b) else {
            panic!("no first chunk");
        };
        assert_eq!(
            (first.list.as_str(), first.expect.as_str(), first.activate),
            ("blocklist", "v3", true)
        );
        assert_eq!(first.data, b"+77011234567\n+770");
        let Poll::Ready(Some(second)) = poll(&mut b) else {
            panic!("no second chunk");
        };
        assert!(second.list.is_empty() && !second.activate && second.note.is_empty());
        assert_eq!(second.data, b"2*, range\n");
        drop(tx);
        assert!(matches!(poll(&mut b), Poll::Ready(None)));

        // An empty file: the head alone, then the end.
        let (mut b, tx, _) = body();
        drop(tx);
        let Poll::Ready(Some(only)) = poll(&mut b) else {
            panic!("no head");
        };
        assert_eq!((only.list.as_str(), only.data.len()), ("blocklist", 0));
        assert!(matches!(poll(&mut b), Poll::Ready(None)));
    }

    #[test]
    fn a_read_error_never_ends_the_push() {
        let (mut b, tx, mut read_error) = body();
        tx.try_send(Ok(b"+77011234567\n".to_vec())).unwrap();
        tx.try_send(Err(std::io::Error::other("disk gone")))
            .unwrap();
        assert!(matches!(poll(&mut b), Poll::Ready(Some(_))));
        assert!(poll(&mut b).is_pending());
        assert_eq!(read_error.try_recv().unwrap().to_string(), "disk gone");
        // The reader is gone too: the stream must still not end, or kuzet
        // would take the first line for the whole list.
        drop(tx);
        for _ in 0..3 {
            assert!(poll(&mut b).is_pending());
        }
    }

    #[test]
    fn progress_lines_come_at_each_tenth_at_most() {
        let total = Some(1000);
        assert_eq!(progress_line(total, 0, 99), None);
        assert_eq!(
            progress_line(total, 99, 100).as_deref(),
            Some("sent 100 B of 1000 B (10%)")
        );
        assert_eq!(progress_line(total, 100, 199), None);
        // A chunk that spans several tenths gives one line.
        assert_eq!(
            progress_line(total, 150, 480).as_deref(),
            Some("sent 480 B of 1000 B (40%)")
        );
        assert!(progress_line(total, 899, 900).unwrap().ends_with("(90%)"));
        assert_eq!(progress_line(total, 999, 1000), None);
        assert_eq!(progress_line(Some(0), 0, 0), None);
        // Unknown size: at 16 MiB, then at each doubling.
        let mib = 1u64 << 20;
        assert_eq!(progress_line(None, 0, 15 * mib), None);
        assert!(progress_line(None, 15 * mib, 16 * mib).is_some());
        assert_eq!(progress_line(None, 16 * mib, 31 * mib), None);
        assert!(progress_line(None, 31 * mib, 32 * mib).is_some());
        let lines = (0..1000u64)
            .filter(|i| progress_line(None, i * mib / 4, (i + 1) * mib / 4).is_some())
            .count();
        assert_eq!(lines, 4, "16, 32, 64 and 128 MiB within 250 MiB");
    }
}
