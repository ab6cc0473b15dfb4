//! The `kuzet-sim` binary as a user meets it: `gen` writes the engine files
//! and the SIPp export; a bad scenario exits 2 naming file, line and reason;
//! `run` against the null responder reports every call answered, as a
//! table on stdout and as JSON.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kuzet-sim"))
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kuzet-sim-cli-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn small() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/small.toml")
}

#[test]
fn gen_writes_engine_files_and_export() {
    let d = scratch("gen");
    let out = sim()
        .arg("gen")
        .arg(small())
        .arg("--out")
        .arg(d.join("f"))
        .arg("--export-sipp")
        .arg(d.join("x"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "f/blocklist.txt",
        "f/nbfeed.txt",
        "f/allowlist.txt",
        "f/kuzet.toml",
        "f/kamailio/kzblock",
        "x/uac.xml",
        "x/replay.sh",
        "x/mobile.csv",
    ] {
        assert!(d.join(f).is_file(), "{f} missing");
    }
    // The engine accepts the config it was given.
    let toml = std::fs::read_to_string(d.join("f/kuzet.toml")).unwrap();
    assert!(toml.contains("cidrs = [\"127.0.0.2/32\"]"), "{toml}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_scenario_exits_2_with_file_line_and_reason() {
    let d = scratch("bad");
    let p = d.join("bad.toml");
    std::fs::write(&p, "duration_s = 5\n\n[[campaign]]\nname = \"x\"\nkind = \"wangiri\"\ncps = 1\nanswer_ratio = 2.0\n").unwrap();
    let out = sim()
        .arg("gen")
        .arg(&p)
        .arg("--out")
        .arg(d.join("o"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:4: answer_ratio and cancel_ratio", p.display())),
        "{err}"
    );
    std::fs::write(
        &p,
        "duration_s = 5\n[[campaign]]\nname = \"x\"\nkind = \"vishing\"\ncps = 1\n",
    )
    .unwrap();
    let out = sim()
        .arg("gen")
        .arg(&p)
        .arg("--out")
        .arg(d.join("o"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:4:8: unknown variant `vishing`", p.display())),
        "{err}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn run_against_null_answers_every_call() {
    let null = kuzet_sim::null::start("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let d = scratch("run");
    let json = d.join("r.json");
    let out = sim()
        .arg("run")
        .arg(small())
        .args([
            "--target",
            &null.addr.to_string(),
            "--rate",
            "3000",
            "--calls",
            "900",
            "-q",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("sent 900  answered 900  timeouts 0"),
        "{table}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["sent"], 900);
    assert_eq!(v["status"]["302"], 900);
    assert_eq!(v["false_positive_rate"], 0.0);
    assert_eq!(v["categories"]["blocklist"]["recall"], 0.0);
    assert_eq!(null.answered(), 900);
    null.stop();
    std::fs::remove_dir_all(&d).unwrap();
}

/// One HTTP/1.1 request on its own connection: status and body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

#[test]
fn nb_feed_prints_its_config_serves_its_entries_and_obeys_its_control_api() {
    use std::io::BufRead;
    let d = scratch("nbfeed");
    let entries = d.join("entries.jsonl");
    std::fs::write(
        &entries,
        "{\"action\":\"withdraw\",\"range\":\"+7702555*\",\"case\":\"AFC-2026-118001\"}\n",
    )
    .unwrap();
    let mut child = sim()
        .args([
            "nb-feed",
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--seed",
            "cli",
            "--entries",
        ])
        .arg(&entries)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut snippet = String::new();
    while !snippet.contains("# published batch 1") {
        assert_ne!(out.read_line(&mut snippet).unwrap(), 0, "{snippet}");
    }
    // stdout is TOML kuzet reads: the address and the keys.
    let cfg: toml::Value = toml::from_str(&snippet).unwrap();
    let url = cfg["nbank"]["url"].as_str().unwrap();
    let feed = url.strip_prefix("http://").unwrap().to_string();
    assert_eq!(cfg["nbank"]["keys"][0]["id"].as_str(), Some("k1"));
    let control = snippet
        .split("control API on http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap()
        .to_string();

    let (status, body) = http(&feed, "GET", "/v1/batches?after=0", "");
    assert_eq!(status, 200);
    assert!(
        body.contains("\"entries\":1") && body.contains("+7702555*"),
        "{body}"
    );
    assert_eq!(
        http(&control, "POST", "/control/publish", "").1,
        "2\n",
        "an empty batch"
    );
    assert_eq!(http(&control, "POST", "/control/rotate", "").1, "k2\n");
    assert_eq!(http(&control, "POST", "/control/stop", "").0, 200);
    assert!(std::net::TcpStream::connect(&feed).is_err());
    assert_eq!(http(&control, "POST", "/control/start", "").0, 200);
    assert_eq!(http(&feed, "GET", "/v1/batches?after=2", "").0, 204);
    let _ = child.kill();
    let _ = child.wait();

    // Entries kuzet would refuse to read are refused before anything starts.
    std::fs::write(&entries, "{\"action\":\"add\",\"number\":\"+7701\"}\n").unwrap();
    let out = sim()
        .args(["nb-feed", "--listen", "127.0.0.1:0", "--entries"])
        .arg(&entries)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("entries.jsonl: line 1: "), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}
