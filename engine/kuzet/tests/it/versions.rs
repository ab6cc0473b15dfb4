//! Versions everywhere: lists and rules published on any node of a
//! cluster, stored once in a real PostgreSQL and announced on a real
//! Redis (`[publishing] shared_url`, `[cluster] redis_url`), in force on
//! every node.
//!
//! - A 1M-entry blocklist pushed and put in force on one node of three is
//!   in force on all three within 5 s of the activation's answer: the
//!   same snapshot version on each (and in `kuzet nodes`), and a number
//!   only the new list holds blocked by each.
//! - A node stopped while a list and the rules are published on the
//!   others catches up when it starts again, by looking at the shared
//!   store (no announcement reaches it).
//! - With Redis killed, a publish still reaches the other nodes by
//!   polling; with PostgreSQL stopped, publishing is refused with the
//!   reason and every node keeps what it has.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kuzet::config::Config;
use kuzet::server::Running;
use kuzet_api::lists as lpb;
use kuzet_api::lists::list_service_client::ListServiceClient;
use kuzet_api::rules as rpb;
use kuzet_api::rules::rule_service_client::RuleServiceClient;
use kuzet_rules::ListId;
use kuzet_sim::servers::{PgServer, RedisServer};

use crate::common::*;

/// The admin's token on every node.
const TOKEN: &str = "kz_versions_admin_token";

/// How often the nodes look at the shared store without an announcement.
const POLL_MS: u64 = 1_000;

/// A node named `name`, its data directory under `dir`, publishing the
/// blocklist and the rules, sharing versions through `pg` and `redis`.
fn node(dir: &TempDir, name: &str, pg: &str, redis: &RedisServer) -> Config {
    let mut c = test_config();
    c.store.enabled = true;
    c.store.dir = Some(dir.path().join(name));
    c.store.node_name = Some(name.into());
    c.control.tokens = tokens_for(&[("root", "admin")], |_| TOKEN.to_string());
    c.publishing.lists = vec![ListId::Block];
    c.publishing.rules = true;
    c.publishing.backtest_min_hours = 0.0;
    c.publishing.shared_url = Some(pg.into());
    c.publishing.shared_poll_ms = POLL_MS;
    c.cluster.redis_url = Some(redis.url());
    c
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

/// Pushes `lines` lines (line `i` from 1 written by `line`) to the
/// blocklist at `control`, put in force at once, in chunks of about 256
/// KiB generated as they are sent.
fn push(
    control: SocketAddr,
    lines: u64,
    line: impl Fn(u64, &mut Vec<u8>) + Send + 'static,
) -> Result<lpb::PushResponse, tonic::Status> {
    let mut next = 1u64;
    let mut first = true;
    let chunks = std::iter::from_fn(move || {
        if next > lines && !first {
            return None;
        }
        let mut data = Vec::with_capacity(256 << 10);
        while next <= lines && data.len() < 256 << 10 {
            line(next, &mut data);
            next += 1;
        }
        let c = lpb::PushChunk {
            list: if first {
                "blocklist".into()
            } else {
                String::new()
            },
            activate: first,
            data,
            ..Default::default()
        };
        first = false;
        Some(c)
    });
    rt().block_on(async move {
        let mut c = ListServiceClient::connect(format!("http://{control}"))
            .await
            .unwrap();
        c.push(authed(tokio_stream::iter(chunks)))
            .await
            .map(|r| r.into_inner())
    })
}

/// `+7780NNNNNNN` for `n` < 10M: the range no caller of these tests uses
/// but the ones a list names.
fn number(n: u64) -> String {
    format!("+7780{n:07}")
}

/// The status a call from `a` gets at `to`.
fn call(to: SocketAddr, a: &str, id: &str) -> u16 {
    let sock = client();
    let port = sock.local_addr().unwrap().port();
    status(&ask(&sock, to, &invite(a, "+77010000001", id, port)))
}

/// The snapshot version a node runs.
fn version(n: &Running) -> String {
    n.lists.load().version.to_string()
}

/// How many clients Redis has subscribed to the versions' channel.
fn subscribers(redis: &RedisServer) -> usize {
    let out = std::process::Command::new(tool("redis-cli", "redis-tools"))
        .args(["-p", &redis.port().to_string(), "PUBSUB", "NUMSUB"])
        .arg(kuzet_control::publishing::shared::channel("kuzet"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// `kuzet nodes` asked of `control`: each node's name and version.
fn listed(control: SocketAddr) -> Vec<(String, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kuzet"))
        .args(["nodes", "--format", "jsonl", "--control"])
        .arg(control.to_string())
        .env("KUZET_TOKEN", TOKEN)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r["version"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Waits (at most `limit`) until every node in `nodes` runs `want`;
/// returns when each first did, from `since`.
fn until_all_run(nodes: &[&Running], want: &str, since: Instant, limit: Duration) -> Vec<Duration> {
    let mut at: Vec<Option<Duration>> = vec![None; nodes.len()];
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if at[i].is_none() && version(n) == want {
                at[i] = Some(since.elapsed());
            }
        }
        if at.iter().all(Option::is_some) {
            return at.into_iter().map(Option::unwrap).collect();
        }
        assert!(
            since.elapsed() < limit,
            "not every node runs {want} after {limit:?}: {:?}",
            nodes.iter().map(|n| version(n)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_1m_list_published_on_one_node_is_in_force_on_all_three_within_5s() {
    const ONE_MILLION: u64 = 1_000_000;
    let dir = TempDir::new("versions-1m");
    let pg = PgServer::start().expect("PostgreSQL (scripts/install-deps.sh installs it)");
    let url = pg.create_db("versions_1m").unwrap();
    let redis = RedisServer::start().expect("redis-server (scripts/install-deps.sh installs it)");
    let nodes: Vec<Running> = ["v1", "v2", "v3"]
        .iter()
        .map(|n| start(node(&dir, n, &url, &redis)))
        .collect();
    // Every node listens for announcements before anything is published.
    wait("every node subscribed to the versions' channel", || {
        (subscribers(&redis) == 3).then_some(())
    });
    let before = version(&nodes[0]);
    for n in &nodes {
        assert_eq!(version(n), before);
        assert_eq!(call(n.udp_addr, &number(54_321), "before"), 302);
    }
    let t = Instant::now();
    let r = push(nodes[0].control_addr.unwrap(), ONE_MILLION, |i, out| {
        out.extend_from_slice(number(i - 1).as_bytes());
        out.extend_from_slice(b",fraud desk\n");
    })
    .unwrap();
    let answered = Instant::now();
    eprintln!(
        "the 1M push and activation on v1 answered in {:?}",
        t.elapsed()
    );
    assert!(r.activated, "{r:?}");
    let v = r.version.as_ref().unwrap();
    assert_eq!((&*v.id, v.exact), ("v1", ONE_MILLION));
    // In force on v1 when it answers; on the others within 5 s of that,
    // as the same snapshot version.
    assert_eq!(version(&nodes[0]), r.snapshot);
    let refs: Vec<&Running> = nodes.iter().collect();
    let took = until_all_run(&refs, &r.snapshot, answered, Duration::from_secs(30));
    for (n, d) in ["v1", "v2", "v3"].iter().zip(&took) {
        eprintln!("{n}: the 1M list in force {d:?} after the activation's answer");
    }
    for d in &took {
        assert!(*d <= Duration::from_secs(5), "{took:?}");
    }
    // A number only the new list holds is blocked on each node.
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(
            call(n.udp_addr, &number(54_321), &format!("after-{i}")),
            603
        );
        assert_eq!(
            call(n.udp_addr, &number(ONE_MILLION), &format!("past-{i}")),
            302
        );
    }
    // Fetched by the two others, once each, from the one copy stored.
    for n in &nodes[1..] {
        assert_eq!(n.metrics.value("versions_fetched_total"), Some(1));
        assert_eq!(n.metrics.value("versions_applied_total"), Some(1));
    }
    assert_eq!(
        pg.psql("versions_1m", "SELECT count(*) FROM kuzet_shelf_contents")
            .unwrap(),
        "1"
    );
    // `kuzet nodes` shows the same version for the three.
    let shown = wait("kuzet nodes shows the new version on every node", || {
        let rows = listed(nodes[2].control_addr.unwrap());
        (rows.len() == 3 && rows.iter().all(|(_, v)| *v == r.snapshot)).then_some(rows)
    });
    eprintln!("kuzet nodes: {shown:?}");
    for n in nodes {
        n.stop();
    }
}

/// A rule file whose velocity rule differs from the built-in rules.
const RULES: &str = "[thresholds]\nflag = 40\nblock = 100\n\
    [[rule]]\nid = \"velocity_1m\"\nkind = \"velocity\"\nwindow_s = 60\nmax = 10\nscore = 100\n\
    [rule.scope]\ncaller_prefixes = [\"+7701555\"]\n";

/// Stages [`RULES`] at `control` and puts it in force; returns the
/// snapshot it answered with.
fn stage_and_activate_rules(control: SocketAddr) -> String {
    rt().block_on(async move {
        let mut c = RuleServiceClient::connect(format!("http://{control}"))
            .await
            .unwrap();
        let staged = c
            .stage(authed(rpb::StageRequest {
                text: Some(rpb::RuleText {
                    name: "velocity.toml".into(),
                    toml: RULES.into(),
                }),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let id = staged.version.unwrap().id;
        c.activate(authed(rpb::ActivateRequest {
            without_backtest: false,
            version: id,
            expect: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .snapshot
    })
}

#[test]
fn a_node_down_while_versions_are_published_catches_up_when_it_returns() {
    let dir = TempDir::new("versions-down");
    let pg = PgServer::start().expect("PostgreSQL (scripts/install-deps.sh installs it)");
    let url = pg.create_db("versions_down").unwrap();
    let redis = RedisServer::start().expect("redis-server (scripts/install-deps.sh installs it)");
    let mut nodes: Vec<Option<Running>> = ["d1", "d2", "d3"]
        .iter()
        .map(|n| Some(start(node(&dir, n, &url, &redis))))
        .collect();
    wait("every node subscribed", || {
        (subscribers(&redis) == 3).then_some(())
    });
    // A first version, in force everywhere; then d3 goes down.
    let r1 = push(
        nodes[0].as_ref().unwrap().control_addr.unwrap(),
        100,
        |i, out| {
            out.extend_from_slice(format!("{},first\n", number(i)).as_bytes());
        },
    )
    .unwrap();
    let live: Vec<&Running> = nodes.iter().flatten().collect();
    until_all_run(&live, &r1.snapshot, Instant::now(), Duration::from_secs(10));
    nodes[2].take().unwrap().stop();
    // Meanwhile: a new list pushed on d1, the rules staged and put in
    // force on d2.
    let r2 = push(
        nodes[0].as_ref().unwrap().control_addr.unwrap(),
        1_000,
        |i, out| {
            out.extend_from_slice(format!("{},second\n", number(5_000 + i)).as_bytes());
        },
    )
    .unwrap();
    assert_eq!(r2.version.as_ref().unwrap().id, "v2");
    let after_rules = stage_and_activate_rules(nodes[1].as_ref().unwrap().control_addr.unwrap());
    let live: Vec<&Running> = nodes.iter().flatten().collect();
    until_all_run(&live, &after_rules, Instant::now(), Duration::from_secs(10));
    // d3 returns: its own shelf has the first version in force, and it
    // catches up by looking at the shared store.
    let t = Instant::now();
    let d3 = start(node(&dir, "d3", &url, &redis));
    let took = until_all_run(&[&d3], &after_rules, t, Duration::from_secs(20));
    eprintln!("d3 caught up {:?} after it was started", took[0]);
    assert_eq!(call(d3.udp_addr, &number(5_500), "d3-second"), 603);
    assert_eq!(call(d3.udp_addr, &number(50), "d3-first"), 302);
    // No announcement reached it: it found them by looking.
    assert_eq!(d3.metrics.value("versions_messages_total"), Some(0));
    assert_eq!(d3.metrics.value("versions_applied_total"), Some(2));
    assert_eq!(
        d3.metrics
            .gauge(kuzet_dataplane::metrics::Gauge::VersionsBehindS),
        0
    );
    // Its shelf is the cluster's: the same versions, the same in force.
    let index = std::fs::read_to_string(
        dir.path()
            .join("d3/published/lists/blocklist/versions.json"),
    )
    .unwrap();
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    assert_eq!(index["active"], 2, "{index}");
    assert_eq!(index["versions"].as_array().unwrap().len(), 2, "{index}");
    d3.stop();
    for n in nodes.into_iter().flatten() {
        n.stop();
    }
}

#[test]
fn without_redis_a_publish_reaches_every_node_by_polling_and_without_postgres_nothing_is_published()
{
    let dir = TempDir::new("versions-outage");
    let mut pg = PgServer::start().expect("PostgreSQL (scripts/install-deps.sh installs it)");
    let url = pg.create_db("versions_outage").unwrap();
    let mut redis =
        RedisServer::start().expect("redis-server (scripts/install-deps.sh installs it)");
    let nodes: Vec<Running> = ["o1", "o2", "o3"]
        .iter()
        .map(|n| start(node(&dir, n, &url, &redis)))
        .collect();
    let refs: Vec<&Running> = nodes.iter().collect();
    // Redis killed: a publish on o2 still reaches o1 and o3, within the
    // polling interval and the time to fetch and build.
    redis.kill();
    let t = Instant::now();
    let r = push(nodes[1].control_addr.unwrap(), 10_000, |i, out| {
        out.extend_from_slice(format!("{},no redis\n", number(i)).as_bytes());
    })
    .unwrap();
    assert!(r.activated, "{r:?}");
    let took = until_all_run(&refs, &r.snapshot, t, Duration::from_secs(20));
    eprintln!("with Redis down, in force on every node after {took:?}");
    for d in &took {
        assert!(*d < Duration::from_millis(POLL_MS * 3 + 5_000), "{took:?}");
    }
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(call(n.udp_addr, &number(77), &format!("no-redis-{i}")), 603);
        assert_eq!(n.metrics.value("versions_messages_total"), Some(0));
    }
    assert!(nodes[1].metrics.value("versions_announce_errors_total") >= Some(1));
    // PostgreSQL stopped: a push is refused with the reason, nothing
    // changes anywhere, and calls are judged as before.
    pg.stop();
    let err = push(nodes[0].control_addr.unwrap(), 10, |i, out| {
        out.extend_from_slice(format!("{},no store\n", number(50_000 + i)).as_bytes());
    })
    .expect_err("no publishing without the shared store");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("shared store of published versions")
            && err.message().contains("nothing changed"),
        "{}",
        err.message()
    );
    wait("every node sees the shared store is down", || {
        nodes
            .iter()
            .all(|n| {
                n.metrics
                    .gauge(kuzet_dataplane::metrics::Gauge::VersionsStoreUp)
                    == 0
            })
            .then_some(())
    });
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(version(n), r.snapshot);
        assert_eq!(call(n.udp_addr, &number(77), &format!("no-pg-{i}")), 603);
        assert_eq!(
            call(n.udp_addr, &number(50_005), &format!("no-pg-new-{i}")),
            302
        );
    }
    // Both back: publishing works again and reaches every node.
    pg.restart().unwrap();
    redis.restart().unwrap();
    let t = Instant::now();
    let r = push(nodes[0].control_addr.unwrap(), 10, |i, out| {
        out.extend_from_slice(format!("{},back\n", number(50_000 + i)).as_bytes());
    })
    .unwrap();
    let took = until_all_run(&refs, &r.snapshot, t, Duration::from_secs(20));
    eprintln!("with both back, in force on every node after {took:?}");
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(call(n.udp_addr, &number(50_005), &format!("back-{i}")), 603);
    }
    for n in nodes {
        n.stop();
    }
}
