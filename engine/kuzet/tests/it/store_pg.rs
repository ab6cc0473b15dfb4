//! Two kuzet nodes sharing one PostgreSQL store (`[store] backend =
//! "postgres"`), each with its own data directory for its record queue:
//! a call blocked on one node is found by an investigator asking the
//! other, and one caller's calls blocked on both make one incident.

use std::time::{Duration, Instant};

use kuzet::config::{Config, ListEntry, TokenConfig};
use kuzet_api::investigation as pb;
use kuzet_api::investigation::investigation_service_client::InvestigationServiceClient;
use kuzet_sim::servers::PgServer;
use kuzet_store::config::{Backend, StoreUrl};

use crate::common::{ask, client, header, invite, start, status, test_config, TempDir};

fn token_of(name: &str) -> String {
    format!("kz_pg_token_of_{name}")
}

fn tokens() -> Vec<TokenConfig> {
    crate::common::tokens_for(&[("ana", "investigator")], token_of)
}

/// A node on the shared store at `url`, its data directory its own.
fn node(dir: &TempDir, name: &str, url: &str) -> Config {
    let block = dir.write("block.txt", "+77011234567,bank fraud desk\n");
    let mut c = test_config();
    c.lists.files[kuzet_rules::ListId::Block] = vec![ListEntry::path(block)];
    c.store.enabled = true;
    c.store.dir = Some(dir.path().join(name));
    c.store.node_name = Some(name.into());
    c.store.backend = Backend::Postgres;
    c.store.url = Some(StoreUrl(url.into()));
    c.control.tokens = tokens();
    c
}

fn with_token<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token_of("ana")).parse().unwrap(),
    );
    r
}

/// The calls an investigator on `addr` finds by verdict id.
fn calls_by_verdict(addr: std::net::SocketAddr, vid: &str) -> Vec<pb::Call> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = InvestigationServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let req = pb::QueryCallsRequest {
            filter: Some(pb::CallFilter {
                verdict_id: vid.into(),
                ..pb::CallFilter::default()
            }),
            ..pb::QueryCallsRequest::default()
        };
        c.query_calls(with_token(req))
            .await
            .unwrap()
            .into_inner()
            .calls
    })
}

fn incidents(addr: std::net::SocketAddr) -> Vec<pb::Incident> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = InvestigationServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        c.list_incidents(with_token(pb::ListIncidentsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .incidents
    })
}

/// The verdict id in a blocked call's Reason text.
fn verdict_id_of(reply: &str) -> String {
    let reason = header(reply, "Reason").expect("a Reason header");
    let at = reason.find("verdict ").expect("a verdict id in the Reason") + 8;
    reason[at..at + 24].to_string()
}

/// Polls `f` until it gives a value, for at most 20 s.
fn within<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_call_blocked_on_one_node_is_found_from_the_other_and_one_source_is_one_incident() {
    let pg = PgServer::start().expect("PostgreSQL (scripts/install-deps.sh installs it)");
    let url = pg.create_db("two_nodes").unwrap();
    let dir = TempDir::new("store-pg");
    let a = start(node(&dir, "node-a", &url));
    let b = start(node(&dir, "node-b", &url));
    let s = client();
    let port = s.local_addr().unwrap().port();

    let r = ask(
        &s,
        a.udp_addr,
        &invite("+77011234567", "+77020000001", "pg-a-1", port),
    );
    assert_eq!(status(&r), 603, "{r}");
    let vid = verdict_id_of(&r);
    // Asked on node B: node A's call, once it is committed.
    let b_ctl = b.control_addr.expect("node B's control API");
    let found = within("node A's call on node B", || {
        let c = calls_by_verdict(b_ctl, &vid);
        (!c.is_empty()).then_some(c)
    });
    assert_eq!(found.len(), 1);
    assert_eq!(
        (
            found[0].node.as_str(),
            found[0].call_id.as_str(),
            found[0].decision.as_str()
        ),
        ("node-a", "pg-a-1", "block")
    );

    // The same caller blocked on node B joins the same incident.
    let r = ask(
        &s,
        b.udp_addr,
        &invite("+77011234567", "+77020000002", "pg-b-1", port),
    );
    assert_eq!(status(&r), 603, "{r}");
    let a_ctl = a.control_addr.expect("node A's control API");
    let inc = within("one incident of both nodes' calls", || {
        let all = incidents(a_ctl);
        let mine: Vec<_> = all
            .into_iter()
            .filter(|i| i.key == "+77011234567")
            .collect();
        (mine.len() == 1 && mine[0].blocked == 2).then_some(mine)
    });
    assert_eq!(inc[0].kind, "source");
    assert_eq!(inc[0].victims.len(), 2);
    a.stop();
    b.stop();
}

/// The binary takes the server's URL from `KUZET_STORE_URL` (a password
/// need not sit in the file), names the server without its password
/// when it cannot reach it, and refuses a PostgreSQL store with no URL
/// at all as a config error.
#[test]
fn the_binary_reads_the_url_from_the_environment_and_never_shows_its_password() {
    let dir = TempDir::new("store-pg-env");
    dir.write(
        "pg.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\nbackend = \"postgres\"\ndir = \"data\"\n",
    );
    let run = |env: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kuzet"));
        cmd.args(["run", "--config", "pg.toml", "--control", "127.0.0.1:0"])
            .args(["--admin", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env_remove(kuzet_store::config::STORE_URL_ENV);
        if let Some(url) = env {
            cmd.env(kuzet_store::config::STORE_URL_ENV, url);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("KUZET_STORE_URL"), "{err}");
    // Nothing listens there: kuzet stops at start, naming the server.
    let port = kuzet_sim::servers::free_port();
    let (code, err) = run(Some(&format!(
        "postgres://kuzet:s3cret@127.0.0.1:{port}/kz"
    )));
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!("postgres://kuzet@127.0.0.1:{port}/kz")),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}
