//! Issue 10, as an attacker or a bad day would try it, against the real
//! binary and real sockets: early signals, hostile files, replies too big
//! for a datagram, hostile TCP peers.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use crate::common::{free_port, Reaped, TempDir};

/// Regression: a SIGTERM right after start-up killed kuzet without its
/// counters, because the handler was installed after serving began; a
/// SIGHUP then killed it outright.
#[test]
fn a_sigterm_during_start_up_still_stops_cleanly_with_counters() {
    let dir = TempDir::new("early-sigterm");
    // Big enough that loading takes a while, so the signals land mid-load.
    let mut list = String::with_capacity(400_000 * 14);
    for i in 0..400_000u64 {
        list.push_str(&format!("+7701{:07}\n", i));
    }
    dir.write("block.txt", &list);
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args(["run", "--listen", &format!("127.0.0.1:{port}"), "--blocklist", "block.txt"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(Reaped)
        .unwrap();
    let mut err = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    // The first log line comes after the handlers are installed.
    while err.read_line(&mut line).unwrap() > 0 && !line.contains("kuzet starting") {
        line.clear();
    }
    assert!(line.contains("kuzet starting"), "{line}");
    for sig in ["-HUP", "-TERM"] {
        Command::new("kill").arg(sig).arg(child.0.id().to_string()).status().unwrap();
    }
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let status = child.0.wait().unwrap();
    let mut out = String::new();
    child.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(status.success(), "{status:?}\n{rest}");
    assert!(out.starts_with("kuzet stopped. counters:"), "{out}\n{rest}");
}
