//! `kuzet-sim`: generate labelled fraud traffic, drive it at a SIP server,
//! report what was caught; or stand in as the null responder.

#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kuzet_sim::driver::{self, Options, Pace, Proto};
use kuzet_sim::scenario::Scenario;
use kuzet_sim::traffic::Traffic;
use kuzet_sim::{export, flood, null, report};

#[derive(Parser)]
#[command(
    name = "kuzet-sim",
    version,
    about = "Labelled fraud traffic, a SIP load driver and a null responder for kuzet.",
    long_about = "Labelled fraud traffic, a SIP load driver and a null responder for kuzet.\n\n\
        A scenario file (see sim/scenarios/README.md) describes subscribers, legitimate \
        callers and fraud campaigns. `gen` writes the list files and engine config the \
        traffic assumes; `run` sends the traffic to a SIP server and reports load figures \
        and detection quality; `null` answers every INVITE with a canned 302, the \
        reference any server is measured against; `register` and `nb-feed` stand in for \
        the pre-trial register and the National Bank's Anti-Fraud Centre.\n\n\
        Typical use:\n  \
        kuzet-sim gen sim/scenarios/small.toml --out /tmp/sc\n  \
        kuzet run --config /tmp/sc/kuzet.toml --listen 127.0.0.1:5060 &\n  \
        kuzet-sim run sim/scenarios/small.toml --target 127.0.0.1:5060 --rate 2000"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the list files, kuzet.toml and Kamailio tables a scenario assumes.
    Gen {
        /// Scenario file (TOML).
        scenario: PathBuf,
        /// Folder to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Also write the traffic as SIPp CSV + scenario XML into this folder.
        #[arg(long, value_name = "DIR")]
        export_sipp: Option<PathBuf>,
    },
    /// Send a scenario's traffic to a SIP server and report.
    Run {
        /// Scenario file (TOML).
        scenario: PathBuf,
        /// SIP server to call, e.g. 127.0.0.1:5060.
        #[arg(long)]
        target: SocketAddr,
        /// udp or tcp.
        #[arg(long, default_value = "udp", value_parser = ["udp", "tcp"])]
        transport: String,
        /// Open loop: this many calls per second on a fixed schedule
        /// (latency counts from the scheduled time). Default: the
        /// scenario's own Poisson times.
        #[arg(long, conflicts_with = "max")]
        rate: Option<f64>,
        /// Saturate: keep --window calls in flight, as fast as answers return.
        #[arg(long)]
        max: bool,
        /// Calls in flight with --max.
        #[arg(long, default_value_t = 1000)]
        window: usize,
        /// Calls to make (the traffic repeats if shorter). Default: all of it once.
        #[arg(long)]
        calls: Option<usize>,
        /// RFC 3261 T1, the first retransmission interval, in ms.
        #[arg(long, default_value_t = 500)]
        t1_ms: u64,
        /// A call with no final answer after this long is a timeout (default 64*T1).
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Also write the report as JSON here.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Write the engine files (lists, kuzet.toml) here before running.
        #[arg(long, value_name = "DIR")]
        files: Option<PathBuf>,
        /// Also write the traffic as SIPp CSV + scenario XML into this folder.
        #[arg(long, value_name = "DIR")]
        export_sipp: Option<PathBuf>,
        /// Play the switch in front of a redirect server: report each let-
        /// through call's outcome (cancelled after N ms, answered for N ms)
        /// to kuzet's outcome API, so outcome rules (Wangiri, short calls) see them.
        #[arg(long)]
        report_outcomes: bool,
        /// The host of each call's Request-URI: the far end a proxy in front
        /// of kuzet sends calls on to (`kuzet-sim cluster` prints it)
        /// [default: --target].
        #[arg(long, value_name = "ADDR")]
        callee_host: Option<SocketAddr>,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Offer INVITEs open loop at fixed rates, phase after phase, and print
    /// per-second offered and answered rates and latency (by send time):
    /// how an overload and the recovery from it look to the callers.
    Flood {
        /// SIP server to flood, e.g. 127.0.0.1:5060.
        #[arg(long)]
        target: SocketAddr,
        /// A phase, RATE:SECONDS (repeatable, in order), e.g.
        /// --phase 20000:5 --phase 300000:20 --phase 20000:5.
        #[arg(long = "phase", value_name = "RATE:SECS", required = true)]
        phases: Vec<String>,
        /// A-numbers, one a line (a list file works; `#` comments and
        /// `,reason` are skipped) [default: 100,000 subscribers +77010000000...].
        #[arg(long, value_name = "FILE")]
        callers: Option<PathBuf>,
        /// Report buckets this long, in ms.
        #[arg(long, default_value_t = 1000)]
        bucket_ms: u64,
    },
    /// The first-run tour: a dozen calls to a kuzet on its embedded
    /// defaults (sample lists, default rules), each printed with kuzet's
    /// answer and its reason. Then look them up: `kuzet calls --since 5m`.
    Tour {
        /// The kuzet to call.
        #[arg(long, default_value = "127.0.0.1:5060")]
        target: SocketAddr,
    },
    /// Run the cluster of deploy/cluster/ on this host until interrupted:
    /// a redis-server and a PostgreSQL of its own (Debian's packages),
    /// kuzet nodes sharing them, and Kamailio in front with
    /// deploy/kamailio/router.cfg spreading calls over the nodes. Drive it
    /// with `kuzet-sim run SCENARIO --target ROUTER`; kill a node and the
    /// router's OPTIONS probes take it out.
    #[command(verbatim_doc_comment)]
    Cluster {
        /// Folder for the nodes' data, logs and configs (created).
        #[arg(long, default_value = "kuzet-cluster")]
        dir: PathBuf,
        /// How many kuzet nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Where the router takes SIP (UDP).
        #[arg(long, default_value = "127.0.0.1:5060")]
        sip: SocketAddr,
        /// The kuzet binary [default: the one beside kuzet-sim, else on the PATH].
        #[arg(long)]
        kuzet: Option<PathBuf>,
        /// The nodes' config [default: deploy/cluster/kuzet.toml, compiled in];
        /// its store and Redis URLs are replaced by this cluster's.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A SQLite store per node instead of one PostgreSQL for all.
        #[arg(long)]
        store_per_node: bool,
        /// Give the nodes this scenario's lists and trunks (`kuzet-sim gen`),
        /// so `kuzet-sim run` of the same scenario is judged against them.
        #[arg(long, value_name = "FILE")]
        scenario: Option<PathBuf>,
    },
    /// Send OPTIONS to a SIP server until it answers 200 (exit 0) or the
    /// time runs out (exit 2). Scripts use it to wait for a server to start.
    Ping {
        /// SIP server to ask, e.g. 127.0.0.1:5060.
        #[arg(long)]
        target: SocketAddr,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 20)]
        timeout_s: u64,
    },
    /// Answer every INVITE with a canned 302 (and OPTIONS with 200), as fast
    /// as possible, until interrupted.
    Null {
        /// UDP address to answer on.
        #[arg(long, default_value = "127.0.0.1:5090")]
        listen: SocketAddr,
        /// Responder threads, each with its own SO_REUSEPORT socket.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Stand in for the pre-trial investigation register: serve
    /// kuzet.register.v1 over gRPC, check and dedupe reports by
    /// idempotency key, and keep what was accepted in a JSON-lines file
    /// (replayed on start, so a restart keeps every case).
    Register {
        /// gRPC address to serve on (port 0: any; the bound address is
        /// printed).
        #[arg(long, default_value = "127.0.0.1:50061")]
        listen: SocketAddr,
        /// The file of accepted reports.
        #[arg(long, default_value = "register.jsonl")]
        file: PathBuf,
        /// accept, refuse (every report invalid), fail (UNAVAILABLE),
        /// stall (hold each call for --stall-ms, then accept), oversize
        /// (accept, answering a 3.5 MB case id) or hostile (refuse with an
        /// error text of terminal escapes and forged lines).
        #[arg(long, value_enum, default_value = "accept")]
        mode: kuzet_sim::register::Mode,
        /// How long stall mode holds each call.
        #[arg(long, default_value_t = 60_000)]
        stall_ms: u64,
        /// Serve TLS with this certificate chain (PEM); needs --tls-key.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Stand in for the National Bank's Anti-Fraud Centre: signed feed and alerts, reports
    ///
    /// Serves docs/nb-feed.md over HTTP on --listen until interrupted, and prints
    /// on stdout a TOML snippet for kuzet's config: [nbank] url and the Centre's
    /// keys, derived from --seed (the same seed, the same keys). With --tls-cert
    /// and --tls-key it serves HTTPS (the url is https://; kuzet's ca_file is the
    /// CA that signed the certificate, whose names must include the address
    /// kuzet dials); with --client-ca too, only to clients whose certificate that
    /// CA signed (mTLS: kuzet's client_cert_file and client_key_file).
    ///   GET  /v1/batches?after=N   the next feed batch (200, signed) or 204
    ///   GET  /v1/alerts?after=N    the next alerts batch (its own sequence) or 204
    ///   POST /v1/reports           one report with an Idempotency-Key: 201 taken,
    ///                              200 taken before, 409 key reused for another
    ///                              report, 400 no key, 422 malformed (the reason)
    ///
    /// The control API, on --control (loopback only), drives it:
    ///   POST /control/publish          body: entry JSON lines; answers the batch's seq
    ///   POST /control/alert            body: alert JSON lines; answers the seq
    ///   POST /control/tamper-next      the next batch answered has a byte changed
    ///                                  after signing
    ///   POST /control/replay-next      the next answer to after=N (N >= 1) is batch N
    ///                                  again, one already applied
    ///   POST /control/skip-next        the next answer to after=N for which batch N+2
    ///                                  exists is N+2 (a gap)
    ///                                  (these three: ?stream=alerts for the alerts)
    ///   POST /control/stall?ms=N       every request waits N ms first (0: none)
    ///   POST /control/rotate           a new key (k2, k3...) signs what is published
    ///                                  next; answers its id (fetch the config again)
    ///   POST /control/sign-with?key=ID sign from now with that key: an older one, or
    ///                                  an id never rotated to (a key kuzet lacks)
    ///   POST /control/fail-reports?status=N  answer every report N, taking none
    ///                                  (503: down; 422: refused); no status: normal
    ///   POST /control/stop             the feed dies: connections refused, open ones
    ///                                  closed
    ///   POST /control/start            it comes back on the same address
    ///   GET  /control/reports          the reports taken, with deliveries (JSON)
    ///   GET  /control/served           the GETs seen: path and after (JSON)
    ///   GET  /control/config           the kuzet config snippet, current keys
    ///
    /// Example:
    ///   kuzet-sim nb-feed --seed demo --entries entries.jsonl > nbank.toml &
    ///   curl -s -XPOST --data-binary @more.jsonl 127.0.0.1:8471/control/publish
    ///   curl -s -XPOST 127.0.0.1:8471/control/tamper-next
    ///   kuzet-sim nb-feed --tls-cert centre.pem --tls-key centre.key \
    ///       --client-ca operators-ca.pem > nbank.toml &
    #[command(verbatim_doc_comment)]
    NbFeed {
        /// HTTP address to serve the feed on (port 0: any; the bound address
        /// is in the config snippet).
        #[arg(long, default_value = "127.0.0.1:8470")]
        listen: SocketAddr,
        /// Loopback address of the control API.
        #[arg(long, default_value = "127.0.0.1:8471")]
        control: SocketAddr,
        /// Seed of the signing keys: k1 is ed25519 of SHA-256("kuzet-sim
        /// nb-feed SEED k1"), valid from 2020-01-01; k2... likewise.
        #[arg(long, default_value = "demo")]
        seed: String,
        /// Publish these entries as batch 1: JSON lines in the feed's entry
        /// format (docs/nb-feed.md).
        #[arg(long, value_name = "FILE")]
        entries: Option<PathBuf>,
        /// Append one JSON line per report answered: time, key, status, and
        /// the report when it was taken.
        #[arg(long, value_name = "FILE")]
        reports_log: Option<PathBuf>,
        /// Serve HTTPS with this certificate chain (PEM, the Centre's own
        /// certificate first).
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require a client certificate signed by this CA (PEM): mTLS, a
        /// client without one fails the handshake. Needs --tls-cert.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        client_ca: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kuzet-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Traffic> {
    let sc = Scenario::from_file(path)?;
    Traffic::generate(&sc).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn real_main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Gen {
            scenario,
            out,
            export_sipp,
        } => {
            let t = load(&scenario)?;
            let written = t.write_engine_files(&out)?;
            if let Some(dir) = export_sipp {
                export::write_sipp(&t, &dir)?;
                eprintln!("SIPp export in {}", dir.display());
            }
            eprintln!(
                "{} calls; wrote {} files into {}",
                t.calls.len(),
                written.len(),
                out.display()
            );
            Ok(())
        }
        Cmd::Run {
            scenario,
            target,
            transport,
            rate,
            max,
            window,
            calls,
            t1_ms,
            timeout_ms,
            json,
            files,
            export_sipp,
            report_outcomes,
            callee_host,
            quiet,
        } => {
            let t = load(&scenario)?;
            if let Some(dir) = files {
                t.write_engine_files(&dir)?;
            }
            if let Some(dir) = export_sipp {
                export::write_sipp(&t, &dir)?;
            }
            let mut o = Options::new(target, calls.unwrap_or(t.calls.len()));
            o.proto = if transport == "tcp" {
                Proto::Tcp
            } else {
                Proto::Udp
            };
            o.pace = match (rate, max) {
                (_, true) => Pace::Max { window },
                (Some(r), _) if r > 0.0 => Pace::Rate(r),
                (Some(r), _) => anyhow::bail!("--rate must be above 0 (got {r})"),
                (None, false) => Pace::Scenario,
            };
            o.t1 = Duration::from_millis(t1_ms.max(1));
            o.timeout = Duration::from_millis(timeout_ms.unwrap_or(64 * t1_ms.max(1)));
            o.progress = !quiet;
            o.report_outcomes = report_outcomes;
            o.callee_host = callee_host;
            let (results, stats) = driver::drive(&t, o)?;
            let rep = report::build(&t, &results, &stats);
            print!("{}", rep.table());
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&rep)? + "\n")
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            }
            Ok(())
        }
        Cmd::Flood {
            target,
            phases,
            callers,
            bucket_ms,
        } => {
            let phases = phases
                .iter()
                .map(|p| parse_phase(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let callers = match callers {
                Some(f) => {
                    let text = std::fs::read_to_string(&f)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
                    let v: Vec<String> = text
                        .lines()
                        .map(|l| l.split(['#', ',']).next().unwrap_or("").trim())
                        .filter(|l| !l.is_empty())
                        .map(str::to_string)
                        .collect();
                    anyhow::ensure!(!v.is_empty(), "{}: no numbers", f.display());
                    v
                }
                None => (0..100_000).map(|i| format!("+7701{i:07}")).collect(),
            };
            let opts = flood::FloodOptions {
                target,
                phases,
                bucket: Duration::from_millis(bucket_ms.max(1)),
                callers,
                callees: (0..1000).map(|i| format!("+7702{i:07}")).collect(),
                grace: Duration::from_secs(2),
            };
            let r = flood::flood(&opts)?;
            println!(
                "{:>8} {:>10} {:>10} {:>10} {:>10}",
                "t_s", "offered/s", "answered/s", "p50_us", "p99_us"
            );
            let secs = opts.bucket.as_secs_f64();
            for b in &r.buckets {
                if b.offered == 0 {
                    continue;
                }
                let q = |x: f64| {
                    b.quantile_us(x)
                        .map_or("lost".to_string(), |v| v.to_string())
                };
                println!(
                    "{:>8.1} {:>10.0} {:>10.0} {:>10} {:>10}",
                    b.start.as_secs_f64(),
                    b.offered as f64 / secs,
                    b.answered as f64 / secs,
                    q(0.5),
                    q(0.99)
                );
            }
            println!(
                "sent {}  answered {}  codes {:?}  flood lag at most {:?}",
                r.sent, r.answered, r.codes, r.max_lag
            );
            Ok(())
        }
        Cmd::Tour { target } => {
            let answers = kuzet_sim::tour::run(target, true)?;
            if answers.iter().all(|a| a.code == 0) {
                anyhow::bail!("{target}: no answers; is kuzet running there (`kuzet run`)?");
            }
            let blocked = answers.iter().filter(|a| a.code >= 400).count();
            println!(
                "\n{} calls, {blocked} blocked. Each verdict is on record:\n  kuzet calls --since 5m\n  kuzet calls --verdict-id ID   (the id in a 603's Reason)\nand counted: curl -s 127.0.0.1:9860/metrics | grep verdict_",
                answers.len()
            );
            Ok(())
        }
        Cmd::Cluster {
            dir,
            nodes,
            sip,
            kuzet,
            config,
            store_per_node,
            scenario,
        } => {
            let mut opts = kuzet_sim::cluster::Options::new(&dir);
            opts.nodes = nodes;
            opts.router = sip;
            opts.shared_store = !store_per_node;
            if let Some(k) = kuzet {
                opts.kuzet = k;
            }
            if let Some(c) = config {
                opts.config = std::fs::read_to_string(&c)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", c.display()))?;
            }
            if let Some(sc) = &scenario {
                let t = load(sc)?;
                let engine = dir.join("engine");
                t.write_engine_files(&engine)?;
                opts.config = t.kuzet_toml();
                opts.config_dir = Some(engine);
            }
            eprintln!(
                "starting {nodes} nodes, Redis, the store and the router in {} ...",
                dir.display()
            );
            let cluster = kuzet_sim::cluster::Cluster::up(&opts).map_err(|e| anyhow::anyhow!(e))?;
            print!("{}", cluster.summary());
            println!(
                "\ndrive it:      kuzet-sim run sim/scenarios/small.toml --target {} --callee-host {}\nask any node:  kuzet calls --since 5m --data {}\nthe nodes:     kuzet nodes --data {}\nCtrl-C stops everything.",
                cluster.router,
                cluster.far_end,
                cluster.nodes[0].data.display(),
                cluster.nodes[0].data.display()
            );
            let _ = std::io::stdout().flush();
            wait_for_signal();
            drop(cluster);
            Ok(())
        }
        Cmd::Ping { target, timeout_s } => {
            if kuzet_sim::servers::sip_ping(target, Duration::from_secs(timeout_s))? {
                Ok(())
            } else {
                anyhow::bail!("{target}: no 200 to OPTIONS within {timeout_s} s")
            }
        }
        Cmd::Register {
            listen,
            file,
            mode,
            stall_ms,
            tls_cert,
            tls_key,
        } => {
            let tls = match (tls_cert, tls_key) {
                (Some(c), Some(k)) => Some((
                    std::fs::read(&c).map_err(|e| anyhow::anyhow!("{}: {e}", c.display()))?,
                    std::fs::read(&k).map_err(|e| anyhow::anyhow!("{}: {e}", k.display()))?,
                )),
                _ => None,
            };
            let reg = kuzet_sim::register::Register::open(
                file.clone(),
                mode,
                Duration::from_millis(stall_ms),
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(kuzet_sim::register::serve(listen, reg, tls))?;
            Ok(())
        }
        Cmd::NbFeed {
            listen,
            control,
            seed,
            entries,
            reports_log,
            tls_cert,
            tls_key,
            client_ca,
        } => {
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(NbTls {
                    cert,
                    key,
                    client_ca,
                }),
                _ => None,
            };
            nb_feed(listen, control, &seed, entries, reports_log, tls)
        }
        Cmd::Null { listen, threads } => {
            let n = null::start(listen, threads)?;
            eprintln!(
                "null responder on {} ({} threads); Ctrl-C stops it",
                n.addr,
                threads.max(1)
            );
            wait_for_signal();
            eprintln!("answered {} INVITEs", n.answered());
            n.stop();
            Ok(())
        }
    }
}

/// `nb-feed --tls-cert --tls-key [--client-ca]`: the files to serve
/// HTTPS with.
struct NbTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

impl NbTls {
    /// The files read, each error naming its flag and file.
    fn read(&self) -> anyhow::Result<kuzet_sim::nbfeed::TlsServer> {
        let read = |flag: &str, p: &Path| {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", p.display()))
        };
        Ok(kuzet_sim::nbfeed::TlsServer {
            cert_pem: read("--tls-cert", &self.cert)?,
            key_pem: read("--tls-key", &self.key)?,
            client_ca_pem: match &self.client_ca {
                Some(p) => Some(read("--client-ca", p)?),
                None => None,
            },
        })
    }
}

/// `nb-feed`: the stand-in Centre and its control API, until a signal.
fn nb_feed(
    listen: SocketAddr,
    control: SocketAddr,
    seed: &str,
    entries: Option<PathBuf>,
    reports_log: Option<PathBuf>,
    tls: Option<NbTls>,
) -> anyhow::Result<()> {
    use kuzet_sim::nbfeed::{self, FeedEntry, NbFeed};
    anyhow::ensure!(
        control.ip().is_loopback(),
        "--control {control}: the control API listens on a loopback address only"
    );
    let first = match &entries {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let e = nbfeed::parse_lines(&text, FeedEntry::from_json_line)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            Some(e)
        }
        None => None,
    };
    let tls = tls.as_ref().map(NbTls::read).transpose()?;
    let mtls = tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some());
    let feed = NbFeed::new(seed);
    if let Some(p) = &reports_log {
        feed.log_reports(p)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    let published = first.map(|e| (feed.publish(&e), e.len()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (addr, ctl) = rt.block_on(async {
        let addr = match &tls {
            None => feed.spawn(listen).await,
            Some(t) => feed.spawn_tls(listen, t.clone()).await,
        }
        .map_err(|e| match e.kind() {
            // What the PEM files make no TLS config of.
            std::io::ErrorKind::InvalidInput if tls.is_some() => {
                anyhow::anyhow!("--tls-cert/--tls-key/--client-ca: {e}")
            }
            _ => anyhow::anyhow!("--listen {listen}: {e}"),
        })?;
        let l = tokio::net::TcpListener::bind(control)
            .await
            .map_err(|e| anyhow::anyhow!("--control {control}: {e}"))?;
        let ctl = l.local_addr()?;
        tokio::spawn(nbfeed::serve_control(l, feed.clone(), addr, tls.clone()));
        anyhow::Ok((addr, ctl))
    })?;
    // stdout stays TOML: the snippet, then comments.
    print!(
        "{}",
        feed.kuzet_config(&nbfeed::base_url(addr, tls.is_some()))
    );
    if tls.is_some() {
        println!("# over https, [nbank] needs ca_file too: the CA that signed --tls-cert");
    }
    if mtls {
        println!(
            "# and client_cert_file and client_key_file: a certificate --client-ca signed, its key"
        );
    }
    println!("\n# nb-feed listening on {addr}; control API on http://{ctl}/control/");
    if let (Some((seq, n)), Some(p)) = (published, &entries) {
        println!("# published batch {seq} ({n} entries) from {}", p.display());
    }
    let _ = std::io::stdout().flush();
    wait_for_signal();
    feed.stop();
    eprintln!(
        "{} reports taken; {} pulls served",
        feed.reports().len(),
        feed.served().len()
    );
    Ok(())
}

/// `RATE:SECONDS` as a flood phase.
fn parse_phase(p: &str) -> anyhow::Result<flood::Phase> {
    let (r, d) = p
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("--phase {p:?}: expected RATE:SECONDS"))?;
    let rate: f64 = r
        .parse()
        .map_err(|_| anyhow::anyhow!("--phase {p:?}: bad rate"))?;
    let secs: f64 = d
        .parse()
        .map_err(|_| anyhow::anyhow!("--phase {p:?}: bad seconds"))?;
    anyhow::ensure!(
        rate > 0.0 && secs > 0.0,
        "--phase {p:?}: rate and seconds must be above 0"
    );
    Ok(flood::Phase {
        rate,
        duration: Duration::from_secs_f64(secs),
    })
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_signal() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    if let Ok(rt) = rt {
        rt.block_on(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
        });
    }
}
