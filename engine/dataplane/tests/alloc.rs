//! "Nothing on the call path allocates per call", measured (issue 19,
//! defect 10 / deliverable 8).
//!
//! This binary's global allocator counts every allocation per thread
//! (`kuzet_net::alloc_count`), so only the threads running the call path
//! are measured. Both modes run with the shipped rule file
//! (`deploy/rules/default.toml`: behaviour state, escalation, premium
//! destinations), a blocklist, a flaglist and a premium list, a trunk,
//! and the record queue attached, and every call uses numbers not seen
//! before, so the state tables take new entries:
//!
//! - [`handler_allocates_nothing_per_call`] drives `Handler::handle` on
//!   the test thread and counts each call on its own: redirect mode
//!   (allowed, flagged by list and by premium callee, redirected, blocked,
//!   a retransmission, a caller whose shadow behaviour rules fire, an
//!   answer cut down to fit a datagram) and proxy mode (the same INVITEs
//!   forwarded or refused, then each allowed call's dialog: 180 and 200
//!   routed back by kuzet's Via, ACK and BYE routed in the dialog
//!   unscored, the 200 to the BYE; a request too big to forward, 513).
//!   The record queue is drained between calls, as the recorder would.
//! - [`udp_worker_allocates_nothing_per_call`] runs the real UDP worker
//!   (`transport::udp::supervise`, `recvmmsg`/`sendmmsg`) on 127.0.0.1
//!   with a caller (and, in proxy mode, a callee) sending datagrams and a
//!   recorder thread draining the queue, and counts everything the worker
//!   thread does.
//!
//! Each kind is warmed up first (lazy statics, first touches of tables
//! and thread-locals, buffers growing to their high-water mark); after
//! that the count must be exactly zero, and a failure names each kind
//! that allocated, how often and how many bytes.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use kuzet_dataplane::handler::Mode;
use kuzet_dataplane::metrics::{Counter, Metrics};
use kuzet_dataplane::records::{Read, RecordRing};
use kuzet_dataplane::transport::{udp, Connections};
use kuzet_dataplane::trunks::TrunkMap;
use kuzet_dataplane::{Handler, Outcome, Settings};
use kuzet_net::alloc_count::{self, Allocations, CountingAlloc};
use kuzet_rules::ruleset::{Decision, ListPolicy, RuleSet};
use kuzet_rules::{ListBuilder, ListId, ListSet, NumberingPlan, TrunkKind};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Calls of each kind before counting starts.
const WARM: usize = 200;
/// Calls of each kind counted, on the test thread.
const CALLS: usize = 2_000;
/// The same over real sockets (each call is a round trip or more).
const SOCKET_WARM: usize = 100;
const SOCKET_CALLS: usize = 1_000;

/// The shipped rule file: every kind of rule, escalation included.
const RULES: &str = include_str!("../../../deploy/rules/default.toml");

// --- numbers ----------------------------------------------------------------
//
// Kazakhstani numbers, +7 and ten digits: a three-digit code and seven
// digits from a call's index, so each call brings numbers never seen.

fn number(code: &str, i: usize) -> String {
    format!("+7{code}{:07}", i % 10_000_000)
}

/// Callers nobody lists (mobile 701).
fn allowed_caller(i: usize) -> String {
    number("701", i)
}
/// Callers on the blocklist, one exact entry each (mobile 702).
fn blocked_caller(i: usize) -> String {
    number("702", i)
}
/// Callers under the flaglist's prefix +7705.
fn flagged_caller(i: usize) -> String {
    number("705", i)
}
/// Callees: Almaty numbers seven apart, so no caller dials a run.
fn callee(i: usize) -> String {
    number("727", i * 7)
}
/// Callees under the premium list's prefix +7760.
fn premium_callee(i: usize) -> String {
    number("760", i)
}
/// Ten busy callers (mobile 707): each calls many numbers in a minute, so
/// the velocity and fan-out rules (shadow in the shipped file) fire and
/// count escalations.
fn busy_caller(i: usize) -> String {
    number("707", i % 10)
}

/// Blocked callers in the blocklist: more than any test uses.
const BLOCKED: usize = 40_000;

/// The snapshot: the shipped rules over a blocklist, a flaglist and a
/// premium list.
fn snapshot(plan: &NumberingPlan) -> ListSet {
    let rules = RuleSet::from_toml_str(
        RULES,
        "deploy/rules/default.toml",
        plan,
        &ListPolicy::default(),
    )
    .expect("the shipped rule file loads");
    let mut block = ListBuilder::new(plan);
    let mut text = String::new();
    for i in 0..BLOCKED {
        let _ = writeln!(text, "{},fraud desk report {}", blocked_caller(i), i % 50);
    }
    block.add_text("block.txt", &text).unwrap();
    let mut flag = ListBuilder::new(plan);
    flag.add_text("flag.txt", "+7705*,complaints\n").unwrap();
    let mut premium = ListBuilder::new(plan);
    premium
        .add_text("premium.txt", "+7760*,satellite premium\n")
        .unwrap();
    let mut set = ListSet::default()
        .with_list(ListId::Block, block.finish())
        .with_list(ListId::Flag, flag.finish())
        .with_list(ListId::Premium, premium.finish())
        .with_rules(rules);
    set.generation = 1;
    set
}

/// A handler as kuzet builds one, with its record queue. The fail-open
/// budget is long: a debug build on a busy machine must not let a call
/// through unscored, which would skip the very path measured (checked:
/// `failopen_overload_total` stays 0).
fn handler(mode: Mode, via: SocketAddr, next_hop: SocketAddr) -> (Arc<Handler>, Arc<RecordRing>) {
    let plan = NumberingPlan::kazakhstan();
    let set = snapshot(&plan);
    let metrics = Arc::new(Metrics::default());
    metrics.lists_loaded(&set, 0);
    let nets = [
        "10.0.0.0/8".parse().unwrap(),
        "127.0.0.0/8".parse().unwrap(),
    ];
    let settings = Settings {
        mode,
        via_address: via,
        plan,
        trunks: TrunkMap::new([("lab", TrunkKind::Domestic, &nets[..], true)]),
        failopen_budget: Duration::from_secs(30),
        next_hop: Some(next_hop),
        max_tracked_numbers: 100_000,
        max_transactions: 100_000,
        record_allowed_every: 100,
        appeal_contact: Some("+77272000000".into()),
        ..Settings::default()
    };
    // Drained after every round of calls, as the recorder would: it
    // wraps round many times.
    let ring = Arc::new(RecordRing::in_memory(8 << 20, 10).unwrap());
    // Answered calls go to the Centre's queue, as with [nbank] set: its
    // room is made here, so handing an event over allocates nothing. The
    // receiver is kept for the whole test (nobody drains it: a full queue
    // drops and counts, which allocates nothing either).
    let (answers, rx) = std::sync::mpsc::sync_channel(1 << 16);
    std::mem::forget(rx);
    let h = Handler::new(settings, Arc::new(ArcSwap::from_pointee(set)), metrics)
        .with_records(ring.clone())
        .with_answers(answers);
    (Arc::new(h), ring)
}

// --- messages -----------------------------------------------------------------

/// A new call's INVITE from `client`: From `from`, PAI `pai`, to `to`, with
/// a small SDP body.
fn invite(client: SocketAddr, host: &str, from: &str, pai: &str, to: &str, tag: &str) -> Vec<u8> {
    let sdp = format!(
        "v=0\r\no=- {tag} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio 40000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n",
        ip = client.ip()
    );
    format!(
        "INVITE sip:{to}@{host} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {client};branch=z9hG4bK{tag};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Caller\" <sip:{from}@{host}>;tag=f{tag}\r\n\
         To: <sip:{to}@{host}>\r\n\
         Call-ID: {tag}@alloc.test\r\n\
         CSeq: 1 INVITE\r\n\
         P-Asserted-Identity: <sip:{pai}@{host}>\r\n\
         Contact: <sip:{from}@{client}>\r\n\
         User-Agent: alloc-test\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

/// Where a dialog's requests go: from the caller at `client`, through
/// kuzet, to the callee at `uas`.
#[derive(Clone, Copy)]
struct Ends {
    client: SocketAddr,
    kuzet: SocketAddr,
    uas: SocketAddr,
}

/// A request inside the dialog `tag` (an ACK or a BYE from the caller),
/// with kuzet's Route.
fn in_dialog(method: &str, cseq: u32, ends: Ends, from: &str, to: &str, tag: &str) -> Vec<u8> {
    let Ends {
        client,
        kuzet: route,
        uas,
    } = ends;
    format!(
        "{method} sip:{to}@{uas} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {client};branch=z9hG4bK{method}{tag};rport\r\n\
         Route: <sip:{route};lr>\r\n\
         Max-Forwards: 70\r\n\
         From: \"Caller\" <sip:{from}@lab>;tag=f{tag}\r\n\
         To: <sip:{to}@lab>;tag=t{tag}\r\n\
         Call-ID: {tag}@alloc.test\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The callee's answer to a request kuzet forwarded: its Via, From, To
/// (tagged), Call-ID, CSeq and Record-Route, and a Contact at `uas`.
fn answer(forwarded: &[u8], status: &str, tag: &str, uas: SocketAddr) -> Vec<u8> {
    let text = std::str::from_utf8(forwarded).expect("forwarded as text");
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in head.split("\r\n").skip(1) {
        let name = line.split(':').next().unwrap_or_default().trim();
        match name.to_ascii_lowercase().as_str() {
            "via" | "from" | "call-id" | "cseq" | "record-route" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "to" if line.contains(";tag=") => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "to" => {
                let _ = write!(out, "{line};tag=t{tag}\r\n");
            }
            _ => {}
        }
    }
    let _ = write!(
        out,
        "Contact: <sip:callee@{uas}>\r\nServer: alloc-test\r\nContent-Length: 0\r\n\r\n"
    );
    out.into_bytes()
}

/// An INVITE `total` bytes long, padded by a parameter on From (a header
/// every answer copies) and with nothing an answer leaves out: an answer
/// with kuzet's headers, or the request forwarded with kuzet's, no longer
/// fits a datagram.
fn oversized(client: SocketAddr, from: &str, to: &str, tag: &str, total: usize) -> Vec<u8> {
    let msg = format!(
        "INVITE sip:{to}@lab SIP/2.0\r\n\
         Via: SIP/2.0/UDP {client};branch=z9hG4bK{tag};rport\r\n\
         From: <sip:{from}@lab>;tag=f{tag}\r\n\
         To: <sip:{to}@lab>\r\n\
         Call-ID: {tag}@alloc.test\r\n\
         CSeq: 1 INVITE\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let text = msg;
    let at = text.find("\r\nTo: ").expect("a To line");
    let pad = total.saturating_sub(text.len() + ";pad=".len());
    let mut out = text[..at].to_string();
    out.push_str(";pad=");
    out.extend(std::iter::repeat_n('a', pad));
    out.push_str(&text[at..]);
    assert_eq!(out.len(), total);
    out.into_bytes()
}

/// How long an oversized request is: its answer, with kuzet's headers,
/// no longer fits a datagram; cut down to what RFC 3261 requires, it
/// does.
const OVERSIZED: usize = 65_450;
/// Oversized requests go in every second round only: 64 KiB a call is
/// slow to hash and record in a debug build (still 100 warm-up calls and
/// 1,000 counted).
const OVERSIZED_EVERY: usize = 2;

fn contains(hay: &[u8], needle: &str) -> bool {
    memchr::memmem::find(hay, needle.as_bytes()).is_some()
}

/// A message as text for a failure, long runs of padding cut.
fn show(b: &[u8]) -> String {
    let text = String::from_utf8_lossy(b);
    let mut out = String::new();
    for line in text.split("\r\n") {
        if line.len() > 300 {
            let _ = writeln!(out, "{}... ({} bytes)", &line[..200], line.len());
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

// --- counting -----------------------------------------------------------------

/// One kind of call: how many were warm-up and counted, and what each
/// phase allocated.
struct Tally {
    kind: &'static str,
    warm_calls: usize,
    warm: Allocations,
    calls: usize,
    counted: Allocations,
    /// The first counted call that allocated: its index (none when only
    /// a phase's total is known) and count.
    first: Option<(Option<usize>, Allocations)>,
}

impl Tally {
    fn new(kind: &'static str) -> Tally {
        Tally {
            kind,
            warm_calls: 0,
            warm: Allocations::default(),
            calls: 0,
            counted: Allocations::default(),
            first: None,
        }
    }

    fn add(&mut self, warm: bool, used: Allocations) {
        if warm {
            self.warm_calls += 1;
            self.warm.add(used);
        } else {
            if used.count > 0 && self.first.is_none() {
                self.first = Some((Some(self.calls), used));
            }
            self.calls += 1;
            self.counted.add(used);
        }
    }
}

/// A table of every kind, and whether all counted calls allocated nothing.
fn report(title: &str, tallies: &[Tally]) -> (String, bool) {
    let mut s = format!(
        "{title}\n{:<44} {:>6} {:>10} {:>12} {:>6} {:>8} {:>8}\n",
        "kind", "warm", "allocs", "bytes", "calls", "allocs", "bytes"
    );
    let mut clean = true;
    for t in tallies {
        let _ = write!(
            s,
            "{:<44} {:>6} {:>10} {:>12} {:>6} {:>8} {:>8}",
            t.kind,
            t.warm_calls,
            t.warm.count,
            t.warm.bytes,
            t.calls,
            t.counted.count,
            t.counted.bytes
        );
        match t.first {
            Some((Some(at), a)) => {
                let _ = write!(
                    s,
                    "   <- ALLOCATES: first at counted call {at} ({} allocs, {} bytes)",
                    a.count, a.bytes
                );
            }
            Some((None, _)) => s.push_str("   <- ALLOCATES"),
            None => {}
        }
        s.push('\n');
        clean &= t.counted.count == 0 && t.calls > 0;
    }
    (s, clean)
}

/// The counter really counts: a test that measured nothing must not pass.
fn the_allocator_counts() {
    let before = alloc_count::this_thread();
    let v: Vec<u64> = std::hint::black_box(Vec::with_capacity(100));
    let used = alloc_count::this_thread().since(before);
    drop(v);
    assert!(alloc_count::installed(), "CountingAlloc is not installed");
    assert_eq!(
        used,
        Allocations {
            count: 1,
            bytes: 800
        },
        "the counting allocator missed an allocation"
    );
}

/// The recorder's part, off the measured thread or between measured
/// calls: takes what the workers put in the record queue, counts it by
/// decision, and frees its room.
#[derive(Default)]
struct Recorded {
    /// Blocks, redirects, flags, allows.
    by: [usize; 4],
}

impl Recorded {
    fn drain(&mut self, ring: &RecordRing) {
        let mut rd = ring.tail();
        loop {
            match ring.read(rd) {
                Read::Entry(Ok(e), next) => {
                    let i = match e.decision {
                        Decision::Block => 0,
                        Decision::Redirect => 1,
                        Decision::Flag => 2,
                        Decision::Allow => 3,
                    };
                    self.by[i] += 1;
                    rd = next;
                }
                Read::Skip(next) => rd = next,
                // Nothing more, or a worker still writing: later.
                Read::Empty | Read::Busy { .. } => break,
                Read::Entry(Err(e), _) => panic!("a record does not decode: {e}"),
                Read::Corrupt => panic!("the record queue is damaged at {rd}"),
            }
        }
        ring.release(rd);
    }
}

/// Which rules fired and how often, for the report; and a check that the
/// rules meant to fire did (a test of the scoring path that never reached
/// the behaviour rules would prove little).
fn fired(h: &Handler, must: &[&str]) -> String {
    let hits: Vec<(String, u64)> = h
        .metrics()
        .rule_hits()
        .iter()
        .map(|r| {
            (
                format!("{} ({})", r.id, r.mode),
                r.hits.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    for id in must {
        assert!(
            hits.iter().any(|(r, _)| r.starts_with(&format!("{id} ("))),
            "{id} never fired: {hits:?}"
        );
    }
    let mut s = String::from("rules fired:");
    for (r, n) in hits {
        let _ = write!(s, " {r} {n};");
    }
    s.push('\n');
    s
}

/// Nothing was let through unscored, nothing lost.
fn assert_scored(h: &Handler) {
    let m = h.metrics();
    for c in [
        Counter::FailOpenOverload,
        Counter::FailOpenInternal,
        Counter::StoreDropped,
    ] {
        assert_eq!(m.get(c), 0, "{c:?}");
    }
}

// --- the handler, call by call ------------------------------------------------

/// Each call handled on this thread, its allocations counted alone.
struct Direct {
    h: Arc<Handler>,
    out: Vec<u8>,
}

impl Direct {
    fn call(&mut self, t: &mut Tally, warm: bool, msg: &[u8], src: SocketAddr) -> Outcome {
        let before = alloc_count::this_thread();
        let o = self.h.handle(msg, src, None, Instant::now(), &mut self.out);
        t.add(warm, alloc_count::this_thread().since(before));
        o
    }
}

/// Checks an outcome and what was written; a message naming the kind.
fn expect(kind: &str, ok: bool, o: Outcome, out: &[u8]) {
    assert!(ok, "{kind}: unexpected {o:?}:\n{}", show(out));
}

#[test]
fn handler_allocates_nothing_per_call() {
    the_allocator_counts();
    let client: SocketAddr = "10.1.0.1:5062".parse().unwrap();
    let uas: SocketAddr = "10.2.0.1:5080".parse().unwrap();
    let kuzet: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let mut report_text = String::new();
    let mut clean = true;

    // Redirect mode.
    let (h, ring) = handler(Mode::Redirect, kuzet, uas);
    let mut rec = Recorded::default();
    let mut d = Direct {
        h: h.clone(),
        out: Vec::new(),
    };
    let mut t = [
        Tally::new("302 allowed"),
        Tally::new("302 flagged (flaglist caller)"),
        Tally::new("302 flagged (premium callee)"),
        Tally::new("302 to the desk (flaglist + From/PAI differ)"),
        Tally::new("603 blocked (blocklist caller)"),
        Tally::new("603 again (a retransmission)"),
        Tally::new("302 busy caller (shadow behaviour rules)"),
        Tally::new("302 cut down to fit a datagram"),
    ];
    let host = "lab";
    for r in 0..WARM + CALLS {
        let warm = r < WARM;
        let a = allowed_caller(r);
        let msg = invite(client, host, &a, &a, &callee(r), &format!("ra{r}"));
        let o = d.call(&mut t[0], warm, &msg, client);
        expect(
            t[0].kind,
            o == Outcome::Reply
                && d.out.starts_with(b"SIP/2.0 302")
                && contains(&d.out, "X-Kuzet-Verdict: allow"),
            o,
            &d.out,
        );
        let f = flagged_caller(r);
        let msg = invite(client, host, &f, &f, &callee(r + 1), &format!("rf{r}"));
        let o = d.call(&mut t[1], warm, &msg, client);
        expect(
            t[1].kind,
            d.out.starts_with(b"SIP/2.0 302") && contains(&d.out, "X-Kuzet-Verdict: flag;"),
            o,
            &d.out,
        );
        let a = allowed_caller(1_000_000 + r);
        let msg = invite(client, host, &a, &a, &premium_callee(r), &format!("rp{r}"));
        let o = d.call(&mut t[2], warm, &msg, client);
        expect(
            t[2].kind,
            d.out.starts_with(b"SIP/2.0 302") && contains(&d.out, "X-Kuzet-Verdict: flag;"),
            o,
            &d.out,
        );
        let f = flagged_caller(1_000_000 + r);
        let from = allowed_caller(2_000_000 + r);
        let msg = invite(client, host, &from, &f, &callee(r + 2), &format!("rr{r}"));
        let o = d.call(&mut t[3], warm, &msg, client);
        expect(
            t[3].kind,
            d.out.starts_with(b"SIP/2.0 302")
                && contains(&d.out, "Contact: <sip:antifraud@desk.example.kz>")
                && contains(&d.out, ";verdict="),
            o,
            &d.out,
        );
        let b = blocked_caller(r);
        let msg = invite(client, host, &b, &b, &callee(r + 3), &format!("rb{r}"));
        let o = d.call(&mut t[4], warm, &msg, client);
        expect(
            t[4].kind,
            d.out.starts_with(b"SIP/2.0 603") && contains(&d.out, "; verdict "),
            o,
            &d.out,
        );
        let first = d.out.clone();
        let o = d.call(&mut t[5], warm, &msg, client);
        expect(t[5].kind, d.out == first, o, &d.out);
        let busy = busy_caller(r);
        let msg = invite(
            client,
            host,
            &busy,
            &busy,
            &callee(3_000_000 + r),
            &format!("rv{r}"),
        );
        let o = d.call(&mut t[6], warm, &msg, client);
        expect(t[6].kind, d.out.starts_with(b"SIP/2.0 302"), o, &d.out);
        if r % OVERSIZED_EVERY == 0 {
            let f = flagged_caller(3_000_000 + r);
            let msg = oversized(client, &f, &callee(r + 4), &format!("rc{r}"), OVERSIZED);
            let o = d.call(&mut t[7], warm, &msg, client);
            expect(
                t[7].kind,
                d.out.starts_with(b"SIP/2.0 302")
                    && d.out.len() <= kuzet_dataplane::handler::MAX_UDP_PAYLOAD
                    && contains(&d.out, "\r\nContact: <sip:+7727")
                    && !contains(&d.out, "X-Kuzet-Verdict"),
                o,
                &d.out,
            );
        }
        rec.drain(&ring);
    }
    assert_eq!(
        h.metrics().get(Counter::RepliesTooBig),
        ((WARM + CALLS) / OVERSIZED_EVERY) as u64
    );
    assert_scored(&h);
    rec.drain(&ring);
    let [blocks, redirects, flags, _] = rec.by;
    assert_eq!(blocks, WARM + CALLS, "every block recorded");
    assert_eq!(redirects, WARM + CALLS, "every redirect recorded");
    assert!(flags >= 2 * (WARM + CALLS), "flags recorded: {flags}");
    let (text, ok) = report("redirect mode, Handler::handle on the test thread:", &t);
    report_text.push_str(&text);
    report_text.push_str(&fired(
        &h,
        &[
            "blocklist",
            "flaglist",
            "premium_destination",
            "from_pai_mismatch",
            "velocity_1m",
            "fan_out_1h",
        ],
    ));
    clean &= ok;

    // Proxy mode.
    let (h, ring) = handler(Mode::Proxy, kuzet, uas);
    let mut rec = Recorded::default();
    let mut d = Direct {
        h: h.clone(),
        out: Vec::new(),
    };
    let mut t = [
        Tally::new("INVITE allowed, forwarded"),
        Tally::new("INVITE flagged, forwarded with verdict"),
        Tally::new("INVITE to the desk, Request-URI rewritten"),
        Tally::new("INVITE blocked, 603"),
        Tally::new("INVITE busy caller, forwarded"),
        Tally::new("180 routed back by kuzet's Via"),
        Tally::new("200 routed back (call answered)"),
        Tally::new("ACK in dialog, routed unscored"),
        Tally::new("BYE in dialog, routed unscored (call ends)"),
        Tally::new("200 to BYE routed back"),
        Tally::new("INVITE too big to forward, 513"),
    ];
    let ends = Ends { client, kuzet, uas };
    let forwarded = |o: Outcome| o == Outcome::Forward(uas);
    let back = |o: Outcome| o == Outcome::Forward(client);
    for r in 0..WARM + CALLS {
        let warm = r < WARM;
        let (a, b, tag) = (allowed_caller(r), callee(r), format!("pa{r}"));
        let msg = invite(client, host, &a, &a, &b, &tag);
        let o = d.call(&mut t[0], warm, &msg, client);
        expect(
            t[0].kind,
            forwarded(o)
                && contains(&d.out, "Record-Route: <sip:127.0.0.1:5060;lr>")
                && !contains(&d.out, "X-Kuzet-Verdict"),
            o,
            &d.out,
        );
        let fwd_invite = d.out.clone();

        let f = flagged_caller(r);
        let msg = invite(client, host, &f, &f, &callee(r + 1), &format!("pf{r}"));
        let o = d.call(&mut t[1], warm, &msg, client);
        expect(
            t[1].kind,
            forwarded(o) && contains(&d.out, "X-Kuzet-Verdict: flag;"),
            o,
            &d.out,
        );
        let f = flagged_caller(1_000_000 + r);
        let from = allowed_caller(2_000_000 + r);
        let msg = invite(client, host, &from, &f, &callee(r + 2), &format!("pr{r}"));
        let o = d.call(&mut t[2], warm, &msg, client);
        expect(
            t[2].kind,
            forwarded(o)
                && d.out
                    .starts_with(b"INVITE sip:antifraud@desk.example.kz SIP/2.0")
                && contains(&d.out, "X-Kuzet-Verdict: redirect;"),
            o,
            &d.out,
        );
        let bl = blocked_caller(r);
        let msg = invite(client, host, &bl, &bl, &callee(r + 3), &format!("pb{r}"));
        let o = d.call(&mut t[3], warm, &msg, client);
        expect(
            t[3].kind,
            o == Outcome::Reply && d.out.starts_with(b"SIP/2.0 603"),
            o,
            &d.out,
        );
        let busy = busy_caller(r);
        let msg = invite(
            client,
            host,
            &busy,
            &busy,
            &callee(3_000_000 + r),
            &format!("pv{r}"),
        );
        let o = d.call(&mut t[4], warm, &msg, client);
        expect(t[4].kind, forwarded(o), o, &d.out);

        // The allowed call's dialog, through kuzet both ways.
        let msg = answer(&fwd_invite, "180 Ringing", &tag, uas);
        let o = d.call(&mut t[5], warm, &msg, uas);
        expect(
            t[5].kind,
            back(o) && d.out.starts_with(b"SIP/2.0 180"),
            o,
            &d.out,
        );
        let msg = answer(&fwd_invite, "200 OK", &tag, uas);
        let o = d.call(&mut t[6], warm, &msg, uas);
        expect(
            t[6].kind,
            back(o) && d.out.starts_with(b"SIP/2.0 200"),
            o,
            &d.out,
        );
        let msg = in_dialog("ACK", 1, ends, &a, &b, &tag);
        let o = d.call(&mut t[7], warm, &msg, client);
        expect(
            t[7].kind,
            forwarded(o) && d.out.starts_with(b"ACK "),
            o,
            &d.out,
        );
        let msg = in_dialog("BYE", 2, ends, &a, &b, &tag);
        let o = d.call(&mut t[8], warm, &msg, client);
        expect(
            t[8].kind,
            forwarded(o) && d.out.starts_with(b"BYE "),
            o,
            &d.out,
        );
        let msg = answer(&d.out.clone(), "200 OK", &tag, uas);
        let o = d.call(&mut t[9], warm, &msg, uas);
        expect(
            t[9].kind,
            back(o) && d.out.starts_with(b"SIP/2.0 200"),
            o,
            &d.out,
        );
        if r % OVERSIZED_EVERY == 0 {
            let a = allowed_caller(4_000_000 + r);
            let msg = oversized(client, &a, &callee(r + 5), &format!("pc{r}"), OVERSIZED);
            let o = d.call(&mut t[10], warm, &msg, client);
            expect(
                t[10].kind,
                o == Outcome::Reply && d.out.starts_with(b"SIP/2.0 513"),
                o,
                &d.out,
            );
        }
        rec.drain(&ring);
    }
    assert_scored(&h);
    let m = h.metrics();
    assert_eq!(m.get(Counter::ResponsesRouted), 3 * (WARM + CALLS) as u64);
    assert_eq!(m.get(Counter::InDialogForwarded), 2 * (WARM + CALLS) as u64);
    rec.drain(&ring);
    let [blocks, redirects, _, _] = rec.by;
    assert_eq!(blocks, WARM + CALLS, "every block recorded");
    assert_eq!(redirects, WARM + CALLS, "every redirect recorded");
    let (text, ok) = report("proxy mode, Handler::handle on the test thread:", &t);
    report_text.push_str(&text);
    report_text.push_str(&fired(
        &h,
        &["blocklist", "flaglist", "velocity_1m", "fan_out_1h"],
    ));
    clean &= ok;

    println!("{report_text}");
    assert!(
        clean,
        "the call path allocated after warm-up:\n{report_text}"
    );
}

// --- the real UDP worker ------------------------------------------------------

/// A UDP worker under `supervise` on its own thread, every allocation on
/// that thread counted in `alloc_count::watched`.
struct Worker {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

/// The recorder: a thread of its own draining the record queue while the
/// worker fills it.
struct Recorder {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Recorded>,
}

impl Recorder {
    fn start(ring: Arc<RecordRing>) -> Recorder {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rec = Recorded::default();
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                rec.drain(&ring);
                std::thread::sleep(Duration::from_millis(2));
            }
            rec.drain(&ring);
            rec
        });
        Recorder { stop, thread }
    }

    /// What it recorded, by decision, once the worker has stopped.
    fn stop(self) -> [usize; 4] {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap().by
    }
}

/// A socket on 127.0.0.1 for the worker: bound, with kernel receive
/// stamps, as kuzet binds its own.
fn worker_socket() -> UdpSocket {
    let s = kuzet_net::bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
    kuzet_net::enable_rx_timestamps(&s).unwrap();
    s
}

fn start(sock: UdpSocket, h: Arc<Handler>) -> Worker {
    let addr = sock.local_addr().unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("alloc-udp".into())
        .spawn(move || {
            alloc_count::watch_this_thread();
            udp::supervise(sock, h, 64, Connections::default(), shutdown, "alloc-udp");
        })
        .unwrap();
    Worker { addr, stop, thread }
}

/// The worker's count once it has gone back to sleep: a little after the
/// last answer it sent, it is in `recvmmsg` again.
fn settled() -> Allocations {
    std::thread::sleep(Duration::from_millis(30));
    alloc_count::watched()
}

/// A client socket on 127.0.0.1.
fn peer() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends `msg` from `from` to `to` and waits for the datagram `at`
/// receives.
fn exchange(from: &UdpSocket, to: SocketAddr, msg: &[u8], at: &UdpSocket) -> Vec<u8> {
    from.send_to(msg, to).unwrap();
    let mut buf = vec![0u8; 65_536];
    let n = at
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no datagram for:\n{}\n{e}", show(msg)));
    buf.truncate(n);
    buf
}

/// One phase over sockets: `calls` calls of one kind, each sent and its
/// datagram awaited, then the worker's count once it settles.
fn phase(t: &mut Tally, warm: bool, calls: usize, mut one: impl FnMut(usize)) {
    let before = settled();
    for i in 0..calls {
        one(i);
    }
    let used = settled().since(before);
    if warm {
        t.warm_calls += calls;
        t.warm.add(used);
    } else {
        if used.count > 0 {
            t.first = Some((None, used));
        }
        t.calls += calls;
        t.counted.add(used);
    }
}

#[test]
fn udp_worker_allocates_nothing_per_call() {
    the_allocator_counts();
    let mut report_text = String::new();
    let mut clean = true;
    let client = peer();
    let uas = peer();
    let client_addr = client.local_addr().unwrap();
    let uas_addr = uas.local_addr().unwrap();

    // Redirect mode: the caller sends INVITEs, the worker answers.
    let sock = worker_socket();
    let kuzet = sock.local_addr().unwrap();
    let (h, ring) = handler(Mode::Redirect, kuzet, uas_addr);
    let recorder = Recorder::start(ring);
    let before = alloc_count::watched();
    let w = start(sock, h.clone());
    let started = settled().since(before);
    let mut t = [
        Tally::new("302 allowed"),
        Tally::new("302 flagged (flaglist caller)"),
        Tally::new("302 to the desk"),
        Tally::new("603 blocked"),
    ];
    let mut next = 0usize;
    for (warm, calls) in [(true, SOCKET_WARM), (false, SOCKET_CALLS)] {
        let base = next;
        phase(&mut t[0], warm, calls, |i| {
            let a = allowed_caller(500_000 + base + i);
            let msg = invite(
                client_addr,
                "lab",
                &a,
                &a,
                &callee(base + i),
                &format!("sa{base}-{i}"),
            );
            let got = exchange(&client, w.addr, &msg, &client);
            assert!(got.starts_with(b"SIP/2.0 302"), "{}", show(&got));
        });
        phase(&mut t[1], warm, calls, |i| {
            let f = flagged_caller(500_000 + base + i);
            let msg = invite(
                client_addr,
                "lab",
                &f,
                &f,
                &callee(base + i),
                &format!("sf{base}-{i}"),
            );
            let got = exchange(&client, w.addr, &msg, &client);
            assert!(contains(&got, "X-Kuzet-Verdict: flag;"), "{}", show(&got));
        });
        phase(&mut t[2], warm, calls, |i| {
            let f = flagged_caller(1_500_000 + base + i);
            let from = allowed_caller(2_500_000 + base + i);
            let msg = invite(
                client_addr,
                "lab",
                &from,
                &f,
                &callee(base + i),
                &format!("sr{base}-{i}"),
            );
            let got = exchange(&client, w.addr, &msg, &client);
            assert!(
                contains(&got, "Contact: <sip:antifraud@desk.example.kz>"),
                "{}",
                show(&got)
            );
        });
        phase(&mut t[3], warm, calls, |i| {
            let b = blocked_caller(10_000 + base + i);
            let msg = invite(
                client_addr,
                "lab",
                &b,
                &b,
                &callee(base + i),
                &format!("sb{base}-{i}"),
            );
            let got = exchange(&client, w.addr, &msg, &client);
            assert!(
                got.starts_with(b"SIP/2.0 603") && contains(&got, "; verdict "),
                "{}",
                show(&got)
            );
        });
        next += calls;
    }
    let _ = w.stop.send(true);
    w.thread.join().unwrap();
    let [blocks, redirects, _, _] = recorder.stop();
    assert_scored(&h);
    assert_eq!(blocks, SOCKET_WARM + SOCKET_CALLS, "every block recorded");
    assert_eq!(redirects, SOCKET_WARM + SOCKET_CALLS);
    let (text, ok) = report("redirect mode, the UDP worker over 127.0.0.1:", &t);
    report_text.push_str(&text);
    let _ = writeln!(
        report_text,
        "worker start-up (batches, buffers): {} allocs, {} bytes",
        started.count, started.bytes
    );
    clean &= ok;

    // Proxy mode: the caller's INVITEs reach the callee through kuzet, the
    // callee's answers come back by kuzet's Via, and the caller's ACK and
    // BYE follow kuzet's Record-Route.
    let sock = worker_socket();
    let kuzet = sock.local_addr().unwrap();
    let (h, ring) = handler(Mode::Proxy, kuzet, uas_addr);
    let ends = Ends {
        client: client_addr,
        kuzet,
        uas: uas_addr,
    };
    let recorder = Recorder::start(ring);
    let before = alloc_count::watched();
    let w = start(sock, h.clone());
    let started = settled().since(before);
    let mut t = [
        Tally::new("INVITE allowed, forwarded"),
        Tally::new("INVITE flagged, forwarded with verdict"),
        Tally::new("INVITE blocked, 603"),
        Tally::new("200 routed back (call answered)"),
        Tally::new("ACK in dialog, routed unscored"),
        Tally::new("BYE in dialog, routed unscored"),
        Tally::new("200 to BYE routed back"),
    ];
    let mut next = 0usize;
    for (warm, calls) in [(true, SOCKET_WARM), (false, SOCKET_CALLS)] {
        let base = next;
        let tag = |i: usize| format!("sp{base}-{i}");
        let mut invites = Vec::with_capacity(calls);
        phase(&mut t[0], warm, calls, |i| {
            let a = allowed_caller(700_000 + base + i);
            let msg = invite(client_addr, "lab", &a, &a, &callee(base + i), &tag(i));
            let got = exchange(&client, w.addr, &msg, &uas);
            let rr = format!("Record-Route: <sip:{kuzet};lr>");
            assert!(
                got.starts_with(b"INVITE ") && contains(&got, &rr),
                "{}",
                show(&got)
            );
            invites.push(got);
        });
        phase(&mut t[1], warm, calls, |i| {
            let f = flagged_caller(700_000 + base + i);
            let msg = invite(
                client_addr,
                "lab",
                &f,
                &f,
                &callee(base + i),
                &format!("spf{base}-{i}"),
            );
            let got = exchange(&client, w.addr, &msg, &uas);
            assert!(contains(&got, "X-Kuzet-Verdict: flag;"), "{}", show(&got));
        });
        phase(&mut t[2], warm, calls, |i| {
            let b = blocked_caller(20_000 + base + i);
            let msg = invite(
                client_addr,
                "lab",
                &b,
                &b,
                &callee(base + i),
                &format!("spb{base}-{i}"),
            );
            let got = exchange(&client, w.addr, &msg, &client);
            assert!(got.starts_with(b"SIP/2.0 603"), "{}", show(&got));
        });
        phase(&mut t[3], warm, calls, |i| {
            let msg = answer(&invites[i], "200 OK", &tag(i), uas_addr);
            let got = exchange(&uas, w.addr, &msg, &client);
            assert!(got.starts_with(b"SIP/2.0 200"), "{}", show(&got));
        });
        let (ab, b) = (
            |i: usize| allowed_caller(700_000 + base + i),
            |i: usize| callee(base + i),
        );
        phase(&mut t[4], warm, calls, |i| {
            let msg = in_dialog("ACK", 1, ends, &ab(i), &b(i), &tag(i));
            let got = exchange(&client, w.addr, &msg, &uas);
            assert!(got.starts_with(b"ACK "), "{}", show(&got));
        });
        let mut byes = Vec::with_capacity(calls);
        phase(&mut t[5], warm, calls, |i| {
            let msg = in_dialog("BYE", 2, ends, &ab(i), &b(i), &tag(i));
            let got = exchange(&client, w.addr, &msg, &uas);
            assert!(got.starts_with(b"BYE "), "{}", show(&got));
            byes.push(got);
        });
        phase(&mut t[6], warm, calls, |i| {
            let msg = answer(&byes[i], "200 OK", &tag(i), uas_addr);
            let got = exchange(&uas, w.addr, &msg, &client);
            assert!(got.starts_with(b"SIP/2.0 200"), "{}", show(&got));
        });
        next += calls;
    }
    let _ = w.stop.send(true);
    w.thread.join().unwrap();
    let [blocks, _, _, _] = recorder.stop();
    assert_scored(&h);
    // Every BYE ended its call; the flagged calls, never answered, ring on.
    assert_eq!(h.calls_in_progress(), SOCKET_WARM + SOCKET_CALLS);
    assert_eq!(blocks, SOCKET_WARM + SOCKET_CALLS, "every block recorded");
    let (text, ok) = report("proxy mode, the UDP worker over 127.0.0.1:", &t);
    report_text.push_str(&text);
    let _ = writeln!(
        report_text,
        "worker start-up (batches, buffers): {} allocs, {} bytes",
        started.count, started.bytes
    );
    clean &= ok;

    println!("{report_text}");
    assert!(
        clean,
        "the UDP worker allocated after warm-up:\n{report_text}"
    );
}
