//! kuzet's fuzz targets, their seed corpus, and a deterministic mutation
//! pass that runs with the test suite.
//!
//! Each [`Target`] takes arbitrary bytes and drives one of the parts that
//! meet hostile input: the SIP indexer and header decoders, the whole
//! request handler in redirect and proxy mode, TCP framing, the list,
//! rule and config loaders, and the number normalizer. A target panics
//! when it finds a bug: a panic inside kuzet, or a broken property (a
//! reply too big for a datagram, a message that frames differently in
//! pieces than whole, a number that does not survive a round trip).
//!
//! The same functions run three ways: [`pass`] (seeds, then seeded
//! mutations, time-boxed) from `cargo test`; the `kuzet-fuzz` binary
//! (`pass`, `seeds`, `run`) by hand; and `kuzet-fuzz-afl` under AFL++ from
//! `scripts/fuzz.sh`. A crash AFL finds is saved under
//! `fuzz/regressions/<target>/` with a name saying what it guards, and
//! is replayed by the suite from then on.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use kuzet::config::{Config, Mode};
use kuzet_dataplane::handler::{Handler, Outcome};
use kuzet_dataplane::metrics::Metrics;
use kuzet_dataplane::transport::tcp::{next_frame, Frame};
use kuzet_rules::{ListBuilder, NumberingPlan};
use kuzet_sip::{Hdr, Transport};

/// One fuzz target.
#[derive(Clone, Copy)]
pub struct Target {
    /// Its name on the command line and in folders.
    pub name: &'static str,
    /// What it exercises.
    pub about: &'static str,
    /// Runs one input; panics on a bug.
    pub run: fn(&[u8]),
}

/// Every target, in the order the pass runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "sip",
        about: "the SIP indexer (datagram and stream) and every header decoder",
        run: sip,
    },
    Target {
        name: "handler_redirect",
        about: "the whole request handler in redirect mode, replies checked",
        run: handler_redirect,
    },
    Target {
        name: "handler_proxy",
        about: "the whole request handler in proxy mode, output checked",
        run: handler_proxy,
    },
    Target {
        name: "tcp",
        about: "TCP framing: the same bytes in two pieces frame as they do whole",
        run: tcp,
    },
    Target {
        name: "list",
        about: "the list loader (line cap, UTF-8, entries)",
        run: list,
    },
    Target {
        name: "rules",
        about: "the rule file loader",
        run: rules,
    },
    Target {
        name: "config",
        about: "the config loader",
        run: config,
    },
    Target {
        name: "numbers",
        about: "the number normalizer, with a round trip through E.164",
        run: numbers,
    },
    Target {
        name: "nbfeed",
        about: "the National Bank feed's batch: signature header, verifier and parser",
        run: nbfeed,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().copied().find(|t| t.name == name)
}

fn plan() -> &'static NumberingPlan {
    static PLAN: OnceLock<NumberingPlan> = OnceLock::new();
    PLAN.get_or_init(|| {
        Config::embedded()
            .plan()
            .unwrap_or_else(|e| panic!("the embedded plan: {e}"))
    })
}

/// The largest UDP payload: what a reply or forwarded request must fit.
const MAX_UDP_PAYLOAD: usize = 65_507;

/// The SIP indexer over both transports, then every decoder on every
/// header it found.
pub fn sip(data: &[u8]) {
    for t in [Transport::Datagram, Transport::Stream] {
        let Ok(m) = kuzet_sip::parse(data, t) else {
            continue;
        };
        assert!(m.len() <= data.len());
        if m.is_request() {
            let _ = kuzet_sip::syntax::parse_uri(m.request_uri());
        }
        for h in m.headers() {
            let v = h.value;
            let _ = kuzet_sip::syntax::split_values(v).count();
            match h.kind {
                Hdr::Via => {
                    for one in kuzet_sip::syntax::split_values(v) {
                        let _ = kuzet_sip::syntax::parse_via(one);
                    }
                }
                Hdr::CSeq => {
                    let _ = kuzet_sip::syntax::parse_cseq(v);
                }
                _ => {
                    if let Ok(na) = kuzet_sip::syntax::parse_name_addr(v) {
                        let _ = kuzet_sip::syntax::parse_uri(na.uri);
                        let _ = kuzet_sip::syntax::param(na.params, b"tag");
                    }
                }
            }
        }
    }
}

fn handler(mode: Mode) -> &'static Handler {
    static REDIRECT: OnceLock<Handler> = OnceLock::new();
    static PROXY: OnceLock<Handler> = OnceLock::new();
    let cell = if mode == Mode::Redirect {
        &REDIRECT
    } else {
        &PROXY
    };
    cell.get_or_init(|| {
        let mut c = Config::embedded();
        c.server.mode = mode;
        c.server.listen = "127.0.0.1:5060".parse().unwrap_or_else(|_| unreachable!());
        c.proxy.next_hop = Some("127.0.0.1:5070".parse().unwrap_or_else(|_| unreachable!()));
        c.rules.max_tracked_numbers = 10_000;
        // The sample lists and the default rules, as `kuzet run` has them.
        let mut src = c.sources();
        src.rule_file = Some(repo().join("deploy/rules/default.toml"));
        let plan = c.plan().unwrap_or_else(|e| panic!("plan: {e}"));
        let (set, _) =
            kuzet_control::lists::load(&src, &plan, &std::sync::atomic::AtomicBool::new(false))
                .unwrap_or_else(|e| panic!("the sample lists: {e}"));
        let settings = c.dataplane().unwrap_or_else(|e| panic!("settings: {e}"));
        Handler::new(
            settings,
            Arc::new(ArcSwap::from_pointee(set)),
            Arc::new(Metrics::default()),
        )
    })
}

fn handle(mode: Mode, data: &[u8]) {
    let h = handler(mode);
    let src: SocketAddr = "192.0.2.10:5060".parse().unwrap_or_else(|_| unreachable!());
    let mut out = Vec::new();
    for conn in [None, Some(1)] {
        let o = h.handle(data, src, conn, Instant::now(), &mut out);
        match o {
            Outcome::Reply | Outcome::Forward(_) | Outcome::ToConnection(_) => {
                if conn.is_none() {
                    assert!(
                        out.len() <= MAX_UDP_PAYLOAD,
                        "{} bytes out over UDP",
                        out.len()
                    );
                }
                let m = kuzet_sip::parse(&out, Transport::Datagram).unwrap_or_else(|e| {
                    panic!(
                        "kuzet wrote what it cannot parse ({e:?}): {:?}",
                        String::from_utf8_lossy(&out)
                    )
                });
                if matches!(o, Outcome::Reply) {
                    assert!(!m.is_request(), "a reply that is a request");
                }
            }
            Outcome::Drop => {}
        }
    }
}

/// The whole request handler, redirect mode.
pub fn handler_redirect(data: &[u8]) {
    handle(Mode::Redirect, data);
}

/// The whole request handler, proxy mode.
pub fn handler_proxy(data: &[u8]) {
    handle(Mode::Proxy, data);
}

/// Frames a stream the way a connection does, fed in the given pieces:
/// the frames (kind and length) until the first incomplete or bad one.
fn frames(pieces: &[&[u8]]) -> (Vec<(u8, usize)>, bool) {
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for p in pieces {
        buf.extend_from_slice(p);
        loop {
            let (kind, len) = match next_frame(&buf) {
                Frame::Ping => (0, 4),
                Frame::Pong => (1, 2),
                Frame::Message(m) => (2, m.len()),
                Frame::Incomplete => break,
                Frame::Bad => return (out, true),
            };
            assert!(len > 0 && len <= buf.len());
            out.push((kind, len));
            buf.drain(..len);
        }
    }
    (out, false)
}

/// TCP framing: a stream fed whole and in two pieces frames the same, and
/// a prefix of a good stream is never taken for a bad one.
pub fn tcp(data: &[u8]) {
    let whole = frames(&[data]);
    if data.len() < 2 {
        return;
    }
    let cut = 1 + (data[0] as usize * 257 + data[data.len() - 1] as usize) % (data.len() - 1);
    let split = frames(&[&data[..cut], &data[cut..]]);
    assert_eq!(
        whole.0, split.0,
        "framing depends on where the stream was cut (at {cut})"
    );
    assert_eq!(whole.1, split.1, "a cut at {cut} made the stream bad");
}

/// The list loader's text path, as it reads a file.
pub fn list(data: &[u8]) {
    let plan = plan();
    let mut b = ListBuilder::new(plan);
    let r = kuzet_control::lists::load_lines(
        std::io::Cursor::new(data),
        "fuzz.txt",
        &mut b,
        &std::sync::atomic::AtomicBool::new(false),
        Instant::now(),
    );
    if let Err(e) = &r {
        // Errors quote an excerpt, never the whole input.
        assert!(
            e.to_string().len() < 1024,
            "a {}-byte error",
            e.to_string().len()
        );
    }
    let l = b.finish();
    let _ = l.exact_count() + l.prefix_count();
}

/// The rule file loader.
pub fn rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = Config::embedded().sources().policy;
    let _ = kuzet_rules::ruleset::RuleSet::from_toml_str(text, "fuzz.toml", plan(), &policy);
}

/// The config loader.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Config::from_toml_str(text, "fuzz.toml") {
        let _ = c.dataplane();
        let _ = c.sources();
    }
}

/// The National Bank feed's batch: the first line is taken as a signature
/// header and the rest as the body, which is verified (never accepted:
/// no key signed it), then parsed as if it had passed; whatever parses
/// keeps the protocol's promises.
pub fn nbfeed(data: &[u8]) {
    use kuzet_control::nbfeed::batch::{self, Action, Key};
    let (head, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let keys = [Key {
        id: "k1".into(),
        public: ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key(),
        valid_from: 0,
        valid_until: None,
    }];
    let header = String::from_utf8_lossy(head);
    assert!(
        batch::verify(body, &header, &keys, 1).is_err(),
        "an unsigned body passed"
    );
    if let Ok(b) = batch::parse(body) {
        assert!(b.seq >= 1);
        for e in &b.entries {
            assert!(e.target.starts_with('+'));
            if e.action == Action::Add {
                assert!(e.expires_at > e.reported_at && e.confidence <= 100);
            }
        }
    }
}

/// The normalizer: whatever normalizes survives a round trip through its
/// written form, and prefixes and classification never panic.
pub fn numbers(data: &[u8]) {
    let plan = plan();
    if let Some(n) = plan.normalize(data) {
        let written = n.to_string();
        assert_eq!(
            plan.normalize(written.as_bytes()),
            Some(n),
            "{:?} normalized to {written}, which does not normalize back",
            String::from_utf8_lossy(data)
        );
        let _ = plan.classify(n);
    }
    let _ = plan.normalize_prefix(data);
}

/// The repository's root folder.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn files_in(dir: &Path, ext: Option<&str>) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .filter(|p| ext.is_none_or(|x| p.extension().is_some_and(|e| e == x)))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A target's seed corpus: the repository's own fixtures and samples for
/// it, the hand-written seeds under `fuzz/corpus/<target>/`, and every
/// regression under `fuzz/regressions/<target>/`; as (name, bytes).
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = repo();
    let rfc4475 = root.join("engine/kuzet/tests/fixtures/rfc4475");
    let mut paths = match target {
        "sip" | "handler_redirect" | "handler_proxy" | "tcp" => files_in(&rfc4475, Some("dat")),
        "list" => files_in(&root.join("deploy/lists"), Some("txt")),
        "rules" => vec![root.join("deploy/rules/default.toml")],
        "config" => vec![root.join("deploy/kuzet.toml")],
        _ => Vec::new(),
    };
    let own = match target {
        "handler_redirect" | "handler_proxy" => "sip",
        t => t,
    };
    paths.extend(files_in(&root.join("fuzz/corpus").join(own), None));
    paths.extend(files_in(&root.join("fuzz/regressions").join(target), None));
    paths
        .into_iter()
        .filter_map(|p| {
            let bytes = std::fs::read(&p).ok()?;
            let name = p.strip_prefix(&root).unwrap_or(&p).display().to_string();
            Some((name, bytes))
        })
        .collect()
}

/// A small, fast, seeded generator: the same seed gives the same inputs on
/// every machine.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits (xorshift64*).
    pub fn bits(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.bits() % n as u64) as usize
        }
    }
}

/// Bytes that matter to SIP, lists and TOML, spliced in by the mutator.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b"\"",
    b"\\",
    b"%",
    b"%00",
    b"\0",
    b" ",
    b"\t",
    b"*",
    b"+",
    b"#",
    b"=",
    b"[",
    b"]",
    b"sip:",
    b"tel:",
    b"SIP/2.0",
    b"INVITE ",
    b"Content-Length: ",
    b"Content-Length: 4294967296",
    b"Via: SIP/2.0/UDP h;branch=z9hG4bK",
    b"P-Asserted-Identity: ",
    b"X-Kuzet-Verdict: ",
    b"Event: kuzet-outcome",
    b";rport",
    b";received=",
    b"+77011234567",
    b"87011234567",
    b"8107",
    b"007",
    b"99999999999999999999",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\xd0\xb6",
];

/// Mutates `data` in place: one to four edits (bit flips, random bytes,
/// inserts and deletes, duplicated runs, tokens, a splice from `other`).
pub fn mutate(data: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
    let edits = 1 + rng.below(4);
    for _ in 0..edits {
        let len = data.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.bits() as u8;
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                data.drain(i..i + n);
            }
            3 => {
                let i = rng.below(len + 1);
                let t = TOKENS[rng.below(TOKENS.len())];
                data.splice(i..i, t.iter().copied());
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let run = data[i..i + n].to_vec();
                let at = rng.below(len + 1);
                let most = if rng.below(16) == 0 { 300 } else { 3 };
                let times = 1 + rng.below(most);
                for _ in 0..times {
                    data.splice(at..at, run.iter().copied());
                }
            }
            5 if !other.is_empty() => {
                let i = rng.below(len + 1);
                let j = rng.below(other.len());
                let n = 1 + rng.below((other.len() - j).min(512));
                data.splice(i..i, other[j..j + n].iter().copied());
            }
            6 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.bits() as u8).collect();
                data.splice(i..i, bytes);
            }
            _ if len > 1 => {
                // Truncate: partial messages and files.
                data.truncate(rng.below(len));
            }
            _ => data.push(rng.bits() as u8),
        }
    }
    // Stay near real sizes, with room for the largest datagram.
    data.truncate(70_000);
}

/// How a pass went.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassStats {
    /// Seeds run.
    pub seeds: usize,
    /// Mutated inputs run.
    pub mutations: u64,
}

/// A failing input: the target, where it came from and the bytes.
#[derive(Debug)]
pub struct Failure {
    /// The target.
    pub target: &'static str,
    /// A seed's name, or "mutation N of SEED".
    pub input: String,
    /// The bytes that failed.
    pub bytes: Vec<u8>,
    /// The panic's message.
    pub message: String,
}

fn run_caught(t: &Target, data: &[u8]) -> Result<(), String> {
    std::panic::catch_unwind(|| (t.run)(data)).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())
    })
}

/// The deterministic pass: every seed, then seeded mutations of them until
/// `max_mutations` or `budget` runs out, whichever is first. Stops at the
/// first failure.
pub fn pass(
    t: &Target,
    seed: u64,
    max_mutations: u64,
    budget: Duration,
) -> Result<PassStats, Box<Failure>> {
    let corpus = seeds(t.name);
    let mut stats = PassStats::default();
    for (name, bytes) in &corpus {
        run_caught(t, bytes).map_err(|message| {
            Box::new(Failure {
                target: t.name,
                input: name.clone(),
                bytes: bytes.clone(),
                message,
            })
        })?;
        stats.seeds += 1;
    }
    if corpus.is_empty() {
        return Ok(stats);
    }
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut input = Vec::new();
    while stats.mutations < max_mutations && started.elapsed() < budget {
        let (name, base) = &corpus[rng.below(corpus.len())];
        let other = &corpus[rng.below(corpus.len())].1;
        input.clear();
        input.extend_from_slice(base);
        mutate(&mut input, other, &mut rng);
        run_caught(t, &input).map_err(|message| {
            Box::new(Failure {
                target: t.name,
                input: format!("mutation {} of {name}", stats.mutations),
                bytes: input.clone(),
                message,
            })
        })?;
        stats.mutations += 1;
    }
    Ok(stats)
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fuzz target {} failed on {}: {}\ninput ({} bytes): {:?}",
            self.target,
            self.input,
            self.message,
            self.bytes.len(),
            String::from_utf8_lossy(&self.bytes[..self.bytes.len().min(2000)])
        )
    }
}
