//! The admin HTTP address as a monitoring system meets it: `/metrics`
//! from a running engine scraped by a real Prometheus server (Debian
//! package `prometheus`, installed by `scripts/install-deps.sh`), whose
//! OpenMetrics parser must take every line and whose stored values must
//! be the calls the test made; `/healthz` and `/readyz` over a real TCP
//! connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// `GET path` over HTTP/1.1 with `Connection: close`: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("admin connects");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("a whole answer");
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header section");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    // axum answers small bodies with Content-Length, never chunked here.
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    (code, body.to_string())
}

fn prometheus_bin() -> PathBuf {
    tool("prometheus", "prometheus")
}

/// A Prometheus server on a free loopback port scraping one target every
/// 200 ms, with its storage in a temporary directory; killed on drop.
struct Prometheus {
    child: std::process::Child,
    web: SocketAddr,
}

impl Prometheus {
    fn scraping(target: SocketAddr, dir: &TempDir) -> Prometheus {
        let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cfg = dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n\
                 scrape_configs:\n  - job_name: kuzet\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        );
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        Prometheus { child, web }
    }

    fn api(&self, path_and_query: &str) -> Option<serde_json::Value> {
        let s = TcpStream::connect_timeout(&self.web, Duration::from_millis(500)).ok()?;
        drop(s);
        let (code, body) = http_get(self.web, path_and_query);
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// The target's health and last scrape error, once it has been
    /// scraped (up or down), within 30 s.
    fn target_health(&self) -> (String, String) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = self.api("/api/v1/targets") {
                let t = &v["data"]["activeTargets"][0];
                let health = t["health"].as_str().unwrap_or("");
                if health == "up" || health == "down" {
                    return (health.into(), t["lastError"].as_str().unwrap_or("").into());
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Prometheus never scraped kuzet"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The single value of an instant query, or None when it is empty.
    fn query(&self, q: &str) -> Option<f64> {
        let mut enc = String::new();
        for b in q.bytes() {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                enc.push(b as char);
            } else {
                enc.push_str(&format!("%{b:02X}"));
            }
        }
        let v = self
            .api(&format!("/api/v1/query?query={enc}"))
            .expect("the query answers");
        let r = &v["data"]["result"];
        let first = r.get(0)?;
        first["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample `name` (with its labels exactly as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().ok()).flatten()
    })
}

#[test]
fn metrics_parse_as_prometheus_exposition_and_count_the_calls_made() {
    let d = TempDir::new("metrics");
    d.write(
        "block.txt",
        "+77011112233,fraud desk report\n+88216*,irsf range\n",
    );
    d.write("flag.txt", "+7700999*,watch\n");
    let mut cfg = test_config();
    cfg.lists.files[kuzet_rules::ListId::Block] = vec![d.path().join("block.txt").into()];
    cfg.lists.files[kuzet_rules::ListId::Flag] = vec![d.path().join("flag.txt").into()];
    let eng = start(cfg);
    let admin = eng.admin_addr.expect("the admin address is on by default");
    let c = client();
    let port = c.local_addr().unwrap().port();
    let calls = [
        ("87011112233", "87015550000", 603),
        ("87015550000", "+882161234567", 603),
        ("+77009990001", "87015550000", 302),
        ("87015550000", "87015550001", 302),
        ("87015550002", "87015550003", 302),
    ];
    for (i, (a, b, want)) in calls.iter().enumerate() {
        let r = ask(
            &c,
            eng.udp_addr,
            &invite(a, b, &format!("callid-metrics-{i}"), port),
        );
        assert_eq!(status(&r), *want, "{a} -> {b}: {r}");
    }
    // Workers fold their histograms into the shared ones every few
    // hundred milliseconds: poll until all five calls are in.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (code, text) = http_get(admin, "/metrics");
        assert_eq!(code, 200, "{text}");
        if sample(&text, "kuzet_call_service_seconds_count") == Some(5.0) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "service time never counted 5 calls:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    // A real Prometheus scrapes it: its parser takes every line, and
    // what it stored is what kuzet counted.
    let prom = Prometheus::scraping(admin, &d);
    let up = prom.target_health();
    assert_eq!(up.0, "up", "Prometheus could not scrape /metrics: {}", up.1);
    assert_eq!(prom.query("kuzet_verdict_block_total"), Some(2.0));
    assert_eq!(
        prom.query(r#"kuzet_rule_hits_total{rule="blocklist",mode="enforce"}"#),
        Some(2.0)
    );
    assert_eq!(
        prom.query("histogram_count(rate(kuzet_call_service_seconds_bucket[1m]))"),
        None,
        "a classic histogram, not a native one"
    );
    assert_eq!(
        prom.query(r#"kuzet_call_service_seconds_bucket{le="+Inf"}"#),
        Some(5.0)
    );

    // The values are the calls made.
    assert_eq!(sample(&text, "kuzet_invites_total"), Some(5.0), "{text}");
    assert_eq!(sample(&text, "kuzet_verdict_block_total"), Some(2.0));
    assert_eq!(sample(&text, "kuzet_verdict_flag_total"), Some(1.0));
    assert_eq!(sample(&text, "kuzet_verdict_allow_total"), Some(2.0));
    assert_eq!(
        sample(
            &text,
            r#"kuzet_rule_hits_total{rule="blocklist",mode="enforce"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"kuzet_rule_hits_total{rule="flaglist",mode="enforce"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"kuzet_list_entries{list="blocklist"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, r#"kuzet_list_entries{list="flaglist"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"kuzet_call_service_seconds_bucket{le="+Inf"}"#),
        Some(5.0)
    );
    for stage in ["queue", "handle", "send"] {
        let n = sample(
            &text,
            &format!("kuzet_stage_seconds_count{{stage=\"{stage}\"}}"),
        );
        assert_eq!(n, Some(5.0), "stage {stage}:\n{text}");
    }
    assert_eq!(sample(&text, "kuzet_ready"), Some(1.0));
    assert!(sample(&text, "kuzet_lists_loaded_timestamp_seconds").unwrap() > 1.7e9);
    // The store is off in this test: not writable, and not needed.
    assert_eq!(sample(&text, "kuzet_store_writable"), Some(0.0));
    // No label carries a number or a Call-ID.
    for (a, b, _) in calls {
        let digits: String = a.chars().filter(char::is_ascii_digit).collect();
        assert!(!text.contains(&digits[1..]), "a number leaked into a label");
        let _ = b;
    }
    assert!(!text.contains("callid-metrics"), "a Call-ID leaked");

    let (code, body) = http_get(admin, "/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = http_get(admin, "/readyz");
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let (code, _) = http_get(admin, "/nothing-here");
    assert_eq!(code, 404);
    eng.stop();
}

/// A store that cannot take a commit (here another writer holds its
/// lock; a full disk fails the same way) makes the node unready, with the
/// reason, and ready again once the store takes commits, without a call
/// to prove it; the record waits in the record queue meanwhile and is
/// committed then: nothing is lost.
#[test]
fn readyz_turns_503_when_the_store_stops_taking_commits() {
    let d = TempDir::new("ready");
    let data = d.path().join("data");
    let mut cfg = test_config();
    cfg.store.enabled = true;
    cfg.store.dir = Some(data.clone());
    cfg.store.record_allowed_every = 1;
    let eng = start(cfg);
    let admin = eng.admin_addr.unwrap();
    let (code, body) = http_get(admin, "/readyz");
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    // Make the database read-only under the running writer: SQLite's next
    // commit fails (as on a full disk), which is what readiness reports.
    let c = client();
    let port = c.local_addr().unwrap().port();
    let db = data.join("kuzet.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    // The write lock held by another connection: the recorder's next
    // commit fails with SQLITE_BUSY after its busy timeout.
    conn.execute_batch("BEGIN IMMEDIATE;").unwrap();
    let r = ask(
        &c,
        eng.udp_addr,
        &invite("87015550000", "87015550001", "r1", port),
    );
    assert_eq!(status(&r), 302, "the call goes on: {r}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http_get(admin, "/readyz");
        if code == 503 {
            assert_eq!(body, "not ready: store not writable\n");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never unready: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, text) = http_get(admin, "/metrics");
    assert_eq!(sample(&text, "kuzet_ready"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "kuzet_store_writable"), Some(0.0));
    // Nothing is lost: the record waits in the record queue until the
    // store takes commits again.
    assert_eq!(
        sample(&text, "kuzet_store_dropped_total"),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(&text, "kuzet_record_queue_used_bytes").unwrap() > 0.0,
        "{text}"
    );
    // The lock goes. No call comes (a balancer has taken the node out of
    // service): the writer's own probe finds the store writable, and the
    // node is ready again.
    conn.execute_batch("ROLLBACK;").unwrap();
    drop(conn);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http_get(admin, "/readyz");
        if code == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never ready again: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The call held back is in the store now.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM calls WHERE call_id = 'r1'", [], |r| {
                r.get(0)
            })
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "r1 never committed");
        std::thread::sleep(Duration::from_millis(100));
    }
    eng.stop();
}

/// The README's tour, command for command: `kuzet run` with no config
/// (sample lists and default rules compiled in), `kuzet-sim tour`, the
/// blocks with their explanations, `kuzet calls` with no token (over the
/// Unix socket in kuzet's data directory), and `/metrics`. Only the ports
/// differ, so that tests can run side by side.
#[test]
fn the_readme_tour_works() {
    let dir = TempDir::new("tour");
    let w = Watched::start(&[], dir.path());
    let serving = w
        .log
        .iter()
        .find(|l| l.contains("kuzet serving"))
        .expect("the serving line")
        .clone();
    let field = |name: &str| -> String {
        serving
            .split(&format!("{name}=Some("))
            .nth(1)
            .and_then(|r| r.split(')').next())
            .unwrap_or_else(|| panic!("{name} in {serving}"))
            .to_string()
    };
    let control = field("control_addr");
    let admin: SocketAddr = field("admin_addr").parse().unwrap();

    // 2-3: the scenario, and the blocks with their explanations.
    let answers = kuzet_sim::tour::run(w.addr, false).expect("the tour runs");
    let blocked: Vec<_> = answers.iter().filter(|a| a.code == 603).collect();
    assert_eq!(blocked.len(), 3, "{answers:#?}");
    assert!(
        blocked[0].why.contains("text=\"blocklist; verdict "),
        "{:?}",
        blocked[0]
    );
    assert!(
        blocked[2].why.contains("text=\"sequential; verdict "),
        "the default rules are loaded: {:?}",
        blocked[2]
    );
    let flagged = answers
        .iter()
        .find(|a| a.why.starts_with("flag;"))
        .expect("a flagged call");
    assert!(flagged.why.contains("flaglist"), "{flagged:?}");

    // 4: `kuzet calls`, from the directory that holds kuzet-data, with no
    // token given: over the data directory's Unix socket, as kuzet's own
    // user; no token is written anywhere. The recorder commits within a
    // fraction of a second.
    assert!(!dir.path().join("kuzet-data/local.token").exists());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let table = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_kuzet"))
            .args(["calls", "--since", "5m", "--control", &control])
            .env_remove("KUZET_TOKEN")
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if text.matches("block").count() >= 3 {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not on record: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for b in &blocked {
        let id = b
            .why
            .split("verdict ")
            .nth(1)
            .unwrap()
            .trim_end_matches('"');
        assert!(table.contains(id), "{id} not in:\n{table}");
    }
    // From anywhere else, with no token: no kuzet to ask (exit 1), and
    // the message says how to reach one.
    let other = TempDir::new("tour-other");
    let out = Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args(["calls", "--control", &control])
        .env_remove("KUZET_TOKEN")
        .current_dir(other.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));

    // 5: /metrics.
    let (code, text) = http_get(admin, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(sample(&text, "kuzet_verdict_block_total"), Some(3.0));
    assert_eq!(
        sample(
            &text,
            r#"kuzet_rule_hits_total{rule="sequential",mode="enforce"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains(r#"kuzet_rule_hits_total{rule="velocity_1m",mode="shadow"}"#),
        "traffic-dependent rules ship in shadow"
    );
    w.stop();
}

/// `--log-format json`: every log line is one JSON object with a time,
/// a level and a message, and fields at the top level for a log shipper.
#[test]
fn json_logs_are_one_object_a_line() {
    let dir = TempDir::new("json-logs");
    let w = Watched::start(&["--log-format", "json", "--no-store"], dir.path());
    assert!(!w.log.is_empty());
    for line in &w.log {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["level"].is_string(), "{line}");
        assert!(v["message"].is_string(), "{line}");
    }
    let serving = w
        .log
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["message"] == "kuzet serving")
        .expect("the serving line");
    assert!(serving["udp_addr"].is_string(), "{serving}");
    w.stop();
}
