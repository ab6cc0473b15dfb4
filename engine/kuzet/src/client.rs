//! The investigators' command line: `kuzet calls`, `kuzet incidents`,
//! `kuzet counts`, `kuzet audit`, and `kuzet token` to make tokens. Each
//! query goes to a running kuzet's control API over gRPC: with a bearer
//! token over TCP, or, with none, as kuzet's own user over the Unix socket
//! in its data directory (the client checks that the socket and the
//! process behind it belong to the data directory's owner, so nothing
//! else can pose as kuzet, and no token is ever read from a file). The
//! server checks and audits every query, never this client. Everything
//! printed that a caller, a peer or the server wrote is escaped, and CSV
//! cells never start a formula.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kuzet_api::investigation as pb;
use kuzet_api::investigation::investigation_service_client::InvestigationServiceClient;
use std::path::Path;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use kuzet_control::safe::{csv_cell, json_line, visible};
use tonic::{Code, Request, Status};

/// How the control API is reached.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// The control address of a running kuzet, for requests with a token.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    pub control: SocketAddr,
    /// Bearer token [default: $KUZET_TOKEN]. With none, the CLI asks the
    /// kuzet whose data directory is --data, as its own user, through the
    /// Unix socket there.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "KUZET_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// The data directory of the kuzet to ask without a token.
    #[arg(long, value_name = "DIR", default_value = "kuzet-data")]
    pub data: PathBuf,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// Comma-separated, one call a line, with a header line.
    Csv,
    /// One JSON object a line.
    Jsonl,
}

/// `kuzet calls`.
#[derive(clap::Args, Debug)]
pub struct CallsArgs {
    /// Calls from or to this number, in any written form ("8 701 123 45 67").
    #[arg(long, value_name = "NUMBER")]
    pub number: Option<String>,
    /// From this long ago (30m, 24h, 7d) or this time (2026-11-21T10:00:00Z).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Until this long ago, or this time.
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// allow, flag, redirect or block.
    #[arg(long)]
    pub decision: Option<String>,
    /// A rule id that fired.
    #[arg(long)]
    pub rule: Option<String>,
    /// A trunk name.
    #[arg(long)]
    pub trunk: Option<String>,
    /// An incident id.
    #[arg(long)]
    pub incident: Option<i64>,
    /// The verdict id a blocked caller cites (from the 603's Reason).
    #[arg(long, value_name = "ID")]
    pub verdict_id: Option<String>,
    /// Calls per page (at most 1000).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Continue after a previous page (its "more:" line).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Every matching call, streamed (an export; audited as one).
    #[arg(long)]
    pub all: bool,
    /// Show every field of each call, headers included.
    #[arg(long)]
    pub details: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// How the control API is reached.
    #[command(flatten)]
    pub conn: Conn,
}

/// `kuzet counts`.
#[derive(clap::Args, Debug)]
pub struct CountsArgs {
    /// From this long ago, or this time [default: 24h].
    #[arg(long, value_name = "WHEN", default_value = "24h")]
    pub since: String,
    /// Bucket width (1h, 15m, 1d).
    #[arg(long, default_value = "1h")]
    pub bucket: String,
    /// How the control API is reached.
    #[command(flatten)]
    pub conn: Conn,
}

/// `kuzet audit`.
#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// Entries to show.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// How the control API is reached.
    #[command(flatten)]
    pub conn: Conn,
}

/// `kuzet incidents`.
#[derive(clap::Subcommand, Debug)]
pub enum IncidentsCommand {
    /// Incidents, newest first.
    List {
        /// open, reported, updated, closed or dead_letter.
        #[arg(long)]
        state: Option<String>,
        /// Incidents per page.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// How the control API is reached.
        #[command(flatten)]
        conn: Conn,
    },
    /// One incident with its evidence and calls.
    Show {
        /// The incident id.
        id: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// How the control API is reached.
        #[command(flatten)]
        conn: Conn,
    },
}

/// `kuzet token`.
#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a new random token and print it with its [[control.tokens]]
    /// entry (the config keeps only the hash).
    New {
        /// Who will hold it (named in the audit log).
        #[arg(long)]
        name: String,
        /// investigator, rule-author, approver or admin.
        #[arg(long)]
        role: String,
    },
    /// Print the SHA-256 of a token read from standard input.
    Hash,
}

/// A failure, with the exit code it maps to.
pub(crate) struct Failure(pub(crate) u8, pub(crate) String);

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        match s.code() {
            Code::Unauthenticated => Failure(
                3,
                format!(
                    "the control API refused the token ({}): pass --token or set KUZET_TOKEN, or run the CLI as kuzet's own user beside its data directory (--data DIR) with no token",
                    s.message()
                ),
            ),
            Code::ResourceExhausted => Failure(1, format!("kuzet is busy: {}", s.message())),
            Code::PermissionDenied => Failure(3, format!("permission denied: {}", s.message())),
            Code::InvalidArgument => Failure(2, s.message().to_string()),
            Code::Unavailable => Failure(
                1,
                format!("the control API is unavailable: {}", s.message()),
            ),
            // The publishing APIs' refusals: the message says it all.
            Code::FailedPrecondition | Code::NotFound => Failure(1, s.message().to_string()),
            Code::Aborted => Failure(
                1,
                format!(
                    "{} (another change came first: look at the versions, then retry with --expect)",
                    s.message()
                ),
            ),
            _ => Failure(1, format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

pub(crate) fn finish(r: Result<(), Failure>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            // A message may quote what a server or a peer said.
            eprintln!("kuzet: {}", visible(&msg));
            ExitCode::from(code)
        }
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(1, format!("no runtime: {e}")))
}

type Client =
    InvestigationServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// Adds the bearer token to every request.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// The largest answer the CLI takes (pages are cut near 3 MiB by the
/// server; an incident's calls may run larger).
pub(crate) const MAX_ANSWER: usize = 64 << 20;

async fn connect(c: &Conn) -> Result<Client, Failure> {
    let (channel, bearer) = channel(c).await?;
    Ok(
        InvestigationServiceClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(MAX_ANSWER),
    )
}

/// A connection to the control API for any of its services, with the
/// interceptor that adds the token: over TCP to --control with a token,
/// else over the data directory's Unix socket (checked, see
/// [`local_socket`]) with none.
pub(crate) async fn channel(c: &Conn) -> Result<(Channel, Bearer), Failure> {
    let Some(token) = &c.token else {
        return Ok((local_channel(&c.data).await?, Bearer(None)));
    };
    let bearer: MetadataValue<tonic::metadata::Ascii> = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| Failure(2, "the token holds characters a header cannot carry".into()))?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.control))
        .map_err(|e| Failure(2, e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            Failure(
                1,
                format!(
                    "cannot reach the control API at {} ({e}): is kuzet running, and is --control its [control] listen address?",
                    c.control
                ),
            )
        })?;
    Ok((channel, Bearer(Some(bearer))))
}

/// The Unix socket of the kuzet whose data directory is `dir`, checked:
/// the directory and the socket belong to one user, this one (or this is
/// root), and nobody else can write the directory. The process that
/// answers must run as that user too (its peer credentials), so no other
/// program can pose as kuzet.
fn local_socket(dir: &Path) -> Result<(PathBuf, u32), Failure> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let path = dir.join(kuzet_control::investigate::SOCKET_FILE);
    let no_kuzet = |why: String| {
        Failure(
            1,
            format!(
                "no kuzet to ask at {} ({why}): run the CLI beside the data directory of a running kuzet (--data DIR) as its user, or pass --token for its control address",
                path.display()
            ),
        )
    };
    let d = std::fs::symlink_metadata(dir).map_err(|e| no_kuzet(e.to_string()))?;
    if !d.is_dir() || d.file_type().is_symlink() {
        return Err(no_kuzet("the data directory is not a directory".into()));
    }
    if d.mode() & 0o022 != 0 {
        return Err(no_kuzet(
            "others can write the data directory, so its socket could be anyone's".into(),
        ));
    }
    let m = std::fs::symlink_metadata(&path).map_err(|e| no_kuzet(e.to_string()))?;
    if !m.file_type().is_socket() {
        return Err(no_kuzet("it is not a socket".into()));
    }
    let me = kuzet_store::private::process_uid().unwrap_or(u32::MAX);
    if m.uid() != d.uid() || (m.uid() != me && me != 0) {
        return Err(no_kuzet(format!(
            "it belongs to uid {}, not to you (uid {me})",
            m.uid()
        )));
    }
    Ok((path, m.uid()))
}

async fn local_channel(dir: &Path) -> Result<Channel, Failure> {
    let (path, owner) = local_socket(dir)?;
    let shown = path.display().to_string();
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let path = path.clone();
        async move {
            let s = tokio::net::UnixStream::connect(&path).await?;
            let peer = s.peer_cred()?;
            if peer.uid() != owner {
                return Err(std::io::Error::other(format!(
                    "the process behind {} runs as uid {}, not as the data directory's owner (uid {owner})",
                    path.display(),
                    peer.uid()
                )));
            }
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://kuzet.local")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            let why =
                std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            Failure(1, format!("cannot reach kuzet at {shown}: {why}"))
        })?;
    Ok(channel)
}

/// `30m`, `24h`, `7d` ago, or an RFC 3339 time, as µs since the epoch.
fn when(s: &str) -> Result<i64, Failure> {
    let s = s.trim();
    if let Ok(d) = humantime::parse_duration(s) {
        let t = SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| Failure(2, format!("{s:?} reaches before 1970")))?;
        return Ok(us(t));
    }
    humantime::parse_rfc3339_weak(s).map(us).map_err(|_| {
        Failure(
            2,
            format!("{s:?} is neither a duration (24h, 7d) nor a time (2026-11-21T10:00:00Z)"),
        )
    })
}

fn us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// `2026-11-22T08:15:03.123456Z`.
pub(crate) fn time_text(us: i64) -> String {
    // humantime writes four-digit years only: a time past 9999 (a case
    // the Centre dated absurdly) is shown as the last microsecond of it.
    const LAST_US: i64 = 253_402_300_799_999_999;
    let t = UNIX_EPOCH + Duration::from_micros(us.clamp(0, LAST_US) as u64);
    humantime::format_rfc3339_micros(t).to_string()
}

/// `kuzet calls`.
pub fn calls(a: CallsArgs) -> ExitCode {
    finish((|| {
        let filter = pb::CallFilter {
            number: a.number.clone().unwrap_or_default(),
            since_us: a.since.as_deref().map(when).transpose()?.unwrap_or(0),
            until_us: a.until.as_deref().map(when).transpose()?.unwrap_or(0),
            decision: a.decision.clone().unwrap_or_default(),
            rule: a.rule.clone().unwrap_or_default(),
            trunk: a.trunk.clone().unwrap_or_default(),
            incident: a.incident.unwrap_or(0),
            verdict_id: a.verdict_id.clone().unwrap_or_default(),
        };
        let rt = runtime()?;
        rt.block_on(async {
            let mut client = connect(&a.conn).await?;
            let mut out = Printer::new(a.format, a.details || a.verdict_id.is_some());
            if a.all {
                let mut stream = client
                    .export_calls(pb::ExportCallsRequest {
                        filter: Some(filter),
                    })
                    .await?
                    .into_inner();
                while let Some(c) = stream.message().await? {
                    out.call(&c)?;
                }
                out.end()?;
            } else {
                // Pages of at most 1000 calls, cut by the server when their
                // calls are large: asked for again until --limit is met.
                let want = a.limit.max(1) as usize;
                let mut cursor = a.cursor.clone().unwrap_or_default();
                let mut shown = 0usize;
                loop {
                    let page = client
                        .query_calls(pb::QueryCallsRequest {
                            filter: Some(filter.clone()),
                            page_size: (want - shown).min(1000) as u32,
                            cursor: cursor.clone(),
                        })
                        .await?
                        .into_inner();
                    for c in &page.calls {
                        out.call(c)?;
                    }
                    shown += page.calls.len();
                    if page.next_cursor.is_empty() {
                        break;
                    }
                    if shown >= want || page.calls.is_empty() {
                        out.end()?;
                        eprintln!(
                            "more: add --cursor {} for the next page, or --all for every call",
                            page.next_cursor
                        );
                        return Ok(());
                    }
                    cursor = page.next_cursor;
                }
                out.end()?;
            }
            Ok(())
        })
    })())
}

/// Writes calls in one format; the table is aligned over what it holds.
struct Printer {
    format: Format,
    details: bool,
    rows: Vec<[String; 8]>,
    started: bool,
}

const CSV_HEAD: &str = "time,verdict_id,node,decision,code,score,a_number,b_number,from_number,pai_number,trunk,source,transport,rules,explanation,call_id";

/// Shows hostile text safely: control characters as visible escapes.
fn v(s: &str) -> std::borrow::Cow<'_, str> {
    visible(s)
}

/// The request's header section as one line per header field: a folded
/// continuation line stays on its field's line (its line break shown as
/// `\r\n`), and every control character is escaped, so no header can
/// forge a line of the summary above it.
fn header_fields(head: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(head);
    let mut fields: Vec<String> = Vec::new();
    let mut rest: &str = &text;
    while !rest.is_empty() {
        let (line, next) = match rest.find("\r\n") {
            Some(at) => (&rest[..at], &rest[at + 2..]),
            None => (rest, ""),
        };
        match fields.last_mut() {
            Some(f) if line.starts_with([' ', '\t']) => {
                f.push_str("\r\n");
                f.push_str(line);
            }
            _ => fields.push(line.to_string()),
        }
        rest = next;
    }
    fields.iter().map(|f| visible(f).into_owned()).collect()
}

pub(crate) fn io(e: std::io::Error) -> Failure {
    Failure(1, format!("writing output: {e}"))
}

impl Printer {
    fn new(format: Format, details: bool) -> Printer {
        Printer {
            format,
            details,
            rows: Vec::new(),
            started: false,
        }
    }

    fn call(&mut self, c: &pb::Call) -> Result<(), Failure> {
        let stdout = std::io::stdout();
        let mut o = stdout.lock();
        let rules = c
            .rules
            .iter()
            .map(|r| {
                if r.shadow {
                    format!("{}(shadow)", r.id)
                } else {
                    r.id.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        match self.format {
            Format::Jsonl => {
                writeln!(o, "{}", json_line(&call_json(c))).map_err(io)?;
            }
            Format::Csv => {
                if !self.started {
                    writeln!(o, "{CSV_HEAD}").map_err(io)?;
                    self.started = true;
                }
                let f = [
                    time_text(c.time_us),
                    c.verdict_id.clone(),
                    c.node.clone(),
                    c.decision.clone(),
                    c.sip_code.to_string(),
                    c.score.to_string(),
                    c.a_number.clone(),
                    c.b_number.clone(),
                    c.from_number.clone(),
                    c.pai_number.clone(),
                    c.trunk.clone(),
                    c.source.clone(),
                    c.transport.clone(),
                    rules,
                    c.explanation.clone(),
                    c.call_id.clone(),
                ];
                let line = f.iter().map(|s| csv_cell(s)).collect::<Vec<_>>().join(",");
                writeln!(o, "{line}").map_err(io)?;
            }
            Format::Table if self.details => {
                writeln!(o, "verdict   {}", v(&c.verdict_id)).map_err(io)?;
                writeln!(
                    o,
                    "time      {}  (node {})",
                    time_text(c.time_us),
                    v(&c.node)
                )
                .map_err(io)?;
                writeln!(
                    o,
                    "decision  {} (SIP {}), score {}{}",
                    v(&c.decision),
                    c.sip_code,
                    c.score,
                    if c.sampled {
                        ", kept as a sample of allowed calls"
                    } else {
                        ""
                    }
                )
                .map_err(io)?;
                writeln!(
                    o,
                    "caller    {}  (From {}, PAI {}){}",
                    v(dash(&c.a_number)),
                    v(dash(&c.from_number)),
                    v(dash(&c.pai_number)),
                    caller_note(c)
                )
                .map_err(io)?;
                writeln!(o, "callee    {}", v(dash(&c.b_number))).map_err(io)?;
                writeln!(
                    o,
                    "source    {} over {}, trunk {} ({})",
                    v(&c.source),
                    v(&c.transport),
                    v(dash(&c.trunk)),
                    v(dash(&c.trunk_kind))
                )
                .map_err(io)?;
                writeln!(o, "call-id   {}", v(&c.call_id)).map_err(io)?;
                writeln!(o, "why       {}", v(&c.explanation)).map_err(io)?;
                for r in &c.rules {
                    writeln!(
                        o,
                        "  rule    {}: {} (value {}, threshold {}){}",
                        v(&r.id),
                        v(&r.why),
                        r.value,
                        r.threshold,
                        if r.shadow { " [shadow]" } else { "" }
                    )
                    .map_err(io)?;
                }
                if let Some(l) = &c.list_hit {
                    writeln!(
                        o,
                        "  list    {} {} {} ({})",
                        v(&l.list),
                        v(&l.side),
                        if l.exact { "exact" } else { "range" },
                        v(dash(&l.reason))
                    )
                    .map_err(io)?;
                }
                writeln!(o, "lists     version {}", v(&c.lists_version)).map_err(io)?;
                writeln!(o, "request   ---").map_err(io)?;
                for l in header_fields(&c.headers) {
                    writeln!(o, "  {l}").map_err(io)?;
                }
                writeln!(o).map_err(io)?;
            }
            Format::Table => {
                self.rows.push([
                    time_text(c.time_us).chars().take(19).collect(),
                    v(&c.verdict_id).into_owned(),
                    v(&c.decision).into_owned(),
                    c.sip_code.to_string(),
                    v(dash(&c.a_number)).into_owned(),
                    v(dash(&c.b_number)).into_owned(),
                    v(dash(&c.trunk)).into_owned(),
                    v(&rules).into_owned(),
                ]);
            }
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), Failure> {
        if self.format != Format::Table || self.details {
            return Ok(());
        }
        let head = [
            "TIME (UTC)",
            "VERDICT ID",
            "DECISION",
            "CODE",
            "CALLER",
            "CALLEE",
            "TRUNK",
            "RULES",
        ];
        if self.rows.is_empty() {
            eprintln!("no calls match");
            return Ok(());
        }
        let mut w = head.map(str::len);
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let stdout = std::io::stdout();
        let mut o = stdout.lock();
        let line = |cells: &[&str]| -> String {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<width$}", width = w[i]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        writeln!(o, "{}", line(&head)).map_err(io)?;
        for r in &self.rows {
            let cells: Vec<&str> = r.iter().map(String::as_str).collect();
            writeln!(o, "{}", line(&cells)).map_err(io)?;
        }
        Ok(())
    }
}

/// What the record says of its caller: how far the network vouches for
/// the number, and what the call makes of the caller.
fn caller_note(c: &pb::Call) -> String {
    let trust = match c.a_trust.as_str() {
        "network" => "asserted by a trusted trunk",
        "claimed" => "claimed: no trusted network vouches for it",
        _ => "",
    };
    let role = match c.caller_role.as_str() {
        "source" => "the suspect",
        "claimed" => "an unverified suspect: the trunk or address is named, not the number",
        "impersonated" => "impersonated: the number's holder is a victim of the spoof",
        "potential_victim" => "a potential victim: it dialled a listed number",
        _ => "",
    };
    match (trust, role) {
        ("", "") => String::new(),
        (t, "") => format!("; {t}"),
        ("", r) => format!("; {r}"),
        (t, r) => format!("; {t}; {r}"),
    }
}

pub(crate) fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn call_json(c: &pb::Call) -> serde_json::Value {
    serde_json::json!({
        "verdict_id": c.verdict_id,
        "time": time_text(c.time_us),
        "time_us": c.time_us,
        "node": c.node,
        "call_id": c.call_id,
        "request_uri": c.request_uri,
        "from_header": c.from_header,
        "pai_header": c.pai_header,
        "a_number": c.a_number,
        "b_number": c.b_number,
        "from_number": c.from_number,
        "pai_number": c.pai_number,
        "trunk": c.trunk,
        "trunk_kind": c.trunk_kind,
        "source": c.source,
        "transport": c.transport,
        "decision": c.decision,
        "shadow_decision": c.shadow_decision,
        "sip_code": c.sip_code,
        "score": c.score,
        "sampled": c.sampled,
        "explanation": c.explanation,
        "rules": c.rules.iter().map(|r| serde_json::json!({
            "id": r.id, "value": r.value, "threshold": r.threshold, "shadow": r.shadow, "why": r.why,
        })).collect::<Vec<_>>(),
        "list_hit": c.list_hit.as_ref().map(|l| serde_json::json!({
            "list": l.list, "side": l.side, "exact": l.exact, "reason": l.reason,
        })),
        "lists_version": c.lists_version,
        "headers": String::from_utf8_lossy(&c.headers),
        "incident": c.incident,
        "a_trust": c.a_trust,
        "caller_role": c.caller_role,
    })
}

/// `kuzet counts`.
pub fn counts(a: CountsArgs) -> ExitCode {
    finish((|| {
        let since = when(&a.since)?;
        let bucket = humantime::parse_duration(&a.bucket)
            .map_err(|e| Failure(2, format!("--bucket {:?}: {e}", a.bucket)))?;
        let rt = runtime()?;
        rt.block_on(async {
            let mut client = connect(&a.conn).await?;
            let r = client
                .count_calls(pb::CountCallsRequest {
                    filter: Some(pb::CallFilter {
                        since_us: since,
                        ..Default::default()
                    }),
                    bucket_secs: bucket.as_secs().clamp(1, u64::from(u32::MAX)) as u32,
                })
                .await?
                .into_inner();
            let stdout = std::io::stdout();
            let mut o = stdout.lock();
            writeln!(
                o,
                "{:<20}  {:<8}  {:<28}  CALLS",
                "BUCKET (UTC)", "KIND", "KEY"
            )
            .map_err(io)?;
            for (kind, rows) in [("decision", &r.per_decision), ("rule", &r.per_rule)] {
                for c in rows {
                    let t: String = time_text(c.bucket_us).chars().take(19).collect();
                    writeln!(o, "{t:<20}  {kind:<8}  {:<28}  {}", v(&c.key), c.calls)
                        .map_err(io)?;
                }
            }
            Ok(())
        })
    })())
}

/// `kuzet audit`.
pub fn audit(a: AuditArgs) -> ExitCode {
    finish((|| {
        let rt = runtime()?;
        rt.block_on(async {
            let mut client = connect(&a.conn).await?;
            let r = client
                .read_audit(pb::ReadAuditRequest {
                    page_size: a.limit,
                    cursor: String::new(),
                })
                .await?
                .into_inner();
            let stdout = std::io::stdout();
            let mut o = stdout.lock();
            for e in &r.entries {
                match a.format {
                    Format::Jsonl => writeln!(
                        o,
                        "{}",
                        json_line(&serde_json::json!({"time": time_text(e.time_us), "who": e.who, "role": e.role,
                            "action": e.action, "filter": e.filter, "rows": e.rows, "count": e.count.max(1),
                            "outcome": e.outcome}))
                    ),
                    Format::Csv => writeln!(
                        o,
                        "{}",
                        [
                            time_text(e.time_us),
                            e.who.clone(),
                            e.role.clone(),
                            e.action.clone(),
                            e.rows.to_string(),
                            e.count.max(1).to_string(),
                            e.outcome.clone(),
                            e.filter.clone(),
                        ]
                        .iter()
                        .map(|c| csv_cell(c))
                        .collect::<Vec<_>>()
                        .join(",")
                    ),
                    Format::Table => writeln!(
                        o,
                        "{}  {:<12} {:<13} {:<14} rows={:<6} {:<16} {}",
                        time_text(e.time_us).chars().take(19).collect::<String>(),
                        v(&e.who),
                        v(&e.role),
                        v(&e.action),
                        e.rows,
                        if e.count > 1 {
                            format!("{} x{}", v(&e.outcome), e.count)
                        } else {
                            v(&e.outcome).into_owned()
                        },
                        v(&e.filter)
                    ),
                }
                .map_err(io)?;
            }
            Ok(())
        })
    })())
}

/// `kuzet incidents`.
pub fn incidents(c: IncidentsCommand) -> ExitCode {
    finish((|| {
        let rt = runtime()?;
        rt.block_on(async {
            match c {
                IncidentsCommand::List { state, limit, format, conn } => {
                    let mut client = connect(&conn).await?;
                    let r = client
                        .list_incidents(pb::ListIncidentsRequest {
                            state: state.unwrap_or_default(),
                            page_size: limit,
                            cursor: String::new(),
                        })
                        .await?
                        .into_inner();
                    let stdout = std::io::stdout();
                    let mut o = stdout.lock();
                    if r.incidents.is_empty() {
                        eprintln!("no incidents");
                    }
                    for i in &r.incidents {
                        match format {
                            Format::Jsonl => writeln!(o, "{}", json_line(&incident_json(i))),
                            _ => writeln!(
                                o,
                                "{:<6} {:<8} {:<12} {:<24} first {} last {} blocked {} flagged {} victims {}",
                                i.id,
                                v(&i.kind),
                                v(&i.state),
                                v(&i.key),
                                time_text(i.first_seen_us).chars().take(19).collect::<String>(),
                                time_text(i.last_seen_us).chars().take(19).collect::<String>(),
                                i.blocked,
                                i.flagged,
                                i.victims.len()
                            ),
                        }
                        .map_err(io)?;
                    }
                }
                IncidentsCommand::Show { id, format, conn } => {
                    let mut client = connect(&conn).await?;
                    let r = client
                        .get_incident(pb::GetIncidentRequest { id, max_calls: 100 })
                        .await?
                        .into_inner();
                    let Some(i) = r.incident else {
                        return Err(Failure(1, format!("incident {id}: no such incident")));
                    };
                    let stdout = std::io::stdout();
                    let mut o = stdout.lock();
                    let list = |l: &[String]| v(&l.join(", ")).into_owned();
                    if format == Format::Jsonl {
                        writeln!(o, "{}", json_line(&incident_json(&i))).map_err(io)?;
                    } else {
                        writeln!(o, "incident  {} ({} {})", i.id, v(&i.kind), v(&i.key)).map_err(io)?;
                        writeln!(o, "state     {} (register: {}{}{})", v(&i.state), v(dash(&i.register_state)),
                            if i.register_case.is_empty() { String::new() } else { format!(", case {}", v(&i.register_case)) },
                            if i.register_error.is_empty() { String::new() } else { format!(", {}", v(&i.register_error)) }).map_err(io)?;
                        writeln!(o, "seen      {} .. {}", time_text(i.first_seen_us), time_text(i.last_seen_us)).map_err(io)?;
                        writeln!(o, "calls     blocked {}, flagged {}, other {}", i.blocked, i.flagged, i.other).map_err(io)?;
                        writeln!(o, "victims   {}", list(&i.victims)).map_err(io)?;
                        writeln!(o, "rules     {}", list(&i.rules)).map_err(io)?;
                        writeln!(o, "trunks    {}", list(&i.trunks)).map_err(io)?;
                        writeln!(o, "sources   {}", list(&i.sources)).map_err(io)?;
                        for p in &i.parties {
                            writeln!(o, "  party   {} {}", v(&p.number), v(&p.role)).map_err(io)?;
                        }
                        writeln!(o).map_err(io)?;
                    }
                    drop(o);
                    let mut p = Printer::new(format, false);
                    for c in &r.calls {
                        p.call(c)?;
                    }
                    p.end()?;
                }
            }
            Ok(())
        })
    })())
}

fn incident_json(i: &pb::Incident) -> serde_json::Value {
    serde_json::json!({
        "id": i.id, "kind": i.kind, "key": i.key, "state": i.state,
        "first_seen": time_text(i.first_seen_us), "last_seen": time_text(i.last_seen_us),
        "blocked": i.blocked, "flagged": i.flagged, "other": i.other,
        "victims": i.victims, "rules": i.rules, "trunks": i.trunks, "sources": i.sources,
        "sample_verdict_ids": i.sample_verdict_ids, "sequence": i.sequence,
        "register_state": i.register_state, "register_error": i.register_error,
        "register_case": i.register_case,
        "parties": i.parties.iter().map(|p| serde_json::json!({"number": p.number, "role": p.role})).collect::<Vec<_>>(),
    })
}

/// `kuzet token`.
pub fn token(c: TokenCommand) -> ExitCode {
    finish((|| match c {
        TokenCommand::New { name, role } => {
            if kuzet_control::access::Role::from_name(&role).is_none() {
                return Err(Failure(
                    2,
                    format!(
                        "--role must be investigator, rule-author, approver or admin, not {role:?}"
                    ),
                ));
            }
            let mut raw = [0u8; 32];
            std::io::Read::read_exact(
                &mut std::fs::File::open("/dev/urandom")
                    .map_err(|e| Failure(1, format!("/dev/urandom: {e}")))?,
                &mut raw,
            )
            .map_err(|e| Failure(1, format!("/dev/urandom: {e}")))?;
            let token = format!("kz_{}", kuzet_control::access::hex(&raw));
            println!("token (give it to {name}; it is not stored anywhere):\n  {token}\n");
            println!("add to the config:\n[[control.tokens]]\nname = {name:?}\nrole = {role:?}\nsha256 = \"{}\"", kuzet_control::access::hash_token(&token));
            Ok(())
        }
        TokenCommand::Hash => {
            let mut t = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
                .map_err(|e| Failure(1, format!("reading standard input: {e}")))?;
            println!("{}", kuzet_control::access::hash_token(t.trim()));
            Ok(())
        }
    })())
}
