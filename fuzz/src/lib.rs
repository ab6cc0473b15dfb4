//! kuzet's fuzz targets, their seed corpus, and a deterministic mutation
//! pass that runs with the test suite.
//!
//! Each [`Target`] takes arbitrary bytes and drives one of the parts that
//! meet hostile input: the SIP indexer and header decoders, the whole
//! request handler in redirect and proxy mode, TCP framing, the list,
//! rule and config loaders, the number normalizer, and the National
//! Bank Centre's feed, alerts and reports. A target panics
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
    Target {
        name: "nbalerts",
        about: "the Centre's alerts batch and case deadlines; the holiday file",
        run: nbalerts,
    },
    Target {
        name: "nbreport",
        about: "the Centre's reading of kuzet's reports, and reports built as kuzet builds them",
        run: nbreport,
    },
    Target {
        name: "delta",
        about: "another node's behaviour delta, as Redis hands it over",
        run: delta,
    },
];

/// Another node's behaviour delta: bytes that decode are a delta that
/// encodes back to the same bytes, and merging it into a state never
/// panics.
pub fn delta(data: &[u8]) {
    use kuzet_rules::state::{Delta, State, Windows};
    let Ok(d) = Delta::decode(data) else {
        return;
    };
    assert_eq!(d.encode(), data, "a decoded delta encodes to other bytes");
    let st = State::new(1024, 3600);
    let w = Windows {
        velocity: [60, 0, 3600],
        fan_out: 3600,
        outcomes: 3600,
    };
    let _ = st.merge(&d, &w);
}

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

/// The Centre's alerts batch, parsed as if its signature had passed:
/// whatever parses keeps the protocol's promises, and each alert's case
/// gets a deadline after it that kuzet can write (as it does when it logs
/// the case). When the bytes are UTF-8 they are also read as a holiday
/// file: an error names the file, and the days read make a calendar whose
/// deadlines still come after what they count from.
pub fn nbalerts(data: &[u8]) {
    use kuzet_control::nbfeed::{batch, calendar::Calendar, holiday_lines, to_rfc3339};
    // What CaseDesk uses with the shipped config: two working days, UTC+5.
    let (days, offset) = (2, 5 * 3600);
    if let Ok(b) = batch::parse_alerts(data) {
        assert!(b.seq >= 1);
        let text = std::str::from_utf8(data).unwrap_or_else(|_| unreachable!());
        let lines = text.lines().skip(1).filter(|l| !l.trim().is_empty());
        assert_eq!(b.alerts.len(), lines.count(), "an alert per line");
        let cal = Calendar::kazakhstan([], []);
        for a in &b.alerts {
            let digits = a.number.strip_prefix('+').unwrap_or_else(|| {
                panic!("number {:?} without +", a.number);
            });
            assert!(!digits.is_empty() && digits.len() <= 15);
            assert!(digits.bytes().all(|c| c.is_ascii_digit()));
            assert!(a.note.chars().count() <= 512, "a note over 512");
            assert!(!a.id.is_empty() && !a.category.is_empty());
            let due = cal.deadline(a.reported_at, offset, days);
            assert!(due > a.reported_at, "due {due} before {}", a.reported_at);
            let _ = to_rfc3339(due);
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match holiday_lines(text, "fuzz") {
        Ok((off, on)) => {
            let at = 1_796_450_400; // 2026-12-04T09:20:00Z
            let due = Calendar::kazakhstan(off.clone(), on.clone()).deadline(at, offset, days);
            assert!(due > at);
            let due = Calendar::weekends(off, on).deadline(at, offset, days);
            assert!(due > at);
        }
        Err(e) => assert!(e.starts_with("fuzz:"), "an error naming no file: {e}"),
    }
}

/// Fields cut out of a fuzz input: its lines, read as UTF-8 (lossily),
/// then empty ones once they run out.
struct Fields<'a> {
    parts: Vec<&'a [u8]>,
    next: usize,
}

/// The last second RFC 3339 (four-digit years) can write: 9999-12-31T23:59:59Z.
const LAST_RFC3339: i64 = 253_402_300_799;

impl<'a> Fields<'a> {
    fn new(data: &'a [u8]) -> Fields<'a> {
        Fields {
            parts: data.split(|b| *b == b'\n').collect(),
            next: 0,
        }
    }

    fn left(&self) -> bool {
        self.next < self.parts.len()
    }

    fn text(&mut self) -> String {
        let p = self.parts.get(self.next).copied().unwrap_or_default();
        self.next += 1;
        String::from_utf8_lossy(p).into_owned()
    }

    /// An integer: the field's own, or one made from its bytes.
    fn int(&mut self) -> i64 {
        let t = self.text();
        t.trim().parse().unwrap_or_else(|_| {
            t.bytes()
                .fold(0i64, |a, b| a.wrapping_mul(31).wrapping_add(i64::from(b)))
        })
    }

    /// A time in Unix seconds, up to the last one RFC 3339 can write.
    fn time(&mut self) -> i64 {
        self.int().min(LAST_RFC3339)
    }
}

/// The Centre's stand-in (`kuzet_sim::nbfeed::check_report`) over
/// arbitrary bytes: it never panics, and what it takes is a known kind of
/// `"v":1`. Then the same bytes, cut into lines, make a report the way
/// kuzet makes one, and the Centre must take it: a decision on an alert
/// kuzet's parser took, with a note and BSS reference `decide` allows; a
/// fraud number or potential victim whose numbers kuzet normalized (when
/// they are E.164: a short code is not a number the protocol carries); a
/// feedback report whose hits are entries kuzet's feed parser took. The
/// report with a number's `+` dropped must be refused, so the check is
/// not one that takes anything.
///
/// The first line names the kind (`decision`, `fraud_number`,
/// `potential_victim`, `feedback`; otherwise its bytes pick one) and,
/// second, `confirmed`/`not_confirmed` or `asserted`/`listed`. The lines
/// after it, by kind: alert id, number, category, reported_at (RFC 3339),
/// decided_at, BSS reference, note; number, store id, incident id,
/// first_seen, last_seen, blocked, flagged, rules (comma-separated);
/// callee, source, at, store id, incident id, category; from, to, then
/// (entry, case, calls) per hit. Times are Unix seconds. The JSON is
/// built as `cases.rs` (`decide`) and `watch.rs` build it, kept in step
/// with them by hand (the integration tests send the real ones to the
/// stand-in over HTTP).
pub fn nbreport(data: &[u8]) {
    use kuzet_sim::nbfeed::check_report;
    if let Ok((kind, v)) = check_report(data) {
        assert!(matches!(
            kind.as_str(),
            "decision" | "fraud_number" | "potential_victim" | "feedback"
        ));
        assert_eq!(v["v"], 1);
        assert_eq!(v["kind"].as_str(), Some(kind.as_str()));
    }
    let Some((body, number)) = kuzet_report(&mut Fields::new(data)) else {
        return;
    };
    let sent = body.to_string();
    match check_report(sent.as_bytes()) {
        Ok((kind, _)) => assert_eq!(Some(kind.as_str()), body["kind"].as_str()),
        Err(e) => panic!("the Centre refused a report kuzet would send ({e}): {sent}"),
    }
    if let Some(field) = number {
        let mut bad = body.clone();
        let n = bad[field]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('+')
            .to_string();
        bad[field] = n.clone().into();
        assert!(
            check_report(bad.to_string().as_bytes()).is_err(),
            "the Centre took {field} {n:?}"
        );
    }
}

/// A report as kuzet builds it from `f`, and the name of a field holding
/// a number; None when kuzet would send no report from these fields.
fn kuzet_report(f: &mut Fields) -> Option<(serde_json::Value, Option<&'static str>)> {
    use kuzet_control::nbfeed::batch;
    use kuzet_control::nbfeed::reports::body;
    use serde_json::json;
    let what = f.text();
    let mut words = what.split(' ');
    let kind = match words.next().unwrap_or_default() {
        "decision" => 0,
        "fraud_number" => 1,
        "potential_victim" => 2,
        "feedback" => 3,
        other => other.bytes().map(usize::from).sum::<usize>() % 4,
    };
    let second = words.next().unwrap_or_default();
    let flag = match second {
        "confirmed" | "asserted" => true,
        "not_confirmed" | "listed" => false,
        other => other.len() % 2 == 0,
    };
    // A number as the data plane and the incidents write it.
    let normalized = |s: &str| plan().normalize(s.as_bytes()).filter(|n| n.is_e164());
    match kind {
        0 => {
            let (id, number, category, reported_at) = (f.text(), f.text(), f.text(), f.text());
            let alerts = format!(
                "{}\n{}\n",
                json!({"v": 1, "seq": 1, "issued_at": "2026-12-05T10:00:00Z", "alerts": 1}),
                json!({"id": id, "number": number, "category": category, "reported_at": reported_at}),
            );
            let alert = batch::parse_alerts(alerts.as_bytes()).ok()?.alerts.pop()?;
            let (decided_at, bss_ref, note) = (f.time(), f.text(), f.text());
            // What `decide` lets an operator record.
            let fit = |t: &str| t.len() <= 1024 && !t.chars().any(char::is_control);
            if !fit(&bss_ref) || !fit(&note) || bss_ref.trim().is_empty() {
                return None;
            }
            let body = body::decision(&alert.id, &alert.number, flag, decided_at, &bss_ref, &note);
            Some((body, Some("number")))
        }
        1 => {
            let number = normalized(&f.text())?.to_string();
            let incident = format!("{}/{}", f.text(), f.int());
            let (first_seen, last_seen) = (f.time(), f.time());
            let (blocked, flagged) = (f.int() as u64, f.int() as u64);
            let rules: Vec<String> = f.text().split(',').map(str::to_string).collect();
            let basis = if flag { "asserted" } else { "listed" };
            let body = body::fraud_number(&body::FraudNumber {
                number: &number,
                basis,
                incident: &incident,
                seen_s: (first_seen, last_seen),
                blocked,
                flagged,
                rules: &rules,
            });
            Some((body, Some("number")))
        }
        2 => {
            let callee = normalized(&f.text())?;
            let source = normalized(&f.text())?;
            let at = f.time();
            let incident = format!("{}/{}", f.text(), f.int());
            let category = Some(f.text())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "fraud".into());
            let body = body::potential_victim(
                &callee.to_string(),
                &source.to_string(),
                at,
                &incident,
                &category,
            );
            Some((body, Some("source")))
        }
        _ => {
            let (from, to) = (f.time(), f.time());
            let mut hits = Vec::new();
            while f.left() && hits.len() < 64 {
                let (target, case, calls) = (f.text(), f.text(), f.int() as u64);
                let which = if target.ends_with('*') {
                    "range"
                } else {
                    "number"
                };
                let feed = format!(
                    "{}\n{}\n",
                    json!({"v": 1, "seq": 1, "issued_at": "2026-12-05T10:00:00Z", "entries": 1}),
                    json!({
                        "action": "add",
                        which: target,
                        "category": "bank-impersonation",
                        "confidence": 90,
                        "reported_at": "2026-12-05T09:58:00Z",
                        "expires_at": "2026-12-12T09:58:00Z",
                        "case": case,
                    }),
                );
                let Ok(mut b) = batch::parse(feed.as_bytes()) else {
                    continue;
                };
                let Some(e) = b.entries.pop() else {
                    continue;
                };
                hits.push(body::hit(&e.target, Some(&e.case), calls));
            }
            let body = body::feedback(from, to, &hits);
            Some((body, None))
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
