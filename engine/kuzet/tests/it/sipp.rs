//! End to end with SIPp as a real SIP client, against the `kuzet` binary.
//!
//! SIPp comes from Debian's `sip-tester`; `scripts/install-deps.sh` (run by
//! the README's test command) installs it. A missing SIPp fails these
//! tests rather than skipping them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kuzet_sim::population::{redirect_mix, sipp_csv, Expect};

use crate::common::{client, free_port, status, TempDir};

const UAC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/sipp/redirect_uac.xml"
);

pub(crate) fn sipp() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("sipp"))
            .find(|p| p.is_file())
    });
    found.expect("sipp not found: run scripts/install-deps.sh (Debian package sip-tester)")
}

pub(crate) struct Kuzet {
    child: Child,
    pub(crate) addr: SocketAddr,
    /// The admin address, where `/metrics` says how far a run has got.
    pub(crate) admin: SocketAddr,
}

impl Kuzet {
    pub(crate) fn start(args: &[&str], dir: &Path) -> Kuzet {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let admin_port = std::iter::repeat_with(free_port)
            .find(|p| *p != port)
            .unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kuzet"))
            .args(["run", "--control", "127.0.0.1:0"])
            .arg("--admin")
            .arg(admin.to_string())
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kuzet starts");
        let k = Kuzet { child, addr, admin };
        crate::common::wait_until_answering(&client(), addr);
        k
    }

    /// SIGTERM, then the shutdown summary kuzet prints.
    pub(crate) fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let out = self.child.wait_with_output_timeout();
        assert!(out.0, "kuzet exits cleanly on SIGTERM");
        out.1
    }
}

/// INVITEs the kuzet whose admin address is `admin` has judged so far
/// (`kuzet_invites_total`, retransmissions excluded).
pub(crate) fn invites_judged(admin: SocketAddr) -> u64 {
    let (code, text) = crate::operations::http_get(admin, "/metrics");
    assert_eq!(code, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("kuzet_invites_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no kuzet_invites_total in /metrics:\n{text}"))
}

/// Waits (on another thread) until the kuzet at `admin` has judged at
/// least `n` INVITEs, then runs `swap`; the handle gives back how many
/// it had judged just before. A swap mid-run is triggered by the run's
/// progress, never by time.
pub(crate) fn swap_after(
    admin: SocketAddr,
    n: u64,
    swap: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let judged = crate::common::wait(&format!("{n} INVITEs judged"), || {
            let j = invites_judged(admin);
            (j >= n).then_some(j)
        });
        swap();
        judged
    })
}

trait WaitTimeout {
    fn wait_with_output_timeout(&mut self) -> (bool, String);
}

impl WaitTimeout for Child {
    fn wait_with_output_timeout(&mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.try_wait() {
                let mut s = String::new();
                if let Some(mut o) = self.stdout.take() {
                    let _ = std::io::Read::read_to_string(&mut o, &mut s);
                }
                return (st.success(), s);
            }
            if Instant::now() > deadline {
                let _ = self.kill();
                return (false, String::new());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Kuzet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs SIPp in `dir` and returns (exit success, final message counts).
fn run_sipp(dir: &Path, args: &[String]) -> (bool, HashMap<String, u64>) {
    let out = Command::new(sipp())
        .args(args)
        .args([
            "-nostdin",
            "-trace_counts",
            "-timeout",
            "120s",
            "-buff_size",
            "4194304",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("sipp runs");
    let counts = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("_counts.csv"))
        .map(|p| parse_counts(&std::fs::read_to_string(p).unwrap()))
        .unwrap_or_default();
    (out.success(), counts)
}

/// Replays `calls.csv` in `dir` with the redirect scenario at `rate` calls/s.
fn run_redirect_uac(
    dir: &Path,
    to: SocketAddr,
    n: usize,
    rate: u32,
) -> (bool, HashMap<String, u64>) {
    let args: Vec<String> = vec![
        to.to_string(),
        "-sf".into(),
        UAC.into(),
        "-inf".into(),
        "calls.csv".into(),
        "-m".into(),
        n.to_string(),
        "-r".into(),
        rate.to_string(),
    ];
    run_sipp(dir, &args)
}

pub(crate) fn parse_counts(text: &str) -> HashMap<String, u64> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let head: Vec<&str> = lines.next().unwrap_or("").split(';').collect();
    let last: Vec<&str> = lines.next_back().unwrap_or("").split(';').collect();
    head.iter()
        .zip(last.iter())
        .filter_map(|(h, v)| Some((h.to_string(), v.trim().parse().ok()?)))
        .collect()
}

fn write_lists(dir: &TempDir, seed: u64, n: usize) -> Vec<kuzet_sim::population::TestCall> {
    let (calls, lists) = redirect_mix(seed, n);
    dir.write("block.txt", &lists.block);
    dir.write("allow.txt", &lists.allow);
    dir.write("flag.txt", &lists.flag);
    dir.write("calls.csv", &sipp_csv(&calls));
    calls
}

const LIST_ARGS: [&str; 6] = [
    "--blocklist",
    "block.txt",
    "--allowlist",
    "allow.txt",
    "--flaglist",
    "flag.txt",
];

#[test]
fn sipp_redirect_counts_equal_what_the_lists_imply() {
    let dir = TempDir::new("sipp-redirect");
    let n = 3000;
    let calls = write_lists(&dir, 42, n);
    let want_block = calls.iter().filter(|c| c.expect == Expect::Block).count() as u64;
    let want_pass = n as u64 - want_block;
    let k = Kuzet::start(&LIST_ARGS, dir.path());
    let (ok, counts) = run_redirect_uac(dir.path(), k.addr, n, 1000);
    let summary = k.stop();
    assert!(ok, "every SIPp call succeeded: {counts:?}");
    assert_eq!(counts.get("0_INVITE_Sent"), Some(&(n as u64)));
    assert_eq!(counts.get("1_302_Recv"), Some(&want_pass), "{counts:?}");
    assert_eq!(counts.get("2_603_Recv"), Some(&want_block), "{counts:?}");
    assert_eq!(counts.get("0_INVITE_Timeout"), Some(&0));
    let flagged = calls.iter().filter(|c| c.expect == Expect::Flag).count();
    assert!(
        summary.contains(&format!("verdict_flag_total={flagged}")),
        "kuzet flagged {flagged}: {summary}"
    );
}

/// Regression (issue 19, defect 9): the list was swapped 1.2 s after the
/// start, whatever the run had done by then (on a slow machine, before
/// its first call or after its last). Now it is swapped once kuzet has
/// judged a third of the calls, and every call judged before it must have
/// been let through.
#[test]
fn sipp_list_reload_under_load_loses_no_call() {
    let dir = TempDir::new("sipp-reload");
    dir.write("block.txt", "+77011112233\n");
    // Every call comes from one number that the new list will block.
    let n = 3000;
    let mut csv = String::from("SEQUENTIAL\n");
    for _ in 0..n {
        csv.push_str("87051234567;87015550000\n");
    }
    dir.write("calls.csv", &csv);
    let k = Kuzet::start(&["--blocklist", "block.txt"], dir.path());
    let d = dir.path().to_path_buf();
    let swapper = swap_after(k.admin, n as u64 / 3, move || {
        std::fs::write(
            d.join("block.new"),
            "+77011112233\n8 705 123 45 67,new campaign\n",
        )
        .unwrap();
        std::fs::rename(d.join("block.new"), d.join("block.txt")).unwrap();
    });
    let (ok, counts) = run_redirect_uac(dir.path(), k.addr, n, 1000);
    let judged_before = swapper.join().expect("the list was swapped mid-run");
    let summary = k.stop();
    let pass = counts.get("1_302_Recv").copied().unwrap_or(0);
    let block = counts.get("2_603_Recv").copied().unwrap_or(0);
    assert!(ok, "no SIPp call failed: {counts:?}");
    assert_eq!(
        pass + block,
        n as u64,
        "every INVITE was answered: {counts:?}"
    );
    assert!(
        pass >= judged_before,
        "{judged_before} calls were judged before the swap, but only {pass} let through: {counts:?}"
    );
    assert!(
        block > 0,
        "the new list applied before the run ended: {counts:?}"
    );
    assert!(summary.contains("list_reloads_total=1"), "{summary}");
}

#[test]
fn sipp_proxy_mode_reaches_a_sipp_uas_behind_kuzet() {
    let dir = TempDir::new("sipp-proxy");
    dir.write("block.txt", "+77011112233\n");
    let uas_port = free_port();
    let n = 200;
    let uas_dir = TempDir::new("sipp-uas");
    let mut uas = Command::new(sipp())
        .args(["-sn", "uas", "-i", "127.0.0.1", "-p", &uas_port.to_string()])
        .args([
            "-m",
            &n.to_string(),
            "-nostdin",
            "-trace_counts",
            "-timeout",
            "60s",
        ])
        .current_dir(uas_dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let next_hop = format!("127.0.0.1:{uas_port}");
    let k = Kuzet::start(
        &[
            "--mode",
            "proxy",
            "--next-hop",
            &next_hop,
            "--blocklist",
            "block.txt",
        ],
        dir.path(),
    );
    let (ok, counts) = run_sipp(
        dir.path(),
        &[
            k.addr.to_string(),
            "-sn".into(),
            "uac".into(),
            "-i".into(),
            "127.0.0.1".into(),
            "-s".into(),
            "87015550000".into(),
            "-m".into(),
            n.to_string(),
            "-r".into(),
            "100".into(),
        ],
    );
    let (uas_ok, _) = uas.wait_with_output_timeout();
    // A blocked caller is refused by kuzet itself; the UAS has finished.
    let c = client();
    let inv = crate::common::invite("87011112233", "87015550000", "blocked", 1);
    assert_eq!(status(&crate::common::ask(&c, k.addr, &inv)), 603);
    let summary = k.stop();
    assert!(ok, "all calls through kuzet completed: {counts:?}");
    assert!(uas_ok, "the UAS completed {n} calls");
    // INVITE, ACK and BYE of every call went through kuzet.
    assert!(
        summary.contains(&format!("proxy_forwarded_total={}", 3 * n)),
        "{summary}"
    );
}

#[test]
fn cli_rejects_bad_lists_and_configs_with_exit_code_2() {
    let dir = TempDir::new("cli");
    dir.write("bad.txt", "+77011112233\nnot-a-number,oops\n");
    dir.write(
        "bad.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\nmood = \"redirect\"\n",
    );
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kuzet"))
            .args(["run", "--control", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--blocklist", "bad.txt"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("bad.txt:2: \"not-a-number\" is not a phone number"),
        "{err}"
    );
    let (code, err) = run(&["--config", "bad.toml"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("bad.toml:3:1") && err.contains("unknown field `mood`"),
        "{err}"
    );
    let (code, err) = run(&["--mode", "proxy"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("next hop"), "{err}");
    let (code, err) = run(&["--blocklist", "missing.txt"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("missing.txt"), "{err}");
}

/// Regression: `--next-hop` without `--mode proxy` was silently ignored.
#[test]
fn next_hop_without_proxy_mode_is_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--next-hop",
            "127.0.0.1:5070",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--next-hop only applies in proxy mode"),
        "{err}"
    );
}

/// Regression: `--log` ignored RUST_LOG, and a filter that did not parse
/// silently became "info".
#[test]
fn log_filter_comes_from_rust_log_and_a_bad_one_is_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args(["run", "--listen", "127.0.0.1:0", "--log", "kuzet=loud"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad log filter \"kuzet=loud\" from --log"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args(["run", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "=nonsense=")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("from RUST_LOG"), "{err}");
    // A good RUST_LOG is used: at "error", start-up logs nothing, while a
    // bad list still reports (to stderr, not through the log).
    let dir = TempDir::new("rust-log");
    dir.write("bad.txt", "x\n");
    let out = Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args(["run", "--listen", "127.0.0.1:0", "--blocklist", "bad.txt"])
        .current_dir(dir.path())
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("INFO"), "RUST_LOG=error was ignored: {err}");
    let out = Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args(["run", "--listen", "127.0.0.1:0", "--blocklist", "bad.txt"])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INFO"), "{err}");
}

#[test]
fn rules_check_accepts_the_example_and_names_the_bad_line() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/rules/default.toml"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args(["rules", "check", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok, 15 rules from the file (7 enforced, 8 shadow)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "built-in list rules: allowlist (exempts), blocklist (score 100), nb_feed (score 100), flaglist (score 50)"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("override"), "{stdout}");
    let dir = TempDir::new("rules-check");
    let bad = dir.write(
        "bad.toml",
        "[thresholds]\nflag = 40\nblock = 100\n\n[[rule]]\nid = \"fan\"\nkind = \"fan_out\"\nscore = 10\nwindow_s = 0\nmax = 3\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args(["rules", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:5:1: rule \"fan\": window_s must be above 0",
            bad.display()
        )),
        "{err}"
    );
}

/// A counter or gauge's value in a `/metrics` scrape (0 when absent).
fn scraped(scrape: &str, name: &str) -> i64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as i64)
}

/// Regression: proxy mode added no Record-Route, so BYE and re-INVITE
/// usually went around kuzet and answered calls sat in its call table for
/// 4 hours; a re-INVITE that did pass was scored as a new call; a full
/// table stopped learning silently. Now, with SIPp as caller and callee
/// through kuzet: every call's ACK, re-INVITE and the callee's BYE pass
/// through kuzet (the BYE reaches the caller, so every call completes),
/// no in-dialog request is scored, and the calls in progress come back
/// to zero.
#[test]
fn sipp_whole_dialogs_pass_through_kuzet_and_each_bye_ends_its_call() {
    let dir = TempDir::new("sipp-dialogs");
    dir.write("block.txt", "+77011112233\n");
    let n: i64 = 60;
    let uas_port = free_port();
    let uas_dir = TempDir::new("sipp-dialog-uas");
    let scenarios = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/sipp");
    let mut uas = Command::new(sipp())
        .args(["-sf", &format!("{scenarios}/dialog_uas.xml")])
        .args(["-i", "127.0.0.1", "-p", &uas_port.to_string()])
        .args(["-m", &n.to_string(), "-nostdin", "-trace_counts"])
        .args(["-timeout", "60s"])
        .current_dir(uas_dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    dir.write(
        "kuzet.toml",
        &format!(
            "[server]\nmode = \"proxy\"\nstats_interval_secs = 1\n[proxy]\nnext_hop = \"127.0.0.1:{uas_port}\"\n\
             [lists]\nblocklist = [\"block.txt\"]\n"
        ),
    );
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let k = crate::common::Watched::start_on(listen, &["-c", "kuzet.toml"], dir.path());
    let admin = crate::attacks::admin_of(&k);
    let (ok, counts) = run_sipp(
        dir.path(),
        &[
            k.addr.to_string(),
            "-sf".into(),
            format!("{scenarios}/dialog_uac.xml"),
            "-i".into(),
            "127.0.0.1".into(),
            "-s".into(),
            "87015550000".into(),
            "-m".into(),
            n.to_string(),
            "-r".into(),
            "20".into(),
        ],
    );
    let (uas_ok, _) = uas.wait_with_output_timeout();
    assert!(
        ok,
        "every call completed, the callee's BYE included: {counts:?}"
    );
    assert!(uas_ok, "the callee's side completed {n} calls");
    // Each call's in-progress record ends with its BYE: the gauge, set
    // every stats interval, comes back to zero.
    let scrape = crate::common::wait("the calls in progress back to zero", || {
        let (_, m) = crate::operations::http_get(admin, "/metrics");
        (scraped(&m, "kuzet_proxy_calls_in_progress") == 0
            && scraped(&m, "kuzet_state_sweeps_total") >= 2)
            .then_some(m)
    });
    assert_eq!(
        scraped(&scrape, "kuzet_invites_total"),
        n,
        "re-INVITEs are not scored"
    );
    // ACK, re-INVITE, its ACK and the callee's BYE, all inside a dialog.
    assert_eq!(
        scraped(&scrape, "kuzet_proxy_in_dialog_forwarded_total"),
        4 * n
    );
    assert_eq!(scraped(&scrape, "kuzet_proxy_routes_removed_total"), 4 * n);
    assert_eq!(scraped(&scrape, "kuzet_proxy_forwarded_total"), 5 * n);
    assert_eq!(scraped(&scrape, "kuzet_proxy_calls_untracked_total"), 0);
    assert_eq!(scraped(&scrape, "kuzet_proxy_calls_expired_total"), 0);
    k.stop();
}
