//! The investigators' command line: `kuzet calls`, `kuzet incidents`,
//! `kuzet counts`, `kuzet audit`, and `kuzet token` to make tokens. Each
//! query goes to a running kuzet's control API over gRPC with a bearer
//! token; the server checks and audits it, never this client.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kuzet_api::investigation as pb;
use kuzet_api::investigation::investigation_service_client::InvestigationServiceClient;
use std::path::Path;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use tonic::{Code, Request, Status};

/// Where `kuzet run` on its defaults writes its local token, and where
/// the CLI looks for it when no token is given.
const LOCAL_TOKEN_DIR: &str = "kuzet-data";
const LOCAL_TOKEN_FILE: &str = crate::server::LOCAL_TOKEN_FILE;

/// How the control API is reached.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// The control address of a running kuzet.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    pub control: SocketAddr,
    /// Bearer token [default: $KUZET_TOKEN, else the local token a kuzet
    /// without configured tokens wrote to ./kuzet-data/local.token].
    #[arg(
        long,
        value_name = "TOKEN",
        env = "KUZET_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
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
        /// investigator, rule-author or admin.
        #[arg(long)]
        role: String,
    },
    /// Print the SHA-256 of a token read from standard input.
    Hash,
}

/// A failure, with the exit code it maps to.
struct Failure(u8, String);

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        match s.code() {
            Code::Unauthenticated => Failure(
                3,
                format!(
                    "the control API refused the token ({}): pass --token or set KUZET_TOKEN (a kuzet with no [[control.tokens]] writes a local one to its data directory's local.token; run the CLI from the directory that holds kuzet-data)",
                    s.message()
                ),
            ),
            Code::PermissionDenied => Failure(3, format!("permission denied: {}", s.message())),
            Code::InvalidArgument => Failure(2, s.message().to_string()),
            Code::Unavailable => Failure(
                1,
                format!("the control API is unavailable: {}", s.message()),
            ),
            _ => Failure(1, format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

fn finish(r: Result<(), Failure>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("kuzet: {msg}");
            ExitCode::from(code)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
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

async fn connect(c: &Conn) -> Result<Client, Failure> {
    // Without --token or KUZET_TOKEN: the local token a kuzet on its
    // defaults wrote into ./kuzet-data (readable by its own user only).
    // Only towards a loopback address: the control API speaks plain gRPC.
    let local = match &c.token {
        Some(_) => None,
        None if c.control.ip().is_loopback() => {
            std::fs::read_to_string(Path::new(LOCAL_TOKEN_DIR).join(LOCAL_TOKEN_FILE)).ok()
        }
        None => None,
    };
    let bearer =
        match c.token.as_ref().or(local.as_ref()) {
            Some(t) => Some(format!("Bearer {}", t.trim()).parse().map_err(|_| {
                Failure(2, "the token holds characters a header cannot carry".into())
            })?),
            None => None,
        };
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
    Ok(InvestigationServiceClient::with_interceptor(
        channel,
        Bearer(bearer),
    ))
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
fn time_text(us: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(us.max(0) as u64);
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
                let page = client
                    .query_calls(pb::QueryCallsRequest {
                        filter: Some(filter),
                        page_size: a.limit,
                        cursor: a.cursor.clone().unwrap_or_default(),
                    })
                    .await?
                    .into_inner();
                for c in &page.calls {
                    out.call(c)?;
                }
                out.end()?;
                if !page.next_cursor.is_empty() {
                    eprintln!(
                        "more: add --cursor {} for the next page, or --all for every call",
                        page.next_cursor
                    );
                }
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

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn io(e: std::io::Error) -> Failure {
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
                writeln!(o, "{}", call_json(c)).map_err(io)?;
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
                let line = f.iter().map(|s| csv_field(s)).collect::<Vec<_>>().join(",");
                writeln!(o, "{line}").map_err(io)?;
            }
            Format::Table if self.details => {
                writeln!(o, "verdict   {}", c.verdict_id).map_err(io)?;
                writeln!(o, "time      {}  (node {})", time_text(c.time_us), c.node).map_err(io)?;
                writeln!(
                    o,
                    "decision  {} (SIP {}), score {}{}",
                    c.decision,
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
                    "caller    {}  (From {}, PAI {})",
                    dash(&c.a_number),
                    dash(&c.from_number),
                    dash(&c.pai_number)
                )
                .map_err(io)?;
                writeln!(o, "callee    {}", dash(&c.b_number)).map_err(io)?;
                writeln!(
                    o,
                    "source    {} over {}, trunk {} ({})",
                    c.source,
                    c.transport,
                    dash(&c.trunk),
                    dash(&c.trunk_kind)
                )
                .map_err(io)?;
                writeln!(o, "call-id   {}", c.call_id).map_err(io)?;
                writeln!(o, "why       {}", c.explanation).map_err(io)?;
                for r in &c.rules {
                    writeln!(
                        o,
                        "  rule    {}: {} (value {}, threshold {}){}",
                        r.id,
                        r.why,
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
                        l.list,
                        l.side,
                        if l.exact { "exact" } else { "range" },
                        dash(&l.reason)
                    )
                    .map_err(io)?;
                }
                writeln!(o, "lists     version {}", c.lists_version).map_err(io)?;
                writeln!(o, "request   ---").map_err(io)?;
                for l in String::from_utf8_lossy(&c.headers).lines() {
                    writeln!(o, "  {l}").map_err(io)?;
                }
                writeln!(o).map_err(io)?;
            }
            Format::Table => {
                self.rows.push([
                    time_text(c.time_us).chars().take(19).collect(),
                    c.verdict_id.clone(),
                    c.decision.clone(),
                    c.sip_code.to_string(),
                    dash(&c.a_number).to_string(),
                    dash(&c.b_number).to_string(),
                    dash(&c.trunk).to_string(),
                    rules,
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

fn dash(s: &str) -> &str {
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
            for (kind, v) in [("decision", &r.per_decision), ("rule", &r.per_rule)] {
                for c in v {
                    let t: String = time_text(c.bucket_us).chars().take(19).collect();
                    writeln!(o, "{t:<20}  {kind:<8}  {:<28}  {}", c.key, c.calls).map_err(io)?;
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
                        serde_json::json!({"time": time_text(e.time_us), "who": e.who, "role": e.role,
                            "action": e.action, "filter": e.filter, "rows": e.rows, "outcome": e.outcome})
                    ),
                    _ => writeln!(
                        o,
                        "{}  {:<12} {:<13} {:<14} rows={:<6} {:<16} {}",
                        time_text(e.time_us).chars().take(19).collect::<String>(),
                        e.who,
                        e.role,
                        e.action,
                        e.rows,
                        e.outcome,
                        e.filter
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
                            Format::Jsonl => writeln!(o, "{}", incident_json(i)),
                            _ => writeln!(
                                o,
                                "{:<6} {:<8} {:<12} {:<24} first {} last {} blocked {} flagged {} victims {}",
                                i.id,
                                i.kind,
                                i.state,
                                i.key,
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
                    if format == Format::Jsonl {
                        writeln!(o, "{}", incident_json(&i)).map_err(io)?;
                    } else {
                        writeln!(o, "incident  {} ({} {})", i.id, i.kind, i.key).map_err(io)?;
                        writeln!(o, "state     {} (register: {}{})", i.state, dash(&i.register_state),
                            if i.register_error.is_empty() { String::new() } else { format!(", {}", i.register_error) }).map_err(io)?;
                        writeln!(o, "seen      {} .. {}", time_text(i.first_seen_us), time_text(i.last_seen_us)).map_err(io)?;
                        writeln!(o, "calls     blocked {}, flagged {}, other {}", i.blocked, i.flagged, i.other).map_err(io)?;
                        writeln!(o, "victims   {}", i.victims.join(", ")).map_err(io)?;
                        writeln!(o, "rules     {}", i.rules.join(", ")).map_err(io)?;
                        writeln!(o, "trunks    {}", i.trunks.join(", ")).map_err(io)?;
                        writeln!(o, "sources   {}", i.sources.join(", ")).map_err(io)?;
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
    })
}

/// `kuzet token`.
pub fn token(c: TokenCommand) -> ExitCode {
    finish((|| match c {
        TokenCommand::New { name, role } => {
            if kuzet_control::access::Role::from_name(&role).is_none() {
                return Err(Failure(
                    2,
                    format!("--role must be investigator, rule-author or admin, not {role:?}"),
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
