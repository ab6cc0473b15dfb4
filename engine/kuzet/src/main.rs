//! The `kuzet` binary: command line, logging, and the exit codes operators
//! script against (0 clean stop, 2 bad config or list, 1 anything else).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kuzet::config::{Config, Mode};
use kuzet::server::{self, StartError, StartOptions};
use kuzet_rules::ListId;

/// kuzet: anti-fraud call interception on the SIP signalling path.
///
/// kuzet scores every INVITE against fraud number lists and answers in
/// microseconds: in redirect mode with 302 (continue) or 603 (block), in
/// proxy mode by forwarding or refusing the call. It fails open: if it
/// cannot score a call, the call goes through and a counter rises.
#[derive(Parser, Debug)]
#[command(name = "kuzet", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the engine. With no options: redirect mode on 127.0.0.1:5060
    /// with the sample lists from deploy/lists compiled in.
    Run(RunArgs),
    /// Behaviour rule files (see deploy/rules/default.toml): check them
    /// offline, or validate, stage and put them in force on a running
    /// kuzet whose rules are published.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Published number lists on a running kuzet: push versions, put them
    /// in force or roll them back, see versions, diffs and where a number
    /// stands. E.g. `kuzet lists push blocklist.txt --list blocklist`.
    #[command(subcommand)]
    Lists(kuzet::publish_cli::ListsCommand),
    /// Query intercepted calls on a running kuzet (needs an investigator
    /// or admin token). E.g. `kuzet calls --number "8 701 123 45 67"
    /// --since 24h`, or `kuzet calls --verdict-id ID` for one call in full.
    Calls(kuzet::client::CallsArgs),
    /// Incidents on a running kuzet: `list`, or `show ID` with its calls.
    #[command(subcommand)]
    Incidents(kuzet::client::IncidentsCommand),
    /// Calls per decision and per rule over time (rule-author, investigator
    /// or admin).
    Counts(kuzet::client::CountsArgs),
    /// The audit log of investigators' queries (admin).
    Audit(kuzet::client::AuditArgs),
    /// Make control API tokens: `new` prints a token and its config entry.
    #[command(subcommand)]
    Token(kuzet::client::TokenCommand),
    /// The National Bank Anti-Fraud Centre's cases: `list [--due]`,
    /// `show ID`, `decide ID --confirmed|--not-confirmed --bss-ref REF`.
    #[command(subcommand)]
    Cases(kuzet::cases_cli::CasesCommand),
    /// The nodes sharing their behaviour counts through Redis
    /// ([cluster]): each one's lists-and-rules version, how far behind the
    /// others' counts it is, and its health.
    Nodes(kuzet::nodes_cli::NodesArgs),
    /// Early warnings from the call journal: surging foreign ranges and
    /// trunks, slow SIM boxes under every threshold, groups of callers
    /// with one timing; each with its figures and a suggested list line
    /// or rule to backtest.
    Trends(kuzet::trends_cli::TrendsArgs),
}

#[derive(Subcommand, Debug)]
enum RulesCommand {
    /// Validate a rule file offline: exit 0 and a summary when it is good,
    /// exit 2 with file:line:col and the reason when it is not. Nothing
    /// running is touched.
    Check {
        /// The rule file (TOML).
        file: PathBuf,
        /// Config whose numbering plan normalizes the file's prefixes
        /// [default: the embedded config].
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Published rules on a running kuzet.
    #[command(flatten)]
    Publish(kuzet::publish_cli::RulesCommand),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// TOML config file; every key is documented in deploy/kuzet.toml.
    /// Relative list paths in it are resolved from its folder.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address for SIP over UDP and TCP [default: 127.0.0.1:5060].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// redirect: answer 302/603 per INVITE; proxy: forward statelessly.
    #[arg(long, value_enum)]
    mode: Option<CliMode>,
    /// Where proxy mode forwards requests (required with --mode proxy).
    #[arg(long, value_name = "ADDR")]
    next_hop: Option<SocketAddr>,
    /// Blocklist file (repeatable); replaces the config's blocklists.
    #[arg(long, value_name = "FILE")]
    blocklist: Vec<PathBuf>,
    /// Allowlist file (repeatable); its numbers are never blocked.
    #[arg(long, value_name = "FILE")]
    allowlist: Vec<PathBuf>,
    /// Flaglist file (repeatable); calls pass with a verdict header.
    #[arg(long, value_name = "FILE")]
    flaglist: Vec<PathBuf>,
    /// UDP worker threads [default: one per core].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Data directory for the intercepted-call log [default: [store] dir
    /// in the config, else ./kuzet-data]. Created if missing; an unwritable
    /// one is an error (exit 2).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Address of the control API (investigators' gRPC, health,
    /// reflection) [default: [control] listen, else 127.0.0.1:50051].
    #[arg(long, value_name = "ADDR")]
    control: Option<SocketAddr>,
    /// Do not serve the control API.
    #[arg(long)]
    no_control: bool,
    /// Address of /metrics, /healthz and /readyz over HTTP
    /// [default: [admin] listen, else 127.0.0.1:9860].
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Do not serve /metrics and the health checks.
    #[arg(long)]
    no_admin: bool,
    /// Do not record verdicts (they are still logged).
    #[arg(long)]
    no_store: bool,
    /// This node's name in records, verdict ids and the cluster's node
    /// list [default: [store] node_name, else the host name]. Nodes that
    /// share Redis or a store need names of their own (several on one
    /// host, say).
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// Log lines as text (for people) or JSON, one object a line (for log
    /// shippers: Loki, Elasticsearch, journald's JSON export).
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        default_value = "text",
        env = "KUZET_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Log filter, in RUST_LOG syntax (e.g. "info", "warn,kuzet_control=debug")
    /// [default: $RUST_LOG, else "info"]. A filter that does not parse is
    /// an error (exit 2).
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CliMode {
    Redirect,
    Proxy,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Rules(RulesCommand::Check { file, config }) => {
            rules_check(&file, config.as_deref())
        }
        Command::Calls(a) => kuzet::client::calls(a),
        Command::Incidents(c) => kuzet::client::incidents(c),
        Command::Counts(a) => kuzet::client::counts(a),
        Command::Audit(a) => kuzet::client::audit(a),
        Command::Token(c) => kuzet::client::token(c),
        Command::Lists(c) => kuzet::publish_cli::lists(c),
        Command::Cases(c) => kuzet::cases_cli::cases(c),
        Command::Nodes(a) => kuzet::nodes_cli::nodes(a),
        Command::Trends(a) => kuzet::trends_cli::trends(a),
        Command::Rules(RulesCommand::Publish(c)) => kuzet::publish_cli::rules(c, rules_check),
    }
}

fn rules_check(file: &std::path::Path, config: Option<&std::path::Path>) -> ExitCode {
    use kuzet_rules::ruleset::{Kind, Mode, RuleSet};

    let checked = (|| -> Result<String, String> {
        let cfg = match config {
            Some(p) => Config::from_file(p).map_err(|e| e.to_string())?,
            None => Config::embedded(),
        };
        let plan = cfg.plan().map_err(|e| e.to_string())?;
        let policy = cfg.sources().policy;
        let text = kuzet_control::files::read_text(file, kuzet_control::files::MAX_RULE_FILE)
            .map_err(|e| e.to_string())?;
        let set = RuleSet::from_toml_str(&text, &file.display().to_string(), &plan, &policy)
            .map_err(|e| e.to_string())?;
        let from_file: Vec<_> = set.rules.iter().filter(|r| !r.builtin).collect();
        let shadow = from_file.iter().filter(|r| r.mode == Mode::Shadow).count();
        let mut out = format!(
            "{}: ok, {} rules from the file ({} enforced, {shadow} shadow)",
            file.display(),
            from_file.len(),
            from_file.len() - shadow,
        );
        let builtin: Vec<String> = set
            .rules
            .iter()
            .filter(|r| r.builtin)
            .map(|r| match r.kind {
                Kind::List {
                    list: ListId::Allow,
                    ..
                } => "allowlist (exempts)".to_string(),
                _ => format!("{} (score {})", r.id, r.score),
            })
            .collect();
        out += &format!(
            "\n  built-in list rules: {} [config [verdict] and [lists] match]",
            builtin.join(", ")
        );
        for o in &set.overrides {
            out += &format!(
                "\n  override: rule {:?} replaces the built-in {} rule: score {} instead of {} (config [verdict])",
                o.by,
                o.list.as_str(),
                o.score,
                o.builtin_score
            );
        }
        let t = &set.thresholds;
        out += &format!(
            "\n  thresholds: flag {}{}, block {}, cap {}",
            t.flag,
            t.redirect
                .map_or(String::new(), |r| format!(", redirect {r}")),
            t.block,
            t.cap
        );
        Ok(out)
    })();
    match checked {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kuzet: {e}");
            ExitCode::from(2)
        }
    }
}

fn build_config(args: &RunArgs) -> Result<Config, String> {
    let mut cfg = match &args.config {
        Some(p) => Config::from_file(p).map_err(|e| e.to_string())?,
        None => Config::embedded(),
    };
    if let Some(l) = args.listen {
        cfg.server.listen = l;
    }
    if let Some(m) = args.mode {
        cfg.server.mode = match m {
            CliMode::Redirect => Mode::Redirect,
            CliMode::Proxy => Mode::Proxy,
        };
    }
    if let Some(n) = args.next_hop {
        if cfg.server.mode != Mode::Proxy {
            return Err(
                "--next-hop only applies in proxy mode: add --mode proxy (or set server.mode = \"proxy\")"
                    .into(),
            );
        }
        cfg.proxy.next_hop = Some(n);
    }
    if let Some(w) = args.workers {
        cfg.server.udp_workers = w;
    }
    if let Some(d) = &args.data {
        // Relative to the working directory, like any command-line path.
        let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
        cfg.store.dir = Some(cwd.join(d));
    }
    if args.no_store {
        cfg.store.enabled = false;
    }
    if let Some(n) = &args.node {
        let ok = !n.is_empty()
            && n.len() <= 64
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            return Err(format!(
                "--node {n:?}: 1 to 64 letters, digits, '-', '_' or '.'"
            ));
        }
        cfg.store.node_name = Some(n.clone());
    }
    if let Some(a) = args.control {
        cfg.control.listen = a;
    }
    if args.no_control {
        cfg.control.enabled = false;
    }
    if let Some(a) = args.admin {
        cfg.admin.listen = a;
    }
    if args.no_admin {
        cfg.admin.enabled = false;
    }
    let any_cli_list =
        !(args.blocklist.is_empty() && args.allowlist.is_empty() && args.flaglist.is_empty());
    if any_cli_list {
        // Command-line lists are relative to the working directory.
        let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
        let abs = |v: &Vec<PathBuf>| {
            v.iter()
                .map(|p| kuzet::config::ListEntry::path(cwd.join(p)))
                .collect::<Vec<_>>()
        };
        if !args.blocklist.is_empty() {
            cfg.lists.files[ListId::Block] = abs(&args.blocklist);
        }
        if !args.allowlist.is_empty() {
            cfg.lists.files[ListId::Allow] = abs(&args.allowlist);
        }
        if !args.flaglist.is_empty() {
            cfg.lists.files[ListId::Flag] = abs(&args.flaglist);
        }
    }
    cfg.embedded_lists = args.config.is_none() && cfg.lists.files().is_empty();
    cfg.embedded_rules = args.config.is_none() && cfg.rules.file.is_none();
    let name = args
        .config
        .as_ref()
        .map_or_else(|| "command line".to_string(), |p| p.display().to_string());
    cfg.check(&name).map_err(|e| e.to_string())?;
    Ok(cfg)
}

fn run(args: RunArgs) -> ExitCode {
    // Signals first: a SIGTERM that arrives while lists load (seconds for
    // a big list) must still stop kuzet cleanly, with its counters, and a
    // SIGHUP then must not kill it. Tokio keeps a handler installed once
    // registered, so these streams cover the whole life of the process.
    let Some(rt) = kuzet_control::plane::small_runtime("signal") else {
        return ExitCode::from(1);
    };
    #[cfg(unix)]
    let (mut term, mut int, _hup) = {
        use tokio::signal::unix::{signal, SignalKind};
        let _guard = rt.enter();
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::hangup()).ok(),
        )
    };
    let (filter_text, from) = match &args.log {
        Some(f) => (f.clone(), "--log"),
        None => match std::env::var("RUST_LOG") {
            Ok(f) if !f.trim().is_empty() => (f, "RUST_LOG"),
            _ => ("info".to_string(), "the default"),
        },
    };
    let filter = match tracing_subscriber::EnvFilter::builder().parse(&filter_text) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kuzet: bad log filter {filter_text:?} from {from}: {e}");
            return ExitCode::from(2);
        }
    };
    // Logs go to stderr; stdout carries only the shutdown summary.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    if args.log_format == LogFormat::Json {
        // One JSON object a line: timestamp, level, message and every
        // field at the top level, for a log shipper.
        logs.json().flatten_event(true).init();
    } else {
        // Plain text, one event a line: every control character in a line
        // (a Call-ID's escape sequence, a peer's folded error text) is
        // escaped, so no value can forge a line or drive the terminal.
        // That rules out colour codes too.
        logs.with_ansi(false)
            .with_writer(|| kuzet_control::safe::SafeLines(std::io::stderr()))
            .init();
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %args
            .config
            .as_deref()
            .map_or_else(|| "embedded defaults".into(), |p| p.display().to_string()),
        "kuzet starting"
    );
    let cfg = match build_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kuzet: config error: {e}");
            return ExitCode::from(2);
        }
    };
    let running = match server::start(
        cfg,
        StartOptions {
            handle_sighup: true,
        },
    ) {
        Ok(r) => r,
        Err(StartError::Lists(e)) => {
            eprintln!("kuzet: list error: {e}");
            return ExitCode::from(2);
        }
        Err(StartError::Store(e)) => {
            eprintln!("kuzet: store error: {e}");
            return ExitCode::from(2);
        }
        Err(StartError::Other(e)) => {
            eprintln!("kuzet: {e:#}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        #[cfg(unix)]
        {
            use kuzet_control::plane::signal_or_never;
            tokio::select! {
                _ = signal_or_never(int.as_mut()) => {}
                _ = signal_or_never(term.as_mut()) => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    });
    let metrics = running.metrics.clone();
    running.stop();
    // Printed, not logged: the shutdown summary is for the operator's terminal.
    println!("kuzet stopped. {}", metrics.counters_line());
    println!("{}", metrics.latency_line());
    ExitCode::SUCCESS
}
