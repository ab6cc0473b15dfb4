//! Issue 20's heavy publishing tests: 10M-line pushes over gRPC,
//! generated lazily in chunks of about 256 KiB (never the whole text in
//! memory), against a running engine.
//!
//! - A bad line deep inside a 10M-line push is reported with its number,
//!   and nothing changes (the engine in-process).
//! - A 10M-entry version put in force while kuzet-sim's load driver runs,
//!   then rolled back, checked call by call (the `kuzet` binary).
//!
//! The access, approval, compare-and-set, restart and lookup tests are in
//! `publishing`.

use std::time::{Duration, Instant};

use kuzet::config::TokenConfig;
use kuzet_api::lists as pb;
use kuzet_api::lists::list_service_client::ListServiceClient;
use kuzet_control::access::hash_token;
use kuzet_rules::ListId;

use crate::common::{ask, client, invite, start, status, test_config, tokens_for, TempDir};

/// The admin's token (admin implies approver: blocking versions go live).
const TOKEN: &str = "kz_test_publish_load_admin";

/// Lines per list version pushed.
const TEN_MILLION: u64 = 10_000_000;

/// A push's chunks are about this long.
const CHUNK: usize = 256 << 10;

fn tokens() -> Vec<TokenConfig> {
    tokens_for(&[("root", "admin")], |_| TOKEN.to_string())
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

type Lists = ListServiceClient<tonic::transport::Channel>;

async fn connect(addr: std::net::SocketAddr) -> Lists {
    ListServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Writes `+7780NNNNNNN\n` for `n` < 10M, digit by digit: a padding
/// number (`+7 780`, the range kuzet-sim pads its lists with, is no
/// caller's).
fn padding_line(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"+7780");
    let mut digits = [b'0'; 7];
    let mut v = n;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'\n');
}

/// A push of `lines` lines to the blocklist, generated lazily in chunks of
/// about [`CHUNK`]: `line(i, out)` writes line `i` (from 1). The first
/// chunk names the list and whether to activate.
fn push_stream(
    activate: bool,
    lines: u64,
    line: impl Fn(u64, &mut Vec<u8>) + Send + 'static,
) -> impl tokio_stream::Stream<Item = pb::PushChunk> + Send + 'static {
    let mut next = 1u64;
    let mut first = true;
    let chunks = std::iter::from_fn(move || {
        if next > lines && !first {
            return None;
        }
        let mut data = Vec::with_capacity(CHUNK + 64);
        while next <= lines && data.len() < CHUNK {
            line(next, &mut data);
            next += 1;
        }
        let c = pb::PushChunk {
            list: if first {
                "blocklist".into()
            } else {
                String::new()
            },
            activate: first && activate,
            data,
            ..Default::default()
        };
        first = false;
        Some(c)
    });
    tokio_stream::iter(chunks)
}

/// A caller the first version blocks.
const FRAUD: &str = "+77770000001";

/// The status kuzet answers a call from `a`.
fn call_from(addr: std::net::SocketAddr, a: &str, call_id: &str) -> u16 {
    let s = client();
    let port = s.local_addr().unwrap().port();
    status(&ask(&s, addr, &invite(a, "+77010000001", call_id, port)))
}

/// Files in `dir` whose name ends in `.incoming` (uploads left behind).
fn incoming(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".incoming"))
        .collect()
}

/// v1 (one number) in force; then a push of 10M lines whose 7,654,321st
/// is not a number, asking to activate. The push fails with
/// InvalidArgument naming the line and why; the list still has v1 alone,
/// the snapshot in force is the same, the blocked caller still blocked,
/// and the upload is gone from the shelf.
#[test]
fn a_bad_line_at_7654321_of_a_10m_push_is_reported_and_nothing_changes() {
    const BAD: u64 = 7_654_321;
    let dir = TempDir::new("publish-bad-line");
    let data = dir.path().join("data");
    let mut c = test_config();
    c.store.enabled = true;
    c.store.dir = Some(data.clone());
    c.publishing.lists = vec![ListId::Block];
    c.control.tokens = tokens();
    let k = start(c);
    let addr = k.control_addr.expect("the control API is on");
    let rt = rt();
    let mut lists = rt.block_on(connect(addr));

    // v1: one number, in force.
    let v1 = rt
        .block_on(lists.push(authed(push_stream(true, 1, |_, out| {
            out.extend_from_slice(format!("{FRAUD},known fraud line\n").as_bytes())
        }))))
        .unwrap()
        .into_inner();
    assert!(v1.activated, "{v1:?}");
    assert_eq!(v1.version.as_ref().unwrap().id, "v1");
    let in_force = k.lists.load().version;
    assert_eq!(v1.snapshot, in_force.to_string());
    assert_eq!(call_from(k.udp_addr, FRAUD, "before"), 603);

    // 10M lines, the 7,654,321st not a number.
    let started = Instant::now();
    let err = rt
        .block_on(lists.push(authed(push_stream(true, TEN_MILLION, |i, out| {
            if i == BAD {
                out.extend_from_slice(b"not-a-number\n");
            } else {
                padding_line(i, out);
            }
        }))))
        .expect_err("a push with a bad line fails");
    let took = started.elapsed();
    eprintln!("the 10M push failed at line {BAD} after {took:?}");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("blocklist (pushed):{BAD}: ")),
        "{}",
        err.message()
    );
    assert!(err.message().contains("not-a-number"), "{}", err.message());
    assert!(
        err.message().contains("nothing changed"),
        "{}",
        err.message()
    );

    // Nothing changed: the versions, the snapshot, the verdicts, the shelf.
    let versions = rt
        .block_on(lists.list_versions(authed(pb::ListVersionsRequest {
            list: "blocklist".into(),
        })))
        .unwrap()
        .into_inner()
        .versions;
    let ids: Vec<(&str, bool)> = versions.iter().map(|v| (&*v.id, v.active)).collect();
    assert_eq!(ids, [("v1", true)]);
    assert_eq!(k.lists.load().version, in_force);
    assert_eq!(k.lists.load().lists[ListId::Block].exact_count(), 1);
    assert_eq!(call_from(k.udp_addr, FRAUD, "after"), 603);
    assert_eq!(call_from(k.udp_addr, "+77800000001", "padding"), 302);
    let shelf = data.join("published/lists/blocklist");
    assert_eq!(incoming(&shelf), Vec::<String>::new());
}

// ---------------------------------------------------------------------
// A 10M-entry version swapped in under load, then rolled back.

/// Distinct callers of the traffic: `+7 777 00 NNNNN`.
const CALLERS: u64 = 20_000;

/// Calls per second the traffic runs at, unless `KUZET_SWAP_RATE` says
/// otherwise. On the project's 2-core VM a debug-built kuzet records every
/// call at 5,000/s (and 10,000/s) while it parses a 10M-line push, with
/// the driver and the test beside it; at 20,000/s it answers every call
/// but its store falls behind and drops records, which this test needs.
/// Issue 20's 20,000/s: `KUZET_SWAP_RATE=20000 cargo test --release -p
/// kuzet --test it publish_load::a_10m` (a release kuzet), and
/// `benches/e2e/publish.sh`.
const RATE: u64 = 5_000;

fn rate() -> u64 {
    std::env::var("KUZET_SWAP_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(RATE)
}

/// Caller `i` of the traffic.
fn caller(i: u64) -> String {
    format!("+777700{i:05}")
}

/// Call `j`'s caller (consecutive calls come from different callers).
fn caller_of(j: u64) -> u64 {
    j * 7919 % CALLERS
}

/// v1 blocks every 4th caller.
fn in_v1(c: u64) -> bool {
    c.is_multiple_of(4)
}

/// v2 blocks every 3rd caller, among 10M entries: the rest padding.
fn in_v2(c: u64) -> bool {
    c.is_multiple_of(3)
}

/// Calls `from..from + n`: call `j` from [`caller_of`]`(j)` to
/// `+7701` and `j` in seven digits, so the callee names the call in
/// kuzet's records. One trunk, from 127.0.0.1.
fn traffic(from: u64, n: u64) -> kuzet_sim::traffic::Traffic {
    use kuzet_sim::traffic::{Behaviour, Call, EngineFiles, SourceInfo, Traffic};
    let calls = (from..from + n)
        .map(|j| Call {
            at_us: (j - from) * 100,
            source: 0,
            trunk: 0,
            a: caller(caller_of(j)),
            from: None,
            display: None,
            b: format!("+7701{j:07}"),
            behaviour: Behaviour::NoAnswer,
        })
        .collect();
    Traffic {
        calls,
        sources: vec![SourceInfo {
            name: "callers".into(),
            kind: kuzet_sim::scenario::Kind::Subscribers,
            trunk: 0,
        }],
        trunks: vec![("sim".into(), std::net::Ipv4Addr::LOCALHOST)],
        files: EngineFiles::default(),
        duration_us: n * 100,
    }
}

/// The `kuzet` binary running in a folder on ports of its own, logging
/// warnings into `kuzet.log` there; killed if the test fails.
struct Engine {
    child: crate::common::Reaped,
    udp: std::net::SocketAddr,
    control: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Engine {
    fn start(dir: &std::path::Path) -> Engine {
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let p = crate::common::free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let at = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
        let (udp, control, admin) = (at(ports[0]), at(ports[1]), at(ports[2]));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_kuzet"))
            .args(["run", "-c", "kuzet.toml", "--log", "warn"])
            .arg("--listen")
            .arg(udp.to_string())
            .arg("--control")
            .arg(control.to_string())
            .arg("--admin")
            .arg(admin.to_string())
            .current_dir(dir)
            .stdout(std::fs::File::create(dir.join("kuzet.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("kuzet.log")).unwrap())
            .spawn()
            .map(crate::common::Reaped)
            .expect("kuzet starts");
        crate::common::wait_until_answering(&client(), udp);
        Engine {
            child,
            udp,
            control,
            admin,
        }
    }

    /// SIGTERM; waits for a clean exit (the recorder commits what is
    /// queued first).
    fn stop(mut self, dir: &std::path::Path) {
        let ok = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.0.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.0.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.join("kuzet.log")).unwrap_or_default();
                assert!(
                    st.success(),
                    "kuzet exits cleanly on SIGTERM: {st:?}\n{log}"
                );
                let out = std::fs::read_to_string(dir.join("kuzet.out")).unwrap_or_default();
                eprintln!("kuzet's log:\n{log}\nkuzet's summary:\n{out}");
                return;
            }
            assert!(Instant::now() < deadline, "kuzet did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A field of /proc/PID/status, in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// What the controller did, in time from just before the traffic began.
#[derive(Debug)]
struct Swaps {
    push_started: Duration,
    push_done: Duration,
    push_wall_us: i64,
    rollback_started: Duration,
    rollback_done: Duration,
    s2: String,
    s3: String,
    rss_before_kib: u64,
    hwm_before_kib: u64,
    hwm_after_kib: u64,
}

/// Sets the flag when dropped: the controller is done, whether it
/// finished or panicked.
struct SetOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// The acceptance test of issue 20's swap under load, on the `kuzet`
/// binary with every call recorded (`record_allowed_every = 1`), so each
/// call's record names the snapshot version that judged it.
///
/// Traffic runs open loop at [`RATE`] calls/s (or `KUZET_SWAP_RATE`) from
/// 20,000 callers, in back-to-back one-second runs of kuzet-sim's load
/// driver (each run's calls all answered before the next run sends), so
/// the test lasts as long as the push needs and no longer. Once three seconds of calls are judged, a 10M-
/// entry v2 (every 3rd caller and padding, generated lazily) is pushed
/// with activate; three seconds of calls after it is in force, it is
/// rolled back to v1 (every 4th caller); three more seconds of traffic.
/// Then, call by call: every INVITE answered; each call's answer is the
/// one its judging snapshot's list gives (v1, v2, or v1 again: no other
/// snapshot ever judged a call); the versions follow each other in send
/// order (one trunk socket reaches one kuzet worker); every call sent
/// after the push was answered is v2's, every call sent after the
/// rollback answered is v1's, and each caller's verdict after the
/// rollback is the one v1 gave that caller before the swap.
#[test]
fn a_10m_version_swapped_in_under_load_loses_no_call_and_rollback_restores() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use kuzet_sim::driver::{self, Options, Pace};
    let rate = rate();
    let dir = TempDir::new("publish-swap");
    dir.write(
        "rules.toml",
        "[thresholds]\nflag = 40\nblock = 100\n[[rule]]\nid = \"blocklist\"\nkind = \"list\"\nlist = \"blocklist\"\nscore = 100\n",
    );
    dir.write(
        "kuzet.toml",
        &format!(
            // A fail-open budget a hundred times the default: a call
            // kuzet cannot judge within it is let through unjudged (and
            // unrecorded), and on the VM shared with parallel tests and
            // builds a debug kuzet did so at 5,000/s, swap or not (30
            // and 338 calls in two runs at load averages 5-7).
            "[verdict]\nfailopen_budget_us = 5000000\n\
             [rules]\nfile = \"rules.toml\"\n\
             [store]\ndir = \"data\"\nrecord_allowed_every = 1\nqueue_mb = 256\n\
             [publishing]\nlists = [\"blocklist\"]\n\
             [[control.tokens]]\nname = \"root\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            hash_token(TOKEN)
        ),
    );
    let k = Engine::start(dir.path());
    let rt = rt();
    let v1 = rt
        .block_on(async {
            let mut lists = connect(k.control).await;
            lists
                .push(authed(push_stream(true, CALLERS / 4, |i, out| {
                    out.extend_from_slice(caller((i - 1) * 4).as_bytes());
                    out.extend_from_slice(b",v1\n");
                })))
                .await
        })
        .unwrap()
        .into_inner();
    assert!(v1.activated, "{v1:?}");
    let s1 = v1.snapshot.clone();

    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    // The traffic: one-second runs until three after the controller is done.
    let driver = {
        let (udp, done) = (k.udp, done.clone());
        std::thread::spawn(move || {
            let mut results = Vec::new();
            // (first call, when its run began) of each run.
            let mut runs: Vec<(u64, Duration)> = Vec::new();
            let mut stats: Option<driver::RunStats> = None;
            let mut after = 0;
            while after < 3 {
                if done.load(Ordering::Acquire) {
                    after += 1;
                }
                let from = results.len() as u64;
                assert!(
                    from < 600 * rate,
                    "ten minutes of traffic and the controller still runs"
                );
                let t = traffic(from, rate);
                let mut o = Options::new(udp, rate as usize);
                o.pace = Pace::Rate(rate as f64);
                o.t1 = Duration::from_millis(200);
                o.timeout = Duration::from_secs(10);
                runs.push((from, started.elapsed()));
                let (r, st) = driver::drive(&t, o).unwrap();
                results.extend(r);
                match &mut stats {
                    None => stats = Some(st),
                    Some(s) => {
                        s.sent += st.sent;
                        s.answered += st.answered;
                        s.timeouts += st.timeouts;
                        s.retransmissions += st.retransmissions;
                        s.latency.add(&st.latency).unwrap();
                    }
                }
            }
            (results, runs, stats.unwrap())
        })
    };

    // The swap and the rollback, each triggered by the run's progress.
    let controller = {
        let (control, admin, pid) = (k.control, k.admin, k.child.0.id());
        std::thread::spawn(move || {
            use crate::sipp::invites_judged;
            let _done = SetOnDrop(done);
            let rt = self::rt();
            let judged = |n: u64, what: &str| {
                crate::common::wait(what, || {
                    let j = invites_judged(admin);
                    (j >= n).then_some(j)
                })
            };
            judged(3 * rate, "three seconds of calls judged");
            let (rss_before_kib, hwm_before_kib) =
                (proc_kib(pid, "VmRSS:"), proc_kib(pid, "VmHWM:"));
            let v2: Vec<u64> = (0..CALLERS).filter(|c| in_v2(*c)).collect();
            let padding = TEN_MILLION - v2.len() as u64;
            let push_wall_us = unix_us();
            let push_started = started.elapsed();
            // Connected now: kuzet closes a connection that asks nothing
            // within 5 s.
            let r = rt
                .block_on(async {
                    let mut lists = connect(control).await;
                    let chunks = push_stream(true, TEN_MILLION, move |i, out| {
                        let i = i - 1;
                        if i < padding {
                            padding_line(i, out);
                        } else {
                            out.extend_from_slice(caller(v2[(i - padding) as usize]).as_bytes());
                            out.extend_from_slice(b",v2\n");
                        }
                    });
                    lists.push(authed(chunks)).await
                })
                .unwrap()
                .into_inner();
            let push_done = started.elapsed();
            let hwm_after_kib = proc_kib(pid, "VmHWM:");
            assert!(r.activated, "{r:?}");
            let v = r.version.as_ref().unwrap();
            assert_eq!((&*v.id, v.exact), ("v2", TEN_MILLION));
            judged(
                invites_judged(admin) + 3 * rate,
                "three seconds of calls judged under v2",
            );
            let rollback_started = started.elapsed();
            let rb = rt
                .block_on(async {
                    let mut lists = connect(control).await;
                    lists
                        .rollback(authed(pb::RollbackRequest {
                            list: "blocklist".into(),
                            expect: "v2".into(),
                        }))
                        .await
                })
                .unwrap()
                .into_inner();
            let rollback_done = started.elapsed();
            assert_eq!(rb.version.as_ref().unwrap().id, "v1");
            Swaps {
                push_started,
                push_done,
                push_wall_us,
                rollback_started,
                rollback_done,
                s2: r.snapshot,
                s3: rb.snapshot,
                rss_before_kib,
                hwm_before_kib,
                hwm_after_kib,
            }
        })
    };
    let sw = controller.join();
    let (results, runs, stats) = driver.join().unwrap();
    let sw = sw.expect("the swap and the rollback ran mid-run");
    k.stop(dir.path());
    let total = results.len() as u64;
    eprintln!(
        "{total} calls at {rate}/s in {} runs: answered {}, timeouts {}, retransmissions {}; latency p50 {} us, p99 {} us, max {} us",
        runs.len(),
        stats.answered,
        stats.timeouts,
        stats.retransmissions,
        stats.latency.value_at_quantile(0.5),
        stats.latency.value_at_quantile(0.99),
        stats.latency.max()
    );
    eprintln!(
        "10M push to in force under load: {:?}; rollback {:?}; kuzet RSS before {} MiB, peak before {} MiB, peak after the swap {} MiB",
        sw.push_done - sw.push_started,
        sw.rollback_done - sw.rollback_started,
        sw.rss_before_kib >> 10,
        sw.hwm_before_kib >> 10,
        sw.hwm_after_kib >> 10
    );

    // No call lost: every INVITE answered, none after a timeout.
    assert_eq!(
        (stats.sent, stats.answered, stats.timeouts),
        (total, total, 0)
    );
    // When call `j` was due: it went out no earlier.
    let sched = |j: u64| {
        let (from, at) = runs[runs.partition_point(|(f, _)| *f <= j) - 1];
        at + Duration::from_secs_f64((j - from) as f64 / rate as f64)
    };

    // Which snapshot judged each call: its record names it.
    let conn = kuzet_store::open_reader(&dir.path().join("data")).unwrap();
    let mut judged: Vec<Option<(String, String, i64, String)>> = vec![None; total as usize];
    let mut records = 0u64;
    kuzet_store::query::export(&conn, &Default::default(), |r| {
        records += 1;
        let j: usize =
            r.b.as_deref()
                .and_then(|b| b.strip_prefix("+7701"))
                .and_then(|j| j.parse().ok())
                .unwrap_or_else(|| panic!("a call the driver did not make: {:?}", r.b));
        // Newest first: a call judged twice keeps its first judgement.
        judged[j] = Some((
            r.lists_version,
            r.decision,
            r.ts_us,
            r.a.unwrap_or_default(),
        ));
        true
    })
    .unwrap();
    assert_eq!(records, total, "one record a call");
    let seq_of = |v: &str| v.split('.').next().unwrap().parse::<u64>().unwrap();
    assert!(
        seq_of(&s1) < seq_of(&sw.s2) && seq_of(&sw.s2) < seq_of(&sw.s3),
        "{s1} {sw:?}"
    );
    // Per snapshot (v1, v2, v1 again): calls judged, and of those the ones
    // whose caller v1 and v2 judge apart.
    let mut count = [0u64; 3];
    let mut telling = [0u64; 3];
    // The answer v1 gave each caller before the swap.
    let mut under_v1: Vec<Option<u16>> = vec![None; CALLERS as usize];
    let mut compared = 0u64;
    let mut last_seq = 0;
    for (j, (rec, res)) in judged.iter().zip(&results).enumerate() {
        let j = j as u64;
        let (version, decision, ts_us, a) = rec
            .as_ref()
            .unwrap_or_else(|| panic!("call {j} not recorded"));
        let c = caller_of(j);
        assert_eq!(*a, caller(c), "call {j}");
        let (which, blocked) = if *version == s1 {
            (0, in_v1(c))
        } else if *version == sw.s2 {
            (1, in_v2(c))
        } else if *version == sw.s3 {
            (2, in_v1(c))
        } else {
            panic!(
                "call {j} was judged by snapshot {version}, none of {s1}, {}, {}",
                sw.s2, sw.s3
            )
        };
        count[which] += 1;
        if in_v1(c) != in_v2(c) {
            telling[which] += 1;
        }
        let want = if blocked {
            ("block", 603)
        } else {
            ("allow", 302)
        };
        assert_eq!(
            (decision.as_str(), res.status),
            want,
            "call {j} from {a} judged by {version}"
        );
        // One trunk socket reaches one kuzet worker, which judges in the
        // order sent (a call whose INVITE was sent again may have been
        // judged on the later copy: not counted).
        let seq = seq_of(version);
        if res.retransmissions == 0 {
            assert!(
                seq >= last_seq,
                "call {j} judged by {version} after a call judged by snapshot {last_seq}.*"
            );
            last_seq = seq;
        }
        if *ts_us < sw.push_wall_us {
            assert_eq!(*version, s1, "call {j} judged before the push started");
        }
        let due = sched(j);
        if due >= sw.push_done && due < sw.rollback_started {
            assert_eq!(*version, sw.s2, "call {j} sent once v2 was in force");
        }
        if due >= sw.rollback_done {
            assert_eq!(*version, sw.s3, "call {j} sent after the rollback");
        }
        match which {
            0 => under_v1[c as usize] = Some(res.status),
            2 => {
                if let Some(before) = under_v1[c as usize] {
                    assert_eq!(res.status, before, "call {j} from {a}: v1's answer again");
                    compared += 1;
                }
            }
            _ => {}
        }
    }
    eprintln!(
        "calls judged by v1 {}, by v2 {}, by v1 after the rollback {} (of which from callers v1 and v2 judge apart: {telling:?}); {compared} compared with v1's answer to the same caller before the swap",
        count[0], count[1], count[2]
    );
    assert!(telling.iter().all(|n| *n > rate / 2), "{telling:?}");
    assert!(compared > count[2] / 2, "{compared} of {}", count[2]);
}

fn unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}
