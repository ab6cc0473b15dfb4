//! The walls between crates, read from `cargo metadata` on every test run.
//!
//! Three checks, each over every workspace crate that metadata lists (a
//! new crate is checked the day it joins, and one missing from the tables
//! below fails): every direct dependency of a crate (normal, dev and build,
//! optional ones included) is on that crate's allowlist in [`ALLOWED`], and
//! nothing on an allowlist has gone unused; the crates behind a wall
//! ([`WALLS`]: the scoring core, the SIP layer, the syscall layer, the data
//! plane, the simulator) reach no runtime, RPC, database or HTTP stack
//! they must not have, through any chain of normal dependencies; and
//! `unsafe` appears only in the crates of [`UNSAFE_ALLOWED`], each time
//! under a `// SAFETY:` comment, while every root of every other crate says
//! `#![forbid(unsafe_code)]`. The checkers are plain functions over text
//! and JSON, and the tests at the end feed them made-up metadata and
//! sources with each kind of fault, so a checker that stopped seeing one
//! would fail here rather than wave the workspace through.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

/// What one workspace crate may depend on directly, by kind of
/// dependency. A dependency not listed here fails
/// [`every_crate_depends_only_on_its_allowlist`]; so does a listed one the
/// crate no longer uses (an unused entry would let it come back unreviewed).
struct Allowed {
    krate: &'static str,
    /// What the crate is, and so what it may link.
    why: &'static str,
    normal: &'static [&'static str],
    dev: &'static [&'static str],
    build: &'static [&'static str],
}

/// The allowlist. Adding a dependency means adding it here, with its
/// reason beside it when it is more than plumbing, and to the table in
/// ARCHITECTURE.md ("Dependencies and why").
const ALLOWED: &[Allowed] = &[
    Allowed {
        krate: "kuzet-rules",
        why: "the pure scoring core: no I/O, no clock, no runtime",
        normal: &[
            "bloomfilter", // the filter in front of the exact lists
            "serde",
            "thiserror",
            "toml", // rule and plan files (text handed in, never a path read here)
        ],
        dev: &[],
        build: &[],
    },
    Allowed {
        krate: "kuzet-sip",
        why: "the SIP indexer: bytes in, ranges out, no I/O",
        normal: &["memchr", "thiserror"],
        dev: &[],
        build: &[],
    },
    Allowed {
        krate: "kuzet-net",
        why: "the syscall layer: libc and socket options, nothing else",
        normal: &[
            "libc",    // recvmmsg/sendmmsg/ppoll/mmap, which std does not expose
            "socket2", // SO_REUSEPORT and buffer sizes before bind
        ],
        dev: &[],
        build: &[],
    },
    Allowed {
        krate: "kuzet-dataplane",
        why: "the call path: no RPC, database or HTTP crate, ever",
        normal: &[
            "arc-swap",
            "dashmap", // the TCP connection registry, not behaviour state
            "hdrhistogram",
            "ipnet",
            "kuzet-net",
            "kuzet-rules",
            "kuzet-sip",
            "libc",
            "memchr",
            "serde",
            "siphasher", // public verdict ids
            "socket2",
            "subtle", // the outcome API's shared secret, compared in constant time
            "thiserror",
            "tokio", // the TCP transport's current-thread runtime; UDP workers use none
            "tracing",
        ],
        dev: &["tempfile"],
        build: &[],
    },
    Allowed {
        krate: "kuzet-control",
        why: "the control plane: reload, recorder, admin address, investigators' API, reporter",
        normal: &[
            "arc-swap",
            "axum",          // the admin address's routes
            "ed25519-dalek", // the National Bank feed's batch signatures
            "hdrhistogram",
            "humantime", // the feed's RFC 3339 times
            "hyper",     // the admin address's accept loop (header-read deadline)
            "hyper-util",
            "kuzet-api",
            "kuzet-dataplane",
            "kuzet-journal", // backtests and trends read the call journal
            "kuzet-net", // the idle scheduling class for building published lists
            "kuzet-rules",
            "kuzet-store",
            "libc",
            "redis", // shared counts (a stream of per-node deltas) and the leases, on one Redis or a Redis Cluster
            "reqwest", // the National Bank Centre's HTTPS client (feed, alerts, reports)
            "prometheus-client", // /metrics
            "prost",
            "serde",
            "serde_json",
            "sha2",
            "subtle",
            "thiserror",
            "tokio",
            "tokio-stream",
            "tonic", // the investigators' API and the register client
            "tonic-health",
            "tonic-reflection",
            "tower",
            "tracing",
        ],
        dev: &[
            "kuzet-sim", // real redis-server and PostgreSQL, and the stand-in Centre, for the leases' tests
            "tempfile",  // a Centre store shared by two nodes in the leases' tests
        ],
        build: &[],
    },
    Allowed {
        krate: "kuzet-store",
        why: "the store: its ports, and SQLite or PostgreSQL behind them, the only crate that speaks SQL",
        normal: &[
            "kuzet-net", // private_umask, effective_uid
            "libc",
            "postgres", // the shared store of a cluster (blocking, as the ports are)
            "tokio-postgres", // the engine under `postgres`: its SQLSTATE codes (pg::partitions)
            "rusqlite",
            "serde",
            "serde_json",
            "thiserror",
            "tracing",
        ],
        dev: &[
            "kuzet-sim", // real PostgreSQL servers of the tests' own (sim::servers)
            "tempfile",
        ],
        build: &[],
    },
    Allowed {
        krate: "kuzet-journal",
        why: "the call journal: Parquet files, the versions kept beside them, the backtest and trends",
        normal: &[
            "arrow-array",  // the journal's columns, built and read
            "arrow-schema", // its two schemas
            "humantime",    // report times
            "kuzet-dataplane", // the journal queue's entries
            "kuzet-net",    // the writer thread's nice value
            "kuzet-rules",  // replay: snapshots, rule sets, state
            "kuzet-store",  // the private data directory's checks
            "libc",         // O_NOFOLLOW
            "parquet",      // the file format DuckDB, Spark and pandas read
            "rustc-hash",   // replay and trends: sets of numbers hashed in one multiply
            "serde",
            "serde_json",
            "sha2",         // layers kept by content digest
            "thiserror",
            "tracing",
        ],
        dev: &[],
        build: &[],
    },
    Allowed {
        krate: "kuzet-api",
        why: "the .proto files and their generated code",
        normal: &["prost", "tonic", "tonic-prost"],
        dev: &[],
        build: &[
            "protox", // compiles .proto in pure Rust: no system protoc
            "tonic-prost-build",
        ],
    },
    Allowed {
        krate: "kuzet",
        why: "the binary: config, wiring and the CLI; composes the crates below",
        normal: &[
            "anyhow",
            "arc-swap",
            "clap",
            "humantime",
            "hyper-util",
            "indicatif", // `kuzet lists push`'s progress bar on a terminal
            "kuzet-api",
            "kuzet-control",
            "kuzet-dataplane",
            "kuzet-journal", // the journal's writer, and the reports the CLI prints
            "kuzet-net",
            "kuzet-rules",
            "kuzet-sip",
            "kuzet-store",
            "serde",
            "serde_json",
            "thiserror",
            "tokio",
            "toml",
            "tonic", // the CLI's client of the investigators' API
            "tower", // the connector to kuzet's Unix socket
            "tracing",
            "tracing-subscriber",
        ],
        dev: &[
            "kuzet-api",
            "kuzet-control",
            "kuzet-sim", // the load driver and the stand-in register
            "rusqlite",  // tests read the store's file back
            "serde_json",
            "socket2",
            "tokio-stream", // tests stream a push's chunks
            "tonic",
        ],
        build: &[],
    },
    Allowed {
        krate: "kuzet-sim",
        why: "traffic, load driver and mock peers: never the engine",
        normal: &[
            "anyhow",
            "axum", // the stand-in Centre's HTTP (nb-feed)
            "clap",
            "ed25519-dalek", // the stand-in Centre signs its batches
            "hdrhistogram",
            "humantime", // the stand-in Centre's RFC 3339 times
            "indicatif",
            "kuzet-api", // the stand-in register serves kuzet.register.v1
            "kuzet-net",
            "kuzet-rules",
            "kuzet-sip",
            "memchr",
            "prost",
            "rustls", // the stand-in Centre over HTTPS and mTLS (ring provider)
            "serde",
            "serde_json",
            "sha2",
            "socket2",
            "thiserror",
            "tokio",
            "tokio-rustls", // the stand-in Centre's TLS handshakes on tokio
            "tokio-stream",
            "toml",
            "tonic",
        ],
        dev: &[],
        build: &[],
    },
    Allowed {
        krate: "kuzet-benches",
        why: "criterion benchmarks, each beside a naive baseline",
        normal: &[
            "arc-swap", // journal_bench: the writer reads the snapshot in force
            "dashmap",  // the tracker the state table replaced, kept as the baseline
            "kuzet",
            "kuzet-control",
            "kuzet-dataplane",
            "kuzet-journal", // journal_bench: the writer and the backtest
            "kuzet-net",
            "kuzet-rules",
            "kuzet-sim", // nbfeed_bench: the stand-in Centre serves the feed
            "kuzet-sip",
            "kuzet-store",
            "tokio", // nbfeed_bench: the stand-in Centre's runtime
        ],
        dev: &[
            "criterion",
            "rsip", // the parse baseline
            "sha2", // `publish`: the publisher's layer digest, timed on its own
        ],
        build: &[],
    },
    Allowed {
        krate: "kuzet-fuzz",
        why: "fuzz targets over the parsers and loaders",
        normal: &[
            "ed25519-dalek", // the feed target's key
            "afl",           // optional: the AFL++ harness (feature `afl`)
            "arc-swap",
            "kuzet",
            "kuzet-control",
            "kuzet-dataplane",
            "kuzet-rules",
            "kuzet-sim", // the stand-in Centre's report check (nbreport target)
            "kuzet-sip",
            "serde_json", // the reports the nbreport target builds as kuzet does
        ],
        dev: &[],
        build: &[],
    },
];

/// Async runtimes and event loops.
const RUNTIME: &[&str] = &["tokio", "mio", "async-std", "smol", "async-io"];
/// RPC and its wire formats.
const RPC: &[&str] = &["tonic", "prost", "h2", "kuzet-api"];
/// Databases and shared-state stores.
const DATABASE: &[&str] = &[
    "rusqlite",
    "libsqlite3-sys",
    "redis",
    "tokio-postgres",
    "postgres",
    "sqlx",
    "diesel",
    "kuzet-store",
];
/// HTTP servers and clients.
const HTTP: &[&str] = &[
    "hyper",
    "axum",
    "reqwest",
    "ureq",
    "isahc",
    "surf",
    "actix-web",
];
/// The crates above the data plane.
const ABOVE_DATAPLANE: &[&str] = &["kuzet-dataplane", "kuzet-control", "kuzet"];

/// A crate and what must not be anywhere in its normal dependencies, direct
/// or through any chain: what ships with it, not what tests or builds use.
struct Wall {
    krate: &'static str,
    why: &'static str,
    forbidden: &'static [&'static [&'static str]],
}

const WALLS: &[Wall] = &[
    Wall {
        krate: "kuzet-rules",
        why: "the scoring core does no I/O and knows nothing of SIP or sockets",
        forbidden: &[
            RUNTIME,
            RPC,
            DATABASE,
            HTTP,
            ABOVE_DATAPLANE,
            &["kuzet-sip", "kuzet-net", "socket2", "dashmap"],
        ],
    },
    Wall {
        krate: "kuzet-sip",
        why: "the SIP layer does no I/O",
        forbidden: &[
            RUNTIME,
            RPC,
            DATABASE,
            HTTP,
            ABOVE_DATAPLANE,
            &["kuzet-net", "socket2"],
        ],
    },
    Wall {
        krate: "kuzet-net",
        why: "the syscall layer is libc and socket options only",
        forbidden: &[RUNTIME, RPC, DATABASE, HTTP, ABOVE_DATAPLANE],
    },
    Wall {
        krate: "kuzet-dataplane",
        why: "no RPC, database, HTTP or Parquet crate can reach a SIP worker",
        forbidden: &[
            RPC,
            DATABASE,
            HTTP,
            &["kuzet-control", "kuzet", "kuzet-journal", "parquet"],
        ],
    },
    Wall {
        krate: "kuzet-sim",
        why: "the simulator drives the engine from outside, never links it",
        forbidden: &[ABOVE_DATAPLANE, &["kuzet-store"]],
    },
];

/// Stacks that may enter Cargo.lock only as a direct dependency some
/// crate's allowlist names: a transitive path (a feature of a crate
/// already there) would bring them in unreviewed.
const REVIEWED_STACKS: &[&str] = &[
    "redis",
    "tokio-postgres",
    "postgres",
    "sqlx",
    "diesel",
    "reqwest",
    "ureq",
    "isahc",
    "surf",
    "actix-web",
];

/// The crates that may hold `unsafe`, and why.
const UNSAFE_ALLOWED: &[(&str, &str)] = &[(
    "kuzet-net",
    "the kernel interface: recvmmsg/sendmmsg, ppoll, mmap, socket options",
)];

// --- what cargo metadata says ------------------------------------------

/// A dependency kind, as the manifest states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Normal,
    Dev,
    Build,
}

impl Kind {
    fn from_json(v: &Value) -> Kind {
        match v.as_str() {
            Some("dev") => Kind::Dev,
            Some("build") => Kind::Build,
            _ => Kind::Normal,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Kind::Normal => "normal",
            Kind::Dev => "dev",
            Kind::Build => "build",
        }
    }
}

/// A workspace crate.
struct Member {
    name: String,
    id: String,
    /// The folder of its Cargo.toml.
    dir: PathBuf,
    /// Its declared dependencies (package names), by kind.
    deps: BTreeSet<(Kind, String)>,
    /// Each target's kind and root file.
    roots: Vec<(String, PathBuf)>,
}

/// What the checks need of `cargo metadata --format-version 1`.
struct Metadata {
    root: PathBuf,
    members: Vec<Member>,
    /// Package id to name, for every package in the resolved graph.
    names: BTreeMap<String, String>,
    /// Package id to the ids it depends on as a normal dependency.
    normal_edges: BTreeMap<String, Vec<String>>,
}

fn parse_metadata(v: &Value) -> Metadata {
    let packages = v["packages"].as_array().expect("metadata lists packages");
    let names: BTreeMap<String, String> = packages
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let ids: BTreeSet<&str> = v["workspace_members"]
        .as_array()
        .expect("metadata lists the workspace members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let members = packages
        .iter()
        .filter(|p| ids.contains(p["id"].as_str().unwrap()))
        .map(|p| Member {
            name: p["name"].as_str().unwrap().to_string(),
            id: p["id"].as_str().unwrap().to_string(),
            dir: Path::new(p["manifest_path"].as_str().unwrap())
                .parent()
                .unwrap()
                .to_path_buf(),
            deps: p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    (
                        Kind::from_json(&d["kind"]),
                        d["name"].as_str().unwrap().to_string(),
                    )
                })
                .collect(),
            roots: p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let kind = t["kind"][0].as_str().unwrap_or("?").to_string();
                    (kind, PathBuf::from(t["src_path"].as_str().unwrap()))
                })
                .collect(),
        })
        .collect();
    let normal_edges = v["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let to = n["deps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|k| Kind::from_json(&k["kind"]) == Kind::Normal)
                })
                .map(|d| d["pkg"].as_str().unwrap().to_string())
                .collect();
            (n["id"].as_str().unwrap().to_string(), to)
        })
        .collect();
    Metadata {
        root: PathBuf::from(v["workspace_root"].as_str().unwrap_or("/")),
        members,
        names,
        normal_edges,
    }
}

/// The workspace's metadata, as cargo gives it (no network: the lockfile
/// and the downloaded sources are enough).
fn workspace_metadata() -> Metadata {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata writes JSON");
    let m = parse_metadata(&v);
    assert!(
        m.members.iter().any(|c| c.name == "kuzet-dataplane") && m.members.len() >= 10,
        "cargo metadata lists the workspace"
    );
    m
}

// --- the checkers ---------------------------------------------------------

/// Every direct dependency outside its crate's allowlist, every allowlist
/// entry no longer used, and every crate with no allowlist, one message
/// each.
fn allowlist_violations(m: &Metadata, allowed: &[Allowed]) -> Vec<String> {
    let mut out = Vec::new();
    for c in &m.members {
        let Some(a) = allowed.iter().find(|a| a.krate == c.name) else {
            out.push(format!(
                "{} is a workspace crate with no entry in ALLOWED \
                 (engine/kuzet/tests/it/architecture.rs): add one saying what \
                 it is and listing what it may depend on",
                c.name
            ));
            continue;
        };
        for kind in [Kind::Normal, Kind::Dev, Kind::Build] {
            let list = match kind {
                Kind::Normal => a.normal,
                Kind::Dev => a.dev,
                Kind::Build => a.build,
            };
            let have: BTreeSet<&str> = c
                .deps
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, n)| n.as_str())
                .collect();
            for dep in have.iter().filter(|d| !list.contains(d)) {
                out.push(format!(
                    "{krate} ({why}) has a {k} dependency on `{dep}`, which its \
                     allowlist does not hold. If it belongs there, add \"{dep}\" \
                     to the {k} list of {krate}'s entry in ALLOWED \
                     (engine/kuzet/tests/it/architecture.rs) with a one-line \
                     reason, and to ARCHITECTURE.md's \"Dependencies and why\"",
                    krate = c.name,
                    why = a.why,
                    k = kind.as_str(),
                ));
            }
            for dep in list.iter().filter(|d| !have.contains(*d)) {
                out.push(format!(
                    "{}'s allowlist holds the {} dependency `{dep}`, which it no \
                     longer has: remove it from ALLOWED so it cannot come back \
                     unreviewed",
                    c.name,
                    kind.as_str()
                ));
            }
        }
    }
    for a in allowed {
        if !m.members.iter().any(|c| c.name == a.krate) {
            out.push(format!(
                "ALLOWED names {}, which is not a workspace crate: remove its entry",
                a.krate
            ));
        }
    }
    out
}

/// The shortest chain of normal dependencies from `from` to each package
/// it reaches, by package name (`a -> b -> c`).
fn reach(m: &Metadata, from: &str) -> BTreeMap<String, String> {
    let Some(start) = m.members.iter().find(|c| c.name == from) else {
        return BTreeMap::new();
    };
    let mut chain: BTreeMap<String, String> = BTreeMap::new();
    chain.insert(start.id.clone(), from.to_string());
    let mut queue = VecDeque::from([start.id.clone()]);
    while let Some(id) = queue.pop_front() {
        let here = chain[&id].clone();
        for next in m.normal_edges.get(&id).into_iter().flatten() {
            if !chain.contains_key(next) {
                let name = m.names.get(next).cloned().unwrap_or_else(|| next.clone());
                chain.insert(next.clone(), format!("{here} -> {name}"));
                queue.push_back(next.clone());
            }
        }
    }
    chain.remove(&start.id);
    chain
        .into_iter()
        .map(|(id, path)| (m.names.get(&id).cloned().unwrap_or(id), path))
        .collect()
}

/// Every forbidden crate a walled crate reaches, with the chain that
/// brings it in; and every crate behind a wall that is not in the
/// workspace (a renamed crate must not silently lose its wall).
fn wall_violations(m: &Metadata, walls: &[Wall]) -> Vec<String> {
    let mut out = Vec::new();
    for w in walls {
        if !m.members.iter().any(|c| c.name == w.krate) {
            out.push(format!(
                "WALLS names {}, which is not a workspace crate",
                w.krate
            ));
            continue;
        }
        let reached = reach(m, w.krate);
        for name in w.forbidden.iter().copied().flatten() {
            if let Some(path) = reached.get(*name) {
                out.push(format!("{} reaches `{name}` ({path}): {}", w.krate, w.why));
            }
        }
    }
    out
}

/// Every package in the resolved graph that is a stack needing review but
/// is no crate's allowlisted direct dependency.
fn unreviewed_stacks(m: &Metadata, allowed: &[Allowed], stacks: &[&str]) -> Vec<String> {
    let listed = |n: &str| {
        allowed
            .iter()
            .any(|a| a.normal.contains(&n) || a.dev.contains(&n) || a.build.contains(&n))
    };
    let mut present: Vec<&String> = m
        .names
        .values()
        .filter(|n| stacks.contains(&n.as_str()) && !listed(n.as_str()))
        .collect();
    present.sort();
    present.dedup();
    present
        .into_iter()
        .map(|n| {
            format!(
                "`{n}` is in Cargo.lock but no crate's allowlist names it: it came \
                 in through another crate's dependencies; depend on it directly \
                 from the crate that needs it and add it to that crate's entry \
                 in ALLOWED, or keep it out"
            )
        })
        .collect()
}

// --- unsafe ---------------------------------------------------------------

/// `src` with every comment and every string, byte-string, raw-string and
/// character literal blanked to spaces (newlines kept, so lines and
/// columns stay where they were): what is left is code.
fn code_only(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let n = b.len();
    let at = |i: usize| b.get(i).copied().unwrap_or('\0');
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < n {
        let c = b[i];
        let after_ident = i > 0 && is_ident(b[i - 1]);
        // The end (exclusive) of a comment or literal starting here.
        let end = if c == '/' && at(i + 1) == '/' {
            let mut j = i;
            while j < n && b[j] != '\n' {
                j += 1;
            }
            Some(j)
        } else if c == '/' && at(i + 1) == '*' {
            let (mut j, mut depth) = (i, 0usize);
            while j < n {
                if b[j] == '/' && at(j + 1) == '*' {
                    depth += 1;
                    j += 2;
                } else if b[j] == '*' && at(j + 1) == '/' {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            Some(j.min(n))
        } else if !after_ident && (c == 'r' || (c == 'b' && at(i + 1) == 'r')) {
            // A raw string: r"..", r#".."#, br"..", br#".."#.
            let mut j = i + if c == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            if at(j) == '"' {
                j += 1;
                while j < n && !(b[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#')) {
                    j += 1;
                }
                Some((j + 1 + hashes).min(n))
            } else {
                None
            }
        } else if c == '"' {
            let mut j = i + 1;
            while j < n && b[j] != '"' {
                j += if b[j] == '\\' { 2 } else { 1 };
            }
            Some((j + 1).min(n))
        } else if c == '\'' && at(i + 1) == '\\' {
            // An escaped character: '\n', '\'', '\u{..}'.
            let mut j = i + 3;
            while j < n && b[j] != '\'' {
                j += 1;
            }
            Some((j + 1).min(n))
        } else if c == '\'' && at(i + 2) == '\'' {
            Some(i + 3)
        } else {
            // Code, or a lifetime ('a).
            None
        };
        match end {
            Some(j) => {
                out.extend(b[i..j].iter().map(|&c| blank(c)));
                i = j;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// One `unsafe` in a source file.
#[derive(Debug, PartialEq, Eq)]
struct UnsafeSite {
    /// 1-based.
    line: usize,
    /// Says why it is sound: a `// SAFETY:` comment directly above the
    /// line, or above the first line of the statement it is in (for an
    /// `unsafe fn` or `trait`, a `# Safety` section also does).
    documented: bool,
}

/// Every `unsafe` keyword in `src` (comments and literals skipped).
fn unsafe_sites(src: &str) -> Vec<UnsafeSite> {
    let code = code_only(src);
    let code_lines: Vec<&str> = code.lines().collect();
    let src_lines: Vec<&str> = src.lines().collect();
    let chars: Vec<char> = code.chars().collect();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let word: Vec<char> = "unsafe".chars().collect();
    let mut out = Vec::new();
    let mut line = 0;
    for i in 0..chars.len() {
        if chars[i] == '\n' {
            line += 1;
            continue;
        }
        if chars[i..].starts_with(&word)
            && (i == 0 || !is_ident(chars[i - 1]))
            && !chars.get(i + word.len()).is_some_and(|&c| is_ident(c))
        {
            let rest: String = chars[i + word.len()..].iter().take(40).collect();
            let next = rest.split_whitespace().next().unwrap_or("");
            let declares = next.starts_with("fn") || next.starts_with("trait");
            out.push(UnsafeSite {
                line: line + 1,
                documented: documented(&src_lines, &code_lines, line, declares),
            });
        }
    }
    out
}

/// Whether the comment block above line `at` (0-based), or above the first
/// line of the statement `at` is part of, says why it is sound.
fn documented(src: &[&str], code: &[&str], at: usize, declares: bool) -> bool {
    let says = |l: &str| l.contains("SAFETY:") || (declares && l.contains("# Safety"));
    let mut i = at;
    while i > 0 {
        let above = i - 1;
        let text = src.get(above).copied().unwrap_or("");
        let code_part = code.get(above).copied().unwrap_or("").trim();
        if text.trim().is_empty() {
            return false;
        }
        if code_part.is_empty() {
            // A comment block: it must say why.
            let mut j = above;
            loop {
                if says(src[j]) {
                    return true;
                }
                if j == 0 || !code.get(j - 1).is_some_and(|l| l.trim().is_empty()) {
                    return false;
                }
                if src[j - 1].trim().is_empty() {
                    return false;
                }
                j -= 1;
            }
        }
        if code_part.starts_with("#[") {
            i = above;
            continue;
        }
        if code_part.ends_with([';', '{', '}', ',']) {
            // The statement starts on line `i`, with no comment above.
            return false;
        }
        // The statement goes on upward (`let x =` on the line before).
        i = above;
    }
    false
}

/// Whether `src`'s code (not a comment) has `#![forbid(unsafe_code)]`.
fn forbids_unsafe(src: &str) -> bool {
    let code: String = code_only(src)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    code.split("#![forbid(").skip(1).any(|rest| {
        rest.split(")]")
            .next()
            .is_some_and(|lints| lints.split(',').any(|l| l == "unsafe_code"))
    })
}

/// Every `.rs` file under `dir`, skipping build output, hidden folders and
/// the folders of other crates (`skip`).
fn rust_files(dir: &Path, skip: &[&Path], into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            if name == "target" || name.starts_with('.') || skip.contains(&p.as_path()) {
                continue;
            }
            rust_files(&p, skip, into);
        } else if name.ends_with(".rs") {
            into.push(p);
        }
    }
}

/// One crate's sources: each file's path (from the workspace root) and text.
type Sources = Vec<(String, String)>;

/// What is wrong with `unsafe` in one crate: any `unsafe` at all in a
/// crate not allowed it, an undocumented one in a crate that is, a root of
/// a crate not allowed it that does not forbid it, and an allowed crate
/// that no longer holds any.
fn unsafe_violations(
    krate: &str,
    files: &Sources,
    roots: &[(String, String)],
    allowed: &[(&str, &str)],
) -> Vec<String> {
    let may = allowed.iter().any(|(k, _)| *k == krate);
    let mut out = Vec::new();
    let mut any = false;
    for (path, text) in files {
        for site in unsafe_sites(text) {
            any = true;
            if !may {
                out.push(format!(
                    "{path}:{}: `unsafe` in {krate}, which may hold none (only {:?} \
                     may: UNSAFE_ALLOWED in engine/kuzet/tests/it/architecture.rs)",
                    site.line,
                    allowed.iter().map(|(k, _)| *k).collect::<Vec<_>>()
                ));
            } else if !site.documented {
                out.push(format!(
                    "{path}:{}: `unsafe` without a `// SAFETY:` comment directly \
                     above it (or above the statement it is in) saying why it is sound",
                    site.line
                ));
            }
        }
    }
    if may && !any {
        out.push(format!(
            "{krate} holds no `unsafe` any more: remove it from UNSAFE_ALLOWED and \
             forbid unsafe_code at its roots"
        ));
    }
    if !may {
        for (path, text) in roots {
            if !forbids_unsafe(text) {
                out.push(format!(
                    "{path}: a root of {krate} without `#![forbid(unsafe_code)]`"
                ));
            }
        }
    }
    out
}

// --- the workspace --------------------------------------------------------

#[test]
fn every_crate_depends_only_on_its_allowlist() {
    let m = workspace_metadata();
    let v = allowlist_violations(&m, ALLOWED);
    assert!(v.is_empty(), "{}", v.join("\n"));
}

#[test]
fn no_crate_reaches_a_stack_behind_its_wall() {
    let m = workspace_metadata();
    // The walls see something: the data plane does reach tokio (its TCP
    // transport), so a graph read wrong would not pass as clean.
    assert!(reach(&m, "kuzet-dataplane").contains_key("tokio"));
    let mut v = wall_violations(&m, WALLS);
    v.extend(unreviewed_stacks(&m, ALLOWED, REVIEWED_STACKS));
    assert!(v.is_empty(), "{}", v.join("\n"));
}

#[test]
fn unsafe_only_where_allowed_and_each_says_why() {
    let m = workspace_metadata();
    let dirs: Vec<&Path> = m.members.iter().map(|c| c.dir.as_path()).collect();
    let rel = |p: &Path| {
        p.strip_prefix(&m.root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let read =
        |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut v = Vec::new();
    let mut scanned = 0;
    for c in &m.members {
        let others: Vec<&Path> = dirs.iter().copied().filter(|d| *d != c.dir).collect();
        let mut paths = Vec::new();
        rust_files(&c.dir, &others, &mut paths);
        let files: Sources = paths.iter().map(|p| (rel(p), read(p))).collect();
        assert!(
            !files.is_empty(),
            "{} has no .rs file under {}",
            c.name,
            c.dir.display()
        );
        scanned += files.len();
        let roots: Vec<(String, String)> = c
            .roots
            .iter()
            .map(|(kind, p)| (format!("{} ({kind})", rel(p)), read(p)))
            .collect();
        v.extend(unsafe_violations(&c.name, &files, &roots, UNSAFE_ALLOWED));
    }
    assert!(scanned > 100, "only {scanned} files scanned");
    assert!(v.is_empty(), "{}", v.join("\n"));
}

// --- the checkers on made-up input ----------------------------------------

/// Metadata for a made-up workspace: `members` are (name, [(kind, dep)]),
/// `edges` the resolved normal dependencies between package names.
fn fake_metadata(members: &[(&str, &[(&str, &str)])], edges: &[(&str, &str)]) -> Metadata {
    let id = |n: &str| format!("path+file:///w/{n}#0.1.0");
    let mut names: BTreeSet<&str> = members.iter().map(|(n, _)| *n).collect();
    for (a, b) in edges {
        names.insert(a);
        names.insert(b);
    }
    let packages: Vec<Value> = names
        .iter()
        .map(|n| {
            let deps: Vec<Value> = members
                .iter()
                .find(|(m, _)| m == n)
                .map(|(_, d)| *d)
                .unwrap_or_default()
                .iter()
                .map(|(kind, dep)| {
                    let kind = if *kind == "normal" {
                        Value::Null
                    } else {
                        json!(kind)
                    };
                    json!({"name": dep, "kind": kind, "optional": false, "target": null})
                })
                .collect();
            json!({
                "id": id(n),
                "name": n,
                "manifest_path": format!("/w/{n}/Cargo.toml"),
                "dependencies": deps,
                "targets": [{"kind": ["lib"], "src_path": format!("/w/{n}/src/lib.rs")}],
            })
        })
        .collect();
    let nodes: Vec<Value> = names
        .iter()
        .map(|n| {
            let deps: Vec<Value> = edges
                .iter()
                .filter(|(a, _)| a == n)
                .map(|(_, b)| json!({"name": b, "pkg": id(b), "dep_kinds": [{"kind": null, "target": null}]}))
                .collect();
            json!({"id": id(n), "deps": deps})
        })
        .collect();
    let v = json!({
        "packages": packages,
        "workspace_members": members.iter().map(|(n, _)| id(n)).collect::<Vec<_>>(),
        "resolve": {"nodes": nodes, "root": null},
        "workspace_root": "/w",
    });
    parse_metadata(&v)
}

const FAKE_ALLOWED: &[Allowed] = &[Allowed {
    krate: "kuzet-dataplane",
    why: "the call path",
    normal: &["kuzet-rules", "tokio"],
    dev: &["tempfile"],
    build: &[],
}];

#[test]
fn the_allowlist_checker_names_crate_dependency_and_where_to_add_it() {
    // As allowed: nothing to say.
    let ok = fake_metadata(
        &[(
            "kuzet-dataplane",
            &[
                ("normal", "kuzet-rules"),
                ("normal", "tokio"),
                ("dev", "tempfile"),
            ],
        )],
        &[],
    );
    assert_eq!(
        allowlist_violations(&ok, FAKE_ALLOWED),
        Vec::<String>::new()
    );
    // A database client the allowlist does not hold.
    let redis = fake_metadata(
        &[(
            "kuzet-dataplane",
            &[
                ("normal", "kuzet-rules"),
                ("normal", "tokio"),
                ("normal", "redis"),
                ("dev", "tempfile"),
            ],
        )],
        &[],
    );
    let v = allowlist_violations(&redis, FAKE_ALLOWED);
    assert_eq!(v.len(), 1, "{v:?}");
    for part in [
        "kuzet-dataplane",
        "normal dependency on `redis`",
        "ALLOWED",
        "engine/kuzet/tests/it/architecture.rs",
    ] {
        assert!(v[0].contains(part), "{part:?} not in {}", v[0]);
    }
    // An allowed dev dependency used as a normal one is still refused:
    // each kind has its own list.
    let kinds = fake_metadata(
        &[(
            "kuzet-dataplane",
            &[
                ("normal", "kuzet-rules"),
                ("normal", "tokio"),
                ("normal", "tempfile"),
                ("dev", "tempfile"),
            ],
        )],
        &[],
    );
    let v = allowlist_violations(&kinds, FAKE_ALLOWED);
    assert!(
        v.len() == 1 && v[0].contains("normal dependency on `tempfile`"),
        "{v:?}"
    );
    // A dependency dropped leaves a stale entry; a new crate has no entry.
    let stale = fake_metadata(
        &[
            (
                "kuzet-dataplane",
                &[("normal", "kuzet-rules"), ("dev", "tempfile")],
            ),
            ("kuzet-console", &[]),
        ],
        &[],
    );
    let v = allowlist_violations(&stale, FAKE_ALLOWED);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v
        .iter()
        .any(|m| m.contains("`tokio`, which it no longer has")));
    assert!(v
        .iter()
        .any(|m| m.contains("kuzet-console is a workspace crate with no entry")));
}

#[test]
fn the_wall_checker_finds_a_forbidden_crate_through_a_chain() {
    let walls = &[Wall {
        krate: "kuzet-rules",
        why: "no runtime",
        forbidden: &[RUNTIME, DATABASE],
    }];
    let clean = fake_metadata(
        &[("kuzet-rules", &[("normal", "toml")])],
        &[("kuzet-rules", "toml"), ("toml", "serde")],
    );
    assert_eq!(wall_violations(&clean, walls), Vec::<String>::new());
    // tokio two steps away, and rusqlite only as a dev dependency (not
    // followed: it does not ship).
    let dirty = fake_metadata(
        &[("kuzet-rules", &[("normal", "toml"), ("dev", "rusqlite")])],
        &[
            ("kuzet-rules", "toml"),
            ("toml", "helper"),
            ("helper", "tokio"),
        ],
    );
    let v = wall_violations(&dirty, walls);
    assert_eq!(
        v,
        vec!["kuzet-rules reaches `tokio` (kuzet-rules -> toml -> helper -> tokio): no runtime"]
    );
    // A stack in Cargo.lock that no allowlist names.
    let lock = fake_metadata(
        &[("kuzet-dataplane", &[("normal", "tokio")])],
        &[("kuzet-dataplane", "tokio"), ("tokio", "tokio-postgres")],
    );
    let v = unreviewed_stacks(&lock, FAKE_ALLOWED, REVIEWED_STACKS);
    assert!(
        v.len() == 1 && v[0].starts_with("`tokio-postgres` is in Cargo.lock"),
        "{v:?}"
    );
}

#[test]
fn the_unsafe_checker_sees_each_fault() {
    let files = |text: &str| vec![("src/x.rs".to_string(), text.to_string())];
    let forbidding = vec![(
        "src/lib.rs (lib)".to_string(),
        "//! Doc.\n#![forbid(unsafe_code)]\n".to_string(),
    )];
    let allowed = &[("kuzet-net", "syscalls")];
    // A block without SAFETY, in the crate that may hold unsafe.
    let bare = "fn f() {\n    let x = 1;\n    unsafe { g() };\n}\n";
    let v = unsafe_violations("kuzet-net", &files(bare), &[], allowed);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].starts_with("src/x.rs:3: `unsafe` without a `// SAFETY:`"));
    // A comment that is not a SAFETY comment does not count.
    let plain = "fn f() {\n    // calls g\n    unsafe { g() };\n}\n";
    assert!(!unsafe_sites(plain)[0].documented);
    // SAFETY above the line, above a statement spread over lines, above an
    // impl; SAFETY for the first block does not cover a second one.
    let good = "fn f() {\n    // SAFETY: g has no preconditions.\n    unsafe { g() };\n    \
                // SAFETY: as above.\n    let y: u8 =\n        unsafe { h() };\n}\n\
                // SAFETY: no pointers inside.\nunsafe impl Send for S {}\n";
    assert!(
        unsafe_sites(good).iter().all(|s| s.documented),
        "{:?}",
        unsafe_sites(good)
    );
    assert_eq!(unsafe_sites(good).len(), 3);
    let shared = "// SAFETY: one.\nlet a = unsafe { g() };\nlet b = unsafe { h() };\n";
    assert_eq!(
        unsafe_sites(shared),
        vec![
            UnsafeSite {
                line: 2,
                documented: true
            },
            UnsafeSite {
                line: 3,
                documented: false
            },
        ]
    );
    // `unsafe` in comments, strings, raw strings and the lint's name is
    // no unsafe; a lifetime does not open a literal.
    let quiet = "// unsafe { }\n/* unsafe /* nested */ unsafe */\nfn f<'a>(x: &'a str) \
                 -> &'a str { let _ = \"unsafe {\"; let _ = r#\"unsafe \"{\"#; let _ = '\"'; \
                 x }\n#![forbid(unsafe_code)]\n";
    assert_eq!(unsafe_sites(quiet), vec![]);
    // Any unsafe at all in a crate that may hold none, documented or not.
    let v = unsafe_violations("kuzet-rules", &files(good), &forbidding, allowed);
    assert_eq!(v.len(), 3, "{v:?}");
    assert!(v[0].contains("`unsafe` in kuzet-rules, which may hold none"));
    // A root that does not forbid unsafe, even if a comment says it does.
    let commented = vec![(
        "src/main.rs (bin)".to_string(),
        "// #![forbid(unsafe_code)]\nfn main() {}\n".to_string(),
    )];
    let v = unsafe_violations("kuzet-rules", &files("fn f() {}\n"), &commented, allowed);
    assert_eq!(
        v,
        vec!["src/main.rs (bin): a root of kuzet-rules without `#![forbid(unsafe_code)]`"]
    );
    assert!(forbids_unsafe("#![forbid(missing_docs, unsafe_code)]"));
    // The crate allowed unsafe that has none left.
    let v = unsafe_violations("kuzet-net", &files("fn f() {}\n"), &[], allowed);
    assert!(
        v.len() == 1 && v[0].contains("holds no `unsafe` any more"),
        "{v:?}"
    );
}
